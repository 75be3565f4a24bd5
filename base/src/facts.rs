//! Facts as both `--where` options see them: `troupe nodes --where` (the
//! master's fleet store) and `troupe run/deploy --where` (signed into the
//! command, checked by each agent) parse and match `FACT=VALUE` here, so one
//! condition selects the same hosts in both.
//!
//! Facts are compared flattened ([`flatten`]): nested keys joined with `.`
//! (`os.release.major`), array items by index (`networking.ips.0`); strings
//! as they are, numbers and booleans in their JSON form (`true`, `4`); a
//! null, an object or an array as a whole never matches. Matching is
//! exact (case-sensitive, no globs).

use std::collections::BTreeMap;

/// Fact names: `[A-Za-z0-9_.:-]`, 1..=128 bytes (flattened: `os.family`).
pub fn is_fact_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// Fact values: at most 256 bytes, no control characters.
pub fn is_fact_value(s: &str) -> bool {
    s.len() <= 256 && !s.chars().any(char::is_control)
}

/// Flattens nested facts (JSON) into `a.b.c` → text: strings as they
/// are, numbers and booleans in their JSON form, array items as `a.0`,
/// `a.1`; nulls and entries with invalid names or values are left out.
pub fn flatten(facts: &serde_json::Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>, depth: usize) {
        if depth > 16 || out.len() >= 10_000 {
            return;
        }
        let mut put = |text: String| {
            if is_fact_name(prefix) && is_fact_value(&text) {
                out.insert(prefix.to_string(), text);
            }
        };
        match v {
            serde_json::Value::Null => {}
            serde_json::Value::Bool(b) => put(b.to_string()),
            serde_json::Value::Number(n) => put(n.to_string()),
            serde_json::Value::String(s) => put(s.clone()),
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(&join(prefix, &i.to_string()), item, out, depth + 1);
                }
            }
            serde_json::Value::Object(map) => {
                for (k, item) in map {
                    walk(&join(prefix, k), item, out, depth + 1);
                }
            }
        }
    }
    fn join(prefix: &str, k: &str) -> String {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    }
    let mut out = BTreeMap::new();
    walk("", facts, &mut out, 0);
    out
}

/// One `--where FACT=VALUE` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactMatch {
    /// The flattened fact name (`os.family`).
    pub name: String,
    /// The text it must equal.
    pub value: String,
}

impl std::str::FromStr for FactMatch {
    type Err = String;

    /// `FACT=VALUE`, split at the first `=`; spaces around either side are
    /// dropped. The name must be a valid fact name and the value a valid
    /// fact value (else nothing could ever match).
    fn from_str(s: &str) -> Result<Self, String> {
        let clip = |t: &str| t.chars().take(80).collect::<String>();
        let (name, value) = s.split_once('=').ok_or_else(|| {
            format!(
                "expected FACT=VALUE (e.g. os.family=Debian), got {:?}",
                clip(s)
            )
        })?;
        let (name, value) = (name.trim(), value.trim());
        if !is_fact_name(name) {
            return Err(format!(
                "invalid fact name {:?} in {:?}: use letters, digits and `_.:-`, \
                 nested keys joined with `.` (e.g. os.release.major=12)",
                clip(name),
                clip(s)
            ));
        }
        if !is_fact_value(value) {
            return Err(format!(
                "invalid value for fact {name}: at most 256 bytes, no control characters"
            ));
        }
        Ok(FactMatch {
            name: name.to_string(),
            value: value.to_string(),
        })
    }
}

impl std::fmt::Display for FactMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.value)
    }
}

impl FactMatch {
    /// True when the flattened facts hold this fact with exactly this value.
    pub fn matches(&self, flat: &BTreeMap<String, String>) -> bool {
        flat.get(&self.name) == Some(&self.value)
    }

    /// [`FactMatch::matches`] on nested facts.
    pub fn matches_json(&self, facts: &serde_json::Value) -> bool {
        self.matches(&flatten(facts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(s: &str) -> FactMatch {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_trims_and_refuses_what_could_never_match() {
        assert_eq!(
            m(" os.family = Debian "),
            FactMatch {
                name: "os.family".into(),
                value: "Debian".into()
            }
        );
        assert_eq!(m("url=a=b").value, "a=b");
        assert_eq!(m("empty=").value, "");
        for bad in ["novalue", "=x", " =x", "os family=x", "a/b=c", "x=a\u{7}"] {
            assert!(bad.parse::<FactMatch>().is_err(), "{bad:?}");
        }
        assert_eq!(m("os.family=Debian").to_string(), "os.family=Debian");
    }

    #[test]
    fn matches_nested_keys_array_items_and_scalars_as_json_text() {
        let facts = json!({
            "os": {"family": "Debian", "release": {"major": 12, "full": "12.5"}},
            "virtual": false,
            "networking": {"ips": ["10.0.0.1", "10.0.0.2"]},
            "gone": null,
        });
        for yes in [
            "os.family=Debian",
            "os.release.major=12",
            "os.release.full=12.5",
            "virtual=false",
            "networking.ips.1=10.0.0.2",
        ] {
            assert!(m(yes).matches_json(&facts), "{yes}");
        }
        for no in [
            "os.family=debian",
            "os.family=Deb",
            "os.release.major=12.0",
            "os=Debian",
            "networking.ips=10.0.0.1",
            "gone=null",
            "gone=",
            "missing=",
        ] {
            assert!(!m(no).matches_json(&facts), "{no}");
        }
    }
}
