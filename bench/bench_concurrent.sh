#!/usr/bin/env bash
# bench_concurrent.sh — training speed of one run alone against two at once on the same cores,
# under OpenMP wait policies: libgomp's default (spin ~300k iterations, then sleep), passive
# (sleep at once) and a short spin (GOMP_SPINCOUNT). Default config, tinyshakespeare or any
# text; figure: median tokens/s of steps 6..STEPS of each run; REPS interleaved repetitions.
# usage: bench/bench_concurrent.sh [STEPS] [REPS]    (build/moe; DATA=FILE to choose the text)
set -uo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-30}
REPS=${2:-3}
MOE=${MOE:-build/moe}
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
med() { python3 -c "
import json, statistics, sys
r = [x for x in map(json.loads, open(sys.argv[1])) if 'event' not in x][5:]
print(round(statistics.median(x['tokens_per_s'] for x in r)))" "$1"; }
run() { # out env...
    local out=$1
    shift
    env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT "$@" "$MOE" train --data "$DATA" --out "$out" --steps "$STEPS" --quiet \
        --overwrite --set eval_every=0 --set eval_batches=1 --set tensorboard=false > /dev/null 2>&1
}
echo "moe $("$MOE" --version | tail -1); $(nproc) cores; $STEPS steps, $REPS repetitions; tokens/s medians"
printf "%-22s %10s %20s\n" policy alone "two at once (each)"
for policy in default passive spin10k; do
    case $policy in
        default) envs=() ;;
        passive) envs=(OMP_WAIT_POLICY=passive) ;;
        spin10k) envs=(GOMP_SPINCOUNT=10000) ;;
    esac
    alone=() pair=()
    for r in $(seq "$REPS"); do
        run "$W/a" "${envs[@]}" && alone+=("$(med "$W/a/metrics.jsonl")")
        run "$W/p1" "${envs[@]}" & run "$W/p2" "${envs[@]}"
        wait
        pair+=("$(med "$W/p1/metrics.jsonl")" "$(med "$W/p2/metrics.jsonl")")
    done
    python3 -c "
import statistics, sys
a = [float(x) for x in sys.argv[2].split()]
p = [float(x) for x in sys.argv[3].split()]
print(f'{sys.argv[1]:<22} {statistics.median(a):10.0f} {statistics.median(p):20.0f}   ({statistics.median(p) / statistics.median(a):.2f}x of alone)')
" "$policy" "${alone[*]}" "${pair[*]}"
done
