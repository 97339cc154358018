"""Runs the generated PTX of every fused kernel on the GPU and compares with the reference.

The cases come from `export_cases_for_the_device` (compiler/tests/codegen.rs): for each
kernel its PTX, an arena of random inputs with the outputs poisoned with NaN, the views'
layouts, their storage (f32, or bf16 bits) and the reference's outputs. A kernel comes in
several variants: f32 views at random layouts, packed and 16-byte aligned (the vector
path), packed one element off (its scalar fallback), and bf16 views at random and aligned
layouts; long rows take a block per row. The driver JIT-compiles the PTX (no libdevice is
linked); every nest is launched with the generator's parameters (base pointers, then every
view's strides) and the geometry `GpuNest` asks for (threads per block, iterations per
block). f32 outputs must match to 1e-5 of their largest magnitude; bf16 outputs within two
bf16 units in the last place of the rounded reference (plus the same 1e-5). NaN never
passes. Usage: python3 ptx_on_device.py CASES_DIR
"""

import json
import os
import sys
import time

import cupy as cp
import numpy as np

SMS = 132
STORAGE = {"f32": (np.dtype("<f4"), 4), "bf16": (np.dtype("<u2"), 2)}


def widen(raw, storage):
    """Arena elements as float64: bf16 bits become the f32 they are the top half of."""
    if storage == "bf16":
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return raw.astype(np.float64)


def bf16_round(x):
    """float64 values rounded to bf16 (to nearest even), as float64."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    out = rounded.astype(np.uint32).view(np.float32).astype(np.float64)
    return np.where(np.isnan(x), x, out)


def bf16_ulp(x):
    """The spacing of bf16 values at each magnitude of x (8 significant bits)."""
    mag = np.maximum(np.abs(x), np.finfo(np.float32).tiny)
    return np.exp2(np.floor(np.log2(mag)) - 7)


def view(arena, layout, storage):
    """The elements of a strided view of the flat arena, in row-major order, as float64."""
    shape, strides, offset = layout["shape"], layout["strides"], layout["offset"]
    index = np.full(shape, offset, dtype=np.int64)
    for axis, (n, s) in enumerate(zip(shape, strides)):
        steps = np.arange(n, dtype=np.int64) * s
        index += steps.reshape([n if k == axis else 1 for k in range(len(shape))])
    return widen(arena[index], storage).ravel()


def geometry(nest):
    """Blocks and threads for a nest, as GpuNest describes it."""
    for key in ("symbol", "iterations", "threads_per_block", "rows_per_block"):
        if key not in nest:
            raise KeyError(f"nest {nest.get('symbol', '?')} has no `{key}`: cases from an older export?")
    threads = int(nest["threads_per_block"])
    if threads <= 0 or threads % 32 or threads > 1024:
        raise ValueError(f"nest {nest['symbol']}: {threads} threads per block is not a whole number of warps")
    blocks = -(-int(nest["iterations"]) // max(1, int(nest["rows_per_block"])))
    return max(1, min(blocks, SMS * 16)), threads


def run(folder, case):
    name = case["name"]
    storage = case.get("storage", "f32")
    if storage not in STORAGE:
        return f"unknown storage `{storage}`"
    dtype, size = STORAGE[storage]
    module = cp.RawModule(path=os.path.join(folder, name + ".ptx"))
    arena = np.fromfile(os.path.join(folder, name + ".arena"), dtype=dtype)
    device = cp.asarray(arena)
    base = device.data.ptr
    views = case["inputs"] + case["outputs"]
    # A template's workspace: zeroed buffers after the outputs, one axis each.
    workspace = [cp.zeros(max(n, 1), dtype=cp.float32) for n in case.get("workspace", [])]
    args = [np.uint64(base + size * v["offset"]) for v in views]
    args += [np.uint64(w.data.ptr) for w in workspace]
    args += [np.int64(s) for v in views for s in v["strides"]]
    args += [np.int64(1) for _ in workspace]
    for nest in case["nests"]:
        kernel = module.get_function(nest["symbol"])
        blocks, threads = geometry(nest)
        shared = int(nest.get("dynamic_shared_bytes", 0))
        if shared > 48 * 1024:
            kernel.max_dynamic_shared_size_bytes = shared
        kernel((blocks,), (threads,), tuple(args), shared_mem=shared)
    cp.cuda.Device().synchronize()
    got = cp.asnumpy(device)
    for o, layout in enumerate(case["outputs"]):
        want = np.fromfile(os.path.join(folder, f"{name}.want{o}"), dtype="<f8")
        have = view(got, layout, storage)
        if have.shape != want.shape:
            return f"output {o}: {have.size} elements in the layout, {want.size} in the reference"
        scale = max(np.abs(want).max(initial=0.0), case["floors"][o])
        slack = (1e-5 + float(case.get("tolerance", 0.0))) * scale
        if storage == "bf16":
            want = bf16_round(want)
            slack = slack + 2 * bf16_ulp(want)
        err = np.abs(have - want)
        if not np.all(err <= slack):
            worst = int(np.nanargmax(np.where(np.isnan(err), np.inf, err - slack)))
            return f"output {o} element {worst}: got {have[worst]}, want {want[worst]} (scale {scale:.3g}, {storage})"
    return None


def main():
    folder = sys.argv[1]
    cases = json.load(open(os.path.join(folder, "cases.json")))
    started = time.time()
    failures = []
    for case in cases:
        try:
            problem = run(folder, case)
        except Exception as e:  # a PTX the driver refuses, a launch that faults
            problem = f"{type(e).__name__}: {e}"
        if problem:
            failures.append((case["name"], case["origin"], problem))
    for name, origin, problem in failures:
        print(f"FAIL {name} ({origin}): {problem}")
    passed = len(cases) - len(failures)
    print(f"{passed} of {len(cases)} kernels and templates ran on {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()} "
          f"and matched the reference ({time.time() - started:.1f} s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
