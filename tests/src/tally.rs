//! The suite's ledger of faults injected and hostile inputs tried.
//!
//! Tests call [`fault`] after surviving an injected fault and [`hostile`]
//! after sending a hostile input; each call appends one JSON line to a file
//! of this process in the tally directory (`$TROUPE_TALLY_DIR`, or
//! `troupe-ledger/` beside the binaries: not `troupe-tally/` nor
//! `troupe-tally.d`, which are the binary and cargo's dep-info for it).
//! `scripts/test.sh` empties the directory before the suite and runs the
//! `troupe-tally` binary after it, which prints the table: faults injected,
//! hostile inputs tried, refused, data lost (which must be 0).
//!
//! Record only what the test has asserted: a record is written after the
//! assertions that prove it, so a failing test records nothing.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One line of the ledger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// `fault` or `hostile`.
    pub kind: String,
    /// Area of the system, e.g. `master-kill`, `csr`, `protobuf`, `command`.
    pub area: String,
    /// What exactly was done, e.g. `killed during report upload`.
    pub what: String,
    /// Hostile inputs: whether it was refused. Faults: whether it was survived.
    pub held: bool,
    /// Units of data lost (reports, certificates, files). Must be 0.
    pub lost: u64,
}

/// The directory the ledger files live in.
pub fn dir() -> PathBuf {
    if let Ok(d) = std::env::var("TROUPE_TALLY_DIR") {
        return PathBuf::from(d);
    }
    crate::bin_dir().join("troupe-ledger")
}

fn append(e: &Entry) {
    let d = dir();
    // The ledger is a report, never a reason for a test to fail.
    if std::fs::create_dir_all(&d).is_err() {
        return;
    }
    let file = d.join(format!("{}.jsonl", std::process::id()));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        && let Ok(line) = serde_json::to_string(e)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Records a fault the suite injected and survived with `lost` units of
/// data lost (call it after asserting the outcome).
pub fn fault(area: &str, what: &str, lost: u64) {
    append(&Entry {
        kind: "fault".into(),
        area: area.into(),
        what: what.into(),
        held: true,
        lost,
    });
}

/// Records a hostile input the suite sent, and whether it was refused
/// (call it after asserting the refusal and that nothing changed).
pub fn hostile(area: &str, what: &str, refused: bool) {
    append(&Entry {
        kind: "hostile".into(),
        area: area.into(),
        what: what.into(),
        held: refused,
        lost: 0,
    });
}

/// Reads every entry in the ledger directory (unreadable lines are counted
/// as an error, not skipped silently).
pub fn read_all(d: &std::path::Path) -> (Vec<Entry>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    let Ok(rd) = std::fs::read_dir(d) else {
        return (out, 0);
    };
    let mut paths: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let Ok(text) = std::fs::read_to_string(&p) else {
            bad += 1;
            continue;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Entry>(line) {
                Ok(e) => out.push(e),
                Err(_) => bad += 1,
            }
        }
    }
    (out, bad)
}

/// Renders the summary table: one row per (kind, area), then totals.
pub fn table(entries: &[Entry]) -> String {
    use std::collections::BTreeMap;
    #[derive(Default)]
    struct Row {
        tried: u64,
        held: u64,
        lost: u64,
    }
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    for e in entries {
        let r = rows.entry((e.kind.clone(), e.area.clone())).or_default();
        r.tried += 1;
        r.held += e.held as u64;
        r.lost += e.lost;
    }
    let mut s = String::new();
    s.push_str(&format!(
        "{:<8} {:<22} {:>7} {:>17} {:>9}\n",
        "kind", "area", "tried", "refused/survived", "data lost"
    ));
    let (mut ft, mut fh, mut ht, mut hh, mut lost) = (0, 0, 0, 0, 0);
    for ((kind, area), r) in &rows {
        s.push_str(&format!(
            "{:<8} {:<22} {:>7} {:>17} {:>9}\n",
            kind, area, r.tried, r.held, r.lost
        ));
        if kind == "fault" {
            ft += r.tried;
            fh += r.held;
        } else {
            ht += r.tried;
            hh += r.held;
        }
        lost += r.lost;
    }
    s.push_str(&format!(
        "faults injected: {ft} (survived {fh}); hostile inputs tried: {ht}, refused: {hh}; data lost: {lost}\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_counts_and_totals() {
        let e = |kind: &str, area: &str, held: bool, lost: u64| Entry {
            kind: kind.into(),
            area: area.into(),
            what: "x".into(),
            held,
            lost,
        };
        let t = table(&[
            e("fault", "master-kill", true, 0),
            e("fault", "master-kill", true, 0),
            e("hostile", "csr", true, 0),
            e("hostile", "csr", false, 0),
            e("fault", "disk-full", true, 1),
        ]);
        assert!(t.contains("faults injected: 3 (survived 3)"), "{t}");
        assert!(t.contains("hostile inputs tried: 2, refused: 1"), "{t}");
        assert!(t.contains("data lost: 1"), "{t}");
    }

    #[test]
    fn read_all_counts_bad_lines() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("1.jsonl"),
            "{\"kind\":\"fault\",\"area\":\"a\",\"what\":\"w\",\"held\":true,\"lost\":0}\nnot json\n",
        )
        .unwrap();
        let (e, bad) = read_all(d.path());
        assert_eq!(e.len(), 1);
        assert_eq!(bad, 1);
    }
}
