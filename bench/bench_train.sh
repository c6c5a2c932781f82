#!/usr/bin/env bash
# bench_train.sh — training throughput of `moe` (forward + backward + AdamW) on the default
# config and on the standard benchmark config (bench/standard.json: vocab 256, T 256, C 384,
# L 6, H 6, E 8, K 2, F 768, B 8, capacity factor 1.25). Reports the median tokens/s over the
# steps after the first (warm-up) step, and peak resident memory.
# usage: bench/bench_train.sh [STEPS] [DATA]   (needs a built build/moe)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-8}
DATA=${2:-$(find /usr/share/common-licenses -maxdepth 1 -type f | sort | paste -sd, -)}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
run() {
    local name=$1
    shift
    /usr/bin/time -f "%M" -o "$W/$name.mem" ./build/moe train --data "$DATA" --out "$W/$name" --steps "$STEPS" \
        --set eval_every=1000000 --set eval_batches=1 --quiet "$@"
    python3 - "$name" "$W/$name/metrics.jsonl" "$(cat "$W/$name.mem")" <<'PY'
import json, statistics, sys
name, path, mem_kb = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = [x for x in map(json.loads, open(path)) if "event" not in x]  # steps, not typed records
tps = statistics.median(x["tokens_per_s"] for x in r[1:]) if len(r) > 1 else r[0]["tokens_per_s"]
ms = statistics.median(x["step_ms"] for x in r[1:]) if len(r) > 1 else r[0]["step_ms"]
print(f"{name:10s} {tps:10.0f} tok/s  {ms:9.1f} ms/step  peak RSS {mem_kb/1024:7.1f} MiB")
PY
}
echo "moe training throughput, $(nproc) cores, $STEPS steps (median after the first)"
run default
run standard --config bench/standard.json
