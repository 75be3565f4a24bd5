//! The fleet snapshot the master gives the compiler (templates' `fleet()`,
//! see `troupe_compiler::fleet`): every host with a valid certificate that
//! checked in, with the role and environment of its last classification and
//! its last stable facts (volatile facts and `trusted` left out), sorted by
//! name.
//!
//! Built from the store at first use; kept current by each check-in
//! ([`FleetData::observe`]); built again after certificates change
//! (revoke, clean, renew: [`FleetData::invalidate`]). The generation goes
//! up whenever the content changes, and only then.
//!
//! A catalog that used the fleet data is cached with the `fleet()` queries
//! it made ([`FleetDep`]). For every query made by a cached catalog the
//! fleet data keeps the generation at which its answer last changed (each
//! changed node is checked against each query: did it enter or leave the
//! answer, or change its role or a fact the query names). A catalog is
//! current while none of its queries' answers changed since it was
//! compiled: a fact changed on a node no query of it matches, or a fact it
//! does not name, recompiles nothing.

use crate::state::MasterState;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use troupe_compiler::{FleetNode, FleetQuery, FleetSnapshot};

/// Distinct queries tracked; past this a catalog's dependency is "any
/// change" (templates make a handful: one per role they list).
const MAX_QUERIES: usize = 4096;

/// What a cached catalog read of the fleet data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetDep {
    /// The snapshot generation it is known current under.
    pub generation: u64,
    /// Its queries (ids in the fleet data's table); `None`: any change of
    /// the fleet data makes it stale.
    pub queries: Option<Arc<[u32]>>,
}

impl FleetDep {
    /// Bytes it holds beside the cache entry.
    pub fn heap_bytes(&self) -> usize {
        self.queries.as_ref().map_or(0, |q| 16 + 4 * q.len())
    }
}

struct Tracked {
    query: FleetQuery,
    /// The generation when it was first tracked: changes before it were
    /// not checked against it.
    since: u64,
    /// The last generation whose change altered its answer.
    changed: u64,
}

#[derive(Default)]
struct Inner {
    snapshot: Option<Arc<FleetSnapshot>>,
    /// The snapshot [`FleetData::invalidate`] dropped, compared with the
    /// next one built so the tracked queries learn what changed.
    previous: Option<Arc<FleetSnapshot>>,
    /// The last generation handed out (never reused while the master runs).
    generation: u64,
    tracked: Vec<Tracked>,
    ids: HashMap<FleetQuery, u32>,
}

impl Inner {
    /// One node changed (`None`: absent) in the change that made
    /// `generation`: stamps the queries whose answer it alters.
    fn changed(&mut self, old: Option<&FleetNode>, new: Option<&FleetNode>, generation: u64) {
        for t in &mut self.tracked {
            if t.changed < generation && t.query.answer_differs(old, new) {
                t.changed = generation;
            }
        }
    }

    /// Every node that differs between `old` and `new` (both sorted by
    /// name) changed at `generation`.
    fn diff(&mut self, old: &FleetSnapshot, new: &FleetSnapshot, generation: u64) {
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&old.nodes, &new.nodes);
        while i < a.len() || j < b.len() {
            let order = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    self.changed(Some(&a[i]), None, generation);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    self.changed(None, Some(&b[j]), generation);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if a[i] != b[j] {
                        self.changed(Some(&a[i]), Some(&b[j]), generation);
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
    }
}

/// The master's fleet snapshot.
#[derive(Default)]
pub struct FleetData {
    inner: Mutex<Inner>,
}

impl FleetData {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation of the current snapshot, if one is built.
    pub fn generation(&self) -> Option<u64> {
        self.lock().snapshot.as_ref().map(|s| s.generation)
    }

    /// The current snapshot, built from the store when there is none
    /// (blocking: reads the CA and the store).
    pub fn snapshot(&self, state: &MasterState) -> Result<Arc<FleetSnapshot>, String> {
        if let Some(s) = &self.lock().snapshot {
            return Ok(s.clone());
        }
        crate::catalog_service::flush_checkins(state);
        let nodes = read_store(state)?;
        let mut g = self.lock();
        if let Some(s) = &g.snapshot {
            // Built meanwhile by another caller (and maybe updated since).
            return Ok(s.clone());
        }
        g.generation += 1;
        let generation = g.generation;
        let snap = FleetSnapshot::new(generation, nodes).map_err(|e| e.to_string())?;
        let snap = Arc::new(snap);
        // (Never built before: no catalog depends on an older one.)
        if let Some(old) = g.previous.take() {
            g.diff(&old, &snap, generation);
        }
        g.snapshot = Some(snap.clone());
        Ok(snap)
    }

    /// The dependency of a catalog compiled under the snapshot of
    /// `generation` that made `queries`.
    pub fn track(&self, queries: &[FleetQuery], generation: u64) -> FleetDep {
        let mut g = self.lock();
        let now = g.generation;
        let mut ids = Vec::with_capacity(queries.len());
        for q in queries {
            let id = match g.ids.get(q) {
                Some(&id) => id,
                None if g.tracked.len() < MAX_QUERIES => {
                    let id = g.tracked.len() as u32;
                    g.tracked.push(Tracked {
                        query: q.clone(),
                        since: now,
                        changed: 0,
                    });
                    g.ids.insert(q.clone(), id);
                    id
                }
                None => {
                    return FleetDep {
                        generation,
                        queries: None,
                    };
                }
            };
            ids.push(id);
        }
        FleetDep {
            generation,
            queries: Some(ids.into()),
        }
    }

    /// The current generation when a catalog with `dep` is still current
    /// (none of its queries' answers changed since `dep.generation`),
    /// `None` when it is stale or no snapshot is built.
    pub fn current(&self, dep: &FleetDep) -> Option<u64> {
        let g = self.lock();
        let now = g.snapshot.as_ref()?.generation;
        if dep.generation == now {
            return Some(now);
        }
        let ids = dep.queries.as_ref()?;
        for &id in ids.iter() {
            let t = g.tracked.get(id as usize)?;
            if t.since > dep.generation || t.changed > dep.generation {
                return None;
            }
        }
        Some(now)
    }

    /// A node checked in: its classification and stable facts. Changes the
    /// snapshot (and its generation) only when something differs.
    pub fn observe(&self, node: &str, role: &str, environment: &str, facts: &serde_json::Value) {
        let mut g = self.lock();
        let Some(cur) = g.snapshot.clone() else {
            // Not built yet: the first build reads the store, which has
            // this check-in (pending ones are flushed first).
            return;
        };
        // Most check-ins change nothing: compare in place, copy nothing.
        let at = cur.nodes.binary_search_by(|n| n.name.as_str().cmp(node));
        if let Ok(i) = at {
            let n = &cur.nodes[i];
            if n.role == role && n.environment == environment && n.facts.eq_json(facts) {
                return;
            }
        }
        let entry = Arc::new(FleetNode {
            name: node.to_owned(),
            role: role.to_owned(),
            environment: environment.to_owned(),
            facts: facts.into(),
        });
        // The nodes are shared: this copies one pointer per node.
        let mut nodes = cur.nodes.clone();
        let old = match at {
            Ok(i) => Some(std::mem::replace(&mut nodes[i], entry.clone())),
            Err(i) => {
                nodes.insert(i, entry.clone());
                None
            }
        };
        g.generation += 1;
        let generation = g.generation;
        g.changed(old.as_deref(), Some(&entry), generation);
        g.snapshot = Some(Arc::new(FleetSnapshot { generation, nodes }));
    }

    /// Certificates changed: the next use builds the snapshot again, so a
    /// revoked or cleaned host leaves it.
    pub fn invalidate(&self) {
        let mut g = self.lock();
        if let Some(s) = g.snapshot.take() {
            g.previous = Some(s);
        }
    }
}

/// Every signed host in the store, with its stable facts.
fn read_store(state: &MasterState) -> Result<Vec<FleetNode>, String> {
    let signed: std::collections::BTreeSet<String> = state
        .ca
        .list(troupe_pki::ListFilter::Default)
        .map_err(|e| format!("cannot list certificates for the fleet data: {e}"))?
        .into_iter()
        .filter(|e| e.state == "signed")
        .map(|e| e.host)
        .collect();
    let records = state
        .store
        .nodes()
        .map_err(|e| format!("cannot read the node store for the fleet data: {e:#}"))?;
    let mut out = Vec::new();
    for n in records.into_iter().filter(|n| signed.contains(&n.name)) {
        let facts = state
            .store
            .facts(&n.name)
            .map_err(|e| format!("cannot read the facts of {}: {e:#}", n.name))?
            .unwrap_or_else(|| serde_json::json!({}));
        let facts = match crate::catalog_service::stable_facts(&facts) {
            Ok((f, _)) => f,
            Err(_) => serde_json::json!({}),
        };
        out.push(FleetNode {
            name: n.name,
            role: n.role,
            environment: n.environment,
            facts: facts.into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observe_changes_the_generation_only_on_change() {
        let f = FleetData::default();
        // Not built: nothing to update.
        f.observe(
            "db1.example.com",
            "db",
            "production",
            &serde_json::json!({}),
        );
        assert_eq!(f.generation(), None);
        f.lock().generation = 1;
        f.lock().snapshot = Some(Arc::new(
            FleetSnapshot::new(1, Vec::<FleetNode>::new()).unwrap(),
        ));
        let facts = serde_json::json!({"networking": {"ip": "10.0.0.2"}});
        f.observe("db2.example.com", "db", "production", &facts);
        assert_eq!(f.generation(), Some(2));
        f.observe("db2.example.com", "db", "production", &facts);
        assert_eq!(f.generation(), Some(2), "same content, same generation");
        // The snapshot holds facts compact; a change deep inside is seen,
        // and the new value is what the snapshot then holds.
        let moved = serde_json::json!({"networking": {"ip": "10.0.0.3"}});
        f.observe("db2.example.com", "db", "production", &moved);
        assert_eq!(f.generation(), Some(3), "a nested fact changed");
        let held = f.lock().snapshot.clone().unwrap().nodes[0].facts.to_json();
        assert_eq!(held, moved);
        f.observe("db2.example.com", "db", "production", &facts);
        assert_eq!(f.generation(), Some(4));
        f.lock().generation = 1;
        f.lock().snapshot = Some(Arc::new(
            FleetSnapshot::new(1, Vec::<FleetNode>::new()).unwrap(),
        ));
        f.observe("db2.example.com", "db", "production", &facts);
        assert_eq!(f.generation(), Some(2));
        f.observe("db1.example.com", "db", "production", &facts);
        assert_eq!(f.generation(), Some(3));
        let names: Vec<String> = f
            .lock()
            .snapshot
            .as_ref()
            .unwrap()
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect();
        assert_eq!(
            names,
            ["db1.example.com", "db2.example.com"],
            "sorted by name"
        );
        let before = f.lock().snapshot.clone().unwrap();
        f.observe("db1.example.com", "web", "production", &facts);
        assert_eq!(f.generation(), Some(4));
        // The new snapshot shares the nodes that did not change.
        let after = f.lock().snapshot.clone().unwrap();
        assert!(Arc::ptr_eq(&before.nodes[1], &after.nodes[1]));
        assert!(!Arc::ptr_eq(&before.nodes[0], &after.nodes[0]));
        f.invalidate();
        assert_eq!(f.generation(), None);
    }

    fn set(f: &FleetData, generation: u64, nodes: Vec<FleetNode>) {
        let mut g = f.lock();
        g.generation = generation;
        g.snapshot = Some(Arc::new(FleetSnapshot::new(generation, nodes).unwrap()));
    }

    fn node(name: &str, role: &str, ip: &str) -> FleetNode {
        FleetNode {
            name: name.into(),
            role: role.into(),
            environment: "production".into(),
            facts: serde_json::json!({"ip": ip, "mem": 1}).into(),
        }
    }

    /// A catalog is stale exactly when an answer it read changed.
    #[test]
    fn a_dependency_is_stale_only_when_its_answers_change() {
        let f = FleetData::default();
        set(&f, 1, vec![node("web1.x", "web", "10.0.0.1")]);
        let webs = FleetQuery {
            role: Some("web".into()),
            environment: "production".into(),
            facts: vec!["ip".into()],
        };
        let dep = f.track(std::slice::from_ref(&webs), 1);
        assert_eq!(f.current(&dep), Some(1));
        // A db node arrives, web1's unnamed fact changes: still current,
        // at the new generation.
        f.observe(
            "db1.x",
            "db",
            "production",
            &serde_json::json!({"ip": "10.0.0.5"}),
        );
        f.observe(
            "web1.x",
            "web",
            "production",
            &serde_json::json!({"ip": "10.0.0.1", "mem": 2}),
        );
        assert_eq!(f.generation(), Some(3));
        assert_eq!(f.current(&dep), Some(3));
        let dep3 = FleetDep {
            generation: 3,
            ..dep.clone()
        };
        // A web node arrives: stale (for a dependency from before it).
        f.observe(
            "web2.x",
            "web",
            "production",
            &serde_json::json!({"ip": "10.0.0.2"}),
        );
        assert_eq!(f.current(&dep3), None);
        let dep4 = FleetDep {
            generation: 4,
            ..dep.clone()
        };
        assert_eq!(f.current(&dep4), Some(4));
        // A named fact of a web node: stale.
        f.observe(
            "web2.x",
            "web",
            "production",
            &serde_json::json!({"ip": "10.0.0.3"}),
        );
        assert_eq!(f.current(&dep4), None);
        // A web node becomes a db node: stale.
        let dep5 = FleetDep {
            generation: 5,
            ..dep.clone()
        };
        f.observe(
            "web2.x",
            "db",
            "production",
            &serde_json::json!({"ip": "10.0.0.3"}),
        );
        assert_eq!(f.current(&dep5), None);
        // Rebuilt after a certificate change: only a difference that
        // matters makes it stale.
        let dep6 = FleetDep {
            generation: 6,
            ..dep.clone()
        };
        f.invalidate();
        assert_eq!(f.current(&dep6), None, "no snapshot: not known current");
        {
            let mut g = f.lock();
            g.generation += 1;
            let prev = g.previous.take().unwrap();
            let mut nodes: Vec<FleetNode> = prev.nodes.iter().map(|n| (**n).clone()).collect();
            nodes.retain(|n| n.name != "db1.x");
            let snap = FleetSnapshot::new(g.generation, nodes).unwrap();
            let generation = g.generation;
            g.diff(&prev, &snap, generation);
            g.snapshot = Some(Arc::new(snap));
        }
        assert_eq!(f.current(&dep6), Some(7), "a db node left");
        // A query first tracked after a change it never saw is stale for
        // a catalog compiled before that change.
        let dbs = FleetQuery {
            role: Some("db".into()),
            ..webs.clone()
        };
        let late = f.track(&[dbs], 6);
        assert_eq!(f.current(&late), None);
        // Past the table's size: any change makes it stale.
        let any = FleetDep {
            generation: 7,
            queries: None,
        };
        assert_eq!(f.current(&any), Some(7));
        f.observe(
            "bastion1.x",
            "bastion",
            "production",
            &serde_json::json!({}),
        );
        assert_eq!(f.current(&any), None);
    }
}
