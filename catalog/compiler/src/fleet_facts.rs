//! The facts a [`crate::FleetSnapshot`] holds per node, in a compact,
//! read-only form (issue 20: master memory per node).
//!
//! The master keeps every node's last stable facts for `fleet()`, and a
//! `serde_json::Value` is costly to hold: each JSON object is a `BTreeMap`
//! whose first leaf allocates room for eleven entries (~630 bytes), so the
//! ~700 bytes of facts an agent sends took ~9 KB of heap per node. Here an
//! object is a boxed slice of (key, value) pairs sorted by key (40 bytes
//! per entry, found by binary search), an array a boxed slice, a string a
//! `Box<str>`. Values are converted back to JSON only for the facts a
//! query names.

use serde_json::Value as J;

/// A JSON value, compact and immutable.
#[derive(Debug, Clone, PartialEq)]
pub enum FactValue {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(Box<str>),
    Array(Box<[FactValue]>),
    /// Entries sorted by key; keys unique.
    Object(Box<[(Box<str>, FactValue)]>),
}

impl Default for FactValue {
    /// An empty object.
    fn default() -> Self {
        FactValue::Object(Box::new([]))
    }
}

impl FactValue {
    /// The compact form of `j`.
    pub fn from_json(j: &J) -> FactValue {
        match j {
            J::Null => FactValue::Null,
            J::Bool(b) => FactValue::Bool(*b),
            J::Number(n) => FactValue::Number(n.clone()),
            J::String(s) => FactValue::String(s.as_str().into()),
            J::Array(a) => FactValue::Array(a.iter().map(FactValue::from_json).collect()),
            J::Object(m) => {
                let mut entries: Vec<(Box<str>, FactValue)> = m
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), FactValue::from_json(v)))
                    .collect();
                // serde_json's map is sorted unless a crate in the build
                // turns on `preserve_order`: sort here whatever it is.
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                FactValue::Object(entries.into_boxed_slice())
            }
        }
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
}
