#!/bin/bash
# rss_rounds.sh ROUNDS tool=CMD... : per round, each tool in turn runs first (into an emptied
# tree: the old one moved aside), noop, drift on the same N=10,000 tree (made by `run.sh gen`),
# the tree verified after each; prints "scenario tool maxrss_kb user_s sys_s wall_s" (GNU time).
# Peak RSS and CPU only: no quiet-machine wait, so wall times mean little under load.
set -euo pipefail
BASE=${BASE:-/tmp/cmbench}; N=${N:-10000}; ROUNDS=$1; shift
T=$BASE/t$N; G=$BASE/g$N
mkdir -p $BASE/trash
verify() { sha256sum -c --quiet "$G/expected.sha256" || { echo "VERIFY FAIL $1" >&2; exit 1; }; }
for r in $(seq 1 "$ROUNDS"); do
  for spec in "$@"; do
    name=${spec%%=*}; cmd=${spec#*=}
    for sc in first noop drift; do
      case $sc in
        first) [ -d $T ] && mv $T $BASE/trash/t.$(date +%s%N); sync ;;
        noop) sync ;;
        drift) sh $G/drift.sh; sync ;;
      esac
      /usr/bin/time -o $BASE/time.$$ -f '%M %U %S %e' $cmd >/dev/null 2>&1 || true
      verify "$sc $name"
      echo "$sc $name $(tail -1 $BASE/time.$$)"
    done
  done
done
rm -rf $BASE/trash $BASE/time.$$
