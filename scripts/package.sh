#!/usr/bin/env bash
# Builds Troupe's packages from a release build into target/packages/:
#   troupe_VERSION_amd64.deb, troupe-agent_VERSION_amd64.deb   (Debian 12+)
#   troupe-VERSION-1.x86_64.rpm, troupe-agent-VERSION-1.x86_64.rpm (EL 9)
# and prints their paths, one per line, on stdout (progress on stderr).
#
# Each package holds the stripped binary, its systemd unit, the default
# config file as a conffile (/etc/troupe/master.toml, agent.toml), shell
# completions (bash, zsh, fish) and a man page per subcommand (made by the
# binary's hidden `package-assets` subcommand from its clap definitions).
# The packaging sources are in packaging/; dpkg-deb and rpmbuild do the
# archive formats.
#
# Idempotent: running it again rebuilds the same packages; the builds are
# no-ops when up to date. troupe is the release build, troupe-agent the
# `agent` build of scripts/build-agent.sh (target/agent/, docs/adr/0011).
#   TROUPE_PACKAGE_BIN_DIR=DIR  take troupe and troupe-agent from DIR
#                               instead of building (e.g. target/debug
#                               for a quick test build; they are stripped)
#   TROUPE_PACKAGE_OUT=DIR      write the packages there instead
#   SOURCE_DATE_EPOCH           timestamps in the archives (default: the
#                               last commit's time)
# Needs: dpkg-deb, rpmbuild, strip, gzip, objdump, nm.
set -euo pipefail
cd "$(dirname "$0")/.."
top="$(pwd)"
target_dir="$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)"
out="$(mkdir -p "${TROUPE_PACKAGE_OUT:-$target_dir/packages}" && cd "${TROUPE_PACKAGE_OUT:-$target_dir/packages}" && pwd)"
work="$out/work"

for tool in dpkg-deb rpmbuild strip gzip objdump nm; do
  command -v "$tool" >/dev/null || { echo "package.sh: $tool is missing (apt-get install dpkg-dev rpm binutils)" >&2; exit 1; }
done

bin_dir="${TROUPE_PACKAGE_BIN_DIR:-}"
if [ -z "$bin_dir" ]; then
  cargo build --release --bins -p troupe-master >&2
  bin_dir="$target_dir/release"
  # The agent has its own build (profile `agent`, laid-out functions: ADR 0011).
  agent_bin="$(./scripts/build-agent.sh)"
else
  agent_bin="$bin_dir/troupe-agent"
fi
# bin_path BIN: the binary to package.
bin_path() {
  if [ "$1" = troupe-agent ]; then echo "$agent_bin"; else echo "$bin_dir/$1"; fi
}
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
[ -n "$version" ] || { echo "package.sh: no version in Cargo.toml [workspace.package]" >&2; exit 1; }
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"

rm -rf "$work"
mkdir -p "$work" "$out"
umask 022

# The highest GLIBC_x.y symbol version a binary needs.
glibc_needed() {
  objdump -T "$1" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1
}

# stage PKG BIN UNIT CONF FLAVOUR(deb|rpm): the installed tree in $work/FLAVOUR/PKG.
stage() {
  local pkg=$1 bin=$2 unit=$3 conf=$4 flavour=$5
  local r="$work/$flavour/$pkg"
  local unitdir=/usr/lib/systemd/system zshdir=/usr/share/zsh/site-functions
  if [ "$flavour" = deb ]; then
    unitdir=/lib/systemd/system
    zshdir=/usr/share/zsh/vendor-completions
  fi
  install -d "$r/usr/bin" "$r$unitdir" "$r/etc/troupe" "$r/usr/share/man/man1" \
    "$r/usr/share/bash-completion/completions" "$r$zshdir" \
    "$r/usr/share/fish/vendor_completions.d"
  install -m 0755 "$(bin_path "$bin")" "$r/usr/bin/$bin"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note "$r/usr/bin/$bin"
  install -m 0644 "packaging/systemd/$unit" "$r$unitdir/$unit"
  install -m 0644 "packaging/etc/$conf" "$r/etc/troupe/$conf"
  local assets="$work/assets-$bin"
  if [ ! -d "$assets" ]; then
    "$(bin_path "$bin")" package-assets "$assets" >&2
  fi
  install -m 0644 "$assets/completions/$bin.bash" "$r/usr/share/bash-completion/completions/$bin"
  install -m 0644 "$assets/completions/_$bin" "$r$zshdir/_$bin"
  install -m 0644 "$assets/completions/$bin.fish" "$r/usr/share/fish/vendor_completions.d/$bin.fish"
  for page in "$assets"/man/*.1; do
    gzip -9n <"$page" >"$r/usr/share/man/man1/$(basename "$page").gz"
    chmod 0644 "$r/usr/share/man/man1/$(basename "$page").gz"
  done
  if [ "$pkg" = troupe ]; then
    install -d -m 0700 "$r/var/lib/troupe"
    install -D -m 0644 packaging/troupe.sysusers "$r/usr/lib/sysusers.d/troupe.conf"
  else
    install -d -m 0700 "$r/var/lib/troupe-agent"
  fi
  if [ "$flavour" = deb ]; then
    install -D -m 0644 packaging/copyright "$r/usr/share/doc/$pkg/copyright"
    install -D -m 0644 "packaging/deb/$pkg.lintian-overrides" "$r/usr/share/lintian/overrides/$pkg"
    printf '%s (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- Troupe developers <troupe@example.org>  %s\n' \
      "$pkg" "$version" "$version" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")" \
      | gzip -9n >"$r/usr/share/doc/$pkg/changelog.gz"
    chmod 0644 "$r/usr/share/doc/$pkg/changelog.gz"
  else
    install -D -m 0644 packaging/copyright "$r/usr/share/licenses/$pkg/LICENSE"
  fi
  find "$r" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}

build_deb() {
  local pkg=$1 bin=$2
  local r="$work/deb/$pkg"
  install -d -m 0755 "$r/DEBIAN"
  local size glibc
  size="$(du -sk --exclude=DEBIAN "$r" | cut -f1)"
  glibc="$(glibc_needed "$r/usr/bin/$bin")"
  sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" \
      -e "s/@DEPENDS@/libc6 (>= $glibc), libgcc-s1/" \
      "packaging/deb/$pkg.control" >"$r/DEBIAN/control"
  (cd "$r" && find etc -type f | sed 's|^|/|' | sort) >"$r/DEBIAN/conffiles"
  for s in postinst prerm postrm; do
    install -m 0755 "packaging/deb/$pkg.$s" "$r/DEBIAN/$s"
  done
  (cd "$r" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$r/DEBIAN/md5sums"
  chmod 0644 "$r/DEBIAN/control" "$r/DEBIAN/conffiles" "$r/DEBIAN/md5sums"
  local deb="$out/${pkg}_${version}_amd64.deb"
  dpkg-deb --root-owner-group -Zgzip -z6 --build "$r" "$deb" >&2
  echo "$deb"
}

build_rpm() {
  local pkg=$1
  local r="$work/rpm/$pkg" top_rpm="$work/rpmbuild-$pkg"
  mkdir -p "$top_rpm"
  sed -e "s/@VERSION@/$version/g" -e "s|@STAGE@|$r|" \
      -e "s/@CHANGELOG_DATE@/$(LC_ALL=C date -u -d "@$SOURCE_DATE_EPOCH" '+%a %b %d %Y')/" \
      "packaging/rpm/$pkg.spec" >"$top_rpm/$pkg.spec"
  rpmbuild -bb --quiet \
    --define "_topdir $top_rpm" \
    --define "_rpmdir $out" \
    --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    --define "use_source_date_epoch_as_buildtime 1" \
    --define "clamp_mtime_to_source_date_epoch 1" \
    --define "_binary_payload w6.gzdio" \
    "$top_rpm/$pkg.spec" >&2
  echo "$out/$pkg-$version-1.x86_64.rpm"
}

stage troupe troupe troupe-master.service master.toml deb
stage troupe-agent troupe-agent troupe-agent.service agent.toml deb
stage troupe troupe troupe-master.service master.toml rpm
stage troupe-agent troupe-agent troupe-agent.service agent.toml rpm
build_deb troupe troupe
build_deb troupe-agent troupe-agent
build_rpm troupe
build_rpm troupe-agent
rm -rf "$work"
