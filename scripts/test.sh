#!/usr/bin/env bash
# Runs every test of the workspace. Storage tests run on SQLite and on PostgreSQL (a fresh
# database per test on the server at TRUEVAULT_TEST_POSTGRES_URL); without a PostgreSQL server
# they fail when CI is set and skip with a printed reason otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export TRUEVAULT_TEST_POSTGRES_URL="${TRUEVAULT_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
log=$(mktemp -t truevault-test.XXXXXX)
trap 'rm -f "$log"' EXIT
status=0
# The end-to-end tests (tests/) run the real binaries, built here in the test profile's folder.
cargo build --workspace --bins
cargo test --workspace "$@" 2>&1 | tee "$log" || status=$?
# cargo prints one summary per test binary (the last is often an empty doc-test run): add
# them up into one closing line for the whole workspace.
awk '/^test result:/ {
       for (i = 2; i <= NF; i++) {
         if ($i ~ /^passed;?$/) passed += $(i - 1)
         if ($i ~ /^failed;?$/) failed += $(i - 1)
         if ($i ~ /^ignored;?$/) ignored += $(i - 1)
       }
     }
     END { printf "%d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
exit "$status"
