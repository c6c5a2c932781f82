#!/usr/bin/env bash
# soak.sh — a long run compressed into a small model: STEPS steps with evaluation and checkpoints,
# interrupted INTERRUPTS times at random moments (alternately SIGTERM, which saves, and kill -9,
# which does not) and resumed each time (every other time by a plain --resume); at the end its losses, validation losses and final
# checkpoint must equal those of the same run done without interruption.
# usage: scripts/soak.sh [STEPS=2000] [INTERRUPTS=40] [WORKDIR]   (after a build in build/)
set -u
cd "$(dirname "$0")/.."
STEPS=${1:-2000}
INTER=${2:-40}
W=${3:-$(mktemp -d)}
MOE=./build/moe
[ -x $MOE ] || { echo "soak: build first (cmake -S . -B build && cmake --build build)"; exit 2; }
mkdir -p "$W"
cat src/*/*.c include/*.h tools/*.c > "$W/corpus.txt"
T=(train --data "$W/corpus.txt" --steps "$STEPS" --set seq_len=64 --set n_embd=64 --set n_layer=2 --set n_head=4
   --set n_experts=8 --set expert_hidden=128 --set batch_size=8 --set eval_every=50 --set eval_batches=2
   --set ckpt_every=25 --set keep_checkpoints=3 --set nonfinite_policy=skip --set loss_spike_factor=4 --set threads=1
   --quiet)
t0=$(date +%s)
rm -rf "$W/straight" "$W/soak"
$MOE "${T[@]}" --out "$W/straight" || { echo "soak: straight run failed"; exit 1; }
t1=$(date +%s)
echo "soak: straight run of $STEPS steps: $((t1 - t0)) s"
RANDOM=1
per=$(( (t1 - t0) * 1000 / (INTER + 1) ))  # ms of running between interruptions, on average
[ $per -lt 200 ] && per=200
n_term=0 n_kill=0 n_resume=0
for i in $(seq "$INTER"); do
    # every other resume is a plain --resume: the run's keys come from its checkpoint
    if [ -f "$W/soak/model.safetensors" ] && [ $((n_resume % 2)) = 1 ]; then
        $MOE train --data "$W/corpus.txt" --out "$W/soak" --resume --quiet & n_resume=$((n_resume + 1))
    elif [ -f "$W/soak/model.safetensors" ]; then $MOE "${T[@]}" --out "$W/soak" --resume & n_resume=$((n_resume + 1))
    else $MOE "${T[@]}" --out "$W/soak" & fi
    pid=$!
    ms=$(( RANDOM % (2 * per) + 50 ))
    sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
    if [ $((i % 2)) = 1 ]; then kill -TERM $pid 2>/dev/null && n_term=$((n_term + 1)); else kill -9 $pid 2>/dev/null && n_kill=$((n_kill + 1)); fi
    wait $pid 2>/dev/null
    if [ -f "$W/soak/model.safetensors" ] && ! $MOE eval --ckpt "$W/soak" --data "$W/corpus.txt" --max-batches 1 > /dev/null; then
        echo "soak: FAIL: the checkpoint does not load after interruption $i"; exit 1
    fi
done
if [ -f "$W/soak/model.safetensors" ]; then $MOE "${T[@]}" --out "$W/soak" --resume; else $MOE "${T[@]}" --out "$W/soak"; fi \
    || { echo "soak: FAIL: the last resume failed"; exit 1; }
t2=$(date +%s)
strip() { grep -v '"event"' "$1/metrics.jsonl" | sed 's/"tokens_per_s":[^,]*,"step_ms":[^,]*,//'; } # steps; timings differ, nothing else may
if [ "$(strip "$W/straight")" = "$(strip "$W/soak")" ] && cmp -s "$W/straight/model.safetensors" "$W/soak/model.safetensors"; then
    echo "soak: ok: $STEPS steps, $n_term SIGTERMs and $n_kill kill -9s, $n_resume resumes ($((t2 - t1)) s);" \
         "every metrics record and the final weights equal the uninterrupted run's"
    tail -n 1 "$W/soak/metrics.jsonl" | grep -o '"step":[0-9]*,"loss":[^,]*\|"val_loss":[^,]*' | tr '\n' ' '
    echo
else
    echo "soak: FAIL: the interrupted run differs from the uninterrupted one"
    diff <(strip "$W/straight") <(strip "$W/soak") | head -5
    exit 1
fi
