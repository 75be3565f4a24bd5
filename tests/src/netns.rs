//! A fleet on one machine: a master and agents as separate hosts, each in
//! its own network namespace.
//!
//! [`Net::new`] makes a private switch: a namespace holding a bridge, to
//! which every host's namespace is wired by a veth pair. Hosts get
//! addresses in `10.77.0.0/16` *inside* these namespaces only; the root
//! namespace is never given an address or a route, so no traffic can leave
//! the namespaces this test made. Each test has its own switch, so parallel
//! tests never see each other (they may reuse the same addresses).
//!
//! Operations: start processes in a host (`ip netns exec NS PROGRAM ...`),
//! kill -9 any of them, cut a host off (its switch port goes down: packets
//! are lost, connects fail with "no route to host") and bring it back,
//! throttle or delay its traffic (`tc`; latency needs the kernel's
//! `sch_netem`, which may be missing: [`Net::add_latency`] then returns an
//! error saying so, and [`Net::delay_host`] falls back to a delaying TCP
//! relay in the master's namespace, see [`Latency`]), and run a master that
//! can be killed and restarted on the same address and data.
//!
//! Namespaces are named `trp-PID-N-...` and deleted on drop (also when the
//! test panics); [`sweep_leftovers`] removes those of dead processes (a test
//! killed by a timeout). Processes still inside a namespace are killed
//! first.
//!
//! Needs root and iproute2. [`Net::require`] fails the test with a clear
//! message when that is missing and `CI=true`, and otherwise prints why the
//! test is skipped and returns `None`.

use crate::{MasterOptions, Out, Proc, agent_bin, run, troupe_bin};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Prefix of every namespace this harness makes.
pub const PREFIX: &str = "trp-";

/// The master's port inside its namespace (each namespace has its own port
/// space, so the default port is always free).
pub const MASTER_PORT: u16 = 8140;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS`, returning stderr on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    cmd_ok("ip", args)
}

fn cmd_ok(prog: &str, args: &[&str]) -> Result<(), String> {
    let o = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{prog} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills (SIGKILL) every process inside namespace `ns`.
fn kill_in(ns: &str) {
    let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).output();
    }
}

fn delete_ns(ns: &str) {
    kill_in(ns);
    let _ = ip(&["netns", "del", ns]);
}

/// Deletes namespaces (and kills their processes), unmounts tmpfs mounts
/// and removes temporary directories left by harness users whose process
/// is gone (killed by a timeout, say).
pub fn sweep_leftovers() {
    // Booted hosts first: their overlays live in the directories below.
    crate::nspawn::sweep_leftovers();
    if let Ok(o) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !pid_alive(pid) {
                delete_ns(name);
            }
        }
    }
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        for line in mounts.lines() {
            let mut f = line.split_whitespace();
            let (Some(_), Some(target)) = (f.next(), f.next()) else {
                continue;
            };
            let Some(pos) = target.find(TMPFS_TAG) else {
                continue;
            };
            let pid = target[pos + TMPFS_TAG.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && !pid_alive(pid)
            {
                let _ = cmd_ok("umount", &["-l", target]);
            }
        }
    }
    if std::env::var_os("TROUPE_KEEP_TMP").is_none()
        && let Ok(dir) = std::fs::read_dir(std::env::temp_dir())
    {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
                continue;
            };
            if let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok())
                && !pid_alive(pid)
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Prefix of the harness's temporary directories (followed by the pid).
const TMP_PREFIX: &str = "troupe-fleet-";

/// One host: a network namespace with one interface (`eth0`) on the
/// test's switch.
#[derive(Debug, Clone)]
pub struct Host {
    /// The name the test gave it.
    pub name: String,
    /// The namespace.
    pub ns: String,
    /// Its address (inside the namespace only).
    pub ip: Ipv4Addr,
    /// Its switch port (the veth end in the switch namespace).
    port: String,
    /// A directory for this host's files (state dirs, sandbox roots).
    pub dir: PathBuf,
}

/// A switch and the hosts wired to it. Drop deletes them all.
pub struct Net {
    /// Temporary directory holding every host's files.
    pub tmp: tempfile::TempDir,
    hub: String,
    base: String,
    hosts: Mutex<Vec<String>>,
    next_host: AtomicU32,
    /// Latency added by [`Net::delay_host`], by host namespace.
    delays: Mutex<HashMap<String, Delay>>,
}

impl Net {
    /// Makes the switch. Errors say why (not root, no iproute2, ...).
    pub fn new() -> Result<Net, String> {
        if Command::new("ip").arg("-V").output().is_err() {
            return Err("iproute2 (`ip`) is not installed".into());
        }
        sweep_leftovers();
        let base = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let hub = format!("{base}-hub");
        ip(&["netns", "add", &hub])
            .map_err(|e| format!("cannot create a network namespace (this needs root): {e}"))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{TMP_PREFIX}{}-", std::process::id()))
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let net = Net {
            tmp,
            hub: hub.clone(),
            base,
            hosts: Mutex::new(Vec::new()),
            next_host: AtomicU32::new(1),
            delays: Mutex::new(HashMap::new()),
        };
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        Ok(net)
    }

    /// Like [`Net::new`]; when namespaces cannot be made, panics if
    /// `CI=true` and otherwise prints the reason and returns `None` (the
    /// caller returns: the test is skipped).
    pub fn require() -> Option<Net> {
        match Net::new() {
            Ok(n) => Some(n),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("the multi-host harness needs network namespaces (root, iproute2): {e}")
            }
            Err(e) => {
                eprintln!("SKIPPED: the multi-host harness is not available here: {e}");
                None
            }
        }
    }

    /// Adds a host wired to the switch, with the next free address.
    pub fn add_host(&self, name: &str) -> Host {
        let k = self.next_host.fetch_add(1, Ordering::SeqCst);
        assert!(k < 250 * 200, "too many hosts");
        let addr = Ipv4Addr::new(10, 77, (k / 250) as u8, (k % 250 + 2) as u8);
        let ns = format!("{}-h{k}", self.base);
        let port = format!("p{k}");
        ip(&["netns", "add", &ns]).unwrap_or_else(|e| panic!("{e}"));
        self.hosts.lock().unwrap().push(ns.clone());
        let steps: Vec<Vec<String>> = vec![
            vec![
                "-n", &self.hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            sv(&["-n", &self.hub, "link", "set", &port, "master", "br0"]),
            sv(&["-n", &self.hub, "link", "set", &port, "up"]),
            sv(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/16"),
                "dev",
                "eth0",
            ]),
            sv(&["-n", &ns, "link", "set", "eth0", "up"]),
            sv(&["-n", &ns, "link", "set", "lo", "up"]),
        ];
        for s in steps {
            let s: Vec<&str> = s.iter().map(String::as_str).collect();
            ip(&s).unwrap_or_else(|e| panic!("wiring host {name}: {e}"));
        }
        let dir = self.tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("host dir");
        Host {
            name: name.to_string(),
            ns,
            ip: addr,
            port,
            dir,
        }
    }

    /// `ip netns exec NS PROGRAM` (the program replaces `ip`, so the child's
    /// pid is the program's).
    pub fn command(&self, host: &Host, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.ns]).arg(program);
        c
    }

    /// Cuts the host off: its link goes down, so whatever it sends fails at
    /// once ("network is unreachable") and nothing reaches it.
    pub fn cut_off(&self, host: &Host) {
        ip(&["-n", &host.ns, "link", "set", "eth0", "down"]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Partitions the host silently: its switch port goes down, so its
    /// packets are lost on the wire (connects fail after ARP gives up,
    /// about 3 s; open connections hang until their timeouts).
    pub fn partition(&self, host: &Host) {
        ip(&["-n", &self.hub, "link", "set", &host.port, "down"]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Brings a host back after [`Net::cut_off`] or [`Net::partition`].
    pub fn reconnect(&self, host: &Host) {
        ip(&["-n", &host.ns, "link", "set", "eth0", "up"]).unwrap_or_else(|e| panic!("{e}"));
        ip(&["-n", &self.hub, "link", "set", &host.port, "up"]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Adds `delay` to every packet the host sends (tc netem). Fails with a
    /// clear message when the kernel has no `sch_netem` ([`Net::delay_host`]
    /// falls back to a userspace relay then).
    pub fn add_latency(&self, host: &Host, delay: Duration) -> Result<(), String> {
        let ms = format!("{}ms", delay.as_millis());
        cmd_ok(
            "tc",
            &[
                "-n", &host.ns, "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &ms,
            ],
        )
        .map_err(|e| {
            format!("latency cannot be added: the kernel's netem queueing discipline (sch_netem) is missing or tc failed: {e}")
        })
    }

    /// Limits what the host sends to `kbit` kilobits per second (tc tbf).
    /// Fails with a clear message when the kernel has no `sch_tbf`.
    pub fn throttle(&self, host: &Host, kbit: u32) -> Result<(), String> {
        let rate = format!("{kbit}kbit");
        cmd_ok(
            "tc",
            &[
                "-n", &host.ns, "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate,
                "burst", "4kb", "limit", "4mb",
            ],
        )
        .map_err(|e| {
            format!("traffic cannot be throttled: the kernel's tbf queueing discipline (sch_tbf) is missing or tc failed: {e}")
        })
    }

    /// Removes latency or throttling from a host.
    pub fn clear_shaping(&self, host: &Host) {
        let _ = cmd_ok(
            "tc",
            &["-n", &host.ns, "qdisc", "del", "dev", "eth0", "root"],
        );
    }

    /// Delays the traffic between `host` and the master `m` by `one_way`
    /// in each direction (the round trip grows by twice that), and says how.
    ///
    /// First choice is tc netem on both ends of the host's link (its
    /// `eth0` and its switch port): every packet to and from the host
    /// waits. When the kernel has no `sch_netem`, a delaying TCP relay is
    /// started instead, in the master's namespace on the master's own
    /// address (so the master's certificate still matches) and another
    /// port: every chunk it carries, either way, is held `one_way` and
    /// passed on in order. Agents on `host` started through this harness
    /// ([`Agent::run_command`], [`Agent::bootstrap_command`]) then dial the
    /// relay; commands built by hand should use [`Net::server_url`].
    /// [`Net::clear_latency`] (or dropping the `Net`) undoes either.
    pub fn delay_host(
        &self,
        host: &Host,
        m: &NetMaster,
        one_way: Duration,
    ) -> Result<Latency, String> {
        self.clear_latency(host);
        let ms = format!("{}ms", one_way.as_millis().max(1));
        let netem = |args: &[&str]| {
            let mut a = args.to_vec();
            a.extend(["root", "netem", "delay", &ms]);
            cmd_ok("tc", &a)
        };
        let tried = netem(&["-n", &host.ns, "qdisc", "replace", "dev", "eth0"]).and_then(|()| {
            netem(&["-n", &self.hub, "qdisc", "replace", "dev", &host.port]).inspect_err(|_| {
                self.clear_shaping(host);
            })
        });
        let netem_error = match tried {
            Ok(()) => {
                self.delays
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        host.ns.clone(),
                        Delay {
                            netem: true,
                            relay: None,
                        },
                    );
                return Ok(Latency {
                    method: LatencyMethod::Netem,
                    one_way,
                    bytes: None,
                });
            }
            Err(e) => e,
        };
        let upstream = SocketAddr::from((m.host.ip, MASTER_PORT));
        let relay = Relay::start(&m.host.ns, m.host.ip, upstream, one_way).map_err(|e| {
            format!(
                "latency cannot be added: netem is not available ({netem_error}) and the relay did not start: {e}"
            )
        })?;
        let latency = Latency {
            method: LatencyMethod::Relay {
                addr: relay.addr,
                master_url: m.url.clone(),
                netem_error,
            },
            one_way,
            bytes: Some(relay.bytes.clone()),
        };
        self.delays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                host.ns.clone(),
                Delay {
                    netem: false,
                    relay: Some(relay),
                },
            );
        Ok(latency)
    }

    /// Removes what [`Net::delay_host`] added to `host` (its agents dial the
    /// master directly again).
    pub fn clear_latency(&self, host: &Host) {
        let d = self
            .delays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&host.ns);
        if let Some(d) = d {
            if d.netem {
                self.clear_shaping(host);
                let _ = cmd_ok(
                    "tc",
                    &["-n", &self.hub, "qdisc", "del", "dev", &host.port, "root"],
                );
            }
            drop(d.relay);
        }
    }

    /// The URL agents on `host` use to reach the master `m`: the latency
    /// relay's when [`Net::delay_host`] put one between them, else `m.url`.
    pub fn server_url(&self, host: &Host, m: &NetMaster) -> String {
        let delays = self.delays.lock().unwrap_or_else(|e| e.into_inner());
        match delays.get(&host.ns).and_then(|d| d.relay.as_ref()) {
            Some(r) if r.master_url == m.url => format!("https://{}", r.addr),
            _ => m.url.clone(),
        }
    }
}

/// How [`Net::delay_host`] delays a host's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LatencyMethod {
    /// tc netem on both ends of the host's link.
    Netem,
    /// A delaying TCP relay in the master's namespace, at `addr`, in front
    /// of the master at `master_url` (netem failed with `netem_error`).
    Relay {
        addr: SocketAddr,
        master_url: String,
        netem_error: String,
    },
}

/// Latency in place (see [`Net::delay_host`]).
#[derive(Debug, Clone)]
pub struct Latency {
    pub method: LatencyMethod,
    /// Delay added in each direction.
    pub one_way: Duration,
    bytes: Option<Arc<AtomicU64>>,
}

impl Latency {
    /// What the round trip between host and master grows by.
    pub fn rtt(&self) -> Duration {
        self.one_way * 2
    }

    /// Bytes the relay has carried (both ways) so far; `None` with netem.
    pub fn relayed_bytes(&self) -> Option<u64> {
        self.bytes.as_ref().map(|b| b.load(Ordering::SeqCst))
    }

    /// One line saying how latency is added, for test output.
    pub fn describe(&self) -> String {
        match &self.method {
            LatencyMethod::Netem => format!(
                "latency: tc netem, {} ms each way on the host's link",
                self.one_way.as_millis()
            ),
            LatencyMethod::Relay {
                addr, netem_error, ..
            } => format!(
                "latency: userspace TCP relay at {addr} in the master's namespace, {} ms each way (netem unavailable: {netem_error})",
                self.one_way.as_millis()
            ),
        }
    }
}

/// What [`Net::delay_host`] did to one host.
struct Delay {
    netem: bool,
    relay: Option<Relay>,
}

/// A delaying TCP relay: a thread that entered a namespace (setns), listens
/// there and forwards each connection to `upstream`, holding every chunk
/// `delay` in both directions and keeping its order. Stopped (and its
/// threads joined) on drop.
struct Relay {
    addr: SocketAddr,
    master_url: String,
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// How often the relay's threads look at the stop flag.
const RELAY_TICK: Duration = Duration::from_millis(50);

impl Relay {
    fn start(
        ns: &str,
        ip: Ipv4Addr,
        upstream: SocketAddr,
        delay: Duration,
    ) -> Result<Relay, String> {
        let ns_path = PathBuf::from("/run/netns").join(ns);
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
        let (stop2, bytes2) = (stop.clone(), bytes.clone());
        let thread = std::thread::Builder::new()
            .name(format!("latency-relay-{ns}"))
            .spawn(move || {
                // Only this thread (and the threads it spawns) enters the
                // namespace; sockets keep the namespace they were made in.
                let listener = (|| -> Result<TcpListener, String> {
                    let f = std::fs::File::open(&ns_path)
                        .map_err(|e| format!("{}: {e}", ns_path.display()))?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("setns {}: {e}", ns_path.display()))?;
                    let l = TcpListener::bind((ip, 0)).map_err(|e| format!("bind {ip}:0: {e}"))?;
                    l.set_nonblocking(true).map_err(|e| e.to_string())?;
                    Ok(l)
                })();
                let listener = match listener {
                    Ok(l) => {
                        let _ = tx.send(l.local_addr().map_err(|e| e.to_string()));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                relay_accept(listener, upstream, delay, &stop2, &bytes2);
            })
            .map_err(|e| format!("spawning the relay thread: {e}"))?;
        let addr = rx
            .recv()
            .map_err(|_| "the relay thread died".to_string())??;
        Ok(Relay {
            addr,
            master_url: format!("https://{}:{}", upstream.ip(), upstream.port()),
            stop,
            bytes,
            thread: Some(thread),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The relay's accept loop (in the namespace): each client gets a fresh
/// upstream connection and two delaying pipes; a client whose upstream
/// cannot be reached is closed at once.
fn relay_accept(
    listener: TcpListener,
    upstream: SocketAddr,
    delay: Duration,
    stop: &Arc<AtomicBool>,
    bytes: &Arc<AtomicU64>,
) {
    let mut pipes: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))
                else {
                    continue;
                };
                let ok = client.set_nonblocking(false).is_ok()
                    && client.set_nodelay(true).is_ok()
                    && server.set_nodelay(true).is_ok();
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                if !ok {
                    continue;
                }
                pipes.retain(|p| !p.is_finished());
                for (from, to) in [(client, s2), (server, c2)] {
                    let (stop, bytes) = (stop.clone(), bytes.clone());
                    if let Ok(h) = std::thread::Builder::new()
                        .name("latency-pipe".into())
                        .spawn(move || delay_pipe(from, to, delay, &stop, &bytes))
                    {
                        pipes.push(h);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    for p in pipes {
        let _ = p.join();
    }
}

/// One direction of a relayed connection: a reader stamps each chunk with
/// the time it is due; a writer sends chunks in order once due. The end of
/// the stream is passed on (half-close) when due too; an error closes both
/// sockets.
fn delay_pipe(
    mut from: TcpStream,
    to: TcpStream,
    delay: Duration,
    stop: &Arc<AtomicBool>,
    bytes: &Arc<AtomicU64>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Option<Vec<u8>>)>();
    let (Ok(from2), Ok(mut to_w)) = (from.try_clone(), to.try_clone()) else {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        return;
    };
    let wstop = stop.clone();
    let writer = std::thread::Builder::new()
        .name("latency-pipe-w".into())
        .spawn(move || {
            loop {
                let (due, chunk) = match rx.recv_timeout(RELAY_TICK) {
                    Ok(x) => x,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        if wstop.load(Ordering::SeqCst) {
                            break;
                        }
                        continue;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                };
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                match chunk {
                    Some(b) => {
                        if to_w.write_all(&b).is_err() {
                            let _ = to_w.shutdown(Shutdown::Both);
                            let _ = from2.shutdown(Shutdown::Both);
                            break;
                        }
                    }
                    None => {
                        let _ = to_w.shutdown(Shutdown::Write);
                        break;
                    }
                }
            }
        });
    if from.set_read_timeout(Some(RELAY_TICK)).is_ok() {
        let mut buf = vec![0u8; 64 * 1024];
        while !stop.load(Ordering::SeqCst) {
            match from.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.send((Instant::now() + delay, None));
                    break;
                }
                Ok(n) => {
                    bytes.fetch_add(n as u64, Ordering::SeqCst);
                    if tx
                        .send((Instant::now() + delay, Some(buf[..n].to_vec())))
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => {
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    break;
                }
            }
        }
    }
    drop(tx);
    if let Ok(w) = writer {
        let _ = w.join();
    }
}

fn sv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

impl Drop for Net {
    fn drop(&mut self) {
        // Stop the latency relays before their namespaces go.
        std::mem::take(&mut *self.delays.lock().unwrap_or_else(|e| e.into_inner()));
        let hosts = std::mem::take(&mut *self.hosts.lock().unwrap_or_else(|e| e.into_inner()));
        for ns in hosts.iter().chain(std::iter::once(&self.hub)) {
            delete_ns(ns);
        }
        if std::env::var_os("TROUPE_KEEP_TMP").is_some() {
            let p = self.tmp.path().to_path_buf();
            eprintln!("keeping {}", p.display());
            std::mem::forget(std::mem::replace(
                &mut self.tmp,
                tempfile::tempdir().expect("tempdir"),
            ));
        }
    }
}

/// Tag in the path of [`Tmpfs`] mount points (followed by the pid).
const TMPFS_TAG: &str = "troupe-tmpfs-";

/// A small tmpfs mounted for one test (e.g. a data directory that fills
/// up); unmounted on drop.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `"8m"`) at a fresh directory under
    /// `parent`.
    pub fn mount(parent: &Path, size: &str) -> Result<Tmpfs, String> {
        let path = parent.join(format!(
            "{TMPFS_TAG}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let p = path.to_str().ok_or("non-UTF-8 path")?;
        cmd_ok(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                p,
            ],
        )?;
        Ok(Tmpfs { path })
    }

    /// Fills the file system: writes a file until the disk is full, and
    /// returns its path (remove it to free the space).
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.path.join("filler");
        let mut f = std::fs::File::create(&p).expect("filler");
        let chunk = vec![0x5au8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // Also take the last partial block.
        while f.write(&chunk[..512]).is_ok_and(|n| n > 0) {}
        let _ = f.sync_all();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(p) = self.path.to_str() {
            let _ = cmd_ok("umount", &["-l", p]);
        }
    }
}

/// A `troupe master` running in its own host, on `IP:8140`.
pub struct NetMaster {
    pub host: Host,
    /// Its `--data` directory.
    pub data: PathBuf,
    /// `https://IP:8140`.
    pub url: String,
    pub log_path: PathBuf,
    pub opts: MasterOptions,
    proc: Option<Proc>,
}

impl NetMaster {
    /// Starts a master in `host` with its data in `host.dir/data`.
    pub fn start(net: &Net, host: &Host, opts: MasterOptions) -> NetMaster {
        Self::start_in(net, host, host.dir.join("data"), opts)
    }

    /// Starts a master in `host` with the given data directory.
    pub fn start_in(net: &Net, host: &Host, data: PathBuf, opts: MasterOptions) -> NetMaster {
        let mut m = NetMaster {
            host: host.clone(),
            url: format!("https://{}:{MASTER_PORT}", host.ip),
            log_path: host.dir.join("master.log"),
            data,
            opts,
            proc: None,
        };
        m.resume(net);
        m
    }

    /// Starts the (stopped) master again; waits until it serves.
    pub fn resume(&mut self, net: &Net) {
        assert!(self.proc.is_none(), "the master is running");
        self.try_resume(net).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Like [`NetMaster::resume`], returning the reason it did not start.
    pub fn try_resume(&mut self, net: &Net) -> Result<(), String> {
        let _ = std::fs::remove_file(self.data.join("listen.addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("master log");
        let mut cmd = net.command(&self.host, &troupe_bin());
        cmd.arg("master")
            .arg("--data")
            .arg(&self.data)
            .arg("--listen")
            .arg(format!("{}:{MASTER_PORT}", self.host.ip))
            .args(&self.opts.extra_args)
            .env(
                "TROUPE_LOG",
                std::env::var("TROUPE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some(m) = &self.opts.modules {
            cmd.arg("--modules").arg(m);
        }
        let mut child = Proc(cmd.spawn().expect("spawning troupe master"));
        let start = Instant::now();
        loop {
            if std::fs::read_to_string(self.data.join("listen.addr")).is_ok_and(|s| !s.is_empty()) {
                break;
            }
            if let Ok(Some(status)) = child.0.try_wait() {
                return Err(format!(
                    "troupe master exited ({status}) before serving:\n{}",
                    self.log()
                ));
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "troupe master did not start in 30 s:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.proc = Some(child);
        Ok(())
    }

    /// Kills the master with SIGKILL (no shutdown of any kind).
    pub fn kill9(&mut self) {
        self.proc = None;
    }

    /// True while the master process runs.
    pub fn running(&mut self) -> bool {
        self.proc
            .as_mut()
            .is_some_and(|p| p.0.try_wait().ok().flatten().is_none())
    }

    /// Kills it (SIGKILL) and starts it again on the same address and data.
    pub fn restart(&mut self, net: &Net) {
        self.kill9();
        self.resume(net);
    }

    /// Everything it logged so far (all its lives).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `troupe ca ARGS --data DATA` (through the admin socket while the
    /// master runs, on the CA files otherwise).
    pub fn ca(&self, args: &[&str]) -> Out {
        crate::ca_cli(&self.data, args)
    }

    pub fn ca_ok(&self, args: &[&str]) -> String {
        crate::ca_cli_ok(&self.data, args)
    }

    /// `troupe ca list --all --json`, parsed.
    pub fn list_all(&self) -> serde_json::Value {
        serde_json::from_str(&self.ca_ok(&["list", "--all", "--json"])).expect("list json")
    }

    pub fn fingerprint(&self) -> String {
        self.ca_ok(&["fingerprint"]).trim().to_string()
    }

    /// One admin-socket request to the running master.
    pub fn admin(
        &self,
        req: &troupe_master::admin::AdminRequest,
    ) -> Result<serde_json::Value, String> {
        let resp = troupe_master::admin::call(&self.data, req)
            .map_err(|e| format!("admin socket: {e:#}"))?
            .ok_or("the master is not running")?;
        if resp.ok {
            Ok(resp.result.unwrap_or(serde_json::Value::Null))
        } else {
            Err(resp.error.unwrap_or_default())
        }
    }

    /// A fresh one-time key for `host`, through the admin socket.
    pub fn psk(&self, name: &str) -> String {
        let v = self
            .admin(&troupe_master::admin::AdminRequest::PskNew {
                host: name.to_string(),
                ttl_secs: 7200,
            })
            .expect("psk new");
        v["psk"].as_str().expect("psk").to_string()
    }

    /// Every CA entry (`list --all`), through the admin socket while the
    /// master runs and on the CA files otherwise.
    pub fn ca_entries(&self) -> Vec<troupe_pki::authority::ListEntry> {
        serde_json::from_value(self.list_all()).expect("list entries")
    }

    /// `(host, serial)` of every signed (valid) certificate.
    pub fn signed(&self) -> Vec<(String, String)> {
        self.ca_entries()
            .into_iter()
            .filter(|e| e.state == "signed")
            .map(|e| (e.host, e.id))
            .collect()
    }

    /// Number of signed certificates, through the admin socket (fast; for
    /// polling while the master runs).
    pub fn signed_count_fast(&self) -> Option<usize> {
        let v = self
            .admin(&troupe_master::admin::AdminRequest::List {
                filter: troupe_pki::ListFilter::Default,
            })
            .ok()?;
        Some(
            v["entries"]
                .as_array()?
                .iter()
                .filter(|e| e["state"] == "signed")
                .count(),
        )
    }

    /// Run ids of `node`'s reports stored by the master, oldest first. Opens
    /// the fleet store directly: the master must be stopped.
    pub fn stored_run_ids(&self, node: &str) -> Vec<String> {
        let store = troupe_master::store::NodeStore::open(&self.data.join("nodes.redb"), 1_000_000)
            .expect("open the node store (is the master stopped?)");
        store
            .reports(node)
            .expect("read reports")
            .into_iter()
            .map(|r| r.run_id)
            .collect()
    }
}

/// One agent identity (state dir, sandbox root) living on a host. Several
/// agents may share a host (namespace).
#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    pub host: Host,
    pub state: PathBuf,
    pub root: PathBuf,
}

impl Agent {
    /// An agent called `name` on `host`, with a sandbox root holding the
    /// top-level directories a real root has.
    pub fn new(host: &Host, name: &str) -> Agent {
        let base = host.dir.join("agents").join(name);
        let root = base.join("root");
        for d in ["etc", "srv", "var"] {
            std::fs::create_dir_all(root.join(d)).expect("root dir");
        }
        Agent {
            name: name.to_string(),
            host: host.clone(),
            state: base.join("state"),
            root,
        }
    }

    /// `troupe-agent bootstrap` inside the agent's host.
    pub fn bootstrap_command(
        &self,
        net: &Net,
        m: &NetMaster,
        fingerprint: &str,
        psk: Option<&str>,
    ) -> Command {
        let mut c = net.command(&self.host, &agent_bin());
        c.arg("bootstrap")
            .arg("--server")
            .arg(net.server_url(&self.host, m))
            .arg("--name")
            .arg(&self.name)
            .arg("--ca-fingerprint")
            .arg(fingerprint)
            .arg("--state")
            .arg(&self.state)
            .args(["--poll-initial", "100ms", "--poll-max", "500ms"])
            .stdin(Stdio::null());
        if let Some(p) = psk {
            c.arg("--psk").arg(p);
        }
        if std::env::var_os("TROUPE_LOG").is_none() {
            c.env("TROUPE_LOG", "warn");
        }
        c
    }

    /// `troupe-agent run --server URL --state S --root R EXTRA...` inside
    /// the agent's host.
    pub fn run_command(&self, net: &Net, m: &NetMaster, extra: &[&str]) -> Command {
        let mut c = net.command(&self.host, &agent_bin());
        c.arg("run")
            .arg("--server")
            .arg(net.server_url(&self.host, m))
            .arg("--state")
            .arg(&self.state)
            .arg("--root")
            .arg(&self.root)
            .args(extra)
            .stdin(Stdio::null());
        if std::env::var_os("TROUPE_LOG").is_none() {
            c.env("TROUPE_LOG", "warn");
        }
        c
    }

    /// One `run --once --output json`: the process output and the parsed
    /// report (None when the run did not happen).
    pub fn run_once(&self, net: &Net, m: &NetMaster) -> (Out, Option<serde_json::Value>) {
        let out = run(&mut self.run_command(net, m, &["--once", "--output", "json"]));
        let report = serde_json::from_str(&out.stdout).ok();
        (out, report)
    }

    /// Run ids of the reports in the agent's own store, and those still
    /// queued for the master. Opens the agent's state (no run may be going
    /// on).
    pub fn local_runs(&self) -> (Vec<String>, Vec<String>) {
        let st = troupe_agent::state::State::open(&self.state).expect("agent state");
        let all = st.run_ids().expect("agent reports");
        let unsent = st.unsent().expect("unsent");
        (all, unsent)
    }
}

/// Writes a module tree: every node gets `/etc/motd` and `files` files
/// under `/etc/fleet/`, each rendered from a template that loops `work`
/// times (to make compiles take a while: about 0.5 µs·files·work in a
/// debug build).
pub fn write_tree(dir: &Path, motd: &str, files: usize, work: usize) {
    let env = dir.join("environments/production");
    for d in ["roles", "profiles", "data", "templates"] {
        std::fs::create_dir_all(env.join(d)).expect("tree dir");
    }
    let w = |p: PathBuf, s: String| std::fs::write(p, s).expect("write tree file");
    w(
        dir.join("site.toml"),
        "default_environment = \"production\"\n\n[[node]]\nmatch = \"*\"\nrole = \"base\"\n".into(),
    );
    w(
        env.join("hierarchy.toml"),
        "[[level]]\nname = \"common\"\npath = \"common.toml\"\n".into(),
    );
    w(
        env.join("data/common.toml"),
        format!("[motd]\nbanner = \"{motd}\"\n"),
    );
    w(
        env.join("roles/base.toml"),
        "include = [\"motd\", \"fleet\"]\n".into(),
    );
    w(
        env.join("profiles/motd.toml"),
        "[params]\nbanner = \"unset\"\n\n[file.\"/etc/motd\"]\ntemplate = \"motd.j2\"\nmode = \"0644\"\n".into(),
    );
    w(
        env.join("templates/motd.j2"),
        "{{ params.banner }} ({{ node.certname }})\n".into(),
    );
    let mut p = String::from("[directory.\"/etc/fleet\"]\nmode = \"0755\"\n");
    for i in 0..files {
        p.push_str(&format!(
            "\n[file.\"/etc/fleet/f{i}\"]\ntemplate = \"fleet.j2\"\nmode = \"0644\"\n"
        ));
    }
    w(env.join("profiles/fleet.toml"), p);
    w(
        env.join("templates/fleet.j2"),
        format!(
            "{{% set ns = namespace(x=0) %}}{{% for i in range({work}) %}}{{% set ns.x = ns.x + i %}}{{% endfor %}}{{{{ node.certname }}}} {{{{ ns.x }}}}\n"
        ),
    );
}

/// Spawns `cmd` with stdout and stderr appended to `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Proc {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Proc(
        cmd.stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
    )
}

/// Waits for every process (at most `timeout` in all) and returns their
/// exit codes; a process still running then is killed and gets `None`.
pub fn wait_all(procs: &mut [Proc], timeout: Duration) -> Vec<Option<i32>> {
    let start = Instant::now();
    let mut codes: Vec<Option<Option<i32>>> = vec![None; procs.len()];
    while codes.iter().any(Option::is_none) && start.elapsed() < timeout {
        for (p, c) in procs.iter_mut().zip(codes.iter_mut()) {
            if c.is_none()
                && let Ok(Some(st)) = p.0.try_wait()
            {
                *c = Some(st.code());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    codes.into_iter().map(|c| c.flatten()).collect()
}

/// A log file's text without terminal colour codes ("" when missing).
pub fn read_log(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
