#!/usr/bin/env bash
# deploy/test.sh - set up if needed, then run every test:
#   1. C unit tests (ctest): the codec and the C client against a real daemon;
#   2. Python client unit tests and the integration tests against a real daemon (pytest), then
#      conformance suites once more with every loop compiled (--jit-min-work 0);
#      Every daemon of step 2 also writes the CUDA source of each kernel it plans
#      (--dump-cuda), and pg_test_nvrtc then compiles all of them with NVRTC for sm_80 and sm_90
#      (no GPU needed; skipped when the CUDA toolkit is absent);
#      the nn, movement, indexing, autograd and training suites again on the stand-in GPU (cuda:0 of
#      build/fake-cuda/libcuda.so.1, PICOGRAD_TEST_DEVICE);
#   3. the same again on an AddressSanitizer + UndefinedBehaviorSanitizer build (build-asan/),
#      where LeakSanitizer checks that the daemon exits with nothing leaked (fewer kernels to
#      compile there: see the step);
#   4. the libFuzzer harnesses (tests/fuzz/run.sh), 10 s each (skipped without clang/libFuzzer).
#
#   deploy/test.sh            everything
#   deploy/test.sh --no-asan  skip step 3 (a quicker local loop)
#   deploy/test.sh --full-jit every conformance suite compiled in step 2 (not only nn, movement
#                             and index; ~13 more minutes)
#   deploy/test.sh --fuzz SECONDS  fuzz each harness for SECONDS instead of 10 (0 skips step 4)
#   deploy/test.sh --soak SECONDS  run the 64-client soak of step 2 for SECONDS instead of 30
#
# Python runs under /usr/bin/python3: Debian's interpreter sees the python3-* packages that
# setup.sh installs; another python3 on PATH may not.
set -euo pipefail
cd "$(dirname "$0")/.."
asan=1
full_jit=0
fuzz_secs=10
soak_secs=30
while (($#)); do
    case "$1" in
    --no-asan) asan=0 ;;
    --full-jit) full_jit=1 ;;
    --fuzz)
        [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "test.sh: --fuzz needs SECONDS" >&2; exit 2; }
        fuzz_secs="$2"
        shift ;;
    --soak)
        [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "test.sh: --soak needs SECONDS" >&2; exit 2; }
        soak_secs="$2"
        shift ;;
    *) echo "test.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
PY=/usr/bin/python3
export PYTHONPATH="$PWD/clients/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

bash deploy/setup.sh --test --fuzz

echo "== C unit tests (Release)"
ctest --test-dir build --output-on-failure
# The CUDA source of every kernel the suites below plan (conformance, the random-graph test in
# test_compiler.py, ...) lands in $cuda_dump, for the NVRTC compile check after them.
cuda_dump="$(mktemp -d /tmp/picograd-cuda-dump.XXXXXX)"
trap 'rm -rf "$cuda_dump"' EXIT
echo "== Python client and integration tests (Release)"
# The 64-client soak (test_robustness.py) runs --soak seconds (30; a longer one is an option).
PICOGRAD_TEST_DAEMON_ARGS="--dump-cuda $cuda_dump" PICOGRAD_SOAK_SECONDS="$soak_secs" \
    "$PY" -m pytest -q -p no:cacheprovider clients/python/tests tests/integration
# Every conformance loop compiled (--jit-min-work 0): a few thousand kernels to compile cold
# (~13 min on 2 cores), so CI runs the nn, movement and index suites (~1 min) and --full-jit all.
# The gradient suite runs compiled too (~1 min cold): backward graphs fuse like any others.
echo "== Conformance tests with every loop compiled (--jit-min-work 0)"
if ((full_jit)); then
    conf=(tests/integration/test_conformance_*.py tests/integration/test_autodiff.py)
else
    conf=(tests/integration/test_conformance_{nn,movement,linalg_index}.py
          tests/integration/test_autodiff.py)
fi
PICOGRAD_TEST_DAEMON_ARGS="--jit-min-work 0 --dump-cuda $cuda_dump" \
    "$PY" -m pytest -q -p no:cacheprovider "${conf[@]}"
# The GPU runtime's host side on the stand-in driver (build/fake-cuda: device memory emulated on
# the host, kernels and matmuls run on the host from device copies; server/cudarun.h): the
# nn, movement, indexing, autograd and training suites with every tensor on cuda:0.
if [[ -e build/fake-cuda/libcuda.so.1 ]]; then
    echo "== Suites on the stand-in GPU (PICOGRAD_TEST_DEVICE=cuda:0)"
    LD_LIBRARY_PATH="$PWD/build/fake-cuda${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    PICOGRAD_CUDA_HOST_KERNELS=1 PICOGRAD_TEST_DEVICE=cuda:0 \
        "$PY" -m pytest -q -p no:cacheprovider tests/integration/test_conformance_{nn,movement}.py \
        tests/integration/test_conformance_linalg_index.py tests/integration/test_autograd_api.py \
        tests/integration/test_train_equivalence.py
fi
# Every kernel of those suites, rendered for CUDA, compiled by NVRTC (a minute or two on 2
# cores: 16 kernels per NVRTC program, one program per core at a time).
if [[ -x build/bin/pg_test_nvrtc ]]; then
    echo "== NVRTC: every kernel of the suites above, compiled for sm_80 and sm_90"
    build/bin/pg_test_nvrtc --dir "$cuda_dump" --min 500
else
    echo "== NVRTC: skipped (no CUDA toolkit: build/bin/pg_test_nvrtc was not built)"
fi

if ((asan)); then
    echo "== ASan + UBSan build"
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPICOGRAD_SANITIZE=ON >/dev/null
    cmake --build build-asan -j"$(nproc)"
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    ctest --test-dir build-asan --output-on-failure
    # The 64-client soak ran above; here 20 s of it checks for leaks. The compiler's bitwise
    # suites mostly wait for cc compiling hundreds of kernels, which are not instrumented; the
    # daemon's side of that (planning, the JIT, the caches) is the same for every kernel, so
    # here 50 random graphs stand for the 200 above and the two suites that only add more
    # kernels to compile are left to the Release run (~2 of ~6.5 minutes).
    PICOGRAD_DAEMON="$PWD/build-asan/bin/picogradd" PICOGRAD_SOAK_SECONDS=20 PG_COMPILER_SEEDS=50 \
        "$PY" -m pytest -q -p no:cacheprovider tests/integration \
        -k "not test_row_kernels_bitwise and not test_reductions_of_buffers_and_views_bitwise"
fi
if ((fuzz_secs > 0)); then
    echo "== Fuzzing: each libFuzzer harness for ${fuzz_secs}s (tests/fuzz/run.sh)"
    rc=0
    bash tests/fuzz/run.sh "$fuzz_secs" || rc=$?
    if ((rc == 77)); then
        echo "== Fuzzing: skipped (clang or libFuzzer missing; deploy/setup.sh --fuzz)"
    elif ((rc != 0)); then
        exit "$rc"
    fi
fi
echo "== all tests passed"
