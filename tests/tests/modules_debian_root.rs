//! The shipped module tree (issue 7) converged into a real Debian 12 root.
//!
//! A root built by `scripts/debian-root.sh` (debootstrap, bookworm, with the
//! packages the `base` and `web` roles name) is copied to a temporary
//! directory; a real `troupe master` serves the shipped `modules/`, a real
//! `troupe-agent` bootstraps with a one-time key (its state directory is the
//! root's own `/var/lib/troupe-agent`, where the `tls` profile expects the
//! certificate) and runs `run --once --root ROOT`. Then the configs are
//! checked with the root's own validators through `chroot` (`sshd -t`, `sshd
//! -T`, `nginx -t`, `haproxy -c`, `visudo -c`), and a second converge must
//! change nothing and exit 0.
//!
//! Everything runs in fresh network and mount namespaces (the test re-runs
//! itself under `unshare --net --mount`): the root's execs (`ufw --force
//! enable` loads netfilter rules) must never touch this machine's firewall,
//! master and agent talk over that namespace's own loopback, and the root's
//! copy lives on a tmpfs that disappears with the namespace.
//!
//! The root is found at `TROUPE_DEBIAN_ROOT` (a tarball or a directory),
//! else `/var/cache/troupe/debian-root.tar`. Without it (or without root
//! privileges) the test fails when `CI=true` or `TROUPE_DEBIAN_ROOT` is set
//! (`.ci/run` builds the root and sets it), and is skipped with a printed
//! reason otherwise.
//!
//! Both converged roots' `/etc/troupe/orchestration.toml` and `actions.d`
//! are also loaded with the agent's own configuration loader (owner and
//! mode checks included); `every_role_gets_an_orchestration_config_the_agent_accepts`
//! does the same for every role and distribution from compiled catalogs,
//! without a root.

use std::path::{Path, PathBuf};
use std::process::Command;
use troupe_tests::{Master, MasterOptions, Out, run};

/// Set in the copy of this test that runs inside the network namespace.
const IN_NETNS: &str = "TROUPE_TEST_IN_NETNS";
const DEFAULT_ROOT: &str = "/var/cache/troupe/debian-root.tar";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace dir")
        .to_path_buf()
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Why this test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let src = root_source();
    if !src.exists() {
        return Some(format!(
            "no Debian root at {} (build it with `sudo scripts/debian-root.sh`, or set TROUPE_DEBIAN_ROOT)",
            src.display()
        ));
    }
    // /proc/self belongs to the process's effective user.
    let euid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if euid.ok() != Some(0) {
        return Some("needs root (chroot, a network namespace, a root owned by root)".into());
    }
    for tool in [
        "/usr/bin/unshare",
        "/usr/sbin/chroot",
        "/usr/bin/tar",
        "/usr/bin/mount",
        "/usr/bin/umount",
    ] {
        if !Path::new(tool).exists() {
            return Some(format!("{tool} is missing"));
        }
    }
    if !Path::new("/usr/sbin/ip").exists() && !Path::new("/sbin/ip").exists() {
        return Some("ip (iproute2) is missing".into());
    }
    None
}

fn root_source() -> PathBuf {
    std::env::var_os("TROUPE_DEBIAN_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

/// Runs `body` inside a new network namespace: the first call re-runs this
/// test binary (only test `name`) under `unshare --net`; that copy sees
/// `IN_NETNS` and runs `body`. Returns without running anything when the
/// prerequisites are missing outside CI.
fn in_netns(name: &str, body: impl FnOnce()) {
    if std::env::var_os(IN_NETNS).is_some() {
        let ip = if Path::new("/usr/sbin/ip").exists() {
            "/usr/sbin/ip"
        } else {
            "/sbin/ip"
        };
        run(Command::new(ip).args(["link", "set", "lo", "up"])).assert_success();
        body();
        return;
    }
    if let Some(why) = missing_prerequisite() {
        if in_ci() {
            panic!("CI=true and the Debian root test cannot run: {why}");
        }
        if std::env::var_os("TROUPE_DEBIAN_ROOT").is_some() {
            panic!("TROUPE_DEBIAN_ROOT is set but the Debian root test cannot run: {why}");
        }
        eprintln!("SKIPPED {name}: {why}");
        return;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let out = run(Command::new("/usr/bin/unshare")
        .arg("--net")
        .arg("--mount")
        .arg("--")
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1"));
    eprintln!(
        "--- {name} in its network namespace ---\n{}{}",
        out.stdout, out.stderr
    );
    assert!(
        out.success() && out.stdout.contains("1 passed"),
        "{name} failed in its network namespace (exit {:?}); output above",
        out.code
    );
}

/// A fresh copy of the prepared root in `dir/root`.
fn copy_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir(&root).expect("mkdir root");
    // A tmpfs in this test's own mount namespace: unpacking and removing
    // ~15k files on a busy disk takes far longer than in memory, and the
    // mount vanishes with the namespace whatever happens.
    run(Command::new("/usr/bin/mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "mode=0755,size=2g",
            "troupe-debian-root",
        ])
        .arg(&root))
    .assert_success();
    let src = root_source();
    let t = std::time::Instant::now();
    let out = if src.is_dir() {
        run(Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.display()))
            .arg(&root))
    } else {
        run(Command::new("/usr/bin/tar")
            .args(["--numeric-owner", "-xf"])
            .arg(&src)
            .arg("-C")
            .arg(&root))
    };
    out.assert_success();
    eprintln!(
        "root copied from {} in {} ms",
        src.display(),
        t.elapsed().as_millis()
    );
    root
}

/// `chroot ROOT ARGV...` with a minimal environment.
fn in_root(root: &Path, argv: &[&str]) -> Out {
    let t = std::time::Instant::now();
    let out = run(Command::new("/usr/sbin/chroot")
        .arg(root)
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C"));
    eprintln!(
        "chroot {argv:?}: {:?} in {} ms",
        out.code,
        t.elapsed().as_millis()
    );
    out
}

struct Converged {
    m: Master,
    root: PathBuf,
    state: PathBuf,
    host: String,
}

impl Converged {
    /// Master with the shipped modules, agent `host` bootstrapped into the
    /// root's state directory, root copied.
    fn new(host: &str) -> Converged {
        let t = std::time::Instant::now();
        let m = Master::start_with(MasterOptions {
            modules: Some(workspace().join("modules")),
            extra_args: vec![],
        });
        eprintln!("master up in {} ms", t.elapsed().as_millis());
        let root = copy_root(m.root.path());
        let state = root.join("var/lib/troupe-agent");
        let psk = m.psk(host);
        run(&mut m.bootstrap_command_in(host, Some(&psk), &state)).assert_success();
        eprintln!("{host} bootstrapped after {} ms", t.elapsed().as_millis());
        Converged {
            m,
            root,
            state,
            host: host.to_owned(),
        }
    }

    /// `troupe-agent run --once --root ROOT`; exit code and JSON report.
    fn converge(&self) -> (Option<i32>, serde_json::Value, Out) {
        let t = std::time::Instant::now();
        let out = run(Command::new(troupe_tests::agent_bin())
            .args(["run", "--once", "--output", "json", "--server", &self.m.url])
            .arg("--state")
            .arg(&self.state)
            .arg("--root")
            .arg(&self.root)
            .arg("--facts-dir")
            .arg(self.m.root.path().join("no-external-facts")));
        eprintln!(
            "converge of {} took {} ms",
            self.host,
            t.elapsed().as_millis()
        );
        let report = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "run printed no JSON report ({e}):\n{out:#?}\nmaster log:\n{}",
                self.m.log()
            )
        });
        (out.code, report, out)
    }

    fn p(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.p(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Runs a validator inside the root and asserts it accepts; then gives
    /// it a broken copy of `file` and asserts it refuses (so the check is
    /// not vacuous in this root).
    fn validate(&self, argv: &[&str], file: &str, flag: &str, garbage: &str) -> Out {
        let ok = in_root(&self.root, argv);
        assert!(
            ok.success(),
            "{argv:?} refused the converged {file}: {ok:#?}"
        );
        let broken = format!("{file}.troupe-broken");
        let mut text = self.read(file);
        text.push_str(garbage);
        std::fs::write(self.p(&broken), text).expect("write broken copy");
        let mut bad_argv: Vec<&str> = Vec::new();
        let mut swapped = false;
        for (i, a) in argv.iter().enumerate() {
            if i > 0 && argv[i - 1] == flag {
                bad_argv.push(&broken);
                swapped = true;
            } else {
                bad_argv.push(a);
            }
        }
        if !swapped {
            bad_argv.extend([flag, broken.as_str()]);
        }
        let bad = in_root(&self.root, &bad_argv);
        assert!(
            !bad.success(),
            "{bad_argv:?} accepted a broken {file}: {bad:#?}"
        );
        std::fs::remove_file(self.p(&broken)).expect("remove broken copy");
        ok
    }
}

impl Drop for Converged {
    fn drop(&mut self) {
        // Unmount the root's tmpfs so the master's temporary directory can
        // be removed (the namespace would drop it anyway).
        let _ = Command::new("/usr/bin/umount")
            .arg("--lazy")
            .arg(&self.root)
            .status();
    }
}

fn resources(report: &serde_json::Value) -> &Vec<serde_json::Value> {
    report["resources"].as_array().expect("resources")
}

fn count(report: &serde_json::Value, status: &str) -> usize {
    resources(report)
        .iter()
        .filter(|r| r["status"] == status)
        .count()
}

fn with_status<'a>(report: &'a serde_json::Value, status: &str) -> Vec<&'a serde_json::Value> {
    resources(report)
        .iter()
        .filter(|r| r["status"] == status)
        .collect()
}

/// First converge: everything converges (changes, no failure, no skip);
/// services are reported as not managed under --root, nothing else is.
fn first_converge(c: &Converged) -> serde_json::Value {
    let (code, report, out) = c.converge();
    let bad: Vec<_> = resources(&report)
        .iter()
        .filter(|r| r["status"] == "failed" || r["status"] == "skipped")
        .collect();
    assert!(
        bad.is_empty(),
        "failed or skipped resources (a package the root lacks? add it to scripts/debian-root.sh): {bad:#?}\n{}",
        out.stderr
    );
    assert_eq!(
        code,
        Some(2),
        "first converge should change the root: {out:#?}"
    );
    assert!(count(&report, "changed") > 10, "{report:#}");
    let services: Vec<_> = resources(&report)
        .iter()
        .filter(|r| {
            r["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("service["))
        })
        .collect();
    assert!(!services.is_empty());
    for s in &services {
        assert_eq!(s["status"], "unchanged", "{s:#}");
        let ev = s["events"][0].as_str().unwrap_or("");
        assert!(ev.starts_with("not managed under --root"), "{s:#}");
    }
    for r in resources(&report) {
        let noted = r["events"].as_array().is_some_and(|e| {
            e.iter()
                .any(|e| e.as_str().is_some_and(|e| e.starts_with("not managed")))
        });
        let is_service = r["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("service["));
        assert_eq!(noted, is_service, "{r:#}");
    }
    report
}

/// Second converge of the same root: exit 0, nothing changed, failed or
/// skipped.
fn second_converge(c: &Converged) {
    let (code, report, out) = c.converge();
    let changed = with_status(&report, "changed");
    assert!(changed.is_empty(), "second converge changed: {changed:#?}");
    assert_eq!(count(&report, "failed"), 0, "{report:#}");
    assert_eq!(count(&report, "skipped"), 0, "{report:#}");
    assert_eq!(code, Some(0), "{out:#?}");
    eprintln!(
        "second converge of {}: {} resources, 0 changed",
        c.host,
        resources(&report).len()
    );
}

/// The base hardening as the root's own tools see it.
fn check_base(c: &Converged) {
    // sshd: the converged config passes `sshd -t` (host keys and the
    // privilege separation directory from the root) and its effective
    // settings are the hardened ones.
    c.validate(
        &["/usr/sbin/sshd", "-t", "-f", "/etc/ssh/sshd_config"],
        "/etc/ssh/sshd_config",
        "-f",
        "\nPermitRootLogin maybe\n",
    );
    let eff = in_root(
        &c.root,
        &["/usr/sbin/sshd", "-T", "-f", "/etc/ssh/sshd_config"],
    );
    eff.assert_success();
    for line in [
        "permitrootlogin no",
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        "allowgroups admins",
        "authenticationmethods publickey",
        "x11forwarding no",
    ] {
        assert!(
            eff.stdout.lines().any(|l| l == line),
            "sshd -T does not say {line:?}:\n{}",
            eff.stdout
        );
    }
    // sudoers: the admins' drop-in passes visudo.
    c.validate(
        &[
            "/usr/sbin/visudo",
            "-c",
            "-q",
            "-f",
            "/etc/sudoers.d/troupe-admins",
        ],
        "/etc/sudoers.d/troupe-admins",
        "-f",
        "\n%admins ALL=(ALL NOPASSWD: ALL\n",
    );
    // The rest of base, from the files the root's services would read.
    assert!(
        c.read("/etc/ufw/ufw.conf")
            .lines()
            .any(|l| l == "ENABLED=yes")
    );
    assert!(
        c.read("/etc/default/ufw")
            .lines()
            .any(|l| l == "DEFAULT_INPUT_POLICY=\"DROP\"")
    );
    let added = in_root(&c.root, &["/usr/sbin/ufw", "show", "added"]);
    added.assert_success();
    assert!(added.stdout.contains("ufw allow 22/tcp"), "{added:#?}");
    let passwd = c.read("/etc/passwd");
    assert!(
        passwd.lines().any(|l| l.starts_with("alice:x:2001:2000:")),
        "{passwd}"
    );
    let host_passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    assert!(
        !host_passwd.lines().any(|l| l.starts_with("alice:x:2001:")),
        "the converge leaked a user into the host's /etc/passwd"
    );
    let groups = in_root(&c.root, &["/usr/bin/id", "-nG", "alice"]);
    assert!(
        groups.stdout.split_whitespace().any(|g| g == "sudo"),
        "{groups:#?}"
    );
    let keys = std::fs::metadata(c.p("/home/alice/.ssh/authorized_keys")).expect("authorized_keys");
    use std::os::unix::fs::MetadataExt;
    assert_eq!((keys.uid(), keys.mode() & 0o777), (2001, 0o600));
    // chrony: `chronyd -p` parses the config (and refuses a bad directive)
    // and prints what it would use.
    let chrony = c.validate(
        &["/usr/sbin/chronyd", "-p", "-f", "/etc/chrony/chrony.conf"],
        "/etc/chrony/chrony.conf",
        "-f",
        "\npoool ntp.invalid\n",
    );
    assert!(
        chrony
            .stdout
            .lines()
            .any(|l| l.starts_with("pool ") || l.starts_with("server ")),
        "{chrony:#?}"
    );
    // fail2ban: the whole configuration passes `fail2ban-client -t`, and the
    // sshd jail it would start reads the journal and bans through ufw.
    let f2b = in_root(&c.root, &["/usr/bin/fail2ban-client", "-t"]);
    assert!(f2b.success(), "{f2b:#?}");
    let dump = in_root(&c.root, &["/usr/bin/fail2ban-client", "-d"]);
    dump.assert_success();
    assert!(
        dump.stdout.contains("['add', 'sshd', 'systemd']"),
        "{}",
        dump.stdout
    );
    assert!(dump.stdout.contains("ufw"), "{}", dump.stdout);
}

/// The converged `/etc/troupe/orchestration.toml` and `actions.d` as the
/// agent's own configuration loader sees them (with the owner and mode
/// checks): accepted, with the environment, the module actions `modules`
/// (and no others) and a policy that lets the shipped signer run them and
/// the health checks, and nothing it was not given. `actions_dir` names the
/// booted host's path, so it is pointed into the root here.
fn check_orchestration(c: &Converged, role: &str, modules: &[&str]) {
    use std::os::unix::fs::MetadataExt;
    use troupe_agent::orchestra::config::OrchestraConfig;
    let dir = c.p("/etc/troupe/actions.d");
    let meta = std::fs::metadata(&dir).expect("actions.d");
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o755));
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("read actions.d")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let want: Vec<String> = modules.iter().map(|m| format!("{m}.toml")).collect();
    assert_eq!(files, want);
    for f in &files {
        let m = std::fs::symlink_metadata(dir.join(f)).expect("action file");
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o644), "{f}");
    }
    let text = c.read("/etc/troupe/orchestration.toml");
    let line = "actions_dir = \"/etc/troupe/actions.d\"";
    assert!(text.lines().any(|l| l == line), "{text}");
    let text = text.replace(line, &format!("actions_dir = \"{}\"", dir.display()));
    let cfg = OrchestraConfig::from_toml(&text)
        .unwrap_or_else(|e| panic!("the agent refuses the converged configuration: {e:#}\n{text}"));
    assert_eq!(cfg.role.as_deref(), Some(role));
    assert_eq!(cfg.environment.as_deref(), Some("production"));
    assert_eq!(cfg.actions_dir.as_deref(), Some(dir.as_path()));
    let mut declared: Vec<&str> = cfg
        .registry
        .actions()
        .filter(|a| !a.run.is_empty())
        .map(|a| a.name.split('.').next().unwrap_or(""))
        .collect();
    declared.sort_unstable();
    declared.dedup();
    assert_eq!(declared, modules);
    let key = troupe_command::KeyId::parse("ed25519:8cYZsmQmn2aqDSdGA8ZSNgjtlxGh3ynCXV/BT3iFFik=")
        .expect("the shipped example key");
    assert_eq!(cfg.signers.name_of(&key), Some("alice"));
    let subject = troupe_command::policy::Subject {
        name: "alice",
        key: &key,
    };
    let allowed = |action: &str| {
        cfg.policy
            .evaluate(subject, action, Some(role), &Default::default())
            .is_allowed()
    };
    assert!(allowed("health.http") && allowed("health.tcp") && allowed("ping"));
    assert_eq!(allowed("nginx.reload"), modules.contains(&"nginx"));
    assert!(!allowed("package.install") && !allowed("postgresql.vacuum"));
    // The same file writable by others: the agent refuses it all.
    if let Some(f) = files.first() {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(f);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let e = OrchestraConfig::from_toml(&text).expect_err("world-writable action file");
        assert!(
            format!("{e:#}").contains("writable by group or others"),
            "{e:#}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        troupe_tests::tally::hostile(
            "modules",
            "world-writable action file in a converged root",
            true,
        );
    }
}

#[test]
fn base_role_converges_into_a_debian_root() {
    in_netns("base_role_converges_into_a_debian_root", || {
        let c = Converged::new("host1.example.com");
        let report = first_converge(&c);
        assert!(
            !resources(&report)
                .iter()
                .any(|r| r["id"] == "package[nginx]"),
            "host1 should get the base role"
        );
        check_base(&c);
        check_orchestration(&c, "base", &[]);
        second_converge(&c);
        let t = std::time::Instant::now();
        drop(c);
        eprintln!("cleaned up in {} ms", t.elapsed().as_millis());
    });
}

#[test]
fn web_role_converges_into_a_debian_root() {
    in_netns("web_role_converges_into_a_debian_root", || {
        let c = Converged::new("web1.example.com");
        first_converge(&c);
        check_base(&c);
        // nginx: the root's nginx accepts the whole converged tree (vhosts,
        // TLS files copied from the agent's own identity).
        c.validate(
            &["/usr/sbin/nginx", "-t", "-c", "/etc/nginx/nginx.conf"],
            "/etc/nginx/nginx.conf",
            "-c",
            "\nhttp { server { listen 80 } }\n",
        );
        let dump = in_root(
            &c.root,
            &["/usr/sbin/nginx", "-T", "-q", "-c", "/etc/nginx/nginx.conf"],
        );
        dump.assert_success();
        assert!(
            dump.stdout
                .contains("ssl_certificate /etc/nginx/tls/cert.pem"),
            "{}",
            dump.stdout
        );
        assert!(
            dump.stdout.contains("location = /healthz"),
            "{}",
            dump.stdout
        );
        // The certificate nginx serves is the agent's own.
        assert_eq!(
            std::fs::read(c.p("/etc/nginx/tls/cert.pem")).expect("nginx cert"),
            std::fs::read(c.state.join("cert.pem")).expect("agent cert")
        );
        // HAProxy: the local PostgreSQL service on 127.0.0.1.
        c.validate(
            &["/usr/sbin/haproxy", "-c", "-f", "/etc/haproxy/haproxy.cfg"],
            "/etc/haproxy/haproxy.cfg",
            "-f",
            "\nlisten broken\n    bind 127.0.0.1:notaport\n",
        );
        let cfg = c.read("/etc/haproxy/haproxy.cfg");
        assert!(cfg.contains("bind 127.0.0.1:5432"), "{cfg}");
        assert!(c.read("/etc/default/ufw").contains("DROP"));
        let added = in_root(&c.root, &["/usr/sbin/ufw", "show", "added"]);
        for port in ["80/tcp", "443/tcp"] {
            assert!(
                added.stdout.contains(&format!("ufw allow {port}")),
                "{added:#?}"
            );
        }
        check_orchestration(&c, "web", &["nginx"]);
        second_converge(&c);
        let t = std::time::Instant::now();
        drop(c);
        eprintln!("cleaned up in {} ms", t.elapsed().as_millis());
    });
}

/// Without a root or root privileges: every shipped role on every
/// distribution compiles to an orchestration configuration and module
/// action files that the agent's own loader accepts (owner and mode checks
/// included, with the files written as the catalog says), with the module
/// actions of that role's profiles only.
#[test]
fn every_role_gets_an_orchestration_config_the_agent_accepts() {
    use std::os::unix::fs::PermissionsExt;
    use troupe_agent::orchestra::config::OrchestraConfig;
    use troupe_catalog::Kind;
    let compiler_tests = workspace().join("catalog/compiler/tests");
    let mut secrets = troupe_compiler::SecretKeys::new();
    let key = std::fs::read_to_string(compiler_tests.join("keys/production.key"))
        .expect("the shipped example environment's test key");
    secrets.insert_str("production", &key).expect("test key");
    let opts = troupe_compiler::CompileOptions {
        secrets,
        ..Default::default()
    };
    let tree = troupe_compiler::ModuleTree::load(workspace().join("modules"))
        .unwrap_or_else(|e| panic!("{}", e.render()));
    for distro in ["debian12", "ubuntu2204", "ubuntu2404", "rocky9", "alma9"] {
        let facts: serde_json::Value = serde_json::from_slice(
            &std::fs::read(compiler_tests.join(format!("facts/{distro}.json"))).expect("facts"),
        )
        .expect("facts JSON");
        for (host, role, modules) in [
            ("mon2.example.com", "base", &[][..]),
            ("web4.example.com", "web", &["nginx"][..]),
            ("db1.example.com", "db", &["postgresql"][..]),
            ("lb2.example.com", "lb", &[][..]),
            ("bastion.example.com", "bastion", &[][..]),
            ("proxy1.example.com", "proxy", &[][..]),
        ] {
            let ctx = format!("{role}/{distro}");
            let cat = tree
                .compile(host, &facts, &opts)
                .unwrap_or_else(|e| panic!("{ctx}: {}", e.render()));
            let body = |id: &str| {
                let r = cat
                    .resources
                    .iter()
                    .find(|r| r.id.0 == id)
                    .unwrap_or_else(|| panic!("{ctx}: no {id}"));
                let Kind::File {
                    content: Some(c),
                    mode,
                    ..
                } = &r.kind
                else {
                    panic!("{ctx}: {id} has no content")
                };
                let bytes = cat.contents[&c.sha256].bytes().expect("content");
                (bytes, mode.unwrap_or(0o644))
            };
            // The host's actions.d as the catalog makes it.
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path().join("actions.d");
            std::fs::create_dir(&dir).expect("mkdir");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            let mut files: Vec<String> = Vec::new();
            for r in &cat.resources {
                if let Some(name) = r.id.0.strip_prefix("file[/etc/troupe/actions.d/") {
                    let name = name.trim_end_matches(']').to_owned();
                    let (bytes, mode) = body(&r.id.0);
                    let path = dir.join(&name);
                    std::fs::write(&path, bytes).expect("write");
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                        .expect("chmod");
                    files.push(name);
                }
            }
            files.sort();
            let want: Vec<String> = modules.iter().map(|m| format!("{m}.toml")).collect();
            assert_eq!(files, want, "{ctx}");
            let (orch, _) = body("file[/etc/troupe/orchestration.toml]");
            let text = String::from_utf8(orch).expect("UTF-8");
            let line = "actions_dir = \"/etc/troupe/actions.d\"";
            assert!(text.lines().any(|l| l == line), "{ctx}: {text}");
            let text = text.replace(line, &format!("actions_dir = \"{}\"", dir.display()));
            let cfg = OrchestraConfig::from_toml(&text)
                .unwrap_or_else(|e| panic!("{ctx}: the agent refuses it: {e:#}\n{text}"));
            assert_eq!(cfg.role.as_deref(), Some(role), "{ctx}");
            assert_eq!(cfg.environment.as_deref(), Some("production"), "{ctx}");
            let mut declared: Vec<&str> = cfg
                .registry
                .actions()
                .filter(|a| !a.run.is_empty())
                .map(|a| a.name.split('.').next().unwrap_or(""))
                .collect();
            declared.sort_unstable();
            declared.dedup();
            assert_eq!(declared, modules, "{ctx}");
            let key = troupe_command::KeyId::parse(
                "ed25519:8cYZsmQmn2aqDSdGA8ZSNgjtlxGh3ynCXV/BT3iFFik=",
            )
            .expect("the shipped example key");
            let subject = troupe_command::policy::Subject {
                name: "alice",
                key: &key,
            };
            let allowed = |action: &str| {
                cfg.policy
                    .evaluate(subject, action, Some(role), &Default::default())
                    .is_allowed()
            };
            assert!(allowed("health.http") && allowed("health.tcp"), "{ctx}");
            for (action, module) in [
                ("nginx.reload", "nginx"),
                ("nginx.configtest", "nginx"),
                ("postgresql.vacuum", "postgresql"),
            ] {
                assert_eq!(
                    allowed(action),
                    modules.contains(&module),
                    "{ctx}: {action}"
                );
                // Known to this agent only where declared: elsewhere the
                // action does not exist, whatever a policy said.
                assert_eq!(
                    cfg.registry.get(action).is_some(),
                    modules.contains(&module),
                    "{ctx}: {action}"
                );
            }
            assert!(!allowed("package.install") && !allowed("lb.drain"), "{ctx}");
        }
    }
}
