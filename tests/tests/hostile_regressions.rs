//! The fuzz targets' inputs, on stable Rust in the normal suite: every
//! crash input committed under `fuzz/regressions/<target>/` and every seed
//! under `fuzz/corpus-seeds/<target>/` is fed to the very function the
//! libFuzzer target calls (`fuzz/src/lib.rs`, included here as a module),
//! which must return without panicking. Seeds are also checked to be
//! valid inputs (so the fuzzer starts from deep inside each parser).
//!
//! Regenerate the seeds with
//! `TROUPE_WRITE_FUZZ_SEEDS=1 cargo test -p troupe-tests --test hostile_regressions write_seeds -- --ignored`.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod troupe_fuzz;

use std::path::PathBuf;
use troupe_tests::tally;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

#[test]
fn committed_crash_inputs_are_refused_without_panicking() {
    let mut n = 0;
    for t in troupe_fuzz::TARGETS {
        for (path, data) in troupe_fuzz::files_in(&fuzz_dir().join("regressions").join(t)) {
            let r = std::panic::catch_unwind(|| troupe_fuzz::run(t, &data));
            assert!(r.is_ok(), "{} panics again", path.display());
            n += 1;
            tally::hostile(
                "fuzz-regression",
                &format!("{t}: {}", path.file_name().unwrap().to_string_lossy()),
                true,
            );
        }
    }
    eprintln!("{n} regression inputs");
}

#[test]
fn seeds_are_valid_inputs_and_pass_the_targets() {
    let seeds = fuzz_dir().join("corpus-seeds");
    for t in troupe_fuzz::TARGETS {
        let files = troupe_fuzz::files_in(&seeds.join(t));
        assert!(files.len() >= 3, "too few seeds for {t}");
        for (path, data) in files {
            troupe_fuzz::run(t, &data);
            let ok = match *t {
                "csr" => troupe_pki::csr::check_csr(&data, "web1").is_ok(),
                "catalog" => troupe_catalog::Catalog::from_json(&data).is_ok(),
                "envelope" => {
                    troupe_command::SignedCommand::from_wire(&data).is_ok()
                        || troupe_command::Command::decode(&data).is_ok()
                }
                "module_tree" => true,
                _ => false,
            };
            assert!(ok, "seed {} is not a valid input", path.display());
        }
    }
}

/// Inputs a hostile peer would try first, through every target: none may
/// panic.
#[test]
fn classic_hostile_inputs_do_not_panic_any_target() {
    let mut inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xff; 64],
        vec![0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
        vec![0x30, 0x80, 0x30, 0x80, 0x00, 0x00],
        b"[".repeat(100_000),
        b"{\"format\":1,".to_vec(),
        b"{\"format\":18446744073709551616}".to_vec(),
        u32::MAX.to_be_bytes().to_vec(),
        b"-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n".to_vec(),
    ];
    for sel in 0..troupe_fuzz::TREE_FILES.len() as u8 {
        for body in [
            &b"[[[[["[..],
            b"{% for i in range(100000000) %}{{ i }}{% endfor %}",
            b"x = \"\\u{0}\"\n",
            b"\xff\xfe",
            b"include = [\"motd\", \"motd\", \"www\", \"www\"]\n",
        ] {
            let mut v = vec![sel];
            v.extend_from_slice(body);
            inputs.push(v);
        }
    }
    for t in troupe_fuzz::TARGETS {
        for i in &inputs {
            troupe_fuzz::run(t, i);
        }
    }
    tally::hostile(
        "fuzz-regression",
        "classic hostile inputs through all four parsers",
        true,
    );
}

#[test]
#[ignore = "writes fuzz/corpus-seeds; run by hand with TROUPE_WRITE_FUZZ_SEEDS=1"]
fn write_seeds() {
    if std::env::var_os("TROUPE_WRITE_FUZZ_SEEDS").is_none() {
        return;
    }
    let seeds = fuzz_dir().join("corpus-seeds");
    let put = |t: &str, name: &str, data: &[u8]| {
        let d = seeds.join(t);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), data).unwrap();
    };
    // CSRs.
    let p256 = rcgen::KeyPair::generate().unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    put(
        "csr",
        "p256-psk.der",
        &troupe_pki::build_csr("web1", &p256, Some("0123456789abcdef")).unwrap(),
    );
    put(
        "csr",
        "ed25519-nopsk.der",
        &troupe_pki::build_csr("web1", &ed, None).unwrap(),
    );
    let der = troupe_pki::build_csr("web1", &p256, Some("k")).unwrap();
    put(
        "csr",
        "p256-psk.pem",
        troupe_pki::util::pem_encode("CERTIFICATE REQUEST", &der).as_bytes(),
    );
    let mut p = rcgen::CertificateParams::new(vec!["web1".into()]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, "web1");
    p.custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            troupe_pki::csr::PP_PRESHARED_KEY_ARCS,
            troupe_pki::csr::encode_psk_extension_value("psk"),
        ));
    put(
        "csr",
        "p256-san-psk.der",
        p.serialize_request(&p256).unwrap().der(),
    );

    // Module-tree inputs: each file of the tree as it is.
    for (i, (rel, text)) in troupe_fuzz::TREE_FILES.iter().enumerate() {
        let mut v = vec![i as u8];
        v.extend_from_slice(text.as_bytes());
        let name = rel.rsplit('/').next().unwrap();
        put("module_tree", &format!("{i:02}-{name}"), &v);
    }

    // Catalogs: what the compiler makes of the fuzz tree, and a small one.
    let dir = tempfile::tempdir().unwrap();
    troupe_fuzz::write_tree(dir.path());
    let tree = troupe_compiler::ModuleTree::load(dir.path()).unwrap();
    let opts = troupe_compiler::CompileOptions::default();
    for node in ["web1", "db1"] {
        let cat = tree
            .compile(node, &troupe_fuzz::tree_facts(), &opts)
            .unwrap();
        put("catalog", &format!("{node}.json"), &cat.to_canonical_json());
    }
    let mut cat = troupe_catalog::Catalog::new("n1", "production", "v1");
    let _ = cat.add_content(b"hello\n");
    put(
        "catalog",
        "empty-with-content.json",
        &cat.to_canonical_json(),
    );

    // Envelopes: signed commands (wire form) and a body.
    use troupe_bastion::FileSigner;
    use troupe_command::{ArgValue, Command, TargetFilter};
    let mut signer = FileSigner::generate().unwrap();
    let now = 1_800_000_000;
    let mut args = std::collections::BTreeMap::new();
    let ping = Command::new(
        signer.key_id().clone(),
        "ping",
        args.clone(),
        TargetFilter::default(),
        now,
        60,
    )
    .unwrap();
    put("envelope", "ping-body.bin", &ping.encode().unwrap());
    put(
        "envelope",
        "ping.wire",
        &ping.sign(&mut signer).unwrap().to_wire(),
    );
    args.insert("name".into(), ArgValue::Str("nginx".into()));
    args.insert("version".into(), ArgValue::Str("1.22.1-9".into()));
    args.insert("force".into(), ArgValue::Bool(false));
    args.insert("batch".into(), ArgValue::Int(3));
    let mut target = TargetFilter {
        role: Some("web".into()),
        name: Some("web-*".into()),
        limit: Some(2),
        ..Default::default()
    };
    target.facts.insert("os.family".into(), "Debian".into());
    let install = Command::new(
        signer.key_id().clone(),
        "package.install",
        args,
        target,
        now,
        600,
    )
    .unwrap();
    put(
        "envelope",
        "package-install.wire",
        &install.sign(&mut signer).unwrap().to_wire(),
    );
}
