#!/usr/bin/env bash
# bench_a2a.sh — all-to-all traffic of expert parallelism at ep 4 (4 ranks, one ep group), and
# what group-limited routing saves when its groups are the ranks (n_group = ep = 4: DeepSeek's
# device-limited routing). 16 experts, top-4, dropless; mean a2a_bytes per step of rank 0 (sent
# to other ranks, forward and backward, every MoE layer: metrics.jsonl) over STEPS steps, for
# topk_group 4 (no limit), 2 and 1. With BASE=an older moe, the same runs with it (before 0.2's
# unit dispatch, one row per slot).
# Expected per layer and pass, per token: one row of C floats per peer its slots reach other than
# itself (unit dispatch), against one per slot on another rank (per slot), plus 2 floats out and
# 1 back per slot. With K = 4 uniform over 16 experts on 4 ranks a token reaches 2.91 ranks
# (1 - C(12,4)/C(16,4) per rank), 2.18 of them others, against 3 slots on others; topk_group 1
# keeps each token on one rank (another with probability 3/4).
# Also the mean seconds inside the all-to-alls (a2a_s) and per step (step_ms), past 2 steps.
# usage: bench/bench_a2a.sh [STEPS]   (MOE=build/moe, BASE=, MPIRUN=mpirun)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-10}
MOE=${MOE:-build/moe}
BASE=${BASE:-}
MPI=("${MPIRUN:-mpirun}" --oversubscribe -np 4)
[ "$(id -u)" -eq 0 ] && MPI+=(--allow-run-as-root)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cat src/*/*.c > "$W/corpus.txt"
CFG=(--set n_layer=2 --set n_embd=64 --set n_head=4 --set seq_len=64 --set batch_size=4 --set n_experts=16 --set top_k=4
     --set expert_hidden=32 --set capacity_factor=0 --set threads=1 --set eval_every=0 --set eval_batches=1 --quiet)
summary() { # mean a2a bytes per step; mean a2a seconds and step ms past the first 2 steps
    python3 - "$1" <<'PY'
import json, sys
r = [json.loads(l) for l in open(sys.argv[1]) if '"a2a_bytes"' in l]
t = r[2:] or r
print("%12.0f bytes/step %8.2f ms a2a %8.1f ms/step" % (sum(x["a2a_bytes"] for x in r) / len(r),
      1e3 * sum(x["a2a_s"] for x in t) / len(t), sum(x["step_ms"] for x in t) / len(t)))
PY
}
echo "ep 4, E 16, top-4, C 64, 256 tokens per rank per step, 2 MoE layers; rank 0's all-to-all bytes sent"
echo "and seconds per step (4 ranks on $(nproc) cores: the times are those of oversubscribed ranks)"
for bin in "$MOE" ${BASE:+"$BASE"}; do
    for tg in 0 2 1; do
        extra=()
        [ "$tg" -gt 0 ] && extra=(--set n_group=4 --set topk_group="$tg")
        rm -rf "$W/run"
        "${MPI[@]}" "$bin" train --data "$W/corpus.txt" --out "$W/run" --steps "$STEPS" "${CFG[@]}" "${extra[@]+"${extra[@]}"}" --ep 4 \
            > "$W/log" 2>&1 || { echo "$bin topk_group $tg: failed: $(tail -3 "$W/log")"; continue; }
        label="no groups"
        [ "$tg" -gt 0 ] && label="n_group 4, topk_group $tg"
        printf "  %-30s %-26s %s\n" "$bin" "$label" "$(summary "$W/run/metrics.jsonl")"
    done
done
