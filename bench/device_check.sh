#!/usr/bin/env bash
# One call on the GPU machine (`device` tool): every generated kernel and template run on
# the GPU against the reference, then the CPU benchmark against Hugging Face on two pinned
# cores. Needs in dist/ (git-ignored, carried): hyb.xz (a stripped release binary, xz) and
# cases.tar.xz (`HYB_PTX_CASES=… cargo test --release -p hyb-compiler --test codegen
# export -- --ignored`, tarred). Writes its reports under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/hyb-out}
work=$(mktemp -d)
xz -dc dist/hyb.xz > "$work/hyb" && chmod +x "$work/hyb"
export HYB_STDLIB="$PWD/stdlib"
tar xJf dist/cases.tar.xz -C "$work"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 compiler/tests/ptx_on_device.py "$work/cases" 2>&1 | tail -n 30 | tee "$OUT/ptx_on_device.txt"
lscpu | grep -E "Model name|^CPU\(s\)" | tee "$OUT/cpu.txt"
python3 bench/cpu_vs_hf.py --hyb "$work/hyb" --cores 0,1 --steps "${STEPS:-12}" --warmup 3 2>&1 | grep -v Warning | tee "$OUT/cpu_vs_hf.txt"
