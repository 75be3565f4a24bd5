//! Partial runs: `run --tags` converges only tagged resources (their
//! untagged dependencies are not applied, as in Puppet), and a resource
//! marked `noop` in the catalog is only reported as would-change.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use troupe_catalog::report::Status;
use troupe_catalog::{Catalog, Kind, Resource};

fn tagged(mut r: Resource, tags: &[&str]) -> Resource {
    r.tags = tags.iter().map(|t| t.to_string()).collect();
    r
}

/// /etc/app (base) ← /etc/app/site.conf (nginx) → notify exec[reload]
/// (nginx); /etc/motd (tls); /etc/issue (base) → notify exec[reload].
fn catalog() -> Catalog {
    let mut c = new_catalog();
    c.resources
        .push(tagged(dir("/etc/app", 0o755), &["web", "base"]));
    let mut site = file(&mut c, "/etc/app/site.conf", b"server {}\n", 0o644);
    site.requires.push(id("directory", "/etc/app"));
    site.notify.push(id("exec", "reload"));
    c.resources
        .push(tagged(site, &["web", "nginx", "nginx::vhost"]));
    let motd = file(&mut c, "/etc/motd", b"hello\n", 0o644);
    c.resources.push(tagged(motd, &["web", "tls"]));
    let mut issue = file(&mut c, "/etc/issue", b"issue\n", 0o644);
    issue.notify.push(id("exec", "reload"));
    c.resources.push(tagged(issue, &["web", "base"]));
    let mut reload = exec("reload", &["/bin/sh", "-c", "echo refreshed >> /count"]);
    if let Kind::Exec { refreshonly, .. } = &mut reload.kind {
        *refreshonly = true;
    }
    c.resources.push(tagged(reload, &["web", "nginx"]));
    c.validate().unwrap();
    c
}

fn ids(r: &troupe_catalog::report::Report) -> Vec<&str> {
    r.resources.iter().map(|x| x.id.0.as_str()).collect()
}

#[test]
fn tags_converge_only_tagged_resources_not_their_dependencies() {
    let env = Env::new();
    let c = catalog();
    // The directory exists with another mode: a tagged run leaves it so.
    std::fs::create_dir_all(env.p("/etc/app")).unwrap();
    std::fs::set_permissions(env.p("/etc/app"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, r, _) = env.run(&c, &["--tags", "nginx"]);
    assert_eq!(code, 2, "{r:?}");
    assert_eq!(r.tags, ["nginx"]);
    assert_eq!(ids(&r), ["file[/etc/app/site.conf]", "exec[reload]"]);
    assert_eq!(
        std::fs::read(env.p("/etc/app/site.conf")).unwrap(),
        b"server {}\n"
    );
    assert_eq!(
        mode_of(&env.p("/etc/app")),
        0o700,
        "an untagged dependency was applied"
    );
    assert!(!env.p("/etc/motd").exists() && !env.p("/etc/issue").exists());
    // The tagged notifier changed: the tagged exec refreshed once.
    assert_eq!(
        std::fs::read_to_string(env.p("/count")).unwrap(),
        "refreshed\n"
    );

    // Two tags (comma separated), one of them a defined type's name.
    let (code, r, _) = env.run(&c, &["--tags", "tls,nginx::vhost"]);
    assert_eq!(code, 2, "{r:?}");
    assert_eq!(ids(&r), ["file[/etc/app/site.conf]", "file[/etc/motd]"]);
    assert_eq!(status_of(&r, "file[/etc/motd]").status, Status::Changed);
    assert_eq!(
        status_of(&r, "file[/etc/app/site.conf]").status,
        Status::Unchanged
    );

    // An untagged notifier (issue) is not applied, so it refreshes nothing.
    let (code, r, _) = env.run(&c, &["--tags", "nginx"]);
    assert_eq!(code, 0, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(env.p("/count")).unwrap(),
        "refreshed\n"
    );

    // An untagged requirement that would fail does not block a tagged run.
    let mut broken = c.clone();
    if let Kind::Directory { owner, .. } = &mut broken.resources[0].kind {
        *owner = Some("nosuchuser".into());
    }
    let (code, r, _) = env.run(&broken, &["--tags", "nginx"]);
    assert_eq!(code, 0, "{r:?}");
    let (code, r, _) = env.run(&broken, &[]);
    assert_eq!(code, 6, "{r:?}");
    assert_eq!(
        status_of(&r, "file[/etc/app/site.conf]").status,
        Status::Skipped
    );

    // A whole run then converges the rest.
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2, "{r:?}");
    assert!(r.tags.is_empty());
    assert_eq!(mode_of(&env.p("/etc/app")), 0o755);
    assert_eq!(std::fs::read(env.p("/etc/issue")).unwrap(), b"issue\n");

    // A tag nothing carries: nothing converged, a warning naming the tags there.
    let (code, r, out) = env.run(&c, &["--tags", "nosuch"]);
    assert_eq!(code, 0);
    assert!(r.resources.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tags nosuch: no resource of the catalog carries any of them"),
        "{err}"
    );
    assert!(err.contains("base, nginx, nginx::vhost, tls, web"), "{err}");
    // The human summary names the tags.
    let cat = env.write_catalog(&c);
    let o = env.cmd(
        &["run", "--once", "--tags", "tls"],
        &["--catalog", cat.to_str().unwrap()],
        &[],
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("(--tags tls): 1 resources, 0 changed"),
        "{text}"
    );
    // A malformed tag is a usage error.
    let o = env.cmd(
        &["run", "--once", "--tags", "Nginx"],
        &["--catalog", cat.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"Nginx\" is not a tag"));
}

#[test]
fn a_noop_resource_is_reported_as_would_change_and_left_alone() {
    let env = Env::new();
    let mut c = catalog();
    for r in &mut c.resources {
        r.tags = Default::default();
    }
    std::fs::create_dir_all(env.p("/etc")).unwrap();
    let (code, _, _) = env.run(&c, &[]);
    assert_eq!(code, 2);
    assert_eq!(
        std::fs::read_to_string(env.p("/count")).unwrap(),
        "refreshed\n"
    );
    // Hand edits to both notifiers; issue becomes noop.
    std::fs::write(env.p("/etc/issue"), "hand edit\n").unwrap();
    std::fs::write(env.p("/etc/motd"), "drift\n").unwrap();
    c.resources[3].noop = true;
    let (code, r, _) = env.run(&c, &[]);
    // motd was repaired (exit 2); issue was only reported.
    assert_eq!(code, 2, "{r:?}");
    let issue = status_of(&r, "file[/etc/issue]");
    assert_eq!(issue.status, Status::Noop);
    assert!(
        issue.diff.as_deref().unwrap().contains("-hand edit"),
        "{issue:?}"
    );
    assert_eq!(std::fs::read(env.p("/etc/issue")).unwrap(), b"hand edit\n");
    assert_eq!(std::fs::read(env.p("/etc/motd")).unwrap(), b"hello\n");
    assert_eq!(r.noop_pending(), 1);
    assert_eq!(r.counts(), (3, 1, 0, 0));
    // Its notify target was not refreshed for it.
    assert_eq!(
        std::fs::read_to_string(env.p("/count")).unwrap(),
        "refreshed\n"
    );
    // Only the noop resource out of sync: nothing changed, exit 0; the
    // human output says would change.
    let cat = env.write_catalog(&c);
    let o = env.cmd(
        &["run", "--once"],
        &["--catalog", cat.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(0));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("would change (noop) file[/etc/issue]"),
        "{text}"
    );
    assert!(
        text.contains("0 changed, 1 would change (noop), 0 failed"),
        "{text}"
    );
    assert_eq!(std::fs::read(env.p("/etc/issue")).unwrap(), b"hand edit\n");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.state().join("last_run_summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["resources"]["noop"], 1);
    assert_eq!(summary["resources"]["changed"], 0);
    // Without noop it is repaired.
    c.resources[3].noop = false;
    let (code, _, _) = env.run(&c, &[]);
    assert_eq!(code, 2);
    assert_eq!(std::fs::read(env.p("/etc/issue")).unwrap(), b"issue\n");
}
