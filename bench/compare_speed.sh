#!/usr/bin/env bash
# compare_speed.sh — training throughput of two builds of `moe`, interleaved (old, new, old, new,
# ...) so that drifts of the machine (other load, frequency) fall on both alike. Each run trains
# the benchmark config (bench/standard.json, as bench/bench_train.sh: vocab 256, T 256, C 384,
# L 6, H 6, E 8, K 2, F 768, B 8; no evaluation until the end) for STEPS steps with a fixed seed
# and thread count.
#
# Figure of a run: the MEDIAN of metrics.jsonl's tokens_per_s over the steps after the first
# WARMUP (2) steps (also the median step_ms, and the process's wall time, which includes
# start-up, the final evaluation and the checkpoint save). Figure of a side: the median of its
# RUNS run figures (and min..max). Then new/old - 1 in percent (positive = NEW faster).
# No pass/fail threshold: it prints figures only.
#
# usage: bench/compare_speed.sh OLD_MOE NEW_MOE [RUNS] [STEPS]
#   RUNS   runs per binary (default 5); STEPS steps per run (default 8: ~10-20 s a run on 2 cores)
# environment:
#   THREADS  OpenMP threads (--set threads, OMP_NUM_THREADS); default nproc
#   WARMUP   steps left out at the start of each run; default 2 (must be < STEPS)
#   CONFIG   config file; default bench/standard.json next to this script; "default" = moe's
#            default model with batch_size 16
#   DATA     training data FILE[,FILE...]; default the license texts in /usr/share/common-licenses
set -uo pipefail
export LC_ALL=C
usage() { echo "usage: $0 OLD_MOE NEW_MOE [RUNS=5] [STEPS=8]" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 4 ] || usage
OLD=$(readlink -f -- "$1") && [ -x "$OLD" ] && [ -f "$OLD" ] || { echo "$0: '$1' is not an executable" >&2; exit 2; }
NEW=$(readlink -f -- "$2") && [ -x "$NEW" ] && [ -f "$NEW" ] || { echo "$0: '$2' is not an executable" >&2; exit 2; }
RUNS=${3:-5}
STEPS=${4:-8}
WARMUP=${WARMUP:-2}
THREADS=${THREADS:-$(nproc)}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] && [[ $STEPS =~ ^[1-9][0-9]*$ ]] && [[ $WARMUP =~ ^[0-9]+$ ]] || usage
[ "$WARMUP" -lt "$STEPS" ] || { echo "$0: WARMUP ($WARMUP) must be below STEPS ($STEPS)" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
CONFIG=${CONFIG:-$HERE/standard.json}
CFG=()
if [ "$CONFIG" != default ]; then
    [ -f "$CONFIG" ] || { echo "$0: config '$CONFIG' not found" >&2; exit 2; }
    CFG=(--config "$(readlink -f -- "$CONFIG")")
fi
DATA=${DATA:-$(find /usr/share/common-licenses -maxdepth 1 -type f | sort | paste -sd, -)}
export OMP_NUM_THREADS=$THREADS

W=$(mktemp -d "${TMPDIR:-/tmp}/compare_speed.XXXXXX")
trap 'rm -rf "$W"' EXIT

cpu=$(lscpu 2> /dev/null | sed -n 's/^Model name: *//p' | head -n 1)
echo "compare_speed: OLD $OLD"
echo "               NEW $NEW"
echo "CPU: ${cpu:-unknown} ($(nproc) cores available), threads=$THREADS, OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-(OpenMP default)}"
echo "config: ${CONFIG}, $STEPS steps per run, $RUNS runs per binary, interleaved old/new"
echo "figure: median tokens_per_s (metrics.jsonl) over steps $((WARMUP + 1))..$STEPS of each run; side = median of its runs"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
awk -v n="$(nproc)" -v t="$THREADS" '$1 > 0.5 && $1 + t > n { printf "warning: the machine is busy (load %s with %d cores): the figures will be noisy\n", $1, n }' /proc/loadavg
printf '%4s %-4s %10s %11s %8s\n' run side tok/s ms/step wall_s

fails=0
for i in $(seq 1 "$RUNS"); do
    for side in old new; do
        if [ $side = old ]; then bin=$OLD; else bin=$NEW; fi
        out="$W/run"
        rm -rf "$out"
        t0=$(date +%s.%N)
        "$bin" train --data "$DATA" --out "$out" --steps "$STEPS" "${CFG[@]+"${CFG[@]}"}" \
            --set eval_every=1000000 --set eval_batches=1 --set threads="$THREADS" --quiet > "$W/log" 2>&1
        rc=$?
        t1=$(date +%s.%N)
        if [ $rc -ne 0 ]; then
            echo "run $i $side: failed (exit $rc): $(tail -n 2 "$W/log" | tr '\n' ' ')" >&2
            fails=$((fails + 1))
            continue
        fi
        python3 - "$out/metrics.jsonl" "$WARMUP" "$i" "$side" "$t0" "$t1" >> "$W/runs.txt" <<'PY' || fails=$((fails + 1))
import json, statistics, sys
path, warmup, i, side, t0, t1 = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]), float(sys.argv[6])
r = [x for x in map(json.loads, open(path)) if "event" not in x][warmup:]  # steps, not typed records
if not r:
    sys.exit(f"run {i} {side}: no steps after the warm-up")
print(i, side, statistics.median(x["tokens_per_s"] for x in r), statistics.median(x["step_ms"] for x in r), t1 - t0)
PY
        tail -n 1 "$W/runs.txt" | awk -v s=$side -v i=$i '$1 == i && $2 == s { printf "%4d %-4s %10.1f %11.1f %8.1f\n", $1, $2, $3, $4, $5 }'
        rm -rf "$out"
    done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -s "$W/runs.txt" ] || { echo "compare_speed: no run succeeded" >&2; exit 1; }
python3 - "$W/runs.txt" <<'PY'
import statistics, sys
runs = {"old": [], "new": []}
for line in open(sys.argv[1]):
    i, side, tps, ms, wall = line.split()
    runs[side].append((float(tps), float(ms), float(wall)))
med = {}
for side in ("old", "new"):
    v = runs[side]
    if not v:
        print(f"{side}: no successful run"); continue
    t = [x[0] for x in v]
    med[side] = statistics.median(t)
    spread = (max(t) - min(t)) / med[side] * 100
    print(f"{side}: median {med[side]:.1f} tok/s over {len(v)} runs (min {min(t):.1f}, max {max(t):.1f}, "
          f"spread {spread:.1f}%), median step {statistics.median(x[1] for x in v):.1f} ms, "
          f"median wall {statistics.median(x[2] for x in v):.1f} s")
if len(med) == 2:
    print(f"new/old - 1: {(med['new'] / med['old'] - 1) * 100:+.2f}% tokens/s (positive = NEW faster)")
PY
[ $fails -eq 0 ]
