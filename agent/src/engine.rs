//! The converge engine: applies a validated catalog in its order.
//!
//! - A resource whose requirement (or notifier) failed or was skipped is
//!   skipped, transitively, and its report says which one.
//! - A resource that changed refreshes its notify targets; each target is
//!   visited once, after all its notifiers, so it refreshes at most once.
//! - File writes are staged and committed in batches before any resource
//!   that is not a plain file/directory (and at the end).

use crate::providers::{self, Ctx};
use std::collections::HashMap;
use std::time::Instant;
use troupe_catalog::report::{ResourceReport, Status};
use troupe_catalog::{Catalog, ResourceId};

/// Converges `catalog` with `ctx`; returns one report per resource, in order.
pub fn converge(catalog: &Catalog, ctx: &mut Ctx) -> Vec<ResourceReport> {
    let n = catalog.resources.len();
    let pos: HashMap<&ResourceId, usize> = catalog
        .resources
        .iter()
        .enumerate()
        .map(|(i, r)| (&r.id, i))
        .collect();
    // notifiers[i]: resources that notify i.
    let mut notifiers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, r) in catalog.resources.iter().enumerate() {
        for t in &r.notify {
            if let Some(&j) = pos.get(t) {
                notifiers[j].push(i);
            }
        }
    }
    for r in &catalog.resources {
        if let troupe_catalog::Kind::File { path, .. }
        | troupe_catalog::Kind::Directory { path, .. }
        | troupe_catalog::Kind::Symlink { path, .. } = &r.kind
            && let Ok(p) = ctx.host_path(path)
        {
            ctx.managed.insert(p);
        }
    }
    let mut reports: Vec<ResourceReport> = Vec::with_capacity(n);
    let mut bad = vec![false; n]; // failed or skipped
    let mut changed = vec![false; n];
    for (i, r) in catalog.resources.iter().enumerate() {
        let start = Instant::now();
        ctx.current = i;
        let blockers: Vec<&ResourceId> = r
            .requires
            .iter()
            .filter_map(|d| pos.get(d).copied())
            .chain(notifiers[i].iter().copied())
            .filter(|&j| bad[j])
            .map(|j| &catalog.resources[j].id)
            .collect();
        if !blockers.is_empty() {
            bad[i] = true;
            let events = blockers
                .iter()
                .map(|b| {
                    let why = if reports[pos[b]].status == Status::Failed {
                        "failed"
                    } else {
                        "was skipped"
                    };
                    format!("skipped: {b} {why}")
                })
                .collect();
            reports.push(ResourceReport {
                id: r.id.clone(),
                status: Status::Skipped,
                events,
                diff: None,
                refreshed: false,
                duration_ms: 0,
            });
            continue;
        }
        if !providers::is_batchable(r) {
            for (j, msg) in ctx.commit() {
                fail_late(&mut reports, &mut bad, j, msg);
            }
            // A staged write that failed to commit blocks this one too.
            if r.requires
                .iter()
                .filter_map(|d| pos.get(d))
                .any(|&j| bad[j])
            {
                bad[i] = true;
                reports.push(ResourceReport {
                    id: r.id.clone(),
                    status: Status::Skipped,
                    events: vec!["skipped: a requirement failed to commit".into()],
                    diff: None,
                    refreshed: false,
                    duration_ms: 0,
                });
                continue;
            }
        }
        let refresh = notifiers[i].iter().any(|&j| changed[j]);
        let rep = match providers::apply(ctx, r, refresh) {
            Ok(o) => {
                changed[i] = o.changed;
                ResourceReport {
                    id: r.id.clone(),
                    status: if o.changed {
                        Status::Changed
                    } else {
                        Status::Unchanged
                    },
                    events: o.events,
                    diff: o.diff,
                    refreshed: o.refreshed,
                    duration_ms: start.elapsed().as_millis() as u64,
                }
            }
            Err(e) => {
                bad[i] = true;
                let msg = format!("{e:#}");
                tracing::warn!("{}: {msg}", r.id);
                ResourceReport {
                    id: r.id.clone(),
                    status: Status::Failed,
                    events: vec![msg],
                    diff: None,
                    refreshed: false,
                    duration_ms: start.elapsed().as_millis() as u64,
                }
            }
        };
        reports.push(rep);
    }
    for (j, msg) in ctx.commit() {
        fail_late(&mut reports, &mut bad, j, msg);
    }
    reports
}

fn fail_late(reports: &mut [ResourceReport], bad: &mut [bool], j: usize, msg: String) {
    if let Some(r) = reports.get_mut(j) {
        r.status = Status::Failed;
        r.events.push(msg);
        r.diff = None;
    }
    if let Some(b) = bad.get_mut(j) {
        *b = true;
    }
}
