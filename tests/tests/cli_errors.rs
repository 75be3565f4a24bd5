//! The operator's and the sysadmin's command line, used wrongly the way
//! people do: every mistake is refused with one line that names what is
//! wrong (and usually what to do), the documented exit status, no panic or
//! Rust debug output, and nothing changed. Also: every subcommand's
//! `--help` documents each of its arguments and options.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use troupe_tests::cli::{clean, refused};
use troupe_tests::orch::{AgentSpec, Fleet};
use troupe_tests::{Master, Out, agent_bin, run, tally, troupe_bin};

fn troupe(args: &[&str]) -> Out {
    run(Command::new(troupe_bin()).args(args))
}

fn agent(args: &[&str]) -> Out {
    run(Command::new(agent_bin()).args(args))
}

/// A usage error (as [`troupe_tests::cli::usage`]); TROUPE_LOG is set (by
/// `run`), so --log must not look required.
fn usage(out: &Out, needle: &str) {
    troupe_tests::cli::usage(out, needle);
    assert!(!out.stderr.contains("--log <"), "{out:#?}");
}

/// The subcommands of each binary, as argument paths.
const TROUPE_COMMANDS: &[&[&str]] = &[
    &[],
    &["master"],
    &["ca"],
    &["ca", "fingerprint"],
    &["ca", "psk", "new"],
    &["ca", "list"],
    &["ca", "sign"],
    &["ca", "reject"],
    &["ca", "revoke"],
    &["ca", "clean"],
    &["nodes"],
    &["report"],
    &["facts"],
    &["env", "status"],
    &["env", "promote"],
    &["env", "diff"],
    &["key", "new"],
    &["key", "show"],
    &["key", "agent"],
    &["audit", "verify"],
    &["run"],
    &["deploy"],
];

const AGENT_COMMANDS: &[&[&str]] = &[
    &[],
    &["bootstrap"],
    &["renew"],
    &["run"],
    &["facts"],
    &["rollback"],
    &["disable"],
    &["enable"],
    &["listen"],
];

/// Checks that `-h` documents every argument and option: a line holding
/// only `--option <V>` or `<ARG>` must be followed by its description.
fn every_item_documented(what: &str, help: &str) {
    let lines: Vec<&str> = help.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        let bracket_arg =
            t.starts_with('[') && t[1..].starts_with(|c: char| c.is_ascii_uppercase());
        // Items are indented 2 (`  -h, --help`, `  <HOST>`) or 6 (`      --data`);
        // wrapped descriptions further.
        let indent = line.len() - line.trim_start().len();
        let is_item = (t.starts_with('-') || t.starts_with('<') || bracket_arg)
            && (indent == 2 || indent == 6);
        if !is_item {
            continue;
        }
        // Same line: the token, then two spaces or more, then the text.
        let tokens: Vec<&str> = t.split("  ").filter(|s| !s.trim().is_empty()).collect();
        if tokens.len() >= 2 {
            continue;
        }
        // Next line: an indented description.
        let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
        assert!(
            !next.is_empty()
                && !next.starts_with('-')
                && !next.starts_with('<')
                && !next.starts_with('['),
            "{what}: {t:?} has no description:\n{help}"
        );
    }
}

#[test]
fn every_help_explains_every_argument_and_exits_0() {
    for (bin, prog, commands) in [
        (troupe_bin(), "troupe", TROUPE_COMMANDS),
        (agent_bin(), "troupe-agent", AGENT_COMMANDS),
    ] {
        for path in commands {
            let what = format!("{prog} {}", path.join(" "));
            let out = run(Command::new(&bin).args(*path).arg("-h"));
            assert_eq!(out.code, Some(0), "{what}: {out:#?}");
            assert!(out.stderr.is_empty(), "{what}: {out:#?}");
            assert!(out.stdout.contains("Usage:"), "{what}: {out:#?}");
            every_item_documented(&what, &out.stdout);
        }
    }
    // The long help of the tops, run and deploy: environment, exit codes,
    // examples.
    let top = troupe(&["--help"]);
    for n in [
        "TROUPE_DATA",
        "TROUPE_SERVER",
        "Exit status:",
        "64  usage error",
        "Examples:",
    ] {
        assert!(top.stdout.contains(n), "{n:?}: {}", top.stdout);
    }
    let top = agent(&["--help"]);
    for n in [
        "TROUPE_PSK",
        "Exit status:",
        "2   run: changes were made",
        "64  usage error",
    ] {
        assert!(top.stdout.contains(n), "{n:?}: {}", top.stdout);
    }
    let r = agent(&["run", "--help"]);
    for n in [
        "Exit status",
        "2   changes were made",
        "4   some resources failed",
    ] {
        assert!(r.stdout.contains(n), "{n:?}: {}", r.stdout);
    }
    let r = troupe(&["run", "--help"]);
    for n in [
        "Exit status:",
        "no host matched",
        "[env: TROUPE_SERVER=]",
        "[env: TROUPE_IDENTITY=]",
    ] {
        assert!(r.stdout.contains(n), "{n:?}: {}", r.stdout);
    }
    let d = troupe(&["deploy", "--help"]);
    for n in ["RELEASE.toml:", "[[package]]", "Exit status:", "Example:"] {
        assert!(d.stdout.contains(n), "{n:?}: {}", d.stdout);
    }
    let ca = troupe(&["ca", "list", "--help"]);
    assert!(
        ca.stdout.contains("[default: /var/lib/troupe]"),
        "{}",
        ca.stdout
    );
    assert_eq!(troupe(&["--version"]).code, Some(0));
}

#[test]
fn malformed_command_lines_exit_64_not_2() {
    // 2 means "some host failed" (run, deploy) or "changes made" (agent
    // run): a typo must not look like that.
    usage(&troupe(&["ca", "sign"]), "<HOST>");
    usage(&troupe(&["nodes", "--bogus"]), "--bogus");
    usage(
        &troupe(&["nodes", "--where", "os.family"]),
        "expected FACT=VALUE",
    );
    usage(
        &troupe(&["ca", "psk", "new", "web1", "--ttl", "0s"]),
        "could never be used",
    );
    usage(
        &troupe(&["ca", "psk", "new", "web1", "--ttl", "90d"]),
        "at most 30d",
    );
    usage(
        &troupe(&["ca", "psk", "new", "web1", "--ttl", "2hours5"]),
        "--ttl",
    );
    fn with<'a>(a: &[&'a str]) -> Vec<&'a str> {
        let fleet = [
            "--server",
            "https://127.0.0.1:1",
            "--identity",
            "/nonexistent",
        ];
        [a, &fleet[..]].concat()
    }
    usage(&troupe(&with(&["run", "ping", "--ttl", "9999"])), "1..=600");
    usage(&troupe(&with(&["run", "ping", "--ttl", "0"])), "1..=600");
    usage(&troupe(&with(&["run", "ping", "--batch", "0"])), "--batch");
    usage(&troupe(&with(&["run", "ping", "--limit", "0"])), "--limit");
    usage(
        &troupe(&with(&["run", "ping", "--timeout", "abc"])),
        "--timeout",
    );
    // The master waits at most 10 minutes: a longer wait is refused, not
    // silently cut short.
    usage(
        &troupe(&with(&["run", "ping", "--timeout", "2h"])),
        "at most 10m: the master waits no longer",
    );
    usage(
        &troupe(&with(&["deploy", "r.toml", "--step-timeout", "15m"])),
        "at most 10m",
    );
    usage(
        &troupe(&with(&["deploy", "r.toml", "--batch", "0"])),
        "at least 1 host",
    );
    usage(&troupe(&["run", "ping", "--identity", "x"]), "--server");
    usage(&agent(&["run", "--bogus"]), "--bogus");
    usage(&agent(&["bootstrap"]), "--server");
    tally::hostile("cli", "malformed command lines (exit 64)", true);
}

#[test]
fn operator_mistakes_name_the_problem_and_change_nothing() {
    let m = Master::start();
    let data = m.data.to_str().unwrap();
    let ca = |args: &[&str]| troupe(&[args, &["--data", data]].concat());
    let before = m.list_all();
    let audit_before = std::fs::read_to_string(m.data.join("ca/audit.log")).unwrap();

    refused(
        &ca(&["ca", "sign", "web9.example"]),
        "troupe",
        &["no pending certificate request", "troupe ca list --pending"],
    );
    refused(
        &ca(&["ca", "reject", "web9.example"]),
        "troupe",
        &["no pending certificate request", "troupe ca list --pending"],
    );
    refused(
        &ca(&["ca", "revoke", "web9.example"]),
        "troupe",
        &["has no valid certificate", "troupe ca list --all"],
    );
    refused(
        &ca(&["ca", "clean", "web9.example"]),
        "troupe",
        &["nothing is known"],
    );
    refused(
        &ca(&["ca", "psk", "new", "Web_1.example"]),
        "troupe",
        &["upper-case"],
    );
    refused(
        &ca(&["ca", "psk", "new", "web..example"]),
        "troupe",
        &["empty label"],
    );
    refused(
        &ca(&["report", "web9.example"]),
        "troupe",
        &["no report for web9.example", "`troupe nodes` lists"],
    );
    refused(
        &ca(&["facts", "web9.example"]),
        "troupe",
        &["no facts known for web9.example", "`troupe nodes` lists"],
    );
    refused(
        &ca(&["env", "promote", "nosuch", "--yes"]),
        "troupe",
        &["serves no module tree", "--modules"],
    );
    let none = ca(&["nodes"]);
    assert_eq!(
        none.stdout, "(no nodes: none has checked in yet)\n",
        "{none:#?}"
    );
    let none = ca(&["nodes", "--role", "web"]);
    assert_eq!(
        none.stdout, "(no node matches --where/--role)\n",
        "{none:#?}"
    );
    assert_eq!(m.list_all(), before, "a refused command changed the CA");
    // Refusals are audited; nothing else was written.
    let audit_after = std::fs::read_to_string(m.data.join("ca/audit.log")).unwrap();
    assert!(audit_after.starts_with(&audit_before));
    assert!(
        audit_after[audit_before.len()..]
            .lines()
            .all(|l| l.contains("\"refuse\"")),
        "{audit_after}"
    );

    // The wrong --data: no master there.
    let empty = m.root.path().join("not-a-master");
    std::fs::create_dir_all(&empty).unwrap();
    let e = empty.to_str().unwrap();
    refused(
        &troupe(&["nodes", "--data", e]),
        "troupe",
        &["no master is running on", "start `troupe master --data"],
    );
    refused(
        &troupe(&["ca", "list", "--data", e]),
        "troupe",
        &["holds no CA yet", "troupe master --data"],
    );
    refused(
        &troupe(&["ca", "fingerprint", "--data", e]),
        "troupe",
        &["ca_crt.pem", "has `troupe master --data", "No such file"],
    );
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "created files"
    );

    // audit verify on the CA's log (hash-chained since issue 15 item 6:
    // it verifies), and on a missing file.
    troupe(&[
        "audit",
        "verify",
        m.data.join("ca/audit.log").to_str().unwrap(),
    ])
    .assert_success();
    refused(&troupe(&["audit", "verify", e]), "troupe", &["cannot read"]);
    // Another user than the master's: the admin socket is theirs only.
    if std::fs::metadata(&m.data).unwrap().uid() == 0 {
        std::fs::set_permissions(m.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for args in [&["nodes"][..], &["ca", "list"][..]] {
            let mut c = Command::new(troupe_bin());
            c.args(args).args(["--data", data]);
            c.uid(65534).gid(65534);
            refused(
                &run(&mut c),
                "troupe",
                &[
                    "admin.sock",
                    "Permission denied",
                    "run this as root or with sudo",
                ],
            );
        }
        assert_eq!(m.list_all(), before);
    }

    // No terminal to ask a passphrase on: say how to give it; no key file.
    let k = m.root.path().join("ops.key");
    refused(
        &troupe(&["key", "new", "--out", k.to_str().unwrap()]),
        "troupe",
        &["no terminal", "--passphrase-file FILE"],
    );
    assert!(!k.exists());
    tally::hostile(
        "cli",
        "operator mistakes (ca, nodes, report, facts, env, audit)",
        true,
    );
}

#[test]
fn bastion_mistakes_are_refused_before_anything_is_sent() {
    let f = Fleet::start(&[AgentSpec::new("web1").role("web")]);
    f.wait_attached(1);
    let root = f.master.root.path().to_path_buf();
    let sent_before = f.master_audit();
    let agent_before = f.agent_audit("web1");
    let url = f.master.url.clone();
    let bastion = f.bastion.to_str().unwrap().to_string();
    let key = f.alice.path.to_str().unwrap().to_string();
    let pass = f.alice.passphrase_file.to_str().unwrap().to_string();
    // `troupe run ACTION ARGS` with the given connection options.
    let run_with = |server: &str, identity: &str, key: &str, extra: &[&str]| {
        let mut c = Command::new(troupe_bin());
        c.arg("run").args(extra);
        c.args([
            "--server",
            server,
            "--identity",
            identity,
            "--timeout",
            "5s",
        ]);
        if !key.is_empty() {
            c.args(["--key", key, "--passphrase-file", &pass]);
        }
        run(&mut c)
    };
    let good = |extra: &[&str]| run_with(&url, &bastion, &key, extra);

    // The master: wrong scheme, nothing listening, something not TLS.
    let http = url.replace("https://", "http://");
    refused(
        &run_with(&http, &bastion, &key, &["ping"]),
        "troupe",
        &["only https:// URLs are supported"],
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    refused(
        &run_with(&closed_url, &bastion, &key, &["ping"]),
        "troupe",
        &[
            "cannot reach the master",
            "nothing listens there",
            "--server",
        ],
    );
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_url = format!("https://{}", plain.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = plain.accept() {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nnot TLS\n");
        }
    });
    refused(
        &run_with(&plain_url, &bastion, &key, &["ping"]),
        "troupe",
        &["does not speak TLS", "gRPC port"],
    );
    server.join().unwrap();

    // The identity: missing, key readable by others, expired.
    refused(
        &run_with(
            &url,
            root.join("nothing").to_str().unwrap(),
            &key,
            &["ping"],
        ),
        "troupe",
        &[
            "not a bootstrapped identity",
            "troupe-agent bootstrap",
            "key.pem",
        ],
    );
    let loose = root.join("loose-identity");
    std::fs::create_dir_all(&loose).unwrap();
    for f in ["key.pem", "cert.pem", "ca.pem"] {
        std::fs::copy(f_path(&bastion, f), loose.join(f)).unwrap();
    }
    std::fs::set_permissions(
        loose.join("key.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    refused(
        &run_with(&url, loose.to_str().unwrap(), &key, &["ping"]),
        "troupe",
        &["accessible by group or others", "chmod 600"],
    );
    let old = root.join("expired-identity");
    f.master.write_expired_identity("bastion-old", &old);
    refused(
        &run_with(&url, old.to_str().unwrap(), &key, &["ping"]),
        "troupe",
        &["has expired", "troupe ca clean bastion-old"],
    );

    // The signing key: none, missing, loose, not a key, wrong passphrase.
    refused(
        &run_with(&url, &bastion, "", &["ping"]),
        "troupe",
        &["choose a signing key: --key FILE or --ssh-agent"],
    );
    refused(
        &run_with(
            &url,
            &bastion,
            root.join("no.key").to_str().unwrap(),
            &["ping"],
        ),
        "troupe",
        &["cannot read key file", "No such file or directory"],
    );
    let loose_key = root.join("loose.key");
    std::fs::copy(&key, &loose_key).unwrap();
    std::fs::set_permissions(&loose_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(
        &run_with(&url, &bastion, loose_key.to_str().unwrap(), &["ping"]),
        "troupe",
        &["chmod 600"],
    );
    let junk = root.join("junk.key");
    std::fs::write(&junk, "not a key\n").unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    refused(
        &run_with(&url, &bastion, junk.to_str().unwrap(), &["ping"]),
        "troupe",
        &["wrong passphrase or not an encrypted ed25519 PKCS#8 key"],
    );

    // Targets and arguments.
    usage(
        &good(&["ping", "--where", "os.family"]),
        "invalid value 'os.family' for '--where <FACT=VALUE>': expected FACT=VALUE, e.g. --where os.family=Debian",
    );
    refused(
        &good(&["ping", "--where", "os family=Debian"]),
        "troupe",
        &["--where: invalid fact name \"os family\""],
    );
    refused(
        &good(&["ping", "--role", "We b"]),
        "troupe",
        &["--role: invalid role"],
    );
    refused(
        &good(&["health.tcp", "port=abc"]),
        "troupe",
        &[
            "arguments of health.tcp",
            "argument port",
            "\"abc\" is not an integer",
        ],
    );
    refused(
        &good(&["service.restart", "name=nginx; rm -rf /"]),
        "troupe",
        &["arguments of service.restart", "argument name"],
    );
    refused(
        &good(&["service.restart"]),
        "troupe",
        &["missing required argument name"],
    );
    refused(
        &good(&["pign"]),
        "troupe",
        &["unknown action \"pign\"", "ping"],
    );

    // A release manifest with a typo, or an unknown key.
    let rel = root.join("RELEASE.toml");
    std::fs::write(
        &rel,
        "title = \"x\"\n[[package]]\nname = \"nginx\"\nversion = \"1.24.0-1\"\nservics = [\"nginx\"]\n",
    )
    .unwrap();
    let deploy = |extra: &[&str]| {
        let mut c = Command::new(troupe_bin());
        c.arg("deploy").arg(&rel).arg("--yes").args(extra);
        c.args(["--server", &url, "--identity", &bastion, "--key", &key]);
        c.args(["--passphrase-file", &pass]);
        run(&mut c)
    };
    let out = deploy(&[]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("unknown field `servics`"), "{out:#?}");
    assert!(out.stderr.contains("expected one of"), "{out:#?}");
    clean(&out);

    // Nothing was sent: no envelope reached the master or the agent.
    assert_eq!(f.master_audit(), sent_before, "a refused command was sent");
    assert_eq!(f.agent_audit("web1"), agent_before);

    // A valid release that matches nothing: 2, like `troupe run`.
    std::fs::write(
        &rel,
        "title = \"x\"\n[[package]]\nname = \"nginx\"\nversion = \"1.24.0-1\"\n",
    )
    .unwrap();
    let out = deploy(&["--role", "db"]);
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stdout.contains("no host matched"), "{out:#?}");
    assert!(out.stderr.is_empty(), "{out:#?}");

    // A key for a host that still holds a certificate: issued, with a note
    // that its bootstrap will be refused until `troupe ca clean`.
    let out = f.master.ca(&["psk", "new", "web1"]);
    out.assert_success();
    assert_eq!(out.stdout.trim().len(), 64, "{out:#?}");
    assert!(
        out.stderr
            .contains("note: web1 still holds a valid certificate: a bootstrap with this key is refused until `troupe ca clean web1`"),
        "{out:#?}"
    );
    let out = f.master.ca(&["psk", "new", "web2"]);
    assert!(!out.stderr.contains("note:"), "{out:#?}");

    // The bastion revoked: its next command is refused at the handshake.
    good(&["ping"]).assert_success();
    let said = f.master.ca_ok(&["revoke", "bastion"]);
    assert!(said.starts_with("revoked bastion (serial "), "{said}");
    assert!(
        said.contains("`troupe ca clean bastion` lets it join again"),
        "{said}"
    );
    let sent = f.master_audit();
    refused(
        &good(&["ping"]),
        "troupe",
        &[
            "the master closed the TLS connection",
            "revoked",
            "troupe ca list --all",
        ],
    );
    assert_eq!(
        f.master_audit(),
        sent,
        "a revoked bastion's command was relayed"
    );
    tally::hostile(
        "cli",
        "bastion mistakes (server, identity, key, target, args, release)",
        true,
    );
}

fn f_path(dir: &str, file: &str) -> std::path::PathBuf {
    Path::new(dir).join(file)
}

#[test]
fn agent_bootstrap_mistakes_name_the_option() {
    let m = Master::start();
    let fp = m.fingerprint();
    let state = m.root.path().join("agent");
    let s = state.to_str().unwrap();
    let boot = |name: &str, fp: &str| {
        agent(&[
            "bootstrap",
            "--server",
            &m.url,
            "--name",
            name,
            "--ca-fingerprint",
            fp,
            "--state",
            s,
            "--psk",
            "x",
        ])
    };
    refused(
        &boot("Web_1", &fp),
        "troupe-agent",
        &["--name \"Web_1\"", "lower case"],
    );
    refused(
        &boot("web..example", &fp),
        "troupe-agent",
        &["--name", "empty label"],
    );
    refused(
        &boot("web1", "SHA256:AAAA"),
        "troupe-agent",
        &["--ca-fingerprint", "SHA-256"],
    );
    let before = m.list_all();
    let http = agent(&[
        "bootstrap",
        "--server",
        &m.url.replace("https", "http"),
        "--name",
        "web1",
        "--ca-fingerprint",
        &fp,
        "--state",
        s,
        "--psk",
        "x",
    ]);
    refused(&http, "troupe-agent", &["only https:// URLs are supported"]);
    assert_eq!(m.list_all(), before);
    assert!(!state.join("cert.pem").exists());
    tally::hostile("cli", "agent bootstrap mistakes", true);
}

/// `troupe … | head`: when the reader of stdout has gone, both binaries end
/// quietly with 141 (what a shell shows for a tool killed by SIGPIPE), with
/// no panic message and no backtrace hint on stderr; a command that writes
/// through its own error path says the pipe broke in one line.
#[test]
fn a_closed_stdout_ends_quietly_not_in_a_panic() {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../modules");
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("ca")).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ca".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(data.path().join("ca/ca_crt.pem"), cert.pem()).unwrap();
    let d = data.path().as_os_str();
    let m = modules.as_os_str();
    let cases: [(std::path::PathBuf, Vec<&std::ffi::OsStr>, i32); 3] = [
        (agent_bin(), vec!["facts".as_ref()], 141),
        (
            troupe_bin(),
            vec!["ca".as_ref(), "fingerprint".as_ref(), "--data".as_ref(), d],
            141,
        ),
        (
            troupe_bin(),
            vec![
                "catalog".as_ref(),
                "check".as_ref(),
                "--modules".as_ref(),
                m,
                "--data".as_ref(),
                d,
            ],
            1,
        ),
    ];
    for (bin, args, code) in cases {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(&bin)
            .args(&args)
            .env("TROUPE_LOG", "warn")
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{bin:?} {args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
            "{bin:?} {args:?}: {stderr}"
        );
        if code == 1 {
            assert!(stderr.contains("Broken pipe"), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
    }
}
