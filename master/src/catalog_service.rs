//! The `troupe.v1.Catalog` and `troupe.v1.Reports` services: the pull loop.
//!
//! Every call is mutual TLS; the node is the one named by the caller's
//! verified certificate ([`crate::tls::peer_identity`]), never anything in a
//! request. A node gets its own catalog only, and only the file bodies that
//! its own current catalog references; anything else is refused and audited.
//!
//! Compiled catalogs are cached by (node, stable facts, code version): when
//! the agent already holds the current catalog the reply is "unchanged"
//! without resending it. The cache ([`crate::catalog_cache`]) is bounded in
//! bytes and keeps no catalog JSON: an agent that lacks the current catalog
//! gets a fresh compile. Volatile facts ([`VOLATILE_FACTS`]) are stored for
//! the inventory but are not given to the compiler, so they neither defeat
//! the cache nor make catalogs flap. Compiles run on blocking threads,
//! bounded by a semaphore; check-ins are written to the store in batches.

use crate::state::MasterState;
use crate::tls::peer_identity;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};
use troupe_catalog::report::Report;
use troupe_proto::error_code::{self, ErrorCode};
use troupe_proto::v1::catalog_server::{Catalog as CatalogRpc, CatalogServer};
use troupe_proto::v1::reports_server::{Reports, ReportsServer};
use troupe_proto::v1::{
    CatalogReply, CatalogRequest, ContentReply, ContentRequest, ReportReply, ReportRequest,
};

/// Largest facts document accepted (1 MiB).
pub const MAX_FACTS_BYTES: usize = 1024 * 1024;
/// Largest report accepted (16 MiB).
pub const MAX_REPORT_BYTES: usize = 16 * 1024 * 1024;
/// Facts that change on every run: kept in the inventory, hidden from the
/// compiler.
pub const VOLATILE_FACTS: &[&str] = &["uptime_seconds"];
/// How long one compile may take before the request fails.
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(60);

use crate::catalog_cache::{CacheKey, lock};
pub use crate::catalog_cache::{CacheStats, CatalogCache, Compiled, DEFAULT_CACHE_BYTES};
pub use crate::store::Checkin;

/// The `disabled_json` of a check-in: `{"reason": "...", "since": "..."}`,
/// at most 4 KiB; the reason cut to 500 characters for display.
fn disabled_mark(json: &[u8]) -> Result<crate::store::DisabledMark, Status> {
    #[derive(serde::Deserialize)]
    struct Raw {
        reason: String,
        since: String,
    }
    if json.len() > 4096 {
        return Err(Status::invalid_argument(
            "disabled_json: larger than 4096 bytes",
        ));
    }
    let r: Raw = serde_json::from_slice(json).map_err(|e| {
        Status::invalid_argument(format!(
            "disabled_json: not {{\"reason\": ..., \"since\": ...}} ({e})"
        ))
    })?;
    let clean =
        |s: String, n: usize| -> String { s.chars().filter(|c| !c.is_control()).take(n).collect() };
    Ok(crate::store::DisabledMark {
        reason: clean(r.reason, 500),
        since: clean(r.since, 64),
    })
}

/// Writes pending check-ins to the store (one transaction).
pub fn flush_checkins(state: &MasterState) {
    let batch = state.catalogs.drain_checkins();
    if batch.is_empty() {
        return;
    }
    if let Err(e) = state.store.record_checkins(&batch) {
        tracing::error!("could not record {} check-ins: {e:#}", batch.len());
    }
}

/// Splits the facts sent by an agent into what the compiler sees (stable,
/// with any `trusted` key removed: the compiler adds the real one) and the
/// hash of that.
pub fn stable_facts(facts: &serde_json::Value) -> Result<(serde_json::Value, [u8; 32]), String> {
    let serde_json::Value::Object(map) = facts else {
        return Err("facts must be a JSON object".into());
    };
    let mut map = map.clone();
    map.remove("trusted");
    for k in VOLATILE_FACTS {
        map.remove(*k);
    }
    let v = serde_json::Value::Object(map);
    // serde_json's map is sorted (no preserve_order), so this is canonical.
    let bytes = serde_json::to_vec(&v).unwrap_or_default();
    Ok((v, Sha256::digest(&bytes).into()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The service implementation (both services share it).
#[derive(Clone)]
pub struct CatalogService {
    state: Arc<MasterState>,
}

pub fn catalog_server(state: Arc<MasterState>) -> CatalogServer<CatalogService> {
    CatalogServer::new(CatalogService { state })
        .max_decoding_message_size(MAX_FACTS_BYTES + 4096)
        .max_encoding_message_size(troupe_catalog::MAX_CATALOG_BYTES)
}

pub fn reports_server(state: Arc<MasterState>) -> ReportsServer<CatalogService> {
    ReportsServer::new(CatalogService { state }).max_decoding_message_size(MAX_REPORT_BYTES + 4096)
}

impl CatalogService {
    fn refuse(&self, node: &str, what: &str, why: &str) {
        self.state.audit_refusal(node, what, why);
    }

    /// The node's current catalog, and its canonical JSON unless the agent
    /// already holds it (`have_hash`): from the cache when it was compiled
    /// from the same facts, environment and code, else compiled now.
    async fn compile(
        &self,
        node: &str,
        (stable, facts_hash): (&serde_json::Value, [u8; 32]),
        environment: Option<String>,
        have_hash: &str,
    ) -> Result<(Arc<Compiled>, Option<Vec<u8>>), Status> {
        let st = &self.state;
        let Some(code) = &st.code else {
            return Err(error_code::status(
                tonic::Code::FailedPrecondition,
                ErrorCode::NoModuleTree,
                "this master serves no catalogs (started without --modules)",
            ));
        };
        let (tree, generation) = code.current_with_generation().map_err(|e| {
            error_code::with_code(
                Status::unavailable(format!("no module tree is loaded: {e}")),
                ErrorCode::Unavailable,
            )
        })?;
        let mut key = CacheKey {
            facts: facts_hash,
            environment: environment.clone().unwrap_or_default(),
            generation,
            fleet: None,
        };
        // A catalog that used fleet() is current while the answers of the
        // queries it made are (crate::fleet_data); the others do not depend
        // on the fleet data. The cache holds no
        // JSON: a hit serves only an agent that holds the catalog already;
        // any other gets it compiled again.
        let fleet = &st.catalogs.fleet;
        if let Some(c) = st.catalogs.get(node, &key, |dep| fleet.current(dep))
            && c.hash == have_hash
        {
            st.metrics.catalog_cache_hits.inc();
            return Ok((c, None));
        }
        let _slot = st.compile_slots.acquire().await.map_err(|_| {
            error_code::with_code(
                Status::unavailable("the master is shutting down"),
                ErrorCode::Unavailable,
            )
        })?;
        let mut opts = troupe_compiler::CompileOptions {
            environment,
            extensions: Default::default(),
            secrets: st.secrets.clone(),
            fleet: None,
        };
        let node_owned = node.to_owned();
        let stable = stable.clone();
        let started = Instant::now();
        let state = self.state.clone();
        let job = tokio::task::spawn_blocking(move || {
            let class = tree.classify(&node_owned, &opts.extensions, &stable)?;
            let snapshot = state.catalogs.fleet.snapshot(&state);
            opts.fleet = snapshot.as_ref().ok().cloned();
            let (cat, info) = tree.compile_with_info(&node_owned, &stable, &opts)?;
            let fleet = match (&snapshot, info.used_fleet) {
                (_, false) => None,
                (Ok(s), true) => Some(
                    state
                        .catalogs
                        .fleet
                        .track(&info.fleet_queries, s.generation),
                ),
                (Err(e), true) => {
                    return Err(troupe_compiler::Error::new(
                        troupe_compiler::ErrorKind::Facts,
                        format!(
                            "this catalog asks for fleet data, which the master cannot read: {e}"
                        ),
                    ));
                }
            };
            Ok::<_, troupe_compiler::Error>((class.role, cat, fleet))
        });
        let (role, catalog, fleet) = match tokio::time::timeout(COMPILE_TIMEOUT, job).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "compiling the catalog took too long",
                ));
            }
            Ok(Err(_)) => return Err(Status::internal("the compile task failed")),
            Ok(Ok(Err(e))) => {
                // The node's catalog does not compile: the agent keeps its
                // cached catalog; the operator sees the full error here.
                tracing::warn!(node, "catalog does not compile: {e}");
                return Err(error_code::status(
                    tonic::Code::FailedPrecondition,
                    ErrorCode::CompileFailed,
                    format!("the catalog for {node} does not compile: {e}"),
                ));
            }
            Ok(Ok(Ok(x))) => x,
        };
        key.fleet = fleet;
        st.metrics
            .compile_seconds
            .observe(started.elapsed().as_secs_f64());
        // Encoded once: the hash is that of these bytes (Catalog::hash).
        let json = catalog.to_canonical_json();
        let hash = format!("sha256:{}", troupe_catalog::sha256_hex(&json));
        let unchanged = hash == have_hash;
        let compiled = st.catalogs.insert(node, key, hash, role, catalog);
        Ok((compiled, (!unchanged).then_some(json)))
    }
}

#[tonic::async_trait]
impl CatalogRpc for CatalogService {
    async fn get_catalog(
        &self,
        req: Request<CatalogRequest>,
    ) -> Result<Response<CatalogReply>, Status> {
        let st = &self.state;
        let result = async {
            let peer = peer_identity(&st.ca, &req)?;
            let body = req.into_inner();
            if !body.disabled_json.is_empty() {
                // Runs are disabled on the host: a check-in only.
                let mark = disabled_mark(&body.disabled_json)?;
                lock(&st.catalogs.checkins).insert(
                    peer.name.clone(),
                    Checkin {
                        node: peer.name.clone(),
                        facts: Vec::new(),
                        environment: String::new(),
                        role: String::new(),
                        catalog_hash: String::new(),
                        at: unix_now(),
                        disabled: Some(mark),
                    },
                );
                return Ok(CatalogReply {
                    unchanged: true,
                    catalog_json: Vec::new(),
                    catalog_hash: String::new(),
                });
            }
            let facts: serde_json::Value = serde_json::from_slice(&body.facts_json)
                .map_err(|e| Status::invalid_argument(format!("facts are not valid JSON: {e}")))?;
            if !facts.is_object() {
                return Err(Status::invalid_argument("facts must be a JSON object"));
            }
            let environment = if body.environment.is_empty() {
                None
            } else if !st.allow_agent_environment {
                self.refuse(
                    &peer.name,
                    "catalog",
                    &format!("asked for environment {:?}", body.environment),
                );
                return Err(Status::permission_denied(
                    "this master does not let agents choose their environment \
                     (start it with --allow-agent-environment)",
                ));
            } else {
                Some(body.environment)
            };
            // Once per check-in: what the compiler sees, and its hash (the
            // cache key).
            let (stable, facts_hash) = stable_facts(&facts).map_err(Status::invalid_argument)?;
            // The store takes the bytes as sent: the parsed tree goes now.
            drop(facts);
            let (compiled, json) = self
                .compile(
                    &peer.name,
                    (&stable, facts_hash),
                    environment,
                    &body.have_hash,
                )
                .await?;
            st.catalogs
                .fleet
                .observe(&peer.name, &compiled.role, &compiled.environment, &stable);
            lock(&st.catalogs.checkins).insert(
                peer.name.clone(),
                Checkin {
                    node: peer.name.clone(),
                    facts: body.facts_json,
                    environment: compiled.environment.clone(),
                    role: compiled.role.clone(),
                    catalog_hash: compiled.hash.clone(),
                    at: unix_now(),
                    disabled: None,
                },
            );
            match json {
                None => {
                    st.metrics.catalogs_unchanged.inc();
                    Ok(CatalogReply {
                        unchanged: true,
                        catalog_json: Vec::new(),
                        catalog_hash: compiled.hash.clone(),
                    })
                }
                Some(catalog_json) => Ok(CatalogReply {
                    unchanged: false,
                    catalog_json,
                    catalog_hash: compiled.hash.clone(),
                }),
            }
        }
        .await;
        st.count("GetCatalog", &result);
        result.map(Response::new)
    }

    async fn get_content(
        &self,
        req: Request<ContentRequest>,
    ) -> Result<Response<ContentReply>, Status> {
        let st = &self.state;
        let result = async {
            let peer = peer_identity(&st.ca, &req)?;
            let hash = req.into_inner().sha256;
            let Some(served) = st.catalogs.served(&peer.name) else {
                return Err(Status::failed_precondition(
                    "fetch your catalog before its file contents",
                ));
            };
            match served.body(&hash) {
                Some(data) => Ok(ContentReply { data }),
                None => {
                    // Quoted (escaped) and cut short: the string is the
                    // caller's, and must not forge lines in the logs.
                    let shown: String = hash.chars().take(80).collect();
                    self.refuse(
                        &peer.name,
                        "content",
                        &format!("asked for content {shown:?} not in its own catalog"),
                    );
                    Err(Status::permission_denied(
                        "that content is not referenced by your catalog",
                    ))
                }
            }
        }
        .await;
        st.count("GetContent", &result);
        result.map(Response::new)
    }
}

#[tonic::async_trait]
impl Reports for CatalogService {
    async fn submit_report(
        &self,
        req: Request<ReportRequest>,
    ) -> Result<Response<ReportReply>, Status> {
        let st = self.state.clone();
        let result = async {
            let peer = peer_identity(&st.ca, &req)?;
            let body = req.into_inner().report_json;
            let report: Report = serde_json::from_slice(&body)
                .map_err(|e| Status::invalid_argument(format!("report is not valid: {e}")))?;
            if report.node != peer.name {
                self.refuse(
                    &peer.name,
                    "report",
                    &format!("sent a report for {:?}", report.node),
                );
                return Err(Status::permission_denied(format!(
                    "a report for {:?} cannot come from {}",
                    report.node, peer.name
                )));
            }
            let node = peer.name.clone();
            let stored = tokio::task::spawn_blocking(move || {
                let before = crate::events::hooks::last_run_failed(&st, &node);
                let stored = st.store.add_report(&node, &report, unix_now());
                if let Ok(true) = stored {
                    crate::events::hooks::report_stored(&st, &node, before, &report);
                }
                stored
            })
            .await
            .map_err(|_| Status::internal("the report task failed"))?
            .map_err(|e| {
                tracing::error!("could not store a report: {e:#}");
                Status::internal("could not store the report (see the master's log)")
            })?;
            Ok(ReportReply { stored })
        }
        .await;
        self.state.count("SubmitReport", &result);
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_facts_drop_volatile_and_trusted_keys() {
        let a = serde_json::json!({"os": {"family": "Debian"}, "uptime_seconds": 5,
                                   "trusted": {"certname": "forged"}});
        let b = serde_json::json!({"uptime_seconds": 99, "os": {"family": "Debian"}});
        let (sa, ha) = stable_facts(&a).unwrap();
        let (_, hb) = stable_facts(&b).unwrap();
        assert_eq!(ha, hb);
        assert!(sa.get("trusted").is_none());
        assert!(sa.get("uptime_seconds").is_none());
        let c = serde_json::json!({"os": {"family": "RedHat"}});
        assert_ne!(stable_facts(&c).unwrap().1, ha);
        assert!(stable_facts(&serde_json::json!([1])).is_err());
    }
}
