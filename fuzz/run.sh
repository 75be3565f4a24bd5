#!/usr/bin/env bash
# Builds the libFuzzer targets on STABLE Rust and runs each for a fixed time.
#
#   fuzz/run.sh [TARGET...]         all targets by default
#   FUZZ_SECONDS=300 fuzz/run.sh csr
#
# No cargo-fuzz or nightly: the SanitizerCoverage instrumentation libFuzzer
# needs is switched on with stable `-C` flags (the ones cargo-fuzz passes),
# and libfuzzer-sys builds libFuzzer itself with the system C++ compiler.
# The corpus grows in fuzz/target/corpus/TARGET (seeded from
# fuzz/corpus-seeds/TARGET); a crash stops the script with a non-zero exit
# and leaves the input in fuzz/target/artifacts/TARGET/. Turn each into a
# regression test by copying it to fuzz/regressions/TARGET/ (see README.md).
set -euo pipefail
cd "$(dirname "$0")"
secs="${FUZZ_SECONDS:-25}"
# Its own target directory: the instrumented build shares nothing with the
# workspace's, and must not disturb it.
tdir="${FUZZ_TARGET_DIR:-target}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(csr module_tree catalog envelope)
command -v c++ >/dev/null || { echo "fuzz: a C++ compiler (g++) is needed to build libFuzzer" >&2; exit 1; }
host="$(rustc -vV | sed -n 's/^host: //p')"
# --target keeps the flags off build scripts and proc macros.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-sanitizer-coverage-stack-depth \
 -Cdebug-assertions -Coverflow-checks"
start=$(date +%s)
# Same versions as the workspace: start from its lock file (cargo adds only
# libFuzzer's few crates), so a dependency added to a crate never leaves a
# stale lock here.
cp ../Cargo.lock Cargo.lock
cargo build --release --target "$host" --target-dir "$tdir" --bins
echo "fuzz: built in $(( $(date +%s) - start )) s"
status=0
summary=""
for t in "${targets[@]}"; do
  bin="$tdir/$host/release/$t"
  corpus="$tdir/corpus/$t"
  artifacts="$tdir/artifacts/$t/"
  mkdir -p "$corpus" "$artifacts"
  log="$tdir/$t.log"
  echo "fuzz: $t for ${secs}s"
  if "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
       -print_final_stats=1 -artifact_prefix="$artifacts" \
       "$corpus" "corpus-seeds/$t" >"$log" 2>&1; then
    res=ok
  else
    res="CRASH (input in $artifacts; log $log)"
    status=1
    tail -n 60 "$log"
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | cut -d' ' -f2)
  summary+=$(printf '%-12s %10s runs %7s exec/s  cov %6s  %s' "$t" "${runs:-?}" "${eps:-?}" "${cov:-?}" "$res")$'\n'
done
echo
echo "fuzz summary (${secs}s per target, total $(( $(date +%s) - start )) s):"
printf '%s' "$summary"
exit "$status"
