#!/usr/bin/env bash
# deploy/setup.sh - install what picograd needs from Debian 12 and build it (Release) into build/.
#
# Idempotent: packages already installed are skipped, `apt-get update` runs only when something is
# missing, and the build is incremental.
#
#   deploy/setup.sh              build and run: daemon, C client, Python client
#   deploy/setup.sh --test       also what deploy/test.sh needs (pytest, PyTorch, scikit-learn)
#   deploy/setup.sh --examples   also what the examples need (tqdm, matplotlib)
#   deploy/setup.sh --fuzz       also clang and its sanitizer runtimes
#
# Python note: tests and examples run under /usr/bin/python3, Debian's interpreter, which sees
# the python3-* packages installed here (a python3 earlier on PATH may not).
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(cmake gcc make pkg-config libuv1-dev libmsgpack-dev libopenblas-dev
      python3 python3-msgpack python3-numpy)
for arg in "$@"; do
    case "$arg" in
    --test) pkgs+=(python3-pytest python3-torch python3-sklearn) ;;
    --examples) pkgs+=(python3-tqdm python3-matplotlib python3-sklearn) ;;
    --fuzz) pkgs+=(clang libclang-rt-14-dev) ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup.sh: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # A fresh machine's package lists may be empty or stale: update first, and only now.
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
