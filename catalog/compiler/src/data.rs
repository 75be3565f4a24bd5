//! The data hierarchy (like Hiera): levels declared in `hierarchy.toml`,
//! most specific first; keys are dotted paths into the TOML tables
//! (`nginx.port` is `port` in the `[nginx]` table). Lookups merge `first` or
//! `deep`, and can explain every level they looked at. Secrets are decrypted
//! here, only when a lookup returns them.

use crate::error::{Error, ErrorKind, Result};
use crate::secrets::SecretKeys;
use crate::syntax::{N, V};
use crate::tree::{EnvTree, Merge, check_relative_name, is_templated};
use serde_json::Value as J;
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// One level of the hierarchy, resolved for a node.
#[derive(Debug, Clone)]
pub struct ResolvedLevel {
    pub name: String,
    /// The data file (relative to `data/`), or why the level was skipped.
    pub path: std::result::Result<String, String>,
}

/// What a lookup found at one level (for `--explain`).
#[derive(Debug, Clone)]
pub struct LevelTrace {
    pub level: String,
    /// `data/...` path, or why the level was skipped.
    pub path: std::result::Result<String, String>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Skipped,
    NoFile,
    NotFound,
    /// Found, with its location and a rendering (secrets redacted).
    Found {
        at: String,
        value: String,
    },
}

/// A node's view of the data: the levels resolved from its facts, the keys
/// to decrypt secrets, and the plaintexts handed out (for marking resources
/// sensitive). Never `Debug`-prints a secret.
pub struct DataView {
    env: Arc<EnvTree>,
    levels: Vec<ResolvedLevel>,
    keys: SecretKeys,
    plaintexts: Mutex<Vec<Zeroizing<String>>>,
    error: Mutex<Option<Error>>,
}

impl std::fmt::Debug for DataView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataView")
            .field("environment", &self.env.name)
            .field("levels", &self.levels)
            .finish_non_exhaustive()
    }
}

impl DataView {
    pub(crate) fn new(
        env: Arc<EnvTree>,
        ctx: &minijinja::Value,
        keys: SecretKeys,
    ) -> Result<Arc<DataView>> {
        let mut levels = Vec::with_capacity(env.hierarchy.len());
        for l in &env.hierarchy {
            let path = if is_templated(&l.path) {
                match env.jinja.render_str(&l.path, ctx.clone()) {
                    Ok(p) => Ok(p),
                    Err(e) => Err(format!("skipped: {}", crate::error::jinja_message(&e))),
                }
            } else {
                Ok(l.path.clone())
            };
            if let Ok(p) = &path {
                check_relative_name(p).map_err(|why| {
                    Error::at(
                        ErrorKind::PathTraversal,
                        &l.span,
                        format!("data level `{}` resolves to a path that {why}", l.name),
                    )
                })?;
            }
            levels.push(ResolvedLevel {
                name: l.name.clone(),
                path,
            });
        }
        Ok(Arc::new(DataView {
            env,
            levels,
            keys,
            plaintexts: Mutex::new(Vec::new()),
            error: Mutex::new(None),
        }))
    }

    pub fn levels(&self) -> &[ResolvedLevel] {
        &self.levels
    }

    pub(crate) fn describe_levels(&self) -> String {
        self.levels
            .iter()
            .map(|l| match &l.path {
                Ok(p) => format!("{} (data/{p})", l.name),
                Err(_) => format!("{} (skipped)", l.name),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn find<'a>(&'a self, key: &str) -> Vec<(&'a ResolvedLevel, &'a N)> {
        let mut out = Vec::new();
        for l in &self.levels {
            let Ok(p) = &l.path else { continue };
            let Some(doc) = self.env.data.get(p) else {
                continue;
            };
            if let Some(n) = walk_key(doc, key) {
                out.push((l, n));
            }
        }
        out
    }

    /// Looks `key` up; `None` when no level has it.
    pub fn lookup(&self, key: &str, merge: Merge) -> Result<Option<J>> {
        let found = self.find(key);
        if found.is_empty() {
            return Ok(None);
        }
        match merge {
            Merge::First => self.to_value(found[0].1).map(Some),
            Merge::Deep => {
                let mut acc: Option<J> = None;
                for (_, n) in found.iter().rev() {
                    let v = self.to_value(n)?;
                    acc = Some(match acc {
                        None => v,
                        Some(base) => deep_merge(base, v),
                    });
                }
                Ok(acc)
            }
        }
    }

    /// Every level and what it holds for `key`, without decrypting.
    pub fn explain(&self, key: &str) -> Vec<LevelTrace> {
        self.levels
            .iter()
            .map(|l| {
                let outcome = match &l.path {
                    Err(_) => Outcome::Skipped,
                    Ok(p) => match self.env.data.get(p) {
                        None => Outcome::NoFile,
                        Some(doc) => match walk_key(doc, key) {
                            None => Outcome::NotFound,
                            Some(n) => Outcome::Found {
                                at: n.span.location(),
                                value: redacted(n).to_string(),
                            },
                        },
                    },
                };
                LevelTrace {
                    level: l.name.clone(),
                    path: l.path.clone().map(|p| format!("data/{p}")),
                    outcome,
                }
            })
            .collect()
    }

    /// The value without decrypting secrets (they show as `<secret>`).
    pub fn lookup_redacted(&self, key: &str, merge: Merge) -> Option<J> {
        let found = self.find(key);
        match merge {
            Merge::First => found.first().map(|(_, n)| redacted(n)),
            Merge::Deep => found
                .iter()
                .rev()
                .map(|(_, n)| redacted(n))
                .reduce(deep_merge),
        }
    }

    fn to_value(&self, n: &N) -> Result<J> {
        Ok(match &n.v {
            V::Table(t) => {
                if let (Some(s), true) = (n.get("secret"), n.get("env").is_some()) {
                    let ct = s.as_str().unwrap_or("");
                    let pt = crate::secrets::decrypt(&self.keys, &self.env.name, ct)
                        .map_err(|e| e.or_span(&n.span))?;
                    let v = J::String(pt.clone());
                    if let Ok(mut list) = self.plaintexts.lock()
                        && !pt.is_empty()
                    {
                        list.push(Zeroizing::new(pt));
                    }
                    return Ok(v);
                }
                J::Object(
                    t.iter()
                        .map(|(k, v)| Ok((k.name.clone(), self.to_value(v)?)))
                        .collect::<Result<_>>()?,
                )
            }
            V::Array(a) => J::Array(a.iter().map(|v| self.to_value(v)).collect::<Result<_>>()?),
            _ => n.to_json(),
        })
    }

    /// The decrypted secrets handed out so far.
    pub(crate) fn plaintexts(&self) -> Vec<Zeroizing<String>> {
        self.plaintexts
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    pub(crate) fn take_error(&self) -> Option<Error> {
        self.error.lock().ok().and_then(|mut e| e.take())
    }

    fn set_error(&self, e: Error) {
        if let Ok(mut slot) = self.error.lock() {
            *slot = Some(e);
        }
    }
}

fn walk_key<'a>(doc: &'a N, key: &str) -> Option<&'a N> {
    let mut cur = doc;
    for part in key.split('.') {
        cur = cur.get(part)?;
    }
    Some(cur)
}

fn redacted(n: &N) -> J {
    match &n.v {
        V::Table(t) => {
            if n.get("secret").is_some() && n.get("env").is_some() {
                return J::String("<secret>".into());
            }
            J::Object(
                t.iter()
                    .map(|(k, v)| (k.name.clone(), redacted(v)))
                    .collect(),
            )
        }
        V::Array(a) => J::Array(a.iter().map(redacted).collect()),
        _ => n.to_json(),
    }
}

/// `over` (more specific) merged onto `base`: tables key by key, arrays
/// concatenated (more specific first) without duplicates, scalars replaced.
pub fn deep_merge(base: J, over: J) -> J {
    match (base, over) {
        (J::Object(mut b), J::Object(o)) => {
            for (k, v) in o {
                let merged = match b.remove(&k) {
                    Some(old) => deep_merge(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            J::Object(b)
        }
        (J::Array(b), J::Array(o)) => {
            let mut out = o;
            for v in b {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
            J::Array(out)
        }
        (_, o) => o,
    }
}

/// The `lookup(key, default=none, merge="first")` function templates call.
#[derive(Debug)]
pub(crate) struct LookupFn(pub(crate) Arc<DataView>);

impl minijinja::value::Object for LookupFn {
    fn call(
        self: &Arc<Self>,
        _state: &mut minijinja::State<'_, '_>,
        args: &[minijinja::Value],
    ) -> std::result::Result<minijinja::Value, minijinja::Error> {
        let (key, default, merge): (String, Option<minijinja::Value>, Option<String>) =
            minijinja::value::from_args(args)?;
        let merge = match merge.as_deref() {
            None | Some("first") => Merge::First,
            Some("deep") => Merge::Deep,
            Some(other) => {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("lookup merge `{other}`: expected \"first\" or \"deep\""),
                ));
            }
        };
        match self.0.lookup(&key, merge) {
            Ok(Some(v)) => Ok(minijinja::Value::from(minijinja::value::Serde(v))),
            Ok(None) => match default {
                Some(d) => Ok(d),
                None => {
                    let e = Error::new(
                        ErrorKind::MissingData,
                        format!(
                            "data key `{key}` is not found at any level and lookup() was given no default"
                        ),
                    )
                    .with_help(format!("levels looked at: {}", self.0.describe_levels()));
                    let msg = e.message().to_owned();
                    self.0.set_error(e);
                    Err(minijinja::Error::new(
                        minijinja::ErrorKind::InvalidOperation,
                        msg,
                    ))
                }
            },
            Err(e) => {
                let msg = e.message().to_owned();
                self.0.set_error(e);
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            }
        }
    }
}
