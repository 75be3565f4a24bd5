//! # troupe-tests
//!
//! Owns the cross-crate end-to-end test harness: it starts real `troupe` and
//! `troupe-agent` processes on loopback addresses with their own state
//! directories and sandbox roots, and drives them as an operator would.
//!
//! It must never touch the real host outside temporary directories, nor send
//! traffic anywhere but to loopback (or the harness's own namespaces).
//!
//! ## Using the harness
//!
//! ```no_run
//! use troupe_tests::Master;
//! let m = Master::start();                      // temp data dir, 127.0.0.1:<free port>
//! let psk = m.psk("web1");                      // `troupe ca psk new web1`
//! let out = m.bootstrap("web1", Some(&psk));    // `troupe-agent bootstrap ...`
//! out.assert_success();
//! let state = m.agent_state("web1");            // the agent's --state dir
//! let list = m.ca_ok(&["list", "--all"]);       // any `troupe ca` command
//! ```
//!
//! For several hosts on one machine (each in its own network namespace, so
//! the network between them can be cut, throttled or delayed, and any
//! process killed), see [`netns`].
//!
//! Binaries come from the cargo target directory (`scripts/test.sh` runs
//! `cargo build --workspace --bins` first); set `TROUPE_BIN_DIR` to use
//! others. Every process is killed when its handle drops; everything lives
//! in a [`tempfile::TempDir`] removed at the end (set `TROUPE_KEEP_TMP=1` to
//! keep it for debugging).

#![forbid(unsafe_code)]

pub mod cli;
pub mod mail;
pub mod netns;
pub mod nspawn;
pub mod orch;
pub mod tally;
pub mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The directory holding `troupe` and `troupe-agent`.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("TROUPE_BIN_DIR") {
        return PathBuf::from(d);
    }
    // Test and bench executables live in target/<profile>/deps.
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --workspace --bins` first (or set TROUPE_BIN_DIR)",
        p.display()
    );
    p
}

/// Path of the `troupe` binary.
pub fn troupe_bin() -> PathBuf {
    bin("troupe")
}

/// Path of the `troupe-agent` binary.
pub fn agent_bin() -> PathBuf {
    bin("troupe-agent")
}

/// The output of a finished command, with assertions that print it all.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Out {
    /// True when the command exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    /// Panics (showing the output) unless the command exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "command failed: {self:#?}");
        self
    }
    /// Panics unless the command failed and its stderr contains `needle`.
    pub fn assert_failure_containing(&self, needle: &str) -> &Self {
        assert!(!self.success(), "command unexpectedly succeeded: {self:#?}");
        assert!(
            self.stderr.contains(needle),
            "stderr does not contain {needle:?}: {self:#?}"
        );
        self
    }
}

/// Runs a command to completion, with `TROUPE_LOG=warn` unless set.
/// `troupe ca ARGS --data DATA` (through the admin socket while a master
/// runs on DATA, on the CA files otherwise).
pub fn ca_cli(data: &Path, args: &[&str]) -> Out {
    run(Command::new(troupe_bin())
        .arg("ca")
        .args(args)
        .arg("--data")
        .arg(data))
}

/// [`ca_cli`] that asserts success and returns stdout.
pub fn ca_cli_ok(data: &Path, args: &[&str]) -> String {
    let o = ca_cli(data, args);
    o.assert_success();
    o.stdout
}

pub fn run(cmd: &mut Command) -> Out {
    if std::env::var_os("TROUPE_LOG").is_none() {
        cmd.env("TROUPE_LOG", "warn");
    }
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
        .into()
}

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `cond` holds, polling; panics with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Options for [`Master::start_with`].
#[derive(Debug, Clone, Default)]
pub struct MasterOptions {
    /// `--modules DIR`.
    pub modules: Option<PathBuf>,
    /// Extra arguments for `troupe master`.
    pub extra_args: Vec<String>,
}

/// A running `troupe master` on 127.0.0.1 with a temporary data directory.
pub struct Master {
    /// Root of everything this test creates (data dir, agents' state dirs).
    pub root: tempfile::TempDir,
    /// The master's `--data` directory.
    pub data: PathBuf,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// `https://127.0.0.1:PORT`, for agents' `--server`.
    pub url: String,
    /// Where the master's stderr goes.
    pub log_path: PathBuf,
    proc: Option<Proc>,
}

impl Master {
    /// Starts a master with default options.
    pub fn start() -> Master {
        Master::start_with(MasterOptions::default())
    }

    /// Starts a master and waits until it serves (it writes
    /// `DATA/listen.addr` once the TLS listener and admin socket are up).
    pub fn start_with(opts: MasterOptions) -> Master {
        let root = tempfile::Builder::new()
            .prefix("troupe-test-")
            .tempdir()
            .expect("tempdir");
        Master::start_at(root, opts)
    }

    /// Like [`Master::start_with`], with everything under a temporary
    /// directory in `parent` (e.g. a tmpfs for a benchmark's bulk setup).
    pub fn start_in(parent: &Path, opts: MasterOptions) -> Master {
        let root = tempfile::Builder::new()
            .prefix("troupe-test-")
            .tempdir_in(parent)
            .expect("tempdir");
        Master::start_at(root, opts)
    }

    fn start_at(root: tempfile::TempDir, opts: MasterOptions) -> Master {
        let data = root.path().join("master");
        let log_path = root.path().join("master.log");
        let mut m = Master {
            data,
            addr: "127.0.0.1:0".parse().expect("addr"),
            url: String::new(),
            log_path,
            proc: None,
            root,
        };
        m.spawn(&opts, "127.0.0.1:0");
        m
    }

    fn spawn(&mut self, opts: &MasterOptions, listen: &str) {
        let _ = std::fs::remove_file(self.data.join("listen.addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("master log");
        let mut cmd = Command::new(troupe_bin());
        cmd.arg("master")
            .arg("--data")
            .arg(&self.data)
            .arg("--listen")
            .arg(listen)
            .args(&opts.extra_args)
            .env(
                "TROUPE_LOG",
                std::env::var("TROUPE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some(m) = &opts.modules {
            cmd.arg("--modules").arg(m);
        }
        let mut child = Proc(cmd.spawn().expect("spawning troupe master"));
        let addr_file = self.data.join("listen.addr");
        let start = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(&addr_file)
                && let Ok(a) = s.trim().parse()
            {
                self.addr = a;
                break;
            }
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!(
                    "troupe master exited ({status}) before serving:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "troupe master did not start in 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        self.url = format!("https://{}", self.addr);
        self.proc = Some(child);
    }

    /// Stops the master (SIGKILL) and starts it again on the same port
    /// and data directory.
    pub fn restart(&mut self, opts: &MasterOptions) {
        self.stop();
        self.resume(opts);
    }

    /// Stops the master (SIGKILL). `troupe ca` commands then work on the
    /// CA directly; [`Master::resume`] starts it again.
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// Stops the master gracefully (SIGTERM) and waits until it has exited;
    /// returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut p = self.proc.take()?;
        run(Command::new("kill").args(["-TERM", &p.0.id().to_string()])).assert_success();
        p.0.wait().ok().and_then(|s| s.code())
    }

    /// Starts a stopped master again on the same port and data directory.
    pub fn resume(&mut self, opts: &MasterOptions) {
        assert!(self.proc.is_none(), "the master is running");
        let listen = self.addr.to_string();
        self.spawn(opts, &listen);
    }

    /// Everything the master logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Runs `troupe ca ARGS --data DATA`.
    pub fn ca(&self, args: &[&str]) -> Out {
        ca_cli(&self.data, args)
    }

    /// Runs `troupe ca ARGS`, asserts success, returns stdout.
    pub fn ca_ok(&self, args: &[&str]) -> String {
        ca_cli_ok(&self.data, args)
    }

    /// A client certificate for `name` signed directly with this master's
    /// CA key (so the CA has no record of it): CN and DNS name `name`,
    /// clientAuth, valid 2024-2099, a random serial, then `tweak` applied.
    pub fn sign_with_ca_key(
        &self,
        name: &str,
        tweak: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (rcgen::KeyPair, rcgen::Certificate) {
        let ca_key = std::fs::read_to_string(self.data.join("ca/ca_key.pem")).expect("CA key");
        let ca_crt = std::fs::read_to_string(self.data.join("ca/ca_crt.pem")).expect("CA cert");
        let issuer = rcgen::Issuer::from_ca_cert_pem(
            &ca_crt,
            rcgen::KeyPair::from_pem(&ca_key).expect("CA key"),
        )
        .expect("CA issuer");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial).expect("random");
        serial[0] &= 0x7f;
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        tweak(&mut p);
        let cert = p.signed_by(&key, &issuer).expect("signing");
        (key, cert)
    }

    /// Lays out an identity directory as `troupe-agent bootstrap` does,
    /// holding a certificate for `name` that expired in 2021.
    pub fn write_expired_identity(&self, name: &str, dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let (key, cert) = self.sign_with_ca_key(name, |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        });
        std::fs::create_dir_all(dir).expect("identity dir");
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("key.pem");
        std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600))
            .expect("key.pem mode");
        std::fs::write(dir.join("cert.pem"), cert.pem()).expect("cert.pem");
        std::fs::copy(self.data.join("ca/ca_crt.pem"), dir.join("ca.pem")).expect("ca.pem");
    }

    /// The CA fingerprint (`troupe ca fingerprint`).
    pub fn fingerprint(&self) -> String {
        self.ca_ok(&["fingerprint"]).trim().to_string()
    }

    /// A fresh one-time key for `host` (`troupe ca psk new HOST`).
    pub fn psk(&self, host: &str) -> String {
        self.ca_ok(&["psk", "new", host]).trim().to_string()
    }

    /// A fresh one-time key for `host` through the admin socket directly
    /// (no process spawn; for benchmarks and bulk setup).
    pub fn psk_fast(&self, host: &str) -> String {
        let req = troupe_master::admin::AdminRequest::PskNew {
            host: host.to_string(),
            ttl_secs: 7200,
        };
        let resp = troupe_master::admin::call(&self.data, &req)
            .expect("admin socket")
            .expect("master running");
        assert!(resp.ok, "{:?}", resp.error);
        resp.result.expect("result")["psk"]
            .as_str()
            .expect("psk")
            .to_string()
    }

    /// `troupe ca list --all --json`, parsed.
    pub fn list_all(&self) -> serde_json::Value {
        serde_json::from_str(&self.ca_ok(&["list", "--all", "--json"])).expect("list json")
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> Vec<u8> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let pem = std::fs::read(self.data.join("ca/ca_crt.pem")).expect("ca_crt.pem");
        CertificateDer::from_pem_slice(&pem)
            .expect("CA PEM")
            .as_ref()
            .to_vec()
    }

    /// The state directory the harness uses for agent `name`.
    pub fn agent_state(&self, name: &str) -> PathBuf {
        self.root.path().join("agents").join(name)
    }

    /// The command `troupe-agent bootstrap` for `name` in its usual state
    /// directory ([`Master::agent_state`]), polling fast.
    pub fn bootstrap_command(&self, name: &str, psk: Option<&str>) -> Command {
        self.bootstrap_command_in(name, psk, &self.agent_state(name))
    }

    /// Like [`Master::bootstrap_command`] with another state directory
    /// (e.g. a second machine claiming the same name).
    pub fn bootstrap_command_in(&self, name: &str, psk: Option<&str>, state: &Path) -> Command {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("bootstrap")
            .arg("--server")
            .arg(&self.url)
            .arg("--name")
            .arg(name)
            .arg("--ca-fingerprint")
            .arg(self.fingerprint())
            .arg("--state")
            .arg(state)
            .args(["--poll-initial", "100ms", "--poll-max", "300ms"]);
        if let Some(p) = psk {
            cmd.arg("--psk").arg(p);
        }
        cmd
    }

    /// Runs `troupe-agent bootstrap` for `name` to completion.
    pub fn bootstrap(&self, name: &str, psk: Option<&str>) -> Out {
        run(&mut self.bootstrap_command(name, psk))
    }

    /// Runs `troupe-agent ARGS` (add `--server`/`--state` yourself, or use
    /// [`Master::agent_cmd`]).
    pub fn agent(&self, args: &[&str]) -> Out {
        run(Command::new(agent_bin()).args(args))
    }

    /// Runs `troupe-agent SUBCOMMAND --server URL --state <name's dir> ARGS`.
    pub fn agent_cmd(&self, name: &str, subcommand: &str, args: &[&str]) -> Out {
        run(Command::new(agent_bin())
            .arg(subcommand)
            .arg("--server")
            .arg(&self.url)
            .arg("--state")
            .arg(self.agent_state(name))
            .args(args))
    }

    /// A gRPC client for the Ca service over TLS verified against the CA,
    /// without a client certificate (what a bootstrapping host has).
    pub async fn ca_client(
        &self,
    ) -> troupe_proto::v1::ca_client::CaClient<tonic::transport::Channel> {
        let cfg = troupe_pki::tls::client_config(&self.ca_der(), vec![], None).expect("tls config");
        let ch = troupe_identity::connect_with(cfg, &self.url)
            .await
            .expect("connect");
        troupe_proto::v1::ca_client::CaClient::new(ch)
    }

    /// A mutual-TLS channel with agent `name`'s identity (after bootstrap).
    pub async fn agent_channel(&self, name: &str) -> anyhow::Result<tonic::transport::Channel> {
        troupe_pki::tls::install_crypto_provider();
        let id = troupe_identity::Identity::load(&self.agent_state(name))?;
        id.connect(&self.url).await
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.proc = None;
        if std::env::var_os("TROUPE_KEEP_TMP").is_some() {
            let p = self.root.path().to_path_buf();
            eprintln!("keeping {}", p.display());
            std::mem::forget(std::mem::replace(
                &mut self.root,
                tempfile::tempdir().expect("tempdir"),
            ));
        }
    }
}

/// The text of the master's metrics listener on 127.0.0.1:`port` (one
/// plain HTTP/1.1 GET of `/metrics`, headers included).
pub fn metrics_text(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// Writes a fresh rcgen key and a CSR for `name` with an optional PSK.
pub fn make_csr(name: &str, psk: Option<&str>) -> (rcgen::KeyPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let der = troupe_pki::build_csr(name, &key, psk).expect("csr");
    (key, der)
}

/// True when `path` has exactly `mode` permission bits.
pub fn has_mode(path: &Path, mode: u32) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777 == mode)
        .unwrap_or(false)
}
