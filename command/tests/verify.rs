//! The verifier end to end: one test per refusal, the check order, replay
//! across restarts, and audit records of refusals.

use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::SigningKey;
use troupe_base::audit::{self, AuditLog};
use troupe_bastion::FileSigner;
use troupe_command::envelope::{ArgValue, Command, SignedCommand, TargetFilter};
use troupe_command::keys::Signer;
use troupe_command::registry::{ArgError, REDACTED};
use troupe_command::verify::{
    CommandAudit, DEFAULT_SKEW_SECS, HostContext, Refusal, TrustedSigners, Verifier,
};
use troupe_command::{Policy, Registry};

const NOW: i64 = 1_800_000_000;

const POLICY: &str = r#"
[[rule]]
name = "alice-web"
effect = "allow"
signers = ["alice"]
actions = ["ping", "agent.*", "package.*", "service.*"]
roles = ["web"]

[[rule]]
name = "no-restart-in-par1"
effect = "deny"
signers = ["*"]
actions = ["service.restart"]
facts = { "dc" = "par1" }
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    alice: FileSigner,
    mallory: FileSigner,
    verifier: Verifier,
}

fn host() -> HostContext {
    HostContext {
        name: "web-01.example".into(),
        role: Some("web".into()),
        facts: [
            ("dc".to_string(), "par1".to_string()),
            ("os.family".to_string(), "debian".to_string()),
        ]
        .into(),
    }
}

fn verifier(alice: &FileSigner, replay: &Path) -> Verifier {
    let mut trusted = TrustedSigners::default();
    trusted.add("alice", alice.key_id().clone()).unwrap();
    Verifier::new(
        trusted,
        Registry::builtin(),
        Policy::from_toml(POLICY).unwrap(),
        replay,
        host(),
    )
    .unwrap()
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let alice = FileSigner::from_signing_key(SigningKey::from_bytes(&[7u8; 32]));
    let mallory = FileSigner::generate().unwrap();
    let verifier = verifier(&alice, &dir.path().join("replay.redb"));
    Fixture {
        _dir: dir,
        alice,
        mallory,
        verifier,
    }
}

fn args(list: &[(&str, ArgValue)]) -> BTreeMap<String, ArgValue> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn s(v: &str) -> ArgValue {
    ArgValue::Str(v.into())
}

fn command(
    by: &FileSigner,
    action: &str,
    a: BTreeMap<String, ArgValue>,
    target: TargetFilter,
) -> Command {
    Command::new(by.key_id().clone(), action, a, target, NOW, 60).unwrap()
}

fn signed(by: &mut FileSigner, action: &str, a: BTreeMap<String, ArgValue>) -> SignedCommand {
    let c = command(by, action, a, TargetFilter::default());
    c.sign(by).unwrap()
}

/// Replaces the signature of a signed command with `forger`'s signature
/// over the same body.
fn forge(sc: &SignedCommand, forger: &mut FileSigner) -> Vec<u8> {
    let mut wire = sc.to_wire();
    let sig = forger.sign(sc.body()).unwrap().to_bytes();
    let n = wire.len();
    wire[n - 64..].copy_from_slice(&sig);
    wire
}

#[test]
fn valid_command_is_accepted() {
    let mut f = fixture();
    let sc = signed(
        &mut f.alice,
        "package.install",
        args(&[("name", s("nginx")), ("version", s("1.24.0-1"))]),
    );
    let v = f.verifier.verify_wire(&sc.to_wire(), NOW + 1).unwrap();
    assert_eq!(v.signer_name, "alice");
    assert_eq!(v.allowed_by, "alice-web");
    assert_eq!(v.command, *sc.command());
}

#[test]
fn forged_signature_is_refused() {
    let mut f = fixture();
    let sc = signed(&mut f.alice, "ping", BTreeMap::new());
    let wire = forge(&sc, &mut f.mallory);
    assert!(matches!(
        f.verifier.verify_wire(&wire, NOW),
        Err(Refusal::BadSignature)
    ));
    // Signature bits flipped.
    let mut w2 = sc.to_wire();
    let n = w2.len();
    w2[n - 1] ^= 0x01;
    assert!(matches!(
        f.verifier.verify_wire(&w2, NOW),
        Err(Refusal::BadSignature)
    ));
}

#[test]
fn unknown_signer_is_refused_even_with_a_valid_signature() {
    let mut f = fixture();
    let sc = signed(&mut f.mallory, "ping", BTreeMap::new());
    match f.verifier.verify_wire(&sc.to_wire(), NOW) {
        Err(Refusal::UnknownSigner(k)) => assert_eq!(k, f.mallory.key_id().to_string()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn time_window_is_enforced_with_skew() {
    let mut f = fixture();
    let sc = signed(&mut f.alice, "ping", BTreeMap::new());
    let w = sc.to_wire();
    let exp = sc.command().expires_at;
    assert!(matches!(
        f.verifier.verify_wire(&w, exp + DEFAULT_SKEW_SECS + 1),
        Err(Refusal::Expired { .. })
    ));
    assert!(matches!(
        f.verifier.verify_wire(&w, NOW - DEFAULT_SKEW_SECS - 1),
        Err(Refusal::NotYetValid { .. })
    ));
    // Neither refusal recorded the id: it is still accepted inside the window.
    f.verifier.verify_wire(&w, NOW - DEFAULT_SKEW_SECS).unwrap();
    // Within the skew after expiry a fresh command still passes.
    let sc2 = signed(&mut f.alice, "ping", BTreeMap::new());
    f.verifier
        .verify_wire(&sc2.to_wire(), exp + DEFAULT_SKEW_SECS)
        .unwrap();
}

#[test]
fn overlong_ttl_is_refused() {
    let mut f = fixture();
    let mut c = command(&f.alice, "ping", BTreeMap::new(), TargetFilter::default());
    c.expires_at = c.issued_at + 3600;
    let sc = c.sign(&mut f.alice).unwrap();
    assert!(matches!(
        f.verifier.verify_wire(&sc.to_wire(), NOW),
        Err(Refusal::TtlTooLong(3600))
    ));
}

#[test]
fn replay_is_refused_inside_the_window_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replay.redb");
    let mut alice = FileSigner::generate().unwrap();
    let sc = signed(&mut alice, "ping", BTreeMap::new());
    let w = sc.to_wire();
    {
        let v = verifier(&alice, &path);
        v.verify_wire(&w, NOW).unwrap();
        assert!(
            matches!(v.verify_wire(&w, NOW + 5), Err(Refusal::Replayed(id)) if id == sc.command().id)
        );
    }
    // "Restart": a new verifier on the same file.
    let v = verifier(&alice, &path);
    assert!(matches!(
        v.verify_wire(&w, NOW + 59),
        Err(Refusal::Replayed(_))
    ));
    // After the window it is refused as expired (and the id gets pruned).
    assert!(matches!(
        v.verify_wire(&w, NOW + 60 + DEFAULT_SKEW_SECS + 1),
        Err(Refusal::Expired { .. })
    ));
}

#[test]
fn forged_commands_cannot_poison_the_replay_cache() {
    let mut f = fixture();
    let sc = signed(&mut f.alice, "ping", BTreeMap::new());
    // A forgery carrying the same id arrives first.
    let forged = forge(&sc, &mut f.mallory);
    assert!(matches!(
        f.verifier.verify_wire(&forged, NOW),
        Err(Refusal::BadSignature)
    ));
    // The real command is still accepted.
    f.verifier.verify_wire(&sc.to_wire(), NOW).unwrap();
}

#[test]
fn non_whitelisted_action_is_refused() {
    let mut f = fixture();
    let sc = signed(&mut f.alice, "shell.exec", args(&[("cmd", s("id"))]));
    assert!(
        matches!(f.verifier.verify_wire(&sc.to_wire(), NOW), Err(Refusal::UnknownAction(a)) if a == "shell.exec")
    );
}

#[test]
fn bad_argument_type_is_refused() {
    let mut f = fixture();
    let sc = signed(&mut f.alice, "agent.run", args(&[("noop", s("yes"))]));
    assert!(matches!(
        f.verifier.verify_wire(&sc.to_wire(), NOW),
        Err(Refusal::BadArgument(ArgError::Invalid { name, .. })) if name == "noop"
    ));
    let sc = signed(&mut f.alice, "package.install", BTreeMap::new());
    assert!(matches!(
        f.verifier.verify_wire(&sc.to_wire(), NOW),
        Err(Refusal::BadArgument(ArgError::Missing(n))) if n == "name"
    ));
    let sc = signed(
        &mut f.alice,
        "ping",
        args(&[("extra", ArgValue::Bool(true))]),
    );
    assert!(matches!(
        f.verifier.verify_wire(&sc.to_wire(), NOW),
        Err(Refusal::BadArgument(ArgError::Unknown(_)))
    ));
}

#[test]
fn injection_attempt_is_refused() {
    let mut f = fixture();
    for evil in [
        "nginx; rm -rf /",
        "nginx && curl x | sh",
        "$(reboot)",
        "nginx\nreboot",
    ] {
        let sc = signed(&mut f.alice, "package.install", args(&[("name", s(evil))]));
        let r = f.verifier.verify_wire(&sc.to_wire(), NOW);
        assert!(
            matches!(r, Err(Refusal::BadArgument(ArgError::Invalid { .. }))),
            "{evil:?}: {r:?}"
        );
    }
}

#[test]
fn policy_denials() {
    let mut f = fixture();
    // No allow rule for maintenance.*.
    let sc = signed(
        &mut f.alice,
        "maintenance.on",
        args(&[("message", s("patching"))]),
    );
    match f.verifier.verify_wire(&sc.to_wire(), NOW) {
        Err(Refusal::PolicyDenied(why)) => assert!(why.contains("no rule"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Allowed by alice-web but denied by the deny rule (dc=par1).
    let sc = signed(
        &mut f.alice,
        "service.restart",
        args(&[("name", s("nginx"))]),
    );
    match f.verifier.verify_wire(&sc.to_wire(), NOW) {
        Err(Refusal::PolicyDenied(why)) => assert!(why.contains("no-restart-in-par1"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn other_targets_are_refused() {
    let mut f = fixture();
    let t = TargetFilter {
        role: Some("db".into()),
        ..Default::default()
    };
    let sc = command(&f.alice, "ping", BTreeMap::new(), t)
        .sign(&mut f.alice)
        .unwrap();
    assert!(matches!(
        f.verifier.verify_wire(&sc.to_wire(), NOW),
        Err(Refusal::NotTargeted)
    ));
    let t = TargetFilter {
        name: Some("web-0[2-9].*".into()),
        ..Default::default()
    };
    let sc = command(&f.alice, "ping", BTreeMap::new(), t)
        .sign(&mut f.alice)
        .unwrap();
    assert!(matches!(
        f.verifier.verify_wire(&sc.to_wire(), NOW),
        Err(Refusal::NotTargeted)
    ));
    let t = TargetFilter {
        name: Some("web-*".into()),
        facts: [("dc".into(), "par1".into())].into(),
        ..Default::default()
    };
    let sc = command(&f.alice, "ping", BTreeMap::new(), t)
        .sign(&mut f.alice)
        .unwrap();
    f.verifier.verify_wire(&sc.to_wire(), NOW).unwrap();
}

#[test]
fn malformed_input_is_refused() {
    let f = fixture();
    for bad in [&b""[..], b"\x00\x00\x00\x05hello", &[0xff; 200][..]] {
        assert!(matches!(
            f.verifier.verify_wire(bad, NOW),
            Err(Refusal::Malformed(_))
        ));
    }
}

#[test]
fn check_order_signature_before_time_and_arguments() {
    let mut f = fixture();
    // Expired and injection, but forged: the signature refusal comes first.
    let sc = signed(
        &mut f.alice,
        "package.install",
        args(&[("name", s("x; reboot"))]),
    );
    let forged = forge(&sc, &mut f.mallory);
    assert!(matches!(
        f.verifier.verify_wire(&forged, NOW + 10_000),
        Err(Refusal::BadSignature)
    ));
    // Authentic but expired, with a bad argument: time comes before arguments.
    assert!(matches!(
        f.verifier.verify_wire(&sc.to_wire(), NOW + 10_000),
        Err(Refusal::Expired { .. })
    ));
    // Authentic and in time: now the argument is refused.
    assert!(matches!(
        f.verifier.verify_wire(&sc.to_wire(), NOW),
        Err(Refusal::BadArgument(_))
    ));
}

#[test]
fn trusted_signers_from_toml() {
    let a = FileSigner::generate().unwrap();
    let b = FileSigner::generate().unwrap();
    let text = format!(
        "[[signer]]\nname = \"alice\"\nkey = \"{}\"\n[[signer]]\nname = \"bob\"\nkey = \"{}\"\n",
        a.key_id(),
        b.key_id()
    );
    let t = TrustedSigners::from_toml(&text).unwrap();
    assert_eq!(t.name_of(a.key_id()), Some("alice"));
    assert_eq!(t.len(), 2);
    let dup = format!(
        "[[signer]]\nname = \"alice\"\nkey = \"{0}\"\n[[signer]]\nname = \"bob\"\nkey = \"{0}\"\n",
        a.key_id()
    );
    assert!(TrustedSigners::from_toml(&dup).is_err());
    assert!(
        TrustedSigners::from_toml("[[signer]]\nname = \"x\"\nkey = \"ed25519:nope\"\n").is_err()
    );
    assert!(
        TrustedSigners::from_toml(&format!(
            "[[signer]]\nname = \"a b\"\nkey = \"{}\"\n",
            a.key_id()
        ))
        .is_err()
    );
}

#[test]
fn refusals_and_acceptances_are_audited_with_redaction() {
    let mut f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("audit.log");
    let mut log = AuditLog::open(&log_path).unwrap();
    let mut registry = Registry::builtin();
    registry
        .add_module_toml(
            "vault",
            "[[action]]\nname = \"vault.unseal\"\n[[action.arg]]\nname = \"token\"\ntype = \"text\"\nmax_len = 64\nsecret = true\n",
        )
        .unwrap();
    let ok = signed(&mut f.alice, "ping", BTreeMap::new());
    let v = f.verifier.verify_wire(&ok.to_wire(), NOW).unwrap();
    log.append(&CommandAudit::new(
        Some(&v.command),
        &registry,
        "allowed",
        &v.allowed_by,
    ))
    .unwrap();
    let bad = signed(
        &mut f.alice,
        "vault.unseal",
        args(&[("token", s("s3cr3t-token"))]),
    );
    let r = f.verifier.verify_wire(&bad.to_wire(), NOW).unwrap_err();
    log.append(&CommandAudit::refused(Some(bad.command()), &registry, &r))
        .unwrap();
    let garbage = f.verifier.verify_wire(b"junk", NOW).unwrap_err();
    log.append(&CommandAudit::refused(None, &registry, &garbage))
        .unwrap();
    drop(log);
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(!text.contains("s3cr3t-token"));
    assert!(text.contains(REDACTED));
    assert!(text.contains("\"outcome\":\"unknown_action\""));
    assert!(text.contains("\"outcome\":\"malformed\""));
    assert_eq!(audit::verify(&log_path).unwrap().records, 3);
}

#[test]
fn reconfigure_keeps_the_replay_cache_and_applies_new_trust() {
    let mut f = fixture();
    let sc = signed(&mut f.alice, "ping", BTreeMap::new());
    f.verifier.verify_wire(&sc.to_wire(), NOW).unwrap();
    // New catalog: alice is no longer trusted, mallory is.
    let mut trusted = TrustedSigners::default();
    trusted.add("mallory", f.mallory.key_id().clone()).unwrap();
    let policy = Policy::from_toml(
        "[[rule]]\neffect = \"allow\"\nsigners = [\"*\"]\nactions = [\"ping\"]\n",
    )
    .unwrap();
    f.verifier
        .reconfigure(trusted, Registry::builtin(), policy, host());
    let again = signed(&mut f.alice, "ping", BTreeMap::new());
    assert!(matches!(
        f.verifier.verify_wire(&again.to_wire(), NOW),
        Err(Refusal::UnknownSigner(_))
    ));
    let m = signed(&mut f.mallory, "ping", BTreeMap::new());
    f.verifier.verify_wire(&m.to_wire(), NOW).unwrap();
    assert!(matches!(
        f.verifier.verify_wire(&m.to_wire(), NOW),
        Err(Refusal::Replayed(_))
    ));
}

#[test]
fn nested_facts_flatten_for_targets_and_policy() {
    let v = serde_json::json!({
        "os": {"family": "debian", "release": {"major": 12}},
        "virtual": false,
        "ips": ["10.0.0.1", "10.0.0.2"],
        "bad key": "x",
        "nothing": null
    });
    let flat = HostContext::flatten_facts(&v);
    assert_eq!(flat["os.family"], "debian");
    assert_eq!(flat["os.release.major"], "12");
    assert_eq!(flat["virtual"], "false");
    assert_eq!(flat["ips.1"], "10.0.0.2");
    assert!(!flat.contains_key("bad key"));
    assert!(!flat.contains_key("nothing"));
}
