#!/usr/bin/env python3
"""The PyTorch peer for hyb's GPU benchmark: Falcon-H1 training on one H200.

Measured the way a careful PyTorch user would run it, in one process.

Every part trains in bf16 autocast over float32 master weights (backward outside autocast),
with fused AdamW (`torch.optim.AdamW(fused=True)`) where a step is measured. The mixer uses
mamba-ssm's Triton kernels (`ssd_combined.mamba_chunk_scan_combined` for the chunked SSD scan,
with dt bias, softplus and, when there is no gated norm, the `y * silu(z)` gate fused in;
`layernorm_gated.rmsnorm_fn` for the gated RMSNorm); the causal conv is torch's depthwise
`conv1d` (causal_conv1d is absent); attention is SDPA (flash backend by default, GQA native
through `enable_gqa` when the backend takes it, else K/V repeated), with RoPE. q/k/v and
gate/up are one GEMM each. The layer follows transformers' `FalconH1DecoderLayer`:

    h = rmsnorm(x);  x = x + ssm_out_mult * mamba(h) + attn_out_mult * attn(attn_in_mult * h)
    x = x + mlp(rmsnorm(x)),   mlp(h) = down_mult * down(up(h) * silu(gate_mult * gate(h)))

with the mixer's µP vector on its in_proj output, `ssm_in_multiplier` on its input and
`key_multiplier` on K; the model adds `embedding_multiplier` and `lm_head_multiplier`.
Multipliers come from the Falcon-H1-0.5B config (tests/fixtures/hf_configs/falcon_h1_0_5b.json).

Parts (--what):
  layer  (a) one parallel-hybrid layer, forward + backward (no optimizer), d 2048, B 2, T 4096,
         attention 16 x 128 with 4 KV heads, Mamba-2 32 x 64, N 128, 1 group, chunk 256,
         conv 4, gated RMSNorm (norm after gate), SwiGLU 8192. Eager and torch.compile.
  model  (b) a Falcon-H1-0.5B-shaped model from the same layer code and the 0.5B config
         (36 layers, d 1024, 8 x 64 heads / 2 KV, Mamba 24 x 64, N 128, chunk 128, d_ff 2048,
         vocab 32784, no gated norm as in that config), one training step (forward, cross
         entropy over all B*T tokens, backward, AdamW step) at B 4, T 4096. Eager and compiled.
  hf     transformers' FalconH1ForCausalLM built from the same config (random init, SDPA,
         labels = ids), eager (--hf-compile adds compiled). Its mixer finds mamba-ssm on the
         path; without causal_conv1d its fused split-conv kernel cannot run, so that one is
         switched off and the mixer takes its unfused path (torch conv1d, mamba-ssm's chunk scan,
         gate in PyTorch); the table says which scan ran.

Measured per part: build time; first call (wall, synchronised: Triton autotuning and JIT,
Dynamo/Inductor compilation, cuBLAS/cuDNN heuristics); then --warmup calls, then --steps calls
timed with CUDA events one by one, of which the median is reported (ms); tokens/s = B*T/median;
peak memory = torch.cuda.max_memory_allocated over the timed steps (reset after the first call,
so it holds weights, grads, AdamW moments and the step's activations). Parts run in the order
layer, model, hf, eager before compiled: in-process caches carry over, so a later part's first
call does not pay again for Triton kernels an earlier one compiled for the same shapes. The
on-disk Triton and Inductor caches point at a fresh temporary folder unless --warm-cache.

FLOPs per step (the MFU count, against 790 TFLOP/s of dense bf16):
    F = 6 * P * B * T  +  6 * L * B * T^2 * d_attn        (the second term is 12*L*B*T^2*d_attn/2)
  P: parameters other than the token embedding (every matmul weight, lm_head included; norms,
     conv and A/D/dt are in P too and are a rounding error), L: layers, d_attn = query heads *
     head dim. QK^T and PV are 4*B*T^2*d_attn FLOPs forward unmasked, half of that causal, times
     3 for forward + backward. The SSD scan's own FLOPs (a few % of F here) are not counted. For
     the single layer, P is the layer's parameters and L = 1 (no optimizer step).

Each part catches its own exception (out of memory, a compile failure) and reports it in the
table. --reference-ssd swaps the Triton kernels for naive PyTorch (quadratic SSD, plain gated
norm) for CPU smoke tests only (float32 there: autocast is off on the CPU). On the GPU machine, from the repository root, with the peer
kernels copied to .peer/:
    PYTHONPATH=$PWD/.peer python3 bench/gpu_peer.py --json $OUT/gpu_peer.json --hf
"""
import argparse
import gc
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

if "--warm-cache" not in sys.argv:  # before torch/triton read them
    _cache = tempfile.mkdtemp(prefix="gpu_peer_cache_")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(_cache, "triton")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(_cache, "inductor")

import torch
import torch.nn as nn
import torch.nn.functional as F

PEAK_TFLOPS = 790.0
HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_0_5B = os.path.join(HERE, "..", "tests", "fixtures", "hf_configs", "falcon_h1_0_5b.json")
CONFIG_DROP = {"architectures", "model_type", "torch_dtype", "dtype", "transformers_version"}

# ---------------------------------------------------------------------------------------------
# Kernels: mamba-ssm's Triton ops, or naive PyTorch stand-ins (--reference-ssd, CPU smoke tests).
# Both run outside Dynamo (torch.compiler.disable): the graph breaks there and autograd goes
# through mamba-ssm's own autograd.Functions.


def ssd_reference(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Quadratic form of the SSD scan: y_t = sum_{s<=t} (C_t.B_s) exp(a_t - a_s) dt_s x_s + D x_t,
    a = cumsum(dt * A); shapes as mamba_chunk_scan_combined's. chunk_size is ignored."""
    b, T, H, P = x.shape
    rep = H // B.shape[2]
    xf, dtf = x.float(), dt.float()
    if dt_bias is not None:
        dtf = dtf + dt_bias.float()
    if dt_softplus:
        dtf = F.softplus(dtf)
    Bh, Ch = (t.float().repeat_interleave(rep, dim=2) for t in (B, C))  # (b, T, H, N)
    a = torch.cumsum(dtf * A.float(), dim=1)  # (b, T, H)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, :, :, None]
    decay = torch.where(causal, a[:, :, None] - a[:, None], float("-inf")).exp()  # (b, t, s, H)
    scores = torch.einsum("bthn,bshn->btsh", Ch, Bh) * decay
    y = torch.einsum("btsh,bsh,bshp->bthp", scores, dtf, xf)
    if D is not None:
        y = y + xf * (D.float()[:, None] if D.dim() == 1 else D.float())
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def rmsnorm_gated_reference(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
    h = x.float()
    if z is not None and not norm_before_gate:
        h = h * F.silu(z.float())
    g = h.view(*h.shape[:-1], -1, group_size or h.shape[-1])
    h = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)).view_as(h) * weight.float()
    if z is not None and norm_before_gate:
        h = h * F.silu(z.float())
    return h.to(x.dtype)


KERNELS = {"ssd": None, "rmsnorm_gated": None}


def use_kernels(reference):
    if reference:
        KERNELS.update(ssd=ssd_reference, rmsnorm_gated=rmsnorm_gated_reference)
        return "reference (naive PyTorch)"
    from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    KERNELS.update(ssd=mamba_chunk_scan_combined, rmsnorm_gated=rmsnorm_fn)
    return "mamba-ssm Triton"


@torch.compiler.disable
def ssd(*args, **kw):
    return KERNELS["ssd"](*args, **kw)


@torch.compiler.disable
def rmsnorm_gated(*args, **kw):
    return KERNELS["rmsnorm_gated"](*args, **kw)


GQA_NATIVE = True  # SDPA's enable_gqa; set by probe_sdpa()


def set_sdpa(kind):
    if not torch.cuda.is_available():
        return
    b = torch.backends.cuda
    every = kind == "default"
    b.enable_flash_sdp(every or kind == "flash")
    b.enable_cudnn_sdp(every or kind == "cudnn")
    b.enable_mem_efficient_sdp(every or kind == "efficient")
    b.enable_math_sdp(every)


def probe_sdpa(device):
    """Does the chosen SDPA backend take GQA natively? Else K/V are repeated to all heads."""
    global GQA_NATIVE
    q = torch.randn(1, 8, 256, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    kv = torch.randn(1, 2, 256, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    try:
        F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True).sum().backward()
        GQA_NATIVE = True
    except RuntimeError:
        GQA_NATIVE = False
    return "enable_gqa" if GQA_NATIVE else "K/V repeated"


# ---------------------------------------------------------------------------------------------
# The model


class Cfg:
    """The fields of an HF FalconH1Config that the layer needs, from its JSON dict."""

    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.d_ssm = kw.get("mamba_d_ssm") or self.mamba_n_heads * self.mamba_d_head
        self.head_dim = kw.get("head_dim") or self.hidden_size // self.num_attention_heads


def rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def rope_tables(cfg, T, device, dtype):
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device, dtype=torch.float32) / cfg.head_dim)
    f = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv)
    emb = torch.cat((f, f), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.kv, self.hd, self.kmul = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.key_multiplier
        self.qkv = nn.Linear(c.hidden_size, (self.h + 2 * self.kv) * self.hd, bias=False)
        self.o = nn.Linear(self.h * self.hd, c.hidden_size, bias=False)

    def forward(self, x, cos, sin):
        b, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.h * self.hd, self.kv * self.hd, self.kv * self.hd], dim=-1)
        q = q.view(b, T, self.h, self.hd).transpose(1, 2)
        k = k.view(b, T, self.kv, self.hd).transpose(1, 2) * self.kmul
        v = v.view(b, T, self.kv, self.hd).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if GQA_NATIVE:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            r = self.h // self.kv
            y = F.scaled_dot_product_attention(q, k.repeat_interleave(r, 1), v.repeat_interleave(r, 1), is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, T, self.h * self.hd))


class Mixer(nn.Module):
    """Mamba-2 as FalconH1Mixer computes it (µP vector on in_proj's output), through mamba-ssm."""

    def __init__(self, c):
        super().__init__()
        self.H, self.P, self.N, self.G = c.mamba_n_heads, c.mamba_d_head, c.mamba_d_state, c.mamba_n_groups
        self.d_ssm, self.chunk, self.eps, self.in_mult = c.d_ssm, c.mamba_chunk_size, c.rms_norm_eps, c.ssm_in_multiplier
        conv_dim = self.d_ssm + 2 * self.G * self.N
        self.in_proj = nn.Linear(c.hidden_size, self.d_ssm + conv_dim + self.H, bias=c.mamba_proj_bias)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, c.mamba_d_conv, groups=conv_dim, padding=c.mamba_d_conv - 1,
                                bias=c.mamba_conv_bias)
        self.dt_bias = nn.Parameter(torch.ones(self.H))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, self.H + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(self.H))
        self.norm = nn.Parameter(torch.ones(self.d_ssm)) if c.mamba_rms_norm else None
        self.out_proj = nn.Linear(self.d_ssm, c.hidden_size, bias=c.projectors_bias)
        m = c.ssm_multipliers  # z, x, B, C, dt
        GN = self.G * self.N
        widths = [self.d_ssm, self.d_ssm, GN, GN, self.H]
        self.register_buffer("mup", torch.cat([torch.full((w,), float(s)) for w, s in zip(widths, m)]), persistent=False)

    def forward(self, h):
        b, T, _ = h.shape
        zxbcdt = self.in_proj(h * self.in_mult) * self.mup
        z, xbc, dt = zxbcdt.split([self.d_ssm, self.d_ssm + 2 * self.G * self.N, self.H], dim=-1)
        xbc = F.silu(self.conv1d(xbc.transpose(1, 2))[..., :T].transpose(1, 2))
        x, B, C = xbc.split([self.d_ssm, self.G * self.N, self.G * self.N], dim=-1)
        A = -torch.exp(self.A_log.float())
        gated_in_scan = self.norm is None
        y = ssd(x.view(b, T, self.H, self.P), dt, A, B.view(b, T, self.G, self.N), C.view(b, T, self.G, self.N),
                self.chunk, D=self.D, z=z.view(b, T, self.H, self.P) if gated_in_scan else None,
                dt_bias=self.dt_bias, dt_softplus=True)
        y = y.reshape(b, T, self.d_ssm)
        if not gated_in_scan:  # norm(y * silu(z)), per group
            y = rmsnorm_gated(y, self.norm, None, z=z, eps=self.eps, group_size=self.d_ssm // self.G,
                              norm_before_gate=False)
        return self.out_proj(y)


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ff = c.intermediate_size
        self.gate_up = nn.Linear(c.hidden_size, 2 * self.ff, bias=c.mlp_bias)
        self.down = nn.Linear(self.ff, c.hidden_size, bias=c.mlp_bias)
        self.gate_mult, self.down_mult = c.mlp_multipliers

    def forward(self, x):
        gate, up = self.gate_up(x).split([self.ff, self.ff], dim=-1)
        return self.down(up * F.silu(gate * self.gate_mult)) * self.down_mult


class Layer(nn.Module):
    """FalconH1DecoderLayer: attention and Mamba in parallel on one normed input, summed."""

    def __init__(self, c):
        super().__init__()
        d, self.eps = c.hidden_size, c.rms_norm_eps
        self.norm1, self.norm2 = nn.Parameter(torch.ones(d)), nn.Parameter(torch.ones(d))
        self.mamba, self.attn, self.mlp = Mixer(c), Attention(c), MLP(c)
        self.attn_in, self.attn_out, self.ssm_out = c.attention_in_multiplier, c.attention_out_multiplier, c.ssm_out_multiplier

    def forward(self, x, cos, sin):
        h = F.rms_norm(x, (x.shape[-1],), self.norm1, self.eps)
        x = x + self.mamba(h) * self.ssm_out + self.attn(h * self.attn_in, cos, sin) * self.attn_out
        return x + self.mlp(F.rms_norm(x, (x.shape[-1],), self.norm2, self.eps))


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))
        self.norm = nn.Parameter(torch.ones(c.hidden_size))
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)

    def forward(self, ids, labels):
        x = self.embed(ids) * self.c.embedding_multiplier
        cos, sin = rope_tables(self.c, ids.shape[1], ids.device, torch.float32)
        for layer in self.layers:
            x = layer(x, cos, sin)
        x = F.rms_norm(x, (x.shape[-1],), self.norm, self.c.rms_norm_eps)
        logits = self.lm_head(x) * self.c.lm_head_multiplier
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1))


# ---------------------------------------------------------------------------------------------
# Measuring


def load_config(path):
    with open(path) as f:
        return {k: v for k, v in json.load(f).items() if k not in CONFIG_DROP}


def layer_config(raw):
    """(a): d 2048, attention 16 x 128 / 4 KV, Mamba 32 x 64, N 128, chunk 256, SwiGLU 8192,
    gated RMSNorm; multipliers and the rest from the 0.5B config."""
    c = dict(raw)
    c.update(hidden_size=2048, num_attention_heads=16, num_key_value_heads=4, head_dim=128,
             mamba_n_heads=32, mamba_d_head=64, mamba_d_ssm=2048, mamba_d_state=128, mamba_n_groups=1,
             mamba_chunk_size=256, mamba_d_conv=4, mamba_rms_norm=True, intermediate_size=8192,
             num_hidden_layers=1)
    return c


def step_flops(P, layers, B, T, d_attn):
    return 6 * P * B * T + 12 * layers * B * T * T * d_attn / 2


class Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def run(self, step, warmup, steps):
        """First call (wall s), then warmup, then the median of `steps` calls (ms) and all of them."""
        self.sync()
        t0 = time.perf_counter()
        step()
        self.sync()
        first = time.perf_counter() - t0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            step()
        times = []
        if self.cuda:
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
            for a, b in ev:
                a.record()
                step()
                b.record()
            self.sync()
            times = [a.elapsed_time(b) for a, b in ev]
        else:
            for _ in range(steps):
                t = time.perf_counter()
                step()
                times.append((time.perf_counter() - t) * 1e3)
        return first, statistics.median(times), times


def compile_fn(fn):
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
    if hasattr(torch._dynamo.config, "cache_size_limit"):
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    return torch.compile(fn)


def dynamo_stats():
    try:
        from torch._dynamo.utils import counters
        s = counters["stats"]
        return {"unique_graphs": int(s.get("unique_graphs", 0)),
                "graph_breaks": int(sum(counters["graph_break"].values()))}
    except Exception:
        return {}


def autocast(dev):
    """bf16 autocast on the GPU; off on the CPU (smoke tests: its bf16 GEMMs are very slow)."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")


def part_layer(args, dev, raw, compiled):
    B, T = args.batch or 2, args.seq or 4096
    c = Cfg(**layer_config(raw))
    t0 = time.perf_counter()
    with torch.device(dev):
        layer = Layer(c)
        x = torch.randn(B, T, c.hidden_size, requires_grad=True)
        gy = torch.randn(B, T, c.hidden_size)
        cos, sin = rope_tables(c, T, dev, torch.float32)
    fwd = compile_fn(layer) if compiled else layer
    build = time.perf_counter() - t0

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with autocast(dev):
            y = fwd(x, cos, sin)
        y.backward(gy)

    first, ms, times = Timer(dev).run(step, args.warmup, args.steps)
    P = sum(p.numel() for p in layer.parameters())
    return dict(B=B, T=T, build_s=build, first_s=first, ms=ms, times_ms=times, params=P,
                flops=step_flops(P, 1, B, T, c.num_attention_heads * c.head_dim))


def train_step_fn(fwd, opt, ids, dev):
    def step():
        with autocast(dev):
            loss = fwd(ids, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def make_adamw(model, dev):
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=dev.type == "cuda")


def model_raw(args, raw):
    c = dict(raw)
    if args.layers:
        c["num_hidden_layers"] = args.layers
    return c


def part_model(args, dev, raw, compiled):
    B, T = args.batch or 4, args.seq or 4096
    c = Cfg(**model_raw(args, raw))
    t0 = time.perf_counter()
    with torch.device(dev):
        model = Model(c)
        ids = torch.randint(0, c.vocab_size, (B, T))
    if compiled and args.regional:
        for layer in model.layers:
            layer.compile()
        fwd = model
    else:
        fwd = compile_fn(model) if compiled else model
    opt = make_adamw(model, dev)
    build = time.perf_counter() - t0
    first, ms, times = Timer(dev).run(train_step_fn(fwd, opt, ids, dev), args.warmup, args.steps)
    P = sum(p.numel() for p in model.parameters()) - model.embed.weight.numel()
    return dict(B=B, T=T, build_s=build, first_s=first, ms=ms, times_ms=times, params=P,
                flops=step_flops(P, c.num_hidden_layers, B, T, c.num_attention_heads * c.head_dim))


def part_hf(args, dev, raw, compiled):
    """transformers 5.17's FalconH1Mixer calls mamba-ssm's kernels where it can import them. In
    training its first choice, the fused mamba_split_conv1d_scan_combined, needs causal_conv1d
    (absent: it would fail), so it is switched off here and the mixer takes its own unfused path:
    torch conv1d, mamba_chunk_scan_combined, then its gate or gated norm in PyTorch. Calls into
    mamba-ssm's SSD forward are counted to tell which scan ran."""
    from transformers import FalconH1Config, FalconH1ForCausalLM
    hf_mod = sys.modules[FalconH1ForCausalLM.__module__]
    calls = [0]
    patches = []
    no_split = importlib.util.find_spec("causal_conv1d") is None and hasattr(hf_mod, "mamba2_split_conv1d_scan_combined")
    if no_split:
        patches.append((hf_mod, "mamba2_split_conv1d_scan_combined", lambda *a, **k: None))
    try:
        import mamba_ssm.ops.triton.ssd_combined as sc
        fwd0 = sc._mamba_chunk_scan_combined_fwd

        def counted(*a, **k):
            calls[0] += 1
            return fwd0(*a, **k)
        patches.append((sc, "_mamba_chunk_scan_combined_fwd", counted))
    except ImportError:
        pass
    saved = [(m, n, getattr(m, n)) for m, n, _ in patches]
    for m, n, v in patches:
        setattr(m, n, v)
    try:
        B, T = args.batch or 4, args.seq or 4096
        c = model_raw(args, raw)
        theta = c.pop("rope_theta")
        c.pop("rope_scaling", None)
        c.update(rope_parameters={"rope_type": "default", "rope_theta": theta}, use_cache=False)
        config = FalconH1Config(**c)
        config._attn_implementation = "sdpa"
        t0 = time.perf_counter()
        with torch.device(dev):
            model = FalconH1ForCausalLM(config).float()
            ids = torch.randint(0, config.vocab_size, (B, T))
        model.train()

        def forward(i, labels):
            return model(input_ids=i, labels=labels, use_cache=False).loss

        fwd = compile_fn(forward) if compiled else forward
        opt = make_adamw(model, dev)
        build = time.perf_counter() - t0
        steps = args.hf_steps or args.steps
        first, ms, times = Timer(dev).run(train_step_fn(fwd, opt, ids, dev), args.warmup, steps)
    finally:
        for m, n, v in saved:
            setattr(m, n, v)
    per_step = calls[0] / (1 + args.warmup + steps)
    path = f"mamba-ssm SSD ({per_step:.0f}/step)" if calls[0] else "naive PyTorch SSD"
    path += ", torch conv1d" + (" (split-conv kernel off)" if no_split else "")
    P = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()
    return dict(B=B, T=T, build_s=build, first_s=first, ms=ms, times_ms=times, params=P, mixer_path=path,
                flops=step_flops(P, config.num_hidden_layers, B, T, config.num_attention_heads * config.head_dim))


def check_kernels(dev):
    """The kernels in use against the naive references on a small problem (run last, so that it
    warms nothing for the timed parts): max |error| / max |reference| of the forward outputs."""
    r = lambda *shape: torch.randn(*shape, device=dev)
    b, T, H, P, N = 2, 512, 4, 64, 128
    bf = torch.bfloat16
    x, dt, B, C, z = r(b, T, H, P).to(bf), r(b, T, H).to(bf), r(b, T, 1, N).to(bf), r(b, T, 1, N).to(bf), r(b, T, H, P).to(bf)
    A, D, dt_bias = -torch.arange(1, H + 1, device=dev, dtype=torch.float32) / 2, r(H), r(H) / 2
    rel = lambda got, want: ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
    out = {}
    for name, zz in (("ssd", None), ("ssd_gated", z)):
        kw = dict(D=D, z=zz, dt_bias=dt_bias, dt_softplus=True)
        out[name] = rel(KERNELS["ssd"](x, dt, A, B, C, 128, **kw), ssd_reference(x, dt, A, B, C, 128, **kw))
    y, w, g = x.reshape(b, T, H * P), 1 + r(H * P) / 4, z.reshape(b, T, H * P)
    kw = dict(z=g, eps=1e-5, group_size=H * P, norm_before_gate=False)
    out["rmsnorm_gated"] = rel(KERNELS["rmsnorm_gated"](y, w, None, **kw), rmsnorm_gated_reference(y, w, None, **kw))
    return out


def free(dev):
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def run_part(name, mode, fn, args, dev, raw, sdpa):
    print(f"[{name} {mode}] ...", file=sys.stderr, flush=True)
    set_sdpa(sdpa)
    free(dev)
    from torch._dynamo.utils import counters
    counters.clear()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    row = dict(part=name, mode=mode)
    try:
        r = fn(args, dev, raw, mode == "compiled")
        row.update(r)
        row["tok_s"] = r["B"] * r["T"] / (r["ms"] / 1e3)
        row["tflops"] = r["flops"] / (r["ms"] / 1e3) / 1e12
        row["mfu"] = row["tflops"] / PEAK_TFLOPS
        if dev.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if mode == "compiled":
            row.update(dynamo_stats())
        print(f"[{name} {mode}] {r['ms']:.2f} ms, first {r['first_s']:.1f} s", file=sys.stderr, flush=True)
    except Exception as e:  # OOM, compile failure, ...: report it, go on
        traceback.print_exc()
        msg = str(e).strip().splitlines()
        row["error"] = f"{type(e).__name__}: {msg[0] if msg else ''}"[:160]
    free(dev)
    return row


def table(rows):
    head = ["part", "mode", "B", "T", "ms/step", "tok/s", "TFLOP/s", "MFU", "peak GiB", "build s", "first s", "note"]
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["part"], r["mode"]] + [""] * 9 + [r["error"]])
            continue
        note = "; ".join(([r["mixer_path"]] if "mixer_path" in r else [])
                         + ([f"{r['unique_graphs']} graphs, {r['graph_breaks']} breaks"] if "unique_graphs" in r else []))
        out.append([r["part"], r["mode"], str(r["B"]), str(r["T"]), f"{r['ms']:.2f}", f"{r['tok_s']:,.0f}",
                    f"{r['tflops']:.1f}", f"{100 * r['mfu']:.1f}%",
                    f"{r['peak_gib']:.1f}" if "peak_gib" in r else "-", f"{r['build_s']:.1f}",
                    f"{r['first_s']:.1f}", note])
    w = [max(len(h), *(len(x[i]) for x in out)) if out else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w[i]) if i in (0, 1, 11) else c.rjust(w[i]) for i, c in enumerate(cells))
    return "\n".join([fmt(head), fmt(["-" * x for x in w])] + [fmt(x) for x in out])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--what", default="layer,model", help="comma list of layer, model, hf (default layer,model)")
    ap.add_argument("--hf", action="store_true", help="add the hf part")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per part (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    ap.add_argument("--hf-steps", type=int, default=0, help="timed steps for hf (default: --steps)")
    ap.add_argument("--batch", type=int, default=0, help="batch (default 2 for layer, 4 for model/hf)")
    ap.add_argument("--seq", type=int, default=0, help="sequence length (default 4096)")
    ap.add_argument("--layers", type=int, default=0, help="layers of model/hf (default: the config's, 36)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure torch.compile (mode default) for layer and model")
    ap.add_argument("--hf-compile", action="store_true", help="also measure hf under torch.compile")
    ap.add_argument("--regional", action="store_true", help="model: compile each layer, not the whole model")
    ap.add_argument("--sdpa", default="flash", choices=["flash", "cudnn", "efficient", "default"],
                    help="SDPA backends allowed for layer/model (hf always gets the default dispatch)")
    ap.add_argument("--config", default=CONFIG_0_5B, help="HF config JSON of the model (Falcon-H1-0.5B)")
    ap.add_argument("--reference-ssd", action="store_true", help="naive PyTorch SSD/gated norm (CPU smoke tests)")
    ap.add_argument("--warm-cache", action="store_true", help="keep the usual on-disk Triton/Inductor caches")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    what = {w.strip() for w in args.what.split(",") if w.strip()} | ({"hf"} if args.hf else set())
    bad = what - {"layer", "model", "hf"}
    if bad:
        ap.error(f"unknown part(s) {sorted(bad)}")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cpu" and not args.reference_ssd and what & {"layer", "model"}:
        ap.error("no GPU: mamba-ssm's Triton kernels need one; use --reference-ssd for a CPU smoke test")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)

    env = dict(torch=torch.__version__, device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
               python=sys.version.split()[0])
    t0 = time.perf_counter()
    if dev.type == "cuda":  # context, cuBLAS: not any part's first step
        a = torch.randn(1024, 1024, device=dev, dtype=torch.bfloat16)
        (a @ a).sum().item()
    env["cuda_init_s"] = time.perf_counter() - t0
    if what & {"layer", "model"}:
        env["kernels"] = use_kernels(args.reference_ssd)
    if dev.type == "cuda":
        set_sdpa(args.sdpa)
        env["sdpa"] = f"{args.sdpa}, GQA {probe_sdpa(dev)}"
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    raw = load_config(args.config)

    plan = []
    for part, fn in (("layer", part_layer), ("model", part_model), ("hf", part_hf)):
        if part in what:
            plan.append((part, "eager", fn))
            if (args.compile and part != "hf") or (part == "hf" and args.hf_compile):
                plan.append((part, "compiled", fn))
    rows = [run_part(p, m, fn, args, dev, raw, "default" if p == "hf" else args.sdpa) for p, m, fn in plan]
    env["total_s"] = time.perf_counter() - t0
    check = {}
    if what & {"layer", "model"} and not args.reference_ssd:
        try:
            check = check_kernels(dev)
        except Exception as e:
            traceback.print_exc()
            check = {"error": f"{type(e).__name__}: {e}"[:160]}

    result = dict(env=env, args=vars(args), peak_tflops=PEAK_TFLOPS,
                  flops_formula="6*P*B*T + 12*L*B*T^2*d_attn/2 (P: params less the token embedding)",
                  kernel_check=check, results=rows)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(" ".join(f"{k} {v}" for k, v in env.items() if not k.endswith("_s")))
    print(f"cuda init {env['cuda_init_s']:.1f} s, total {env['total_s']:.0f} s; MFU against {PEAK_TFLOPS:.0f} TFLOP/s")
    if check:
        print("kernels against the naive references (max err / max ref): "
              + ", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}" for k, v in check.items()))
    print(table(rows))
    ok = all("error" not in r for r in rows) and all(isinstance(v, float) and v < 5e-2 for v in check.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
