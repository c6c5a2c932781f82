#!/usr/bin/env bash
# test_interop.sh — moving models in and out without transformers (tests/test_hf.sh checks against
# transformers itself):
#   - export -> import gives back the same model: bit-identical logits in f32, close in bf16;
#   - sparse upcycling of a dense model (moe import and moe train --init-from) computes the dense
#     model's function at the start (norm_topk: the K gate weights sum to 1 over equal experts);
#   - Qwen2-MoE and OLMoE exports import back bit for bit; OLMoE written by a newer transformers
#     (a committed fixture) imports with its logits, trains, and goes out and back;
#   - Hugging Face directories that are broken or hold what moe cannot represent get a message
#     naming the file and field, never a crash.
# usage: test_interop.sh path/to/moe
set -u
MOE=${1:?usage: test_interop.sh path/to/moe}
SRC=$(cd "$(dirname "$0")/.." && pwd)
source "$SRC/tests/lib.sh"

cat "$SRC"/src/*/*.c > "$W/corpus.txt"
TINY=(--set seq_len=32 --set n_embd=32 --set n_layer=2 --set n_head=4 --set expert_hidden=48 --set ffn_hidden=48
      --set n_experts=4 --set batch_size=4 --set threads=2 --quiet)
head -c 32 "$W/corpus.txt" | od -An -tu1 > "$W/tok.txt"
logits() { "$MOE" logits --ckpt "$1" --tokens "$W/tok.txt" --out "$2" || fail "moe logits $1"; }

# --- export -> import round trip
"$MOE" train --data "$W/corpus.txt" --out "$W/run" --steps 10 "${TINY[@]}" || fail "train"
logits "$W/run" "$W/run.bin"
for dtype in f32 bf16; do
    "$MOE" export --ckpt "$W/run" --out "$W/hf_$dtype" --dtype $dtype > /dev/null || fail "export $dtype"
    "$MOE" import --from "$W/hf_$dtype" --out "$W/back_$dtype" > /dev/null || fail "import $dtype"
    logits "$W/back_$dtype" "$W/back_$dtype.bin"
done
checks=$((checks + 1))
cmp -s "$W/run.bin" "$W/back_f32.bin" || fail "f32 export -> import changed the logits (max diff $(maxdiff "$W/run.bin" "$W/back_f32.bin"))"
checks=$((checks + 1))
d=$(maxdiff "$W/run.bin" "$W/back_bf16.bin")
echo "export -> import: f32 bit-identical logits; bf16 max |logit difference| $d"
within "$d" 5e-2 || fail "bf16 round trip differs by $d"
within "$d" 0 && fail "bf16 round trip is exact: the bf16 path was not exercised"
# a sharded Hugging Face directory: the same tensors split over two files and an index
mkdir -p "$W/sharded"
cp "$W/hf_f32/config.json" "$W/sharded/"
python3 - "$W/hf_f32/model.safetensors" "$W/sharded" <<'EOF'
import json, struct, sys
buf = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", buf[:8])[0]
head = json.loads(buf[8:8 + n]); data = buf[8 + n:]
head.pop("__metadata__", None)
names = sorted(head)
weight_map = {}
for part, chunk in enumerate([names[::2], names[1::2]]):
    h, blobs, off = {}, [], 0
    for k in chunk:
        b, e = head[k]["data_offsets"]
        h[k] = {"dtype": head[k]["dtype"], "shape": head[k]["shape"], "data_offsets": [off, off + e - b]}
        blobs.append(data[b:e]); off += e - b
        weight_map[k] = f"model-{part + 1:05d}-of-00002.safetensors"
    hj = json.dumps(h).encode()
    open(f"{sys.argv[2]}/model-{part + 1:05d}-of-00002.safetensors", "wb").write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))
json.dump({"metadata": {}, "weight_map": weight_map}, open(f"{sys.argv[2]}/model.safetensors.index.json", "w"))
EOF
"$MOE" import --from "$W/sharded" --out "$W/back_sh" > /dev/null || fail "import sharded"
logits "$W/back_sh" "$W/back_sh.bin"
checks=$((checks + 1))
cmp -s "$W/run.bin" "$W/back_sh.bin" || fail "sharded import changed the logits"

# --- the open families both ways: each export imports back to the same weights, bit for bit
# (Qwen2-MoE with its own q/k/v biases, gated shared expert of its own width, dense layers and
# grouped-query attention; OLMoE with QK-norm), and the family is the one asked for
for spec in "qwen2_moe:--set qkv_bias=1 --set n_shared=1 --set shared_gate=1 --set shared_hidden=40 --set n_kv_head=2 --set moe_layers=1-2 --set n_layer=4 --set norm_topk=0" \
            "olmoe:--set qk_norm=1 --set n_kv_head=2 --set norm_topk=0" "olmoe:--set qk_norm=1 --set tie_embeddings=1"; do
    IFS=: read -r fam sets <<< "$spec"
    checks=$((checks + 2))
    # shellcheck disable=SC2086
    "$MOE" train --data "$W/corpus.txt" --out "$W/fam" --steps 5 "${TINY[@]}" $sets || { fail "train $sets"; continue; }
    "$MOE" export --ckpt "$W/fam" --out "$W/fam_hf" > "$W/fam.out" || { fail "export $sets"; continue; }
    grep -q "$(sed 's/qwen2_moe/Qwen2MoeForCausalLM/; s/olmoe/OlmoeForCausalLM/' <<< "$fam")" "$W/fam.out" \
        || fail "$sets: exported as $(cat "$W/fam.out"), not $fam"
    "$MOE" import --from "$W/fam_hf" --out "$W/fam_back" > /dev/null || { fail "import $fam export"; continue; }
    same_tensors "$W/fam/model.safetensors" "$W/fam_back/model.safetensors" || fail "$sets: export -> import changed the weights"
    rm -rf "$W/fam" "$W/fam_hf" "$W/fam_back"
done
# OLMoE, written by transformers 4.45.2 (tests/hf/olmoe/README.md; CI's transformers has no
# OLMoE): imported, its logits are transformers' within 1e-5; through the KV cache too; it trains
# 20 steps and goes out and back in bit for bit
OLM="$SRC/tests/hf/olmoe"
checks=$((checks + 4))
"$MOE" import --from "$OLM" --out "$W/olm" > /dev/null || fail "import the OLMoE fixture"
"$MOE" logits --ckpt "$W/olm" --tokens "$OLM/tokens.txt" --out "$W/olm.bin" || fail "logits of the OLMoE import"
d=$(maxdiff "$OLM/logits.bin" "$W/olm.bin")
echo "OLMoE (transformers 4.45.2 fixture): max |logit difference| against transformers = $d"
within "$d" 1e-5 || fail "OLMoE import: logits differ from transformers' by $d"
"$MOE" logits --ckpt "$W/olm" --tokens "$OLM/tokens.txt" --out "$W/olm.kv" --kv-cache || fail "OLMoE logits --kv-cache"
d=$(maxdiff "$W/olm.bin" "$W/olm.kv")
within "$d" 2e-5 || fail "OLMoE: the KV cache differs from the forward by $d"
"$MOE" train --data "$W/corpus.txt" --out "$W/olm_t" --steps 20 --init-from "$OLM" --set batch_size=2 --set seq_len=32 \
    --quiet || fail "train --init-from the OLMoE fixture"
"$MOE" export --ckpt "$W/olm_t" --out "$W/olm_hf" > /dev/null || fail "export the trained OLMoE"
"$MOE" import --from "$W/olm_hf" --out "$W/olm_back" > /dev/null || fail "import the trained OLMoE's export"
same_tensors "$W/olm_t/model.safetensors" "$W/olm_back/model.safetensors" || fail "trained OLMoE: export -> import changed the weights"
checks=$((checks + 1))
"$MOE" logits --ckpt "$W/olm_t" --tokens "$OLM/tokens.txt" --out "$W/olm_t.bin" || fail "logits of the trained OLMoE"
within "$(maxdiff "$OLM/logits.bin" "$W/olm_t.bin")" 1e-3 && fail "20 steps of training left the OLMoE logits as they were"

# --- sparse upcycling: a dense model's FFN copied into every expert
"$MOE" train --data "$W/corpus.txt" --out "$W/dense" --steps 10 "${TINY[@]}" --set moe_layers=none || fail "train dense"
logits "$W/dense" "$W/dense.bin"
"$MOE" import --from "$W/dense" --out "$W/up" --set moe_layers=all --set n_experts=4 --set expert_hidden=48 > "$W/up.out" \
    || fail "upcycle import"
grep -q "2 layers upcycled" "$W/up.out" || fail "upcycle report: $(cat "$W/up.out")"
logits "$W/up" "$W/up.bin"
checks=$((checks + 1))
d=$(maxdiff "$W/dense.bin" "$W/up.bin")
echo "upcycled (4 experts, top-2) vs dense: max |logit difference| $d"
within "$d" 1e-5 || fail "the upcycled model differs from the dense one by $d"
# ... and the same as the start of a training run: the first evaluation equals the dense model's
"$MOE" eval --ckpt "$W/dense" --data "$W/corpus.txt" --max-batches 2 > "$W/eval.dense" || fail "eval dense"
"$MOE" train --data "$W/corpus.txt" --out "$W/upt" --steps 1 "${TINY[@]}" --init-from "$W/dense" --set moe_layers=all \
    --set lr=0 --set warmup_steps=0 --set eval_batches=2 --set batch_size=8 || fail "train --init-from"
checks=$((checks + 1))
"$MOE" eval --ckpt "$W/upt" --data "$W/corpus.txt" --max-batches 2 > "$W/eval.up" || fail "eval upcycled run"
[ "$(head -1 "$W/eval.dense")" = "$(head -1 "$W/eval.up")" ] \
    || fail "train --init-from (lr 0) evaluates unlike its dense source: $(head -1 "$W/eval.dense") vs $(head -1 "$W/eval.up")"
# mutation check: a fresh (random) model is far from the dense one, so the bound above means something
"$MOE" train --data "$W/corpus.txt" --out "$W/fresh" --steps 1 "${TINY[@]}" --set lr=0 --set warmup_steps=0 || fail "fresh"
logits "$W/fresh" "$W/fresh.bin"
checks=$((checks + 1))
within "$(maxdiff "$W/dense.bin" "$W/fresh.bin")" 1e-3 && fail "a fresh model is as close to the dense one as the upcycled one"

# --- what cannot be imported, and broken directories
expect_error "upcycle width" "set expert_hidden to the source's ffn_hidden (48)" -- \
    "$MOE" import --from "$W/dense" --out "$W/x" --set moe_layers=all --set expert_hidden=64
expect_error "downcycle" "mlp.gate_proj.weight' of this config has no counterpart" -- "$MOE" import --from "$W/run" --out "$W/x" --set moe_layers=none
expect_error "more layers" "model.layers.2.input_layernorm.weight' of this config has no counterpart" -- \
    "$MOE" import --from "$W/run" --out "$W/x" --set n_layer=3
expect_error "resume and init" "not both" -- "$MOE" train --data "$W/corpus.txt" --out "$W/run" --resume --init-from "$W/dense"
mkdir -p "$W/h1" && cp "$W/hf_f32/config.json" "$W/h1/"
expect_error "no weights" "has neither model.safetensors nor model.safetensors.index.json" -- "$MOE" import --from "$W/h1" --out "$W/x"
edit_config() { # DIR PYTHON-EXPRESSION-ON-c
    mkdir -p "$1" && cp "$W/hf_f32/model.safetensors" "$1/"
    python3 -c "import json,sys; c = json.load(open(sys.argv[1])); $2; json.dump(c, open(sys.argv[2], 'w'))" \
        "$W/hf_f32/config.json" "$1/config.json"
}
edit_config "$W/h2" "c['model_type'] = 'gpt2'"
expect_error "model type" "model_type 'gpt2': it is not one moe reads" -- "$MOE" import --from "$W/h2" --out "$W/x"
edit_config "$W/h15" "c['model_type'] = 'deepseek_v3'"
expect_error "DeepSeek-V3" "model_type 'deepseek_v3': its multi-head latent attention (MLA" -- "$MOE" import --from "$W/h15" --out "$W/x"
edit_config "$W/h16" "c['model_type'] = 'qwen3_moe'"
expect_error "Qwen3-MoE" "model_type 'qwen3_moe': its QK-norm is per head" -- "$MOE" import --from "$W/h16" --out "$W/x"
edit_config "$W/h3" "c['attention_bias'] = True"
expect_error "biases" "attention_bias is true" -- "$MOE" import --from "$W/h3" --out "$W/x"
edit_config "$W/h4" "c['rope_scaling'] = {'type': 'linear', 'factor': 2.0}"
expect_error "rope scaling" "rope_scaling is set" -- "$MOE" import --from "$W/h4" --out "$W/x"
edit_config "$W/h5" "c['num_key_value_heads'] = 3"
expect_error "kv heads" "num_key_value_heads 3 does not divide num_attention_heads 4" -- "$MOE" import --from "$W/h5" --out "$W/x"
edit_config "$W/h6" "c['hidden_size'] = 64"
expect_error "shape vs config" "model.embed_tokens.weight" -- "$MOE" import --from "$W/h6" --out "$W/x"
edit_config "$W/h7" "c['num_local_experts'] = 8"
expect_error "missing expert" "expert 4 of 'model.layers.0.block_sparse_moe.experts.w1.weight' is missing" -- \
    "$MOE" import --from "$W/h7" --out "$W/x"
edit_config "$W/h8" "del c['hidden_size']"
expect_error "missing field" "field 'hidden_size' is missing" -- "$MOE" import --from "$W/h8" --out "$W/x"
edit_config "$W/h12" "c['model_type'] = 'olmoe'; c['num_experts'] = 4; c['clip_qkv'] = 8.0"
expect_error "OLMoE clip_qkv" "clip_qkv is set" -- "$MOE" import --from "$W/h12" --out "$W/x"
edit_config "$W/h13" "c['model_type'] = 'qwen2_moe'; c['num_experts'] = 4; c['mlp_only_layers'] = [0, 5]"
expect_error "mlp_only_layers" "mlp_only_layers entry 5 is not a layer in [0, 2)" -- "$MOE" import --from "$W/h13" --out "$W/x"
edit_config "$W/h14" "c['model_type'] = 'olmoe'; c['num_experts'] = 4"
expect_error "OLMoE without q_norm" "q_norm.weight' of this config has no counterpart" -- "$MOE" import --from "$W/h14" --out "$W/x"
edit_config "$W/h9" "c['hidden_act'] = 'gelu'"
expect_error "activation" "hidden_act 'gelu' is not silu" -- "$MOE" import --from "$W/h9" --out "$W/x"
mkdir -p "$W/h10" && cp "$W/hf_f32/config.json" "$W/h10/"
echo '{"weight_map": {"model.norm.weight": "../etc/passwd"}}' > "$W/h10/model.safetensors.index.json"
expect_error "index escapes" "is not a file name in the directory" -- "$MOE" import --from "$W/h10" --out "$W/x"
echo '{"weight_map": {"model.norm.weight": "gone.safetensors"}}' > "$W/h10/model.safetensors.index.json"
expect_error "index names a missing shard" "gone.safetensors" -- "$MOE" import --from "$W/h10" --out "$W/x"
mkdir -p "$W/h11" && cp "$W/hf_f32/config.json" "$W/h11/" && head -c 1000 "$W/hf_f32/model.safetensors" > "$W/h11/model.safetensors"
expect_error "truncated weights" "truncated" -- "$MOE" import --from "$W/h11" --out "$W/x"
checks=$((checks + 1))
[ -e "$W/x" ] && fail "a failed import left '$W/x' behind"

finish test_interop
