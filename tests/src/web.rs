//! The dashboard's test bed (issue 17): a master with `--web-listen`, a
//! module tree holding an encrypted secret, real agents converging into
//! sandbox roots (one with a failing resource), an HTTP client (`curl`)
//! and a headless Chromium driven by its command line or by the DevTools
//! protocol over a pipe.

use crate::{Master, MasterOptions, Out, run, troupe_bin};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The plaintext of the encrypted secret in the module tree: it reaches
/// web hosts as `/etc/app.token` (a sensitive file) and must appear on no
/// page and in no API answer.
pub const SECRET: &str = "s3cr3t-dashboard-token-7f1c";

/// The resource that fails on `db*` hosts (its parent directory is not
/// managed and does not exist).
pub const FAILING: &str = "file[/opt/missing/app.conf]";

fn write(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, s).expect("write");
}

/// Writes the module tree: `web*` get a motd, a page and the secret
/// token; `db*` a motd and a file that fails.
fn write_tree(dir: &Path) {
    let env = dir.join("environments/production");
    write(
        &dir.join("site.toml"),
        "default_environment = \"production\"\n\n[[node]]\nmatch = \"web*\"\nrole = \"web\"\n\n\
         [[node]]\nmatch = \"db*\"\nrole = \"db\"\n\n[[node]]\nmatch = \"*\"\nrole = \"base\"\n",
    );
    write(
        &env.join("hierarchy.toml"),
        "[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
    );
    write(
        &env.join("data/common.toml"),
        "[motd]\nbanner = \"Welcome\"\n",
    );
    write(&env.join("roles/base.toml"), "include = [\"motd\"]\n");
    write(
        &env.join("roles/web.toml"),
        "include = [\"motd\", \"www\", \"token\"]\n",
    );
    write(
        &env.join("roles/db.toml"),
        "include = [\"motd\", \"broken\"]\n",
    );
    write(
        &env.join("profiles/motd.toml"),
        "[params]\nbanner = \"unset\"\n\n[file.\"/etc/motd\"]\ncontent = \"{{ params.banner }} ({{ node.certname }})\\n\"\nmode = \"0644\"\n",
    );
    write(
        &env.join("profiles/www.toml"),
        "[directory.\"/srv/www\"]\nmode = \"0755\"\n\n[file.\"/srv/www/index.html\"]\ncontent = \"<h1>{{ node.certname }}</h1>\\n\"\nmode = \"0644\"\n",
    );
    write(
        &env.join("profiles/token.toml"),
        "[params]\nvalue = \"unset\"\n\n[file.\"/etc/app.token\"]\ncontent = \"token={{ params.value }}\\n\"\nmode = \"0600\"\n",
    );
    write(
        &env.join("profiles/broken.toml"),
        "[file.\"/opt/missing/app.conf\"]\ncontent = \"x\\n\"\nmode = \"0644\"\n",
    );
}

/// A master serving the dashboard, with agents bootstrapped.
pub struct WebFleet {
    pub m: Master,
    pub opts: MasterOptions,
    pub modules: PathBuf,
    _tree: tempfile::TempDir,
}

impl WebFleet {
    /// Starts a master with `--web-listen web_listen` (plus `extra`), whose
    /// production environment has a secret key and an encrypted token, and
    /// bootstraps `hosts`.
    pub fn start(web_listen: &str, extra: &[&str], hosts: &[&str]) -> WebFleet {
        let tree = tempfile::tempdir().expect("tempdir");
        let modules = tree.path().join("modules");
        write_tree(&modules);
        let mut args: Vec<String> = vec!["--code-poll".into(), "200ms".into()];
        args.extend(["--web-listen".to_string(), web_listen.to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let opts = MasterOptions {
            modules: Some(modules.clone()),
            extra_args: args,
        };
        let mut m = Master::start_with(opts.clone());
        // The secret key must be in DATA/secrets when the master starts.
        m.stop();
        let data = m.data.to_str().expect("utf-8").to_owned();
        let mods = modules.to_str().expect("utf-8").to_owned();
        run(Command::new(troupe_bin()).args([
            "secret",
            "keygen",
            "--env",
            "production",
            "--data",
            &data,
            "--modules",
            &mods,
            "--write-pub",
        ]))
        .assert_success();
        let mut enc = Command::new(troupe_bin())
            .args([
                "secret",
                "encrypt",
                "--env",
                "production",
                "--modules",
                &mods,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("troupe secret encrypt");
        enc.stdin
            .take()
            .expect("stdin")
            .write_all(SECRET.as_bytes())
            .expect("write secret");
        let out = Out::from(enc.wait_with_output().expect("encrypt"));
        out.assert_success();
        let table = out.stdout.trim();
        assert!(
            !table.contains(SECRET),
            "encrypt printed the plaintext: {table}"
        );
        let value = match table.split_once('=') {
            Some((k, v)) if !k.contains('{') => v.trim(),
            _ => table,
        };
        write(
            &modules.join("environments/production/data/common.toml"),
            &format!("[motd]\nbanner = \"Welcome\"\n\n[token]\nvalue = {value}\n"),
        );
        m.resume(&opts);
        for h in hosts {
            let psk = m.psk(h);
            m.bootstrap(h, Some(&psk)).assert_success();
        }
        WebFleet {
            m,
            opts,
            modules,
            _tree: tree,
        }
    }

    /// The dashboard's bound address (`DATA/web.addr`).
    pub fn web_addr(&self) -> String {
        let p = self.m.data.join("web.addr");
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", p.display(), self.m.log()))
            .trim()
            .to_owned()
    }

    /// `http://ADDR` of a loopback dashboard.
    pub fn url(&self) -> String {
        format!("http://{}", self.web_addr())
    }

    /// The host's sandbox root (with /etc and /srv, as a real root has).
    pub fn root(&self, host: &str) -> PathBuf {
        let r = self.m.root.path().join("roots").join(host);
        for d in ["etc", "srv"] {
            std::fs::create_dir_all(r.join(d)).expect("root");
        }
        r
    }

    /// `troupe-agent run --once` for `host` into its sandbox root.
    pub fn converge(&self, host: &str) -> Out {
        let root = self.root(host);
        self.m.agent_cmd(
            host,
            "run",
            &["--once", "--root", root.to_str().expect("utf-8")],
        )
    }
}

/// Appends records to release `id`'s log in the master's store
/// (`DATA/deploys/ID.jsonl`, one `{"seq","by","received","record"}` a
/// line), as the master does when a bastion sends them.
pub fn append_deploy_records(data: &Path, id: &str, first_seq: u64, records: &[serde_json::Value]) {
    let dir = data.join("deploys");
    std::fs::create_dir_all(&dir).expect("deploys dir");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{id}.jsonl")))
        .expect("release log");
    for (i, r) in records.iter().enumerate() {
        let line = serde_json::json!({
            "seq": first_seq + i as u64,
            "by": "bastion1",
            "received": "2026-12-06T22:00:00.000Z",
            "record": r,
        });
        writeln!(f, "{line}").expect("append");
    }
}

/// An HTTP answer.
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `curl` with `args` (method, certificates, ...) against `url`.
pub fn curl(url: &str, args: &[&str]) -> Result<Answer, String> {
    let out = run(Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code} %{content_type}",
        ])
        .args(args)
        .arg(url));
    if !out.success() {
        return Err(format!("curl {url} failed: {}", out.stderr));
    }
    let (body, tail) = out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout));
    let (code, ctype) = tail.split_once(' ').unwrap_or((tail, ""));
    Ok(Answer {
        status: code.parse().unwrap_or(0),
        body: body.to_owned(),
        content_type: ctype.to_owned(),
    })
}

/// GET `url`, which must answer.
pub fn get(url: &str) -> Answer {
    curl(url, &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// Where the dashboard tests keep their screenshots: `target/dashboard-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    // bin_dir() is target/debug (or target/release).
    let d = crate::bin_dir()
        .parent()
        .map(|p| p.join("dashboard-screenshots"))
        .expect("target dir");
    std::fs::create_dir_all(&d).expect("screenshot dir");
    d
}

/// The Chromium binary (Debian's `chromium` package).
pub fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("chromium is not installed: apt-get install -y chromium (.ci/run does it)");
}

fn chromium_cmd(profile: &Path) -> Command {
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--metrics-recording-only",
        "--window-size=1280,900",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// `chromium --headless --dump-dom URL`: the DOM after the page loaded and
/// its scripts ran.
pub fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile");
    let out = run(chromium_cmd(profile.path()).arg("--dump-dom").arg(url));
    assert!(
        out.success() && out.stdout.contains("</html>"),
        "chromium --dump-dom {url} failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// `chromium --headless --screenshot=FILE URL`; returns FILE.
pub fn screenshot(url: &str, name: &str) -> PathBuf {
    let profile = tempfile::tempdir().expect("profile");
    let file = screenshot_dir().join(name);
    let _ = std::fs::remove_file(&file);
    let out = run(chromium_cmd(profile.path())
        .arg(format!("--screenshot={}", file.display()))
        .arg(url));
    let png = std::fs::read(&file).unwrap_or_default();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5000,
        "chromium --screenshot {url} wrote no image ({} bytes):\n{}",
        png.len(),
        out.stderr
    );
    file
}

/// A headless Chromium driven over the DevTools protocol on a pipe
/// (`--remote-debugging-pipe`: commands on fd 3, answers on fd 4, each
/// message ending in a NUL byte), attached to its one page.
pub struct Browser {
    child: Child,
    tx: ChildStdin,
    rx: BufReader<ChildStdout>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium on `url` and attaches to the page.
    pub fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("profile");
        let mut cmd = chromium_cmd(profile.path());
        cmd.arg("--remote-debugging-pipe").arg(url);
        // fd 3 = our pipe to it, fd 4 = its pipe to us (a shell does the
        // descriptor plumbing, so no unsafe pre_exec here).
        let argv: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| {
                let s = a.to_string_lossy();
                format!("'{}'", s.replace('\'', "'\\''"))
            })
            .collect();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec {} 3<&0 4>&1 0</dev/null 1>/dev/null",
                argv.join(" ")
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning chromium");
        let tx = child.stdin.take().expect("stdin");
        let rx = BufReader::new(child.stdout.take().expect("stdout"));
        let mut b = Browser {
            child,
            tx,
            rx,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let start = Instant::now();
        let target = loop {
            let t = b.call(None, "Target.getTargets", serde_json::json!({}));
            let page = t["targetInfos"]
                .as_array()
                .and_then(|v| v.iter().find(|t| t["type"] == "page"))
                .map(|t| t["targetId"].as_str().unwrap_or_default().to_owned());
            if let Some(p) = page {
                break p;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no page: {t}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let a = b.call(
            None,
            "Target.attachToTarget",
            serde_json::json!({"targetId": target, "flatten": true}),
        );
        b.session = a["sessionId"].as_str().expect("sessionId").to_owned();
        b
    }

    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: serde_json::Value,
    ) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        self.tx.write_all(&bytes).expect("writing to chromium");
        self.tx.flush().expect("flush");
        loop {
            let mut buf = Vec::new();
            let n = self
                .rx
                .read_until(0, &mut buf)
                .expect("reading from chromium");
            assert!(n > 0, "chromium closed its DevTools pipe");
            buf.pop();
            let v: serde_json::Value = serde_json::from_slice(&buf).expect("DevTools JSON");
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page; its JSON value.
    pub fn eval(&mut self, expr: &str) -> serde_json::Value {
        let s = self.session.clone();
        let r = self.call(
            Some(&s),
            "Runtime.evaluate",
            serde_json::json!({"expression": expr, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    /// Loads `url` in the page and waits until it has loaded and its live
    /// part is connected; returns the DOM (`outerHTML`).
    pub fn goto(&mut self, url: &str) -> String {
        let s = self.session.clone();
        self.call(Some(&s), "Page.navigate", serde_json::json!({"url": url}));
        let want = serde_json::to_string(url).expect("json");
        self.wait_for(
            &format!(
                "location.href === {want} && document.readyState === 'complete' && \
                 document.body.getAttribute('data-live') === 'connected'"
            ),
            Duration::from_secs(20),
        );
        self.eval("document.documentElement.outerHTML")
            .as_str()
            .expect("outerHTML")
            .to_owned()
    }

    /// A PNG of the page, kept in [`screenshot_dir`] as `name`.
    pub fn screenshot(&mut self, name: &str) -> PathBuf {
        use base64::Engine;
        let s = self.session.clone();
        let r = self.call(
            Some(&s),
            "Page.captureScreenshot",
            serde_json::json!({"format": "png"}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("data"))
            .expect("base64");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 5000, "no image");
        let file = screenshot_dir().join(name);
        std::fs::write(&file, png).expect("screenshot");
        file
    }

    /// Waits until `expr` evaluates to true.
    pub fn wait_for(&mut self, expr: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.eval(expr) == serde_json::Value::Bool(true) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for `{expr}` in the page; body:\n{}",
                self.eval("document.body ? document.body.innerText : ''")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
