//! Classification and compilation: facts + module tree → catalog. Pure: no
//! file system, no clock, no randomness; the same inputs give the same bytes.

use crate::data::DataView;
use crate::error::jinja_message;
use crate::error::{Error, ErrorKind, Result, Span};
use crate::secrets::SecretKeys;
use crate::syntax::{N, V};
use crate::tree::{
    EnvTree, Include, Matcher, ModuleTree, Profile, ResourceDecl, check_named_file, is_templated,
    trailing_number, whole_expression,
};
use minijinja::Value;
use serde_json::Value as J;
use sha2::{Digest, Sha256};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::BuildHasher as _;
use std::sync::Arc;
use troupe_catalog::{
    Catalog, Ensure, Kind, Membership, PackageEnsure, Resource, ResourceId, ServiceState, Tags,
};

/// How to compile: environment override, the node's trusted certificate
/// extensions, and the secret keys this master holds.
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    /// Compile in this environment instead of the classified one.
    pub environment: Option<String>,
    /// Extensions of the node's verified certificate (name → value).
    pub extensions: BTreeMap<String, String>,
    /// Private keys by environment; a secret is decrypted only when a
    /// catalog uses it.
    pub secrets: SecretKeys,
    /// What templates' `fleet()` sees (none: an empty fleet).
    pub fleet: Option<Arc<crate::fleet::FleetSnapshot>>,
}

/// What a compile depended on besides the tree, the facts and the options'
/// environment (see [`ModuleTree::compile_with_info`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompileInfo {
    /// A template or condition called `fleet()`: the catalog depends on
    /// the fleet snapshot.
    pub used_fleet: bool,
    /// The `fleet()` queries it made (each once): the catalog depends on
    /// their answers only.
    pub fleet_queries: Vec<crate::fleet::FleetQuery>,
}

/// What the site says about a node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Classification {
    pub certname: String,
    /// The first label of the certname.
    pub hostname: String,
    pub role: String,
    pub environment: String,
    /// The number at the end of the host name (`web4` → 4).
    pub number: Option<u64>,
    /// `number % zones`.
    pub zone: Option<u64>,
    pub zones: u64,
    /// Where the role came from (`site.toml:12:1` or `certificate extension pp_role`).
    pub role_from: String,
}

impl Classification {
    /// The `node` variable templates and conditions see.
    pub(crate) fn node_value(&self) -> J {
        // `number` and `zone` are left out (undefined) for a host name
        // without a number, so `node.zone is defined` reads naturally.
        let mut v = serde_json::json!({
            "certname": self.certname,
            "hostname": self.hostname,
            "role": self.role,
            "environment": self.environment,
            "zones": self.zones,
        });
        if let (Some(n), Some(z)) = (self.number, self.zone) {
            v["number"] = J::from(n);
            v["zone"] = J::from(z);
        }
        v
    }
}

/// Checks a certname: lowercase DNS-like, at most 253 bytes.
pub fn valid_certname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && !s.starts_with(['.', '-'])
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_'
        })
}

/// A loop key or item as an error shows it: its JSON form, clipped.
fn loop_label(v: &Value) -> String {
    let text = serde_json::to_string(v).unwrap_or_else(|_| v.to_string());
    if text.chars().count() > 60 {
        let cut: String = text.chars().take(57).collect();
        format!("{cut}...")
    } else {
        text
    }
}

fn to_mj(j: &J) -> Value {
    Value::from(minijinja::value::Serde(j))
}

fn trusted_facts(facts: &J, certname: &str, ext: &BTreeMap<String, String>) -> Result<J> {
    let J::Object(map) = facts else {
        return Err(Error::new(
            ErrorKind::Facts,
            "facts must be a JSON object (see the facts schema)",
        ));
    };
    let mut map = map.clone();
    // Trusted facts come from the verified certificate, never the request.
    map.insert(
        "trusted".into(),
        serde_json::json!({ "certname": certname, "extensions": ext }),
    );
    Ok(J::Object(map))
}

impl ModuleTree {
    /// Classifies a node: its role and environment, from its certificate
    /// extensions and the site's rules (first match wins), plus the derived
    /// number and zone.
    pub fn classify(
        &self,
        certname: &str,
        extensions: &BTreeMap<String, String>,
        facts: &J,
    ) -> Result<Classification> {
        if !valid_certname(certname) {
            return Err(Error::new(
                ErrorKind::Classification,
                format!(
                    "`{certname}` is not a valid certname (lowercase letters, digits, `.`, `-`, `_`)"
                ),
            ));
        }
        let site = &self.site;
        let facts = trusted_facts(facts, certname, extensions)?;
        let hostname = certname.split('.').next().unwrap_or(certname).to_owned();
        let number = trailing_number(&hostname);
        let mut role: Option<(String, String)> = None;
        let mut env: Option<String> = None;
        let mut zones: Option<u64> = None;
        if let Some(ext) = &site.role_extension
            && let Some(v) = extensions.get(ext)
        {
            role = Some((v.clone(), format!("certificate extension {ext}")));
        }
        if let Some(ext) = &site.environment_extension
            && let Some(v) = extensions.get(ext)
        {
            env = Some(v.clone());
        }
        let jinja = minijinja::Environment::new();
        for rule in &site.rules {
            let matched = match &rule.matcher {
                Matcher::Glob(p) => p.matches(certname),
                Matcher::Regex(r) => r.is_match(certname),
            };
            if !matched {
                continue;
            }
            if let Some(w) = &rule.when {
                let zone = number.map(|n| n % rule.zones.unwrap_or(site.zones));
                let ctx = minijinja::context! {
                    facts => to_mj(&facts),
                    trusted => to_mj(&facts["trusted"]),
                    node => to_mj(&{
                        let mut v = serde_json::json!({ "certname": certname, "hostname": hostname });
                        if let (Some(n), Some(z)) = (number, zone) {
                            v["number"] = J::from(n);
                            v["zone"] = J::from(z);
                        }
                        v
                    }),
                };
                let src = w.as_str().unwrap_or("false");
                let expr = whole_expression(src).unwrap_or(src);
                let ok = jinja
                    .compile_expression(expr)
                    .and_then(|e| e.eval(ctx))
                    .map_err(|e| {
                        w.err(
                            ErrorKind::Classification,
                            format!("rule condition failed: {}", jinja_message(&e)),
                        )
                    })?;
                if !ok.is_true() {
                    continue;
                }
            }
            if role.is_none()
                && let Some(r) = &rule.role
            {
                role = Some((
                    r.clone(),
                    format!("{} (`{}`)", rule.span.location(), rule.pattern),
                ));
            }
            if env.is_none()
                && let Some(e) = &rule.environment
            {
                env = Some(e.clone());
            }
            if zones.is_none() {
                zones = rule.zones;
            }
        }
        let Some((role, role_from)) = role else {
            return Err(Error::new(
                ErrorKind::Classification,
                format!("no rule in site.toml gives `{certname}` a role"),
            )
            .with_help("add a [[node]] rule that matches it (e.g. match = \"*\" as a catch-all) or give its certificate a role extension"));
        };
        let environment = env.unwrap_or_else(|| site.default_environment.clone());
        let Some(tree) = self.envs.get(&environment) else {
            return Err(Error::new(
                ErrorKind::Classification,
                format!(
                    "`{certname}` is classified into environment `{environment}`, which does not exist"
                ),
            )
            .with_help(format!(
                "environments: {}",
                self.envs.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        if !tree.roles.contains_key(&role) {
            return Err(Error::new(
                ErrorKind::Classification,
                format!(
                    "`{certname}` gets role `{role}` (from {role_from}), which environment `{environment}` does not define"
                ),
            )
            .with_help(format!(
                "roles in `{environment}`: {}",
                tree.roles.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let zones = zones.unwrap_or(site.zones);
        Ok(Classification {
            certname: certname.to_owned(),
            hostname,
            role,
            environment,
            number,
            zone: number.map(|n| n % zones),
            zones,
            role_from,
        })
    }

    /// Classifies and compiles a node's catalog.
    pub fn compile(&self, certname: &str, facts: &J, opts: &CompileOptions) -> Result<Catalog> {
        self.compile_with_info(certname, facts, opts)
            .map(|(c, _)| c)
    }

    /// [`ModuleTree::compile`], also saying what the catalog depended on
    /// (whether it used the fleet data: the master then keys its cache on
    /// the snapshot's generation).
    pub fn compile_with_info(
        &self,
        certname: &str,
        facts: &J,
        opts: &CompileOptions,
    ) -> Result<(Catalog, CompileInfo)> {
        let mut class = self.classify(certname, &opts.extensions, facts)?;
        if let Some(e) = &opts.environment {
            let Some(tree) = self.envs.get(e) else {
                return Err(Error::new(
                    ErrorKind::Classification,
                    format!("environment `{e}` does not exist"),
                ));
            };
            if !tree.roles.contains_key(&class.role) {
                return Err(Error::new(
                    ErrorKind::Classification,
                    format!("environment `{e}` does not define role `{}`", class.role),
                ));
            }
            class.environment = e.clone();
        }
        self.compile_classified_with_info(&class, facts, opts)
    }

    /// Compiles for an already classified node.
    pub fn compile_classified(
        &self,
        class: &Classification,
        facts: &J,
        opts: &CompileOptions,
    ) -> Result<Catalog> {
        self.compile_classified_with_info(class, facts, opts)
            .map(|(c, _)| c)
    }

    fn compile_classified_with_info(
        &self,
        class: &Classification,
        facts: &J,
        opts: &CompileOptions,
    ) -> Result<(Catalog, CompileInfo)> {
        let env = self.envs.get(&class.environment).ok_or_else(|| {
            Error::new(
                ErrorKind::Classification,
                format!("environment `{}` does not exist", class.environment),
            )
        })?;
        let facts = trusted_facts(facts, &class.certname, &opts.extensions)?;
        let code_version = self
            .env_code_version(&class.environment)
            .unwrap_or_default();
        let reads = Arc::new(std::sync::Mutex::new(crate::fleet::FleetReads::default()));
        let fleet = Value::from_object(crate::fleet::FleetFn {
            snapshot: opts.fleet.clone(),
            environment: class.environment.clone(),
            zones: class.zones,
            reads: reads.clone(),
        });
        let compiler = Compiler::new(env.clone(), class, &facts, opts.secrets.clone(), fleet)?;
        let data = compiler.data.clone();
        // An error message may quote a value: never let it quote a secret.
        let cat = compiler
            .run(code_version)
            .map_err(|e| e.scrub(&data.plaintexts()))?;
        let reads = std::mem::take(&mut *reads.lock().unwrap_or_else(|p| p.into_inner()));
        let info = CompileInfo {
            used_fleet: reads.used,
            fleet_queries: reads.queries,
        };
        Ok((cat, info))
    }

    /// The data view of a node (for `troupe lookup`).
    pub fn data_view(
        &self,
        class: &Classification,
        facts: &J,
        secrets: SecretKeys,
    ) -> Result<Arc<DataView>> {
        let env = self.envs.get(&class.environment).ok_or_else(|| {
            Error::new(
                ErrorKind::Classification,
                format!("environment `{}` does not exist", class.environment),
            )
        })?;
        let facts = trusted_facts(facts, &class.certname, &BTreeMap::new())?;
        let base = base_context(&facts, class, None, None);
        DataView::new(env.clone(), &base, secrets)
    }
}

fn base_context(
    facts: &J,
    class: &Classification,
    data: Option<&Arc<DataView>>,
    fleet: Option<&Value>,
) -> Value {
    let lookup = data.map(|d| Value::from_object(crate::data::LookupFn(d.clone())));
    minijinja::context! {
        facts => to_mj(facts),
        trusted => to_mj(&facts["trusted"]),
        node => to_mj(&class.node_value()),
        lookup => lookup,
        fleet => fleet.cloned(),
    }
}

mod instances;

/// What the compiler keeps about a declared resource beside the resource
/// itself (which goes straight into the catalog, at the same index).
struct Inst {
    span: Span,
    profile: Arc<str>,
}

/// A resource's references by kind: require, before, notify, subscribe.
type Refs = [Vec<(String, Span)>; 4];

struct Compiler<'a> {
    env: Arc<EnvTree>,
    class: &'a Classification,
    base: Value,
    data: Arc<DataView>,
    included: HashMap<String, (Option<J>, Span)>,
    /// Declared resources' spans, profiles and relationships, by index in
    /// `catalog.resources`.
    insts: Vec<Inst>,
    /// Require, before, notify, subscribe of the resources that have any
    /// (few: most have none), by index, ascending. Kept apart from `insts`
    /// so `finish` reads only these, not a record per resource.
    refs: Vec<(u32, Box<Refs>)>,
    /// Id of each resource that has no path -> its index in
    /// `catalog.resources`.
    by_id: PosIndex,
    /// Path of each file, directory and symlink -> its index. (Their id is
    /// `type[path]`: one index finds them by id or by path, so declaring
    /// one inserts into one table.)
    by_path: PosIndex,
    /// The catalog being built: resources are written into it as they are
    /// declared (in declaration order) and only moved in `finish` when the
    /// dependency order differs.
    catalog: Catalog,
    /// File bodies by raw SHA-256, in first-use order; sorted into
    /// `catalog.contents` at the end (inserting into that map of hex
    /// strings as they come costs a walk of the tree per body, which
    /// misses the CPU caches once a catalog is big).
    contents: Contents,
    /// What the resources being declared inherit (profile tags; inside a
    /// defined type's instance, its tags, relationships and sensitivity).
    scope: instances::Scope,
    /// Defined-type instances declared so far, by `type[title]`.
    instances: HashMap<ResourceId, instances::Instance>,
    /// The tag list last made by [`Compiler::scope_tags`].
    last_tags: Tags,
}

impl<'a> Compiler<'a> {
    fn new(
        env: Arc<EnvTree>,
        class: &'a Classification,
        facts: &J,
        keys: SecretKeys,
        fleet: Value,
    ) -> Result<Self> {
        let pre = base_context(facts, class, None, None);
        let data = DataView::new(env.clone(), &pre, keys)?;
        let base = base_context(facts, class, Some(&data), Some(&fleet));
        Ok(Compiler {
            env,
            class,
            base,
            data,
            included: HashMap::new(),
            insts: Vec::new(),
            refs: Vec::new(),
            by_id: PosIndex::default(),
            by_path: PosIndex::default(),
            catalog: Catalog::new(&class.certname, &class.environment, ""),
            contents: Contents::default(),
            scope: instances::Scope::default(),
            instances: HashMap::new(),
            last_tags: Tags::default(),
        })
    }

    fn run(mut self, code_version: String) -> Result<Catalog> {
        let env = self.env.clone();
        let role = env.roles.get(&self.class.role).ok_or_else(|| {
            Error::new(
                ErrorKind::Classification,
                format!("role `{}` does not exist", self.class.role),
            )
        })?;
        for (p, span) in &role.includes {
            self.include(p, None, span)?;
        }
        self.finish(code_version)
    }

    /// Turns a minijinja error into ours, preferring a structured error the
    /// data lookup left behind (missing key, secret).
    fn jerr(&self, e: minijinja::Error, span: &Span, what: &dyn std::fmt::Display) -> Error {
        if let Some(inner) = self.data.take_error() {
            return inner.or_span(span);
        }
        Error::at(
            ErrorKind::Template,
            span,
            format!("{what}: {}", jinja_message(&e)),
        )
    }

    fn eval_expr(
        &self,
        src: &str,
        ctx: &Value,
        span: &Span,
        what: &dyn std::fmt::Display,
    ) -> Result<Value> {
        let expr = whole_expression(src).unwrap_or(src);
        let v = self
            .env
            .jinja
            .compile_expression(expr)
            .and_then(|e| e.eval(ctx.clone()))
            .map_err(|e| self.jerr(e, span, what))?;
        if v.is_undefined() {
            return Err(Error::at(
                ErrorKind::Template,
                span,
                format!("{what}: `{expr}` is undefined"),
            ));
        }
        Ok(v)
    }

    /// Evaluates a value from the tree: strings with `{{ }}` are rendered
    /// (a lone `{{ expr }}` keeps its type), tables and arrays recursively.
    fn eval(&self, n: &N, ctx: &Value, what: &dyn std::fmt::Display) -> Result<J> {
        Ok(match &n.v {
            V::Str(s) if is_templated(s) => {
                if whole_expression(s).is_some() {
                    let v = self.eval_expr(s, ctx, &n.span, what)?;
                    serde_json::to_value(&v).map_err(|e| {
                        n.err(
                            ErrorKind::Template,
                            format!("{what}: value cannot be used: {e}"),
                        )
                    })?
                } else {
                    J::String(
                        self.env
                            .jinja
                            .render_str(s, ctx.clone())
                            .map_err(|e| self.jerr(e, &n.span, what))?,
                    )
                }
            }
            V::Array(a) => J::Array(
                a.iter()
                    .map(|i| self.eval(i, ctx, what))
                    .collect::<Result<_>>()?,
            ),
            V::Table(t) => J::Object(
                t.iter()
                    .map(|(k, v)| Ok((k.name.clone(), self.eval(v, ctx, what)?)))
                    .collect::<Result<_>>()?,
            ),
            _ => n.to_json(),
        })
    }

    fn include(&mut self, name: &str, params: Option<(J, Span)>, span: &Span) -> Result<()> {
        let env = self.env.clone();
        let Some(prof) = env.profiles.get(name) else {
            return Err(Error::at(
                ErrorKind::Schema,
                span,
                format!("profile `{name}` does not exist"),
            ));
        };
        if let Some((first, first_span)) = self.included.get(name) {
            if let Some((p, _)) = &params
                && first.as_ref() != Some(p)
            {
                return Err(Error::at(
                    ErrorKind::Duplicate,
                    span,
                    format!(
                        "profile `{name}` is included here with parameters {p} but was already included at {first_span} with {}",
                        first
                            .as_ref()
                            .map(J::to_string)
                            .unwrap_or_else(|| "none".into())
                    ),
                ));
            }
            return Ok(()); // including twice is a no-op
        }
        self.included.insert(
            name.to_owned(),
            (params.as_ref().map(|(p, _)| p.clone()), span.clone()),
        );
        let ctx = self.profile_context(name, prof, params.map(|(p, _)| p), span)?;
        // Room for the profile's resources (a for_each may add more):
        // growing these while declaring copies them and leaves freed blocks
        // glibc consolidates later.
        self.insts.reserve(prof.resources.len());
        self.catalog.resources.reserve(prof.resources.len());
        self.contents.reserve(prof.resources.len());
        let fs = prof
            .resources
            .iter()
            .filter(|d| FS_TYPES.contains(&d.rtype))
            .count();
        let res = &self.catalog.resources;
        self.by_id
            .reserve(prof.resources.len() - fs, |j| id_key(res, j));
        self.by_path.reserve(fs, |j| path_key(res, j));
        for inc in &prof.includes {
            self.include_decl(inc, &ctx)?;
        }
        let own = instances::Scope::profile(&prof.tags, self.scope.depth);
        let outer = std::mem::replace(&mut self.scope, own);
        // One copy of the name, shared by the profile's resources.
        let name: Arc<str> = Arc::from(name);
        for decl in &prof.resources {
            self.declare(&name, decl, &ctx)?;
        }
        self.scope = outer;
        Ok(())
    }

    fn include_decl(&mut self, inc: &Include, ctx: &Value) -> Result<()> {
        if let Some(w) = &inc.when {
            let v = self.eval_expr(w.as_str().unwrap_or(""), ctx, &w.span, &"when")?;
            if !v.is_true() {
                return Ok(());
            }
        }
        let params = if inc.params.is_empty() {
            None
        } else {
            let mut m = serde_json::Map::new();
            for (k, v) in &inc.params {
                m.insert(
                    k.name.clone(),
                    self.eval(v, ctx, &format!("parameter `{}`", k.name))?,
                );
            }
            Some((J::Object(m), inc.span.clone()))
        };
        self.include(&inc.profile, params, &inc.span)
    }

    /// Resolves parameters: explicit include params, then data key
    /// `PROFILE.PARAM`, then the default.
    fn profile_context(
        &self,
        name: &str,
        prof: &Profile,
        explicit: Option<J>,
        span: &Span,
    ) -> Result<Value> {
        let explicit = match explicit {
            Some(J::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        for k in explicit.keys() {
            if !prof.params.iter().any(|p| &p.name == k) {
                return Err(Error::at(
                    ErrorKind::Schema,
                    span,
                    format!("profile `{name}` has no parameter `{k}`"),
                )
                .with_help(format!(
                    "its parameters: {}",
                    prof.params
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let mut params = serde_json::Map::new();
        for p in &prof.params {
            let value = if let Some(v) = explicit.get(&p.name) {
                v.clone()
            } else if let Some(v) = self.data.lookup(&format!("{name}.{}", p.name), p.merge)? {
                v
            } else if let Some(d) = &p.default {
                let ctx = minijinja::context! { params => to_mj(&J::Object(params.clone())), ..self.base.clone() };
                self.eval(d, &ctx, &format!("default of parameter `{}`", p.name))?
            } else {
                return Err(Error::at(
                    ErrorKind::MissingData,
                    span,
                    format!(
                        "profile `{name}` needs parameter `{}`: it is not given where the profile is included, no data level has key `{name}.{}`, and it has no default",
                        p.name, p.name
                    ),
                )
                .with_help(format!("data levels looked at: {}", self.data.describe_levels())));
            };
            params.insert(p.name.clone(), value);
        }
        Ok(minijinja::context! { params => to_mj(&J::Object(params)), ..self.base.clone() })
    }

    fn declare(&mut self, profile: &Arc<str>, decl: &ResourceDecl, ctx: &Value) -> Result<()> {
        match &decl.for_each {
            None => self.declare_one(profile, decl, ctx),
            Some(fe) => {
                let items = match fe.as_str() {
                    Some(src) => self.eval_expr(src, ctx, &fe.span, &"for_each")?,
                    None => to_mj(&self.eval(fe, ctx, &"for_each")?),
                };
                let mut list: Vec<Value> = Vec::new();
                match items.kind() {
                    minijinja::value::ValueKind::Map => {
                        let iter = items
                            .try_iter()
                            .map_err(|e| self.jerr(e, &fe.span, &"for_each"))?;
                        for k in iter {
                            let v = items.get_item(&k).unwrap_or_default();
                            list.push(minijinja::context! { key => k, value => v });
                        }
                        for (i, item) in list.into_iter().enumerate() {
                            let key = item.get_attr("key").unwrap_or_default();
                            let c = minijinja::context! { item => item.clone(), key => key.clone(), value => item.get_attr("value").unwrap_or_default(), index => i, ..ctx.clone() };
                            self.declare_one(profile, decl, &c).map_err(|e| {
                                e.in_context(&format!("for_each key {}", loop_label(&key)))
                            })?;
                        }
                        return Ok(());
                    }
                    minijinja::value::ValueKind::Seq | minijinja::value::ValueKind::Iterable => {
                        let iter = items
                            .try_iter()
                            .map_err(|e| self.jerr(e, &fe.span, &"for_each"))?;
                        list.extend(iter);
                    }
                    minijinja::value::ValueKind::None => {}
                    _ => {
                        return Err(fe.err(
                            ErrorKind::Schema,
                            format!(
                                "for_each: expected a list or a table, found {}",
                                items.kind()
                            ),
                        ));
                    }
                }
                for (i, item) in list.into_iter().enumerate() {
                    let label = loop_label(&item);
                    let c = minijinja::context! { item => item, index => i, ..ctx.clone() };
                    self.declare_one(profile, decl, &c)
                        .map_err(|e| e.in_context(&format!("for_each item {i}: {label}")))?;
                }
                Ok(())
            }
        }
    }

    fn declare_one(&mut self, profile: &Arc<str>, decl: &ResourceDecl, ctx: &Value) -> Result<()> {
        if let Some(w) = &decl.when {
            let v = self.eval_expr(w.as_str().unwrap_or(""), ctx, &w.span, &"when")?;
            if !v.is_true() {
                return Ok(());
            }
        }
        let title = match self.eval(&decl.title, ctx, &"title")? {
            J::String(s) => s,
            other => other.to_string(),
        };
        if title.is_empty() {
            return Err(Error::at(
                ErrorKind::Schema,
                &decl.span,
                "the title is empty",
            ));
        }
        if let Some(tname) = &decl.define {
            return self.instantiate(profile, decl, tname, title, ctx);
        }
        let mut attrs = Attrs(Vec::with_capacity(decl.attrs.len()));
        for (k, v) in &decl.attrs {
            let j = self.eval(v, ctx, &format_args!("attribute `{}`", k.name))?;
            attrs.0.push((k.name.as_str(), (j, &v.span)));
        }
        let kind = self.build_kind(decl, &title, &mut attrs, ctx)?;
        let id = kind.id();
        if let Some(prev) = self.find(kind.type_name(), kind.title()) {
            return Err(Error::at(
                ErrorKind::Duplicate,
                &decl.span,
                format!(
                    "{id} is declared twice: first at {} (profile `{}`), again at {} (profile `{profile}`)",
                    self.insts[prev].span.location(),
                    self.insts[prev].profile,
                    decl.span.location()
                ),
            ));
        }
        if let Some(path) = kind.fs_path()
            && let Some(prev) = self
                .by_path
                .get(path, |j| path_key(&self.catalog.resources, j))
        {
            return Err(Error::at(
                ErrorKind::Duplicate,
                &decl.span,
                format!(
                    "{id} manages the same path as {}: first at {} (profile `{}`), again at {} (profile `{profile}`); one path takes one file, directory or symlink",
                    self.catalog.resources[prev].id,
                    self.insts[prev].span.location(),
                    self.insts[prev].profile,
                    decl.span.location()
                ),
            ));
        }
        let mut refs: Refs = Default::default();
        for (slot, list) in [&decl.require, &decl.before, &decl.notify, &decl.subscribe]
            .into_iter()
            .enumerate()
        {
            for n in list {
                match self.eval(n, ctx, &"relationship")? {
                    J::String(s) => refs[slot].push((s, n.span.clone())),
                    J::Array(a) => {
                        for s in a {
                            match s {
                                J::String(s) => refs[slot].push((s, n.span.clone())),
                                other => {
                                    return Err(n.err(ErrorKind::Schema, format!("expected a reference like \"package[nginx]\", found {other}")));
                                }
                            }
                        }
                    }
                    other => {
                        return Err(n.err(
                            ErrorKind::Schema,
                            format!("expected a reference like \"package[nginx]\", found {other}"),
                        ));
                    }
                }
            }
        }
        let tags = if decl.tags.is_empty() {
            self.scope_tags(profile)
        } else {
            let mut tags: Vec<String> = self
                .scope_tag_names(profile)
                .into_iter()
                .map(str::to_owned)
                .collect();
            for t in &decl.tags {
                if let J::String(s) = self.eval(t, ctx, &"tags")? {
                    crate::define::check_tag(&s).map_err(|why| {
                        Error::at(ErrorKind::Schema, &t.span, format!("{id}: {why}"))
                    })?;
                    if !tags.contains(&s) {
                        tags.push(s);
                    }
                }
            }
            Tags::from(tags)
        };
        for (slot, inherited) in self.scope.refs.iter().enumerate() {
            refs[slot].extend(inherited.iter().cloned());
        }
        let at = self.catalog.resources.len();
        let fs = kind.fs_path().is_some();
        self.insts.push(Inst {
            span: decl.span.clone(),
            profile: profile.clone(),
        });
        if !refs.iter().all(Vec::is_empty) {
            self.refs.push((at as u32, Box::new(refs)));
        }
        self.catalog.resources.push(Resource {
            id,
            kind,
            requires: Default::default(),
            notify: Vec::new(),
            sensitive: decl.sensitive || self.scope.sensitive,
            source: Some(decl.source.clone()),
            tags,
            noop: decl.noop || self.scope.noop,
        });
        // Indexed by position: the tables hold no copy of the id or path.
        let res = &self.catalog.resources;
        if fs {
            self.by_path
                .insert(path_key(res, at), at, |j| path_key(res, j));
        } else {
            self.by_id.insert(&res[at].id.0, at, |j| id_key(res, j));
        }
        Ok(())
    }

    /// The tags every resource declared here starts with: the role,
    /// `profile`, then the scope's tags, each once.
    fn scope_tag_names<'s>(&'s self, profile: &'s str) -> Vec<&'s str> {
        let mut want: Vec<&str> = Vec::with_capacity(2 + self.scope.tags.len());
        want.push(&self.class.role);
        if profile != self.class.role {
            want.push(profile);
        }
        for t in &self.scope.tags {
            if !want.contains(&t.as_str()) {
                want.push(t);
            }
        }
        want
    }

    /// The tags of a resource declared here without tags of its own
    /// ([`Compiler::scope_tag_names`]). Resources declared in a row in one
    /// scope share one list (the last one made is kept and handed out again
    /// while it is still the right one).
    fn scope_tags(&mut self, profile: &str) -> Tags {
        let want = self.scope_tag_names(profile);
        if self.last_tags.len() == want.len()
            && self.last_tags.iter().zip(&want).all(|(a, b)| a == b)
        {
            return self.last_tags.clone();
        }
        let tags: Tags = want.into_iter().map(str::to_owned).collect();
        self.last_tags = tags.clone();
        tags
    }

    /// The resource `kind[title]`, if it is declared.
    fn find(&self, kind: &str, title: &str) -> Option<usize> {
        let res = &self.catalog.resources;
        if FS_TYPES.contains(&kind) {
            // A path holds one file, directory or symlink: the one there
            // is this resource if its type is this one.
            self.by_path
                .get(title, |j| path_key(res, j))
                .filter(|&j| res[j].kind.type_name() == kind)
        } else {
            self.by_id
                .get(&ResourceId::new(kind, title).0, |j| id_key(res, j))
        }
    }

    fn build_kind(
        &mut self,
        decl: &ResourceDecl,
        title: &str,
        a: &mut Attrs<'_>,
        ctx: &Value,
    ) -> Result<Kind> {
        let what = What(decl.rtype, title);
        let span = &decl.span;
        let g = Getter { what, span };
        Ok(match decl.rtype {
            "file" => {
                let path = g.abs_path(title)?;
                let content = if let Some((J::String(s), _)) = a.get_mut("content") {
                    Some(std::mem::take(s).into_bytes())
                } else if let Some((v, sp)) = a.get("content") {
                    return Err(Error::at(
                        ErrorKind::Schema,
                        sp,
                        format!("{what}: content: expected a string, found {v}"),
                    ));
                } else if let Some((v, sp)) = a.get("template") {
                    let sp: &Span = sp;
                    let name = g.string("template", v, sp)?;
                    check_named_file(&name, "template", &self.env.templates, &self.env.files)
                        .map_err(|e| e.or_span(sp))?;
                    let vars = match a.get("vars") {
                        Some((J::Object(m), _)) => to_mj(&J::Object(m.clone())),
                        Some((v, sp)) => {
                            return Err(Error::at(
                                ErrorKind::Schema,
                                sp,
                                format!("{what}: vars: expected a table, found {v}"),
                            ));
                        }
                        None => Value::from(()),
                    };
                    let tctx = if vars.is_none() {
                        ctx.clone()
                    } else {
                        minijinja::value::merge_maps([
                            minijinja::context! { vars => vars.clone() },
                            vars,
                            ctx.clone(),
                        ])
                    };
                    let t = self
                        .env
                        .jinja
                        .get_template(&name)
                        .map_err(|e| self.jerr(e, sp, &format!("template `{name}`")))?;
                    let out = t
                        .render(tctx)
                        .map_err(|e| self.jerr(e, sp, &format!("template `{name}`")))?;
                    Some(out.into_bytes())
                } else if let Some((v, sp)) = a.get("source") {
                    let sp: &Span = sp;
                    let name = g.string("source", v, sp)?;
                    check_named_file(&name, "source", &self.env.templates, &self.env.files)
                        .map_err(|e| e.or_span(sp))?;
                    self.env.files.get(&name).map(|b| b.to_vec())
                } else {
                    if a.contains_key("vars") {
                        return Err(Error::at(
                            ErrorKind::Schema,
                            span,
                            format!("{what}: `vars` is only for `template`"),
                        ));
                    }
                    None
                };
                let content = content.map(|b| self.contents.add(b));
                Kind::File {
                    path,
                    ensure: g.ensure(a.get("ensure"), &["present", "absent", "file"])?,
                    content,
                    mode: g.mode(a.get("mode"))?,
                    owner: g.opt_string("owner", a.get("owner"))?,
                    group: g.opt_string("group", a.get("group"))?,
                    validate: g.opt_argv("validate", a.get("validate"))?,
                }
            }
            "directory" => Kind::Directory {
                path: g.abs_path(title)?,
                ensure: g.ensure(a.get("ensure"), &["present", "absent", "directory"])?,
                mode: g.mode(a.get("mode"))?,
                owner: g.opt_string("owner", a.get("owner"))?,
                group: g.opt_string("group", a.get("group"))?,
                purge: g.opt_bool("purge", a.get("purge"))?.unwrap_or(false),
            },
            "symlink" => Kind::Symlink {
                path: g.abs_path(title)?,
                ensure: g.ensure(a.get("ensure"), &["present", "absent", "link"])?,
                target: g
                    .opt_string("target", a.get("target"))?
                    .ok_or_else(|| g.missing("target"))?,
            },
            "package" => Kind::Package {
                name: title.to_owned(),
                ensure: match g.opt_string("ensure", a.get("ensure"))?.as_deref() {
                    None | Some("present") | Some("installed") => PackageEnsure::Present,
                    Some("absent") | Some("purged") => PackageEnsure::Absent,
                    Some("latest") => PackageEnsure::Latest,
                    Some(v) if !v.is_empty() && !v.contains(char::is_whitespace) => {
                        PackageEnsure::Version(v.to_owned())
                    }
                    Some(v) => {
                        return Err(g.bad(
                            "ensure",
                            &format!("`{v}`"),
                            "present, absent, latest or a version",
                        ));
                    }
                },
            },
            "service" => Kind::Service {
                name: title.to_owned(),
                ensure: match g.opt_string("ensure", a.get("ensure"))?.as_deref() {
                    None => None,
                    Some("running") => Some(ServiceState::Running),
                    Some("stopped") => Some(ServiceState::Stopped),
                    Some(v) => {
                        return Err(g.bad("ensure", &format!("`{v}`"), "running or stopped"));
                    }
                },
                enable: g.opt_bool("enable", a.get("enable"))?,
            },
            "user" => Kind::User {
                name: title.to_owned(),
                ensure: g.ensure(a.get("ensure"), &["present", "absent"])?,
                uid: g.opt_u32("uid", a.get("uid"))?,
                group: g.opt_string("group", a.get("group"))?,
                groups: g.opt_list("groups", a.get("groups"))?.unwrap_or_default(),
                membership: match a.get("membership") {
                    None | Some((J::Null, _)) => Membership::Minimum,
                    Some((J::String(s), _)) if s == "minimum" => Membership::Minimum,
                    Some((J::String(s), _)) if s == "inclusive" => Membership::Inclusive,
                    Some((v, sp)) => {
                        return Err(g.bad_at(sp, "membership", v, "\"minimum\" or \"inclusive\""));
                    }
                },
                home: g.opt_string("home", a.get("home"))?,
                shell: g.opt_string("shell", a.get("shell"))?,
                comment: g.opt_string("comment", a.get("comment"))?,
                system: g.opt_bool("system", a.get("system"))?.unwrap_or(false),
                manage_home: g
                    .opt_bool("manage_home", a.get("manage_home"))?
                    .unwrap_or(false),
            },
            "group" => Kind::Group {
                name: title.to_owned(),
                ensure: g.ensure(a.get("ensure"), &["present", "absent"])?,
                gid: g.opt_u32("gid", a.get("gid"))?,
                system: g.opt_bool("system", a.get("system"))?.unwrap_or(false),
            },
            "exec" => {
                let command = g
                    .opt_argv("command", a.get("command"))?
                    .ok_or_else(|| g.missing("command"))?;
                if command.is_empty() || command[0].is_empty() {
                    return Err(g.bad("command", "an empty list", "a non-empty argv list"));
                }
                Kind::Exec {
                    name: title.to_owned(),
                    command,
                    cwd: g.opt_string("cwd", a.get("cwd"))?,
                    environment: g.opt_map("environment", a.get("environment"))?,
                    user: g.opt_string("user", a.get("user"))?,
                    timeout: g.opt_u32("timeout", a.get("timeout"))?.map(u64::from),
                    creates: g.opt_string("creates", a.get("creates"))?,
                    onlyif: g.opt_argv("onlyif", a.get("onlyif"))?,
                    unless: g.opt_argv("unless", a.get("unless"))?,
                    refreshonly: g
                        .opt_bool("refreshonly", a.get("refreshonly"))?
                        .unwrap_or(false),
                    returns: g.opt_ints("returns", a.get("returns"))?.unwrap_or_default(),
                }
            }
            "cron" => Kind::Cron {
                name: title.to_owned(),
                ensure: g.ensure(a.get("ensure"), &["present", "absent"])?,
                command: g
                    .opt_string("command", a.get("command"))?
                    .ok_or_else(|| g.missing("command"))?,
                user: g
                    .opt_string("user", a.get("user"))?
                    .unwrap_or_else(|| "root".into()),
                minute: g.cron_field("minute", a.get("minute"))?,
                hour: g.cron_field("hour", a.get("hour"))?,
                monthday: g.cron_field("monthday", a.get("monthday"))?,
                month: g.cron_field("month", a.get("month"))?,
                weekday: g.cron_field("weekday", a.get("weekday"))?,
                environment: g.opt_map("environment", a.get("environment"))?,
            },
            other => {
                return Err(Error::at(
                    ErrorKind::Schema,
                    span,
                    format!("unknown resource type `{other}`"),
                ));
            }
        })
    }

    fn resolve(&self, r: &str, span: &Span, from: usize) -> Result<Vec<usize>> {
        let parsed = r
            .split_once('[')
            .and_then(|(k, rest)| rest.strip_suffix(']').map(|t| (k, t)));
        let Some((k, t)) = parsed else {
            return Err(Error::at(
                ErrorKind::Schema,
                span,
                format!(
                    "`{r}` is not a resource reference; expected `type[title]`, e.g. `package[nginx]`"
                ),
            ));
        };
        if self.env.defines.contains_key(k) {
            return self.resolve_instance(k, t, span, from);
        }
        if !crate::tree::TYPES.iter().any(|(n, _)| *n == k) {
            return Err(Error::at(
                ErrorKind::Schema,
                span,
                format!("`{r}`: unknown resource type `{k}`"),
            ));
        }
        self.find(k, t).map(|j| vec![j]).ok_or_else(|| {
            let id = ResourceId::new(k, t);
            Error::at(
                ErrorKind::Reference,
                span,
                format!(
                    "{} refers to {id}, which is not declared for this node",
                    self.catalog.resources[from].id
                ),
            )
        })
    }

    fn finish(self, code_version: String) -> Result<Catalog> {
        let n = self.insts.len();
        // Edges as flat lists of (from, to) pairs, grouped into rows once:
        // no set or list allocated per resource.
        let mut required: Vec<(u32, u32)> = Vec::new(); // (i, j): i requires j
        let mut notified: Vec<(u32, u32)> = Vec::new(); // (i, j): i notifies j
        for (i, refs) in &self.refs {
            let i = *i as usize;
            for (slot, list) in refs.iter().enumerate() {
                for (r, span) in list {
                    for j in self.resolve(r, span, i)? {
                        if j == i {
                            return Err(Error::at(
                                ErrorKind::Cycle,
                                span,
                                format!("{} refers to itself", self.catalog.resources[i].id),
                            ));
                        }
                        let (i, j) = (i as u32, j as u32);
                        match slot {
                            0 => required.push((i, j)),
                            1 => required.push((j, i)),
                            2 => {
                                notified.push((i, j));
                                required.push((j, i));
                            }
                            _ => {
                                notified.push((j, i));
                                required.push((i, j));
                            }
                        }
                    }
                }
            }
        }
        let explicit = Rows::from_pairs(n, required);
        let notify = Rows::from_pairs(n, notified);
        let deps = self.autorequire(&explicit);
        let order = self.toposort(&deps)?;
        let mut pos = vec![0u32; n];
        for (p, &i) in order.iter().enumerate() {
            pos[i] = p as u32;
        }
        let secrets = self.data.plaintexts();
        let mut catalog = self.catalog;
        catalog.code_version = code_version;
        catalog.contents = self.contents.into_map();
        // Resources were written in declaration order; they move only if
        // the dependency order is another one.
        if order.iter().enumerate().any(|(p, &i)| p != i) {
            let mut slots: Vec<Option<Resource>> = std::mem::take(&mut catalog.resources)
                .into_iter()
                .map(Some)
                .collect();
            catalog.resources = order.iter().filter_map(|&i| slots[i].take()).collect();
        }
        let mut ids: Vec<u32> = Vec::new();
        for (p, &i) in order.iter().enumerate() {
            // What a resource requires is placed before it and what it
            // notifies after it: their ids are copied from the catalog.
            ids.clear();
            ids.extend(deps.row(i).iter().map(|&j| pos[j as usize]));
            ids.sort_unstable();
            let requires: troupe_catalog::Ids = ids
                .iter()
                .map(|&q| catalog.resources[q as usize].id.clone())
                .collect();
            ids.clear();
            ids.extend(notify.row(i).iter().map(|&j| pos[j as usize]));
            ids.sort_unstable();
            let notifies: Vec<ResourceId> = ids
                .iter()
                .map(|&q| catalog.resources[q as usize].id.clone())
                .collect();
            let mut sensitive = catalog.resources[p].sensitive;
            if !sensitive && !secrets.is_empty() {
                let r = &catalog.resources[p];
                let text = serde_json::to_string(&r.kind).unwrap_or_default();
                let body = match &r.kind {
                    Kind::File {
                        content: Some(c), ..
                    } => catalog
                        .contents
                        .get(&c.sha256)
                        .and_then(|b| b.bytes())
                        .map(|b| String::from_utf8_lossy(&b).into_owned()),
                    _ => None,
                };
                sensitive = secrets.iter().any(|s| {
                    text.contains(s.as_str())
                        || body.as_deref().is_some_and(|b| b.contains(s.as_str()))
                });
            }
            let r = &mut catalog.resources[p];
            r.requires = requires;
            r.notify = notifies;
            r.sensitive = sensitive;
        }
        // The agent validates every catalog it receives; here it is a
        // self-check in debug builds (so in every test).
        #[cfg(debug_assertions)]
        catalog.validate().map_err(|e| {
            Error::new(
                ErrorKind::Schema,
                format!("internal error: the compiled catalog is invalid: {e}"),
            )
        })?;
        Ok(catalog)
    }

    /// Automatic edges: a file after its parent directory and its owner and
    /// group; an exec or cron after its user; a user after its groups; a
    /// service after the package of the same name and the packages of its
    /// profile. Returns every resource's dependencies, `explicit` ones
    /// included (an automatic edge is left out when the other resource
    /// already depends on this one).
    fn autorequire(&self, explicit: &Rows) -> Rows {
        let res = &self.catalog.resources;
        let n = res.len();
        let id = |k: &str, t: &str| self.find(k, t);
        let mut packages: HashMap<&str, Vec<usize>> = HashMap::new();
        for (j, r) in res.iter().enumerate() {
            if matches!(r.kind, Kind::Package { .. }) {
                packages.entry(&*self.insts[j].profile).or_default().push(j);
            }
        }
        // Each resource's automatic edges, appended in resource order: the
        // rows of the resources before `i` are complete when `i` is done.
        let mut auto = Rows::with_capacity(n, n);
        let mut deps = Rows::with_capacity(n, n + explicit.items.len());
        let mut row: Vec<u32> = Vec::new();
        for (i, r) in res.iter().enumerate() {
            let me = i as u32;
            // Does `j` already depend on `i` (explicitly, or automatically
            // for a `j` done before)?
            let add = |j: Option<usize>, auto: &mut Rows| {
                if let Some(j) = j
                    && j != i
                    && explicit.row(j).binary_search(&me).is_err()
                    && !(j < i && auto.row(j).contains(&me))
                {
                    auto.items.push(j as u32);
                }
            };
            match &r.kind {
                Kind::File {
                    path, owner, group, ..
                }
                | Kind::Directory {
                    path, owner, group, ..
                } => {
                    add(self.parent_dir(path), &mut auto);
                    if let Some(o) = owner {
                        add(id("user", o), &mut auto);
                    }
                    if let Some(g) = group {
                        add(id("group", g), &mut auto);
                    }
                }
                Kind::Symlink { path, .. } => add(self.parent_dir(path), &mut auto),
                Kind::Exec { user, cwd, .. } => {
                    if let Some(u) = user {
                        add(id("user", u), &mut auto);
                    }
                    if let Some(c) = cwd {
                        add(id("directory", c), &mut auto);
                    }
                }
                Kind::Cron { user, .. } => add(id("user", user), &mut auto),
                Kind::User { group, groups, .. } => {
                    for g in group.iter().chain(groups) {
                        add(id("group", g), &mut auto);
                    }
                }
                Kind::Service { name, .. } => {
                    add(id("package", name), &mut auto);
                    for &j in packages.get(&*self.insts[i].profile).into_iter().flatten() {
                        add(Some(j), &mut auto);
                    }
                }
                _ => {}
            }
            auto.end_row();
            // This resource's whole row: explicit and automatic, each once,
            // ascending.
            row.clear();
            row.extend_from_slice(explicit.row(i));
            row.extend_from_slice(auto.row(i));
            row.sort_unstable();
            row.dedup();
            deps.items.extend_from_slice(&row);
            deps.end_row();
        }
        deps
    }

    /// The nearest ancestor of `path` the catalog manages as a directory
    /// (a path holds at most one file, directory or symlink, so the path
    /// index finds it without building an id per level).
    fn parent_dir(&self, path: &str) -> Option<usize> {
        let res = &self.catalog.resources;
        let mut p = std::path::Path::new(path).parent();
        while let Some(dir) = p {
            let s = dir.to_str()?;
            if let Some(j) = self.by_path.get(s, |j| path_key(res, j))
                && matches!(res[j].kind, Kind::Directory { .. })
            {
                return Some(j);
            }
            p = dir.parent();
        }
        None
    }

    /// Kahn's algorithm; ties broken by declaration order.
    fn toposort(&self, deps: &Rows) -> Result<Vec<usize>> {
        let n = deps.len();
        let mut indeg: Vec<u32> = (0..n).map(|i| deps.row(i).len() as u32).collect();
        // Who depends on each resource, as rows (counted, then filled in
        // resource order, so each row is ascending).
        let mut start = vec![0u32; n + 1];
        for &j in &deps.items {
            start[j as usize + 1] += 1;
        }
        for k in 0..n {
            start[k + 1] += start[k];
        }
        let mut fill = start.clone();
        let mut dependents = vec![0u32; deps.items.len()];
        for i in 0..n {
            for &j in deps.row(i) {
                dependents[fill[j as usize] as usize] = i as u32;
                fill[j as usize] += 1;
            }
        }
        drop(fill);
        let mut ready: BinaryHeap<Reverse<usize>> =
            (0..n).filter(|&i| indeg[i] == 0).map(Reverse).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse(i)) = ready.pop() {
            order.push(i);
            for &k in &dependents[start[i] as usize..start[i + 1] as usize] {
                let k = k as usize;
                indeg[k] -= 1;
                if indeg[k] == 0 {
                    ready.push(Reverse(k));
                }
            }
        }
        if order.len() == n {
            return Ok(order);
        }
        // Walk dependencies among the leftovers until one repeats.
        let Some(start) = (0..n).find(|&i| indeg[i] > 0) else {
            return Ok(order);
        };
        let res = &self.catalog.resources;
        let mut path = vec![start];
        let mut seen = HashMap::new();
        seen.insert(start, 0usize);
        let mut cur = start;
        while let Some(next) = deps
            .row(cur)
            .iter()
            .map(|&j| j as usize)
            .find(|&j| indeg[j] > 0)
        {
            if let Some(&at) = seen.get(&next) {
                let cycle: Vec<usize> = path[at..].to_vec();
                let mut text = String::new();
                for &c in &cycle {
                    text.push_str(&format!(
                        "  {} ({})\n  requires ",
                        res[c].id,
                        self.insts[c].span.location()
                    ));
                }
                text.push_str(&format!("{}", res[cycle[0]].id));
                let chain: Vec<String> = cycle
                    .iter()
                    .chain(std::iter::once(&cycle[0]))
                    .map(|&c| res[c].id.to_string())
                    .collect();
                return Err(Error::at(
                    ErrorKind::Cycle,
                    &self.insts[cycle[0]].span,
                    format!("dependency cycle: {}\n{text}", chain.join(" -> ")),
                ));
            }
            seen.insert(next, path.len());
            path.push(next);
            cur = next;
        }
        Err(Error::new(ErrorKind::Cycle, "dependency cycle"))
    }
}

/// A list per resource (what it requires, what it notifies), all in one
/// vector: row `i` is `items[start[i]..start[i + 1]]`.
struct Rows {
    start: Vec<u32>,
    items: Vec<u32>,
}

impl Rows {
    fn with_capacity(rows: usize, items: usize) -> Rows {
        let mut start = Vec::with_capacity(rows + 1);
        start.push(0);
        Rows {
            start,
            items: Vec::with_capacity(items),
        }
    }
    /// Closes the row being appended to `items`.
    fn end_row(&mut self) {
        self.start.push(self.items.len() as u32);
    }
    fn len(&self) -> usize {
        self.start.len() - 1
    }
    /// Row `i`; empty for a row not closed yet.
    fn row(&self, i: usize) -> &[u32] {
        match (self.start.get(i), self.start.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.items[a as usize..b as usize],
            _ => &[],
        }
    }
    /// `n` rows from (row, item) pairs: each row ascending, each item once.
    fn from_pairs(n: usize, mut pairs: Vec<(u32, u32)>) -> Rows {
        pairs.sort_unstable();
        pairs.dedup();
        let mut rows = Rows::with_capacity(n, pairs.len());
        let mut it = pairs.into_iter().peekable();
        for i in 0..n as u32 {
            while let Some((_, j)) = it.next_if(|&(r, _)| r == i) {
                rows.items.push(j);
            }
            rows.end_row();
        }
        rows
    }
}

/// Typed access to evaluated attributes, with errors naming the resource.
/// A resource's evaluated attributes (few: a linear scan beats a map).
struct Attrs<'a>(Vec<(&'a str, (J, &'a Span))>);

impl<'a> Attrs<'a> {
    fn get(&self, k: &str) -> Option<&(J, &'a Span)> {
        self.0.iter().find(|(n, _)| *n == k).map(|(_, v)| v)
    }
    fn get_mut(&mut self, k: &str) -> Option<&mut (J, &'a Span)> {
        self.0.iter_mut().find(|(n, _)| *n == k).map(|(_, v)| v)
    }
    fn contains_key(&self, k: &str) -> bool {
        self.get(k).is_some()
    }
}

/// A map from a key every resource has (its id, its path) to its position
/// in the catalog being built, holding only positions: the key is read from the
/// resource itself (`key_of`), so declaring a resource copies neither its
/// id nor its path into a table. SipHash with a random key, as `HashMap`
/// (titles can come from facts).
#[derive(Default)]
struct PosIndex {
    state: std::hash::RandomState,
    table: hashbrown::HashTable<usize>,
}

impl PosIndex {
    fn get<'k>(&self, key: &str, key_of: impl Fn(usize) -> &'k str) -> Option<usize> {
        let h = self.state.hash_one(key);
        self.table.find(h, |&j| key_of(j) == key).copied()
    }
    /// Adds `at` (whose key is `key`, not yet in the index).
    fn insert<'k>(&mut self, key: &str, at: usize, key_of: impl Fn(usize) -> &'k str) {
        let h = self.state.hash_one(key);
        let state = &self.state;
        self.table
            .insert_unique(h, at, |&j| state.hash_one(key_of(j)));
    }
    fn reserve<'k>(&mut self, n: usize, key_of: impl Fn(usize) -> &'k str) {
        let state = &self.state;
        self.table.reserve(n, |&j| state.hash_one(key_of(j)));
    }
}

/// The types whose title is a path (indexed in `Compiler::by_path`).
const FS_TYPES: [&str; 3] = ["file", "directory", "symlink"];

fn id_key(res: &[Resource], j: usize) -> &str {
    &res[j].id.0
}

fn path_key(res: &[Resource], j: usize) -> &str {
    res[j].kind.fs_path().unwrap_or_default()
}

/// A catalog's file bodies while it is compiled: each distinct body once,
/// in first-use order, with its raw digest (32 bytes inline: no string to
/// follow when looking one up); the index holds only positions (4 bytes
/// a body, a table a few times smaller than one of digests).
#[derive(Default)]
struct Contents {
    state: std::hash::RandomState,
    index: hashbrown::HashTable<u32>,
    bodies: Vec<([u8; 32], troupe_catalog::Blob)>,
}

impl Contents {
    /// Room for `n` more bodies.
    fn reserve(&mut self, n: usize) {
        let (state, bodies) = (&self.state, &self.bodies);
        self.index
            .reserve(n, |&k| state.hash_one(bodies[k as usize].0));
        self.bodies.reserve(n);
    }

    /// Like [`Catalog::add_content`], without copying the body again.
    fn add(&mut self, bytes: Vec<u8>) -> troupe_catalog::ContentRef {
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let size = bytes.len() as u64;
        let h = self.state.hash_one(digest);
        let (state, bodies) = (&self.state, &self.bodies);
        if self
            .index
            .find(h, |&k| bodies[k as usize].0 == digest)
            .is_none()
        {
            let at = bodies.len() as u32;
            self.index
                .insert_unique(h, at, |&k| state.hash_one(bodies[k as usize].0));
            let blob = match String::from_utf8(bytes) {
                Ok(s) => troupe_catalog::Blob::Utf8(s),
                Err(e) => troupe_catalog::Blob::from_bytes(e.as_bytes()),
            };
            self.bodies.push((digest, blob));
        }
        troupe_catalog::ContentRef {
            sha256: troupe_catalog::Sha256Hex::from_bytes(digest),
            size,
        }
    }

    /// The catalog's content table: sorted by digest (the order of their
    /// lowercase hex, the map's key), then built in one pass.
    fn into_map(self) -> BTreeMap<troupe_catalog::Sha256Hex, troupe_catalog::Blob> {
        let mut bodies = self.bodies;
        drop(self.index);
        bodies.sort_unstable_by_key(|b| b.0);
        bodies
            .into_iter()
            .map(|(d, b)| (troupe_catalog::Sha256Hex::from_bytes(d), b))
            .collect()
    }
}

/// `type[title]`, formatted only when an error needs it.
#[derive(Clone, Copy)]
struct What<'a>(&'a str, &'a str);

impl std::fmt::Display for What<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}]", self.0, self.1)
    }
}

struct Getter<'a> {
    what: What<'a>,
    span: &'a Span,
}

impl Getter<'_> {
    fn bad(&self, attr: &str, found: &str, expected: &str) -> Error {
        Error::at(
            ErrorKind::Schema,
            self.span,
            format!("{}: {attr}: expected {expected}, found {found}", self.what),
        )
    }
    fn bad_at(&self, sp: &Span, attr: &str, found: &J, expected: &str) -> Error {
        Error::at(
            ErrorKind::Schema,
            sp,
            format!("{}: {attr}: expected {expected}, found {found}", self.what),
        )
    }
    fn missing(&self, attr: &str) -> Error {
        Error::at(
            ErrorKind::Schema,
            self.span,
            format!("{}: the `{attr}` attribute is required", self.what),
        )
    }
    fn abs_path(&self, title: &str) -> Result<String> {
        if !title.starts_with('/') || title.split('/').any(|c| c == "..") || title.contains('\0') {
            return Err(Error::at(
                ErrorKind::Schema,
                self.span,
                format!(
                    "{}: the path must be absolute and may not contain `..`",
                    self.what
                ),
            ));
        }
        // One spelling per path, so uniqueness by path means something.
        troupe_catalog::check_normal_path(title).map_err(|why| {
            Error::at(
                ErrorKind::Schema,
                self.span,
                format!("{}: {why}", self.what),
            )
        })?;
        Ok(title.to_owned())
    }
    fn string(&self, attr: &str, v: &J, sp: &Span) -> Result<String> {
        match v {
            J::String(s) => Ok(s.clone()),
            other => Err(self.bad_at(sp, attr, other, "a string")),
        }
    }
    fn opt_string(&self, attr: &str, v: Option<&(J, &Span)>) -> Result<Option<String>> {
        match v {
            None | Some((J::Null, _)) => Ok(None),
            Some((J::String(s), _)) => Ok(Some(s.clone())),
            Some((J::Number(n), _)) => Ok(Some(n.to_string())),
            Some((other, sp)) => Err(self.bad_at(sp, attr, other, "a string")),
        }
    }
    fn opt_bool(&self, attr: &str, v: Option<&(J, &Span)>) -> Result<Option<bool>> {
        match v {
            None | Some((J::Null, _)) => Ok(None),
            Some((J::Bool(b), _)) => Ok(Some(*b)),
            Some((J::String(s), _)) if s == "true" => Ok(Some(true)),
            Some((J::String(s), _)) if s == "false" => Ok(Some(false)),
            Some((other, sp)) => Err(self.bad_at(sp, attr, other, "true or false")),
        }
    }
    fn opt_u32(&self, attr: &str, v: Option<&(J, &Span)>) -> Result<Option<u32>> {
        match v {
            None | Some((J::Null, _)) => Ok(None),
            Some((J::Number(n), sp)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.bad_at(
                        sp,
                        attr,
                        &J::Number(n.clone()),
                        "a whole number from 0 to 4294967295",
                    )
                }),
            Some((J::String(s), sp)) => s
                .parse::<u32>()
                .map(Some)
                .map_err(|_| self.bad_at(sp, attr, &J::String(s.clone()), "a whole number")),
            Some((other, sp)) => Err(self.bad_at(sp, attr, other, "a whole number")),
        }
    }
    fn opt_ints(&self, attr: &str, v: Option<&(J, &Span)>) -> Result<Option<Vec<i32>>> {
        match v {
            None | Some((J::Null, _)) => Ok(None),
            Some((J::Array(a), sp)) => a
                .iter()
                .map(|x| {
                    x.as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| self.bad_at(sp, attr, x, "a list of exit codes"))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some((J::Number(n), sp)) => n
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .map(|n| Some(vec![n]))
                .ok_or_else(|| self.bad_at(sp, attr, &J::Number(n.clone()), "an exit code")),
            Some((other, sp)) => Err(self.bad_at(sp, attr, other, "a list of exit codes")),
        }
    }
    fn opt_list(&self, attr: &str, v: Option<&(J, &Span)>) -> Result<Option<Vec<String>>> {
        match v {
            None | Some((J::Null, _)) => Ok(None),
            Some((J::Array(a), sp)) => a
                .iter()
                .map(|x| match x {
                    J::String(s) => Ok(s.clone()),
                    other => Err(self.bad_at(sp, attr, other, "a list of strings")),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some((other, sp)) => Err(self.bad_at(sp, attr, other, "a list of strings")),
        }
    }
    /// An argv list; a plain string is refused so nothing is ever split or
    /// passed through a shell by accident.
    fn opt_argv(&self, attr: &str, v: Option<&(J, &Span)>) -> Result<Option<Vec<String>>> {
        match v {
            Some((J::String(s), sp)) => Err(Error::at(
                ErrorKind::Schema,
                sp,
                format!(
                    "{}: {attr}: expected an argv list like [\"/usr/sbin/sshd\", \"-t\"], found the string {s:?} (commands never go through a shell)",
                    self.what
                ),
            )),
            other => self.opt_list(attr, other),
        }
    }
    fn opt_map(&self, attr: &str, v: Option<&(J, &Span)>) -> Result<BTreeMap<String, String>> {
        match v {
            None | Some((J::Null, _)) => Ok(BTreeMap::new()),
            Some((J::Object(m), sp)) => m
                .iter()
                .map(|(k, x)| match x {
                    J::String(s) => Ok((k.clone(), s.clone())),
                    J::Number(n) => Ok((k.clone(), n.to_string())),
                    J::Bool(b) => Ok((k.clone(), b.to_string())),
                    other => Err(self.bad_at(sp, attr, other, "a table of strings")),
                })
                .collect(),
            Some((other, sp)) => Err(self.bad_at(sp, attr, other, "a table of strings")),
        }
    }
    fn ensure(&self, v: Option<&(J, &Span)>, allowed: &[&str]) -> Result<Ensure> {
        match v {
            None | Some((J::Null, _)) => Ok(Ensure::Present),
            Some((J::String(s), sp)) => match s.as_str() {
                "absent" if allowed.contains(&"absent") => Ok(Ensure::Absent),
                x if allowed.contains(&x) => Ok(Ensure::Present),
                _ => Err(self.bad_at(sp, "ensure", &J::String(s.clone()), &allowed.join(" or "))),
            },
            Some((other, sp)) => Err(self.bad_at(sp, "ensure", other, &allowed.join(" or "))),
        }
    }
    fn mode(&self, v: Option<&(J, &Span)>) -> Result<Option<u32>> {
        match v {
            None | Some((J::Null, _)) => Ok(None),
            Some((J::String(s), sp)) => {
                let ok =
                    (3..=4).contains(&s.len()) && s.bytes().all(|b| (b'0'..=b'7').contains(&b));
                if !ok {
                    return Err(self.bad_at(
                        sp,
                        "mode",
                        &J::String(s.clone()),
                        "octal digits like \"0644\"",
                    ));
                }
                Ok(u32::from_str_radix(s, 8).ok())
            }
            Some((other, sp)) => Err(self.bad_at(
                sp,
                "mode",
                other,
                "a string of octal digits like \"0644\" (a bare number is ambiguous)",
            )),
        }
    }
    fn cron_field(&self, attr: &str, v: Option<&(J, &Span)>) -> Result<String> {
        let s = match v {
            None | Some((J::Null, _)) => return Ok("*".into()),
            Some((J::Number(n), _)) => n.to_string(),
            Some((J::String(s), _)) => s.clone(),
            Some((other, sp)) => {
                return Err(self.bad_at(sp, attr, other, "a cron field like \"*/5\""));
            }
        };
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"*/,-".contains(&b))
        {
            return Err(self.bad(
                attr,
                &format!("{s:?}"),
                "a cron field like \"*/5\", \"1-5\" or \"mon\"",
            ));
        }
        Ok(s)
    }
}
