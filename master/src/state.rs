//! The state shared by every service of the running master.
//!
//! Later services (catalog, reports, orchestration) add their own fields
//! here and their tonic services to [`crate::daemon::router`].

use crate::catalog_cache::CatalogCache;
use crate::code::CodeManager;
use crate::metrics::Metrics;
use crate::store::NodeStore;
use crate::tls::ServerTls;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use troupe_base::audit::AuditLog;
use troupe_compiler::SecretKeys;
use troupe_pki::Authority;

/// Everything a request handler may need. Built once by the daemon and
/// shared as `Arc<MasterState>`.
pub struct MasterState {
    /// The data directory (`--data`).
    pub data_dir: PathBuf,
    /// The module tree (`--modules`), if given.
    pub modules: Option<PathBuf>,
    /// The certificate authority.
    pub ca: Arc<Authority>,
    /// The live TLS server configuration (reloaded when the CRL changes).
    pub tls: Arc<ServerTls>,
    /// The module code (`None` without `--modules`: no catalogs served).
    pub code: Option<Arc<CodeManager>>,
    /// Check-ins, facts and reports (`DATA/nodes.redb`).
    pub store: Arc<NodeStore>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Compiled catalogs, what each node was served, pending check-ins.
    pub catalogs: CatalogCache,
    /// Bounds concurrent compiles (one per core by default).
    pub compile_slots: tokio::sync::Semaphore,
    /// Secret keys per environment (`DATA/keys/`).
    pub secrets: SecretKeys,
    /// Whether an agent may ask for another environment than its own.
    pub allow_agent_environment: bool,
    /// Agents' run interval, to tell stale nodes (seconds).
    pub run_interval_secs: u64,
    /// Refused requests by authenticated nodes (`DATA/access-audit.log`,
    /// hash-chained).
    pub access_audit: Mutex<AuditLog>,
    /// Bumped whenever certificates change (revoke, clean, renew: every
    /// CRL reload): long-lived calls (orchestration streams) re-check
    /// their peer's certificate against the CA and end when it is no
    /// longer valid.
    pub identities: tokio::sync::watch::Sender<u64>,
    /// The event bus, its sinks, and the release logs (`DATA/deploys/`).
    pub events: Arc<crate::events::Events>,
}

/// One refused request in the access audit log.
#[derive(Debug, Serialize)]
struct AccessRefusal<'a> {
    node: &'a str,
    call: &'a str,
    refused: &'a str,
}

impl MasterState {
    /// Rebuilds the TLS configuration with the CA's current CRL, so a
    /// revocation takes effect on the next handshake.
    pub fn reload_crl(&self) {
        if let Err(e) = self.tls.reload(&self.ca) {
            tracing::error!("could not reload the TLS configuration with the new CRL: {e:#}");
        }
        self.identities.send_modify(|g| *g = g.wrapping_add(1));
        // A revoked or cleaned host leaves the fleet data.
        self.catalogs.fleet.invalidate();
    }

    /// Records a refused request from an authenticated node (asking for
    /// another node's catalog, content or reports, ...).
    pub fn audit_refusal(&self, node: &str, call: &str, why: &str) {
        tracing::warn!(node, call, "refused: {why}");
        let entry = AccessRefusal {
            node,
            call,
            refused: why,
        };
        let mut log = self.access_audit.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = log.append(&entry) {
            tracing::error!("could not write the access audit log: {e}");
        }
    }

    /// Updates the gauges computed from state (before each scrape).
    pub fn refresh_gauges(&self, m: &Metrics) {
        if let Ok(pending) = self.ca.list(troupe_pki::ListFilter::Pending) {
            m.csrs_pending.set(pending.len() as i64);
        }
        if let Ok(nodes) = self.store.nodes() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let stale = nodes
                .iter()
                .filter(|n| crate::store::is_stale(n, now, self.run_interval_secs, 3))
                .count();
            m.nodes.set(nodes.len() as i64);
            m.nodes_stale.set(stale as i64);
        }
    }

    /// Counts a gRPC request in the metrics by its outcome.
    pub fn count<T>(&self, method: &str, result: &Result<T, tonic::Status>) {
        let outcome = match result {
            Ok(_) => "ok".to_owned(),
            Err(s) => format!("{:?}", s.code()).to_lowercase(),
        };
        self.metrics.request(method, &outcome);
    }
}
