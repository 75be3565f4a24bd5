//! Module-declared actions end to end: a real master, two real agents, one
//! of which declares module `app` in its `actions_dir`. The action runs a
//! script in the test's temporary directory from its argv template; the
//! other agent does not know it. Bad arguments, shell injection and option
//! injection are refused, and the shipped declarations in
//! `modules/environments/production/files/troupe/actions.d/` (installed in
//! agents' `/etc/troupe/actions.d` by profiles nginx and postgresql) parse
//! and expand as documented.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use troupe_command::{ArgValue, Registry, TargetFilter};
use troupe_tests::orch::{AgentSpec, Fleet};
use troupe_tests::{tally, wait_until};

/// The declaration web1 has (the script path is filled in).
fn app_toml(script: &Path) -> String {
    format!(
        r#"
[[action]]
name = "app.cache_flush"
description = "flush one cache pool"
timeout_secs = 10

[[action.arg]]
name = "pool"
type = "enum"
values = ["sessions", "pages"]
required = true

[[action.arg]]
name = "note"
type = "text"
max_len = 200

[[action.run]]
argv = ["{}", "{{pool}}", ["--note", "{{note}}"]]
"#,
        script.display()
    )
}

fn fleet() -> Fleet {
    Fleet::start_with(
        &[AgentSpec::new("web1"), AgentSpec::new("web2")],
        |spec, state| {
            let rule = "[[rule]]\nname = \"app\"\neffect = \"allow\"\nsigners = [\"alice\"]\nactions = [\"app.*\"]\n";
            if spec.name != "web1" {
                return rule.to_string();
            }
            let script = state.join("flush.sh");
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh\nfor a; do echo \"[$a]\" >> {log}; done\necho \"flushed $1\"\n",
                    log = state.join("flush.log").display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            let dir = state.join("actions.d");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::write(dir.join("app.toml"), app_toml(&script)).unwrap();
            std::fs::set_permissions(dir.join("app.toml"), std::fs::Permissions::from_mode(0o644))
                .unwrap();
            format!("actions_dir = \"{}\"\n{rule}", dir.display())
        },
    )
}

fn web1() -> TargetFilter {
    TargetFilter {
        name: Some("web1".into()),
        ..Default::default()
    }
}

#[test]
fn declared_actions_run_where_declared_and_refuse_bad_input() {
    let f = fleet();
    let decl_dir = f.state("web1").join("actions.d");
    let decl = decl_dir.join("app.toml").display().to_string();
    let log = f.state("web1").join("flush.log");
    let flushes = || std::fs::read_to_string(&log).unwrap_or_default();

    // Runs on web1, which declares it; web2 does not have it at all.
    let out = f.troupe_run(&[
        "app.cache_flush",
        "pool=sessions",
        "--module-actions",
        &decl,
    ]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stdout.contains("app.cache_flush: flushed sessions"),
        "{out:?}"
    );
    assert!(out.stdout.contains("unknown_action"), "{out:?}");
    assert!(out.stdout.contains("2 matched, 1 ok"), "{out:?}");
    assert_eq!(flushes(), "[sessions]\n");
    assert!(!f.state("web2").join("flush.log").exists());
    tally::hostile(
        "command",
        "module action sent to a host that does not declare it",
        true,
    );

    // The optional group is passed when given; output comes back.
    let out = f.troupe_run(&[
        "app.cache_flush",
        "pool=pages",
        "note=after deploy 42",
        "--name",
        "web1",
        "--module-actions",
        decl_dir.to_str().unwrap(),
    ]);
    out.assert_success();
    assert_eq!(
        flushes(),
        "[sessions]\n[pages]\n[--note]\n[after deploy 42]\n"
    );
    let (_, results, _) = f.submit(f.sign(
        &f.alice,
        "app.cache_flush",
        &[("pool", ArgValue::Str("pages".into()))],
        web1(),
        60,
    ));
    let data: serde_json::Value = serde_json::from_slice(&results["web1"].data_json).unwrap();
    assert_eq!(data["steps"][0]["stdout"], "flushed pages\n", "{data}");
    assert_eq!(data["steps"][0]["exit_code"], 0);
    std::fs::remove_file(&log).unwrap();

    // Bad arguments: the bastion refuses them, and so does the agent when
    // they are signed anyway.
    let out = f.troupe_run(&[
        "app.cache_flush",
        "pool=everything",
        "--module-actions",
        &decl,
    ]);
    assert!(!out.success() && out.stderr.contains("pool"), "{out:?}");
    for (args, what) in [
        (
            vec![("pool", ArgValue::Str("everything".into()))],
            "enum value not declared",
        ),
        (vec![("pool", ArgValue::Int(1))], "wrong argument type"),
        (vec![], "required argument missing"),
        (
            vec![
                ("pool", ArgValue::Str("pages".into())),
                ("force", ArgValue::Bool(true)),
            ],
            "undeclared argument",
        ),
    ] {
        let (_, results, _) = f.submit(f.sign(&f.alice, "app.cache_flush", &args, web1(), 60));
        assert_eq!(results["web1"].status, "bad_argument", "{what}");
        assert_eq!(flushes(), "", "{what}: nothing ran");
        tally::hostile("command", &format!("module action: {what}"), true);
    }

    // Injection: shell syntax stays one inert argv element...
    let evil = "x; touch /tmp/troupe-pwned $(touch /tmp/troupe-pwned2) `id`";
    let (_, results, _) = f.submit(f.sign(
        &f.alice,
        "app.cache_flush",
        &[
            ("pool", ArgValue::Str("pages".into())),
            ("note", ArgValue::Str(evil.into())),
        ],
        web1(),
        60,
    ));
    assert_eq!(results["web1"].status, "ok");
    assert_eq!(flushes(), format!("[pages]\n[--note]\n[{evil}]\n"));
    assert!(!Path::new("/tmp/troupe-pwned").exists());
    assert!(!Path::new("/tmp/troupe-pwned2").exists());
    tally::hostile(
        "command",
        "shell injection in a module action argument",
        true,
    );
    std::fs::remove_file(&log).unwrap();
    // ...a control character is refused by the type, and a value that
    // would become an option is refused before anything runs.
    for (note, code) in [
        ("line\nbreak", "bad_argument"),
        ("--config=/etc/shadow", "failed"),
    ] {
        let (_, results, _) = f.submit(f.sign(
            &f.alice,
            "app.cache_flush",
            &[
                ("pool", ArgValue::Str("pages".into())),
                ("note", ArgValue::Str(note.into())),
            ],
            web1(),
            60,
        ));
        assert_eq!(results["web1"].status, code, "{note:?}");
        assert_eq!(flushes(), "", "{note:?}: nothing ran");
        tally::hostile("command", &format!("module action argument {note:?}"), true);
    }
    let audit = f.agent_audit("web1");
    assert!(audit.contains("app.cache_flush"), "{audit}");

    // A declaration file others could write is refused, with everything
    // else in the configuration (fail closed: no signer is trusted any
    // more), once the agent notices.
    std::fs::set_permissions(
        decl_dir.join("app.toml"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    wait_until(
        std::time::Duration::from_secs(20),
        "web1 refuses everything",
        || {
            let wire = f.sign(&f.alice, "ping", &[], web1(), 60);
            f.try_submit(wire, false)
                .map(|(_, r, _)| r.first().is_some_and(|r| r.status == "unknown_signer"))
                .unwrap_or(false)
        },
    );
    let (_, results, _) = f.submit(f.sign(
        &f.alice,
        "app.cache_flush",
        &[("pool", ArgValue::Str("pages".into()))],
        web1(),
        60,
    ));
    assert_eq!(results["web1"].status, "unknown_signer");
    assert_eq!(flushes(), "");
    assert!(
        f.agent_log("web1").contains("writable by group or others"),
        "{}",
        f.agent_log("web1")
    );
    tally::hostile("command", "world-writable module action declaration", true);
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../modules/environments/production/files/troupe/actions.d")
}

#[test]
fn the_shipped_module_actions_parse_and_expand_as_documented() {
    let mut r = Registry::builtin();
    troupe_agent::orchestra::config::load_actions_dir_checked(&shipped(), &mut r, false)
        .expect("the shipped actions.d");
    let reload = r.get("nginx.reload").expect("nginx.reload");
    let none = Default::default();
    assert_eq!(
        reload.argv(0, &none).unwrap(),
        ["/usr/sbin/nginx", "-t", "-q"]
    );
    assert_eq!(
        reload.argv(1, &none).unwrap(),
        ["/usr/bin/systemctl", "reload", "--", "nginx.service"]
    );
    let vacuum = r.get("postgresql.vacuum").expect("postgresql.vacuum");
    assert_eq!(vacuum.user.as_deref(), Some("postgres"));
    let a = |list: &[(&str, ArgValue)]| {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    assert_eq!(
        vacuum
            .argv(0, &a(&[("database", ArgValue::Str("app".into()))]))
            .unwrap(),
        ["/usr/bin/vacuumdb", "--analyze", "--", "app"]
    );
    assert_eq!(
        vacuum
            .argv(
                0,
                &a(&[
                    ("database", ArgValue::Str("app".into())),
                    ("jobs", ArgValue::Int(4))
                ])
            )
            .unwrap(),
        ["/usr/bin/vacuumdb", "--analyze", "--jobs", "4", "--", "app"]
    );
    assert!(
        vacuum
            .argv(0, &a(&[("database", ArgValue::Str("app; DROP".into()))]))
            .is_err()
    );
}
