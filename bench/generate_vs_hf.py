#!/usr/bin/env python3
"""Prefill and decode tokens/s of transformers' FalconH1ForCausalLM on the CPU, for the
same checkpoint and prompt as `hyb generate` (bench/RESULTS.md, "Generation").

    hyb export MODEL.hyb --weights W -o HF_DIR
    python3 bench/generate_vs_hf.py HF_DIR --vocab V [--prompt 100] [--new 64] [--threads 2]

The prompt is ids (i*37+5) % V, as in the hyb command of RESULTS.md. Prefill is one
forward pass over the prompt with use_cache=True; decode is greedy, one token per forward
pass from the cache (what generate does), timed over --new - 1 steps; best of 3.
"""
import argparse
import time

import torch
from transformers import FalconH1ForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf_dir")
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--prompt", type=int, default=100)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = FalconH1ForCausalLM.from_pretrained(args.hf_dir, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    ids = torch.tensor([[(i * 37 + 5) % args.vocab for i in range(args.prompt)]], dtype=torch.long)
    best_pre, best_dec, tokens = float("inf"), float("inf"), None
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            t1 = time.perf_counter()
            pkv, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            got = [nxt.item()]
            for _ in range(args.new - 1):
                out = model(input_ids=nxt, past_key_values=pkv, use_cache=True)
                pkv, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                got.append(nxt.item())
            t2 = time.perf_counter()
            best_pre, best_dec, tokens = min(best_pre, t1 - t0), min(best_dec, t2 - t1), got
    print("prefill: %d tokens in %.1f ms (%.1f tokens/s); decode: %d tokens in %.1f ms (%.1f tokens/s)"
          % (args.prompt, best_pre * 1e3, args.prompt / best_pre, args.new - 1, best_dec * 1e3,
             (args.new - 1) / best_dec))
    print("generated:", ",".join(map(str, tokens)))


if __name__ == "__main__":
    main()
