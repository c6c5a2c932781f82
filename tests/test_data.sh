#!/usr/bin/env bash
# test_data.sh — training data through `moe train` and `moe eval` (tests/test_data.c checks the
# reader itself): the same tokens as a comma list, a directory and a glob pattern give the same
# bits, and so do uint16 and uint32 shards of them; a directory of llm.c's *_train*/*_val*
# shards validates on its val shards; a run resumed on shard data ends where a straight one does;
# --check-data reads it all first; eval reads a directory.
set -u
MOE=${1:?usage: test_data.sh path/to/moe}
SRC=$(cd "$(dirname "$0")/.." && pwd)
source "$SRC/tests/lib.sh"
SMALL=(--set seq_len=16 --set n_embd=16 --set n_layer=2 --set n_head=2 --set n_experts=4 --set top_k=2
       --set expert_hidden=16 --set ffn_hidden=16 --set batch_size=4 --set vocab_size=300 --set threads=1
       --set eval_every=3 --set eval_batches=2 --set ckpt_every=0 --set tensorboard=false)

# three shards of the same random tokens, in uint16 and in uint32, and llm.c's naming
python3 - "$W" <<'EOF'
import os, random, struct, sys
w = sys.argv[1]
random.seed(1)
def shard(path, toks, wide):
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *([20240801 if wide else 20240520, 7 if wide else 1, len(toks)] + [0] * 253)))
        f.write(struct.pack("<%d%s" % (len(toks), "I" if wide else "H"), *toks))
parts = [[random.randrange(300) for _ in range(n)] for n in (2500, 1800, 3100)]
for d in ("u16", "u32", "llmc"):
    os.makedirs(os.path.join(w, d))
for i, p in enumerate(parts):
    shard("%s/u16/s_%06d.bin" % (w, i), p, False)
    shard("%s/u32/s_%06d.bin" % (w, i), p, True)
shard(w + "/llmc/d_val_000000.bin", parts[2], False)
shard(w + "/llmc/d_train_000001.bin", parts[0], False)
shard(w + "/llmc/d_train_000002.bin", parts[1], False)
EOF
U16="$W/u16/s_000000.bin,$W/u16/s_000001.bin,$W/u16/s_000002.bin"

same() { # NAME DIR_A DIR_B: the same losses, weights (every tensor's bytes) and AdamW state
    checks=$((checks + 1))
    { same_tensors "$2/model.safetensors" "$3/model.safetensors" && cmp -s "$2/state.bin" "$3/state.bin" &&
        python3 - "$2" "$3" <<'EOF'; } || fail "$1: $(basename "$2") and $(basename "$3") differ"
import json, sys
def losses(p):
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in map(json.loads, open(p + "/metrics.jsonl")) if "loss" in r]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
sys.exit(a != b or not a)
EOF
}

"$MOE" train --data "$U16" --out "$W/list" --steps 6 "${SMALL[@]}" --quiet || fail "train on a list of shards"
"$MOE" train --data "$W/u16" --out "$W/dir" --steps 6 "${SMALL[@]}" --quiet || fail "train on a directory"
"$MOE" train --data "$W/u16/s_*.bin" --out "$W/glob" --steps 6 "${SMALL[@]}" --quiet || fail "train on a pattern"
"$MOE" train --data "$W/u32" --out "$W/wide" --steps 6 "${SMALL[@]}" --quiet || fail "train on uint32 shards"
same "a directory" "$W/list" "$W/dir"
same "a pattern" "$W/list" "$W/glob"
same "uint32 shards" "$W/list" "$W/wide"
checks=$((checks + 1))
grep -q "\"data\":\"the first 6660 tokens of $W/u16 (3 files)\"" "$W/dir/metrics.jsonl" || fail "the start record's data: $(head -1 "$W/dir/metrics.jsonl")"

# resumed: 3 steps, then 3 more, on the uint32 directory
"$MOE" train --data "$W/u32" --out "$W/res" --steps 6 --stop-after 3 "${SMALL[@]}" --quiet || fail "the first half"
"$MOE" train --data "$W/u32" --out "$W/res" --steps 6 --resume --quiet || fail "the resume"
same "resumed" "$W/wide" "$W/res"

# llm.c's split of a directory: train on *_train*, validate on *_val*, the same as naming them
"$MOE" train --data "$W/llmc" --out "$W/llmc_run" --steps 6 "${SMALL[@]}" > "$W/out" 2>&1 \
    || fail "train on llm.c's directory: $(cat "$W/out")"
checks=$((checks + 1))
grep -q "training on its 2 \*_train\*.bin shards, validating on its 1 \*_val\*.bin shards" "$W/out" \
    || fail "the split was not said: $(cat "$W/out")"
"$MOE" train --data "$W/llmc/d_train_000001.bin,$W/llmc/d_train_000002.bin" --val-data "$W/llmc/d_val_000000.bin" \
    --out "$W/llmc_named" --steps 6 "${SMALL[@]}" --quiet || fail "train on the named shards"
same "llm.c's split" "$W/llmc_run" "$W/llmc_named"

# --check-data: everything read first
"$MOE" train --data "$W/u16" --out "$W/checked" --steps 1 --check-data "${SMALL[@]}" > "$W/out" 2>&1 \
    || fail "--check-data: $(cat "$W/out")"
checks=$((checks + 1))
grep -q "training data checked: 7400 tokens in 3 file(s), all within the vocabulary" "$W/out" \
    || fail "--check-data said: $(cat "$W/out")"

# eval of a directory: the comma list's result
"$MOE" eval --ckpt "$W/list" --data "$W/u16" --json > "$W/e_dir" || fail "eval of a directory"
"$MOE" eval --ckpt "$W/list" --data "$U16" --json > "$W/e_list" || fail "eval of a list"
checks=$((checks + 1))
[ "$(grep -o '"loss":[^,]*' "$W/e_dir")" = "$(grep -o '"loss":[^,]*' "$W/e_list")" ] \
    || fail "eval: a directory and its list differ: $(cat "$W/e_dir") / $(cat "$W/e_list")"
finish test_data_cli
