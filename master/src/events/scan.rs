//! The periodic scan (`events.scan_interval`) for events no request
//! causes: nodes that went stale since the last scan (`node_stale`; nodes
//! already stale when the master starts are not announced) and valid
//! certificates expiring within `events.cert_expiry_days`
//! (`cert_expiring`, once a day per certificate).

use super::{Event, EventKind};
use crate::state::MasterState;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Starts the scan task.
pub fn spawn(
    state: Arc<MasterState>,
    interval: Duration,
    expiry_days: u32,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        let mut stale: Option<BTreeSet<String>> = None;
        loop {
            tick.tick().await;
            let st = state.clone();
            let before = stale.take();
            match tokio::task::spawn_blocking(move || scan(&st, before, expiry_days)).await {
                Ok(now) => stale = Some(now),
                Err(e) => tracing::error!("the event scan failed: {e}"),
            }
        }
    })
}

/// One scan; returns the stale nodes now.
pub fn scan(
    state: &MasterState,
    before: Option<BTreeSet<String>>,
    expiry_days: u32,
) -> BTreeSet<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::catalog_service::flush_checkins(state);
    let nodes = state.store.nodes().unwrap_or_default();
    let stale: BTreeSet<String> = nodes
        .iter()
        .filter(|n| {
            n.last_checkin > 0 && crate::store::is_stale(n, now, state.run_interval_secs, 3)
        })
        .map(|n| n.name.clone())
        .collect();
    if let Some(before) = before {
        for n in nodes
            .iter()
            .filter(|n| stale.contains(&n.name) && !before.contains(&n.name))
        {
            let ago = now.saturating_sub(n.last_checkin);
            state.events.emit(
                Event::new(
                    EventKind::NodeStale,
                    format!("{}: stale (no check-in for {ago} s)", n.name),
                )
                .node(n.name.clone())
                .environment(n.environment.clone())
                .data(serde_json::json!({
                    "last_checkin": humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(n.last_checkin)).to_string(),
                    "seconds_since": ago,
                    "run_interval_secs": state.run_interval_secs,
                })),
            );
        }
    }
    let horizon = now + u64::from(expiry_days) * 86_400;
    if let Ok(certs) = state.ca.list(troupe_pki::ListFilter::Default) {
        for c in certs.iter().filter(|c| c.state == "signed") {
            let Ok(t) = humantime::parse_rfc3339(&c.time) else {
                continue;
            };
            let expires = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            if expires > horizon || !state.events.first_in(&format!("cert:{}", c.id), 86_400) {
                continue;
            }
            let days = expires.saturating_sub(now) / 86_400;
            state.events.emit(
                Event::new(
                    EventKind::CertExpiring,
                    format!(
                        "{}: certificate expires {} (in {days} day(s)); the agent renews it, or run `troupe-agent renew`",
                        c.host, c.time
                    ),
                )
                .node(c.host.clone())
                .data(serde_json::json!({
                    "serial": c.id,
                    "not_after": c.time,
                    "days_left": days,
                })),
            );
        }
    }
    stale
}
