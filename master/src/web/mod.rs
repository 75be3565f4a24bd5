//! The dashboard and its JSON HTTP API (issue 17), served by the master on
//! `--web-listen` / `web_listen` (off by default).
//!
//! - **Access.** On a loopback address: plain HTTP, open to whoever can
//!   reach the port on this host. On any other address: HTTPS with the
//!   master's own certificate, and every request needs a client
//!   certificate from the Troupe CA (verified at the handshake against the
//!   CA and its CRL, then re-checked against the CA's records) whose name
//!   is in `viewers`; others get 403 with the reason. The master refuses
//!   to start with a non-loopback `web_listen` and no viewers.
//! - **Read-only.** Only GET and HEAD; anything else is 405. Signing CSRs
//!   or promoting code stays on the CLI.
//! - **One source of data.** [`data`] builds every answer as JSON; the
//!   `/api/v1/...` handlers return it, the HTML pages ([`pages`], minijinja
//!   templates embedded with `include_str!`) render the same values, and
//!   the live parts (plain JS, an `EventSource` on `/api/v1/stream`) update
//!   them without a reload.
//! - **No secrets.** Nothing here reads catalogs or secret keys; reports
//!   are shown as the agent sent them (sensitive values redacted by the
//!   agent), orchestration arguments as the audit log redacted them.
//!
//! It must never: change state (sign, revoke, promote, run), serve over
//! plain HTTP on a non-loopback address, or let a certificate whose name
//! is not in `viewers` read anything.

pub mod data;
pub mod deploys;
pub mod pages;
pub mod query;

use crate::state::MasterState;
use anyhow::{Context, Result};
use axum::extract::{Path, Query as QueryParams, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use query::Query;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use troupe_base::error_code::ErrorCode;

/// Most rows an API list returns unless `limit=` asks for fewer.
pub const DEFAULT_LIMIT: usize = 500;
/// Largest `limit=` accepted.
pub const MAX_LIMIT: usize = 10_000;

/// Checks `web_listen` and `viewers` before the master starts: a
/// non-loopback address needs viewers; viewer names must be host names.
pub fn check_config(listen: Option<SocketAddr>, viewers: &[String]) -> Result<()> {
    for v in viewers {
        troupe_pki::validate_host_name(v)
            .map_err(|e| anyhow::anyhow!("viewers: {v:?} is not a certificate name: {e}"))?;
    }
    if let Some(a) = listen
        && !a.ip().is_loopback()
        && viewers.is_empty()
    {
        anyhow::bail!(
            "web_listen {a}: the dashboard on a non-loopback address is served over HTTPS to \
             client certificates named in `viewers`, and none is set; add e.g. \
             `viewers = [\"alice-laptop\"]` to master.toml (or --viewer NAME), or listen on \
             127.0.0.1"
        );
    }
    Ok(())
}

/// The dashboard's shared state.
pub struct Web {
    pub state: Arc<MasterState>,
    /// HTTPS with viewer certificates (a non-loopback address).
    pub tls: bool,
    pub viewers: BTreeSet<String>,
    pages: pages::Pages,
    /// The latest [`snapshot`] (JSON text), computed once a second by one
    /// task while some stream is open, shared by every stream.
    live: tokio::sync::watch::Sender<Arc<String>>,
    /// Release summaries by id, with the log's length and mtime they were
    /// read at: a release log is read again only when it changed.
    pub deploy_cache: deploys::Cache,
}

/// Who is on the other end of a TLS connection: its verified client
/// certificate's name and serial, if it sent one.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub cert: Option<(String, String)>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(s: axum::serve::IncomingStream<'_, TlsListener>) -> Peer {
        s.remote_addr().clone()
    }
}

/// Handshakes in progress on the dashboard's listener at most (all sources).
pub const DASHBOARD_HANDSHAKES: usize = 256;

/// Accepts TCP connections and completes TLS handshakes off the accept
/// loop, yielding established streams. Handshakes are bounded in time and
/// number the way the gRPC listener bounds them ([`crate::admission`]: per
/// source address, a reserve for new sources, shorter timeouts under
/// pressure), so one client holding idle connections cannot lock viewers
/// out.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, Peer)>,
    local: SocketAddr,
}

/// The master's TLS config (CA, CRL, its certificate) speaking HTTP/1.1
/// instead of gRPC's h2, rebuilt only when the master's config changes
/// (a CRL reload), not per connection.
struct Http1Config {
    from: Arc<rustls::ServerConfig>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl Http1Config {
    fn of(from: Arc<rustls::ServerConfig>) -> Http1Config {
        let mut cfg = (*from).clone();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Http1Config {
            from,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
        }
    }

    fn acceptor(&mut self, tls: &crate::tls::ServerTls) -> tokio_rustls::TlsAcceptor {
        let cur = tls.current();
        if !Arc::ptr_eq(&cur, &self.from) {
            *self = Http1Config::of(cur);
        }
        self.acceptor.clone()
    }
}

impl TlsListener {
    fn new(listener: tokio::net::TcpListener, tls: Arc<crate::tls::ServerTls>) -> Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let slots = Arc::new(tokio::sync::Semaphore::new(DASHBOARD_HANDSHAKES));
        let admission = crate::admission::Admission::new(DASHBOARD_HANDSHAKES);
        let mut refusals = crate::admission::RefusalLog::new("dashboard: ");
        let mut config = Http1Config::of(tls.current());
        tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let (tcp, addr) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("dashboard: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let slot = match admission.admit(addr.ip(), crate::tls::HANDSHAKE_TIMEOUT) {
                    Ok(s) => s,
                    Err(why) => {
                        drop(tcp);
                        refusals.refused(addr, why, &admission);
                        continue;
                    }
                };
                let acceptor = config.acceptor(&tls);
                let conn_tx = tx.clone();
                tokio::spawn(async move {
                    let accepted = tokio::time::timeout(slot.timeout, acceptor.accept(tcp)).await;
                    drop(slot);
                    drop(permit);
                    match accepted {
                        Ok(Ok(s)) => {
                            let cert = s
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| troupe_pki::util::cert_facts(c).ok())
                                .map(|f| (f.cn, f.serial));
                            let _ = conn_tx.send((s, Peer { addr, cert })).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(peer = %addr, "dashboard: TLS handshake refused: {e}")
                        }
                        Err(_) => {
                            tracing::info!(peer = %addr, "dashboard: TLS handshake timed out")
                        }
                    }
                });
                if tx.is_closed() {
                    break;
                }
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept task ended (its listener failed for good): serve
            // nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            cert: None,
        })
    }
}

/// Binds `addr` and serves the dashboard until the task is aborted.
/// Returns the bound address (port 0 picks one) and the task.
pub async fn serve(
    state: Arc<MasterState>,
    addr: SocketAddr,
    viewers: &[String],
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    check_config(Some(addr), viewers)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the dashboard listener web_listen {addr}"))?;
    let bound = listener.local_addr()?;
    let tls = !addr.ip().is_loopback();
    let web = Arc::new(Web {
        tls,
        viewers: viewers.iter().cloned().collect(),
        pages: pages::Pages::new()?,
        state: state.clone(),
        live: tokio::sync::watch::channel(Arc::new(String::new())).0,
        deploy_cache: Default::default(),
    });
    tokio::spawn(follow_fleet(web.clone()));
    let app = router(web);
    let task = if tls {
        let l = TlsListener::new(listener, state.tls.clone())?;
        tokio::spawn(async move {
            let svc = app.into_make_service_with_connect_info::<Peer>();
            if let Err(e) = axum::serve(l, svc).await {
                tracing::error!("dashboard stopped: {e}");
            }
        })
    } else {
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("dashboard stopped: {e}");
            }
        })
    };
    tracing::info!(
        addr = %bound,
        scheme = if tls { "https" } else { "http" },
        "dashboard listening"
    );
    Ok((bound, task))
}

/// Every route of the dashboard and the API.
pub fn router(web: Arc<Web>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route("/", get(pages::overview))
        .route("/nodes", get(pages::nodes))
        .route("/nodes/{host}", get(pages::node))
        .route("/nodes/{host}/reports/{run}", get(pages::report))
        .route("/csrs", get(pages::csrs))
        .route("/environments", get(pages::environments))
        .route("/orchestration", get(pages::orchestration))
        .route("/audit", get(pages::audit))
        .route("/deploys", get(pages::deploys))
        .route("/deploys/{id}", get(pages::deploy))
        .route("/static/style.css", get(pages::css))
        .route("/static/app.js", get(pages::js))
        .route("/api/v1", get(api_index))
        .route("/api/v1/overview", get(api_overview))
        .route("/api/v1/nodes", get(api_nodes))
        .route("/api/v1/nodes/{host}", get(api_node))
        .route("/api/v1/nodes/{host}/reports", get(api_node_reports))
        .route("/api/v1/nodes/{host}/reports/{run}", get(api_node_report))
        .route("/api/v1/reports", get(api_reports))
        .route("/api/v1/events", get(api_events))
        .route("/api/v1/csrs", get(api_csrs))
        .route("/api/v1/environments", get(api_environments))
        .route("/api/v1/orchestration", get(api_orchestration))
        .route("/api/v1/audit", get(api_audit))
        .route("/api/v1/deploys", get(deploys::api_list))
        .route("/api/v1/deploys/{id}", get(deploys::api_one))
        .route("/api/v1/fleet-events", get(deploys::api_fleet_events))
        .route("/api/v1/stream", get(api_stream))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(web.clone(), access))
        .with_state(web)
}

/// An answer in the API's error shape (or a plain page for HTML routes):
/// `{"error": MESSAGE, "code": CODE, "status": HTTP}`, `code` one of the
/// typed error codes (ADR 0008, docs/json.md "Error codes").
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub code: ErrorCode,
}

/// The error code an HTTP status means when nothing more specific is
/// known.
fn code_for(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => ErrorCode::InvalidArgument,
        StatusCode::FORBIDDEN => ErrorCode::PermissionDenied,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        StatusCode::INTERNAL_SERVER_ERROR => ErrorCode::Internal,
        _ => ErrorCode::Unclassified,
    }
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            code: code_for(status),
        }
    }
    /// The same answer with a more specific code.
    pub fn with_code(mut self, code: ErrorCode) -> Self {
        self.code = code;
        self
    }
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn internal(e: anyhow::Error) -> Self {
        tracing::error!("dashboard: {e:#}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"error": self.message, "code": self.code,
                              "status": self.status.as_u16()})),
        )
            .into_response()
    }
}

fn is_api(path: &str) -> bool {
    path == "/api/v1" || path.starts_with("/api/")
}

/// The access rule, before any handler: GET/HEAD only; over HTTPS a
/// client certificate from this CA, still valid, whose name is a viewer.
async fn access(State(web): State<Arc<Web>>, req: Request, next: Next) -> Response {
    let api = is_api(req.uri().path());
    let refuse_coded = |status: StatusCode, code: ErrorCode, msg: String| -> Response {
        if api {
            ApiError::new(status, msg).with_code(code).into_response()
        } else {
            (
                status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("{msg}\n"),
            )
                .into_response()
        }
    };
    let refuse = |status: StatusCode, msg: String| refuse_coded(status, code_for(status), msg);
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} is not allowed: the dashboard is read-only (sign CSRs, promote code and run \
                 commands with the troupe CLI)",
                req.method()
            ),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    if web.tls {
        let peer = req
            .extensions()
            .get::<axum::extract::ConnectInfo<Peer>>()
            .map(|c| c.0.clone());
        let Some((name, serial)) = peer.and_then(|p| p.cert) else {
            return refuse(
                StatusCode::FORBIDDEN,
                "a client certificate from this master's CA is required (its name must be in \
                 `viewers` in master.toml)"
                    .into(),
            );
        };
        if !web.viewers.contains(&name) {
            tracing::warn!(certificate = %name, "dashboard: refused a certificate not in viewers");
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "certificate {name:?} is not a viewer: add it to `viewers` in master.toml \
                     to let it read the dashboard"
                ),
            );
        }
        let ca = web.state.ca.clone();
        let (n2, s2) = (name.clone(), serial.clone());
        match tokio::task::spawn_blocking(move || ca.check_peer(&n2, &s2)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return refuse_coded(
                    StatusCode::FORBIDDEN,
                    e.code(),
                    format!("certificate {name:?} is no longer valid: {e}"),
                );
            }
            Err(e) => {
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}"));
            }
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; frame-ancestors 'none'",
        ),
    );
    resp
}

async fn not_found(req: Request) -> Response {
    let msg = format!(
        "no such page: {} (the API's endpoints are listed at /api/v1)",
        req.uri().path()
    );
    if is_api(req.uri().path()) {
        ApiError::new(StatusCode::NOT_FOUND, msg).into_response()
    } else {
        (StatusCode::NOT_FOUND, format!("{msg}\n")).into_response()
    }
}

/// Runs blocking store reads off the async threads.
pub async fn blocking<T: Send + 'static>(
    web: &Arc<Web>,
    f: impl FnOnce(&MasterState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let st = web.state.clone();
    tokio::task::spawn_blocking(move || f(&st))
        .await
        .map_err(|e| ApiError::internal(anyhow::anyhow!("dashboard task failed: {e}")))?
}

/// Query string parameters, as given (repeated names: the last wins).
pub type Params = BTreeMap<String, String>;

/// Parameters every list takes besides filters.
const LIST_PARAMS: &[&str] = &["query", "limit", "sort", "order", "latest"];

/// Builds the query of a list endpoint: `query=` (infix or JSON AST) and
/// every other `FIELD=VALUE` parameter as an equality, all and-ed.
/// Unknown fields and bad syntax are 400.
pub fn list_query(params: &Params, schema: &query::Schema) -> Result<Query, ApiError> {
    let mut parts = Vec::new();
    for (k, v) in params {
        if LIST_PARAMS.contains(&k.as_str()) {
            continue;
        }
        parts.push(Query::eq(k, v, schema).map_err(|e| ApiError::bad(format!("{k}={v}: {e}")))?);
    }
    if let Some(q) = params.get("query") {
        parts.push(Query::parse(q, schema).map_err(|e| ApiError::bad(format!("query: {e}")))?);
    }
    Ok(match parts.len() {
        0 => Query::All,
        1 => parts.remove(0),
        _ => Query::And(parts),
    })
}

/// `limit=` (default [`DEFAULT_LIMIT`], 1..=[`MAX_LIMIT`]).
pub fn limit(params: &Params) -> Result<usize, ApiError> {
    match params.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::bad(format!(
                "limit={s}: expected a number from 1 to {MAX_LIMIT}"
            ))),
        },
    }
}

fn bool_param(params: &Params, name: &str) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(o) => Err(ApiError::bad(format!("{name}={o}: expected true or false"))),
    }
}

/// The node rows an API or page request selects, sorted.
pub fn select_nodes(st: &MasterState, params: &Params) -> Result<Vec<data::NodeRow>, ApiError> {
    let q = list_query(params, &data::NODE_SCHEMA)?;
    let sort = params.get("sort").map(String::as_str).unwrap_or("name");
    if ![
        "name",
        "role",
        "environment",
        "status",
        "last_checkin",
        "changed",
        "failed",
    ]
    .contains(&sort)
    {
        return Err(ApiError::bad(format!(
            "sort={sort}: sort by name, role, environment, status, last_checkin, changed or failed"
        )));
    }
    let desc = match params.get("order").map(String::as_str) {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(o) => return Err(ApiError::bad(format!("order={o}: expected asc or desc"))),
    };
    let mut rows = data::nodes(st, &q).map_err(ApiError::internal)?;
    data::sort_nodes(&mut rows, sort, desc);
    Ok(rows)
}

fn json_ok(v: Value) -> Response {
    axum::Json(v).into_response()
}

async fn api_index() -> Response {
    json_ok(json!({
        "endpoints": [
            "/api/v1/overview",
            "/api/v1/nodes?role=web&environment=production&status=failed&fact.os.family=Debian&query=...&sort=name&order=asc",
            "/api/v1/nodes/HOST",
            "/api/v1/nodes/HOST/reports",
            "/api/v1/nodes/HOST/reports/RUN_ID",
            "/api/v1/reports?query=...&limit=N",
            "/api/v1/events?query=...&latest=true&limit=N",
            "/api/v1/csrs",
            "/api/v1/environments",
            "/api/v1/orchestration",
            "/api/v1/audit",
            "/api/v1/deploys",
            "/api/v1/deploys/ID",
            "/api/v1/fleet-events?kind=run_failed,csr_pending&node=HOST&release=ID&since=SEQ&limit=N",
            "/api/v1/stream (text/event-stream)",
        ],
        "docs": "docs/api.md",
    }))
}

async fn api_overview(State(web): State<Arc<Web>>) -> Result<Response, ApiError> {
    let v = blocking(&web, |st| data::overview(st).map_err(ApiError::internal)).await?;
    Ok(json_ok(v))
}

async fn api_nodes(
    State(web): State<Arc<Web>>,
    QueryParams(params): QueryParams<Params>,
) -> Result<Response, ApiError> {
    let limit = limit(&params)?;
    let rows = blocking(&web, move |st| select_nodes(st, &params)).await?;
    let total = rows.len();
    let nodes: Vec<Value> = rows.iter().take(limit).map(|r| r.json()).collect();
    Ok(json_ok(json!({"total": total, "nodes": nodes})))
}

fn no_node(host: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no node {host:?} is known to this master (it has not checked in)"),
    )
}

async fn api_node(
    State(web): State<Arc<Web>>,
    Path(host): Path<String>,
) -> Result<Response, ApiError> {
    let v = blocking(&web, move |st| {
        data::node(st, &host)
            .map_err(ApiError::internal)?
            .ok_or_else(|| no_node(&host))
    })
    .await?;
    Ok(json_ok(v))
}

async fn api_node_reports(
    State(web): State<Arc<Web>>,
    Path(host): Path<String>,
    QueryParams(params): QueryParams<Params>,
) -> Result<Response, ApiError> {
    let q = list_query(&params, &data::REPORT_SCHEMA)?;
    let limit = limit(&params)?;
    let v = blocking(&web, move |st| {
        if !st
            .store
            .nodes()
            .map_err(ApiError::internal)?
            .iter()
            .any(|n| n.name == host)
        {
            return Err(no_node(&host));
        }
        data::reports(st, Some(&host), &q, limit).map_err(ApiError::internal)
    })
    .await?;
    Ok(json_ok(json!({"reports": v})))
}

async fn api_node_report(
    State(web): State<Arc<Web>>,
    Path((host, run)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let v = blocking(&web, move |st| {
        data::report(st, &host, &run)
            .map_err(ApiError::internal)?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no report {run:?} for {host:?}"),
                )
            })
    })
    .await?;
    Ok(json_ok(v))
}

async fn api_reports(
    State(web): State<Arc<Web>>,
    QueryParams(params): QueryParams<Params>,
) -> Result<Response, ApiError> {
    let q = list_query(&params, &data::REPORT_SCHEMA)?;
    let limit = limit(&params)?;
    let v = blocking(&web, move |st| {
        data::reports(st, None, &q, limit).map_err(ApiError::internal)
    })
    .await?;
    Ok(json_ok(json!({"reports": v})))
}

async fn api_events(
    State(web): State<Arc<Web>>,
    QueryParams(params): QueryParams<Params>,
) -> Result<Response, ApiError> {
    let q = list_query(&params, &data::EVENT_SCHEMA)?;
    let limit = limit(&params)?;
    let latest = bool_param(&params, "latest")?;
    let v = blocking(&web, move |st| {
        data::events(st, &q, latest, limit).map_err(ApiError::internal)
    })
    .await?;
    Ok(json_ok(json!({"events": v})))
}

async fn api_csrs(State(web): State<Arc<Web>>) -> Result<Response, ApiError> {
    let v = blocking(&web, |st| data::csrs(st).map_err(ApiError::internal)).await?;
    Ok(json_ok(v))
}

async fn api_environments(State(web): State<Arc<Web>>) -> Result<Response, ApiError> {
    let v = blocking(&web, |st| Ok(data::environments(st))).await?;
    Ok(json_ok(v))
}

async fn api_orchestration(
    State(web): State<Arc<Web>>,
    QueryParams(params): QueryParams<Params>,
) -> Result<Response, ApiError> {
    let limit = limit(&params)?;
    let v = blocking(&web, move |st| Ok(data::orchestration(st, limit))).await?;
    Ok(json_ok(v))
}

async fn api_audit(State(web): State<Arc<Web>>) -> Result<Response, ApiError> {
    let v = blocking(&web, |st| Ok(data::audit(st, 50))).await?;
    Ok(json_ok(v))
}

/// What the live parts of the pages follow: the overview counts, each
/// node's status and last run, each recent release's progress and the
/// newest fleet event's number.
pub fn snapshot(web: &Web) -> Result<Value> {
    let st = &web.state;
    let overview = data::overview(st)?;
    let rows = data::node_rows(st, false)?;
    let nodes: serde_json::Map<String, Value> = rows
        .iter()
        .map(|r| {
            (
                r.rec.name.clone(),
                json!({
                    "status": r.status(),
                    "stale": r.stale,
                    "run_id": r.rec.last_report.as_ref().map(|l| l.run_id.clone()),
                    "started": r.rec.last_report.as_ref().map(|l| l.started.clone()),
                    "last_checkin": troupe_pki::util::fmt_time(r.rec.last_checkin),
                }),
            )
        })
        .collect();
    let mut o = overview;
    // `now` changes every second; the snapshot changes only with the fleet.
    if let Value::Object(m) = &mut o {
        m.remove("now");
    }
    let last_event = st
        .events
        .recent(&crate::events::EventQuery {
            limit: 1,
            ..Default::default()
        })
        .last()
        .map(|e| e.seq);
    Ok(
        json!({"overview": o, "nodes": nodes, "deploys": deploys::snapshot(st, &web.deploy_cache),
              "last_event": last_event}),
    )
}

async fn compute(web: &Arc<Web>) -> Option<Arc<String>> {
    let w = web.clone();
    match tokio::task::spawn_blocking(move || snapshot(&w)).await {
        Ok(Ok(v)) => Some(Arc::new(v.to_string())),
        Ok(Err(e)) => {
            tracing::warn!("dashboard: live snapshot: {e:#}");
            None
        }
        Err(_) => None,
    }
}

/// One task for every stream: while a stream is open, computes the
/// snapshot once a second and publishes it when it changed.
async fn follow_fleet(web: Arc<Web>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if web.live.receiver_count() == 0 {
            continue;
        }
        if let Some(snap) = compute(&web).await {
            web.live.send_if_modified(|cur| {
                let changed = **cur != *snap;
                if changed {
                    *cur = snap;
                }
                changed
            });
        }
    }
}

/// `GET /api/v1/stream`: server-sent events. A `fleet` event with the
/// [`snapshot`] at once and whenever it changes (checked every second), a
/// comment every 15 s to keep proxies from closing the stream.
async fn api_stream(State(web): State<Arc<Web>>) -> Response {
    use axum::response::sse::{KeepAlive, Sse};
    Sse::new(fleet_stream(web))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn fleet_stream(
    web: Arc<Web>,
) -> impl tokio_stream::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut follow = web.live.subscribe();
    tokio::spawn(async move {
        let event = |s: &str| axum::response::sse::Event::default().event("fleet").data(s);
        // A fresh snapshot first (the shared one may be old when no
        // stream was open), then every change.
        let mut last = match compute(&web).await {
            Some(s) => s,
            None => follow.borrow_and_update().clone(),
        };
        follow.mark_unchanged();
        if !last.is_empty() && tx.send(Ok(event(&last))).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                changed = follow.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snap = follow.borrow_and_update().clone();
                    if snap == last {
                        continue;
                    }
                    if tx.send(Ok(event(&snap))).await.is_err() {
                        break;
                    }
                    last = snap;
                }
                _ = tx.closed() => break,
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_viewers() {
        let lo: SocketAddr = "127.0.0.1:8150".parse().unwrap();
        let lo6: SocketAddr = "[::1]:8150".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8150".parse().unwrap();
        assert!(check_config(None, &[]).is_ok());
        assert!(check_config(Some(lo), &[]).is_ok());
        assert!(check_config(Some(lo6), &[]).is_ok());
        let err = check_config(Some(any), &[]).unwrap_err().to_string();
        assert!(
            err.contains("viewers") && err.contains("0.0.0.0:8150"),
            "{err}"
        );
        assert!(check_config(Some(any), &["alice".into()]).is_ok());
        let err = check_config(Some(lo), &["Bad Name".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("viewers"), "{err}");
    }
}
