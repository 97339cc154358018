#!/usr/bin/env bash
# One call on the GPU machine (`device` tool) for the CUDA executor: every launch of every
# example model's training step and evaluation against the CPU executor (`hyb train
# --check-gpu`, outputs poisoned), then a training run of a tiny model on the GPU against
# the same run on the CPU (the GPU run profiled launch by launch), then, with FALCON_STEPS
# set, a Falcon-H1-0.5B-shaped model trained on the GPU at B 4, T 4096 and profiled. Needs
# dist/hyb.xz (a stripped release binary, xz; carried). Writes its logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/hyb-out}
mkdir -p "$OUT"
work=$(mktemp -d)
xz -dc dist/hyb.xz > "$work/hyb" && chmod +x "$work/hyb"
export HYB_STDLIB="$PWD/stdlib" LD_LIBRARY_PATH="/usr/local/cuda/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}"
export HYB_CACHE_DIR="$work/cache"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for model in ${MODELS:-examples/*.hyb}; do
    name=$(basename "$model" .hyb)
    echo "== $name"
    timeout "${PER_MODEL_S:-150}" "$work/hyb" train "$model" --check-gpu --batch "${BATCH:-2}" --seq "${SEQ:-32}" \
        > "$OUT/check_$name.txt" 2>&1
    echo "rc $?" >> "$OUT/check_$name.txt"
    grep -v "^FAIL" "$OUT/check_$name.txt" | tail -n 4
    grep "^FAIL" "$OUT/check_$name.txt" | head -n 8
done
steps=${STEPS:-200}
for device in cuda cpu; do
    extra=""; [ $device = cuda ] && extra="--profile"
    /usr/bin/time -f "$device: %e s wall" timeout 300 "$work/hyb" train examples/tiny_hybrid.hyb --device $device \
        --steps "$steps" --eval-every 50 $extra --out "$OUT/run_$device" > "$OUT/train_$device.txt" 2>&1
    echo "rc $?" >> "$OUT/train_$device.txt"
    tail -n 24 "$OUT/train_$device.txt"
done
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def losses(d):
    p = os.path.join(out, f"run_{d}", "metrics.jsonl")
    if not os.path.exists(p):
        return []
    return [json.loads(l) for l in open(p) if l.strip()]
gpu, cpu = losses("cuda"), losses("cpu")
g = [r["loss"] for r in gpu if "loss" in r]; c = [r["loss"] for r in cpu if "loss" in r]
if g and c:
    n = min(len(g), len(c))
    worst = max(abs(a - b) for a, b in zip(g[:n], c[:n]))
    print(f"first-step loss GPU {g[0]:.6f} CPU {c[0]:.6f} (diff {abs(g[0]-c[0]):.2e}); {n} steps, largest loss difference {worst:.2e}; last GPU {g[n-1]:.4f} CPU {c[n-1]:.4f}")
    tg = [r.get("tokens_per_s") for r in gpu if r.get("tokens_per_s")]
    tc = [r.get("tokens_per_s") for r in cpu if r.get("tokens_per_s")]
    if tg and tc:
        med = lambda v: sorted(v)[len(v)//2]
        print(f"tokens/s (median step): GPU {med(tg):.0f}, CPU (16 cores) {med(tc):.0f}")
else:
    print("no metrics to compare", len(g), len(c))
PY
if [ "${FALCON_STEPS:-0}" -gt 0 ]; then
    /usr/bin/time -f "falcon_h1_0_5b: %e s wall, %M KiB host memory" timeout "${FALCON_TIMEOUT_S:-400}" \
        "$work/hyb" train stdlib/falcon_h1.hyb --model falcon_h1_0_5b --device cuda --batch 4 --seq 4096 \
        --steps "$FALCON_STEPS" --warmup 2 --eval-every 0 --save-every 0 --profile --out "$work/falcon" \
        > "$OUT/train_falcon_h1_0_5b.txt" 2>&1
    echo "rc $?" >> "$OUT/train_falcon_h1_0_5b.txt"
    cp "$work/falcon/metrics.jsonl" "$OUT/falcon_metrics.jsonl" 2>/dev/null
    tail -n 30 "$OUT/train_falcon_h1_0_5b.txt"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader
fi
