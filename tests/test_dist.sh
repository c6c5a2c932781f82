#!/usr/bin/env bash
# test_dist.sh — data and expert parallelism over MPI against one process:
#   - 2 and 4 ranks in the layouts dp x ep = 2x1, 1x2, 4x1, 2x2, 1x4 give the losses, gradient
#     norms, validation losses and expert loads of one process with grad_accum x ranks, for 20
#     steps with capacity dropping active (and with shared experts and the aux-loss-free bias, and
#     with group-limited routing, a token's slots on one rank's experts).
#     Dropping is by position: dropping by probability ranks near-equal router probabilities at
#     the capacity boundary, and a last-bit difference in the gradient sums (ranks add their
#     gradients in another order than one process) flips such a tie after ~10 steps, from where
#     the runs drift apart (measured: up to 1e-4 relative by step 24; docs/distributed.md);
#   - a checkpoint written with ep = 2 (expert shards) loads on one process and evaluates like
#     the one-process run's; resuming a 2-rank ep = 2 run equals the straight run; resume chains
#     under other layouts (np:ep 2:2 -> 1:1 -> 4:4, 4:4 -> 4:2 and 4:4 -> 2:2) reshard the AdamW
#     moments by global expert id and equal the straight run too, leaving only the last layout's
#     shards; shards written by moe 0.1 (tests/dist/ep2_v0.1) resume on 1 and on 4 ranks; a
#     corrupt or missing state shard is named;
#   - SIGTERM to one rank stops every rank after the same step with a checkpoint, and the run
#     resumes to an unstopped run's losses;
#   - NaN in one rank's experts: every rank reports the same tensor and rank, none saves;
#   - a rank that fails ends the whole job with its message (no hang); bad --ep values.
# usage: test_dist.sh path/to/moe [mpirun]
set -u
MOE=${1:?usage: test_dist.sh path/to/moe [mpirun]}
MPIRUN=${2:-mpirun}
SRC=$(cd "$(dirname "$0")/.." && pwd)
source "$SRC/tests/lib.sh"
MPI=("$MPIRUN" --oversubscribe)
[ "$(id -u)" -eq 0 ] && MPI+=(--allow-run-as-root)
export OMPI_MCA_rmaps_base_oversubscribe=1

cat "$SRC"/src/*/*.c "$SRC"/include/moe.h > "$W/corpus.txt"
SMALL=(--set seq_len=32 --set n_embd=16 --set n_layer=2 --set n_head=2 --set n_experts=4 --set top_k=2
       --set expert_hidden=16 --set ffn_hidden=32 --set batch_size=2 --set eval_every=5 --set eval_batches=2
       --set warmup_steps=2 --set lr=0.002 --set capacity_factor=1.0 --set min_capacity=1 --set drop_policy=position
       --set threads=1 --quiet)

# compare A B: every step's loss, grad norm, val loss, dropped fraction to 2e-5 relative; loads exactly
compare() {
    python3 - "$1" "$2" <<'PY'
import json, sys
a = [x for x in map(json.loads, open(sys.argv[1])) if "event" not in x]  # steps, not typed records
b = [x for x in map(json.loads, open(sys.argv[2])) if "event" not in x]
if len(a) != len(b) or not a:
    sys.exit(f"{len(a)} records against {len(b)}")
close = lambda x, y: (x is None and y is None) or (x is not None and y is not None and abs(x - y) <= 2e-5 * max(1.0, abs(y)))
for x, y in zip(a, b):
    for k in ("loss", "grad_norm", "val_loss", "aux_loss", "z_loss"):
        if not close(x.get(k), y.get(k)):
            sys.exit(f"step {x['step']}: {k} {x.get(k)} against {y.get(k)}")
    for lx, ly in zip(x["moe"], y["moe"]):
        if lx["load"] != ly["load"] or not close(lx["dropped_frac"], ly["dropped_frac"]):
            sys.exit(f"step {x['step']} layer {lx['layer']}: load {lx['load']} against {ly['load']}")
        if not close(lx.get("bias", [0])[0], ly.get("bias", [0])[0]):
            sys.exit(f"step {x['step']}: bias differs")
if not any(l["dropped_frac"] > 0 for r in a for l in r["moe"]):
    sys.exit("no token was ever dropped: the test does not exercise capacity")
PY
}

for variant in plain shared_bias grouped; do
    case $variant in
        plain) extra=() ;;
        shared_bias) extra=(--set n_shared=1 --set bias_update_rate=0.01 --set moe_layers=1) ;;
        grouped) extra=(--set n_group=2 --set topk_group=1 --set router_score=sigmoid) ;; # one group (rank at ep 2) a token
    esac
    "$MOE" train --data "$W/corpus.txt" --out "$W/ref_$variant" --steps 20 "${SMALL[@]}" "${extra[@]+"${extra[@]}"}" \
        --set grad_accum=4 || fail "$variant: one-process run failed"
    for layout in "2 1" "2 2" "4 1" "4 2" "4 4"; do
        set -- $layout
        np=$1 ep=$2
        [ "$variant" != plain ] && [ "$np" = 4 ] && [ "$ep" != 2 ] && continue # one 4-rank layout suffices
        checks=$((checks + 1))
        out="$W/${variant}_np${np}_ep$ep"
        timeout 300 "${MPI[@]}" -np "$np" "$MOE" train --data "$W/corpus.txt" --out "$out" --steps 20 "${SMALL[@]}" \
            "${extra[@]+"${extra[@]}"}" --set grad_accum=$((4 / np)) --ep "$ep" > "$W/log" 2>&1 \
            || { fail "$variant np=$np ep=$ep: run failed: $(tail -3 "$W/log")"; continue; }
        msg=$(compare "$out/metrics.jsonl" "$W/ref_$variant/metrics.jsonl") \
            || fail "$variant np=$np ep=$ep differs from one process: $msg"
    done
done

# ---- an ep = 2 checkpoint (expert shards) loads on one process
checks=$((checks + 1))
ls "$W/plain_np2_ep2" | grep -q '^experts-1-of-2\.step20\.safetensors$' || fail "ep=2 run wrote no expert shards"
"$MOE" eval --ckpt "$W/plain_np2_ep2" --data "$W/corpus.txt" --max-batches 4 --json > "$W/e2" 2>&1 || fail "eval of the sharded checkpoint failed: $(cat "$W/e2")"
"$MOE" eval --ckpt "$W/ref_plain" --data "$W/corpus.txt" --max-batches 4 --json > "$W/e1" 2>&1 || fail "eval of the one-process checkpoint failed"
python3 - "$W/e1" "$W/e2" <<'PY' || fail "the sharded checkpoint evaluates differently"
import json, sys
v = [json.load(open(p))["loss"] for p in sys.argv[1:]]
sys.exit(0 if abs(v[0] - v[1]) <= 1e-4 * v[0] else f"{v}")
PY
"$MOE" sample --ckpt "$W/plain_np2_ep2" --prompt "int " --tokens 8 > /dev/null 2>&1 || fail "sample from the sharded checkpoint failed"

# ---- resume of an ep = 2 run equals the straight run; older shards are removed
checks=$((checks + 1))
timeout 300 "${MPI[@]}" -np 2 "$MOE" train --data "$W/corpus.txt" --out "$W/split" --steps 20 --stop-after 10 "${SMALL[@]}" \
    --set grad_accum=2 --ep 2 > "$W/log" 2>&1 || fail "first half failed: $(tail -3 "$W/log")"
timeout 300 "${MPI[@]}" -np 2 "$MOE" train --data "$W/corpus.txt" --out "$W/split" --steps 20 --resume "${SMALL[@]}" \
    --set grad_accum=2 --ep 2 > "$W/log" 2>&1 || fail "resume failed: $(tail -3 "$W/log")"
msg=$(compare "$W/split/metrics.jsonl" "$W/plain_np2_ep2/metrics.jsonl") || fail "resumed ep=2 run differs: $msg"
[ "$(ls "$W/split" | grep -c '^experts-')" -eq 2 ] || fail "old expert shards were not removed: $(ls "$W/split")"

# ---- resume under any layout: the AdamW moments are resharded by global expert id, so a run
# goes on under another ep (and dp), one process included, to the losses of a straight run
# (R ranks with grad_accum 4/R are one process with grad_accum 4: ref_plain)
# seg DIR NP EP STOP [--resume]: one segment of a chain (NP 1: one process, no mpirun)
seg() {
    local dir=$1 np=$2 ep=$3 stop=$4 run=()
    shift 4
    [ "$np" -gt 1 ] && run=("${MPI[@]}" -np "$np")
    timeout 300 "${run[@]+"${run[@]}"}" "$MOE" train --data "$W/corpus.txt" --out "$dir" --steps 20 --stop-after "$stop" \
        "${SMALL[@]}" --set grad_accum=$((4 / np)) --ep "$ep" "$@" > "$W/log" 2>&1 \
        || fail "chain $dir: np $np ep $ep to step $stop failed: $(tail -3 "$W/log")"
}
for chain in "2:2:7 1:1:14 4:4:20" "4:4:10 4:2:20" "4:4:10 2:2:20"; do
    checks=$((checks + 2))
    dir="$W/chain_${chain// /_}"
    dir=${dir//:/-}
    first=1
    for s in $chain; do
        IFS=: read -r np ep stop <<< "$s"
        if [ $first = 1 ]; then seg "$dir" "$np" "$ep" "$stop"; else seg "$dir" "$np" "$ep" "$stop" --resume; fi
        first=0
    done
    msg=$(compare "$dir/metrics.jsonl" "$W/ref_plain/metrics.jsonl" 2>&1) || fail "chain (np:ep:step) $chain differs from one process: $msg"
    # only the last layout's shards are left
    IFS=: read -r np ep stop <<< "${chain##* }"
    want=$((ep > 1 ? 2 * ep : 0))
    [ "$(ls "$dir" | grep -c '^\(experts\|state\)-')" -eq $want ] || fail "chain $chain: shards of other layouts left: $(ls "$dir")"
done
# shards written before any-layout resume (moe 0.1, ep 2: tests/dist/ep2_v0.1) resume on one
# process and on 4 ranks with ep 4, to a straight run's losses
seq 1 40000 | tr '\n' ' ' > "$W/seq.txt"
"$MOE" train --data "$W/seq.txt" --out "$W/seq_ref" --steps 10 "${SMALL[@]}" --set grad_accum=4 || fail "straight run on seq.txt"
for np in 1 4; do
    checks=$((checks + 1))
    rm -rf "$W/old" && cp -r "$SRC/tests/dist/ep2_v0.1" "$W/old" && rm "$W/old/README.md"
    run=()
    [ "$np" -gt 1 ] && run=("${MPI[@]}" -np "$np")
    timeout 300 "${run[@]+"${run[@]}"}" "$MOE" train --data "$W/seq.txt" --out "$W/old" --steps 10 --resume "${SMALL[@]}" \
        --set grad_accum=$((4 / np)) --ep "$np" > "$W/log" 2>&1 || { fail "resume of moe 0.1's ep=2 shards on $np: $(tail -3 "$W/log")"; continue; }
    msg=$(compare "$W/old/metrics.jsonl" "$W/seq_ref/metrics.jsonl" 2>&1) || fail "moe 0.1's ep=2 shards resumed on $np differ: $msg"
done
# a corrupt or missing state shard is named
checks=$((checks + 2))
timeout 300 "${MPI[@]}" -np 2 "$MOE" train --data "$W/corpus.txt" --out "$W/broken" --steps 4 "${SMALL[@]}" --ep 2 \
    > "$W/log" 2>&1 || fail "ep=2 run to break failed: $(tail -3 "$W/log")"
printf 'x' | dd of="$W/broken/state-1-of-2.step4.bin" bs=1 seek=200 conv=notrunc 2> /dev/null
"$MOE" train --data "$W/corpus.txt" --out "$W/broken" --steps 8 --resume "${SMALL[@]}" > "$W/log" 2>&1 \
    && fail "resume over a corrupt state shard succeeded"
grep -q "written with ep=2: .*state-1-of-2.step4.bin': checksum mismatch" "$W/log" \
    || fail "corrupt state shard: unclear message: $(tail -3 "$W/log")"
rm "$W/broken/state-1-of-2.step4.bin"
"$MOE" train --data "$W/corpus.txt" --out "$W/broken" --steps 8 --resume "${SMALL[@]}" > "$W/log" 2>&1 \
    && fail "resume without a state shard succeeded"
grep -q "written with ep=2: .*state-1-of-2.step4.bin" "$W/log" || fail "missing state shard: unclear message: $(tail -3 "$W/log")"

# an expert-parallel all-to-all larger than MPI's int counts is refused before anything runs
checks=$((checks + 1))
timeout 120 "${MPI[@]}" -np 2 "$MOE" train --data "$W/corpus.txt" --out "$W/huge" --steps 1 --ep 2 --quiet \
    --set n_embd=8192 --set n_head=64 --set seq_len=4096 --set batch_size=16 --set n_layer=1 > "$W/log" 2>&1 \
    && fail "a model past the all-to-all's int counts was made"
grep -q "exceed an all-to-all's int counts" "$W/log" || fail "all-to-all size: unclear message: $(tail -3 "$W/log")"

# ---- SIGTERM reaching one rank only (as a scheduler's may): every rank stops after the same
# step, the checkpoint is saved, and a plain --resume (the run's own keys) goes on to the losses
# of a run never stopped. warmup 100: the schedule of --steps 100000 and --stop-after agree.
checks=$((checks + 1))
SIG=(train --data "$W/corpus.txt" --steps 100000 "${SMALL[@]}" --set warmup_steps=100 --set grad_accum=2 --set eval_every=4 --ep 2)
timeout 300 "${MPI[@]}" -np 2 "$MOE" "${SIG[@]}" --out "$W/sig" > "$W/log" 2>&1 &
job=$!
for _ in $(seq 600); do [ -s "$W/sig/metrics.jsonl" ] && [ "$(wc -l < "$W/sig/metrics.jsonl")" -ge 3 ] && break; sleep 0.05; done
rank=$(pgrep -f "^$MOE train .*--out $W/sig\$" | tail -n 1)
[ -n "$rank" ] && kill -TERM "$rank"
wait $job
rc=$?
S=$(grep -o "stopped by SIGTERM after step [0-9]*" "$W/log" | head -n 1 | grep -o '[0-9]*$')
if [ $rc -eq 124 ] || [ -z "$S" ]; then
    fail "SIGTERM to one rank: exit $rc, no stop message: $(tail -5 "$W/log")"
else
    timeout 300 "${MPI[@]}" -np 2 "$MOE" train --data "$W/corpus.txt" --out "$W/sig" --resume --stop-after 3 --quiet --ep 2 \
        > "$W/log" 2>&1 || fail "SIGTERM to one rank: resume failed: $(tail -3 "$W/log")"
    timeout 300 "${MPI[@]}" -np 2 "$MOE" "${SIG[@]}" --out "$W/sigref" --stop-after $((S + 3)) > "$W/log" 2>&1 \
        || fail "SIGTERM to one rank: reference run failed: $(tail -3 "$W/log")"
    msg=$(compare "$W/sig/metrics.jsonl" "$W/sigref/metrics.jsonl") || fail "SIGTERM to one rank: resumed run differs: $msg"
fi

# Ctrl-C on a terminal reaches mpirun alone (Open MPI gives each rank its own process group);
# mpirun passes SIGTERM to every rank, which save and stop as above
checks=$((checks + 1))
"${MPI[@]}" -np 2 "$MOE" "${SIG[@]}" --out "$W/sigint" > "$W/log" 2>&1 &
job=$!
for _ in $(seq 600); do [ -s "$W/sigint/metrics.jsonl" ] && [ "$(wc -l < "$W/sigint/metrics.jsonl")" -ge 3 ] && break; sleep 0.05; done
kill -INT $job
for _ in $(seq 600); do kill -0 $job 2> /dev/null || break; sleep 0.05; done
kill -0 $job 2> /dev/null && { kill -KILL $job; pkill -KILL -f -- "--out $W/sigint\$"; fail "SIGINT to mpirun: the job did not end"; }
wait $job && fail "SIGINT to mpirun: the job exited 0"
S=$(grep -o "stopped by SIGTERM after step [0-9]*" "$W/log" | head -n 1 | grep -o '[0-9]*$')
ls "$W/sigint" | grep -q "^state-1-of-2.step$S.bin$" || fail "SIGINT to mpirun: no checkpoint of the last step: $(tail -5 "$W/log")"

# ---- NaN in one rank's experts (ep = 2): every rank names the same tensor and rank, and none
# saves the poisoned weights over the checkpoint
checks=$((checks + 1))
NAN=(train --data "$W/corpus.txt" --out "$W/nan" "${SMALL[@]}" --ep 2)
timeout 120 "${MPI[@]}" -np 2 "$MOE" "${NAN[@]}" --steps 2 > "$W/log" 2>&1 || fail "NaN: first run failed: $(tail -3 "$W/log")"
cp "$W/nan/model.safetensors" "$W/nan.model"
X=model.layers.1.block_sparse_moe.experts.w2.weight
timeout 120 "${MPI[@]}" -np 2 -x MOE_TEST_FAULT=4:param_nan:$X@1 "$MOE" "${NAN[@]}" --steps 6 --resume > "$W/log" 2>&1
rc=$?
n=$(grep -c "first non-finite value: parameter '$X' (layer 1).* on rank 1; stopped.*no checkpoint was written" "$W/log")
{ [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ "$n" -ge 1 ] && ! grep -q "rank 0).*first non-finite value: [^p]" "$W/log"; } \
    || fail "NaN on one rank: exit $rc, ranks disagree or unclear: $(grep -i "non-finite\|error" "$W/log" | head -3)"
checks=$((checks + 1))
cmp -s "$W/nan.model" "$W/nan/model.safetensors" || fail "NaN on one rank: poisoned weights were saved"

# a NaN gradient on one data-parallel rank: the all-reduce spreads it, every rank skips the step
checks=$((checks + 1))
Q=model.layers.0.self_attn.q_proj.weight
timeout 120 "${MPI[@]}" -np 2 -x MOE_TEST_FAULT=3:grad_nan:$Q@1 "$MOE" train --data "$W/corpus.txt" --out "$W/gnan" \
    --steps 5 "${SMALL[@]}" --set nonfinite_policy=skip > "$W/log" 2>&1 || fail "NaN gradient on one rank: exit $?: $(tail -3 "$W/log")"
grep '"step":3,' "$W/gnan/metrics.jsonl" | grep -q "\"skipped\":\"the gradient norm is not finite; first non-finite value: gradient of '$Q'" \
    || fail "NaN gradient on one rank: step 3 not skipped with its tensor"

# ---- a failing rank ends the job; bad --ep values
checks=$((checks + 1))
MOE_TEST_FAIL_RANK=1 timeout 120 "${MPI[@]}" -np 2 -x MOE_TEST_FAIL_RANK "$MOE" train --data "$W/corpus.txt" \
    --out "$W/failing" --steps 20 "${SMALL[@]}" --ep 2 > "$W/log" 2>&1
rc=$?
[ $rc -eq 124 ] && fail "a failing rank left the job hanging"
[ $rc -eq 0 ] && fail "a failing rank: the job exited 0"
grep -q "injected failure" "$W/log" || fail "a failing rank: its message is missing: $(tail -3 "$W/log")"
checks=$((checks + 1))
timeout 120 "${MPI[@]}" -np 4 "$MOE" train --data "$W/corpus.txt" --out "$W/bad" --steps 2 "${SMALL[@]}" --ep 3 > "$W/log" 2>&1 \
    && fail "--ep 3 on 4 ranks succeeded"
grep -q "must divide the number of ranks" "$W/log" || fail "--ep 3: unclear message: $(tail -3 "$W/log")"
checks=$((checks + 1))
timeout 120 "${MPI[@]}" -np 4 "$MOE" train --data "$W/corpus.txt" --out "$W/bad" --steps 2 "${SMALL[@]}" --set n_experts=6 \
    --ep 4 > "$W/log" 2>&1 && fail "6 experts on ep=4 succeeded"
grep -q "not divisible by the expert-parallel size" "$W/log" || fail "6 experts on ep 4: unclear message: $(tail -3 "$W/log")"
checks=$((checks + 1))
"$MOE" train --data "$W/corpus.txt" --out "$W/bad" --steps 2 "${SMALL[@]}" --ep 2 > "$W/log" 2>&1 \
    && fail "--ep 2 without mpirun succeeded"
grep -q "mpirun" "$W/log" || fail "--ep 2 without mpirun: unclear message: $(cat "$W/log")"
# CUDA runs on one process until multi-GPU exists: several ranks are refused before any GPU is looked for
checks=$((checks + 1))
timeout 120 "${MPI[@]}" -np 2 "$MOE" train --data "$W/corpus.txt" --out "$W/bad" --steps 2 "${SMALL[@]}" --device cuda \
    > "$W/log" 2>&1 && fail "--device cuda on 2 ranks succeeded"
grep -q "2 MPI ranks; CUDA runs on one process" "$W/log" || fail "--device cuda on 2 ranks: unclear message: $(tail -3 "$W/log")"

finish test_dist
