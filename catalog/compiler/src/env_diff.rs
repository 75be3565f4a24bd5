//! A fleet-wide diff (`troupe env diff`, in the tradition of
//! octocatalog-diff): every node of an environment compiled with its stored
//! facts against two module trees (the code serving and the new code), and
//! per node what would change, with a summary.
//!
//! Built on [`crate::diff`]: resources are compared on every attribute,
//! sensitive ones included, and shown with names and content hashes only.
//! No private key is needed: a secret whose key is not loaded is compared
//! by its ciphertext ([`SecretKeys::with_ciphertext_preview`]).

use crate::diff::{self, Change};
use crate::{CompileOptions, ModuleTree, SecretKeys};
use serde_json::Value as J;

/// A node to compile: its name and its last stored facts (stable facts,
/// as the master gives the compiler).
#[derive(Debug, Clone)]
pub struct DiffNode {
    pub name: String,
    pub facts: J,
}

/// What the new code does to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeStatus {
    /// Both compile to the same catalog.
    Unchanged,
    /// Both compile; the catalogs differ.
    Changed,
    /// The serving code does not compile for the node; the new code does.
    Fixed,
    /// The serving code compiles; the new code does not.
    Broken,
    /// Neither compiles.
    Failing,
}

/// One node's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeDiff {
    pub node: String,
    pub status: NodeStatus,
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    /// Every resource added, removed or changed (values of sensitive
    /// resources redacted).
    pub changes: Vec<Change>,
    /// The human-readable diff (as `troupe catalog diff` prints it).
    pub text: String,
    /// Why the serving code does not compile for this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_error: Option<String>,
    /// Why the new code does not compile for this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_error: Option<String>,
}

/// The counts over all nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Nodes compiled.
    pub nodes: usize,
    /// Nodes whose catalog changes (changed, fixed or broken).
    pub nodes_changed: usize,
    /// Nodes the new code does not compile for (broken or failing).
    pub nodes_failing: usize,
    /// Resources added, removed and modified, summed over the nodes.
    pub added: usize,
    pub removed: usize,
    pub modified: usize,
}

impl Summary {
    /// `troupe env diff`'s exit status: 0 when nothing changes and every
    /// node compiles under the new code, 2 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.nodes_changed == 0 && self.nodes_failing == 0 {
            0
        } else {
            2
        }
    }

    /// One line: "3 of 5 nodes change: 1 resource added, ...".
    pub fn line(&self) -> String {
        let s = |n: usize| if n == 1 { "" } else { "s" };
        let mut text = format!(
            "{} of {} node{} change{}: {} resource{} added, {} removed, {} modified",
            self.nodes_changed,
            self.nodes,
            s(self.nodes),
            if self.nodes_changed == 1 { "s" } else { "" },
            self.added,
            s(self.added),
            self.removed,
            self.modified
        );
        if self.nodes_failing > 0 {
            text.push_str(&format!(
                "; {} node{} do{} NOT compile with the new code",
                self.nodes_failing,
                s(self.nodes_failing),
                if self.nodes_failing == 1 { "es" } else { "" }
            ));
        }
        text
    }
}

/// The whole result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EnvDiff {
    pub environment: String,
    pub summary: Summary,
    pub nodes: Vec<NodeDiff>,
    /// Environments whose secrets were compared by ciphertext (their
    /// private key was not loaded).
    pub secrets_by_ciphertext: Vec<String>,
}

/// Compiles every node in `environment` with `old` and with `new` and
/// diffs the two catalogs. Nodes are reported sorted by name. `keys` may
/// lack the environment's private key: secrets are then compared by
/// ciphertext.
pub fn env_diff(
    old: &ModuleTree,
    new: &ModuleTree,
    environment: &str,
    nodes: &[DiffNode],
    keys: SecretKeys,
    fleet: Option<std::sync::Arc<crate::fleet::FleetSnapshot>>,
) -> EnvDiff {
    let opts = CompileOptions {
        environment: Some(environment.to_owned()),
        extensions: Default::default(),
        secrets: keys.with_ciphertext_preview(),
        fleet,
    };
    let mut sorted: Vec<&DiffNode> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted.dedup_by(|a, b| a.name == b.name);
    let mut summary = Summary::default();
    let mut out = Vec::new();
    let mut by_ciphertext = std::collections::BTreeSet::new();
    for n in sorted {
        let mut compile = |t: &ModuleTree| {
            t.compile(&n.name, &n.facts, &opts).inspect(|c| {
                if String::from_utf8_lossy(&c.to_canonical_json())
                    .contains(crate::secrets::CIPHERTEXT_MARK)
                {
                    by_ciphertext.insert(c.environment.clone());
                }
            })
        };
        let a = compile(old);
        let b = compile(new);
        let mut d = NodeDiff {
            node: n.name.clone(),
            status: NodeStatus::Unchanged,
            added: 0,
            removed: 0,
            changed: 0,
            changes: vec![],
            text: String::new(),
            old_error: None,
            new_error: None,
        };
        match (a, b) {
            (Ok(a), Ok(b)) => {
                let changes = diff::changes(&a, &b);
                let stats = diff::stats(&changes);
                if !stats.is_empty() {
                    d.status = NodeStatus::Changed;
                    d.text = diff::diff(&a, &b).0;
                }
                d.added = stats.added;
                d.removed = stats.removed;
                d.changed = stats.changed;
                d.changes = changes;
            }
            (Err(e), Ok(_)) => {
                d.status = NodeStatus::Fixed;
                d.old_error = Some(e.render());
            }
            (Ok(_), Err(e)) => {
                d.status = NodeStatus::Broken;
                d.new_error = Some(e.render());
            }
            (Err(x), Err(y)) => {
                d.status = NodeStatus::Failing;
                d.old_error = Some(x.render());
                d.new_error = Some(y.render());
            }
        }
        summary.nodes += 1;
        if matches!(
            d.status,
            NodeStatus::Changed | NodeStatus::Fixed | NodeStatus::Broken
        ) {
            summary.nodes_changed += 1;
        }
        if matches!(d.status, NodeStatus::Broken | NodeStatus::Failing) {
            summary.nodes_failing += 1;
        }
        summary.added += d.added;
        summary.removed += d.removed;
        summary.modified += d.changed;
        out.push(d);
    }
    EnvDiff {
        environment: environment.to_owned(),
        summary,
        nodes: out,
        secrets_by_ciphertext: by_ciphertext.into_iter().collect(),
    }
}

/// The text `troupe env diff` prints for a result (JSON as the master sent
/// it, or [`EnvDiff`] serialised): per node what changes, then the summary.
pub fn render(doc: &J) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for env in doc["secrets_by_ciphertext"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            out,
            "note: the key of environment `{}` is not loaded; its secrets are compared by ciphertext",
            env.as_str().unwrap_or("?")
        );
    }
    for n in doc["nodes"].as_array().into_iter().flatten() {
        let name = n["node"].as_str().unwrap_or("?");
        let count = |k: &str| n[k].as_u64().unwrap_or(0);
        match n["status"].as_str().unwrap_or("") {
            "unchanged" => {}
            "changed" => {
                let _ = writeln!(
                    out,
                    "== {name}: {} added, {} removed, {} changed",
                    count("added"),
                    count("removed"),
                    count("changed")
                );
                for line in n["text"].as_str().unwrap_or("").lines() {
                    let _ = writeln!(out, "  {line}");
                }
            }
            status => {
                let what = match status {
                    "fixed" => "compiles with the new code (the serving code fails)",
                    "broken" => "does NOT compile with the new code",
                    _ => "compiles with neither the serving nor the new code",
                };
                let _ = writeln!(out, "== {name}: {what}");
                for key in ["old_error", "new_error"] {
                    if let Some(e) = n[key].as_str() {
                        let side = if key == "old_error" { "serving" } else { "new" };
                        let _ = writeln!(out, "  {side} code:");
                        for line in e.lines() {
                            let _ = writeln!(out, "    {line}");
                        }
                    }
                }
            }
        }
    }
    let s = &doc["summary"];
    let count = |k: &str| s[k].as_u64().unwrap_or(0) as usize;
    let summary = Summary {
        nodes: count("nodes"),
        nodes_changed: count("nodes_changed"),
        nodes_failing: count("nodes_failing"),
        added: count("added"),
        removed: count("removed"),
        modified: count("modified"),
    };
    let _ = writeln!(
        out,
        "environment {}: {}",
        doc["environment"].as_str().unwrap_or("?"),
        summary.line()
    );
    out
}
