#!/usr/bin/env bash
# Builds a real Debian 12 (bookworm) root with debootstrap, with the packages
# the shipped `base` and `web` roles manage, for the end-to-end converge test
# (tests/tests/modules_debian_root.rs). Prints the path of the root's tarball
# on stdout; progress goes to stderr.
#
# The tarball is cached under /var/cache/troupe/ (TROUPE_CACHE_DIR), keyed by
# the suite, mirror, package list and this script's recipe version, so a
# second run reuses it. `debian-root.tar` in that directory is a symlink to
# the current one: the test looks there unless TROUPE_DEBIAN_ROOT names a
# tarball or a root directory.
#
# Services never start inside the root: a policy-rc.d that refuses every
# action is written before any service package is installed, and stays in
# the root (converging under --root does not manage services either).
#
# Needs root, debootstrap and the Debian mirror. Usage:
#   scripts/debian-root.sh            build (or reuse) and print the path
#   scripts/debian-root.sh --rebuild  build even if a cached tarball exists
set -euo pipefail

suite=bookworm
mirror="${TROUPE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache_dir="${TROUPE_CACHE_DIR:-/var/cache/troupe}"
recipe=1
# What the base and web roles' catalogs name as packages (check with
# `troupe catalog compile web1.example.com --facts .../debian12.json`), plus
# the tools their execs, guards and validators call inside the root.
packages=(
  openssh-server ufw fail2ban python3-systemd unattended-upgrades chrony
  sudo logrotate vim ca-certificates curl nginx haproxy
  procps systemd
)

rebuild=0
case "${1:-}" in
  "") ;;
  --rebuild) rebuild=1 ;;
  -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "debian-root.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  echo "debian-root.sh: must run as root (debootstrap and chroot need it)" >&2
  exit 1
fi
command -v debootstrap >/dev/null || {
  echo "debian-root.sh: debootstrap is not installed (apt-get install debootstrap)" >&2
  exit 1
}

key="$(printf '%s\n' "$recipe" "$suite" "$mirror" "${packages[@]}" | sha256sum | cut -c1-16)"
tarball="$cache_dir/debian-root-$suite-$key.tar"
mkdir -p "$cache_dir"
if [ "$rebuild" -eq 0 ] && [ -s "$tarball" ]; then
  ln -sfn "$(basename "$tarball")" "$cache_dir/debian-root.tar"
  echo "debian-root.sh: reusing $tarball" >&2
  echo "$tarball"
  exit 0
fi

work="$(mktemp -d "$cache_dir/build.XXXXXX")"
root="$work/root"
cleanup() {
  # debootstrap mounts /proc and /sys in the target while it runs; if it
  # stopped half-way, unmount whatever is left (deepest first) before
  # removing, and never cross into another file system.
  if [ -d "$root" ]; then
    awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r |
      while read -r m; do umount -l "$m" || true; done
  fi
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

start=$(date +%s)
echo "debian-root.sh: debootstrap --variant=minbase $suite into $root" >&2
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  echo "debian-root.sh: debootstrap failed (full log above)" >&2
  exit 1
}
t_boot=$(( $(date +%s) - start ))

# No service may start inside the root, now or later.
printf '#!/bin/sh\n# Troupe test root: never start services here.\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

echo "debian-root.sh: installing ${packages[*]}" >&2
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C "$@"; }
{
  in_root apt-get update -qq &&
  in_root apt-get install -y -qq --no-install-recommends "${packages[@]}" &&
  in_root apt-get clean
} >"$work/install.log" 2>&1 || {
  tail -n 30 "$work/install.log" >&2
  echo "debian-root.sh: installing packages in the root failed (log above)" >&2
  exit 1
}
rm -rf "$root/var/lib/apt/lists/"*
t_total=$(( $(date +%s) - start ))

tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
sync "$tarball.tmp"
mv "$tarball.tmp" "$tarball"
ln -sfn "$(basename "$tarball")" "$cache_dir/debian-root.tar"
echo "debian-root.sh: debootstrap ${t_boot}s, packages $((t_total - t_boot))s, $(du -sh "$tarball" | cut -f1) in $tarball" >&2
echo "$tarball"
