//! What every agent runs before acting on a command.
//!
//! Check order (cheap and structural first, then cryptographic, then
//! stateful, then semantic):
//!
//! 1. decode: size limits, canonical structure ([`Refusal::Malformed`]);
//! 2. lifetime at most [`MAX_TTL_SECS`] ([`Refusal::TtlTooLong`]);
//! 3. signer in the trusted list given to the verifier — never a key carried
//!    by the command ([`Refusal::UnknownSigner`]);
//! 4. ed25519 signature (strict verification) over the exact body bytes with
//!    the *configured* key ([`Refusal::BadSignature`]);
//! 5. time window with a clock-skew allowance ([`Refusal::NotYetValid`],
//!    [`Refusal::Expired`]);
//! 6. replay cache: the id is recorded here, only now that signature and
//!    time passed, so forged or stale commands cannot poison the cache
//!    ([`Refusal::Replayed`]);
//! 7. target filter matches this host ([`Refusal::NotTargeted`]);
//! 8. action whitelisted in the registry ([`Refusal::UnknownAction`]);
//! 9. arguments against the action's schema ([`Refusal::BadArgument`]);
//! 10. policy ([`Refusal::PolicyDenied`]).
//!
//! A failure of the replay store itself refuses the command (fail closed).

use std::collections::BTreeMap;
use std::path::Path;

use crate::envelope::{
    ArgValue, Command, CommandId, EnvelopeError, MAX_TTL_SECS, SignedCommand, TargetFilter,
};
use crate::keys::KeyId;
use crate::policy::{Decision, Policy, Subject};
use crate::registry::{ArgError, Registry};
use crate::replay::{Recorded, ReplayCache, ReplayStoreError};

/// Default clock-skew allowance, seconds.
pub const DEFAULT_SKEW_SECS: i64 = 30;
/// Largest skew allowance accepted.
pub const MAX_SKEW_SECS: i64 = 300;

/// Why a command is refused. Each variant is one check.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("malformed command: {0}")]
    Malformed(#[from] EnvelopeError),
    #[error("command lifetime of {0} s exceeds the maximum of {MAX_TTL_SECS} s")]
    TtlTooLong(i64),
    #[error("unknown signer {0}: not in this host's trusted-signer list")]
    UnknownSigner(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("command not yet valid: issued at {issued_at}, local time {now}")]
    NotYetValid { issued_at: i64, now: i64 },
    #[error("command expired at {expires_at}, local time {now}")]
    Expired { expires_at: i64, now: i64 },
    #[error("command {0} was already received (replay)")]
    Replayed(CommandId),
    #[error("this host does not match the command's target filter")]
    NotTargeted,
    #[error("action {0:?} does not exist on this host")]
    UnknownAction(String),
    #[error("bad argument: {0}")]
    BadArgument(#[from] ArgError),
    #[error("denied by policy ({0})")]
    PolicyDenied(String),
    #[error("cannot check replays, refusing: {0}")]
    ReplayStore(#[from] ReplayStoreError),
}

impl Refusal {
    /// A short stable code for results and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::TtlTooLong(_) => "ttl_too_long",
            Refusal::UnknownSigner(_) => "unknown_signer",
            Refusal::BadSignature => "bad_signature",
            Refusal::NotYetValid { .. } => "not_yet_valid",
            Refusal::Expired { .. } => "expired",
            Refusal::Replayed(_) => "replayed",
            Refusal::NotTargeted => "not_targeted",
            Refusal::UnknownAction(_) => "unknown_action",
            Refusal::BadArgument(_) => "bad_argument",
            Refusal::PolicyDenied(_) => "policy_denied",
            Refusal::ReplayStore(_) => "replay_store_error",
        }
    }
}

/// The signers a host trusts: configuration (catalog or agent config),
/// never taken from a command.
///
/// ```toml
/// [[signer]]
/// name = "alice"
/// key = "ed25519:..."
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedSigners {
    by_key: BTreeMap<KeyId, String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustedFile {
    #[serde(default, rename = "signer")]
    signers: Vec<TrustedEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustedEntry {
    name: String,
    key: KeyId,
}

/// Why a trusted-signer list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("cannot parse trusted signers: {0}")]
    Parse(String),
    #[error("invalid signer name {0:?} (`[A-Za-z0-9_.@-]`, 1..=64)")]
    BadName(String),
    #[error("signer name {0} is listed twice")]
    DuplicateName(String),
    #[error("key {0} is listed twice")]
    DuplicateKey(String),
}

impl TrustedSigners {
    /// Parses a TOML list of `[[signer]]` tables.
    pub fn from_toml(text: &str) -> Result<Self, TrustError> {
        let f: TrustedFile = toml::from_str(text).map_err(|e| TrustError::Parse(e.to_string()))?;
        let mut t = Self::default();
        for e in f.signers {
            t.add(&e.name, e.key)?;
        }
        Ok(t)
    }

    /// Adds a signer.
    pub fn add(&mut self, name: &str, key: KeyId) -> Result<(), TrustError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c));
        if !ok {
            return Err(TrustError::BadName(crate::envelope::clip(name)));
        }
        if self.by_key.values().any(|n| n == name) {
            return Err(TrustError::DuplicateName(name.into()));
        }
        if self.by_key.contains_key(&key) {
            return Err(TrustError::DuplicateKey(key.to_string()));
        }
        self.by_key.insert(key, name.to_string());
        Ok(())
    }

    /// The name of a trusted key.
    pub fn name_of(&self, key: &KeyId) -> Option<&str> {
        self.by_key.get(key).map(String::as_str)
    }

    /// The configured key and name matching a claimed key id.
    fn lookup(&self, key: &KeyId) -> Option<(&KeyId, &str)> {
        self.by_key.get_key_value(key).map(|(k, n)| (k, n.as_str()))
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// What the verifier knows about the host it runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostContext {
    pub name: String,
    pub role: Option<String>,
    /// Flattened facts (`os.family` → `debian`).
    pub facts: BTreeMap<String, String>,
}

impl HostContext {
    /// Flattens nested facts (JSON) into `a.b.c` → text: strings as they
    /// are, numbers and booleans in their JSON form, array items as `a.0`,
    /// `a.1`; nulls and entries with invalid names or values are left out.
    pub fn flatten_facts(facts: &serde_json::Value) -> BTreeMap<String, String> {
        troupe_base::facts::flatten(facts)
    }
}

/// The current time in unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A command that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub command: Command,
    /// The signer's name in the trusted list.
    pub signer_name: String,
    /// The policy rule that allowed it.
    pub allowed_by: String,
}

/// The verifier: trusted signers, action registry, policy, replay cache and
/// this host's identity, all from local configuration.
#[derive(Debug)]
pub struct Verifier {
    trusted: TrustedSigners,
    registry: Registry,
    policy: Policy,
    replay: ReplayCache,
    host: HostContext,
    skew: i64,
}

impl Verifier {
    /// A verifier with the default skew allowance, its replay cache at
    /// `replay_path` (a redb file, created if missing).
    pub fn new(
        trusted: TrustedSigners,
        registry: Registry,
        policy: Policy,
        replay_path: &Path,
        host: HostContext,
    ) -> Result<Self, ReplayStoreError> {
        let replay = ReplayCache::open(replay_path)?;
        Ok(Self {
            trusted,
            registry,
            policy,
            replay,
            host,
            skew: DEFAULT_SKEW_SECS,
        })
    }

    /// Sets the clock-skew allowance (clamped to 0..=[`MAX_SKEW_SECS`]).
    pub fn with_skew(mut self, secs: i64) -> Self {
        self.skew = secs.clamp(0, MAX_SKEW_SECS);
        self
    }

    /// Replaces the configuration (new catalog: trusted signers, actions,
    /// policy, host facts) while keeping the replay cache, which a process
    /// can open only once.
    pub fn reconfigure(
        &mut self,
        trusted: TrustedSigners,
        registry: Registry,
        policy: Policy,
        host: HostContext,
    ) {
        self.trusted = trusted;
        self.registry = registry;
        self.policy = policy;
        self.host = host;
    }

    /// The registry in use (for redaction in audit records).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Decodes wire bytes and verifies them (see the module docs).
    pub fn verify_wire(&self, wire: &[u8], now: i64) -> Result<Verified, Refusal> {
        let sc = SignedCommand::from_wire(wire)?;
        self.verify(&sc, now)
    }

    /// Runs every check on a decoded command, in order.
    pub fn verify(&self, sc: &SignedCommand, now: i64) -> Result<Verified, Refusal> {
        let cmd = sc.command();
        let ttl = cmd.expires_at.saturating_sub(cmd.issued_at);
        if ttl > MAX_TTL_SECS {
            return Err(Refusal::TtlTooLong(ttl));
        }
        // The key comes from the configuration, never from the command.
        let (trusted_key, name) = self
            .trusted
            .lookup(&cmd.signer)
            .ok_or_else(|| Refusal::UnknownSigner(cmd.signer.to_string()))?;
        let key = trusted_key.verifying_key();
        key.verify_strict(sc.body(), &sc.signature())
            .map_err(|_| Refusal::BadSignature)?;
        if cmd.issued_at > now.saturating_add(self.skew) {
            return Err(Refusal::NotYetValid {
                issued_at: cmd.issued_at,
                now,
            });
        }
        let keep_until = cmd.expires_at.saturating_add(self.skew);
        if now > keep_until {
            return Err(Refusal::Expired {
                expires_at: cmd.expires_at,
                now,
            });
        }
        if self.replay.check_and_record(&cmd.id, keep_until, now)? == Recorded::Replayed {
            return Err(Refusal::Replayed(cmd.id));
        }
        if !cmd
            .target
            .matches(&self.host.name, self.host.role.as_deref(), &self.host.facts)
        {
            return Err(Refusal::NotTargeted);
        }
        let spec = self
            .registry
            .get(&cmd.action)
            .ok_or_else(|| Refusal::UnknownAction(cmd.action.clone()))?;
        spec.check_args(&cmd.args)?;
        let subject = Subject {
            name,
            key: &cmd.signer,
        };
        match self.policy.evaluate(
            subject,
            &cmd.action,
            self.host.role.as_deref(),
            &self.host.facts,
        ) {
            Decision::Allow(rule) => Ok(Verified {
                command: cmd.clone(),
                signer_name: name.to_string(),
                allowed_by: rule,
            }),
            Decision::DenyByRule(rule) => Err(Refusal::PolicyDenied(format!("rule {rule}"))),
            Decision::DenyByDefault => Err(Refusal::PolicyDenied("no rule allows it".into())),
        }
    }
}

/// The audit record of one command (for [`crate::audit::AuditLog`]):
/// arguments redacted by the action's schema (unknown actions: all values
/// redacted).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CommandAudit {
    pub kind: &'static str,
    pub id: Option<CommandId>,
    /// The signer key id the command claims (verified only if `outcome` is
    /// not a signature/signer refusal).
    pub signer: Option<String>,
    pub target: Option<TargetFilter>,
    pub action: Option<String>,
    pub args: BTreeMap<String, ArgValue>,
    /// `ok`, `allowed`, or a refusal code.
    pub outcome: String,
    /// Detail (refusal message, result summary).
    pub detail: String,
}

impl CommandAudit {
    /// A record for `cmd` (if it could be decoded) with an outcome.
    pub fn new(cmd: Option<&Command>, registry: &Registry, outcome: &str, detail: &str) -> Self {
        let args = match cmd {
            Some(c) => match registry.get(&c.action) {
                Some(spec) => spec.redact(&c.args),
                None => c
                    .args
                    .keys()
                    .map(|k| (k.clone(), ArgValue::Str(crate::registry::REDACTED.into())))
                    .collect(),
            },
            None => BTreeMap::new(),
        };
        Self {
            kind: "command",
            id: cmd.map(|c| c.id),
            signer: cmd.map(|c| c.signer.to_string()),
            target: cmd.map(|c| c.target.clone()),
            action: cmd.map(|c| c.action.clone()),
            args,
            outcome: outcome.to_string(),
            detail: detail.chars().take(512).collect(),
        }
    }

    /// A record for a refusal.
    pub fn refused(cmd: Option<&Command>, registry: &Registry, refusal: &Refusal) -> Self {
        Self::new(cmd, registry, refusal.code(), &refusal.to_string())
    }
}
