#!/usr/bin/env bash
# One call on the GPU machine (`device` tool) for the CUDA executor, in this order:
# generation on the GPU and the CPU against Hugging Face's greedy output on every Falcon-H1
# fixture (bench/gpu_generate.sh); every launch of every example model's training step and
# evaluation against the CPU executor (`hyb train --check-gpu`, float32, outputs
# poisoned), and of a packed-documents step; a training run of a tiny model on the GPU in
# bf16 mixed precision and in float32 against the same run on the CPU (the bf16 run
# profiled launch by launch); then, with FALCON_STEPS set, a Falcon-H1-0.5B-shaped model
# trained on the GPU at B 4, T 4096 in bf16 and profiled. Needs dist/hyb.xz (a stripped
# release binary, xz; carried). Writes its logs and summaries under $OUT (run directories
# stay in a temporary folder: only their metrics come back). DEADLINE_S (default 570)
# bounds the whole call: a phase that would not finish in the time left is skipped and says
# so, so one device call always returns its logs.
source "$(dirname "$0")/device_env.sh"
deadline=${DEADLINE_S:-570}
SECONDS=0
# Whether a phase that needs $1 seconds still fits; prints why it is skipped otherwise.
fits() {
    if [ $((deadline - SECONDS)) -lt "$1" ]; then
        echo "== skipped $2: $((deadline - SECONDS)) s left, it needs about $1 s"
        return 1
    fi
}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if fits 60 "generation"; then
    timeout $((deadline - SECONDS)) bash bench/gpu_generate.sh "$work/hyb"
fi
for model in ${MODELS:-examples/*.hyb}; do
    name=$(basename "$model" .hyb)
    fits 20 "check of $name" || continue
    echo "== $name"
    left=$((deadline - SECONDS - ${RESERVE_S:-60}))
    timeout "$(( left < ${PER_MODEL_S:-150} ? (left < 20 ? 20 : left) : ${PER_MODEL_S:-150} ))" "$work/hyb" train "$model" --check-gpu --batch "${BATCH:-2}" --seq "${SEQ:-32}" \
        > "$OUT/check_$name.txt" 2>&1
    echo "rc $?" >> "$OUT/check_$name.txt"
    grep -v "^FAIL" "$OUT/check_$name.txt" | tail -n 4
    grep "^FAIL" "$OUT/check_$name.txt" | head -n 8
done
# Packed documents: every launch of a packed training step and evaluation (the document_*
# templates) against the CPU, on a text of short documents.
python3 -c "
import random; random.seed(1)
w = ['alpha', 'beta', 'gamma', 'delta', 'state', 'space', 'model', 'hybrid', 'attention', 'scan']
open('$work/docs.txt', 'w').write('\n'.join(' '.join(random.choice(w) for _ in range(random.randint(2, 30))) for _ in range(3000)) + '\n')"
if fits 30 "the packed check"; then
    echo "== tiny_hybrid, packed"
    timeout 60 "$work/hyb" train examples/tiny_hybrid.hyb --check-gpu --data "$work/docs.txt" --pack eod=10 \
        --batch "${BATCH:-2}" --seq "${SEQ:-32}" > "$OUT/check_packed.txt" 2>&1
    echo "rc $?" >> "$OUT/check_packed.txt"
    grep -v "^FAIL" "$OUT/check_packed.txt" | tail -n 4
    grep "^FAIL" "$OUT/check_packed.txt" | head -n 8
fi
steps=${STEPS:-200}
for run in cuda_bf16 cuda_f32 cpu; do
    case $run in
        cuda_bf16) flags="--device cuda --precision bf16 --profile" ;;
        cuda_f32) flags="--device cuda --precision f32" ;;
        cpu) flags="--device cpu" ;;
    esac
    fits 30 "tiny_hybrid on $run" || continue
    /usr/bin/time -f "$run: %e s wall" timeout $((deadline - SECONDS)) "$work/hyb" train examples/tiny_hybrid.hyb $flags \
        --steps "$steps" --eval-every 50 --out "$work/run_$run" > "$OUT/train_$run.txt" 2>&1
    echo "rc $?" >> "$OUT/train_$run.txt"
    mkdir -p "$OUT/run_$run" && cp "$work/run_$run/metrics.jsonl" "$OUT/run_$run/" 2>/dev/null
    tail -n 16 "$OUT/train_$run.txt"
done
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def rows(run):
    p = os.path.join(out, f"run_{run}", "metrics.jsonl")
    if not os.path.exists(p):
        return []
    return [json.loads(l) for l in open(p) if l.strip()]
med = lambda v: sorted(v)[len(v) // 2] if v else float("nan")
cpu = rows("cpu")
c = [r["loss"] for r in cpu if "loss" in r]
for run in ["cuda_bf16", "cuda_f32"]:
    gpu = rows(run)
    g = [r["loss"] for r in gpu if "loss" in r]
    if not (g and c):
        print(f"{run}: no metrics to compare", len(g), len(c))
        continue
    n = min(len(g), len(c))
    diffs = [abs(a - b) for a, b in zip(g[:n], c[:n])]
    # Curves compared where noise is averaged: means over windows of 20 steps.
    w = 20
    means = [abs(sum(g[i:i + w]) - sum(c[i:i + w])) / w for i in range(0, n - w + 1, w)]
    tg = [r.get("tokens_per_s") for r in gpu if r.get("tokens_per_s")]
    print(f"{run}: first-step loss {g[0]:.6f} vs CPU {c[0]:.6f} (diff {diffs[0]:.2e}); {n} steps, largest loss "
          f"difference {max(diffs):.2e}, largest 20-step-mean difference {max(means):.2e}; last {g[n-1]:.4f} vs "
          f"CPU {c[n-1]:.4f}; median tokens/s {med(tg):.0f}")
tc = [r.get("tokens_per_s") for r in cpu if r.get("tokens_per_s")]
print(f"cpu: median tokens/s {med(tc):.0f} (16 cores)")
PY
if [ "${FALCON_STEPS:-0}" -gt 0 ] && fits "${FALCON_NEEDS_S:-150}" "Falcon-H1-0.5B"; then
    /usr/bin/time -f "falcon_h1_0_5b: %e s wall, %M KiB host memory" timeout $((deadline - SECONDS)) \
        "$work/hyb" train stdlib/falcon_h1.hyb --model falcon_h1_0_5b --device cuda --precision "${FALCON_PRECISION:-bf16}" --batch 4 --seq 4096 \
        --steps "$FALCON_STEPS" --warmup 2 --eval-every 0 --save-every 0 --profile --out "$work/falcon" \
        > "$OUT/train_falcon_h1_0_5b.txt" 2>&1
    echo "rc $?" >> "$OUT/train_falcon_h1_0_5b.txt"
    cp "$work/falcon/metrics.jsonl" "$OUT/falcon_metrics.jsonl" 2>/dev/null
    grep -E "training step on|first step|arena|device memory|tokens/s|MFU" "$OUT/train_falcon_h1_0_5b.txt" | head -n 20
    tail -n 30 "$OUT/train_falcon_h1_0_5b.txt"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader
fi
