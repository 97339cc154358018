#!/usr/bin/env python3
"""hyb's CPU training against Hugging Face transformers' FalconH1ForCausalLM, same model,
same batch and sequence, float32, forward + backward + AdamW, on the same cores.

For each model below this builds a FalconH1Config, saves a randomly initialised
FalconH1ForCausalLM, imports it into hyb (`hyb import`), and then, pinned to --cores:
  - trains the HF model for --steps steps on random tokens (torch threads = cores),
  - trains the imported model with `hyb train` on a token file of random ids,
and reports tokens/s for both (the median over the steps after --warmup) and the ratio.
Both read random token ids; the data does not change the work of a step.

Usage (on a machine with torch and transformers, from the repository root):
  python3 bench/cpu_vs_hf.py --hyb target/release/hyb [--cores 0,1] [--steps 30]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from transformers import FalconH1Config, FalconH1ForCausalLM

COMMON = dict(
    hidden_act="silu",
    mamba_d_conv=4,
    mamba_expand=2,
    mamba_n_groups=1,
    mamba_rms_norm=False,
    mamba_norm_before_gate=False,
    mamba_conv_bias=True,
    mamba_proj_bias=False,
    projectors_bias=False,
    attention_bias=False,
    mlp_bias=False,
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    initializer_range=0.02,
    attention_dropout=0.0,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    use_cache=False,
)

MODELS = [
    dict(
        name="mqar_121k",
        batch=32,
        seq=32,
        cfg=dict(
            vocab_size=64,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=16,
            mamba_n_heads=4,
            mamba_d_head=16,
            mamba_d_ssm=64,
            mamba_d_state=16,
            mamba_chunk_size=16,
            max_position_embeddings=64,
        ),
    ),
    dict(
        name="small_lm_3m",
        batch=8,
        seq=256,
        cfg=dict(
            vocab_size=256,
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=32,
            mamba_n_heads=8,
            mamba_d_head=32,
            mamba_d_ssm=256,
            mamba_d_state=64,
            mamba_chunk_size=64,
            max_position_embeddings=512,
        ),
    ),
]


def hf_tokens_per_s(model, batch, seq, vocab, steps, warmup):
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    rates = []
    for step in range(steps):
        ids = torch.randint(0, vocab, (batch, seq))
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - started
        if step >= warmup:
            rates.append(batch * seq / elapsed)
    return statistics.median(rates), float(loss)


def hyb_tokens_per_s(hyb, hyb_file, batch, seq, vocab, steps, warmup, work):
    data = os.path.join(work, "tokens.bin")
    ids = torch.randint(0, vocab, (batch * seq * (steps + 4),), dtype=torch.int32)
    with open(data, "wb") as f:
        f.write(ids.numpy().astype("<u4").tobytes())
    out = os.path.join(work, "run")
    cmd = [hyb, "train", hyb_file, "--data", data, "--token-bytes", "4", "--batch", str(batch),
           "--seq", str(seq), "--steps", str(steps), "--lr", "1e-3", "--out", out, "--force"]
    started = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"hyb train failed:\n{run.stdout}\n{run.stderr}")
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][warmup:]
    native = next((l for l in (run.stdout + run.stderr).splitlines() if "launches run native" in l), "")
    return statistics.median(rates), rows[-1]["loss"], wall, native.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hyb", required=True)
    ap.add_argument("--cores", default="0,1")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    cores = {int(c) for c in args.cores.split(",")}
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    print(f"cores {sorted(cores)}, torch {torch.__version__}, {torch.get_num_threads()} threads, float32")
    results = []
    for m in MODELS:
        with tempfile.TemporaryDirectory() as work:
            cfg = FalconH1Config(**COMMON, **m["cfg"])
            torch.manual_seed(0)
            model = FalconH1ForCausalLM(cfg).float()
            params = sum(p.numel() for p in model.parameters())
            hf_dir = os.path.join(work, m["name"])
            model.save_pretrained(hf_dir, safe_serialization=True)
            subprocess.run([args.hyb, "import", hf_dir, "-o", work, "--name", m["name"]], check=True,
                           capture_output=True)
            hf, hf_loss = hf_tokens_per_s(model, m["batch"], m["seq"], cfg.vocab_size, args.steps, args.warmup)
            hy, hy_loss, wall, native = hyb_tokens_per_s(args.hyb, os.path.join(work, m["name"] + ".hyb"),
                                                         m["batch"], m["seq"], cfg.vocab_size, args.steps,
                                                         args.warmup, work)
            row = dict(model=m["name"], params=params, batch=m["batch"], seq=m["seq"], hf_tok_s=round(hf),
                       hyb_tok_s=round(hy), ratio=round(hy / hf, 2), hf_last_loss=round(hf_loss, 3),
                       hyb_last_loss=round(hy_loss, 3), hyb_wall_s=round(wall, 1), hyb_native=native)
            print(json.dumps(row), flush=True)
            results.append(row)
    print("| model | params | B×T | HF tok/s | hyb tok/s | hyb / HF |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['params']:,} | {r['batch']}×{r['seq']} | {r['hf_tok_s']:,} | "
              f"{r['hyb_tok_s']:,} | {r['ratio']}× |")


if __name__ == "__main__":
    main()
