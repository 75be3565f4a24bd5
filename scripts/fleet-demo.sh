#!/usr/bin/env bash
# The booted-fleet demo: three blank Debian 12 hosts, each a systemd-nspawn
# container with a real systemd as PID 1 and its own network namespace on a
# private switch; a master serving the shipped modules; the troupe-agent
# package from the fleet's own apt repository; `systemctl enable --now
# troupe-agent` on all three, and the time from that start to each host's
# converged `web` role; then nginx over TLS with each host's own
# certificate, checked by curl from its neighbour against the Troupe CA.
#
# NEEDS ROOT (network namespaces, overlay mounts, systemd-nspawn), the
# packages systemd-container and dpkg-dev, and the cached booted image and
# role packages of scripts/debian-root.sh (built here if missing: a few
# minutes, once). The hosts install nginx, haproxy, ... from the fleet's own
# repository; nothing is fetched from outside while the demo runs.
# No traffic leaves the demo's namespaces; everything is removed at the end.
# The quick demo without root is ./scripts/demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "fleet-demo.sh: needs root (network namespaces, overlay mounts, systemd-nspawn); try: sudo $0" >&2
  exit 1
fi
for t in systemd-nspawn nsenter dpkg-scanpackages; do
  command -v "$t" >/dev/null || {
    echo "fleet-demo.sh: $t is missing (apt-get install systemd-container util-linux dpkg-dev)" >&2
    exit 1
  }
done
TROUPE_BOOTED_ROOT="${TROUPE_BOOTED_ROOT:-$(./scripts/debian-root.sh --booted)}"
export TROUPE_BOOTED_ROOT
cargo build --workspace --bins --quiet
export TROUPE_LOG=${TROUPE_LOG:-warn}
exec ./target/debug/troupe-fleet-demo
