//! Executing verified actions: the built-ins, and module-declared actions
//! from their argv templates. Every external program is run with an argv
//! (never a shell), with a timeout, and its arguments have already passed
//! the action's typed schema in the verifier (and again when the argv is
//! built).
//!
//! `package.*` and `service.*` are the package and service providers'
//! own code (one implementation with converging), with the configured
//! `[tools]`; programs run through `providers::cmd` (own process group,
//! killed as a whole at the timeout).

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use troupe_command::registry::{ActionSpec, DEFAULT_ACTION_TIMEOUT_SECS};
use troupe_command::{ArgValue, Verified};

use super::config::Tools;
use crate::providers::package as pkg;
use crate::providers::{Ctx, cmd};

/// The maintenance marker in the state directory (JSON: message, since,
/// by), readable by monitoring.
pub const MAINTENANCE_FILE: &str = "maintenance";
/// The agent-disabled marker (same file `troupe-agent disable` writes).
pub const DISABLED_FILE: &str = "disabled";

/// What an action needs to know about this agent.
#[derive(Debug, Clone)]
pub struct ExecContext {
    pub state_dir: PathBuf,
    /// This host's certificate name (default HAProxy server name).
    pub node: String,
    pub facts_dir: PathBuf,
    pub haproxy_socket: Option<PathBuf>,
    /// Program paths from the configuration (else the system's).
    pub tools: Tools,
    /// The master (for `agent.run`), when the listener knows it.
    pub server: Option<String>,
    /// `--root` for `agent.run` (from the configuration), else `/`.
    pub converge_root: Option<PathBuf>,
}

/// The result of one action.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    pub message: String,
    pub data: Value,
}

impl Outcome {
    fn ok(message: impl Into<String>, data: Value) -> Self {
        Self {
            ok: true,
            message: message.into(),
            data,
        }
    }
    fn failed(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
            data: Value::Null,
        }
    }
}

fn str_arg<'a>(args: &'a BTreeMap<String, ArgValue>, name: &str) -> Option<&'a str> {
    match args.get(name) {
        Some(ArgValue::Str(s)) => Some(s),
        _ => None,
    }
}

fn int_arg(args: &BTreeMap<String, ArgValue>, name: &str) -> Option<i64> {
    match args.get(name) {
        Some(ArgValue::Int(i)) => Some(*i),
        _ => None,
    }
}

/// Runs the verified command's action. `spec` is its declaration in the
/// verifier's registry (module actions run from it).
pub async fn execute(ctx: &ExecContext, v: &Verified, spec: Option<&ActionSpec>) -> Outcome {
    let args = &v.command.args;
    let action = v.command.action.as_str();
    match action {
        "ping" => Outcome::ok(
            "pong",
            json!({ "time": troupe_command::verify::unix_now() }),
        ),
        "facts" => {
            let dir = ctx.facts_dir.clone();
            match tokio::task::spawn_blocking(move || {
                crate::facts::gather(&dir, Duration::from_secs(10))
            })
            .await
            {
                Ok(f) => Outcome::ok("facts gathered", f),
                Err(e) => Outcome::failed(format!("gathering facts: {e}")),
            }
        }
        "agent.disable" => {
            let msg = str_arg(args, "message").unwrap_or("disabled by an operator");
            let d = crate::state::Disabled {
                reason: msg.to_string(),
                since: crate::state::now_rfc3339(),
            };
            write_marker(&ctx.state_dir.join(DISABLED_FILE), &json!(d))
                .map(|()| Outcome::ok(format!("runs disabled: {msg}"), Value::Null))
                .unwrap_or_else(Outcome::failed)
        }
        "agent.enable" => remove_marker(&ctx.state_dir.join(DISABLED_FILE), "runs enabled"),
        "maintenance.on" => {
            let msg = str_arg(args, "message").unwrap_or("");
            let m = json!({
                "message": msg,
                "since": crate::state::now_rfc3339(),
                "by": v.signer_name,
            });
            write_marker(&ctx.state_dir.join(MAINTENANCE_FILE), &m)
                .map(|()| Outcome::ok(format!("maintenance on: {msg}"), m.clone()))
                .unwrap_or_else(Outcome::failed)
        }
        "maintenance.off" => {
            remove_marker(&ctx.state_dir.join(MAINTENANCE_FILE), "maintenance off")
        }
        "agent.run" => agent_run(ctx, args).await,
        "package.status" | "package.install" | "package.update" => {
            let Some(name) = str_arg(args, "name") else {
                return Outcome::failed("missing argument name");
            };
            package(&ctx.tools, action, name, str_arg(args, "version")).await
        }
        "service.status" | "service.start" | "service.stop" | "service.restart" => {
            let Some(name) = str_arg(args, "name") else {
                return Outcome::failed("missing argument name");
            };
            service(&ctx.tools, action.trim_start_matches("service."), name).await
        }
        "lb.drain" | "lb.restore" => {
            let Some(backend) = str_arg(args, "backend") else {
                return Outcome::failed("missing argument backend");
            };
            let server = str_arg(args, "server").unwrap_or(&ctx.node);
            let Some(sock) = &ctx.haproxy_socket else {
                return Outcome::failed(
                    "no haproxy_socket in this agent's orchestration configuration",
                );
            };
            let state = if action == "lb.drain" {
                "drain"
            } else {
                "ready"
            };
            haproxy(sock, backend, server, state).await
        }
        "health.http" => {
            let Some(url) = str_arg(args, "url") else {
                return Outcome::failed("missing argument url");
            };
            let expect = int_arg(args, "expect_status").unwrap_or(200);
            let timeout = int_arg(args, "timeout_secs").unwrap_or(5);
            health_http(
                url,
                expect,
                Duration::from_secs(timeout.clamp(1, 300) as u64),
            )
            .await
        }
        "health.tcp" => {
            let Some(port) = int_arg(args, "port").and_then(|p| u16::try_from(p).ok()) else {
                return Outcome::failed("missing argument port");
            };
            let timeout = int_arg(args, "timeout_secs").unwrap_or(5);
            health_tcp(port, Duration::from_secs(timeout.clamp(1, 300) as u64)).await
        }
        other => match spec {
            Some(spec) if !spec.run.is_empty() => module_action(spec, args).await,
            _ => Outcome::failed(format!(
                "action {other} is declared without [[action.run]] steps, so this agent has no executor for it; nothing was done"
            )),
        },
    }
}

/// `health.http`: one GET on this host (the URL passed the `local_url`
/// type: http://, loopback host only); redirects are not followed.
async fn health_http(url: &str, expect: i64, timeout: Duration) -> Outcome {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tonic::codegen::http;
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return Outcome::failed(format!("invalid URL {url}: {e}")),
    };
    let req = match http::Request::get(uri)
        .header("user-agent", "troupe-agent health check")
        .body(tonic::body::Body::empty())
    {
        Ok(r) => r,
        Err(e) => return Outcome::failed(format!("invalid request for {url}: {e}")),
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<tonic::body::Body>();
    match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => Outcome::failed(format!(
            "GET {url}: no answer within {} s",
            timeout.as_secs()
        )),
        Ok(Err(e)) => Outcome::failed(format!("GET {url}: {}", troupe_identity::error_chain(&e))),
        Ok(Ok(resp)) => {
            let status = i64::from(resp.status().as_u16());
            let data = json!({ "url": url, "status": status, "expected": expect });
            if status == expect {
                Outcome::ok(format!("GET {url}: {status}"), data)
            } else {
                Outcome {
                    ok: false,
                    message: format!("GET {url} answered {status}, expected {expect}"),
                    data,
                }
            }
        }
    }
}

/// `health.tcp`: a port on 127.0.0.1 accepts a connection.
async fn health_tcp(port: u16, timeout: Duration) -> Outcome {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Outcome::ok(
            format!("{addr} accepts connections"),
            json!({ "port": port }),
        ),
        Ok(Err(e)) => Outcome::failed(format!("{addr}: {e}")),
        Err(_) => Outcome::failed(format!("{addr}: no answer within {} s", timeout.as_secs())),
    }
}

/// The last line of some output, clipped (for one-line messages).
fn last_line(s: &str) -> String {
    let line = s.trim().lines().last().unwrap_or("").trim();
    line.chars().take(300).collect()
}

/// The user a module action runs as: (uid, gid, home).
fn run_as(user: &str) -> Result<(u32, u32, String), String> {
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok((
            u.uid.as_raw(),
            u.gid.as_raw(),
            u.dir.to_string_lossy().into_owned(),
        )),
        Ok(None) => Err(format!("user {user} does not exist on this host")),
        Err(e) => Err(format!("looking up user {user}: {e}")),
    }
}

/// A module-declared action: each `[[action.run]]` argv in order, run the
/// providers' way ([`cmd::run`]: a clean environment, stdin from
/// /dev/null, cwd `/`, its own process group killed as a whole at the
/// timeout, output bounded; a process a step leaves running does not hold
/// the action past a second), optionally as another user (with that
/// user's groups); stops at the first step whose exit code is not in its
/// `ok_exit`. The timeout covers all the steps together.
async fn module_action(spec: &ActionSpec, args: &BTreeMap<String, ArgValue>) -> Outcome {
    let timeout = Duration::from_secs(u64::from(
        spec.timeout_secs.unwrap_or(DEFAULT_ACTION_TIMEOUT_SECS),
    ));
    let deadline = tokio::time::Instant::now() + timeout;
    let user = match spec.user.as_deref().map(run_as).transpose() {
        Ok(u) => u,
        Err(e) => return Outcome::failed(format!("{}: {e}; nothing was done", spec.name)),
    };
    let mut steps = Vec::new();
    let mut last_out = String::new();
    for i in 0..spec.run.len() {
        let argv = match spec.argv(i, args) {
            Ok(a) => a,
            Err(e) => {
                return Outcome {
                    ok: false,
                    message: format!("{}: step {}: {e}; stopped", spec.name, i + 1),
                    data: json!({ "steps": steps }),
                };
            }
        };
        let program = argv[0].clone();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (uid, gid) = match &user {
            Some((u, g, _)) => (Some(*u), Some(*g)),
            None => (None, None),
        };
        let ran = tokio::task::spawn_blocking(move || {
            cmd::run(&cmd::Spec {
                argv: &argv,
                cwd: Some(Path::new("/")),
                uid,
                gid,
                timeout: Some(left.max(Duration::from_millis(1))),
                ..Default::default()
            })
        })
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("the step's task failed: {e}")));
        let (o, timed_out) = match ran {
            Ok(o) => (o, false),
            Err(e) => match e.downcast::<cmd::TimedOut>() {
                Ok(t) => (t.output, true),
                Err(e) => {
                    return Outcome {
                        ok: false,
                        message: format!("{}: step {} ({program}): {e:#}", spec.name, i + 1),
                        data: json!({ "steps": steps }),
                    };
                }
            },
        };
        let code = if timed_out { -1 } else { o.code.unwrap_or(-1) };
        let (stdout, stderr) = (o.stdout().to_owned(), o.stderr().to_owned());
        steps.push(json!({
            "program": program,
            "exit_code": code,
            "stdout": stdout,
            "stderr": stderr,
        }));
        let data = || json!({ "steps": steps });
        if timed_out {
            return Outcome {
                ok: false,
                message: format!(
                    "{}: step {} ({program}) did not finish within {} s and was killed",
                    spec.name,
                    i + 1,
                    timeout.as_secs()
                ),
                data: data(),
            };
        }
        if !spec.run[i].is_ok(code) {
            let why = [last_line(&stderr), last_line(&stdout)]
                .into_iter()
                .find(|l| !l.is_empty())
                .unwrap_or_default();
            return Outcome {
                ok: false,
                message: format!(
                    "{}: step {} ({program}) exited with {code}: {why}",
                    spec.name,
                    i + 1
                ),
                data: data(),
            };
        }
        last_out = last_line(&stdout);
    }
    let msg = if last_out.is_empty() {
        format!("{}: done ({} step(s))", spec.name, steps.len())
    } else {
        format!("{}: {last_out}", spec.name)
    };
    Outcome::ok(msg, json!({ "steps": steps }))
}

/// `agent.run`: one converge run now, as `troupe-agent run --once` (this
/// same executable, argv only), against the master the listener uses.
async fn agent_run(ctx: &ExecContext, args: &BTreeMap<String, ArgValue>) -> Outcome {
    let Some(server) = &ctx.server else {
        return Outcome::failed(
            "agent.run: this listener does not know its master; nothing was done",
        );
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(e) => return Outcome::failed(format!("agent.run: cannot find this executable: {e}")),
    };
    let state = ctx.state_dir.to_string_lossy().into_owned();
    let facts = ctx.facts_dir.to_string_lossy().into_owned();
    let root = ctx
        .converge_root
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    let mut argv: Vec<&str> = vec![
        &exe,
        "run",
        "--once",
        "--server",
        server,
        "--state",
        &state,
        "--facts-dir",
        &facts,
        "--root",
        &root,
        "--output",
        "summary",
    ];
    if matches!(args.get("noop"), Some(ArgValue::Bool(true))) {
        argv.push("--noop");
    }
    // Validated by the registry (ArgType::Environment) before we get here.
    let env = str_arg(args, "environment").map(str::to_owned);
    if let Some(e) = &env {
        argv.extend(["--environment", e.as_str()]);
    }
    // The run gets the commands' clean environment, and the listener's
    // log filter.
    let log = std::env::var("TROUPE_LOG").ok();
    let mut vars = vec![("NO_COLOR", "1")];
    if let Some(l) = &log {
        vars.push(("TROUPE_LOG", l.as_str()));
    }
    match run_argv(&argv, &vars, Duration::from_secs(1800)).await {
        Ok((ok, code, out, err)) => {
            let data = json!({ "exit_code": code, "output": out, "errors": err });
            let msg = if out.is_empty() {
                err.clone()
            } else {
                out.clone()
            };
            if ok {
                Outcome::ok(format!("run done: {msg}"), data)
            } else {
                Outcome {
                    ok: false,
                    message: format!("run exited with {code}: {msg}"),
                    data,
                }
            }
        }
        Err(e) => Outcome::failed(format!("agent.run: {e}")),
    }
}

fn write_marker(path: &Path, v: &Value) -> Result<(), String> {
    let bytes = serde_json::to_vec(v).map_err(|e| e.to_string())?;
    crate::state::write_atomic(path, &bytes, 0o644).map_err(|e| format!("{e:#}"))
}

fn remove_marker(path: &Path, done: &str) -> Outcome {
    match std::fs::remove_file(path) {
        Ok(()) => Outcome::ok(done, Value::Null),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Outcome::ok(format!("{done} (already)"), Value::Null)
        }
        Err(e) => Outcome::failed(format!("removing {}: {e}", path.display())),
    }
}

/// Runs a program (argv only) the providers' way ([`cmd::run`]: its own
/// process group, killed as a whole at the timeout; a process it leaves
/// behind holding its output does not hang the command); returns
/// (success, exit code, stdout, stderr), each clipped to its last 2000
/// characters.
async fn run_argv(
    argv: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<(bool, i32, String, String), String> {
    let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let o = tokio::task::spawn_blocking(move || {
        cmd::run(&cmd::Spec {
            argv: &argv,
            env: Some(&env),
            timeout: Some(timeout),
            ..Default::default()
        })
    })
    .await
    .map_err(|e| format!("the command's task failed: {e}"))?
    .map_err(|e| format!("{e:#}"))?;
    let clip = |s: &str| -> String {
        let s = s.trim();
        s.chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    };
    Ok((
        o.ok(),
        o.code.unwrap_or(-1),
        clip(o.stdout()),
        clip(o.stderr()),
    ))
}

/// A content source for provider contexts that manage no files.
struct NoContents;

impl crate::source::ContentSource for NoContents {
    fn get(&self, sha256: &str) -> anyhow::Result<std::borrow::Cow<'_, [u8]>> {
        anyhow::bail!("no file content {sha256} here: a command manages no files")
    }
}

/// `package.status|install|update` through the package provider (one
/// implementation with converging: name checks, versions compared by the
/// package manager's rules, apt's wait for a held dpkg lock, rpm/dnf),
/// with the configured tools.
async fn package(tools: &Tools, action: &str, name: &str, version: Option<&str>) -> Outcome {
    let verb = match action {
        "package.status" => pkg::Verb::Status,
        "package.install" => pkg::Verb::Install,
        _ => pkg::Verb::Update,
    };
    let (tools, n, ver) = (tools.clone(), name.to_owned(), version.map(str::to_owned));
    let done = tokio::task::spawn_blocking(move || {
        let contents = NoContents;
        let mut ctx = Ctx::new(Path::new("/"), false, "", &contents, None);
        ctx.tools = tools;
        pkg::command(&mut ctx, verb, &n, ver.as_deref())
    })
    .await;
    let done = match done {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return Outcome::failed(format!("{action} {name}: {e:#}")),
        Err(e) => return Outcome::failed(format!("{action} {name}: the task failed: {e}")),
    };
    if done.versions.is_empty() {
        // Only a status gets here: install and update fail instead.
        return Outcome::ok(
            format!("{name} is not installed"),
            json!({ "name": name, "version": null }),
        );
    }
    let v = done.versions.join(", ");
    let data = json!({ "name": name, "version": v, "changed": !done.events.is_empty() });
    let msg = match (verb, done.events.is_empty()) {
        (pkg::Verb::Status, _) => format!("{name} {v}"),
        (_, true) => format!("{name} {v} (already; nothing to do)"),
        (_, false) => format!("{name} {v}: {}", done.events.join(", ")),
    };
    Outcome::ok(msg, data)
}

/// `service.status|start|stop|restart` through the service provider:
/// under systemd a start/restart is checked against the unit's real state
/// (a failed unit, or one skipped by a condition, fails the command with
/// systemd's own words); the init-script path is the provider's too.
async fn service(tools: &Tools, verb: &str, name: &str) -> Outcome {
    let (t, v, n) = (tools.clone(), verb.to_owned(), name.to_owned());
    match tokio::task::spawn_blocking(move || crate::providers::service::command(&t, &v, &n)).await
    {
        Ok(Ok(state)) if verb == "status" => Outcome::ok(
            format!("{name} is {state}"),
            json!({ "name": name, "state": state }),
        ),
        Ok(Ok(done)) => Outcome::ok(format!("{name}: {done}"), json!({ "name": name })),
        Ok(Err(e)) => Outcome::failed(format!("service.{verb} {name}: {e:#}")),
        Err(e) => Outcome::failed(format!("service.{verb} {name}: the task failed: {e}")),
    }
}

/// `set server BACKEND/SERVER state drain|ready` on the HAProxy runtime
/// API (unix socket). HAProxy answers an empty line on success.
async fn haproxy(sock: &Path, backend: &str, server: &str, state: &str) -> Outcome {
    let line = format!("set server {backend}/{server} state {state}\n");
    let talk = async {
        let mut s = tokio::net::UnixStream::connect(sock).await?;
        s.write_all(line.as_bytes()).await?;
        s.shutdown().await?;
        let mut reply = Vec::new();
        (&mut s).take(64 * 1024).read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&reply).trim().to_string())
    };
    match tokio::time::timeout(Duration::from_secs(10), talk).await {
        Ok(Ok(reply)) if reply.is_empty() => Outcome::ok(
            format!("{backend}/{server} is {state}"),
            json!({ "backend": backend, "server": server, "state": state }),
        ),
        Ok(Ok(reply)) => Outcome::failed(format!("HAProxy refused: {reply}")),
        Ok(Err(e)) => Outcome::failed(format!("HAProxy socket {}: {e}", sock.display())),
        Err(_) => Outcome::failed(format!("HAProxy socket {} did not answer", sock.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    /// Stand-in programs in `dir` (each logs its argv to DIR/calls.log),
    /// configured as this agent's tools.
    fn fakes(dir: &Path, progs: &[(&str, &str)]) -> Tools {
        let mut t = Tools::default();
        for (name, body) in progs {
            let p = dir.join(name);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\necho \"{name} $*\" >> {}/calls.log\n{body}\n",
                    dir.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            let slot = match *name {
                "dpkg-query" => &mut t.dpkg_query,
                "apt-get" => &mut t.apt_get,
                "systemctl" => &mut t.systemctl,
                "journalctl" => &mut t.journalctl,
                "service" => &mut t.service,
                other => panic!("no tool slot for {other}"),
            };
            *slot = Some(p);
        }
        t
    }

    /// dpkg-query answering in the provider's format from DIR/version
    /// (absent: not installed); apt-get that installs NAME=VERSION into
    /// it, waiting for DIR/lock like apt does for the dpkg lock: only as
    /// long as `-o DPkg::Lock::Timeout=N` says (0 without it: fails at
    /// once with apt's "Could not get lock").
    fn package_fakes(dir: &Path) -> Tools {
        let d = dir.display();
        fakes(
            dir,
            &[
                (
                    "dpkg-query",
                    &format!(
                        "[ -f {d}/version ] || {{ echo \"dpkg-query: no packages found matching $5\" >&2; exit 1; }}\nprintf 'ii |%s\\n' \"$(cat {d}/version)\""
                    ),
                ),
                (
                    "apt-get",
                    &format!(
                        "wait=0\nfor a; do case $a in DPkg::Lock::Timeout=*) wait=${{a#*=}};; esac; last=$a; done\n\
                         exec 9>{d}/lock\n\
                         flock -w \"$wait\" 9 || {{ echo \"E: Could not get lock {d}/lock. It is held by process 1 (unattended-upgr)\" >&2; exit 100; }}\n\
                         printf '%s' \"${{last#*=}}\" > {d}/version"
                    ),
                ),
            ],
        )
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn calls(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("calls.log")).unwrap_or_default()
    }

    #[test]
    fn package_commands_compare_versions_as_the_provider_does() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let tools = package_fakes(d);
        let rt = rt();
        std::fs::write(d.join("version"), "1.20-1").unwrap();
        // A string prefix said 1.20-1 was the 1.2 asked for.
        let o = rt.block_on(package(&tools, "package.install", "nginx", Some("1.2-1")));
        assert!(o.ok, "{o:?}");
        assert!(calls(d).contains("-- nginx=1.2-1"), "{}", calls(d));
        assert_eq!(o.data["version"], "1.2-1");
        assert_eq!(o.data["changed"], true);
        // An epoch of 0 is none: already there, nothing runs.
        std::fs::remove_file(d.join("calls.log")).unwrap();
        let o = rt.block_on(package(&tools, "package.update", "nginx", Some("0:1.2-1")));
        assert!(o.ok && o.data["changed"] == false, "{o:?}");
        assert!(!calls(d).contains("apt-get"), "{}", calls(d));
        // Installed but not the version asked for afterwards: failed.
        std::fs::write(d.join("apt-get"), "#!/bin/sh\nexit 0\n").unwrap();
        let o = rt.block_on(package(&tools, "package.install", "nginx", Some("1.2")));
        assert!(!o.ok && o.message.contains("is at 1.2-1, not 1.2"), "{o:?}");
        // update never installs; status says "not installed".
        std::fs::remove_file(d.join("version")).unwrap();
        let o = rt.block_on(package(&tools, "package.update", "nginx", Some("1.2-1")));
        assert!(!o.ok && o.message.contains("not installed"), "{o:?}");
        let o = rt.block_on(package(&tools, "package.status", "nginx", None));
        assert!(o.ok && o.data["version"].is_null(), "{o:?}");
        // A pattern is not a package name (the provider's check).
        let o = rt.block_on(package(&tools, "package.status", "ngin*", None));
        assert!(!o.ok && o.message.contains("invalid package name"), "{o:?}");
    }

    #[test]
    fn package_install_waits_for_a_held_dpkg_lock_then_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let tools = package_fakes(d);
        // unattended-upgrades holds the dpkg lock for 2 s.
        let lock = d.join("lock");
        let mut holder = std::process::Command::new("flock")
            .arg(&lock)
            .args(["sleep", "2"])
            .spawn()
            .unwrap();
        let held = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            !std::process::Command::new("flock")
                .args(["-n"])
                .arg(&lock)
                .arg("true")
                .status()
                .unwrap()
                .success()
        });
        assert!(held, "the test could not take the lock");
        let t = Instant::now();
        let o = rt().block_on(package(
            &tools,
            "package.install",
            "nginx",
            Some("1.24.0-1"),
        ));
        let took = t.elapsed();
        holder.wait().unwrap();
        // Before the actions used the provider, apt-get ran without
        // DPkg::Lock::Timeout and failed at once: "Could not get lock".
        assert!(o.ok, "{o:?}");
        assert!(
            took >= Duration::from_millis(1000),
            "did not wait: {took:?}"
        );
        assert_eq!(o.data["version"], "1.24.0-1");
        assert!(calls(d).contains("DPkg::Lock::Timeout=300"), "{}", calls(d));
    }

    /// systemctl that answers `show` with `props`, and a journal line.
    fn systemd_fakes(dir: &Path, props: &str) -> Tools {
        fakes(
            dir,
            &[
                (
                    "systemctl",
                    &format!(
                        "case $1 in show) printf '{props}';; is-active) echo failed; exit 3;; esac"
                    ),
                ),
                (
                    "journalctl",
                    "echo 'app.service: Failed to locate executable /usr/sbin/app: No such file or directory'",
                ),
            ],
        )
    }

    #[test]
    fn a_restart_that_systemd_failed_or_skipped_is_reported_failed_in_its_words() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let rt = rt();
        let tools = systemd_fakes(
            d,
            "Type=simple\\nResult=exit-code\\nActiveState=failed\\nSubState=failed\\nExecMainCode=1\\nExecMainStatus=203\\nConditionResult=yes\\nLoadState=loaded\\n",
        );
        let o = rt.block_on(service(&tools, "restart", "app"));
        assert!(!o.ok, "{o:?}");
        assert!(!o.message.contains("restart done"), "{o:?}");
        assert!(o.message.contains("ActiveState=failed"), "{o:?}");
        assert!(o.message.contains("status 203"), "{o:?}");
        assert!(
            o.message
                .contains("Failed to locate executable /usr/sbin/app"),
            "{o:?}"
        );
        assert!(
            calls(d).contains("systemctl restart -- app"),
            "{}",
            calls(d)
        );
        let o = rt.block_on(service(&tools, "status", "app"));
        assert!(o.ok && o.data["state"] == "failed", "{o:?}");
        // chrony in a container: skipped by a condition, start returned 0.
        let dir2 = tempfile::tempdir().unwrap();
        let tools = systemd_fakes(
            dir2.path(),
            "Type=forking\\nResult=success\\nActiveState=inactive\\nSubState=dead\\nConditionResult=no\\nLoadState=loaded\\n",
        );
        let o = rt.block_on(service(&tools, "start", "app"));
        assert!(!o.ok && o.message.contains("condition"), "{o:?}");
        // A unit that runs: done.
        let dir3 = tempfile::tempdir().unwrap();
        let tools = systemd_fakes(
            dir3.path(),
            "Type=notify\\nResult=success\\nActiveState=active\\nSubState=running\\nConditionResult=yes\\nLoadState=loaded\\n",
        );
        let o = rt.block_on(service(&tools, "restart", "app"));
        assert!(o.ok && o.message.contains("running"), "{o:?}");
    }

    #[test]
    fn an_init_script_leaving_its_daemon_on_stdout_does_not_hang_the_command() {
        if Path::new("/run/systemd/system").is_dir() {
            eprintln!("systemd runs here, so the init-script path is not taken; skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pidfile = d.join("daemon.pid");
        // `service app start`: the daemon keeps the script's stdout open.
        let tools = fakes(
            d,
            &[(
                "service",
                &format!(
                    "case $2 in start) sleep 30 & echo $! > {p}; echo Starting app;; \
                     status) [ -f {p} ];; esac",
                    p = pidfile.display()
                ),
            )],
        );
        let rt = rt();
        let t = Instant::now();
        let o = rt.block_on(service(&tools, "start", "app"));
        let took = t.elapsed();
        let o2 = rt.block_on(service(&tools, "status", "app"));
        if let Ok(p) = std::fs::read_to_string(&pidfile) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.trim().parse().unwrap()),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Reading the output to its end waited for the daemon (30 s).
        assert!(took < Duration::from_secs(10), "took {took:?}");
        assert!(o.ok, "{o:?}");
        assert!(o2.ok && o2.data["state"] == "active", "{o2:?}");
        assert!(calls(d).contains("service app start"), "{}", calls(d));
    }

    use crate::providers::cmd::tests::alive;

    #[test]
    fn a_command_that_forks_is_killed_with_its_whole_group_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 60 & echo $! > {}; sleep 60", pidfile.display());
        let t = Instant::now();
        let r = rt().block_on(run_argv(
            &["sh", "-c", &script],
            &[],
            Duration::from_secs(1),
        ));
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let e = r.unwrap_err();
        assert!(e.contains("timed out after 1 s"), "{e}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            !alive(pid)
        });
        assert!(gone, "the forked child {pid} outlived the timeout");
    }
}
