//! What changes for a host between two catalogs: resources added, removed
//! and changed, attribute by attribute, with file contents as unified diffs.
//! Sensitive resources never show their values.

use serde_json::Value as J;
use std::collections::BTreeMap;
use std::fmt::Write;
use troupe_catalog::{Catalog, Kind, Resource};

/// Summary counts of a diff.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
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

/// The attributes of a resource as JSON, content replaced by its text, and
/// every value redacted when the resource is sensitive.
fn attrs(cat: &Catalog, r: &Resource) -> BTreeMap<String, J> {
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
        let text = cat
            .contents
            .get(&c.sha256)
            .and_then(|b| b.bytes())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        map.insert("content".into(), J::String(text));
    }
    map.insert(
        "requires".into(),
        J::Array(r.requires.iter().map(|i| J::String(i.0.clone())).collect()),
    );
    map.insert(
        "notify".into(),
        J::Array(r.notify.iter().map(|i| J::String(i.0.clone())).collect()),
    );
    if r.sensitive {
        for (k, v) in map.iter_mut() {
            if !matches!(k.as_str(), "path" | "name" | "requires" | "notify") {
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

/// A human-readable diff from `old` to `new`, and its counts.
pub fn diff(old: &Catalog, new: &Catalog) -> (String, DiffStats) {
    let mut out = String::new();
    let mut stats = DiffStats::default();
    let old_by: BTreeMap<_, _> = old.resources.iter().map(|r| (&r.id, r)).collect();
    let new_by: BTreeMap<_, _> = new.resources.iter().map(|r| (&r.id, r)).collect();
    for (id, r) in &old_by {
        if !new_by.contains_key(id) {
            stats.removed += 1;
            let _ = writeln!(out, "- {id}{}", src(r));
        }
    }
    for (id, r) in &new_by {
        let Some(o) = old_by.get(id) else {
            stats.added += 1;
            let _ = writeln!(out, "+ {id}{}", src(r));
            for (k, v) in attrs(new, r) {
                if k == "content" || v == J::Array(vec![]) {
                    continue;
                }
                let _ = writeln!(out, "    {k} = {}", show(&v));
            }
            continue;
        };
        let a = attrs(old, o);
        let b = attrs(new, r);
        if a == b && o.sensitive == r.sensitive {
            continue;
        }
        stats.changed += 1;
        let _ = writeln!(out, "~ {id}{}", src(r));
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in keys {
            let (x, y) = (a.get(k), b.get(k));
            if x == y {
                continue;
            }
            let sensitive = o.sensitive || r.sensitive;
            if k == "content" && !sensitive {
                let xs = x.and_then(J::as_str).unwrap_or("");
                let ys = y.and_then(J::as_str).unwrap_or("");
                let text = similar::TextDiff::from_lines(xs, ys);
                let _ = writeln!(out, "    content:");
                for line in text
                    .unified_diff()
                    .context_radius(2)
                    .header("old", "new")
                    .to_string()
                    .lines()
                {
                    let _ = writeln!(out, "      {line}");
                }
            } else if sensitive {
                let _ = writeln!(out, "    {k}: {REDACTED} changed");
            } else {
                let _ = writeln!(
                    out,
                    "    {k}: {} -> {}",
                    x.map(show).unwrap_or_else(|| "(unset)".into()),
                    y.map(show).unwrap_or_else(|| "(unset)".into())
                );
            }
        }
    }
    (out, stats)
}

fn src(r: &Resource) -> String {
    r.source
        .as_ref()
        .map(|s| format!("  ({s})"))
        .unwrap_or_default()
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
            if k == "content" && !r.sensitive {
                let n = v.as_str().map(str::len).unwrap_or(0);
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
