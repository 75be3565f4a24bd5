#!/bin/bash
# Compile cost per resource, Troupe beside Puppet in one run (issue 20 item 4).
#
#   bench/peers/compile_peer.sh            sizes N = 1000 9090 (1,102 and 10,001 resources)
#   SIZES="1000 9090 45454" bench/peers/compile_peer.sh
#
# For each N, the shared generator (../shared/bench/peers/gen_workload.py N DIR OUT) writes
# the peers' workload: DIR, N/10 directories, N files with distinct content and one
# templated bench.conf (N + N/10 + 2 resources). Puppet compiles its site.pp (`puppet apply
# --noop` with puppet_compile_timer.rb loaded: the catalog compile alone, PUPPET_RUNS times
# in one process, the first one parsing site.pp); then the Troupe compile bench
# (catalog/compiler/benches/compile.rs) compiles the same objects, which it builds as a
# module tree from the same generator's output, and prints Puppet's figures beside its own
# (TROUPE_BENCH_PEER points it at the table written here).
#
# Knobs (env): SIZES, PUPPET_RUNS=6, BASE=/tmp/cmbench (workloads in $BASE/gN, table in
#   $BASE/results-compile/puppet_compile.tsv), PEERS=<dir of the shared harness>,
#   CARGO_TARGET_DIR (release build of the bench).
# Puppet comes from Debian (puppet-agent 7.23 on bookworm, as the shared run.sh installs it).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS=${PEERS:-$(cd "$REPO/.." && pwd)/shared/bench/peers}
BASE=${BASE:-/tmp/cmbench}
SIZES=${SIZES:-"1000 9090"}
PUPPET_RUNS=${PUPPET_RUNS:-6}
RES=$BASE/results-compile
TABLE=$RES/puppet_compile.tsv
export LC_ALL=C.UTF-8

[ -f "$PEERS/gen_workload.py" ] || { echo "no $PEERS/gen_workload.py (set PEERS)" >&2; exit 66; }
case $PUPPET_RUNS in '' | *[!0-9]* | 0 | 1) echo "PUPPET_RUNS must be a number >= 2" >&2; exit 64 ;; esac
if ! command -v puppet >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q puppet-agent
fi
mkdir -p "$RES"
printf 'n\tresources\truns\tfirst_cpu_s\twarm_cpu_median_s\twarm_cpu_min_s\twarm_wall_median_s\n' >"$TABLE.tmp"
for n in $SIZES; do
  case $n in '' | *[!0-9]*) echo "SIZES: '$n' is not a number" >&2; exit 64 ;; esac
  g=$BASE/g$n
  python3 "$PEERS/gen_workload.py" "$n" "$BASE/t$n" "$g" >/dev/null
  log=$RES/puppet-$n.log
  # Facter's complaints about /proc/1/environ (no init here) go to stderr.
  PUPPET_COMPILE_RUNS=$PUPPET_RUNS ruby -r"$HERE/puppet_compile_timer.rb" "$(command -v puppet)" \
    apply --noop --color=false "$g/puppet/site.pp" >"$log" 2>"$RES/puppet-$n.err" || true
  grep -q '^puppet-compile ' "$log" || { echo "puppet did not compile N=$n; see $log and $RES/puppet-$n.err" >&2; exit 1; }
  awk -v n="$n" '
    /^puppet-compile / {
      for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
      if (v["run"] == 0) { first = v["cpu_s"]; res = v["resources"] }
      else { k++; cpu[k] = v["cpu_s"]; wall[k] = v["wall_s"] }
    }
    function median(a, m,   i, j, t) {
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
    }
    END {
      mc = median(cpu, k); mw = median(wall, k)
      printf "%d\t%d\t%d\t%s\t%.6f\t%.6f\t%.6f\n", n, res, k, first, mc, cpu[1], mw
    }' "$log" >>"$TABLE.tmp"
  tail -1 "$TABLE.tmp" | awk -F'\t' '{printf "puppet N=%s: %s resources, first compile %.3f s CPU, warm median %.3f s CPU (%.1f us per resource, %d runs)\n", $1, $2, $4, $5, $5 * 1e6 / $2, $3}'
done
mv "$TABLE.tmp" "$TABLE"
cd "$REPO"
TROUPE_BENCH_SIZES="$SIZES" TROUPE_BENCH_PEER="$TABLE" PEERS="$PEERS" \
  cargo bench -q -p troupe-compiler --bench compile
