#!/usr/bin/env bash
# quickstart.sh — installs dependencies, builds moe, trains the default small MoE (4 layers,
# 8 experts, top-2) on a built-in corpus (the license texts of Debian's base-files package,
# /usr/share/common-licenses, ~270 KB of English) for 300 steps, samples from it, and draws
# its figures (loss, balance, per-expert load heatmaps) into the run directory.
# A few minutes on 2 cores. Usage: scripts/quickstart.sh [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
RUN=${1:-runs/quickstart}
DATA=$(find /usr/share/common-licenses -maxdepth 1 -type f | sort | paste -sd, -)
./build/moe train --data "$DATA" --out "$RUN" --steps 300 --set log_every=25 --overwrite
echo "--- sample ---"
./build/moe sample --ckpt "$RUN" --prompt "This License" --tokens 300 --temperature 0.8 --seed 1
echo "--- figures ---"
./build/moe plot --run "$RUN"
