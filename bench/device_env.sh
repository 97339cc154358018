# Sourced by the device scripts (bench/gpu_check.sh, bench/tensor_core_check.sh) on the GPU
# machine: from the repository root, $OUT for the logs, the carried binary (dist/hyb.xz)
# unpacked into a temporary $work as $work/hyb, and the environment it runs in.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/hyb-out}
mkdir -p "$OUT"
work=$(mktemp -d)
xz -dc dist/hyb.xz > "$work/hyb" && chmod +x "$work/hyb"
export HYB_STDLIB="$PWD/stdlib" LD_LIBRARY_PATH="/usr/local/cuda/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}"
export HYB_CACHE_DIR="$work/cache"
