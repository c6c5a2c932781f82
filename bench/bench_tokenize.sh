#!/usr/bin/env bash
# bench_tokenize.sh — `moe tokenize --data` against Hugging Face `tokenizers` (encode_batch), in
# MB/s of text, on one thread and on all cores, with the GPT-2- and Llama-3-style fixtures of
# tests/tok/. The text (tinyshakespeare, and 20 copies of it) is cut into documents at blank
# lines (paragraphs), written as one .jsonl that both read. moe's time is the whole command
# (loading the tokenizer, reading the .jsonl, writing the shards); tokenizers' is encode_batch
# alone on documents already in memory, so the comparison does not favour moe. Best of 3 each.
# Also checks that both count the same tokens (moe's sidecar: the ids plus one EOT a document).
# usage: bench/bench_tokenize.sh    (MOE=build/moe, DATA=../shared/data/tinyshakespeare.txt,
#        PYTHON=/usr/bin/python3 with tokenizers, COPIES=20, TOKENIZERS="gpt2 llama3")
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
MOE=${MOE:-build/moe}
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
PY=${PYTHON:-/usr/bin/python3}
COPIES=${COPIES:-20}
TOKENIZERS=${TOKENIZERS:-gpt2 llama3}
CORES=$(nproc)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
"$PY" -c "import tokenizers" 2> /dev/null || { echo "bench_tokenize: $PY has no tokenizers"; exit 1; }
"$PY" - "$DATA" "$COPIES" "$W" <<'PY'
import json, sys
text = open(sys.argv[1], encoding="utf-8").read()
docs = [p + "\n\n" for p in text.split("\n\n")]
for name, n in (("1x", 1), (f"{sys.argv[2]}x", int(sys.argv[2]))):
    with open(f"{sys.argv[3]}/{name}.jsonl", "w", encoding="utf-8") as f:
        for _ in range(n):
            for d in docs:
                f.write(json.dumps({"text": d}) + "\n")
PY
# moe_rate TOKDIR DOCS THREADS BYTES: MB/s of the whole moe tokenize --data command, best of 3;
# its token count (the sidecar's) goes to $W/moe_tokens
moe_rate() {
    local best=0 s e
    for _ in 1 2 3; do
        s=$(date +%s%N)
        "$MOE" tokenize --tokenizer "$1" --data "$2" --out "$W/sh" --threads "$3" > /dev/null 2> "$W/err" ||
            { echo "moe tokenize failed: $(cat "$W/err")" >&2; exit 1; }
        e=$(date +%s%N)
        if [ $best = 0 ] || [ $((e - s)) -lt $best ]; then best=$((e - s)); fi
    done
    "$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['tokens'])" "$W/sh.json" > "$W/moe_tokens"
    "$PY" -c "import sys; print(f'{int(sys.argv[1]) / (int(sys.argv[2]) / 1e9) / 1e6:.2f}')" "$4" "$best"
}
echo "moe $("$MOE" --version 2>/dev/null | tail -1); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $CORES cores"
echo "tokenizers $("$PY" -c "import tokenizers; print(tokenizers.__version__)"); text: $DATA, documents at blank lines"
printf '%-8s %-5s %8s %12s %12s %14s %14s\n' tokenizer text MB "moe 1 thr" "moe $CORES thr" "HF 1 thread" "HF $CORES threads"
for tk in $TOKENIZERS; do
    for docs in "$W/1x.jsonl" "$W/${COPIES}x.jsonl"; do
        mb=$("$PY" -c "import json, sys; print(sum(len(json.loads(l)['text'].encode()) for l in open(sys.argv[1])))" "$docs")
        m1=$(moe_rate "tests/tok/$tk" "$docs" 1 "$mb")
        mn=$(moe_rate "tests/tok/$tk" "$docs" "$CORES" "$mb")
        read -r h1 hf_tokens < <(RAYON_NUM_THREADS=1 "$PY" tests/tok/tokref.py bench "tests/tok/$tk" "$docs")
        read -r hn _ < <(RAYON_NUM_THREADS=$CORES "$PY" tests/tok/tokref.py bench "tests/tok/$tk" "$docs")
        printf '%-8s %-5s %8.2f %12s %12s %14s %14s\n' "$tk" "$(basename "$docs" .jsonl)" \
            "$("$PY" -c "print($mb / 1e6)")" "$m1" "$mn" "$h1" "$hn"
        moe_tokens=$(cat "$W/moe_tokens")
        [ "$moe_tokens" = "$hf_tokens" ] || echo "  token counts differ: moe $moe_tokens, tokenizers $hf_tokens"
    done
done
echo "(MB/s of UTF-8 text; moe: the whole command, tokenizers: encode_batch alone)"
