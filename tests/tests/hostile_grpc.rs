//! Hostile input, end to end: malformed and oversized gRPC messages sent
//! as raw HTTP/2 bodies (hand-made length-prefixed frames and protobuf) to
//! a real master, with and without a client certificate. Each is refused
//! with a specific status before any handler runs, and changes nothing: the
//! CA's state and audit log, the fleet store and the stored reports are the
//! same afterwards, and the master keeps serving.

mod hostile_common;

use hostile_common::*;
use tonic::Code;
use troupe_master::ca_service::MAX_CA_MESSAGE_BYTES;
use troupe_master::catalog_service::{MAX_FACTS_BYTES, MAX_REPORT_BYTES};
use troupe_tests::{Master, tally};

/// `name = "web1"` in a SubmitCsrRequest.
const NAME_WEB1: &[u8] = &[0x0a, 0x04, b'w', b'e', b'b', b'1'];

/// Malformed frames and protobuf bodies: (what, body, extra headers,
/// expected code, expected words of the message). `string_field`: the
/// tag byte of a string field of the method's request, if it has one.
#[allow(clippy::type_complexity)]
fn malformed(
    string_field: Option<u8>,
) -> Vec<(
    &'static str,
    Vec<u8>,
    Vec<(&'static str, &'static str)>,
    Code,
    &'static str,
)> {
    // (field 15: unknown to every request, so each decoder must skip it)
    let mut long_varint = vec![0x78];
    long_varint.extend_from_slice(&[0xff; 10]);
    long_varint.push(0x01);
    let mut v = vec![
        (
            "frame shorter than its declared length",
            frame(0, 100, NAME_WEB1),
            vec![],
            Code::Internal,
            "Unexpected EOF",
        ),
        (
            "frame header cut after 3 bytes",
            vec![0, 0, 0],
            vec![],
            Code::Internal,
            "Unexpected EOF",
        ),
        (
            "request with no message at all",
            vec![],
            vec![],
            Code::Internal,
            "Missing request message",
        ),
        (
            "compressed flag without grpc-encoding",
            frame(1, NAME_WEB1.len() as u32, NAME_WEB1),
            vec![],
            Code::Internal,
            "compressed-flag",
        ),
        (
            "invalid compression flag 7",
            frame(7, NAME_WEB1.len() as u32, NAME_WEB1),
            vec![],
            Code::Internal,
            "invalid compression flag",
        ),
        (
            "gzip body (the master offers no compression)",
            frame(1, NAME_WEB1.len() as u32, NAME_WEB1),
            vec![("grpc-encoding", "gzip")],
            Code::Unimplemented,
            "gzip",
        ),
        (
            "string field sent with the varint wire type",
            msg(&[0x08, 0x01]),
            vec![],
            Code::Internal,
            "invalid wire type",
        ),
        (
            "length-delimited field longer than the message",
            msg(&[0x7a, 0x32, 1, 2, 3]),
            vec![],
            Code::Internal,
            "buffer underflow",
        ),
        (
            "varint longer than 10 bytes",
            msg(&long_varint),
            vec![],
            Code::Internal,
            "invalid varint",
        ),
        (
            "field number 0",
            msg(&[0x00, 0x00]),
            vec![],
            Code::Internal,
            "invalid tag value: 0",
        ),
        (
            "reserved wire type 6",
            msg(&[0x0e]),
            vec![],
            Code::Internal,
            "invalid wire type value: 6",
        ),
        (
            "unknown field nesting groups 5000 deep",
            msg(&[0x7b; 5000]),
            vec![],
            Code::Internal,
            "recursion limit",
        ),
        (
            "frame declaring a 4 GiB message",
            frame(0, u32::MAX, &[]),
            vec![],
            Code::OutOfRange,
            "too large",
        ),
    ];
    if let Some(tag) = string_field {
        v.push((
            "invalid UTF-8 in a string field",
            msg(&[tag, 0x02, 0xc3, 0x28]),
            vec![],
            Code::Internal,
            "not UTF-8",
        ));
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_and_protobuf_to_the_ca_change_nothing() {
    let m = Master::start();
    let psk = m.psk("web1");
    let ch = anonymous_channel(&m).await;
    let before = m.list_all();
    let audit = ca_audit(&m);
    for (what, body, headers, code, needle) in malformed(Some(0x0a)) {
        let s = raw_call(&ch, "/troupe.v1.Ca/SubmitCsr", body, &headers).await;
        assert_status(&s, code, needle, what);
        assert_eq!(m.list_all(), before, "{what} changed the CA");
        assert_eq!(ca_audit(&m), audit, "{what} reached the CA");
        tally::hostile("protobuf", &format!("SubmitCsr: {what}"), true);
    }
    // Exactly one byte over the CA service's limit, body and all: refused
    // by size before it is decoded.
    let limit = MAX_CA_MESSAGE_BYTES;
    let s = raw_call(
        &ch,
        "/troupe.v1.Ca/SubmitCsr",
        frame(0, limit as u32 + 1, &vec![0x30; limit + 1]),
        &[],
    )
    .await;
    assert_status(
        &s,
        Code::OutOfRange,
        &format!("the limit is: {limit} bytes"),
        "CSR request over the limit",
    );
    tally::hostile("oversized", "SubmitCsr one byte over the CA limit", true);
    // A method that does not exist.
    let s = raw_call(&ch, "/troupe.v1.Ca/SignAnything", msg(NAME_WEB1), &[]).await;
    assert_eq!(s.code(), Code::Unimplemented, "{s:?}");
    tally::hostile("protobuf", "call to a method that does not exist", true);

    assert_eq!(m.list_all(), before);
    assert_eq!(ca_audit(&m), audit);
    // The master still serves, and the PSK was never consumed.
    m.bootstrap("web1", Some(&psk)).assert_success();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_bounds_its_messages_and_refuses_malformed_ones() {
    let (m, _modules, _tree) = master_with_tree(&["web1"]);
    let ch = m.agent_channel("web1").await.unwrap();
    // web1 has checked in once: the state to keep unchanged.
    get_catalog(&ch, &facts("web1")).await.unwrap();
    let fleet_before = fleet(&m);
    assert_eq!(fleet_before.as_array().unwrap().len(), 1, "{fleet_before}");
    let access = access_audit(&m);

    // Each service's decode limit is set, and sane for what it carries:
    // a CSR (20 KiB), facts (1 MiB), a report (16 MiB), a command (2 MiB).
    // (method, limit, tag of a string field of its request)
    let limits = [
        ("/troupe.v1.Ca/Renew", MAX_CA_MESSAGE_BYTES, None),
        (
            "/troupe.v1.Catalog/GetCatalog",
            MAX_FACTS_BYTES + 4096,
            Some(0x12),
        ),
        (
            "/troupe.v1.Catalog/GetContent",
            MAX_FACTS_BYTES + 4096,
            Some(0x0a),
        ),
        (
            "/troupe.v1.Reports/SubmitReport",
            MAX_REPORT_BYTES + 4096,
            None,
        ),
        ("/troupe.v1.Orchestration/Submit", 2 * 1024 * 1024, None),
    ];
    for (path, limit, string_field) in limits {
        assert!(
            limit <= 17 * 1024 * 1024,
            "{path}: limit {limit} is not sane"
        );
        let s = raw_call(&ch, path, frame(0, limit as u32 + 1, &[0; 64]), &[]).await;
        assert_status(
            &s,
            Code::OutOfRange,
            &format!("the limit is: {limit} bytes"),
            path,
        );
        tally::hostile(
            "oversized",
            &format!("{path}: one byte over its limit"),
            true,
        );
        for (what, body, headers, code, needle) in malformed(string_field) {
            let s = raw_call(&ch, path, body, &headers).await;
            assert_status(&s, code, needle, &format!("{path}: {what}"));
            tally::hostile("protobuf", &format!("{path}: {what}"), true);
        }
    }
    // A whole oversized report, really sent (not only declared).
    let big = vec![b' '; MAX_REPORT_BYTES + 4097];
    let mut body = vec![0x0a];
    let mut n = big.len();
    while n >= 0x80 {
        body.push((n as u8) | 0x80);
        n >>= 7;
    }
    body.push(n as u8);
    body.extend_from_slice(&big);
    let s = raw_call(&ch, "/troupe.v1.Reports/SubmitReport", msg(&body), &[]).await;
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    tally::hostile("oversized", "a 16 MiB report body sent whole", true);

    // Well-formed protobuf carrying hostile JSON.
    use troupe_proto::v1::catalog_client::CatalogClient;
    use troupe_proto::v1::reports_client::ReportsClient;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let hostile_json: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"{not json".to_vec()),
        ("a JSON array", b"[1,2,3]".to_vec()),
        ("nested 10000 deep", deep.clone().into_bytes()),
        (
            "invalid UTF-8 in a string",
            b"{\"hostname\":\"\xff\xfe\"}".to_vec(),
        ),
        ("trailing garbage", b"{}{}".to_vec()),
        ("empty", Vec::new()),
    ];
    for (what, json) in &hostile_json {
        let s = CatalogClient::new(ch.clone())
            .get_catalog(troupe_proto::v1::CatalogRequest {
                facts_json: json.clone(),
                have_hash: String::new(),
                environment: String::new(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_status(&s, Code::InvalidArgument, "facts", what);
        tally::hostile("protobuf", &format!("GetCatalog facts {what}"), true);
        let s = ReportsClient::new(ch.clone())
            .submit_report(troupe_proto::v1::ReportRequest {
                report_json: json.clone(),
            })
            .await
            .unwrap_err();
        assert_status(&s, Code::InvalidArgument, "report is not valid", what);
        tally::hostile("protobuf", &format!("SubmitReport {what}"), true);
    }
    // A disabled check-in whose mark is not the expected object.
    for (what, json) in hostile_json.iter().filter(|(_, j)| !j.is_empty()).chain([&(
        "a mark over 4 KiB",
        format!("{{\"reason\":\"{}\",\"since\":\"x\"}}", "r".repeat(5000)).into_bytes(),
    )]) {
        let s = CatalogClient::new(ch.clone())
            .get_catalog(troupe_proto::v1::CatalogRequest {
                facts_json: b"{}".to_vec(),
                disabled_json: json.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_status(&s, Code::InvalidArgument, "disabled_json", what);
        tally::hostile(
            "protobuf",
            &format!("GetCatalog disabled mark {what}"),
            true,
        );
    }
    let s = ReportsClient::new(ch.clone())
        .submit_report(troupe_proto::v1::ReportRequest {
            report_json: br#"{"run_id":"x","node":"web1"}"#.to_vec(),
        })
        .await
        .unwrap_err();
    assert_status(
        &s,
        Code::InvalidArgument,
        "missing field",
        "report missing fields",
    );
    tally::hostile("protobuf", "SubmitReport with missing fields", true);

    // Nothing changed: the fleet store, the reports, the access log.
    assert_eq!(fleet(&m), fleet_before);
    assert_eq!(last_report(&m, "web1"), None);
    assert_eq!(access_audit(&m), access);
    // And the master still serves web1.
    let cat = get_catalog(&ch, &facts("web1")).await.unwrap();
    assert_eq!(cat.node, "web1");
}
