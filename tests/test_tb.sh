#!/usr/bin/env bash
# test_tb.sh — TensorBoard event files, read back by TensorBoard's own reader
# (tests/tb/check_events.py): every metrics.jsonl number under its tag, every step once, also
# after a run died past its last checkpoint and was resumed (the resumed file's SessionLog START
# makes TensorBoard drop the orphaned steps); tensorboard=false writes none. Needs
# /usr/bin/python3 with the tensorboard package (scripts/deps.sh --hf); exits 77 (skipped) without.
# usage: test_tb.sh path/to/moe
set -u
MOE=${1:?usage: test_tb.sh path/to/moe}
SRC=$(cd "$(dirname "$0")/.." && pwd)
source "$SRC/tests/lib.sh"
skip_unless test_tb "tensorboard package" -- "$PY" -c "import tensorboard"
cat "$SRC"/src/*/*.c > "$W/corpus.txt"
T=(--data "$W/corpus.txt" --steps 12 --set seq_len=16 --set n_embd=16 --set n_layer=3 --set n_head=2
   --set moe_layers=0,2 --set n_experts=4 --set expert_hidden=16 --set batch_size=4 --set eval_every=4
   --set ckpt_every=4 --set threads=2 --quiet)
check() { checks=$((checks + 1)); "$PY" "$SRC/tests/tb/check_events.py" "$1" || fail "$2"; }

"$MOE" train "${T[@]}" --out "$W/straight" || fail "train"
check "$W/straight" "straight run"
# a run that died at step 6 with its last checkpoint at step 4, resumed to the end
"$MOE" train "${T[@]}" --out "$W/died" --stop-after 4 || fail "train to 4"
cp "$W/died/model.safetensors" "$W/died/state.bin" "$W"/
"$MOE" train "${T[@]}" --out "$W/died" --resume --stop-after 2 || fail "train to 6"
cp "$W/model.safetensors" "$W/state.bin" "$W/died/" # back to the step-4 checkpoint: steps 5, 6 orphaned
"$MOE" train "${T[@]}" --out "$W/died" --resume || fail "resume"
checks=$((checks + 1))
[ "$(ls "$W/died"/events.out.tfevents.* | wc -l)" = 3 ] || fail "expected 3 event files: $(ls "$W/died")"
check "$W/died" "resumed run (orphaned steps)"
checks=$((checks + 1))
cmp -s <(grep -v '"event"' "$W/straight/metrics.jsonl" | cut -d, -f1-2) <(grep -v '"event"' "$W/died/metrics.jsonl" | cut -d, -f1-2) \
    || fail "the resumed run's losses differ from the straight run's"
"$MOE" train "${T[@]}" --out "$W/off" --set tensorboard=false || fail "train tensorboard=false"
checks=$((checks + 1))
ls "$W/off"/events.out.tfevents.* > /dev/null 2>&1 && fail "tensorboard=false wrote event files"
finish test_tb
