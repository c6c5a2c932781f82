#!/usr/bin/env bash
# test_tokenize_cli.sh — `moe tokenize` and the tokenizer in the other commands, end to end, on a
# byte-level BPE tokenizer.json written here by hand (the 256 bytes, 7 merges, <|endoftext|>),
# without Python (tests/test_tokenizer.sh compares ids with Hugging Face's tokenizers):
#   - --ids and --decode (special tokens kept or skipped; a bad id named with its file);
#   - --data: llm.c shard headers, uint16 tokens, EOT before each document, text and .jsonl
#     input, --shard-tokens, the sidecar and the tokenizer copies; the same shards on 1 and 2
#     threads; a bad .jsonl line named by file and line, with nothing left behind;
#   - train: the sidecar's vocabulary against vocab_size, the tokenizer copied into the run
#     (kept on --resume, removed by --overwrite), --tokenizer, a uint32 shard and its sidecar;
#   - sample decodes through the run's tokenizer (streamed as --no-stream prints it); eval prints bits per byte; import and export
#     carry tokenizer.json, tokenizer_config.json and generation_config.json.
# usage: test_tokenize_cli.sh path/to/moe
set -u
MOE=${1:?usage: test_tokenize_cli.sh path/to/moe}
SRC=$(cd "$(dirname "$0")/.." && pwd)
source "$SRC/tests/lib.sh"
SMALL=(--set seq_len=8 --set n_embd=16 --set n_layer=1 --set n_head=2 --set n_experts=2 --set top_k=1
       --set expert_hidden=16 --set ffn_hidden=16 --set batch_size=2 --set threads=1 --set eval_every=0 --quiet)

# ---- the tokenizer: GPT-2's byte-level alphabet (byte b is id b; the bytes GPT-2 maps above
# U+00FF, space among them as U+0120 'Ġ', take 256 + their rank), 7 merges, one special token
mkdir -p "$W/tok"
{
    printf '{"version":"1.0","truncation":null,"padding":null,\n'
    printf ' "added_tokens":[{"id":263,"content":"<|endoftext|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],\n'
    printf ' "normalizer":null,\n'
    printf ' "pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},\n'
    printf ' "post_processor":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true},\n'
    printf ' "decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},\n'
    printf ' "model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,\n'
    printf '  "vocab":{'
    n=0
    for b in $(seq 0 255); do
        if { [ "$b" -ge 33 ] && [ "$b" -le 126 ]; } || { [ "$b" -ge 161 ] && [ "$b" -le 172 ]; } || [ "$b" -ge 174 ]; then
            cp=$b
        else
            cp=$((256 + n)); n=$((n + 1))
        fi
        printf '"\\u%04x":%d,' "$cp" "$b"
    done
    printf '"he":256,"ll":257,"hell":258,"hello":259,"\\u0120w":260,"or":261,"\\u0120wor":262},\n'
    printf '  "merges":["h e","l l","he ll","hell o","\\u0120 w","o r","\\u0120w or"]}}\n'
} > "$W/tok/tokenizer.json"
printf '{"bos_token":null,"eos_token":"<|endoftext|>","add_bos_token":false}\n' > "$W/tok/tokenizer_config.json"
TOK=(--tokenizer "$W/tok")
# "hello world" is hello | Ġwor l d; "world hello" is w or l d | Ġ hello
HW="259 262 108 100"
WH="119 261 108 100 32 259"
EOT=263

# ---- --ids and --decode
printf 'hello world' > "$W/hw.txt"
checks=$((checks + 3))
[ "$("$MOE" tokenize "${TOK[@]}" --ids "$W/hw.txt")" = "$HW" ] || fail "--ids: $("$MOE" tokenize "${TOK[@]}" --ids "$W/hw.txt" 2>&1)"
[ "$("$MOE" tokenize --tokenizer "$W/tok/tokenizer.json" --ids "$W/hw.txt" --no-special)" = "$HW" ] || fail "--ids --no-special of a tokenizer.json"
echo "$HW $EOT 32" > "$W/ids.txt"
"$MOE" tokenize "${TOK[@]}" --decode "$W/ids.txt" > "$W/dec" && printf 'hello world<|endoftext|> ' | cmp -s - "$W/dec" \
    || fail "--decode: '$(cat "$W/dec")'"
checks=$((checks + 1))
"$MOE" tokenize "${TOK[@]}" --decode "$W/ids.txt" --skip-special > "$W/dec" && printf 'hello world ' | cmp -s - "$W/dec" \
    || fail "--decode --skip-special: '$(cat "$W/dec")'"
echo "259 26x2" > "$W/bad.ids"
expect_error "a token file with a word" "'$W/bad.ids' holds '26x2', which is not a token id" -- "$MOE" tokenize "${TOK[@]}" --decode "$W/bad.ids"
echo "259 264" > "$W/bad.ids"
expect_error "an id outside the vocabulary" "token 264 in '$W/bad.ids' is outside the vocabulary [0, 264)" -- "$MOE" tokenize "${TOK[@]}" --decode "$W/bad.ids"
expect_error "two modes" "give one of --ids, --decode or --data" -- "$MOE" tokenize "${TOK[@]}" --ids "$W/hw.txt" --decode "$W/ids.txt"
expect_error "--data without --out" "--data needs --out PREFIX" -- "$MOE" tokenize "${TOK[@]}" --data "$W/hw.txt"

# ---- --data: shards
tokens_of() { od -An -v -tu2 -j1024 "$1" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//'; }
header_of() { od -An -v -td4 -N12 "$1" | tr -s ' ' ' ' | sed 's/^ //; s/ $//'; }
printf '{"text": "hello"}\n{"text": "world hello", "id": 2}\n\n{"text": ""}\n' > "$W/docs.jsonl"
"$MOE" tokenize "${TOK[@]}" --data "$W/hw.txt,$W/docs.jsonl" --out "$W/sh/one" > "$W/out" 2>&1 || fail "--data: $(cat "$W/out")"
WANT="$EOT $HW $EOT 259 $EOT $WH $EOT"
checks=$((checks + 4))
[ "$(header_of "$W/sh/one_000000.bin")" = "20240520 1 15" ] || fail "shard header: $(header_of "$W/sh/one_000000.bin")"
[ "$(tokens_of "$W/sh/one_000000.bin")" = "$WANT" ] || fail "shard tokens: $(tokens_of "$W/sh/one_000000.bin"), want $WANT"
[ "$(stat -c %s "$W/sh/one_000000.bin")" -eq $((1024 + 2 * 15)) ] || fail "shard size: $(stat -c %s "$W/sh/one_000000.bin")"
grep -q "tokenized 4 documents (27 bytes of text) into 15 tokens (uint16) in 1 shard" "$W/out" || fail "--data summary: $(cat "$W/out")"
# split over shards of 4 tokens: the same tokens, in order
"$MOE" tokenize "${TOK[@]}" --data "$W/hw.txt" --data "$W/docs.jsonl" --out "$W/sh/four" --shard-tokens 4 > /dev/null 2>&1 \
    || fail "--shard-tokens 4"
checks=$((checks + 3))
[ "$(ls "$W"/sh/four_*.bin | wc -l)" -eq 4 ] || fail "--shard-tokens 4: $(ls "$W"/sh)"
[ "$(header_of "$W/sh/four_000003.bin")" = "20240520 1 3" ] || fail "last shard header: $(header_of "$W/sh/four_000003.bin")"
got=""
for f in "$W"/sh/four_00000[0-3].bin; do got="$got $(tokens_of "$f")"; done
[ "${got# }" = "$WANT" ] || fail "4 shards: $got"
# the sidecar and the tokenizer copies
S=$W/sh/four.json
checks=$((checks + 4))
for kv in '"vocab_size":[[:space:]]*264' '"eot":[[:space:]]*263' '"tokens":[[:space:]]*15' '"dtype":[[:space:]]*"uint16"' \
          '"documents":[[:space:]]*4' '"tokenizer_hash":[[:space:]]*"[0-9a-f]\{16\}"' \
          '"shards":[[:space:]]*\["four_000000.bin",[[:space:]]*"four_000001.bin",[[:space:]]*"four_000002.bin",[[:space:]]*"four_000003.bin"\]'; do
    grep -q "$kv" "$S" || fail "sidecar lacks $kv: $(cat "$S")"
done
cmp -s "$W/tok/tokenizer.json" "$W/sh/four.tokenizer.json" || fail "PREFIX.tokenizer.json is not a copy"
cmp -s "$W/tok/tokenizer_config.json" "$W/sh/four.tokenizer_config.json" || fail "PREFIX.tokenizer_config.json is not a copy"
[ -z "$(ls "$W"/sh/*.tmp 2> /dev/null)" ] || fail "temporary files left: $(ls "$W"/sh)"
# the same shards on 1 and 2 threads, several batches of documents
for i in $(seq 3000); do echo "{\"text\": \"hello world $i \\\"hell\\\"\\nor w\\u00f6rld\"}"; done > "$W/many.jsonl"
"$MOE" tokenize "${TOK[@]}" --data "$W/many.jsonl,$W/hw.txt" --out "$W/t1/p" --threads 1 --shard-tokens 10000 > /dev/null 2>&1 \
    || fail "--threads 1"
"$MOE" tokenize "${TOK[@]}" --data "$W/many.jsonl" "$W/hw.txt" --threads 2 --out "$W/t2/p" --shard-tokens 10000 > /dev/null 2>&1 \
    || fail "--threads 2, --data FILE FILE"
checks=$((checks + 2))
[ "$(ls "$W"/t1/*.bin | wc -l)" -ge 3 ] || fail "--threads: expected several shards: $(ls "$W"/t1)"
for f in "$W"/t1/*; do cmp -s "$f" "$W/t2/$(basename "$f")" || fail "--threads 1 and 2 differ: $(basename "$f")"; done
# a bad line: named by file and line; no shard, no temporary file left
{ head -n 2500 "$W/many.jsonl"; echo '{"txt": "hello"}'; } > "$W/bad.jsonl"
expect_error "a .jsonl line without text" "'$W/bad.jsonl' line 2501 has no string field \"text\"" \
    -- "$MOE" tokenize "${TOK[@]}" --data "$W/bad.jsonl" --out "$W/bad/p" --shard-tokens 1000
printf '{"text": "a"}\n{"text": "b"\n' > "$W/bad2.jsonl"
expect_error "a .jsonl line that is not JSON" "'$W/bad2.jsonl' line 2 is not a JSON object" \
    -- "$MOE" tokenize "${TOK[@]}" --data "$W/bad2.jsonl" --out "$W/bad/p"
checks=$((checks + 1))
[ -z "$(ls "$W"/bad 2> /dev/null)" ] || fail "a failed --data left files: $(ls "$W"/bad)"

# ---- train: the sidecar, the tokenizer in the run
expect_error "a vocabulary larger than vocab_size" \
    "'$W/t1/p_000000.bin' holds tokens of a vocabulary of 264 ids (sidecar '$W/t1/p.json'), more than the model's vocab_size 256" \
    -- "$MOE" train --data "$W/t1/p_000000.bin" --out "$W/run" "${SMALL[@]}" --steps 1
"$MOE" train --data "$W/t1/p_000000.bin,$W/t1/p_000001.bin" --out "$W/run" "${SMALL[@]}" --set vocab_size=264 --steps 2 \
    --set keep_checkpoints=1 \
    2> "$W/err" || fail "train on shards: $(cat "$W/err")"
checks=$((checks + 2))
cmp -s "$W/tok/tokenizer.json" "$W/run/tokenizer.json" || fail "the run's tokenizer.json is not the data's"
cmp -s "$W/tok/tokenizer_config.json" "$W/run/tokenizer_config.json" || fail "the run's tokenizer_config.json is not the data's"
echo '{"marker": 1}' > "$W/run/tokenizer_config.json"
"$MOE" train --data "$W/t1/p_000000.bin" --out "$W/run" "${SMALL[@]}" --set vocab_size=264 --steps 3 --resume 2> "$W/err" \
    || fail "resume: $(cat "$W/err")"
checks=$((checks + 1))
grep -q marker "$W/run/tokenizer_config.json" || fail "--resume replaced the run's tokenizer files"
expect_error "--tokenizer too large for vocab_size" "tokenizer '$W/tok' has 264 ids, more than the model's vocab_size 256" \
    -- "$MOE" train --data "$W/hw.txt" --out "$W/run2" "${SMALL[@]}" --steps 1 "${TOK[@]}"
cp -r "$W/tok" "$W/tok2" && sed -i 's/"dropout":null/"dropout": null/' "$W/tok2/tokenizer.json"
expect_error "--tokenizer that did not tokenize the data" "is not the one that tokenized the data" \
    -- "$MOE" train --data "$W/t1/p_000000.bin" --out "$W/run2" "${SMALL[@]}" --set vocab_size=264 --steps 1 --tokenizer "$W/tok2"
"$MOE" train --data "$W/hw.txt,$W/many.jsonl" --out "$W/run2" "${SMALL[@]}" --set vocab_size=300 --steps 1 "${TOK[@]}" \
    2> "$W/err" || fail "train --tokenizer: $(cat "$W/err")"
checks=$((checks + 1))
cmp -s "$W/tok/tokenizer.json" "$W/run2/tokenizer.json" || fail "train --tokenizer did not copy it"
"$MOE" train --data "$W/hw.txt,$W/many.jsonl" --out "$W/run2" "${SMALL[@]}" --steps 1 --overwrite 2> "$W/err" \
    || fail "train --overwrite: $(cat "$W/err")"
checks=$((checks + 1))
[ ! -e "$W/run2/tokenizer.json" ] && [ ! -e "$W/run2/tokenizer_config.json" ] \
    || fail "--overwrite with no tokenizer kept the old run's"
# llm.c's uint32 shards train; their sidecar's vocabulary is checked against vocab_size
le32() { local v=$1; printf "\\x$(printf %02x $((v & 255)))\\x$(printf %02x $((v >> 8 & 255)))\\x$(printf %02x $((v >> 16 & 255)))\\x$(printf %02x $((v >> 24 & 255)))"; }
{ le32 20240801; le32 7; le32 200; head -c $((253 * 4)) /dev/zero; for i in $(seq 200); do le32 $((i % 50 + 69000)); done; } \
    > "$W/wide_000000.bin"
sed -E 's/"uint16"/"uint32"/; s/("vocab_size":[[:space:]]*)264/\170000/' "$W/t1/p.json" > "$W/wide.json"
expect_error "a uint32 shard's sidecar" "holds tokens of a vocabulary of 70000 ids (sidecar '$W/wide.json'), more than the model's vocab_size 256: --set vocab_size=70000" \
    -- "$MOE" train --data "$W/wide_000000.bin" --out "$W/run3" "${SMALL[@]}" --steps 1
checks=$((checks + 1))
"$MOE" train --data "$W/wide_000000.bin" --out "$W/run3" "${SMALL[@]}" --steps 2 --set vocab_size=70000 2> "$W/err" \
    || fail "a uint32 shard did not train: $(cat "$W/err")"

# ---- sample, eval, import, export
printf 'hello' > "$W/prompt"
"$MOE" sample --ckpt "$W/run" --prompt "hello" --tokens 5 --temperature 0 > "$W/out" 2> "$W/err" || fail "sample: $(cat "$W/err")"
checks=$((checks + 2))
head -c 5 "$W/out" | cmp -s - "$W/prompt" || fail "sample did not decode the prompt: $(cat "$W/out")"
grep -q "<|endoftext|>" "$W/out" && fail "sample printed a special token: $(cat "$W/out")"
"$MOE" sample --ckpt "$W/run" --prompt "hello" --tokens 40 --temperature 1 --ignore-eos | cat > "$W/streamed" 2> "$W/err" \
    || fail "sample streamed: $(cat "$W/err")"
"$MOE" sample --ckpt "$W/run" --prompt "hello" --tokens 40 --temperature 1 --ignore-eos --no-stream > "$W/whole" 2> "$W/err" \
    || fail "sample --no-stream: $(cat "$W/err")"
checks=$((checks + 1))
cmp -s "$W/streamed" "$W/whole" || fail "a streamed sample through the tokenizer differs from --no-stream"
"$MOE" sample --ckpt "$W/run/checkpoints/step-00000003" --prompt "hello" --tokens 5 --temperature 0 > "$W/out2" 2> "$W/err" \
    || fail "sample of a kept checkpoint: $(cat "$W/err")"
checks=$((checks + 1))
cmp -s "$W/out" "$W/out2" || fail "sample of a kept checkpoint did not use the run's tokenizer: $(cat "$W/out2")"
"$MOE" eval --ckpt "$W/run" --data "$W/t1/p_000002.bin" --max-batches 2 > "$W/out" 2> "$W/err" || fail "eval: $(cat "$W/err")"
checks=$((checks + 1))
grep -q "bits/byte [0-9.]* | 128 tokens, [0-9]* bytes" "$W/out" || fail "eval: no bits per byte: $(cat "$W/out")"
"$MOE" eval --ckpt "$W/run" --data "$W/hw.txt,$W/many.jsonl" --json > "$W/out" 2> "$W/err" || fail "eval of text: $(cat "$W/err")"
checks=$((checks + 2))
grep -q '"bits_per_byte":null' "$W/out" || fail "eval of text with a tokenizer gave bits per byte: $(cat "$W/out")"
grep -q "'$W/hw.txt' is text, read as bytes" "$W/err" || fail "eval of text with a tokenizer: no warning: $(cat "$W/err")"
"$MOE" train --data "$W/many.jsonl" --out "$W/bytes" "${SMALL[@]}" --steps 1 2> "$W/err" || fail "byte run: $(cat "$W/err")"
"$MOE" eval --ckpt "$W/bytes" --data "$W/many.jsonl" --max-batches 1 --json > "$W/out" 2>&1 || fail "eval of a byte run"
checks=$((checks + 1))
grep -q '"bytes":64,' "$W/out" || fail "eval of a byte run: not one byte per token: $(cat "$W/out")"
echo '{"eos_token_id": 263}' > "$W/run/generation_config.json"
"$MOE" export --ckpt "$W/run" --out "$W/hf" > "$W/out" 2> "$W/err" || fail "export: $(cat "$W/err")"
checks=$((checks + 2))
for f in tokenizer.json tokenizer_config.json generation_config.json; do cmp -s "$W/run/$f" "$W/hf/$f" || fail "export: no $f"; done
grep -q "with tokenizer.json, tokenizer_config.json, generation_config.json" "$W/out" || fail "export does not say: $(cat "$W/out")"
"$MOE" import --from "$W/hf" --out "$W/imp" > /dev/null 2> "$W/err" || fail "import: $(cat "$W/err")"
for f in tokenizer.json tokenizer_config.json generation_config.json; do cmp -s "$W/hf/$f" "$W/imp/$f" || fail "import: no $f"; done
"$MOE" train --data "$W/many.jsonl" --out "$W/init" "${SMALL[@]}" --steps 1 --init-from "$W/hf" > /dev/null 2> "$W/err" \
    || fail "train --init-from: $(cat "$W/err")"
checks=$((checks + 1))
cmp -s "$W/hf/tokenizer.json" "$W/init/tokenizer.json" || fail "train --init-from: no tokenizer.json"

finish test_tokenize_cli
