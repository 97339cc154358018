"""Runs the generated PTX of every fused kernel on the GPU and compares with the reference.

The cases come from `export_cases_for_the_device` (compiler/tests/codegen.rs): for each
kernel its PTX, an arena of random inputs with the outputs poisoned with NaN, the views'
layouts and the reference's outputs. The driver JIT-compiles the PTX (no libdevice is
linked); every nest is launched with the generator's parameters (base pointers, then every
view's strides), and each output must match to 1e-5 of its largest magnitude — NaN never
passes. Usage: python3 ptx_on_device.py CASES_DIR
"""

import json
import os
import sys
import time

import cupy as cp
import numpy as np

THREADS = 256
SMS = 132


def view(arena, layout):
    """The elements of a strided view of the flat arena, in row-major order."""
    shape, strides, offset = layout["shape"], layout["strides"], layout["offset"]
    index = np.full(shape, offset, dtype=np.int64)
    for axis, (n, s) in enumerate(zip(shape, strides)):
        steps = np.arange(n, dtype=np.int64) * s
        index += steps.reshape([n if k == axis else 1 for k in range(len(shape))])
    return arena[index].astype(np.float64).ravel()


def run(folder, case):
    name = case["name"]
    module = cp.RawModule(path=os.path.join(folder, name + ".ptx"))
    arena = np.fromfile(os.path.join(folder, name + ".arena"), dtype="<f4")
    device = cp.asarray(arena)
    base = device.data.ptr
    views = case["inputs"] + case["outputs"]
    # A template's workspace: zeroed buffers after the outputs, one axis each.
    workspace = [cp.zeros(max(n, 1), dtype=cp.float32) for n in case.get("workspace", [])]
    args = [np.uint64(base + 4 * v["offset"]) for v in views]
    args += [np.uint64(w.data.ptr) for w in workspace]
    args += [np.int64(s) for v in views for s in v["strides"]]
    args += [np.int64(1) for _ in workspace]
    for nest in case["nests"]:
        kernel = module.get_function(nest["symbol"])
        threads = nest["iterations"] * (32 if nest["per_warp"] else 1)
        blocks = max(1, min(-(-threads // THREADS), SMS * 16))
        kernel((blocks,), (THREADS,), tuple(args))
    cp.cuda.Device().synchronize()
    got = cp.asnumpy(device)
    for o, layout in enumerate(case["outputs"]):
        want = np.fromfile(os.path.join(folder, f"{name}.want{o}"), dtype="<f8")
        have = view(got, layout)
        scale = max(np.abs(want).max(), case.get("floor", 1e-30))
        err = np.abs(have - want)
        if not np.all(err <= 1e-5 * scale):
            worst = int(np.nanargmax(np.where(np.isnan(err), np.inf, err)))
            return f"output {o} element {worst}: got {have[worst]}, want {want[worst]} (scale {scale:.3g})"
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
