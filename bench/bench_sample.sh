#!/usr/bin/env bash
# bench_sample.sh — generation speed: 240 greedy tokens after a 16-token prompt on the standard
# config (bench/standard.json, a few training steps: speed does not depend on the weights), on
# the same threads:
#   - moe sample (KV cache): end to end (the process: load, prefill, decode), and its --stats
#     (prefill and decode separately, the cache's size);
#   - with BASE=an older moe (before the KV cache: a full forward per token), end to end;
#   - transformers' generate on the exported model (when /usr/bin/python3 has torch and
#     transformers): load, then generate alone, prefill alone.
# Medians of REPS runs. usage: bench/bench_sample.sh [REPS] [THREADS]   (MOE=build/moe, BASE=)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
THREADS=${2:-$(nproc)}
MOE=${MOE:-build/moe}
BASE=${BASE:-}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
PROMPT=$(printf 'First Citizen:\nB') # 16 bytes: 16 tokens of the byte-level model
"$MOE" train --data ../shared/data/tinyshakespeare.txt --out "$W/run" --config bench/standard.json --steps 3 --quiet \
    --set eval_every=0 --set tensorboard=false
med() { python3 -c "import statistics, sys; print('%.3f' % statistics.median(map(float, sys.argv[1:])))" "$@"; }
wall() { # COMMAND...: wall seconds of REPS runs, median
    local t=()
    for _ in $(seq "$REPS"); do
        /usr/bin/time -f "%e" -o "$W/t" "$@" > "$W/out" 2> "$W/err" || { cat "$W/err"; exit 1; }
        t+=("$(cat "$W/t")")
    done
    med "${t[@]}"
}
echo "$(nproc) cores, $THREADS threads; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); moe $("$MOE" --version | tail -1)"
S=(sample --ckpt "$W/run" --prompt "$PROMPT" --tokens 240 --temperature 0 --threads "$THREADS")
echo "moe sample, end to end:           $(wall "$MOE" "${S[@]}") s"
"$MOE" "${S[@]}" --stats > /dev/null 2> "$W/stats"
sed 's/^/  /' "$W/stats"
echo "moe, load only (--tokens 0):      $(wall "$MOE" sample --ckpt "$W/run" --prompt "$PROMPT" --tokens 0 --threads "$THREADS") s"
if [ -n "$BASE" ]; then
    echo "BASE ($("$BASE" --version | head -1)), end to end: $(wall "$BASE" "${S[@]}") s"
fi
if /usr/bin/python3 -c "import torch, transformers" 2> /dev/null; then
    "$MOE" export --ckpt "$W/run" --out "$W/hf" > /dev/null
    OMP_NUM_THREADS=$THREADS /usr/bin/python3 - "$W/hf" "$PROMPT" "$THREADS" "$REPS" <<'EOF'
import statistics, sys, time, torch, transformers
path, prompt, threads, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
t0 = time.perf_counter()
model = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
load = time.perf_counter() - t0
ids = torch.tensor([list(prompt.encode())])
gen, pre = [], []
with torch.no_grad():
    for _ in range(reps):
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=240, min_new_tokens=240, do_sample=False, use_cache=True,
                             pad_token_id=0)
        gen.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        model(ids, use_cache=True)
        pre.append(time.perf_counter() - t0)
g, p = statistics.median(gen), statistics.median(pre)
print("transformers %s (torch %s) generate, 240 tokens: %.3f s (load %.2f s): prefill %.1f ms, decode %.1f tokens/s"
      % (transformers.__version__, torch.__version__, g, load, 1e3 * p, 239 / (g - p)))
EOF
else
    echo "transformers: not installed for /usr/bin/python3 (scripts/deps.sh --hf)"
fi
