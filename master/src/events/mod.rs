//! Events: what happened on the fleet that a person may want to hear about
//! (a node's run failed or recovered, a node went stale, a CSR waits, a
//! certificate is about to expire, code was promoted or failed to load, a
//! command was refused, a release started, moved on, failed on a host,
//! finished or was aborted).
//!
//! - [`Event`]: one event, the JSON shape of docs/json.md ("Events").
//! - [`Events`]: the master's bus, held in `MasterState::events`. [`Events::emit`]
//!   never blocks and never fails: it stamps the event, keeps it in a
//!   bounded ring of recent events ([`Events::recent`], for the HTTP API and
//!   the dashboard), broadcasts it to live subscribers ([`Events::subscribe`],
//!   for server-sent events), and hands it to each configured sink's bounded
//!   queue (`sinks`: webhook, email, exec), dropping and counting it when a
//!   queue is full. A slow or dead sink therefore never delays a run, a CSR
//!   or a deploy.
//! - [`deploys`]: the release logs of `troupe deploy`, stored under
//!   `DATA/deploys/`.
//!
//! Events are emitted where they happen: report intake
//! (`catalog_service`), the CA service (CSR pending), the code poller and
//! the admin socket (code), orchestration (refusals, deploy records), and a
//! scan task (`scan`: stale nodes, expiring certificates).

pub mod cli;
pub mod config;
pub mod deploys;
pub mod hooks;
pub mod record;
pub mod scan;
pub mod sinks;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::broadcast;
pub use troupe_events::{Event, EventKind, now_rfc3339};

/// How many recent events the master keeps in memory.
pub const RECENT_EVENTS: usize = 1000;
/// Live subscribers that fall this far behind lose the oldest events
/// (they see `RecvError::Lagged`).
const BROADCAST_CAPACITY: usize = 1024;

/// Which recent events to list ([`Events::recent`]).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only these kinds (empty: all).
    pub kinds: Vec<EventKind>,
    pub node: Option<String>,
    pub release: Option<String>,
    /// Only events with a larger `seq`.
    pub since: Option<u64>,
    /// At most this many, the newest (0: no limit).
    pub limit: usize,
}

/// The master's event bus (see the module documentation).
pub struct Events {
    seq: AtomicU64,
    recent: Mutex<VecDeque<Event>>,
    live: broadcast::Sender<Event>,
    sinks: sinks::Sinks,
    /// Keys of events raised recently ([`Events::first_in`]).
    raised: Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// The release logs (`DATA/deploys/`).
    pub deploys: deploys::DeployStore,
}

impl Events {
    /// A bus with no sinks (tests, or no `[events]` in master.toml),
    /// keeping release logs under `data_dir/deploys/`.
    pub fn new(data_dir: &std::path::Path) -> Events {
        Events::with_sinks(data_dir, sinks::Sinks::none())
    }

    /// A bus that hands every event to `sinks`.
    pub fn with_sinks(data_dir: &std::path::Path, sinks: sinks::Sinks) -> Events {
        Events {
            seq: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
            live: broadcast::channel(BROADCAST_CAPACITY).0,
            sinks,
            raised: Mutex::new(std::collections::HashMap::new()),
            deploys: deploys::DeployStore::new(data_dir.join(deploys::DEPLOYS_DIR)),
        }
    }

    /// Publishes an event: numbered, kept in the recent ring, broadcast,
    /// queued for each sink whose filter takes it. Never blocks.
    pub fn emit(&self, mut event: Event) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            event.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            if recent.len() == RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        tracing::info!(kind = %event.kind, seq = event.seq, "event: {}", event.text);
        // No subscriber is not an error.
        let _ = self.live.send(event.clone());
        self.sinks.offer(&event, &self.deploys);
    }

    /// Live events from now on. A subscriber that falls behind by more
    /// than 1024 events gets `Lagged` and then the newer ones.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// Recent events matching `q`, oldest first.
    pub fn recent(&self, q: &EventQuery) -> Vec<Event> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Event> = recent
            .iter()
            .filter(|e| q.kinds.is_empty() || q.kinds.contains(&e.kind))
            .filter(|e| q.node.is_none() || e.node == q.node)
            .filter(|e| q.release.is_none() || e.release == q.release)
            .filter(|e| q.since.is_none_or(|s| e.seq > s))
            .cloned()
            .collect();
        if q.limit > 0 && out.len() > q.limit {
            out.drain(..out.len() - q.limit);
        }
        out
    }

    /// True when `key` was not raised within the last `secs` seconds (and
    /// remembers it now): for events that would otherwise repeat (a CSR
    /// resubmitted, a certificate expiring every scan).
    pub fn first_in(&self, key: &str, secs: u64) -> bool {
        let now = std::time::Instant::now();
        let window = std::time::Duration::from_secs(secs);
        let mut raised = self.raised.lock().unwrap_or_else(|p| p.into_inner());
        if raised.len() > 10_000 {
            raised.retain(|_, t| now.duration_since(*t) < window);
        }
        match raised.get(key) {
            Some(t) if now.duration_since(*t) < window => false,
            _ => {
                raised.insert(key.to_string(), now);
                true
            }
        }
    }

    /// The configured sinks (their names and counters).
    pub fn sinks(&self) -> &sinks::Sinks {
        &self.sinks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_base::error_code::ErrorCode;

    #[test]
    fn kinds_round_trip_by_name() {
        for k in EventKind::ALL {
            let j = serde_json::to_string(&k).unwrap();
            assert_eq!(j, format!("\"{}\"", k.as_str()));
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("run-failed"), None);
    }

    #[test]
    fn refusals_and_failures_carry_a_typed_code() {
        use hooks::status_code;
        assert_eq!(status_code("ok"), None);
        assert_eq!(status_code("failed"), Some(ErrorCode::Failed));
        // Every refusal code an agent (`Refusal::code`) or the master gives
        // maps to a specific code, never `unclassified`.
        for c in [
            "malformed",
            "ttl_too_long",
            "unknown_signer",
            "no_signers",
            "bad_signature",
            "not_yet_valid",
            "expired",
            "replayed",
            "not_targeted",
            "unknown_action",
            "bad_argument",
            "policy_denied",
            "replay_store_error",
            "audit_error",
            "error",
            "timeout",
            "no_answer",
        ] {
            let code = status_code(c).unwrap();
            assert_ne!(code, ErrorCode::Unclassified, "{c}");
        }
        assert_eq!(
            status_code("policy_denied"),
            Some(ErrorCode::PermissionDenied)
        );
        assert_eq!(
            status_code("bad_argument"),
            Some(ErrorCode::InvalidArgument)
        );
        assert_eq!(status_code("replayed"), Some(ErrorCode::Conflict));
        assert_eq!(status_code("timeout"), Some(ErrorCode::Unavailable));
        assert_eq!(
            status_code("from_a_newer_agent"),
            Some(ErrorCode::Unclassified)
        );
        let e = Event::new(EventKind::CommandRefused, "x").code(ErrorCode::PermissionDenied);
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j["code"], "permission_denied");
        assert_eq!(serde_json::from_value::<Event>(j).unwrap(), e);
        let j = serde_json::to_value(Event::new(EventKind::RunRecovered, "y")).unwrap();
        assert!(j.get("code").is_none(), "{j}");
    }

    #[tokio::test]
    async fn the_bus_numbers_keeps_and_broadcasts() {
        let d = tempfile::tempdir().unwrap();
        let bus = Events::new(d.path());
        let mut rx = bus.subscribe();
        for i in 0..(RECENT_EVENTS + 5) {
            bus.emit(Event::new(EventKind::RunFailed, format!("n{i}")).node(format!("n{i}")));
        }
        bus.emit(Event::new(EventKind::NodeStale, "late").node("x"));
        let got = rx.recv().await.unwrap();
        assert_eq!((got.seq, got.text.as_str()), (1, "n0"));
        let all = bus.recent(&EventQuery::default());
        assert_eq!(all.len(), RECENT_EVENTS);
        assert_eq!(all.last().unwrap().seq, RECENT_EVENTS as u64 + 6);
        let stale = bus.recent(&EventQuery {
            kinds: vec![EventKind::NodeStale],
            ..Default::default()
        });
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].node.as_deref(), Some("x"));
        let last2 = bus.recent(&EventQuery {
            limit: 2,
            ..Default::default()
        });
        assert_eq!(last2.len(), 2);
        assert_eq!(last2[1].text, "late");
        let since = bus.recent(&EventQuery {
            since: Some(RECENT_EVENTS as u64 + 4),
            ..Default::default()
        });
        assert_eq!(since.len(), 2);
        let j = serde_json::to_value(&stale[0]).unwrap();
        assert_eq!(j["kind"], "node_stale");
        assert!(j.get("release").is_none());
        assert!(j["time"].as_str().unwrap().ends_with('Z'));
    }
}
