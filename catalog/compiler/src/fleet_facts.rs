//! The facts a [`crate::FleetSnapshot`] holds per node, in a compact,
//! read-only, shared form (issue 20: master memory per node).
//!
//! The master keeps every node's last stable facts for `fleet()`, and a
//! `serde_json::Value` is costly to hold: each JSON object is a `BTreeMap`
//! whose first leaf allocates room for eleven entries (~630 bytes), so the
//! ~700 bytes of facts an agent sends took ~9 KB of heap per node. Here an
//! object is a slice of (key, value) pairs sorted by key (40 bytes per
//! entry, found by binary search), an array a slice, a string a `str`.
//! Values are converted back to JSON only for the facts a query names.
//!
//! Nodes of a fleet mostly report the same keys and many of the same
//! values (the same OS release, kernel, processor and memory objects), so
//! every string and every array or object is interned: made once, in a
//! process-wide table, and shared by reference (`Arc`) wherever it
//! recurs, in one node's facts or across nodes. A node then holds only
//! what is its own (its top-level object, the objects that hold its
//! names and addresses, those strings). The table drops what no value
//! references any more whenever it has doubled since it was last swept
//! (see [`Interner::sweep`]), so facts that come and go (a node's address
//! changes, a node leaves) do not pile up in it.

use serde_json::Value as J;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex};

/// A JSON value, compact, immutable and shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FactValue {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(Arc<str>),
    Array(Arc<[FactValue]>),
    /// Entries sorted by key; keys unique.
    Object(Arc<[(Arc<str>, FactValue)]>),
}

impl Default for FactValue {
    /// An empty object.
    fn default() -> Self {
        FactValue::Object(Arc::new([]))
    }
}

/// An interned array or object, compared and hashed one level deep: its
/// members are interned already, so equal content means the same
/// pointers.
struct Shallow(FactValue);

/// The identity of a member (its pointer when it is shared, else its
/// value) for [`Shallow`]'s hash.
fn member_hash<H: Hasher>(v: &FactValue, h: &mut H) {
    match v {
        FactValue::Null => 0u8.hash(h),
        FactValue::Bool(b) => (1u8, b).hash(h),
        FactValue::Number(n) => (2u8, n).hash(h),
        FactValue::String(s) => (3u8, Arc::as_ptr(s) as *const u8 as usize).hash(h),
        FactValue::Array(a) => (4u8, Arc::as_ptr(a) as *const u8 as usize).hash(h),
        FactValue::Object(o) => (5u8, Arc::as_ptr(o) as *const u8 as usize).hash(h),
    }
}

/// Members equal by identity (see [`member_hash`]).
fn member_eq(a: &FactValue, b: &FactValue) -> bool {
    match (a, b) {
        (FactValue::Null, FactValue::Null) => true,
        (FactValue::Bool(x), FactValue::Bool(y)) => x == y,
        (FactValue::Number(x), FactValue::Number(y)) => x == y,
        (FactValue::String(x), FactValue::String(y)) => Arc::ptr_eq(x, y),
        (FactValue::Array(x), FactValue::Array(y)) => Arc::ptr_eq(x, y),
        (FactValue::Object(x), FactValue::Object(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

impl Hash for Shallow {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match &self.0 {
            FactValue::Array(a) => {
                (4u8, a.len()).hash(h);
                a.iter().for_each(|v| member_hash(v, h));
            }
            FactValue::Object(o) => {
                (5u8, o.len()).hash(h);
                for (k, v) in o.iter() {
                    (Arc::as_ptr(k) as *const u8 as usize).hash(h);
                    member_hash(v, h);
                }
            }
            other => member_hash(other, h),
        }
    }
}

impl PartialEq for Shallow {
    fn eq(&self, other: &Shallow) -> bool {
        match (&self.0, &other.0) {
            (FactValue::Array(a), FactValue::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| member_eq(x, y))
            }
            (FactValue::Object(a), FactValue::Object(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b.iter())
                        .all(|((k, x), (l, y))| Arc::ptr_eq(k, l) && member_eq(x, y))
            }
            (a, b) => member_eq(a, b),
        }
    }
}

impl Eq for Shallow {}

/// The table of interned strings, arrays and objects.
struct Interner {
    strings: HashSet<Arc<str>>,
    values: HashSet<Shallow>,
    /// Entries after the last sweep: the next sweep comes at twice as many.
    swept: usize,
}

/// Entries below which the table is never swept.
const SWEEP_MIN: usize = 4096;

static INTERNER: LazyLock<Mutex<Interner>> = LazyLock::new(|| {
    Mutex::new(Interner {
        strings: HashSet::new(),
        values: HashSet::new(),
        swept: 0,
    })
});

impl Interner {
    fn lock() -> std::sync::MutexGuard<'static, Interner> {
        INTERNER.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn string(&mut self, s: &str) -> Arc<str> {
        if let Some(held) = self.strings.get(s) {
            return held.clone();
        }
        let new: Arc<str> = Arc::from(s);
        self.strings.insert(new.clone());
        new
    }

    /// The shared instance of an array or object whose members are
    /// interned.
    fn value(&mut self, v: FactValue) -> FactValue {
        let v = Shallow(v);
        if let Some(held) = self.values.get(&v) {
            return held.0.clone();
        }
        let out = v.0.clone();
        self.values.insert(v);
        out
    }

    fn intern(&mut self, j: &J) -> FactValue {
        match j {
            J::Null => FactValue::Null,
            J::Bool(b) => FactValue::Bool(*b),
            J::Number(n) => FactValue::Number(n.clone()),
            J::String(s) => FactValue::String(self.string(s)),
            J::Array(a) => {
                let items: Arc<[FactValue]> = a.iter().map(|v| self.intern(v)).collect();
                self.value(FactValue::Array(items))
            }
            J::Object(m) => {
                let mut entries: Vec<(Arc<str>, FactValue)> = m
                    .iter()
                    .map(|(k, v)| (self.string(k), self.intern(v)))
                    .collect();
                // serde_json's map is sorted unless a crate in the build
                // turns on `preserve_order`: sort here whatever it is.
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                self.value(FactValue::Object(entries.into()))
            }
        }
    }

    fn len(&self) -> usize {
        self.strings.len() + self.values.len()
    }

    /// Drops the entries only the table references, once it has doubled
    /// since the last sweep (amortised: a sweep costs what the inserts
    /// since the last one did). Arrays and objects go first, so strings
    /// only they held go in the same sweep.
    fn maybe_sweep(&mut self) {
        let n = self.len();
        if n < SWEEP_MIN || n < 2 * self.swept {
            return;
        }
        self.sweep();
    }

    fn sweep(&mut self) {
        // An unreferenced object can hold the only other reference to a
        // member: repeat while a pass frees something (depth passes).
        loop {
            let before = self.values.len();
            self.values.retain(|v| match &v.0 {
                FactValue::Array(a) => Arc::strong_count(a) > 1,
                FactValue::Object(o) => Arc::strong_count(o) > 1,
                _ => false,
            });
            if self.values.len() == before {
                break;
            }
        }
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.swept = self.len();
    }
}

/// Entries in the process-wide table (strings, arrays and objects).
#[cfg(test)]
fn interned_count() -> usize {
    Interner::lock().len()
}

/// Drops every interned entry no value references now (the table also
/// does this by itself as it grows).
#[cfg(test)]
fn sweep_interned() {
    Interner::lock().sweep();
}

impl FactValue {
    /// The compact form of `j`, sharing what the table holds already.
    pub fn from_json(j: &J) -> FactValue {
        let mut t = Interner::lock();
        let v = t.intern(j);
        t.maybe_sweep();
        v
    }

    /// The value as JSON.
    pub fn to_json(&self) -> J {
        match self {
            FactValue::Null => J::Null,
            FactValue::Bool(b) => J::Bool(*b),
            FactValue::Number(n) => J::Number(n.clone()),
            FactValue::String(s) => J::String(s.to_string()),
            FactValue::Array(a) => J::Array(a.iter().map(FactValue::to_json).collect()),
            FactValue::Object(o) => J::Object(
                o.iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Whether it is an object.
    pub fn is_object(&self) -> bool {
        matches!(self, FactValue::Object(_))
    }

    /// The member `key` of an object (`None` for anything else).
    pub fn get(&self, key: &str) -> Option<&FactValue> {
        let FactValue::Object(o) = self else {
            return None;
        };
        o.binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &o[i].1)
    }

    /// Whether it holds the same value as `j`, without converting either.
    pub fn eq_json(&self, j: &J) -> bool {
        match (self, j) {
            (FactValue::Null, J::Null) => true,
            (FactValue::Bool(a), J::Bool(b)) => a == b,
            (FactValue::Number(a), J::Number(b)) => a == b,
            (FactValue::String(a), J::String(b)) => **a == **b,
            (FactValue::Array(a), J::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_json(y))
            }
            // Keys are unique on both sides: same count and every key of
            // one found, equal, in the other.
            (FactValue::Object(a), J::Object(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|(k, v)| b.get(&**k).is_some_and(|w| v.eq_json(w)))
            }
            _ => false,
        }
    }
}

impl From<J> for FactValue {
    fn from(j: J) -> FactValue {
        FactValue::from_json(&j)
    }
}

impl From<&J> for FactValue {
    fn from(j: &J) -> FactValue {
        FactValue::from_json(j)
    }
}

impl serde::Serialize for FactValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            FactValue::Null => s.serialize_unit(),
            FactValue::Bool(b) => s.serialize_bool(*b),
            FactValue::Number(n) => n.serialize(s),
            FactValue::String(v) => s.serialize_str(v),
            FactValue::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a.iter() {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            FactValue::Object(o) => {
                let mut map = s.serialize_map(Some(o.len()))?;
                for (k, v) in o.iter() {
                    map.serialize_entry(&**k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for FactValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FactValue, D::Error> {
        let j = J::deserialize(d)?;
        Ok(FactValue::from_json(&j))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> J {
        serde_json::json!({
            "hostname": "web4", "fqdn": "web4.example.com",
            "os": {"family": "Debian", "release": {"full": "12.5", "major": "12"}},
            "processors": {"count": 2}, "memory": {"total_bytes": 25769803776u64},
            "load": -1.5, "virtual": false, "none": null,
            "networking": {"ip": "10.0.0.4", "interfaces": {"eth0": {
                "ipv4": ["10.0.0.4"], "ipv6": ["fe80::5054:ff:fe12:3456"]}}},
            "empty": {}, "list": [], "mixed": [1, "a", {"b": [true]}]
        })
    }

    #[test]
    fn round_trips_and_compares_with_json() {
        let j = facts();
        let c = FactValue::from_json(&j);
        assert_eq!(c.to_json(), j);
        assert!(c.eq_json(&j));
        assert!(c.is_object());
        assert_eq!(serde_json::to_value(&c).unwrap(), j);
        let back: FactValue = serde_json::from_value(j.clone()).unwrap();
        assert_eq!(back, c);
        // Any difference, anywhere, is seen.
        for (path, other) in [
            ("/networking/interfaces/eth0/ipv4/0", J::from("10.0.0.5")),
            ("/memory/total_bytes", J::from(25769803777u64)),
            ("/processors/count", J::from(2.0)),
            ("/virtual", J::Null),
            ("/mixed/2/b/0", J::from(false)),
            ("/load", J::from("-1.5")),
        ] {
            let mut k = j.clone();
            *k.pointer_mut(path).unwrap() = other;
            assert!(!c.eq_json(&k), "{path}");
            assert_ne!(FactValue::from_json(&k), c, "{path}");
        }
        let mut more = j.clone();
        more["extra"] = J::from(1);
        assert!(!c.eq_json(&more), "a key more");
        let mut less = j.clone();
        less.as_object_mut().unwrap().remove("none");
        assert!(!c.eq_json(&less), "a key less (even a null one)");
        assert!(!FactValue::from_json(&less).eq_json(&j));
        let mut renamed = less.clone();
        renamed["nonf"] = J::Null;
        assert!(!c.eq_json(&renamed), "same count, another key");
    }

    #[test]
    fn members_are_found_by_key() {
        let c = FactValue::from_json(&facts());
        let ip = c.get("networking").and_then(|n| n.get("ip"));
        assert_eq!(ip.map(FactValue::to_json), Some(J::from("10.0.0.4")));
        assert_eq!(
            c.get("os")
                .and_then(|o| o.get("release"))
                .and_then(|r| r.get("major"))
                .map(FactValue::to_json),
            Some(J::from("12"))
        );
        assert!(c.get("nope").is_none());
        assert!(c.get("hostname").unwrap().get("x").is_none());
        assert_eq!(c.get("none"), Some(&FactValue::Null));
        assert_eq!(FactValue::default().to_json(), serde_json::json!({}));
    }

    /// Facts like two nodes of one fleet send: the same OS, memory and
    /// processors, their own names and addresses.
    fn node_facts(host: &str, ip: &str) -> J {
        serde_json::json!({
            "hostname": host, "fqdn": format!("{host}.example.com"),
            "os": {"family": "Debian", "release": {"full": "12.5", "major": "12"}},
            "processors": {"count": 2, "models": ["Intel Xeon", "Intel Xeon"]},
            "networking": {"ip": ip, "primary": "eth0"},
        })
    }

    fn object(v: &FactValue) -> &Arc<[(Arc<str>, FactValue)]> {
        match v {
            FactValue::Object(o) => o,
            other => panic!("not an object: {other:?}"),
        }
    }

    #[test]
    fn nodes_share_what_their_facts_have_in_common() {
        let a = FactValue::from_json(&node_facts("web1", "10.0.0.1"));
        let b = FactValue::from_json(&node_facts("web2", "10.0.0.2"));
        assert_eq!(a.to_json(), node_facts("web1", "10.0.0.1"));
        // The same objects are one allocation, at any depth ...
        for key in ["os", "processors"] {
            assert!(
                Arc::ptr_eq(object(a.get(key).unwrap()), object(b.get(key).unwrap())),
                "{key}"
            );
        }
        let (FactValue::Array(x), FactValue::Array(y)) = (
            a.get("processors").unwrap().get("models").unwrap(),
            b.get("processors").unwrap().get("models").unwrap(),
        ) else {
            panic!("models is an array");
        };
        assert!(Arc::ptr_eq(x, y));
        // ... and so are keys and equal strings; what differs does not.
        let (oa, ob) = (object(&a), object(&b));
        assert!(
            oa.iter()
                .zip(ob.iter())
                .all(|((k, _), (l, _))| Arc::ptr_eq(k, l))
        );
        assert!(!Arc::ptr_eq(oa, ob));
        let (na, nb) = (a.get("networking").unwrap(), b.get("networking").unwrap());
        assert!(!Arc::ptr_eq(object(na), object(nb)));
        let (FactValue::String(pa), FactValue::String(pb)) =
            (na.get("primary").unwrap(), nb.get("primary").unwrap())
        else {
            panic!("primary is a string");
        };
        assert!(Arc::ptr_eq(pa, pb));
        assert_ne!(a, b);
        // The same facts again are the very same value.
        let a2 = FactValue::from_json(&node_facts("web1", "10.0.0.1"));
        assert!(Arc::ptr_eq(object(&a), object(&a2)));
        assert_eq!(a, a2);
    }

    #[test]
    fn the_table_forgets_what_no_value_references() {
        let j = serde_json::json!({"h3-sweep-test": {"only-here": ["one of a kind"]}});
        let v = FactValue::from_json(&j);
        let inner = Arc::downgrade(object(v.get("h3-sweep-test").unwrap()));
        let FactValue::Object(o) = &v else { panic!() };
        let key = Arc::downgrade(&o[0].0);
        // Held by a value: a sweep keeps it, and interning again shares it.
        sweep_interned();
        assert!(inner.upgrade().is_some());
        let again = FactValue::from_json(&j);
        assert!(Arc::ptr_eq(object(&v), object(&again)));
        drop((v, again));
        // Nothing else holds it: a sweep drops it, members too.
        sweep_interned();
        assert!(inner.upgrade().is_none(), "the object left the table");
        assert!(key.upgrade().is_none(), "its key left the table");
        // Values made afterwards are whole again.
        assert_eq!(FactValue::from_json(&j).to_json(), j);
    }

    #[test]
    fn the_table_does_not_grow_with_facts_that_came_and_went() {
        // Each node's address changes 40,000 times: 80,000 entries made
        // and dropped; the table sweeps itself as it doubles.
        for i in 0..40_000u32 {
            let v = FactValue::from_json(&serde_json::json!({"ip": format!("h3-{i}")}));
            assert!(v.is_object());
        }
        let n = interned_count();
        assert!(n < 4 * SWEEP_MIN, "{n} entries left in the table");
    }
}
