#!/usr/bin/env bash
# studies.sh — the runs behind docs/results.md (each run's metrics.jsonl and checkpoint land
# in OUT/<run>): expert collapse and its cures, MoE against dense, expert specialisation.
# Then bench/analyze.py and bench/plots.gp turn them into tables and figures.
# About an hour on 2 cores. usage: bench/studies.sh [OUT] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/studies}
STEPS=${2:-600}
MOE=./build/moe
SHAKES=${SHAKESPEARE:-../shared/data/tinyshakespeare.txt}
mkdir -p "$OUT"
bash bench/make_corpus.sh "$OUT/corpus" >/dev/null
C=$OUT/corpus
MIX_TRAIN=$C/english.train.txt,$C/python.train.txt,$C/c.train.txt
MIX_VAL=$C/english.val.txt,$C/python.val.txt,$C/c.val.txt
COMMON=(--steps "$STEPS" --set eval_every=50 --set eval_batches=8 --set log_every=100 --quiet)

run() { # name data... -- options
    local name=$1
    shift
    if [ -f "$OUT/$name/model.safetensors" ] && [ "$(grep -c '"loss"' "$OUT/$name/metrics.jsonl")" -ge "$STEPS" ]; then
        echo "$name: done already"
        return
    fi
    echo "$name: $MOE train $* ${COMMON[*]}"
    /usr/bin/time -f "$name: %e s wall, %M KB peak" "$MOE" train --out "$OUT/$name" --overwrite "$@" "${COMMON[@]}"
}

# 1. collapse and its cures (tinyshakespeare, default model: 4 layers, 8 experts, top-2)
run collapse_none     --data "$SHAKES" --set aux_loss_coef=0 --set z_loss_coef=0
run collapse_switch   --data "$SHAKES"
run collapse_noisy    --data "$SHAKES" --set routing=noisy_topk --set aux_loss_coef=0 \
                      --set importance_loss_coef=0.1 --set load_loss_coef=0.1
run collapse_auxfree  --data "$SHAKES" --set router_score=sigmoid --set bias_update_rate=0.001 --set aux_loss_coef=0
# the same with a 10x faster bias update: 600 steps are short for u = 0.001
run collapse_auxfree_fast --data "$SHAKES" --set router_score=sigmoid --set bias_update_rate=0.01 --set aux_loss_coef=0

# 2. MoE against dense: equal active parameters (dense FFN of K*F = 512) and equal total
#    parameters (dense FFN of E*F = 2048); MoE on tinyshakespeare is collapse_switch
run dense_active_shakes --data "$SHAKES" --set moe_layers=none --set ffn_hidden=512
run dense_total_shakes  --data "$SHAKES" --set moe_layers=none --set ffn_hidden=2048
run moe_mix             --data "$MIX_TRAIN" --val-data "$MIX_VAL"
run dense_active_mix    --data "$MIX_TRAIN" --val-data "$MIX_VAL" --set moe_layers=none --set ffn_hidden=512
run dense_total_mix     --data "$MIX_TRAIN" --val-data "$MIX_VAL" --set moe_layers=none --set ffn_hidden=2048

# 3. specialisation: by byte class and by source
"$MOE" route --ckpt "$OUT/moe_mix" --data "$C/english.val.txt,$C/python.val.txt,$C/c.val.txt" --max-batches 12 \
    > "$OUT/route_mix.txt"
"$MOE" route --ckpt "$OUT/moe_mix" --data "$C/english.val.txt,$C/python.val.txt,$C/c.val.txt" --max-batches 12 \
    --json > "$OUT/route_mix.json"
"$MOE" route --ckpt "$OUT/collapse_switch" --data "$SHAKES" --max-batches 12 > "$OUT/route_shakes.txt"
# per-source validation loss of the models trained on the mix (all windows of each source)
for r in moe_mix dense_active_mix dense_total_mix; do
    for src in english python c; do
        printf "%s %s " "$r" "$src"
        "$MOE" eval --ckpt "$OUT/$r" --data "$C/$src.val.txt" --json --max-batches 0
    done
done > "$OUT/eval_mix.txt"
echo "studies: done in $OUT"
