#!/usr/bin/env bash
# bench_memory.sh — what reading a model costs: peak resident memory of each command that reads
# one, against its weights' bytes, with the weights and activations the model was planned with
# (eval --json, sample --stats) and the KV cache.
#   1. the standard model (bench/standard.json, a few training steps; 185 MB of fp32 weights);
#   2. with BIG=1 and /usr/bin/python3 with torch and transformers: a ~1B-parameter Mixtral
#      (hidden 1024, 12 layers, 8 experts of 2816, vocab 32000; 3.8 GB in fp32) written by
#      transformers, imported, sampled, evaluated and exported again.
# BASE=an older moe runs the same commands as the reference. Peak RSS: /usr/bin/time's maximum
# resident set. usage: bench/bench_memory.sh   (MOE=build/moe, BASE=, BIG=1, DIR=scratch for BIG)
set -euo pipefail
cd "$(dirname "$0")/.."
MOE=${MOE:-build/moe}
BASE=${BASE:-}
W=$(mktemp -d)
DIR=${DIR:-$W}
trap 'rm -rf "$W" "$DIR/big_hf" "$DIR/big_moe" "$DIR/big_back"' EXIT
TS=../shared/data/tinyshakespeare.txt
head -c 200000 "$TS" > "$W/val.txt"
rss_mb() { # COMMAND...: peak RSS in MB ("fail" when it fails)
    if /usr/bin/time -f "%M" -o "$W/t" "$@" > "$W/out" 2> "$W/err"; then echo $(( $(tail -1 "$W/t") / 1024 )); else echo fail; fi
}
row() { # LABEL WEIGHTS_BYTES COMMAND...: a table row, with BASE's figure when given
    local label=$1 wb=$2
    shift 2
    local mb base="" ratio
    mb=$(rss_mb "$MOE" "$@")
    ratio=$([ "$mb" = fail ] && echo - || python3 -c "print('%.2f' % ($mb * 1048576 / $wb))")
    [ -n "$BASE" ] && base=" | $(rss_mb "$BASE" "$@")"
    printf "| %-44s | %8.0f | %7s | %5s%s |\n" "$label" "$(python3 -c "print($wb / 1048576)")" "$mb" "$ratio" "$base"
}
header() {
    echo
    echo "$1"
    printf "| %-44s | %8s | %7s | %5s%s |\n" command "weights MiB" "peak MiB" ratio "$([ -n "$BASE" ] && echo " | BASE peak MiB")"
}
echo "moe $("$MOE" --version | tail -1); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

# ---- 1. the standard model
"$MOE" train --data "$TS" --out "$W/std" --config bench/standard.json --steps 3 --quiet --set eval_every=0 \
    --set tensorboard=false
WB=$(python3 -c "import os; print(os.path.getsize('$W/std/model.safetensors'))")
"$MOE" eval --ckpt "$W/std" --data "$W/val.txt" --batch-size 1 --max-batches 4 --json > "$W/e1"
"$MOE" sample --ckpt "$W/std" --prompt "ROMEO:" --tokens 32 --stats > /dev/null 2> "$W/s1"
echo "standard model: $(python3 -c "import json; d = json.load(open('$W/e1')); print('eval --batch-size 1: weights %.1f MiB, activations %.1f MiB' % (d['weights_bytes'] / 2**20, d['activation_bytes'] / 2**20))"); sample: $(grep -h "KV cache\|activations" "$W/s1" | sed 's/moe: //' | tr '\n' ';')"
header "1. standard model (bench/standard.json)"
row "sample --tokens 32" "$WB" sample --ckpt "$W/std" --prompt "ROMEO:" --tokens 32
row "sample --tokens 32 --dtype bf16" "$WB" sample --ckpt "$W/std" --prompt "ROMEO:" --tokens 32 --dtype bf16
row "eval --batch-size 1 --max-batches 4" "$WB" eval --ckpt "$W/std" --data "$W/val.txt" --batch-size 1 --max-batches 4
row "eval --max-batches 4 (batch 8)" "$WB" eval --ckpt "$W/std" --data "$W/val.txt" --max-batches 4
row "eval --batch-size 1 --dtype bf16" "$WB" eval --ckpt "$W/std" --data "$W/val.txt" --batch-size 1 --max-batches 4 --dtype bf16
row "export" "$WB" export --ckpt "$W/std" --out "$W/std_hf"
row "import (of that export)" "$WB" import --from "$W/std_hf" --out "$W/std_back"

# ---- 2. a ~1B Mixtral written by transformers
[ -n "${BIG:-}" ] || exit 0
BASE= # the older binary holds several copies of 3.8 GB: the standard model shows it
/usr/bin/python3 -c "import torch, transformers" 2> /dev/null || { echo "BIG: no torch/transformers for /usr/bin/python3"; exit 0; }
/usr/bin/python3 - "$DIR/big_hf" <<'EOF'
import sys, torch, transformers
torch.manual_seed(0)
cfg = transformers.MixtralConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                                 num_attention_heads=16, num_key_value_heads=4, num_local_experts=8,
                                 num_experts_per_tok=2, max_position_embeddings=4096, rope_theta=1e6,
                                 tie_word_embeddings=False)
with torch.no_grad():
    m = transformers.MixtralForCausalLM(cfg)
m.save_pretrained(sys.argv[1], safe_serialization=True)
print("transformers %s wrote a Mixtral of %.3fB parameters" % (transformers.__version__, sum(p.numel() for p in m.parameters()) / 1e9))
EOF
HB=$(du -cb "$DIR"/big_hf/*.safetensors | tail -1 | cut -f1)
header "2. ~1B Mixtral written by transformers ($(python3 -c "print('%.2f GB' % ($HB / 1e9))") of fp32 safetensors; GQA 16/4 kept as it is)"
row "import (--set seq_len=1024)" "$HB" import --from "$DIR/big_hf" --out "$DIR/big_moe" --set seq_len=1024
"$MOE" import --from "$DIR/big_hf" --out "$DIR/big_moe" --set seq_len=1024 > /dev/null
MB=$(python3 -c "import os; print(os.path.getsize('$DIR/big_moe/model.safetensors'))")
"$MOE" sample --ckpt "$DIR/big_moe" --prompt "hello" --tokens 8 --stats > /dev/null 2> "$W/s2"
"$MOE" eval --ckpt "$DIR/big_moe" --data "$W/val.txt" --batch-size 1 --max-batches 1 --json > "$W/e2" 2> /dev/null || true
echo "1B model: $(grep -h "KV cache\|activations" "$W/s2" | sed 's/moe: //' | tr '\n' ';') eval: $(python3 -c "import json; d = json.load(open('$W/e2')); print('activations %.1f MiB' % (d['activation_bytes'] / 2**20))" 2> /dev/null || echo '?')"
row "sample --tokens 8" "$MB" sample --ckpt "$DIR/big_moe" --prompt "hello" --tokens 8
row "sample --tokens 8 --dtype bf16" "$MB" sample --ckpt "$DIR/big_moe" --prompt "hello" --tokens 8 --dtype bf16
row "eval --batch-size 1 --max-batches 1" "$MB" eval --ckpt "$DIR/big_moe" --data "$W/val.txt" --batch-size 1 --max-batches 1
row "export" "$MB" export --ckpt "$DIR/big_moe" --out "$DIR/big_back"
