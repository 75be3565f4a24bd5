//! Compile benchmark: catalogs per second and ms per catalog for the peers'
//! 1,000-file workload (../shared/bench/peers/gen_workload.py: 1,102
//! resources, one template) expressed in Troupe's module language, and for
//! 10k resources. Reference on this machine kind: puppetserver 7.9 compiles
//! the 1,102-resource catalog in 0.61 s warm, `puppet apply` in 0.29 s.
//! Target: under 3 ms per catalog.
//!
//! Run: `cargo bench -p troupe-compiler` (release build).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_compiler::{CompileOptions, ModuleTree};

struct Workload {
    dir: String,
    dirs: Vec<String>,
    files: Vec<(String, String)>,
    items: Vec<(String, String)>,
    n: usize,
    template: String,
    /// sha256 of bench.conf as the peers' generator expects it.
    expected_conf_sha: Option<String>,
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap() // a JSON string is a valid TOML basic string
}

/// Runs the peers' generator and reads its Ansible output (JSON) so the
/// workload is exactly the one the peers converged.
fn from_generator(n: usize) -> Option<Workload> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/bench/peers/gen_workload.py");
    if !script.is_file() {
        return None;
    }
    let out = tempfile::tempdir().ok()?;
    let dir = format!("/tmp/cmbench/t{n}");
    let status = std::process::Command::new("python3")
        .arg(&script)
        .arg(n.to_string())
        .arg(&dir)
        .arg(out.path())
        .stdout(std::process::Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let play: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("ansible/site.yml")).ok()?).ok()?;
    let vars = &play[0]["vars"];
    let dirs = vars["bench_dirs"]
        .as_array()?
        .iter()
        .map(|d| d.as_str().unwrap_or("").to_owned())
        .collect();
    let files = vars["bench_files"]
        .as_array()?
        .iter()
        .map(|f| {
            (
                f["p"].as_str().unwrap_or("").to_owned(),
                f["c"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let items = vars["bench_items"]
        .as_array()?
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap_or("").to_owned(),
                i["value"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let template = std::fs::read_to_string(out.path().join("ansible/bench.conf.j2")).ok()?;
    let sums = std::fs::read_to_string(out.path().join("expected.sha256")).ok()?;
    let expected_conf_sha = sums
        .lines()
        .find(|l| l.ends_with("/bench.conf"))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_owned);
    Some(Workload {
        dir,
        dirs,
        files,
        items,
        n,
        template,
        expected_conf_sha,
    })
}

/// The same shape without the generator (distinct contents, same sizes).
fn synthetic(n: usize) -> Workload {
    let ndirs = (n / 10).max(1);
    let dirs: Vec<String> = (0..ndirs).map(|k| format!("d{k:04}")).collect();
    let files = (0..n)
        .map(|i| {
            let seed = &troupe_catalog::sha256_hex(format!("bench-{i}").as_bytes())[..16];
            (
                format!("{}/f{i:05}.txt", dirs[(i / 10).min(ndirs - 1)]),
                format!("bench file {i:05} of {n}\nseed {seed}\n"),
            )
        })
        .collect();
    let items = (0..10)
        .map(|j| (format!("item{j:02}"), format!("value-{j:02}")))
        .collect();
    Workload {
        dir: format!("/tmp/cmbench/t{n}"),
        dirs,
        files,
        items,
        n,
        template: "# bench.conf - managed by cm-bench\nname = {{ bench_name }}\nfiles = {{ bench_nfiles }}\n[items]\n{% for it in bench_items %}\n{{ it.key }} = {{ it.value }}\n{% endfor %}\n# end\n".into(),
        expected_conf_sha: None,
    }
}

/// Writes the workload as a Troupe module tree.
fn write_tree(w: &Workload, root: &Path) {
    let env = root.join("environments/production");
    for d in ["roles", "profiles", "templates", "data"] {
        std::fs::create_dir_all(env.join(d)).unwrap();
    }
    std::fs::write(
        root.join("site.toml"),
        "[[node]]\nmatch = \"*\"\nrole = \"bench\"\n",
    )
    .unwrap();
    std::fs::write(
        env.join("hierarchy.toml"),
        "[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
    )
    .unwrap();
    std::fs::write(env.join("data/common.toml"), "").unwrap();
    std::fs::write(env.join("roles/bench.toml"), "include = [\"bench\"]\n").unwrap();
    std::fs::write(env.join("templates/bench.conf.j2"), &w.template).unwrap();
    let mut p = String::with_capacity(w.files.len() * 120);
    let _ = writeln!(p, "# The peers' workload, N={}", w.n);
    let _ = writeln!(p, "[directory.{}]\nmode = \"0755\"\n", toml_str(&w.dir));
    for d in &w.dirs {
        let _ = writeln!(
            p,
            "[directory.{}]\nmode = \"0755\"\n",
            toml_str(&format!("{}/{d}", w.dir))
        );
    }
    for (f, c) in &w.files {
        let _ = writeln!(
            p,
            "[file.{}]\nmode = \"0644\"\ncontent = {}\n",
            toml_str(&format!("{}/{f}", w.dir)),
            toml_str(c)
        );
    }
    let items: Vec<String> = w
        .items
        .iter()
        .map(|(k, v)| format!("{{ key = {}, value = {} }}", toml_str(k), toml_str(v)))
        .collect();
    let _ = writeln!(
        p,
        "[file.{}]\nmode = \"0644\"\ntemplate = \"bench.conf.j2\"\nvars = {{ bench_name = \"bench\", bench_nfiles = {}, bench_items = [{}] }}",
        toml_str(&format!("{}/bench.conf", w.dir)),
        w.n,
        items.join(", ")
    );
    std::fs::write(env.join("profiles/bench.toml"), p).unwrap();
}

/// CPU seconds (user + system) this process has used, from /proc: immune to
/// time spent descheduled on a shared machine.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0) // USER_HZ is 100 on Linux
}

/// Nanoseconds this thread has run on a CPU (`CLOCK_THREAD_CPUTIME_ID`):
/// immune to time spent waiting for a core on a loaded machine, and exact
/// (`/proc/thread-self/schedstat`, used before, is only brought up to date
/// at a scheduler tick: a 2 ms compile read as 0 or 4 ms).
fn thread_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call;
    // clock_gettime only writes it and has no other effect.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

fn facts() -> serde_json::Value {
    serde_json::json!({
        "hostname": "bench1", "fqdn": "bench1.example.com",
        "os": { "family": "Debian", "name": "Debian", "release": { "full": "12.5", "major": "12" } },
        "kernel": { "name": "Linux", "release": "6.1.0" }, "architecture": "x86_64"
    })
}

/// Puppet's compile of the same workload, measured in the same run by
/// `bench/peers/compile_peer.sh` (`TROUPE_BENCH_PEER` names its table).
#[derive(Clone, Copy)]
struct Peer {
    /// File resources in Puppet's catalog (the workload's objects).
    resources: usize,
    /// The first compile, which parses site.pp, CPU seconds.
    first_cpu_s: f64,
    /// Median of the later compiles (parsed manifest reused), CPU seconds.
    warm_cpu_s: f64,
    warm_runs: usize,
}

impl Peer {
    fn warm_us(&self) -> f64 {
        self.warm_cpu_s * 1e6 / self.resources as f64
    }
    fn first_us(&self) -> f64 {
        self.first_cpu_s * 1e6 / self.resources as f64
    }
}

/// Reads compile_peer.sh's table: a header, then per size
/// `n resources runs first_cpu_s warm_cpu_median_s warm_cpu_min_s warm_wall_median_s`.
fn read_peer(path: &str) -> Result<Vec<(usize, Peer)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let bad = || {
            format!(
                "{path}:{}: expected 7 tab-separated numbers, found {line:?}",
                i + 1
            )
        };
        if f.len() != 7 {
            return Err(bad());
        }
        let int = |k: usize| f[k].parse::<usize>().map_err(|_| bad());
        let num = |k: usize| f[k].parse::<f64>().map_err(|_| bad());
        let peer = Peer {
            resources: int(1)?,
            warm_runs: int(2)?,
            first_cpu_s: num(3)?,
            warm_cpu_s: num(4)?,
        };
        if peer.resources == 0 {
            return Err(bad());
        }
        out.push((int(0)?, peer));
    }
    Ok(out)
}

/// What [`run`] measured for one workload.
struct Figures {
    resources: usize,
    /// Thread CPU time per compile, median of the timed runs, ms.
    cpu_ms: f64,
    /// Fastest compile (wall), ms.
    min_ms: f64,
    peer: Option<Peer>,
}

fn run(label: &str, w: &Workload, compare: bool, peer: Option<Peer>) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    write_tree(w, dir.path());
    let t0 = Instant::now();
    let tree = ModuleTree::load(dir.path()).unwrap_or_else(|e| panic!("{}", e.render()));
    let load = t0.elapsed();
    let tree = Arc::new(tree);
    let facts = facts();
    let opts = CompileOptions::default();
    let first = tree
        .compile("bench1.example.com", &facts, &opts)
        .unwrap_or_else(|e| panic!("{}", e.render()));
    let resources = first.resources.len();
    // Check the template renders byte-identically to the peers' expectation.
    let conf = first
        .resources
        .iter()
        .find(|r| r.id.title().ends_with("/bench.conf"))
        .and_then(|r| match &r.kind {
            troupe_catalog::Kind::File {
                content: Some(c), ..
            } => Some(c.sha256.clone()),
            _ => None,
        })
        .unwrap();
    let conf_check = match &w.expected_conf_sha {
        Some(s) if conf == s.as_str() => "bench.conf matches the peers' sha256",
        Some(_) => panic!("bench.conf differs from the peers' rendering"),
        None => "synthetic workload (generator not found)",
    };
    let hash = first.hash();

    // Warm up, then time for ~2 s.
    for _ in 0..5 {
        std::hint::black_box(tree.compile("bench1.example.com", &facts, &opts).unwrap());
    }
    let budget = Duration::from_secs(2);
    let mut times = Vec::new();
    let mut thread_ns = Vec::new();
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    while start.elapsed() < budget || times.len() < 10 {
        let t = Instant::now();
        let ns = thread_cpu_ns();
        let c = tree.compile("bench1.example.com", &facts, &opts).unwrap();
        // The drop is part of a compile's cost (the master drops each
        // catalog after encoding it).
        assert_eq!(c.resources.len(), resources);
        drop(c);
        if let Some((a, b)) = ns.zip(thread_cpu_ns()) {
            thread_ns.push(b.saturating_sub(a));
        }
        times.push(t.elapsed());
    }
    thread_ns.sort();
    let thread_cpu_ms = thread_ns
        .get(thread_ns.len() / 2)
        .map_or(f64::NAN, |&n| n as f64 / 1e6);
    let cpu_ms = cpu0
        .zip(cpu_seconds())
        .map(|(a, b)| (b - a) * 1000.0 / times.len() as f64);
    let total: Duration = times.iter().sum();
    let n = times.len() as f64;
    let mean_ms = total.as_secs_f64() * 1000.0 / n;
    times.sort();
    let median_ms = times[times.len() / 2].as_secs_f64() * 1000.0;
    let min_ms = times[0].as_secs_f64() * 1000.0;
    let p99_ms = times[(times.len() * 99 / 100).min(times.len() - 1)].as_secs_f64() * 1000.0;

    // Compile + canonical encoding + hash (what the master caches and sends).
    let t = Instant::now();
    let mut k = 0;
    while t.elapsed() < Duration::from_secs(1) || k < 5 {
        let c = tree.compile("bench1.example.com", &facts, &opts).unwrap();
        assert_eq!(c.hash(), hash);
        k += 1;
    }
    let enc_ms = t.elapsed().as_secs_f64() * 1000.0 / k as f64;

    // Two threads sharing one tree (the master's case), 1 s.
    let per_thread: Vec<usize> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let tree = tree.clone();
                let facts = facts.clone();
                s.spawn(move || {
                    let t = Instant::now();
                    let mut c = 0;
                    while t.elapsed() < Duration::from_secs(1) {
                        std::hint::black_box(
                            tree.compile("bench1.example.com", &facts, &CompileOptions::default())
                                .unwrap(),
                        );
                        c += 1;
                    }
                    c
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let par: usize = per_thread.iter().sum();

    println!("== {label}: {resources} resources ({conf_check})");
    println!(
        "   load tree:               {:8.2} ms (once per code change)",
        load.as_secs_f64() * 1000.0
    );
    println!(
        "   compile (wall):          {mean_ms:8.3} ms/catalog mean, {median_ms:.3} median, {min_ms:.3} min, {p99_ms:.3} p99 ({} runs)",
        times.len()
    );
    if let Some(c) = cpu_ms {
        println!(
            "   compile (CPU time):      {c:8.3} ms/catalog = {:.0} catalogs per CPU-second",
            1000.0 / c
        );
    }
    println!(
        "   per resource:            {:8.3} us thread CPU (median), {:.3} us fastest wall",
        thread_cpu_ms * 1000.0 / resources as f64,
        min_ms * 1000.0 / resources as f64
    );
    println!(
        "   catalogs per second:     {:8.0} (1 thread)",
        1000.0 / mean_ms
    );
    println!("   compile+encode+hash:     {enc_ms:8.3} ms/catalog");
    println!("   catalogs per second:     {par:8} (2 threads, shared tree)");
    if let Some(p) = peer {
        println!(
            "   puppet 7 (same run):     {:8.3} us CPU per resource warm (median of {}), {:.3} us first compile with parse; Troupe {:.0}x faster warm",
            p.warm_us(),
            p.warm_runs,
            p.first_us(),
            p.warm_us() / (thread_cpu_ms * 1000.0 / resources as f64)
        );
    } else if compare {
        println!(
            "   vs puppet apply 290 ms:  {:8.0}x faster; vs puppetserver 610 ms: {:.0}x (same 1,102-resource catalog)",
            290.0 / mean_ms,
            610.0 / mean_ms
        );
    }
    Figures {
        resources,
        cpu_ms: thread_cpu_ms,
        min_ms,
        peer,
    }
}

/// One compile and the drop of its catalog, as a function of its own so
/// `valgrind --tool=callgrind --toggle-collect='*compile_and_drop*'`
/// counts exactly that (not the tree's load or the generator).
#[inline(never)]
fn compile_and_drop(tree: &ModuleTree, facts: &serde_json::Value) -> usize {
    let c = tree
        .compile("bench1.example.com", facts, &CompileOptions::default())
        .unwrap();
    c.resources.len()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too
    // with no args, so keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let w1 = from_generator(1000).unwrap_or_else(|| synthetic(1000));
    if quick {
        let dir = tempfile::tempdir().unwrap();
        write_tree(&w1, dir.path());
        let tree = ModuleTree::load(dir.path()).unwrap();
        let c = tree
            .compile("bench1.example.com", &facts(), &CompileOptions::default())
            .unwrap();
        assert_eq!(c.resources.len(), 1102);
        println!("bench smoke test: ok (run `cargo bench -p troupe-compiler` for figures)");
        return;
    }
    // TROUPE_BENCH_SIZES: the peers' file counts N to compile (default
    // "1000 9090": 1,102 and 10,001 resources; add 45454 for ~50k).
    let sizes: Vec<usize> = std::env::var("TROUPE_BENCH_SIZES")
        .unwrap_or_else(|_| "1000 9090".into())
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    // TROUPE_BENCH_ONCE=K: compile each size K times and stop, for
    // instruction counts (`valgrind --tool=callgrind`), which show an
    // algorithm's growth where timings on a shared machine cannot.
    if let Ok(k) = std::env::var("TROUPE_BENCH_ONCE") {
        let k: usize = k.parse().unwrap_or(1);
        for n in sizes {
            let w = from_generator(n).unwrap_or_else(|| synthetic(n));
            let dir = tempfile::tempdir().unwrap();
            write_tree(&w, dir.path());
            let tree = ModuleTree::load(dir.path()).unwrap();
            let facts = facts();
            for _ in 0..k {
                let r = compile_and_drop(&tree, &facts);
                println!("N={n}: {r} resources");
            }
        }
        return;
    }
    // TROUPE_BENCH_PEER: Puppet's compile of the same sizes, measured in
    // the same run (bench/peers/compile_peer.sh writes it).
    let peers = match std::env::var("TROUPE_BENCH_PEER") {
        Ok(path) => read_peer(&path).unwrap_or_else(|e| panic!("TROUPE_BENCH_PEER: {e}")),
        Err(_) => Vec::new(),
    };
    let peer_of = |n: usize| peers.iter().find(|(m, _)| *m == n).map(|(_, p)| *p);
    let mut all = Vec::new();
    for n in sizes {
        if n == 1000 {
            all.push(run("peers' workload N=1000", &w1, true, peer_of(n)));
        } else {
            let w = from_generator(n).unwrap_or_else(|| synthetic(n));
            all.push(run(&format!("N={n}"), &w, false, peer_of(n)));
        }
    }
    let Some(base) = all.first() else {
        return;
    };
    // Linear means a flat cost per resource across sizes.
    println!("== cost per resource by catalog size (thread CPU median; fastest wall)");
    for f in &all {
        let us = f.cpu_ms * 1000.0 / f.resources as f64;
        let base_us = base.cpu_ms * 1000.0 / base.resources as f64;
        print!(
            "   {:>7} resources: {us:7.3} us CPU ({:.2}x the first size's), {:7.3} us wall",
            f.resources,
            us / base_us,
            f.min_ms * 1000.0 / f.resources as f64
        );
        match (f.peer, base.peer) {
            (Some(p), Some(b)) => println!(
                "; puppet {:.1} us CPU warm ({:.2}x), {:.1} us first",
                p.warm_us(),
                p.warm_us() / b.warm_us(),
                p.first_us()
            ),
            (Some(p), None) => println!(
                "; puppet {:.1} us CPU warm, {:.1} us first",
                p.warm_us(),
                p.first_us()
            ),
            _ => println!(),
        }
    }
}
