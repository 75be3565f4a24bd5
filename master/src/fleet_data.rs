//! The fleet snapshot the master gives the compiler (templates' `fleet()`,
//! see `troupe_compiler::fleet`): every host with a valid certificate that
//! checked in, with the role and environment of its last classification and
//! its last stable facts (volatile facts and `trusted` left out), sorted by
//! name.
//!
//! Built from the store at first use; kept current by each check-in
//! ([`FleetData::observe`]); built again after certificates change
//! (revoke, clean, renew: [`FleetData::invalidate`]). The generation goes
//! up whenever the content changes, and only then: a catalog that used the
//! fleet data is cached under it, so a new or changed node recompiles
//! exactly those catalogs.

use crate::state::MasterState;
use std::sync::{Arc, Mutex};
use troupe_compiler::{FleetNode, FleetSnapshot};

#[derive(Default)]
struct Inner {
    snapshot: Option<Arc<FleetSnapshot>>,
    /// The last generation handed out (never reused while the master runs).
    generation: u64,
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
        let snap = FleetSnapshot::new(g.generation, nodes).map_err(|e| e.to_string())?;
        let snap = Arc::new(snap);
        g.snapshot = Some(snap.clone());
        Ok(snap)
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
        match at {
            Ok(i) => nodes[i] = entry,
            Err(i) => nodes.insert(i, entry),
        }
        g.generation += 1;
        let generation = g.generation;
        g.snapshot = Some(Arc::new(FleetSnapshot { generation, nodes }));
    }

    /// Certificates changed: the next use builds the snapshot again, so a
    /// revoked or cleaned host leaves it.
    pub fn invalidate(&self) {
        self.lock().snapshot = None;
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
}
