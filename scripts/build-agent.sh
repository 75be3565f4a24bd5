#!/usr/bin/env bash
# Builds the troupe-agent that ships and that the peer benches measure
# (docs/adr/0011-agent-build.md) and prints its path on stdout (progress on
# stderr): cargo profile `agent` (opt-level "s", fat LTO, one codegen
# unit), its functions laid out by agent/link-order.txt so the code a run
# executes sits in as few pages as possible (the kernel maps file pages
# 64 KB around each fault: scattered, ~1 MB of executed code kept ~4 MB of
# the agent's .text resident).
#
# The order file holds mangled symbol names, so it goes stale when their
# hashes change (a dependency or toolchain update; not an edit of a
# function's body). The build says how many of its names the new binary
# still has and warns below 80 % (fails with TROUPE_AGENT_ORDER_STRICT=1):
# then run scripts/agent-order.sh, which rewrites it from callgrind traces
# of real runs, and commit the file.
#   TROUPE_AGENT_ORDER=FILE   lay out by FILE instead (scripts/agent-order.sh)
#   TROUPE_AGENT_ORDER=none   no layout (for the trace, or a linker other
#                             than LLD)
# Needs: nm (binutils); the ordering needs LLD as the linker (rustc >= 1.90
# on x86_64-unknown-linux-gnu by default; the script checks).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)"
order="${TROUPE_AGENT_ORDER:-$(pwd)/agent/link-order.txt}"
bin="$target_dir/agent/troupe-agent"

args=()
if [ "$order" != none ]; then
  [ -f "$order" ] || { echo "build-agent.sh: $order is missing (scripts/agent-order.sh writes it)" >&2; exit 1; }
  # LLD is rustc's default linker here from 1.90 on; another linker would
  # fail on the LLD option, so say so instead.
  host="$(rustc -vV | sed -n 's/^host: //p')"
  minor="$(rustc -vV | sed -n 's/^release: 1\.\([0-9]*\)\..*/\1/p')"
  if [ "$host" != x86_64-unknown-linux-gnu ] || [ "${minor:-0}" -lt 90 ]; then
    echo "build-agent.sh: the function layout needs LLD (rustc >= 1.90 on x86_64 Linux; here $host, 1.$minor): set TROUPE_AGENT_ORDER=none" >&2
    exit 1
  fi
  # cargo keys the build on these arguments, not on the file's content: name
  # a copy by its hash, so a rewritten order file is linked again.
  sum="$(sha256sum "$order" | cut -c1-16)"
  copy="$target_dir/agent-order/$sum.txt"
  if [ ! -f "$copy" ]; then
    mkdir -p "$target_dir/agent-order"
    cp "$order" "$copy.tmp" && mv "$copy.tmp" "$copy"
  fi
  args=(-- -C "link-arg=-Wl,--symbol-ordering-file=$copy" -C link-arg=-Wl,--no-warn-symbol-ordering)
fi
cargo rustc --profile agent -p troupe-agent --bin troupe-agent "${args[@]}" >&2

if [ "$order" != none ]; then
  # How much of the layout this binary still follows.
  wanted="$(grep -c . "$order")"
  found="$(nm "$bin" | awk 'NR == FNR { want[$1] = 1; next } ($3 in want) { print $3 }' "$order" - | sort -u | wc -l)"
  echo "build-agent.sh: $found of $wanted functions in $order are in the binary" >&2
  if [ $((found * 100)) -lt $((wanted * 80)) ]; then
    echo "build-agent.sh: the function layout is stale: run scripts/agent-order.sh and commit agent/link-order.txt" >&2
    # A stale layout costs resident memory, not correctness: packages and
    # CI still build (the binary is the same code); a bench or a release
    # check can insist with TROUPE_AGENT_ORDER_STRICT=1.
    [ "${TROUPE_AGENT_ORDER_STRICT:-0}" = 1 ] && exit 1
  fi
fi
echo "$bin"
