#!/usr/bin/env bash
# The attention:SSM head ratio of the README's MQAR hybrid (examples/mqar_hybrid.hyb: two
# Falcon-H1-style parallel layers) as a curve: 1:8, 2:6, 4:4 and 8:2 attention:Mamba heads,
# each trained on the same multi-query associative recall data, seed and token budget as
# `make demo`'s (400 steps of 32 × 32 tokens), then tabled and plotted in runs/sweep_ratio.
# Stop it at any time; run it again with --resume added to continue.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${HYB:-target/release/hyb}" sweep examples/mqar_hybrid.hyb \
    --grid heads=1,2,4,8 --grid kv_heads=1,2,4,8 --grid ssm_heads=8,6,4,2 --pairs \
    --data mqar --steps 400 --batch 32 --seq 32 --device cpu --out runs/sweep_ratio "$@" \
    -- --mqar-pairs 4 --lr 1e-2 --eval-batches 8
