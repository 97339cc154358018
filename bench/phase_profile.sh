#!/usr/bin/env bash
# One call on the GPU machine (`device` tool): Nsight Compute's duration, memory and compute
# throughput (percent of the H200's peak) for every phase of the named templates, in one
# training step of the Falcon-H1 layer benchmark (bench/models/falcon_h1_layer.hyb, B 2,
# T 4096, bf16): where a template's time goes, phase by phase. KERNELS (a regular
# expression over entry names, which are the template's name and its phase) picks them,
# COUNT bounds the launches profiled. Needs dist/hyb.xz (carried). Report under $OUT.
source "$(dirname "$0")/device_env.sh"
kernels=${KERNELS:-conv1d_silu|ssd_scan|flash_attention|concat|embedding_grad|one_hot}
timeout "${LIMIT_S:-400}" /usr/local/cuda/bin/ncu --clock-control none --kernel-name "regex:$kernels" \
    --launch-count "${COUNT:-40}" --section SpeedOfLight --csv --page raw \
    --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed \
    "$work/hyb" train bench/models/falcon_h1_layer.hyb --device cuda --precision bf16 --batch 2 --seq 4096 \
    --steps 1 --eval-every 0 --save-every 0 --out "$work/layer" > "$OUT/ncu.csv" 2> "$OUT/ncu.log"
echo "rc $?"
python3 - "$OUT/ncu.csv" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
if not rows:
    print("no profiled kernels"); sys.exit()
head = rows[0]
col = {name: head.index(name) for name in head}
def value(r, name):
    return r[col[name]] if name in col else "?"
print("duration in", rows[1][col["gpu__time_duration.sum"]] if "gpu__time_duration.sum" in col else "?", "/ 1000")
print(f"{'entry':60} {'time':>9} {'DRAM %':>7} {'SM %':>6}")
for r in rows[1:]:
    if value(r, "Kernel Name") in ("", "Kernel Name") or not value(r, "gpu__time_duration.sum")[:1].isdigit():
        continue
    t = float(value(r, "gpu__time_duration.sum").replace(",", ""))
    print(f"{value(r, 'Kernel Name')[:60]:60} {t / 1000:9.1f} {value(r, 'dram__throughput.avg.pct_of_peak_sustained_elapsed'):>7} {value(r, 'sm__throughput.avg.pct_of_peak_sustained_elapsed'):>6}")
PY
tail -n 5 "$OUT/ncu.log"
