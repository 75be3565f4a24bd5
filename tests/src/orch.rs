//! Harness for signed orchestration: a real master, real agents running
//! `troupe-agent listen`, a bastion identity and signing keys, all in the
//! master's temporary directory.
//!
//! ```no_run
//! use troupe_tests::orch::{Fleet, AgentSpec};
//! let f = Fleet::start(&[AgentSpec::new("web1").role("web")]);
//! let out = f.troupe_run(&["ping", "--role", "web"]);
//! ```

use crate::{Master, Out, Proc, agent_bin, run, troupe_bin, wait_until};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use troupe_bastion::FileSigner;
use troupe_command::{ArgValue, KeyId, Signer, TargetFilter};
use troupe_proto::v1::{CommandResult, SubmitSummary};

/// Passphrase of every test key.
pub const PASSPHRASE: &str = "correct horse battery";

/// One agent of the fleet.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub name: String,
    pub role: Option<String>,
    /// The environment its orchestration configuration declares.
    pub environment: Option<String>,
    /// External facts (they appear as `external.KEY`).
    pub facts: BTreeMap<String, String>,
}

impl AgentSpec {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            role: None,
            environment: None,
            facts: BTreeMap::new(),
        }
    }
    pub fn environment(mut self, e: &str) -> Self {
        self.environment = Some(e.into());
        self
    }
    pub fn role(mut self, r: &str) -> Self {
        self.role = Some(r.into());
        self
    }
    pub fn fact(mut self, k: &str, v: &str) -> Self {
        self.facts.insert(k.into(), v.into());
        self
    }
}

/// A signing key on disk (passphrase-protected) and in memory.
pub struct Key {
    pub path: PathBuf,
    pub passphrase_file: PathBuf,
    pub signer: FileSigner,
}

impl Key {
    pub fn id(&self) -> KeyId {
        self.signer.key_id().clone()
    }
}

/// A master, listening agents, a bastion identity, and two keys: `alice`
/// (trusted by the master and every agent) and `mallory` (trusted by the
/// master only: what a compromised master's signer list would look like).
pub struct Fleet {
    pub master: Master,
    pub agents: Vec<AgentSpec>,
    pub alice: Key,
    pub mallory: Key,
    /// The bastion's identity directory.
    pub bastion: PathBuf,
    procs: Vec<Proc>,
    rt: tokio::runtime::Runtime,
}

/// The policy every fleet agent gets: alice may ping, gather facts, use
/// maintenance and agent.disable/enable; maintenance.on is denied on role
/// `db`.
pub const POLICY: &str = r#"
[[rule]]
name = "ops"
effect = "allow"
signers = ["alice"]
actions = ["ping", "facts", "maintenance.*", "agent.disable", "agent.enable"]

[[rule]]
name = "no-maintenance-on-db"
effect = "deny"
signers = ["*"]
actions = ["maintenance.on"]
roles = ["db"]
"#;

fn make_key(dir: &std::path::Path, name: &str) -> Key {
    let signer = FileSigner::generate().expect("generate key");
    let path = dir.join(format!("{name}.key"));
    signer
        .write_encrypted(&path, PASSPHRASE)
        .expect("write key");
    let passphrase_file = dir.join(format!("{name}.pass"));
    std::fs::write(&passphrase_file, format!("{PASSPHRASE}\n")).expect("pass file");
    Key {
        path,
        passphrase_file,
        signer,
    }
}

impl Fleet {
    /// Starts everything and waits until every agent is attached.
    pub fn start(specs: &[AgentSpec]) -> Fleet {
        Fleet::start_with(specs, |_, _| String::new())
    }

    /// Like [`Fleet::start`], adding `extra(spec, state_dir)` to each
    /// agent's orchestration.toml (more rules, `[tools]`...), after the
    /// role and environment and before the signer and policy tables, so it
    /// may start with top-level keys (`haproxy_socket = ...`).
    pub fn start_with(
        specs: &[AgentSpec],
        extra: impl Fn(&AgentSpec, &std::path::Path) -> String,
    ) -> Fleet {
        troupe_pki::tls::install_crypto_provider();
        Fleet::start_on(Master::start(), specs, extra)
    }

    /// Like [`Fleet::start_with`] on a master already started (e.g. with a
    /// module tree).
    pub fn start_on(
        master: Master,
        specs: &[AgentSpec],
        extra: impl Fn(&AgentSpec, &std::path::Path) -> String,
    ) -> Fleet {
        troupe_pki::tls::install_crypto_provider();
        let keys = master.root.path().join("keys");
        std::fs::create_dir_all(&keys).expect("keys dir");
        let alice = make_key(&keys, "alice");
        let mallory = make_key(&keys, "mallory");
        std::fs::write(
            master.data.join("signers.toml"),
            format!(
                "[[signer]]\nname = \"alice\"\nkey = \"{}\"\n\n[[signer]]\nname = \"mallory\"\nkey = \"{}\"\n",
                alice.id(),
                mallory.id()
            ),
        )
        .expect("master signers");
        let bastion = master.root.path().join("bastion");
        let psk = master.psk("bastion");
        run(&mut master.bootstrap_command_in("bastion", Some(&psk), &bastion)).assert_success();
        let mut procs = Vec::new();
        for a in specs {
            let psk = master.psk(&a.name);
            master.bootstrap(&a.name, Some(&psk)).assert_success();
            let st = master.agent_state(&a.name);
            let mut role = a
                .role
                .as_ref()
                .map(|r| format!("role = \"{r}\"\n"))
                .unwrap_or_default();
            if let Some(e) = &a.environment {
                role.push_str(&format!("environment = \"{e}\"\n"));
            }
            // agent.run converges into a sandbox, never this machine's `/`.
            let sandbox = master.root.path().join("roots").join(&a.name);
            std::fs::create_dir_all(&sandbox).expect("sandbox");
            role.push_str(&format!("converge_root = \"{}\"\n", sandbox.display()));
            std::fs::write(
                st.join("orchestration.toml"),
                format!(
                    "{role}{}\n\n[[signer]]\nname = \"alice\"\nkey = \"{}\"\n{POLICY}\n",
                    extra(a, &st),
                    alice.id(),
                ),
            )
            .expect("agent config");
            let facts_dir = master.root.path().join("facts").join(&a.name);
            std::fs::create_dir_all(&facts_dir).expect("facts dir");
            std::fs::write(
                facts_dir.join("site.json"),
                serde_json::to_vec(&a.facts).expect("facts"),
            )
            .expect("facts file");
            let log = std::fs::File::create(master.root.path().join(format!("{}.log", a.name)))
                .expect("agent log");
            let child = Command::new(agent_bin())
                .arg("listen")
                .arg("--server")
                .arg(&master.url)
                .arg("--state")
                .arg(&st)
                .arg("--facts-dir")
                .arg(&facts_dir)
                .args(["--backoff-max", "1s"])
                .env("TROUPE_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawning troupe-agent listen");
            procs.push(Proc(child));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let f = Fleet {
            master,
            agents: specs.to_vec(),
            alice,
            mallory,
            bastion,
            procs,
            rt,
        };
        f.wait_attached(specs.len());
        f
    }

    /// Waits until exactly `n` agents are attached to the master.
    pub fn wait_attached(&self, n: usize) {
        wait_until(Duration::from_secs(30), "agents attached", || {
            let wire = self.sign(&self.alice, "ping", &[], TargetFilter::default(), 60);
            self.try_submit(wire, true)
                .map(|(t, _, _)| t.len() == n)
                .unwrap_or(false)
        });
    }

    /// Runs a future on the fleet's runtime.
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// An agent's state directory.
    pub fn state(&self, name: &str) -> PathBuf {
        self.master.agent_state(name)
    }

    /// An agent's log.
    pub fn agent_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.master.root.path().join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// An agent's orchestration audit log (text).
    pub fn agent_audit(&self, name: &str) -> String {
        std::fs::read_to_string(self.state(name).join("orchestration-audit.log"))
            .unwrap_or_default()
    }

    /// The master's orchestration audit log (text).
    pub fn master_audit(&self) -> String {
        std::fs::read_to_string(self.master.data.join("orchestration-audit.log"))
            .unwrap_or_default()
    }

    /// Signs a command with `key` (string arguments).
    pub fn sign(
        &self,
        key: &Key,
        action: &str,
        args: &[(&str, ArgValue)],
        target: TargetFilter,
        ttl: i64,
    ) -> Vec<u8> {
        self.sign_at(
            key,
            action,
            args,
            target,
            troupe_command::verify::unix_now(),
            ttl,
        )
    }

    /// Signs a command issued at `now`.
    pub fn sign_at(
        &self,
        key: &Key,
        action: &str,
        args: &[(&str, ArgValue)],
        target: TargetFilter,
        now: i64,
        ttl: i64,
    ) -> Vec<u8> {
        let args = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let mut signer = FileSigner::load(&key.path, PASSPHRASE).expect("load key");
        let cmd = troupe_command::Command::new(key.id(), action, args, target, now, ttl)
            .expect("command");
        cmd.sign(&mut signer as &mut dyn Signer)
            .expect("sign")
            .to_wire()
    }

    /// Submits an envelope as the bastion (in process).
    pub fn try_submit(
        &self,
        wire: Vec<u8>,
        dry_run: bool,
    ) -> anyhow::Result<(Vec<String>, Vec<CommandResult>, SubmitSummary)> {
        self.rt.block_on(async {
            let id = troupe_identity::Identity::load(&self.bastion)?;
            let ch = id.connect(&self.master.url).await?;
            let mut results = Vec::new();
            let (t, s) =
                troupe_bastion::run_cli::submit(ch, wire, Duration::from_secs(10), dry_run, |r| {
                    results.push(r.clone())
                })
                .await?;
            Ok((t, results, s))
        })
    }

    /// Submits and expects the master to relay; returns results by node.
    pub fn submit(
        &self,
        wire: Vec<u8>,
    ) -> (Vec<String>, BTreeMap<String, CommandResult>, SubmitSummary) {
        let (t, r, s) = self.try_submit(wire, false).expect("submit");
        (t, r.into_iter().map(|r| (r.node.clone(), r)).collect(), s)
    }

    /// Runs `troupe run ARGS --server .. --identity .. --key alice`.
    pub fn troupe_run(&self, args: &[&str]) -> Out {
        self.troupe("run", args)
    }

    /// Runs `troupe SUBCOMMAND ARGS --server .. --identity .. --key alice`.
    pub fn troupe(&self, sub: &str, args: &[&str]) -> Out {
        run(Command::new(troupe_bin())
            .arg(sub)
            .args(args)
            .arg("--server")
            .arg(&self.master.url)
            .arg("--identity")
            .arg(&self.bastion)
            .arg("--key")
            .arg(&self.alice.path)
            .arg("--passphrase-file")
            .arg(&self.alice.passphrase_file))
    }

    /// Runs `troupe audit verify FILE`.
    pub fn audit_verify(&self, file: &std::path::Path) -> Out {
        run(Command::new(troupe_bin())
            .args(["audit", "verify"])
            .arg(file))
    }

    /// The process id of this fleet's master (found in /proc by its unique
    /// `--data` directory), for fault injection with signals.
    pub fn master_pid(&self) -> Option<u32> {
        let data = self.master.data.to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let is_master = args.get(1) == Some(&b"master".as_slice())
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--data" && w[1] == data.as_bytes());
            if is_master {
                return Some(pid);
            }
        }
        None
    }

    /// Sends a signal (`STOP`, `CONT`...) to this fleet's master.
    pub fn signal_master(&self, sig: &str) {
        let pid = self.master_pid().expect("the master's pid");
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(st.success(), "kill -{sig} {pid}");
    }

    /// Stops the agents' processes.
    pub fn stop_agents(&mut self) {
        self.procs.clear();
    }
}

/// Writes an executable `/bin/sh` script at `path` running `body`.
pub fn shell_script(path: &std::path::Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// What a host's stand-in apt-get does (see [`stand_in_package_tools`]).
pub enum AptGet {
    /// Installs its last argument (`NAME=VERSION`).
    Installs,
    /// Fails as apt-get does when it cannot fetch (exit 100).
    Fails,
    /// Waits (at most 60 s) until this file exists, then installs.
    WaitsFor(std::path::PathBuf),
}

/// Stand-in dpkg-query / apt-get / systemctl for one agent, in
/// STATE/fake/: the "installed version" is kept in STATE/fake/version
/// (1.22.1-9 at the start) and every call is logged to
/// STATE/fake/calls.log. dpkg-query answers in the package provider's
/// format (`-f '${db:Status-Abbrev}|${Version}\n'`); apt-get does what
/// `apt` says; `systemctl show` reads a unit back as running (as the
/// service provider does after a start). Returns the orchestration
/// configuration that allows `actions` (a TOML list) to signer alice with
/// those tools, for [`Fleet::start_with`].
pub fn stand_in_package_tools(state: &std::path::Path, apt: AptGet, actions: &str) -> String {
    let d = state.join("fake");
    std::fs::create_dir_all(&d).unwrap();
    let v = d.join("version");
    let log = d.join("calls.log");
    std::fs::write(&v, "1.22.1-9").unwrap();
    shell_script(
        &d.join("dpkg-query"),
        &format!(
            "echo \"dpkg-query $*\" >> {log}\nprintf 'ii |%s\\n' \"$(cat {v})\"",
            log = log.display(),
            v = v.display()
        ),
    );
    let install = format!(
        "for a; do last=$a; done\necho \"${{last#*=}}\" | tr -d '\\n' > {}",
        v.display()
    );
    let apt = match apt {
        AptGet::Installs => install,
        AptGet::Fails => "echo 'E: Unable to fetch some archives' >&2\nexit 100".to_string(),
        AptGet::WaitsFor(gate) => format!(
            "n=0; while [ ! -e {g} ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done\n{install}",
            g = gate.display()
        ),
    };
    shell_script(
        &d.join("apt-get"),
        &format!("echo \"apt-get $*\" >> {}\n{apt}", log.display()),
    );
    shell_script(
        &d.join("systemctl"),
        &format!(
            "echo \"systemctl $*\" >> {}\n[ \"$1\" = show ] && printf 'Type=notify\\nActiveState=active\\nSubState=running\\nResult=success\\n'\nexit 0",
            log.display()
        ),
    );
    format!(
        r#"
[[rule]]
name = "deploy"
effect = "allow"
signers = ["alice"]
actions = {actions}

[tools]
dpkg_query = "{d}/dpkg-query"
apt_get = "{d}/apt-get"
systemctl = "{d}/systemctl"
"#,
        d = d.display()
    )
}
