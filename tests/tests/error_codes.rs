//! Typed error codes (ADR 0008): the master's refusals carry a stable
//! `code` on the admin socket and a `troupe-error-code` on gRPC, and the
//! CLIs decide by that code, never by the message's wording.

use std::io::{BufRead, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use tonic::Code;
use troupe_proto::error_code::{ErrorCode, code_of};
use troupe_proto::v1::SubmitCsrRequest;
use troupe_tests::{Master, make_csr, troupe_bin};

/// Sends one raw request line to the running master's admin socket.
fn admin(data: &Path, line: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(data.join("admin.sock")).expect("admin socket");
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    serde_json::from_str(buf.trim()).unwrap_or_else(|e| panic!("{e}: {buf:?}"))
}

#[test]
fn admin_socket_error_answers_carry_codes() {
    let m = Master::start();
    for (req, code) in [
        (r#"{"op":"sign","host":"ghost"}"#, "no_pending_request"),
        (r#"{"op":"reject","host":"ghost"}"#, "no_pending_request"),
        (r#"{"op":"revoke","host":"ghost"}"#, "no_valid_certificate"),
        (
            r#"{"op":"psk-new","host":"Bad","ttl_secs":60}"#,
            "invalid_argument",
        ),
        (r#"{"op":"report","host":"ghost"}"#, "not_found"),
        (r#"{"op":"report-list","host":"ghost"}"#, "not_found"),
        (r#"{"op":"facts","host":"ghost"}"#, "not_found"),
        (r#"{"op":"nodes","where":["nofact"]}"#, "invalid_argument"),
        (r#"{"op":"env-status"}"#, "no_module_tree"),
        (r#"{"op":"rm -rf"}"#, "invalid_argument"),
    ] {
        let v = admin(&m.data, req);
        assert_eq!(v["ok"], false, "{req}: {v}");
        assert_eq!(v["code"], code, "{req}: {v}");
        assert!(!v["error"].as_str().unwrap_or_default().is_empty(), "{v}");
    }
    // A success carries no code.
    let v = admin(&m.data, r#"{"op":"fingerprint"}"#);
    assert_eq!(v["ok"], true);
    assert!(v.get("code").is_none(), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_refusals_carry_codes() {
    let m = Master::start();
    let psk = m.psk("web1");
    let mut c = m.ca_client().await;
    let submit = |name: &str, der: Vec<u8>| SubmitCsrRequest {
        name: name.into(),
        csr: der,
    };

    let (_, der) = make_csr("web1", Some(&"0".repeat(64)));
    let s = c.submit_csr(submit("web1", der)).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    assert_eq!(code_of(&s), Some(ErrorCode::PermissionDenied), "{s:?}");

    let (_, der) = make_csr("web1", Some(&psk));
    let s = c.submit_csr(submit("web2", der)).await.unwrap_err();
    assert_eq!(code_of(&s), Some(ErrorCode::InvalidArgument), "{s:?}");

    // Certified once, a second request for the name is refused as such.
    m.bootstrap("web1", Some(&psk)).assert_success();
    let psk2 = m.psk("web1");
    let (_, der) = make_csr("web1", Some(&psk2));
    let s = c.submit_csr(submit("web1", der)).await.unwrap_err();
    assert_eq!(code_of(&s), Some(ErrorCode::AlreadyCertified), "{s:?}");

    // Revoked and asked for again: `revoked`.
    m.ca_ok(&["revoke", "web1"]);
    let (_, der) = make_csr("web1", Some(&psk2));
    let s = c.submit_csr(submit("web1", der)).await.unwrap_err();
    assert_eq!(code_of(&s), Some(ErrorCode::Revoked), "{s:?}");

    // The master serves no module tree: a catalog request says so by code.
    let psk3 = m.psk("web3");
    m.bootstrap("web3", Some(&psk3)).assert_success();
    let ch = m.agent_channel("web3").await.unwrap();
    let s = troupe_proto::v1::catalog_client::CatalogClient::new(ch)
        .get_catalog(troupe_proto::v1::CatalogRequest {
            facts_json: b"{}".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&s), Some(ErrorCode::NoModuleTree), "{s:?}");
}

/// A stand-in master: answers every admin request with `answer`, so the
/// CLI's reaction to a code can be checked with any wording.
fn fake_admin(data: &Path, answer: &'static str) -> std::thread::JoinHandle<()> {
    std::fs::create_dir_all(data).unwrap();
    let l = UnixListener::bind(data.join("admin.sock")).unwrap();
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            let mut r = std::io::BufReader::new(&s);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = (&s).write_all(answer.as_bytes());
            let _ = (&s).write_all(b"\n");
        }
    })
}

fn cli(data: &Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(troupe_bin())
        .args(args)
        .arg("--data")
        .arg(data)
        .env_remove("TROUPE_DATA")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_hints_follow_the_code_not_the_wording() {
    let d = tempfile::tempdir().unwrap();
    // The code, with a message the CLI has never seen: the hint is given.
    let data = d.path().join("a");
    let t = fake_admin(
        &data,
        r#"{"ok":false,"error":"nobody asked for web1","code":"no_pending_request"}"#,
    );
    let (rc, err) = cli(&data, &["ca", "sign", "web1"]);
    t.join().unwrap();
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("nobody asked for web1"), "{err}");
    assert!(err.contains("`troupe ca list --pending`"), "{err}");

    // The old wording without a code: the text alone decides nothing.
    let data = d.path().join("b");
    let t = fake_admin(
        &data,
        r#"{"ok":false,"error":"no pending certificate request for \"web1\""}"#,
    );
    let (rc, err) = cli(&data, &["ca", "sign", "web1"]);
    t.join().unwrap();
    assert_eq!(rc, 1, "{err}");
    assert!(!err.contains("troupe ca list"), "{err}");

    // `troupe report`: not_found points at `troupe nodes`, whatever it says.
    let data = d.path().join("c");
    let t = fake_admin(
        &data,
        r#"{"ok":false,"error":"web9? never heard of it","code":"not_found"}"#,
    );
    let (rc, err) = cli(&data, &["report", "web9"]);
    t.join().unwrap();
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("web9? never heard of it"), "{err}");
    assert!(err.contains("`troupe nodes` lists the nodes"), "{err}");
}
