//! Loading a module tree: `site.toml` plus `environments/<name>/`, each with
//! `hierarchy.toml`, `roles/`, `profiles/`, `data/`, `templates/`, `files/`
//! and `secrets.pub`. Everything is read and checked here, once; compiling
//! never touches the file system.

use crate::error::{Error, ErrorKind, Result, SourceFile, Span};
use crate::syntax::{self, Key, N, V, check_keys};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest single file the loader reads (16 MiB).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Fuel for one template render or expression (minijinja instructions):
/// stops runaway loops in a bad module.
pub(crate) const TEMPLATE_FUEL: u64 = 5_000_000;

/// The resource types and the attributes each accepts.
pub(crate) const TYPES: &[(&str, &[&str])] = &[
    (
        "file",
        &[
            "ensure", "content", "template", "source", "vars", "mode", "owner", "group", "validate",
        ],
    ),
    ("directory", &["ensure", "mode", "owner", "group", "purge"]),
    ("symlink", &["ensure", "target"]),
    ("package", &["ensure"]),
    ("service", &["ensure", "enable"]),
    (
        "user",
        &[
            "ensure",
            "uid",
            "group",
            "groups",
            "membership",
            "home",
            "shell",
            "comment",
            "system",
            "manage_home",
        ],
    ),
    ("group", &["ensure", "gid", "system"]),
    (
        "exec",
        &[
            "command",
            "cwd",
            "environment",
            "user",
            "timeout",
            "creates",
            "onlyif",
            "unless",
            "refreshonly",
            "returns",
        ],
    ),
    (
        "cron",
        &[
            "ensure",
            "command",
            "user",
            "minute",
            "hour",
            "monthday",
            "month",
            "weekday",
            "environment",
        ],
    ),
];

/// Attributes every resource accepts.
pub(crate) const META: &[&str] = &[
    "when",
    "for_each",
    "require",
    "before",
    "notify",
    "subscribe",
    "tags",
    "sensitive",
    "noop",
];

/// A whole module tree: the site (classification) and every environment.
/// Cheap to share (`Arc` inside), `Send + Sync`; build a new one off to the
/// side and swap it in.
pub struct ModuleTree {
    pub(crate) root: PathBuf,
    pub(crate) site: Arc<Site>,
    pub(crate) envs: BTreeMap<String, Arc<EnvTree>>,
    code_version: String,
}

impl std::fmt::Debug for ModuleTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleTree")
            .field("root", &self.root)
            .field("environments", &self.envs.keys().collect::<Vec<_>>())
            .field("code_version", &self.code_version)
            .finish()
    }
}

/// `site.toml`: node classification.
pub struct Site {
    pub(crate) default_environment: String,
    pub(crate) zones: u64,
    pub(crate) role_extension: Option<String>,
    pub(crate) environment_extension: Option<String>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) version: String,
}

pub(crate) enum Matcher {
    Glob(glob::Pattern),
    Regex(regex::Regex),
}

pub(crate) struct Rule {
    pub(crate) matcher: Matcher,
    pub(crate) pattern: String,
    pub(crate) role: Option<String>,
    pub(crate) environment: Option<String>,
    pub(crate) zones: Option<u64>,
    pub(crate) when: Option<N>,
    pub(crate) span: Span,
}

/// One environment: its own code, data and secret recipient.
pub struct EnvTree {
    pub(crate) name: String,
    pub(crate) hierarchy: Vec<Level>,
    pub(crate) data: BTreeMap<String, N>,
    pub(crate) roles: BTreeMap<String, Role>,
    pub(crate) profiles: BTreeMap<String, Profile>,
    /// Defined types (`types/nginx/vhost.toml` is `nginx::vhost`).
    pub(crate) defines: BTreeMap<String, Profile>,
    pub(crate) files: BTreeMap<String, Arc<[u8]>>,
    pub(crate) templates: BTreeSet<String>,
    pub(crate) jinja: minijinja::Environment<'static>,
    pub(crate) recipient: Option<age::x25519::Recipient>,
    pub(crate) code_version: String,
}

pub(crate) struct Level {
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) span: Span,
}

pub(crate) struct Role {
    pub(crate) includes: Vec<(String, Span)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Merge {
    /// The value from the most specific level that has the key.
    First,
    /// Tables merged key by key across all levels (more specific wins),
    /// arrays concatenated without duplicates.
    Deep,
}

pub(crate) struct Param {
    pub(crate) name: String,
    pub(crate) default: Option<N>,
    pub(crate) merge: Merge,
}

pub(crate) struct Include {
    pub(crate) profile: String,
    pub(crate) when: Option<N>,
    pub(crate) params: Vec<(Key, N)>,
    pub(crate) span: Span,
}

pub(crate) struct Profile {
    pub(crate) params: Vec<Param>,
    pub(crate) includes: Vec<Include>,
    /// Resources and defined-type instances, in declaration order.
    pub(crate) resources: Vec<ResourceDecl>,
    /// `tags = [...]` at the top: added to every resource it declares.
    pub(crate) tags: Vec<String>,
}

pub(crate) struct ResourceDecl {
    pub(crate) rtype: &'static str,
    pub(crate) title: N,
    /// Type attributes (not meta), in source order.
    pub(crate) attrs: Vec<(Key, N)>,
    pub(crate) when: Option<N>,
    pub(crate) for_each: Option<N>,
    pub(crate) require: Vec<N>,
    pub(crate) before: Vec<N>,
    pub(crate) notify: Vec<N>,
    pub(crate) subscribe: Vec<N>,
    pub(crate) tags: Vec<N>,
    pub(crate) sensitive: bool,
    /// `noop = true`: the agent only reports what it would change.
    pub(crate) noop: bool,
    pub(crate) span: Span,
    /// `span`'s start as a resource's `source` (computed once, when the
    /// tree is loaded, not per compile).
    pub(crate) source: troupe_catalog::Source,
    /// Set for an instance of a defined type (`["nginx::vhost"."www"]`):
    /// the type's name; `attrs` are then its parameters.
    pub(crate) define: Option<String>,
    /// An instance's `params = "{{ value }}"`: a table of parameters
    /// (attributes given beside it win).
    pub(crate) splat: Option<N>,
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::new(
        ErrorKind::Io,
        format!("cannot read {}: {e}", path.display()),
    )
}

/// Rejects names that could leave their directory: absolute paths, `..`,
/// backslashes, empty or hidden components.
pub(crate) fn check_relative_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.starts_with('/') {
        return Err(format!(
            "`{name}` is an absolute path; name a file inside the module tree"
        ));
    }
    if name.contains('\\') || name.contains('\0') {
        return Err(format!("`{name}` contains a backslash or NUL"));
    }
    for part in name.split('/') {
        if part == ".." {
            return Err(format!("`{name}` leaves its directory (`..` is refused)"));
        }
        if part.is_empty() || part == "." {
            return Err(format!("`{name}` has an empty or `.` path component"));
        }
    }
    Ok(())
}

/// Every regular file under `dir` (sorted, `/`-separated relative names),
/// refusing symlinks that lead outside `root`.
fn walk(root: &Path, dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    walk_into(root, dir, "", &mut out, 0)?;
    out.sort();
    Ok(out)
}

fn walk_into(
    root: &Path,
    dir: &Path,
    prefix: &str,
    out: &mut Vec<(String, PathBuf)>,
    depth: usize,
) -> Result<()> {
    if depth > 32 {
        return Err(Error::new(
            ErrorKind::Io,
            format!("{} is nested more than 32 directories deep", dir.display()),
        ));
    }
    let rd = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(Error::new(
                ErrorKind::Io,
                format!("{}: file name is not UTF-8", entry.path().display()),
            ));
        };
        if name.starts_with('.') {
            continue; // .git, editor swap files
        }
        let path = entry.path();
        let canon = path.canonicalize().map_err(|e| io_err(&path, e))?;
        if !canon.starts_with(root) {
            return Err(Error::new(
                ErrorKind::PathTraversal,
                format!(
                    "{} leads outside the module tree (to {}); the compiler reads only files inside it",
                    path.display(),
                    canon.display()
                ),
            ));
        }
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if canon.is_dir() {
            walk_into(root, &path, &rel, out, depth + 1)?;
        } else if canon.is_file() {
            out.push((rel, path));
        }
    }
    Ok(())
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "{} is {} bytes, more than the {MAX_FILE_BYTES}-byte limit",
                path.display(),
                meta.len()
            ),
        ));
    }
    std::fs::read(path).map_err(|e| io_err(path, e))
}

/// Reads files and hashes them into a code version as it goes.
struct Reader {
    root: PathBuf,
    hasher: Sha256,
}

impl Reader {
    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .replace('\\', "/")
    }
    fn bytes(&mut self, path: &Path) -> Result<Vec<u8>> {
        let canon = path.canonicalize().map_err(|e| io_err(path, e))?;
        if !canon.starts_with(&self.root) {
            return Err(Error::new(
                ErrorKind::PathTraversal,
                format!(
                    "{} leads outside the module tree (to {}); the compiler reads only files inside it",
                    path.display(),
                    canon.display()
                ),
            ));
        }
        let b = read_bytes(&canon)?;
        let rel = self.rel(path);
        self.hasher.update((rel.len() as u64).to_le_bytes());
        self.hasher.update(rel.as_bytes());
        self.hasher.update((b.len() as u64).to_le_bytes());
        self.hasher.update(&b);
        Ok(b)
    }
    fn source(&mut self, path: &Path) -> Result<Arc<SourceFile>> {
        let b = self.bytes(path)?;
        let text = String::from_utf8(b).map_err(|_| {
            Error::new(
                ErrorKind::Syntax,
                format!("{}: not UTF-8 text", self.rel(path)),
            )
        })?;
        Ok(Arc::new(SourceFile::new(self.rel(path), Arc::from(text))))
    }
    fn toml(&mut self, path: &Path) -> Result<N> {
        let f = self.source(path)?;
        syntax::parse(&f)
    }
    fn finish(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl ModuleTree {
    /// Loads and checks a whole module tree: `DIR/site.toml` and every
    /// `DIR/environments/NAME/`.
    pub fn load(dir: impl AsRef<Path>) -> Result<ModuleTree> {
        let dir = dir.as_ref();
        let root = dir.canonicalize().map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot open module tree {}: {e}", dir.display()),
            )
        })?;
        let site = Arc::new(load_site(&root)?);
        let envs_dir = root.join("environments");
        let rd = std::fs::read_dir(&envs_dir).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!(
                    "cannot read {}: {e} (a module tree has one directory per environment there)",
                    envs_dir.display()
                ),
            )
        })?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        let mut envs = BTreeMap::new();
        for name in names {
            let env = EnvTree::load(&root, &name)?;
            envs.insert(name, Arc::new(env));
        }
        if envs.is_empty() {
            return Err(Error::new(
                ErrorKind::Io,
                format!("{} has no environment directory", envs_dir.display()),
            ));
        }
        if !envs.contains_key(&site.default_environment) {
            return Err(Error::new(
                ErrorKind::Classification,
                format!(
                    "site.toml: default_environment `{}` has no directory environments/{}",
                    site.default_environment, site.default_environment
                ),
            ));
        }
        let mut tree = ModuleTree {
            root,
            site,
            envs,
            code_version: String::new(),
        };
        tree.code_version = tree.compute_version();
        Ok(tree)
    }

    fn compute_version(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.site.version.as_bytes());
        for (n, e) in &self.envs {
            h.update(n.as_bytes());
            h.update(e.code_version.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Builds a tree from a site and environments loaded apart (git-backed
    /// environments: each branch is checked out and loaded on its own, the
    /// site comes from one of them). Refused like [`ModuleTree::load`]
    /// when there is no environment or the site's default one is missing.
    pub fn assemble(
        root: PathBuf,
        site: Arc<Site>,
        envs: BTreeMap<String, Arc<EnvTree>>,
    ) -> Result<ModuleTree> {
        if envs.is_empty() {
            return Err(Error::new(ErrorKind::Io, "there is no environment"));
        }
        if !envs.contains_key(&site.default_environment) {
            return Err(Error::new(
                ErrorKind::Classification,
                format!(
                    "site.toml: default_environment `{}` is not an environment (environments: {})",
                    site.default_environment,
                    envs.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let mut tree = ModuleTree {
            root,
            site,
            envs,
            code_version: String::new(),
        };
        tree.code_version = tree.compute_version();
        Ok(tree)
    }

    /// The site (classification) this tree compiles with.
    pub fn site(&self) -> &Arc<Site> {
        &self.site
    }

    /// Replaces (or adds) one environment, e.g. to promote staged code,
    /// leaving the others as they are.
    pub fn with_environment(&self, env: Arc<EnvTree>) -> ModuleTree {
        let mut envs = self.envs.clone();
        envs.insert(env.name.clone(), env);
        let mut tree = ModuleTree {
            root: self.root.clone(),
            site: self.site.clone(),
            envs,
            code_version: String::new(),
        };
        tree.code_version = tree.compute_version();
        tree
    }

    /// Content hash of the whole tree (site and every environment).
    pub fn code_version(&self) -> &str {
        &self.code_version
    }

    /// Content hash of what a catalog in `env` depends on (the site and that
    /// environment only): the `code_version` written into its catalogs.
    pub fn env_code_version(&self, env: &str) -> Option<String> {
        Some(self.code_version_with(self.envs.get(env)?))
    }

    /// The [`ModuleTree::env_code_version`] that `e` would have in this
    /// tree (e.g. code staged for a held environment, before promotion):
    /// the one identity of a code generation everywhere.
    pub fn code_version_with(&self, e: &EnvTree) -> String {
        let mut h = Sha256::new();
        h.update(self.site.version.as_bytes());
        h.update(e.code_version.as_bytes());
        hex::encode(h.finalize())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn environments(&self) -> impl Iterator<Item = &str> {
        self.envs.keys().map(String::as_str)
    }
    pub fn environment(&self, name: &str) -> Option<&Arc<EnvTree>> {
        self.envs.get(name)
    }
}

impl Site {
    /// Loads `DIR/site.toml` alone (git-backed environments keep it in a
    /// branch).
    pub fn load(dir: &Path) -> Result<Site> {
        let root = dir.canonicalize().map_err(|e| io_err(dir, e))?;
        load_site(&root)
    }
    /// The environment of a node no rule places.
    pub fn default_environment(&self) -> &str {
        &self.default_environment
    }
    /// Content hash of the site file.
    pub fn version(&self) -> &str {
        &self.version
    }
}

fn load_site(root: &Path) -> Result<Site> {
    let mut r = Reader {
        root: root.to_owned(),
        hasher: Sha256::new(),
    };
    let path = root.join("site.toml");
    if !path.is_file() {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "{} is missing: the site file classifies nodes",
                path.display()
            ),
        ));
    }
    let doc = r.toml(&path)?;
    let t = doc.expect_table("site.toml")?;
    check_keys(
        t,
        &["default_environment", "zones", "certificate", "node"],
        "site.toml",
    )?;
    let mut site = Site {
        default_environment: "production".into(),
        zones: 3,
        role_extension: None,
        environment_extension: None,
        rules: Vec::new(),
        version: String::new(),
    };
    if let Some(v) = doc.get("default_environment") {
        site.default_environment = v.expect_str("default_environment")?.to_owned();
    }
    if let Some(v) = doc.get("zones") {
        site.zones = positive_int(v, "zones")?;
    }
    if let Some(c) = doc.get("certificate") {
        check_keys(
            c.expect_table("[certificate]")?,
            &["role_extension", "environment_extension"],
            "[certificate]",
        )?;
        if let Some(v) = c.get("role_extension") {
            site.role_extension = Some(v.expect_str("role_extension")?.to_owned());
        }
        if let Some(v) = c.get("environment_extension") {
            site.environment_extension = Some(v.expect_str("environment_extension")?.to_owned());
        }
    }
    if let Some(nodes) = doc.get("node") {
        let V::Array(items) = &nodes.v else {
            return Err(nodes.err(
                ErrorKind::Schema,
                "`node` must be an array of tables: write each rule as [[node]]",
            ));
        };
        for item in items {
            let t = item.expect_table("[[node]]")?;
            check_keys(
                t,
                &["match", "regex", "role", "environment", "zones", "when"],
                "a [[node]] rule",
            )?;
            let matcher = match (item.get("match"), item.get("regex")) {
                (Some(g), None) => {
                    let s = g.expect_str("match")?;
                    let p = glob::Pattern::new(s).map_err(|e| {
                        g.err(ErrorKind::Schema, format!("invalid glob pattern: {e}"))
                    })?;
                    (Matcher::Glob(p), s.to_owned())
                }
                (None, Some(re)) => {
                    let s = re.expect_str("regex")?;
                    let p = regex::Regex::new(s).map_err(|e| {
                        re.err(
                            ErrorKind::Schema,
                            format!("invalid regular expression: {e}"),
                        )
                    })?;
                    (Matcher::Regex(p), s.to_owned())
                }
                _ => {
                    return Err(item.err(
                        ErrorKind::Schema,
                        "a [[node]] rule needs exactly one of `match` (glob) or `regex`",
                    ));
                }
            };
            let role = item
                .get("role")
                .map(|v| v.expect_str("role").map(str::to_owned))
                .transpose()?;
            let environment = item
                .get("environment")
                .map(|v| v.expect_str("environment").map(str::to_owned))
                .transpose()?;
            if role.is_none() && environment.is_none() {
                return Err(item.err(
                    ErrorKind::Schema,
                    "a [[node]] rule must set `role`, `environment` or both",
                ));
            }
            let zones = item
                .get("zones")
                .map(|v| positive_int(v, "zones"))
                .transpose()?;
            let when = item.get("when").cloned();
            if let Some(w) = &when {
                w.expect_str("when")?;
            }
            site.rules.push(Rule {
                matcher: matcher.0,
                pattern: matcher.1,
                role,
                environment,
                zones,
                when,
                span: item.span.clone(),
            });
        }
    }
    site.version = r.finish();
    Ok(site)
}

fn positive_int(v: &N, what: &str) -> Result<u64> {
    match v.v {
        V::Int(i) if i > 0 => Ok(i as u64),
        _ => Err(v.err(
            ErrorKind::Schema,
            format!(
                "{what}: expected a positive integer, found {}",
                v.type_name()
            ),
        )),
    }
}

fn new_jinja() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_fuel(Some(TEMPLATE_FUEL));
    // `'web4.example.com' | host_number` -> 4; `| zone(3)` -> 1: lets a
    // template place other hosts in zones the way the site places nodes.
    env.add_filter("host_number", |name: &str| {
        let host = name.split('.').next().unwrap_or(name);
        trailing_number(host)
    });
    env.add_filter(
        "zone",
        |name: &str, zones: u64| -> Result<Option<u64>, minijinja::Error> {
            if zones == 0 {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    "zone: the number of zones must be positive",
                ));
            }
            let host = name.split('.').next().unwrap_or(name);
            Ok(trailing_number(host).map(|n| n % zones))
        },
    );
    env
}

/// True when a string from the module tree is a template to evaluate.
pub(crate) fn is_templated(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// If `s` is exactly one `{{ expr }}`, the expression (its value keeps its
/// type: a list stays a list).
pub(crate) fn whole_expression(s: &str) -> Option<&str> {
    // No trimming: `"{{ x }}\n"` is text (the newline matters).
    let inner = s.strip_prefix("{{")?.strip_suffix("}}")?;
    if inner.contains("{{") || inner.contains("}}") || inner.contains("{%") {
        return None;
    }
    Some(inner.trim())
}

impl EnvTree {
    /// Loads `ROOT/environments/NAME`.
    pub fn load(root: &Path, name: &str) -> Result<EnvTree> {
        if !crate::secrets::valid_env_name(name) {
            return Err(Error::new(
                ErrorKind::Schema,
                format!(
                    "environments/{name}: an environment name uses lowercase letters, digits, _ and - only"
                ),
            ));
        }
        let root = root.canonicalize().map_err(|e| io_err(root, e))?;
        let dir = root.join("environments").join(name);
        let mut r = Reader {
            root: root.clone(),
            hasher: Sha256::new(),
        };
        let mut jinja = new_jinja();
        let mut templates = BTreeSet::new();
        for (rel, path) in walk(&root, &dir.join("templates"))? {
            let src = r.source(&path)?;
            jinja
                .add_template_owned(rel.clone(), src.text.to_string())
                .map_err(|e| template_load_error(&src, &e))?;
            templates.insert(rel);
        }
        let mut files = BTreeMap::new();
        for (rel, path) in walk(&root, &dir.join("files"))? {
            files.insert(rel, Arc::from(r.bytes(&path)?));
        }
        let recipient = {
            let p = dir.join("secrets.pub");
            if p.is_file() {
                let b = r.bytes(&p)?;
                let text = String::from_utf8_lossy(&b).into_owned();
                Some(crate::secrets::parse_recipient(&text).map_err(|e| {
                    Error::new(
                        ErrorKind::Secret,
                        format!("environments/{name}/secrets.pub: {}", e.message()),
                    )
                })?)
            } else {
                None
            }
        };
        let hierarchy = {
            let p = dir.join("hierarchy.toml");
            if p.is_file() {
                parse_hierarchy(&r.toml(&p)?, &jinja)?
            } else {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!(
                        "environments/{name}/hierarchy.toml is missing: it declares the data levels"
                    ),
                ));
            }
        };
        let mut data = BTreeMap::new();
        for (rel, path) in walk(&root, &dir.join("data"))? {
            if !rel.ends_with(".toml") {
                continue;
            }
            let doc = r.toml(&path)?;
            check_secrets(&doc, name)?;
            data.insert(rel, doc);
        }
        let mut roles = BTreeMap::new();
        for (rel, path) in walk(&root, &dir.join("roles"))? {
            let Some(rname) = rel.strip_suffix(".toml") else {
                continue;
            };
            let doc = r.toml(&path)?;
            roles.insert(rname.to_owned(), parse_role(&doc)?);
        }
        let mut define_docs = Vec::new();
        for (rel, path) in walk(&root, &dir.join("types"))? {
            let Some(stem) = rel.strip_suffix(".toml") else {
                continue;
            };
            let doc = r.toml(&path)?;
            let tname = crate::define::type_name(stem).map_err(|why| {
                Error::at(
                    ErrorKind::Schema,
                    &doc.span,
                    format!("environments/{name}/types/{rel}: {why}"),
                )
            })?;
            define_docs.push((tname, doc));
        }
        let define_names: BTreeSet<String> = define_docs.iter().map(|(n, _)| n.clone()).collect();
        let mut defines = BTreeMap::new();
        for (tname, doc) in &define_docs {
            defines.insert(
                tname.clone(),
                parse_profile(doc, &jinja, &templates, &files, &define_names, Some(tname))?,
            );
        }
        let mut profiles = BTreeMap::new();
        for (rel, path) in walk(&root, &dir.join("profiles"))? {
            let Some(pname) = rel.strip_suffix(".toml") else {
                continue;
            };
            let doc = r.toml(&path)?;
            profiles.insert(
                pname.to_owned(),
                parse_profile(&doc, &jinja, &templates, &files, &define_names, None)?,
            );
        }
        crate::define::check_instances(&profiles, &defines)?;
        // Every include must name a profile that exists.
        for (rname, role) in &roles {
            for (p, span) in &role.includes {
                if !profiles.contains_key(p) {
                    return Err(Error::at(
                        ErrorKind::Schema,
                        span,
                        format!("role `{rname}` includes profile `{p}`, which does not exist"),
                    )
                    .with_help(format!(
                        "profiles in environment `{name}`: {}",
                        profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
        for prof in profiles.values().chain(defines.values()) {
            for inc in &prof.includes {
                if !profiles.contains_key(&inc.profile) {
                    return Err(Error::at(
                        ErrorKind::Schema,
                        &inc.span,
                        format!("profile `{}` does not exist", inc.profile),
                    ));
                }
            }
        }
        Ok(EnvTree {
            name: name.to_owned(),
            hierarchy,
            data,
            roles,
            profiles,
            defines,
            files,
            templates,
            jinja,
            recipient,
            code_version: r.finish(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn code_version(&self) -> &str {
        &self.code_version
    }
    /// The age recipient (public key) secrets of this environment are
    /// encrypted to.
    pub fn recipient(&self) -> Option<&age::x25519::Recipient> {
        self.recipient.as_ref()
    }
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.keys().map(String::as_str)
    }
    pub fn profiles(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }
    /// The merge the tree declares for a data key: a key `P.N` (or below
    /// it, `P.N.x`) is parameter `N` of profile `P`, which a compile looks
    /// up with that parameter's `merge`. Returns it with the
    /// `(profile, parameter)` that declares it.
    pub fn declared_merge(&self, key: &str) -> Option<(Merge, String, String)> {
        let parts: Vec<&str> = key.split('.').collect();
        for i in 1..parts.len() {
            let profile = parts[..i].join(".");
            let Some(p) = self.profiles.get(&profile) else {
                continue;
            };
            if let Some(param) = p.params.iter().find(|x| x.name == parts[i]) {
                return Some((param.merge, profile, param.name.clone()));
            }
        }
        None
    }
}

fn template_load_error(src: &Arc<SourceFile>, e: &minijinja::Error) -> Error {
    let offset = e
        .line()
        .and_then(|l| {
            src.text
                .match_indices('\n')
                .nth(l.saturating_sub(2))
                .map(|(i, _)| i + 1)
        })
        .filter(|_| e.line().unwrap_or(0) > 1)
        .unwrap_or(0);
    Error::at(
        ErrorKind::Template,
        &Span::new(src, offset..offset),
        format!("template error: {}", crate::error::jinja_message(e)),
    )
}

fn parse_hierarchy(doc: &N, jinja: &minijinja::Environment<'static>) -> Result<Vec<Level>> {
    let t = doc.expect_table("hierarchy.toml")?;
    check_keys(t, &["level"], "hierarchy.toml")?;
    let Some(levels) = doc.get("level") else {
        return Err(doc.err(ErrorKind::Schema, "hierarchy.toml declares no [[level]]"));
    };
    let V::Array(items) = &levels.v else {
        return Err(levels.err(ErrorKind::Schema, "write each data level as [[level]]"));
    };
    let mut out: Vec<Level> = Vec::new();
    for item in items {
        check_keys(
            item.expect_table("[[level]]")?,
            &["name", "path"],
            "a [[level]]",
        )?;
        let name = item
            .get("name")
            .ok_or_else(|| item.err(ErrorKind::Schema, "a [[level]] needs a `name`"))?
            .expect_str("name")?
            .to_owned();
        let pv = item.get("path").ok_or_else(|| {
            item.err(
                ErrorKind::Schema,
                "a [[level]] needs a `path` (under data/)",
            )
        })?;
        let path = pv.expect_str("path")?.to_owned();
        if !path.ends_with(".toml") {
            return Err(pv.err(ErrorKind::Schema, "a level's path must end in .toml"));
        }
        if path.contains("..") || path.starts_with('/') {
            return Err(pv.err(
                ErrorKind::PathTraversal,
                "a level's path is relative to data/ and may not contain `..` or start with `/`",
            ));
        }
        if is_templated(&path) {
            jinja.template_from_str(&path).map_err(|e| {
                pv.err(
                    ErrorKind::Template,
                    format!("template error: {}", crate::error::jinja_message(&e)),
                )
            })?;
        }
        if out.iter().any(|l| l.name == name) {
            return Err(item.err(
                ErrorKind::Duplicate,
                format!("level `{name}` is declared twice"),
            ));
        }
        out.push(Level {
            name,
            path,
            span: pv.span.clone(),
        });
    }
    Ok(out)
}

/// A secret must be `{ env = "E", secret = "..." }` with E this environment.
fn check_secrets(n: &N, env: &str) -> Result<()> {
    match &n.v {
        V::Table(t) => {
            if let Some(s) = n.get("secret") {
                check_keys(t, &["env", "secret"], "a secret (`{ env, secret }`)")?;
                s.expect_str("secret")?;
                let e = n.get("env").ok_or_else(|| {
                    n.err(
                        ErrorKind::Secret,
                        "a secret needs `env`: the environment whose key encrypted it",
                    )
                })?;
                let e_name = e.expect_str("env")?;
                if e_name != env {
                    return Err(e.err(
                        ErrorKind::Secret,
                        format!(
                            "this secret was encrypted for environment `{e_name}` but is in environment `{env}`, whose key cannot decrypt it"
                        ),
                    )
                    .with_help(format!("re-encrypt the value with `troupe secret encrypt --env {env}`")));
                }
                return Ok(());
            }
            for (_, v) in t {
                check_secrets(v, env)?;
            }
            Ok(())
        }
        V::Array(a) => a.iter().try_for_each(|v| check_secrets(v, env)),
        _ => Ok(()),
    }
}

fn parse_role(doc: &N) -> Result<Role> {
    let t = doc.expect_table("a role")?;
    check_keys(
        t,
        &["description", "include"],
        "a role (roles only include profiles)",
    )?;
    let includes = match doc.get("include") {
        Some(v) => v.expect_str_list("include")?,
        None => Vec::new(),
    };
    Ok(Role { includes })
}

pub(crate) fn check_template_syntax(n: &N, jinja: &minijinja::Environment<'static>) -> Result<()> {
    match &n.v {
        V::Str(s) if is_templated(s) => {
            let res = match whole_expression(s) {
                Some(expr) => jinja.compile_expression(expr).map(|_| ()),
                None => jinja.template_from_str(s).map(|_| ()),
            };
            res.map_err(|e| {
                n.err(
                    ErrorKind::Template,
                    format!("template error: {}", crate::error::jinja_message(&e)),
                )
            })
        }
        V::Array(a) => a.iter().try_for_each(|v| check_template_syntax(v, jinja)),
        V::Table(t) => t
            .iter()
            .try_for_each(|(_, v)| check_template_syntax(v, jinja)),
        _ => Ok(()),
    }
}

pub(crate) fn check_expression(
    n: &N,
    jinja: &minijinja::Environment<'static>,
    what: &str,
) -> Result<()> {
    let s = n.expect_str(what)?;
    let expr = whole_expression(s).unwrap_or(s);
    jinja.compile_expression(expr).map(|_| ()).map_err(|e| {
        n.err(
            ErrorKind::Template,
            format!(
                "{what}: invalid expression: {}",
                crate::error::jinja_message(&e)
            ),
        )
    })
}

pub(crate) fn list(n: Option<&N>) -> Vec<N> {
    match n {
        None => Vec::new(),
        Some(N { v: V::Array(a), .. }) => a.clone(),
        Some(other) => vec![other.clone()],
    }
}

pub(crate) fn parse_profile(
    doc: &N,
    jinja: &minijinja::Environment<'static>,
    templates: &BTreeSet<String>,
    files: &BTreeMap<String, Arc<[u8]>>,
    defines: &BTreeSet<String>,
    define: Option<&str>,
) -> Result<Profile> {
    let what = if define.is_some() {
        "a defined type"
    } else {
        "a profile"
    };
    let t = doc.expect_table(what)?;
    let mut allowed: Vec<&str> = vec!["description", "params", "include", "tags"];
    allowed.extend(TYPES.iter().map(|(n, _)| *n));
    allowed.extend(defines.iter().map(String::as_str));
    check_keys(t, &allowed, what)?;
    let mut prof = Profile {
        params: Vec::new(),
        includes: Vec::new(),
        resources: Vec::new(),
        tags: Vec::new(),
    };
    if let Some(tv) = doc.get("tags") {
        for (tag, span) in tv.expect_str_list("tags")? {
            crate::define::check_tag(&tag)
                .map_err(|why| Error::at(ErrorKind::Schema, &span, why))?;
            prof.tags.push(tag);
        }
    }
    if let Some(p) = doc.get("params") {
        for (k, v) in p.expect_table("[params]")? {
            if define.is_some() {
                crate::define::check_param_name(k)?;
            }
            let param = match &v.v {
                V::Table(pt) => {
                    check_keys(
                        pt,
                        if define.is_some() {
                            &["default", "doc"]
                        } else {
                            &["default", "merge", "doc"]
                        },
                        &format!(
                            "parameter `{}` (to give a table as default, write {{ default = {{ ... }} }})",
                            k.name
                        ),
                    )?;
                    let merge = match v.get("merge") {
                        None => Merge::First,
                        Some(m) => match m.expect_str("merge")? {
                            "first" => Merge::First,
                            "deep" => Merge::Deep,
                            other => {
                                return Err(m.err(
                                    ErrorKind::Schema,
                                    format!("merge `{other}`: expected `first` or `deep`"),
                                ));
                            }
                        },
                    };
                    Param {
                        name: k.name.clone(),
                        default: v.get("default").cloned(),
                        merge,
                    }
                }
                _ => Param {
                    name: k.name.clone(),
                    default: Some(v.clone()),
                    merge: Merge::First,
                },
            };
            if let Some(d) = &param.default {
                check_template_syntax(d, jinja)?;
            }
            prof.params.push(param);
        }
    }
    if let Some(inc) = doc.get("include") {
        let items = match &inc.v {
            V::Array(a) => a.clone(),
            _ => vec![inc.clone()],
        };
        for item in items {
            match &item.v {
                V::Str(s) => prof.includes.push(Include {
                    profile: s.clone(),
                    when: None,
                    params: Vec::new(),
                    span: item.span.clone(),
                }),
                V::Table(t) => {
                    check_keys(t, &["profile", "when", "params"], "an include")?;
                    let name = item
                        .get("profile")
                        .ok_or_else(|| {
                            item.err(ErrorKind::Schema, "an include table needs `profile`")
                        })?
                        .expect_str("profile")?
                        .to_owned();
                    let when = item.get("when").cloned();
                    if let Some(w) = &when {
                        check_expression(w, jinja, "when")?;
                    }
                    let params = match item.get("params") {
                        Some(p) => p.expect_table("params")?.to_vec(),
                        None => Vec::new(),
                    };
                    for (_, v) in &params {
                        check_template_syntax(v, jinja)?;
                    }
                    prof.includes.push(Include {
                        profile: name,
                        when,
                        params,
                        span: item.span.clone(),
                    });
                }
                _ => {
                    return Err(item.err(
                        ErrorKind::Schema,
                        "include: expected a profile name or { profile = \"...\", when = \"...\", params = { ... } }",
                    ));
                }
            }
        }
    }
    for (tk, tv) in t {
        if defines.contains(&tk.name) {
            crate::define::parse_instances(tk, tv, jinja, &mut prof)?;
            continue;
        }
        let Some((rtype, attrs)) = TYPES.iter().find(|(n, _)| *n == tk.name) else {
            continue;
        };
        for (title, body) in tv.expect_table(&format!("[{rtype}]"))? {
            let bt = body.as_table().ok_or_else(|| {
                body.err(
                    ErrorKind::Schema,
                    format!(
                        "{rtype} `{}`: expected a table of attributes, found {}",
                        title.name,
                        body.type_name()
                    ),
                )
            })?;
            let title_n = N {
                v: V::Str(title.name.clone()),
                span: title.span.clone(),
            };
            check_template_syntax(&title_n, jinja)?;
            let mut decl = ResourceDecl {
                rtype,
                title: title_n,
                attrs: Vec::new(),
                when: None,
                for_each: None,
                require: Vec::new(),
                before: Vec::new(),
                notify: Vec::new(),
                subscribe: Vec::new(),
                tags: Vec::new(),
                sensitive: false,
                noop: false,
                span: title.span.clone(),
                source: title.span.source(),
                define: None,
                splat: None,
            };
            for (k, v) in bt {
                let key = k.name.as_str();
                if META.contains(&key) {
                    match key {
                        "when" => {
                            check_expression(v, jinja, "when")?;
                            decl.when = Some(v.clone());
                        }
                        "for_each" => {
                            if v.as_str().is_some() {
                                check_expression(v, jinja, "for_each")?;
                            }
                            decl.for_each = Some(v.clone());
                        }
                        "sensitive" | "noop" => match v.v {
                            V::Bool(b) if key == "noop" => decl.noop = b,
                            V::Bool(b) => decl.sensitive = b,
                            _ => {
                                return Err(v.err(
                                    ErrorKind::Schema,
                                    format!(
                                        "{key}: expected true or false, found {}",
                                        v.type_name()
                                    ),
                                ));
                            }
                        },
                        _ => {
                            for item in list(Some(v)) {
                                item.expect_str(key)?;
                                check_template_syntax(&item, jinja)?;
                            }
                            let l = list(Some(v));
                            match key {
                                "require" => decl.require = l,
                                "before" => decl.before = l,
                                "notify" => decl.notify = l,
                                "subscribe" => decl.subscribe = l,
                                _ => decl.tags = l,
                            }
                        }
                    }
                } else if attrs.contains(&key) {
                    check_template_syntax(v, jinja)?;
                    if *rtype == "file" && (key == "template" || key == "source") {
                        check_file_ref(v, key, templates, files)?;
                    }
                    decl.attrs.push((k.clone(), v.clone()));
                } else {
                    let mut expected: Vec<&str> = attrs.to_vec();
                    expected.extend(META);
                    return Err(Error::at(
                        ErrorKind::Schema,
                        &k.span,
                        format!("unknown attribute `{key}` for a {rtype} resource"),
                    )
                    .with_help(format!("expected one of: {}", expected.join(", "))));
                }
            }
            let contents = ["content", "template", "source"]
                .iter()
                .filter(|a| decl.attrs.iter().any(|(k, _)| k.name == **a))
                .count();
            if contents > 1 {
                return Err(Error::at(
                    ErrorKind::Schema,
                    &decl.span,
                    format!(
                        "file `{}` sets more than one of content, template and source; choose one",
                        decl.title.as_str().unwrap_or_default()
                    ),
                ));
            }
            prof.resources.push(decl);
        }
    }
    Ok(prof)
}

/// Checks a literal `template` / `source` name at load time.
fn check_file_ref(
    v: &N,
    key: &str,
    templates: &BTreeSet<String>,
    files: &BTreeMap<String, Arc<[u8]>>,
) -> Result<()> {
    let name = v.expect_str(key)?;
    if is_templated(name) {
        return Ok(()); // checked when compiled
    }
    check_named_file(name, key, templates, files).map_err(|e| e.or_span(&v.span))
}

pub(crate) fn check_named_file(
    name: &str,
    key: &str,
    templates: &BTreeSet<String>,
    files: &BTreeMap<String, Arc<[u8]>>,
) -> Result<()> {
    check_relative_name(name).map_err(|why| {
        Error::new(
            ErrorKind::PathTraversal,
            format!("{key} {why}; the compiler reads only files inside the module tree"),
        )
    })?;
    let (exists, dir, known): (bool, &str, Vec<&str>) = if key == "template" {
        (
            templates.contains(name),
            "templates",
            templates.iter().map(String::as_str).collect(),
        )
    } else {
        (
            files.contains_key(name),
            "files",
            files.keys().map(String::as_str).collect(),
        )
    };
    if !exists {
        let mut e = Error::new(
            ErrorKind::MissingFile,
            format!("{key} `{name}` does not exist (expected {dir}/{name} in this environment)"),
        );
        if !known.is_empty() {
            e = e.with_help(format!("{dir} here: {}", known.join(", ")));
        }
        return Err(e);
    }
    Ok(())
}

/// The number at the end of a host name: `web4` → 4, `db-12` → 12.
pub fn trailing_number(hostname: &str) -> Option<u64> {
    let digits = hostname.len()
        - hostname
            .bytes()
            .rev()
            .take_while(u8::is_ascii_digit)
            .count();
    hostname[digits..].parse().ok()
}
