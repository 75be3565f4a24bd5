//! Issue 16: what the operator sees must be true. One master with a module
//! tree (so it classifies hosts and keeps their check-ins), agents that
//! converged once into sandboxes, two of them listening:
//!
//! - `troupe run --role web` targets by the master's classification, not
//!   the role an agent declares for itself, and a matching host that is
//!   not connected is "no answer" (exit 2), never left out;
//! - `troupe run facts` prints the facts (and `--json` gives NDJSON);
//! - `troupe nodes --json`, `troupe report HOST --list [--json]`.

use std::path::Path;
use std::process::Command;
use troupe_tests::orch::{AgentSpec, Fleet};
use troupe_tests::{Master, MasterOptions, run, troupe_bin};

/// `web*` hosts are classified `web`, every other host `base`; the catalog
/// is one file, so it converges in a sandbox.
fn write_tree(dir: &Path) {
    let env = dir.join("environments/production");
    for d in ["roles", "profiles", "data"] {
        std::fs::create_dir_all(env.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("site.toml"),
        "default_environment = \"production\"\n\n[[node]]\nmatch = \"web*\"\nrole = \"web\"\n\n[[node]]\nmatch = \"*\"\nrole = \"base\"\n",
    )
    .unwrap();
    std::fs::write(
        env.join("hierarchy.toml"),
        "[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
    )
    .unwrap();
    for role in ["web", "base"] {
        std::fs::write(
            env.join(format!("roles/{role}.toml")),
            "include = [\"motd\"]\n",
        )
        .unwrap();
    }
    std::fs::write(
        env.join("profiles/motd.toml"),
        "[file.\"/etc/motd\"]\ncontent = \"managed\\n\"\nmode = \"0644\"\n",
    )
    .unwrap();
}

fn converge(f: &Fleet, host: &str) {
    let root = f.master.root.path().join("roots").join(host);
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let out = f
        .master
        .agent_cmd(host, "run", &["--once", "--root", root.to_str().unwrap()]);
    assert!(
        matches!(out.code, Some(0) | Some(2)),
        "{host} did not converge: {out:?}\n{}",
        f.master.log()
    );
}

fn fleet_cmd(f: &Fleet, args: &[&str]) -> troupe_tests::Out {
    run(Command::new(troupe_bin())
        .args(args)
        .arg("--data")
        .arg(&f.master.data))
}

#[test]
fn targeting_uses_what_the_master_knows_and_counts_the_absent() {
    let tree = tempfile::tempdir().unwrap();
    write_tree(tree.path());
    let master = Master::start_with(MasterOptions {
        modules: Some(tree.path().to_path_buf()),
        ..Default::default()
    });
    // web1 declares the role its classification gives it; db1 declares
    // `web` for itself but the master classifies it `base`.
    let f = Fleet::start_on(
        master,
        &[
            AgentSpec::new("web1").role("web").fact("tier", "gold"),
            AgentSpec::new("db1").role("web"),
        ],
        |_, _| String::new(),
    );
    // web2: known to the master (it checked in), not listening.
    let psk = f.master.psk("web2");
    f.master.bootstrap("web2", Some(&psk)).assert_success();
    for h in ["web1", "db1", "web2"] {
        converge(&f, h);
    }

    let out = f.troupe_run(&["ping", "--role", "web"]);
    assert_eq!(out.code, Some(2), "a matching host is down: {out:?}");
    assert!(
        out.stdout
            .contains("summary: 2 matched, 1 ok, 0 failed or refused, 1 no answer"),
        "{out:?}"
    );
    assert!(out.stdout.contains("no answer: web2"), "{out:?}");
    // Not a terminal: plain lines, no progress bar or escape codes.
    assert!(
        !out.stderr.contains('\u{1b}') && !out.stdout.contains('\u{1b}'),
        "{out:?}"
    );
    // db1 is not web here: it gets nothing, and the operator is told why
    // it was left out although its agent says `web`.
    let db1: Vec<&str> = out.stdout.lines().filter(|l| l.contains("db1")).collect();
    assert_eq!(
        db1,
        [
            "left out: db1: its agent declares role web, but the master classified it base \
          (site.toml); targeting follows the master's classification"
        ],
        "{out:?}"
    );

    // Discovery says who is not connected.
    let out = f.troupe_run(&["ping", "--role", "web", "--dry-run"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("matched 2 host(s): web1 web2"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("not connected now (no answer expected): web2"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("left out: db1: its agent declares role web"),
        "{out:?}"
    );
    // A release's plan says the same.
    let rel = tree.path().join("release.toml");
    std::fs::write(
        &rel,
        "title = \"t\"\n[[package]]\nname = \"nginx\"\nversion = \"1.24.0-1\"\n",
    )
    .unwrap();
    let out = f.troupe(
        "deploy",
        &[rel.to_str().unwrap(), "--role", "web", "--dry-run"],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("matched 2 host(s): web1 web2"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains(
            "left out: db1: its agent declares role web, but the master classified it base"
        ),
        "{out:?}"
    );
    // Targeted by the role the master gave it, db1 matches and is not
    // "left out".
    let out = f.troupe_run(&["ping", "--role", "base", "--dry-run"]);
    assert!(out.stdout.contains("matched 1 host(s): db1"), "{out:?}");
    assert!(!out.stdout.contains("left out"), "{out:?}");

    // --json: NDJSON, a result per host and a summary.
    let out = f.troupe_run(&["ping", "--role", "web", "--json"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let result = events.iter().find(|e| e["event"] == "result").unwrap();
    assert_eq!(result["node"], "web1");
    assert_eq!(result["status"], "ok");
    let summary = events.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["matched"], serde_json::json!(["web1", "web2"]));
    assert_eq!(summary["ok"], serde_json::json!(["web1"]));
    assert_eq!(summary["no_answer"], serde_json::json!(["web2"]));
    assert_eq!(summary["left_out"][0]["node"], "db1", "{summary}");
    assert!(
        summary["left_out"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("classified it base"),
        "{summary}"
    );

    // `troupe run facts` prints the facts, not only "facts gathered".
    let out = f.troupe_run(&["facts", "--name", "web1"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("\"tier\": \"gold\""), "{out:?}");
    assert!(out.stdout.contains("\"hostname\""), "{out:?}");
    let out = f.troupe_run(&["facts", "--name", "web1", "--json"]);
    let first: serde_json::Value =
        serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"], "result");
    assert_eq!(first["data"]["external"]["tier"], "gold");

    // The master's view: nodes (JSON) and a run history.
    let out = fleet_cmd(&f, &["nodes", "--json", "--role", "web"]);
    out.assert_success();
    let nodes: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web1", "web2"]);
    let out = fleet_cmd(&f, &["report", "web1", "--list"]);
    out.assert_success();
    assert!(out.stdout.starts_with("RUN "), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");
    let out = fleet_cmd(&f, &["report", "web1", "--list", "--json"]);
    out.assert_success();
    let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let run0 = &runs[0];
    assert_eq!(run0["status"], "changed", "{runs}");
    assert_eq!(run0["changed"], 1);
    assert_eq!(run0["failed"], 0);
    assert_eq!(run0["skipped"], 0);
    assert_eq!(run0["from_cache"], false);
    assert!(run0["catalog_hash"].as_str().unwrap().len() > 10);

    // Logs written to a file carry no colour codes.
    assert!(!f.master.log().contains('\u{1b}'), "ANSI in the master log");
    assert!(
        !f.agent_log("web1").contains('\u{1b}'),
        "ANSI in an agent log"
    );
    assert!(
        f.agent_log("web1").contains("INFO"),
        "{}",
        f.agent_log("web1")
    );
}
