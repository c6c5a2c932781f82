# lib.sh — what the shell test scripts share; source it after setting MOE:
#   W        a temporary directory, removed on exit
#   fail MSG            counts a failure
#   expect_error NAME EXPECTED -- command...
#                       the command must exit non-zero, not crash (signal, sanitizer report) and
#                       mention EXPECTED on stderr
#   finish NAME         prints the tally and returns non-zero on any failure
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
