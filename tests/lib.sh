# lib.sh — what the shell test scripts share; source it after setting MOE:
#   W        a temporary directory, removed on exit
#   fail MSG            counts a failure
#   expect_error NAME EXPECTED -- command...
#                       the command must exit non-zero, not crash (signal, sanitizer report) and
#                       mention EXPECTED on stderr
#   finish NAME         prints the tally and returns non-zero on any failure
#   skip_unless NAME WHAT -- command...
#                       exits 77 (ctest: skipped) when the command fails: WHAT is missing
#   ckpt_meta FILE KEY  prints __metadata__[KEY] of a safetensors file
#   edit_meta SRC DST PYTHON
#                       copies a safetensors file with its metadata dict `meta` edited by PYTHON
#   maxdiff A B         max |a - b| over two float32 files of equal size ("size-mismatch" if not)
#   same_tensors A B    two safetensors files hold the same tensors, byte for byte (metadata aside)
#   within D TOL        D <= TOL
#   PY                  the Python with torch/transformers/tensorboard (/usr/bin/python3, or $PYTHON)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
fails=0
checks=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
expect_error() {
    local name=$1 want=$2
    shift 3
    checks=$((checks + 1))
    "$@" >"$W/out" 2>"$W/err"
    local rc=$?
    if [ $rc -eq 0 ]; then fail "$name: exit 0, expected an error containing '$want'"
    elif [ $rc -ge 128 ] || grep -qE "AddressSanitizer|runtime error:|LeakSanitizer" "$W/err"; then fail "$name: crashed (exit $rc): $(cat "$W/err")"
    elif ! grep -qF -- "$want" "$W/err"; then fail "$name: error does not mention '$want': $(cat "$W/err")"; fi
}
finish() {
    echo "$1: $checks checks, $fails failed -> $([ $fails -eq 0 ] && echo ok || echo FAIL)"
    [ $fails -eq 0 ]
}
skip_unless() {
    local name=$1 what=$2
    shift 3
    "$@" > /dev/null 2>&1 || { echo "$name: no $what: skipped"; exit 77; }
}
PY=${PYTHON:-/usr/bin/python3}
ckpt_meta() {
    python3 -c "import json,struct,sys; b=open(sys.argv[1],'rb').read(); print(json.loads(b[8:8+struct.unpack('<Q',b[:8])[0]])['__metadata__'][sys.argv[2]])" "$1" "$2"
}
edit_meta() {
    python3 - "$1" "$2" "$3" <<'EOF'
import json, struct, sys
b = open(sys.argv[1], "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
meta = h["__metadata__"]; exec(sys.argv[3])
hj = json.dumps(h).encode(); hj += b" " * (-len(hj) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(hj)) + hj + b[8 + n:])
EOF
}
maxdiff() {
    python3 - "$1" "$2" <<'EOF'
import array, sys
a, b = array.array("f"), array.array("f")
a.frombytes(open(sys.argv[1], "rb").read()); b.frombytes(open(sys.argv[2], "rb").read())
print(max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) and a else "size-mismatch")
EOF
}
within() { python3 -c "import sys; d = sys.argv[1]; sys.exit(0 if d != 'size-mismatch' and float(d) <= float(sys.argv[2]) else 1)" "$1" "$2"; }
same_tensors() {
    python3 - "$1" "$2" <<'EOF'
import json, struct, sys
def tensors(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items() if k != "__metadata__"}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
sys.exit(a.keys() != b.keys() or any(a[k] != b[k] for k in a))
EOF
}
