#!/usr/bin/env bash
# One call on the GPU machine (`device` tool): every generated kernel and template run on
# the GPU against the reference, then the CPU benchmark against Hugging Face on two pinned
# cores. Uses what dist/ (git-ignored, carried) holds: cases*.tar.xz (`HYB_PTX_CASES=… cargo
# test --release -p hyb-compiler --test codegen export -- --ignored`, tarred; split into
# several archives, each with its own cases.json, when one call's carry cannot hold them
# all) and hyb.xz (a stripped release binary, xz; the benchmark runs only when it is
# there). Writes its reports under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/hyb-out}
work=$(mktemp -d)
export HYB_STDLIB="$PWD/stdlib"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for archive in dist/cases*.tar.xz; do
    [ -e "$archive" ] || continue
    part=$(basename "$archive" .tar.xz)
    mkdir -p "$work/$part" && tar xJf "$archive" -C "$work/$part" --strip-components=1
    python3 compiler/tests/ptx_on_device.py "$work/$part" 2>&1 | tail -n 30 | tee "$OUT/ptx_on_device_$part.txt"
done
[ -e dist/hyb.xz ] || exit 0
xz -dc dist/hyb.xz > "$work/hyb" && chmod +x "$work/hyb"
lscpu | grep -E "Model name|^CPU\(s\)" | tee "$OUT/cpu.txt"
python3 bench/cpu_vs_hf.py --hyb "$work/hyb" --cores 0,1 --steps "${STEPS:-12}" --warmup 3 2>&1 | grep -v Warning | tee "$OUT/cpu_vs_hf.txt"
