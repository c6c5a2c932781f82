#!/usr/bin/env bash
# bench_dist.sh — expert-parallel communication of `moe` on this machine: short training runs of
# the standard config (bench/standard.json) on R MPI ranks with expert-parallel size EP, for the
# layouts (R, EP) = (1,1), (2,2), (4,4), (4,2), one after another. batch_size = 8/R per rank, so
# the global batch (8 sequences) is the same in every layout. For each layout prints:
#   R, EP, DP = R/EP; tokens/s and step ms (median over the steps after the first);
#   all-to-all MB/step, ms/step and share of the step (rank 0: bytes it sent to other ranks for
#   MoE dispatch + combine, forward and backward, and the count exchange; seconds inside the calls);
#   all-reduce MB/step (ring accounting, 2(p-1)/p x buffer), ms/step and share of the step;
#   the predicted all-to-all bytes per step and rank under uniform routing,
#     L_moe x 4 x N_r x K x (1 - dropped) x C x 4 B x (EP-1)/EP  +  L_moe x (EP-1) x E/EP x 8 B
#   (4 = dispatch and combine, forward and backward; N_r = batch_size x seq_len x grad_accum;
#   dropped = the run's dropped fraction averaged over layers and steps; the second term is the
#   count exchange, a few hundred bytes), and measured / predicted.
# Byte and time columns are means over the steps after the first; MB = 10^6 bytes. With more
# ranks than cores the time inside a collective includes waiting for slower ranks, so a2a ms is
# an upper bound on transfer time. Extra mpirun flags (e.g. --bind-to none) go in MPIRUN_FLAGS.
# usage: bench/bench_dist.sh [STEPS]   (needs build/moe built with MPI (Open MPI) and mpirun)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-4}
CONFIG=bench/standard.json
command -v mpirun > /dev/null || { echo "bench_dist.sh: mpirun not found (install Open MPI)" >&2; exit 1; }
[ -x build/moe ] || { echo "bench_dist.sh: build/moe not found; build it with MPI first" >&2; exit 1; }
MPI=(mpirun --oversubscribe)
if [ "$(id -u)" -eq 0 ]; then MPI+=(--allow-run-as-root); fi
read -r -a EXTRA <<< "${MPIRUN_FLAGS:-}"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
head -c 2000000 /dev/urandom | base64 > "$W/data.txt" # any bytes will do for timing

echo "moe expert-parallel communication, $(nproc) cores, $STEPS steps per layout, config $CONFIG, threads=1"
python3 - "$CONFIG" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
print("  n_layer %d, moe_layers %s, E %d, K %d, C %d, T %d, global batch 8 sequences (batch_size = 8/R)" % (
    c.get("n_layer", 4), c.get("moe_layers", "all"), c.get("n_experts", 8), c.get("top_k", 2),
    c.get("n_embd", 128), c.get("seq_len", 128)))
PY
printf '%3s %3s %3s %9s %9s | %8s %8s %6s | %8s %8s %6s | %8s %6s %7s\n' \
    R EP DP tok/s step_ms a2a_MB a2a_ms a2a% ar_MB ar_ms ar% pred_MB drop meas/pr
for layout in "1 1" "2 2" "4 4" "4 2"; do
    read -r R EP <<< "$layout"
    B=$((8 / R))
    OUTD="$W/r${R}ep${EP}"
    "${MPI[@]}" "${EXTRA[@]}" -np "$R" build/moe train --data "$W/data.txt" --out "$OUTD" --config "$CONFIG" \
        --steps "$STEPS" --set eval_every=0 --set eval_batches=1 --set threads=1 --set batch_size="$B" \
        --quiet --ep "$EP" > "$W/log" 2>&1 || { echo "run R=$R EP=$EP failed:" >&2; cat "$W/log" >&2; exit 1; }
    python3 - "$CONFIG" "$OUTD/metrics.jsonl" "$R" "$EP" "$B" <<'PY'
import json, statistics, sys
cfg_path, path, R, EP, B = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
c = json.load(open(cfg_path))
# moe's defaults for keys the config leaves out
E, K = c.get("n_experts", 8), c.get("top_k", 2)
C, L, T = c.get("n_embd", 128), c.get("n_layer", 4), c.get("seq_len", 128)
GA = c.get("grad_accum", 1)
spec = str(c.get("moe_layers", "all"))
if spec == "all":
    L_moe = L
elif spec == "none":
    L_moe = 0
elif spec.startswith("every:"):
    k = int(spec[6:]); L_moe = sum(1 for l in range(L) if (l + 1) % k == 0)
else:
    L_moe = len([x for x in spec.split(",") if x.strip()])
recs = [x for x in (json.loads(l) for l in open(path) if l.strip()) if "event" not in x]  # steps only
if not recs:
    sys.exit("no records in " + path)
if recs[0].get("moe") is not None and len(recs[0]["moe"]) != L_moe:
    print("  note: metrics show %d MoE layers, config parsing gave %d; using the metrics" % (len(recs[0]["moe"]), L_moe))
    L_moe = len(recs[0]["moe"])
r = recs[1:] if len(recs) > 1 else recs
mean = lambda xs: sum(xs) / len(xs)
tps = statistics.median(x["tokens_per_s"] for x in r)
ms = statistics.median(x["step_ms"] for x in r)
step_s = mean([x["step_ms"] / 1e3 for x in r])
# one process writes no a2a/allreduce keys: no traffic
a2a_b = mean([x.get("a2a_bytes", 0) for x in r])
a2a_s = mean([x.get("a2a_s", 0.0) for x in r])
ar_b = mean([x.get("allreduce_bytes", 0) for x in r])
ar_s = mean([x.get("allreduce_s", 0.0) for x in r])
drops = [m["dropped_frac"] for x in r for m in x.get("moe", [])]
d = mean(drops) if drops else 0.0
N_r = B * T * GA
pred = L_moe * 4 * N_r * K * (1 - d) * C * 4 * (EP - 1) / EP
pred += L_moe * GA * (EP - 1) * (E // EP) * 8  # count exchange: (EP-1) peers x E/EP int64 per layer
ratio = "%7.3f" % (a2a_b / pred) if pred > 0 else "%7s" % "-"
print("%3d %3d %3d %9.0f %9.1f | %8.2f %8.2f %5.1f%% | %8.2f %8.2f %5.1f%% | %8.2f %6.3f %s" % (
    R, EP, R // EP, tps, ms, a2a_b / 1e6, a2a_s * 1e3, 100 * a2a_s / step_s, ar_b / 1e6, ar_s * 1e3,
    100 * ar_s / step_s, pred / 1e6, d, ratio))
PY
done
