#!/usr/bin/env bash
# tests/bench/gpu.sh - the whole GPU check of picogradd, in one go.
#
#   bash tests/bench/gpu.sh bundle     on the CPU machine (Debian, -dev packages installed):
#                                      builds build-gpu/ (Release, no -march=native: the GPU
#                                      machine's processor differs; JIT kernels there still use
#                                      its own) and copies beside it every shared library ldd
#                                      lists that is not part of the C runtime (libuv, msgpack-c,
#                                      OpenBLAS, gfortran, ...) into build-gpu/lib
#   bash tests/bench/gpu.sh run        on the GPU machine (CUDA driver and toolkit, a Python 3
#                                      with numpy, msgpack, pytest and torch; no -dev packages):
#                                      1. the card (nvidia-smi) and the daemon's hello;
#                                      2. the conformance, random-graph, gradient and
#                                         training-equivalence suites with every tensor on cuda:0
#                                         (PICOGRAD_TEST_DEVICE=cuda:0);
#                                      3. tests/bench/gpu_bench.py: matmul against cuBLAS, fused
#                                         chains against the copy bandwidth, MLP/CNN steps
#                                         against torch; the table goes to build-gpu/gpu-bench.md
#
# PYTHON (default: python3) is the interpreter of step 2 and 3. Exit status: non-zero when a
# suite fails or the benchmark stops on a wrong result.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode="${1:-run}"
PY="${PYTHON:-python3}"

bundle() {
    cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DPICOGRAD_CUDA=ON >/dev/null
    cmake --build build-gpu -j"$(nproc)" --target picogradd
    mkdir -p build-gpu/lib
    # Every library the daemon links but the C runtime and the loader, which the GPU machine
    # has (and must keep its own of).
    ldd build-gpu/bin/picogradd | awk '$3 ~ /^\// {print $3}' |
        grep -Ev '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' |
        while read -r lib; do cp -L "$lib" build-gpu/lib/; done
    ls build-gpu/lib
    echo "bundle ready: build-gpu/bin/picogradd + build-gpu/lib (carry both to the GPU machine)"
}

run() {
    [[ -x build-gpu/bin/picogradd ]] || { echo "gpu.sh: run 'gpu.sh bundle' first" >&2; exit 2; }
    export LD_LIBRARY_PATH="$PWD/build-gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export PICOGRAD_DAEMON="$PWD/build-gpu/bin/picogradd"
    export PYTHONPATH="$PWD/clients/python${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONDONTWRITEBYTECODE=1
    echo "== the card"
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv || true
    "$PICOGRAD_DAEMON" --version
    echo "== suites on cuda:0"
    status=0
    PICOGRAD_TEST_DEVICE=cuda:0 "$PY" -m pytest -q -p no:cacheprovider \
        tests/integration/test_conformance_*.py tests/integration/test_compiler.py \
        tests/integration/test_autodiff.py tests/integration/test_train_equivalence.py \
        || status=$?
    echo "== benchmark"
    "$PY" tests/bench/gpu_bench.py --out build-gpu/gpu-bench.md || status=$?
    exit "$status"
}

case "$mode" in
bundle) bundle ;;
run) run ;;
*) echo "usage: gpu.sh bundle|run" >&2; exit 2 ;;
esac
