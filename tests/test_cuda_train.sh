#!/usr/bin/env bash
# test_cuda_train.sh MOE DATA — training on the GPU against the CPU, with shared checkpoints:
#
#   - 300 steps of the default model: the GPU's final validation loss (bf16, the GPU default,
#     and fp32) is within 0.03 of the CPU's;
#   - cross-backend resume: the step-250 checkpoint of a GPU run resumed on the CPU (and of a
#     CPU run on the GPU) ends, 50 steps later, within 0.02 of the uninterrupted run's loss;
#   - GPU -> GPU resume with the same dtype continues bit for bit (losses, gradient norms, loads,
#     final weights);
#   - every other option (noisy top-K, expert choice, soft, random routing, jitter, recompute,
#     per-layer expert counts) on a smaller model for 60 steps in fp32: val loss within 0.03;
#   - the NaN report names the tensor, as on the CPU (a skipped step, a stopped run);
#   - moe sample and logits --kv-cache refuse the GPU by name (the KV cache is the CPU's).
#
# Exits 77 (skipped) where `moe train --device cuda` cannot run: no GPU, or a build without CUDA.
# bench/gpu_check.sh runs it on the GPU machine; ctest runs it with the label cuda.
set -uo pipefail
MOE=$1
DATA=$2
source "$(dirname "$0")/lib.sh"
[ -f "$DATA" ] || { echo "test_cuda_train: skipped: no corpus at $DATA"; exit 77; }

if ! "$MOE" train --data "$DATA" --out "$W/probe" --steps 1 --quiet --device cuda > "$W/probe.txt" 2>&1; then
    if grep -q -e "no usable CUDA device" -e "has no CUDA" -e "cannot load cuBLAS" "$W/probe.txt"; then
        echo "test_cuda_train: skipped: $(tail -1 "$W/probe.txt")"
        exit 77
    fi
    echo "FAIL: a one-step GPU run: $(cat "$W/probe.txt")" >&2
    exit 1
fi

# step, loss, grad norm and loads of every record (repr: exact floats)
records() { python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "event" not in r and int(r["step"]) > int(sys.argv[2]):
        print(r["step"], repr(r["loss"]), repr(r["grad_norm"]), [m["load"] for m in r["moe"]])
' "$1" "${2:-0}"; }
final() { python3 -c '
import json, sys
last = [json.loads(l) for l in open(sys.argv[1]) if "val_loss" in l][-1]
print(last["val_loss"])' "$1"; }
close_to() { python3 -c 'import sys; a, b, t = map(float, sys.argv[1:]); sys.exit(0 if abs(a - b) <= t else 1)' "$1" "$2" "$3"; }

# MOE_CUDA_TRAIN_STEPS (a multiple of 50, at least 100; default 300) shortens the run to check
# this script itself, with a MOE wrapper that maps --device cuda to cpu
STEPS=${MOE_CUDA_TRAIN_STEPS:-300}
AT=$(printf "%08d" $((STEPS - 50)))
RUN=(train --data "$DATA" --steps "$STEPS" --quiet --set ckpt_every=50 --set keep_checkpoints=2)
"$MOE" "${RUN[@]}" --out "$W/cpu" --device cpu || fail "the CPU run failed"
"$MOE" "${RUN[@]}" --out "$W/gpu" --device cuda || fail "the GPU run (bf16) failed"
"$MOE" "${RUN[@]}" --out "$W/gpu32" --device cuda --dtype fp32 || fail "the GPU run (fp32) failed"
cpu=$(final "$W/cpu/metrics.jsonl") gpu=$(final "$W/gpu/metrics.jsonl") gpu32=$(final "$W/gpu32/metrics.jsonl")
echo "$STEPS steps: val loss cpu $cpu, gpu bf16 $gpu, gpu fp32 $gpu32"
checks=$((checks + 2))
close_to "$gpu" "$cpu" 0.03 || fail "GPU bf16 val loss $gpu is not within 0.03 of the CPU's $cpu"
close_to "$gpu32" "$cpu" 0.03 || fail "GPU fp32 val loss $gpu32 is not within 0.03 of the CPU's $cpu"

# resume the step-(STEPS-50) checkpoint of run $1 on device $2 (extra flags after), into $W/$3
resume() {
    local from=$1 dev=$2 to=$3
    shift 3
    mkdir -p "$W/$to"
    cp "$W/$from/checkpoints/step-$AT/"* "$W/$to/" || { fail "$to: no step-$AT checkpoint in $from"; return; }
    "$MOE" train --data "$DATA" --out "$W/$to" --resume --quiet --device "$dev" "$@" || fail "$to: resume failed"
}
resume gpu cpu gpu_then_cpu
resume cpu cuda cpu_then_gpu
resume gpu cuda gpu_then_gpu
a=$(final "$W/gpu_then_cpu/metrics.jsonl") b=$(final "$W/cpu_then_gpu/metrics.jsonl")
echo "resumed at $((STEPS - 50)) for 50 steps: gpu->cpu $a (gpu straight $gpu), cpu->gpu $b (cpu straight $cpu)"
checks=$((checks + 2))
close_to "$a" "$gpu" 0.02 || fail "GPU->CPU resume ends at $a, not within 0.02 of the GPU run's $gpu"
close_to "$b" "$cpu" 0.02 || fail "CPU->GPU resume ends at $b, not within 0.02 of the CPU run's $cpu"

checks=$((checks + 2))
records "$W/gpu/metrics.jsonl" $((STEPS - 50)) > "$W/straight.txt"
records "$W/gpu_then_gpu/metrics.jsonl" $((STEPS - 50)) > "$W/resumed.txt"
[ "$(wc -l < "$W/straight.txt")" -eq 50 ] || fail "the GPU run has $(wc -l < "$W/straight.txt") records in its last 50 steps"
cmp -s "$W/straight.txt" "$W/resumed.txt" || { fail "GPU->GPU resume is not bit-exact"; diff "$W/straight.txt" "$W/resumed.txt" | head -5 >&2; }
cmp -s "$W/gpu/model.safetensors" "$W/gpu_then_gpu/model.safetensors" || fail "GPU->GPU resume: final weights differ"

# every other option, on a smaller model for 60 steps in fp32 (bf16 is the 300-step run's): GPU
# val loss within 0.03 of the CPU's
OPT=(train --data "$DATA" --steps 60 --quiet --set seq_len=64 --set n_layer=2 --set n_embd=64 --set n_head=4
     --set batch_size=8 --set eval_batches=4 --set warmup_steps=6)
for opt in routing=noisy_topk routing=expert_choice routing=soft random_routing=1 jitter_eps=0.05 recompute=1 \
    expert_counts=4,8; do
    name=${opt//[=,]/_}
    checks=$((checks + 1))
    "$MOE" "${OPT[@]}" --set "$opt" --out "$W/o_cpu_$name" --device cpu || { fail "$opt: the CPU run failed"; continue; }
    "$MOE" "${OPT[@]}" --set "$opt" --out "$W/o_gpu_$name" --device cuda --dtype fp32 || { fail "$opt: the GPU run failed"; continue; }
    a=$(final "$W/o_cpu_$name/metrics.jsonl") b=$(final "$W/o_gpu_$name/metrics.jsonl")
    echo "$opt: val loss cpu $a, gpu $b"
    close_to "$b" "$a" 0.03 || fail "$opt: GPU val loss $b is not within 0.03 of the CPU's $a"
done

# the NaN report as on the CPU: a NaN gradient skipped and named; a NaN parameter stops the run
# naming it, and the checkpoint keeps the last good step
G=model.layers.1.block_sparse_moe.experts.w2.weight Q=model.layers.1.self_attn.q_proj.weight
SHORT=(train --data "$DATA" --quiet --device cuda --set eval_every=0 --set log_every=1)
checks=$((checks + 2))
MOE_TEST_FAULT=3:grad_nan:$G "$MOE" "${SHORT[@]}" --steps 5 --out "$W/skip" --set nonfinite_policy=skip \
    || fail "NaN skip: the run failed"
grep '"step":3,' "$W/skip/metrics.jsonl" | grep -q "first non-finite value: gradient of '$G'" \
    || fail "NaN skip: step 3 is not recorded as skipped naming $G"
"$MOE" "${SHORT[@]}" --steps 2 --out "$W/poison" || fail "NaN stop: the first run failed"
cp "$W/poison/model.safetensors" "$W/poison.model"
MOE_TEST_FAULT=3:param_nan:$Q "$MOE" "${SHORT[@]}" --steps 5 --out "$W/poison" --resume > "$W/poison.txt" 2>&1 \
    && fail "NaN stop: a poisoned run succeeded"
grep -q "first non-finite value: parameter '$Q'" "$W/poison.txt" && cmp -s "$W/poison.model" "$W/poison/model.safetensors" \
    || fail "NaN stop: $(tail -2 "$W/poison.txt")"

# generation with a KV cache is the CPU backend's: on the GPU, sample and logits --kv-cache are
# refused with that message (never a crash, never a wrong sample); on the CPU the checkpoint samples
expect_error "sample on the GPU" "the cuda backend cannot decode with a KV cache yet" \
    -- "$MOE" sample --ckpt "$W/probe" --prompt "ROMEO:" --tokens 5 --device cuda
printf '1 2 3' > "$W/tok3.txt"
expect_error "logits --kv-cache on the GPU" "the cuda backend cannot decode with a KV cache yet" \
    -- "$MOE" logits --ckpt "$W/probe" --tokens "$W/tok3.txt" --out "$W/l.bin" --kv-cache --device cuda
checks=$((checks + 1))
"$MOE" sample --ckpt "$W/probe" --prompt "ROMEO:" --tokens 5 > /dev/null || fail "a GPU-trained checkpoint samples on the CPU"

finish test_cuda_train
