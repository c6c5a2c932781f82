#!/usr/bin/env bash
# bench_gpu.sh — training speed of moe on the GPU, on the configs of ../shared/GPU.md:
#   standard  vocab 32000, T 1024, C 1024, L 8, H 16, E 8, K 2, F 2816 SwiGLU, B 16
#   fine      the same with E 64, K 8, F 352
# each dropless (as the PyTorch peers are) and with capacity factor 1.25, bf16. Prints per run
# tokens/s (median step after the first 5), model TFLOP/s (6 x active parameters + 12 L C T per
# token), MFU against the H200's 989 TFLOP/s, peak GPU memory (nvidia-smi, sampled every 100 ms)
# and the per-phase profile of `moe train --profile` (CUDA events: attention, router, dispatch,
# experts, combine, head and loss, optimizer; the rest of the step is "other").
# With PEER=1 it also runs the torch.compile peer (bench/peer_torch_gpu.py) on the standard
# config; the other PyTorch figures are quoted from GPU.md.
#
# usage: bench/bench_gpu.sh [DIR] [STEPS]    DIR: moe and its libraries (bench/gpu_check.sh pack;
#        default gpu/, or build/ here); STEPS default 20. Logs: $OUT/bench_gpu.tar.gz when OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
DIR=${1:-gpu}
STEPS=${2:-20}
MOE=$DIR/moe
[ -x "$MOE" ] || MOE=build/moe
export LD_LIBRARY_PATH="$DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
# random tokens as an llm.c shard (magic 20240520, version 1, uint16): speed does not depend on them
python3 - "$W/tokens.bin" <<'PY'
import array, random, sys
random.seed(0)
n = 4 * 1024 * 1024
head = array.array("i", [20240520, 1, n] + [0] * 253)
tok = array.array("H", (random.randrange(32000) for _ in range(n)))
with open(sys.argv[1], "wb") as f:
    head.tofile(f)
    tok.tofile(f)
PY
STD=(--set vocab_size=32000 --set seq_len=1024 --set n_embd=1024 --set n_layer=8 --set n_head=16 --set n_experts=8
     --set top_k=2 --set expert_hidden=2816 --set batch_size=16)
FINE=(--set n_experts=64 --set top_k=8 --set expert_hidden=352)

run() { # name sets...
    local name=$1
    shift
    (while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null; sleep 0.1; done) \
        > "$W/$name.mem" &
    local smi=$!
    timeout 300 "$MOE" train --device cuda --data "$W/tokens.bin" --out "$W/$name" --steps "$STEPS" --quiet --profile \
        --set eval_every=0 --set eval_batches=1 --set warmup_steps=2 "${STD[@]}" "$@" > "$W/$name.prof" 2>&1
    local rc=$?
    kill $smi 2>/dev/null
    wait $smi 2>/dev/null
    if [ $rc -ne 0 ]; then
        echo "$name: exit $rc: $(tail -2 "$W/$name.prof")"
        return
    fi
    python3 - "$W/$name" "$name" "$(sort -n "$W/$name.mem" | tail -1)" <<'PY'
import json, statistics, sys
d, name, mem = sys.argv[1], sys.argv[2], sys.argv[3]
r = [x for x in map(json.loads, open(d + "/metrics.jsonl")) if "event" not in x]
tps = statistics.median(x["tokens_per_s"] for x in r[5:] or r)
V, T, C, L = 32000, 1024, 1024, 8
E, K, F = (64, 8, 352) if name.startswith("fine") else (8, 2, 2816)
active = V * C + L * (4 * C * C + C * E + K * 3 * C * F + 2 * C) + C
tf = (6 * active + 12 * L * C * T) * tps / 1e12
mem = f"{float(mem) / 1024:.1f}" if mem else "?"
print(f"{name:<20} {tps:>10.0f} {tf:>8.1f} {100 * tf / 989:>6.1f}% {mem:>9}")
PY
    sed -n '/^profile over/,$p' "$W/$name.prof" | sed 's/^/    /'
    rm -rf "$W/$name/model.safetensors" "$W/$name"/state*.bin "$W/$name/checkpoints" # GBs: only the logs are kept
}

echo "moe on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), $STEPS steps a run"
printf "%-20s %10s %8s %7s %9s\n" run tokens/s TFLOP/s MFU peak_GiB
run standard --set capacity_factor=0
run standard_cf1.25 --set capacity_factor=1.25
run fine "${FINE[@]}" --set capacity_factor=0
run fine_cf1.25 "${FINE[@]}" --set capacity_factor=1.25
if [ "${PEER:-0}" = 1 ]; then
    echo "peer (bench/peer_torch_gpu.py):"
    timeout 240 python3 bench/peer_torch_gpu.py --config standard --compile --steps 30 2>&1 | tail -1
fi
echo "GPU.md, the same H200: torch.compile 161,159 tok/s (21.7% MFU, 24.9 GiB); eager 135,776;" \
     "transformers Mixtral 101,267; fine-grained: transformers 75,082, eager 34,417"
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    tar -czf "$OUT/bench_gpu.tar.gz" -C "$W" --exclude=tokens.bin --exclude='*.safetensors' --exclude='state*.bin' . \
        && echo "logs in $OUT/bench_gpu.tar.gz"
fi
