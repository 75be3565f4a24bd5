//! The daemons' configuration files (`/etc/troupe/master.toml`,
//! `/etc/troupe/agent.toml`): reading one, refusing it when it cannot be
//! trusted, and layering every setting as flag > environment (`TROUPE_*`) >
//! file > default, remembering where each value came from for
//! `--print-config`.
//!
//! These files grant trust (which master an agent believes, which CA
//! fingerprint it pins, where the master keeps its CA), so a file that a
//! user other than root (or the daemon's own user) owns, or that group or
//! others may write, is refused with an error saying how to fix it. Unknown
//! keys are errors naming the key and the file: a typo must not silently
//! fall back to a default.
//!
//! Which flag a key belongs to, and whether a flag was given, is the
//! caller's business (it asks clap's `ValueSource`): this module knows no
//! command line.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// An environment variable (its name).
    Env(String),
    /// The configuration file.
    File(PathBuf),
    /// The built-in default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(v) => write!(f, "env {v}"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// What the caller knows from the command line about one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Given {
    /// The flag was given: its value wins.
    Flag,
    /// The command-line parser itself filled the value from this
    /// environment variable.
    Env(&'static str),
    /// Neither: the value the caller holds is the default.
    No,
}

/// One effective setting.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub key: String,
    pub value: serde_json::Value,
    pub source: String,
}

/// A configuration file, read (or absent), and the settings resolved so
/// far.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    table: Option<toml::Table>,
    entries: Vec<Entry>,
}

/// The environment variable of `key`: `TROUPE_` and the key in upper case.
pub fn env_name(key: &str) -> String {
    format!("TROUPE_{}", key.to_ascii_uppercase())
}

impl ConfigFile {
    /// Reads `path`. A missing file is an error when the path was given
    /// (`explicit`), and means "no file, defaults" otherwise. Keys not in
    /// `known` are refused, naming the key and the file.
    pub fn load(path: &Path, explicit: bool, known: &[&str]) -> Result<ConfigFile, String> {
        // The file says which master and CA to trust: the owner/mode rule
        // for trust files (troupe_base::trust) applies, to the file and the
        // directories above it, on the descriptor that is read.
        let text = match troupe_base::trust::read_trusted_file(path, "config file") {
            Ok(Some(text)) => text,
            Ok(None) if !explicit => {
                return Ok(ConfigFile {
                    path: path.to_path_buf(),
                    table: None,
                    entries: Vec::new(),
                });
            }
            Ok(None) => return Err(format!("config file {}: no such file", path.display())),
            Err(e) => return Err(troupe_base::cli::one_line(&e)),
        };
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| format!("config file {}: {e}", path.display()))?;
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                return Err(format!(
                    "config file {}: unknown key `{key}` (known keys: {})",
                    path.display(),
                    known.join(", ")
                ));
            }
        }
        Ok(ConfigFile {
            path: path.to_path_buf(),
            table: Some(table),
            entries: Vec::new(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a file was read.
    pub fn found(&self) -> bool {
        self.table.is_some()
    }

    /// Resolves one key: the flag's value if `given` says so, else the
    /// environment (`TROUPE_KEY`), else the file, else `current` (the
    /// default the command-line parser filled in). Records the result.
    pub fn resolve<T>(&mut self, key: &str, given: Given, current: T) -> Result<T, String>
    where
        T: DeserializeOwned + Serialize,
    {
        let (value, source) = match given {
            Given::Flag => (current, Source::Flag),
            Given::Env(var) => (current, Source::Env(var.to_owned())),
            Given::No => {
                let var = env_name(key);
                match std::env::var(&var) {
                    Ok(s) if !s.trim().is_empty() => (
                        from_env_text(&s).map_err(|e| format!("{var}={s:?}: {e}"))?,
                        Source::Env(var),
                    ),
                    _ => match self.table.as_ref().and_then(|t| t.get(key)) {
                        Some(v) => (
                            T::deserialize(v.clone()).map_err(|e| {
                                format!(
                                    "config file {}: key `{key}`: {}",
                                    self.path.display(),
                                    e.to_string().trim()
                                )
                            })?,
                            Source::File(self.path.clone()),
                        ),
                        None => (current, Source::Default),
                    },
                }
            }
        };
        self.entries.push(Entry {
            key: key.to_owned(),
            value: serde_json::to_value(&value).unwrap_or(serde_json::Value::Null),
            source: source.to_string(),
        });
        Ok(value)
    }

    /// Shows `key` as `value` in `--print-config` instead of what was
    /// resolved (a URL's password must not be printed). The setting itself
    /// is unchanged.
    pub fn show_as(&mut self, key: &str, value: serde_json::Value) {
        if let Some(e) = self.entries.iter_mut().rev().find(|e| e.key == key) {
            e.value = value;
        }
    }

    /// The settings resolved so far, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// `--print-config --json`: the file and every effective setting with
    /// its source.
    pub fn to_json(&self) -> serde_json::Value {
        let mut keys = serde_json::Map::new();
        for e in &self.entries {
            keys.insert(
                e.key.clone(),
                serde_json::json!({ "value": e.value, "source": e.source }),
            );
        }
        serde_json::json!({
            "config_file": self.path,
            "config_file_found": self.found(),
            "settings": keys,
        })
    }

    /// `--print-config`: the effective settings as TOML, each with a
    /// comment saying where it came from (unset ones commented out).
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "# Effective configuration. Config file: {} ({}).\n# Precedence: flag > \
             environment (TROUPE_*) > file > default.\n",
            self.path.display(),
            if self.found() { "read" } else { "not found" }
        );
        // Tables (master.toml's `[events]`) are one long line: they set no
        // column width.
        let width = self
            .entries
            .iter()
            .filter(|e| !e.value.is_object())
            .map(|e| e.key.len() + toml_text(&e.value).map_or(8, |v| v.len()) + 3)
            .max()
            .unwrap_or(0);
        for e in &self.entries {
            let line = match toml_text(&e.value) {
                Some(v) => format!("{} = {v}", e.key),
                None => format!("# {} unset", e.key),
            };
            out.push_str(&format!("{line:<width$}  # {}\n", e.source));
        }
        out
    }
}

/// A value as TOML text (`None` for null: TOML has no null).
fn toml_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::Array(a) => Some(format!(
            "[{}]",
            a.iter()
                .map(|x| toml_text(x).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        serde_json::Value::Object(_) => Some(format!("'{v}'")),
        other => Some(other.to_string()),
    }
}

/// An environment variable's text as a value: a TOML value (`60`, `true`,
/// `["a", "b"]`), else the plain string, else a comma-separated list.
fn from_env_text<T: DeserializeOwned>(s: &str) -> Result<T, String> {
    if let Ok(t) = format!("v = {s}").parse::<toml::Table>()
        && let Some(v) = t.get("v")
        && let Ok(x) = T::deserialize(v.clone())
    {
        return Ok(x);
    }
    let as_string = T::deserialize(toml::Value::String(s.to_owned()));
    match as_string {
        Ok(x) => Ok(x),
        Err(e) => {
            let list = toml::Value::Array(
                s.split(',')
                    .map(|p| toml::Value::String(p.trim().to_owned()))
                    .collect(),
            );
            T::deserialize(list).map_err(|_| e.to_string().trim().to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.toml");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        (d, p)
    }

    #[test]
    fn precedence_is_flag_env_file_default() {
        let (_d, p) = file("interval = 60\nsplay = 5\nnoop = true\n", 0o644);
        let known = ["interval", "splay", "noop", "name"];
        let mut c = ConfigFile::load(&p, true, &known).unwrap();
        assert_eq!(c.resolve("interval", Given::Flag, 7u64).unwrap(), 7);
        assert_eq!(c.resolve("splay", Given::No, 0u64).unwrap(), 5);
        assert!(c.resolve("noop", Given::No, false).unwrap());
        assert_eq!(
            c.resolve("name", Given::No, Some("h".to_string())).unwrap(),
            Some("h".to_string())
        );
        let j = c.to_json();
        assert_eq!(j["settings"]["interval"]["source"], "flag");
        assert_eq!(
            j["settings"]["splay"]["source"],
            format!("file {}", p.display())
        );
        assert_eq!(j["settings"]["name"]["source"], "default");
        let text = c.to_text();
        assert!(text.contains("splay = 5"), "{text}");
        assert!(text.contains("# file "), "{text}");
    }

    #[test]
    fn env_text_parses_numbers_strings_and_lists() {
        assert_eq!(from_env_text::<u64>("60").unwrap(), 60);
        assert!(from_env_text::<u64>("sixty").is_err());
        assert_eq!(
            from_env_text::<String>("https://m:8140").unwrap(),
            "https://m:8140"
        );
        assert_eq!(
            from_env_text::<Vec<String>>("a, b").unwrap(),
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(from_env_text::<bool>("true").unwrap());
    }

    #[test]
    fn unknown_keys_bad_types_and_loose_modes_are_refused() {
        let (_d, p) = file("intervall = 60\n", 0o644);
        let e = ConfigFile::load(&p, true, &["interval"]).unwrap_err();
        assert!(e.contains("unknown key `intervall`"), "{e}");
        assert!(e.contains(&p.display().to_string()), "{e}");

        let (_d, p) = file("interval = \"soon\"\n", 0o644);
        let mut c = ConfigFile::load(&p, true, &["interval"]).unwrap();
        let e = c.resolve("interval", Given::No, 1u64).unwrap_err();
        assert!(e.contains("key `interval`"), "{e}");

        let (_d, p) = file("interval = 60\n", 0o664);
        let e = ConfigFile::load(&p, true, &["interval"]).unwrap_err();
        assert!(e.contains("chmod go-w"), "{e}");

        let missing = p.with_file_name("nope.toml");
        assert!(ConfigFile::load(&missing, true, &[]).is_err());
        assert!(!ConfigFile::load(&missing, false, &[]).unwrap().found());
    }
}
