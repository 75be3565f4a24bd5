//! Fleet data in the compiler (the job exported resources and PuppetDB
//! queries do in Puppet): a template asks for the known nodes of a role or
//! environment with the facts it names,
//!
//! ```jinja
//! {% for h in fleet(role="db", facts=["networking.ip"]) %}
//!   server {{ h.name }} {{ h.facts["networking.ip"] }}:5432 check
//! {% endfor %}
//! ```
//!
//! and gets a list sorted by name. The master gives the compiler a
//! [`FleetSnapshot`] (from its store: classification and last stable facts
//! of every host with a valid certificate that checked in);
//! `troupe catalog compile --fleet FILE` reads one from a file. A node never
//! sees more of another node than its name, role, environment, number,
//! zone and the facts the query names.

use crate::error::{Error, ErrorKind, Result};
pub use crate::fleet_facts::FactValue;
use minijinja::value::{Kwargs, Value, from_args};
use serde_json::Value as J;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Most facts one `fleet()` query may name.
pub const MAX_QUERY_FACTS: usize = 32;

/// One known node.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetNode {
    /// The certname.
    pub name: String,
    /// The role its classification gave it.
    pub role: String,
    /// Its environment.
    pub environment: String,
    /// Its last facts (a JSON object; volatile facts left out), held
    /// compact ([`FactValue`]: a JSON tree costs ~9 KB per node).
    #[serde(default)]
    pub facts: FactValue,
}

/// What the compiler knows of the fleet: nodes sorted by name, and a
/// generation that changes whenever the content does (the master puts it
/// in the cache key of the catalogs that used it).
///
/// Nodes are shared (`Arc`): a new snapshot that changes one node (the
/// master's after each check-in whose facts changed) copies pointers, not
/// every node's facts.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSnapshot {
    #[serde(default)]
    pub generation: u64,
    #[serde(serialize_with = "ser_nodes", deserialize_with = "de_nodes")]
    pub nodes: Vec<Arc<FleetNode>>,
}

fn ser_nodes<S: serde::Serializer>(
    nodes: &[Arc<FleetNode>],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(nodes.iter().map(|n| &**n))
}

fn de_nodes<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<Arc<FleetNode>>, D::Error> {
    let v: Vec<FleetNode> = serde::Deserialize::deserialize(d)?;
    Ok(v.into_iter().map(Arc::new).collect())
}

impl FleetSnapshot {
    /// A snapshot of `nodes` (`FleetNode`s or shared ones; sorted by name
    /// here; names must be valid certnames and unique, facts JSON objects).
    pub fn new<N: Into<Arc<FleetNode>>>(
        generation: u64,
        nodes: impl IntoIterator<Item = N>,
    ) -> Result<FleetSnapshot> {
        let mut nodes: Vec<Arc<FleetNode>> = nodes.into_iter().map(Into::into).collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        for (i, n) in nodes.iter().enumerate() {
            if !crate::valid_certname(&n.name) {
                return Err(Error::new(
                    ErrorKind::Facts,
                    format!("fleet node `{}`: not a valid certname", n.name),
                ));
            }
            if i > 0 && nodes[i - 1].name == n.name {
                return Err(Error::new(
                    ErrorKind::Facts,
                    format!("fleet node `{}` is listed twice", n.name),
                ));
            }
            if !n.facts.is_object() {
                return Err(Error::new(
                    ErrorKind::Facts,
                    format!("fleet node `{}`: facts must be a JSON object", n.name),
                ));
            }
        }
        Ok(FleetSnapshot { generation, nodes })
    }

    /// Reads a snapshot file (`troupe catalog compile --fleet FILE`):
    /// `{"generation": 1, "nodes": [{"name", "role", "environment",
    /// "facts": {...}}]}` (generation optional).
    pub fn from_file(path: &Path) -> Result<FleetSnapshot> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot read the fleet snapshot {}: {e}", path.display()),
            )
        })?;
        let s: FleetSnapshot = serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(
                ErrorKind::Facts,
                format!("{} is not a fleet snapshot: {e}", path.display()),
            )
            .with_help(
                "expected {\"generation\": N, \"nodes\": [{\"name\": \"db1.example.com\", \"role\": \"db\", \"environment\": \"production\", \"facts\": {...}}]}",
            )
        })?;
        FleetSnapshot::new(s.generation, s.nodes).map_err(|e| {
            Error::new(
                ErrorKind::Facts,
                format!("{}: {}", path.display(), e.message()),
            )
        })
    }
}

/// A fact path a query may name: dotted segments of letters, digits, `_`
/// and `-`.
fn valid_fact_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 128
        && p.split('.').all(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

fn fact_at<'a>(facts: &'a FactValue, path: &str) -> Option<&'a FactValue> {
    path.split('.').try_fold(facts, |v, k| v.get(k))
}

fn invalid(msg: String) -> minijinja::Error {
    minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg)
}

/// One `fleet()` call as the compile made it, defaults filled in: what a
/// catalog read of the fleet. Its answer depends only on the nodes it
/// matches (environment, and role when given): their names, roles and the
/// facts it names. The master keeps, per query, when its answer last
/// changed, so a catalog is compiled again only when a fact it could have
/// read changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FleetQuery {
    pub role: Option<String>,
    pub environment: String,
    pub facts: Vec<String>,
}

impl FleetQuery {
    /// Whether `n` is in the answer.
    pub fn matches(&self, n: &FleetNode) -> bool {
        n.environment == self.environment && self.role.as_ref().is_none_or(|r| *r == n.role)
    }

    /// Whether the answer differs between one node as it was (`old`;
    /// `None`: not in the fleet) and as it is (`new`): it entered or left
    /// the answer, or its role or a named fact changed while in it. (The
    /// entry's name, number and zone come from the node's name, which is
    /// the same for both.)
    pub fn answer_differs(&self, old: Option<&FleetNode>, new: Option<&FleetNode>) -> bool {
        fn view<'a>(
            q: &FleetQuery,
            n: Option<&'a FleetNode>,
        ) -> Option<(&'a str, Vec<Option<&'a FactValue>>)> {
            let n = n.filter(|n| q.matches(n))?;
            let facts = q.facts.iter().map(|f| fact_at(&n.facts, f)).collect();
            Some((n.role.as_str(), facts))
        }
        view(self, old) != view(self, new)
    }
}

/// What the `fleet()` calls of one compile read.
#[derive(Debug, Default)]
pub(crate) struct FleetReads {
    /// A call was made (even one refused for its arguments).
    pub(crate) used: bool,
    /// The queries made, each once.
    pub(crate) queries: Vec<FleetQuery>,
}

/// The `fleet(role=none, environment=node.environment, facts=[])` function
/// templates call.
#[derive(Debug)]
pub(crate) struct FleetFn {
    pub(crate) snapshot: Option<Arc<FleetSnapshot>>,
    /// The querying node's environment (the default) and zone count.
    pub(crate) environment: String,
    pub(crate) zones: u64,
    /// Filled by every call: the catalog depends on what it read.
    pub(crate) reads: Arc<Mutex<FleetReads>>,
}

impl FleetFn {
    fn reads(&self) -> std::sync::MutexGuard<'_, FleetReads> {
        self.reads.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl minijinja::value::Object for FleetFn {
    fn call(
        self: &Arc<Self>,
        _state: &mut minijinja::State<'_, '_>,
        args: &[Value],
    ) -> std::result::Result<Value, minijinja::Error> {
        self.reads().used = true;
        let (positional, kwargs): (Option<String>, Kwargs) = from_args(args)?;
        let role: Option<String> = match positional {
            Some(r) => Some(r),
            None => kwargs.get("role")?,
        };
        let environment: Option<String> = kwargs.get("environment")?;
        let facts: Option<Vec<String>> = kwargs.get("facts")?;
        kwargs.assert_all_used().map_err(|e| {
            invalid(format!(
                "fleet(): {e} (arguments: role, environment, facts)"
            ))
        })?;
        let environment = environment.unwrap_or_else(|| self.environment.clone());
        let facts = facts.unwrap_or_default();
        if facts.len() > MAX_QUERY_FACTS {
            return Err(invalid(format!(
                "fleet(): at most {MAX_QUERY_FACTS} facts per query, {} asked",
                facts.len()
            )));
        }
        if let Some(bad) = facts.iter().find(|f| !valid_fact_path(f)) {
            return Err(invalid(format!(
                "fleet(): `{bad}` is not a fact path (dotted names such as `networking.ip`)"
            )));
        }
        {
            let query = FleetQuery {
                role: role.clone(),
                environment: environment.clone(),
                facts: facts.clone(),
            };
            let mut reads = self.reads();
            if !reads.queries.contains(&query) {
                reads.queries.push(query);
            }
        }
        let Some(snap) = &self.snapshot else {
            return Ok(Value::from(Vec::<Value>::new()));
        };
        let mut out = Vec::new();
        for n in &snap.nodes {
            // As FleetQuery::matches (which the master's invalidation uses).
            if n.environment != environment || role.as_ref().is_some_and(|r| *r != n.role) {
                continue;
            }
            let hostname = n.name.split('.').next().unwrap_or(&n.name);
            let mut entry = serde_json::json!({
                "name": n.name,
                "hostname": hostname,
                "role": n.role,
                "environment": n.environment,
            });
            if let Some(num) = crate::tree::trailing_number(hostname) {
                entry["number"] = J::from(num);
                entry["zone"] = J::from(num % self.zones.max(1));
            }
            let chosen: serde_json::Map<String, J> = facts
                .iter()
                .map(|f| {
                    (
                        f.clone(),
                        fact_at(&n.facts, f).map_or(J::Null, FactValue::to_json),
                    )
                })
                .collect();
            entry["facts"] = J::Object(chosen);
            out.push(Value::from(minijinja::value::Serde(entry)));
        }
        Ok(Value::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, role: &str, env: &str, facts: J) -> FleetNode {
        FleetNode {
            name: name.into(),
            role: role.into(),
            environment: env.into(),
            facts: facts.into(),
        }
    }

    #[test]
    fn snapshot_sorts_and_refuses_bad_entries() {
        let s = FleetSnapshot::new(
            3,
            vec![
                node("db2.example.com", "db", "production", serde_json::json!({})),
                node("db1.example.com", "db", "production", serde_json::json!({})),
            ],
        )
        .unwrap();
        assert_eq!(s.nodes[0].name, "db1.example.com");
        let twice = vec![
            node("db1.example.com", "db", "production", serde_json::json!({})),
            node("db1.example.com", "db", "production", serde_json::json!({})),
        ];
        let e = FleetSnapshot::new(1, twice).unwrap_err();
        assert!(e.message().contains("listed twice"), "{e}");
        let bad = vec![node("DB1", "db", "production", serde_json::json!({}))];
        assert!(FleetSnapshot::new(1, bad).is_err());
        let bad = vec![node("db1", "db", "production", serde_json::json!([1]))];
        assert!(FleetSnapshot::new(1, bad).is_err());
    }

    #[test]
    fn a_query_answer_differs_only_when_what_it_reads_changes() {
        let q = FleetQuery {
            role: Some("web".into()),
            environment: "production".into(),
            facts: vec!["networking.ip".into()],
        };
        let ip = |ip: &str, mem: u64| serde_json::json!({"networking": {"ip": ip}, "memory": {"total": mem}});
        let web = node("web1.example.com", "web", "production", ip("10.0.0.1", 1));
        // Another fact than the one named: same answer.
        let more_mem = node("web1.example.com", "web", "production", ip("10.0.0.1", 2));
        assert!(!q.answer_differs(Some(&web), Some(&more_mem)));
        // The named fact: a new answer.
        let moved = node("web1.example.com", "web", "production", ip("10.0.0.9", 1));
        assert!(q.answer_differs(Some(&web), Some(&moved)));
        // Entering or leaving the answer (new node, role or environment).
        assert!(q.answer_differs(None, Some(&web)));
        assert!(q.answer_differs(Some(&web), None));
        let db = node("web1.example.com", "db", "production", ip("10.0.0.1", 1));
        assert!(q.answer_differs(Some(&web), Some(&db)));
        let dev = node("web1.example.com", "web", "development", ip("10.0.0.1", 1));
        assert!(q.answer_differs(Some(&dev), Some(&web)));
        // Nodes outside the answer, whatever they change.
        let db2 = node("db2.example.com", "db", "production", ip("10.0.0.1", 1));
        let db2b = node("db2.example.com", "db", "production", ip("10.0.0.7", 9));
        assert!(!q.answer_differs(Some(&db2), Some(&db2b)));
        assert!(!q.answer_differs(None, Some(&db2)));
        // Without a role, a role change inside the environment is seen.
        let any = FleetQuery {
            role: None,
            ..q.clone()
        };
        assert!(any.answer_differs(Some(&web), Some(&db)));
        assert!(!any.answer_differs(Some(&web), Some(&more_mem)));
    }

    #[test]
    fn fact_paths() {
        assert!(valid_fact_path("networking.ip"));
        assert!(valid_fact_path("os.release.major"));
        for bad in ["", ".", "a..b", "a.", "a b", "a/b", "{{x}}"] {
            assert!(!valid_fact_path(bad), "{bad}");
        }
        let f = FactValue::from(serde_json::json!({"networking": {"ip": "10.0.0.1"}}));
        assert_eq!(
            fact_at(&f, "networking.ip").map(FactValue::to_json),
            Some(J::from("10.0.0.1"))
        );
        assert_eq!(fact_at(&f, "networking.nope"), None);
    }
}
