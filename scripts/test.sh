#!/usr/bin/env bash
# Runs every test in the workspace: unit, property and end-to-end tests
# (real master and agent processes on loopback). Binaries are built first so
# the end-to-end tests can start them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
