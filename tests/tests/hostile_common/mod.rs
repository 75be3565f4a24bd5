//! Shared helpers of the hostile-input tests (`hostile_*.rs`): raw gRPC
//! calls with hand-made HTTP/2 bodies, a small module tree, and views of
//! the master's state to prove a refusal changed nothing.

#![allow(dead_code)]

use http_body_util::{BodyExt, Full};
use std::path::Path;
use tonic::codegen::{Bytes, Service, http};
use tonic::transport::Channel;
use troupe_tests::Master;

/// A gRPC length-prefixed frame: compression flag, DECLARED length (which
/// may lie), then `body`.
pub fn frame(flag: u8, declared_len: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + body.len());
    v.push(flag);
    v.extend_from_slice(&declared_len.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// An honest frame around `body`.
pub fn msg(body: &[u8]) -> Vec<u8> {
    frame(0, body.len() as u32, body)
}

/// Sends `body` as the raw HTTP/2 request body of gRPC method `path`
/// (`/troupe.v1.Ca/SubmitCsr`) on `ch`, and returns the gRPC status the
/// master answered with (from the headers or the trailers).
pub async fn raw_call(
    ch: &Channel,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> tonic::Status {
    let mut ch = ch.clone();
    let mut req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(tonic::body::Body::new(Full::new(Bytes::from(body))))
        .expect("request");
    std::future::poll_fn(|cx| ch.poll_ready(cx))
        .await
        .expect("channel ready");
    let resp = ch.call(req).await.expect("an HTTP/2 answer");
    let (parts, body) = resp.into_parts();
    if let Some(s) = tonic::Status::from_header_map(&parts.headers) {
        return s;
    }
    let collected = body.collect().await.expect("response body");
    let trailers = collected
        .trailers()
        .cloned()
        .expect("a gRPC answer has a status in its headers or trailers");
    tonic::Status::from_header_map(&trailers).expect("grpc-status in the trailers")
}

/// Asserts `s` has `code` and a message containing `needle`.
pub fn assert_status(s: &tonic::Status, code: tonic::Code, needle: &str, what: &str) {
    assert_eq!(s.code(), code, "{what}: {s:?}");
    assert!(
        s.message().contains(needle),
        "{what}: {needle:?} not in {:?}",
        s.message()
    );
}

/// A TLS channel verified against the master's CA, without a client
/// certificate (what a bootstrapping host has).
pub async fn anonymous_channel(m: &Master) -> Channel {
    troupe_pki::tls::install_crypto_provider();
    let cfg = troupe_pki::tls::client_config(&m.ca_der(), vec![], None).expect("tls config");
    troupe_identity::connect_with(cfg, &m.url)
        .await
        .expect("connect")
}

/// `DATA/ca/audit.log` as it is now.
pub fn ca_audit(m: &Master) -> String {
    std::fs::read_to_string(m.data.join("ca/audit.log")).unwrap_or_default()
}

/// `DATA/access-audit.log` as it is now (empty when absent).
pub fn access_audit(m: &Master) -> String {
    std::fs::read_to_string(m.data.join("access-audit.log")).unwrap_or_default()
}

/// `troupe audit verify` on the access audit log succeeds.
pub fn assert_access_audit_verifies(m: &Master) {
    troupe_tests::run(
        std::process::Command::new(troupe_tests::troupe_bin())
            .args(["audit", "verify"])
            .arg(m.data.join("access-audit.log")),
    )
    .assert_success();
}

/// What the master knows of its fleet (check-ins, facts, last reports),
/// through the admin socket, without the clock.
pub fn fleet(m: &Master) -> serde_json::Value {
    let resp = troupe_master::admin::call(
        &m.data,
        &troupe_master::admin::AdminRequest::Nodes {
            r#where: vec![],
            role: None,
        },
    )
    .expect("admin socket")
    .expect("master running");
    assert!(resp.ok, "{:?}", resp.error);
    resp.result.expect("result")["nodes"].clone()
}

/// The latest report the master stored for `host`, if any.
pub fn last_report(m: &Master, host: &str) -> Option<serde_json::Value> {
    let resp = troupe_master::admin::call(
        &m.data,
        &troupe_master::admin::AdminRequest::Report {
            host: host.into(),
            run: None,
        },
    )
    .expect("admin socket")
    .expect("master running");
    resp.ok
        .then(|| resp.result.expect("result")["report"].clone())
}

/// Facts a real agent would send.
pub fn facts(host: &str) -> serde_json::Value {
    serde_json::json!({
        "hostname": host, "fqdn": format!("{host}.example.com"),
        "os": {"family": "Debian", "name": "Debian",
               "release": {"full": "12.5", "major": "12"}, "codename": "bookworm"},
        "kernel": {"name": "Linux", "release": "6.1.0"},
        "architecture": "x86_64", "processors": {"count": 2},
        "memory": {"total_bytes": 1073741824},
        "networking": {"ip": "127.0.0.1", "interfaces": {}},
        "uptime_seconds": 5
    })
}

/// A small module tree: every node gets a motd naming it and its role;
/// `web*` nodes also get a page; per-node data from
/// `data/nodes/CERTNAME.toml` and per-OS data from `data/os/FAMILY.toml`.
pub fn write_tree(dir: &Path) {
    let env = dir.join("environments/production");
    for d in [
        "roles",
        "profiles",
        "data/nodes",
        "data/os",
        "templates",
        "files",
    ] {
        std::fs::create_dir_all(env.join(d)).unwrap();
    }
    let w = |rel: &str, text: &str| std::fs::write(env.join(rel), text).unwrap();
    std::fs::write(
        dir.join("site.toml"),
        "default_environment = \"production\"\n\n[[node]]\nmatch = \"web*\"\nrole = \"web\"\n\n\
         [[node]]\nmatch = \"*\"\nrole = \"base\"\n",
    )
    .unwrap();
    w(
        "hierarchy.toml",
        "[[level]]\nname = \"node\"\npath = \"nodes/{{ node.certname }}.toml\"\n\n\
         [[level]]\nname = \"os\"\npath = \"os/{{ facts.os.family }}.toml\"\n\n\
         [[level]]\nname = \"common\"\npath = \"common.toml\"\n",
    );
    w("data/common.toml", "[motd]\nbanner = \"Welcome\"\n");
    w(
        "data/os/Debian.toml",
        "[motd]\nbanner = \"Welcome to Debian\"\n",
    );
    w(
        "data/nodes/web1.toml",
        "[motd]\nbanner = \"web1 private banner\"\n",
    );
    w("roles/base.toml", "include = [\"motd\"]\n");
    w("roles/web.toml", "include = [\"motd\", \"www\"]\n");
    w(
        "profiles/motd.toml",
        "[params]\nbanner = \"unset\"\n\n[file.\"/etc/motd\"]\ntemplate = \"motd.j2\"\nmode = \"0644\"\n",
    );
    w(
        "templates/motd.j2",
        "{{ params.banner }} ({{ node.certname }}, role {{ node.role }})\n",
    );
    w(
        "profiles/www.toml",
        "[directory.\"/srv/www\"]\nmode = \"0755\"\n\n[file.\"/srv/www/index.html\"]\n\
         content = \"<h1>{{ node.certname }}</h1>\\n\"\nmode = \"0644\"\n\n\
         [file.\"/srv/www/logo.txt\"]\nsource = \"logo.txt\"\nmode = \"0644\"\n",
    );
    std::fs::write(env.join("files/logo.txt"), "web1 logo\n").unwrap();
}

/// A master serving [`write_tree`] (polling for code changes every
/// 200 ms), with `hosts` bootstrapped. Returns the master, the tree's
/// directory and the temporary directory holding it.
pub fn master_with_tree(hosts: &[&str]) -> (Master, std::path::PathBuf, tempfile::TempDir) {
    let tree = tempfile::tempdir().unwrap();
    let modules = tree.path().join("modules");
    write_tree(&modules);
    let m = Master::start_with(troupe_tests::MasterOptions {
        modules: Some(modules.clone()),
        extra_args: vec!["--code-poll".into(), "200ms".into()],
    });
    for h in hosts {
        let psk = m.psk(h);
        m.bootstrap(h, Some(&psk)).assert_success();
    }
    (m, modules, tree)
}

/// GetCatalog for the holder of `ch`, with `facts`.
pub async fn get_catalog(
    ch: &Channel,
    facts: &serde_json::Value,
) -> Result<troupe_catalog::Catalog, tonic::Status> {
    use troupe_proto::v1::catalog_client::CatalogClient;
    let r = CatalogClient::new(ch.clone())
        .max_decoding_message_size(troupe_catalog::MAX_CATALOG_BYTES)
        .get_catalog(troupe_proto::v1::CatalogRequest {
            facts_json: serde_json::to_vec(facts).unwrap(),
            have_hash: String::new(),
            environment: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(troupe_catalog::Catalog::from_json(&r.catalog_json).expect("a valid catalog"))
}

/// SHA-256 hex of `s`.
pub fn sha(s: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s))
}
