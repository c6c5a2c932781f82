#!/usr/bin/env bash
# test_cli.sh — the `moe` command end to end:
#   - resume: N steps straight equal N/2 steps, save, resume, N/2 steps (identical losses);
#   - determinism: the same seed gives the same losses;
#   - sample and eval from a checkpoint; llm.c token shards as data;
#   - bad input: each malformed input gets its specific message and a non-zero exit, never a
#     crash (exit >= 128), and an existing checkpoint is left byte-for-byte unchanged.
# usage: test_cli.sh path/to/moe
set -u
MOE=${1:?usage: test_cli.sh path/to/moe}
# A corpus from this repository's sources, so the test needs nothing outside the checkout.
SRC=$(cd "$(dirname "$0")/.." && pwd)
source "$SRC/tests/lib.sh"
cat "$SRC"/src/*/*.c "$SRC"/include/moe.h > "$W/corpus.txt"
SMALL=(--set seq_len=16 --set n_embd=16 --set n_layer=2 --set n_head=2 --set n_experts=4 --set top_k=2
       --set expert_hidden=16 --set ffn_hidden=32 --set batch_size=4 --set eval_every=4 --set eval_batches=2
       --set warmup_steps=2 --set lr=0.01 --set capacity_factor=1.0 --set threads=2 --quiet)

losses() { python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "event" in r:  # a typed record (docs/metrics.md), not a step
        continue
    print(r["step"], repr(r["loss"]), repr(r.get("val_loss")), repr(r["grad_norm"]), [m["load"] for m in r["moe"]])
' "$1"; }
steps_in() { grep -c '"loss"' "$1"; } # step records of a metrics.jsonl

# ---- the run directory: never two writers, never replaced by accident
R=(train --data "$W/corpus.txt" --quiet "${SMALL[@]}")
"$MOE" "${R[@]}" --out "$W/own" --steps 3 || fail "own: first run"
cp "$W/own/model.safetensors" "$W/own.model"
expect_error "a new run over a run" "already holds a run (model.safetensors); continue it with --resume, or start over with --overwrite" \
    -- "$MOE" "${R[@]}" --out "$W/own" --steps 2
checks=$((checks + 1))
cmp -s "$W/own.model" "$W/own/model.safetensors" || fail "a refused run changed the checkpoint"
checks=$((checks + 1))
"$MOE" "${R[@]}" --out "$W/own" --steps 2 --resume --overwrite > /dev/null 2>&1
[ $? -eq 2 ] || fail "--resume with --overwrite: not a usage error"
"$MOE" "${R[@]}" --out "$W/own" --steps 2 --overwrite || fail "--overwrite failed"
checks=$((checks + 1))
[ "$(steps_in "$W/own/metrics.jsonl")" -eq 2 ] && [ "$(grep -c '"event"' "$W/own/metrics.jsonl")" -eq 1 ] \
    || fail "--overwrite kept the old records: $(cat "$W/own/metrics.jsonl")"
# a second trainer on a running run is refused with the holder's PID; eval of it stays allowed;
# a killed holder leaves no lock behind
"$MOE" "${R[@]}" --out "$W/busy" --steps 100000 --set ckpt_every=1 > /dev/null 2>&1 &
holder=$!
for _ in $(seq 100); do [ -f "$W/busy/model.safetensors" ] && break; sleep 0.1; done
expect_error "a second trainer" "run directory '$W/busy' is in use: process $holder is training there" \
    -- "$MOE" "${R[@]}" --out "$W/busy" --steps 100000 --resume
expect_error "a second new run" "is in use: process $holder" -- "$MOE" "${R[@]}" --out "$W/busy" --steps 5 --overwrite
checks=$((checks + 1))
"$MOE" eval --ckpt "$W/busy" --data "$W/corpus.txt" --max-batches 1 > /dev/null 2>&1 || fail "eval of a running run failed"
kill -9 $holder
wait $holder 2> /dev/null
checks=$((checks + 1))
"$MOE" "${R[@]}" --out "$W/busy" --resume --stop-after 1 || fail "a resume after the holder was killed failed"

# every start and resume is a typed record of metrics.jsonl naming the data; a resume on other
# data warns and says so there too
head -c 4000 "$W/corpus.txt" > "$W/other.txt"
"$MOE" "${R[@]}" --out "$W/own" --steps 3 --resume --data "$W/corpus.txt,$W/other.txt" > /dev/null 2> "$W/err" \
    || fail "resume with other data failed: $(cat "$W/err")"
checks=$((checks + 2))
grep -q "warning: resuming with other training data: the run was trained on the first .* of $W/corpus.txt; it goes on with" "$W/err" \
    || fail "resume with other data: no warning: $(cat "$W/err")"
python3 - "$W/own/metrics.jsonl" "$W/corpus.txt" <<'EOF' || fail "resume with other data: not on record"
import json, sys
ev = [r for r in map(json.loads, open(sys.argv[1])) if "event" in r]
assert [e["event"] for e in ev] == ["start", "resume"], ev
assert ev[0]["step"] == 0 and ev[1]["step"] == 2 and ev[1]["data_changed"] is True, ev
assert sys.argv[2] in ev[1]["data_before"] and "other.txt" in ev[1]["data"] and "other.txt" not in ev[0]["data"], ev
EOF
# binary data given as text is read, with a warning; eval says which part of the data it read
printf '\x1f\x8b\x08\x00' > "$W/data.gz" && cat "$W/corpus.txt" >> "$W/data.gz"
"$MOE" eval --ckpt "$W/own" --data "$W/data.gz" --max-batches 1 > "$W/out" 2> "$W/err" || fail "eval of gzip data failed"
checks=$((checks + 2))
grep -q "warning: '$W/data.gz' looks like gzip-compressed data, not text" "$W/err" || fail "no warning for gzip data: $(cat "$W/err")"
grep -q "^data: $W/data.gz: the first [0-9]* of its [0-9]* tokens ([0-9]* windows of 16)" "$W/out" || fail "eval does not say what it read: $(head -2 "$W/out")"
cp "$W/corpus.txt" "$W/corpus.txt.bin"
expect_error "a .bin without the shard magic" "not an llm.c token shard (magic" -- "$MOE" eval --ckpt "$W/own" --data "$W/corpus.txt.bin"

# the BLAS kernel: a generic one on a CPU with AVX2 is corrected (moe runs itself again with
# OPENBLAS_CORETYPE; MOE_TEST_BLAS_CORE plays OpenBLAS's misdetection), a user's own is kept with a
# warning; the kernel is in --version, the log header and the start record of metrics.jsonl
if grep -qw avx2 /proc/cpuinfo; then
    checks=$((checks + 3))
    MOE_TEST_BLAS_CORE=Prescott "$MOE" --version | grep -qE "kernel (Haswell|SkylakeX), .*OpenBLAS had chosen Prescott" \
        || fail "a generic kernel was not corrected: $(MOE_TEST_BLAS_CORE=Prescott "$MOE" --version 2>&1)"
    OPENBLAS_CORETYPE=Prescott "$MOE" --version > "$W/out" 2> "$W/err"
    grep -q "kernel Prescott" "$W/out" && grep -q "warning: OPENBLAS_CORETYPE=Prescott selects OpenBLAS's generic kernel" "$W/err" \
        || fail "a user's generic kernel: $(cat "$W/out" "$W/err")"
    MOE_TEST_BLAS_CORE=Prescott "$MOE" "${R[@]}" --out "$W/blas" --steps 1 --set tensorboard=false > /dev/null 2>&1
    grep -q '"blas":"OpenBLAS [0-9.]*, kernel \(Haswell\|SkylakeX\), [0-9]* threads"' "$W/blas/metrics.jsonl" \
        || fail "the start record does not name the corrected kernel: $(head -1 "$W/blas/metrics.jsonl")"
fi

# a resume refuses model keys that contradict the run (they were silently ignored), and takes
# training keys
expect_error "resume with a model key" "model key 'n_layer' = 3 contradicts the run's 2" \
    -- "$MOE" "${R[@]}" --out "$W/own" --steps 4 --resume --set n_layer=3
checks=$((checks + 1))
"$MOE" "${R[@]}" --out "$W/own" --steps 3 --resume --set lr=0.001 || fail "resume with a training key"

# ---- resume gives the same losses as an uninterrupted run
checks=$((checks + 1))
"$MOE" train --data "$W/corpus.txt" --out "$W/straight" --steps 8 "${SMALL[@]}" || fail "straight run failed"
"$MOE" train --data "$W/corpus.txt" --out "$W/split" --steps 8 --stop-after 4 "${SMALL[@]}" || fail "first half failed"
"$MOE" train --data "$W/corpus.txt" --out "$W/split" --steps 8 --resume "${SMALL[@]}" || fail "resume failed"
losses "$W/straight/metrics.jsonl" > "$W/a"
losses "$W/split/metrics.jsonl" > "$W/b"
[ "$(wc -l < "$W/a")" -eq 8 ] || fail "straight run has $(wc -l < "$W/a") records, expected 8"
cmp -s "$W/a" "$W/b" || { fail "resumed losses differ from the straight run"; diff "$W/a" "$W/b" >&2; }
cmp -s "$W/straight/model.safetensors" "$W/split/model.safetensors" || fail "resumed final weights differ"
checks=$((checks + 1)) # a plain --resume keeps the run's keys (training ones too: steps, lr, batch, ...)
"$MOE" train --data "$W/corpus.txt" --out "$W/plain" --steps 8 --stop-after 4 "${SMALL[@]}" || fail "plain: first half failed"
"$MOE" train --data "$W/corpus.txt" --out "$W/plain" --resume --quiet || fail "plain: resume with no keys failed"
losses "$W/plain/metrics.jsonl" > "$W/b"
cmp -s "$W/a" "$W/b" || { fail "a plain --resume differs from the straight run"; diff "$W/a" "$W/b" >&2; }

# ---- determinism and grad accumulation
checks=$((checks + 1))
"$MOE" train --data "$W/corpus.txt" --out "$W/again" --steps 8 "${SMALL[@]}" || fail "second run failed"
losses "$W/again/metrics.jsonl" > "$W/c"
cmp -s "$W/a" "$W/c" || fail "two runs with the same seed differ"
checks=$((checks + 1)) # activation recompute changes memory, not one bit of the results
"$MOE" train --data "$W/corpus.txt" --out "$W/recompute" --steps 8 "${SMALL[@]}" --set recompute=1 \
    || fail "recompute run failed"
losses "$W/recompute/metrics.jsonl" > "$W/r"
cmp -s "$W/a" "$W/r" || { fail "recompute=1 losses differ from the stored-activation run"; diff "$W/a" "$W/r" >&2; }
checks=$((checks + 1))
"$MOE" train --data "$W/corpus.txt" --out "$W/accum" --steps 3 "${SMALL[@]}" --set grad_accum=2 --set eval_every=0 \
    || fail "grad_accum run failed"
[ "$(steps_in "$W/accum/metrics.jsonl")" -eq 3 ] || fail "grad_accum run: wrong number of records"

# ---- the run directory is created with its parents; a file in its way is an error
checks=$((checks + 1))
"$MOE" train --data "$W/corpus.txt" --out "$W/new/nested/run" --steps 1 "${SMALL[@]}" || fail "nested --out failed"
[ -f "$W/new/nested/run/model.safetensors" ] || fail "nested --out: no checkpoint"
touch "$W/plainfile"
expect_error "out is a file" "cannot create run directory" -- "$MOE" train --data "$W/corpus.txt" --out "$W/plainfile" \
    --steps 1 "${SMALL[@]}"

# ---- the loss falls
checks=$((checks + 1))
python3 - "$W/straight/metrics.jsonl" <<'EOF' || fail "loss did not fall"
import json, sys
r = [x for x in map(json.loads, open(sys.argv[1])) if "event" not in x]
assert r[-1]["loss"] < r[0]["loss"] - 0.25, (r[0]["loss"], r[-1]["loss"])  # from ln 256; the corpus is this repository's sources, so it changes
for k in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "aux_loss", "z_loss"):
    assert all(k in x for x in r), k
assert "val_loss" in r[3] and "val_loss" in r[7]
assert all(len(m["load"]) == 4 and "maxvio" in m and "dropped_frac" in m for x in r for m in x["moe"])
EOF

# ---- sample and eval
checks=$((checks + 1))
out=$("$MOE" sample --ckpt "$W/straight" --prompt "int " --tokens 20 --seed 3) || fail "sample failed"
[ ${#out} -ge 20 ] || fail "sample output too short: '$out'"
out2=$("$MOE" sample --ckpt "$W/straight" --prompt "int " --tokens 20 --seed 3)
[ "$out" = "$out2" ] || fail "sampling with the same seed differs"
"$MOE" sample --ckpt "$W/straight" --prompt "x" --tokens 5 --temperature 0 > /dev/null || fail "greedy sample failed"
"$MOE" sample --ckpt "$W/straight/model.safetensors" --prompt "x" --tokens 5 --top-k 3 --top-p 0.5 > /dev/null \
    || fail "sample from a file path failed"
checks=$((checks + 1))
"$MOE" eval --ckpt "$W/straight" --data "$W/corpus.txt" --json --max-batches 2 > "$W/eval.json" || fail "eval failed"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["loss"] > 0 and r["tokens"] == 2*8*16 and len(r["layers"]) == 2' \
    "$W/eval.json" || fail "eval --json output wrong: $(cat "$W/eval.json")"

# ---- routing methods end to end: each trains, samples and reports routing; with noise,
#      jitter and random routing, a resumed run still equals the uninterrupted one
for variant in "routing=noisy_topk importance_loss_coef=0.1 load_loss_coef=0.1 jitter_eps=0.05" \
               "routing=expert_choice" "routing=soft" \
               "router_score=sigmoid bias_update_rate=0.01 seq_aux_loss_coef=0.001 random_routing=true route_scale=2" \
               "expert_counts=4,8 n_shared=1 top_k=1 moe_layers=all"; do
    checks=$((checks + 1))
    sets=()
    for kv in $variant; do sets+=(--set "$kv"); done
    name=$(echo "$variant" | cut -d' ' -f1 | tr '=,' '__')
    "$MOE" train --data "$W/corpus.txt" --out "$W/v_$name" --steps 6 "${SMALL[@]}" "${sets[@]}" || fail "$variant: training failed"
    "$MOE" train --data "$W/corpus.txt" --out "$W/vs_$name" --steps 6 --stop-after 3 "${SMALL[@]}" "${sets[@]}" || fail "$variant: first half failed"
    "$MOE" train --data "$W/corpus.txt" --out "$W/vs_$name" --steps 6 --resume "${SMALL[@]}" "${sets[@]}" || fail "$variant: resume failed"
    cmp -s "$W/v_$name/model.safetensors" "$W/vs_$name/model.safetensors" || fail "$variant: resumed weights differ"
    "$MOE" sample --ckpt "$W/v_$name" --prompt "int" --tokens 8 > /dev/null || fail "$variant: sample failed"
    "$MOE" route --ckpt "$W/v_$name" --data "$W/corpus.txt,$SRC/README.md" --max-batches 1 > "$W/route.txt" || fail "$variant: route failed"
    grep -q "I(expert; class)" "$W/route.txt" || fail "$variant: route report lacks the class table"
done
# aux-loss-free bias: after each step b_e moves by rate * sign(mean load - load_e); it is
# reported in metrics.jsonl and saved in the checkpoint
checks=$((checks + 1))
python3 - "$W/v_router_score_sigmoid/metrics.jsonl" <<'EOF' || fail "aux-loss-free bias update wrong"
import json, sys
r = [x for x in map(json.loads, open(sys.argv[1])) if "event" not in x]
prev = [[0.0] * len(m["load"]) for m in r[0]["moe"]]
for x in r:
    for i, m in enumerate(x["moe"]):
        mean = sum(m["load"]) / len(m["load"])
        for e, (b, ld) in enumerate(zip(m["bias"], m["load"])):
            want = prev[i][e] + 0.01 * ((ld < mean) - (ld > mean))
            assert abs(b - want) < 1e-6, (x["step"], i, e, b, want)
        prev[i] = m["bias"]
assert any(abs(b) > 0 for m in r[-1]["moe"] for b in m["bias"])
EOF
grep -q e_score_correction_bias "$W/v_router_score_sigmoid/model.safetensors" || fail "bias not in the checkpoint"

# ---- llm.c token shards
python3 - "$W" <<'EOF'
import struct, sys, random
w = sys.argv[1]
random.seed(0)
def shard(path, toks, magic=20240520, version=1, count=None):
    hdr = [0] * 256
    hdr[0], hdr[1], hdr[2] = magic, version, len(toks) if count is None else count
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", *hdr))
        f.write(struct.pack("<%dH" % len(toks), *toks))
toks = [random.randrange(200) for _ in range(3000)]
shard(w + "/good.bin", toks)
shard(w + "/badmagic.bin", toks, magic=12345)
shard(w + "/badversion.bin", toks, version=7)
shard(w + "/badcount.bin", toks, count=5000)
shard(w + "/bigtok.bin", toks[:1500] + [60000] + toks[1500:])    # token 1500: byte 1024 + 2 * 1500
shard(w + "/allbig.bin", [60000 + i % 7 for i in range(3000)])    # any window is outside the vocabulary
open(w + "/short.bin", "wb").write(struct.pack("<3i", 20240520, 1, 10))
EOF
checks=$((checks + 1))
"$MOE" train --data "$W/good.bin" --out "$W/shard" --steps 2 "${SMALL[@]}" || fail "training on a token shard failed"

# ---- bad input: a specific message, a non-zero exit, no crash
cp "$W/straight/model.safetensors" "$W/model.orig"
cp "$W/straight/state.bin" "$W/state.orig"
: > "$W/empty.txt"
head -c 10 "$W/corpus.txt" > "$W/tiny.txt"
echo '{"n_embd": 32,' > "$W/malformed.json"
echo '{"n_embd": 32, "bogus_key": 1}' > "$W/unknown.json"
echo '{"n_embd": "wide"}' > "$W/wrongtype.json"
head -c 5000 "$W/straight/model.safetensors" > "$W/trunc.safetensors"
python3 -c '
import json, struct, sys
h = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + b"\0" * 8)' "$W/foreign.safetensors"
head -c 100 /dev/urandom > "$W/random.safetensors"
mkdir -p "$W/corrupt" && cp "$W/straight/model.safetensors" "$W/corrupt/" && cp "$W/straight/state.bin" "$W/corrupt/"
printf '\x01' | dd of="$W/corrupt/state.bin" bs=1 seek=200 conv=notrunc status=none

# progress: plain lines with the ETA when stdout is not a terminal, every --log-every steps;
# nothing with --quiet; on a terminal (script(1) gives one) a bar with the ETA redrawn in place
P=(train --data "$W/corpus.txt" --steps 12)
for a in "${SMALL[@]}"; do [ "$a" = --quiet ] || P+=("$a"); done
"$MOE" "${P[@]}" --out "$W/prog" --log-every 5 > "$W/prog.out" || fail "train --log-every"
checks=$((checks + 1))
[ "$(grep '^step' "$W/prog.out" | cut -c6-11 | tr -d ' ' | tr '\n' ,)" = 4,5,8,10,12, ] \
    || fail "--log-every 5 over 12 steps, eval every 4: want lines at 4,5,8,10,12, got $(grep '^step' "$W/prog.out" | cut -c1-12 | tr '\n' ' ')"
checks=$((checks + 1))
grep -q "^step      5/12 .* | eta [0-9]" "$W/prog.out" || fail "no ETA on a plain progress line: $(cat "$W/prog.out")"
"$MOE" "${P[@]}" --out "$W/prog" --quiet --overwrite > "$W/prog.quiet" || fail "train --quiet"
checks=$((checks + 1))
[ -s "$W/prog.quiet" ] && fail "--quiet printed: $(cat "$W/prog.quiet")"
if command -v script > /dev/null; then
    checks=$((checks + 1))
    script -qec "$MOE ${P[*]} --out $W/prog_tty --set log_every=100" /dev/null > "$W/prog.tty" 2>&1 || fail "train on a tty"
    grep -q "\] 12/12 100% | loss [0-9.]* | [0-9]* tok/s | [0-9]*s elapsed, ETA 0s" "$W/prog.tty" \
        && [ "$(tr -cd '\r' < "$W/prog.tty" | wc -c)" -ge 2 ] || fail "no progress bar on a terminal: $(od -c "$W/prog.tty" | head)"
fi

T=(train --out "$W/bad" --steps 1 --quiet)

# --device and --dtype (not config keys). A bad value is a usage error (exit 2); an option the
# CUDA backend does not take yet is named before any GPU is looked for, so these run anywhere
expect_exit() { # NAME CODE CMD...: the command exits with CODE
    local name=$1 code=$2
    shift 2
    checks=$((checks + 1))
    "$@" > "$W/out" 2> "$W/err"
    local rc=$?
    [ $rc -eq "$code" ] || fail "$name: exit $rc, expected $code: $(cat "$W/err")"
}
D=("$MOE" "${T[@]}" --data "$W/corpus.txt")
expect_error "bad --device" "'gpu': expected cpu, cuda or cuda:N" -- "${D[@]}" --device gpu
expect_exit "bad --device exits 2" 2 "${D[@]}" --device gpu
expect_error "bad device number" "device number must be an integer" -- "${D[@]}" --device cuda:x
expect_error "bad --dtype" "'fp16': expected fp32 or bf16" -- "${D[@]}" --device cuda --dtype fp16
expect_error "bf16 training on the CPU" "training on the CPU computes in fp32" -- "${D[@]}" --dtype bf16
expect_exit "bf16 training on the CPU exits 2" 2 "${D[@]}" --dtype bf16
[ ! -e "$W/bad" ] || fail "a refused bf16 training made its run directory"
# an imported config with an absurd size names the reason once (the wrapped error is not garbled)
mkdir -p "$W/hf_absurd"
printf '{"model_type": "mixtral", "hidden_size": 40960000, "intermediate_size": 14336, "num_hidden_layers": 2,
 "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
 "vocab_size": 32000, "rms_norm_eps": 1e-5}\n' > "$W/hf_absurd/config.json"
expect_error "absurd HF config" "gives a config moe cannot use: config: 'n_embd' = 4.096e+07 is out of range" \
    -- "$MOE" import --from "$W/hf_absurd" --out "$W/hf_absurd_out"
checks=$((checks + 1))
[ "$(grep -o "gives a config moe cannot use" "$W/err" | wc -l)" = 1 ] || fail "absurd HF config: the prefix repeats: $(cat "$W/err")"

# an unknown key gets the nearest one
expect_error "a misspelt key" "unknown config key 'checkpoint_every' (did you mean 'ckpt_every'?)" \
    -- "$MOE" train --data "$W/corpus.txt" --out "$W/typo" --set checkpoint_every=10
echo '{"n_expert": 4}' > "$W/typo.json"
expect_error "a misspelt key in a file" "unknown config key 'n_expert' (did you mean 'n_experts'?)" \
    -- "$MOE" train --data "$W/corpus.txt" --out "$W/typo" --config "$W/typo.json"
# every command writing to --out makes its missing parents, as train does
checks=$((checks + 1))
"$MOE" export --ckpt "$W/own" --out "$W/deep/hf/own" > /dev/null && "$MOE" import --from "$W/deep/hf/own" --out "$W/deep2/imp" > /dev/null \
    && printf '1 2 3' > "$W/tok3.txt" && "$MOE" logits --ckpt "$W/own" --tokens "$W/tok3.txt" --out "$W/deep3/l/out.bin" \
    && [ -s "$W/deep3/l/out.bin" ] || fail "export/import/logits into missing parent directories"

# every option reaches the GPU, none refused by name: where none is, the error is about the device
for opt in routing=expert_choice routing=noisy_topk routing=soft random_routing=1 jitter_eps=0.01 recompute=1 \
    expert_counts=8,8,8,16; do
    checks=$((checks + 1))
    "${D[@]}" --device cuda --set "$opt" > /dev/null 2> "$W/err"
    rc=$?
    [ $rc -eq 0 ] || { grep -qE "this build has no CUDA|no usable CUDA device" "$W/err" && ! grep -q "not on the GPU" "$W/err"; } \
        || fail "$opt on CUDA: exit $rc, $(cat "$W/err")"
done
# --device cuda where it cannot run (a build without CUDA, a machine without a usable GPU) says
# so: never a crash, never a run directory. Where a GPU is, it trains (test_cuda_train.sh).
checks=$((checks + 1))
"${D[@]}" --device cuda > "$W/out" 2> "$W/err"
rc=$?
[ $rc -eq 0 ] || { grep -qE "this build has no CUDA|no usable CUDA device" "$W/err" && [ $rc -eq 1 ] && [ ! -e "$W/bad" ]; } \
    || fail "--device cuda without a GPU: exit $rc, $(cat "$W/err")"
# --device cpu --dtype fp32 is the default, to the byte
"$MOE" eval --ckpt "$W/straight" --data "$W/corpus.txt" --json --max-batches 2 --device cpu --dtype fp32 > "$W/eval_cpu.json" \
    || fail "eval --device cpu failed"
cmp -s "$W/eval.json" "$W/eval_cpu.json" || fail "eval --device cpu --dtype fp32 differs from eval"
expect_error "missing data" "cannot open '$W/nope.txt'" -- "$MOE" "${T[@]}" --data "$W/nope.txt"
expect_error "empty data" "empty file" -- "$MOE" "${T[@]}" --data "$W/empty.txt"
mkdir -p "$W/emptydir"
expect_error "a directory without files" "directory '$W/emptydir' holds no data files" -- "$MOE" "${T[@]}" --data "$W/emptydir"
expect_error "a pattern without matches" "no file matches '$W/nothing*.bin'" -- "$MOE" "${T[@]}" --data "$W/nothing*.bin"
expect_error "data shorter than a sequence" "fewer than" -- "$MOE" "${T[@]}" --data "$W/tiny.txt" --set val_frac=0.5
expect_error "val data shorter than a sequence" "validation data has" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --val-data "$W/tiny.txt"
expect_error "malformed config" "malformed JSON" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --config "$W/malformed.json"
expect_error "unknown config key" "unknown config key 'bogus_key'" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --config "$W/unknown.json"
expect_error "wrong config type" "'n_embd' needs an integer" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --config "$W/wrongtype.json"
printf '{"seed": 9007199254740993}' > "$W/bigseed.json"
expect_error "seed beyond 2^53 as a JSON number" "key 'seed' = 9007199254740992 is beyond 2^53" -- \
    "$MOE" "${T[@]}" --data "$W/corpus.txt" --config "$W/bigseed.json"
# a seed beyond 2^53 is kept exactly in the checkpoint (as a JSON string) and resumes
B=(train --data "$W/corpus.txt" --out "$W/bigseed" --quiet --set seq_len=8 --set n_embd=8 --set n_layer=1 --set n_head=2
   --set n_experts=2 --set top_k=1 --set expert_hidden=8 --set batch_size=1 --set eval_batches=1)
"$MOE" "${B[@]}" --steps 1 --set seed=6148914691236517210 && "$MOE" "${B[@]}" --steps 2 --resume || fail "big seed: train, resume"
checks=$((checks + 1))
ckpt_meta "$W/bigseed/model.safetensors" config | grep -qF '"seed":"6148914691236517210"' \
    || fail "big seed: not kept exactly in the checkpoint"
checks=$((checks + 1)) # a checkpoint written before, with the seed as a JSON number, still loads
edit_meta "$W/bigseed/model.safetensors" "$W/oldseed.safetensors" \
    "meta['config'] = meta['config'].replace('\"seed\":\"6148914691236517210\"', '\"seed\":6148914691236517210')"
ckpt_meta "$W/oldseed.safetensors" config | grep -qF '"seed":6148914691236517210' || fail "big seed: could not write an old-style checkpoint"
"$MOE" eval --ckpt "$W/oldseed.safetensors" --data "$W/corpus.txt" --max-batches 1 > /dev/null || fail "big seed: an old-style checkpoint does not load"
printf '{"n_embd": 8}\0{"n_layer": 1}' > "$W/nul.json"
expect_error "NUL byte in a config" "holds a NUL byte" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --config "$W/nul.json"
python3 -c "print('{\"moe_layers\": \"' + ','.join(['0'] * 100) + '\"}')" > "$W/longval.json"
expect_error "config string longer than any value" "key 'moe_layers' has a value of 199 characters" -- \
    "$MOE" "${T[@]}" --data "$W/corpus.txt" --config "$W/longval.json"
expect_error "missing config file" "cannot read config" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --config "$W/none.json"
expect_error "unknown --set key" "unknown config key 'n_embed'" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set n_embed=3
expect_error "heads do not divide" "does not divide n_embd" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set n_head=3
expect_error "odd head size" "must be even" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set n_embd=12 --set n_head=4
expect_error "K > E" "top_k = 9 exceeds n_experts = 8" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set top_k=9
expect_error "negative value" "out of range" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set n_layer=-1
expect_error "absurd value" "out of range" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set lr=1e9
expect_error "bad moe_layers" "moe_layers" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set moe_layers=0,9
expect_error "bad drop policy" "must be one of 'probability', 'position'" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set drop_policy=random
expect_error "bad --steps" "--steps needs an integer" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --steps abc
expect_error "unknown flag" "unknown option '--bogus'" -- "$MOE" train --bogus
expect_error "shard bad magic" "not an llm.c token shard" -- "$MOE" "${T[@]}" --data "$W/badmagic.bin"
expect_error "shard bad version" "version 7 is not supported" -- "$MOE" "${T[@]}" --data "$W/badversion.bin"
expect_error "shard count mismatch" "header says 5000 tokens" -- "$MOE" "${T[@]}" --data "$W/badcount.bin"
expect_error "shard truncated header" "truncated" -- "$MOE" "${T[@]}" --data "$W/short.bin"
# a token outside the vocabulary: when its batch is read (no step taken), or up front with --check-data
expect_error "vocab mismatch" "step 1: training data: '$W/allbig.bin': token 6000" -- "$MOE" "${T[@]}" --data "$W/allbig.bin" --overwrite
expect_error "vocab mismatch, its place" "is outside the model's vocabulary (vocab_size 256)" -- "$MOE" "${T[@]}" --data "$W/allbig.bin" --overwrite
[ ! -e "$W/bad/model.safetensors" ] || fail "a run whose first batch is bad wrote a checkpoint"
rm -rf "$W/bad"
expect_error "--check-data" "'$W/bigtok.bin': token 60000 at byte offset 4024 (token 1500 of the file) is outside" \
    -- "$MOE" "${T[@]}" --data "$W/bigtok.bin" --check-data
expect_error "resume without checkpoint" "cannot open" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --resume
expect_error "corrupt state" "checksum mismatch" -- "$MOE" train --data "$W/corpus.txt" --out "$W/corrupt" --steps 9 --resume --quiet
expect_error "truncated checkpoint" "truncated" -- "$MOE" sample --ckpt "$W/trunc.safetensors" --prompt hi
expect_error "foreign checkpoint" "not a moe checkpoint" -- "$MOE" sample --ckpt "$W/foreign.safetensors" --prompt hi
expect_error "random checkpoint" "safetensors" -- "$MOE" eval --ckpt "$W/random.safetensors" --data "$W/corpus.txt"
expect_error "missing checkpoint" "cannot open" -- "$MOE" sample --ckpt "$W/nothing" --prompt hi
expect_error "empty prompt" "prompt is empty" -- "$MOE" sample --ckpt "$W/straight" --prompt ""
expect_error "bad top-p" "--top-p needs a number" -- "$MOE" sample --ckpt "$W/straight" --prompt hi --top-p 2
expect_error "eval vocab mismatch" "'$W/allbig.bin': token 6000" -- "$MOE" eval --ckpt "$W/straight" --data "$W/allbig.bin"
expect_error "resume with a broken key" "must be one of 'probability', 'position'" -- "$MOE" train --data "$W/corpus.txt" --out "$W/straight" --steps 9 --resume --set drop_policy=x
expect_error "unknown command" "unknown command 'fly'" -- "$MOE" fly
expect_error "bad routing" "must be one of 'topk', 'noisy_topk', 'expert_choice', 'soft'" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set routing=hash
expect_error "expert_counts length" "has 1 entries but there are 4 MoE layers" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set expert_counts=8
expect_error "expert_counts below K" "below top_k" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set expert_counts=8,8,1,8
expect_error "noisy K = E" "noisy_topk needs top_k < n_experts" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set routing=noisy_topk --set top_k=8
expect_error "random routing K" "random_routing needs" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set random_routing=true --set top_k=1
expect_error "bias with expert choice" "bias_update_rate" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set routing=expert_choice --set bias_update_rate=0.001
# checkpoints whose metadata was edited: another format version; a config that disagrees with
# the tensors (the checksum covers only the data, so the shape check must catch it)
edit_meta "$W/straight/model.safetensors" "$W/v2.safetensors" "meta['format_version'] = '2'"
expect_error "checkpoint version" "checkpoint format version '2' is not supported" -- "$MOE" sample --ckpt "$W/v2.safetensors" --prompt hi
edit_meta "$W/straight/model.safetensors" "$W/shape.safetensors" "c = json.loads(meta['config']); c['n_embd'] = 32; c['n_head'] = 2; meta['config'] = json.dumps(c)"
expect_error "shapes vs config" "the config needs F32" -- "$MOE" eval --ckpt "$W/shape.safetensors" --data "$W/corpus.txt"
edit_meta "$W/straight/model.safetensors" "$W/absurd.safetensors" "c = json.loads(meta['config']); c['n_layer'] = -3; meta['config'] = json.dumps(c)"
expect_error "absurd config in a checkpoint" "n_layer" -- "$MOE" eval --ckpt "$W/absurd.safetensors" --data "$W/corpus.txt"
expect_error "absurd --set" "n_experts" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set n_experts=100000000
expect_error "negative lr" "lr" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set lr=-1
expect_error "NaN value" "lr" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set lr=nan
expect_error "bad policy" "must be one of 'stop', 'skip'" -- "$MOE" "${T[@]}" --data "$W/corpus.txt" --set nonfinite_policy=retry
# a path too long: a status that says so (the library's "path too long: ...", or the system's
# "File name too long" kept at the end of a message that names the path), never a crash or a
# cut path that names another file
L="$W/$(printf 'd%.0s' $(seq 5000))"
expect_error "--out too long" "too long" -- "$MOE" train --out "$L" --steps 1 --quiet --data "$W/corpus.txt"
expect_error "--ckpt too long" "too long" -- "$MOE" eval --ckpt "$L" --data "$W/corpus.txt"
expect_error "export --out too long" "path too long: '$W/ddd" -- "$MOE" export --ckpt "$W/straight" --out "$L"
# a prompt that is not UTF-8 is bytes like any other for a byte-level model: it samples
checks=$((checks + 1))
"$MOE" sample --ckpt "$W/straight" --prompt "$(printf '\xff\xfe\x80abc')" --tokens 4 --seed 1 > "$W/bytes.out" 2>&1 \
    || fail "a non-UTF-8 prompt: $(cat "$W/bytes.out")"
checks=$((checks + 1))
cmp -s "$W/model.orig" "$W/straight/model.safetensors" && cmp -s "$W/state.orig" "$W/straight/state.bin" \
    || fail "a failed run changed the existing checkpoint"

finish test_cli
