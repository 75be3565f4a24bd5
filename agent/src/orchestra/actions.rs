//! Executing verified actions: the built-ins, and module-declared actions
//! from their argv templates. Every external program is run with an argv
//! (never a shell), with a timeout, and its arguments have already passed
//! the action's typed schema in the verifier (and again when the argv is
//! built).

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use troupe_command::registry::{ActionSpec, DEFAULT_ACTION_TIMEOUT_SECS};
use troupe_command::{ArgValue, Verified};

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
    pub tools: super::config::Tools,
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

/// Most bytes of each output stream kept per step (the rest is counted).
const MAX_OUTPUT: usize = 64 * 1024;

/// Reads a pipe to the end, keeping the first [`MAX_OUTPUT`] bytes.
async fn drain<R: tokio::io::AsyncRead + Unpin>(r: Option<R>) -> (Vec<u8>, usize) {
    let Some(mut r) = r else {
        return (Vec::new(), 0);
    };
    let mut kept = Vec::new();
    let mut dropped = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&buf[..room]);
                dropped += n - room;
            }
        }
    }
    (kept, dropped)
}

fn text(bytes: &[u8], dropped: usize) -> String {
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    if dropped > 0 {
        s.push_str(&format!("\n[{dropped} more bytes not kept]"));
    }
    s
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

/// A module-declared action: each `[[action.run]]` argv in order, with a
/// clean environment, stdin from /dev/null, in its own process group
/// (killed as a whole at the timeout), optionally as another user; stops
/// at the first step whose exit code is not in its `ok_exit`.
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
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some((uid, gid, home)) = &user {
            // std drops the supplementary groups when it changes the uid.
            cmd.uid(*uid).gid(*gid).env("HOME", home);
            if let Some(u) = &spec.user {
                cmd.env("USER", u).env("LOGNAME", u);
            }
        }
        let program = argv[0].clone();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Outcome {
                    ok: false,
                    message: format!("{}: step {}: cannot run {program}: {e}", spec.name, i + 1),
                    data: json!({ "steps": steps }),
                };
            }
        };
        let pgid = child.id();
        let out = tokio::spawn(drain(child.stdout.take()));
        let err = tokio::spawn(drain(child.stderr.take()));
        let status = tokio::time::timeout_at(deadline, child.wait()).await;
        let timed_out = status.is_err();
        if timed_out {
            if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
        }
        // A background process of the step may still hold the pipes: wait
        // for them until the deadline (at least 5 s), then kill the group.
        let until = deadline.max(tokio::time::Instant::now() + Duration::from_secs(5));
        let mut outputs = Box::pin(async { (out.await, err.await) });
        let (o, e) = match tokio::time::timeout_at(until, &mut outputs).await {
            Ok(x) => x,
            Err(_) => {
                if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                tokio::time::timeout(Duration::from_secs(2), &mut outputs)
                    .await
                    .unwrap_or((Ok((Vec::new(), 0)), Ok((Vec::new(), 0))))
            }
        };
        let (o, od) = o.unwrap_or_default();
        let (e, ed) = e.unwrap_or_default();
        let (stdout, stderr) = (text(&o, od), text(&e, ed));
        let code = match &status {
            Ok(Ok(s)) => s.code().unwrap_or(-1),
            _ => -1,
        };
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
        if let Ok(Err(e)) = &status {
            return Outcome {
                ok: false,
                message: format!("{}: step {} ({program}): {e}", spec.name, i + 1),
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
    match run_argv(&argv, &[("NO_COLOR", "1")], Duration::from_secs(1800)).await {
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

/// Runs a program (argv only) with a timeout; returns (success, stdout,
/// stderr).
async fn run_argv(
    argv: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<(bool, i32, String, String), String> {
    let (prog, rest) = argv.split_first().ok_or("empty argv")?;
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(rest)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| format!("{prog} did not finish within {} s", timeout.as_secs()))?
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    let clip = |b: &[u8]| -> String {
        let s = String::from_utf8_lossy(b);
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
        out.status.success(),
        out.status.code().unwrap_or(-1),
        clip(&out.stdout),
        clip(&out.stderr),
    ))
}

/// The configured path of a program, else the first of the system
/// directories holding it.
fn tool(configured: &Option<PathBuf>, prog: &str) -> Option<String> {
    if let Some(p) = configured {
        return Some(p.to_string_lossy().into_owned());
    }
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.exists())
        .map(|p| p.to_string_lossy().into_owned())
}

async fn package(
    tools: &super::config::Tools,
    action: &str,
    name: &str,
    version: Option<&str>,
) -> Outcome {
    let dpkg_query = tool(&tools.dpkg_query, "dpkg-query");
    let rpm = tool(&tools.rpm, "rpm");
    let debian = dpkg_query.is_some();
    let dq = dpkg_query.clone().unwrap_or_default();
    let rq = rpm.clone().unwrap_or_default();
    let status = || async {
        if debian {
            run_argv(
                &[&dq, "-W", "-f", "${Status}\t${Version}", name],
                &[],
                Duration::from_secs(30),
            )
            .await
            .map(|(ok, _, out, _)| {
                let (st, ver) = out.split_once('\t').unwrap_or((&out, ""));
                if ok && st.ends_with(" installed") {
                    Some(ver.to_string())
                } else {
                    None
                }
            })
        } else {
            run_argv(
                &[&rq, "-q", "--qf", "%{VERSION}-%{RELEASE}", name],
                &[],
                Duration::from_secs(30),
            )
            .await
            .map(|(ok, _, out, _)| ok.then_some(out))
        }
    };
    if !debian && rpm.is_none() {
        return Outcome::failed("no supported package manager (dpkg or rpm) on this host");
    }
    if action != "package.status" {
        let spec = match (version, debian) {
            (Some(v), true) => format!("{name}={v}"),
            (Some(v), false) => format!("{name}-{v}"),
            (None, _) => name.to_string(),
        };
        let Some(installer) = (if debian {
            tool(&tools.apt_get, "apt-get")
        } else {
            tool(&tools.dnf, "dnf")
        }) else {
            return Outcome::failed("no apt-get or dnf on this host");
        };
        let mut argv: Vec<&str> = if debian {
            vec![
                &installer,
                "-y",
                "-q",
                "-o",
                "Dpkg::Options::=--force-confold",
                "install",
            ]
        } else {
            vec![
                &installer,
                "-y",
                "-q",
                if action == "package.update" {
                    "upgrade"
                } else {
                    "install"
                },
            ]
        };
        if debian && action == "package.update" {
            argv.push("--only-upgrade");
        }
        argv.push(&spec);
        match run_argv(
            &argv,
            &[("DEBIAN_FRONTEND", "noninteractive")],
            Duration::from_secs(900),
        )
        .await
        {
            Ok((true, _, _, _)) => {}
            Ok((false, code, _, err)) => {
                return Outcome::failed(format!("{} exited with {code}: {err}", argv[0]));
            }
            Err(e) => return Outcome::failed(e),
        }
    }
    match status().await {
        Ok(Some(v)) => {
            if let Some(want) = version
                && action != "package.status"
                && !version_matches(debian, want, &v)
            {
                return Outcome {
                    ok: false,
                    message: format!("{name} is at {v}, not {want}"),
                    data: json!({ "name": name, "version": v }),
                };
            }
            Outcome::ok(format!("{name} {v}"), json!({ "name": name, "version": v }))
        }
        Ok(None) if action == "package.status" => Outcome::ok(
            format!("{name} is not installed"),
            json!({ "name": name, "version": null }),
        ),
        Ok(None) => Outcome::failed(format!("{name} is not installed after {action}")),
        Err(e) => Outcome::failed(e),
    }
}

async fn service(tools: &super::config::Tools, verb: &str, name: &str) -> Outcome {
    let systemctl = if tools.systemctl.is_some() || Path::new("/run/systemd/system").exists() {
        tool(&tools.systemctl, "systemctl")
    } else {
        None
    };
    let systemd = systemctl.is_some();
    let sc = systemctl.unwrap_or_default();
    let Some(svc) = (if systemd {
        Some(String::new())
    } else {
        tool(&tools.service, "service")
    }) else {
        return Outcome::failed("neither systemctl nor service on this host");
    };
    let argv: Vec<&str> = match (systemd, verb) {
        (true, "status") => vec![&sc, "is-active", "--", name],
        (true, v) => vec![&sc, v, "--", name],
        (false, v) => vec![&svc, name, v],
    };
    match run_argv(&argv, &[], Duration::from_secs(120)).await {
        Ok((ok, code, out, err)) if verb == "status" => {
            let state = if systemd {
                out.clone()
            } else if ok {
                "active".into()
            } else {
                "inactive".into()
            };
            let _ = (code, err);
            Outcome::ok(
                format!("{name} is {state}"),
                json!({ "name": name, "state": state }),
            )
        }
        Ok((true, _, _, _)) => Outcome::ok(format!("{name}: {verb} done"), json!({ "name": name })),
        Ok((false, code, _, err)) => Outcome::failed(format!(
            "{} {verb} {name} exited with {code}: {err}",
            argv[0]
        )),
        Err(e) => Outcome::failed(e),
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

/// Whether the installed version `have` is the `want` a command asked for,
/// as the package provider decides it (an epoch of 0 is none; with rpm a
/// version without its release matches any release), never by string
/// prefix (`1.2` is not `1.20`).
fn version_matches(debian: bool, want: &str, have: &str) -> bool {
    use crate::providers::package::{Manager, same_version};
    same_version(
        if debian { Manager::Dpkg } else { Manager::Rpm },
        want,
        have,
    )
}

#[cfg(test)]
mod tests {
    use super::version_matches;

    #[test]
    fn package_commands_compare_versions_as_the_provider_does() {
        // A string prefix said yes to all of these.
        assert!(!version_matches(true, "1.2", "1.20-1"));
        assert!(!version_matches(true, "1.2", "1.2-1"));
        assert!(!version_matches(false, "1.2", "1.20-1.el9"));
        // The provider's rules: epoch 0 is none; rpm without a release.
        assert!(version_matches(true, "1.2-1", "0:1.2-1"));
        assert!(version_matches(true, "1.2-1", "1.2-1"));
        assert!(version_matches(false, "1.2", "1.2-3.el9"));
        assert!(!version_matches(false, "1.2-4.el9", "1.2-3.el9"));
    }
}
