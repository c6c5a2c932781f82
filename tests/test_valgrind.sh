#!/usr/bin/env bash
# test_valgrind.sh — a small run under valgrind's memcheck: train (with an evaluation and a
# checkpoint), resume, sample, eval, export and import; any invalid read or write, use of an
# uninitialised value, or definite leak fails it. (The sanitizer build covers the rest of the
# suite; valgrind also sees what ASan does not: uninitialised reads.) Exits 77 (skipped)
# without valgrind. Registered only in builds without sanitizers.
# usage: test_valgrind.sh path/to/moe
set -u
MOE=${1:?usage: test_valgrind.sh path/to/moe}
SRC=$(cd "$(dirname "$0")/.." && pwd)
source "$SRC/tests/lib.sh"
skip_unless test_valgrind "valgrind" -- command -v valgrind
VG=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --show-possibly-lost=no)
# moe may run itself again to correct OpenBLAS's kernel (main.c), outside valgrind: not here
export MOE_BLAS_RETUNED=valgrind
run() { # NAME -- command...
    local name=$1
    shift 2
    checks=$((checks + 1))
    "${VG[@]}" "$@" > "$W/out" 2> "$W/err"
    local rc=$?
    if [ $rc -ne 0 ]; then echo "FAIL: $name under valgrind (exit $rc):" >&2; head -40 "$W/err" >&2; fails=$((fails + 1)); fi
}
cat "$SRC"/src/*/*.c > "$W/corpus.txt"
T=(train --data "$W/corpus.txt" --set seq_len=16 --set n_embd=16 --set n_layer=2 --set n_head=2 --set n_experts=4
   --set expert_hidden=16 --set batch_size=2 --set eval_every=2 --set eval_batches=1 --set threads=2 --quiet)
run "train" -- "$MOE" "${T[@]}" --steps 2 --out "$W/run"
run "resume" -- "$MOE" "${T[@]}" --steps 3 --out "$W/run" --resume --set keep_checkpoints=2
run "sample" -- "$MOE" sample --ckpt "$W/run" --prompt "int " --tokens 8 --seed 1
run "eval" -- "$MOE" eval --ckpt "$W/run" --data "$W/corpus.txt" --max-batches 1
run "export" -- "$MOE" export --ckpt "$W/run" --out "$W/hf"
run "import" -- "$MOE" import --from "$W/hf" --out "$W/back" --set moe_layers=all
run "dense, no tensorboard" -- "$MOE" "${T[@]}" --steps 1 --out "$W/up" --set moe_layers=none --set tensorboard=false
finish test_valgrind
