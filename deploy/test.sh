#!/usr/bin/env bash
# deploy/test.sh - set up if needed, then run every test:
#   1. C unit tests (ctest): the codec and the C client against a real daemon;
#   2. Python client unit tests and the integration tests against a real daemon (pytest);
#   3. the same again on an AddressSanitizer + UndefinedBehaviorSanitizer build (build-asan/),
#      where LeakSanitizer checks that the daemon exits with nothing leaked.
#
#   deploy/test.sh            everything
#   deploy/test.sh --no-asan  skip step 3 (a quicker local loop)
#
# Python runs under /usr/bin/python3: Debian's interpreter sees the python3-* packages that
# setup.sh installs; another python3 on PATH may not.
set -euo pipefail
cd "$(dirname "$0")/.."
asan=1
for arg in "$@"; do
    case "$arg" in
    --no-asan) asan=0 ;;
    *) echo "test.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done
PY=/usr/bin/python3
export PYTHONPATH="$PWD/clients/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

bash deploy/setup.sh --test

echo "== C unit tests (Release)"
ctest --test-dir build --output-on-failure
echo "== Python client and integration tests (Release)"
"$PY" -m pytest -q -p no:cacheprovider clients/python/tests tests/integration

if ((asan)); then
    echo "== ASan + UBSan build"
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPICOGRAD_SANITIZE=ON >/dev/null
    cmake --build build-asan -j"$(nproc)"
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    ctest --test-dir build-asan --output-on-failure
    PICOGRAD_DAEMON="$PWD/build-asan/bin/picogradd" \
        "$PY" -m pytest -q -p no:cacheprovider tests/integration
fi
echo "== all tests passed"
