//! Issue 19 end to end: a master compiles a tree with a defined type
//! (two instances), tags and a noop resource; a real agent converges only
//! the tagged part over mutual TLS, the master stores that partial report,
//! and `troupe-agent resource` reads the result back.

use std::path::Path;
use troupe_tests::{Master, MasterOptions};

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn tree(dir: &Path) {
    write(
        dir,
        "site.toml",
        "[[node]]\nmatch = \"*\"\nrole = \"web\"\n",
    );
    let e = "environments/production";
    write(
        dir,
        &format!("{e}/hierarchy.toml"),
        "[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
    );
    write(
        dir,
        &format!("{e}/data/common.toml"),
        "[www.sites.shop]\nserver_name = \"shop.example.com\"\n[www.sites.blog]\nserver_name = \"blog.example.com\"\n",
    );
    write(
        dir,
        &format!("{e}/roles/web.toml"),
        "include = [\"base\", \"www\"]\n",
    );
    write(
        dir,
        &format!("{e}/profiles/base.toml"),
        "[file.\"/etc/motd\"]\ncontent = \"managed\\n\"\nmode = \"0644\"\n\n[file.\"/etc/issue\"]\ncontent = \"issue\\n\"\nnoop = true\n",
    );
    write(
        dir,
        &format!("{e}/profiles/www.toml"),
        "[params]\nsites = { default = {} }\n\n[directory.\"/srv/www\"]\nmode = \"0755\"\n\n[\"www::site\".\"{{ key }}\"]\nfor_each = \"params.sites\"\nparams = \"{{ value }}\"\n",
    );
    write(
        dir,
        &format!("{e}/types/www/site.toml"),
        "tags = [\"pages\"]\n[params]\nserver_name = { doc = \"required\" }\n\n[directory.\"/srv/www/{{ title }}\"]\nmode = \"0755\"\n\n[file.\"/srv/www/{{ title }}/index.html\"]\ncontent = \"<h1>{{ params.server_name }}</h1>\\n\"\nmode = \"0644\"\n",
    );
}

#[test]
fn tagged_run_of_defined_type_instances_through_a_master() {
    let t = tempfile::tempdir().unwrap();
    let modules = t.path().join("modules");
    tree(&modules);
    let m = Master::start_with(MasterOptions {
        modules: Some(modules),
        extra_args: vec![],
    });
    let psk = m.psk("web1");
    m.bootstrap("web1", Some(&psk)).assert_success();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("srv/www")).unwrap();
    std::fs::write(root.join("etc/issue"), "hand-made\n").unwrap();
    let run = |extra: &[&str]| {
        let mut a = vec![
            "--once",
            "--root",
            root.to_str().unwrap(),
            "--output",
            "json",
        ];
        a.extend_from_slice(extra);
        let out = m.agent_cmd("web1", "run", &a);
        let r: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no report ({e}): {}\n{}\n{}",
                out.stdout,
                out.stderr,
                m.log()
            )
        });
        (out.code, r)
    };
    // Only the instances' resources (tag `pages` from the type).
    let (code, r) = run(&["--tags", "pages"]);
    assert_eq!(code, Some(2), "{r}");
    let ids: Vec<&str> = r["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "directory[/srv/www/blog]",
            "file[/srv/www/blog/index.html]",
            "directory[/srv/www/shop]",
            "file[/srv/www/shop/index.html]"
        ]
    );
    assert_eq!(r["tags"], serde_json::json!(["pages"]));
    assert_eq!(
        std::fs::read_to_string(root.join("srv/www/shop/index.html")).unwrap(),
        "<h1>shop.example.com</h1>\n"
    );
    assert!(
        !root.join("etc/motd").exists(),
        "an untagged resource was applied"
    );
    // The master stored the partial report as it was.
    let stored = troupe_tests::run(
        std::process::Command::new(troupe_tests::troupe_bin())
            .args(["report", "web1", "--json", "--data"])
            .arg(&m.data),
    );
    stored.assert_success();
    let stored: serde_json::Value = serde_json::from_str(&stored.stdout).unwrap();
    assert_eq!(stored["tags"], serde_json::json!(["pages"]));
    assert_eq!(stored["resources"].as_array().unwrap().len(), 4);

    let human = troupe_tests::run(
        std::process::Command::new(troupe_tests::troupe_bin())
            .args(["report", "web1", "--data"])
            .arg(&m.data),
    );
    assert!(
        human
            .stdout
            .contains("partial run: only resources tagged pages\n4 resources: 4 changed, 0 failed"),
        "{}",
        human.stdout
    );

    // A whole run: motd converged, the noop issue only reported.
    let (code, r) = run(&[]);
    assert_eq!(code, Some(2), "{r}");
    let issue = r["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "file[/etc/issue]")
        .unwrap();
    assert_eq!(issue["status"], "noop", "{r}");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/issue")).unwrap(),
        "hand-made\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/motd")).unwrap(),
        "managed\n"
    );
    let (code, _) = run(&[]);
    assert_eq!(code, Some(0), "the noop resource alone is not a change");
    let human = troupe_tests::run(
        std::process::Command::new(troupe_tests::troupe_bin())
            .args(["report", "web1", "--data"])
            .arg(&m.data),
    );
    assert!(
        human
            .stdout
            .contains(" 0 changed, 1 would change (noop), 0 failed"),
        "{}",
        human.stdout
    );
    assert!(
        human
            .stdout
            .contains("would change (noop) file[/etc/issue]"),
        "{}",
        human.stdout
    );

    // Inspection reads the converged page back.
    let o = m.agent(&[
        "resource",
        "file",
        "/srv/www/blog/index.html",
        "--root",
        root.to_str().unwrap(),
    ]);
    o.assert_success();
    assert!(
        o.stdout.starts_with(
            "[file.\"/srv/www/blog/index.html\"]\nensure = \"present\"\nmode = \"0644\"\n"
        ),
        "{}",
        o.stdout
    );
}
