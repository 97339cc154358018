"""Times hyb's tensor-core attention forward against PyTorch's SDPA (flash) in one process.

Reads bench.json and the PTX from `export_attention_benchmark` (compiler/tests/codegen/
templates.rs): causal GQA at the peer's shapes, contiguous `[B, H, T, D]` bf16. Both run on
the same random inputs; hyb's output is compared with SDPA's (largest difference relative
to SDPA's largest magnitude; NaN fails). Times are medians of 20 CUDA-event timings after
3 warm-up runs; TFLOP/s counts the causal half, 2·2·B·H·T²·D / 2.
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


def main():
    folder = sys.argv[1]
    failed = 0
    for case in json.load(open(os.path.join(folder, "bench.json"))):
        b, h, kv, t, d = (case[k] for k in ("b", "h", "kv", "t", "d"))
        torch.manual_seed(0)
        q = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, kv, t, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, kv, t, d, device="cuda", dtype=torch.bfloat16)
        out = torch.full((b, h, t, d), float("nan"), device="cuda", dtype=torch.bfloat16)
        module = cp.RawModule(path=os.path.join(folder, case["name"] + ".ptx"))
        views = [q, k, v, out]
        args = [cp.uint64(x.data_ptr()) for x in views] + [cp.int64(s) for x in views for s in x.stride()]
        launches = []
        for nest in case["nests"]:
            fn = module.get_function(nest["symbol"])
            shared = int(nest.get("dynamic_shared_bytes", 0))
            if shared > 48 * 1024:
                fn.max_dynamic_shared_size_bytes = shared
            blocks = max(1, min(-(-nest["iterations"] // max(1, nest["rows_per_block"])), SMS * 16))
            launches.append((fn, blocks, nest["threads_per_block"], shared))

        def hyb():
            for fn, blocks, threads, shared in launches:
                fn((blocks,), (threads,), tuple(args), shared_mem=shared)

        def sdpa():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        hyb()
        torch.cuda.synchronize()
        want = sdpa().float()
        diff = ((out.float() - want).abs().max() / want.abs().max()).item()
        ok = torch.isfinite(out.float()).all().item() and diff < 2e-2
        failed += not ok
        flops = 2 * 2 * b * h * t * t * d / 2
        ours, peer = median_ms(hyb), median_ms(sdpa)
        print(f"{'PASS' if ok else 'FAIL'} attention forward B {b} T {t} H {h} KV {kv} D {d}: hyb {ours:.3f} ms "
              f"({flops / ours / 1e9:.0f} TFLOP/s), SDPA {peer:.3f} ms ({flops / peer / 1e9:.0f} TFLOP/s), "
              f"hyb/SDPA time {ours / peer:.2f}x; largest difference from SDPA {diff:.2e} of its scale")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
