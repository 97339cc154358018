"""Times hyb's tensor-core attention, forward and backward, against PyTorch's SDPA (flash)
in one process.

Reads bench.json and the PTX from `export_attention_benchmark` (compiler/tests/codegen/
templates.rs): causal GQA at the peer's shapes, contiguous `[B, H, T, D]` bf16. A case with
`documents` L is packed rows of L-token documents (positions `t mod L`, f32): the peer is SDPA
on the documents as separate sequences (`[B·T/L, H, L, D]`), what a packed row must equal;
its FLOPs count the causal half of each document. Both run on
the same random inputs, hyb's outputs poisoned with NaN first; hyb's output and gradients
are compared with SDPA's (largest difference relative to SDPA's largest magnitude; NaN
fails). Times are medians of 20 CUDA-event timings after 3 warm-up runs. FLOPs count the
causal half: forward 2·2·B·H·T²·D / 2; backward 2.5× that (five products, the scores
recomputed; hyb's gradient, without atomics, computes the scores and `dO·vᵀ` once in its
query phase and once in its key phase, seven products). hyb's backward reads the forward's
output and rows' logsumexp (f32), as a training step does.
Usage: python3 bench/attention_mma.py DIR
"""
import json, os, sys
import cupy as cp
import torch
import torch.nn.functional as F

SMS = 132


def median_ms(fn):
    for _ in range(3):
        fn()
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def launcher(folder, spec, views):
    """A function launching every nest of one pass over `views` and its workspace."""
    module = cp.RawModule(path=os.path.join(folder, spec["ptx"]))
    workspace = [torch.zeros(max(n, 1), device="cuda", dtype=torch.float32) for n in spec["workspace"]]
    args = [cp.uint64(x.data_ptr()) for x in views + workspace]
    args += [cp.int64(s) for x in views for s in x.stride()] + [cp.int64(1) for _ in workspace]
    launches = []
    for nest in spec["nests"]:
        fn = module.get_function(nest["symbol"])
        shared = int(nest.get("dynamic_shared_bytes", 0))
        if shared > 48 * 1024:
            fn.max_dynamic_shared_size_bytes = shared
        blocks = max(1, min(-(-nest["iterations"] // max(1, nest["rows_per_block"])), SMS * 16))
        launches.append((fn, blocks, nest["threads_per_block"], shared))

    def run():
        for fn, blocks, threads, shared in launches:
            fn((blocks,), (threads,), tuple(args), shared_mem=shared)

    run.workspace = workspace
    return run


def difference(have, want):
    have, want = have.float(), want.float()
    if not torch.isfinite(have).all():
        return float("inf")
    return ((have - want).abs().max() / want.abs().max()).item()


def main():
    folder = sys.argv[1]
    failed = 0
    for case in json.load(open(os.path.join(folder, "bench.json"))):
        b, h, kv, t, d = (case[k] for k in ("b", "h", "kv", "t", "d"))
        length = case.get("documents") or t
        torch.manual_seed(0)
        bf16 = dict(device="cuda", dtype=torch.bfloat16)
        q, k, v = torch.randn(b, h, t, d, **bf16), torch.randn(b, kv, t, d, **bf16), torch.randn(b, kv, t, d, **bf16)
        dy = torch.randn(b, h, t, d, **bf16)
        out = torch.full((b, h, t, d), float("nan"), **bf16)
        lse = torch.full((b, h, t, 1), float("nan"), device="cuda", dtype=torch.float32)
        grads = [torch.full_like(x, float("nan")) for x in (q, k, v)]
        positions = []
        if case.get("documents"):
            steps = torch.arange(t, device="cuda", dtype=torch.float32) % length
            positions = [steps.expand(b, t).contiguous()]
        forward = launcher(folder, case["passes"]["forward"], [q, k, v] + positions + [out, lse])
        backward = launcher(folder, case["passes"]["backward"], [q, k, v] + positions + [dy, out, lse] + grads)

        def documents(x):
            """`[B, heads, T, D]` as `[B·T/L, heads, L, D]`: each document its own sequence."""
            n = x.shape[1]
            return x.reshape(b, n, t // length, length, d).transpose(1, 2).reshape(-1, n, length, d).contiguous()

        def rows(x):
            """The inverse of `documents`."""
            n = x.shape[1]
            return x.reshape(b, t // length, n, length, d).transpose(1, 2).reshape(b, n, t, d)

        # The peer's operands are laid out as separate sequences once, outside its timings.
        leaves = [documents(x).requires_grad_() for x in (q, k, v)]
        peer_dy = documents(dy)

        def sdpa():
            return F.scaled_dot_product_attention(*leaves, is_causal=True, enable_gqa=True)

        def sdpa_both():
            y = sdpa()
            torch.autograd.grad(y, leaves, peer_dy)

        def hyb_both():
            forward()
            backward()

        forward()
        backward()
        torch.cuda.synchronize()
        y = sdpa()
        want = [rows(x) for x in [y.detach()] + list(torch.autograd.grad(y, leaves, peer_dy))]
        diffs = [difference(x, w) for x, w in zip([out] + grads, want)]
        ok = all(x < 2e-2 for x in diffs)
        failed += not ok
        flops = 2 * 2 * b * h * t * length * d / 2
        with torch.no_grad():
            times = [(median_ms(forward), median_ms(sdpa))]
        times.append((median_ms(hyb_both), median_ms(sdpa_both)))
        shape = f"B {b} T {t} H {h} KV {kv} D {d}" + (f" documents of {length}" if length < t else "")
        for what, (ours, peer), work in zip(["forward", "forward + backward"], times, [flops, 3.5 * flops]):
            print(f"{'PASS' if ok else 'FAIL'} attention {what} {shape}: hyb {ours:.3f} ms "
                  f"({work / ours / 1e9:.0f} TFLOP/s), SDPA {peer:.3f} ms ({work / peer / 1e9:.0f} TFLOP/s), "
                  f"hyb/SDPA time {ours / peer:.2f}x")
        print(f"  largest difference from SDPA, of its scale: out {diffs[0]:.2e}, dq {diffs[1]:.2e}, "
              f"dk {diffs[2]:.2e}, dv {diffs[3]:.2e}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
