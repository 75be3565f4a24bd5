//! The pull loop end to end (issue 5): real `troupe master` with a module
//! tree, real `troupe-agent` processes bootstrapped by PSK, each converging
//! into its own sandbox root over mutual TLS and reporting back.

use std::path::{Path, PathBuf};
use std::time::Duration;
use troupe_tests::{Master, MasterOptions, Out, tally, wait_until};

/// A small module tree: every node gets a motd naming it; `web*` nodes also
/// get a document root with a page. Files and directories only, so it
/// converges fully inside a sandbox root.
fn write_tree(dir: &Path, motd: &str) {
    let env = dir.join("environments/production");
    for d in ["roles", "profiles", "data", "templates"] {
        std::fs::create_dir_all(env.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("site.toml"),
        r#"default_environment = "production"

[[node]]
match = "web*"
role = "web"

[[node]]
match = "*"
role = "base"
"#,
    )
    .unwrap();
    std::fs::write(
        env.join("hierarchy.toml"),
        "[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
    )
    .unwrap();
    std::fs::write(
        env.join("data/common.toml"),
        format!("[motd]\nbanner = \"{motd}\"\n"),
    )
    .unwrap();
    std::fs::write(env.join("roles/base.toml"), "include = [\"motd\"]\n").unwrap();
    std::fs::write(
        env.join("roles/web.toml"),
        "include = [\"motd\", \"www\"]\n",
    )
    .unwrap();
    std::fs::write(
        env.join("profiles/motd.toml"),
        r#"[params]
banner = "unset"

[file."/etc/motd"]
template = "motd.j2"
mode = "0644"
"#,
    )
    .unwrap();
    std::fs::write(
        env.join("templates/motd.j2"),
        "{{ params.banner }} ({{ node.certname }}, role {{ node.role }})\n",
    )
    .unwrap();
    std::fs::write(
        env.join("profiles/www.toml"),
        r#"[directory."/srv/www"]
mode = "0755"

[file."/srv/www/index.html"]
content = "<h1>{{ node.certname }}</h1>\n"
mode = "0644"
"#,
    )
    .unwrap();
}

/// Moves a file's mtime forward so the master's poll sees the change even
/// within one clock tick.
fn touch_later(p: &Path) {
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
}

struct Fleet {
    m: Master,
    modules: PathBuf,
    opts: MasterOptions,
    _tree: tempfile::TempDir,
}

impl Fleet {
    fn start(hosts: &[&str]) -> Fleet {
        let tree = tempfile::tempdir().unwrap();
        let modules = tree.path().join("modules");
        write_tree(&modules, "Welcome");
        let opts = MasterOptions {
            modules: Some(modules.clone()),
            extra_args: vec!["--code-poll".into(), "200ms".into()],
        };
        let m = Master::start_with(opts.clone());
        for h in hosts {
            let psk = m.psk(h);
            m.bootstrap(h, Some(&psk)).assert_success();
        }
        Fleet {
            m,
            modules,
            opts,
            _tree: tree,
        }
    }

    /// The host's sandbox root, with the top-level directories a real root
    /// has (the agent never invents unmanaged parent directories).
    fn root(&self, host: &str) -> PathBuf {
        let r = self.m.root.path().join("roots").join(host);
        for d in ["etc", "srv"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        r
    }

    /// `troupe-agent run --once` for `host` into its sandbox; returns the
    /// process output and the JSON report.
    fn converge(&self, host: &str) -> (Out, serde_json::Value) {
        let root = self.root(host);
        let out = self.m.agent_cmd(
            host,
            "run",
            &[
                "--once",
                "--root",
                root.to_str().unwrap(),
                "--output",
                "json",
            ],
        );
        let report = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "run for {host} printed no JSON report ({e}):\nstdout: {}\nstderr: {}\nmaster log:\n{}",
                out.stdout,
                out.stderr,
                self.m.log()
            )
        });
        (out, report)
    }

    fn troupe_plain(&self, args: &[&str]) -> Out {
        troupe_tests::run(std::process::Command::new(troupe_tests::troupe_bin()).args(args))
    }

    fn troupe(&self, args: &[&str]) -> Out {
        troupe_tests::run(
            std::process::Command::new(troupe_tests::troupe_bin())
                .args(args)
                .arg("--data")
                .arg(&self.m.data),
        )
    }
}

fn counts(report: &serde_json::Value) -> (usize, usize) {
    let res = report["resources"].as_array().unwrap();
    let changed = res.iter().filter(|r| r["status"] == "changed").count();
    let failed = res
        .iter()
        .filter(|r| r["status"] == "failed" || r["status"] == "skipped")
        .count();
    (changed, failed)
}

#[test]
fn agents_converge_from_the_master_and_show_in_nodes() {
    let f = Fleet::start(&["web1", "web2", "db1"]);
    for h in ["web1", "web2", "db1"] {
        let (out, report) = f.converge(h);
        assert_eq!(
            out.code,
            Some(2),
            "first run changes things: {}",
            out.stderr
        );
        assert_eq!(report["from_cache"], false);
        assert_eq!(counts(&report).1, 0, "no failures: {report}");
        let motd = std::fs::read_to_string(f.root(h).join("etc/motd")).unwrap();
        let role = if h.starts_with("web") { "web" } else { "base" };
        assert_eq!(motd, format!("Welcome ({h}, role {role})\n"));
    }
    assert_eq!(
        std::fs::read_to_string(f.root("web2").join("srv/www/index.html")).unwrap(),
        "<h1>web2</h1>\n"
    );
    assert!(!f.root("db1").join("srv/www").exists());

    // A second run changes nothing, and the master answers "unchanged".
    let (out, report) = f.converge("web1");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(counts(&report), (0, 0));

    // The operator sees all three, with roles and their last runs.
    let nodes = f.troupe(&["nodes", "--json"]);
    nodes.assert_success();
    let v: serde_json::Value = serde_json::from_str(&nodes.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{v}");
    let web1 = rows.iter().find(|r| r["node"]["name"] == "web1").unwrap();
    assert_eq!(web1["node"]["role"], "web");
    assert_eq!(web1["status"], "ok");
    let web = f.troupe(&["nodes", "--role", "web", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&web.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let debian = f.troupe(&["nodes", "--where", "kernel.name=Linux", "--json"]);
    debian.assert_success();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&debian.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let table = f.troupe(&["nodes"]);
    assert!(table.stdout.contains("web2"), "{}", table.stdout);
    let report = f.troupe(&["report", "db1"]);
    report.assert_success();
    assert!(report.stdout.contains("run "), "{}", report.stdout);
    let facts = f.troupe(&["facts", "web1"]);
    assert!(facts.stdout.contains("\"os\""), "{}", facts.stdout);
}

#[test]
fn module_changes_are_picked_up_and_a_broken_tree_keeps_the_last_good_one() {
    let f = Fleet::start(&["web1"]);
    let (out, _) = f.converge("web1");
    assert_eq!(out.code, Some(2));

    // A change to the data is served on the next run, without a restart.
    let data = f.modules.join("environments/production/data/common.toml");
    std::fs::write(&data, "[motd]\nbanner = \"Changed\"\n").unwrap();
    touch_later(&data);
    wait_until(Duration::from_secs(10), "the new code to go live", || {
        f.troupe(&["env", "status", "--json"])
            .stdout
            .contains("\"generation\": 2")
    });
    let (out, report) = f.converge("web1");
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(counts(&report), (1, 0));
    assert_eq!(
        std::fs::read_to_string(f.root("web1").join("etc/motd")).unwrap(),
        "Changed (web1, role web)\n"
    );

    // A broken profile: the master reports why and keeps serving the last
    // good tree; agents converge to it (not from their cache).
    let prof = f.modules.join("environments/production/profiles/www.toml");
    std::fs::write(&prof, "[directory.\"/srv/www\"\nmode = \n").unwrap();
    touch_later(&prof);
    wait_until(Duration::from_secs(10), "the load error to show", || {
        !f.troupe(&["env", "status"]).success()
    });
    let st = f.troupe(&["env", "status"]);
    assert!(st.stdout.contains("www.toml"), "{}", st.stdout);
    std::fs::remove_file(f.root("web1").join("srv/www/index.html")).unwrap();
    let (out, report) = f.converge("web1");
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(report["from_cache"], false);
    assert!(f.root("web1").join("srv/www/index.html").exists());
}

#[test]
fn a_node_cannot_read_another_nodes_content_or_send_its_reports() {
    let f = Fleet::start(&["web1", "db1"]);
    f.converge("web1");
    f.converge("db1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use troupe_proto::v1::catalog_client::CatalogClient;
        use troupe_proto::v1::reports_client::ReportsClient;
        // web1's page body is in web1's catalog only.
        let page = troupe_catalog_sha("<h1>web1</h1>\n");
        let web1 = f.m.agent_channel("web1").await.unwrap();
        let db1 = f.m.agent_channel("db1").await.unwrap();
        let ok = CatalogClient::new(web1.clone())
            .get_content(troupe_proto::v1::ContentRequest {
                sha256: page.clone(),
            })
            .await
            .unwrap();
        assert_eq!(ok.into_inner().data, b"<h1>web1</h1>\n");
        let denied = CatalogClient::new(db1.clone())
            .get_content(troupe_proto::v1::ContentRequest { sha256: page })
            .await
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");

        // A report claiming to be web1's, sent by db1, is refused.
        let forged = serde_json::json!({
            "run_id": "forged", "node": "web1", "started": "2026-01-01T00:00:00Z",
            "duration_ms": 1, "noop": false, "catalog_hash": "sha256:x",
            "environment": "production", "code_version": "x", "from_cache": false,
            "resources": []
        });
        let denied = ReportsClient::new(db1)
            .submit_report(troupe_proto::v1::ReportRequest {
                report_json: serde_json::to_vec(&forged).unwrap(),
            })
            .await
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied}");
    });
    // Both refusals are in the access audit log, whose chain verifies.
    let log = std::fs::read_to_string(f.m.data.join("access-audit.log")).unwrap();
    assert!(log.contains("\"node\":\"db1\""), "{log}");
    assert!(log.contains("\"call\":\"content\""), "{log}");
    assert!(log.contains("\"call\":\"report\""), "{log}");
    let verify = troupe_tests::run(
        std::process::Command::new(troupe_tests::troupe_bin())
            .args(["audit", "verify"])
            .arg(f.m.data.join("access-audit.log")),
    );
    verify.assert_success();
    // And web1's stored reports are untouched.
    let r = f.troupe(&["report", "web1", "forged"]);
    assert!(!r.success());
    tally::hostile("access", "content only in another node's catalog", true);
    tally::hostile("access", "report forged for another node", true);
}

fn troupe_catalog_sha(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[test]
fn master_restart_loses_nothing_and_offline_runs_are_reported_later() {
    let mut f = Fleet::start(&["web1"]);
    let (_, first) = f.converge("web1");
    let first_run = first["run_id"].as_str().unwrap().to_owned();

    // Master killed (SIGKILL) and restarted: certificates and reports stay.
    f.m.restart(&f.opts);
    f.troupe(&["report", "web1", &first_run]).assert_success();
    let (out, _) = f.converge("web1");
    assert_eq!(
        out.code,
        Some(0),
        "the agent's certificate still works: {}",
        out.stderr
    );

    // Master down: the agent converges from its cached catalog (repairing
    // drift) and says so.
    f.m.stop();
    std::fs::write(f.root("web1").join("etc/motd"), "drift\n").unwrap();
    let (out, offline) = f.converge("web1");
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(offline["from_cache"], true);
    assert_eq!(
        std::fs::read_to_string(f.root("web1").join("etc/motd")).unwrap(),
        "Welcome (web1, role web)\n"
    );
    let offline_run = offline["run_id"].as_str().unwrap().to_owned();

    // Master back: the next run delivers the queued report.
    f.m.resume(&f.opts);
    f.converge("web1");
    let r = f.troupe(&["report", "web1", &offline_run, "--json"]);
    r.assert_success();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["from_cache"], true);
}

#[test]
fn the_daemon_converges_on_its_timer_and_answers_signed_commands() {
    let f = Fleet::start(&["web1", "bastion"]);
    let dir = f.m.root.path();
    let pass = dir.join("pass");
    std::fs::write(&pass, "a long passphrase\n").unwrap();
    let key = dir.join("alice.key");
    f.troupe_plain(&[
        "key",
        "new",
        "--out",
        key.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ])
    .assert_success();
    let pubfile = std::fs::read_to_string(dir.join("alice.key.pub")).unwrap();
    let id = pubfile
        .split_whitespace()
        .find(|w| w.starts_with("ed25519:"))
        .unwrap()
        .to_owned();
    std::fs::write(
        f.m.data.join("signers.toml"),
        format!("[[signer]]\nname = \"alice\"\nkey = \"{id}\"\n"),
    )
    .unwrap();
    std::fs::write(
        f.m.agent_state("web1").join("orchestration.toml"),
        format!(
            "role = \"web\"\n[[signer]]\nname = \"alice\"\nkey = \"{id}\"\n\
             [[rule]]\nname = \"ops\"\neffect = \"allow\"\nsigners = [\"alice\"]\nactions = [\"ping\"]\n"
        ),
    )
    .unwrap();
    let root = f.root("web1");
    let mut daemon = troupe_tests::Proc(
        std::process::Command::new(troupe_tests::agent_bin())
            .args([
                "run",
                "--interval",
                "3600",
                "--output",
                "quiet",
                "--server",
                &f.m.url,
            ])
            .arg("--state")
            .arg(f.m.agent_state("web1"))
            .arg("--root")
            .arg(&root)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(20), "the daemon's first run", || {
        root.join("etc/motd").exists()
    });
    let mut last = None;
    wait_until(
        Duration::from_secs(20),
        "a signed ping answered by the daemon",
        || {
            let out = f.troupe_plain(&[
                "run",
                "ping",
                "--name",
                "web1",
                "--server",
                &f.m.url,
                "--identity",
                f.m.agent_state("bastion").to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
                "--passphrase-file",
                pass.to_str().unwrap(),
                "--timeout",
                "3s",
            ]);
            let ok = out.success() && out.stdout.contains("pong");
            last = Some(out);
            ok
        },
    );
    assert!(
        daemon.0.try_wait().unwrap().is_none(),
        "the daemon keeps running ({last:?})"
    );
}

#[test]
fn an_agent_may_ask_for_another_environment_only_when_the_master_allows_it() {
    let mut f = Fleet::start(&["web1"]);
    // A staging environment with its own banner.
    let staging = f.modules.join("environments/staging");
    copy_dir(&f.modules.join("environments/production"), &staging);
    std::fs::write(
        staging.join("data/common.toml"),
        "[motd]\nbanner = \"Staging\"\n",
    )
    .unwrap();
    let (out, _) = f.converge("web1");
    assert_eq!(out.code, Some(2));
    let motd = f.root("web1").join("etc/motd");
    let root = f.root("web1");
    let run_staging = |f: &Fleet| {
        f.m.agent_cmd(
            "web1",
            "run",
            &[
                "--once",
                "--root",
                root.to_str().unwrap(),
                "--environment",
                "staging",
            ],
        )
    };

    // Refused by default: the run fails, and does not fall back to the cache.
    let refused = run_staging(&f);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("choose their environment"),
        "{refused:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&motd).unwrap(),
        "Welcome (web1, role web)\n"
    );
    assert!(
        std::fs::read_to_string(f.m.data.join("access-audit.log"))
            .unwrap()
            .contains("asked for environment"),
    );
    tally::hostile(
        "access",
        "agent choosing its environment, not allowed",
        true,
    );

    // Allowed: the staging catalog is served and converged.
    f.opts.extra_args.push("--allow-agent-environment".into());
    f.m.restart(&f.opts);
    let ok = run_staging(&f);
    assert_eq!(ok.code, Some(2), "{ok:?}");
    assert_eq!(
        std::fs::read_to_string(&motd).unwrap(),
        "Staging (web1, role web)\n"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// The master's count of TLS connections on its gRPC port (full and
/// resumed handshakes), from its metrics listener on `port`.
fn tls_connections(port: u16) -> u64 {
    let body = troupe_tests::metrics_text(port).expect("metrics listener");
    body.lines()
        .filter(|l| l.starts_with("troupe_tls_connections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// One agent run is one TLS connection to the master: the CRL refresh
/// before the run, the catalog and the report share it (each connection
/// costs the master ~7x an unchanged check-in on an open one).
#[test]
fn one_agent_run_opens_one_connection_to_the_master() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let tree = tempfile::tempdir().unwrap();
    let modules = tree.path().join("modules");
    write_tree(&modules, "Welcome");
    let m = Master::start_with(MasterOptions {
        modules: Some(modules),
        extra_args: vec!["--metrics-listen".into(), format!("127.0.0.1:{port}")],
    });
    let psk = m.psk("web1");
    m.bootstrap("web1", Some(&psk)).assert_success();
    let f = Fleet {
        m,
        modules: PathBuf::new(),
        opts: MasterOptions::default(),
        _tree: tree,
    };
    // A first run (a new catalog, its report) and a second ("unchanged").
    for (run, code) in [(1, 2), (2, 0)] {
        let before = tls_connections(port);
        let (out, report) = f.converge("web1");
        assert_eq!(out.code, Some(code), "run {run}: {}", out.stderr);
        assert_eq!(report["from_cache"], false, "run {run}");
        // The report is stored by the time the run ends.
        let shown = f.troupe(&["report", "web1", "--json"]);
        shown.assert_success();
        assert!(
            shown.stdout.contains(report["run_id"].as_str().unwrap()),
            "run {run}: its report is on the master: {}",
            shown.stdout
        );
        assert_eq!(
            tls_connections(port) - before,
            1,
            "run {run} opened more than one connection; master log:\n{}",
            f.m.log()
        );
    }
}
