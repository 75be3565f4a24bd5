//! Property tests: decoders and validators never panic on arbitrary input;
//! sign → verify roundtrips; any single-byte change to a signed envelope is
//! refused.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use troupe_bastion::FileSigner;
use troupe_bastion::release::Release;
use troupe_command::envelope::{ArgValue, Command, SignedCommand, TargetFilter};
use troupe_command::policy::Subject;
use troupe_command::registry::ArgType;
use troupe_command::verify::{HostContext, TrustedSigners, Verifier};
use troupe_command::{Policy, Registry};

const NOW: i64 = 1_800_000_000;

fn alice() -> FileSigner {
    FileSigner::from_signing_key(SigningKey::from_bytes(&[42u8; 32]))
}

struct Shared {
    _dir: tempfile::TempDir,
    verifier: Verifier,
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut trusted = TrustedSigners::default();
        trusted.add("alice", alice().key_id().clone()).unwrap();
        let policy = Policy::from_toml(
            "[[rule]]\neffect = \"allow\"\nsigners = [\"alice\"]\nactions = [\"*\"]\n",
        )
        .unwrap();
        let host = HostContext {
            name: "web-01".into(),
            role: Some("web".into()),
            facts: BTreeMap::new(),
        };
        let verifier = Verifier::new(
            trusted,
            Registry::builtin(),
            policy,
            &dir.path().join("r.redb"),
            host,
        )
        .unwrap();
        Shared {
            _dir: dir,
            verifier,
        }
    })
}

fn arg_value() -> impl Strategy<Value = ArgValue> {
    prop_oneof![
        any::<bool>().prop_map(ArgValue::Bool),
        any::<i64>().prop_map(ArgValue::Int),
        "\\PC{0,40}".prop_map(ArgValue::Str),
    ]
}

fn command_strategy() -> impl Strategy<Value = Command> {
    (
        "[a-z][a-z0-9_]{0,10}(\\.[a-z][a-z0-9_]{0,10})?",
        prop::collection::btree_map("[a-z][a-z0-9_]{0,8}", arg_value(), 0..6),
        prop::collection::btree_map("[a-z][a-z0-9_.]{0,10}", "[a-z0-9 ]{0,12}", 0..4),
        prop::option::of("[a-z]{1,8}"),
        prop::option::of("[a-z][a-z?]{0,5}\\*?[a-z.]{0,4}"),
        prop::option::of(1u32..1000),
        1i64..=600,
    )
        .prop_map(|(action, args, facts, role, name, limit, ttl)| {
            let target = TargetFilter {
                facts,
                role,
                name,
                limit,
            };
            Command::new(alice().key_id().clone(), &action, args, target, NOW, ttl).unwrap()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn wire_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = SignedCommand::from_wire(&bytes);
        if let Ok(c) = Command::decode(&bytes) {
            // Whatever decodes re-encodes to the same bytes (canonical).
            prop_assert_eq!(c.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn mutated_bodies_decode_canonically_or_not_at_all(
        cmd in command_strategy(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut b = cmd.encode().unwrap();
        for (pos, val) in edits {
            let i = pos.index(b.len());
            b[i] = val;
        }
        if let Ok(c) = Command::decode(&b) {
            prop_assert_eq!(c.encode().unwrap(), b);
        }
    }

    #[test]
    fn verifier_never_panics_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(shared().verifier.verify_wire(&bytes, NOW).is_err());
    }

    #[test]
    fn encode_decode_roundtrip(cmd in command_strategy()) {
        let b = cmd.encode().unwrap();
        let back = Command::decode(&b).unwrap();
        prop_assert_eq!(&back, &cmd);
        let mut signer = alice();
        let sc = cmd.sign(&mut signer).unwrap();
        let w = sc.to_wire();
        let back = SignedCommand::from_wire(&w).unwrap();
        prop_assert_eq!(&back, &sc);
        prop_assert!(alice().verifying_key().verify_strict(back.body(), &back.signature()).is_ok());
    }

    #[test]
    fn any_single_byte_change_is_refused(cmd in command_strategy(), pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let mut signer = alice();
        let sc = cmd.sign(&mut signer).unwrap();
        let mut w = sc.to_wire();
        let i = pos.index(w.len());
        w[i] ^= xor;
        // Refused by a structural or cryptographic check, never later.
        match shared().verifier.verify_wire(&w, NOW) {
            Ok(_) => prop_assert!(false, "byte {} changed, still accepted", i),
            Err(r) => prop_assert!(
                ["malformed", "bad_signature", "unknown_signer", "ttl_too_long"].contains(&r.code()),
                "byte {} changed: refused late with {}", i, r
            ),
        }
    }

    #[test]
    fn arg_and_policy_validators_never_panic(s in "\\PC{0,80}", raw in prop::collection::vec(any::<u8>(), 0..200), i in any::<i64>()) {
        let types = [
            ArgType::Bool, ArgType::Int { min: -5, max: 5 }, ArgType::Enum { values: vec!["a".into()] },
            ArgType::PackageName, ArgType::ServiceName, ArgType::Version, ArgType::Identifier,
            ArgType::Environment, ArgType::HostGlob, ArgType::Text { max_len: 10 },
        ];
        let text = String::from_utf8_lossy(&raw).into_owned();
        for t in &types {
            let _ = t.check(&ArgValue::Str(s.clone()));
            let _ = t.check(&ArgValue::Str(text.clone()));
            let _ = t.check(&ArgValue::Int(i));
        }
        let _ = Policy::from_toml(&s);
        let _ = Policy::from_toml(&text);
        let _ = Registry::builtin().add_module_toml("m", &text);
        let _ = Release::from_toml(&text);
        let _ = TrustedSigners::from_toml(&text);
        let p = Policy::from_toml("[[rule]]\neffect = \"allow\"\nsigners = [\"*\"]\nactions = [\"a.*\"]\n").unwrap();
        let k = alice().key_id().clone();
        let _ = p.evaluate(Subject { name: &s, key: &k }, &text, Some(&s), &BTreeMap::new());
    }

    #[test]
    fn shell_metacharacters_never_pass_name_types(prefix in "[a-z0-9]{1,10}", meta in "[;|&$`<>(){}\\\\ '\"\n*!]", suffix in "[a-z0-9 ]{0,10}") {
        let v = ArgValue::Str(format!("{prefix}{meta}{suffix}"));
        for t in [ArgType::PackageName, ArgType::ServiceName, ArgType::Version, ArgType::Identifier, ArgType::Environment] {
            prop_assert!(t.check(&v).is_err(), "{:?} accepted {:?}", t, v);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Full verifier roundtrip (each case commits to the on-disk replay
    /// cache, so fewer cases).
    #[test]
    fn sign_verify_roundtrip(name in "[a-z0-9][a-z0-9+.-]{1,30}", version in "[0-9][a-z0-9.+~-]{0,15}") {
        let mut signer = alice();
        let args: BTreeMap<String, ArgValue> =
            [("name".to_string(), ArgValue::Str(name)), ("version".to_string(), ArgValue::Str(version))].into();
        let cmd = Command::new(signer.key_id().clone(), "package.install", args, TargetFilter::default(), NOW, 60).unwrap();
        let sc = cmd.sign(&mut signer).unwrap();
        let v = shared().verifier.verify_wire(&sc.to_wire(), NOW).unwrap();
        prop_assert_eq!(&v.command, sc.command());
    }
}
