//! Package versions compared the way dpkg and rpm compare them, in real
//! roots: an epoch of 0 written out or not, an rpm version pinned without
//! its release, two installed instances of one rpm.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use troupe_catalog::{Kind, PackageEnsure};

fn have(p: &str) -> bool {
    Path::new(p).exists()
}

fn rpm_root(env: &Env) {
    std::fs::create_dir_all(env.p("/etc")).unwrap();
    std::fs::write(
        env.p("/etc/os-release"),
        "NAME=\"Rocky Linux\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.4\"\n",
    )
    .unwrap();
    let o = Command::new("rpm")
        .arg("--root")
        .arg(env.root())
        .arg("--initdb")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// troupe-pv-VERSION-1.noarch.rpm with a file named after the version (so
/// two versions can be installed side by side).
fn build_rpm(work: &Path, out: &Path, version: &str) -> std::path::PathBuf {
    let top = work.join(format!("rpmbuild-{version}"));
    std::fs::create_dir_all(top.join("SPECS")).unwrap();
    let spec = top.join("SPECS/troupe-pv.spec");
    std::fs::write(
        &spec,
        format!(
            "Name: troupe-pv\nVersion: {version}\nRelease: 1\nSummary: test package\n\
             License: MIT\nBuildArch: noarch\n%description\ntest package\n\
             %install\nmkdir -p %{{buildroot}}/usr/share/troupe-pv\n\
             echo 'hello {version}' > %{{buildroot}}/usr/share/troupe-pv/{version}.txt\n\
             %files\n/usr/share/troupe-pv/{version}.txt\n"
        ),
    )
    .unwrap();
    let o = Command::new("rpmbuild")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .args(["--define", "_build_id_links none", "--quiet", "-bb"])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::create_dir_all(out).unwrap();
    let name = format!("troupe-pv-{version}-1.noarch.rpm");
    std::fs::copy(top.join("RPMS/noarch").join(&name), out.join(&name)).unwrap();
    out.join(name)
}

fn pkg(name: &str, ensure: PackageEnsure) -> troupe_catalog::Resource {
    res(Kind::Package {
        name: name.into(),
        ensure,
    })
}

fn skip_without(tools: &[&str]) -> bool {
    if tools.iter().all(|t| have(t)) {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{tools:?} missing: .ci/run must install them"
    );
    eprintln!("{tools:?} not installed; skipped");
    true
}

#[test]
fn rpm_version_pinned_without_release_or_with_two_instances_is_converged_once() {
    if skip_without(&["/usr/bin/rpm", "/usr/bin/rpmbuild"]) {
        return;
    }
    let env = Env::new();
    rpm_root(&env);
    let pkgs = env.dir.path().join("pkgs");
    build_rpm(env.dir.path(), &pkgs, "1.0");
    let pd = pkgs.to_str().unwrap();
    let mut c = new_catalog();
    // Puppet's spelling: the version without the release.
    c.resources
        .push(pkg("troupe-pv", PackageEnsure::Version("1.0".into())));
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 2, "{r:?}");
    assert!(env.p("/usr/share/troupe-pv/1.0.txt").exists());
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 0, "{r:?}");
    // An explicit epoch of 0 is the same version.
    c.resources[0] = pkg("troupe-pv", PackageEnsure::Version("0:1.0-1".into()));
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 0, "{r:?}");

    // Two instances installed side by side (as kernels or multilib
    // packages are): `rpm -q` prints both.
    let second = build_rpm(env.dir.path(), &env.dir.path().join("other"), "1.1");
    let o = Command::new("rpm")
        .arg("--root")
        .arg(env.root())
        .arg("-i")
        .arg(&second)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for want in ["1.0-1", "1.1-1"] {
        c.resources[0] = pkg("troupe-pv", PackageEnsure::Version(want.into()));
        let (code, r, _) = env.run(&c, &["--package-dir", pd]);
        assert_eq!(code, 0, "{want}: {r:?}");
    }
    c.resources[0] = pkg("troupe-pv", PackageEnsure::Present);
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 0, "{r:?}");

    // Not in the package dir and no dnf/yum: the error says what to do.
    if !have("/usr/bin/dnf") && !have("/usr/bin/yum") {
        c.resources[0] = pkg("troupe-missing", PackageEnsure::Present);
        let (code, r, _) = env.run(&c, &["--package-dir", pd]);
        assert_eq!(code, 4, "{r:?}");
        let ev = status_of(&r, "package[troupe-missing]").events.join(" ");
        assert!(
            ev.contains("neither dnf nor yum") && ev.contains("--package-dir"),
            "{ev}"
        );
    }
}

/// troupe-dv_VERSION_all.deb.
fn build_deb(work: &Path, out: &Path, version: &str) {
    let d = work.join(format!("deb-{version}"));
    std::fs::create_dir_all(d.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(d.join("usr/share/troupe-dv")).unwrap();
    std::fs::write(d.join("usr/share/troupe-dv/v.txt"), version).unwrap();
    std::fs::write(
        d.join("DEBIAN/control"),
        format!(
            "Package: troupe-dv\nVersion: {version}\nArchitecture: all\n\
             Maintainer: Troupe <t@example.invalid>\nDescription: test\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(out).unwrap();
    let o = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&d)
        .arg(out.join(format!("troupe-dv_{version}_all.deb")))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn dpkg_epoch_zero_and_arch_qualified_names_are_the_same_package() {
    if skip_without(&["/usr/bin/dpkg", "/usr/bin/dpkg-deb"]) {
        return;
    }
    let env = Env::new();
    for d in ["var/lib/dpkg/updates", "var/lib/dpkg/info", "etc"] {
        std::fs::create_dir_all(env.root().join(d)).unwrap();
    }
    std::fs::write(env.root().join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(env.root().join("var/lib/dpkg/available"), "").unwrap();
    std::fs::write(
        env.p("/etc/os-release"),
        "ID=debian\nNAME=\"Debian GNU/Linux\"\n",
    )
    .unwrap();
    let pkgs = env.dir.path().join("pkgs");
    build_deb(env.dir.path(), &pkgs, "1.0-1");
    let pd = pkgs.to_str().unwrap();
    let mut c = new_catalog();
    c.resources
        .push(pkg("troupe-dv", PackageEnsure::Version("1.0-1".into())));
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 2, "{r:?}");
    for (name, want) in [("troupe-dv", "0:1.0-1"), ("troupe-dv:all", "1.0-1")] {
        c.resources[0] = pkg(name, PackageEnsure::Version(want.into()));
        let (code, r, _) = env.run(&c, &["--package-dir", pd]);
        assert_eq!(code, 0, "{name} {want}: {r:?}");
    }
}

#[test]
fn rpm_pinned_to_an_older_version_is_downgraded_once() {
    if skip_without(&["/usr/bin/rpm", "/usr/bin/rpmbuild"]) {
        return;
    }
    let env = Env::new();
    rpm_root(&env);
    let pkgs = env.dir.path().join("pkgs");
    build_rpm(env.dir.path(), &pkgs, "1.0");
    build_rpm(env.dir.path(), &pkgs, "1.1");
    let pd = pkgs.to_str().unwrap();
    let mut c = new_catalog();
    c.resources
        .push(pkg("troupe-pv", PackageEnsure::Version("1.1-1".into())));
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 2, "{r:?}");
    // Rolled back to 1.0 by pinning it (rpm -U alone refuses a downgrade).
    c.resources[0] = pkg("troupe-pv", PackageEnsure::Version("1.0-1".into()));
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 2, "{r:?}");
    assert!(env.p("/usr/share/troupe-pv/1.0.txt").exists());
    assert!(!env.p("/usr/share/troupe-pv/1.1.txt").exists());
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 0, "{r:?}");
}

#[test]
fn latest_from_a_package_dir_is_the_highest_version_not_the_last_file_name() {
    if skip_without(&["/usr/bin/dpkg", "/usr/bin/dpkg-deb"]) {
        return;
    }
    let env = Env::new();
    for d in ["var/lib/dpkg/updates", "var/lib/dpkg/info", "etc"] {
        std::fs::create_dir_all(env.root().join(d)).unwrap();
    }
    std::fs::write(env.root().join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(env.root().join("var/lib/dpkg/available"), "").unwrap();
    std::fs::write(
        env.p("/etc/os-release"),
        "ID=debian\nNAME=\"Debian GNU/Linux\"\n",
    )
    .unwrap();
    let pkgs = env.dir.path().join("pkgs");
    // By name, "1.9-1" sorts after "1.10-1".
    build_deb(env.dir.path(), &pkgs, "1.9-1");
    build_deb(env.dir.path(), &pkgs, "1.10-1");
    let pd = pkgs.to_str().unwrap();
    let mut c = new_catalog();
    c.resources.push(pkg("troupe-dv", PackageEnsure::Latest));
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 2, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(env.p("/usr/share/troupe-dv/v.txt")).unwrap(),
        "1.10-1"
    );
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 0, "{r:?}");
}

#[test]
fn rpm_latest_never_downgrades_a_newer_installed_package() {
    if skip_without(&["/usr/bin/rpm", "/usr/bin/rpmbuild"]) {
        return;
    }
    let env = Env::new();
    rpm_root(&env);
    let pkgs = env.dir.path().join("pkgs");
    build_rpm(env.dir.path(), &pkgs, "1.0");
    // A newer build installed by hand (a hotfix) than the repository has.
    let newer = build_rpm(env.dir.path(), &env.dir.path().join("other"), "1.1");
    let o = Command::new("rpm")
        .arg("--root")
        .arg(env.root())
        .arg("-i")
        .arg(&newer)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut c = new_catalog();
    c.resources.push(pkg("troupe-pv", PackageEnsure::Latest));
    let (code, r, _) = env.run(&c, &["--package-dir", pkgs.to_str().unwrap()]);
    assert_eq!(code, 0, "{r:?}");
    assert!(env.p("/usr/share/troupe-pv/1.1.txt").exists());
}
