//! The run report an agent writes after every converge and sends to the
//! master: per-resource outcome, events, timings, and where the catalog came
//! from. Values of sensitive resources never appear in it.

use crate::ResourceId;
use serde::{Deserialize, Serialize};

/// Outcome of one resource in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Already in the desired state.
    Unchanged,
    /// Changed (or, in noop, would have changed).
    Changed,
    /// The provider failed.
    Failed,
    /// Not attempted because something it requires failed.
    Skipped,
    /// Out of sync but left alone: the resource is `noop = true` in its
    /// catalog. Its events say what would change; nothing did.
    Noop,
}

/// One resource's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceReport {
    pub id: ResourceId,
    pub status: Status,
    /// What changed, or what failed and why (redacted for sensitive ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Unified diff for file content changes (redacted for sensitive ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// True when a notify/subscribe edge refreshed it in this run.
    #[serde(default)]
    pub refreshed: bool,
    pub duration_ms: u64,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Unique run id (also the rollback handle).
    pub run_id: String,
    pub node: String,
    /// RFC 3339 start time.
    pub started: String,
    pub duration_ms: u64,
    pub noop: bool,
    /// [`crate::Catalog::hash`] of the catalog converged.
    pub catalog_hash: String,
    pub environment: String,
    pub code_version: String,
    /// True when the master was unreachable and the cached catalog was used.
    pub from_cache: bool,
    /// `--tags` of a partial run: only resources carrying one of them were
    /// converged (and reported). Empty for a whole run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    pub resources: Vec<ResourceReport>,
}

impl Report {
    /// Counts by status: (unchanged, changed, failed, skipped). Noop
    /// resources are in none of them: see [`Report::noop_pending`].
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for r in &self.resources {
            match r.status {
                Status::Unchanged => c.0 += 1,
                Status::Changed => c.1 += 1,
                Status::Failed => c.2 += 1,
                Status::Skipped => c.3 += 1,
                Status::Noop => {}
            }
        }
        c
    }

    /// Resources left out of sync because they are `noop` in the catalog.
    pub fn noop_pending(&self) -> usize {
        self.resources
            .iter()
            .filter(|r| r.status == Status::Noop)
            .count()
    }

    /// `puppet agent --detailed-exitcodes` semantics: 0 nothing changed,
    /// 2 changes, 4 failures, 6 both. Skipped resources count as failures.
    pub fn exit_code(&self) -> i32 {
        let (_, changed, failed, skipped) = self.counts();
        (if changed > 0 { 2 } else { 0 }) | (if failed + skipped > 0 { 4 } else { 0 })
    }
}
