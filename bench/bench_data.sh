#!/usr/bin/env bash
# bench_data.sh — data at corpus scale: what reading the data costs in resident memory and in
# time to the first step (the loader reads each batch's windows from the files: src/io/data.c).
#   1. Text: a 312 MB text file (tinyshakespeare repeated), a 1-layer run of the default config,
#      against the same run on tinyshakespeare (1.1 MB); with BASE=an older moe, that binary too
#      (before 0.2 every file was loaded whole, as uint16).
#   2. Shards: GB gigabytes of llm.c uint16 shards (100M tokens each; random tokens of a 50,304
#      vocabulary, a 10 MB block repeated, generated here into DIR) against a 10 MB corpus of
#      the same tokens. Peak RSS of STEPS steps (eval every 250), and the wall time of a run of
#      one step: the time to the first step, the process start to its end.
# Peak RSS is /usr/bin/time's maximum resident set size.
# usage: bench/bench_data.sh [GB] [STEPS]   (MOE=build/moe, BASE=, DIR=a directory with GB free,
#                                            KEEP=1 keeps the shards)
set -euo pipefail
cd "$(dirname "$0")/.."
GB=${1:-20}
STEPS=${2:-1000}
MOE=${MOE:-build/moe}
BASE=${BASE:-}
TS=../shared/data/tinyshakespeare.txt
W=$(mktemp -d)
DIR=${DIR:-$W/shards}
trap '[ -n "${KEEP:-}" ] || rm -rf "$DIR"; rm -rf "$W"' EXIT
mkdir -p "$DIR"
peak() { # LABEL BIN ARGS...: peak RSS in MB and wall seconds
    local label=$1
    shift
    /usr/bin/time -f "%M %e" -o "$W/time" "$@" > "$W/log" 2>&1 || { cat "$W/log"; exit 1; }
    read -r kb s < "$W/time"
    printf "  %-44s %8.0f MB %8.2f s\n" "$label" "$(echo "$kb / 1024" | bc -l)" "$s"
}
echo "moe $("$MOE" --version | tail -1); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"

# ---- 1. text
n=$(( (312 * 1000 * 1000 + $(stat -c %s "$TS") - 1) / $(stat -c %s "$TS") ))
(for _ in $(seq "$n"); do cat "$TS"; done | head -c 312000000 > "$W/big.txt") || true # head ends the loop early
TXT=(train --out "$W/run" --overwrite --quiet --steps 5 --set n_layer=1 --set eval_every=0 --set eval_batches=1
     --set tensorboard=false)
echo "1. text, a 1-layer run of the default config, 5 steps:  peak RSS, wall time"
peak "tinyshakespeare (1.1 MB)" "$MOE" "${TXT[@]}" --data "$TS"
peak "312 MB of text" "$MOE" "${TXT[@]}" --data "$W/big.txt"
if [ -n "$BASE" ]; then
    peak "tinyshakespeare, $("$BASE" --version | head -1 | cut -d' ' -f1-2) (BASE)" "$BASE" "${TXT[@]}" --data "$TS"
    peak "312 MB of text, BASE" "$BASE" "${TXT[@]}" --data "$W/big.txt"
fi
rm -f "$W/big.txt"

# ---- 2. shards
python3 - "$W/block" <<'EOF'
import random, struct, sys
random.seed(0)
open(sys.argv[1], "wb").write(struct.pack("<5000000H", *(random.randrange(50304) for _ in range(5000000))))
EOF
header() { python3 -c "import struct, sys; sys.stdout.buffer.write(struct.pack('<256i', *([20240520, 1, $1] + [0] * 253)))"; }
shards=$(( GB * 5 ))   # 100M tokens = 200 MB each
t0=$(date +%s)
for s in $(seq 0 $((shards - 1))); do
    f=$(printf "%s/big_%06d.bin" "$DIR" "$s")
    [ -s "$f" ] && continue
    { header 100000000; for _ in $(seq 20); do cat "$W/block"; done; } > "$f.tmp" && mv "$f.tmp" "$f"
done
mkdir -p "$W/small"
{ header 5000000; cat "$W/block"; } > "$W/small/small_000000.bin"
echo "2. shards: $shards shards ($(du -sh "$DIR" | cut -f1)) ready in $(( $(date +%s) - t0 )) s"
CFG=(--overwrite --quiet --set vocab_size=50304 --set n_layer=2 --set n_embd=64 --set n_head=4 --set n_experts=8
     --set top_k=2 --set expert_hidden=256 --set seq_len=64 --set batch_size=4 --set eval_batches=4
     --set tensorboard=false --set ckpt_every=0)
echo "   time to the first step (a run of 1 step, no eval): peak RSS, wall time"
peak "10 MB corpus" "$MOE" train --data "$W/small" --out "$W/r1" "${CFG[@]}" --steps 1 --set eval_every=0
peak "$GB GB of shards" "$MOE" train --data "$DIR" --out "$W/r2" "${CFG[@]}" --steps 1 --set eval_every=0
echo "   $STEPS steps, eval every 250: peak RSS, wall time"
peak "10 MB corpus" "$MOE" train --data "$W/small" --out "$W/r1" "${CFG[@]}" --steps "$STEPS" --set eval_every=250
peak "$GB GB of shards" "$MOE" train --data "$DIR" --out "$W/r2" "${CFG[@]}" --steps "$STEPS" --set eval_every=250
