#!/usr/bin/env bash
# test_package.sh BUILD SRC — the installed package works for a user: `cmake --install` into a
# temporary prefix, then examples/ built against it twice, with find_package(moe) and with
# pkg-config, each training two steps; and the installed CLI answers --version.
set -uo pipefail
BUILD=$1
SRC=$2
source "$SRC/tests/lib.sh"
cat "$SRC"/README.md "$SRC"/docs/*.md > "$W/corpus.txt"

checks=$((checks + 1))
cmake --install "$BUILD" --prefix "$W/prefix" > "$W/install.log" 2>&1 || { fail "install: $(tail -3 "$W/install.log")"; }
for f in include/moe.h include/moe_version.h bin/moe lib/libmoe.a lib/cmake/moe/moeConfig.cmake lib/pkgconfig/moe.pc; do
    [ -e "$W/prefix/$f" ] || [ -e "$W/prefix/${f/lib\//lib64/}" ] || fail "install: $f is missing"
done
checks=$((checks + 1))
"$W/prefix/bin/moe" --version | grep -q "^moe [0-9]*\.[0-9]*\.[0-9]*" || fail "moe --version: $("$W/prefix/bin/moe" --version 2>&1)"

# find_package(moe): the example of examples/, configured with the build's compiler
checks=$((checks + 1))
CC=$(sed -n 's/^CMAKE_C_COMPILER:[A-Z]*=//p' "$BUILD/CMakeCache.txt")
if cmake -S "$SRC/examples" -B "$W/ex" -DCMAKE_PREFIX_PATH="$W/prefix" -DCMAKE_C_COMPILER="$CC" > "$W/ex.log" 2>&1 &&
    cmake --build "$W/ex" > "$W/exb.log" 2>&1; then
    "$W/ex/train_two_steps" "$W/corpus.txt" "$W/run" > "$W/run.txt" 2>&1 || fail "the example failed: $(cat "$W/run.txt")"
    [ "$(grep -c '^step [12] loss' "$W/run.txt")" = 2 ] || fail "the example did not train two steps: $(cat "$W/run.txt")"
    grep -q "^moe $(sed -n 's/^project(moe VERSION \([0-9.]*\).*/\1/p' "$SRC/CMakeLists.txt") (header" "$W/run.txt" \
        || fail "the example's version: $(head -1 "$W/run.txt")"
else
    fail "find_package(moe): $(tail -5 "$W/ex.log" "$W/exb.log" 2>/dev/null)"
fi

# pkg-config, static: the same example with a plain compiler line
if command -v pkg-config > /dev/null; then
    checks=$((checks + 1))
    PC=$(ls -d "$W"/prefix/lib*/pkgconfig | head -1)
    if "$CC" "$SRC/examples/train_two_steps.c" -o "$W/pc" $(PKG_CONFIG_PATH="$PC" pkg-config --cflags --libs --static moe) \
        > "$W/pc.log" 2>&1; then
        "$W/pc" "$W/corpus.txt" "$W/run_pc" > "$W/pc.txt" 2>&1 && [ "$(grep -c '^step [12] loss' "$W/pc.txt")" = 2 ] \
            || fail "the pkg-config build failed to train: $(cat "$W/pc.txt")"
    else
        fail "pkg-config build: $(tail -5 "$W/pc.log")"
    fi
fi
finish test_package
