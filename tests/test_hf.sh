#!/usr/bin/env bash
# test_hf.sh — Hugging Face interop: trains a tiny model, exports it (`moe export`), loads it with
# transformers' MixtralForCausalLM and compares logits with `moe logits` (max abs difference
# <= 1e-4 in fp32); bf16 export loads too (looser tolerance); a model that maps onto no family
# gets its reason. Needs /usr/bin/python3 with torch and transformers (scripts/deps.sh --hf);
# exits 77 (ctest: skipped) without them.
# usage: test_hf.sh path/to/moe
set -u
MOE=${1:?usage: test_hf.sh path/to/moe}
PY=${PYTHON:-/usr/bin/python3}
"$PY" -c "import torch, transformers, numpy" 2>/dev/null || { echo "test_hf: no torch/transformers: skipped"; exit 77; }
SRC=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
fails=0
checks=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
cat "$SRC"/src/*/*.c > "$W/corpus.txt"
TINY=(--set seq_len=32 --set n_embd=32 --set n_layer=2 --set n_head=4 --set expert_hidden=48 --set n_experts=4
      --set batch_size=4 --set threads=2 --quiet)
"$MOE" train --data "$W/corpus.txt" --out "$W/run" --steps 20 "${TINY[@]}" || fail "training failed"
head -c 32 "$W/corpus.txt" | od -An -tu1 > "$W/tok.txt"
"$MOE" logits --ckpt "$W/run" --tokens "$W/tok.txt" --out "$W/logits.bin" || fail "moe logits failed"
for dtype in f32 bf16; do
    checks=$((checks + 1))
    tol=1e-4
    [ $dtype = bf16 ] && tol=2e-2
    "$MOE" export --ckpt "$W/run" --out "$W/hf_$dtype" --dtype $dtype > /dev/null || { fail "export $dtype failed"; continue; }
    "$PY" "$SRC/tests/hf/check_export.py" "$W/hf_$dtype" "$W/tok.txt" "$W/logits.bin" $tol 2>/dev/null \
        | tee "$W/out_$dtype" | grep -q "max |logit difference|" || fail "$dtype: transformers could not load the export"
    cat "$W/out_$dtype"
    "$PY" "$SRC/tests/hf/check_export.py" "$W/hf_$dtype" "$W/tok.txt" "$W/logits.bin" $tol > /dev/null 2>&1 \
        || fail "$dtype: logits differ by more than $tol"
done
# fp32 must be close enough that bf16 rounding would fail it: the check can fail
checks=$((checks + 1))
"$PY" "$SRC/tests/hf/check_export.py" "$W/hf_bf16" "$W/tok.txt" "$W/logits.bin" 1e-4 > /dev/null 2>&1 \
    && fail "bf16 export passes the fp32 tolerance: the comparison is too loose to mean anything"
# models that map onto no family: the reason is named
for bad in "n_shared=1:shared experts" "norm_topk=0:not renormalised" "moe_layers=0:layers are MoE" \
           "router_score=sigmoid:sigmoid"; do
    checks=$((checks + 1))
    "$MOE" train --data "$W/corpus.txt" --out "$W/bad" --steps 1 "${TINY[@]}" --set "${bad%%:*}" || fail "train ${bad%%:*}"
    if "$MOE" export --ckpt "$W/bad" --out "$W/hf_bad" > /dev/null 2> "$W/err"; then
        fail "${bad%%:*}: export succeeded"
    elif ! grep -q "${bad#*:}" "$W/err"; then
        fail "${bad%%:*}: unclear error: $(cat "$W/err")"
    fi
done
echo "test_hf: $checks checks, $fails failed -> $([ $fails -eq 0 ] && echo ok || echo FAIL)"
[ $fails -eq 0 ]
