# Sourced by the device scripts (bench/gpu_check.sh, bench/tensor_core_check.sh) on the GPU
# machine: from the repository root, $OUT for the logs, the carried binary (dist/hyb.xz)
# unpacked into a temporary $work as $work/hyb (and dist/tc.tar.xz into dist/tc), and the
# environment it runs in.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/hyb-out}
mkdir -p "$OUT"
work=$(mktemp -d)
xz -dc dist/hyb.xz > "$work/hyb" && chmod +x "$work/hyb"
# The templates' cases and benchmarks travel packed (dist/tc.tar.xz), within the carry limit.
if [ ! -d dist/tc ] && [ -f dist/tc.tar.xz ]; then
    xz -dc dist/tc.tar.xz | tar -xf - -C dist
fi
export HYB_STDLIB="$PWD/stdlib" LD_LIBRARY_PATH="/usr/local/cuda/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}"
export HYB_CACHE_DIR="$work/cache"
# NCCL from PyTorch's wheel, under the name the runtime loads it by (libnccl.so).
mkdir -p "$work/lib"
nccl=$(find / -name 'libnccl.so*' -not -path '/proc/*' 2>/dev/null | head -n 1)
[ -n "$nccl" ] && ln -sf "$nccl" "$work/lib/libnccl.so" && export LD_LIBRARY_PATH="$work/lib:$LD_LIBRARY_PATH"
