//! The compiler's command-line front, wired into `troupe`:
//! `troupe catalog compile|diff|classify`, `troupe lookup`,
//! `troupe secret keygen|encrypt|pubkey`.

use crate::data::Outcome;
use crate::{CompileOptions, FleetSnapshot, Merge, ModuleTree, SecretKeys};
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use troupe_catalog::{Blob, Catalog, Kind};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_every_value_of_sensitive_resources() {
        let mut c = Catalog::new("n", "e", "v");
        let body = c.add_content(b"password=hunter2\n");
        let kind = Kind::File {
            path: "/etc/x".into(),
            ensure: Default::default(),
            content: Some(body),
            mode: None,
            owner: None,
            group: None,
            validate: None,
        };
        c.resources.push(troupe_catalog::Resource {
            id: kind.id(),
            kind,
            requires: Default::default(),
            notify: vec![],
            sensitive: true,
            source: None,
            tags: Default::default(),
            noop: false,
        });
        let mut env = BTreeMap::new();
        env.insert("PGPASSWORD".to_owned(), "hunter2".to_owned());
        let kind = Kind::Exec {
            name: "x".into(),
            command: vec!["/bin/x".into(), "hunter2".into()],
            cwd: None,
            environment: env,
            user: None,
            timeout: None,
            creates: None,
            onlyif: None,
            unless: None,
            refreshonly: false,
            returns: vec![],
        };
        c.resources.push(troupe_catalog::Resource {
            id: kind.id(),
            kind,
            requires: Default::default(),
            notify: vec![],
            sensitive: true,
            source: None,
            tags: Default::default(),
            noop: false,
        });
        let shown = redact(&c).to_pretty_json();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("/bin/x"));
        assert!(c.to_pretty_json().contains("hunter2"));
    }
}

/// Where a module tree and the master's data live.
#[derive(clap::Args, Debug, Clone)]
pub struct TreeArgs {
    /// The module tree: a directory with `site.toml` and `environments/NAME/`.
    #[arg(long, env = "TROUPE_MODULES", default_value = "modules")]
    pub modules: PathBuf,
    /// The master's data directory; secret keys are read from `DATA/secrets/ENV.key`.
    #[arg(long, env = "TROUPE_DATA", default_value = "/var/lib/troupe")]
    pub data: PathBuf,
}

/// A node to compile for.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// The node's certname, e.g. `web4.example.com`.
    pub host: String,
    /// The node's facts: a JSON file (see the facts schema).
    #[arg(long)]
    pub facts: PathBuf,
    /// A trusted certificate extension as NAME=VALUE (repeatable), as the
    /// master would read it from the node's certificate.
    #[arg(long = "extension", value_name = "NAME=VALUE")]
    pub extensions: Vec<String>,
}

/// `troupe catalog ...`
#[derive(clap::Subcommand, Debug)]
pub enum CatalogCmd {
    /// Compile a host's catalog and print it (one line per resource, or the
    /// catalog document with --json). Secrets are redacted unless
    /// --show-secrets.
    Compile {
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        tree: TreeArgs,
        /// Compile in this environment instead of the classified one.
        #[arg(long)]
        env: Option<String>,
        /// Print the catalog document (JSON).
        #[arg(long)]
        json: bool,
        /// Print decrypted secrets (the exact catalog an agent receives).
        #[arg(long)]
        show_secrets: bool,
        /// Fleet data for templates' `fleet()`: a snapshot file
        /// `{"generation": N, "nodes": [{"name", "role", "environment",
        /// "facts": {...}}]}` (see modules/README.md). Without it fleet()
        /// returns an empty list (a note on stderr says so).
        #[arg(long, value_name = "FILE")]
        fleet: Option<PathBuf>,
    },
    /// Show what changes for a host between two module trees or two
    /// environments. Exit status 0: no change, 2: changes.
    ///
    /// Sensitive resources are compared on every attribute and shown as
    /// changed with the attribute names and content hashes, never the
    /// values. A secret whose environment key is not in DATA/secrets is
    /// compared by its ciphertext (a re-encrypted value shows as changed).
    Diff {
        #[command(flatten)]
        node: NodeArgs,
        /// The module tree before (default: --modules).
        #[arg(long)]
        from: Option<PathBuf>,
        /// The module tree after (default: --modules).
        #[arg(long)]
        to: Option<PathBuf>,
        /// Environment before (default: the classified one).
        #[arg(long)]
        from_env: Option<String>,
        /// Environment after (default: the classified one).
        #[arg(long)]
        to_env: Option<String>,
        /// Print one JSON document: {"host","changes":[{"id","action",
        /// "sensitive","source","attributes":[{"name","old","new"}],
        /// "content_diff"?}],"added","removed","changed",
        /// "secrets_by_ciphertext"}.
        #[arg(long)]
        json: bool,
        /// Fleet data for templates' `fleet()` (both sides), as for
        /// `catalog compile --fleet`.
        #[arg(long, value_name = "FILE")]
        fleet: Option<PathBuf>,
        #[command(flatten)]
        tree: TreeArgs,
    },
    /// Show how a host is classified: role, environment, number and zone.
    Classify {
        #[command(flatten)]
        node: NodeArgs,
        #[command(flatten)]
        tree: TreeArgs,
    },
    /// Load and check a module tree; print its code version.
    Check {
        #[command(flatten)]
        tree: TreeArgs,
    },
}

/// `troupe lookup KEY --node HOST --facts FILE [--explain]`
#[derive(clap::Args, Debug)]
pub struct LookupArgs {
    /// The dotted key to look up, e.g. `nginx.port`.
    pub key: String,
    /// The node's certname.
    #[arg(long)]
    pub node: String,
    /// The node's facts (JSON file).
    #[arg(long)]
    pub facts: PathBuf,
    /// Use this environment instead of the classified one.
    #[arg(long)]
    pub env: Option<String>,
    /// `first` (most specific level wins) or `deep` (merge tables across
    /// levels). Default: the merge the tree declares for the key (a key
    /// `PROFILE.PARAM` uses that parameter's `merge`, as a compile does),
    /// else `first`. The merge used is said on stderr (in the header with
    /// --explain, in the document with --json).
    #[arg(long, value_parser = ["first", "deep"])]
    pub merge: Option<String>,
    /// Show every level looked at and what it held.
    #[arg(long)]
    pub explain: bool,
    /// Print one JSON document: {"key","node","environment","role",
    /// "merge","merge_from","found","value","levels"?} (levels with
    /// --explain: [{"level","path","outcome","at"?,"value"?}]).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tree: TreeArgs,
}

/// `troupe secret ...`
#[derive(clap::Subcommand, Debug)]
pub enum SecretCmd {
    /// Create an environment's key pair: the private key goes to
    /// DATA/secrets/ENV.key (mode 0600, never overwritten); the public key is
    /// printed and, with --write-pub, written to
    /// MODULES/environments/ENV/secrets.pub.
    Keygen {
        #[arg(long)]
        env: String,
        #[command(flatten)]
        tree: TreeArgs,
        /// Also write the public key into the module tree.
        #[arg(long)]
        write_pub: bool,
    },
    /// Encrypt a value for an environment and print the TOML to paste into a
    /// data file. The value is read from standard input (or a prompt without
    /// echo on a terminal), never from the command line.
    Encrypt {
        #[arg(long)]
        env: String,
        /// The recipient (age1...) to encrypt to; default: the environment's
        /// `secrets.pub` in the module tree.
        #[arg(long)]
        recipient: Option<String>,
        /// Keep a trailing newline in the value read from stdin (it is
        /// stripped by default).
        #[arg(long)]
        keep_newline: bool,
        #[command(flatten)]
        tree: TreeArgs,
    },
    /// Print an environment's public key from the module tree.
    Pubkey {
        #[arg(long)]
        env: String,
        #[command(flatten)]
        tree: TreeArgs,
    },
}

fn load_tree(path: &Path) -> anyhow::Result<ModuleTree> {
    ModuleTree::load(path).map_err(|e| anyhow::anyhow!("{}", e.render()))
}

fn read_facts(path: &Path) -> anyhow::Result<serde_json::Value> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read facts {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    if !v.is_object() {
        bail!("{} must hold one JSON object of facts", path.display());
    }
    Ok(v)
}

fn extensions(list: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    list.iter()
        .map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--extension `{e}`: expected NAME=VALUE"))
        })
        .collect()
}

fn read_fleet(path: Option<&Path>) -> anyhow::Result<Option<Arc<FleetSnapshot>>> {
    path.map(|p| {
        FleetSnapshot::from_file(p)
            .map(Arc::new)
            .map_err(|e| anyhow::anyhow!("{}", e.render()))
    })
    .transpose()
}

fn compile_with(
    tree: &ModuleTree,
    node: &NodeArgs,
    facts: &serde_json::Value,
    env: Option<String>,
    secrets: SecretKeys,
    fleet: Option<Arc<FleetSnapshot>>,
) -> anyhow::Result<Catalog> {
    let given = fleet.is_some();
    let opts = CompileOptions {
        environment: env,
        extensions: extensions(&node.extensions)?,
        secrets,
        fleet,
    };
    let (cat, info) = tree
        .compile_with_info(&node.host, facts, &opts)
        .map_err(|e| anyhow::anyhow!("{}", e.render()))?;
    if info.used_fleet && !given {
        eprintln!(
            "note: this catalog asks for fleet data (fleet()) and none was given: it lists no other nodes (pass --fleet FILE)"
        );
    }
    Ok(cat)
}

/// Replaces the values of sensitive resources for display: file bodies,
/// command arguments, environments, and every free-text attribute.
pub fn redact(cat: &Catalog) -> Catalog {
    const R: &str = "<sensitive>";
    fn hide_map(m: &mut BTreeMap<String, String>) {
        for v in m.values_mut() {
            *v = R.into();
        }
    }
    fn hide_argv(a: &mut [String]) {
        for x in a.iter_mut().skip(1) {
            *x = R.into();
        }
    }
    let mut c = cat.clone();
    for r in c.resources.iter_mut().filter(|r| r.sensitive) {
        match &mut r.kind {
            Kind::File {
                content, validate, ..
            } => {
                if let Some(cr) = content {
                    c.contents.insert(cr.sha256.clone(), Blob::Utf8(R.into()));
                }
                if let Some(v) = validate {
                    hide_argv(v);
                }
            }
            Kind::Symlink { target, .. } => *target = R.into(),
            Kind::Exec {
                command,
                environment,
                onlyif,
                unless,
                creates,
                ..
            } => {
                hide_argv(command);
                hide_map(environment);
                for a in [onlyif, unless].into_iter().flatten() {
                    hide_argv(a);
                }
                if let Some(x) = creates {
                    *x = R.into();
                }
            }
            Kind::Cron {
                command,
                environment,
                ..
            } => {
                *command = R.into();
                hide_map(environment);
            }
            Kind::User { comment, home, .. } => {
                for x in [comment, home].into_iter().flatten() {
                    *x = R.into();
                }
            }
            Kind::Package {
                ensure: troupe_catalog::PackageEnsure::Version(v),
                ..
            } => *v = R.into(),
            _ => {}
        }
    }
    c
}

pub fn catalog(cmd: CatalogCmd) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    catalog_to(cmd, &mut out)
}

/// [`catalog`], writing to `out` (for tests).
pub fn catalog_to(cmd: CatalogCmd, out: &mut dyn Write) -> anyhow::Result<u8> {
    match cmd {
        CatalogCmd::Compile {
            node,
            tree,
            env,
            json,
            show_secrets,
            fleet,
        } => {
            let t = load_tree(&tree.modules)?;
            let facts = read_facts(&node.facts)?;
            let fleet = read_fleet(fleet.as_deref())?;
            let secrets = SecretKeys::load_dir(&tree.data).map_err(|e| anyhow::anyhow!("{e}"))?;
            let cat = compile_with(&t, &node, &facts, env, secrets, fleet)?;
            let shown = if show_secrets {
                cat.clone()
            } else {
                redact(&cat)
            };
            if json {
                writeln!(out, "{}", shown.to_pretty_json())?;
            } else {
                let mut text = crate::diff::human(&shown);
                // The header carries the real hash, not the redacted one's.
                if let Some(first) = text.lines().next() {
                    let fixed = first.replace(&shown.hash(), &cat.hash());
                    text = text.replacen(first, &fixed, 1);
                }
                write!(out, "{text}")?;
            }
            Ok(0)
        }
        CatalogCmd::Diff {
            node,
            from,
            to,
            from_env,
            to_env,
            json,
            fleet,
            tree,
        } => {
            let facts = read_facts(&node.facts)?;
            let fleet = read_fleet(fleet.as_deref())?;
            // A preview never needs an environment's private key: without
            // it, secrets are compared by ciphertext.
            let keys = SecretKeys::load_dir(&tree.data)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .with_ciphertext_preview();
            let a_path = from.unwrap_or_else(|| tree.modules.clone());
            let b_path = to.unwrap_or_else(|| tree.modules.clone());
            let a_tree = load_tree(&a_path)?;
            let b_tree = if b_path == a_path {
                None
            } else {
                Some(load_tree(&b_path)?)
            };
            let a = compile_with(
                &a_tree,
                &node,
                &facts,
                from_env,
                keys.clone(),
                fleet.clone(),
            )
            .context("compiling the old catalog")?;
            let b = compile_with(
                b_tree.as_ref().unwrap_or(&a_tree),
                &node,
                &facts,
                to_env,
                keys,
                fleet,
            )
            .context("compiling the new catalog")?;
            let by_ciphertext: std::collections::BTreeSet<&str> = [&a, &b]
                .into_iter()
                .filter(|c| {
                    String::from_utf8_lossy(&c.to_canonical_json())
                        .contains(crate::secrets::CIPHERTEXT_MARK)
                })
                .map(|c| c.environment.as_str())
                .collect();
            let (text, stats) = crate::diff::diff(&a, &b);
            if json {
                let doc = serde_json::json!({
                    "host": node.host,
                    "changes": crate::diff::changes(&a, &b),
                    "added": stats.added,
                    "removed": stats.removed,
                    "changed": stats.changed,
                    "secrets_by_ciphertext": by_ciphertext,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
                return Ok(if stats.is_empty() { 0 } else { 2 });
            }
            for env in &by_ciphertext {
                writeln!(
                    out,
                    "note: the key of environment `{env}` is not loaded; its secrets are compared by ciphertext"
                )?;
            }
            if stats.is_empty() {
                writeln!(out, "no changes for {}", node.host)?;
                return Ok(0);
            }
            write!(out, "{text}")?;
            writeln!(
                out,
                "{} added, {} removed, {} changed",
                stats.added, stats.removed, stats.changed
            )?;
            Ok(2)
        }
        CatalogCmd::Classify { node, tree } => {
            let t = load_tree(&tree.modules)?;
            let facts = read_facts(&node.facts)?;
            let c = t
                .classify(&node.host, &extensions(&node.extensions)?, &facts)
                .map_err(|e| anyhow::anyhow!("{}", e.render()))?;
            writeln!(out, "{}", serde_json::to_string_pretty(&c)?)?;
            Ok(0)
        }
        CatalogCmd::Check { tree } => {
            let t = load_tree(&tree.modules)?;
            writeln!(
                out,
                "ok: {} environments ({}), code version {}",
                t.environments().count(),
                t.environments().collect::<Vec<_>>().join(", "),
                t.code_version()
            )?;
            Ok(0)
        }
    }
}

pub fn lookup(args: LookupArgs) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    lookup_to(args, &mut out)
}

/// [`lookup`], writing to `out`. Secrets are never decrypted here.
pub fn lookup_to(args: LookupArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let t = load_tree(&args.tree.modules)?;
    let facts = read_facts(&args.facts)?;
    let mut class = t
        .classify(&args.node, &BTreeMap::new(), &facts)
        .map_err(|e| anyhow::anyhow!("{}", e.render()))?;
    if let Some(e) = args.env {
        if t.environment(&e).is_none() {
            bail!("environment `{e}` does not exist");
        }
        class.environment = e;
    }
    let view = t
        .data_view(&class, &facts, SecretKeys::new())
        .map_err(|e| anyhow::anyhow!("{}", e.render()))?;
    let env_tree = t
        .environment(&class.environment)
        .with_context(|| format!("environment `{}` does not exist", class.environment))?;
    let (merge, merge_from) = match (&args.merge, env_tree.declared_merge(&args.key)) {
        (Some(m), _) => (
            if m == "deep" {
                Merge::Deep
            } else {
                Merge::First
            },
            "--merge".to_owned(),
        ),
        (None, Some((m, profile, param))) => (
            m,
            format!("declared by parameter `{param}` of profile `{profile}`"),
        ),
        (None, None) => (Merge::First, "default".to_owned()),
    };
    let merge_name = match merge {
        Merge::Deep => "deep",
        Merge::First => "first",
    };
    let levels = args.explain.then(|| view.explain(&args.key));
    let value = view.lookup_redacted(&args.key, merge);
    if args.json {
        let levels = levels.map(|ls| {
            ls.iter()
                .map(|tr| {
                    let (path, skipped) = match &tr.path {
                        Ok(p) => (serde_json::json!(p), None),
                        Err(why) => (serde_json::Value::Null, Some(why.clone())),
                    };
                    let mut o = serde_json::json!({"level": tr.level, "path": path});
                    let outcome = match &tr.outcome {
                        Outcome::Skipped => "skipped",
                        Outcome::NoFile => "no-file",
                        Outcome::NotFound => "not-found",
                        Outcome::Found { at, value } => {
                            o["at"] = serde_json::json!(at);
                            o["value"] = serde_json::from_str(value)
                                .unwrap_or_else(|_| serde_json::json!(value));
                            "found"
                        }
                    };
                    o["outcome"] = serde_json::json!(outcome);
                    if let Some(w) = skipped {
                        o["why"] = serde_json::json!(w);
                    }
                    o
                })
                .collect::<Vec<_>>()
        });
        let mut doc = serde_json::json!({
            "key": args.key,
            "node": class.certname,
            "environment": class.environment,
            "role": class.role,
            "merge": merge_name,
            "merge_from": merge_from,
            "found": value.is_some(),
            "value": value,
        });
        if let Some(l) = levels {
            doc["levels"] = serde_json::json!(l);
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(if value.is_some() { 0 } else { 1 });
    }
    if let Some(levels) = &levels {
        writeln!(
            out,
            "looking up `{}` for {} (environment {}, role {}, merge {merge_name}: {merge_from})",
            args.key, class.certname, class.environment, class.role
        )?;
        for (i, tr) in levels.iter().enumerate() {
            let path = match &tr.path {
                Ok(p) => p.clone(),
                Err(why) => why.clone(),
            };
            let what = match &tr.outcome {
                Outcome::Skipped => "skipped".to_owned(),
                Outcome::NoFile => "no such file".to_owned(),
                Outcome::NotFound => "key not found".to_owned(),
                Outcome::Found { at, value } => format!("found at {at}: {value}"),
            };
            writeln!(out, "  {}. {:<10} {path}: {what}", i + 1, tr.level)?;
        }
    } else {
        // stdout stays the bare value for scripts; say the merge aside.
        eprintln!("merge {merge_name} ({merge_from})");
    }
    match value {
        Some(v) => {
            if args.explain {
                writeln!(out, "result: {v}")?;
            } else {
                writeln!(out, "{v}")?;
            }
            Ok(0)
        }
        None => {
            writeln!(out, "`{}` is not found at any level", args.key)?;
            Ok(1)
        }
    }
}

pub fn secret(cmd: SecretCmd) -> anyhow::Result<u8> {
    let stdin = std::io::stdin();
    let value = if matches!(cmd, SecretCmd::Encrypt { .. }) && stdin.is_terminal() {
        let v = rpassword::prompt_password("value to encrypt (not echoed): ")
            .context("cannot read the value from the terminal")?;
        Some(zeroize::Zeroizing::new(v.into_bytes()))
    } else {
        None
    };
    let mut out = std::io::stdout().lock();
    match value {
        Some(v) => secret_to(cmd, &mut &v[..], &mut out),
        None => secret_to(cmd, &mut stdin.lock(), &mut out),
    }
}

/// [`secret`], reading the value from `input` and writing to `out`.
pub fn secret_to(cmd: SecretCmd, input: &mut dyn Read, out: &mut dyn Write) -> anyhow::Result<u8> {
    match cmd {
        SecretCmd::Keygen {
            env,
            tree,
            write_pub,
        } => {
            let public =
                crate::secrets::keygen(&tree.data, &env).map_err(|e| anyhow::anyhow!("{e}"))?;
            if write_pub {
                let dir = tree.modules.join("environments").join(&env);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                let p = dir.join("secrets.pub");
                std::fs::write(&p, format!("{public}\n"))
                    .with_context(|| format!("cannot write {}", p.display()))?;
            }
            writeln!(out, "{public}")?;
            eprintln!(
                "private key for `{env}` written to {} (mode 0600)",
                crate::secrets::key_path(&tree.data, &env).display()
            );
            Ok(0)
        }
        SecretCmd::Encrypt {
            env,
            recipient,
            keep_newline,
            tree,
        } => {
            if !crate::secrets::valid_env_name(&env) {
                bail!("`{env}` is not a valid environment name");
            }
            let text = match recipient {
                Some(r) => r,
                None => {
                    let p = tree
                        .modules
                        .join("environments")
                        .join(&env)
                        .join("secrets.pub");
                    std::fs::read_to_string(&p).with_context(|| {
                        format!(
                            "cannot read {} (run `troupe secret keygen --env {env} --write-pub` or pass --recipient)",
                            p.display()
                        )
                    })?
                }
            };
            let recipient =
                crate::secrets::parse_recipient(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut value = zeroize::Zeroizing::new(Vec::new());
            input
                .take(crate::secrets::MAX_SECRET_BYTES as u64 + 1)
                .read_to_end(&mut value)
                .context("cannot read the value")?;
            if !keep_newline {
                while value.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    value.pop();
                }
            }
            if value.is_empty() {
                bail!("the value to encrypt is empty");
            }
            if std::str::from_utf8(&value).is_err() {
                bail!("the value must be UTF-8 text");
            }
            let toml = crate::secrets::encrypt_to_toml(&recipient, &env, &value)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            writeln!(out, "{toml}")?;
            Ok(0)
        }
        SecretCmd::Pubkey { env, tree } => {
            let t = load_tree(&tree.modules)?;
            let e = t
                .environment(&env)
                .with_context(|| format!("environment `{env}` does not exist"))?;
            match e.recipient() {
                Some(r) => {
                    writeln!(out, "{r}")?;
                    Ok(0)
                }
                None => bail!("environment `{env}` has no secrets.pub"),
            }
        }
    }
}
