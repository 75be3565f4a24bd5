//! Property tests: compilation is deterministic, and no module text, however
//! odd, makes the loader or the compiler panic.

mod common;

use proptest::prelude::*;
use std::path::Path;
use troupe_compiler::{CompileOptions, ModuleTree};

fn minimal_tree(root: &Path, profile: &str) {
    common::write(root, "site.toml", "[[node]]\nmatch = \"*\"\nrole = \"r\"\n");
    let e = "environments/production";
    common::write(
        root,
        &format!("{e}/hierarchy.toml"),
        "[[level]]\nname = \"node\"\npath = \"nodes/{{ node.hostname }}.toml\"\n[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
    );
    common::write(
        root,
        &format!("{e}/data/common.toml"),
        "[p]\nx = 1\nlist = [\"a\", \"b\"]\n",
    );
    common::write(
        root,
        &format!("{e}/templates/t.j2"),
        "{{ params | tojson }} {{ node.certname }}\n",
    );
    common::write(root, &format!("{e}/files/f"), "static\n");
    common::write(root, &format!("{e}/roles/r.toml"), "include = [\"p\"]\n");
    common::write(root, &format!("{e}/profiles/p.toml"), profile);
}

/// TOML-ish text built from the language's own words, so the generator
/// reaches deep into the compiler rather than stopping at the parser.
fn module_text() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "ensure",
        "content",
        "template",
        "source",
        "mode",
        "owner",
        "group",
        "validate",
        "purge",
        "target",
        "enable",
        "uid",
        "groups",
        "command",
        "user",
        "timeout",
        "creates",
        "onlyif",
        "refreshonly",
        "returns",
        "minute",
        "when",
        "for_each",
        "require",
        "before",
        "notify",
        "subscribe",
        "tags",
        "sensitive",
        "vars",
        "bogus",
    ]);
    let value = prop::sample::select(vec![
        "\"present\"",
        "\"absent\"",
        "\"latest\"",
        "\"0644\"",
        "644",
        "true",
        "false",
        "[]",
        "[\"/bin/true\"]",
        "\"/bin/true\"",
        "\"{{ item }}\"",
        "\"{{ params.x }}\"",
        "\"{{ params.list }}\"",
        "\"params.list\"",
        "\"t.j2\"",
        "\"f\"",
        "\"../x\"",
        "\"file[/a]\"",
        "\"exec[b]\"",
        "\"package[c]\"",
        "\"{{ lookup('p.x') }}\"",
        "\"{{ lookup('nope') }}\"",
        "\"{% for %}\"",
        "{ a = 1 }",
        "\"running\"",
        "\"*/5\"",
        "-1",
        "1.5",
        "1979-05-27",
    ]);
    let ty = prop::sample::select(vec![
        "file",
        "directory",
        "symlink",
        "package",
        "service",
        "user",
        "group",
        "exec",
        "cron",
        "nope",
    ]);
    let title = prop::sample::select(vec![
        "/a",
        "/a/b",
        "b",
        "c",
        "{{ item }}",
        "rel/path",
        "/a/../b",
    ]);
    let resource =
        (ty, title, prop::collection::vec((key, value), 0..5)).prop_map(|(t, ti, attrs)| {
            let mut s = format!("[{t}.\"{ti}\"]\n");
            for (k, v) in attrs {
                s.push_str(&format!("{k} = {v}\n"));
            }
            s
        });
    let header = prop::sample::select(vec![
        "",
        "[params]\nx = 0\nlist = { default = [], merge = \"deep\" }\n",
        "include = [\"p\"]\n",
        "include = [\"q\"]\n",
        "[params]\ny = { doc = \"needed\" }\n",
    ]);
    (header, prop::collection::vec(resource, 0..6))
        .prop_map(|(h, rs)| format!("{h}\n{}", rs.join("\n")))
}

fn facts_for(family: &str) -> serde_json::Value {
    serde_json::json!({
        "hostname": "h", "os": { "family": family, "name": family, "release": { "full": "1", "major": "1" } }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_text(text in "\\PC{0,300}") {
        let d = tempfile::tempdir().unwrap();
        minimal_tree(d.path(), &text);
        if let Ok(t) = ModuleTree::load(d.path()) {
            let _ = t.compile("web1.example.com", &facts_for("Debian"), &CompileOptions::default());
        }
    }

    #[test]
    fn never_panics_on_language_like_text(text in module_text()) {
        let d = tempfile::tempdir().unwrap();
        minimal_tree(d.path(), &text);
        match ModuleTree::load(d.path()) {
            Ok(t) => {
                let r = t.compile("web1.example.com", &facts_for("Debian"), &CompileOptions::default());
                if let Ok(c) = &r {
                    // Whatever compiles is a valid catalog.
                    prop_assert!(c.validate().is_ok());
                    // And compiling again gives the same bytes.
                    let again = t.compile("web1.example.com", &facts_for("Debian"), &CompileOptions::default()).unwrap();
                    prop_assert_eq!(c.to_canonical_json(), again.to_canonical_json());
                }
            }
            Err(e) => {
                // Every load error of a file says where.
                let s = e.to_string();
                prop_assert!(!s.is_empty());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// The shipped tree, any host name, any of the fixture distros: two
    /// compiles (one from a freshly loaded tree) give byte-identical
    /// catalogs and hashes.
    #[test]
    fn compilation_is_deterministic(
        name in "(web|db|mon|bastion)[0-9]{0,3}",
        distro in prop::sample::select(vec!["debian12", "ubuntu2204", "ubuntu2404", "rocky9"]),
        dev in any::<bool>(),
    ) {
        let host = if dev { format!("{name}.dev.example.com") } else { format!("{name}.example.com") };
        let facts = common::facts(distro);
        let a = common::shipped().compile(&host, &facts, &common::opts()).unwrap();
        let b = common::shipped().compile(&host, &facts, &common::opts()).unwrap();
        prop_assert_eq!(a.to_canonical_json(), b.to_canonical_json());
        prop_assert_eq!(a.hash(), b.hash());
        prop_assert!(a.validate().is_ok());
    }
}
