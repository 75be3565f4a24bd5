//! Booted hosts: systemd-nspawn containers running a real systemd as PID 1,
//! each in its own network namespace from [`crate::netns`].
//!
//! - The image is the booted hosts' cached Debian 12 root of
//!   `scripts/debian-root.sh` (`TROUPE_BOOTED_ROOT`, else
//!   `/var/cache/troupe/debian-booted-root.tar`): systemd, apt and little
//!   else, none of the packages the roles install. It is unpacked once next
//!   to the tarball (`<tarball>.d/`, keyed by its name) and used read-only
//!   as the lower layer of one overlay per host, so a host starts from the
//!   image in milliseconds and its changes stay in its own upper directory.
//! - [`Fleet::boot`] boots one: `systemd-nspawn -D ROOT -b --register=no
//!   --keep-unit --network-namespace-path=/run/netns/NS` (the machine has no
//!   systemd as PID 1, so nothing can be registered with machined), then
//!   waits for `systemctl is-system-running --wait`.
//! - [`Booted::sh`] runs a command inside it: `nsenter` into every namespace
//!   of the container's PID 1 (the nspawn process's child), with a clean
//!   environment.
//! - [`Booted::poweroff`] (SIGTERM to nspawn: a clean shutdown),
//!   [`Booted::kill`] (SIGKILL to the container's PID 1), [`Booted::boot`]
//!   again (a reboot keeps the upper layer), [`Fleet::cut_off`].
//! - The fleet's apt repository ([`Repo`]) is bind-mounted read-only into
//!   every host at `/srv/troupe-repo`, and it is the only apt source there:
//!   it holds the troupe packages, the in-house application and the role
//!   packages with their dependencies (fetched once by
//!   `scripts/debian-root.sh`, [`role_packages`]), so the roles install
//!   nginx, haproxy, ... by apt from it and no package is ever fetched from
//!   outside.
//!
//! Everything is removed on drop, also after a panic: hosts are powered off
//! (killed after 20 s), their overlays unmounted, their directories deleted.
//! [`sweep_leftovers`] (run by [`Fleet::new`]) kills the containers and
//! unmounts the overlays of test processes that are gone (killed by a
//! timeout), before the namespace harness deletes their namespaces and
//! directories.
//!
//! Inside a container some things cannot work, and the tests say so rather
//! than hide them (see [`CONTAINER_LIMITS`]).

use crate::netns::{Host, Net, NetMaster};
use crate::{MasterOptions, Out};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the harness mounts overlays: a directory name that carries the
/// test process's pid, so a sweep can tell whose they are.
const OVERLAY_TAG: &str = "/nspawn-overlay-";

/// What a container on this machine kind cannot do, and why: the booted
/// tests expect exactly these failures and fail on any other.
pub const CONTAINER_LIMITS: &[(&str, &str)] = &[
    (
        "exec[sysctl-apply]",
        "kernel.* and fs.* keys: /proc/sys outside net/ is read-only inside systemd-nspawn (permission denied); the net.* keys of the host's own namespace are set",
    ),
    (
        "service[chrony]",
        "systemd skips it: ConditionCapability=CAP_SYS_TIME (nspawn does not grant CAP_SYS_TIME, the clock is the machine's)",
    ),
];

/// Where the booted image comes from: `TROUPE_BOOTED_ROOT` (a tarball or
/// an unpacked directory), else the cache's current one.
fn image_source() -> PathBuf {
    std::env::var_os("TROUPE_BOOTED_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/troupe/debian-booted-root.tar"))
}

/// The role packages fetched with the booted image (a directory of .debs
/// and their `Packages` index): `TROUPE_BOOTED_DEBS`, else the `.debs`
/// directory beside the image's tarball (`X.tar` -> `X.debs`).
pub fn role_packages() -> Result<PathBuf, String> {
    let dir = match std::env::var_os("TROUPE_BOOTED_DEBS") {
        Some(d) => PathBuf::from(d),
        None => {
            let src = image_source();
            let tar = std::fs::canonicalize(&src).map_err(|e| {
                format!(
                    "no booted image at {} ({e}): run scripts/debian-root.sh (as root) first",
                    src.display()
                )
            })?;
            let name = tar.to_string_lossy();
            let Some(stem) = name.strip_suffix(".tar") else {
                return Err(format!(
                    "{} is not a tarball: set TROUPE_BOOTED_DEBS to its role packages' directory",
                    tar.display()
                ));
            };
            PathBuf::from(format!("{stem}.debs"))
        }
    };
    if !dir.join("Packages").is_file() {
        return Err(format!(
            "no role packages (Packages index) in {}: run scripts/debian-root.sh (as root)",
            dir.display()
        ));
    }
    Ok(dir)
}

/// The unpacked image (a directory used read-only as every host's lower
/// layer). Errors say what is missing.
pub fn image() -> Result<PathBuf, String> {
    let src = image_source();
    if src.is_dir() {
        return Ok(src);
    }
    let tar = std::fs::canonicalize(&src).map_err(|e| {
        format!(
            "no booted image at {} ({e}): run scripts/debian-root.sh (as root) first",
            src.display()
        )
    })?;
    let dir = PathBuf::from(format!("{}.d", tar.display()));
    remove_stale_images(&tar);
    if dir.join("usr/lib/systemd/systemd").exists() {
        return Ok(dir);
    }
    // Unpack beside it under a temporary name, then rename: concurrent
    // tests never see a half-unpacked image.
    let tmp = PathBuf::from(format!("{}.tmp-{}", dir.display(), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let o = Command::new("tar")
        .args(["--numeric-owner", "-xf"])
        .arg(&tar)
        .arg("-C")
        .arg(&tmp)
        .output()
        .map_err(|e| format!("tar: {e}"))?;
    if !o.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(format!(
            "unpacking {}: {}",
            tar.display(),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another test won the race.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if !dir.join("usr/lib/systemd/systemd").exists() {
        return Err(format!(
            "{} has no /usr/lib/systemd/systemd: rebuild it with scripts/debian-root.sh --rebuild",
            dir.display()
        ));
    }
    Ok(dir)
}

/// The README's "On a new host" commands: (all but the last line, the
/// last line).
fn readme_new_host() -> (String, String) {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("README.md");
    let text = std::fs::read_to_string(&readme).unwrap();
    let section = text
        .split("\n## Install on real hosts")
        .nth(1)
        .expect("README.md has no \"## Install on real hosts\" section");
    let block = section
        .split("On a new host")
        .nth(1)
        .and_then(|s| s.split("```sh\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("README's \"Install on real hosts\" has no \"On a new host\" ```sh block");
    let lines: Vec<&str> = block.trim_end().lines().collect();
    let (last, rest) = lines.split_last().expect("an empty block");
    let last = last.split('#').next().unwrap_or("").to_string();
    (rest.iter().map(|l| format!("{l}\n")).collect(), last)
}

/// Removes unpacked images beside `tar` whose tarball is gone (an older
/// recipe) and half-unpacked ones of dead processes.
fn remove_stale_images(tar: &Path) {
    let Some(parent) = tar.parent() else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = if let Some(t) = name.strip_suffix(".tar.d") {
            !parent.join(format!("{t}.tar")).exists()
        } else if let Some((_, pid)) = name.rsplit_once(".tar.d.tmp-") {
            pid.parse::<u32>().is_ok_and(|p| !pid_alive(p))
        } else {
            false
        };
        if stale {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// (pid, parent pid, comm) of every process.
fn processes() -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parens.
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[l + 1..r].to_string();
        let ppid = stat[r + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        out.push((pid, ppid, comm));
    }
    out
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Kills the containers and unmounts the overlays of harness users whose
/// process is gone. Safe to run while other tests run: only dead owners'
/// leftovers are touched.
pub fn sweep_leftovers() {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let procs = processes();
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_), Some(target)) = (f.next(), f.next()) else {
            continue;
        };
        let Some(pos) = target.find(OVERLAY_TAG) else {
            continue;
        };
        let Some(owner) = target[pos + OVERLAY_TAG.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid_alive(owner) {
            continue;
        }
        // The nspawn processes running on this root, and their children
        // (the containers' PID 1): SIGKILL to PID 1 ends a container.
        for (pid, _, comm) in &procs {
            if comm == "systemd-nspawn" && cmdline(*pid).contains(target) {
                for (c, pp, _) in &procs {
                    if pp == pid {
                        let _ = Command::new("kill").args(["-9", &c.to_string()]).output();
                    }
                }
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let _ = Command::new("umount").args(["-l", target]).output();
    }
}

/// A flat apt repository in a directory, served to the hosts read-only as
/// `deb [trusted=yes] file:/srv/troupe-repo ./`.
///
/// `trusted=yes` instead of a signed Release file: the repository is built
/// by the test itself from files it just wrote, reaches the hosts only
/// through a read-only bind mount (never a network), and lives as long as
/// the test; a signing key would prove nothing more here. A real site's
/// internal repository is signed.
pub struct Repo {
    pub dir: PathBuf,
    /// The troupe-agent package's file name in `dir`
    /// (`troupe-agent_VERSION_amd64.deb`).
    pub agent_deb: String,
}

/// The in-house application (seed 001: "we packaged our in-house tools as
/// Debian packages"): `inhouse-app`, a systemd service answering HTTP on
/// port 9080 (not 8080: the web role's nginx status vhost listens there).
/// Its health check is `GET /health`: 200 in 1.0 and 1.1, 404 in 1.2 (the
/// broken release).
pub const APP: &str = "inhouse-app";
pub const APP_PORT: u16 = 9080;
pub const APP_VERSIONS: &[&str] = &["1.0", "1.1", "1.2"];

impl Repo {
    /// Builds the repository in `dir`: the troupe and troupe-agent packages
    /// (the real ones, see [`packages`]) and the in-house application in
    /// three versions, indexed with dpkg-scanpackages; and, in `debian/`,
    /// what the shipped roles install (nginx, haproxy, ... and their
    /// dependencies: [`role_packages`], hard-linked, with their index
    /// made once by `scripts/debian-root.sh`). The image has none of those,
    /// so the hosts' apt installs them from here.
    pub fn build(dir: &Path) -> Result<Repo, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let work = dir.join(".build");
        // The real troupe and troupe-agent packages of scripts/package.sh,
        // built from the binaries under test (cached: see packages()).
        let pkgs = packages()?;
        let mut agent_deb = None;
        for e in std::fs::read_dir(&pkgs).map_err(|e| format!("{}: {e}", pkgs.display()))? {
            let e = e.map_err(|e| e.to_string())?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".deb") {
                continue;
            }
            std::fs::copy(e.path(), dir.join(&name))
                .map_err(|e| format!("copying {name} into the repository: {e}"))?;
            if name.starts_with("troupe-agent_") {
                agent_deb = Some(name);
            }
        }
        let agent_deb = agent_deb.ok_or_else(|| {
            format!(
                "scripts/package.sh made no troupe-agent .deb in {}",
                pkgs.display()
            )
        })?;

        for v in APP_VERSIONS {
            let p = work.join(format!("{APP}-{v}"));
            let health = if *v == "1.2" {
                String::new()
            } else {
                format!("ok {v}\n")
            };
            write(
                &p.join(format!("usr/share/{APP}/version")),
                &format!("{v}\n"),
                0o644,
            )?;
            if !health.is_empty() {
                write(&p.join(format!("usr/share/{APP}/health")), &health, 0o644)?;
            }
            let unit = format!(
                "[Unit]\nDescription=In-house application {v}\n\n[Service]\nType=simple\nExecStart=/usr/bin/python3 -m http.server {APP_PORT} --directory /usr/share/{APP}\nRestart=on-failure\n\n[Install]\nWantedBy=multi-user.target\n"
            );
            write(
                &p.join(format!("lib/systemd/system/{APP}.service")),
                &unit,
                0o644,
            )?;
            control(&p, APP, v, "In-house application (test package)")?;
            dpkg_deb(&p, &dir.join(format!("{APP}_{v}_all.deb")))?;
        }
        let _ = std::fs::remove_dir_all(&work);
        let o = Command::new("dpkg-scanpackages")
            .args(["--multiversion", "."])
            .current_dir(dir)
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("dpkg-scanpackages (package dpkg-dev): {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "dpkg-scanpackages: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let mut index = o.stdout;
        // The role packages, after the scan (which would read them all
        // again): linked into debian/, their index's paths moved with them.
        let debs = role_packages()?;
        let sub = dir.join("debian");
        std::fs::create_dir_all(&sub).map_err(|e| format!("{}: {e}", sub.display()))?;
        for e in std::fs::read_dir(&debs).map_err(|e| format!("{}: {e}", debs.display()))? {
            let e = e.map_err(|e| e.to_string())?;
            let name = e.file_name();
            if !name.to_string_lossy().ends_with(".deb") {
                continue;
            }
            let to = sub.join(&name);
            if std::fs::hard_link(e.path(), &to).is_err() {
                std::fs::copy(e.path(), &to)
                    .map_err(|err| format!("{} -> {}: {err}", e.path().display(), to.display()))?;
            }
        }
        let role_index = std::fs::read_to_string(debs.join("Packages"))
            .map_err(|e| format!("{}/Packages: {e}", debs.display()))?;
        if !index.is_empty() && !index.ends_with(b"\n\n") {
            index.push(b'\n');
        }
        index.extend_from_slice(
            role_index
                .replace("\nFilename: ./", "\nFilename: ./debian/")
                .as_bytes(),
        );
        std::fs::write(dir.join("Packages"), &index).map_err(|e| e.to_string())?;
        Ok(Repo {
            dir: dir.to_path_buf(),
            agent_deb,
        })
    }
}

/// The directory holding the packages `scripts/package.sh` builds from the
/// binaries under test (`TROUPE_PACKAGE_BIN_DIR`, so no release build is
/// needed; the script strips them): `troupe_VERSION_amd64.deb`,
/// `troupe-agent_VERSION_amd64.deb` and the two .rpms.
///
/// Built once per set of inputs and cached under
/// `BIN_DIR/booted-packages/KEY`, KEY hashing the two binaries' and the
/// packaging sources' sizes and mtimes: about 10 s the first time, nothing
/// after. Built under a temporary name and renamed, so concurrent tests
/// never see a half-built set; older sets are removed.
pub fn packages() -> Result<PathBuf, String> {
    use std::hash::{Hash, Hasher};
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bin_dir = crate::bin_dir();
    let mut inputs = vec![bin_dir.join("troupe"), bin_dir.join("troupe-agent")];
    inputs.push(workspace.join("scripts/package.sh"));
    let mut stack = vec![workspace.join("packaging")];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for e in rd.flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                inputs.push(e.path());
            }
        }
    }
    inputs.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in &inputs {
        let md = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        (p, md.len(), md.modified().ok()).hash(&mut h);
    }
    let cache = bin_dir.join("booted-packages");
    let dir = cache.join(format!("{:016x}", h.finish()));
    if dir.is_dir() {
        return Ok(dir);
    }
    let tmp = cache.join(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let o = Command::new(workspace.join("scripts/package.sh"))
        .env("TROUPE_PACKAGE_BIN_DIR", &bin_dir)
        .env("TROUPE_PACKAGE_OUT", &tmp)
        .output()
        .map_err(|e| format!("scripts/package.sh: {e}"))?;
    if !o.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(format!(
            "scripts/package.sh failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another test built the same set first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if let Ok(rd) = std::fs::read_dir(&cache) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = match name.strip_prefix("tmp-") {
                Some(pid) => pid.parse::<u32>().is_ok_and(|p| !pid_alive(p)),
                None => e.path() != dir,
            };
            if stale {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(dir)
}

fn write(p: &Path, body: &str, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p.parent().unwrap()).map_err(|e| e.to_string())?;
    std::fs::write(p, body).map_err(|e| format!("{}: {e}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}

fn control(root: &Path, name: &str, version: &str, what: &str) -> Result<(), String> {
    write(
        &root.join("DEBIAN/control"),
        &format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Troupe tests <tests@troupe.invalid>\nDepends: systemd, python3\nDescription: {what}\n"
        ),
        0o644,
    )?;
    // Like dh_installsystemd: reload units on install and upgrade; the
    // service is started by whoever manages it (troupe), not here.
    write(
        &root.join("DEBIAN/postinst"),
        "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n",
        0o755,
    )
}

fn dpkg_deb(root: &Path, out: &Path) -> Result<(), String> {
    // No compression: the package only ever crosses a bind mount.
    let o = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Znone", "--build"])
        .arg(root)
        .arg(out)
        .output()
        .map_err(|e| format!("dpkg-deb: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "dpkg-deb --build {}: {}",
            root.display(),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// A switch, an image and a repository: boots hosts on demand.
pub struct Fleet {
    pub net: Net,
    pub image: PathBuf,
    pub repo: Repo,
    /// `/etc/hosts` lines for every host booted so far.
    hosts_file: std::sync::Mutex<String>,
}

impl Fleet {
    /// Everything booted hosts need, or why not.
    pub fn new() -> Result<Fleet, String> {
        if Command::new("systemd-nspawn")
            .arg("--version")
            .output()
            .is_err()
        {
            return Err("systemd-nspawn is missing (apt-get install systemd-container)".into());
        }
        if Command::new("nsenter").arg("--version").output().is_err() {
            return Err("nsenter is missing (apt-get install util-linux)".into());
        }
        sweep_leftovers();
        let image = image()?;
        let net = Net::new()?;
        let repo = Repo::build(&net.tmp.path().join("repo"))?;
        Ok(Fleet {
            net,
            image,
            repo,
            hosts_file: std::sync::Mutex::new(
                "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n".into(),
            ),
        })
    }

    /// Like [`Fleet::new`]; panics with the reason when `CI=true`, else
    /// prints why the test is skipped and returns `None`.
    pub fn require() -> Option<Fleet> {
        match Fleet::new() {
            Ok(f) => Some(f),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("booted hosts need root, systemd-nspawn and the booted image: {e}")
            }
            Err(e) => {
                eprintln!("SKIPPED: booted hosts are not available here: {e}");
                None
            }
        }
    }

    /// Adds a host named `name` (short name; `name.example.com` is its
    /// FQDN) to the switch and boots it.
    pub fn boot(&self, name: &str) -> Booted {
        let host = self.net.add_host(name);
        {
            let mut h = self.hosts_file.lock().unwrap();
            h.push_str(&format!("{} {name}.example.com {name}\n", host.ip));
        }
        let base = host
            .dir
            .join(format!("{OVERLAY_TAG}{}", std::process::id()).trim_start_matches('/'));
        let mut b = Booted {
            name: name.to_string(),
            fqdn: format!("{name}.example.com"),
            host,
            root: base.join("merged"),
            base,
            lower: self.image.clone(),
            repo: self.repo.dir.clone(),
            nspawn: None,
            leader: 0,
            boot_times: Vec::new(),
        };
        b.mount().unwrap_or_else(|e| panic!("host {name}: {e}"));
        b.prepare(&self.hosts_file.lock().unwrap())
            .unwrap_or_else(|e| panic!("host {name}: {e}"));
        b.boot();
        b
    }

    /// Adds `name.example.com` at `ip` (a host that is not booted, such
    /// as a master running as a process on the switch) to the hosts file.
    pub fn add_name(&self, ip: std::net::Ipv4Addr, name: &str) {
        let mut h = self.hosts_file.lock().unwrap();
        h.push_str(&format!("{ip} {name}.example.com {name}\n"));
    }

    /// Writes the current `/etc/hosts` (every host booted so far) into
    /// each of `hosts`.
    pub fn share_hosts(&self, hosts: &[&Booted]) {
        let h = self.hosts_file.lock().unwrap().clone();
        for b in hosts {
            std::fs::write(b.root.join("etc/hosts"), &h).unwrap();
        }
    }

    /// Starts a master on the switch as `troupe.example.com` (in every
    /// host's hosts file from now on, and in its certificate, as the
    /// shipped roles' units expect), serving the module tree `modules`.
    pub fn start_master(&self, modules: &Path) -> NetMaster {
        let mhost = self.net.add_host("troupe");
        self.add_name(mhost.ip, "troupe");
        NetMaster::start(
            &self.net,
            &mhost,
            MasterOptions {
                modules: Some(modules.to_path_buf()),
                extra_args: vec![
                    "--server-name".into(),
                    "troupe.example.com".into(),
                    "--server-name".into(),
                    mhost.ip.to_string(),
                ],
            },
        )
    }

    /// Makes `b` a blank host ready to join `m`, with the commands of the
    /// README's "Install on real hosts", "On a new host", taken from
    /// README.md itself and run as they stand (bash, as root), with only
    /// the placeholders filled in: `apt install ./troupe-agent_*.deb` (in
    /// the fleet repository's directory), the one-time key into
    /// /etc/troupe/psk, `server`, `ca_fingerprint` and `psk_file` appended to
    /// the package's /etc/troupe/agent.toml. Its last command, `systemctl
    /// enable --now troupe-agent`, is left to the caller (which times it).
    ///
    /// `settings` then sets further agent.toml keys as an admin would edit
    /// them (`("interval", "5")`: the package's line replaced, else added).
    pub fn prepare_agent(&self, b: &Booted, m: &NetMaster, settings: &[(&str, &str)]) {
        let psk = m.psk(&b.fqdn);
        self.prepare_agent_with(b, &m.fingerprint(), &psk, settings);
    }

    /// [`Fleet::prepare_agent`] for any master: its CA `fingerprint` and a
    /// one-time key `psk` for `b`.
    pub fn prepare_agent_with(
        &self,
        b: &Booted,
        fingerprint: &str,
        psk: &str,
        settings: &[(&str, &str)],
    ) {
        let (install, last) = readme_new_host();
        assert_eq!(
            last.trim(),
            "systemctl enable --now troupe-agent",
            "README's \"On a new host\" no longer ends with starting the agent"
        );
        let fill = |s: String, from: &str, to: &str| {
            assert!(
                s.contains(from),
                "README's \"On a new host\" has no {from}:\n{s}"
            );
            s.replace(from, to)
        };
        let mut script = fill(install, "KEY-FROM-troupe-ca-psk-new", psk);
        script = fill(
            script,
            "FINGERPRINT-FROM-troupe-ca-fingerprint",
            fingerprint,
        );
        let apt = format!("apt install ./{}", self.repo.agent_deb);
        assert!(
            script.contains(&apt),
            "README's \"On a new host\" has no `{apt}`:\n{script}"
        );
        for (k, v) in settings {
            script.push_str(&format!(
                "if grep -q '^{k} = ' /etc/troupe/agent.toml; then sed -i 's|^{k} = .*|{k} = {v}|' /etc/troupe/agent.toml; else echo '{k} = {v}' >> /etc/troupe/agent.toml; fi\n"
            ));
        }
        std::fs::write(b.root.join("root/install-agent.sh"), &script).unwrap();
        // The fleet repository's index (the hosts' only apt source), as a
        // real host has its sources' lists: the roles install from it.
        b.sh_ok("apt-get update -qq");
        b.sh_ok("cd /srv/troupe-repo && bash -euo pipefail /root/install-agent.sh >/dev/null");
        // The package's own file, completed: what the agent will read.
        let eff = b.sh_ok("troupe-agent --print-config");
        assert!(eff.contains(fingerprint), "{eff}");
    }

    /// Cuts the host off the switch (its link goes down).
    pub fn cut_off(&self, b: &Booted) {
        self.net.cut_off(&b.host);
    }

    /// Brings a cut-off host back.
    pub fn reconnect(&self, b: &Booted) {
        self.net.reconnect(&b.host);
    }

    /// A copy of the shipped module tree (modules/) in the fleet's temporary
    /// directory, for a test to edit; returns its path.
    pub fn copy_modules(&self) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("modules");
        let modules = self.net.tmp.path().join("modules");
        let ok = Command::new("cp")
            .arg("-a")
            .arg(&src)
            .arg(&modules)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "copying modules/");
        modules
    }

    /// A release signing key `ops`: DIR/keys/ops.key (encrypted with
    /// `orch::PASSPHRASE`) and DIR/keys/ops.pass; returns the keys
    /// directory and the signer (for its key id).
    pub fn ops_key(&self) -> (PathBuf, troupe_bastion::FileSigner) {
        let keys = self.net.tmp.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        let ops = troupe_bastion::FileSigner::generate().unwrap();
        ops.write_encrypted(&keys.join("ops.key"), crate::orch::PASSPHRASE)
            .unwrap();
        std::fs::write(
            keys.join("ops.pass"),
            format!("{}\n", crate::orch::PASSPHRASE),
        )
        .unwrap();
        (keys, ops)
    }

    /// The master trusts `ops` (its DATA/signers.toml names only that key).
    pub fn trust_ops(&self, m: &NetMaster, ops: &troupe_bastion::FileSigner) {
        std::fs::write(
            m.data.join("signers.toml"),
            format!("[[signer]]\nname = \"ops\"\nkey = \"{}\"\n", ops.key_id()),
        )
        .unwrap();
    }

    /// A bastion identity (state dir) joined to the master with a PSK, from
    /// the master's side of the switch: what `troupe deploy` signs from.
    pub fn bootstrap_bastion(&self, m: &NetMaster) -> PathBuf {
        let bastion = self.net.tmp.path().join("bastion");
        let psk = m.psk("bastion");
        crate::run(
            self.net
                .command(&m.host, &crate::agent_bin())
                .args(["bootstrap", "--server", &m.url, "--name", "bastion"])
                .args(["--ca-fingerprint", &m.fingerprint(), "--psk", &psk])
                .arg("--state")
                .arg(&bastion),
        )
        .assert_success();
        bastion
    }

    /// Waits (60 s at most) until `n` web hosts answer a signed ping:
    /// `troupe deploy` targets the hosts whose listener is attached now, and
    /// a listener restarted by a converge reconnects. `keys` holds
    /// `ops.key` and `ops.pass`.
    pub fn wait_for_web_listeners(&self, m: &NetMaster, bastion: &Path, keys: &Path, n: usize) {
        let want = format!("{n} matched, {n} ok");
        let t = std::time::Instant::now();
        loop {
            let out = crate::run(
                self.net
                    .command(&m.host, &crate::troupe_bin())
                    .args(["run", "ping", "--role", "web", "--server", &m.url])
                    .arg("--identity")
                    .arg(bastion)
                    .arg("--key")
                    .arg(keys.join("ops.key"))
                    .arg("--passphrase-file")
                    .arg(keys.join("ops.pass")),
            );
            if out.stdout.contains(&want) {
                return;
            }
            assert!(
                t.elapsed().as_secs() < 60,
                "listeners not attached: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Writes the release file of the in-house application at `version`
    /// (HAProxy backend `backend`, health check on /health) and returns
    /// its path.
    pub fn app_release(&self, version: &str, backend: &str) -> PathBuf {
        let rel = self.net.tmp.path().join(format!("release-{version}.toml"));
        std::fs::write(
            &rel,
            format!(
                "title = \"{APP} {version}\"\n[lb]\nbackend = \"{backend}\"\n\
                 [health]\nhttp = \"http://127.0.0.1:{APP_PORT}/health\"\nexpect_status = 200\n\
                 timeout_secs = 2\nretries = 2\ninterval_secs = 1\n\
                 [[package]]\nname = \"{APP}\"\nversion = \"{version}\"\n"
            ),
        )
        .unwrap();
        rel
    }
}

/// One booted host. Drop powers it off and removes it.
pub struct Booted {
    pub name: String,
    pub fqdn: String,
    pub host: Host,
    /// The host's root as seen from outside (the overlay's merged view).
    pub root: PathBuf,
    base: PathBuf,
    lower: PathBuf,
    repo: PathBuf,
    nspawn: Option<Child>,
    leader: u32,
    /// Time from starting nspawn to `is-system-running` answering, per boot.
    pub boot_times: Vec<Duration>,
}

impl Booted {
    fn mount(&self) -> Result<(), String> {
        for d in ["upper", "work", "merged"] {
            std::fs::create_dir_all(self.base.join(d)).map_err(|e| e.to_string())?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.base.join("upper").display(),
            self.base.join("work").display()
        );
        let o = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&self.root)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "mounting the overlay: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(())
    }

    /// Turns the image into this host: its name, the fleet's hosts file,
    /// the fleet repository as the only apt source, and services allowed
    /// to start (the image refuses them with a policy-rc.d, which is for
    /// converging it as a directory, not for a booted host).
    fn prepare(&self, hosts: &str) -> Result<(), String> {
        let r = &self.root;
        let w =
            |p: &str, body: &str| std::fs::write(r.join(p), body).map_err(|e| format!("{p}: {e}"));
        let _ = std::fs::remove_file(r.join("usr/sbin/policy-rc.d"));
        w("etc/hostname", &format!("{}\n", self.fqdn))?;
        w("etc/hosts", hosts)?;
        w(
            "etc/apt/sources.list",
            "# The fleet's repository only (bind-mounted read-only by the test bed; see\n\
             # tests/src/nspawn.rs for why it is trusted=yes). Nothing from outside.\n\
             deb [trusted=yes] file:/srv/troupe-repo ./\n",
        )?;
        if let Ok(rd) = std::fs::read_dir(r.join("etc/apt/sources.list.d")) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        std::fs::create_dir_all(r.join("srv/troupe-repo")).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.base.join("nspawn.log")
    }

    /// Boots the host (again, after [`Booted::poweroff`] or
    /// [`Booted::kill`]) and waits until systemd finished starting up.
    pub fn boot(&mut self) {
        assert!(self.nspawn.is_none(), "{} is already running", self.name);
        let t0 = Instant::now();
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(&self.root)
            .args(["-b", "--register=no", "--keep-unit", "--console=passive"])
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                self.host.ns
            ))
            .arg(format!("--machine={}", self.name))
            .arg(format!(
                "--bind-ro={}:/srv/troupe-repo",
                self.repo.display()
            ))
            // CAP_NET_ADMIN and /proc/sys/net writable: the host has its
            // own network namespace (nspawn grants both itself only with
            // --private-network), so ufw's netfilter rules and the roles'
            // net.* sysctls work as on a real host, on this namespace only;
            // the rest of /proc/sys stays read-only.
            .arg("--capability=CAP_NET_ADMIN")
            .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("systemd-nspawn: {e}"));
        let npid = child.id();
        self.nspawn = Some(child);
        // The container's PID 1: nspawn's child running systemd.
        let deadline = Instant::now() + Duration::from_secs(30);
        self.leader = loop {
            if let Some((pid, _, _)) = processes()
                .into_iter()
                .find(|(_, pp, comm)| *pp == npid && comm == "systemd")
            {
                break pid;
            }
            if let Some(Ok(Some(st))) = self.nspawn.as_mut().map(|c| c.try_wait()) {
                self.nspawn = None;
                panic!(
                    "{}: systemd-nspawn exited ({st}) before booting:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no systemd under nspawn after 30 s:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // Until systemd opens its private socket, systemctl fails: retry.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let o = self.sh("timeout 60 systemctl is-system-running --wait");
            let state = o.stdout.trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not booted after 90 s (is-system-running: {state:?} {})\n{}",
                self.name,
                o.stderr.trim(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.boot_times.push(t0.elapsed());
    }

    /// The nspawn output so far (boot messages, errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the container is up.
    pub fn running(&mut self) -> bool {
        match self.nspawn.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.nspawn = None;
                false
            }
            None => false,
        }
    }

    /// Runs `script` with `/bin/sh -c` inside the host, as root, in all of
    /// the container's namespaces, with a clean environment.
    pub fn sh(&self, script: &str) -> Out {
        assert!(self.leader != 0, "{} is not booted", self.name);
        crate::run(
            Command::new("nsenter")
                .args(["-t", &self.leader.to_string(), "-a", "--"])
                .args([
                    "env",
                    "-i",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME=/root",
                    "LANG=C.UTF-8",
                    "DEBIAN_FRONTEND=noninteractive",
                    "/bin/sh",
                    "-c",
                    script,
                ]),
        )
    }

    /// Like [`Booted::sh`], and panics (with all output) unless it exits 0;
    /// returns stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert_eq!(
            o.code,
            Some(0),
            "{}: `{script}` failed:\nstdout: {}\nstderr: {}",
            self.name,
            o.stdout,
            o.stderr
        );
        o.stdout
    }

    /// Installs `packages` by apt from the fleet's repository (its only
    /// source; the image has none of the roles' packages: nginx, haproxy,
    /// curl, ... are installed this way, or by a role's run), reading its
    /// index first; panics with apt's output on failure.
    pub fn apt_install(&self, packages: &[&str]) {
        self.sh_ok(&format!(
            "apt-get update -qq && apt-get install -y -qq -- {} >/dev/null",
            packages.join(" ")
        ));
    }

    /// `systemctl show -p PROP --value UNIT`.
    pub fn unit_prop(&self, unit: &str, prop: &str) -> String {
        self.sh_ok(&format!("systemctl show -p {prop} --value -- {unit}"))
            .trim()
            .to_string()
    }

    /// Clean shutdown: SIGTERM to nspawn (systemd powers off), waited for
    /// up to 60 s, then killed.
    pub fn poweroff(&mut self) {
        let Some(mut c) = self.nspawn.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .output();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                self.leader = 0;
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.nspawn = Some(c);
        self.kill();
    }

    /// Power cut: SIGKILL to the container's PID 1 (the whole PID
    /// namespace dies with it), then nspawn exits.
    pub fn kill(&mut self) {
        if self.leader != 0 {
            let _ = Command::new("kill")
                .args(["-9", &self.leader.to_string()])
                .output();
        }
        if let Some(mut c) = self.nspawn.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.leader = 0;
    }

    /// Poweroff, then boot the same root again.
    pub fn reboot(&mut self) {
        self.poweroff();
        self.boot();
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        if self.nspawn.is_some() {
            // Fast when a test failed: a power cut, not a clean shutdown.
            if std::thread::panicking() {
                self.kill();
            } else {
                self.poweroff();
            }
        }
        for _ in 0..50 {
            let o = Command::new("umount").arg(&self.root).output();
            if o.map(|o| o.status.success()).unwrap_or(false) {
                break;
            }
            if !is_mounted(&self.root) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if is_mounted(&self.root) {
            let _ = Command::new("umount").arg("-l").arg(&self.root).output();
        }
        if !is_mounted(&self.root) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

/// The latest report of `host` on the master whose run id is not
/// `after`; waits up to `secs`, then panics with the master's log.
pub fn next_report(m: &NetMaster, host: &str, after: Option<&str>, secs: u64) -> serde_json::Value {
    let t = Instant::now();
    loop {
        if let Ok(v) = m.admin(&troupe_master::admin::AdminRequest::Report {
            host: host.to_string(),
            run: None,
        }) && !v["report"].is_null()
            && v["report"]["run_id"].as_str() != after
        {
            return v["report"].clone();
        }
        assert!(
            t.elapsed().as_secs() < secs,
            "no new report from {host} after {secs} s; master log:\n{}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn is_mounted(p: &Path) -> bool {
    let p = p.to_string_lossy();
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(&*p)))
        .unwrap_or(false)
}
