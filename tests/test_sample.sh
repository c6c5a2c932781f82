#!/usr/bin/env bash
# test_sample.sh — `moe sample` through the KV cache, end to end on a byte-level model: the
# streamed output (through a pipe, and on a terminal under script(1)) equals --no-stream's, past
# seq_len too, and through a SentencePiece tokenizer; --batch N prints N samples, the first being --batch 1's; --prompts FILE (grouping
# changes nothing; prompt 1 is --prompt's sample of it); SIGINT stops with what
# was printed kept (a prefix of the run that was not stopped) and exit 130; `moe logits
# --kv-cache` equals the full forward's logits; --stats sizes the cache by key/value heads.
# usage: test_sample.sh path/to/moe
set -u
MOE=${1:?usage: test_sample.sh path/to/moe}
SRC=$(cd "$(dirname "$0")/.." && pwd)
source "$SRC/tests/lib.sh"
head -c 200000 "$SRC/README.md" > "$W/corpus.txt"
"$MOE" train --data "$W/corpus.txt" --out "$W/run" --steps 30 --quiet --set seq_len=32 --set n_embd=32 --set n_layer=2 \
    --set n_head=2 --set n_experts=4 --set top_k=2 --set expert_hidden=32 --set n_shared=1 --set eval_every=0 \
    --set tensorboard=false || { fail "train"; finish test_sample; exit 1; }
S=(sample --ckpt "$W/run" --prompt "The model " --tokens 150 --temperature 0.9 --seed 3)

"$MOE" "${S[@]}" --no-stream > "$W/whole" || fail "sample --no-stream"
"$MOE" "${S[@]}" | cat > "$W/piped" || fail "sample through a pipe"
checks=$((checks + 2))
cmp -s "$W/whole" "$W/piped" || fail "streamed through a pipe differs from --no-stream"
[ "$(head -c 10 "$W/whole")" = "The model " ] && [ "$(wc -c < "$W/whole")" -ge 161 ] \
    || fail "the sample is not the prompt and 150 tokens: $(od -c "$W/whole" | head -3)"
if script --version > /dev/null 2>&1; then
    checks=$((checks + 1))
    script -qec "$(printf '%q ' "$MOE" "${S[@]}")" /dev/null | tr -d '\r' > "$W/tty"
    cmp -s "$W/whole" "$W/tty" || fail "streamed on a terminal differs from --no-stream: $(od -c "$W/tty" | head -3)"
fi

# --batch: N samples, the first is --batch 1's
"$MOE" "${S[@]}" --batch 3 > "$W/batch" || fail "sample --batch 3"
checks=$((checks + 2))
[ "$(grep -c '^--- sample [123] of 3$' "$W/batch")" = 3 ] || fail "--batch 3 headers: $(cat "$W/batch")"
python3 - "$W/batch" "$W/whole" <<'EOF' || fail "sample 1 of --batch 3 differs from --batch 1"
import sys
b = open(sys.argv[1], "rb").read().split(b"--- sample ")
sys.exit(b[1].split(b"\n", 1)[1] != open(sys.argv[2], "rb").read())
EOF

# --prompts: one prompt a line, in groups of --batch; the grouping changes nothing, and prompt 1
# is --prompt's sample of it
printf 'The model \n\nROMEO: \nA cache ' > "$W/prompts.txt"
"$MOE" sample --ckpt "$W/run" --prompts "$W/prompts.txt" --tokens 60 --temperature 0.9 --seed 3 > "$W/p8" || fail "--prompts"
"$MOE" sample --ckpt "$W/run" --prompts "$W/prompts.txt" --tokens 60 --temperature 0.9 --seed 3 --batch 2 > "$W/p2" \
    || fail "--prompts --batch 2"
"$MOE" sample --ckpt "$W/run" --prompt "The model " --tokens 60 --temperature 0.9 --seed 3 > "$W/p1" || fail "--prompt"
checks=$((checks + 3))
[ "$(grep -c '^--- prompt [123] of 3$' "$W/p8")" = 3 ] || fail "--prompts headers: $(cat "$W/p8")"
cmp -s "$W/p8" "$W/p2" || fail "--prompts in groups of 2 differs from all at once"
python3 - "$W/p8" "$W/p1" <<'EOF' || fail "prompt 1 of --prompts differs from --prompt's sample of it"
import sys
b = open(sys.argv[1], "rb").read().split(b"--- prompt ")
sys.exit(b[1].split(b"\n", 1)[1] != open(sys.argv[2], "rb").read())
EOF
expect_error "neither --prompt nor --prompts" "give --prompt TEXT or --prompts FILE" -- "$MOE" sample --ckpt "$W/run"
printf '\n\n' > "$W/empty.txt"
expect_error "an empty prompts file" "holds no prompt" -- "$MOE" sample --ckpt "$W/run" --prompts "$W/empty.txt"

# SIGINT: what was printed stays, and is the start of the run that was not stopped
"$MOE" sample --ckpt "$W/run" --prompt "x" --tokens 1000000 --temperature 0.9 --seed 5 > "$W/long" 2> "$W/long.err" &
pid=$!
for _ in $(seq 200); do [ "$(wc -c < "$W/long")" -gt 300 ] && break; sleep 0.05; done
kill -INT $pid
wait $pid
rc=$?
checks=$((checks + 3))
[ $rc = 130 ] || fail "SIGINT: exit $rc, expected 130"
grep -q "stopped by SIGINT" "$W/long.err" || fail "SIGINT: $(cat "$W/long.err")"
n=$(( $(wc -c < "$W/long") - 2 ))  # the prompt byte and the final newline
"$MOE" sample --ckpt "$W/run" --prompt "x" --tokens "$n" --temperature 0.9 --seed 5 --no-stream > "$W/short"
cmp -s "$W/long" "$W/short" || fail "SIGINT: the $n tokens printed are not the start of the sample"

# moe logits through the cache
printf "%s" "$(seq 30 | awk '{printf "%d ", ($1 * 37) % 256}')" > "$W/tok.txt"
"$MOE" logits --ckpt "$W/run" --tokens "$W/tok.txt" --out "$W/full.bin" || fail "logits"
"$MOE" logits --ckpt "$W/run" --tokens "$W/tok.txt" --out "$W/cached.bin" --kv-cache || fail "logits --kv-cache"
checks=$((checks + 1))
diff=$(maxdiff "$W/full.bin" "$W/cached.bin")
within "$diff" 2e-5 || fail "logits through the KV cache differ by $diff"
# streamed through a SentencePiece tokenizer (byte fallback, the first token's stripped space,
# </s>) equals --no-stream's: the decode window restarts only where that changes nothing
"$MOE" train --data "$W/corpus.txt" --tokenizer "$SRC/tests/tok/spm/tokenizer.json" --out "$W/spm" --steps 3 --quiet \
    --set vocab_size=2000 --set seq_len=32 --set n_embd=32 --set n_layer=1 --set n_head=2 --set n_experts=2 --set top_k=1 \
    --set expert_hidden=16 --set batch_size=2 --set tensorboard=false || fail "train with a SentencePiece tokenizer"
for seed in 1 2 3 4 5 6 7 8 9 10 11 12; do
    checks=$((checks + 1))
    P=(sample --ckpt "$W/spm" --prompt "The model's weights" --tokens 150 --temperature 1.5 --ignore-eos --seed $seed)
    "$MOE" "${P[@]}" | cat > "$W/spm_streamed" && "$MOE" "${P[@]}" --no-stream > "$W/spm_whole" || fail "sample spm seed $seed"
    cmp -s "$W/spm_streamed" "$W/spm_whole" || fail "SentencePiece seed $seed: streamed differs from --no-stream"
done
# --stats counts the cache's key/value heads: 2 layers x 2 sequences x 32 positions x (1 head of 16)
checks=$((checks + 1))
"$MOE" train --data "$W/corpus.txt" --out "$W/gqa" --steps 2 --quiet --set seq_len=32 --set n_embd=32 --set n_layer=2 \
    --set n_head=2 --set n_kv_head=1 --set n_experts=4 --set top_k=2 --set expert_hidden=32 --set tensorboard=false \
    || fail "train n_kv_head=1"
"$MOE" sample --ckpt "$W/gqa" --prompt "a" --tokens 4 --batch 2 --stats > /dev/null 2> "$W/stats" || fail "sample --stats"
grep -q "KV cache 0.02 MiB (2 x 2 layers x 2 sequences x 32 positions x 16 floats)" "$W/stats" \
    || fail "--stats under grouped-query attention: $(grep 'KV cache' "$W/stats")"
finish test_sample
