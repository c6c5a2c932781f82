#!/usr/bin/env bash
# run.sh — builds the libFuzzer targets (clang, ASan + UBSan) and runs each for SECONDS, starting
# from seeds made here (a real checkpoint, config, token shard, HF config.json) and from the
# crash inputs kept in fuzz/regress/TARGET/ (each must pass first: they are regression tests).
# New crashes are written to fuzz/regress/TARGET/. Prints executions and coverage per target.
# usage: fuzz/run.sh [SECONDS=60] [TARGET...]   (needs clang: apt-get install clang)
set -u
cd "$(dirname "$0")/.."
SECS=${1:-60}
shift || true
TARGETS=${*:-config safetensors tokens hf_config state cli tokenizer}
command -v clang > /dev/null || { echo "fuzz: clang is not installed (apt-get install clang)"; exit 2; }
CC=clang cmake -S . -B build-fuzz -DMOE_FUZZ=ON -DMOE_MPI=OFF -DMOE_BUILD_TESTS=OFF > /dev/null || exit 1
cmake --build build-fuzz -j"$(nproc)" > /dev/null || exit 1
[ -x build/moe ] || { cmake -S . -B build > /dev/null && cmake --build build -j"$(nproc)" > /dev/null; } || exit 1
S=$(mktemp -d)
trap 'rm -rf "$S"' EXIT
# seeds
mkdir -p "$S"/{config,safetensors,tokens,hf_config,state,cli,tokenizer}
cat src/model/*.c > "$S/text"
./build/moe train --data "$S/text" --out "$S/run" --steps 1 --quiet --set seq_len=8 --set n_embd=8 --set n_layer=1 \
    --set n_head=2 --set n_experts=2 --set top_k=1 --set expert_hidden=8 --set batch_size=1 \
    --set eval_batches=1 --set tensorboard=false 2>/dev/null || head -c 2000 "$S/text" | tr -c 'a-z' 'a' > "$S/text"
cp "$S/run/model.safetensors" "$S/safetensors/seed" 2>/dev/null
python3 -c "import json,struct,sys; b=open(sys.argv[1],'rb').read(); print(json.loads(b[8:8+struct.unpack('<Q',b[:8])[0]])['__metadata__']['config'])" \
    "$S/safetensors/seed" > "$S/config/seed" 2>/dev/null || echo '{"n_layer": 2}' > "$S/config/seed"
python3 -c "import struct,sys; h=[20240520,1,6]+[0]*253; open(sys.argv[1],'wb').write(struct.pack('<256i',*h)+struct.pack('<6H',1,2,3,50303,4,5))" "$S/tokens/seed"
python3 -c "import struct,sys; h=[20240801,7,5]+[0]*253; open(sys.argv[1],'wb').write(struct.pack('<256i',*h)+struct.pack('<5I',1,70000,3,50303,4))" "$S/tokens/seed32"
./build/moe export --ckpt "$S/run" --out "$S/hf" > /dev/null 2>&1 && cp "$S/hf/config.json" "$S/hf_config/seed"
cp tests/hf/olmoe/config.json "$S/hf_config/olmoe" # and a Qwen2-MoE with dense layers
echo '{"model_type": "qwen2_moe", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 20, "num_hidden_layers": 4,
  "num_attention_heads": 2, "num_key_value_heads": 1, "num_experts": 4, "num_experts_per_tok": 2,
  "moe_intermediate_size": 8, "shared_expert_intermediate_size": 12, "decoder_sparse_step": 2,
  "mlp_only_layers": [3], "norm_topk_prob": false, "use_sliding_window": false}' > "$S/hf_config/qwen2_moe"
{ printf '\003'; cat "$S/run/state.bin"; } > "$S/state/seed" 2>/dev/null # bit 0: fix the checksum, bit 1: P from the file
# cli: every numeric flag and every config key (with the seed's values), and a token list; the
# dictionary names them so that mutations stay on real flags and keys
python3 - "$S/config/seed" "$S/cli/seed" "$S/cli.dict" <<'PY' 2>/dev/null
import glob, json, re, sys
tables = "".join(open(f).read() for f in sorted(glob.glob("tools/cmd_*.c")))
flags = list(dict.fromkeys(re.findall(r'\{"(--[a-z-]+)", CLI_(?:INT|REAL),', tables)))
keys = re.findall(r'X\(([a-z_0-9]+), K_', open("src/model/config.c").read())
cfg = json.loads(open(sys.argv[1]).read())
val = lambda v: str(v).lower() if isinstance(v, bool) else str(v)
lines = [f + " 1" for f in flags] + ["--set %s=%s" % (k, val(cfg[k])) for k in keys if k in cfg] + ["--logits-tokens 1 2 3 255"]
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
words = flags + ["--set", "--logits-tokens"]
open(sys.argv[3], "w").write("".join('"%s "\n' % w for w in words) + "".join('"%s="\n' % k for k in keys)
                             + "".join('"%s"\n' % v for v in ["true", "false", "all", "-1", "1e309", "nan", "2147483648", ","]))
PY
# tokenizer: text for each built-in tokenizer (mode byte 1..4), and a tokenizer.json to load (0)
for m in 1 2 3 4; do { printf "\\$(printf %03o $m)"; head -c 3000 "$S/text"; printf ' caf\xc3\xa9 \xf0\x9f\x98\x80 <|endoftext|> <s>  x'; } > "$S/tokenizer/seed$m"; done
for f in tests/tok/*/tokenizer.json; do [ -f "$f" ] && { printf '\000'; cat "$f"; } > "$S/tokenizer/seed0-$(basename "$(dirname "$f")")"; done
status=0
for t in $TARGETS; do
    bin=build-fuzz/fuzz_$t
    mkdir -p "fuzz/regress/$t"
    if ls "fuzz/regress/$t"/* > /dev/null 2>&1 && ! $bin -runs=0 "fuzz/regress/$t"/* > "$S/$t.replay" 2>&1; then
        echo "fuzz_$t: a kept crash input fails again:"; tail -20 "$S/$t.replay"; status=1; continue
    fi
    mkdir -p "$S/corpus_$t"
    dict=()
    [ -f "$S/$t.dict" ] && dict=(-dict="$S/$t.dict")
    $bin "$S/corpus_$t" "$S/$t" ${dict[@]+"${dict[@]}"} -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="fuzz/regress/$t/" -print_final_stats=1 > "$S/$t.log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$S/$t.log" | grep -o '[0-9]*$')
    cov=$(grep -o 'cov: [0-9]*' "$S/$t.log" | tail -n 1 | grep -o '[0-9]*')
    ft=$(grep -o 'ft: [0-9]*' "$S/$t.log" | tail -n 1 | grep -o '[0-9]*')
    corp=$(ls "$S/corpus_$t" | wc -l)
    if [ $rc -ne 0 ]; then
        echo "fuzz_$t: CRASH after ${execs:-?} executions; input kept in fuzz/regress/$t/:"
        grep -E "ERROR|SUMMARY|#[0-9]+ 0x" "$S/$t.log" | head -12
        status=1
    else
        echo "fuzz_$t: ${SECS} s, ${execs:-?} executions, ${cov:-?} coverage edges, ${ft:-?} features, $corp corpus inputs, no crash"
    fi
done
exit $status
