#!/usr/bin/env bash
# Local demo on loopback: shows whatever Troupe can do so far. Everything it
# creates lives under a temporary directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --quiet
echo "Troupe demo: nothing to show yet (workspace skeleton)."
./target/debug/troupe --help
