//! `troupe-agent resource TYPE [NAME]` (like `puppet resource`): prints the
//! current state of a file, package, service, user, group or cron entry of
//! this host (or of `--root`) as the module language would declare it, or
//! as JSON (`--json`: a list of catalog resources' attributes). It reads
//! through the providers' own read side and changes nothing.

use crate::providers::{self, Accounts, Ctx};
use crate::source::ContentSource;
use anyhow::Context;
use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use troupe_catalog::{ContentRef, Ensure, Kind, Membership, PackageEnsure, ServiceState};

/// The resource types that can be inspected.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    File,
    Package,
    Service,
    User,
    Group,
    Cron,
}

/// Options of `troupe-agent resource`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = "\
Examples:
  troupe-agent resource user                 every user, as [user.\"NAME\"] tables
  troupe-agent resource file /etc/motd       a file's mode, owner, group and content hash
  troupe-agent resource package nginx --json
  troupe-agent resource cron --root /srv/img entries Troupe manages in the image's crontabs

A resource that does not exist prints ensure = \"absent\". Files: the
content is shown as its SHA-256 and size, never the bytes. Cron: only the
entries Troupe manages (marked `# troupe: NAME`) have names.")]
pub struct Args {
    /// What to look at.
    #[arg(value_enum)]
    pub kind: Type,
    /// Its title: a path for file, a name otherwise. Without it: every
    /// package, service, user, group or Troupe cron entry (a file needs one).
    pub name: Option<String>,
    /// Inspect this directory instead of `/` (as `run --root`).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Print a JSON array of the resources' attributes (as in a catalog).
    #[arg(long)]
    pub json: bool,
}

struct NoContents;
impl ContentSource for NoContents {
    fn get(&self, _: &str) -> anyhow::Result<std::borrow::Cow<'_, [u8]>> {
        anyhow::bail!("no contents when inspecting")
    }
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let kinds = inspect(&args)?;
    let mut out = String::new();
    if args.json {
        out = serde_json::to_string_pretty(&kinds)?;
        out.push('\n');
    } else {
        for (i, k) in kinds.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&to_module(k));
        }
    }
    use std::io::Write;
    let mut so = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = so.write_all(out.as_bytes());
    Ok(0)
}

/// The current state of what `args` names.
pub fn inspect(args: &Args) -> anyhow::Result<Vec<Kind>> {
    let root = &args.root;
    anyhow::ensure!(
        root.is_absolute() && root.is_dir(),
        "--root {} is not an existing absolute directory",
        root.display()
    );
    let family = os_family(root);
    let contents = NoContents;
    let ctx = Ctx::new(root, true, &family, &contents, None);
    let name = args.name.as_deref();
    match args.kind {
        Type::File => {
            let path = name.context(
                "give the file's absolute path, e.g. `troupe-agent resource file /etc/motd`",
            )?;
            Ok(vec![file(&ctx, path)?])
        }
        Type::Package => providers::package::inspect(&ctx, name),
        Type::Service => providers::service::inspect(&ctx, name),
        Type::User | Type::Group => {
            let acc = Accounts::load(root)?;
            Ok(if args.kind == Type::User {
                users(&acc, name)
            } else {
                groups(&acc, name)
            })
        }
        Type::Cron => cron(&ctx, &family, name),
    }
}

/// The `os.family` of the root (`/`: this host's).
fn os_family(root: &std::path::Path) -> String {
    let text = std::fs::read_to_string(root.join("etc/os-release"))
        .or_else(|_| std::fs::read_to_string(root.join("usr/lib/os-release")))
        .unwrap_or_default();
    crate::facts::os_from_release(&text)["family"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn owner_name(acc: &Accounts, uid: u32) -> String {
    acc.users
        .values()
        .find(|u| u.uid == uid)
        .map(|u| u.name.clone())
        .unwrap_or_else(|| uid.to_string())
}

fn group_name(acc: &Accounts, gid: u32) -> String {
    acc.groups
        .values()
        .find(|g| g.gid == gid)
        .map(|g| g.name.clone())
        .unwrap_or_else(|| gid.to_string())
}

fn file(ctx: &Ctx, path: &str) -> anyhow::Result<Kind> {
    anyhow::ensure!(
        path.starts_with('/'),
        "{path:?}: give an absolute path (under --root it is taken inside the root)"
    );
    let p = ctx.host_path(path)?;
    let meta = match std::fs::symlink_metadata(&p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Kind::File {
                path: path.to_owned(),
                ensure: Ensure::Absent,
                content: None,
                mode: None,
                owner: None,
                group: None,
                validate: None,
            });
        }
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", p.display())),
    };
    let acc = Accounts::load(&ctx.root)?;
    let (owner, group) = (
        Some(owner_name(&acc, meta.uid())),
        Some(group_name(&acc, meta.gid())),
    );
    let mode = Some(meta.permissions().mode() & 0o7777);
    let ft = meta.file_type();
    Ok(if ft.is_symlink() {
        Kind::Symlink {
            path: path.to_owned(),
            ensure: Ensure::Present,
            target: std::fs::read_link(&p)?.to_string_lossy().into_owned(),
        }
    } else if ft.is_dir() {
        Kind::Directory {
            path: path.to_owned(),
            ensure: Ensure::Present,
            mode,
            owner,
            group,
            purge: false,
        }
    } else if ft.is_file() {
        let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        Kind::File {
            path: path.to_owned(),
            ensure: Ensure::Present,
            content: Some(ContentRef {
                sha256: troupe_catalog::Sha256Hex::of(&bytes),
                size: bytes.len() as u64,
            }),
            mode,
            owner,
            group,
            validate: None,
        }
    } else {
        anyhow::bail!(
            "{} is neither a file, a directory nor a symbolic link (a device, socket or fifo)",
            p.display()
        )
    })
}

fn users(acc: &Accounts, name: Option<&str>) -> Vec<Kind> {
    let mut list: Vec<_> = acc
        .users
        .values()
        .filter(|u| name.is_none_or(|n| u.name == n))
        .collect();
    list.sort_by_key(|u| (u.uid, u.name.clone()));
    if list.is_empty()
        && let Some(n) = name
    {
        return vec![Kind::User {
            name: n.to_owned(),
            ensure: Ensure::Absent,
            uid: None,
            group: None,
            groups: vec![],
            membership: Membership::Minimum,
            home: None,
            shell: None,
            comment: None,
            system: false,
            manage_home: false,
        }];
    }
    list.into_iter()
        .map(|u| Kind::User {
            name: u.name.clone(),
            ensure: Ensure::Present,
            uid: Some(u.uid),
            group: Some(group_name(acc, u.gid)),
            groups: acc.member_of(&u.name).into_iter().collect(),
            membership: Membership::Minimum,
            home: Some(u.home.clone()),
            shell: Some(u.shell.clone()),
            comment: (!u.gecos.is_empty()).then(|| u.gecos.clone()),
            system: false,
            manage_home: false,
        })
        .collect()
}

fn groups(acc: &Accounts, name: Option<&str>) -> Vec<Kind> {
    let mut list: Vec<_> = acc
        .groups
        .values()
        .filter(|g| name.is_none_or(|n| g.name == n))
        .collect();
    list.sort_by_key(|g| (g.gid, g.name.clone()));
    if list.is_empty()
        && let Some(n) = name
    {
        return vec![Kind::Group {
            name: n.to_owned(),
            ensure: Ensure::Absent,
            gid: None,
            system: false,
        }];
    }
    list.into_iter()
        .map(|g| Kind::Group {
            name: g.name.clone(),
            ensure: Ensure::Present,
            gid: Some(g.gid),
            system: false,
        })
        .collect()
}

/// Cron entries Troupe manages (`# troupe: NAME` blocks) in every user's
/// crontab of the root.
fn cron(ctx: &Ctx, family: &str, name: Option<&str>) -> anyhow::Result<Vec<Kind>> {
    let spool = if family == "RedHat" {
        "/var/spool/cron"
    } else {
        "/var/spool/cron/crontabs"
    };
    let dir = ctx.host_path(spool)?;
    let mut users: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    users.sort();
    let mut out = Vec::new();
    for user in users {
        let p = dir.join(&user);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        out.extend(
            parse_crontab(&user, &text)
                .into_iter()
                .filter(|k| name.is_none_or(|n| k.title() == n)),
        );
    }
    if out.is_empty()
        && let Some(n) = name
    {
        out.push(Kind::Cron {
            name: n.to_owned(),
            ensure: Ensure::Absent,
            command: String::new(),
            user: "root".into(),
            minute: "*".into(),
            hour: "*".into(),
            monthday: "*".into(),
            month: "*".into(),
            weekday: "*".into(),
            environment: Default::default(),
        });
    }
    Ok(out)
}

/// The `# troupe: NAME` blocks of one crontab, as the cron provider writes
/// them (environment lines, then the schedule line).
pub fn parse_crontab(user: &str, text: &str) -> Vec<Kind> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim_end().strip_prefix("# troupe: ") else {
            continue;
        };
        let mut environment = std::collections::BTreeMap::new();
        for l in lines.by_ref() {
            let t = l.trim_start();
            if let Some((k, v)) = t.split_once('=')
                && !k.is_empty()
                && !k.contains(char::is_whitespace)
            {
                environment.insert(k.to_owned(), v.to_owned());
                continue;
            }
            let f: Vec<&str> = t.splitn(6, char::is_whitespace).collect();
            if f.len() == 6 {
                out.push(Kind::Cron {
                    name: name.to_owned(),
                    ensure: Ensure::Present,
                    command: f[5].trim_start().to_owned(),
                    user: user.to_owned(),
                    minute: f[0].into(),
                    hour: f[1].into(),
                    monthday: f[2].into(),
                    month: f[3].into(),
                    weekday: f[4].into(),
                    environment,
                });
            }
            break;
        }
    }
    out
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `[TYPE."TITLE"]` and its attributes, as a profile would declare it.
pub fn to_module(k: &Kind) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut note = None;
    let mut kv = |key: &str, v: String| lines.push((key.to_owned(), v));
    let ensure = |e: &Ensure| {
        q(if *e == Ensure::Absent {
            "absent"
        } else {
            "present"
        })
    };
    match k {
        Kind::File {
            ensure: e,
            content,
            mode,
            owner,
            group,
            ..
        } => {
            kv("ensure", ensure(e));
            meta(&mut kv, mode, owner, group);
            if let Some(c) = content {
                note = Some(format!(
                    "# content: sha256 {}, {} bytes (not shown)\n",
                    c.sha256, c.size
                ));
            }
        }
        Kind::Directory {
            ensure: e,
            mode,
            owner,
            group,
            ..
        } => {
            kv("ensure", ensure(e));
            meta(&mut kv, mode, owner, group);
        }
        Kind::Symlink {
            ensure: e, target, ..
        } => {
            kv("ensure", ensure(e));
            kv("target", q(target));
        }
        Kind::Package { ensure, .. } => kv(
            "ensure",
            q(match ensure {
                PackageEnsure::Present => "present",
                PackageEnsure::Absent => "absent",
                PackageEnsure::Latest => "latest",
                PackageEnsure::Version(v) => v,
            }),
        ),
        Kind::Service { ensure, enable, .. } => {
            if let Some(e) = ensure {
                kv(
                    "ensure",
                    q(if *e == ServiceState::Running {
                        "running"
                    } else {
                        "stopped"
                    }),
                );
            }
            if let Some(b) = enable {
                kv("enable", b.to_string());
            }
        }
        Kind::User {
            ensure: e,
            uid,
            group,
            groups,
            home,
            shell,
            comment,
            ..
        } => {
            kv("ensure", ensure(e));
            if let Some(u) = uid {
                kv("uid", u.to_string());
            }
            if let Some(g) = group {
                kv("group", q(g));
            }
            if *e == Ensure::Present {
                let list: Vec<String> = groups.iter().map(|g| q(g)).collect();
                kv("groups", format!("[{}]", list.join(", ")));
            }
            for (key, v) in [("home", home), ("shell", shell), ("comment", comment)] {
                if let Some(v) = v {
                    kv(key, q(v));
                }
            }
        }
        Kind::Group { ensure: e, gid, .. } => {
            kv("ensure", ensure(e));
            if let Some(g) = gid {
                kv("gid", g.to_string());
            }
        }
        Kind::Cron {
            ensure: e,
            command,
            user,
            minute,
            hour,
            monthday,
            month,
            weekday,
            environment,
            ..
        } => {
            kv("ensure", ensure(e));
            if *e == Ensure::Present {
                kv("command", q(command));
                kv("user", q(user));
                for (key, v) in [
                    ("minute", minute),
                    ("hour", hour),
                    ("monthday", monthday),
                    ("month", month),
                    ("weekday", weekday),
                ] {
                    if v != "*" {
                        kv(key, q(v));
                    }
                }
                if !environment.is_empty() {
                    let list: Vec<String> = environment
                        .iter()
                        .map(|(k, v)| format!("{} = {}", q(k), q(v)))
                        .collect();
                    kv("environment", format!("{{ {} }}", list.join(", ")));
                }
            }
        }
        Kind::Exec { .. } => {}
    }
    let mut s = format!("[{}.{}]\n", k.type_name(), q(k.title()));
    for (key, v) in lines {
        let _ = writeln!(s, "{key} = {v}");
    }
    if let Some(n) = note {
        s.push_str(&n);
    }
    s
}

fn meta(
    kv: &mut impl FnMut(&str, String),
    mode: &Option<u32>,
    owner: &Option<String>,
    group: &Option<String>,
) {
    if let Some(m) = mode {
        kv("mode", q(&providers::octal(*m)));
    }
    if let Some(o) = owner {
        kv("owner", q(o));
    }
    if let Some(g) = group {
        kv("group", q(g));
    }
}
