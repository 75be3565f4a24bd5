//! The agent's side of the pull loop: fetch this node's catalog from the
//! master over mutual TLS, fetch file bodies by hash, deliver run reports.
//!
//! The converge path is synchronous; this module owns a small current-thread
//! runtime and blocks on each call. Connection failures are retried with
//! exponential backoff and jitter (so a fleet whose master comes back does
//! not reconnect in lock step); when every try fails the caller falls back
//! to the cached catalog and queues its report.

use crate::source::{CatalogSource, Fetched, ReportSink};
use anyhow::{Context, Result};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;
use tonic::transport::Channel;
use troupe_catalog::LazyCatalog;
use troupe_catalog::report::Report;
use troupe_identity::Identity;
use troupe_proto::v1::catalog_client::CatalogClient;
use troupe_proto::v1::reports_client::ReportsClient;
use troupe_proto::v1::{CatalogRequest, ContentRequest, ReportRequest};

/// How hard to try before giving up on the master for this run.
#[derive(Debug, Clone)]
pub struct Retry {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Per-call deadline.
    pub timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 3,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
        }
    }
}

impl Retry {
    /// The delay before try `n` (1-based, n ≥ 2): exponential, capped, with
    /// ±50 % jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let base = self
            .first_delay
            .saturating_mul(1u32 << (n.saturating_sub(2)).min(16))
            .min(self.max_delay);
        base.mul_f64(0.5 + fastrand::f64())
    }
}

/// A client of one master: the catalog source of a run and, through
/// [`MasterClient::sharing`], its report sink.
///
/// One run is one connection (one TCP + TLS handshake for the master):
/// the certificate upkeep before the run, the catalog, file bodies and the
/// report all go over the same HTTP/2 connection, opened at the first call
/// of the run. It is dropped between runs (a connection kept for the whole
/// interval may be dead by the next one), after a renewal (the connection
/// carries the old certificate's identity: a connection never changes
/// identity) and when the refreshed CRL differs (the master's certificate
/// was verified with the old one).
pub struct MasterClient {
    conn: Rc<RefCell<Conn>>,
    environment: Option<String>,
}

/// What the handles of one master share.
struct Conn {
    rt: tokio::runtime::Runtime,
    server: String,
    state_dir: PathBuf,
    channel: Option<Channel>,
    retry: Retry,
}

impl MasterClient {
    pub fn new(server: &str, state_dir: PathBuf, retry: Retry) -> Result<MasterClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the network runtime")?;
        Ok(MasterClient {
            conn: Rc::new(RefCell::new(Conn {
                rt,
                server: server.to_owned(),
                state_dir,
                channel: None,
                retry,
            })),
            environment: None,
        })
    }

    /// Another handle on the same master and connection (the report sink
    /// of the runs whose catalogs this one fetches), asking for catalogs
    /// in the classified environment.
    pub fn sharing(&self) -> MasterClient {
        MasterClient {
            conn: self.conn.clone(),
            environment: None,
        }
    }

    /// Asks for catalogs compiled in `env` instead of the classified
    /// environment (the master refuses unless it allows agents to choose).
    pub fn with_environment(mut self, env: Option<String>) -> MasterClient {
        self.environment = env;
        self
    }

    pub fn server(&self) -> String {
        self.conn.borrow().server.clone()
    }

    fn with_retry<T, F, Fut>(&mut self, what: &str, call: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.conn.borrow_mut().with_retry(what, call)
    }

    /// Drops the connection (the next call opens a new one).
    fn disconnect(&mut self) {
        self.conn.borrow_mut().channel = None;
    }
}

impl Conn {
    fn identity(&self) -> Result<Identity> {
        Identity::load(&self.state_dir).with_context(|| {
            format!(
                "no usable identity in {} (run `troupe-agent bootstrap` first)",
                self.state_dir.display()
            )
        })
    }

    /// The open channel, or a new one for `id` (loaded when not given).
    fn channel_for(&mut self, id: Option<&Identity>) -> Result<Channel> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let loaded;
        let id = match id {
            Some(id) => id,
            None => {
                loaded = self.identity()?;
                &loaded
            }
        };
        let ch = self.rt.block_on(id.connect(&self.server))?;
        self.channel = Some(ch.clone());
        Ok(ch)
    }

    fn channel(&mut self) -> Result<Channel> {
        self.channel_for(None)
    }

    /// Runs `call` with retries. Errors the master answered with (refusals,
    /// a catalog that does not compile) are not retried: only transport
    /// failures are.
    fn with_retry<T, F, Fut>(&mut self, what: &str, mut call: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut last = None;
        for n in 1..=self.retry.attempts.max(1) {
            if n > 1 {
                std::thread::sleep(self.retry.delay(n));
            }
            let ch = match self.channel() {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("connecting to {} failed (try {n}): {e:#}", self.server);
                    last = Some(e);
                    continue;
                }
            };
            let timeout = self.retry.timeout;
            match self
                .rt
                .block_on(async { tokio::time::timeout(timeout, call(ch)).await })
            {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(status)) if is_transport(&status) => {
                    tracing::debug!("{what} failed (try {n}): {status}");
                    self.channel = None;
                    last = Some(anyhow::anyhow!(troupe_identity::status_message(&status)));
                }
                Ok(Err(status)) => {
                    return Err(anyhow::anyhow!(
                        "the master refused {what}: {}",
                        troupe_identity::status_message(&status)
                    ));
                }
                Err(_) => {
                    self.channel = None;
                    last = Some(anyhow::anyhow!("{what} timed out after {timeout:?}"));
                }
            }
        }
        Err(last
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!(
                "cannot reach the master at {} for {what} ({} tries)",
                self.server, self.retry.attempts
            )))
    }

    /// Refreshes the CRL and renews the certificate when a third of its
    /// life is left, on the run's connection (opened here). Failures are
    /// logged, not fatal: the run goes on with the current certificate (or
    /// falls back to the cache).
    fn maintain_identity(&mut self) {
        let r = self.identity().and_then(|id| {
            let ch = self.channel_for(Some(&id))?;
            self.rt
                .block_on(crate::renew::maintain_over(&id, ch, false))
        });
        match r {
            Ok((outcome, crl_changed)) => {
                if let crate::renew::RenewOutcome::Renewed { serial, .. } = &outcome {
                    tracing::info!(%serial, "certificate renewed");
                }
                // The connection carries the old certificate (revoked now)
                // or was verified with the old CRL: the run's calls go on a
                // new one.
                if crl_changed || matches!(outcome, crate::renew::RenewOutcome::Renewed { .. }) {
                    self.channel = None;
                }
            }
            Err(e) => {
                // Maybe a dead connection: the run's calls open their own.
                self.channel = None;
                tracing::warn!("certificate maintenance failed: {e:#}")
            }
        }
    }
}

impl MasterClient {
    /// Refreshes the CRL and renews the certificate when due (see
    /// [`Conn::maintain_identity`]).
    pub fn maintain_identity(&mut self) {
        self.conn.borrow_mut().maintain_identity();
    }

    /// Fetches a file body referenced by this node's current catalog.
    pub fn content(&mut self, sha256: &str) -> Result<Vec<u8>> {
        let hash = sha256.to_owned();
        let data = self.with_retry("a file body", |ch| {
            let hash = hash.clone();
            async move {
                CatalogClient::new(ch)
                    .max_decoding_message_size(troupe_catalog::MAX_CATALOG_BYTES)
                    .get_content(ContentRequest { sha256: hash })
                    .await
                    .map(|r| r.into_inner().data)
            }
        })?;
        if troupe_catalog::sha256_hex(&data) != sha256 {
            anyhow::bail!("the master sent a body that does not hash to {sha256}");
        }
        Ok(data)
    }
}

/// Transport-level failures (worth retrying), as opposed to answers. A
/// status carrying a Troupe error code is the master's answer: retried only
/// when that code says the master cannot answer now (`unavailable`).
fn is_transport(s: &tonic::Status) -> bool {
    use tonic::Code;
    use troupe_proto::error_code::{ErrorCode, code_of};
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
    ) && matches!(code_of(s), None | Some(ErrorCode::Unavailable))
}

impl CatalogSource for MasterClient {
    fn describe(&self) -> String {
        format!("master:{}", self.server())
    }

    fn checkin_disabled(&mut self, reason: &str, since: &str) {
        let disabled_json = serde_json::to_vec(&serde_json::json!({
            "reason": reason,
            "since": since,
        }))
        .unwrap_or_default();
        // One attempt: a disabled host's run is not worth waiting for.
        let attempts = std::mem::replace(&mut self.conn.borrow_mut().retry.attempts, 1);
        let r = self.with_retry("the disabled check-in", |ch| {
            let req = CatalogRequest {
                facts_json: b"{}".to_vec(),
                have_hash: String::new(),
                environment: String::new(),
                disabled_json: disabled_json.clone(),
            };
            async move { CatalogClient::new(ch).get_catalog(req).await }
        });
        self.conn.borrow_mut().retry.attempts = attempts;
        if let Err(e) = r {
            tracing::warn!(
                "could not tell {} that runs are disabled: {e:#}",
                self.server()
            );
        }
    }

    fn before_run(&mut self) {
        // A fresh connection per run: the daemon's runs are far apart, and a
        // connection kept from the last one may be dead (network cut, master
        // gone) without anything having noticed. The upkeep opens it; the
        // run's catalog and report use it.
        self.disconnect();
        self.maintain_identity();
    }

    fn cache_fallback(&self) -> bool {
        self.environment.is_none()
    }

    fn fetch(&mut self, facts: &serde_json::Value, cached_hash: Option<&str>) -> Result<Fetched> {
        let facts_json = serde_json::to_vec(facts)?;
        let have = cached_hash.unwrap_or_default().to_owned();
        let env = self.environment.clone().unwrap_or_default();
        let reply = self.with_retry("the catalog", |ch| {
            let req = CatalogRequest {
                facts_json: facts_json.clone(),
                have_hash: have.clone(),
                environment: env.clone(),
                disabled_json: Vec::new(),
            };
            async move {
                CatalogClient::new(ch)
                    .max_decoding_message_size(troupe_catalog::MAX_CATALOG_BYTES)
                    .get_catalog(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })?;
        if reply.unchanged {
            if cached_hash != Some(reply.catalog_hash.as_str()) {
                anyhow::bail!(
                    "the master answered \"unchanged\" for a catalog this agent does not hold"
                );
            }
            return Ok(Fetched::Unchanged);
        }
        let spill = crate::state::spill(&self.conn.borrow().state_dir);
        let cat = LazyCatalog::from_slice(&reply.catalog_json, spill)
            .context("the master sent an invalid catalog")?;
        drop(reply.catalog_json);
        if cat.hash() != reply.catalog_hash {
            anyhow::bail!("the catalog the master sent does not match its announced hash");
        }
        Ok(Fetched::Catalog(Box::new(cat)))
    }
}

impl ReportSink for MasterClient {
    fn describe(&self) -> String {
        format!("master:{}", self.server())
    }

    fn send(&mut self, report: &Report) -> Result<()> {
        let body = serde_json::to_vec(report)?;
        self.with_retry("the report", |ch| {
            let req = ReportRequest {
                report_json: body.clone(),
            };
            async move {
                ReportsClient::new(ch)
                    .submit_report(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })?;
        Ok(())
    }

    fn new_run(&mut self) {
        self.disconnect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let r = Retry {
            attempts: 10,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let d2 = r.delay(2);
            assert!(d2 >= Duration::from_millis(50) && d2 <= Duration::from_millis(150));
            let d4 = r.delay(4);
            assert!(d4 >= Duration::from_millis(200) && d4 <= Duration::from_millis(600));
            assert!(r.delay(30) <= Duration::from_millis(1500));
        }
    }

    #[test]
    fn only_transport_failures_are_retried() {
        assert!(is_transport(&tonic::Status::unavailable(
            "connection refused"
        )));
        assert!(!is_transport(&tonic::Status::permission_denied("no")));
        assert!(!is_transport(&tonic::Status::failed_precondition(
            "the catalog for x does not compile"
        )));
        // The code decides, not the words.
        use troupe_proto::error_code::{ErrorCode, with_code};
        let answer = with_code(tonic::Status::unknown("reworded"), ErrorCode::CompileFailed);
        assert!(!is_transport(&answer));
        let busy = with_code(
            tonic::Status::unavailable("the master is shutting down"),
            ErrorCode::Unavailable,
        );
        assert!(is_transport(&busy));
    }
}
