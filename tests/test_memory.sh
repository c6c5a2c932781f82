#!/usr/bin/env bash
# test_memory.sh — reading a model costs about its weights:
#   - an import whose config.json describes a ~0.9B-parameter Mixtral but whose
#     model.safetensors holds no tensors fails on the first missing one, from the headers, in
#     well under 300 MB of resident memory (and leaves no output);
#   - a model that does not fit is refused before it is allocated, with the bytes needed and
#     available and the options that would fit (--max-memory), for inference and training;
#   - --dtype bf16 on the CPU keeps bf16 weights: eval of a trained tinyshakespeare model within
#     0.01 nats of fp32; its logits equal fp32 arithmetic on weights rounded to bf16 (to 1e-4);
#     sample runs; training with it is refused by name;
#   - weights mapped from the file and read into memory (MOE_NO_MMAP=1) give the same logits.
# usage: test_memory.sh path/to/moe
set -u
MOE=${1:?usage: test_memory.sh path/to/moe}
SRC=$(cd "$(dirname "$0")/.." && pwd)
source "$SRC/tests/lib.sh"
DATA=$SRC/../shared/data/tinyshakespeare.txt
[ -f "$DATA" ] || { head -c 300000 "$SRC/README.md" > "$W/corpus.txt"; cat "$SRC"/src/*/*.c >> "$W/corpus.txt"; DATA=$W/corpus.txt; }
peak_kb() { # COMMAND...: runs it, leaving its peak resident memory (KB) in $W/peak; returns its status
    python3 - "$W/peak" "$@" <<'EOF'
import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=open(sys.argv[1] + ".err", "w"))
open(sys.argv[1], "w").write("%d\n" % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(rc)
EOF
}

# ---- a ~0.9B Mixtral config without tensors
mkdir -p "$W/big"
cat > "$W/big/config.json" <<'EOF'
{"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 32000, "hidden_size": 1024,
 "intermediate_size": 2816, "num_hidden_layers": 12, "num_attention_heads": 16, "num_key_value_heads": 4,
 "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
 "rope_theta": 1000000.0, "hidden_act": "silu", "tie_word_embeddings": false, "sliding_window": null}
EOF
printf '\x08\x00\x00\x00\x00\x00\x00\x00{}      ' > "$W/big/model.safetensors"
checks=$((checks + 3))
if peak_kb "$MOE" import --from "$W/big" --out "$W/big.moe"; then
    fail "an import without tensors succeeded"
else
    grep -q "has no counterpart in the source" "$W/peak.err" || fail "the missing tensor is not named: $(cat "$W/peak.err")"
fi
[ "$(cat "$W/peak")" -lt 307200 ] || fail "a failed import of a 0.9B config took $(cat "$W/peak") KB (above 300 MB)"
[ ! -e "$W/big.moe" ] || fail "a failed import left its output directory"

# ---- a trained model: refusal up front, bf16, mapped and read
"$MOE" train --data "$DATA" --out "$W/run" --steps 150 --quiet --set seq_len=64 --set n_embd=64 --set n_layer=2 \
    --set n_head=4 --set n_experts=4 --set top_k=2 --set expert_hidden=128 --set batch_size=8 --set eval_every=0 \
    --set lr=3e-3 --set tensorboard=false || { fail "train"; finish test_memory; exit 1; }
expect_error "inference that does not fit" "but 0.00 GiB (1000000 bytes) are available (--max-memory): --dtype bf16" \
    -- "$MOE" sample --ckpt "$W/run" --prompt hi --max-memory 1MB
expect_error "the report of what it needs" "of fp32 weights, " -- "$MOE" eval --ckpt "$W/run" --data "$DATA" --max-memory 1MB
expect_error "training that does not fit" "are available (--max-memory): recompute=1" \
    -- "$MOE" train --data "$DATA" --out "$W/t2" --steps 1 --max-memory 2MB
[ ! -e "$W/t2/model.safetensors" ] || fail "a refused training wrote a checkpoint"
expect_error "bad --max-memory" "--max-memory must be a size" -- "$MOE" sample --ckpt "$W/run" --prompt hi --max-memory lots
expect_error "bf16 training on the CPU" "training on the CPU computes in fp32" \
    -- "$MOE" train --data "$DATA" --out "$W/t3" --steps 1 --dtype bf16

# bf16 weights: the validation loss within 0.01 nats of fp32's, and sample and logits run
tail -c 100000 "$DATA" > "$W/val.txt"
"$MOE" eval --ckpt "$W/run" --data "$W/val.txt" --json > "$W/e32" || fail "eval fp32"
"$MOE" eval --ckpt "$W/run" --data "$W/val.txt" --json --dtype bf16 > "$W/e16" || fail "eval bf16"
checks=$((checks + 1))
python3 - "$W/e32" "$W/e16" <<'EOF' || fail "bf16 eval is not within 0.01 nats of fp32: $(cut -c1-40 "$W/e32") / $(cut -c1-40 "$W/e16")"
import json, sys
a, b = (json.load(open(p))["loss"] for p in sys.argv[1:])
print("val loss: fp32 %.5f, bf16 %.5f, difference %.5f nats" % (a, b, abs(a - b)))
sys.exit(not (abs(a - b) <= 0.01 and a < 4.0))
EOF
checks=$((checks + 1))
"$MOE" sample --ckpt "$W/run" --prompt "ROMEO:" --tokens 30 --dtype bf16 > "$W/s16" && [ "$(head -c 6 "$W/s16")" = "ROMEO:" ] \
    || fail "sample --dtype bf16: $(cat "$W/s16")"
printf '%s' "$(seq 60 | awk '{printf "%d ", ($1 * 41) % 256}')" > "$W/tok.txt"
"$MOE" logits --ckpt "$W/run" --tokens "$W/tok.txt" --out "$W/l32" || fail "logits"
"$MOE" logits --ckpt "$W/run" --tokens "$W/tok.txt" --out "$W/l16" --dtype bf16 || fail "logits --dtype bf16"
MOE_NO_MMAP=1 "$MOE" logits --ckpt "$W/run" --tokens "$W/tok.txt" --out "$W/lread" || fail "logits, read"
checks=$((checks + 3))
cmp -s "$W/l32" "$W/lread" || fail "mapped and read weights give different logits"
cmp -s "$W/l32" "$W/l16" && fail "bf16 logits are fp32's bit for bit: the weights were not rounded"
# bf16 weights, fp32 arithmetic: the logits of an fp32 checkpoint whose weights were rounded to
# bf16 (round to nearest even, here in Python), to fp32 rounding (a routing decision near a tie
# may flip between fp32 and bf16 weights, never between these two)
mkdir -p "$W/rounded"
python3 - "$W/run/model.safetensors" "$W/rounded/model.safetensors" <<'EOF'
import json, struct, sys
b = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
del h["__metadata__"]["data_fnv1a64"]  # the data changes: no checksum
data = b[8 + n:]
u = struct.unpack("<%dI" % (len(data) // 4), data)
r = [((x + 0x7fff + ((x >> 16) & 1)) & 0xffff0000) for x in u]
hdr = json.dumps(h).encode(); hdr += b" " * (-len(hdr) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(hdr)) + hdr + struct.pack("<%dI" % len(r), *r))
EOF
"$MOE" logits --ckpt "$W/rounded" --tokens "$W/tok.txt" --out "$W/lround" || fail "logits of the rounded checkpoint"
diff=$(maxdiff "$W/lround" "$W/l16")
within "$diff" 1e-4 || fail "bf16 weights give other logits than fp32 arithmetic on the rounded weights: $diff"
finish test_memory
