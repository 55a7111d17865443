#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS [HARNESS...]] - build the libFuzzer harnesses and fuzz each for a while.
#
# Configures build-fuzz/ with clang (-DPICOGRAD_FUZZ=ON), builds bin/pg_fuzz_{frame,request,graph},
# and runs each harness for SECONDS (default 30) on one core, starting from a temporary copy of
# its seed corpus (tests/fuzz/corpus/HARNESS: the repository is never modified) with the
# dictionary tests/fuzz/msgpack.dict. HARNESS names (frame request graph) pick a subset.
#
# Exit status: 0 when every harness ran clean; 1 on any crash, leak, UB report, timeout (a unit
# over 25 s) or out-of-memory (over 2 GiB), whose reproducer is kept in build-fuzz/artifacts/
# (replay: build-fuzz/bin/pg_fuzz_HARNESS FILE); 77 when clang or libFuzzer is missing
# (deploy/setup.sh --fuzz installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-30}"
shift || true
harnesses=("$@")
((${#harnesses[@]})) || harnesses=(frame request graph)
[[ "$secs" =~ ^[0-9]+$ ]] || { echo "run.sh: SECONDS must be a whole number, not '$secs'" >&2; exit 2; }

if ! command -v clang >/dev/null; then
    echo "run.sh: clang not found (deploy/setup.sh --fuzz installs it); not fuzzing" >&2
    exit 77
fi
probe="$(mktemp -d /tmp/picograd-fuzz-probe.XXXXXX)"
trap 'rm -rf "$probe"' EXIT
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return 0; }' \
    >"$probe/p.c"
if ! clang -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" 2>"$probe/err"; then
    echo "run.sh: clang cannot link libFuzzer (libclang-rt-14-dev; deploy/setup.sh --fuzz):" >&2
    cat "$probe/err" >&2
    exit 77
fi

echo "== fuzz: building build-fuzz/ (clang, ASan + UBSan + libFuzzer)"
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DPICOGRAD_FUZZ=ON \
    -DPICOGRAD_CUDA=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target pg_fuzz

work="$(mktemp -d /tmp/picograd-fuzz.XXXXXX)"
trap 'rm -rf "$probe" "$work"' EXIT
mkdir -p build-fuzz/artifacts
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
status=0
for h in "${harnesses[@]}"; do
    [[ -x "build-fuzz/bin/pg_fuzz_$h" ]] || { echo "run.sh: no harness '$h'" >&2; exit 2; }
    cp -r "tests/fuzz/corpus/$h" "$work/$h"
    echo "== fuzz: pg_fuzz_$h for ${secs}s ($(ls "$work/$h" | wc -l) seeds)"
    if "build-fuzz/bin/pg_fuzz_$h" "$work/$h" -dict=tests/fuzz/msgpack.dict \
        -max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="build-fuzz/artifacts/$h-" >"$work/$h.log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]' "$work/$h.log" | tail -n 1
        grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec' \
            "$work/$h.log" || true
    else
        status=1
        tail -n 60 "$work/$h.log"
        echo "== fuzz: pg_fuzz_$h FAILED; reproducer in build-fuzz/artifacts/$h-*" >&2
    fi
done
exit "$status"
