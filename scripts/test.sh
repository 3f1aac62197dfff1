#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite: a warnings-as-errors build
# with every test, then the same suite under AddressSanitizer and
# UndefinedBehaviorSanitizer, then (with clang) a short run of each fuzz
# target. Ends with ctest's summary. A throwaway PostgreSQL server
# (scripts/pg_server.sh) runs meanwhile for the tests of the PostgreSQL
# backend ($SLUICE_TEST_PG), stopped and removed at the end.
#   scripts/test.sh           everything
#   SLUICE_QUICK=1 scripts/test.sh   the plain build only
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh

echo "== PostgreSQL (throwaway, Unix socket only)"
eval "$(bash scripts/pg_server.sh start)"
trap 'bash scripts/pg_server.sh stop "$SLUICE_TEST_PGDIR"' EXIT

jobs=$(nproc 2>/dev/null || echo 2)
status=0

echo "== build (warnings as errors)"
cmake -S . -B build/ci -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSLUICE_WERROR=ON >/dev/null
cmake --build build/ci -j "$jobs"

if [ "${SLUICE_QUICK:-0}" != 1 ]; then
    if command -v clang >/dev/null && [ -f tests/fuzz/CMakeLists.txt ]; then
        echo "== fuzz (short runs)"
        CC=clang cmake -S . -B build/fuzz -DSLUICE_FUZZ=ON -DSLUICE_TESTS=OFF >/dev/null
        cmake --build build/fuzz -j "$jobs"
        for f in build/fuzz/tests/fuzz/fuzz_*; do
            [ -x "$f" ] || continue
            echo "-- $(basename "$f")"
            corpus=$(mktemp -d)
            # seeded with the checked-in inputs, so the run starts deep
            seeds="tests/fuzz/corpus/$(basename "$f" | sed 's/^fuzz_//')"
            [ -d "$seeds" ] && cp "$seeds"/* "$corpus"/
            "$f" -max_total_time="${SLUICE_FUZZ_SECONDS:-20}" -rss_limit_mb=2048 \
                "$corpus" 2>&1 | tail -n 2 || status=1
            rm -rf "$corpus"
        done
    fi
    echo "== build and test under ASan+UBSan"
    cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DSLUICE_WERROR=ON -DSLUICE_SANITIZE=ON >/dev/null
    cmake --build build/asan -j "$jobs"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        ctest --test-dir build/asan --output-on-failure -j "$jobs" || status=1
fi

echo "== test"
ctest --test-dir build/ci --output-on-failure -j "$jobs" || status=1
exit $status
