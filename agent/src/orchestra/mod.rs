//! The agent's side of signed orchestration (issue 6).
//!
//! The agent keeps one mutual-TLS stream open to the master (it dials out:
//! no listening port), reconnecting with exponential backoff and jitter.
//! Each command that arrives is checked by a [`troupe_command::Verifier`]
//! built from this host's own configuration ([`config`]: trusted signers,
//! policy, module actions; deny everything when absent) and its replay
//! cache (`STATE/orchestration-replay.redb`), and only then executed
//! ([`actions`], argv only, never a shell). Every command, allowed or
//! refused, is appended to the hash-chained `STATE/orchestration-audit.log`
//! before anything runs (an allowed command is recorded again with its
//! outcome); if that record cannot be written, nothing runs.
//!
//! `troupe-agent listen` runs the listener alone; the converge daemon can
//! run it alongside its timer with [`spawn_listener`].

pub mod actions;
pub mod config;

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use troupe_base::audit::AuditLog;
use troupe_command::verify::{CommandAudit, unix_now};
use troupe_command::{HostContext, SignedCommand, Verifier};
use troupe_identity::Identity;
use troupe_proto::v1::orchestration_client::OrchestrationClient;
use troupe_proto::v1::{AgentHello, AgentMessage, CommandResult, agent_message};

pub use actions::{ExecContext, Outcome};
pub use config::OrchestraConfig;

/// The replay cache in the state directory.
pub const REPLAY_FILE: &str = "orchestration-replay.redb";
/// The local audit log in the state directory.
pub const AUDIT_FILE: &str = "orchestration-audit.log";

/// Options of `troupe-agent listen`.
#[derive(clap::Args, Debug, Clone)]
pub struct ListenArgs {
    /// The master, e.g. `https://puppet.example:8140`.
    #[arg(long)]
    pub server: String,
    /// State directory (identity from `troupe-agent bootstrap`, replay
    /// cache, audit log, markers).
    #[arg(long, default_value = crate::state::DEFAULT_STATE_DIR)]
    pub state: PathBuf,
    /// Orchestration configuration (trusted signers, policy, module
    /// actions, HAProxy socket). Default: STATE/orchestration.toml. When the
    /// file is missing every command is refused.
    #[arg(long, value_name = "FILE")]
    pub orchestration: Option<PathBuf>,
    /// Directory of external facts (for targeting and the `facts` action).
    #[arg(long, default_value = crate::facts::DEFAULT_FACTS_DIR)]
    pub facts_dir: PathBuf,
    /// Longest wait between reconnection attempts.
    #[arg(long, default_value = "60s")]
    pub backoff_max: humantime::Duration,
}

/// `troupe-agent listen`: runs until SIGINT/SIGTERM.
pub fn listen(args: ListenArgs) -> Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let handler = Arc::new(Handler::open(&args)?);
        let shutdown = async {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {},
                        _ = term.recv() => {},
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        tokio::select! {
            r = run_listener(handler, args) => r,
            _ = shutdown => Ok(()),
        }
    })?;
    Ok(0)
}

/// Runs the listener on its own thread and runtime (for the converge
/// daemon). Errors opening the configuration are returned at once.
pub fn spawn_listener(args: ListenArgs) -> Result<std::thread::JoinHandle<()>> {
    let handler = Arc::new(Handler::open(&args)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(std::thread::Builder::new()
        .name("troupe-orchestra".into())
        .spawn(move || {
            if let Err(e) = rt.block_on(run_listener(handler, args)) {
                tracing::error!("command listener stopped: {e:#}");
            }
        })?)
}

/// Verifies, audits and executes commands for this host.
pub struct Handler {
    verifier: RwLock<Verifier>,
    audit: Mutex<AuditLog>,
    ctx: RwLock<ExecContext>,
    hello: RwLock<AgentHello>,
    /// The configuration's `actions_dir` (watched for changes too).
    actions_dir: RwLock<Option<PathBuf>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// The configuration file a listener uses.
pub fn config_path(args: &ListenArgs) -> PathBuf {
    args.orchestration
        .clone()
        .unwrap_or_else(|| args.state.join(config::DEFAULT_FILE))
}

fn host_and_hello(
    node: &str,
    cfg: &OrchestraConfig,
    facts: &serde_json::Value,
) -> Result<(HostContext, AgentHello)> {
    let mut facts = HostContext::flatten_facts(facts);
    // The environment comes from this host's own configuration (trusted),
    // never from a fact file: `troupe run/deploy --environment E` targets
    // it, and this agent checks it again like any other fact.
    match &cfg.environment {
        Some(e) => facts.insert("environment".into(), e.clone()),
        None => facts.remove("environment"),
    };
    let host = HostContext {
        name: node.to_string(),
        role: cfg.role.clone(),
        facts,
    };
    let hello = AgentHello {
        role: cfg.role.clone().unwrap_or_default(),
        facts_json: serde_json::to_vec(&host.facts)?,
    };
    Ok((host, hello))
}

impl Handler {
    /// Loads identity name, configuration and facts, opens the replay
    /// cache and the audit log.
    pub fn open(args: &ListenArgs) -> Result<Handler> {
        crate::state::create_private_dir(&args.state)?;
        let id = Identity::load(&args.state)?;
        let cfg = OrchestraConfig::load(&config_path(args))?;
        let facts = crate::facts::gather(&args.facts_dir, Duration::from_secs(10));
        let h = Self::new(&args.state, &id.name, cfg, &facts, args.facts_dir.clone())?;
        write(&h.ctx).server = Some(args.server.clone());
        Ok(h)
    }

    /// Re-reads the configuration and the facts (trusted signers, policy,
    /// actions, role, tools); the replay cache and audit log stay. An
    /// unreadable or invalid file fails closed: every command is refused
    /// until it is fixed. The clock-skew allowance is kept from startup.
    pub fn reload(&self, args: &ListenArgs) {
        let path = config_path(args);
        let cfg = match OrchestraConfig::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{e:#}; refusing every command until it is fixed");
                OrchestraConfig {
                    registry: troupe_command::Registry::empty(),
                    ..OrchestraConfig::default()
                }
            }
        };
        let facts = crate::facts::gather(&args.facts_dir, Duration::from_secs(10));
        let node = read(&self.ctx).node.clone();
        let (host, hello) = match host_and_hello(&node, &cfg, &facts) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("facts: {e:#}");
                return;
            }
        };
        {
            let mut ctx = write(&self.ctx);
            ctx.haproxy_socket = cfg.haproxy_socket.clone();
            ctx.tools = cfg.tools.clone();
            ctx.converge_root = cfg.converge_root.clone();
        }
        *write(&self.hello) = hello;
        *write(&self.actions_dir) = cfg.actions_dir.clone();
        write(&self.verifier).reconfigure(cfg.signers, cfg.registry, cfg.policy, host);
    }

    /// A handler from explicit parts.
    pub fn new(
        state_dir: &Path,
        node: &str,
        cfg: OrchestraConfig,
        facts: &serde_json::Value,
        facts_dir: PathBuf,
    ) -> Result<Handler> {
        let (host, hello) = host_and_hello(node, &cfg, facts)?;
        let mut verifier = Verifier::new(
            cfg.signers,
            cfg.registry,
            cfg.policy,
            &state_dir.join(REPLAY_FILE),
            host,
        )
        .map_err(|e| anyhow::anyhow!("opening the replay cache: {e}"))?;
        if let Some(s) = cfg.skew_secs {
            verifier = verifier.with_skew(s);
        }
        let audit = AuditLog::open(&state_dir.join(AUDIT_FILE))
            .map_err(|e| anyhow::anyhow!("opening the audit log: {e}"))?;
        Ok(Handler {
            verifier: RwLock::new(verifier),
            audit: Mutex::new(audit),
            ctx: RwLock::new(ExecContext {
                state_dir: state_dir.to_path_buf(),
                node: node.to_string(),
                facts_dir,
                haproxy_socket: cfg.haproxy_socket,
                tools: cfg.tools,
                server: None,
                converge_root: cfg.converge_root,
            }),
            hello: RwLock::new(hello),
            actions_dir: RwLock::new(cfg.actions_dir),
        })
    }

    fn audit(&self, rec: &CommandAudit) -> Result<(), String> {
        let mut log = self.audit.lock().unwrap_or_else(|e| e.into_inner());
        log.append(rec).map(|_| ()).map_err(|e| e.to_string())
    }

    /// Verifies, audits and (if allowed) executes one command.
    pub async fn handle(self: &Arc<Self>, wire: Vec<u8>) -> CommandResult {
        let start = Instant::now();
        let me = self.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let decoded = SignedCommand::from_wire(&wire).ok();
            let verifier = read(&me.verifier);
            let verdict = verifier.verify_wire(&wire, unix_now());
            let rec = match &verdict {
                Ok(v) => CommandAudit::new(
                    Some(&v.command),
                    verifier.registry(),
                    "allowed",
                    &format!("signer {}, rule {}", v.signer_name, v.allowed_by),
                ),
                Err(r) => CommandAudit::refused(
                    decoded.as_ref().map(|s| s.command()),
                    verifier.registry(),
                    r,
                ),
            };
            let audited = me.audit(&rec);
            (decoded.map(|s| s.command().id.0), verdict, audited)
        })
        .await;
        let (id, verdict, audited) = match checked {
            Ok(x) => x,
            Err(e) => {
                return result(None, "failed", format!("internal error: {e}"), start, None);
            }
        };
        let v = match verdict {
            Err(refusal) => {
                tracing::warn!(code = refusal.code(), "command refused: {refusal}");
                if let Err(e) = audited {
                    tracing::error!("audit log: {e}");
                }
                return result(id, refusal.code(), refusal.to_string(), start, None);
            }
            Ok(v) => v,
        };
        if let Err(e) = audited {
            tracing::error!("audit log: {e}; refusing to act");
            return result(
                id,
                "audit_error",
                format!("cannot write the audit log, nothing was done: {e}"),
                start,
                None,
            );
        }
        tracing::info!(action = %v.command.action, signer = %v.signer_name, "executing a command");
        let ctx = read(&self.ctx).clone();
        let spec = read(&self.verifier)
            .registry()
            .get(&v.command.action)
            .cloned();
        let out = actions::execute(&ctx, &v, spec.as_ref()).await;
        let status = if out.ok { "ok" } else { "failed" };
        let rec = CommandAudit::new(
            Some(&v.command),
            read(&self.verifier).registry(),
            status,
            &out.message,
        );
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.audit(&rec)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("audit log: {e}"),
            Err(e) => tracing::error!("audit log task: {e}"),
        }
        result(id, status, out.message, start, Some(&out.data))
    }
}

fn result(
    id: Option<[u8; 16]>,
    status: &str,
    message: String,
    start: Instant,
    data: Option<&serde_json::Value>,
) -> CommandResult {
    CommandResult {
        command_id: id.map(|i| i.to_vec()).unwrap_or_default(),
        node: String::new(),
        status: status.to_string(),
        message,
        data_json: match data {
            Some(serde_json::Value::Null) | None => Vec::new(),
            Some(d) => serde_json::to_vec(d).unwrap_or_default(),
        },
        duration_ms: start.elapsed().as_millis() as u64,
    }
}

/// Keeps the command stream open forever: connect, hello, serve commands;
/// on any failure wait (exponential backoff with jitter) and reconnect.
pub async fn run_listener(handler: Arc<Handler>, args: ListenArgs) -> Result<()> {
    let max = Duration::from(args.backoff_max).max(Duration::from_millis(200));
    let mut backoff = Duration::from_millis(250);
    loop {
        let started = Instant::now();
        match session(&handler, &args).await {
            Ok(()) => {}
            Err(e) => tracing::warn!("command stream: {e:#}"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(250);
        }
        let half = backoff / 2;
        let jitter = Duration::from_millis(fastrand::u64(0..=half.as_millis() as u64));
        tokio::time::sleep(half + jitter).await;
        backoff = (backoff * 2).min(max);
    }
}

/// What a change of configuration looks like: modification time, size
/// and mode of the configuration file, the actions directory and each
/// file in it (None when missing).
type Stamp = Vec<(PathBuf, Option<(std::time::SystemTime, u64, u32)>)>;

fn config_stamp(args: &ListenArgs, actions_dir: Option<&Path>) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let of = |p: &Path| {
        std::fs::symlink_metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len(), m.mode())))
    };
    let mut paths = vec![config_path(args)];
    if let Some(d) = actions_dir {
        paths.push(d.to_path_buf());
        if let Ok(rd) = std::fs::read_dir(d) {
            let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            paths.extend(files.into_iter().take(1024));
        }
    }
    paths
        .into_iter()
        .map(|p| {
            let s = of(&p);
            (p, s)
        })
        .collect()
}

/// How often the listener looks for a changed configuration file.
const CONFIG_POLL: Duration = Duration::from_secs(2);

async fn session(handler: &Arc<Handler>, args: &ListenArgs) -> Result<()> {
    // Configuration and facts are re-read at every (re)connection, so the
    // hello and the verifier match what is on disk now.
    let dir = read(&handler.actions_dir).clone();
    let stamp = config_stamp(args, dir.as_deref());
    {
        let h = handler.clone();
        let a = args.clone();
        tokio::task::spawn_blocking(move || h.reload(&a)).await?;
    }
    // Reload the identity each time: a renewal may have replaced it.
    let id = Identity::load(&args.state)?;
    let channel = id.connect(&args.server).await?;
    let mut client = OrchestrationClient::new(channel)
        .max_decoding_message_size(2 * 1024 * 1024)
        .max_encoding_message_size(2 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<AgentMessage>(256);
    let hello = read(&handler.hello).clone();
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await
    .ok();
    let mut inbound = client
        .attach(ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("{}", troupe_identity::status_message(&s)))?
        .into_inner();
    tracing::info!(server = %args.server, "command stream open");
    let mut poll = tokio::time::interval(CONFIG_POLL);
    poll.tick().await;
    // What the verifier was last loaded from: checked again before every
    // command, so a changed file applies to the very next command (the poll
    // below only reconnects, to send a hello with the new role and facts).
    let mut applied = stamp.clone();
    loop {
        let d = tokio::select! {
            d = inbound.next() => d,
            _ = poll.tick() => {
                if config_stamp(args, dir.as_deref()) != stamp {
                    tracing::info!("orchestration configuration changed: reconnecting with it");
                    return Ok(());
                }
                continue;
            }
        };
        let Some(d) = d else { break };
        let d = d.map_err(|s| anyhow::anyhow!("{}", troupe_identity::status_message(&s)))?;
        let now = config_stamp(args, dir.as_deref());
        if now != applied {
            tracing::info!("orchestration configuration changed: applying it before this command");
            let h = handler.clone();
            let a = args.clone();
            tokio::task::spawn_blocking(move || h.reload(&a)).await?;
            applied = now;
        }
        let h = handler.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let r = h.handle(d.envelope).await;
            let _ = tx
                .send(AgentMessage {
                    msg: Some(agent_message::Msg::Result(r)),
                })
                .await;
        });
    }
    tracing::warn!("the master closed the command stream");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_bastion::FileSigner;
    use troupe_command::{ArgValue, Signer, TargetFilter};

    struct T {
        _dir: tempfile::TempDir,
        state: PathBuf,
        handler: Arc<Handler>,
        alice: FileSigner,
    }

    fn setup(extra: &str) -> T {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let alice = FileSigner::generate().unwrap();
        let cfg = OrchestraConfig::from_toml(&format!(
            "{extra}\n[[signer]]\nname = \"alice\"\nkey = \"{}\"\n[[rule]]\neffect = \"allow\"\nsigners = [\"alice\"]\nactions = [\"*\"]\n",
            alice.key_id()
        ))
        .unwrap();
        let handler = Handler::new(
            &state,
            "web1",
            cfg,
            &serde_json::json!({}),
            dir.path().join("facts.d"),
        )
        .unwrap();
        T {
            _dir: dir,
            state,
            handler: Arc::new(handler),
            alice,
        }
    }

    fn wire(signer: &mut FileSigner, action: &str, args: &[(&str, &str)]) -> Vec<u8> {
        let args = args
            .iter()
            .map(|(k, v)| (k.to_string(), ArgValue::Str(v.to_string())))
            .collect();
        troupe_command::Command::new(
            signer.key_id().clone(),
            action,
            args,
            TargetFilter::default(),
            unix_now(),
            60,
        )
        .unwrap()
        .sign(signer as &mut dyn Signer)
        .unwrap()
        .to_wire()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn forged_signature_is_refused_audited_and_not_run() {
        let mut t = setup("");
        let mut w = wire(&mut t.alice, "maintenance.on", &[("message", "x")]);
        let n = w.len();
        w[n - 1] ^= 0x80;
        let r = rt().block_on(t.handler.handle(w));
        assert_eq!(r.status, "bad_signature");
        assert_eq!(r.command_id.len(), 16);
        assert!(!t.state.join(actions::MAINTENANCE_FILE).exists());
        let audit = std::fs::read_to_string(t.state.join(AUDIT_FILE)).unwrap();
        assert!(audit.contains("\"outcome\":\"bad_signature\""), "{audit}");
        // Garbage is refused as malformed, and audited too.
        let r = rt().block_on(t.handler.handle(b"garbage".to_vec()));
        assert_eq!(r.status, "malformed");
        let audit = std::fs::read_to_string(t.state.join(AUDIT_FILE)).unwrap();
        assert!(audit.contains("\"outcome\":\"malformed\""), "{audit}");
    }

    #[test]
    fn disable_enable_and_maintenance_markers() {
        let mut t = setup("");
        let rt = rt();
        let r = rt.block_on(t.handler.handle(wire(
            &mut t.alice,
            "agent.disable",
            &[("message", "release 7")],
        )));
        assert_eq!(r.status, "ok", "{r:?}");
        let d = crate::state::disabled(&t.state).expect("disabled");
        assert_eq!(d.reason, "release 7");
        let r = rt.block_on(t.handler.handle(wire(&mut t.alice, "agent.enable", &[])));
        assert_eq!(r.status, "ok");
        assert!(crate::state::disabled(&t.state).is_none());
        // Without a master address (not the listener) agent.run does nothing.
        let r = rt.block_on(t.handler.handle(wire(&mut t.alice, "agent.run", &[])));
        assert_eq!(r.status, "failed");
        assert!(
            r.message.contains("does not know its master"),
            "{}",
            r.message
        );
    }

    /// A stand-in for HAProxy's runtime API on a unix socket: records the
    /// line it gets, answers like HAProxy (empty line = success).
    fn fake_haproxy(path: &Path, reply: &'static str) -> std::thread::JoinHandle<String> {
        use std::io::{BufRead, Write};
        let l = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(reply.as_bytes()).unwrap();
            line
        })
    }

    #[test]
    fn lb_drain_and_restore_speak_the_haproxy_runtime_api() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("haproxy.sock");
        let mut t = setup(&format!("haproxy_socket = \"{}\"", sock.display()));
        let rt = rt();
        let srv = fake_haproxy(&sock, "\n");
        let r = rt.block_on(t.handler.handle(wire(
            &mut t.alice,
            "lb.drain",
            &[("backend", "www")],
        )));
        assert_eq!(r.status, "ok", "{r:?}");
        assert_eq!(srv.join().unwrap(), "set server www/web1 state drain\n");
        std::fs::remove_file(&sock).unwrap();
        let srv = fake_haproxy(&sock, "No such server.\n");
        let r = rt.block_on(t.handler.handle(wire(
            &mut t.alice,
            "lb.restore",
            &[("backend", "www"), ("server", "other")],
        )));
        assert_eq!(srv.join().unwrap(), "set server www/other state ready\n");
        assert_eq!(r.status, "failed");
        assert!(r.message.contains("No such server"), "{}", r.message);
    }
}

#[cfg(test)]
mod module_action_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use troupe_bastion::FileSigner;
    use troupe_command::{ArgValue, Signer, TargetFilter};

    struct T {
        dir: tempfile::TempDir,
        handler: Arc<Handler>,
        alice: FileSigner,
        rt: tokio::runtime::Runtime,
    }

    impl T {
        fn new() -> T {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state");
            std::fs::create_dir(&state).unwrap();
            let d = dir.path().display();
            let tool = dir.path().join("tool");
            std::fs::write(
                &tool,
                format!(
                    "#!/bin/sh\nfor a; do echo \"[$a]\" >> {d}/args.log; done\necho \"PATH=$PATH HOME=${{HOME:-}} SECRET=${{SECRET:-}}\"\n[ \"$1\" = sleep ] && {{ sleep 30 & echo $! > {d}/bg.pid; sleep 30; }}\n[ \"$1\" = fail ] && {{ echo 'it broke' >&2; exit 3; }}\nexit 0\n"
                ),
            )
            .unwrap();
            std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
            let alice = FileSigner::generate().unwrap();
            let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
                .unwrap()
                .unwrap()
                .name;
            let cfg = OrchestraConfig::from_toml(&format!(
                r#"
[[signer]]
name = "alice"
key = "{key}"
[[rule]]
effect = "allow"
signers = ["alice"]
actions = ["*"]

[[modules.app.action]]
name = "app.echo"
user = "{me}"
[[modules.app.action.arg]]
name = "mode"
type = "enum"
values = ["plain", "sleep", "fail"]
required = true
[[modules.app.action.arg]]
name = "note"
type = "text"
max_len = 100
[[modules.app.action.run]]
argv = ["{d}/tool", "{{mode}}", "{{note}}"]
[[modules.app.action.run]]
argv = ["{d}/tool", "second"]

[[modules.app.action]]
name = "app.slow"
timeout_secs = 1
[[modules.app.action.run]]
argv = ["{d}/tool", "sleep"]

[[modules.app.action]]
name = "app.nouser"
user = "no_such_user_troupe"
[[modules.app.action.run]]
argv = ["{d}/tool"]
"#,
                key = alice.key_id()
            ))
            .unwrap();
            let handler = Arc::new(
                Handler::new(
                    &state,
                    "web1",
                    cfg,
                    &serde_json::json!({}),
                    dir.path().into(),
                )
                .unwrap(),
            );
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            T {
                dir,
                handler,
                alice,
                rt,
            }
        }

        fn send(&mut self, action: &str, args: &[(&str, &str)]) -> CommandResult {
            let args = args
                .iter()
                .map(|(k, v)| (k.to_string(), ArgValue::Str(v.to_string())))
                .collect();
            let w = troupe_command::Command::new(
                self.alice.key_id().clone(),
                action,
                args,
                TargetFilter::default(),
                unix_now(),
                60,
            )
            .unwrap()
            .sign(&mut self.alice as &mut dyn Signer)
            .unwrap()
            .to_wire();
            self.rt.block_on(self.handler.handle(w))
        }

        fn args_log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("args.log")).unwrap_or_default()
        }
    }

    #[test]
    fn declared_actions_run_their_argv_templates() {
        let mut t = T::new();
        let r = t.send(
            "app.echo",
            &[("mode", "plain"), ("note", "a b; rm -rf / $(id)")],
        );
        assert_eq!(r.status, "ok", "{r:?}");
        // Each value is one argv element; nothing was interpreted.
        assert_eq!(
            t.args_log(),
            "[plain]\n[a b; rm -rf / $(id)]\n[second]\n",
            "{r:?}"
        );
        let data: serde_json::Value = serde_json::from_slice(&r.data_json).unwrap();
        assert_eq!(data["steps"].as_array().unwrap().len(), 2);
        let out = data["steps"][0]["stdout"].as_str().unwrap();
        // A clean environment (nothing inherited from the agent).
        assert!(out.contains("PATH=/usr/local/sbin:"), "{out}");
        assert!(out.contains("SECRET=\n"), "{out}");
        // A failing step stops the action, with its own words.
        std::fs::remove_file(t.dir.path().join("args.log")).unwrap();
        let r = t.send("app.echo", &[("mode", "fail")]);
        assert_eq!(r.status, "failed");
        assert!(
            r.message.contains("exited with 3: it broke"),
            "{}",
            r.message
        );
        assert_eq!(t.args_log(), "[fail]\n", "the second step never ran");
    }

    #[test]
    fn bad_values_never_reach_a_program() {
        let mut t = T::new();
        let r = t.send(
            "app.echo",
            &[("mode", "plain"), ("note", "--output=/etc/passwd")],
        );
        assert_eq!(r.status, "failed");
        assert!(
            r.message.contains("would be read as an option"),
            "{}",
            r.message
        );
        let r = t.send("app.echo", &[("mode", "reboot")]);
        assert_eq!(r.status, "bad_argument");
        let r = t.send("app.echo", &[("mode", "plain"), ("note", "a\nb")]);
        assert_eq!(r.status, "bad_argument");
        assert_eq!(t.args_log(), "", "nothing ran");
    }

    #[test]
    fn timeouts_kill_and_unknown_users_refuse() {
        let mut t = T::new();
        let start = Instant::now();
        let r = t.send("app.slow", &[]);
        assert_eq!(r.status, "failed");
        assert!(
            r.message.contains("did not finish within 1 s"),
            "{}",
            r.message
        );
        assert!(start.elapsed() < Duration::from_secs(10));
        // The step forked a child that sleeps on: killed with its group.
        let pid: i32 = std::fs::read_to_string(t.dir.path().join("bg.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true)
        });
        assert!(gone, "the step's forked child {pid} outlived the timeout");
        let r = t.send("app.nouser", &[]);
        assert_eq!(r.status, "failed");
        assert!(r.message.contains("does not exist"), "{}", r.message);
        assert_eq!(t.args_log(), "[sleep]\n");
    }

    #[test]
    fn health_checks_stay_on_this_host() {
        use std::io::{Read, Write};
        let mut t = T::new();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let srv = std::thread::spawn(move || {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).unwrap();
                write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
                .unwrap();
            }
        });
        let url = format!("http://127.0.0.1:{port}/healthz");
        let r = t.send("health.http", &[("url", &url)]);
        assert_eq!(r.status, "ok", "{r:?}");
        let r = t.send("health.http", &[("url", &url)]);
        assert_eq!(r.status, "failed");
        assert!(
            r.message.contains("answered 503, expected 200"),
            "{}",
            r.message
        );
        srv.join().unwrap();
        // Another host is not a health check: refused before anything runs.
        let r = t.send("health.http", &[("url", "http://192.0.2.1/")]);
        assert_eq!(r.status, "bad_argument");
    }
}

#[cfg(test)]
mod tools_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use troupe_bastion::FileSigner;
    use troupe_command::{ArgValue, Signer, TargetFilter};

    #[test]
    fn configured_tools_are_used_instead_of_the_system_ones() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let log = dir.path().join("calls.log");
        for (name, body) in [
            ("dpkg-query", "printf 'ii |9.9\\n'"),
            ("apt-get", "exit 0"),
            (
                "systemctl",
                "[ \"$1\" = show ] && printf 'Type=notify\\nActiveState=active\\nSubState=running\\nResult=success\\n'; exit 0",
            ),
        ] {
            let p = dir.path().join(name);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\necho \"{name} $*\" >> {}\n{body}\n",
                    log.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut alice = FileSigner::generate().unwrap();
        let d = dir.path().display();
        let cfg = OrchestraConfig::from_toml(&format!(
            "[[signer]]\nname = \"alice\"\nkey = \"{}\"\n[[rule]]\neffect = \"allow\"\nsigners = [\"alice\"]\nactions = [\"*\"]\n\n[tools]\ndpkg_query = \"{d}/dpkg-query\"\napt_get = \"{d}/apt-get\"\nsystemctl = \"{d}/systemctl\"\n",
            alice.key_id()
        ))
        .unwrap();
        assert!(cfg.tools.apt_get.is_some());
        let h = Arc::new(
            Handler::new(
                &state,
                "web1",
                cfg,
                &serde_json::json!({}),
                dir.path().into(),
            )
            .unwrap(),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut send = |action: &str, args: &[(&str, &str)]| {
            let args = args
                .iter()
                .map(|(k, v)| (k.to_string(), ArgValue::Str(v.to_string())))
                .collect();
            let w = troupe_command::Command::new(
                alice.key_id().clone(),
                action,
                args,
                TargetFilter::default(),
                unix_now(),
                60,
            )
            .unwrap()
            .sign(&mut alice as &mut dyn Signer)
            .unwrap()
            .to_wire();
            rt.block_on(h.handle(w))
        };
        let r = send("package.update", &[("name", "nginx"), ("version", "9.9")]);
        assert_eq!(r.status, "ok", "{r:?}");
        let r = send("package.install", &[("name", "nginx"), ("version", "9.10")]);
        // The stand-in apt-get installs nothing: the version read back
        // afterwards is still 9.9, and the command says so.
        assert_eq!(r.status, "failed", "{r:?}");
        assert!(r.message.contains("is at 9.9, not 9.10"), "{r:?}");
        let r = send("service.restart", &[("name", "nginx")]);
        assert_eq!(r.status, "ok", "{r:?}");
        let calls = std::fs::read_to_string(&log).unwrap();
        assert!(calls.contains("dpkg-query -W -f"), "{calls}");
        assert!(
            calls.contains("apt-get install -y -q --allow-downgrades")
                && calls.contains("-- nginx=9.10"),
            "{calls}"
        );
        assert!(calls.contains("systemctl restart -- nginx"), "{calls}");
        assert!(calls.contains("systemctl show --property"), "{calls}");
    }
}
