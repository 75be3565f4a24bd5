//! package provider: dpkg/apt on the Debian family, rpm/dnf (or yum) on the
//! RedHat family, chosen by the `os.family` fact (or, without facts, by
//! which tool exists).
//!
//! Under `--root DIR` the real tools work inside the root: `dpkg --root`,
//! `rpm --root`, `dnf --installroot`. apt has no root option, so on a Debian
//! root a package is installed only from a local package directory
//! (`--package-dir`, files `NAME_VERSION_ARCH.deb`); otherwise the resource
//! fails and says why.

use super::{Ctx, Outcome, cmd};
use anyhow::Context;
use std::path::{Path, PathBuf};
use troupe_catalog::{Kind, PackageEnsure};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Manager {
    Dpkg,
    Rpm,
}

pub(crate) fn manager(ctx: &Ctx) -> anyhow::Result<Manager> {
    match ctx.os_family.as_str() {
        "Debian" => return Ok(Manager::Dpkg),
        "RedHat" => return Ok(Manager::Rpm),
        _ => {}
    }
    // Configured tools (orchestration `[tools]`) say which family this is.
    if ctx.tools.has("dpkg-query") || ctx.tools.has("apt-get") {
        return Ok(Manager::Dpkg);
    }
    if ctx.tools.has("rpm") || ctx.tools.has("dnf") {
        return Ok(Manager::Rpm);
    }
    if Path::new("/usr/bin/dpkg").exists() {
        Ok(Manager::Dpkg)
    } else if Path::new("/usr/bin/rpm").exists() {
        Ok(Manager::Rpm)
    } else {
        anyhow::bail!(
            "no package provider for OS family {:?} (supported: Debian, RedHat)",
            ctx.os_family
        )
    }
}

fn root_arg(ctx: &Ctx, flag: &str) -> Vec<String> {
    if ctx.in_root() {
        vec![format!("{flag}={}", ctx.root.display())]
    } else {
        vec![]
    }
}

/// Versions of the installed instances of `name` (empty: not installed).
/// More than one for multi-arch/multilib packages or kernels.
pub(crate) fn installed(ctx: &Ctx, m: Manager, name: &str) -> anyhow::Result<Vec<String>> {
    match m {
        Manager::Dpkg => {
            let mut a = vec![ctx.tools.path("dpkg-query")];
            if ctx.in_root() {
                a.push(format!(
                    "--admindir={}",
                    ctx.root.join("var/lib/dpkg").display()
                ));
            }
            a.extend(cmd::argv(&[
                "-W",
                "-f",
                "${db:Status-Abbrev}|${Version}\n",
                "--",
                name,
            ]));
            let o = cmd::run(&cmd::Spec {
                argv: &a,
                ..Default::default()
            })?;
            if !o.ok() {
                return Ok(Vec::new()); // unknown package
            }
            Ok(parse_dpkg_query(&o.output))
        }
        Manager::Rpm => {
            let mut a = vec![ctx.tools.path("rpm")];
            a.extend(root_arg(ctx, "--root"));
            a.extend(cmd::argv(&[
                "-q",
                "--qf",
                "%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\n",
                "--",
                name,
            ]));
            let o = cmd::run(&cmd::Spec {
                argv: &a,
                ..Default::default()
            })?;
            if !o.ok() {
                return Ok(Vec::new()); // "package NAME is not installed"
            }
            Ok(o.output
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect())
        }
    }
}

/// `dpkg-query -W -f '${db:Status-Abbrev}|${Version}\n'` output: the
/// versions of the entries that are installed ("ii ": second letter `i`;
/// "rc " = removed with config files left, "un " = unknown).
fn parse_dpkg_query(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_once('|'))
        .filter(|(status, _)| status.as_bytes().get(1) == Some(&b'i'))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// Whether an installed version `have` is the version `want` asks for, as
/// the package manager sees it: an epoch of 0 is the same as none; with
/// rpm, a version pinned without its release (`1.2`) matches any release,
/// and one pinned without an epoch matches whatever epoch is installed
/// (that is what `dnf install NAME-1.2` would pick).
pub(crate) fn same_version(m: Manager, want: &str, have: &str) -> bool {
    let no_zero = |v: &'_ str| -> String { v.strip_prefix("0:").unwrap_or(v).to_owned() };
    let (want, have) = (no_zero(want), no_zero(have));
    if want == have {
        return true;
    }
    if m == Manager::Dpkg {
        return false;
    }
    let have = if want.contains(':') {
        have.as_str()
    } else {
        without_epoch(&have)
    };
    if want == have {
        return true;
    }
    !want.contains('-') && have.rsplit_once('-').is_some_and(|(v, _)| v == want)
}

/// `1.2-3` from `2:1.2-3`.
fn without_epoch(v: &str) -> &str {
    match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => v,
    }
}

/// The version the repositories would install (apt candidate / dnf).
fn candidate(ctx: &Ctx, m: Manager, name: &str) -> anyhow::Result<Option<String>> {
    match m {
        Manager::Dpkg => {
            if let Some(f) = local_file(ctx, m, name, None)? {
                return Ok(Some(f.1));
            }
            anyhow::ensure!(
                !ctx.in_root(),
                "cannot look up the latest version of {name} under --root: apt has no root option (give a --package-dir)"
            );
            let mut a = vec![ctx.tools.path("apt-cache")];
            a.extend(cmd::argv(&["policy", "--", name]));
            let o = cmd::check(&a)?;
            Ok(o.output
                .lines()
                .find_map(|l| l.trim().strip_prefix("Candidate:"))
                .map(|v| v.trim().to_owned())
                .filter(|v| v != "(none)"))
        }
        Manager::Rpm => {
            if let Some(f) = local_file(ctx, m, name, None)? {
                return Ok(Some(f.1));
            }
            let mut a = vec![dnf(ctx, name)?];
            a.extend(root_arg(ctx, "--installroot"));
            a.extend(cmd::argv(&[
                "-q",
                "repoquery",
                "--latest-limit=1",
                "--qf",
                "%{version}-%{release}",
                "--",
                name,
            ]));
            let o = cmd::check(&a)?;
            Ok(o.output.lines().last().map(|s| s.trim().to_owned()))
        }
    }
}

fn dnf(ctx: &Ctx, name: &str) -> anyhow::Result<String> {
    if ctx.tools.has("dnf") {
        Ok(ctx.tools.path("dnf"))
    } else if Path::new("/usr/bin/dnf").exists() {
        Ok("dnf".into())
    } else if Path::new("/usr/bin/yum").exists() {
        Ok("yum".into())
    } else {
        anyhow::bail!(
            "neither dnf nor yum is installed, so {name} cannot come from the repositories; \
             install dnf, or put NAME-VERSION-RELEASE.ARCH.rpm in a --package-dir"
        )
    }
}

/// A package file for `name` (and `version`) in the package directory:
/// `NAME_VERSION_ARCH.deb` or `NAME-VERSION.ARCH.rpm`. Returns (path, version).
fn local_file(
    ctx: &Ctx,
    m: Manager,
    name: &str,
    version: Option<&str>,
) -> anyhow::Result<Option<(PathBuf, String)>> {
    let Some(dir) = &ctx.package_dir else {
        return Ok(None);
    };
    let mut found: Vec<(PathBuf, String)> = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e?;
        let fname = e.file_name().to_string_lossy().into_owned();
        let v = match m {
            Manager::Dpkg => {
                // `foo:amd64`: the file of that architecture.
                let (base, arch) = name
                    .split_once(':')
                    .map_or((name, None), |(b, a)| (b, Some(a)));
                fname
                    .strip_suffix(".deb")
                    .and_then(|s| s.strip_prefix(base))
                    .and_then(|s| s.strip_prefix('_'))
                    .and_then(|s| s.rsplit_once('_'))
                    .filter(|(_, a)| arch.is_none_or(|want| want == *a))
                    .map(|(v, _arch)| v.to_owned())
            }
            Manager::Rpm => fname
                .strip_suffix(".rpm")
                .and_then(|s| s.strip_prefix(name))
                .and_then(|s| s.strip_prefix('-'))
                .and_then(|s| s.rsplit_once('.'))
                .map(|(v, _arch)| v.to_owned()),
        };
        // File names carry no epoch.
        if let Some(v) = v
            && version.is_none_or(|want| same_version(m, without_epoch(want), &v))
        {
            found.push((e.path(), v));
        }
    }
    // The highest version (by name, "1.9" would win over "1.10").
    let mut best: Option<(PathBuf, String)> = None;
    for f in found {
        best = match best {
            Some(b) if !newer(&ctx.tools, m, &f.1, &b.1)? => Some(b),
            _ => Some(f),
        };
    }
    Ok(best)
}

/// Whether version `a` is newer than `b`, asked of the package manager
/// itself (`dpkg --compare-versions`, rpm's own `rpm.vercmp`). Spawns a
/// process: only called when versions differ and order matters.
fn newer(tools: &super::Tools, m: Manager, a: &str, b: &str) -> anyhow::Result<bool> {
    let ok = |v: &str| {
        !v.is_empty()
            && v.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._+~^:-".contains(&c))
    };
    anyhow::ensure!(ok(a) && ok(b), "cannot compare versions {a:?} and {b:?}");
    match m {
        Manager::Dpkg => {
            let o = cmd::run(&cmd::Spec {
                argv: &[
                    tools.path("dpkg"),
                    "--compare-versions".into(),
                    a.into(),
                    "gt".into(),
                    b.into(),
                ],
                ..Default::default()
            })?;
            match o.code {
                Some(0) => Ok(true),
                Some(1) => Ok(false),
                _ => anyhow::bail!("dpkg cannot compare {a:?} and {b:?}: {}", o.tail()),
            }
        }
        Manager::Rpm => {
            // Both checked above: no quote can reach the Lua string.
            let expr = format!("%{{lua: print(rpm.vercmp('{a}', '{b}'))}}");
            let o = cmd::check(&[tools.path("rpm"), "--eval".to_owned(), expr])?;
            match o.output.trim() {
                "1" => Ok(true),
                "0" | "-1" => Ok(false),
                other => anyhow::bail!("rpm cannot compare {a:?} and {b:?}: {other}"),
            }
        }
    }
}

pub fn package(ctx: &mut Ctx, kind: &Kind) -> anyhow::Result<Outcome> {
    let Kind::Package { name, ensure } = kind else {
        anyhow::bail!("not a package resource");
    };
    let m = manager(ctx)?;
    valid_package_name(m, name)?;
    let versions = installed(ctx, m, name)?;
    let cur = (!versions.is_empty()).then(|| versions.join(", "));
    let mut out = Outcome::default();
    let want_version: Option<String> = match (ensure, &cur) {
        (PackageEnsure::Absent, None) => return Ok(out),
        (PackageEnsure::Absent, Some(v)) => {
            out.change(format!("removed (was {v})"));
            if !ctx.noop {
                remove(ctx, m, name)?;
            }
            return Ok(out);
        }
        (PackageEnsure::Present, Some(_)) => return Ok(out),
        (PackageEnsure::Present, None) => None,
        (PackageEnsure::Version(v), Some(_)) if versions.iter().any(|c| same_version(m, v, c)) => {
            return Ok(out);
        }
        (PackageEnsure::Version(v), _) => Some(v.clone()),
        (PackageEnsure::Latest, _) => {
            let cand = candidate(ctx, m, name)?
                .with_context(|| format!("no installable version of {name} is known"))?;
            if versions.iter().any(|c| same_version(m, &cand, c)) {
                return Ok(out);
            }
            // rpm: a build newer than the repositories' (a hotfix installed
            // by hand) stays; `dnf install NAME-VERSION` would downgrade
            // it. (apt's candidate is lower only when pinned so on purpose.)
            if m == Manager::Rpm {
                for c in &versions {
                    if newer(&ctx.tools, m, without_epoch(c), &cand)? {
                        return Ok(out);
                    }
                }
            }
            Some(cand)
        }
    };
    let what = match (&cur, &want_version) {
        (None, Some(v)) => format!("installed {v}"),
        (None, None) => "installed".to_owned(),
        (Some(c), Some(v)) => format!("version changed {c} -> {v}"),
        (Some(_), None) => "installed".to_owned(),
    };
    out.change(what);
    if !ctx.noop {
        install(ctx, m, name, want_version.as_deref())?;
        let now = installed(ctx, m, name)?;
        anyhow::ensure!(
            !now.is_empty(),
            "{name} is still not installed after the install"
        );
    }
    Ok(out)
}

/// A package command of the orchestration listener (`package.status`,
/// `package.install`, `package.update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Status,
    /// Installs it when missing; with a version, to that version (up or
    /// down), as `ensure => VERSION` does.
    Install,
    /// An installed package to the version given, else to the
    /// repositories' latest (`ensure => latest`); never installs one.
    Update,
}

/// What a package command found or did.
#[derive(Debug, Default)]
pub(crate) struct Done {
    /// Installed versions afterwards (empty: not installed).
    pub versions: Vec<String>,
    /// What changed (the provider's own events); empty: nothing.
    pub events: Vec<String>,
}

/// The package commands, through this provider (the converge code path:
/// name checks, version comparison by the package manager's rules, apt's
/// dpkg-lock wait, rpm/dnf, `--package-dir`), then the version installed
/// is read back and checked against the one asked for.
pub(crate) fn command(
    ctx: &mut Ctx,
    verb: Verb,
    name: &str,
    version: Option<&str>,
) -> anyhow::Result<Done> {
    let m = manager(ctx)?;
    valid_package_name(m, name)?;
    let mut done = Done::default();
    if verb != Verb::Status {
        if verb == Verb::Update {
            anyhow::ensure!(
                !installed(ctx, m, name)?.is_empty(),
                "{name} is not installed, and package.update only updates an installed \
                 package; nothing was done (package.install installs it)"
            );
        }
        let ensure = match (verb, version) {
            (_, Some(v)) => PackageEnsure::Version(v.to_owned()),
            (Verb::Update, None) => PackageEnsure::Latest,
            _ => PackageEnsure::Present,
        };
        let out = package(
            ctx,
            &Kind::Package {
                name: name.to_owned(),
                ensure,
            },
        )?;
        done.events = out.events;
    }
    done.versions = installed(ctx, m, name)?;
    if verb != Verb::Status {
        anyhow::ensure!(
            !done.versions.is_empty(),
            "{name} is not installed after the {}",
            if verb == Verb::Install {
                "install"
            } else {
                "update"
            }
        );
        if let Some(want) = version
            && !done.versions.iter().any(|v| same_version(m, want, v))
        {
            anyhow::bail!("{name} is at {}, not {want}", done.versions.join(", "));
        }
    }
    Ok(done)
}

/// A plain package name (dpkg: with an optional `:ARCH`). dpkg-query, rpm
/// and apt read `*`, `?`, `[` as patterns and `=VERSION`, `/RELEASE` as
/// version selectors: such a "name" could match (and install or remove)
/// other packages, or never be found installed and be reinstalled every run.
fn valid_package_name(m: Manager, name: &str) -> anyhow::Result<()> {
    let (base, arch) = match (m, name.split_once(':')) {
        (Manager::Dpkg, Some((b, a))) => (b, Some(a)),
        _ => (name, None),
    };
    let plain = |s: &str, extra: &[u8]| {
        !s.is_empty()
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-._".contains(&b) || extra.contains(&b))
    };
    anyhow::ensure!(
        plain(base, b"") && arch.is_none_or(|a| plain(a, b"")),
        "invalid package name {name:?}: give the bare name (letters, digits, + - . _{}) \
         and the version in ensure, never a pattern or NAME=VERSION",
        if m == Manager::Dpkg { ", :ARCH" } else { "" }
    );
    Ok(())
}

fn install(ctx: &Ctx, m: Manager, name: &str, version: Option<&str>) -> anyhow::Result<()> {
    if let Some((file, _)) = local_file(ctx, m, name, version)? {
        let f = file.to_string_lossy().into_owned();
        let a = match m {
            Manager::Dpkg => {
                let mut a = vec![ctx.tools.path("dpkg")];
                a.extend(root_arg(ctx, "--root"));
                a.extend(["--force-confold".into(), "--install".into(), f]);
                dpkg_check(&a)?;
                return Ok(());
            }
            Manager::Rpm => {
                let mut a = vec![ctx.tools.path("rpm")];
                a.extend(root_arg(ctx, "--root"));
                a.push("-U".into());
                if version.is_some() {
                    // A pinned older version is a downgrade, which -U
                    // alone refuses (dnf install NAME-VERSION does it).
                    a.push("--oldpackage".into());
                }
                a.push(f);
                a
            }
        };
        cmd::check(&a)?;
        return Ok(());
    }
    let spec = match version {
        Some(v) if m == Manager::Dpkg => format!("{name}={v}"),
        Some(v) => format!("{name}-{v}"),
        None => name.to_owned(),
    };
    match m {
        Manager::Dpkg => {
            anyhow::ensure!(
                !ctx.in_root(),
                "cannot install {name} from the repositories under --root {}: apt has no root option; \
                 put NAME_VERSION_ARCH.deb in a --package-dir to install it with dpkg --root",
                ctx.root.display()
            );
            let mut env = std::collections::BTreeMap::new();
            env.insert("DEBIAN_FRONTEND".to_owned(), "noninteractive".to_owned());
            let a = apt_install_argv(&ctx.tools.path("apt-get"), &spec);
            let o = cmd::run(&cmd::Spec {
                argv: &a,
                env: Some(&env),
                timeout: Some(std::time::Duration::from_secs(1800)),
                ..Default::default()
            })?;
            anyhow::ensure!(
                o.ok(),
                "apt-get install {spec} failed ({}): {}",
                o.describe(),
                o.tail()
            );
        }
        Manager::Rpm => {
            let mut a = vec![dnf(ctx, name)?, "-y".into()];
            a.extend(root_arg(ctx, "--installroot"));
            a.extend(["install".into(), spec]);
            cmd::check(&a)?;
        }
    }
    Ok(())
}

/// Seconds apt waits for the dpkg lock (held by unattended-upgrades, a
/// sysadmin's apt, ...) before it gives up with "Could not get lock".
const APT_LOCK_WAIT: u32 = 300;

/// Runs a `dpkg` command; while another process (unattended-upgrades, a
/// sysadmin's apt) holds the dpkg lock, waits and tries again, for up to
/// [`APT_LOCK_WAIT`] seconds, as apt-get does with `DPkg::Lock::Timeout`.
fn dpkg_check(argv: &[String]) -> anyhow::Result<()> {
    dpkg_check_waiting(argv, std::time::Duration::from_secs(APT_LOCK_WAIT.into()))
}

fn dpkg_check_waiting(argv: &[String], wait: std::time::Duration) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(250);
    let mut said = false;
    loop {
        let o = cmd::run(&cmd::Spec {
            argv,
            ..Default::default()
        })?;
        if o.ok() {
            return Ok(());
        }
        // dpkg: "dpkg frontend lock was locked by another process with pid
        // N", "dpkg status database is locked by another process".
        let locked = o.output.contains("locked by another process");
        if !locked {
            anyhow::bail!(
                "`{}` failed with {}: {}",
                argv.join(" "),
                o.describe(),
                o.tail()
            );
        }
        if start.elapsed() >= wait {
            anyhow::bail!(
                "`{}`: the dpkg lock is still held by another process after {} s \
                 (unattended-upgrades or another apt/dpkg?); the next run tries again: {}",
                argv.join(" "),
                wait.as_secs(),
                o.tail()
            );
        }
        if !said {
            tracing::warn!(
                "the dpkg lock is held by another process; waiting up to {} s: {}",
                wait.as_secs(),
                o.tail()
            );
            said = true;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_secs(5));
    }
}

/// `apt-get install` without prompts: answers yes, keeps changed config
/// files, and waits for a held dpkg lock instead of failing at once.
fn apt_install_argv(apt_get: &str, spec: &str) -> Vec<String> {
    let mut a = cmd::argv(&[
        apt_get,
        "install",
        "-y",
        "-q",
        "--allow-downgrades",
        "-o",
        "Dpkg::Options::=--force-confold",
        "-o",
        "Dpkg::Options::=--force-confdef",
    ]);
    a.extend([
        "-o".to_owned(),
        format!("DPkg::Lock::Timeout={APT_LOCK_WAIT}"),
        "--".to_owned(),
        spec.to_owned(),
    ]);
    a
}

fn remove(ctx: &Ctx, m: Manager, name: &str) -> anyhow::Result<()> {
    let a = match m {
        Manager::Dpkg => {
            let mut a = vec![ctx.tools.path("dpkg")];
            a.extend(root_arg(ctx, "--root"));
            a.extend(["--remove".into(), name.to_owned()]);
            dpkg_check(&a)?;
            return Ok(());
        }
        Manager::Rpm => {
            let mut a = vec![ctx.tools.path("rpm")];
            a.extend(root_arg(ctx, "--root"));
            a.extend(["-e".into(), name.to_owned()]);
            a
        }
    };
    cmd::check(&a)?;
    Ok(())
}

/// `troupe-agent resource package [NAME]`: the installed version of `name`
/// (`absent` when it is not installed; one entry per installed instance),
/// or every installed package, sorted by name.
pub(crate) fn inspect(ctx: &Ctx, name: Option<&str>) -> anyhow::Result<Vec<Kind>> {
    let m = manager(ctx)?;
    if let Some(name) = name {
        valid_package_name(m, name)?;
        let versions = installed(ctx, m, name)?;
        if versions.is_empty() {
            return Ok(vec![Kind::Package {
                name: name.to_owned(),
                ensure: PackageEnsure::Absent,
            }]);
        }
        return Ok(versions
            .into_iter()
            .map(|v| Kind::Package {
                name: name.to_owned(),
                ensure: PackageEnsure::Version(v),
            })
            .collect());
    }
    let argv = match m {
        Manager::Dpkg => {
            let mut a = vec![ctx.tools.path("dpkg-query")];
            if ctx.in_root() {
                a.push(format!(
                    "--admindir={}",
                    ctx.root.join("var/lib/dpkg").display()
                ));
            }
            a.extend(cmd::argv(&[
                "-W",
                "-f",
                "${db:Status-Abbrev}|${Package}|${Version}\n",
            ]));
            a
        }
        Manager::Rpm => {
            let mut a = vec![ctx.tools.path("rpm")];
            a.extend(root_arg(ctx, "--root"));
            a.extend(cmd::argv(&[
                "-qa",
                "--qf",
                "ii |%{NAME}|%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\n",
            ]));
            a
        }
    };
    let o = cmd::run(&cmd::Spec {
        argv: &argv,
        ..Default::default()
    })?;
    anyhow::ensure!(o.ok(), "{} failed: {}", argv[0], o.tail());
    let mut out: Vec<(String, String)> = o
        .output
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, '|');
            let (status, name, version) = (f.next()?, f.next()?, f.next()?);
            (status.as_bytes().get(1) == Some(&b'i'))
                .then(|| (name.trim().to_owned(), version.trim().to_owned()))
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out
        .into_iter()
        .map(|(name, v)| Kind::Package {
            name,
            ensure: PackageEnsure::Version(v),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_query_lines_for_several_architectures_are_read_apart() {
        // Without a newline in the format two instances ran together
        // ("2.36-9ii |2.36-9") and a pinned version never matched.
        let out = "ii |2.36-9\nii |2.36-9\n";
        assert_eq!(parse_dpkg_query(out), vec!["2.36-9", "2.36-9"]);
        assert!(parse_dpkg_query("rc |1.0\nun |\n").is_empty());
        assert_eq!(parse_dpkg_query("iU |1.0\nii |1:2.0\n"), vec!["1:2.0"]);
        assert!(parse_dpkg_query("garbage\n").is_empty());
    }

    #[test]
    fn versions_compare_as_the_package_manager_does() {
        use Manager::*;
        assert!(same_version(Dpkg, "0:1.0-1", "1.0-1"));
        assert!(same_version(Dpkg, "1.0-1", "0:1.0-1"));
        assert!(!same_version(Dpkg, "1.0-1", "1:1.0-1"));
        assert!(!same_version(Dpkg, "1.0", "1.0-1"));
        assert!(same_version(Rpm, "1.0", "1.0-1.el9"));
        assert!(same_version(Rpm, "1.0-1.el9", "2:1.0-1.el9"));
        assert!(same_version(Rpm, "2:1.0", "2:1.0-1.el9"));
        assert!(!same_version(Rpm, "3:1.0", "2:1.0-1.el9"));
        assert!(!same_version(Rpm, "1.0", "1.0.1-1"));
        assert!(!same_version(Rpm, "1.0-2", "1.0-1"));
        assert_eq!(without_epoch("12:3.4-5"), "3.4-5");
        assert_eq!(without_epoch("a:b"), "a:b");
    }

    #[test]
    fn package_names_that_are_patterns_or_selectors_are_refused() {
        use Manager::*;
        for ok in [
            "nginx",
            "libc6:amd64",
            "g++",
            "python3.11",
            "libstdc++6",
            "foo_bar",
        ] {
            assert!(valid_package_name(Dpkg, ok).is_ok(), "{ok}");
        }
        assert!(valid_package_name(Rpm, "kernel-core").is_ok());
        // "nginx=1.2" was never found by dpkg-query, so apt-get installed
        // it (a no-op) and a change was reported on every run; a pattern
        // could match other packages.
        for bad in [
            "nginx=1.2",
            "nginx*",
            "ngin?",
            "lib[cd]",
            "nginx/bookworm",
            "-y",
            "",
            ":amd64",
            "foo:",
            "a b",
            "foo:amd64:i386",
            "^foo",
        ] {
            let e = valid_package_name(Dpkg, bad).unwrap_err().to_string();
            assert!(e.contains("invalid package name"), "{bad}: {e}");
        }
        assert!(valid_package_name(Rpm, "foo:1.0").is_err());
    }

    #[test]
    fn versions_are_ordered_by_the_package_managers_themselves() {
        use Manager::*;
        let t = crate::providers::Tools::default();
        for (m, tool) in [(Dpkg, "/usr/bin/dpkg"), (Rpm, "/usr/bin/rpm")] {
            if !Path::new(tool).exists() {
                continue;
            }
            assert!(newer(&t, m, "1.10-1", "1.9-1").unwrap(), "{m:?}");
            assert!(!newer(&t, m, "1.9-1", "1.10-1").unwrap(), "{m:?}");
            assert!(!newer(&t, m, "1.0~rc1-1", "1.0-1").unwrap(), "{m:?}");
            assert!(!newer(&t, m, "1.0-1", "1.0-1").unwrap(), "{m:?}");
            assert!(newer(&t, m, "1:1.0-1", "2.0-1").unwrap(), "{m:?}");
            // Nothing that could break out of rpm's Lua string.
            assert!(newer(&t, m, "1') os.exit(0) print('", "1").is_err());
        }
    }

    #[test]
    fn apt_waits_for_a_held_dpkg_lock_and_never_prompts() {
        // Without DPkg::Lock::Timeout, apt-get fails at once when
        // unattended-upgrades holds the lock ("Could not get lock").
        let a = apt_install_argv("apt-get", "nginx=1.2");
        let opts: Vec<&str> = a
            .windows(2)
            .filter(|w| w[0] == "-o")
            .map(|w| w[1].as_str())
            .collect();
        assert!(opts.contains(&"DPkg::Lock::Timeout=300"), "{a:?}");
        assert!(opts.contains(&"Dpkg::Options::=--force-confold"), "{a:?}");
        assert!(opts.contains(&"Dpkg::Options::=--force-confdef"), "{a:?}");
        assert!(a.contains(&"-y".to_owned()));
        assert_eq!(a[a.len() - 2..], ["--", "nginx=1.2"]);
    }
}
