//! End-to-end signed orchestration: a real master, three real agents
//! (`troupe-agent listen`), a bastion with its own certificate; everything
//! on loopback in a temporary directory. Only actions with no effect on the
//! host outside the agents' temporary state directories are run (ping,
//! maintenance, agent.disable/enable).

use troupe_command::{ArgValue, TargetFilter};
use troupe_tests::orch::{AgentSpec, Fleet};
use troupe_tests::tally;

fn fleet() -> Fleet {
    Fleet::start(&[
        AgentSpec::new("web1").role("web").fact("dc", "dc1"),
        AgentSpec::new("web2").role("web").fact("dc", "dc2"),
        AgentSpec::new("db1").role("db").fact("dc", "dc1"),
    ])
}

fn name(n: &str) -> TargetFilter {
    TargetFilter {
        name: Some(n.into()),
        ..Default::default()
    }
}

/// Records of a hash-chained log whose outcome is `code`.
fn count(log: &str, code: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(&format!("\"outcome\":\"{code}\"")))
        .count()
}

#[test]
fn signed_commands_run_on_matching_agents_only() {
    let f = fleet();

    // A signed ping by role: web1 and web2 answer, db1 is not even asked.
    let out = f.troupe_run(&["ping", "--role", "web"]);
    out.assert_success();
    assert!(
        out.stdout.contains("web1") && out.stdout.contains("web2"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("db1"), "{out:?}");
    assert!(out.stdout.contains("2 matched, 2 ok"), "{out:?}");
    assert_eq!(count(&f.agent_audit("web1"), "ok"), 1);
    assert_eq!(count(&f.agent_audit("web2"), "ok"), 1);
    assert_eq!(f.agent_audit("db1"), "", "db1 received nothing");

    // By fact and by name glob.
    let out = f.troupe_run(&["ping", "--where", "external.dc=dc1", "--dry-run"]);
    out.assert_success();
    assert!(
        out.stdout.contains("matched 2 host(s): db1 web1"),
        "{out:?}"
    );
    let out = f.troupe_run(&["ping", "--name", "web*", "--limit", "1"]);
    out.assert_success();
    assert!(out.stdout.contains("1 matched, 1 ok"), "{out:?}");
    let out = f.troupe_run(&["ping", "--role", "nosuch"]);
    assert_eq!(out.code, Some(2), "nothing matched: not a success {out:?}");

    // Facts come back as structured data.
    let (_, results, _) = f.submit(f.sign(&f.alice, "facts", &[], name("web2"), 60));
    let facts: serde_json::Value = serde_json::from_slice(&results["web2"].data_json).unwrap();
    assert_eq!(facts["external"]["dc"], "dc2", "{facts}");

    // Maintenance on web1 only: the marker appears there and nowhere else.
    let out = f.troupe_run(&["maintenance.on", "message=kernel update", "--name", "web1"]);
    out.assert_success();
    let marker = f.state("web1").join("maintenance");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    assert_eq!(m["message"], "kernel update");
    assert_eq!(m["by"], "alice");
    assert!(!f.state("web2").join("maintenance").exists());
    f.troupe_run(&["maintenance.off", "--name", "web1"])
        .assert_success();
    assert!(!marker.exists());

    // Batches of one: every web host gets its own command.
    let out = f.troupe_run(&[
        "agent.disable",
        "message=release 42",
        "--role",
        "web",
        "--batch",
        "1",
    ]);
    out.assert_success();
    assert!(out.stdout.contains("batch 2/2"), "{out:?}");
    for h in ["web1", "web2"] {
        let d = std::fs::read_to_string(f.state(h).join("disabled")).unwrap();
        assert!(d.contains("release 42"), "{h}: {d}");
    }
    assert!(!f.state("db1").join("disabled").exists());

    // A batch that fails stops the run: maintenance.on is denied on db1,
    // which sorts first, so web1/web2 are never asked.
    let out = f.troupe_run(&["maintenance.on", "message=x", "--batch", "1"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.contains("policy_denied"), "{out:?}");
    assert!(out.stdout.contains("stopping"), "{out:?}");
    assert!(!f.state("web1").join("maintenance").exists());
    assert!(!f.state("web2").join("maintenance").exists());

    // The master audited every relay and result; its log verifies.
    let ma = f.master_audit();
    assert!(count(&ma, "relayed") >= 6, "{ma}");
    f.audit_verify(&f.master.data.join("orchestration-audit.log"))
        .assert_success();
}

#[test]
fn bad_commands_are_refused_audited_and_never_run() {
    let mut f = fleet();
    let web1 = name("web1");
    let marker = f.state("web1").join("maintenance");
    let msg = || ("message", ArgValue::Str("x".into()));

    // Forged signature: the master refuses it before relaying (and audits).
    let mut wire = f.sign(&f.alice, "maintenance.on", &[msg()], web1.clone(), 60);
    let last = wire.len() - 1;
    wire[last] ^= 1;
    let err = f.try_submit(wire, false).unwrap_err().to_string();
    assert!(err.contains("bad_signature"), "{err}");
    assert_eq!(count(&f.master_audit(), "bad_signature"), 1);
    assert!(!marker.exists());
    tally::hostile("command", "forged signature (master)", true);

    // Each refusal below is the agent's own decision (the master relays it).
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // A signer the master trusts but the agent does not (a compromised
        // master's list).
        (
            "unknown_signer",
            f.sign(&f.mallory, "maintenance.on", &[msg()], web1.clone(), 60),
        ),
        (
            "expired",
            f.sign_at(
                &f.alice,
                "maintenance.on",
                &[msg()],
                web1.clone(),
                troupe_command::verify::unix_now() - 1000,
                60,
            ),
        ),
        (
            "unknown_action",
            f.sign(&f.alice, "shell.exec", &[], web1.clone(), 60),
        ),
        (
            "bad_argument",
            f.sign(
                &f.alice,
                "maintenance.on",
                &[("message", ArgValue::Int(5))],
                web1.clone(),
                60,
            ),
        ),
        (
            "bad_argument",
            f.sign(
                &f.alice,
                "service.restart",
                &[("name", ArgValue::Str("nginx; rm -rf /".into()))],
                web1.clone(),
                60,
            ),
        ),
    ];
    for (code, wire) in cases {
        let (targets, results, summary) = f.submit(wire);
        assert_eq!(targets, vec!["web1".to_string()]);
        let r = &results["web1"];
        assert_eq!(r.status, code, "{r:?}");
        assert_eq!(summary.not_ok, 1);
        assert!(!marker.exists(), "{code}: nothing ran");
    }
    let audit = f.agent_audit("web1");
    assert_eq!(count(&audit, "unknown_signer"), 1, "{audit}");
    assert_eq!(count(&audit, "expired"), 1, "{audit}");
    assert_eq!(count(&audit, "unknown_action"), 1, "{audit}");
    assert_eq!(count(&audit, "bad_argument"), 2, "{audit}");
    assert!(
        audit.contains("service.restart"),
        "the injection attempt is on record"
    );
    for what in [
        "signer trusted by the master only",
        "expired command",
        "non-whitelisted action",
        "argument of the wrong type",
        "shell injection in a service name",
    ] {
        tally::hostile("command", what, true);
    }

    // Policy: maintenance.on is denied on role db.
    let db1 = f.state("db1").join("maintenance");
    let (_, results, _) = f.submit(f.sign(&f.alice, "maintenance.on", &[msg()], name("db1"), 60));
    assert_eq!(results["db1"].status, "policy_denied");
    assert!(!db1.exists());
    assert_eq!(count(&f.agent_audit("db1"), "policy_denied"), 1);
    tally::hostile("command", "policy-denied action", true);

    // Replay inside the window: the first delivery runs, the replay does not.
    let wire = f.sign(&f.alice, "maintenance.on", &[msg()], web1.clone(), 120);
    let (_, results, _) = f.submit(wire.clone());
    assert_eq!(results["web1"].status, "ok");
    assert!(marker.exists());
    std::fs::remove_file(&marker).unwrap();
    // The master relays an envelope once...
    let err = f.try_submit(wire.clone(), false).unwrap_err().to_string();
    assert!(err.contains("replayed"), "{err}");
    assert_eq!(count(&f.master_audit(), "replayed"), 1);
    tally::hostile("command", "replay inside the window (master)", true);
    // ...and remembers it across a restart (on disk)...
    f.master.restart(&troupe_tests::MasterOptions::default());
    f.wait_attached(3);
    let err = f.try_submit(wire.clone(), false).unwrap_err().to_string();
    assert!(err.contains("replayed"), "{err}");
    assert_eq!(count(&f.master_audit(), "replayed"), 2);
    assert!(!marker.exists());
    tally::hostile("command", "replay after a master restart (master)", true);
    // ...and a master that lost its cache still cannot get it run: the
    // agent's own cache refuses it.
    f.master.stop();
    std::fs::remove_file(f.master.data.join("orchestration-relayed.redb")).unwrap();
    f.master.resume(&troupe_tests::MasterOptions::default());
    f.wait_attached(3);
    let (_, results, _) = f.submit(wire);
    assert_eq!(results["web1"].status, "replayed");
    assert!(!marker.exists(), "a replay runs nothing");
    assert_eq!(count(&f.agent_audit("web1"), "replayed"), 1);
    tally::hostile(
        "command",
        "replay through a master that lost its cache (agent)",
        true,
    );

    // Tampering with the agent's audit log is detected.
    let log = f.state("web1").join("orchestration-audit.log");
    f.audit_verify(&log).assert_success();
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("\"expired\"", "\"ok\"", 1)).unwrap();
    f.audit_verify(&log).assert_failure_containing("FAILED");
    tally::hostile("audit", "edited agent audit record", true);
}
