#!/usr/bin/env bash
# deps.sh — installs the Debian packages moe needs to build and test (skips apt when all are
# present). Used by quickstart.sh, test.sh and CI.
set -euo pipefail
PKGS=(build-essential cmake pkg-config libopenblas-openmp-dev libcjson-dev python3 openmpi-bin libopenmpi-dev)
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
