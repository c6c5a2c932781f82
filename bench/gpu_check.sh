#!/usr/bin/env bash
# gpu_check.sh — everything the GPU must show, run from binaries built on a development machine
# and taken to the GPU machine (../shared/GPU.md). Two steps:
#
#   bench/gpu_check.sh pack [DIR]   here: copies build/moe, the CUDA test executables, the corpus
#                                   and the shared libraries the GPU machine lacks (cJSON, OpenBLAS
#                                   and its runtime) into DIR (default gpu/, git-ignored), for `carry`
#   bench/gpu_check.sh run [DIR]    there: runs the checks with DIR's libraries and writes every
#                                   log into one tar file, $OUT/gpu_check.tar.gz (OUT defaults to .)
#
# It never runs ctest (a copied build tree's absolute paths break it): the test executables run
# directly. Checks, each under its own timeout (about 4 minutes in all, most of it the CPU's
# 350 training steps of test_cuda_train.sh):
#   test_cuda         the kernels and cuBLAS products (fp32, bf16) against the CPU functions
#   test_cuda_moe     the MoE layer's kernels (dispatch, expert-choice dispatch, combine, scatter)
#   test_cuda_router  every routing method's router forward, losses and backward
#   test_cuda_model   the whole model's losses, loads and gradients against the CPU, per routing
#   test_cuda_train   300 steps GPU vs CPU, cross-backend resume, bit-exact GPU->GPU resume,
#                     every other option for 100 steps, the NaN report
# The CPU runs use OPENBLAS_CORETYPE=SkylakeX: Debian's OpenBLAS does not know the GPU host's
# Xeon and would take its SSE3 kernels (GPU.md).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
mode=${1:-}
DIR=${2:-gpu}
case "$mode" in
pack)
    BUILD=${BUILD:-build}
    [ -x "$BUILD/moe" ] && [ -x "$BUILD/tests/test_cuda" ] || { echo "gpu_check: build first (cmake with nvcc: $BUILD/tests/test_cuda)" >&2; exit 2; }
    mkdir -p "$DIR"
    cp "$BUILD/moe" "$BUILD"/tests/test_cuda "$BUILD"/tests/test_cuda_moe "$BUILD"/tests/test_cuda_router \
        "$BUILD"/tests/test_cuda_model "$DIR"/
    # libraries the GPU machine lacks or may lack (GPU.md); the CUDA runtime is linked statically
    for lib in $(ldd "$BUILD/moe" | awk '/libcjson|libopenblas|libgomp|libgfortran|libquadmath/ {print $3}'); do
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
    export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
    : > "$LOG/summary.txt"
    check() { # name timeout command...
        local name=$1 limit=$2
        shift 2
        echo "== $name" | tee -a "$LOG/summary.txt"
        local t0=$SECONDS
        timeout "$limit" "$@" > "$LOG/$name.txt" 2>&1
        local rc=$?
        echo "exit $rc in $((SECONDS - t0)) s: $(tail -1 "$LOG/$name.txt")" | tee -a "$LOG/summary.txt"
        [ $rc -eq 0 ] || status=1
    }
    check test_cuda 20 "$DIR/test_cuda"
    check test_cuda_moe 15 "$DIR/test_cuda_moe"
    check test_cuda_router 15 "$DIR/test_cuda_router"
    check test_cuda_model 20 "$DIR/test_cuda_model"
    check test_cuda_train 170 bash tests/test_cuda_train.sh "$DIR/moe" "$DIR/tinyshakespeare.txt"
    mkdir -p "$OUT"
    tar -czf "$OUT/gpu_check.tar.gz" -C "$LOG" . && echo "gpu_check: logs in $OUT/gpu_check.tar.gz"
    rm -rf "$LOG"
    exit $status
    ;;
*)
    echo "usage: bench/gpu_check.sh pack|run [DIR]" >&2
    exit 2
    ;;
esac
