#!/usr/bin/env bash
# Builds the Debian 12 (bookworm) roots the tests run on, once, with
# debootstrap, and caches them:
#
# - the root for the end-to-end converge test
#   (tests/tests/modules_debian_root.rs): the base below plus the packages
#   the shipped `base` and `web` roles manage, preinstalled (converging
#   under --root manages files, not packages);
# - the booted hosts' image (tests/src/nspawn.rs, the booted_* tests,
#   scripts/fleet-demo.sh): the same base WITHOUT any role package: systemd,
#   apt, iproute2, procps and python3 (the in-house test application's
#   runtime) only;
# - the role packages: every package the shipped roles install on Debian
#   (nginx, haproxy, fail2ban, ufw, chrony, squid, clamav, postgresql, ...)
#   with all the dependencies the booted image lacks, fetched from the
#   mirror once and indexed (Packages) for the fleet's own apt repository:
#   booted hosts install them from it, never from the internet.
#
# Everything is cached under /var/cache/troupe/ (TROUPE_CACHE_DIR), keyed by
# the suite, mirror, package lists and this script's recipe version, so a
# second run reuses it and a changed list builds (and fetches) again:
#   debian-root-bookworm-KEY.tar       the converge test's root
#   debian-booted-bookworm-KEY.tar     the booted hosts' image
#   debian-booted-bookworm-KEY.debs/   the role packages + Packages index
# with `debian-root.tar` and `debian-booted-root.tar` symlinks to the
# current ones: the tests look there unless TROUPE_DEBIAN_ROOT (converge
# test) or TROUPE_BOOTED_ROOT (booted hosts; its packages are the `.debs`
# directory beside the tarball, or TROUPE_BOOTED_DEBS) say otherwise.
#
# Services never start inside the roots while they are built: a policy-rc.d
# that refuses every action is written before any service package is
# installed, and stays in the roots (converging under --root does not
# manage services either; the booted test bed removes it from each host).
#
# Needs root, debootstrap, dpkg-scanpackages (dpkg-dev) and the Debian
# mirror. Usage:
#   scripts/debian-root.sh            build (or reuse); print the converge
#                                     test's root tarball
#   scripts/debian-root.sh --booted   the same; print the booted image's
#   scripts/debian-root.sh --rebuild  build even if cached (with --booted too)
set -euo pipefail

suite=bookworm
mirror="${TROUPE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache_dir="${TROUPE_CACHE_DIR:-/var/cache/troupe}"
recipe=2
# The booted hosts' image: what a blank host has before any role runs.
base_packages=(systemd systemd-sysv iproute2 procps python3)
# Every package the shipped roles install on Debian (check with `troupe
# catalog compile HOST --facts catalog/compiler/tests/facts/debian12.json`
# for web1, lb1, bastion1, proxy1, db1 and any other host): the fleet
# repository holds them and their dependencies.
role_packages=(
  openssh-server ufw fail2ban python3-systemd unattended-upgrades chrony
  sudo logrotate vim ca-certificates curl nginx haproxy
  squid clamav clamav-freshclam postgresql
)
# The converge test's root: the base and web roles' packages, plus the
# tools their execs, guards and validators call inside the root.
root_packages=(
  openssh-server ufw fail2ban python3-systemd unattended-upgrades chrony
  sudo logrotate vim ca-certificates curl nginx haproxy
  procps systemd
)

rebuild=0
print=root
for arg in "$@"; do
  case "$arg" in
    --rebuild) rebuild=1 ;;
    --booted) print=booted ;;
    -h|--help) sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "debian-root.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "debian-root.sh: must run as root (debootstrap and chroot need it)" >&2
  exit 1
fi
command -v debootstrap >/dev/null || {
  echo "debian-root.sh: debootstrap is not installed (apt-get install debootstrap)" >&2
  exit 1
}
command -v dpkg-scanpackages >/dev/null || {
  echo "debian-root.sh: dpkg-scanpackages is not installed (apt-get install dpkg-dev)" >&2
  exit 1
}

key="$(printf '%s\n' "$recipe" "$suite" "$mirror" "${base_packages[@]}" -- \
  "${role_packages[@]}" -- "${root_packages[@]}" | sha256sum | cut -c1-16)"
tarball="$cache_dir/debian-root-$suite-$key.tar"
booted="$cache_dir/debian-booted-$suite-$key.tar"
debs="$cache_dir/debian-booted-$suite-$key.debs"
mkdir -p "$cache_dir"
done_msg() {
  ln -sfn "$(basename "$tarball")" "$cache_dir/debian-root.tar"
  ln -sfn "$(basename "$booted")" "$cache_dir/debian-booted-root.tar"
  if [ "$print" = booted ]; then echo "$booted"; else echo "$tarball"; fi
}
if [ "$rebuild" -eq 0 ] && [ -s "$tarball" ] && [ -s "$booted" ] && [ -s "$debs/Packages" ]; then
  echo "debian-root.sh: reusing $tarball, $booted and $debs" >&2
  done_msg
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
# Test hosts are thrown away after each test: dpkg need not fsync every
# file it unpacks (as Debian's container images do), which makes the booted
# hosts' package installs several times faster on a busy disk.
echo force-unsafe-io > "$root/etc/dpkg/dpkg.cfg.d/troupe-test-unsafe-io"
# Like the roots have always been built (--no-install-recommends): a host
# installs what a package depends on, not what it recommends, so the fleet
# repository holds exactly what the roles need.
printf 'APT::Install-Recommends "false";\n' > "$root/etc/apt/apt.conf.d/90troupe-test-no-recommends"

in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C "$@"; }
step() {
  local what="$1"; shift
  "$@" >>"$work/install.log" 2>&1 || {
    tail -n 30 "$work/install.log" >&2
    echo "debian-root.sh: $what failed (log above)" >&2
    exit 1
  }
}
echo "debian-root.sh: base: ${base_packages[*]}" >&2
step "apt-get update in the root" in_root apt-get update -qq
step "installing the base packages" in_root apt-get install -y -qq --no-install-recommends "${base_packages[@]}"
step "apt-get clean" in_root apt-get clean
t_base=$(( $(date +%s) - start ))

# The role packages and every dependency the base lacks, fetched into the
# root's (now empty) apt cache, then indexed beside the booted image.
echo "debian-root.sh: fetching the role packages: ${role_packages[*]}" >&2
step "fetching the role packages" in_root apt-get install -y -qq --no-install-recommends --download-only "${role_packages[@]}"
mkdir -p "$work/debs"
cp -a "$root"/var/cache/apt/archives/*.deb "$work/debs/"
(cd "$work/debs" && dpkg-scanpackages --multiversion . > Packages 2>"$work/scan.log") || {
  cat "$work/scan.log" >&2
  echo "debian-root.sh: dpkg-scanpackages failed" >&2
  exit 1
}
t_fetch=$(( $(date +%s) - start ))

# The booted image: the base as it is now, without Debian's package lists
# and fetched files (a booted host's only apt source is the fleet's).
tar -C "$root" --numeric-owner \
  --exclude='./var/lib/apt/lists/*' --exclude='./var/cache/apt/archives/*.deb' \
  -cf "$booted.tmp" .
sync "$booted.tmp"

# The converge test's root: the base plus the base and web roles'
# packages, installed from what was just fetched.
echo "debian-root.sh: installing ${root_packages[*]}" >&2
step "installing packages in the root" in_root apt-get install -y -qq --no-install-recommends "${root_packages[@]}"
step "apt-get clean" in_root apt-get clean
rm -rf "$root/var/lib/apt/lists/"*
t_total=$(( $(date +%s) - start ))

tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
sync "$tarball.tmp"
rm -rf "$debs"
mv "$work/debs" "$debs"
mv "$booted.tmp" "$booted"
mv "$tarball.tmp" "$tarball"
echo "debian-root.sh: debootstrap ${t_boot}s, base $((t_base - t_boot))s, role packages fetched $((t_fetch - t_base))s ($(ls "$debs" | grep -c '\.deb$') .debs, $(du -sh "$debs" | cut -f1)), root packages $((t_total - t_fetch))s" >&2
echo "debian-root.sh: $(du -sh "$tarball" | cut -f1) in $tarball, $(du -sh "$booted" | cut -f1) in $booted" >&2
done_msg
