#!/usr/bin/env bash
# Troupe's local demo: the whole loop on loopback, in a few seconds.
#
#   a master (CA + compiler, serving the shipped module tree), three hosts
#   bootstrapped by one-time PSK, each converging into its own sandbox root
#   (nothing outside a temporary directory is touched), idempotence, drift
#   repair, a module change picked up without a restart, the fleet view, a
#   signed command from a "bastion", and a revoked host refused.
#
# No root needed; no traffic leaves 127.0.0.1; everything is removed at the
# end (set TROUPE_DEMO_KEEP=1 to keep it). Hosts are named *.demo, which the
# shipped site.toml classifies into the sandbox-safe `demo` environment.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in cc make; do
  command -v "$tool" >/dev/null || {
    echo "demo.sh: $tool is missing: the build needs a C compiler and make (the master links jemalloc); apt-get install build-essential" >&2
    exit 1
  }
done
cargo build --workspace --bins --quiet
BIN="$PWD/target/debug"
export TROUPE_LOG=${TROUPE_LOG:-warn}

DEMO=$(mktemp -d -t troupe-demo-XXXXXX)
PIDS=()
cleanup() {
  # Agents first, then the master (last in, first out); SIGKILL whatever
  # has not exited a second later.
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ -n "${TROUPE_DEMO_KEEP:-}" ]; then echo "kept $DEMO"; else rm -rf "$DEMO"; fi
}
trap cleanup EXIT

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }
troupe() { "$BIN/troupe" "$@"; }
agent() { "$BIN/troupe-agent" "$@"; }

HOSTS=(web1.demo web2.demo db1.demo)
DATA="$DEMO/master"
MODULES="$DEMO/modules"
cp -r modules "$MODULES"

bold "1. A master: certificate authority + catalog compiler for the shipped module tree"
"$BIN/troupe" master --data "$DATA" --listen 127.0.0.1:0 --modules "$MODULES" --code-poll 300ms \
  2>"$DEMO/master.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$DATA/listen.addr" ] && break; sleep 0.1; done
[ -s "$DATA/listen.addr" ] || { cat "$DEMO/master.log"; exit 1; }
SERVER="https://$(cat "$DATA/listen.addr")"
FP=$(troupe ca fingerprint --data "$DATA")
echo "master on $SERVER, CA fingerprint $FP"

bold "2. Hosts join with one-time pre-shared keys (CSR autosigned when the key matches)"
for h in "${HOSTS[@]}"; do
  PSK=$(troupe ca psk new "$h" --ttl 10m --data "$DATA" 2>/dev/null)
  # The key goes in TROUPE_PSK so it never shows in the process list.
  TROUPE_PSK="$PSK" agent bootstrap --server "$SERVER" --name "$h" \
    --ca-fingerprint "$FP" --state "$DEMO/agents/$h" 2>&1 | tail -1
done
echo "-- db1.demo's used key, replayed for another host, is refused:"
TROUPE_PSK="$PSK" agent bootstrap --server "$SERVER" --name web9.demo --ca-fingerprint "$FP" \
  --state "$DEMO/agents/web9.demo" 2>&1 | tail -1 || true
echo "-- a host without a key waits until an operator signs it:"
"$BIN/troupe-agent" bootstrap --server "$SERVER" --name bastion.demo --ca-fingerprint "$FP" \
  --state "$DEMO/bastion" --poll-initial 200ms --poll-max 500ms >/dev/null 2>&1 &
BPID=$!
for _ in $(seq 50); do troupe ca list --pending --data "$DATA" | grep -q bastion && break; sleep 0.2; done
show troupe ca list --pending --data "$DATA"
show troupe ca sign bastion.demo --data "$DATA"
wait "$BPID"

converge() { # host [extra args]: one run into the host's sandbox root
  local h=$1; shift
  agent run --once --server "$SERVER" --state "$DEMO/agents/$h" --root "$DEMO/roots/$h" "$@"
}
for h in "${HOSTS[@]}"; do mkdir -p "$DEMO/roots/$h/etc" "$DEMO/roots/$h/srv"; done

bold "3. Each agent pulls its own catalog over mutual TLS and converges its sandbox"
for h in "${HOSTS[@]}"; do
  printf '\033[2m$ troupe-agent run --once --server %s --root roots/%s\033[0m\n' "$SERVER" "$h"
  converge "$h" --output summary || true   # exit 2 = changes made
done
echo "-- web1.demo's sandbox now holds:"
(cd "$DEMO/roots/web1.demo" && find . -mindepth 1 | sort | sed 's/^/   /')
show cat "$DEMO/roots/web1.demo/etc/motd"
show cat "$DEMO/roots/web2.demo/etc/app/app.conf"

bold "4. A second run changes nothing (exit 0: idempotent)"
converge web1.demo --output summary && echo "exit 0"

bold "5. Drift is repaired, with a diff"
echo "hand-edited" >"$DEMO/roots/web1.demo/etc/motd"
chmod 600 "$DEMO/roots/web1.demo/etc/app/app.conf"
converge web1.demo || true

bold "6. A change to the module tree is served on the next run, without a restart"
printf '[site]\nrelease = "2"\n' >>"$MODULES/environments/demo/data/roles/web.toml"
sleep 1
converge web2.demo || true
show readlink "$DEMO/roots/web2.demo/srv/www/current"

bold "7. The operator's view of the fleet"
show troupe nodes --data "$DATA"
show troupe report web2.demo --data "$DATA"

bold "8. A signed command from the bastion, verified by every agent before it acts"
printf 'demo passphrase\n' >"$DEMO/pass"
show troupe key new --out "$DEMO/alice.key" --passphrase-file "$DEMO/pass"
KEYID=$(cat "$DEMO/alice.key.pub" | grep -o 'ed25519:[A-Za-z0-9+/=]*' | head -1)
printf '[[signer]]\nname = "alice"\nkey = "%s"\n' "$KEYID" >"$DATA/signers.toml"
for h in "${HOSTS[@]}"; do
  role=web; [ "$h" = db1.demo ] && role=db
  cat >"$DEMO/agents/$h/orchestration.toml" <<EOF
role = "$role"

[[signer]]
name = "alice"
key = "$KEYID"

[[rule]]
name = "ops may ping and use maintenance mode"
effect = "allow"
signers = ["alice"]
actions = ["ping", "facts", "maintenance.*"]

[[rule]]
name = "never maintenance on databases"
effect = "deny"
signers = ["*"]
actions = ["maintenance.on"]
roles = ["db"]
EOF
  "$BIN/troupe-agent" listen --server "$SERVER" --state "$DEMO/agents/$h" 2>>"$DEMO/agents-listen.log" &
  PIDS+=($!)
done
sleep 1.5
run() { troupe run "$@" --server "$SERVER" --identity "$DEMO/bastion" \
  --key "$DEMO/alice.key" --passphrase-file "$DEMO/pass" --timeout 5s; }
printf '\033[2m$ troupe run ping --name "*.demo"\033[0m\n'
run ping --name '*.demo' || true
printf '\033[2m$ troupe run maintenance.on message="kernel update"   (policy denies it on db)\033[0m\n'
run maintenance.on message="kernel update" || true
printf '\033[2m$ troupe run service.restart name="nginx; rm -rf /"   (refused before anything runs)\033[0m\n'
run service.restart 'name=nginx; rm -rf /' || true

bold "9. Revoke db1.demo: refused at its next TLS handshake"
show troupe ca revoke db1.demo --data "$DATA"
converge db1.demo --output summary 2>&1 | grep -o 'received fatal alert: [A-Za-z]*' | head -1 || true
echo "(its agent converged from its cached catalog and keeps the report queued)"

bold "Done"
echo "(run with TROUPE_DEMO_KEEP=1 to keep $DEMO: the master log, the CA and access audit logs, the sandboxes)"
