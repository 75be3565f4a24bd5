//! A catalog that lists other nodes (`fleet()`) is compiled again only when
//! a fact it could have read changed (issue 20 item 1): a real master, the
//! nodes checking in over mutual TLS with facts the test chooses, the
//! master's compiles counted from its metrics.
//!
//! lb1's template lists the web nodes with their `networking.ip`. A db node
//! that changes, a web node's other facts, a new db node: lb1's next
//! check-in is "unchanged" and costs no compile. A web node's address, a
//! new web node, a web node that becomes a db node: lb1 gets a new catalog
//! that shows it.

use std::path::Path;
use troupe_proto::v1::catalog_client::CatalogClient;
use troupe_proto::v1::{CatalogRequest, SubmitCsrRequest};
use troupe_tests::{Master, MasterOptions, make_csr};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
}

/// Nodes are classified by their certificate name's first label.
fn write_tree(dir: &Path) {
    let e = "environments/production";
    write(
        dir,
        "site.toml",
        "default_environment = \"production\"\n\
         [[node]]\nmatch = \"web*\"\nrole = \"web\"\n\
         [[node]]\nmatch = \"db*\"\nrole = \"db\"\n\
         [[node]]\nmatch = \"lb*\"\nrole = \"lb\"\n",
    );
    write(
        dir,
        &format!("{e}/hierarchy.toml"),
        "[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
    );
    write(dir, &format!("{e}/data/common.toml"), "");
    write(dir, &format!("{e}/roles/db.toml"), "include = [\"motd\"]\n");
    write(
        dir,
        &format!("{e}/roles/web.toml"),
        "include = [\"motd\"]\n",
    );
    write(
        dir,
        &format!("{e}/roles/lb.toml"),
        "include = [\"motd\", \"backends\"]\n",
    );
    write(
        dir,
        &format!("{e}/profiles/motd.toml"),
        "[file.\"/etc/motd\"]\ncontent = \"hello\\n\"\nmode = \"0644\"\n",
    );
    write(
        dir,
        &format!("{e}/profiles/backends.toml"),
        "[file.\"/etc/backends\"]\ntemplate = \"backends.j2\"\nmode = \"0644\"\n",
    );
    write(
        dir,
        &format!("{e}/templates/backends.j2"),
        "{% for h in fleet(role=\"web\", facts=[\"networking.ip\"]) %}\
         server {{ h.name }} {{ h.facts['networking.ip'] }}\n{% endfor %}",
    );
}

/// The master's count of catalog compiles, from its metrics listener.
fn compiles(port: u16) -> u64 {
    let body = troupe_tests::metrics_text(port).expect("metrics listener");
    body.lines()
        .find_map(|l| l.strip_prefix("troupe_catalog_compile_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no compile count in:\n{body}"))
}

struct Node {
    client: CatalogClient<tonic::transport::Channel>,
    have: String,
}

/// What one check-in returned: "unchanged", or the new catalog's JSON.
#[derive(Debug)]
enum Answer {
    Unchanged,
    New(String),
}

impl Node {
    async fn enrol(m: &Master, host: &str) -> Node {
        use rustls::pki_types::pem::PemObject;
        let psk = m.psk_fast(host);
        let (key, csr) = make_csr(host, Some(&psk));
        let st = m
            .ca_client()
            .await
            .submit_csr(SubmitCsrRequest {
                name: host.into(),
                csr,
            })
            .await
            .unwrap()
            .into_inner();
        let cert = rustls::pki_types::CertificateDer::from_pem_slice(st.certificate_pem.as_bytes())
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let cfg =
            troupe_pki::tls::client_config(&m.ca_der(), vec![], Some((vec![cert], key))).unwrap();
        let ch = troupe_identity::connect_with(cfg, &m.url).await.unwrap();
        Node {
            client: CatalogClient::new(ch),
            have: String::new(),
        }
    }

    async fn checkin(&mut self, m: &Master, facts: serde_json::Value) -> Answer {
        let r = self
            .client
            .get_catalog(CatalogRequest {
                facts_json: serde_json::to_vec(&facts).unwrap(),
                have_hash: self.have.clone(),
                environment: String::new(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("check-in: {e}\n{}", m.log()))
            .into_inner();
        self.have = r.catalog_hash;
        if r.unchanged {
            Answer::Unchanged
        } else {
            Answer::New(String::from_utf8(r.catalog_json).unwrap())
        }
    }
}

fn facts(ip: &str, mem: u64) -> serde_json::Value {
    serde_json::json!({
        "kernel": {"name": "Linux"},
        "networking": {"ip": ip},
        "memory": {"total_mb": mem},
    })
}

#[test]
fn a_fleet_catalog_recompiles_only_when_what_it_read_changes() {
    troupe_pki::tls::install_crypto_provider();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tree = tempfile::tempdir().unwrap();
    write_tree(tree.path());
    let m = Master::start_with(MasterOptions {
        modules: Some(tree.path().to_path_buf()),
        extra_args: vec!["--metrics-listen".into(), format!("127.0.0.1:{port}")],
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut web1 = Node::enrol(&m, "web1").await;
        let mut web2 = Node::enrol(&m, "web2").await;
        let mut db1 = Node::enrol(&m, "db1").await;
        let mut lb1 = Node::enrol(&m, "lb1").await;
        web1.checkin(&m, facts("10.0.0.1", 1000)).await;
        web2.checkin(&m, facts("10.0.0.2", 1000)).await;
        db1.checkin(&m, facts("10.0.1.1", 1000)).await;
        let Answer::New(c) = lb1.checkin(&m, facts("10.0.2.1", 1000)).await else {
            panic!("lb1's first check-in is a compile");
        };
        assert!(c.contains("server web1 10.0.0.1"), "{c}");
        assert!(c.contains("server web2 10.0.0.2"), "{c}");
        assert!(!c.contains("db1"), "{c}");
        let lb_facts = || facts("10.0.2.1", 1000);

        // Changes lb1's query cannot see: no compile for lb1.
        db1.checkin(&m, facts("10.0.1.9", 2000)).await;
        web1.checkin(&m, facts("10.0.0.1", 4000)).await;
        let mut db2 = Node::enrol(&m, "db2").await;
        db2.checkin(&m, facts("10.0.1.2", 1000)).await;
        let before = compiles(port);
        let a = lb1.checkin(&m, lb_facts()).await;
        assert!(matches!(a, Answer::Unchanged), "{a:?}");
        assert_eq!(
            compiles(port),
            before,
            "lb1 was compiled again for changes it did not read"
        );
        // Still current (no compile) on the next one.
        let a = lb1.checkin(&m, lb_facts()).await;
        assert!(matches!(a, Answer::Unchanged), "{a:?}");
        assert_eq!(compiles(port), before);

        // A named fact of a listed node: a compile and the new address.
        web2.checkin(&m, facts("10.0.0.22", 1000)).await;
        let before = compiles(port);
        let Answer::New(c) = lb1.checkin(&m, lb_facts()).await else {
            panic!("web2's new address did not reach lb1");
        };
        assert_eq!(compiles(port), before + 1);
        assert!(c.contains("server web2 10.0.0.22"), "{c}");

        // A new web node enters the list.
        let mut web3 = Node::enrol(&m, "web3").await;
        web3.checkin(&m, facts("10.0.0.3", 1000)).await;
        let Answer::New(c) = lb1.checkin(&m, lb_facts()).await else {
            panic!("web3 did not reach lb1");
        };
        assert!(c.contains("server web3 10.0.0.3"), "{c}");

        // A revoked web node leaves it (the fleet data is rebuilt from the
        // store; what changed is found by comparing).
        m.ca_ok(&["revoke", "web1"]);
        let Answer::New(c) = lb1.checkin(&m, lb_facts()).await else {
            panic!("web1's revocation did not reach lb1");
        };
        assert!(!c.contains("web1"), "{c}");
        assert!(c.contains("server web3 10.0.0.3"), "{c}");
        // Then db2 is revoked: lb1 does not depend on it.
        m.ca_ok(&["revoke", "db2"]);
        // Any check-in rebuilds the fleet data (db1's is a cache hit that
        // needs none; web3's facts changed, so it compiles and rebuilds).
        web3.checkin(&m, facts("10.0.0.3", 8000)).await;
        let before = compiles(port);
        let a = lb1.checkin(&m, lb_facts()).await;
        assert!(matches!(a, Answer::Unchanged), "{a:?}");
        assert_eq!(compiles(port), before, "db2's revocation recompiled lb1");
    });
}
