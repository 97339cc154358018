#!/usr/bin/env bash
# One short call on the GPU machine (`device` tool) for NCCL: the small hybrid trained
# alone on the GPU, then as a job of one rank started from torchrun's environment (its
# gradients and loss summed through NCCL inside the captured graph), then the same job
# with --zero (gradients reduce-scattered, weights all-gathered). Prints the largest loss
# difference from the run alone and the tokens/s of each. Needs dist/hyb.xz (carried).
source "$(dirname "$0")/device_env.sh"
steps=${STEPS:-30}
for run in alone nccl nccl_zero; do
    flags=""; env=()
    [ "$run" != alone ] && env=(RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517 NCCL_DEBUG=WARN)
    [ "$run" = nccl_zero ] && flags="--zero"
    env "${env[@]}" timeout 240 "$work/hyb" train bench/models/tensor_core_hybrid.hyb --device cuda --precision bf16 \
        --batch 4 --seq 256 --steps "$steps" --eval-every 0 --save-every 0 $flags --out "$work/run_$run" \
        > "$OUT/train_$run.txt" 2>&1
    echo "$run: rc $?"; grep -E "rank 0|NCCL|rror" "$OUT/train_$run.txt" | head -n 6
    cp "$work/run_$run/metrics.jsonl" "$OUT/metrics_$run.jsonl" 2>/dev/null
done
python3 - "$OUT" <<'PY'
import json, sys, os, statistics
out = sys.argv[1]
def rows(run):
    p = os.path.join(out, f"metrics_{run}.jsonl")
    return [json.loads(l) for l in open(p) if '"loss"' in l] if os.path.exists(p) else []
base = rows("alone")
for run in ["alone", "nccl", "nccl_zero"]:
    r = rows(run)
    n = min(len(r), len(base))
    if not n:
        print(f"{run}: no steps", len(r))
        continue
    d = max(abs(x["loss"] - y["loss"]) for x, y in zip(r, base))
    tok = statistics.median(x["tokens_per_s"] for x in r[5:n]) if n > 6 else float("nan")
    print(f"{run}: {n} steps, largest loss difference from alone {d:.2e}, last loss {r[n-1]['loss']:.4f}, "
          f"median {tok:.0f} tokens/s")
PY
