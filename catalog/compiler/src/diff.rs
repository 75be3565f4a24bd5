//! What changes for a host between two catalogs: resources added, removed
//! and changed, attribute by attribute, with file contents as unified diffs.
//! Sensitive resources never show their values.

use serde_json::Value as J;
use std::collections::BTreeMap;
use std::fmt::Write;
use troupe_catalog::{Catalog, Kind, Resource};

/// Summary counts of a diff.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DiffStats {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
}

impl DiffStats {
    pub fn is_empty(&self) -> bool {
        self.added == 0 && self.removed == 0 && self.changed == 0
    }
}

const REDACTED: &str = "<sensitive>";

/// Attributes shown even for a sensitive resource: they name it and place
/// it, and never carry a secret.
const PUBLIC_ATTRS: &[&str] = &["path", "name", "requires", "notify", "tags", "sensitive"];

/// What happened to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Added,
    Removed,
    Changed,
}

/// One attribute that differs. Values of sensitive resources are
/// `"<sensitive>"`; file content is `sha256:HEX` (its hash, never its text).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AttrChange {
    pub name: String,
    pub old: Option<J>,
    pub new: Option<J>,
}

/// One resource added, removed or changed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Change {
    pub id: String,
    pub action: Action,
    /// Sensitive in the old or the new catalog.
    pub sensitive: bool,
    /// Where it is declared (the new catalog's, else the old one's).
    pub source: Option<String>,
    /// Added: the new attributes; changed: what differs; removed: empty.
    pub attributes: Vec<AttrChange>,
    /// A unified diff of the file content, when both sides are text and
    /// neither is sensitive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_diff: Option<String>,
}

/// Every attribute of a resource as JSON, unredacted: the kind's fields,
/// file content as `sha256:HEX`, edges, tags and the sensitive flag. Two
/// resources are the same exactly when these maps are equal.
fn raw_attrs(r: &Resource) -> BTreeMap<String, J> {
    let mut map = BTreeMap::new();
    if let Ok(J::Object(m)) = serde_json::to_value(&r.kind) {
        for (k, v) in m {
            if k == "type" {
                continue;
            }
            map.insert(k, v);
        }
    }
    if let Kind::File {
        content: Some(c), ..
    } = &r.kind
    {
        map.insert("content".into(), J::String(format!("sha256:{}", c.sha256)));
    }
    let ids = |v: &[troupe_catalog::ResourceId]| {
        J::Array(v.iter().map(|i| J::String(i.0.clone())).collect())
    };
    map.insert("requires".into(), ids(&r.requires));
    map.insert("notify".into(), ids(&r.notify));
    map.insert(
        "tags".into(),
        J::Array(r.tags.iter().map(|t| J::String(t.clone())).collect()),
    );
    map.insert("sensitive".into(), J::Bool(r.sensitive));
    map
}

/// A value as it may be shown: sensitive values are redacted, except file
/// content hashes.
fn shown(name: &str, v: &J, sensitive: bool) -> J {
    if !sensitive || PUBLIC_ATTRS.contains(&name) || name == "content" {
        v.clone()
    } else {
        J::String(REDACTED.into())
    }
}

fn text_of(cat: &Catalog, r: &Resource) -> Option<String> {
    let Kind::File {
        content: Some(c), ..
    } = &r.kind
    else {
        return None;
    };
    let bytes = cat.contents.get(&c.sha256).and_then(|b| b.bytes())?;
    String::from_utf8(bytes).ok()
}

/// The attributes of a resource as JSON for display, content replaced by
/// its text, and every value redacted when the resource is sensitive.
fn attrs(cat: &Catalog, r: &Resource) -> BTreeMap<String, J> {
    let mut map = raw_attrs(r);
    map.remove("sensitive");
    map.remove("tags");
    if let Some(text) = text_of(cat, r) {
        map.insert("content".into(), J::String(text));
    }
    if r.sensitive {
        for (k, v) in map.iter_mut() {
            if !PUBLIC_ATTRS.contains(&k.as_str()) {
                *v = J::String(REDACTED.into());
            }
        }
    }
    map
}

fn show(v: &J) -> String {
    match v {
        J::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// Every resource added, removed or changed from `old` to `new`, compared
/// on all their attributes (sensitive ones included, by value or content
/// hash), with what may be shown of each difference.
pub fn changes(old: &Catalog, new: &Catalog) -> Vec<Change> {
    let mut out = Vec::new();
    let old_by: BTreeMap<_, _> = old.resources.iter().map(|r| (&r.id, r)).collect();
    let new_by: BTreeMap<_, _> = new.resources.iter().map(|r| (&r.id, r)).collect();
    for (id, r) in &old_by {
        if !new_by.contains_key(id) {
            out.push(Change {
                id: id.0.clone(),
                action: Action::Removed,
                sensitive: r.sensitive,
                source: r.source.as_ref().map(ToString::to_string),
                attributes: vec![],
                content_diff: None,
            });
        }
    }
    for (id, r) in &new_by {
        let b = raw_attrs(r);
        let Some(o) = old_by.get(id) else {
            let attributes = b
                .iter()
                .filter(|(k, v)| **v != J::Array(vec![]) && *k != "sensitive")
                .map(|(k, v)| AttrChange {
                    name: k.clone(),
                    old: None,
                    new: Some(shown(k, v, r.sensitive)),
                })
                .collect();
            out.push(Change {
                id: id.0.clone(),
                action: Action::Added,
                sensitive: r.sensitive,
                source: r.source.as_ref().map(ToString::to_string),
                attributes,
                content_diff: None,
            });
            continue;
        };
        let a = raw_attrs(o);
        if a == b {
            continue;
        }
        let sensitive = o.sensitive || r.sensitive;
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let attributes = keys
            .into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| AttrChange {
                name: k.clone(),
                old: a.get(k).map(|v| shown(k, v, sensitive)),
                new: b.get(k).map(|v| shown(k, v, sensitive)),
            })
            .collect::<Vec<_>>();
        let content_diff = if sensitive || !attributes.iter().any(|c| c.name == "content") {
            None
        } else {
            match (text_of(old, o), text_of(new, r)) {
                (Some(x), Some(y)) => Some(
                    similar::TextDiff::from_lines(&x, &y)
                        .unified_diff()
                        .context_radius(2)
                        .header("old", "new")
                        .to_string(),
                ),
                _ => None,
            }
        };
        out.push(Change {
            id: id.0.clone(),
            action: Action::Changed,
            sensitive,
            source: r.source.as_ref().map(ToString::to_string),
            attributes,
            content_diff,
        });
    }
    out
}

/// The counts of a list of changes.
pub fn stats(changes: &[Change]) -> DiffStats {
    let mut s = DiffStats::default();
    for c in changes {
        match c.action {
            Action::Added => s.added += 1,
            Action::Removed => s.removed += 1,
            Action::Changed => s.changed += 1,
        }
    }
    s
}

/// A human-readable diff from `old` to `new`, and its counts.
pub fn diff(old: &Catalog, new: &Catalog) -> (String, DiffStats) {
    let list = changes(old, new);
    let mut out = String::new();
    for c in &list {
        let src = c
            .source
            .as_ref()
            .map(|s| format!("  ({s})"))
            .unwrap_or_default();
        let mark = match c.action {
            Action::Added => '+',
            Action::Removed => '-',
            Action::Changed => '~',
        };
        let flag = if c.sensitive { " [sensitive]" } else { "" };
        let _ = writeln!(out, "{mark} {}{flag}{src}", c.id);
        for a in &c.attributes {
            match c.action {
                Action::Added => {
                    if let Some(v) = &a.new {
                        let _ = writeln!(out, "    {} = {}", a.name, show(v));
                    }
                }
                _ if a.name == "content" && c.content_diff.is_some() => {
                    let _ = writeln!(out, "    content:");
                    for line in c.content_diff.as_deref().unwrap_or("").lines() {
                        let _ = writeln!(out, "      {line}");
                    }
                }
                _ => {
                    let v =
                        |x: &Option<J>| x.as_ref().map(show).unwrap_or_else(|| "(unset)".into());
                    if a.old
                        .as_ref()
                        .is_some_and(|x| *x == J::String(REDACTED.into()))
                        && a.new
                            .as_ref()
                            .is_some_and(|x| *x == J::String(REDACTED.into()))
                    {
                        let _ = writeln!(out, "    {}: {REDACTED} changed", a.name);
                    } else {
                        let _ = writeln!(out, "    {}: {} -> {}", a.name, v(&a.old), v(&a.new));
                    }
                }
            }
        }
    }
    let stats = stats(&list);
    (out, stats)
}

/// One line per resource, for `troupe catalog compile` without `--json`.
/// Sensitive values are redacted.
pub fn human(cat: &Catalog) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# catalog for {} (environment {}, code {}, {} resources, {})",
        cat.node,
        cat.environment,
        cat.code_version.get(..12).unwrap_or(&cat.code_version),
        cat.resources.len(),
        cat.hash()
    );
    for r in &cat.resources {
        let mut line = format!("{}", r.id);
        let mut fields: Vec<(String, J)> = attrs(cat, r).into_iter().collect();
        fields.sort_by_key(|(k, _)| (k != "ensure", k.clone()));
        for (k, v) in fields {
            if matches!(k.as_str(), "path" | "name" | "requires" | "notify")
                || v == J::Array(vec![])
            {
                continue;
            }
            if k == "content"
                && !r.sensitive
                && let Kind::File {
                    content: Some(c), ..
                } = &r.kind
            {
                let n = c.size;
                let _ = write!(line, " content=<{n} bytes>");
                continue;
            }
            if k == "mode"
                && let Some(m) = v.as_u64()
            {
                let _ = write!(line, " mode={m:04o}");
                continue;
            }
            let _ = write!(line, " {k}={}", show(&v));
        }
        if r.sensitive {
            line.push_str(" [sensitive]");
        }
        if !r.requires.is_empty() {
            let ids: Vec<&str> = r.requires.iter().map(|i| i.0.as_str()).collect();
            let _ = write!(line, " requires=[{}]", ids.join(", "));
        }
        if !r.notify.is_empty() {
            let ids: Vec<&str> = r.notify.iter().map(|i| i.0.as_str()).collect();
            let _ = write!(line, " notify=[{}]", ids.join(", "));
        }
        let _ = writeln!(out, "{line}");
    }
    out
}
