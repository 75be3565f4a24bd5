//! The compiled catalog's bytes are what agents and the master compare (its
//! hash): a change to how the compiler builds a catalog (issue 20 item 4:
//! fewer allocations, contents collected and sorted at the end, edges by
//! index) must not change them. This pins the canonical encoding of a
//! generated tree of ~1,300 resources that exercises for_each, nested
//! directories (automatic parent edges through unmanaged levels), owners
//! and groups, explicit require/before/notify/subscribe, a service after
//! its profile's packages, shared file bodies (one content entry for many
//! files), a source file and a template. The golden tests pin the shipped
//! roles the same way, byte for byte.

mod common;

use common::write;
use troupe_catalog::{Catalog, Kind};
use troupe_compiler::{CompileOptions, ModuleTree};

/// The SHA-256 of the canonical encoding, computed with the compiler before
/// the issue 20 item 4 changes (commit a2672ad).
const PINNED: &str = "sha256:a2f91e5ccfeaa542ddfe750f297e742f4a7efca9f513e51edb4870623b70f79b";

fn tree() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "site.toml", "[[node]]\nmatch = \"*\"\nrole = \"big\"\n");
    let e = "environments/production";
    write(
        r,
        &format!("{e}/hierarchy.toml"),
        "[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
    );
    write(r, &format!("{e}/data/common.toml"), "[files]\nn = 1200\n");
    write(
        r,
        &format!("{e}/roles/big.toml"),
        "include = [\"files\", \"svc\"]\n",
    );
    write(
        r,
        &format!("{e}/templates/app.conf.j2"),
        "# {{ node.certname }}\n{% for i in range(vars.k) %}\nline {{ i }}\n{% endfor %}\n",
    );
    write(r, &format!("{e}/files/motd"), "welcome\n");
    write(
        r,
        &format!("{e}/profiles/files.toml"),
        r#"[params]
n = 10

[directory."/srv/app"]
mode = "0755"
owner = "app"

[directory."/srv/app/d{{ item }}"]
for_each = "{{ range(40) }}"
mode = "0750"
group = "app"

[file."/srv/app/d{{ item % 40 }}/f{{ item }}.txt"]
for_each = "{{ range(params.n) }}"
mode = "0644"
content = "body {{ item % 97 }}\n"
owner = "app"

[file."/srv/app/d{{ item % 40 }}/deep/er/g{{ item }}"]
for_each = "{{ range(30) }}"
content = "deep {{ item }}\n"

[file."/srv/app/app.conf"]
template = "app.conf.j2"
vars = { k = 5 }
notify = "service[nginx]"

[file."/etc/motd"]
source = "motd"
before = "exec[reload]"

[symlink."/srv/current"]
target = "/srv/app"
"#,
    );
    write(
        r,
        &format!("{e}/profiles/svc.toml"),
        r#"[group.app]
gid = 900

[user.app]
uid = 900
group = "app"
groups = ["adm"]

[group.adm]

[package.nginx]

[package.redis]
ensure = "latest"

[service.nginx]
ensure = "running"
enable = true
subscribe = ["file[/srv/app/d1/f1.txt]", "file[/srv/app/d2/f2.txt]"]

[exec.reload]
command = ["/bin/true"]
cwd = "/srv/app"
user = "app"
refreshonly = true
subscribe = "file[/srv/app/app.conf]"
require = "package[redis]"

[cron.tidy]
command = "/bin/true"
user = "app"
minute = "*/5"
"#,
    );
    d
}

fn compile(d: &tempfile::TempDir) -> Catalog {
    let tree = ModuleTree::load(d.path()).unwrap_or_else(|e| panic!("{}", e.render()));
    tree.compile(
        "big1.example.com",
        &common::facts("debian12"),
        &CompileOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{}", e.render()))
}

#[test]
fn compiled_bytes_are_pinned() {
    let d = tree();
    let cat = compile(&d);
    // 1 + 40 + 1,200 + 30 + 2 files + 1 symlink + 8 in `svc`.
    assert_eq!(cat.resources.len(), 1282);
    // 97 shared bodies + 30 deep + template + motd.
    assert_eq!(cat.contents.len(), 129);
    let files = cat
        .resources
        .iter()
        .filter(|r| matches!(r.kind, Kind::File { .. }))
        .count();
    assert_eq!(files, 1232);
    // The same bytes every time, and the agent's decode gives it back.
    let bytes = cat.to_canonical_json();
    assert_eq!(compile(&d).to_canonical_json(), bytes);
    assert_eq!(Catalog::from_json(&bytes).unwrap(), cat);
    let hash = cat.hash();
    if std::env::var_os("TROUPE_PRINT_HASH").is_some() {
        println!("{hash}");
    }
    assert_eq!(
        hash, PINNED,
        "the compiled catalog's bytes changed (agents would see a new catalog)"
    );
}
