#!/usr/bin/env bash
# test_tokenizer.sh — moe's tokenizer.json reader (src/tok/, `moe tokenize`) against Hugging Face
# `tokenizers` 0.19 on the committed fixtures of tests/tok/ (made by tests/tok/make_fixtures.py):
# GPT-2- and Llama-3-style byte-level BPE, SentencePiece-style BPE with byte fallback (legacy
# Prepend/Replace normalizer and Metaspace pre-tokenizer), a 512-token byte-level BPE, and merges
# written as pairs.
# - ids of `moe tokenize --ids` (with and without the post-processor's special tokens) equal
#   tokenizers' encode(text).ids, and `moe tokenize --decode` of those ids equals decode(ids)
#   (skip_special_tokens False and True), on tinyshakespeare, Debian's license texts, Python and C
#   sources, a multilingual text (tests/tok/multilingual.txt) and edge cases (empty, whitespace,
#   special tokens alone, long runs), and decoding of random ids;
# - invalid UTF-8: byte-level models encode the bytes as they are; SentencePiece-style ones read
#   each maximal invalid subsequence as U+FFFD (Python's bytes.decode("utf-8", "replace"));
# - unsupported components, dropout and a file that is not JSON are refused by name;
# - end to end: text and .jsonl to llm.c shards (uint16; uint32 past 65536 ids) with the EOT
#   before each document, the same on 1 and 2 threads; training on them, eval's bits per byte,
#   sampling from a prompt through the run's tokenizer.
# Needs /usr/bin/python3 with tokenizers (scripts/deps.sh --hf); exits 77 (skipped) without it.
# usage: test_tokenizer.sh path/to/moe
set -u
MOE=${1:?usage: test_tokenizer.sh path/to/moe}
SRC=$(cd "$(dirname "$0")/.." && pwd)
source "$SRC/tests/lib.sh"
skip_unless test_tokenizer "tokenizers (Python)" -- "$PY" -c "import tokenizers"
T=$SRC/tests/tok
REF=("$PY" "$T/tokref.py")
BYTE_LEVEL=(gpt2 llama3 bpe512)
SPM=(spm spm_metaspace)

# ---- corpora: each file is one text
C=$W/corpus
mkdir -p "$C"
SHAKE=$SRC/../shared/data/tinyshakespeare.txt
if [ -f "$SHAKE" ]; then head -c 100000 "$SHAKE" > "$C/shakespeare.txt"
else echo "test_tokenizer: no $SHAKE: tinyshakespeare skipped"; fi
for f in GPL-3 Apache-2.0 MPL-2.0 Artistic; do
    [ -f "/usr/share/common-licenses/$f" ] && cat "/usr/share/common-licenses/$f" >> "$C/licenses.txt"
done
for f in textwrap heapq string shlex fnmatch bisect; do
    for p in /usr/lib/python3*/"$f".py; do [ -f "$p" ] && cat "$p" >> "$C/python.txt" && break; done
done
for f in "$SRC"/src/*/*.c; do # about 120 KB of whole files
    [ -f "$C/c.txt" ] && [ "$(wc -c < "$C/c.txt")" -gt 120000 ] && break
    cat "$f" >> "$C/c.txt"
done
cp "$T/multilingual.txt" "$C/multilingual.txt"
: > "$C/empty.txt"
printf '   \n\n\t  \r\n ' > "$C/whitespace.txt"
printf '<|endoftext|><s></s><|begin_of_text|><|end_of_text|><unk>' > "$C/specials.txt"
# long runs: pieces far longer than any cache or regex stack would like
"$PY" -c 'import sys; sys.stdout.write(" " * 10000 + "x" + "\n" * 3000 + " \t" * 3000 + "a" * 10000 + " " + "1234567890" * 1000
    + " " + "你好世界我喜欢学习语言" * 500 + "👩‍💻👍🏽🇫🇷" * 500 + "!?.," * 2000 + "▁" * 2000 + " end")' > "$C/runs.txt"
CORPORA=("$C"/*.txt)

# same_ids NAME WANT TOKDIR -- command...: the command succeeds and prints WANT's ids (a difference
# is shown as tokens); same_text NAME WANT -- command...: prints WANT's bytes exactly
ran() { # NAME -- command...: runs it into $W/got; fails NAME if it exits non-zero
    local name=$1
    shift 2
    checks=$((checks + 1))
    "$@" > "$W/got" 2> "$W/err" && return
    fail "$name: exit $?: $(head -c 600 "$W/err")"
    return 1
}
same_ids() {
    local name=$1 want=$2 tokdir=$3
    shift 3
    ran "$name" "$@" || return
    cmp -s "$want" "$W/got" || fail "$name: $("${REF[@]}" diff "$tokdir" "$want" "$W/got")"
}
same_text() {
    local name=$1 want=$2
    shift 2
    ran "$name" "$@" || return
    cmp -s "$want" "$W/got" ||
        fail "$name: $(cmp "$want" "$W/got" 2>&1 | head -1) (expected $(wc -c < "$want") bytes, got $(wc -c < "$W/got"))"
}

# ---- ids and decoding equal tokenizers', every fixture on every corpus
# check_tokenizer TOKDIR REFDIR NAME CORPUS...: moe on TOKDIR against the reference outputs in REFDIR
check_tokenizer() {
    local tokdir=$1 ref=$2 name=$3 c base
    shift 3
    for c in "$@"; do
        base=$(basename "$c" .txt)
        same_ids "$name/$base ids" "$ref/$base.ids" "$tokdir" -- "$MOE" tokenize --tokenizer "$tokdir" --ids "$c"
        same_ids "$name/$base ids --no-special" "$ref/$base.ids_nospecial" "$tokdir" -- \
            "$MOE" tokenize --tokenizer "$tokdir" --ids "$c" --no-special
        same_text "$name/$base decode" "$ref/$base.dec" -- "$MOE" tokenize --tokenizer "$tokdir" --decode "$ref/$base.ids"
        same_text "$name/$base decode --skip-special" "$ref/$base.dec_skip" -- \
            "$MOE" tokenize --tokenizer "$tokdir" --decode "$ref/$base.ids" --skip-special
    done
    for c in "$ref"/random*.ids; do
        base=$(basename "$c" .ids)
        same_text "$name/$base decode" "$ref/$base.dec" -- "$MOE" tokenize --tokenizer "$tokdir" --decode "$c"
        same_text "$name/$base decode --skip-special" "$ref/$base.dec_skip" -- \
            "$MOE" tokenize --tokenizer "$tokdir" --decode "$c" --skip-special
    done
}
for tk in "${BYTE_LEVEL[@]}" "${SPM[@]}"; do
    "${REF[@]}" ref "$T/$tk" "$W/ref/$tk" "${CORPORA[@]}" || { fail "$tk: tokenizers could not make the reference"; continue; }
    check_tokenizer "$T/$tk" "$W/ref/$tk" "$tk" "${CORPORA[@]}"
done
# merges as ["a", "b"] pairs give what "a b" strings do (tokenizers 0.19 reads only strings);
# loaded by the file's path, not its directory
check_tokenizer "$T/pairs/tokenizer.json" "$W/ref/gpt2" pairs "${CORPORA[@]}"
# the fixtures with one component changed (tests/tok/variants.py), on the shorter corpora
if "$PY" "$T/variants.py" "$T" "$W/var" > "$W/variants.txt" 2> "$W/err"; then
    mkdir -p "$W/vcorpus"
    head -n 300 "$C/python.txt" > "$W/vcorpus/code.txt"
    VCORPORA=("$C/multilingual.txt" "$W/vcorpus/code.txt" "$C/whitespace.txt" "$C/specials.txt" "$C/empty.txt")
    while read -r v; do
        "${REF[@]}" ref "$W/var/$v" "$W/ref/$v" "${VCORPORA[@]}" || { fail "$v: tokenizers could not make the reference"; continue; }
        check_tokenizer "$W/var/$v" "$W/ref/$v" "$v" "${VCORPORA[@]}"
    done < "$W/variants.txt"
else fail "variants.py: $(tail -3 "$W/err")"; fi

# ---- invalid UTF-8: bytes 0xFF 0xFE, truncated sequences (at the end too), overlong forms, a
# surrogate, a code point past U+10FFFF, lone continuation bytes, between valid multi-byte text
printf 'ok \xff\xfe bad, trunc \xe2\x82 and \xf0\x9f\x98 emoji, overlong \xc0\xaf \xe0\x80\xaf \xc1\xbf,
surrogate \xed\xa0\x80 big \xf4\x90\x80\x80 cont \x80\xbf\x80 caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 <s> end\xe2\x82
decomposed cafe\xcc\x81\xff e\xcc\x81\xcc\xa3 \xef\xbc\xa6\xef\xbc\xb5\xef\xac\x81 \xe2\x84\xab\xc3' > "$W/invalid.bin"
# and with Unicode normalizers (on the valid runs, for byte-level models)
for tk in "${BYTE_LEVEL[@]/#/$T/}" "${SPM[@]/#/$T/}" "$W"/var/{gpt2_nfc,gpt2_nfd,gpt2_nfkc,gpt2_nfkd,spm_nfkc}; do
    checks=$((checks + 1))
    name=$(basename "$tk")
    "$MOE" tokenize --tokenizer "$tk" --ids "$W/invalid.bin" --no-special > "$W/inv.ids" 2> "$W/err" \
        || { fail "$name: invalid UTF-8: exit $?: $(cat "$W/err")"; continue; }
    "$MOE" tokenize --tokenizer "$tk" --decode "$W/inv.ids" > "$W/inv.dec" 2> "$W/err" \
        || { fail "$name: decoding the ids of invalid UTF-8: exit $?: $(cat "$W/err")"; continue; }
    out=$("${REF[@]}" invalid "$tk" "$W/invalid.bin" "$W/inv.ids" "$W/inv.dec") || fail "$name: invalid UTF-8: $out"
done

# ---- refusals: "moe: " on stderr, exit 1, naming what is at fault
# refused NAME WANT -- command...
refused() {
    local name=$1 want=$2 rc
    shift 3
    checks=$((checks + 1))
    "$@" > /dev/null 2> "$W/err"
    rc=$?
    if [ $rc -ne 1 ]; then fail "$name: exit $rc, expected 1: $(head -c 300 "$W/err")"
    elif grep -qE "AddressSanitizer|runtime error:|LeakSanitizer" "$W/err"; then fail "$name: $(head -c 600 "$W/err")"
    elif ! grep -qF -- "$want" "$W/err"; then fail "$name: the error does not mention '$want': $(head -c 300 "$W/err")"
    elif [ "$(head -c 5 "$W/err")" != "moe: " ]; then fail "$name: stderr does not start with 'moe: ': $(head -c 300 "$W/err")"
    fi
}
G=$T/gpt2/tokenizer.json
bad() { "${REF[@]}" edit "$G" "$W/bad/$1.json" "$2" || fail "could not write variant $1"; }
bad wordpiece 'j["model"] = {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                             "max_input_chars_per_word": 100, "vocab": {"[UNK]": 0, "a": 1}}'
bad bertnorm 'j["normalizer"] = {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                                 "strip_accents": None, "lowercase": True}'
bad nested 'j["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"String": "a"},
             "content": "b"}, {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
             "strip_accents": None, "lowercase": True}]}'
bad whitespace 'j["pre_tokenizer"] = {"type": "Whitespace"}'
bad wp_decoder 'j["decoder"] = {"type": "WordPiece", "prefix": "##", "cleanup": True}'
bad dropout 'j["model"]["dropout"] = 0.1'
bad bertproc 'j["post_processor"] = {"type": "BertProcessing", "sep": ["[SEP]", 1], "cls": ["[CLS]", 2]}'
printf 'this is not JSON {' > "$W/bad/notjson.json"
for spec in "wordpiece:WordPiece" "bertnorm:BertNormalizer" "nested:BertNormalizer" "whitespace:Whitespace" \
            "wp_decoder:WordPiece" "dropout:dropout" "bertproc:BertProcessing" "notjson:notjson.json"; do
    IFS=: read -r file want <<< "$spec"
    refused "refuse $file" "$want" -- "$MOE" tokenize --tokenizer "$W/bad/$file.json" --ids "$C/multilingual.txt"
done
refused "no such tokenizer" "nothere.json" -- "$MOE" tokenize --tokenizer "$W/bad/nothere.json" --ids "$C/empty.txt"
echo 2001 > "$W/outside.ids"
refused "decode an id outside the vocabulary" "2001" -- "$MOE" tokenize --tokenizer "$T/gpt2" --decode "$W/outside.ids"

# ---- end to end: shards, training, eval, sampling through the run's tokenizer (bpe512)
B=$T/bpe512
DOC=$C/shakespeare.txt
[ -f "$DOC" ] || DOC=$C/licenses.txt
"$PY" - "$W/docs.jsonl" <<'EOF'
import json, sys
docs = ["ROMEO:\nBut soft, what light through yonder window breaks?\n", "Ünïcödé — 東京 😀 <|endoftext|> inside",
        "  leading spaces\tand tabs\r\n", "third line, \"quoted\" \\ backslash"]
with open(sys.argv[1], "w", encoding="utf-8") as f:
    for d in docs:
        f.write(json.dumps({"text": d, "id": 7}) + "\n")
EOF
mkdir -p "$W/sh1" "$W/sh2"
checks=$((checks + 1))
if "$MOE" tokenize --tokenizer "$B" --data "$DOC" "$W/docs.jsonl" --out "$W/sh1/ts" --threads 1 > /dev/null 2> "$W/err"; then
    out=$("${REF[@]}" shards "$B" "$W/sh1/ts" "$DOC" "$W/docs.jsonl") || fail "shards (1 thread): $out"
else fail "tokenize --data: exit $?: $(cat "$W/err")"; fi
checks=$((checks + 1))
if "$MOE" tokenize --tokenizer "$B" --data "$DOC" "$W/docs.jsonl" --out "$W/sh2/ts" --threads 2 > /dev/null 2> "$W/err"; then
    for f in "$W"/sh1/*; do
        cmp -s "$f" "$W/sh2/$(basename "$f")" || fail "tokenize --data: $(basename "$f") differs between 1 and 2 threads"
    done
else fail "tokenize --data --threads 2: exit $?: $(cat "$W/err")"; fi
# past 65536 ids: uint32 shards (llm.c's magic 20240801, version 7), the EOT at id 70000
checks=$((checks + 1))
if "${REF[@]}" bigvocab "$B" "$W/big"; then
    head -c 3000 "$DOC" > "$W/small.txt"
    if "$MOE" tokenize --tokenizer "$W/big" --data "$W/small.txt" "$W/docs.jsonl" --out "$W/big/sh" > /dev/null 2> "$W/err"; then
        out=$("${REF[@]}" shards "$W/big" "$W/big/sh" "$W/small.txt" "$W/docs.jsonl") || fail "uint32 shards: $out"
    else fail "tokenize --data with 70001 ids: exit $?: $(cat "$W/err")"; fi
else fail "could not write the 70001-id tokenizer"; fi

SMALL=(--set seq_len=16 --set n_embd=16 --set n_layer=2 --set n_head=2 --set n_experts=4 --set top_k=2
       --set expert_hidden=16 --set ffn_hidden=32 --set batch_size=4 --set eval_every=4 --set eval_batches=2
       --set warmup_steps=2 --set lr=0.01 --set capacity_factor=1.0 --set threads=2 --quiet)
checks=$((checks + 1))
if "$MOE" train --data "$W/sh1/ts_000000.bin" --out "$W/run" --steps 4 "${SMALL[@]}" --set vocab_size=512 \
    > "$W/train.out" 2>&1; then
    checks=$((checks + 3))
    cmp -s "$W/run/tokenizer.json" "$B/tokenizer.json" || fail "the run directory has no copy of the tokenizer"
    if "$MOE" eval --ckpt "$W/run" --data "$W/sh1/ts_000000.bin" --max-batches 2 > "$W/eval.out" 2>&1; then
        grep -qiE "bits per byte|bits/byte" "$W/eval.out" || fail "eval does not print bits per byte: $(cat "$W/eval.out")"
    else fail "eval: exit $?: $(cat "$W/eval.out")"; fi
    if "$MOE" sample --ckpt "$W/run" --prompt "ROMEO:" --tokens 20 > "$W/sample.out" 2> "$W/err"; then
        [ "$(head -c 6 "$W/sample.out")" = "ROMEO:" ] || fail "sample does not start with the prompt: $(head -c 200 "$W/sample.out")"
    else fail "sample: exit $?: $(cat "$W/err")"; fi
else fail "train on the shards: exit $?: $(tail -5 "$W/train.out")"; fi
# a model whose vocabulary is smaller than the tokenizer's
expect_error "train on shards with vocab_size below the tokenizer's" "vocab" -- \
    "$MOE" train --data "$W/sh1/ts_000000.bin" --out "$W/run256" --steps 1 "${SMALL[@]}" --set vocab_size=256

finish test_tokenizer
