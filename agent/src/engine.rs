//! The converge engine: applies a validated catalog in its order.
//!
//! - A resource whose requirement (or notifier) failed or was skipped is
//!   skipped, transitively, and its report says which one.
//! - A resource that changed refreshes its notify targets; each target is
//!   visited once, after all its notifiers, so it refreshes at most once.
//! - File writes are staged and committed in batches before any resource
//!   that is not a plain file/directory, every
//!   [`MAX_BATCH_FILES`](providers::MAX_BATCH_FILES) files, and at the end
//!   ([`Ctx::finish`]: one `syncfs` per batch before its renames, one after
//!   the last).
//! - With tags (`run --tags`), only resources carrying one of them are
//!   converged and reported; as in Puppet, what they depend on is not
//!   applied unless tagged too, and does not block them.
//! - A resource marked `noop` in the catalog is only checked: its report
//!   says what would change ([`Status::Noop`]) and it refreshes nothing.

use crate::providers::{self, Ctx};
use std::time::Instant;
use troupe_catalog::LazyCatalog;
use troupe_catalog::report::{ResourceReport, Status};

/// Converges `catalog` with `ctx`; returns one report per resource, in order.
pub fn converge(catalog: &LazyCatalog, ctx: &mut Ctx) -> Vec<ResourceReport> {
    converge_tagged(catalog, ctx, &[])
}

/// True when `r` carries one of `tags` (every resource when `tags` is empty).
pub fn selected(r: &troupe_catalog::Resource, tags: &[String]) -> bool {
    tags.is_empty() || r.tags.iter().any(|t| tags.contains(t))
}

/// Fills `ctx.managed` (the host paths of every file, directory and link
/// of the catalog) when something will ask: a purging directory, or a
/// noop check of a parent the catalog would create.
fn note_managed(catalog: &LazyCatalog, ctx: &mut Ctx) {
    if !(ctx.noop || catalog.any_noop() || catalog.any_purge()) {
        return;
    }
    for r in catalog.resources() {
        if let troupe_catalog::Kind::File { path, .. }
        | troupe_catalog::Kind::Directory { path, .. }
        | troupe_catalog::Kind::Symlink { path, .. } = &r.kind
            && let Ok(p) = ctx.host_path(path)
        {
            ctx.managed.insert(p);
        }
    }
}

/// [`converge`] for the resources carrying one of `tags` only (all when
/// empty); the others are neither converged nor reported. Resources are
/// decoded one at a time, as they are reached.
pub fn converge_tagged(
    catalog: &LazyCatalog,
    ctx: &mut Ctx,
    tags: &[String],
) -> Vec<ResourceReport> {
    let n = catalog.len();
    note_managed(catalog, ctx);
    let id_of = |j: usize| {
        catalog
            .resource(j)
            .map(|r| r.id)
            .unwrap_or_else(|| troupe_catalog::ResourceId(format!("resource #{j}")))
    };
    let mut reports: Vec<ResourceReport> = Vec::with_capacity(n);
    let mut bad = vec![false; n]; // failed or skipped
    let mut changed = vec![false; n];
    // Index of each resource's report (None: not selected).
    let mut slot: Vec<Option<usize>> = vec![None; n];
    for i in 0..n {
        // Validated when decoded: every resource decodes again.
        let Some(r) = catalog.resource(i) else {
            continue;
        };
        if !selected(&r, tags) {
            continue;
        }
        slot[i] = Some(reports.len());
        let start = Instant::now();
        // Staged writes name the report to fail if their commit fails.
        ctx.current = reports.len();
        let blockers: Vec<usize> = catalog
            .requires_of(i)
            .iter()
            .map(|&j| j as usize)
            .chain(catalog.notifiers_of(i))
            .filter(|&j| bad[j])
            .collect();
        if !blockers.is_empty() {
            bad[i] = true;
            let events = blockers
                .iter()
                .map(|&b| {
                    let failed = slot[b].is_some_and(|k| reports[k].status == Status::Failed);
                    let why = if failed { "failed" } else { "was skipped" };
                    format!("skipped: {} {why}", id_of(b))
                })
                .collect();
            reports.push(ResourceReport {
                id: r.id,
                status: Status::Skipped,
                events,
                diff: None,
                refreshed: false,
                duration_ms: 0,
            });
            continue;
        }
        if !providers::is_batchable(&r) {
            for (j, msg) in ctx.commit() {
                fail_late(&mut reports, &mut bad, &slot, j, msg);
            }
            // A staged write that failed to commit blocks this one too.
            if catalog.requires_of(i).iter().any(|&j| bad[j as usize]) {
                bad[i] = true;
                reports.push(ResourceReport {
                    id: r.id,
                    status: Status::Skipped,
                    events: vec!["skipped: a requirement failed to commit".into()],
                    diff: None,
                    refreshed: false,
                    duration_ms: 0,
                });
                continue;
            }
        }
        let refresh = catalog.notifiers_of(i).any(|j| changed[j]);
        // A noop resource in a normal run: look, change nothing.
        let own_noop = r.noop && !ctx.noop;
        ctx.noop |= own_noop;
        let applied = providers::apply(ctx, &r, refresh);
        if own_noop {
            ctx.noop = false;
        }
        let rep = match applied {
            Ok(mut o) => {
                changed[i] = o.changed && !own_noop;
                // Held until the end of the run, one per resource: no slack.
                o.events.shrink_to_fit();
                o.events.iter_mut().for_each(String::shrink_to_fit);
                ResourceReport {
                    id: r.id,
                    status: match (o.changed, own_noop) {
                        (true, true) => Status::Noop,
                        (true, false) => Status::Changed,
                        (false, _) => Status::Unchanged,
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
                    id: r.id,
                    status: Status::Failed,
                    events: vec![msg],
                    diff: None,
                    refreshed: false,
                    duration_ms: start.elapsed().as_millis() as u64,
                }
            }
        };
        reports.push(rep);
        if ctx.staged.len() >= providers::MAX_BATCH_FILES {
            for (j, msg) in ctx.commit_batch() {
                fail_late(&mut reports, &mut bad, &slot, j, msg);
            }
        }
    }
    for (j, msg) in ctx.finish() {
        fail_late(&mut reports, &mut bad, &slot, j, msg);
    }
    reports
}

/// Marks report `k` (of the `k`-th converged resource) failed after its
/// staged write failed to commit.
fn fail_late(
    reports: &mut [ResourceReport],
    bad: &mut [bool],
    slot: &[Option<usize>],
    k: usize,
    msg: String,
) {
    if let Some(r) = reports.get_mut(k) {
        r.status = Status::Failed;
        r.events.push(msg);
        r.diff = None;
    }
    if let Some(i) = slot.iter().position(|s| *s == Some(k)) {
        bad[i] = true;
    }
}
