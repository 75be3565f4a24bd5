#!/usr/bin/env bash
# Local demo on loopback: shows whatever Troupe can do so far. Everything it
# creates lives under a temporary directory that is removed at the end; no
# root needed, no traffic leaves 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --quiet
BIN="$PWD/target/debug"
export TROUPE_LOG=${TROUPE_LOG:-warn}

DEMO=$(mktemp -d -t troupe-demo-XXXXXX)
MASTER_PID=
cleanup() {
  if [ -n "$MASTER_PID" ]; then kill "$MASTER_PID" 2>/dev/null || true; wait "$MASTER_PID" 2>/dev/null || true; fi
  rm -rf "$DEMO"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

step "1. Start a master (it creates its CA on first start)"
DATA="$DEMO/master"
"$BIN/troupe" master --data "$DATA" --listen 127.0.0.1:0 2>"$DEMO/master.log" &
MASTER_PID=$!
for _ in $(seq 100); do [ -s "$DATA/listen.addr" ] && break; sleep 0.1; done
[ -s "$DATA/listen.addr" ] || { cat "$DEMO/master.log"; exit 1; }
SERVER="https://$(cat "$DATA/listen.addr")"
echo "master listening on $SERVER (data in $DATA)"
FP=$("$BIN/troupe" ca fingerprint --data "$DATA")
echo "CA fingerprint: $FP"

step "2. Two hosts join with one-time pre-shared keys (autosigned)"
for host in web1 db1; do
  PSK=$("$BIN/troupe" ca psk new "$host" --ttl 10m --data "$DATA" 2>/dev/null)
  echo "psk for $host: ${PSK:0:8}... (shown once; the master stores only its hash;"
  echo "  passed in TROUPE_PSK so it does not show in the process list)"
  TROUPE_PSK="$PSK" show "$BIN/troupe-agent" bootstrap --server "$SERVER" --name "$host" \
    --ca-fingerprint "$FP" --state "$DEMO/agents/$host"
done
ls -l "$DEMO/agents/web1"

step "3. db1's key presented for another host is refused (and nothing changes)"
TROUPE_PSK="$PSK" show "$BIN/troupe-agent" bootstrap --server "$SERVER" --name web2 \
  --ca-fingerprint "$FP" --state "$DEMO/agents/web2" || echo "(refused, as it should be)"

step "4. A host without a key waits until an operator signs it"
"$BIN/troupe-agent" bootstrap --server "$SERVER" --name app1 --ca-fingerprint "$FP" \
  --state "$DEMO/agents/app1" --poll-initial 300ms --poll-max 1s &
AGENT_PID=$!
for _ in $(seq 50); do "$BIN/troupe" ca list --pending --data "$DATA" | grep -q app1 && break; sleep 0.2; done
show "$BIN/troupe" ca list --pending --data "$DATA"
show "$BIN/troupe" ca sign app1 --data "$DATA"
wait "$AGENT_PID"

step "5. Renewal over mutual TLS"
show "$BIN/troupe-agent" renew --server "$SERVER" --state "$DEMO/agents/web1" --force

step "6. Revoke db1: it is refused at its next TLS handshake"
show "$BIN/troupe" ca revoke db1 --data "$DATA"
show "$BIN/troupe-agent" renew --server "$SERVER" --state "$DEMO/agents/db1" --force \
  || echo "(db1 refused, as it should be)"

step "7. The CA's view, and its audit log"
show "$BIN/troupe" ca list --all --data "$DATA"
echo "audit log ($DATA/ca/audit.log):"
cut -c1-160 "$DATA/ca/audit.log"

echo
echo "Demo done; removing $DEMO."
