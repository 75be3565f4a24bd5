//! The master's side of signed orchestration (issue 6): the `Orchestration`
//! gRPC service.
//!
//! - **Agents** open one long-lived stream each ([`Attach`]): the agent
//!   dials out over mutual TLS, its node name comes from its verified
//!   certificate, its first message says its role and flattened facts (used
//!   only to choose targets: each agent checks the target filter again).
//!   The stream is removed from the registry when it ends; a newer stream
//!   from the same node replaces an older one.
//! - **Bastions** submit a signed envelope ([`Submit`]). Before relaying,
//!   the master checks the envelope's structure and its ed25519 signature
//!   against its own trusted-signer list, `DATA/signers.toml` (same format
//!   as the agents' `[[signer]]` tables; re-read on every submission;
//!   missing or empty = every command refused). This is defence in depth:
//!   each agent verifies again (signature, time window, replay, whitelist,
//!   arguments, policy) and is the real gate. The master then resolves the
//!   target filter against every host it knows (certificate valid and
//!   checked in: the role its classification gave it, its last facts and
//!   environment) and every connected agent (hello facts fill in; the
//!   hello role only for a host the master has not classified); `limit`
//!   keeps the first N names in sorted order. A connected agent that only
//!   its own declared role would have matched (the master classified it
//!   otherwise) is named in the summary's `left_out` with the reason. It relays the envelope to
//!   each matched host that is connected, and streams back the targets,
//!   each result as it arrives, and a summary naming who did not answer
//!   within the timeout, matched hosts that are not connected included (as
//!   Choria's discovery does: never "1 matched, 1 ok" while a matching host
//!   is down).
//! - **Replays**: each envelope id is relayed once: ids are remembered in
//!   `DATA/orchestration-relayed.redb` (durable, so also across restarts)
//!   until the command expires plus the agents' largest clock-skew
//!   allowance, then pruned. If that file cannot be written, nothing is
//!   relayed; after a failed write (a full disk) the file is opened again
//!   by the next submission, so relaying resumes by itself once space is
//!   freed. The agents' own on-disk replay caches remain the real gate.
//! - **Audit**: every submission, relayed or refused, goes to the
//!   hash-chained `DATA/orchestration-audit.log` (before relaying: the
//!   command with its target nodes; after the summary: the nodes that
//!   answered ok, one record per other answer with its message, and the
//!   nodes that did not answer), with the caller's certificate name; arguments are redacted by the built-in action schemas (all
//!   values of unknown actions are redacted).
//!
//! [`Attach`]: troupe_proto::v1::orchestration_server::Orchestration::attach
//! [`Submit`]: troupe_proto::v1::orchestration_server::Orchestration::submit

use crate::state::MasterState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use troupe_base::audit::AuditLog;
use troupe_base::reopen::Reopening;
use troupe_command::replay::{Recorded, ReplayCache};
use troupe_command::verify::CommandAudit;
use troupe_command::{Registry, SignedCommand, TrustedSigners};
use troupe_proto::error_code::{self, ErrorCode};
use troupe_proto::v1::orchestration_server::{Orchestration, OrchestrationServer};
use troupe_proto::v1::{
    AgentMessage, CommandDelivery, CommandResult, LeftOut, SubmitEvent, SubmitRequest,
    SubmitSummary, SubmitTargets, agent_message, submit_event,
};

/// The master's trusted signers file, in the data directory.
pub const SIGNERS_FILE: &str = "signers.toml";
/// The orchestration audit log, in the data directory.
pub const AUDIT_FILE: &str = "orchestration-audit.log";
/// Ids of relayed commands until they expire, in the data directory.
pub const RELAYED_FILE: &str = "orchestration-relayed.redb";
/// Default wait for answers, seconds.
pub const DEFAULT_TIMEOUT_SECS: u32 = 30;
/// Longest wait for results (troupe_command::envelope::MAX_TIMEOUT_SECS).
pub const MAX_TIMEOUT_SECS: u32 = troupe_command::envelope::MAX_TIMEOUT_SECS;
/// How long an agent has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);
/// Commands queued per agent before the agent counts as not answering.
const AGENT_QUEUE: usize = 64;
/// Largest facts document in a hello.
const MAX_HELLO_FACTS: usize = 256 * 1024;
/// Largest result payload relayed.
const MAX_RESULT_DATA: usize = 1024 * 1024;
/// Largest gRPC message of this service.
const MAX_MESSAGE: usize = 2 * 1024 * 1024;

/// What the master knows of a host from its check-ins: the role its
/// classification gave it, its environment and its last facts (flattened).
#[derive(Debug, Clone, Default)]
pub struct KnownNode {
    pub role: String,
    pub environment: String,
    pub facts: BTreeMap<String, String>,
}

/// Every host with a valid certificate that has checked in, as targeting
/// sees it. Hosts whose certificate was revoked (or cleaned) are left out.
/// An error fails the submission: targeting without the master's knowledge
/// would silently leave hosts out.
pub fn known_nodes(state: &MasterState) -> Result<BTreeMap<String, KnownNode>, String> {
    crate::catalog_service::flush_checkins(state);
    let signed: BTreeSet<String> = state
        .ca
        .list(troupe_pki::ListFilter::Default)
        .map_err(|e| format!("cannot list certificates for targeting: {e}"))?
        .into_iter()
        .filter(|e| e.state == "signed")
        .map(|e| e.host)
        .collect();
    let nodes = state
        .store
        .nodes()
        .map_err(|e| format!("cannot read the node store for targeting: {e:#}"))?;
    let mut out = BTreeMap::new();
    for n in nodes.into_iter().filter(|n| signed.contains(&n.name)) {
        let facts = state
            .store
            .facts(&n.name)
            .map_err(|e| format!("cannot read the facts of {} for targeting: {e:#}", n.name))?
            .map(|f| troupe_command::verify::HostContext::flatten_facts(&f))
            .unwrap_or_default();
        let k = KnownNode {
            role: n.role,
            environment: n.environment,
            facts,
        };
        out.insert(n.name, k);
    }
    Ok(out)
}

/// The role and facts a target filter is matched against: what the master
/// knows (classification role, last facts, environment), with what a
/// connected agent said in its hello filling in (its facts are fresher; its
/// role only when the master has none, e.g. a host that never checked in).
fn target_view(
    known: Option<&KnownNode>,
    conn: Option<&AgentConn>,
) -> (Option<String>, BTreeMap<String, String>) {
    let mut facts = known.map(|k| k.facts.clone()).unwrap_or_default();
    if let Some(k) = known
        && !k.environment.is_empty()
    {
        facts.insert("environment".into(), k.environment.clone());
    }
    if let Some(c) = conn {
        facts.extend(c.facts.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let role = known
        .map(|k| k.role.clone())
        .filter(|r| !r.is_empty())
        .or_else(|| conn.and_then(|c| c.role.clone()));
    (role, facts)
}

/// Why a connected agent the filter does not match would have matched by
/// the role it declares in its hello: the master classified it with
/// another role, and for a classified host targeting follows the master.
/// `None` when the declared role would not make it match either.
fn left_out_reason(
    t: &troupe_command::TargetFilter,
    name: &str,
    known: Option<&KnownNode>,
    conn: &AgentConn,
) -> Option<String> {
    let classified = known.map(|k| k.role.as_str()).filter(|r| !r.is_empty())?;
    let declared = conn.role.as_deref().filter(|r| *r != classified)?;
    let (_, facts) = target_view(known, Some(conn));
    t.matches(name, Some(declared), &facts).then(|| {
        format!(
            "its agent declares role {declared}, but the master classified it {classified} \
             (site.toml); targeting follows the master's classification"
        )
    })
}

/// One connected agent.
struct AgentConn {
    conn: u64,
    /// Serial of the certificate the stream was opened with: re-checked
    /// against the CA before every relayed command and at every CRL change.
    serial: String,
    tx: mpsc::Sender<Result<CommandDelivery, Status>>,
    role: Option<String>,
    facts: BTreeMap<String, String>,
}

/// A command waiting for answers.
struct Pending {
    /// Targets that have not answered yet.
    waiting: BTreeSet<String>,
    tx: mpsc::UnboundedSender<CommandResult>,
}

/// Connected agents, in-flight commands and the audit log.
pub struct Orchestra {
    data_dir: PathBuf,
    agents: Mutex<HashMap<String, AgentConn>>,
    pending: Mutex<HashMap<[u8; 16], Pending>>,
    next_conn: AtomicU64,
    audit: Arc<Mutex<Option<AuditLog>>>,
    registry: Registry,
    /// Ids of commands already submitted, until they expire (opened on
    /// first use; while it cannot be opened or written, submissions are
    /// refused; reopened after redb is stopped by a failed write).
    seen: Arc<Reopening<ReplayCache>>,
}

/// One record of the master's orchestration audit log.
#[derive(Debug, serde::Serialize)]
struct MasterAudit {
    #[serde(flatten)]
    command: CommandAudit,
    /// Who submitted it (certificate name).
    caller: String,
    /// The node this record is about (fan-out and results), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// The nodes this record is about (fan-out, results grouped by
    /// outcome), at most [`NODES_PER_RECORD`] per record.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<String>,
}

/// Most node names in one audit record (keeps lines far below the audit
/// log's line limit).
const NODES_PER_RECORD: usize = 2000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Orchestra {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            agents: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            audit: Arc::new(Mutex::new(None)),
            registry: Registry::builtin(),
            seen: Arc::new(Reopening::closed(
                &data_dir.join(RELAYED_FILE),
                ReplayCache::open,
            )),
        }
    }

    /// Names of the connected agents, sorted.
    pub fn connected(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.agents).keys().cloned().collect();
        v.sort();
        v
    }

    /// Appends records to the audit log (opened on first use), off the
    /// async threads. A failure is logged: the command path does not stop
    /// because the master's disk is full, the agents audit too.
    async fn audit(&self, entries: Vec<MasterAudit>) {
        if entries.is_empty() {
            return;
        }
        let audit = self.audit.clone();
        let path = self.data_dir.join(AUDIT_FILE);
        let r = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let mut guard = lock(&audit);
            if guard.is_none() {
                *guard = Some(AuditLog::open(&path).map_err(|e| e.to_string())?);
            }
            match guard.as_mut() {
                Some(log) => log
                    .append_many(&entries)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            }
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("orchestration audit log: {e}"),
            Err(e) => tracing::error!("orchestration audit log task: {e}"),
        }
    }

    fn record(
        &self,
        sc: Option<&SignedCommand>,
        caller: &str,
        node: Option<&str>,
        outcome: &str,
        detail: &str,
    ) -> MasterAudit {
        MasterAudit {
            command: CommandAudit::new(sc.map(|s| s.command()), &self.registry, outcome, detail),
            caller: caller.to_string(),
            node: node.map(str::to_string),
            nodes: Vec::new(),
        }
    }

    /// Records for many nodes with the same outcome, in chunks.
    fn group(
        &self,
        sc: &SignedCommand,
        caller: &str,
        nodes: &[String],
        outcome: &str,
    ) -> Vec<MasterAudit> {
        nodes
            .chunks(NODES_PER_RECORD)
            .map(|c| {
                let mut r = self.record(Some(sc), caller, None, outcome, "");
                r.nodes = c.to_vec();
                r
            })
            .collect()
    }

    /// Structure and signature against `DATA/signers.toml`.
    fn check_signature(
        &self,
        wire: &[u8],
    ) -> Result<SignedCommand, (Option<Box<SignedCommand>>, &'static str, String)> {
        let sc = SignedCommand::from_wire(wire)
            .map_err(|e| (None, "malformed", format!("malformed command: {e}")))?;
        let path = self.data_dir.join(SIGNERS_FILE);
        // A file that grants trust: refused when others could write it.
        let trusted = match troupe_command::trust::read_trusted_file(&path, "signer list") {
            Ok(Some(text)) => match TrustedSigners::from_toml(&text) {
                Ok(t) => t,
                Err(e) => {
                    return Err((
                        Some(Box::new(sc)),
                        "no_signers",
                        format!("{}: {e}", path.display()),
                    ));
                }
            },
            Ok(None) => TrustedSigners::default(),
            Err(e) => {
                return Err((Some(Box::new(sc)), "no_signers", format!("{e:#}")));
            }
        };
        if trusted.is_empty() {
            return Err((
                Some(Box::new(sc)),
                "no_signers",
                format!(
                    "the master trusts no signer ({} is missing or empty)",
                    path.display()
                ),
            ));
        }
        let cmd = sc.command();
        if trusted.name_of(&cmd.signer).is_none() {
            let msg = format!(
                "unknown signer {}: not in the master's trusted-signer list",
                cmd.signer
            );
            return Err((Some(Box::new(sc)), "unknown_signer", msg));
        }
        if cmd
            .signer
            .verifying_key()
            .verify_strict(sc.body(), &sc.signature())
            .is_err()
        {
            return Err((
                Some(Box::new(sc)),
                "bad_signature",
                "signature does not verify".into(),
            ));
        }
        Ok(sc)
    }

    /// Every host matching the command's target filter, sorted, at most
    /// `limit`: the hosts the master knows (`known`: classification role
    /// and last facts) and the connected agents. Returns the matched names,
    /// the connected ones with their streams (a matched host that is not
    /// connected is one that will not answer), and the connected agents
    /// left out only because the master classified them with another role
    /// than the one they declare (see [`left_out_reason`]).
    #[allow(clippy::type_complexity)]
    fn resolve(
        &self,
        sc: &SignedCommand,
        known: &BTreeMap<String, KnownNode>,
        ca: &troupe_pki::authority::Authority,
    ) -> (
        Vec<String>,
        Vec<(String, mpsc::Sender<Result<CommandDelivery, Status>>)>,
        Vec<LeftOut>,
    ) {
        let t = &sc.command().target;
        let mut agents = lock(&self.agents);
        // Identity is re-checked before every relayed command: a host whose
        // certificate was revoked or replaced since its stream opened gets
        // nothing, and its stream is cut.
        let gone: Vec<String> = agents
            .iter()
            .filter(|(name, a)| ca.check_peer(name, &a.serial).is_err())
            .map(|(n, _)| n.clone())
            .collect();
        for n in gone {
            if let Some(a) = agents.remove(&n) {
                cut(&n, &a);
            }
        }
        let names: BTreeSet<&String> = known.keys().chain(agents.keys()).collect();
        let mut matched: Vec<String> = names
            .into_iter()
            .filter(|name| {
                let (role, facts) = target_view(known.get(*name), agents.get(*name));
                t.matches(name, role.as_deref(), &facts)
            })
            .cloned()
            .collect();
        if let Some(l) = t.limit {
            matched.truncate(l as usize);
        }
        let left_out = agents
            .iter()
            .filter(|(name, _)| !matched.contains(name))
            .filter_map(|(name, a)| {
                left_out_reason(t, name, known.get(name), a).map(|reason| LeftOut {
                    node: name.clone(),
                    reason,
                })
            })
            .collect();
        let connected = matched
            .iter()
            .filter_map(|n| agents.get(n).map(|a| (n.clone(), a.tx.clone())))
            .collect();
        (matched, connected, left_out)
    }

    /// Remembers a submitted command id on disk until it expires (plus
    /// the agents' largest skew allowance); false if it was submitted
    /// before (also before a restart). Errors of the store refuse the
    /// submission (fail closed).
    async fn first_submission(&self, sc: &SignedCommand) -> Result<bool, String> {
        let cmd = sc.command();
        let id = cmd.id;
        let keep = cmd
            .expires_at
            .saturating_add(troupe_command::verify::MAX_SKEW_SECS);
        let seen = self.seen.clone();
        let r = tokio::task::spawn_blocking(move || -> Result<bool, String> {
            let now = troupe_command::verify::unix_now();
            // Errors as (redb stopped by an earlier write, message).
            seen.run(
                |cache| {
                    cache
                        .check_and_record(&id, keep, now)
                        .map_err(|e| (e.is_previous_io(), e.to_string()))
                },
                |(stopped, _)| *stopped,
                |m| (false, m),
            )
            .map(|r| r == Recorded::New)
            .map_err(|(_, m)| m)
        })
        .await;
        match r {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => Err(format!(
                "cannot record the command id in {RELAYED_FILE}, so it is not relayed \
                 (disk full? free space: the master retries by itself on the next \
                 submission): {e}"
            )),
            Err(e) => Err(format!("relay cache task: {e}")),
        }
    }

    /// How many times the relay cache was opened (each recovery after a
    /// failed write adds one).
    pub fn relay_cache_generation(&self) -> u64 {
        self.seen.generation()
    }

    fn set_gauge(&self, state: &MasterState) {
        let n = lock(&self.agents).len();
        state.metrics.connected_agents.set(n as i64);
    }
}

/// Ends an agent's command stream whose certificate is no longer valid.
fn cut(node: &str, a: &AgentConn) {
    tracing::warn!(node, serial = %a.serial, "certificate revoked or replaced: command stream cut");
    let _ = a.tx.try_send(Err(Status::unauthenticated(
        "this host's certificate was revoked or replaced: command stream closed",
    )));
}

/// The tonic service.
pub struct OrchestraService {
    state: Arc<MasterState>,
    orch: Arc<Orchestra>,
}

/// The service for [`crate::daemon::router`].
pub fn server(state: Arc<MasterState>) -> OrchestrationServer<OrchestraService> {
    let orch = Arc::new(Orchestra::new(&state.data_dir));
    OrchestrationServer::new(OrchestraService { state, orch })
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn parse_hello_facts(bytes: &[u8]) -> BTreeMap<String, String> {
    if bytes.is_empty() || bytes.len() > MAX_HELLO_FACTS {
        return BTreeMap::new();
    }
    let map: BTreeMap<String, String> = serde_json::from_slice(bytes).unwrap_or_default();
    map.into_iter()
        .filter(|(k, v)| {
            troupe_command::envelope::is_fact_name(k) && troupe_command::envelope::is_fact_value(v)
        })
        .collect()
}

#[tonic::async_trait]
impl Orchestration for OrchestraService {
    type AttachStream = BoxStream<CommandDelivery>;
    type SubmitStream = BoxStream<SubmitEvent>;

    async fn attach(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let peer = crate::tls::peer_identity(&self.state.ca, &req)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 15 s"))?;
        let hello = match first {
            Some(Ok(AgentMessage {
                msg: Some(agent_message::Msg::Hello(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a hello",
                ));
            }
        };
        let role =
            Some(hello.role).filter(|r| !r.is_empty() && troupe_command::envelope::is_role_name(r));
        let facts = parse_hello_facts(&hello.facts_json);
        let (tx, rx) = mpsc::channel(AGENT_QUEUE);
        let conn = self.orch.next_conn.fetch_add(1, Ordering::Relaxed);
        let replaced = lock(&self.orch.agents)
            .insert(
                peer.name.clone(),
                AgentConn {
                    conn,
                    serial: peer.serial.clone(),
                    tx,
                    role,
                    facts,
                },
            )
            .is_some();
        self.orch.set_gauge(&self.state);
        tracing::info!(node = %peer.name, replaced, "agent attached to the command stream");

        let orch = self.orch.clone();
        let state = self.state.clone();
        let node = peer.name;
        let serial = peer.serial;
        let mut identities = self.state.identities.subscribe();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.next() => m,
                    changed = identities.changed() => {
                        // Revoke, clean or renew happened: is this stream's
                        // certificate still valid?
                        if changed.is_ok() && state.ca.check_peer(&node, &serial).is_ok() {
                            continue;
                        }
                        let mut agents = lock(&orch.agents);
                        if agents.get(&node).is_some_and(|a| a.conn == conn)
                            && let Some(a) = agents.remove(&node)
                        {
                            cut(&node, &a);
                        }
                        break;
                    }
                };
                let Some(msg) = msg else { break };
                let Ok(msg) = msg else { break };
                let Some(agent_message::Msg::Result(mut r)) = msg.msg else {
                    continue;
                };
                let Ok(id) = <[u8; 16]>::try_from(r.command_id.as_slice()) else {
                    continue;
                };
                r.node = node.clone();
                if r.data_json.len() > MAX_RESULT_DATA {
                    r.data_json.clear();
                    r.message
                        .push_str(" (output too large, dropped by the master)");
                }
                clip(&mut r.status, 64);
                clip(&mut r.message, 4096);
                let mut pending = lock(&orch.pending);
                if let Some(p) = pending.get_mut(&id)
                    && p.waiting.remove(&node)
                {
                    let _ = p.tx.send(r);
                }
            }
            let mut agents = lock(&orch.agents);
            if agents.get(&node).is_some_and(|a| a.conn == conn) {
                agents.remove(&node);
            }
            drop(agents);
            orch.set_gauge(&state);
            tracing::info!(node = %node, "agent left the command stream");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn record_deploy(
        &self,
        req: Request<troupe_proto::v1::DeployRecordRequest>,
    ) -> Result<Response<troupe_proto::v1::DeployRecordReply>, Status> {
        let peer = crate::tls::peer_identity(&self.state.ca, &req)?;
        let r =
            crate::events::record::record_deploy(&self.state, &peer.name, req.into_inner()).await;
        self.state.count("RecordDeploy", &r);
        r.map(Response::new)
    }

    async fn submit(
        &self,
        req: Request<SubmitRequest>,
    ) -> Result<Response<Self::SubmitStream>, Status> {
        let peer = crate::tls::peer_identity(&self.state.ca, &req)?;
        let req = req.into_inner();
        let orch = self.orch.clone();
        let sc = match orch.check_signature(&req.envelope) {
            Ok(sc) => sc,
            Err((sc, code, msg)) => {
                tracing::warn!(caller = %peer.name, code, "command refused: {msg}");
                let action = sc.as_ref().map(|s| s.command().action.to_string());
                crate::events::hooks::command_refused(
                    &self.state,
                    &peer.name,
                    action.as_deref(),
                    None,
                    code,
                    &msg,
                );
                orch.audit(vec![orch.record(
                    sc.as_deref(),
                    &peer.name,
                    None,
                    code,
                    &msg,
                )])
                .await;
                return Err(error_code::with_code(
                    Status::permission_denied(format!("{code}: {msg}")),
                    ErrorCode::PermissionDenied,
                ));
            }
        };
        let id = sc.command().id.0;
        // A signed envelope is relayed once: an agent (or anyone holding a
        // certificate) that saw it cannot have it sent again, e.g. to hosts
        // that were offline or beyond the original `limit`, also after a
        // master restart. The agents' own replay caches remain the real
        // gate.
        let first = orch.first_submission(&sc).await;
        if first != Ok(true) {
            let (code, msg) = match first {
                Err(m) => ("store_error", m),
                _ => (
                    "replayed",
                    format!("command {} was already submitted", sc.command().id),
                ),
            };
            orch.audit(vec![orch.record(Some(&sc), &peer.name, None, code, &msg)])
                .await;
            let text = format!("{code}: {msg}");
            return Err(if code == "replayed" {
                error_code::with_code(Status::already_exists(text), ErrorCode::Conflict)
            } else {
                error_code::with_code(Status::unavailable(text), ErrorCode::Unavailable)
            });
        }
        let known = {
            let state = self.state.clone();
            tokio::task::spawn_blocking(move || known_nodes(&state))
                .await
                .unwrap_or_else(|e| Err(format!("targeting task failed: {e}")))
        };
        let known = match known {
            Ok(k) => k,
            Err(msg) => {
                tracing::error!(caller = %peer.name, "command not relayed: {msg}");
                orch.audit(vec![orch.record(
                    Some(&sc),
                    &peer.name,
                    None,
                    "store_error",
                    &msg,
                )])
                .await;
                return Err(error_code::with_code(
                    Status::unavailable(format!("store_error: {msg}; nothing was relayed")),
                    ErrorCode::Unavailable,
                ));
            }
        };
        let (names, targets, left_out) = orch.resolve(&sc, &known, &self.state.ca);
        // Matched, known to the master, but not connected: no answer.
        let offline: BTreeSet<String> = {
            let connected: BTreeSet<&String> = targets.iter().map(|(n, _)| n).collect();
            names
                .iter()
                .filter(|n| !connected.contains(n))
                .cloned()
                .collect()
        };
        let timeout = Duration::from_secs(u64::from(match req.timeout_secs {
            0 => DEFAULT_TIMEOUT_SECS,
            t => t.min(MAX_TIMEOUT_SECS),
        }));
        let (ev_tx, ev_rx) = mpsc::channel::<Result<SubmitEvent, Status>>(1024);
        let targets_ev = SubmitEvent {
            event: Some(submit_event::Event::Targets(SubmitTargets {
                nodes: names.clone(),
            })),
        };
        if req.dry_run {
            orch.audit(vec![orch.record(
                Some(&sc),
                &peer.name,
                None,
                "discovered",
                &format!("{} matched", names.len()),
            )])
            .await;
            let _ = ev_tx.send(Ok(targets_ev)).await;
            let _ = ev_tx
                .send(Ok(SubmitEvent {
                    event: Some(submit_event::Event::Summary(SubmitSummary {
                        matched: names,
                        // Known and matched, but not connected now.
                        no_answer: offline.into_iter().collect(),
                        left_out,
                        ..Default::default()
                    })),
                }))
                .await;
            return Ok(Response::new(Box::pin(ReceiverStream::new(ev_rx))));
        }
        let (res_tx, mut res_rx) = mpsc::unbounded_channel();
        let in_flight = {
            let mut pending = lock(&orch.pending);
            let busy = pending.contains_key(&id);
            if !busy {
                pending.insert(
                    id,
                    Pending {
                        waiting: targets.iter().map(|(n, _)| n.clone()).collect(),
                        tx: res_tx,
                    },
                );
            }
            busy
        };
        if in_flight {
            let msg = "a command with this id is already in flight";
            orch.audit(vec![orch.record(
                Some(&sc),
                &peer.name,
                None,
                "in_flight",
                msg,
            )])
            .await;
            return Err(error_code::with_code(
                Status::already_exists(msg),
                ErrorCode::Conflict,
            ));
        }
        let relayed: Vec<String> = targets.iter().map(|(n, _)| n.clone()).collect();
        orch.audit(orch.group(&sc, &peer.name, &relayed, "relayed"))
            .await;
        let _ = ev_tx.send(Ok(targets_ev)).await;
        tracing::info!(caller = %peer.name, action = %sc.command().action, targets = names.len(), offline = offline.len(), "relaying a command");
        let wire = sc.to_wire();
        let mut undelivered = offline;
        for (name, tx) in &targets {
            let d = CommandDelivery {
                envelope: wire.clone(),
            };
            if tx.try_send(Ok(d)).is_err() {
                undelivered.insert(name.clone());
            }
        }
        if !undelivered.is_empty() {
            let mut pending = lock(&orch.pending);
            if let Some(p) = pending.get_mut(&id) {
                for n in &undelivered {
                    p.waiting.remove(n);
                }
            }
        }
        let caller = peer.name;
        let caller_serial = peer.serial;
        let mut identities = self.state.identities.subscribe();
        let ca = self.state.ca.clone();
        let ev_state = self.state.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + timeout;
            let mut answered = BTreeSet::new();
            let mut oks: Vec<String> = Vec::new();
            let mut others: Vec<(String, String, String)> = Vec::new();
            let (mut ok, mut not_ok) = (0u32, 0u32);
            let expect = names.len() - undelivered.len();
            while answered.len() < expect {
                let left = deadline.saturating_duration_since(Instant::now());
                let r = tokio::select! {
                    r = tokio::time::timeout(left, res_rx.recv()) => match r {
                        Ok(Some(r)) => r,
                        _ => break,
                    },
                    changed = identities.changed() => {
                        // A long-lived call too: the caller's certificate
                        // revoked or replaced ends its result stream now.
                        if changed.is_ok() && ca.check_peer(&caller, &caller_serial).is_ok() {
                            continue;
                        }
                        lock(&orch.pending).remove(&id);
                        tracing::warn!(caller = %caller, "certificate revoked or replaced: result stream cut");
                        let _ = ev_tx
                            .send(Err(Status::unauthenticated(
                                "the caller's certificate was revoked or replaced: result stream closed",
                            )))
                            .await;
                        orch.audit(vec![orch.record(
                            Some(&sc),
                            &caller,
                            None,
                            "caller_revoked",
                            "result stream cut: the caller's certificate is no longer valid",
                        )])
                        .await;
                        return;
                    }
                };
                answered.insert(r.node.clone());
                if r.status == "ok" {
                    ok += 1;
                    oks.push(r.node.clone());
                } else {
                    not_ok += 1;
                    if crate::events::hooks::is_refusal(&r.status) {
                        crate::events::hooks::command_refused(
                            &ev_state,
                            &caller,
                            Some(&sc.command().action.to_string()),
                            Some(&r.node),
                            &r.status,
                            &r.message,
                        );
                    }
                    others.push((r.node.clone(), r.status.clone(), r.message.clone()));
                }
                let _ = ev_tx
                    .send(Ok(SubmitEvent {
                        event: Some(submit_event::Event::Result(r)),
                    }))
                    .await;
            }
            lock(&orch.pending).remove(&id);
            let no_answer: Vec<String> = names
                .iter()
                .filter(|n| !answered.contains(*n))
                .cloned()
                .collect();
            let mut records = orch.group(&sc, &caller, &no_answer, "no_answer");
            let _ = ev_tx
                .send(Ok(SubmitEvent {
                    event: Some(submit_event::Event::Summary(SubmitSummary {
                        matched: names,
                        no_answer,
                        ok,
                        not_ok,
                        left_out,
                    })),
                }))
                .await;
            // Results are audited once the caller has its summary: ok
            // answers grouped, every other answer with its message.
            records.extend(orch.group(&sc, &caller, &oks, "ok"));
            for (node, status, message) in &others {
                records.push(orch.record(Some(&sc), &caller, Some(node), status, message));
            }
            orch.audit(records).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(ev_rx))))
    }
}

/// Shortens `s` to at most `max` bytes without splitting a character
/// (`String::truncate` panics inside one, and these strings come from the
/// network).
fn clip(s: &mut String, max: usize) {
    if s.len() > max {
        let mut i = max;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        s.truncate(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_facts_are_bounded_and_validated() {
        let f = parse_hello_facts(br#"{"os.family":"debian","bad name":"x","k":"v"}"#);
        assert_eq!(f.get("os.family").map(String::as_str), Some("debian"));
        assert!(!f.contains_key("bad name"));
        assert!(parse_hello_facts(b"not json").is_empty());
        assert!(parse_hello_facts(&vec![b' '; MAX_HELLO_FACTS + 1]).is_empty());
    }

    /// On a full disk a command whose id cannot be recorded is refused
    /// (so not relayed) and its id is not kept; once space is freed the
    /// same `Orchestra` (no restart) records ids again, and the ids
    /// recorded before are still there.
    #[tokio::test]
    async fn the_relay_cache_recovers_by_itself_once_a_full_disk_has_space_again() {
        let Some(fs) = troupe_base::test_fs::mount_or_skip("4m") else {
            return;
        };
        let mnt = fs.path.clone();
        let orch = Orchestra::new(&mnt);
        let mut signer = troupe_bastion::FileSigner::generate().unwrap();
        let mut command = || {
            troupe_command::Command::new(
                signer.key_id().clone(),
                "ping",
                BTreeMap::new(),
                troupe_command::TargetFilter::default(),
                troupe_command::verify::unix_now(),
                300,
            )
            .unwrap()
            .sign(&mut signer)
            .unwrap()
        };
        let first = command();
        assert_eq!(orch.first_submission(&first).await, Ok(true));
        assert_eq!(orch.first_submission(&first).await, Ok(false));
        let filler = fs.fill();
        // Fresh ids until the full disk refuses one (redb may first reuse
        // pages its file already has).
        let mut refused = Vec::new();
        for _ in 0..2000 {
            let c = command();
            match orch.first_submission(&c).await {
                Ok(true) => {}
                Ok(false) => panic!("a fresh id counted as a replay"),
                Err(e) => {
                    assert!(e.contains("not relayed") && e.contains("disk full?"), "{e}");
                    refused.push(c);
                    if refused.len() == 3 {
                        break;
                    }
                }
            }
        }
        assert!(!refused.is_empty(), "no refusal on a full disk");
        std::fs::remove_file(&filler).unwrap();
        // No restart: ids are recorded again, the earlier one is kept, and
        // the refused ones were never recorded.
        assert_eq!(orch.first_submission(&command()).await, Ok(true));
        assert_eq!(orch.first_submission(&first).await, Ok(false));
        for c in &refused {
            assert_eq!(orch.first_submission(c).await, Ok(true));
        }
        assert!(orch.relay_cache_generation() > 1, "the cache was reopened");
    }

    #[test]
    fn clip_never_splits_a_character() {
        let mut s = format!("{}é", "s".repeat(63));
        clip(&mut s, 64);
        assert_eq!(s, "s".repeat(63));
        let mut t = "ok".to_string();
        clip(&mut t, 64);
        assert_eq!(t, "ok");
    }
}
