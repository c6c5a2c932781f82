#!/usr/bin/env bash
# test_threads.sh — a training run's bits do not depend on its thread count: every routing
# method, shared experts, recompute and accumulation give the same weights and AdamW state on 1,
# 2 and 3 threads; an automatic run (threads=0) whose count changes between steps
# (MOE_TEST_THREADS) records and prints each change and still ends on the same bits; a run
# resumed on another count ends where a straight run does.
set -u
MOE=${1:?usage: test_threads.sh path/to/moe}
SRC=$(cd "$(dirname "$0")/.." && pwd)
source "$SRC/tests/lib.sh"
head -c 300000 "$SRC/README.md" > "$W/corpus.txt"
cat "$SRC"/src/*/*.c >> "$W/corpus.txt"
BASE=(--data "$W/corpus.txt" --set seq_len=64 --set n_embd=64 --set n_layer=2 --set n_head=4
     --set n_experts=4 --set top_k=2 --set expert_hidden=128 --set ffn_hidden=128 --set batch_size=8
     --set eval_every=0 --set eval_batches=1 --set warmup_steps=2 --set tensorboard=false)
LOUD=("${BASE[@]}" --overwrite)
MID=("${BASE[@]}" --overwrite --quiet)
same() { # NAME DIR_A DIR_B: two runs' weights (every tensor's bytes; the metadata holds the
          # config, threads included) and AdamW state are identical
    checks=$((checks + 1))
    same_tensors "$2/model.safetensors" "$3/model.safetensors" && cmp -s "$2/state.bin" "$3/state.bin" ||
        fail "$1: $(basename "$2") and $(basename "$3") differ"
}
i=0
for variant in "routing=topk" "routing=noisy_topk jitter_eps=0.05 importance_loss_coef=0.1 load_loss_coef=0.1" \
               "routing=expert_choice" "routing=soft" \
               "router_score=sigmoid bias_update_rate=0.01 n_shared=1 random_routing=true seq_aux_loss_coef=0.01" \
               "recompute=true grad_accum=2 top_k=1 capacity_factor=1.0 drop_policy=position"; do
    i=$((i + 1))
    sets=()
    for kv in $variant; do sets+=(--set "$kv"); done
    for t in 1 2 3; do
        "$MOE" train "${MID[@]}" "${sets[@]}" --set threads=$t --steps 3 --out "$W/v$i-t$t" ||
            fail "variant '$variant' on $t threads: exit $?"
    done
    same "'$variant' 1 and 2 threads" "$W/v$i-t1" "$W/v$i-t2"
    same "'$variant' 1 and 3 threads" "$W/v$i-t1" "$W/v$i-t3"
done

# automatic: 2 threads, then 1 after step 1, then 3 after step 2 (the test hook stands in for the tuner)
OMP_NUM_THREADS=2 MOE_TEST_THREADS=1:1,2:3 "$MOE" train "${LOUD[@]}" --set log_every=1 --steps 4 \
    --out "$W/auto" > "$W/auto.out" 2>&1 || fail "automatic run: exit $? $(cat "$W/auto.out")"
"$MOE" train "${MID[@]}" --set threads=1 --steps 4 --out "$W/fixed"
same "automatic count against 1 thread" "$W/auto" "$W/fixed"
checks=$((checks + 3))
grep -q "2 threads (automatic" "$W/auto.out" || fail "the header does not say the count is automatic: $(head -3 "$W/auto.out")"
grep -q "moe: step 1: now 1 thread (was 2)" "$W/auto.out" || fail "the change after step 1 is not printed: $(cat "$W/auto.out")"
python3 - "$W/auto/metrics.jsonl" <<'EOF' || fail "metrics.jsonl of the automatic run"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
ev = [(r["step"], r["threads"]) for r in recs if r.get("event") == "threads"]
steps = [r["threads"] for r in recs if "event" not in r]
start = [r for r in recs if r.get("event") == "start"]
assert ev == [(1, 1), (2, 3)], ev
assert steps == [2, 1, 3, 3], steps
assert start and start[0]["threads_auto"] is True, start
EOF
OMP_NUM_THREADS=2 "$MOE" train "${MID[@]}" --set threads=2 --steps 1 --out "$W/fixed2"
checks=$((checks + 1))
grep '"event":"start"' "$W/fixed2/metrics.jsonl" | grep -q '"threads_auto":false' || fail "threads=2 is not fixed: $(head -1 "$W/fixed2/metrics.jsonl")"

# resumed on another count: 2 steps on 3 threads, then 2 more on 1, against 4 straight on 2
"$MOE" train "${MID[@]}" --set threads=3 --steps 4 --stop-after 2 --out "$W/res"
"$MOE" train "${BASE[@]}" --quiet --set threads=1 --steps 4 --resume --out "$W/res"
"$MOE" train "${MID[@]}" --set threads=2 --steps 4 --out "$W/straight"
same "resumed on 1 thread after 3" "$W/res" "$W/straight"
finish test_threads
