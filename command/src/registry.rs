//! The action whitelist: which actions exist and the typed schema of their
//! arguments.
//!
//! Only actions in the [`Registry`] exist. The built-ins are listed by
//! [`Registry::builtin`]; modules add more with a TOML declaration
//! ([`ModuleActions`]), namespaced by the module name, and may not redefine
//! an existing action. Every argument value is checked against its declared
//! [`ArgType`] before anything runs: no type accepts shell syntax where a
//! name is expected (`nginx; rm -rf /` is not a package name), and free text
//! has a length limit and no control characters (it is never handed to a
//! shell; executors pass arguments as argv, never through `sh -c`).
//!
//! Module declaration example (`actions.toml` in a module):
//!
//! ```toml
//! [[action]]
//! name = "postgres.vacuum"
//! description = "VACUUM ANALYZE a database"
//!
//! [[action.arg]]
//! name = "database"
//! type = "identifier"
//! required = true
//!
//! [[action.arg]]
//! name = "full"
//! type = "bool"
//!
//! [[action.arg]]
//! name = "token"
//! type = "text"
//! max_len = 128
//! secret = true        # redacted in audit logs
//!
//! # How the agent runs it: argv templates (never a shell), in order; the
//! # first step that fails ends the action.
//! timeout_secs = 600       # whole action (default 60, at most 3600)
//! user = "postgres"        # optional: run as this user
//!
//! [[action.run]]
//! argv = ["/usr/bin/vacuumdb", "--analyze", ["--jobs", "{jobs}"], "--", "{database}"]
//! ok_exit = [0]            # default
//! ```
//!
//! In an argv template, an element that is exactly `{NAME}` becomes the
//! (validated) value of argument NAME as one whole element; nothing is ever
//! interpolated inside a string or split on spaces. A group
//! (`["--jobs", "{jobs}"]`) is left out as a whole when an optional
//! argument in it was not given (see [`RunStep`]).

use std::collections::BTreeMap;

use crate::envelope::{
    ArgValue, MAX_ENTRIES, MAX_STR, check_host_glob, clip, is_action_name, is_arg_name,
};

/// The type and validation of one argument.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ArgType {
    /// `true` / `false`.
    Bool,
    /// An integer in `min..=max`.
    Int { min: i64, max: i64 },
    /// One of the listed strings.
    Enum { values: Vec<String> },
    /// A Debian package name: `[a-z0-9][a-z0-9+.-]+`, 2..=128 bytes.
    PackageName,
    /// A systemd unit name: `[A-Za-z0-9:_.@-]`, 1..=255 bytes, not starting
    /// with `-` or `.`.
    ServiceName,
    /// A Debian version: `[epoch:]upstream[-revision]`, `[A-Za-z0-9.+~:-]`,
    /// starting with a digit, 1..=128 bytes.
    Version,
    /// An identifier (HAProxy backend/server, database...):
    /// `[A-Za-z0-9_.:-]`, 1..=64 bytes, not starting with `-`.
    Identifier,
    /// An environment name: `[a-z][a-z0-9_]*`, 1..=64 bytes.
    Environment,
    /// A host-name glob (`web-*.dc1`).
    HostGlob,
    /// Free text without control characters, at most `max_len` characters
    /// (and at most the envelope's string limit). Never given to a shell.
    Text { max_len: usize },
    /// An `http://` URL on this host only (`127.x.x.x`, `localhost` or
    /// `[::1]`, optional port, path): what a health check may fetch. A
    /// signed command can never make an agent reach another host.
    LocalUrl,
}

impl ArgType {
    /// Checks a value against this type.
    pub fn check(&self, value: &ArgValue) -> Result<(), String> {
        match (self, value) {
            (ArgType::Bool, ArgValue::Bool(_)) => Ok(()),
            (ArgType::Int { min, max }, ArgValue::Int(i)) => {
                if (*min..=*max).contains(i) {
                    Ok(())
                } else {
                    Err(format!("{i} is outside {min}..={max}"))
                }
            }
            (ArgType::Enum { values }, ArgValue::Str(s)) => {
                if values.iter().any(|v| v == s) {
                    Ok(())
                } else {
                    Err(format!("{:?} is not one of {}", clip(s), values.join(", ")))
                }
            }
            (ArgType::PackageName, ArgValue::Str(s)) => check_package_name(s),
            (ArgType::ServiceName, ArgValue::Str(s)) => check_service_name(s),
            (ArgType::Version, ArgValue::Str(s)) => check_version(s),
            (ArgType::Identifier, ArgValue::Str(s)) => check_identifier(s),
            (ArgType::Environment, ArgValue::Str(s)) => check_environment(s),
            (ArgType::HostGlob, ArgValue::Str(s)) => check_host_glob(s),
            (ArgType::LocalUrl, ArgValue::Str(s)) => check_local_url(s),
            (ArgType::Text { max_len }, ArgValue::Str(s)) => {
                let n = s.chars().count();
                if n > *max_len || s.len() > MAX_STR {
                    Err(format!("text of {n} characters is longer than {max_len}"))
                } else if let Some(c) = s.chars().find(|c| c.is_control()) {
                    Err(format!("control character {c:?} is not allowed in text"))
                } else {
                    Ok(())
                }
            }
            (t, v) => Err(format!("expected {}, got {}", t.kind(), value_kind(v))),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ArgType::Bool => "a bool",
            ArgType::Int { .. } => "an integer",
            ArgType::Enum { .. } => "one of a list of strings",
            ArgType::PackageName => "a package name",
            ArgType::ServiceName => "a service name",
            ArgType::Version => "a version string",
            ArgType::Identifier => "an identifier",
            ArgType::Environment => "an environment name",
            ArgType::HostGlob => "a host glob",
            ArgType::Text { .. } => "text",
            ArgType::LocalUrl => "a local http:// URL",
        }
    }

    /// Checks the declaration itself (a module could declare nonsense).
    fn validate_decl(&self) -> Result<(), String> {
        match self {
            ArgType::Int { min, max } if min > max => {
                Err(format!("int range {min}..={max} is empty"))
            }
            ArgType::Enum { values } => {
                if values.is_empty() || values.len() > 64 {
                    return Err("enum needs 1..=64 values".into());
                }
                for v in values {
                    check_identifier(v).map_err(|e| format!("enum value: {e}"))?;
                }
                Ok(())
            }
            ArgType::Text { max_len } if *max_len == 0 || *max_len > MAX_STR => {
                Err(format!("text max_len must be 1..={MAX_STR}"))
            }
            _ => Ok(()),
        }
    }
}

fn value_kind(v: &ArgValue) -> &'static str {
    match v {
        ArgValue::Bool(_) => "a bool",
        ArgValue::Int(_) => "an integer",
        ArgValue::Str(_) => "a string",
    }
}

fn bad_chars(s: &str, what: &str, ok: impl Fn(char) -> bool) -> Result<(), String> {
    match s.chars().find(|c| !ok(*c)) {
        Some(c) => Err(format!(
            "character {c:?} is not allowed in {what} {:?}",
            clip(s)
        )),
        None => Ok(()),
    }
}

/// Debian policy package name.
pub fn check_package_name(s: &str) -> Result<(), String> {
    if s.len() < 2 || s.len() > 128 {
        return Err(format!(
            "package name {:?} must be 2..=128 characters",
            clip(s)
        ));
    }
    bad_chars(s, "package name", |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c)
    })?;
    if !s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err(format!(
            "package name {:?} must start with a letter or digit",
            clip(s)
        ));
    }
    Ok(())
}

/// systemd unit name.
pub fn check_service_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 255 {
        return Err("service name must be 1..=255 characters".into());
    }
    bad_chars(s, "service name", |c| {
        c.is_ascii_alphanumeric() || ":_.@-".contains(c)
    })?;
    if s.starts_with(['-', '.']) {
        return Err(format!(
            "service name {:?} must not start with '-' or '.'",
            clip(s)
        ));
    }
    Ok(())
}

/// Debian version string.
pub fn check_version(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 128 {
        return Err("version must be 1..=128 characters".into());
    }
    bad_chars(s, "version", |c| {
        c.is_ascii_alphanumeric() || ".+~:-".contains(c)
    })?;
    if !s.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("version {:?} must start with a digit", clip(s)));
    }
    Ok(())
}

/// Identifier (HAProxy backend/server names, databases, enum values).
pub fn check_identifier(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err("identifier must be 1..=64 characters".into());
    }
    bad_chars(s, "identifier", |c| {
        c.is_ascii_alphanumeric() || "_.:-".contains(c)
    })?;
    if s.starts_with('-') {
        return Err(format!("identifier {:?} must not start with '-'", clip(s)));
    }
    Ok(())
}

/// A health-check URL: `http://HOST[:PORT][/PATH]` where HOST is
/// `localhost`, `[::1]` or an address in 127.0.0.0/8; at most 2048 bytes of
/// visible ASCII without quotes, backslashes or angle brackets.
pub fn check_local_url(s: &str) -> Result<(), String> {
    if s.len() > 2048 {
        return Err("URL longer than 2048 characters".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !c.is_ascii_graphic() || "\"'`<>\\{}|^".contains(*c))
    {
        return Err(format!("character {c:?} is not allowed in the URL"));
    }
    let rest = s.strip_prefix("http://").ok_or_else(|| {
        format!(
            "{:?} must start with http:// (health checks fetch this host's own endpoints)",
            clip(s)
        )
    })?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') {
        return Err(format!("{:?}: user information is not allowed", clip(s)));
    }
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let (h, after) = h
            .split_once(']')
            .ok_or_else(|| format!("{:?}: unclosed '['", clip(s)))?;
        (format!("[{h}]"), after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let local = host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback());
    if !local {
        return Err(format!(
            "{:?}: host must be localhost, [::1] or 127.x.x.x (health checks stay on the host)",
            clip(&host)
        ));
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err(format!("{:?}: invalid port", clip(p))),
        }
    }
    if !(path.is_empty() || path.starts_with('/')) {
        return Err(format!("{:?}: the path must start with '/'", clip(s)));
    }
    Ok(())
}

/// Environment name.
pub fn check_environment(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err("environment name must be 1..=64 characters".into());
    }
    bad_chars(s, "environment name", |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
    })?;
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "environment name {:?} must start with a letter",
            clip(s)
        ));
    }
    Ok(())
}

/// One declared argument. In TOML the type's parameters sit next to
/// `type` (`type = "int"`, `min = 1`, `max = 8`); a parameter that does not
/// belong to the type, or any unknown field, is refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "ArgSpecRaw")]
pub struct ArgSpec {
    pub name: String,
    #[serde(flatten)]
    pub ty: ArgType,
    #[serde(default)]
    pub required: bool,
    /// Redacted in audit logs.
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub description: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ArgSpecRaw {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
    #[serde(default)]
    description: String,
    min: Option<i64>,
    max: Option<i64>,
    values: Option<Vec<String>>,
    max_len: Option<usize>,
}

impl TryFrom<ArgSpecRaw> for ArgSpec {
    type Error = String;
    fn try_from(r: ArgSpecRaw) -> Result<Self, String> {
        let extra = |allowed: &[&str]| -> Result<(), String> {
            let given = [
                ("min", r.min.is_some()),
                ("max", r.max.is_some()),
                ("values", r.values.is_some()),
                ("max_len", r.max_len.is_some()),
            ];
            match given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
                Some((k, _)) => Err(format!(
                    "argument {}: `{k}` does not apply to type {}",
                    r.name, r.ty
                )),
                None => Ok(()),
            }
        };
        let need = |k: &str| format!("argument {}: type {} needs `{k}`", r.name, r.ty);
        let ty = match r.ty.as_str() {
            "int" => {
                extra(&["min", "max"])?;
                ArgType::Int {
                    min: r.min.ok_or_else(|| need("min"))?,
                    max: r.max.ok_or_else(|| need("max"))?,
                }
            }
            "enum" => {
                extra(&["values"])?;
                ArgType::Enum {
                    values: r.values.clone().ok_or_else(|| need("values"))?,
                }
            }
            "text" => {
                extra(&["max_len"])?;
                ArgType::Text {
                    max_len: r.max_len.ok_or_else(|| need("max_len"))?,
                }
            }
            other => {
                extra(&[])?;
                match other {
                    "bool" => ArgType::Bool,
                    "package_name" => ArgType::PackageName,
                    "service_name" => ArgType::ServiceName,
                    "version" => ArgType::Version,
                    "identifier" => ArgType::Identifier,
                    "environment" => ArgType::Environment,
                    "host_glob" => ArgType::HostGlob,
                    "local_url" => ArgType::LocalUrl,
                    _ => {
                        return Err(format!(
                            "argument {}: unknown type {:?} (bool, int, enum, text, package_name, service_name, version, identifier, environment, host_glob, local_url)",
                            r.name,
                            clip(other)
                        ));
                    }
                }
            }
        };
        Ok(ArgSpec {
            name: r.name,
            ty,
            required: r.required,
            secret: r.secret,
            description: r.description,
        })
    }
}

/// One declared action.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, rename = "arg")]
    pub args: Vec<ArgSpec>,
    /// Module actions: the programs the agent runs, in order (argv
    /// templates, see [`RunStep`]); the first failing step ends the action.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run: Vec<RunStep>,
    /// Module actions: the longest the whole action may take, seconds
    /// (default [`DEFAULT_ACTION_TIMEOUT_SECS`], at most
    /// [`MAX_ACTION_TIMEOUT_SECS`]); then its processes are killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
    /// Module actions: run the programs as this user (and its primary
    /// group, no supplementary groups) instead of the agent's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Default timeout of a module action, seconds.
pub const DEFAULT_ACTION_TIMEOUT_SECS: u32 = 60;
/// Longest timeout of a module action, seconds.
pub const MAX_ACTION_TIMEOUT_SECS: u32 = 3600;
/// Most steps in one module action.
pub const MAX_RUN_STEPS: usize = 8;
/// Most elements in one argv template.
pub const MAX_ARGV: usize = 64;

/// One program a module action runs: an argv template, never a shell.
///
/// `argv[0]` is an absolute path. Every other element is either literal
/// text (no `{` or `}`) or exactly `{NAME}`, replaced by argument NAME's
/// value as one whole argv element (bool: `true`/`false`, int: decimal);
/// an element naming an optional argument that was not given is left out.
/// An element may also be a group, a list of such elements
/// (`["--jobs", "{jobs}"]`), left out as a whole when any argument it
/// names was not given. A value starting with `-` is refused unless a
/// literal `--` comes earlier in the argv (so a value can never become an
/// option).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunStep {
    pub argv: Vec<ArgvElem>,
    /// Exit codes that count as success (default `[0]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok_exit: Option<Vec<i32>>,
}

/// One element of an argv template: a string, or a group of strings kept
/// or left out together.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum ArgvElem {
    One(String),
    Group(Vec<String>),
}

impl ArgvElem {
    fn parts(&self) -> &[String] {
        match self {
            ArgvElem::One(s) => std::slice::from_ref(s),
            ArgvElem::Group(g) => g,
        }
    }
}

impl RunStep {
    /// Whether `code` counts as success.
    pub fn is_ok(&self, code: i32) -> bool {
        match &self.ok_exit {
            Some(codes) => codes.contains(&code),
            None => code == 0,
        }
    }
}

/// The argument name of a `{NAME}` element.
fn placeholder(elem: &str) -> Option<&str> {
    elem.strip_prefix('{')?.strip_suffix('}')
}

/// A module's action declarations (TOML: `[[action]]` tables).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleActions {
    #[serde(default, rename = "action")]
    pub actions: Vec<ActionSpec>,
}

/// Why an action's arguments are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("missing required argument {0}")]
    Missing(String),
    #[error("unknown argument {0}")]
    Unknown(String),
    #[error("argument {name}: {reason}")]
    Invalid { name: String, reason: String },
}

/// Why a module declaration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot parse action declarations: {0}")]
    Parse(String),
    #[error("action {0:?}: invalid name (lowercase `module.action`, `[a-z][a-z0-9_]*` segments)")]
    BadActionName(String),
    #[error("action {action}: must be namespaced under its module ({module}.)")]
    NotNamespaced { action: String, module: String },
    #[error("action {0} is already defined")]
    Duplicate(String),
    #[error("action {action}: argument {arg:?}: {reason}")]
    BadArg {
        action: String,
        arg: String,
        reason: String,
    },
    #[error("action {action}: run: {reason}")]
    BadRun { action: String, reason: String },
}

impl ActionSpec {
    /// Checks `args` against this action's schema: every argument known, of
    /// the declared type and valid; every required one present.
    pub fn check_args(&self, args: &BTreeMap<String, ArgValue>) -> Result<(), ArgError> {
        for (name, value) in args {
            let spec = self
                .args
                .iter()
                .find(|a| &a.name == name)
                .ok_or_else(|| ArgError::Unknown(clip(name)))?;
            spec.ty.check(value).map_err(|reason| ArgError::Invalid {
                name: name.clone(),
                reason,
            })?;
        }
        if let Some(missing) = self
            .args
            .iter()
            .find(|a| a.required && !args.contains_key(&a.name))
        {
            return Err(ArgError::Missing(missing.name.clone()));
        }
        Ok(())
    }

    /// Parses command-line arguments `NAME=VALUE` by this action's schema
    /// (bool: `true`/`false`; int: decimal; everything else: text), then
    /// checks them like [`ActionSpec::check_args`].
    pub fn parse_cli_args(&self, raw: &[String]) -> Result<BTreeMap<String, ArgValue>, ArgError> {
        let mut out = BTreeMap::new();
        for item in raw {
            let (name, text) = item.split_once('=').ok_or_else(|| ArgError::Invalid {
                name: clip(item),
                reason: "expected NAME=VALUE".into(),
            })?;
            let spec = self
                .args
                .iter()
                .find(|a| a.name == name)
                .ok_or_else(|| ArgError::Unknown(clip(name)))?;
            let bad = |reason: String| ArgError::Invalid {
                name: name.to_string(),
                reason,
            };
            let value = match spec.ty {
                ArgType::Bool => match text {
                    "true" => ArgValue::Bool(true),
                    "false" => ArgValue::Bool(false),
                    _ => return Err(bad(format!("{:?} is not true or false", clip(text)))),
                },
                ArgType::Int { .. } => ArgValue::Int(
                    text.parse()
                        .map_err(|_| bad(format!("{:?} is not an integer", clip(text))))?,
                ),
                _ => ArgValue::Str(text.to_string()),
            };
            if out.insert(name.to_string(), value).is_some() {
                return Err(bad("given twice".into()));
            }
        }
        self.check_args(&out)?;
        Ok(out)
    }

    /// The arguments with values of `secret` arguments replaced by
    /// `"<redacted>"` (for audit logs). Unknown arguments are redacted too.
    pub fn redact(&self, args: &BTreeMap<String, ArgValue>) -> BTreeMap<String, ArgValue> {
        args.iter()
            .map(|(k, v)| {
                let secret = self
                    .args
                    .iter()
                    .find(|a| &a.name == k)
                    .is_none_or(|a| a.secret);
                (
                    k.clone(),
                    if secret {
                        ArgValue::Str(REDACTED.into())
                    } else {
                        v.clone()
                    },
                )
            })
            .collect()
    }

    /// The argv of step `step` with `args` substituted (see [`RunStep`]).
    /// `args` must already have passed [`ActionSpec::check_args`]; this
    /// checks them again, so an unchecked value can never reach a program.
    pub fn argv(
        &self,
        step: usize,
        args: &BTreeMap<String, ArgValue>,
    ) -> Result<Vec<String>, ArgError> {
        self.check_args(args)?;
        let Some(st) = self.run.get(step) else {
            return Err(ArgError::Invalid {
                name: String::new(),
                reason: format!("action {} has no step {step}", self.name),
            });
        };
        let mut out = Vec::with_capacity(st.argv.len());
        let mut after_dashdash = false;
        for (i, elem) in st.argv.iter().enumerate() {
            let parts = elem.parts();
            // Left out when an argument it names was not given.
            let absent = parts
                .iter()
                .filter_map(|p| placeholder(p))
                .any(|name| !args.contains_key(name));
            if absent && i > 0 {
                continue;
            }
            for part in parts {
                let Some(name) = placeholder(part).filter(|_| i > 0) else {
                    if part == "--" {
                        after_dashdash = true;
                    }
                    out.push(part.clone());
                    continue;
                };
                let text = match args.get(name) {
                    Some(ArgValue::Bool(b)) => b.to_string(),
                    Some(ArgValue::Int(n)) => n.to_string(),
                    Some(ArgValue::Str(s)) => s.clone(),
                    None => continue,
                };
                if text.starts_with('-') && !after_dashdash {
                    return Err(ArgError::Invalid {
                        name: name.to_string(),
                        reason: format!(
                            "{:?} starts with '-' and would be read as an option",
                            clip(&text)
                        ),
                    });
                }
                out.push(text);
            }
        }
        Ok(out)
    }

    fn validate_decl(&self) -> Result<(), RegistryError> {
        if !is_action_name(&self.name) {
            return Err(RegistryError::BadActionName(clip(&self.name)));
        }
        let bad_run = |reason: String| RegistryError::BadRun {
            action: self.name.clone(),
            reason,
        };
        if self.run.len() > MAX_RUN_STEPS {
            return Err(bad_run(format!("more than {MAX_RUN_STEPS} steps")));
        }
        if self.run.is_empty() && (self.timeout_secs.is_some() || self.user.is_some()) {
            return Err(bad_run(
                "`timeout_secs` and `user` need `[[action.run]]` steps".into(),
            ));
        }
        if let Some(t) = self.timeout_secs
            && !(1..=MAX_ACTION_TIMEOUT_SECS).contains(&t)
        {
            return Err(bad_run(format!(
                "timeout_secs must be 1..={MAX_ACTION_TIMEOUT_SECS}"
            )));
        }
        if let Some(u) = &self.user {
            let ok = !u.is_empty()
                && u.len() <= 32
                && u.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && u.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c));
            if !ok {
                return Err(bad_run(format!(
                    "user {:?} is not a valid user name",
                    clip(u)
                )));
            }
        }
        for (n, st) in self.run.iter().enumerate() {
            let at = |r: String| bad_run(format!("step {}: {r}", n + 1));
            let Some(prog) = st.argv.first() else {
                return Err(at("argv is empty".into()));
            };
            let ArgvElem::One(prog) = prog else {
                return Err(at("argv[0] must be a program path, not a group".into()));
            };
            let count: usize = st.argv.iter().map(|e| e.parts().len()).sum();
            if count > MAX_ARGV {
                return Err(at(format!("more than {MAX_ARGV} argv elements")));
            }
            if !prog.starts_with('/') || prog.contains(['{', '}']) || prog.contains("/../") {
                return Err(at(format!(
                    "argv[0] {:?} must be an absolute path (no placeholders, no '..')",
                    clip(prog)
                )));
            }
            for e in &st.argv[1..] {
                if let ArgvElem::Group(g) = e
                    && g.is_empty()
                {
                    return Err(at("an argv group must not be empty".into()));
                }
                for part in e.parts() {
                    if part.len() > MAX_STR || part.chars().any(char::is_control) {
                        return Err(at(
                            "argv elements must be short and free of control characters".into(),
                        ));
                    }
                    match placeholder(part) {
                        Some(name) if !self.args.iter().any(|a| a.name == name) => {
                            return Err(at(format!(
                                "{{{}}} names no declared argument",
                                clip(name)
                            )));
                        }
                        Some(_) => {}
                        None if part.contains(['{', '}']) => {
                            return Err(at(format!(
                                "{:?}: a placeholder must be a whole element, `{{NAME}}`; literal text may not contain braces",
                                clip(part)
                            )));
                        }
                        None => {}
                    }
                }
            }
            if let Some(codes) = &st.ok_exit
                && (codes.is_empty()
                    || codes.len() > 16
                    || codes.iter().any(|c| !(0..=255).contains(c)))
            {
                return Err(at("ok_exit must list 1..=16 exit codes in 0..=255".into()));
            }
        }
        if self.args.len() > MAX_ENTRIES {
            return Err(RegistryError::BadArg {
                action: self.name.clone(),
                arg: String::new(),
                reason: format!("more than {MAX_ENTRIES} arguments"),
            });
        }
        for (i, a) in self.args.iter().enumerate() {
            let bad = |reason: String| RegistryError::BadArg {
                action: self.name.clone(),
                arg: clip(&a.name),
                reason,
            };
            if !is_arg_name(&a.name) {
                return Err(bad("invalid argument name (`[a-z][a-z0-9_]*`)".into()));
            }
            if self.args[..i].iter().any(|b| b.name == a.name) {
                return Err(bad("declared twice".into()));
            }
            a.ty.validate_decl().map_err(bad)?;
        }
        Ok(())
    }
}

/// Placeholder for redacted values.
pub const REDACTED: &str = "<redacted>";

/// The set of actions that exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    actions: BTreeMap<String, ActionSpec>,
}

fn arg(name: &str, ty: ArgType, required: bool, description: &str) -> ArgSpec {
    ArgSpec {
        name: name.into(),
        ty,
        required,
        secret: false,
        description: description.into(),
    }
}

fn action(name: &str, description: &str, args: Vec<ArgSpec>) -> ActionSpec {
    ActionSpec {
        name: name.into(),
        description: description.into(),
        args,
        run: Vec::new(),
        timeout_secs: None,
        user: None,
    }
}

impl Registry {
    /// An empty registry (nothing is allowed to run).
    pub fn empty() -> Self {
        Self {
            actions: BTreeMap::new(),
        }
    }

    /// The built-in actions.
    pub fn builtin() -> Self {
        let pkg = || arg("name", ArgType::PackageName, true, "package name");
        // Without a version, install leaves an installed package alone and
        // installs the repository's candidate otherwise; update moves an
        // installed package to the candidate (it never installs one).
        let ver = |help| arg("version", ArgType::Version, false, help);
        let svc = || arg("name", ArgType::ServiceName, true, "systemd unit name");
        let msg = |req| {
            arg(
                "message",
                ArgType::Text { max_len: 256 },
                req,
                "why (shown to operators)",
            )
        };
        let backend = || arg("backend", ArgType::Identifier, true, "HAProxy backend name");
        let server = || {
            arg(
                "server",
                ArgType::Identifier,
                false,
                "HAProxy server name (default: this host)",
            )
        };
        let list = vec![
            action("ping", "answer with pong", vec![]),
            action("facts", "report this host's facts", vec![]),
            action(
                "agent.run",
                "run the agent now",
                vec![
                    arg(
                        "noop",
                        ArgType::Bool,
                        false,
                        "only report what would change",
                    ),
                    arg(
                        "environment",
                        ArgType::Environment,
                        false,
                        "catalog environment",
                    ),
                ],
            ),
            action("agent.disable", "disable agent runs", vec![msg(true)]),
            action("agent.enable", "enable agent runs", vec![]),
            action(
                "package.status",
                "installed version of a package",
                vec![pkg()],
            ),
            action(
                "package.install",
                "install a package",
                vec![
                    pkg(),
                    ver(
                        "exact version (default: the repository's candidate; an installed package is left alone)",
                    ),
                ],
            ),
            action(
                "package.update",
                "update a package",
                vec![
                    pkg(),
                    ver(
                        "exact version (default: the repository's candidate; a missing package is not installed)",
                    ),
                ],
            ),
            action("service.status", "state of a service", vec![svc()]),
            action("service.start", "start a service", vec![svc()]),
            action("service.stop", "stop a service", vec![svc()]),
            action("service.restart", "restart a service", vec![svc()]),
            action(
                "lb.drain",
                "drain this host in an HAProxy backend",
                vec![backend(), server()],
            ),
            action(
                "lb.restore",
                "put this host back in an HAProxy backend",
                vec![backend(), server()],
            ),
            action(
                "maintenance.on",
                "enter maintenance mode (reported to monitoring)",
                vec![msg(true)],
            ),
            action("maintenance.off", "leave maintenance mode", vec![]),
            action(
                "health.http",
                "GET a URL on this host and expect a status",
                vec![
                    arg("url", ArgType::LocalUrl, true, "http://127.0.0.1:PORT/PATH"),
                    arg(
                        "expect_status",
                        ArgType::Int { min: 100, max: 599 },
                        false,
                        "expected HTTP status (default 200)",
                    ),
                    arg(
                        "timeout_secs",
                        ArgType::Int { min: 1, max: 300 },
                        false,
                        "per attempt (default 5)",
                    ),
                ],
            ),
            action(
                "health.tcp",
                "connect to a TCP port on this host",
                vec![
                    arg(
                        "port",
                        ArgType::Int { min: 1, max: 65535 },
                        true,
                        "port on 127.0.0.1",
                    ),
                    arg(
                        "timeout_secs",
                        ArgType::Int { min: 1, max: 300 },
                        false,
                        "per attempt (default 5)",
                    ),
                ],
            ),
        ];
        Self {
            actions: list.into_iter().map(|a| (a.name.clone(), a)).collect(),
        }
    }

    /// Adds the actions a module declares (TOML text). Each must be named
    /// `MODULE.something` and must not exist already. All or nothing: on
    /// error the registry is unchanged.
    pub fn add_module_toml(&mut self, module: &str, toml_text: &str) -> Result<(), RegistryError> {
        let decl: ModuleActions =
            toml::from_str(toml_text).map_err(|e| RegistryError::Parse(e.to_string()))?;
        self.add_module(module, decl)
    }

    /// Adds parsed module declarations (see [`Registry::add_module_toml`]).
    pub fn add_module(&mut self, module: &str, decl: ModuleActions) -> Result<(), RegistryError> {
        let mut staged = BTreeMap::new();
        for a in decl.actions {
            a.validate_decl()?;
            if !a
                .name
                .strip_prefix(module)
                .is_some_and(|rest| rest.starts_with('.'))
            {
                return Err(RegistryError::NotNamespaced {
                    action: a.name,
                    module: module.into(),
                });
            }
            if self.actions.contains_key(&a.name) || staged.contains_key(&a.name) {
                return Err(RegistryError::Duplicate(a.name));
            }
            staged.insert(a.name.clone(), a);
        }
        self.actions.extend(staged);
        Ok(())
    }

    /// The declaration of an action, if it exists.
    pub fn get(&self, name: &str) -> Option<&ActionSpec> {
        self.actions.get(name)
    }

    /// All actions, by name.
    pub fn actions(&self) -> impl Iterator<Item = &ActionSpec> {
        self.actions.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> ArgValue {
        ArgValue::Str(v.into())
    }

    fn args(list: &[(&str, ArgValue)]) -> BTreeMap<String, ArgValue> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn builtins_exist() {
        let r = Registry::builtin();
        for name in [
            "ping",
            "facts",
            "agent.run",
            "agent.disable",
            "agent.enable",
            "package.status",
            "package.install",
            "package.update",
            "service.status",
            "service.start",
            "service.stop",
            "service.restart",
            "lb.drain",
            "lb.restore",
            "maintenance.on",
            "maintenance.off",
            "health.http",
            "health.tcp",
        ] {
            assert!(r.get(name).is_some(), "{name}");
        }
        assert!(r.get("shell.exec").is_none());
        assert_eq!(r.actions().count(), 18);
    }

    #[test]
    fn injection_is_refused() {
        let r = Registry::builtin();
        let inst = r.get("package.install").unwrap();
        assert_eq!(inst.check_args(&args(&[("name", s("nginx"))])), Ok(()));
        assert_eq!(
            inst.check_args(&args(&[
                ("name", s("nginx")),
                ("version", s("1:1.24.0-2+deb12u1~bpo"))
            ])),
            Ok(())
        );
        for evil in [
            "nginx; rm -rf /",
            "nginx && reboot",
            "$(reboot)",
            "`id`",
            "nginx\n",
            "-nginx",
            "../etc",
            "Nginx",
            "n",
        ] {
            assert!(
                matches!(
                    inst.check_args(&args(&[("name", s(evil))])),
                    Err(ArgError::Invalid { .. })
                ),
                "{evil:?}"
            );
        }
        assert!(matches!(
            inst.check_args(&args(&[
                ("name", s("nginx")),
                ("version", s("1.0; reboot"))
            ])),
            Err(ArgError::Invalid { .. })
        ));
        let svc = r.get("service.restart").unwrap();
        assert_eq!(
            svc.check_args(&args(&[("name", s("nginx.service"))])),
            Ok(())
        );
        assert_eq!(
            svc.check_args(&args(&[("name", s("getty@tty1.service"))])),
            Ok(())
        );
        for evil in ["nginx|sh", "--now", "a b", "x/y", ".hidden"] {
            assert!(
                svc.check_args(&args(&[("name", s(evil))])).is_err(),
                "{evil:?}"
            );
        }
    }

    #[test]
    fn types_missing_and_unknown() {
        let r = Registry::builtin();
        let run = r.get("agent.run").unwrap();
        assert_eq!(run.check_args(&args(&[])), Ok(()));
        assert_eq!(
            run.check_args(&args(&[
                ("noop", ArgValue::Bool(true)),
                ("environment", s("production"))
            ])),
            Ok(())
        );
        assert!(matches!(
            run.check_args(&args(&[("noop", s("true"))])),
            Err(ArgError::Invalid { .. })
        ));
        assert!(matches!(
            run.check_args(&args(&[("noop", ArgValue::Int(1))])),
            Err(ArgError::Invalid { .. })
        ));
        assert!(matches!(
            run.check_args(&args(&[("environment", s("Prod-1"))])),
            Err(ArgError::Invalid { .. })
        ));
        assert_eq!(
            run.check_args(&args(&[("force", ArgValue::Bool(true))])),
            Err(ArgError::Unknown("force".into()))
        );
        let dis = r.get("agent.disable").unwrap();
        assert_eq!(
            dis.check_args(&args(&[])),
            Err(ArgError::Missing("message".into()))
        );
        assert_eq!(
            dis.check_args(&args(&[("message", s("kernel upgrade; back at 10:00"))])),
            Ok(())
        );
        assert!(
            dis.check_args(&args(&[("message", s(&"x".repeat(257)))]))
                .is_err()
        );
        assert!(
            dis.check_args(&args(&[("message", s("line\nbreak"))]))
                .is_err()
        );
        let drain = r.get("lb.drain").unwrap();
        assert_eq!(
            drain.check_args(&args(&[("backend", s("be_web")), ("server", s("web-01"))])),
            Ok(())
        );
        assert!(
            drain
                .check_args(&args(&[("backend", s("be web"))]))
                .is_err()
        );
        assert_eq!(
            drain.check_args(&args(&[])),
            Err(ArgError::Missing("backend".into()))
        );
    }

    #[test]
    fn cli_args_are_typed_by_the_schema() {
        let r = Registry::builtin();
        let run = r.get("agent.run").unwrap();
        let a = run
            .parse_cli_args(&["noop=true".into(), "environment=dr".into()])
            .unwrap();
        assert_eq!(a["noop"], ArgValue::Bool(true));
        assert_eq!(a["environment"], s("dr"));
        assert!(run.parse_cli_args(&["noop=yes".into()]).is_err());
        assert!(run.parse_cli_args(&["noop".into()]).is_err());
        assert!(
            run.parse_cli_args(&["noop=true".into(), "noop=false".into()])
                .is_err()
        );
        assert!(matches!(
            run.parse_cli_args(&["force=true".into()]),
            Err(ArgError::Unknown(_))
        ));
        let inst = r.get("package.install").unwrap();
        assert!(matches!(
            inst.parse_cli_args(&["name=nginx; rm -rf /".into()]),
            Err(ArgError::Invalid { .. })
        ));
        assert_eq!(
            inst.parse_cli_args(&["name=nginx".into()]).unwrap()["name"],
            s("nginx")
        );
    }

    #[test]
    fn int_enum_text_glob() {
        let int = ArgType::Int { min: 1, max: 10 };
        assert!(int.check(&ArgValue::Int(1)).is_ok());
        assert!(int.check(&ArgValue::Int(10)).is_ok());
        assert!(int.check(&ArgValue::Int(0)).is_err());
        assert!(int.check(&ArgValue::Int(11)).is_err());
        let en = ArgType::Enum {
            values: vec!["fast".into(), "safe".into()],
        };
        assert!(en.check(&s("safe")).is_ok());
        assert!(en.check(&s("unsafe")).is_err());
        let t = ArgType::Text { max_len: 3 };
        assert!(t.check(&s("héé")).is_ok());
        assert!(t.check(&s("four")).is_err());
        assert!(ArgType::HostGlob.check(&s("web-[0-9]*.dc1")).is_ok());
        assert!(ArgType::HostGlob.check(&s("web;*")).is_err());
        assert!(ArgType::HostGlob.check(&s("web-[")).is_err());
    }

    #[test]
    fn module_actions_from_toml() {
        let mut r = Registry::builtin();
        let decl = r#"
            [[action]]
            name = "postgres.vacuum"
            description = "VACUUM ANALYZE"
            [[action.arg]]
            name = "database"
            type = "identifier"
            required = true
            [[action.arg]]
            name = "jobs"
            type = "int"
            min = 1
            max = 8
            [[action.arg]]
            name = "token"
            type = "text"
            max_len = 64
            secret = true
        "#;
        r.add_module_toml("postgres", decl).unwrap();
        let v = r.get("postgres.vacuum").unwrap();
        assert_eq!(
            v.check_args(&args(&[("database", s("app")), ("jobs", ArgValue::Int(4))])),
            Ok(())
        );
        assert!(
            v.check_args(&args(&[("database", s("app")), ("jobs", ArgValue::Int(9))]))
                .is_err()
        );
        let red = v.redact(&args(&[("database", s("app")), ("token", s("hunter2"))]));
        assert_eq!(red["token"], s(REDACTED));
        assert_eq!(red["database"], s("app"));
        // Same declaration again: duplicate; registry unchanged.
        let before = r.clone();
        assert!(matches!(
            r.add_module_toml("postgres", decl),
            Err(RegistryError::Duplicate(_))
        ));
        assert_eq!(r, before);
    }

    fn vacuum() -> ActionSpec {
        let mut r = Registry::empty();
        r.add_module_toml(
            "pg",
            r#"
            [[action]]
            name = "pg.vacuum"
            timeout_secs = 30
            user = "postgres"
            [[action.arg]]
            name = "database"
            type = "identifier"
            required = true
            [[action.arg]]
            name = "jobs"
            type = "int"
            min = -3
            max = 8
            [[action.arg]]
            name = "note"
            type = "text"
            max_len = 64
            [[action.run]]
            argv = ["/usr/bin/vacuumdb", ["--jobs", "{jobs}"], "{note}", "--", "{database}"]
            [[action.run]]
            argv = ["/bin/true"]
            ok_exit = [0, 1]
            "#,
        )
        .unwrap();
        r.get("pg.vacuum").unwrap().clone()
    }

    #[test]
    fn argv_templates_substitute_whole_elements_only() {
        let v = vacuum();
        assert_eq!(v.timeout_secs, Some(30));
        assert_eq!(v.user.as_deref(), Some("postgres"));
        assert!(v.run[1].is_ok(1) && !v.run[1].is_ok(2) && v.run[0].is_ok(0));
        let argv = v
            .argv(
                0,
                &args(&[
                    ("database", s("app")),
                    ("jobs", ArgValue::Int(4)),
                    ("note", s("a b; rm -rf /")),
                ]),
            )
            .unwrap();
        // Spaces and shell syntax stay inside one element.
        assert_eq!(
            argv,
            [
                "/usr/bin/vacuumdb",
                "--jobs",
                "4",
                "a b; rm -rf /",
                "--",
                "app"
            ]
        );
        // Optional arguments that are absent leave their element (or
        // their whole group) out.
        assert_eq!(
            v.argv(0, &args(&[("database", s("app"))])).unwrap(),
            ["/usr/bin/vacuumdb", "--", "app"]
        );
        // A value that would be read as an option is refused before `--`.
        for (k, val) in [
            ("note", s("--config=/tmp/evil")),
            ("jobs", ArgValue::Int(-1)),
        ] {
            assert!(
                matches!(
                    v.argv(0, &args(&[("database", s("app")), (k, val.clone())])),
                    Err(ArgError::Invalid { .. })
                ),
                "{k}={val}"
            );
        }
        // Unchecked values never reach an argv.
        assert!(v.argv(0, &args(&[("database", s("app; reboot"))])).is_err());
        assert!(v.argv(0, &args(&[])).is_err());
        assert!(v.argv(5, &args(&[("database", s("app"))])).is_err());
    }

    #[test]
    fn run_declaration_refusals() {
        let head =
            "[[action]]\nname = \"x.a\"\n[[action.arg]]\nname = \"n\"\ntype = \"identifier\"\n";
        let cases = [
            "[[action.run]]\nargv = []\n",
            "[[action.run]]\nargv = [\"sh\", \"-c\", \"x\"]\n",
            "[[action.run]]\nargv = [\"/bin/{n}\"]\n",
            "[[action.run]]\nargv = [\"/bin/echo\", \"{m}\"]\n",
            "[[action.run]]\nargv = [\"/bin/echo\", \"x{n}\"]\n",
            "[[action.run]]\nargv = [\"/bin/echo\", \"--name={n}\"]\n",
            "[[action.run]]\nargv = [\"/bin/echo\"]\nok_exit = []\n",
            "[[action.run]]\nargv = [\"/bin/echo\"]\nok_exit = [300]\n",
            "[[action.run]]\nargv = [\"/bin/echo\"]\nshell = true\n",
            "[[action.run]]\nargv = [[\"/bin/echo\"]]\n",
            "[[action.run]]\nargv = [\"/bin/echo\", []]\n",
            "[[action.run]]\nargv = [\"/bin/echo\", [\"-x\", \"{m}\"]]\n",
            "[[action.run]]\nargv = [\"/bin/echo\", [\"-x\", [\"{n}\"]]]\n",
            "[[action.run]]\nargv = [\"/bin/echo\", 5]\n",
            "[[action.run]]\ncommand = \"/bin/echo {n}\"\n",
        ];
        for c in cases {
            let text = format!("{head}{c}");
            let mut r = Registry::empty();
            assert!(r.add_module_toml("x", &text).is_err(), "{text}");
        }
        for extra in [
            "timeout_secs = 0\n",
            "timeout_secs = 99999\n",
            "user = \"Root Admin\"\n",
        ] {
            let text = format!(
                "[[action]]\nname = \"x.a\"\n{extra}[[action.run]]\nargv = [\"/bin/true\"]\n"
            );
            assert!(
                Registry::empty().add_module_toml("x", &text).is_err(),
                "{text}"
            );
        }
        // `user` without steps is meaningless: refused.
        assert!(
            Registry::empty()
                .add_module_toml("x", "[[action]]\nname = \"x.a\"\nuser = \"www-data\"\n")
                .is_err()
        );
    }

    #[test]
    fn local_urls_only() {
        for ok in [
            "http://127.0.0.1/healthz",
            "http://127.0.0.1:8080/healthz?full=1",
            "http://localhost:80",
            "http://[::1]:9000/x",
            "http://127.3.4.5",
        ] {
            assert_eq!(check_local_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "https://127.0.0.1/",
            "http://10.0.0.1/",
            "http://example.com/",
            "http://127.0.0.1.evil.com/",
            "http://user@127.0.0.1/",
            "http://127.0.0.1:0/",
            "http://127.0.0.1:99999/",
            "http://127.0.0.1/a b",
            "http://127.0.0.1/\"",
            "ftp://127.0.0.1/",
            "http://[::2]/",
        ] {
            assert!(check_local_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn module_declaration_refusals() {
        let mut r = Registry::builtin();
        let cases = [
            ("[[action]]\nname = \"service.restart\"\n", "x"),
            ("[[action]]\nname = \"other.thing\"\n", "x"),
            ("[[action]]\nname = \"x.Bad\"\n", "x"),
            (
                "[[action]]\nname = \"x.a\"\n[[action.arg]]\nname = \"n\"\ntype = \"shell\"\n",
                "x",
            ),
            (
                "[[action]]\nname = \"x.a\"\n[[action.arg]]\nname = \"n\"\ntype = \"int\"\nmin = 5\nmax = 1\n",
                "x",
            ),
            (
                "[[action]]\nname = \"x.a\"\n[[action.arg]]\nname = \"n\"\ntype = \"text\"\nmax_len = 0\n",
                "x",
            ),
            (
                "[[action]]\nname = \"x.a\"\n[[action.arg]]\nname = \"n\"\ntype = \"bool\"\n[[action.arg]]\nname = \"n\"\ntype = \"bool\"\n",
                "x",
            ),
            ("[[action]]\nname = \"x.a\"\nrun = \"sh -c\"\n", "x"),
            (
                "[[action]]\nname = \"x.a\"\n[[action.arg]]\nname = \"n\"\ntype = \"enum\"\nvalues = [\"a b\"]\n",
                "x",
            ),
            ("[[action]]\nname = \"service.restart\"\n", "service"),
            (
                "[[action]]\nname = \"x.a\"\n[[action.arg]]\nname = \"n\"\ntype = \"bool\"\nmax = 3\n",
                "x",
            ),
            (
                "[[action]]\nname = \"x.a\"\n[[action.arg]]\nname = \"n\"\ntype = \"int\"\nmin = 3\n",
                "x",
            ),
            (
                "[[action]]\nname = \"x.a\"\n[[action.arg]]\nname = \"n\"\ntype = \"bool\"\nsecrte = true\n",
                "x",
            ),
        ];
        for (text, module) in cases {
            let before = r.clone();
            assert!(r.add_module_toml(module, text).is_err(), "{text}");
            assert_eq!(r, before);
        }
    }
}
