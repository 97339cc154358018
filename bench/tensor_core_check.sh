#!/usr/bin/env bash
# One call on the GPU machine (`device` tool) for the tensor-core templates, in this order:
# the device cases (compiler/tests/ptx_on_device.py on dist/tc/cases: every template, and
# the tensor-core attention and SSD forward and gradient, against the reference, outputs
# poisoned; with SANITIZE=1 the SSD cases again under compute-sanitizer); the attention
# benchmark against SDPA (bench/attention_mma.py on dist/tc/bench); the SSD scan against
# mamba-ssm (bench/ssd_mma.py, the peer in dist/tc/peer; before it bench/ssd_debug.py, the
# gradient's workspace phase by phase); a small hybrid whose attention has head dimension
# 64 trained in bf16 on the GPU (so the tensor-core templates run in the training step)
# against the same run on the CPU; with CHECK=1, every launch of that hybrid's step at
# 2,048 tokens against the CPU executor; with LAYER_STEPS set, the peer's Falcon-H1 layer
# (bench/models/falcon_h1_layer.hyb: d 2048, four layers) at B 2, T 4096 in bf16, profiled
# per layer; then, with FALCON_STEPS set, Falcon-H1-0.5B at B 4, T 4096 in bf16, profiled.
# WARM=1 runs the 0.5B model once more (its warm start); NONFINITE=0 leaves out the run
# whose every step is non-finite. PACKED=1 adds the small hybrid on packed rows; NCCL=1 a one-rank job through NCCL; CASES=ssd runs the SSD scan's
# device cases only. ATTENTION=0, HYBRID=0, CASES=0 and
# SSD=0 leave out the attention benchmark, the small hybrid, the device cases and the SSD benchmarks. Needs dist/hyb.xz and dist/tc.tar.xz (carried;
# `make device-tc` writes both). Logs come back under $OUT.
source "$(dirname "$0")/device_env.sh"
# The SSD scan's tensor-core cases alone, in a folder of their own (for CASES=ssd and the
# sanitizer).
ssd_cases() {
    python3 - dist/tc/cases "$work/ssd_cases" <<'PY'
import json, os, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
cases = [c for c in json.load(open(os.path.join(src, "cases.json"))) if c["name"].startswith("tensor_core_ssd")]
for c in cases:
    for f in os.listdir(src):
        if f.startswith(c["name"] + "."):
            os.symlink(os.path.abspath(os.path.join(src, f)), os.path.join(dst, f))
json.dump(cases, open(os.path.join(dst, "cases.json"), "w"))
PY
}
case "${CASES:-1}" in
    1) cases=dist/tc/cases ;;
    ssd) ssd_cases; cases="$work/ssd_cases" ;;
    *) cases="" ;;
esac
if [ -n "$cases" ]; then
    python3 compiler/tests/ptx_on_device.py "$cases" > "$OUT/cases.txt" 2>&1
    grep FAIL "$OUT/cases.txt" | head -n 12; tail -n 1 "$OUT/cases.txt"
fi
# With SANITIZE=1, the SSD cases again under compute-sanitizer's memcheck and racecheck.
if [ "${SANITIZE:-0}" = 1 ]; then
    [ -d "$work/ssd_cases" ] || ssd_cases
    for tool in memcheck racecheck; do
        timeout 150 /usr/local/cuda-13.0/bin/compute-sanitizer --tool "$tool" \
            python3 compiler/tests/ptx_on_device.py "$work/ssd_cases" > "$OUT/sanitize_$tool.txt" 2>&1
        echo "$tool rc $?"; grep -E "ERROR SUMMARY|Invalid|hazard" "$OUT/sanitize_$tool.txt" | sort | uniq -c | head -n 8
    done
fi
if [ "${ATTENTION:-1}" = 1 ]; then
    python3 bench/attention_mma.py dist/tc/bench 2>&1 | tail -n 12
fi
if [ "${SSD:-1}" = 1 ]; then
    python3 bench/ssd_debug.py dist/tc/bench 2>&1 | tail -n 12
    PYTHONPATH=dist/tc/peer python3 bench/ssd_mma.py dist/tc/bench 2>&1 | tail -n 12
fi
# With PACKED=1 the same pair again on packed rows (this README's lines as documents, so
# attention, conv and scan restart every few dozen tokens).
steps=${STEPS:-60}
runs="cuda_bf16 cpu"
[ "${PACKED:-0}" = 1 ] && runs="$runs packed_cuda_bf16 packed_cpu"
[ "${HYBRID:-1}" = 1 ] || runs=""
for run in $runs; do
    case $run in
        cuda_bf16) flags="--device cuda --precision bf16 --profile" ;;
        cpu) flags="--device cpu" ;;
        packed_cuda_bf16) flags="--device cuda --precision bf16 --profile --data README.md --pack eod=10" ;;
        packed_cpu) flags="--device cpu --data README.md --pack eod=10" ;;
    esac
    timeout 240 "$work/hyb" train bench/models/tensor_core_hybrid.hyb $flags --batch 4 --seq 256 \
        --steps "$steps" --eval-every 20 --eval-batches 2 --save-every 0 --out "$work/run_$run" > "$OUT/train_$run.txt" 2>&1
    echo "rc $?" >> "$OUT/train_$run.txt"
    cp "$work/run_$run/metrics.jsonl" "$OUT/metrics_$run.jsonl" 2>/dev/null
    grep -E "attention|rc " "$OUT/train_$run.txt" | head -n 12
done
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def losses(run):
    p = os.path.join(out, f"metrics_{run}.jsonl")
    return [json.loads(l)["loss"] for l in open(p) if '"loss"' in l] if os.path.exists(p) else []
def evals(run):
    p = os.path.join(out, f"metrics_{run}.jsonl")
    rows = [json.loads(l) for l in open(p)] if os.path.exists(p) else []
    return [round(r["eval_loss"], 5) for r in rows if r.get("eval_loss") is not None]
for rows in ["", "packed_"]:
    g, c = losses(rows + "cuda_bf16"), losses(rows + "cpu")
    n = min(len(g), len(c))
    if n == 0:
        print(f"{rows}: no losses to compare", len(g), len(c))
        continue
    d = [abs(a - b) for a, b in zip(g, c)]
    print(f"tensor_core_hybrid {rows}bf16 GPU vs f32 CPU: first-step loss {g[0]:.6f} vs {c[0]:.6f} "
          f"(diff {d[0]:.2e}); {n} steps, largest difference {max(d):.2e}; last {g[n-1]:.4f} vs {c[n-1]:.4f}")
    # The evaluations run in the step's arena on the GPU: the steps after them must still
    # match, and so must the evaluation losses.
    ge, ce = evals(rows + "cuda_bf16"), evals(rows + "cpu")
    print(f"  evaluation losses GPU {ge} vs CPU {ce}")
PY
# A learning rate that is infinite in float32: every step's update is dropped on the
# device (the step selects it on the loss, norm and rate being finite), three such steps
# stop the run, and no checkpoint of a bad state is written.
if [ "${NONFINITE:-1}" = 1 ]; then
    timeout 120 "$work/hyb" train bench/models/tensor_core_hybrid.hyb --device cuda --precision bf16 --batch 4 \
        --seq 256 --steps 10 --lr 1e300 --warmup 0 --save-every 1 --eval-every 0 --out "$work/run_nonfinite" \
        > "$OUT/train_nonfinite.txt" 2>&1
    echo "nonfinite rc $? (want 1); checkpoint: $(ls "$work/run_nonfinite" 2>/dev/null | grep -c safetensors) (want 0)"
    grep -iE "stopped|error" "$OUT/train_nonfinite.txt" | head -n 3
fi
# With NCCL=1, bench/nccl_check.sh: the small hybrid as a job of one rank through NCCL,
# with and without --zero, against the run alone.
if [ "${NCCL:-0}" = 1 ]; then
    STEPS=$steps bash "$(dirname "$0")/nccl_check.sh" | tail -n 3
fi
# With CHECK=1, every launch of the small hybrid's training step at 2,048 tokens (sums over
# tokens split into partial steps) on the GPU against the CPU executor, outputs poisoned.
if [ "${CHECK:-0}" = 1 ]; then
    timeout 150 "$work/hyb" train bench/models/tensor_core_hybrid.hyb --check-gpu --batch 4 --seq 512 \
        > "$OUT/check_tensor_core_hybrid.txt" 2>&1
    echo "rc $?" >> "$OUT/check_tensor_core_hybrid.txt"
    grep -v "^FAIL" "$OUT/check_tensor_core_hybrid.txt" | tail -n 4
    grep "^FAIL" "$OUT/check_tensor_core_hybrid.txt" | head -n 8
fi
if [ "${LAYER_STEPS:-0}" -gt 0 ]; then
    timeout "${LAYER_LIMIT_S:-150}" "$work/hyb" train bench/models/falcon_h1_layer.hyb --device cuda --precision bf16 \
        --batch 2 --seq 4096 --steps "$LAYER_STEPS" --warmup 2 --eval-every 0 --save-every 0 --profile \
        --out "$work/layer" > "$OUT/train_falcon_h1_layer.txt" 2>&1
    echo "rc $?" >> "$OUT/train_falcon_h1_layer.txt"
    cp "$work/layer/profile.json" "$OUT/layer_profile.json" 2>/dev/null
    grep -E "per layer|step profile|rc |error" "$OUT/train_falcon_h1_layer.txt" | head -n 6
fi
if [ "${FALCON_STEPS:-0}" -gt 0 ]; then
    /usr/bin/time -f "falcon_h1_0_5b: %e s wall, %M KiB host memory" timeout "${FALCON_LIMIT_S:-300}" \
        "$work/hyb" train stdlib/falcon_h1.hyb --model falcon_h1_0_5b --device cuda --precision bf16 --batch 4 --seq 4096 \
        --steps "$FALCON_STEPS" --warmup 2 --eval-every 0 --save-every 0 --profile --out "$work/falcon" \
        > "$OUT/train_falcon_h1_0_5b.txt" 2>&1
    echo "rc $?" >> "$OUT/train_falcon_h1_0_5b.txt"
    cp "$work/falcon/metrics.jsonl" "$OUT/falcon_metrics.jsonl" 2>/dev/null
    cp "$work/falcon/profile.json" "$OUT/falcon_profile.json" 2>/dev/null
    tail -n 45 "$OUT/train_falcon_h1_0_5b.txt"
    # With WARM=1 the same model again, unprofiled: its start with the driver's JIT cache
    # (and this run's kernel cache) warm.
    if [ "${WARM:-0}" = 1 ]; then
        /usr/bin/time -f "falcon_h1_0_5b warm: %e s wall" timeout 200 "$work/hyb" train stdlib/falcon_h1.hyb \
            --model falcon_h1_0_5b --device cuda --precision bf16 --batch 4 --seq 4096 --steps 2 --warmup 2 \
            --eval-every 0 --save-every 0 --out "$work/falcon_warm" > "$OUT/train_falcon_h1_0_5b_warm.txt" 2>&1
        grep -E "start:|first step|device memory|training step on|wall" "$OUT/train_falcon_h1_0_5b_warm.txt"
    fi
fi
