#!/usr/bin/env bash
# Packed documents on the CPU: the same text of short documents (one per line, 2–30 words)
# trained on tiny_hybrid packed (`--pack eod=10`, every row whole documents, attention, conv
# and scan confined to them) and unpacked (rows cut anywhere, attending across lines), 60
# steps each at B 16, T 64, evaluation every 20. Prints each run's median tokens/s, its
# launches, and the losses at steps 0, 20, 40, 59. Usage: bash bench/packed_cpu.sh
# [HYB_BINARY] (default target/release/hyb).
set -euo pipefail
cd "$(dirname "$0")/.."
hyb=${1:-target/release/hyb}
work=$(mktemp -d)
export HYB_STDLIB="$PWD/stdlib"
python3 - "$work/docs.txt" <<'PY'
import random, sys
random.seed(1)
words = ["alpha", "beta", "gamma", "delta", "state", "space", "model", "hybrid", "attention", "scan"]
lines = [" ".join(random.choice(words) for _ in range(random.randint(2, 30))) for _ in range(3000)]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
for run in packed unpacked; do
    flags=""
    [ "$run" = packed ] && flags="--pack eod=10"
    "$hyb" train examples/tiny_hybrid.hyb --device cpu --data "$work/docs.txt" $flags --steps 60 --eval-every 20 \
        --out "$work/$run" > "$work/$run.txt" 2>&1
    grep "launches run native" "$work/$run.txt" | sed "s/^/$run: /"
    python3 - "$work/$run/metrics.jsonl" "$run" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rates = sorted(r["tokens_per_s"] for r in rows)
pick = {r["step"]: r for r in rows}
losses = ", ".join(f"{s}: {pick[s]['loss']:.4f}" for s in (0, 20, 40, 59) if s in pick)
evals = ", ".join(f"{r['step']}: {r['eval_loss']:.4f}" for r in rows if "eval_loss" in r)
print(f"{sys.argv[2]}: median {rates[len(rates) // 2]:.0f} tokens/s; train loss {losses}; eval loss {evals}")
PY
done
