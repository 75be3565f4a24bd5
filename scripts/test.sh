#!/usr/bin/env bash
# Runs every test in the workspace: unit, property and end-to-end tests
# (real master and agent processes on loopback), then prints the ledger of
# faults injected and hostile inputs tried (troupe-tally). Binaries are built
# first so the end-to-end tests can start them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
target_dir="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
tally_dir="$target_dir/debug/troupe-ledger"
rm -rf "$tally_dir"
export TROUPE_TALLY_DIR="$tally_dir"
status=0
log="$target_dir/debug/test-run.log"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
else
  cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
fi
echo
"$target_dir/debug/troupe-tally" "$tally_dir" || status=$((status == 0 ? 1 : status))
# The test runner's own summary stays the last line.
echo
grep -E '^ *Summary \[|^test result:' "$log" | tail -n 1 || true
exit "$status"
