//! Fleet data in templates (`fleet()`, issue 19 item 6) and the fleet-wide
//! diff (`troupe_compiler::env_diff`, issue 19 item 4).

mod common;

use common::{facts, write};
use std::sync::Arc;
use troupe_catalog::{Catalog, Kind};
use troupe_compiler::env_diff::{DiffNode, NodeStatus, env_diff};
use troupe_compiler::{CompileOptions, FleetNode, FleetSnapshot, ModuleTree};

fn body(c: &Catalog, id: &str) -> String {
    let r = c
        .resources
        .iter()
        .find(|r| r.id.0 == id)
        .unwrap_or_else(|| panic!("no {id}"));
    let Kind::File {
        content: Some(cr), ..
    } = &r.kind
    else {
        panic!("{id} has no content")
    };
    String::from_utf8(c.contents[&cr.sha256].bytes().unwrap()).unwrap()
}

fn with_fleet(fleet: Option<Arc<FleetSnapshot>>) -> CompileOptions {
    CompileOptions {
        fleet,
        ..common::opts()
    }
}

/// The `server` lines of one `listen` section of haproxy.cfg.
fn servers(cfg: &str, listen: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in cfg.lines() {
        if l.starts_with("listen ") {
            inside = l == format!("listen {listen}");
        } else if inside && l.trim_start().starts_with("server ") {
            out.push(l.trim().to_owned());
        }
    }
    out
}

/// The shipped web role's local HAProxy lists the db nodes the fleet data
/// knows, sorted, own zone primary and the others backup; without fleet
/// data it lists none; a smaller fleet lists fewer. The base role does not
/// use fleet data.
#[test]
fn shipped_haproxy_backends_come_from_the_fleet() {
    let tree = common::shipped();
    let f = facts("debian12");
    // web4: zone 1 of 3, so db1 is primary.
    let (cat, info) = tree
        .compile_with_info("web4.example.com", &f, &common::opts())
        .unwrap_or_else(|e| panic!("{}", e.render()));
    assert!(info.used_fleet);
    let cfg = body(&cat, "file[/etc/haproxy/haproxy.cfg]");
    let pg = servers(&cfg, "postgresql");
    assert_eq!(pg.len(), 3, "{cfg}");
    assert!(pg[0].starts_with("server db1.example.com db1.example.com:5432 check"));
    assert!(!pg[0].ends_with("backup"), "{pg:?}");
    assert!(pg[1].starts_with("server db2.example.com") && pg[1].ends_with(" backup"));
    assert!(pg[2].starts_with("server db3.example.com") && pg[2].ends_with(" backup"));
    // The development db is in another environment: not listed.
    assert!(!cfg.contains("db9"), "{cfg}");

    // Only db2 known: one server, a backup for web4.
    let small = FleetSnapshot::new(
        7,
        vec![FleetNode {
            name: "db2.example.com".into(),
            role: "db".into(),
            environment: "production".into(),
            facts: serde_json::json!({}).into(),
        }],
    )
    .unwrap();
    let cat = tree
        .compile("web4.example.com", &f, &with_fleet(Some(Arc::new(small))))
        .unwrap();
    let pg = servers(&body(&cat, "file[/etc/haproxy/haproxy.cfg]"), "postgresql");
    assert_eq!(pg.len(), 1);
    assert!(pg[0].starts_with("server db2.example.com") && pg[0].ends_with(" backup"));

    // No fleet data: the section is there with no server.
    let (cat, info) = tree
        .compile_with_info("web4.example.com", &f, &with_fleet(None))
        .unwrap();
    assert!(info.used_fleet);
    let cfg = body(&cat, "file[/etc/haproxy/haproxy.cfg]");
    assert!(cfg.contains("listen postgresql"), "{cfg}");
    assert!(servers(&cfg, "postgresql").is_empty(), "{cfg}");

    // lb: the six web nodes, public.
    let cat = tree
        .compile("lb1.example.com", &f, &common::opts())
        .unwrap();
    let cfg = body(&cat, "file[/etc/haproxy/haproxy.cfg]");
    assert_eq!(servers(&cfg, "web_https").len(), 6, "{cfg}");

    // The base role never asks: its catalogs do not depend on the fleet.
    let (_, info) = tree
        .compile_with_info("mail1.example.com", &f, &common::opts())
        .unwrap();
    assert!(!info.used_fleet);
}

fn query_tree(template: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(
        r,
        "site.toml",
        "zones = 3\n[[node]]\nmatch = \"*\"\nrole = \"r\"\n[[node]]\nmatch = \"*.dev.example.com\"\nenvironment = \"development\"\n",
    );
    for e in ["production", "development"] {
        let e = format!("environments/{e}");
        write(
            r,
            &format!("{e}/hierarchy.toml"),
            "[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
        );
        write(r, &format!("{e}/roles/r.toml"), "include = [\"p\"]\n");
        write(
            r,
            &format!("{e}/profiles/p.toml"),
            "[file.\"/etc/fleet\"]\ntemplate = \"fleet.j2\"\n",
        );
        write(r, &format!("{e}/templates/fleet.j2"), template);
    }
    d
}

fn render(template: &str, fleet: Option<Arc<FleetSnapshot>>) -> Result<String, String> {
    let d = query_tree(template);
    let t = ModuleTree::load(d.path()).unwrap_or_else(|e| panic!("{}", e.render()));
    t.compile("app1.example.com", &facts("debian12"), &with_fleet(fleet))
        .map(|c| body(&c, "file[/etc/fleet]"))
        .map_err(|e| e.render())
}

/// A query returns the nodes of the role in the node's own environment (or
/// the one named), sorted by name, with the facts it names and nothing
/// more; bad queries are errors naming the problem.
#[test]
fn a_query_sees_only_what_it_names() {
    let fleet = Some(common::fleet());
    let out = render(
        "{{ fleet(role=\"db\", facts=[\"networking.ip\", \"nope.x\"]) | tojson }}\n",
        fleet.clone(),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["db1.example.com", "db2.example.com", "db3.example.com"]
    );
    assert_eq!(
        v[1],
        serde_json::json!({"name": "db2.example.com", "hostname": "db2", "role": "db",
            "environment": "production", "number": 2, "zone": 2,
            "facts": {"networking.ip": "10.0.2.2", "nope.x": null}})
    );
    // Facts it does not name never appear, whatever they hold.
    assert!(!out.contains("backup_password") && !out.contains("not-for-others"));
    assert!(!out.contains("Debian"), "{out}");

    // Another environment, and every role.
    let out = render(
        "{% for h in fleet(environment=\"development\") %}{{ h.name }} {% endfor %}\n",
        fleet.clone(),
    )
    .unwrap();
    assert_eq!(out, "db9.dev.example.com ");
    let out = render(
        "{{ fleet() | length }} {{ fleet('web') | map(attribute='name') | first }}\n",
        fleet.clone(),
    )
    .unwrap();
    assert_eq!(out, "10 web1.example.com\n");

    // Deterministic: the same fleet listed in another order, same bytes.
    let mut nodes = common::fleet().nodes.clone();
    nodes.reverse();
    let shuffled = Arc::new(FleetSnapshot::new(99, nodes).unwrap());
    let tpl = "{{ fleet(facts=[\"networking.ip\"]) | tojson }}\n";
    assert_eq!(
        render(tpl, fleet.clone()).unwrap(),
        render(tpl, Some(shuffled)).unwrap()
    );

    for (tpl, want) in [
        ("{{ fleet(rol=\"db\") }}", "rol"),
        ("{{ fleet(facts=[\"a b\"]) }}", "is not a fact path"),
        ("{{ fleet(facts=[\"../x\"]) }}", "is not a fact path"),
    ] {
        let e = render(tpl, fleet.clone()).unwrap_err();
        assert!(e.contains(want), "{tpl}: {e}");
        assert!(e.contains("fleet.j2"), "{tpl}: {e}");
    }
    let many: Vec<String> = (0..40).map(|i| format!("\"f{i}\"")).collect();
    let e = render(
        &format!("{{{{ fleet(facts=[{}]) }}}}", many.join(",")),
        fleet,
    )
    .unwrap_err();
    assert!(e.contains("at most 32 facts"), "{e}");
}

#[test]
fn snapshot_files_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("fleet.json");
    for (text, want) in [
        ("{\"nodes\": [{\"name\": \"x\"}]}", "missing field `role`"),
        ("{\"nodes\": [], \"extra\": 1}", "unknown field `extra`"),
        ("not json", "is not a fleet snapshot"),
        (
            "{\"nodes\": [{\"name\": \"A\", \"role\": \"db\", \"environment\": \"p\"}]}",
            "not a valid certname",
        ),
    ] {
        std::fs::write(&p, text).unwrap();
        let e = FleetSnapshot::from_file(&p).unwrap_err().render();
        assert!(e.contains(want), "{text}: {e}");
    }
    let e = FleetSnapshot::from_file(&d.path().join("nope.json"))
        .unwrap_err()
        .render();
    assert!(e.contains("cannot read the fleet snapshot"), "{e}");
}

/// The fleet-wide diff: per node what changes, counted; a node the new code
/// breaks is reported and counted; sensitive values never shown.
#[test]
fn env_diff_counts_every_node() {
    let old = common::shipped();
    let scratch = common::scratch_tree();
    let r = scratch.path();
    // Web nodes get a new motd; db nodes a new secret; db2 a broken data file.
    write(
        r,
        "environments/production/data/roles/web.toml",
        &(std::fs::read_to_string(r.join("environments/production/data/roles/web.toml")).unwrap()
            + "\n[banner]\nmotd = \"Maintenance tonight.\"\n"),
    );
    let recipient = troupe_compiler::secrets::parse_recipient(
        &std::fs::read_to_string(r.join("environments/production/secrets.pub")).unwrap(),
    )
    .unwrap();
    let snippet =
        troupe_compiler::secrets::encrypt_to_toml(&recipient, "production", b"rotated-pw-42")
            .unwrap();
    let db = r.join("environments/production/data/roles/db.toml");
    let text = std::fs::read_to_string(&db).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("app_password"))
        .unwrap()
        .to_owned();
    std::fs::write(
        &db,
        text.replace(&line, &format!("app_password = {snippet}")),
    )
    .unwrap();
    write(
        r,
        "environments/production/data/nodes/db2.example.com.toml",
        "[postgresql]\nconf_dir = \"etc/not-absolute\"\n",
    );
    let new = ModuleTree::load(r).unwrap_or_else(|e| panic!("{}", e.render()));
    let f = facts("debian12");
    let nodes: Vec<DiffNode> = [
        "web2.example.com",
        "db1.example.com",
        "web1.example.com",
        "db2.example.com",
        "mail1.example.com",
    ]
    .iter()
    .map(|n| DiffNode {
        name: n.to_string(),
        facts: f.clone(),
    })
    .collect();
    // No private key: secrets compare by ciphertext.
    let d = env_diff(
        &old,
        &new,
        "production",
        &nodes,
        troupe_compiler::SecretKeys::new(),
        Some(common::fleet()),
    );
    let by: std::collections::BTreeMap<&str, &troupe_compiler::env_diff::NodeDiff> =
        d.nodes.iter().map(|n| (n.node.as_str(), n)).collect();
    let order: Vec<&str> = d.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(
        order,
        [
            "db1.example.com",
            "db2.example.com",
            "mail1.example.com",
            "web1.example.com",
            "web2.example.com"
        ]
    );
    assert_eq!(by["mail1.example.com"].status, NodeStatus::Unchanged);
    for w in ["web1.example.com", "web2.example.com"] {
        assert_eq!(by[w].status, NodeStatus::Changed);
        assert_eq!((by[w].added, by[w].removed, by[w].changed), (0, 0, 1));
        assert!(
            by[w].text.contains("+Maintenance tonight."),
            "{}",
            by[w].text
        );
    }
    let db1 = by["db1.example.com"];
    assert_eq!(db1.status, NodeStatus::Changed);
    assert!(db1.changed >= 1 && db1.changes.iter().all(|c| c.sensitive));
    assert_eq!(by["db2.example.com"].status, NodeStatus::Broken);
    assert!(
        by["db2.example.com"]
            .new_error
            .as_deref()
            .unwrap()
            .contains("etc/not-absolute")
    );
    assert_eq!(d.summary.nodes, 5);
    assert_eq!(d.summary.nodes_changed, 4);
    assert_eq!(d.summary.nodes_failing, 1);
    assert_eq!(d.summary.added, 0);
    assert_eq!(d.summary.removed, 0);
    assert_eq!(d.summary.modified, 2 + db1.changed);
    assert_eq!(d.summary.exit_code(), 2);
    assert_eq!(d.secrets_by_ciphertext, ["production"]);
    let json = serde_json::to_string(&d).unwrap();
    let text = troupe_compiler::env_diff::render(&serde_json::to_value(&d).unwrap());
    for shown in [&json, &text] {
        assert!(!shown.contains("rotated-pw-42"));
        assert!(!shown.contains("example-db-password"));
    }
    assert!(
        text.contains("== db2.example.com: does NOT compile with the new code"),
        "{text}"
    );
    assert!(
        text.contains("environment production: 4 of 5 nodes change: 0 resources added, 0 removed,"),
        "{text}"
    );
    assert!(
        text.contains("1 node does NOT compile with the new code"),
        "{text}"
    );

    // The same code on both sides: nothing changes, exit 0.
    let same = env_diff(
        &old,
        &old,
        "production",
        &nodes[..1],
        common::keys(),
        Some(common::fleet()),
    );
    assert_eq!(same.summary.nodes_changed, 0);
    assert_eq!(same.summary.exit_code(), 0);
    assert!(same.secrets_by_ciphertext.is_empty());
}
