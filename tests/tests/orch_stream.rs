//! The agents' command stream: reconnection after a master restart, and
//! hosts that are connected but do not answer.

use troupe_proto::v1::orchestration_client::OrchestrationClient;
use troupe_proto::v1::{AgentHello, AgentMessage, agent_message};
use troupe_tests::MasterOptions;
use troupe_tests::orch::{AgentSpec, Fleet};

#[test]
fn agents_reconnect_after_a_master_restart() {
    let mut f = Fleet::start(&[AgentSpec::new("web1"), AgentSpec::new("web2")]);
    f.master.restart(&MasterOptions::default());
    f.wait_attached(2);
    let out = f.troupe_run(&["ping"]);
    out.assert_success();
    assert!(out.stdout.contains("2 matched, 2 ok"), "{out:?}");
}

/// A master that is frozen (SIGSTOP: its TCP connections stay open, it
/// answers nothing) is noticed by the agents through HTTP/2 keepalive
/// pings within seconds; they reconnect once it runs again.
#[test]
fn a_silently_dead_master_is_noticed_through_keepalive() {
    let f = Fleet::start(&[AgentSpec::new("web1")]);
    f.troupe_run(&["ping"]).assert_success();
    let before = f.agent_log("web1").matches("command stream:").count();
    f.signal_master("STOP");
    let noticed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        troupe_tests::wait_until(
            std::time::Duration::from_secs(45),
            "the agent notices the frozen master",
            || f.agent_log("web1").matches("command stream:").count() > before,
        )
    }));
    f.signal_master("CONT");
    assert!(noticed.is_ok(), "{}", f.agent_log("web1"));
    f.wait_attached(1);
    let out = f.troupe_run(&["ping"]);
    out.assert_success();
    troupe_tests::tally::fault(
        "master-freeze",
        "master frozen (SIGSTOP): agent noticed by keepalive and reattached",
        0,
    );
}

#[test]
fn a_silent_host_is_reported_as_not_answering() {
    let f = Fleet::start(&[AgentSpec::new("web1")]);
    // "mute1" attaches with a real certificate but never answers.
    let psk = f.master.psk("mute1");
    f.master.bootstrap("mute1", Some(&psk)).assert_success();
    let (tx, rx) = tokio::sync::mpsc::channel::<AgentMessage>(4);
    let _held = f.block_on(async {
        let ch = f.master.agent_channel("mute1").await.unwrap();
        tx.send(AgentMessage {
            msg: Some(agent_message::Msg::Hello(AgentHello::default())),
        })
        .await
        .unwrap();
        OrchestrationClient::new(ch)
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner()
    });
    f.wait_attached(2);
    let out = f.troupe_run(&["ping", "--timeout", "2s"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.contains("2 matched, 1 ok"), "{out:?}");
    assert!(out.stdout.contains("no answer: mute1"), "{out:?}");
    // Results are audited right after the summary is sent.
    troupe_tests::wait_until(
        std::time::Duration::from_secs(5),
        "no_answer audited",
        || f.master_audit().contains("\"outcome\":\"no_answer\""),
    );
}

/// Slow (over two minutes): the command stream outlives the channel's
/// per-request timeout (120 s) and HTTP/2 keepalives.
/// `cargo test -p troupe-tests --test orch_stream -- --ignored`
#[test]
#[ignore]
fn the_stream_survives_long_idle_periods() {
    let f = Fleet::start(&[AgentSpec::new("web1")]);
    std::thread::sleep(std::time::Duration::from_secs(150));
    let out = f.troupe_run(&["ping"]);
    out.assert_success();
    assert!(out.stdout.contains("1 matched, 1 ok"), "{out:?}");
    assert!(
        !f.agent_log("web1").contains("command stream:"),
        "no reconnect: {}",
        f.agent_log("web1")
    );
}

#[test]
fn agent_run_starts_a_converge_run_through_the_agent_binary() {
    let f = Fleet::start_with(&[AgentSpec::new("web1")], |_, _| {
        "[[rule]]\neffect = \"allow\"\nsigners = [\"alice\"]\nactions = [\"agent.run\"]\n".into()
    });
    // This master has no module tree: the run cannot get a catalog, has
    // none cached, and says so; the answer carries the run's own words.
    let out = f.troupe_run(&["agent.run", "noop=true"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.contains("run exited with 1"), "{out:?}");
    assert!(out.stdout.contains("no catalog"), "{out:?}");
    // Another environment: passed to the run, which this master refuses
    // (agents may not choose by default) and which never falls back to a
    // cached catalog.
    let out = f.troupe_run(&["agent.run", "environment=staging"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.contains("run exited with 1"), "{out:?}");
    assert!(out.stdout.contains("choose their environment"), "{out:?}");
}

#[test]
fn a_changed_configuration_takes_effect_without_a_restart() {
    use troupe_command::TargetFilter;
    let f = Fleet::start(&[AgentSpec::new("web1").role("web")]);
    f.troupe_run(&["ping", "--role", "web"]).assert_success();
    // The host's configuration now gives the signer name "alice" to
    // mallory's key, and the host a new role.
    let path = f.state("web1").join("orchestration.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace(&f.alice.id().to_string(), &f.mallory.id().to_string())
        .replace("role = \"web\"", "role = \"db\"");
    std::fs::write(&path, text).unwrap();
    // The very next command is checked with the new file: no window in
    // which the old one still answers (issue 16).
    let by_name = TargetFilter {
        name: Some("web1".into()),
        ..Default::default()
    };
    let (_, results, _) = f.submit(f.sign(&f.alice, "ping", &[], by_name, 60));
    assert_eq!(results["web1"].status, "unknown_signer");
    let role = |r: &str| TargetFilter {
        role: Some(r.into()),
        ..Default::default()
    };
    troupe_tests::wait_until(std::time::Duration::from_secs(20), "new role", || {
        let wire = f.sign(&f.alice, "ping", &[], role("db"), 60);
        f.try_submit(wire, true)
            .map(|(t, _, _)| t == vec!["web1".to_string()])
            .unwrap_or(false)
    });
    let (_, results, _) = f.submit(f.sign(&f.alice, "ping", &[], role("db"), 60));
    assert_eq!(results["web1"].status, "unknown_signer");
    let (_, results, _) = f.submit(f.sign(&f.mallory, "ping", &[], role("db"), 60));
    assert_eq!(results["web1"].status, "ok");
}

#[test]
fn module_actions_exist_only_where_declared() {
    const DECL: &str = "[[action]]\nname = \"demo.hello\"\n[[action.arg]]\nname = \"who\"\ntype = \"identifier\"\nrequired = true\n";
    let f = Fleet::start_with(&[AgentSpec::new("web1"), AgentSpec::new("web2")], |a, _| {
        let mut s = String::from(
            "[[rule]]\neffect = \"allow\"\nsigners = [\"alice\"]\nactions = [\"demo.*\"]\n",
        );
        if a.name == "web1" {
            // Same declaration, as the agent's `[modules.demo]` table.
            s.push_str("\n[modules.demo]\n");
            s.push_str(&DECL.replace("[[action", "[[modules.demo.action"));
        }
        s
    });
    let decl = f.master.root.path().join("demo-actions.toml");
    std::fs::write(&decl, DECL).unwrap();
    let m = format!("demo={}", decl.display());
    // The bastion checks arguments against the declaration...
    let out = f.troupe_run(&["demo.hello", "who=a b", "--module-actions", &m]);
    assert!(!out.success() && out.stderr.contains("who"), "{out:?}");
    // ...and without it does not know the action at all.
    let out = f.troupe_run(&["demo.hello", "who=ops"]);
    assert!(out.stderr.contains("unknown action"), "{out:?}");
    let out = f.troupe_run(&["demo.hello", "who=ops", "--module-actions", &m]);
    assert_eq!(out.code, Some(2), "{out:?}");
    // web1 declares it (and has no executor for it, so says so); web2 does
    // not have it at all.
    assert!(out.stdout.contains("no executor"), "{out:?}");
    assert!(out.stdout.contains("unknown_action"), "{out:?}");
    troupe_tests::tally::hostile(
        "command",
        "module action on a host that does not declare it",
        true,
    );
}
