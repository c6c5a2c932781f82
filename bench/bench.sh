#!/usr/bin/env bash
# bench.sh — CPU training speed of moe against PyTorch on the same machine, in one run:
#   configs (all vocab 256, T 256, C 384, L 6, H 6, B 8, fp32):
#     standard  E 8, K 2, F 768, capacity factor 1.25      (bench/standard.json)
#     fine      E 32, K 4, F 192 (same total expert parameters, half the active)
#     dense     dense SwiGLU FFN of 1536 = the standard config's active K*F
#   peers: bench/peer_torch.py, per-expert loop (HF Mixtral) and sort-by-expert dispatch.
# Prints tokens/s, the ratio to the faster PyTorch variant, model FLOP/s (6 x active params +
# 12 L C T per token, PaLM's accounting) and its share of the sgemm rate measured here with the
# same BLAS, peak resident memory, 1- vs 2-thread scaling, and a per-phase profile; the
# standard config also with recompute=1 (activation recompute: memory against speed).
# Training rates are the median step after the first; the sgemm and triad rates the best of 5
# and 10 (the largest denominator for the utilisation). This machine shares its cores with
# neighbours: figures move by up to 20% from one run to the next, so compare rows of one run.
# usage: bench/bench.sh [STEPS]      (needs build/ with moe and bench_gemm; PyTorch for the peer)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-6}
THREADS=${THREADS:-$(nproc)}
PY=${PYTHON:-/usr/bin/python3}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
head -c 2000000 /dev/urandom | base64 > "$W/data.txt" # any bytes will do for timing

./build/bench_gemm "$THREADS" > "$W/gemm"
./build/bench_gemm 1 > "$W/gemm1"
PEAK=$(awk '/^peak/ {print $2}' "$W/gemm")
echo "machine: $(nproc) cores, $THREADS threads, sgemm peak measured $PEAK GFLOP/s (build/bench_gemm)"
echo "  1 thread: sgemm $(awk '/^peak/ {print $2}' "$W/gemm1") GFLOP/s, triad $(awk '/^triad/ {print $2}' "$W/gemm1") GB/s;" \
     "$THREADS threads: triad $(awk '/^triad/ {print $2}' "$W/gemm") GB/s"

moe_run() { # name threads sets...
    local name=$1 th=$2
    shift 2
    /usr/bin/time -f "%M" -o "$W/$name.mem" ./build/moe train --data "$W/data.txt" --out "$W/$name" \
        --config bench/standard.json --steps "$STEPS" --set eval_every=0 --set eval_batches=1 --set threads="$th" \
        --quiet --profile "$@" > "$W/$name.prof"
    python3 - "$W/$name" "$(cat "$W/$name.mem")" <<'PY'
import json, statistics, struct, sys
sys.path.insert(0, "bench")
from analyze import params  # active parameters per token, as the analysis counts them
d, mem = sys.argv[1], int(sys.argv[2])
r = [x for x in map(json.loads, open(d + "/metrics.jsonl")) if "event" not in x]
tps = statistics.median(x["tokens_per_s"] for x in r[1:])
with open(d + "/model.safetensors", "rb") as f:
    n, = struct.unpack("<Q", f.read(8)); h = json.loads(f.read(n))
cfg = json.loads(h["__metadata__"]["config"])
active = params(d)[1]
flops = 6 * active + 12 * cfg["n_layer"] * cfg["n_embd"] * cfg["seq_len"]
print(f"{tps:.0f} {mem / 1024:.0f} {active} {flops}")
PY
}

printf "%-22s %10s %8s %12s %9s %10s\n" run tokens/s vs_torch "GFLOP/s" "of_peak" "peak_MiB"
declare -A TPS
for cfg in standard fine dense; do
    case $cfg in
        standard) sets=() ;;
        fine) sets=(--set n_experts=32 --set top_k=4 --set expert_hidden=192) ;;
        dense) sets=(--set moe_layers=none --set ffn_hidden=1536) ;;
    esac
    read -r tps mem active flops < <(moe_run "moe_$cfg" "$THREADS" "${sets[@]+"${sets[@]}"}")
    TPS[$cfg]=$tps
    best=0
    for disp in loop sorted; do
        [ "$cfg" = dense ] && [ "$disp" = loop ] && continue
        read -r _ ttps tmem < <("$PY" bench/peer_torch.py --config "$cfg" --dispatch "$disp" --steps "$STEPS" --threads "$THREADS")
        printf "%-22s %10s %8s %12s %9s %10s\n" "torch_${disp}_$cfg" "$ttps" "" "" "" "$tmem"
        best=$(python3 -c "print(max($best, $ttps))")
    done
    python3 -c "
tps, best, flops, peak = $tps, $best, $flops, $PEAK
print('%-22s %10.0f %7.2fx %12.1f %8.1f%% %10s' % ('moe_$cfg', tps, tps / best, tps * flops / 1e9, 100 * tps * flops / 1e9 / peak, '$mem'))"
    if [ "$cfg" = standard ]; then
        read -r rtps rmem _ < <(moe_run moe_standard_recompute "$THREADS" --set recompute=1)
        python3 -c "
print('%-22s %10.0f %7.2fx %12s %9s %10s' % ('moe_standard_recompute', $rtps, $rtps / $best, '', '', '$rmem'))"
        echo "  profile of moe_standard (share of training-step time):"
        sed 's/^/  /' "$W/moe_standard.prof" | tail -n +2
    fi
done
python3 -c "print('moe standard / dense step time: %.2f' % (${TPS[dense]} / ${TPS[standard]}))"
# 1 thread, then the same run at $THREADS threads right after it (this machine's neighbours vary)
read -r tps1 _ < <(moe_run moe_standard_1t 1)
read -r tps2 _ < <(moe_run moe_standard_again "$THREADS")
python3 -c "print('moe standard, $THREADS threads / 1 thread: %.2fx (%d vs %d tokens/s)' % ($tps2 / $tps1, $tps2, $tps1))"
