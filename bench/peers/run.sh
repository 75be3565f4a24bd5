#!/bin/bash
# Troupe agent in the peer harness (../shared/bench/peers): the same workload, the same
# scenarios (first / noop / drift at N=100 and 1000), the same measurement (hyperfine wall
# + GNU time peak RSS), side by side with cf-agent in one run.
#
#   bench/peers/run.sh                 install build gen troupe cfengine summary
#   bench/peers/run.sh gen troupe      only some phases
#   bench/peers/run.sh gen alternate   first runs only, troupe and cf-agent alternated run
#                                      by run (first_alt.py: min/median/max, CPU, worst ratio);
#                                      OLD_BIN=/path/to/troupe-agent adds it as a third tool
#
# Knobs (env): SIZES="100 1000" RUNS=10 BASE=/tmp/cmbench RES=$BASE/results-troupe
#   PEERS=<dir of the shared harness>  (default: ../shared/bench/peers next to the repo)
#   QUIET_PCT=10 QUIET_MAX=600 REDO_PCT=10 TRIES=3   (same contamination guard as the shared run.sh)
#   FIRST_PREP=trash|rm   how 'first' empties the tree before each run (below; default trash)
#   FIRST_PREP=both       alternate phase only: each size with rm, then with trash, e.g.
#     FIRST_PREP=both SIZES="1000 10000" RUNS=6 bench/peers/run.sh gen alternate summary
#   RT_PRIO=N             alternate phase: tools run under `chrt -f N` (first_alt.py)
#
# FIRST_PREP: the shared run.sh prepares 'first' with `rm -rf DIR`. On this machine's ext4
# (no journal) the kernel then avoids, for 60 s, every inode it just freed: each new inode
# is found by scanning past all of them (ext4 find_inode_bit -> recently_deleted), so every
# create pays for every file the harness deleted in the last minute, and more the longer a
# scenario has run (10 runs of 1,102 objects: up to 11,000 skipped per create). Both tools
# pay the same milliseconds (perf: ~45 ms troupe, ~40 ms cf-agent in one such run), which
# says nothing about either tool and dwarfs a 40 ms run. FIRST_PREP=trash (default) moves
# the tree into $BASE/trash instead, so nothing is freed while a scenario runs: each run
# creates its objects on inodes nobody just freed, as on a new host. The trash is deleted
# after the scenario, and each 'first' scenario starts by waiting out the 60 s. FIRST_PREP=rm is the shared
# harness's prep, for the figures it gives.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS=${PEERS:-$(cd "$REPO/.." && pwd)/shared/bench/peers}
BASE=${BASE:-/tmp/cmbench}
RES=${RES:-$BASE/results-troupe}
SIZES=${SIZES:-"100 1000"}
FIRST_PREP=${FIRST_PREP:-trash}
case $FIRST_PREP in trash|rm|both) ;; *) echo "FIRST_PREP must be trash, rm or both, not '$FIRST_PREP'" >&2; exit 64 ;; esac
RUNS=${RUNS:-10}
# The shipped build of the agent (scripts/build-agent.sh: profile `agent`, laid-out functions).
BIN=${BIN:-${CARGO_TARGET_DIR:-$REPO/target}/agent/troupe-agent}
export LC_ALL=C.UTF-8 PEERS
mkdir -p "$RES"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$RES/run.log"; }

busy_s() { awk '/^cpu /{printf "%.2f", ($2+$3+$4+$7+$8+$9)/100}' /proc/stat; }
QUIET_PCT=${QUIET_PCT:-10}
QUIET_MAX=${QUIET_MAX:-600}
quiet_wait() {
  local waited=0 b0 b1 pct
  while :; do
    b0=$(busy_s); sleep 5; b1=$(busy_s)
    pct=$(awk -v a="$b0" -v b="$b1" -v n="$(nproc)" 'BEGIN{printf "%d", (b-a)/(5*n)*100}')
    [ "$pct" -lt "$QUIET_PCT" ] && break
    [ "$waited" -ge "$QUIET_MAX" ] && { log "quiet_wait: still ${pct}% busy after ${waited}s, going on"; break; }
    waited=$((waited + 20)); sleep 15
  done
  [ "$waited" -gt 0 ] && log "quiet_wait: waited ~${waited}s for a quiet machine"
  return 0
}

# bench ID PREPARE CMD : as the shared run.sh (hyperfine + GNU time per run + foreign load),
# with --ignore-failure because troupe-agent exits 2 when it changed something
# (puppet --detailed-exitcodes); correctness is checked by verify() after each scenario.
REDO_PCT=${REDO_PCT:-10}
TRIES=${TRIES:-3}
bench() {
  local id=$1 prep=$2 cmd=$3 b0 b1 try pct hw hu hs
  for try in $(seq 1 "$TRIES"); do
    rm -f "$RES/$id.time" "$RES/$id.json" "$RES/$id.env" "$RES/$id.hf"
    quiet_wait
    log "bench $id runs=$RUNS try=$try :: $cmd"
    b0=$(busy_s)
    /usr/bin/time -o "$RES/$id.hf" -f '%e %U %S' \
      hyperfine --style basic --ignore-failure --runs "$RUNS" --prepare "$prep" --export-json "$RES/$id.json" \
      "/usr/bin/time -a -o $RES/$id.time -f '%e %U %S %M' $cmd" 2>&1 | tee -a "$RES/run.log"
    b1=$(busy_s)
    read -r hw hu hs < "$RES/$id.hf"
    awk -v b0="$b0" -v b1="$b1" -v w="$hw" -v u="$hu" -v s="$hs" -v n="$(nproc)" -v l="$(cut -d' ' -f1-3 /proc/loadavg)" -v t="$try" \
      'BEGIN{f=(b1-b0)-(u+s); if(f<0)f=0; printf "foreign_cpu_s=%.1f foreign_pct=%.1f try=%d loadavg=\"%s\"\n", f, 100*f/(w*n), t, l}' \
      | tee "$RES/$id.env" | tee -a "$RES/run.log"
    pct=$(sed -n 's/.*foreign_pct=\([0-9.]*\).*/\1/p' "$RES/$id.env")
    awk -v p="$pct" -v t="$REDO_PCT" 'BEGIN{exit !(p > t)}' || return 0
    log "bench $id contaminated (foreign_pct=$pct)"
  done
}

verify() { # N : the managed tree is exactly converged (same checks as the shared run.sh)
  local n=$1 t=$BASE/t$1 g=$BASE/g$1 bad
  sha256sum -c --quiet "$g/expected.sha256" || { log "VERIFY FAIL content N=$n"; return 1; }
  bad=$( (find "$t" -type f ! -perm 0644; find "$t" -type d ! -perm 0755) | wc -l)
  [ "$bad" = 0 ] || { log "VERIFY FAIL modes N=$n ($bad objects)"; return 1; }
  [ "$(find "$t" -type f | wc -l)" = $((n + 1)) ] || { log "VERIFY FAIL file count N=$n"; return 1; }
  log "verify N=$n ok"
}

cmd_for() { # tool N
  local g=$BASE/g$2
  case $1 in
    troupe)   echo "$BIN run --once --output quiet --catalog $g/troupe/catalog.json --state $BASE/troupe-state$2" ;;
    cfengine) echo "cf-agent -KI -f $g/cfengine/promises.cf" ;;
  esac
}

scenarios() { # tool N
  local tool=$1 n=$2 sc prep
  for sc in first noop drift; do
    case $sc-$FIRST_PREP in
      first-rm) prep="rm -rf $BASE/t$n; sync" ;;
      first-trash)
        mkdir -p "$BASE/trash"
        log "waiting 61 s: ext4 avoids inodes freed in the last 60 s (see FIRST_PREP)"
        sync; sleep 61
        prep="mv $BASE/t$n $BASE/trash/t$n.\$(date +%s%N) 2>/dev/null; sync" ;;
      noop-*)  prep="sync" ;;
      drift-*) prep="sh $BASE/g$n/drift.sh; sync" ;;
    esac
    bench "$tool-$n-$sc" "$prep" "$(cmd_for "$tool" "$n")"
    verify "$n"
    if [ "$sc" = first ] && [ -d "$BASE/trash" ]; then rm -rf "$BASE/trash"; sync; fi
  done
}

phase_install() {
  command -v cf-agent >/dev/null && command -v hyperfine >/dev/null && [ -x /usr/bin/time ] && return 0
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q cfengine3 hyperfine time python3
}
phase_build() { "$REPO/scripts/build-agent.sh" >/dev/null; }
phase_gen() {
  for n in $SIZES; do
    "$PEERS/gen_workload.sh" "$n" "$BASE/t$n" "$BASE/g$n"
    python3 "$HERE/gen_troupe.py" "$n" "$BASE/t$n" "$BASE/g$n"
  done
}
no_both() { [ "$FIRST_PREP" != both ] || { echo "FIRST_PREP=both is for the alternate phase only" >&2; exit 64; }; }
phase_troupe()   { no_both; for n in $SIZES; do scenarios troupe "$n"; done; }
phase_cfengine() { no_both; for n in $SIZES; do scenarios cfengine "$n"; done; }
phase_floor() { # startup floor: an empty catalog
  python3 - "$BASE/empty-catalog.json" <<'PY'
import json, sys
json.dump({"format": 1, "node": "bench.example", "environment": "production",
           "code_version": "empty", "resources": [], "contents": {}}, open(sys.argv[1], "w"))
PY
  bench floor-troupe sync "$BIN run --once --output quiet --catalog $BASE/empty-catalog.json --state $BASE/troupe-state-empty"
}
# first runs only, troupe and cf-agent alternated run by run (first_alt.py), per size and
# prep (FIRST_PREP=both: rm, then trash); min / median / max, worst-run ratios; the summary
# phase tabulates every first-alt-N-PREP.jsonl in $RES.
phase_alternate() {
  local n prep preps extra
  preps=$FIRST_PREP; [ "$preps" = both ] && preps="rm trash"
  for n in $SIZES; do
    for prep in $preps; do
      extra=()
      [ -n "${OLD_BIN:-}" ] && extra=("troupe-old=$OLD_BIN run --once --output quiet --catalog $BASE/g$n/troupe/catalog.json --state $BASE/troupe-old-state$n")
      BASE=$BASE FIRST_PREP=$prep python3 "$HERE/first_alt.py" "$n" "$RUNS" "$RES" \
        "troupe=$(cmd_for troupe "$n")" "cfengine=$(cmd_for cfengine "$n")" "${extra[@]}" \
        | tee "$RES/first-alt-$n-$prep.md" | tee -a "$RES/run.log"
    done
  done
}
phase_summary() {
  { echo "versions: $("$BIN" --version); $(cf-agent --version 2>/dev/null | head -1); $(hyperfine --version)"
    python3 "$HERE/summarize.py" "$RES"; } | tee "$RES/summary.md"
}

phases=${*:-install build gen troupe cfengine floor summary}
for p in $phases; do "phase_$p"; done
