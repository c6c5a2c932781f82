#!/usr/bin/env bash
# test.sh — installs dependencies, builds moe, and runs the whole test suite: once in the normal
# build and once under AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/deps.sh --hf || echo "test.sh: Hugging Face packages did not install: the huggingface test is skipped"
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs" >/dev/null
(cd build && ctest --output-on-failure)
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOE_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs" >/dev/null
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure)
# a short fuzz smoke: every parser of outside input under libFuzzer for a few seconds, after
# replaying the crash inputs kept in fuzz/regress/ (fuzz/run.sh; longer runs by hand)
if bash scripts/deps.sh --fuzz && command -v clang > /dev/null; then
    bash fuzz/run.sh "${MOE_FUZZ_SECONDS:-10}"
else
    echo "test.sh: clang did not install: the fuzz smoke is skipped"
fi
echo "test.sh: all tests passed (normal and sanitizer builds, fuzz smoke)"
