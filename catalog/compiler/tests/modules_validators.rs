//! The shipped tree's rendered configurations checked by the real tools, not
//! by string matching: `sshd -t`, `nginx -t`, `haproxy -c`, `visudo -c` and
//! `squid -k parse` on the contents of Debian 12 catalogs.
//!
//! Needs (Debian packages): openssh-server, nginx, haproxy, sudo, squid,
//! openssl. Install them with services kept stopped (a `policy-rc.d` that
//! exits 101). A missing tool fails the test with the package to install.
//! Nothing is started: every tool only parses a configuration.
//!
//! Where a configuration names files that only exist on a converged host (TLS
//! certificates, `mime.types`), the test works on a temp copy whose paths
//! point into a temp dir holding throwaway files; the catalog's own content is
//! what gets checked, with only those path prefixes changed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use troupe_catalog::{Catalog, Kind};

fn compile(host: &str) -> Catalog {
    common::shipped()
        .compile(host, &common::facts("debian12"), &common::opts())
        .unwrap_or_else(|e| panic!("{host}: {}", e.render()))
}

fn content(cat: &Catalog, path: &str) -> String {
    let r = cat
        .resources
        .iter()
        .find(|r| r.id.0 == format!("file[{path}]"))
        .unwrap_or_else(|| panic!("file[{path}] not in the catalog of {}", cat.node));
    let Kind::File {
        content: Some(c), ..
    } = &r.kind
    else {
        panic!("file[{path}] has no content")
    };
    String::from_utf8(cat.contents[&c.sha256].bytes().unwrap()).unwrap()
}

/// The validator's path, or a failure that says what to install.
fn tool(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "validator {path} is missing: install the Debian package `{package}` \
         (with a policy-rc.d that exits 101 so the service is not started)"
    );
    p
}

/// Runs the command; returns (success, stdout+stderr).
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn must_pass(what: &str, cmd: &mut Command) {
    let (ok, text) = run(cmd);
    assert!(ok, "{what} rejected the shipped configuration:\n{text}");
}

fn must_fail(what: &str, cmd: &mut Command) {
    let (ok, text) = run(cmd);
    assert!(!ok, "{what} accepted a broken configuration:\n{text}");
}

/// A throwaway self-signed certificate and key (cert.pem, key.pem) in `dir`.
fn throwaway_cert(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let openssl = tool("/usr/bin/openssl", "openssl");
    must_pass(
        "openssl req",
        Command::new(openssl)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "1", "-subj", "/CN=test.example.com"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem")),
    );
    std::fs::copy(dir.join("cert.pem"), dir.join("ca.pem")).unwrap();
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn sshd_accepts_the_hardened_config() {
    let sshd = tool("/usr/sbin/sshd", "openssh-server");
    let keygen = tool("/usr/bin/ssh-keygen", "openssh-client");
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("ssh_host_ed25519_key");
    must_pass(
        "ssh-keygen",
        Command::new(keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
    );
    // sshd -t insists on its privilege separation directory (created by the
    // service at start, which we never start here).
    if !Path::new("/run/sshd").exists() {
        std::fs::create_dir_all("/run/sshd").ok();
    }
    for host in [
        "mon2.example.com",
        "web4.example.com",
        "bastion.example.com",
    ] {
        let cat = compile(host);
        let cfg = content(&cat, "/etc/ssh/sshd_config");
        let file = tmp.path().join(format!("{host}.sshd_config"));
        write(&file, &cfg);
        let check = |file: &Path| {
            let mut c = Command::new(&sshd);
            c.arg("-t").arg("-f").arg(file).arg("-h").arg(&key);
            c
        };
        must_pass(&format!("sshd -t ({host})"), &mut check(&file));
        // sshd's effective settings really are the hardened ones.
        let (ok, eff) = run(check(&file)
            .arg("-T")
            .args(["-C", "user=alice,host=h,addr=10.0.0.9"]));
        assert!(ok, "sshd -T: {eff}");
        for line in [
            "permitrootlogin no",
            "passwordauthentication no",
            "kbdinteractiveauthentication no",
            "authenticationmethods publickey",
            "allowgroups admins",
        ] {
            assert!(
                eff.lines().any(|l| l == line),
                "{host}: sshd -T lacks `{line}`:\n{eff}"
            );
        }
        // The validator can fail: a broken copy is refused.
        let bad = tmp.path().join(format!("{host}.bad"));
        write(&bad, &format!("{cfg}PermitRootLogin sometimes\n"));
        must_fail("sshd -t", &mut check(&bad));
    }
}

/// Copies the catalog's nginx.conf and vhosts into `prefix`, pointing
/// /etc/nginx, /var/log/nginx and the pid file into it.
fn nginx_tree(cat: &Catalog, prefix: &Path) -> PathBuf {
    let p = prefix.to_str().unwrap();
    let fix = |s: &str| {
        s.replace("/etc/nginx/", &format!("{p}/etc/nginx/"))
            .replace("/var/log/nginx/", &format!("{p}/log/"))
            .replace("/run/nginx.pid", &format!("{p}/nginx.pid"))
    };
    std::fs::create_dir_all(prefix.join("log")).unwrap();
    std::fs::create_dir_all(prefix.join("etc/nginx/conf.d")).unwrap();
    std::fs::copy("/etc/nginx/mime.types", prefix.join("etc/nginx/mime.types"))
        .expect("/etc/nginx/mime.types (package nginx-common)");
    throwaway_cert(&prefix.join("etc/nginx/tls"));
    for r in &cat.resources {
        let t = r.id.title();
        if r.id.kind() == "file" && t.starts_with("/etc/nginx/conf.d/") {
            write(&prefix.join(&t[1..]), &fix(&content(cat, t)));
        }
    }
    let conf = prefix.join("etc/nginx/nginx.conf");
    write(&conf, &fix(&content(cat, "/etc/nginx/nginx.conf")));
    conf
}

#[test]
fn nginx_accepts_the_web_config() {
    let nginx = tool("/usr/sbin/nginx", "nginx");
    let cat = compile("web4.example.com");
    let tmp = tempfile::tempdir().unwrap();
    let conf = nginx_tree(&cat, tmp.path());
    // The vhosts really are in it, one with TLS.
    let www = std::fs::read_to_string(tmp.path().join("etc/nginx/conf.d/www.conf")).unwrap();
    assert!(www.contains("listen 443 ssl;"));
    let check = |conf: &Path| {
        let mut c = Command::new(&nginx);
        c.arg("-t").arg("-c").arg(conf).arg("-p").arg(tmp.path());
        c
    };
    must_pass("nginx -t", &mut check(&conf));
    // A broken vhost makes it fail.
    write(
        &tmp.path().join("etc/nginx/conf.d/zz-bad.conf"),
        "server { listen 80; no_such_directive on; }\n",
    );
    must_fail("nginx -t", &mut check(&conf));
}

fn haproxy_check(cfg: &str, tls_dir: &str, tmp: &Path) -> (bool, String) {
    let haproxy = tool("/usr/sbin/haproxy", "haproxy");
    let tls = tmp.join("tls");
    throwaway_cert(&tls);
    // HAProxy finds the key next to the certificate (cert.pem.key).
    std::fs::copy(tls.join("key.pem"), tls.join("cert.pem.key")).unwrap();
    let file = tmp.join("haproxy.cfg");
    write(
        &file,
        &cfg.replace(&format!("{tls_dir}/"), &format!("{}/", tls.display())),
    );
    run(Command::new(haproxy).arg("-c").arg("-f").arg(&file))
}

#[test]
fn haproxy_accepts_the_local_and_lb_configs() {
    for host in ["web4.example.com", "lb2.example.com"] {
        let cat = compile(host);
        let cfg = content(&cat, "/etc/haproxy/haproxy.cfg");
        assert!(cfg.contains(" backup"), "{host}: zones give backups");
        let tmp = tempfile::tempdir().unwrap();
        let (ok, text) = haproxy_check(&cfg, "/etc/haproxy/tls", tmp.path());
        assert!(ok, "haproxy -c rejected {host}'s config:\n{text}\n{cfg}");
        let (ok, text) = haproxy_check(
            &format!("{cfg}    server bad no-such-port-here:notaport check\n"),
            "/etc/haproxy/tls",
            tmp.path(),
        );
        assert!(!ok, "haproxy -c accepted a broken config:\n{text}");
    }
}

#[test]
fn haproxy_accepts_tls_both_ways() {
    // TLS termination and TLS (with the host's client certificate) to the
    // backends: not used by the shipped data, so a node-level data file in a
    // scratch copy turns them on.
    let tree = common::scratch_tree();
    common::write(
        tree.path(),
        "environments/production/data/nodes/lb2.example.com.toml",
        "[haproxy_local.services.api]\nport = 8443\nbind = \"0.0.0.0\"\ntls_bind = true\n\
         tls_backend = true\nmode = \"http\"\ncheck = \"http\"\nbackend_port = 443\n\
         backends = [\"app1.example.com\", \"app2.example.com\"]\n",
    );
    let cat = troupe_compiler::ModuleTree::load(tree.path())
        .unwrap_or_else(|e| panic!("{}", e.render()))
        .compile(
            "lb2.example.com",
            &common::facts("debian12"),
            &common::opts(),
        )
        .unwrap_or_else(|e| panic!("{}", e.render()));
    let cfg = content(&cat, "/etc/haproxy/haproxy.cfg");
    assert!(
        cfg.contains("bind 0.0.0.0:8443 ssl crt /etc/haproxy/tls/cert.pem"),
        "{cfg}"
    );
    assert!(cfg.contains("server app2.example.com app2.example.com:443 check ssl verify required ca-file /etc/haproxy/tls/ca.pem crt /etc/haproxy/tls/cert.pem\n"), "{cfg}");
    let tmp = tempfile::tempdir().unwrap();
    let (ok, text) = haproxy_check(&cfg, "/etc/haproxy/tls", tmp.path());
    assert!(ok, "haproxy -c rejected:\n{text}\n{cfg}");
}

#[test]
fn visudo_accepts_the_sudoers_file() {
    let visudo = tool("/usr/sbin/visudo", "sudo");
    let cat = compile("mon2.example.com");
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("troupe-admins");
    let text = content(&cat, "/etc/sudoers.d/troupe-admins");
    write(&f, &text);
    must_pass(
        "visudo -c",
        Command::new(&visudo).args(["-c", "-q", "-f"]).arg(&f),
    );
    write(&f, &format!("{text}%admins ALL=(ALL ALL\n"));
    must_fail(
        "visudo -c",
        Command::new(&visudo).args(["-c", "-q", "-f"]).arg(&f),
    );
}

#[test]
fn squid_accepts_the_proxy_config() {
    let squid = tool("/usr/sbin/squid", "squid");
    let cat = compile("proxy1.example.com");
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("squid.conf");
    let text = content(&cat, "/etc/squid/squid.conf");
    write(&f, &text);
    must_pass(
        "squid -k parse",
        Command::new(&squid).args(["-k", "parse", "-f"]).arg(&f),
    );
    write(&f, &format!("{text}http_access allow no_such_acl\n"));
    must_fail(
        "squid -k parse",
        Command::new(&squid).args(["-k", "parse", "-f"]).arg(&f),
    );
}
