#!/usr/bin/env bash
# deps.sh — installs the Debian packages moe needs to build and test (skips apt when all are
# present). Used by quickstart.sh, test.sh and CI.
set -euo pipefail
PKGS=(build-essential cmake pkg-config libopenblas-openmp-dev libcjson-dev libpcre2-dev libutf8proc-dev python3 openmpi-bin libopenmpi-dev gnuplot-nox valgrind)
# --hf: also what the Python-side tests need: Debian's PyTorch, and from PyPI transformers (the
# Hugging Face interop test) and tensorboard (its reader checks our event files)
HF=0
[ "${1:-}" = --hf ] && HF=1 && PKGS+=(python3-torch python3-numpy python3-pip)
# --fuzz: clang with libFuzzer and its OpenMP runtime (fuzz/run.sh)
[ "${1:-}" = --fuzz ] && PKGS=(clang libomp-dev)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    echo "deps: installing ${missing[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ $HF = 1 ] && ! /usr/bin/python3 -c "import transformers, tensorboard" 2>/dev/null; then
    echo "deps: installing transformers and tensorboard (PyPI) for /usr/bin/python3"
    # pinned: versions that work with Debian's torch 1.13 and numpy (checked by tests/test_hf.sh, test_tb.sh)
    /usr/bin/python3 -m pip install -q --break-system-packages "transformers==4.44.2" safetensors "tensorboard==2.21.0"
fi
