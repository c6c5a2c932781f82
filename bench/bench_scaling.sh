#!/usr/bin/env bash
# bench_scaling.sh — where the training step stops scaling with threads: the standard config
# (bench/standard.json) on 1, 2, 4, ... up to the cores (or THREADS="1 2 16"), STEPS steps each
# with --profile, then each phase's seconds per step and its speed-up over 1 thread. A phase whose
# speed-up lags the whole step's is where the cores go idle. Prints the BLAS and its kernel; on the
# GPU host take the packed binary and libraries (MOE=gpu/moe LD_LIBRARY_PATH=gpu, GPU.md).
# usage: bench/bench_scaling.sh [STEPS]    (MOE=build/moe, DATA=, THREADS=, CONFIG=)
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-6}
MOE=${MOE:-build/moe}
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
CONFIG=${CONFIG:-bench/standard.json}
CORES=$(nproc)
if [ -z "${THREADS:-}" ]; then
    THREADS=""
    for ((t = 1; t < CORES; t *= 2)); do THREADS+="$t "; done
    THREADS+="$CORES"
fi
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
echo "moe $("$MOE" --version | tail -1); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-); $CORES cores; $CONFIG, $STEPS steps"
for t in $THREADS; do
    "$MOE" train --data "$DATA" --config "$CONFIG" --out "$W/t$t" --steps "$STEPS" --overwrite --quiet --profile \
        --set eval_every=0 --set eval_batches=1 --set tensorboard=false --set threads="$t" > "$W/t$t.txt" 2>&1 ||
        { echo "threads $t failed: $(tail -3 "$W/t$t.txt")"; exit 1; }
done
python3 - "$W" "$STEPS" $THREADS <<'EOF'
import re, sys
w, steps, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
prof = {}
for t in threads:
    txt = open(f"{w}/t{t}.txt").read()
    total = float(re.search(r"\(([\d.]+) s of training steps\)", txt).group(1))
    ph = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\s+(\w+)\s+([\d.]+) s", txt, re.M)}
    ph["step"] = total
    prof[t] = ph
names = list(prof[threads[0]].keys())
print(f"{'phase':<10}" + "".join(f"{'t=' + t:>16}" for t in threads))
for n in names:
    base = prof[threads[0]][n]
    cells = "".join(f"{prof[t][n] / steps * 1e3:9.1f} ms {base / prof[t][n] if prof[t][n] else 0:4.1f}x" for t in threads)
    print(f"{n:<10}{cells}")
EOF
