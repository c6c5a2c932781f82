#!/usr/bin/env bash
# gpu_check.sh — everything the GPU must show, run from binaries built on a development machine
# and taken to the GPU machine (../shared/GPU.md). Two steps:
#
#   bench/gpu_check.sh pack [DIR]   here: copies build/moe, build/tests/test_cuda and the shared
#                                   libraries the GPU machine lacks (cJSON, OpenBLAS and its
#                                   runtime) into DIR (default gpu/, git-ignored), for `carry`
#   bench/gpu_check.sh run [DIR]    there: runs the checks with DIR's libraries and writes every
#                                   log into one tar file, $OUT/gpu_check.tar.gz (OUT defaults to .)
#
# It never runs ctest (a copied build tree's absolute paths break it): the test executables run
# directly. Checks so far (issue 15 is under way): the CUDA kernels against the CPU functions
# they mirror (test_cuda), and what `moe train --device cuda` says on a real GPU. Fits in well
# under 4 minutes.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
mode=${1:-}
DIR=${2:-gpu}
case "$mode" in
pack)
    [ -x build/moe ] && [ -x build/tests/test_cuda ] || { echo "gpu_check: build first (cmake with nvcc: build/tests/test_cuda)" >&2; exit 2; }
    mkdir -p "$DIR"
    cp build/moe build/tests/test_cuda "$DIR"/
    # libraries the GPU machine lacks or may lack (GPU.md); the CUDA runtime is linked statically
    for lib in $(ldd build/moe | awk '/libcjson|libopenblas|libgomp|libgfortran|libquadmath/ {print $3}'); do
        cp -L "$lib" "$DIR"/
    done
    cp "$(dirname "$0")/../../shared/data/tinyshakespeare.txt" "$DIR"/ 2>/dev/null || head -c 300000 /usr/share/common-licenses/GPL-3 > "$DIR/tinyshakespeare.txt"
    du -sh "$DIR"
    ;;
run)
    OUT=${OUT:-.}
    LOG=$(mktemp -d)
    export LD_LIBRARY_PATH="$DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    status=0
    { nvidia-smi || true; } > "$LOG/nvidia-smi.txt" 2>&1
    echo "== test_cuda (kernels against the CPU)" | tee "$LOG/summary.txt"
    timeout 120 "$DIR/test_cuda" > "$LOG/test_cuda.txt" 2>&1
    rc=$?
    tail -1 "$LOG/test_cuda.txt" | tee -a "$LOG/summary.txt"
    [ $rc -eq 0 ] || { echo "test_cuda: exit $rc" | tee -a "$LOG/summary.txt"; status=1; }
    echo "== moe train --device cuda" | tee -a "$LOG/summary.txt"
    timeout 60 "$DIR/moe" train --data "$DIR/tinyshakespeare.txt" --out "$LOG/run" --steps 2 --quiet --device cuda \
        > "$LOG/train_cuda.txt" 2>&1
    echo "exit $?: $(tail -1 "$LOG/train_cuda.txt")" | tee -a "$LOG/summary.txt"
    tar -czf "$OUT/gpu_check.tar.gz" -C "$LOG" . && echo "gpu_check: logs in $OUT/gpu_check.tar.gz"
    rm -rf "$LOG"
    exit $status
    ;;
*)
    echo "usage: bench/gpu_check.sh pack|run [DIR]" >&2
    exit 2
    ;;
esac
