//! The admin endpoint: how `troupe ca ...` reaches the running master.
//!
//! A unix socket at `DATA/admin.sock`, mode 0600 in a 0700 data directory,
//! so only the owner of the data directory (root on a real master) can
//! connect; the server also checks the peer's uid (`SO_PEERCRED`) against
//! the data directory's owner (or root).
//!
//! Protocol: the client sends one JSON object on one line and shuts down
//! its write side; the server answers with one JSON object on one line and
//! closes. Requests (`op` tags the variant):
//!
//! ```text
//! {"op":"fingerprint"}
//! {"op":"psk-new","host":"web1","ttl_secs":7200}
//! {"op":"list","filter":"default"|"pending"|"all"}
//! {"op":"sign","host":"web1"}    {"op":"reject","host":"web1"}
//! {"op":"revoke","host":"web1"}  {"op":"clean","host":"web1"}
//! {"op":"nodes","where":["os.family=Debian"],"role":"web"}
//! {"op":"report","host":"web1","run":null}   {"op":"facts","host":"web1"}
//! {"op":"report-list","host":"web1"}
//! {"op":"env-status"}            {"op":"env-promote","env":"production","expect":null}
//! {"op":"env-diff","env":"production","to":"/srv/modules-next","staged":false}
//! {"op":"env-sync","env":null}   (git-backed environments: fetch and sync)
//! ```
//!
//! The fleet requests (nodes, report, facts, env-*) need the running master.
//!
//! Answers: `{"ok":true,"result":{...}}` or
//! `{"ok":false,"error":"...","code":"..."}`: `error` is for people, `code`
//! (a [`troupe_base::error_code::ErrorCode`] name, documented in
//! `docs/json.md`) for programs; the CLI branches on `code` only.
//! When no master is running (no socket, or nobody listening), the CLI
//! opens the CA directly and applies the same [`handle`] function.

use crate::state::MasterState;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use troupe_base::error_code::{self, ErrorCode, code_of};
use troupe_pki::{Authority, CaError, ListFilter};

/// Largest request line accepted on the socket.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// The socket's path in a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// A request to the CA.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum AdminRequest {
    Fingerprint,
    PskNew {
        host: String,
        ttl_secs: u64,
    },
    List {
        filter: ListFilter,
    },
    Sign {
        host: String,
    },
    Reject {
        host: String,
    },
    Revoke {
        host: String,
    },
    Clean {
        host: String,
    },
    Nodes {
        #[serde(default)]
        r#where: Vec<String>,
        #[serde(default)]
        role: Option<String>,
    },
    Report {
        host: String,
        #[serde(default)]
        run: Option<String>,
    },
    Facts {
        host: String,
    },
    ReportList {
        host: String,
    },
    EnvStatus,
    EnvPromote {
        env: String,
        /// Promote only if the staged code is still this version (what
        /// the operator confirmed after `env diff`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<String>,
    },
    EnvDiff {
        env: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<PathBuf>,
        #[serde(default)]
        staged: bool,
    },
    /// Git-backed environments: fetch now and sync every environment (or
    /// only `env`).
    EnvSync {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        env: Option<String>,
    },
}

impl AdminRequest {
    /// True for requests about the fleet and the code, which only a running
    /// master can answer.
    pub fn needs_master(&self) -> bool {
        matches!(
            self,
            AdminRequest::Nodes { .. }
                | AdminRequest::Report { .. }
                | AdminRequest::Facts { .. }
                | AdminRequest::ReportList { .. }
                | AdminRequest::EnvStatus
                | AdminRequest::EnvPromote { .. }
                | AdminRequest::EnvDiff { .. }
                | AdminRequest::EnvSync { .. }
        )
    }
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdminResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What kind of error (`None` from a master older than the codes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
}

impl AdminResponse {
    fn ok(v: serde_json::Value) -> Self {
        AdminResponse {
            ok: true,
            result: Some(v),
            error: None,
            code: None,
        }
    }
    fn err(code: ErrorCode, e: impl std::fmt::Display) -> Self {
        AdminResponse {
            ok: false,
            result: None,
            error: Some(e.to_string()),
            code: Some(code),
        }
    }
    /// The error answer for `e`, coded by the [`Coded`] or [`CaError`] in
    /// its chain (else `unclassified`).
    fn from_error(e: &anyhow::Error) -> Self {
        let code = code_of(e)
            .or_else(|| {
                e.chain()
                    .find_map(|c| c.downcast_ref::<CaError>())
                    .map(CaError::code)
            })
            .unwrap_or(ErrorCode::Unclassified);
        AdminResponse::err(code, format!("{e:#}"))
    }
    /// The answer as an error carrying its code (`Ok` for a success).
    pub fn into_result(self) -> Result<serde_json::Value> {
        if self.ok {
            Ok(self.result.unwrap_or(serde_json::Value::Null))
        } else {
            Err(error_code::error(
                self.code.unwrap_or(ErrorCode::Unclassified),
                self.error.unwrap_or_else(|| "unknown error".into()),
            ))
        }
    }
    /// True when the request changed the CRL (the TLS config must reload).
    fn crl_changed(req: &AdminRequest, resp: &AdminResponse) -> bool {
        resp.ok
            && matches!(
                req,
                AdminRequest::Revoke { .. } | AdminRequest::Clean { .. }
            )
    }
}

/// Applies a request to the CA (blocking). Shared by the socket server and
/// the CLI's offline mode.
pub fn handle(ca: &Authority, req: &AdminRequest) -> AdminResponse {
    use serde_json::json;
    let r = match req {
        AdminRequest::Fingerprint => Ok(json!({"fingerprint": ca.fingerprint()})),
        AdminRequest::PskNew { host, ttl_secs } => ca.new_psk(host, *ttl_secs).map(|psk| {
            json!({"host": host, "psk": psk,
                   "expires": troupe_pki::util::fmt_time(troupe_pki::util::now() + ttl_secs)})
        }),
        AdminRequest::List { filter } => ca.list(*filter).map(|e| json!({"entries": e})),
        AdminRequest::Sign { host } => ca.sign(host).map(|c| {
            json!({"host": host, "serial": c.serial,
                   "expires": troupe_pki::util::fmt_time(c.not_after)})
        }),
        AdminRequest::Reject { host } => ca.reject(host).map(|_| json!({"host": host})),
        AdminRequest::Revoke { host } => {
            ca.revoke(host).map(|s| json!({"host": host, "serials": s}))
        }
        AdminRequest::Clean { host } => ca.clean(host).map(|s| json!({"host": host, "serials": s})),
        _ => {
            return AdminResponse::err(
                ErrorCode::NeedsMaster,
                "this request needs the running master",
            );
        }
    };
    match r {
        Ok(v) => AdminResponse::ok(v),
        Err(e) => AdminResponse::err(e.code(), e),
    }
}

/// Applies a fleet or code request (blocking) to the running master.
pub fn handle_fleet(state: &MasterState, req: &AdminRequest) -> AdminResponse {
    use serde_json::json;
    let r: Result<serde_json::Value> = (|| match req {
        AdminRequest::Nodes { r#where, role } => {
            // Pending check-ins first, so `troupe nodes` is current.
            crate::catalog_service::flush_checkins(state);
            let filters = r#where
                .iter()
                .map(|w| {
                    w.parse::<crate::store::FactFilter>()
                        .map_err(|e| error_code::error(ErrorCode::InvalidArgument, e))
                })
                .collect::<Result<Vec<_>>>()?;
            let nodes = state.store.query(&filters, role.as_deref())?;
            let now = troupe_pki::util::now();
            let rows: Vec<_> = nodes
                .into_iter()
                .map(|n| {
                    let stale = crate::store::is_stale(&n, now, state.run_interval_secs, 3);
                    json!({"node": n, "stale": stale,
                           "status": n.last_report.as_ref().map(|r| r.status())})
                })
                .collect();
            Ok(json!({"nodes": rows, "now": now, "interval": state.run_interval_secs}))
        }
        AdminRequest::Report { host, run } => match state.store.report(host, run.as_deref())? {
            Some(r) => Ok(json!({"report": r})),
            None => Err(error_code::error(
                ErrorCode::NotFound,
                format!(
                    "no report{} for {host}",
                    run.as_deref().map(|r| format!(" {r}")).unwrap_or_default()
                ),
            )),
        },
        AdminRequest::ReportList { host } => {
            let runs = state.store.runs(host)?;
            if runs.is_empty() {
                return Err(error_code::error(
                    ErrorCode::NotFound,
                    format!("no report for {host}"),
                ));
            }
            Ok(json!({"host": host, "runs": runs}))
        }
        AdminRequest::Facts { host } => {
            crate::catalog_service::flush_checkins(state);
            match state.store.facts(host)? {
                Some(f) => Ok(json!({"facts": f})),
                None => Err(error_code::error(
                    ErrorCode::NotFound,
                    format!("no facts known for {host} (it has not checked in)"),
                )),
            }
        }
        AdminRequest::EnvStatus => match &state.code {
            Some(c) => Ok(json!({"code": c.status()})),
            None => Err(error_code::error(
                ErrorCode::NoModuleTree,
                "this master serves no module tree (started without --modules)",
            )),
        },
        AdminRequest::EnvDiff { env, to, staged } => {
            crate::env_diff::run(state, env, to.as_ref(), *staged)
        }
        AdminRequest::EnvSync { env } => match &state.code {
            Some(c) => {
                let rep = c.sync(env.as_deref())?;
                if !rep.new_failures.is_empty() {
                    state.metrics.code_load_failures.inc();
                    crate::events::hooks::code_load_failed(
                        state,
                        &rep.new_failures.join("\n"),
                        c.status().live_version.as_deref(),
                    );
                }
                Ok(serde_json::to_value(&rep)?)
            }
            None => Err(error_code::error(
                ErrorCode::NoModuleTree,
                "this master serves no module tree (started without --modules)",
            )),
        },
        AdminRequest::EnvPromote { env, expect } => match &state.code {
            Some(c) => {
                let v = c.promote_expecting(env, expect.as_deref())?;
                tracing::info!(env = %env, version = %v, "promoted staged code");
                crate::events::hooks::code_promoted(state, env, &v);
                Ok(json!({"env": env, "version": v}))
            }
            None => Err(error_code::error(
                ErrorCode::NoModuleTree,
                "this master serves no module tree (started without --modules)",
            )),
        },
        _ => Err(error_code::error(
            ErrorCode::InvalidArgument,
            "not a fleet request",
        )),
    })();
    match r {
        Ok(v) => AdminResponse::ok(v),
        Err(e) => AdminResponse::from_error(&e),
    }
}

/// Binds the admin socket and serves it until the task is aborted.
pub async fn serve(state: Arc<MasterState>) -> Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(&state.data_dir);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            anyhow::bail!(
                "another master is already serving {} (admin socket answers)",
                path.display()
            );
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("binding admin socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let owner = std::fs::metadata(&state.data_dir)?.uid();
    Ok(tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("admin socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_one(state, stream, owner).await {
                    tracing::warn!("admin request failed: {e:#}");
                }
            });
        }
    }))
}

async fn serve_one(
    state: Arc<MasterState>,
    mut stream: tokio::net::UnixStream,
    owner: u32,
) -> Result<()> {
    let uid = stream.peer_cred()?.uid();
    if uid != owner && uid != 0 {
        let resp = AdminResponse::err(
            ErrorCode::PermissionDenied,
            format!(
                "uid {uid} may not administer this CA (only the data directory's owner or root)"
            ),
        );
        stream
            .write_all(serde_json::to_string(&resp)?.as_bytes())
            .await?;
        return Ok(());
    }
    let mut line = String::new();
    let read = {
        let mut r = tokio::io::BufReader::new((&mut stream).take(MAX_REQUEST_BYTES));
        tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line)).await
    };
    let resp = match read {
        Err(_) => AdminResponse::err(ErrorCode::InvalidArgument, "timed out reading the request"),
        Ok(Err(e)) => AdminResponse::err(
            ErrorCode::InvalidArgument,
            format!("reading the request: {e}"),
        ),
        Ok(Ok(_)) => match serde_json::from_str::<AdminRequest>(line.trim()) {
            Err(e) => AdminResponse::err(
                ErrorCode::InvalidArgument,
                format!("malformed admin request: {e}"),
            ),
            Ok(req) => {
                let st = state.clone();
                let r2 = req.clone();
                let resp = tokio::task::spawn_blocking(move || {
                    if r2.needs_master() {
                        handle_fleet(&st, &r2)
                    } else {
                        handle(&st.ca, &r2)
                    }
                })
                .await
                .unwrap_or_else(|_| AdminResponse::err(ErrorCode::Internal, "admin task failed"));
                if AdminResponse::crl_changed(&req, &resp) {
                    state.reload_crl();
                }
                resp
            }
        },
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    stream.write_all(&out).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Sends `req` to the master serving `data_dir`. Returns `Ok(None)` when
/// no master is listening there (so the caller may work offline).
pub fn call(data_dir: &Path, req: &AdminRequest) -> Result<Option<AdminResponse>> {
    let path = socket_path(data_dir);
    let mut s = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(e).with_context(|| format!("connecting to {}", path.display()));
        }
    };
    // A fleet-wide diff compiles every node twice: give it longer.
    let secs = if matches!(
        req,
        AdminRequest::EnvDiff { .. } | AdminRequest::EnvSync { .. }
    ) {
        900
    } else {
        60
    };
    s.set_read_timeout(Some(Duration::from_secs(secs)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut buf = String::new();
    s.take(16 * 1024 * 1024).read_to_string(&mut buf)?;
    let resp = serde_json::from_str(buf.trim())
        .with_context(|| format!("malformed answer from the master: {buf:?}"))?;
    Ok(Some(resp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_is_stable_json() {
        let r = AdminRequest::PskNew {
            host: "web1".into(),
            ttl_secs: 60,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"psk-new","host":"web1","ttl_secs":60}"#
        );
        let l: AdminRequest = serde_json::from_str(r#"{"op":"list","filter":"pending"}"#).unwrap();
        assert_eq!(
            l,
            AdminRequest::List {
                filter: ListFilter::Pending
            }
        );
        assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"rm -rf"}"#).is_err());
    }

    #[test]
    fn offline_handle_uses_the_ca() {
        let d = tempfile::tempdir().unwrap();
        let ca = Authority::open(&d.path().join("ca"), Default::default()).unwrap();
        let r = handle(&ca, &AdminRequest::Fingerprint);
        assert_eq!(r.result.unwrap()["fingerprint"], ca.fingerprint());
        let r = handle(
            &ca,
            &AdminRequest::Sign {
                host: "nope".into(),
            },
        );
        assert!(!r.ok);
        assert_eq!(r.code, Some(ErrorCode::NoPendingRequest));
        assert!(r.error.unwrap().contains("no pending certificate request"));
        let r = handle(
            &ca,
            &AdminRequest::PskNew {
                host: "Bad".into(),
                ttl_secs: 60,
            },
        );
        assert_eq!(r.code, Some(ErrorCode::InvalidArgument));
        assert!(r.error.unwrap().contains("upper-case"));
        let r = handle(&ca, &AdminRequest::EnvStatus);
        assert_eq!(r.code, Some(ErrorCode::NeedsMaster));
    }

    #[test]
    fn error_answers_carry_a_code_field() {
        let r = AdminResponse::err(
            ErrorCode::NoValidCertificate,
            "host \"x\" has no valid certificate",
        );
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"ok":false,"error":"host \"x\" has no valid certificate","code":"no_valid_certificate"}"#
        );
        // An answer from a master without codes still reads.
        let old: AdminResponse = serde_json::from_str(r#"{"ok":false,"error":"x"}"#).unwrap();
        let e = old.into_result().unwrap_err();
        assert_eq!(code_of(&e), Some(ErrorCode::Unclassified));
        assert_eq!(e.to_string(), "x");
        // A CA error deep in a chain keeps its code.
        let e = anyhow::Error::new(CaError::NoPending("web1".into())).context("signing");
        assert_eq!(
            AdminResponse::from_error(&e).code,
            Some(ErrorCode::NoPendingRequest)
        );
    }
}
