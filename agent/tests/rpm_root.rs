//! The package provider's RPM path, for real: a root whose os-release says
//! Rocky Linux (so the agent picks rpm even on a Debian host), a package
//! built here with rpmbuild, installed, upgraded to a pinned version and
//! removed with `rpm --root` from a --package-dir. Needs the `rpm` package
//! (installed by .ci/run); skipped with a message without it, except under
//! CI=true, where that fails.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use troupe_catalog::{Kind, PackageEnsure};

fn have_rpm() -> bool {
    Path::new("/usr/bin/rpm").exists() && Path::new("/usr/bin/rpmbuild").exists()
}

/// Builds troupe-hello-VERSION-1.noarch.rpm (one file) into `out`.
fn build_rpm(work: &Path, out: &Path, version: &str) {
    let top = work.join(format!("rpmbuild-{version}"));
    std::fs::create_dir_all(top.join("SPECS")).unwrap();
    let spec = top.join("SPECS/troupe-hello.spec");
    std::fs::write(
        &spec,
        format!(
            "Name: troupe-hello\nVersion: {version}\nRelease: 1\nSummary: test package\n\
             License: MIT\nBuildArch: noarch\n%description\ntest package\n\
             %install\nmkdir -p %{{buildroot}}/usr/share/troupe-hello\n\
             echo 'hello {version}' > %{{buildroot}}/usr/share/troupe-hello/hello.txt\n\
             %files\n/usr/share/troupe-hello/hello.txt\n"
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
    let name = format!("troupe-hello-{version}-1.noarch.rpm");
    std::fs::copy(top.join("RPMS/noarch").join(&name), out.join(&name)).unwrap();
}

#[test]
fn installs_upgrades_and_removes_a_real_rpm_in_a_rocky_root() {
    if !have_rpm() {
        assert!(
            std::env::var_os("CI").is_none(),
            "rpm/rpmbuild missing: .ci/run must install the rpm package"
        );
        eprintln!("rpm not installed; skipped");
        return;
    }
    let env = Env::new();
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
    let pkgs = env.dir.path().join("pkgs");
    build_rpm(env.dir.path(), &pkgs, "1.0");
    let pd = pkgs.to_str().unwrap();
    let hello = env.p("/usr/share/troupe-hello/hello.txt");
    let mut c = new_catalog();
    c.resources.push(res(Kind::Package {
        name: "troupe-hello".into(),
        ensure: PackageEnsure::Present,
    }));

    let (code, r, _) = env.run(&c, &["--package-dir", pd, "--noop"]);
    assert_eq!(code, 2, "{r:?}");
    assert!(!hello.exists(), "noop installed something");

    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 2, "{r:?}");
    assert_eq!(std::fs::read(&hello).unwrap(), b"hello 1.0\n");
    // rpm's own database in the root says so.
    let q = Command::new("rpm")
        .arg("--root")
        .arg(env.root())
        .args(["-q", "--qf", "%{VERSION}-%{RELEASE}", "troupe-hello"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&q.stdout), "1.0-1");
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 0, "{r:?}");

    // Pinned to a newer version from the package dir.
    build_rpm(env.dir.path(), &pkgs, "1.1");
    c.resources[0] = res(Kind::Package {
        name: "troupe-hello".into(),
        ensure: PackageEnsure::Version("1.1-1".into()),
    });
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 2, "{r:?}");
    let ev = &status_of(&r, "package[troupe-hello]").events;
    assert!(ev[0].contains("1.0-1 -> 1.1-1"), "{ev:?}");
    assert_eq!(std::fs::read(&hello).unwrap(), b"hello 1.1\n");

    // Removed; then nothing to do.
    c.resources[0] = res(Kind::Package {
        name: "troupe-hello".into(),
        ensure: PackageEnsure::Absent,
    });
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 2, "{r:?}");
    assert!(!hello.exists());
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 0, "{r:?}");

    // A package that is not in the package dir: dnf is tried inside the
    // root and the failure is reported, not hidden.
    c.resources[0] = res(Kind::Package {
        name: "troupe-missing".into(),
        ensure: PackageEnsure::Present,
    });
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 4, "{r:?}");
}
