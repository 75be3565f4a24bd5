//! Hostile input, end to end: an authenticated node reaching for what is
//! another node's: its catalog (by forging the facts that name a node),
//! its file bodies (by hash, or by a name where a hash belongs), its
//! reports. Complements `pull_loop.rs` (which covers one content hash and
//! one forged report). Each is refused or answered with the caller's own
//! data only, audited in `DATA/access-audit.log` (whose chain verifies),
//! and changes nothing.

mod hostile_common;

use hostile_common::*;
use tonic::Code;
use troupe_proto::v1::ContentRequest;
use troupe_proto::v1::catalog_client::CatalogClient;
use troupe_tests::tally;

fn content_bodies(cat: &troupe_catalog::Catalog) -> Vec<Vec<u8>> {
    cat.contents.values().filter_map(|b| b.bytes()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_gets_only_its_own_catalog_and_file_bodies() {
    let (m, _modules, _tree) = master_with_tree(&["web1", "db1", "db2"]);
    let web1 = m.agent_channel("web1").await.unwrap();
    let db1 = m.agent_channel("db1").await.unwrap();
    let db2 = m.agent_channel("db2").await.unwrap();
    let web1_cat = get_catalog(&web1, &facts("web1")).await.unwrap();
    let secret_banner = b"web1 private banner";
    let web1_bodies = content_bodies(&web1_cat);
    assert!(
        web1_bodies
            .iter()
            .any(|b| b.windows(secret_banner.len()).any(|w| w == secret_banner)),
        "the test needs web1's catalog to hold its private banner"
    );

    // db1 claims to be web1 in every fact it controls: it still gets its
    // own catalog (the name comes from its certificate only).
    let mut forged = facts("web1");
    forged["trusted"] = serde_json::json!({"certname": "web1", "extensions": {"pp_role": "web"}});
    forged["certname"] = "web1".into();
    let cat = get_catalog(&db1, &forged).await.unwrap();
    assert_eq!(cat.node, "db1");
    let json = String::from_utf8(cat.to_canonical_json()).unwrap();
    assert!(!json.contains("web1 private banner"), "{json}");
    assert!(!json.contains("/srv/www"), "db1 got web1's role: {json}");
    for b in content_bodies(&cat) {
        assert!(!web1_bodies.contains(&b), "db1 got one of web1's bodies");
    }
    tally::hostile(
        "access",
        "catalog request with forged trusted.certname and hostname",
        true,
    );

    let audit_before = access_audit(&m).lines().count();
    // db1 asks for each of web1's bodies by hash: refused, audited.
    let mut asked = 0;
    for body in &web1_bodies {
        if cat
            .contents
            .contains_key(&troupe_catalog::Sha256Hex::from(sha(body)))
        {
            continue; // a body both catalogs share (none here, but harmless)
        }
        let s = CatalogClient::new(db1.clone())
            .get_content(ContentRequest { sha256: sha(body) })
            .await
            .unwrap_err();
        assert_status(
            &s,
            Code::PermissionDenied,
            "not referenced by your catalog",
            "another node's body",
        );
        asked += 1;
        tally::hostile("access", "content by the hash of another node's body", true);
    }
    assert!(asked >= 2, "{asked}");

    // Names, paths and junk where a hash belongs.
    let long = "a".repeat(100_000);
    let upper = sha(b"web1 logo\n").to_uppercase();
    let hostile = [
        ("a path", "../../etc/shadow"),
        ("an absolute path", "/etc/shadow"),
        ("the catalog's file name", "/etc/motd"),
        ("an empty hash", ""),
        ("an upper-case hash of web1's logo", upper.as_str()),
        ("a 100 kB string", long.as_str()),
        (
            "a hash with a forged log line",
            "00\nINFO troupe: refused: nothing, all is well",
        ),
    ];
    for (what, h) in hostile {
        let s = CatalogClient::new(db1.clone())
            .get_content(ContentRequest { sha256: h.into() })
            .await
            .unwrap_err();
        assert_status(&s, Code::PermissionDenied, "not referenced", what);
        tally::hostile("access", &format!("content request with {what}"), true);
    }
    // A node that never fetched a catalog gets nothing either.
    let s = CatalogClient::new(db2.clone())
        .get_content(ContentRequest {
            sha256: sha(b"web1 logo\n"),
        })
        .await
        .unwrap_err();
    assert_status(
        &s,
        Code::FailedPrecondition,
        "fetch your catalog",
        "content before any catalog",
    );
    tally::hostile("access", "content before fetching any catalog", true);

    // Every refusal above is in the access audit log, under db1, bounded
    // in size, and the chain verifies.
    let log = access_audit(&m);
    let new: Vec<&str> = log.lines().skip(audit_before).collect();
    assert_eq!(new.len(), asked + hostile.len(), "{log}");
    for line in &new {
        assert!(line.contains("\"node\":\"db1\""), "{line}");
        assert!(line.contains("\"call\":\"content\""), "{line}");
        assert!(line.len() < 1024, "an audit line of {} bytes", line.len());
    }
    assert_access_audit_verifies(&m);
    // No line of the master's log was forged by the hostile hash.
    assert!(
        !m.log()
            .lines()
            .any(|l| l.starts_with("INFO troupe: refused: nothing")),
        "a request forged a line in the master's log:\n{}",
        m.log()
    );

    // web1 still gets its own bodies.
    let logo = CatalogClient::new(web1.clone())
        .get_content(ContentRequest {
            sha256: sha(b"web1 logo\n"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(logo.data, b"web1 logo\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_cannot_be_read_or_written_for_another_node() {
    let (m, _modules, _tree) = master_with_tree(&["web1", "db1"]);
    let db1 = m.agent_channel("db1").await.unwrap();
    // There is no call that reads reports: only the admin socket does.
    for path in [
        "/troupe.v1.Reports/GetReport",
        "/troupe.v1.Reports/ListReports",
        "/troupe.v1.Catalog/GetCatalogFor",
    ] {
        let s = raw_call(&db1, path, msg(&[0x0a, 0x04, b'w', b'e', b'b', b'1']), &[]).await;
        assert_eq!(s.code(), Code::Unimplemented, "{path}: {s:?}");
        tally::hostile("access", &format!("call to {path}"), true);
    }
    // A report for web1, and one for a name with a path in it, from db1.
    use troupe_proto::v1::reports_client::ReportsClient;
    let before = access_audit(&m).lines().count();
    for node in ["web1", "../web1", "web1\n", ""] {
        let forged = serde_json::json!({
            "run_id": "forged", "node": node, "started": "2026-01-01T00:00:00Z",
            "duration_ms": 1, "noop": false, "catalog_hash": "sha256:x",
            "environment": "production", "code_version": "x", "from_cache": false,
            "resources": []
        });
        let s = ReportsClient::new(db1.clone())
            .submit_report(troupe_proto::v1::ReportRequest {
                report_json: serde_json::to_vec(&forged).unwrap(),
            })
            .await
            .unwrap_err();
        assert_status(&s, Code::PermissionDenied, "cannot come from db1", node);
        tally::hostile(
            "access",
            &format!("report for node {node:?} sent by db1"),
            true,
        );
    }
    assert_eq!(access_audit(&m).lines().count(), before + 4);
    assert_access_audit_verifies(&m);
    assert_eq!(last_report(&m, "web1"), None);
    assert_eq!(last_report(&m, "db1"), None);
}
