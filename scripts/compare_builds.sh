#!/usr/bin/env bash
# compare_builds.sh — proves that two builds of `moe` behave bit for bit alike (for a refactoring
# that must not change results): both binaries run the same commands with the same seed and
# thread count, and every output is compared byte for byte.
#
#   1. training, three configs, STEPS (20) steps each:
#        a  the default model (batch 4, eval every 10, warmup 5),
#        b  mixed dense/MoE (moe_layers=0,2), a shared expert, the aux-loss-free bias,
#           ckpt_every=STEPS/2 (10) and keep_checkpoints=2 (checkpoints/step-*/ compared too),
#        c  --ep 2 under `mpirun -np 2` (expert shards), default model with the aux-free bias;
#      for each: metrics.jsonl with the timing fields (tokens_per_s, step_ms, a2a_s,
#      allreduce_s) removed, line by line, with the numbers compared as written (text, not
#      parsed floats); the set of checkpoint files, and each file byte for byte (model.safetensors,
#      state.bin, expert and state shards, checkpoints/); the TensorBoard event files record by
#      record with wall_time and the tokens/s value removed (and every CRC checked on both sides);
#   2. on each run's checkpoint, OLD and NEW on the SAME checkpoint (OLD's), and NEW on NEW's
#      against OLD on OLD's: exit status, stdout, stderr and written files of
#        a: eval --json, eval, route --json, route (two source files), sample --temperature 0,
#           sample with temperature/top-k/top-p and a seed, logits, export f32 and bf16;
#        b, c: eval --json, sample --temperature 0 (c: the sharded checkpoint on one process);
#   3. a checkpoint written by OLD resumes under NEW: OLD trains STEPS/2 of a STEPS-step run
#      (--stop-after), NEW --resume's it to the end; compared with OLD's uninterrupted run
#      (metrics without timing fields, every checkpoint file), for a, b and c;
#   4. the command line: `--help` of every command and a few bad inputs (exit status, stdout,
#      stderr); SKIP_CLI=1 leaves these out (for a refactoring that changes help texts on purpose).
# One line per comparison, "same" or "DIFFERENT: ..."; exits 1 if any differs (and keeps the
# work directory), 2 on bad usage.
#
# usage: scripts/compare_builds.sh OLD_MOE NEW_MOE [WORKDIR]
#   WORKDIR: where the runs go (kept); default a temporary directory, removed when all is same.
# environment:
#   DATA     training data, FILE[,FILE...]; default ../shared/data/tinyshakespeare.txt if it
#            exists, else the license texts in /usr/share/common-licenses (as scripts/quickstart.sh)
#   THREADS  OpenMP threads of one-process commands (--set threads, OMP_NUM_THREADS); default 2
#            (OMP_WAIT_POLICY defaults to passive: it changes no result, only how idle threads wait)
#   MPI_THREADS  threads per rank of the ep 2 runs; default 1 (2 ranks x 1 = 2 cores)
#   STEPS    steps per training run; default 20 (the resume test stops after STEPS/2)
#   PROMPT   sampling prompt; default "ROMEO:"
#   MPIRUN   mpirun command; default mpirun. Without it, the ep 2 comparisons are reported as
#            DIFFERENT (not run) unless NO_MPI=1 is set, which skips them.
set -uo pipefail
export LC_ALL=C

usage() { echo "usage: $0 OLD_MOE NEW_MOE [WORKDIR]" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] || usage
OLD=$(readlink -f -- "$1") && [ -x "$OLD" ] && [ -f "$OLD" ] || { echo "$0: '$1' is not an executable" >&2; exit 2; }
NEW=$(readlink -f -- "$2") && [ -x "$NEW" ] && [ -f "$NEW" ] || { echo "$0: '$2' is not an executable" >&2; exit 2; }

THREADS=${THREADS:-2}
MPI_THREADS=${MPI_THREADS:-1}
STEPS=${STEPS:-20}
[[ $STEPS =~ ^[0-9]+$ ]] && [ "$STEPS" -ge 2 ] || { echo "$0: STEPS must be a number >= 2" >&2; exit 2; }
HALF=$((STEPS / 2))
PROMPT=${PROMPT:-ROMEO:}
export OMP_NUM_THREADS=$THREADS
# idle OpenMP threads sleep instead of spinning: the same results (the thread count fixes how work
# is split), but runs that share the cores with other work take seconds, not minutes
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
if [ -z "${DATA:-}" ]; then
    shakespeare="$(cd "$(dirname "$0")/.." && pwd)/../shared/data/tinyshakespeare.txt"
    if [ -f "$shakespeare" ]; then
        DATA=$shakespeare
    else
        DATA=$(find /usr/share/common-licenses -maxdepth 1 -type f | sort | paste -sd, -)
    fi
fi
IFS=, read -r -a DATA_FILES <<< "$DATA"
for f in "${DATA_FILES[@]}"; do [ -f "$f" ] || { echo "$0: data file '$f' not found" >&2; exit 2; }; done
# absolute paths: commands run in per-run directories
DATA=$(for f in "${DATA_FILES[@]}"; do readlink -f -- "$f"; done | paste -sd, -)

if [ $# -eq 3 ]; then
    W=$(mkdir -p -- "$3" && cd -- "$3" && pwd) || { echo "$0: cannot use '$3'" >&2; exit 2; }
    KEEP=1
else
    W=$(mktemp -d "${TMPDIR:-/tmp}/compare_builds.XXXXXX")
    KEEP=0
fi
rm -rf "$W/old" "$W/new" "$W/cross" "$W/cmd" "$W/data" "$W/py"
mkdir -p "$W/old" "$W/new" "$W/cross" "$W/cmd" "$W/data" "$W/py"

START=$SECONDS
NCMP=0
NDIFF=0
# report LABEL [MESSAGE]: no message = same
report() {
    NCMP=$((NCMP + 1))
    if [ -z "${2:-}" ]; then
        printf '%-72s same\n' "$1"
    else
        NDIFF=$((NDIFF + 1))
        printf '%-72s DIFFERENT: %s\n' "$1" "$2"
    fi
}

# ---------------------------------------------------------------- helpers (Python 3, stdlib)
cat > "$W/py/metrics_cmp.py" <<'PY'
# metrics_cmp.py A B: metrics.jsonl line by line without the timing fields; numbers are kept as
# the text written (parse_float/parse_int=str), so a change of formatting shows too.
import json, sys
TIMING = {"tokens_per_s", "step_ms", "a2a_s", "allreduce_s"}
class Obj(list):  # a JSON object: its (key, value) pairs in order, timing keys left out
    pass
hook = lambda pairs: Obj((k, v) for k, v in pairs if k not in TIMING)
def load(path, who):
    data = open(path, "rb").read()
    if data and not data.endswith(b"\n"):
        sys.exit(f"{who}: last line not terminated")
    out = []
    for n, line in enumerate(data.split(b"\n")[:-1], 1):
        try:
            out.append(json.loads(line, object_pairs_hook=hook, parse_float=str, parse_int=str))
        except ValueError as e:
            sys.exit(f"{who} line {n} is not JSON: {e}")
    return out
def where(x, y, path):  # the first place where x and y differ
    if isinstance(x, Obj) and isinstance(y, Obj):
        kx, ky = [k for k, _ in x], [k for k, _ in y]
        if kx != ky:
            return f"{path or 'record'}: keys {kx} vs {ky}"
        for (k, vx), (_, vy) in zip(x, y):
            if vx != vy:
                return where(vx, vy, f"{path}.{k}" if path else k)
    elif isinstance(x, list) and isinstance(y, list) and type(x) == type(y):
        if len(x) != len(y):
            return f"{path}: {len(x)} entries vs {len(y)}"
        for i, (vx, vy) in enumerate(zip(x, y)):
            if vx != vy:
                return where(vx, vy, f"{path}[{i}]")
    return f"{path}: {json.dumps(x)} vs {json.dumps(y)}"
a, b = load(sys.argv[1], "OLD"), load(sys.argv[2], "NEW")
for n, (x, y) in enumerate(zip(a, b), 1):
    if x != y:
        sys.exit(f"line {n} (step {dict(x).get('step', '?')}): {where(x, y, '')}"[:300])
if len(a) != len(b):
    sys.exit(f"{len(a)} records vs {len(b)}")
if not a:
    sys.exit("no records")
PY
cat > "$W/py/tb_cmp.py" <<'PY'
# tb_cmp.py DIR_A DIR_B: the TensorBoard event files of two runs, record by record, without the
# Event's wall_time and without the values whose tag ends in a timing name; each record's two
# masked CRC-32C are checked on both sides (they cannot be compared: wall_time is inside).
import os, struct, sys
TIMING = {b"tokens_per_s", b"step_ms", b"a2a_s", b"allreduce_s"}
T = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    T.append(c)
def masked_crc(b):
    c = 0xFFFFFFFF
    for x in b:
        c = T[(c ^ x) & 0xFF] ^ (c >> 8)
    c ^= 0xFFFFFFFF
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF
def varint(b, i):
    x = s = 0
    while True:
        c = b[i]; i += 1; x |= (c & 0x7F) << s; s += 7
        if c < 0x80:
            return x, i
def fields(b):
    i, out = 0, []
    while i < len(b):
        key, i = varint(b, i)
        f, wt = key >> 3, key & 7
        if wt == 0:
            _, j = varint(b, i); v = b[i:j]; i = j
        elif wt == 1:
            v = b[i:i + 8]; i += 8
        elif wt == 2:
            n, i = varint(b, i); v = b[i:i + n]; i += n
        elif wt == 5:
            v = b[i:i + 4]; i += 4
        else:
            raise ValueError(f"wire type {wt}")
        out.append((f, wt, v))
    if i != len(b):
        raise ValueError("truncated message")
    return out
def event(data):
    out = []
    for f, wt, v in fields(data):
        if f == 1 and wt == 1:              # wall_time
            continue
        if f == 5 and wt == 2:              # summary: drop timing values
            vals = []
            for g, wt2, val in fields(v):
                if g == 1 and wt2 == 2:
                    tag = [t for h, _, t in fields(val) if h == 1]
                    if tag and tag[0].rsplit(b"/", 1)[-1] in TIMING:
                        continue
                vals.append((g, wt2, val))
            out.append((f, wt, tuple(vals)))
        else:
            out.append((f, wt, v))
    return out
def step_of(ev):
    for f, wt, v in ev:
        if f == 2:
            return varint(v, 0)[0]
    return 0
def records(path):
    b, i, out = open(path, "rb").read(), 0, []
    while i < len(b):
        if i + 12 > len(b):
            raise ValueError(f"{os.path.basename(path)}: torn record header at byte {i}")
        n = struct.unpack_from("<Q", b, i)[0]
        if struct.unpack_from("<I", b, i + 8)[0] != masked_crc(b[i:i + 8]):
            raise ValueError(f"{os.path.basename(path)}: bad length CRC at byte {i}")
        data = b[i + 12:i + 12 + n]
        if len(data) != n or i + 16 + n > len(b):
            raise ValueError(f"{os.path.basename(path)}: torn record at byte {i}")
        if struct.unpack_from("<I", b, i + 12 + n)[0] != masked_crc(data):
            raise ValueError(f"{os.path.basename(path)}: bad data CRC at byte {i}")
        out.append(event(data))
        i += 16 + n
    return out
def files(d):
    fs = [f for f in os.listdir(d) if f.startswith("events.out.tfevents.")]
    def key(f):
        p = f.split(".")
        return (int(p[-2]) if len(p) > 2 and p[-2].isdigit() else -1, f)
    return [os.path.join(d, f) for f in sorted(fs, key=key)]
try:
    fa, fb = files(sys.argv[1]), files(sys.argv[2])
    if len(fa) != len(fb) or not fa:
        sys.exit(f"{len(fa)} event files vs {len(fb)}")
    for k, (pa, pb) in enumerate(zip(fa, fb)):
        sa, sb = pa.split(".")[-2], pb.split(".")[-2]
        if sa != sb:
            sys.exit(f"event file {k}: first step {sa} vs {sb}")
        ra, rb = records(pa), records(pb)
        for n, (x, y) in enumerate(zip(ra, rb)):
            if x != y:
                sys.exit(f"event file {k} record {n} (step {step_of(x)} vs {step_of(y)}) differs")
        if len(ra) != len(rb):
            sys.exit(f"event file {k}: {len(ra)} records vs {len(rb)}")
except ValueError as e:
    sys.exit(str(e))
PY

cat > "$W/py/st_diff.py" <<'PY'
# st_diff.py A B: where two differing safetensors files differ (metadata keys, config keys,
# tensor names, dtypes, shapes, the first tensor whose bytes differ and its max |difference|)
import array, json, struct, sys
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    return h.pop("__metadata__", {}), h, b[8 + n:]
(ma, ha, da), (mb, hb, db) = load(sys.argv[1]), load(sys.argv[2])
out = []
for k in sorted(set(ma) | set(mb)):
    if ma.get(k) != mb.get(k):
        try:
            ca, cb = json.loads(ma[k]), json.loads(mb[k])
            keys = [c for c in ca if ca.get(c) != cb.get(c)] + [c for c in cb if c not in ca]
            out.append(f"metadata {k}: keys {keys} differ ({[ca.get(c) for c in keys]} vs {[cb.get(c) for c in keys]})")
        except Exception:
            out.append(f"metadata {k}: {str(ma.get(k))[:40]!r} vs {str(mb.get(k))[:40]!r}")
if list(ha) != list(hb):
    out.append(f"tensor names: {len(ha)} vs {len(hb)}, e.g. {sorted(set(ha) ^ set(hb))[:2]}")
diff = []
for name in sorted(set(ha) & set(hb), key=lambda t: ha[t]["data_offsets"][0]):
    ta, tb = ha[name], hb[name]
    if (ta["dtype"], ta["shape"]) != (tb["dtype"], tb["shape"]):
        out.append(f"{name}: {ta['dtype']}{ta['shape']} vs {tb['dtype']}{tb['shape']}")
        continue
    xa, xb = da[slice(*ta["data_offsets"])], db[slice(*tb["data_offsets"])]
    if xa != xb:
        d = ""
        if ta["dtype"] == "F32" and len(xa) == len(xb):
            fa, fb = array.array("f", xa), array.array("f", xb)
            d = f" (max |diff| {max(abs(u - v) for u, v in zip(fa, fb)):.3g})"
        diff.append(name + d)
if diff:
    out.append(f"{len(diff)} tensors differ, first {diff[0]}")
if not out:
    out.append("same tensors and metadata; the header's layout or padding differs")
print("; ".join(out)[:400])
PY

# why two files differ: for safetensors, where (st_diff.py); else cmp's first differing byte
whydiff() {
    local m=""
    case $1 in *.safetensors) m=$(python3 "$W/py/st_diff.py" "$1" "$2" 2> /dev/null) ;; esac
    [ -n "$m" ] && echo "$m" || cmp -- "$1" "$2" 2>&1 | head -n 1 | sed "s|$W/||g"
}

cat > "$W/py/firstdiff.py" <<'PY'
# firstdiff.py OLD NEW: the first differing line of two text files, around the first differing
# character; or which one ends first and what the other goes on with
import sys
a, b = (open(p, "rb").read().decode("utf-8", "replace").split("\n") for p in sys.argv[1:3])
for n, (x, y) in enumerate(zip(a, b), 1):
    if x != y:
        c = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
        lo = max(0, c - 25)
        cut = lambda t: ("..." if lo else "") + repr(t[lo:c + 35])[1:-1] + ("..." if len(t) > c + 35 else "")
        sys.exit(f"line {n}, column {c + 1}: OLD '{cut(x)}' vs NEW '{cut(y)}'")
short, other, rest = ("OLD", "NEW", b[len(a):]) if len(a) < len(b) else ("NEW", "OLD", a[len(b):])
if rest == [""]:
    sys.exit(f"{other}'s last line ends with a newline, {short}'s does not")
more = next((t for t in rest if t.strip()), "")
sys.exit(f"{short} ends after line {min(len(a), len(b)) - 1}; {other} has {len(rest)} more, e.g. '{more[:60]}'")
PY
firstdiff() { python3 "$W/py/firstdiff.py" "$1" "$2" 2>&1 | head -c 300; }

# ---------------------------------------------------------------- training
MPI=("${MPIRUN:-mpirun}" --oversubscribe)
[ "$(id -u)" -eq 0 ] && MPI+=(--allow-run-as-root)
export OMPI_MCA_rmaps_base_oversubscribe=1
HAVE_MPI=1
command -v "${MPI[0]}" > /dev/null || HAVE_MPI=0

COMMON=(--steps "$STEPS" --set batch_size=4 --set eval_every=10 --set eval_batches=2 --set warmup_steps=5 --quiet)
# config CFG: sets ARGS (the train arguments) and NP (1, or the mpirun ranks) of config a, b or c
config() {
    case $1 in
        a) NP=1 ARGS=("${COMMON[@]}" --set threads="$THREADS") ;;
        b) NP=1 ARGS=("${COMMON[@]}" --set threads="$THREADS" --set n_layer=4 --set "moe_layers=0,2" --set n_shared=1
                      --set bias_update_rate=0.001 --set ckpt_every="$HALF" --set keep_checkpoints=2) ;;
        c) NP=2 ARGS=("${COMMON[@]}" --set threads="$MPI_THREADS" --set bias_update_rate=0.001 --ep 2) ;;
    esac
}

# train SIDE BIN NAME NP ARGS...: runs `BIN train` in $W/SIDE with --out NAME (relative, so the
# two sides' commands are the same strings); log in $W/SIDE/NAME.log; returns the exit status
train() {
    local side=$1 bin=$2 name=$3 np=$4
    shift 4
    if [ "$np" = 1 ]; then
        (cd "$W/$side" && timeout 900 "$bin" train --data "$DATA" --out "$name" "$@") > "$W/$side/$name.log" 2>&1
    else
        (cd "$W/$side" && timeout 900 "${MPI[@]}" -np "$np" -x OMP_NUM_THREADS="$MPI_THREADS" -x OMP_WAIT_POLICY \
            "$bin" train --data "$DATA" --out "$name" "$@") > "$W/$side/$name.log" 2>&1
    fi
}
failmsg() { echo "$1 failed (exit $2): $(tail -n 2 "$3" | tr '\n' ' ' | cut -c1-200)"; }

# compare_run LABEL DIR_OLD DIR_NEW [notb]: metrics, checkpoint files, event files
compare_run() {
    local label=$1 a=$2 b=$3 tb=${4:-tb} msg f
    msg=$(python3 "$W/py/metrics_cmp.py" "$a/metrics.jsonl" "$b/metrics.jsonl" 2>&1)
    report "$label metrics.jsonl (no timing fields)" "$msg"
    local la lb
    la=$(cd "$a" && find . -type f ! -name metrics.jsonl ! -name 'events.out.tfevents.*' | sed 's|^\./||' | sort)
    lb=$(cd "$b" && find . -type f ! -name metrics.jsonl ! -name 'events.out.tfevents.*' | sed 's|^\./||' | sort)
    if [ "$la" = "$lb" ]; then
        report "$label checkpoint file names ($(echo "$la" | wc -l) files)"
    else
        report "$label checkpoint file names" "OLD: ${la//$'\n'/ } / NEW: ${lb//$'\n'/ }"
    fi
    for f in $la; do
        if [ ! -f "$b/$f" ]; then report "$label $f" "missing in NEW"
        elif cmp -s -- "$a/$f" "$b/$f"; then report "$label $f"
        else report "$label $f" "$(whydiff "$a/$f" "$b/$f")"; fi
    done
    if [ "$tb" = tb ]; then
        msg=$(python3 "$W/py/tb_cmp.py" "$a" "$b" 2>&1)
        report "$label TensorBoard events (no wall_time, tokens/s)" "$msg"
    fi
}

echo "compare_builds: OLD $OLD"
echo "                NEW $NEW"
cmp -s "$OLD" "$NEW" && echo "                (the two are the same file contents)"
echo "                data $DATA"
echo "                $STEPS steps, threads=$THREADS (ep 2: 2 ranks x $MPI_THREADS), work directory $W"
for b in OLD NEW; do # (no `ldd | grep -q`: with pipefail, grep's early exit would fail ldd)
    case $(ldd "${!b}" 2> /dev/null) in
        *libmpi*) ;;
        *) echo "note: $b does not look linked with MPI (ldd): its --ep 2 run may be independent processes" ;;
    esac
done

declare -A TRAINED
for cfg in a b c; do
    config "$cfg"
    np=$NP
    args=("${ARGS[@]}")
    if [ "$np" != 1 ] && [ $HAVE_MPI = 0 ]; then
        if [ "${NO_MPI:-0}" = 1 ]; then echo "$cfg: skipped (no ${MPI[0]}, NO_MPI=1)"
        else report "$cfg: training under mpirun" "${MPI[0]} not found (NO_MPI=1 to skip)"; fi
        continue
    fi
    t0=$SECONDS
    train old "$OLD" "$cfg" "$np" "${args[@]}"; rc_old=$?
    train new "$NEW" "$cfg" "$np" "${args[@]}"; rc_new=$?
    echo "# $cfg: trained ($((SECONDS - t0)) s for both): ${args[*]}"
    if [ $rc_old -ne 0 ] || [ $rc_new -ne 0 ]; then
        msg=""
        [ $rc_old -ne 0 ] && msg="$(failmsg OLD $rc_old "$W/old/$cfg.log") "
        [ $rc_new -ne 0 ] && msg+="$(failmsg NEW $rc_new "$W/new/$cfg.log")"
        report "$cfg: training" "$msg"
        continue
    fi
    TRAINED[$cfg]=1
    compare_run "$cfg:" "$W/old/$cfg" "$W/new/$cfg"
done

# ---------------------------------------------------------------- commands on the checkpoints
cat "${DATA_FILES[@]}" > "$W/data/all.txt"
head -c 65536 "$W/data/all.txt" > "$W/data/part_a.txt"
tail -c 65536 "$W/data/all.txt" > "$W/data/part_b.txt"
head -c 64 "$W/data/all.txt" | od -An -tu1 > "$W/data/tokens.txt"
NINV=0
# invoke BIN CKPT ARGS...: runs BIN ARGS in a fresh directory holding `ckpt`, a link to CKPT;
# prints the invocation's directory (stdout, stderr, rc beside cwd/, what it wrote inside)
invoke() {
    local bin=$1 ck=$2
    shift 2
    NINV=$((NINV + 1))
    local d="$W/cmd/$NINV"
    mkdir -p "$d/cwd"
    ln -s "$ck" "$d/cwd/ckpt"
    (cd "$d/cwd" && timeout 600 "$bin" "$@") > "$d/stdout" 2> "$d/stderr" < /dev/null
    echo $? > "$d/rc"
    rm "$d/cwd/ckpt"
    INV=$d
}
# compare_inv LABEL DIR_OLD DIR_NEW: exit status, stdout, stderr, files written
compare_inv() {
    local label=$1 a=$2 b=$3 msg="" s f
    [ "$(cat "$a/rc")" = "$(cat "$b/rc")" ] || msg+="exit $(cat "$a/rc") vs $(cat "$b/rc"); "
    for s in stdout stderr; do
        cmp -s "$a/$s" "$b/$s" || msg+="$s: $(firstdiff "$a/$s" "$b/$s"); "
    done
    local la lb
    la=$(cd "$a/cwd" && find . -type f | sort)
    lb=$(cd "$b/cwd" && find . -type f | sort)
    if [ "$la" != "$lb" ]; then msg+="files written: OLD ${la//$'\n'/ } / NEW ${lb//$'\n'/ }; "
    else
        for f in $la; do cmp -s "$a/cwd/$f" "$b/cwd/$f" || msg+="${f#./} differs ($(whydiff "$a/cwd/$f" "$b/cwd/$f")); "; done
    fi
    [ -z "$msg" ] && [ "$(cat "$a/rc")" != 0 ] && [ "${EXPECT_FAIL:-0}" != 1 ] && \
        msg="both exit $(cat "$a/rc"): $(head -c 150 "$a/stderr" | tr '\n' ' ')"
    report "$label" "${msg%; }"
}
# analyse CFG NAME ARGS...: OLD and NEW on OLD's checkpoint, and each on its own
analyse() {
    local cfg=$1 name=$2 oo no nn
    shift 2
    invoke "$OLD" "$W/old/$cfg" "$@"; oo=$INV
    invoke "$NEW" "$W/old/$cfg" "$@"; no=$INV
    invoke "$NEW" "$W/new/$cfg" "$@"; nn=$INV
    compare_inv "$cfg: $name, NEW vs OLD on OLD's checkpoint" "$oo" "$no"
    compare_inv "$cfg: $name, NEW on NEW's vs OLD on OLD's" "$oo" "$nn"
}
t0=$SECONDS
if [ -n "${TRAINED[a]:-}" ]; then
    analyse a "eval --json" eval --ckpt ckpt --data "$DATA" --json --max-batches 8
    analyse a "eval" eval --ckpt ckpt --data "$DATA" --max-batches 8
    analyse a "route --json" route --ckpt ckpt --data "$W/data/part_a.txt,$W/data/part_b.txt" --json --max-batches 4
    analyse a "route" route --ckpt ckpt --data "$W/data/part_a.txt,$W/data/part_b.txt" --max-batches 4
    analyse a "sample --temperature 0" sample --ckpt ckpt --prompt "$PROMPT" --tokens 100 --temperature 0
    analyse a "sample T 0.9 top-k 40 top-p 0.9 seed 7" sample --ckpt ckpt --prompt "$PROMPT" --tokens 100 \
        --temperature 0.9 --top-k 40 --top-p 0.9 --seed 7
    analyse a "logits" logits --ckpt ckpt --tokens "$W/data/tokens.txt" --out logits.bin
    analyse a "export f32" export --ckpt ckpt --out hf --dtype f32
    analyse a "export bf16" export --ckpt ckpt --out hf --dtype bf16
fi
for cfg in b c; do
    [ -n "${TRAINED[$cfg]:-}" ] || continue
    analyse $cfg "eval --json" eval --ckpt ckpt --data "$DATA" --json --max-batches 8
    analyse $cfg "sample --temperature 0" sample --ckpt ckpt --prompt "$PROMPT" --tokens 100 --temperature 0
done
echo "# commands on the checkpoints: $((SECONDS - t0)) s"

# ---------------------------------------------------------------- OLD's checkpoint resumed by NEW
t0=$SECONDS
for cfg in a b c; do
    [ -n "${TRAINED[$cfg]:-}" ] || continue
    config "$cfg"
    np=$NP
    args=("${ARGS[@]}")
    train cross "$OLD" "$cfg" "$np" "${args[@]}" --stop-after "$HALF"; rc=$?
    if [ $rc -ne 0 ]; then report "$cfg: OLD $HALF steps, NEW resumes" "$(failmsg "OLD (first $HALF steps)" $rc "$W/cross/$cfg.log")"; continue; fi
    mv "$W/cross/$cfg.log" "$W/cross/$cfg.first.log"
    train cross "$NEW" "$cfg" "$np" "${args[@]}" --resume; rc=$?
    if [ $rc -ne 0 ]; then report "$cfg: OLD $HALF steps, NEW resumes" "$(failmsg "NEW --resume" $rc "$W/cross/$cfg.log")"; continue; fi
    compare_run "$cfg: OLD $HALF + NEW resumed vs OLD straight:" "$W/old/$cfg" "$W/cross/$cfg" notb
done
echo "# resume OLD -> NEW: $((SECONDS - t0)) s"

# ---------------------------------------------------------------- command line
cli() {
    local name=$1 oo nn
    shift
    invoke "$OLD" "$W/old/a" "$@"; oo=$INV
    invoke "$NEW" "$W/old/a" "$@"; nn=$INV
    compare_inv "cli: $name" "$oo" "$nn"
}
EXPECT_FAIL=1
if [ "${SKIP_CLI:-0}" = 1 ]; then
    echo "# command line: skipped (SKIP_CLI=1)"
else
cli "moe (no command)"
cli "moe --help" --help
for c in train sample eval export import logits route plot; do cli "moe $c --help" "$c" --help; done
cli "unknown command" frobnicate
cli "error: missing data" train --data nope.txt --out x --steps 1 --quiet
cli "error: unknown config key" train --data "$DATA" --out x --steps 1 --set bogus_key=1 --quiet
cli "error: bad value" train --data "$DATA" --out x --steps 1 --set top_k=99 --quiet
cli "error: resume without a checkpoint" train --data "$DATA" --out x --resume --quiet
cli "error: missing checkpoint" eval --ckpt nope --data "$DATA"
cli "error: sample without --prompt" sample --ckpt ckpt
fi
EXPECT_FAIL=0

echo "compare_builds: $NCMP comparisons, $NDIFF different, $((SECONDS - START)) s"
if [ $NDIFF -ne 0 ]; then
    echo "compare_builds: DIFFERENT; runs kept in $W"
    exit 1
fi
[ $KEEP = 0 ] && rm -rf "$W"
echo "compare_builds: all same"
exit 0
