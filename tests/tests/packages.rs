//! The packages (issue 13): `scripts/package.sh` builds the two .debs and
//! two .rpms; lintian and rpmlint find no errors; each .deb installs into
//! a dpkg root (maintainer scripts run chrootless, honouring DPKG_ROOT) and
//! each .rpm into an rpm root, with the right files, modes and conffiles;
//! remove keeps state, purge deletes it.
//!
//! The packages are built from the binaries under test (TROUPE_BIN_DIR or
//! target/debug, stripped by the script) into a temporary directory, so
//! this never disturbs target/packages; CI builds the release ones with
//! `scripts/package.sh` itself.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use troupe_tests::{Out, run};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// The four packages, built into a temporary directory.
struct Packages {
    _dir: tempfile::TempDir,
    paths: Vec<PathBuf>,
}

impl Packages {
    fn build() -> Packages {
        let dir = tempfile::tempdir().unwrap();
        let r = run(Command::new(workspace().join("scripts/package.sh"))
            .env("TROUPE_PACKAGE_BIN_DIR", troupe_tests::bin_dir())
            .env("TROUPE_PACKAGE_OUT", dir.path()));
        r.assert_success();
        let paths: Vec<PathBuf> = r.stdout.lines().map(PathBuf::from).collect();
        assert_eq!(paths.len(), 4, "four packages: {}", r.stdout);
        for p in &paths {
            assert!(p.starts_with(dir.path()) && p.is_file(), "{}", p.display());
        }
        Packages { _dir: dir, paths }
    }

    fn get(&self, name: &str) -> PathBuf {
        self.paths
            .iter()
            .find(|p| p.file_name().unwrap() == name)
            .unwrap_or_else(|| panic!("no package {name}: {:?}", self.paths))
            .clone()
    }
}

/// One test, so the packages are built once (each test is a process).
#[test]
fn packages_build_lint_clean_and_install_into_roots() {
    let p = Packages::build();
    lintian_and_rpmlint_find_no_errors(&p);
    the_master_deb_installs_a_user_a_private_state_dir_and_a_conffile(&p);
    the_agent_deb_installs_its_unit_config_and_state_dir(&p);
    the_rpms_install_into_an_rpm_root_with_their_config_files(&p);
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn dpkg(root: &Path, args: &[&str]) -> Out {
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"])
        .args(args))
}

fn dpkg_root() -> tempfile::TempDir {
    let r = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(r.path().join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(r.path().join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(r.path().join("var/lib/dpkg/status"), "").unwrap();
    r
}

/// No symbol table left in a packaged binary.
fn assert_stripped(bin: &Path) {
    let out = run(Command::new("objdump").arg("-h").arg(bin));
    out.assert_success();
    assert!(
        !out.stdout.contains(".symtab") && !out.stdout.contains(".debug_info"),
        "{} is not stripped",
        bin.display()
    );
}

fn lintian_and_rpmlint_find_no_errors(p: &Packages) {
    let debs = [
        p.get("troupe_0.1.0_amd64.deb"),
        p.get("troupe-agent_0.1.0_amd64.deb"),
    ];
    let out = run(Command::new("lintian").args(&debs));
    assert!(out.success(), "lintian failed: {out:?}");
    let tags: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(tags.is_empty(), "lintian errors/warnings: {tags:#?}");

    let rpms = [
        p.get("troupe-0.1.0-1.x86_64.rpm"),
        p.get("troupe-agent-0.1.0-1.x86_64.rpm"),
    ];
    let out = run(Command::new("rpmlint")
        .arg("-c")
        .arg(workspace().join("packaging/rpm/rpmlint.toml"))
        .args(&rpms));
    assert!(
        out.stdout.contains(" 0 errors,"),
        "rpmlint errors: {}",
        out.stdout
    );
    for r in &rpms {
        let k = run(Command::new("rpm").arg("-K").arg(r));
        k.assert_success();
        assert!(k.stdout.contains("digests OK"), "{k:?}");
        // EL 9's glibc is 2.34: nothing newer may be required.
        let req = run(Command::new("rpm").arg("-qp").arg("--requires").arg(r));
        req.assert_success();
        for line in req.stdout.lines() {
            if let Some(v) = line.split("GLIBC_").nth(1) {
                let v: Vec<u32> = v
                    .trim_end_matches(")(64bit)")
                    .split('.')
                    .filter_map(|x| x.parse().ok())
                    .collect();
                assert!(v <= vec![2, 34], "{}: needs {line}", r.display());
            }
        }
    }
}

fn the_master_deb_installs_a_user_a_private_state_dir_and_a_conffile(p: &Packages) {
    let root = dpkg_root();
    let r = root.path();
    dpkg(
        r,
        &["-i", p.get("troupe_0.1.0_amd64.deb").to_str().unwrap()],
    )
    .assert_success();

    assert_eq!(mode(&r.join("usr/bin/troupe")), 0o755);
    assert_stripped(&r.join("usr/bin/troupe"));
    let unit = std::fs::read_to_string(r.join("lib/systemd/system/troupe-master.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/troupe master\n"),
        "{unit}"
    );
    assert!(unit.contains("User=troupe\n"), "{unit}");
    assert_eq!(mode(&r.join("etc/troupe/master.toml")), 0o644);
    assert_eq!(mode(&r.join("var/lib/troupe")), 0o700);
    // The troupe system user, made by the postinst in this root (not on
    // the machine running the test).
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("troupe:") && l.ends_with(":/var/lib/troupe:/usr/sbin/nologin")),
        "{passwd}"
    );
    let conffiles = run(Command::new("dpkg-query")
        .arg(format!("--admindir={}", r.join("var/lib/dpkg").display()))
        .args(["-W", "-f=${Conffiles}", "troupe"]));
    conffiles.assert_success();
    assert!(
        conffiles.stdout.contains("/etc/troupe/master.toml "),
        "{conffiles:?}"
    );
    for f in [
        "usr/share/bash-completion/completions/troupe",
        "usr/share/zsh/vendor-completions/_troupe",
        "usr/share/fish/vendor_completions.d/troupe.fish",
        "usr/share/man/man1/troupe.1.gz",
        "usr/share/man/man1/troupe-master.1.gz",
        "usr/share/man/man1/troupe-ca-psk-new.1.gz",
        "usr/share/man/man1/troupe-deploy.1.gz",
        "usr/lib/sysusers.d/troupe.conf",
        "usr/share/doc/troupe/copyright",
    ] {
        assert!(r.join(f).is_file(), "{f} missing");
        assert_eq!(mode(&r.join(f)), 0o644, "{f}");
    }
    assert!(
        !r.join("usr/share/man/man1/troupe-package-assets.1.gz")
            .exists()
    );
    // The packaged config file is what the binary reads, and it parses.
    let pc = run(Command::new(r.join("usr/bin/troupe"))
        .args(["master", "--config"])
        .arg(r.join("etc/troupe/master.toml"))
        .args(["--print-config", "--json"]));
    pc.assert_success();
    let v: serde_json::Value = serde_json::from_str(&pc.stdout).unwrap();
    assert_eq!(v["settings"]["listen"]["value"], "0.0.0.0:8140");

    // Remove keeps the state (the CA!) and the edited conffile; purge
    // deletes them.
    std::fs::write(r.join("var/lib/troupe/ca-key-stand-in"), "x").unwrap();
    std::fs::write(
        r.join("etc/troupe/master.toml"),
        "listen = \"0.0.0.0:8141\"\n",
    )
    .unwrap();
    dpkg(r, &["--remove", "troupe"]).assert_success();
    assert!(!r.join("usr/bin/troupe").exists());
    assert!(r.join("var/lib/troupe/ca-key-stand-in").exists());
    assert!(r.join("etc/troupe/master.toml").exists());
    dpkg(r, &["--purge", "troupe"]).assert_success();
    assert!(!r.join("var/lib/troupe").exists());
    assert!(!r.join("etc/troupe/master.toml").exists());
}

fn the_agent_deb_installs_its_unit_config_and_state_dir(p: &Packages) {
    let root = dpkg_root();
    let r = root.path();
    dpkg(
        r,
        &[
            "-i",
            p.get("troupe-agent_0.1.0_amd64.deb").to_str().unwrap(),
        ],
    )
    .assert_success();
    assert_eq!(mode(&r.join("usr/bin/troupe-agent")), 0o755);
    assert_stripped(&r.join("usr/bin/troupe-agent"));
    let unit = std::fs::read_to_string(r.join("lib/systemd/system/troupe-agent.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/troupe-agent run\n"),
        "{unit}"
    );
    assert!(!unit.contains("User="), "the agent runs as root: {unit}");
    assert_eq!(mode(&r.join("etc/troupe/agent.toml")), 0o644);
    assert_eq!(mode(&r.join("var/lib/troupe-agent")), 0o700);
    assert_eq!(
        std::fs::metadata(r.join("var/lib/troupe-agent"))
            .unwrap()
            .uid(),
        0
    );
    // No enablement: the package never starts an unconfigured agent.
    assert!(
        !r.join("etc/systemd/system/multi-user.target.wants")
            .exists()
    );
    for f in [
        "usr/share/bash-completion/completions/troupe-agent",
        "usr/share/zsh/vendor-completions/_troupe-agent",
        "usr/share/fish/vendor_completions.d/troupe-agent.fish",
        "usr/share/man/man1/troupe-agent.1.gz",
        "usr/share/man/man1/troupe-agent-run.1.gz",
        "usr/share/man/man1/troupe-agent-bootstrap.1.gz",
    ] {
        assert!(r.join(f).is_file(), "{f} missing");
    }
    let pc = run(Command::new(r.join("usr/bin/troupe-agent"))
        .arg("--config")
        .arg(r.join("etc/troupe/agent.toml"))
        .args(["--print-config", "--json"]));
    pc.assert_success();
    let v: serde_json::Value = serde_json::from_str(&pc.stdout).unwrap();
    assert_eq!(
        v["settings"]["orchestration_file"]["value"],
        "/etc/troupe/orchestration.toml"
    );
    assert_eq!(v["settings"]["server"]["value"], serde_json::Value::Null);

    std::fs::write(r.join("var/lib/troupe-agent/key.pem"), "x").unwrap();
    dpkg(r, &["--remove", "troupe-agent"]).assert_success();
    assert!(r.join("var/lib/troupe-agent/key.pem").exists());
    dpkg(r, &["--purge", "troupe-agent"]).assert_success();
    assert!(!r.join("var/lib/troupe-agent").exists());
}

fn the_rpms_install_into_an_rpm_root_with_their_config_files(p: &Packages) {
    for (file, bin, conf, state) in [
        (
            "troupe-0.1.0-1.x86_64.rpm",
            "troupe",
            "master.toml",
            "troupe",
        ),
        (
            "troupe-agent-0.1.0-1.x86_64.rpm",
            "troupe-agent",
            "agent.toml",
            "troupe-agent",
        ),
    ] {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let rpm = |args: &[&str]| {
            run(Command::new("rpm")
                .arg("--root")
                .arg(r)
                .args(["--dbpath", "/var/lib/rpm"])
                .args(args))
        };
        rpm(&["--initdb"]).assert_success();
        // No shell in this root: scriptlets are checked on booted hosts.
        rpm(&[
            "-i",
            "--nodeps",
            "--noscripts",
            p.get(file).to_str().unwrap(),
        ])
        .assert_success();
        assert_eq!(mode(&r.join(format!("usr/bin/{bin}"))), 0o755);
        assert_stripped(&r.join(format!("usr/bin/{bin}")));
        let unit = if bin == "troupe" {
            "troupe-master.service"
        } else {
            "troupe-agent.service"
        };
        assert_eq!(
            mode(&r.join(format!("usr/lib/systemd/system/{unit}"))),
            0o644
        );
        assert_eq!(mode(&r.join(format!("etc/troupe/{conf}"))), 0o644);
        assert_eq!(mode(&r.join(format!("var/lib/{state}"))), 0o700);
        assert!(
            r.join(format!("usr/share/zsh/site-functions/_{bin}"))
                .is_file()
        );
        assert!(r.join(format!("usr/share/man/man1/{bin}.1.gz")).is_file());
        let name = file.split("-0.1.0").next().unwrap();
        let qc = rpm(&["-qc", name]);
        qc.assert_success();
        assert_eq!(qc.stdout.trim(), format!("/etc/troupe/{conf}"));
        // %config(noreplace): an edited file survives an erase as .rpmsave.
        std::fs::write(r.join(format!("etc/troupe/{conf}")), "# edited\n").unwrap();
        rpm(&["-e", "--nodeps", "--noscripts", name]).assert_success();
        assert!(!r.join(format!("usr/bin/{bin}")).exists());
        assert!(r.join(format!("etc/troupe/{conf}.rpmsave")).exists());
    }
}
