#!/usr/bin/env bash
# bench_concurrent.sh — training speed of one run alone against two at once on the same cores.
# Variants: the default (threads=0: the count is chosen step by step, src/train/threads.c),
# threads fixed at the core count (what every run did before: OpenMP's spinning waits), and the
# same under OMP_WAIT_POLICY=passive. With BASE=path/to/an/older/moe, that binary's default runs
# alone too, interleaved, as the reference for "one run alone". Default config, tinyshakespeare
# (DATA=FILE for another text); figure: median tokens/s of steps 6..STEPS of each run, then the
# median over REPS interleaved repetitions (a pair gives two figures per repetition).
# usage: bench/bench_concurrent.sh [STEPS] [REPS]    (MOE=build/moe, BASE=, DATA=)
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-30}
REPS=${2:-5}
MOE=${MOE:-build/moe}
BASE=${BASE:-}
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
CORES=$(nproc)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
med() { python3 -c "
import json, statistics, sys
r = [x for x in map(json.loads, open(sys.argv[1])) if 'event' not in x][5:]
print(round(statistics.median(x['tokens_per_s'] for x in r)))" "$1"; }
run() { # BIN OUT THREADS env...
    local bin=$1 out=$2 threads=$3
    shift 3
    env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u OMP_NUM_THREADS "$@" "$bin" train --data "$DATA" --out "$out" \
        --steps "$STEPS" --quiet --overwrite --set eval_every=0 --set eval_batches=1 --set tensorboard=false \
        $([ "$threads" != 0 ] && echo "--set threads=$threads") > /dev/null 2>&1
}
echo "moe $("$MOE" --version | tail -1); $CORES cores; $STEPS steps, $REPS repetitions; tokens/s medians"
[ -n "$BASE" ] && echo "reference: $BASE ($("$BASE" --version | head -1))"
variants=("auto:0:" "fixed:$CORES:" "fixed-passive:$CORES:OMP_WAIT_POLICY=passive")
declare -A alone pair
base=()
for r in $(seq "$REPS"); do
    if [ -n "$BASE" ]; then run "$BASE" "$W/b" 0 && base+=("$(med "$W/b/metrics.jsonl")"); fi
    for v in "${variants[@]}"; do
        IFS=: read -r name threads envs <<< "$v"
        run "$MOE" "$W/a" "$threads" $envs && alone[$name]+=" $(med "$W/a/metrics.jsonl")"
        run "$MOE" "$W/p1" "$threads" $envs & run "$MOE" "$W/p2" "$threads" $envs
        wait
        pair[$name]+=" $(med "$W/p1/metrics.jsonl") $(med "$W/p2/metrics.jsonl")"
    done
done
python3 - "${base[*]:-}" "$(for v in "${variants[@]}"; do n=${v%%:*}; echo "$n|${alone[$n]}|${pair[$n]}"; done)" <<'EOF'
import statistics, sys
base = [float(x) for x in sys.argv[1].split()]
b = statistics.median(base) if base else None
if b: print(f"{'reference alone':<16} {b:8.0f}   (runs: {' '.join(str(int(x)) for x in base)})")
print(f"{'variant':<16} {'alone':>8} {'each of two':>12} {'two/alone':>10}" + ("   alone/ref" if b else ""))
for line in sys.argv[2].splitlines():
    name, a, p = line.split("|")
    a = [float(x) for x in a.split()]; p = [float(x) for x in p.split()]
    ma, mp = statistics.median(a), statistics.median(p)
    print(f"{name:<16} {ma:8.0f} {mp:12.0f} {2 * mp / ma:9.2f}x" + (f"   {ma / b:9.2f}x" if b else ""))
EOF
