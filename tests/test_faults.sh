#!/usr/bin/env bash
# test_faults.sh — a run survives what goes wrong and loses no checkpoint:
#   - SIGINT / SIGTERM: the step finishes, a checkpoint is saved, exit 130 / 143, and resuming
#     gives the uninterrupted run's losses;
#   - kill -9 at random moments (many of them mid-checkpoint, which is written every step): each
#     time the directory holds a loadable checkpoint, and the run resumed after every kill ends
#     with the uninterrupted run's losses, bit for bit;
#   - the one window where model.safetensors is newer than state.bin (killed between the two
#     renames) resumes from state.next.bin;
#   - the disk filling up during a save (ulimit -f): a clear error, the previous checkpoint intact;
#   - keep_checkpoints; a flipped bit in the weights or the state is detected by its checksum;
#   - NaN/Inf (injected with MOE_TEST_FAULT): skip drops the update and goes on, stop saves the
#     last good step and names the tensor; poisoned weights are not saved; the loss spike guard.
# usage: test_faults.sh path/to/moe [kills]
set -u
MOE=${1:?usage: test_faults.sh path/to/moe [kills]}
KILLS=${2:-12}
SRC=$(cd "$(dirname "$0")/.." && pwd)
source "$SRC/tests/lib.sh"
losses() { grep -o '"step":[0-9]*,"loss":[^,]*' "$1/metrics.jsonl"; }
cat "$SRC"/src/*/*.c > "$W/corpus.txt"
# big enough that a checkpoint takes a while (kills land inside saves), small enough to be quick
T=(train --data "$W/corpus.txt" --set seq_len=32 --set n_embd=64 --set n_layer=2 --set n_head=4 --set n_experts=8
   --set expert_hidden=128 --set batch_size=4 --set eval_every=10 --set eval_batches=1 --set threads=1 --quiet)
N=40
"$MOE" "${T[@]}" --steps $N --out "$W/straight" || fail "straight run"

# --- SIGINT / SIGTERM
for sig in INT TERM; do
    checks=$((checks + 1))
    d="$W/sig_$sig"
    "$MOE" "${T[@]}" --steps 100000 --out "$d" 2> "$W/sig.err" &
    pid=$!
    for _ in $(seq 200); do [ -s "$d/metrics.jsonl" ] && [ "$(wc -l < "$d/metrics.jsonl")" -ge 3 ] && break; sleep 0.05; done
    kill -$sig $pid
    wait $pid
    rc=$?
    want=$([ $sig = INT ] && echo 130 || echo 143)
    if [ $rc -ne "$want" ] || ! grep -q "stopped by SIG$sig after step" "$W/sig.err"; then
        fail "SIG$sig: exit $rc (want $want): $(cat "$W/sig.err")"
        continue
    fi
    last=$(losses "$d" | tail -n 1 | sed 's/"step":\([0-9]*\).*/\1/')
    "$MOE" "${T[@]}" --steps $((last + 3)) --out "$d" --resume || fail "SIG$sig: resume"
    checks=$((checks + 1))
    [ "$(losses "$d")" = "$(losses "$W/straight" | head -n $((last + 3)))" ] || fail "SIG$sig: resumed losses differ from the straight run"
done

# --- kill -9 at random moments, checkpoints every step; the run (scheduled for 100000 steps)
# is resumed after each kill, then brought to a fixed step and compared with a straight run
d="$W/killed"
RANDOM=7
loadable=0
midsave=0
K=(--steps 100000 --out "$d" --set ckpt_every=1)
for k in $(seq "$KILLS"); do
    if [ -f "$d/model.safetensors" ]; then "$MOE" "${T[@]}" "${K[@]}" --resume & else "$MOE" "${T[@]}" "${K[@]}" & fi
    pid=$!
    sleep "0.$((RANDOM % 9 + 1))$((RANDOM % 10))"
    kill -9 $pid 2>/dev/null
    wait $pid 2>/dev/null
    ls "$d"/*.tmp "$d/state.next.bin" > /dev/null 2>&1 && midsave=$((midsave + 1))
    if [ -f "$d/model.safetensors" ]; then
        checks=$((checks + 1))
        "$MOE" eval --ckpt "$d" --data "$W/corpus.txt" --max-batches 1 > /dev/null 2> "$W/kill.err" \
            && loadable=$((loadable + 1)) || fail "after kill $k: the checkpoint does not load: $(cat "$W/kill.err")"
    fi
done
at=$(ckpt_meta "$d/model.safetensors" step 2>/dev/null || echo 0)
end=$((at + 5))
if [ "$at" -gt 0 ]; then "$MOE" "${T[@]}" "${K[@]}" --resume --stop-after 5 || fail "resume after the kills"
else rm -rf "$d"; "$MOE" "${T[@]}" "${K[@]}" --stop-after $end || fail "run after the kills"; fi
"$MOE" "${T[@]}" --steps 100000 --out "$W/straight_k" --stop-after $end || fail "straight run to $end"
checks=$((checks + 1))
[ "$(losses "$d")" = "$(losses "$W/straight_k")" ] || fail "after $KILLS kills the losses differ from the straight run"
echo "kill -9: $KILLS kills ($midsave inside a save: a temporary file or state.next.bin left behind), $loadable" \
     "checkpoints loaded after a kill; resumed to step $end, the losses equal a straight run's"

# --- killed between committing model.safetensors and renaming state.next.bin
d="$W/window"
"$MOE" "${T[@]}" --steps 6 --out "$d" --set ckpt_every=3 || fail "window: train"
cp "$d/state.bin" "$W/state6"
"$MOE" "${T[@]}" --steps 6 --out "$W/window3" --set ckpt_every=3 --stop-after 3 || fail "window: train 3"
cp "$W/window3/state.bin" "$d/state.bin"  # state.bin one checkpoint behind the model
cp "$W/state6" "$d/state.next.bin"        # the model's state not yet renamed into place
"$MOE" "${T[@]}" --steps 9 --out "$d" --resume || fail "window: resume from state.next.bin"
checks=$((checks + 1))
[ "$(losses "$d")" = "$(losses "$W/straight" | head -n 9)" ] || fail "window: resumed losses differ"
checks=$((checks + 1))
[ -e "$d/state.next.bin" ] && fail "window: state.next.bin left behind"

# --- the disk fills up during a save: the previous checkpoint stays whole
d="$W/full"
"$MOE" "${T[@]}" --steps 4 --out "$d" || fail "full: train"
cp "$d/model.safetensors" "$W/full.model"
cp "$d/state.bin" "$W/full.state"
size_kb=$(( $(stat -c %s "$d/model.safetensors") / 1024 / 2 ))
expect_error "disk full" "File too large" -- bash -c "trap '' XFSZ; ulimit -f $size_kb; exec \"\$@\"" _ \
    "$MOE" "${T[@]}" --steps 8 --out "$d" --resume
checks=$((checks + 1))
cmp -s "$W/full.model" "$d/model.safetensors" && cmp -s "$W/full.state" "$d/state.bin" \
    || fail "a failed save changed the previous checkpoint"
"$MOE" "${T[@]}" --steps 8 --out "$d" --resume || fail "full: resume once there is room"

# --- keep_checkpoints, and checksums
d="$W/keep"
"$MOE" "${T[@]}" --steps 10 --out "$d" --set ckpt_every=2 --set keep_checkpoints=3 || fail "keep: train"
checks=$((checks + 1))
[ "$(ls "$d/checkpoints" | tr '\n' ' ')" = "step-00000006 step-00000008 step-00000010 " ] \
    || fail "keep_checkpoints=3 kept: $(ls "$d/checkpoints")"
for s in 6 8 10; do
    checks=$((checks + 1))
    "$MOE" eval --ckpt "$d/checkpoints/$(printf step-%08d $s)" --data "$W/corpus.txt" --max-batches 1 > /dev/null 2>&1 \
        || fail "keep: snapshot of step $s does not load"
done
checks=$((checks + 1))
ckpt_meta "$d/checkpoints/step-00000006/model.safetensors" step | grep -qx 6 || fail "keep: the step-6 snapshot is not step 6"
cp "$d/model.safetensors" "$W/flip.safetensors"
size=$(stat -c %s "$W/flip.safetensors")
printf '\x5a' | dd of="$W/flip.safetensors" bs=1 seek=$((size - 1000)) conv=notrunc status=none
expect_error "flipped weight" "checksum mismatch in the tensor data" -- "$MOE" eval --ckpt "$W/flip.safetensors" --data "$W/corpus.txt"
# a resume that fails on a corrupt checkpoint names the kept ones to go back to: cp writes
# through the hard link, so the step-10 snapshot is corrupt too and is not offered
cp "$W/flip.safetensors" "$d/model.safetensors"
cp "$d/checkpoints/step-00000010/state.bin" "$W/keep10.state"
expect_error "corrupt checkpoint, kept ones named" \
    "checksum mismatch in the tensor data (the file is corrupt); kept checkpoints in $d/checkpoints/, newest first: step-00000008, step-00000006...; to resume from one: cp --remove-destination $d/checkpoints/step-00000008/* $d/" \
    -- "$MOE" "${T[@]}" --steps 12 --out "$d" --resume
head -c 100 "$W/flip.safetensors" > "$W/trunc.safetensors" && cp --remove-destination "$W/trunc.safetensors" "$d/model.safetensors"
expect_error "truncated checkpoint, kept ones named" "newest first: step-00000010, step-00000008..." \
    -- "$MOE" "${T[@]}" --steps 12 --out "$d" --resume
cp --remove-destination "$d"/checkpoints/step-00000008/* "$d"/
checks=$((checks + 1))
cmp -s "$W/keep10.state" "$d/checkpoints/step-00000010/state.bin" || fail "keep: going back changed a kept checkpoint"
"$MOE" "${T[@]}" --steps 12 --out "$d" --resume || fail "keep: resume from the copied step-8 checkpoint"

# --- NaN / Inf
G=model.layers.1.block_sparse_moe.experts.w2.weight
MOE_TEST_FAULT=3:grad_nan:$G "$MOE" "${T[@]}" --steps 6 --out "$W/skip" --set nonfinite_policy=skip || fail "skip: run failed"
checks=$((checks + 1))
grep '"step":3,' "$W/skip/metrics.jsonl" | grep -q "\"skipped\":\"the gradient norm is not finite; first non-finite value: gradient of '$G'" \
    || fail "skip: step 3 not recorded as skipped with its tensor: $(grep '"step":3,' "$W/skip/metrics.jsonl" | cut -c1-300)"
checks=$((checks + 1))
[ "$(grep -c skipped "$W/skip/metrics.jsonl")" = 1 ] || fail "skip: more than one step skipped"
expect_error "stop" "step 3: the gradient norm is not finite; first non-finite value: gradient of '$G'" -- \
    env MOE_TEST_FAULT=3:grad_nan:$G "$MOE" "${T[@]}" --steps 6 --out "$W/stop"
checks=$((checks + 1))
grep -q "the checkpoint holds the last good step" "$W/err" || fail "stop: $(cat "$W/err")"
"$MOE" "${T[@]}" --steps 4 --out "$W/stop" --resume || fail "stop: resume from the saved step"
checks=$((checks + 1))
[ "$(losses "$W/stop")" = "$(losses "$W/straight" | head -n 4)" ] || fail "stop: the saved step is not the last good one"
"$MOE" "${T[@]}" --steps 2 --out "$W/poison" || fail "poison: train"
cp "$W/poison/model.safetensors" "$W/poison.model"
Q=model.layers.1.self_attn.q_proj.weight
expect_error "poisoned weights" "first non-finite value: parameter '$Q'" -- \
    env MOE_TEST_FAULT=3:param_nan:$Q "$MOE" "${T[@]}" --steps 6 --out "$W/poison" --resume --set ckpt_every=1
checks=$((checks + 1))
cmp -s "$W/poison.model" "$W/poison/model.safetensors" || fail "poisoned weights were saved over the checkpoint"
expect_error "skips in a row" "3 steps in a row skipped" -- env MOE_TEST_FAULT=2:param_nan:$Q \
    "$MOE" "${T[@]}" --steps 10 --out "$W/rows" --set nonfinite_policy=skip --set max_skipped_steps=3
MOE_TEST_FAULT=25:loss_spike "$MOE" "${T[@]}" --steps 27 --out "$W/spike" --set nonfinite_policy=skip \
    --set loss_spike_factor=3 || fail "spike: run failed"
checks=$((checks + 1))
grep '"step":25,' "$W/spike/metrics.jsonl" | grep -q '"skipped":"loss spike' || fail "spike: step 25 not skipped"
checks=$((checks + 1))
[ "$(grep -c skipped "$W/spike/metrics.jsonl")" = 1 ] || fail "spike: other steps skipped too"
# the guard's running mean is in state.bin: a run resumed before the spike still sees it (and
# a plain --resume keeps the run's training keys: the policy and the factor)
"$MOE" "${T[@]}" --steps 22 --out "$W/spike2" --set nonfinite_policy=skip --set loss_spike_factor=3 || fail "spike: 22 steps"
MOE_TEST_FAULT=25:loss_spike "$MOE" "${T[@]}" --steps 27 --out "$W/spike2" --resume || fail "spike: resumed run failed"
checks=$((checks + 1))
[ "$(losses "$W/spike2")" = "$(losses "$W/spike")" ] && cmp -s "$W/spike/state.bin" "$W/spike2/state.bin" \
    || fail "spike: the resumed run differs from the straight one (guard state not restored?)"
# a version 1 state (no guard fields) still loads; the guard starts afresh
python3 - "$W/spike2/state.bin" "$W/v1.bin" <<'PY' || fail "v1: could not write a version 1 state"
import struct, sys
b = open(sys.argv[1], "rb").read()
assert b[:8] == b"MOESTATE" and struct.unpack("<I", b[8:12])[0] == 2
body = b[:8] + struct.pack("<I", 1) + b[12:64] + b[96:-8]
h = 1469598103934665603
for x in body: h = ((h ^ x) * 1099511628211) & (2**64 - 1)
open(sys.argv[2], "wb").write(body + struct.pack("<Q", h))
PY
mkdir -p "$W/v1" && cp "$W/spike2/model.safetensors" "$W/v1/" && cp "$W/v1.bin" "$W/v1/state.bin"
"$MOE" "${T[@]}" --steps 29 --out "$W/v1" --resume || fail "v1: resume from a version 1 state"
checks=$((checks + 1))
"$MOE" "${T[@]}" --steps 29 --out "$W/spike2" --resume || fail "v1: the version 2 run's own resume"
[ "$(losses "$W/v1")" = "$(losses "$W/spike2" | tail -n 2)" ] || fail "v1: steps 28-29 differ from the version 2 run's"
checks=$((checks + 1))
python3 -c "import struct,sys; b=open(sys.argv[1],'rb').read(); sys.exit(struct.unpack('<I',b[8:12])[0] != 2 or struct.unpack('<q',b[72:80])[0] != 2)" \
    "$W/v1/state.bin" || fail "v1: the state written after it is not version 2 with the guard restarted (2 steps)"

finish test_faults
