"""Measures the constants of hyb's roofline cost model (compiler/src/rewrite/cost.rs) on the
GPU it runs on, with PyTorch as the peer: launch overhead, copy bandwidth, bf16 GEMM rate,
and how far the model's prediction is from measured time for the kernels `hyb explain`
lists for one Falcon-H1-34B layer (GEMMs, an elementwise chain, attention).

Usage (on the device machine): python3 bench/calibrate_cost_model.py
Prints a table; the numbers go to bench/RESULTS.md.
"""

import torch
import torch.nn.functional as F
from triton.testing import do_bench

assert torch.cuda.is_available()
dev = torch.device("cuda")
torch.manual_seed(0)

# The model's constants (cost.rs).
PEAK, BW, LAUNCH = 800e12, 3.0e12, 4e-6


def predict(flops, bytes_):
    return max(flops / PEAK, bytes_ / BW) + LAUNCH


def ms(fn):
    return do_bench(fn, warmup=50, rep=300, return_mode="median")


rows = []

# Launch overhead: a one-element kernel, timed back to back.
x = torch.randn(1, device=dev)
n = 2000


def launches():
    for _ in range(n):
        x.add_(1.0)


t = ms(launches) / n
rows.append(("launch (1-element add)", t * 1e3, LAUNCH * 1e6, "µs per launch"))

# Copy bandwidth: 2 GiB bf16 device-to-device, bytes read + written.
src = torch.randn(1 << 30, device=dev, dtype=torch.bfloat16)
dst = torch.empty_like(src)
t = ms(lambda: dst.copy_(src)) / 1e3
rows.append(("copy 2 GiB bf16", 2 * src.numel() * 2 / t / 1e12, BW / 1e12, "TB/s"))
del src, dst

# GEMM rate: the 34B layer's merged projection at B=1, T=4096 (bf16).
T, d = 4096, 5120
for name, n_out in [("GEMM 4096x5120 @ 5120x20480", 20480), ("GEMM 4096x5120 @ 5120x43008", 43008)]:
    a = torch.randn(T, d, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n_out, d, device=dev, dtype=torch.bfloat16)
    t = ms(lambda: a @ w.t()) / 1e3
    flops = 2 * T * d * n_out
    rows.append((name, flops / t / 1e12, PEAK / 1e12, "TFLOP/s"))
    bytes_ = (T * d + n_out * d + T * n_out) * 2
    rows.append((name + " time", t * 1e6, predict(flops, bytes_) * 1e6, "µs (measured vs predicted)"))

# An elementwise chain the model prices as one fused kernel: RMSNorm over [4096, 5120] bf16,
# as PyTorch runs it eagerly (several kernels) and as one torch.compile kernel.
h = torch.randn(T, d, device=dev, dtype=torch.bfloat16)
g = torch.randn(d, device=dev, dtype=torch.bfloat16)


def rmsnorm(h, g):
    hf = h.float()
    return (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(h.dtype) * g


eager = ms(lambda: rmsnorm(h, g)) / 1e3
compiled_fn = torch.compile(rmsnorm)
compiled_fn(h, g)
fused = ms(lambda: compiled_fn(h, g)) / 1e3
pred = predict(5 * T * d, 2 * T * d * 2 + d * 2)
rows.append(("RMSNorm eager (PyTorch)", eager * 1e6, pred * 1e6, "µs (measured vs predicted fused)"))
rows.append(("RMSNorm torch.compile", fused * 1e6, pred * 1e6, "µs (measured vs predicted fused)"))

# Causal attention of the 34B layer: 20 query heads, 4 KV heads, head dim 128, T = 4096.
q = torch.randn(1, 20, T, 128, device=dev, dtype=torch.bfloat16)
k = torch.randn(1, 4, T, 128, device=dev, dtype=torch.bfloat16)
v = torch.randn(1, 4, T, 128, device=dev, dtype=torch.bfloat16)
t = ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)) / 1e3
flops = 4 * 20 * T * T * 128 / 2
bytes_ = (q.numel() * 2 + k.numel() * 2) * 2
rows.append(("causal GQA attention (SDPA)", t * 1e6, predict(flops, bytes_) * 1e6, "µs (measured vs predicted)"))

print(torch.cuda.get_device_name(), "torch", torch.__version__)
print(f"{'what':<42} {'measured':>12} {'model':>12}  unit")
for what, got, model, unit in rows:
    print(f"{what:<42} {got:>12.2f} {model:>12.2f}  {unit}")
