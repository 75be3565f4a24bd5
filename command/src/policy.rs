//! Who may run what where: allow/deny rules by signer, action, facts and
//! role.
//!
//! Semantics: **deny-overrides, deny by default**. A rule matches when every
//! criterion it states holds. If any matching rule denies, the command is
//! denied; otherwise if any matching rule allows, it is allowed; otherwise
//! (no rule matches, or no rules at all) it is denied. The order of rules
//! does not matter, so policies assembled from several sources (catalog,
//! local configuration) cannot be weakened by placing an allow before a
//! deny.
//!
//! ```toml
//! [[rule]]
//! effect = "allow"
//! signers = ["alice", "bob"]         # names from the trusted-signer list, key ids, or "*"
//! actions = ["service.*", "ping"]    # globs over action names
//! roles = ["web"]                    # optional: any of these roles
//! facts = { "os.family" = "debian" } # optional: all of these equalities
//!
//! [[rule]]
//! effect = "deny"
//! signers = ["*"]
//! actions = ["package.*"]
//! roles = ["db"]
//! ```
//!
//! Unknown fields are refused, so a typo cannot silently widen a rule.

use std::collections::BTreeMap;

use crate::envelope::{clip, is_fact_name, is_fact_value, is_role_name};
use crate::keys::KeyId;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Allow,
    Deny,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Optional label shown in refusals and audit records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub effect: Effect,
    /// Signer names (from the trusted-signer list), key ids, or `*`.
    pub signers: Vec<String>,
    /// Globs over action names (`service.*`, `ping`, `*`).
    pub actions: Vec<String>,
    /// If not empty, the host's role must be one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// If not empty, all these fact equalities must hold on the host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
}

/// A policy: a set of rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

/// Why a policy document is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot parse policy: {0}")]
    Parse(String),
    #[error("policy rule {rule}: {reason}")]
    Rule { rule: String, reason: String },
}

/// The outcome of evaluating a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by this rule (label or `#index`).
    Allow(String),
    /// Denied by this rule.
    DenyByRule(String),
    /// No rule allows it.
    DenyByDefault,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// Who is asking, for policy evaluation.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The signer's name in the trusted-signer list.
    pub name: &'a str,
    pub key: &'a KeyId,
}

const MAX_RULES: usize = 1024;

impl Policy {
    /// Parses and validates a TOML policy.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let p: Policy = toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// Checks every rule (non-empty signers and actions, valid globs and
    /// names).
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.rules.len() > MAX_RULES {
            return Err(PolicyError::Parse(format!("more than {MAX_RULES} rules")));
        }
        for (i, r) in self.rules.iter().enumerate() {
            let bad = |reason: String| PolicyError::Rule {
                rule: r.label(i),
                reason,
            };
            if r.signers.is_empty() {
                return Err(bad("`signers` is empty (use [\"*\"] for anyone)".into()));
            }
            if r.actions.is_empty() {
                return Err(bad("`actions` is empty (use [\"*\"] for any action)".into()));
            }
            for s in &r.signers {
                if s.is_empty()
                    || s.len() > 128
                    || s.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(bad(format!("invalid signer {:?}", clip(s))));
                }
            }
            for a in &r.actions {
                check_action_glob(a).map_err(&bad)?;
            }
            for role in &r.roles {
                if !is_role_name(role) {
                    return Err(bad(format!("invalid role {:?}", clip(role))));
                }
            }
            for (k, v) in &r.facts {
                if !is_fact_name(k) || !is_fact_value(v) {
                    return Err(bad(format!("invalid fact {:?}", clip(k))));
                }
            }
        }
        Ok(())
    }

    /// Evaluates the policy (deny-overrides, deny by default).
    pub fn evaluate(
        &self,
        subject: Subject<'_>,
        action: &str,
        role: Option<&str>,
        facts: &BTreeMap<String, String>,
    ) -> Decision {
        let mut allow: Option<String> = None;
        for (i, r) in self.rules.iter().enumerate() {
            if !r.matches(subject, action, role, facts) {
                continue;
            }
            match r.effect {
                Effect::Deny => return Decision::DenyByRule(r.label(i)),
                Effect::Allow => {
                    if allow.is_none() {
                        allow = Some(r.label(i));
                    }
                }
            }
        }
        allow.map_or(Decision::DenyByDefault, Decision::Allow)
    }
}

impl Rule {
    fn label(&self, i: usize) -> String {
        match &self.name {
            Some(n) => clip(n),
            None => format!("#{}", i + 1),
        }
    }

    fn matches(
        &self,
        subject: Subject<'_>,
        action: &str,
        role: Option<&str>,
        facts: &BTreeMap<String, String>,
    ) -> bool {
        let signer_ok = self
            .signers
            .iter()
            .any(|s| s == "*" || s == subject.name || s == subject.key.as_str());
        let action_ok = self.actions.iter().any(|g| action_glob_matches(g, action));
        let role_ok =
            self.roles.is_empty() || role.is_some_and(|r| self.roles.iter().any(|x| x == r));
        let facts_ok = self.facts.iter().all(|(k, v)| facts.get(k) == Some(v));
        signer_ok && action_ok && role_ok && facts_ok
    }
}

fn check_action_glob(g: &str) -> Result<(), String> {
    if g.is_empty() || g.len() > 64 {
        return Err("action pattern must be 1..=64 characters".into());
    }
    if let Some(c) = g
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_.*?".contains(*c)))
    {
        return Err(format!(
            "character {c:?} is not allowed in action pattern {:?}",
            clip(g)
        ));
    }
    glob::Pattern::new(g)
        .map(|_| ())
        .map_err(|e| format!("invalid action pattern {:?}: {}", clip(g), e.msg))
}

fn action_glob_matches(g: &str, action: &str) -> bool {
    glob::Pattern::new(g).is_ok_and(|p| p.matches(action))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::TestSigner as FileSigner;

    const POLICY: &str = r#"
        [[rule]]
        name = "ops-web"
        effect = "allow"
        signers = ["alice"]
        actions = ["service.*", "ping"]
        roles = ["web"]

        [[rule]]
        effect = "allow"
        signers = ["*"]
        actions = ["ping", "facts"]

        [[rule]]
        name = "no-db-packages"
        effect = "deny"
        signers = ["*"]
        actions = ["package.*"]
        facts = { "tier" = "db" }

        [[rule]]
        effect = "allow"
        signers = ["alice"]
        actions = ["package.*"]
    "#;

    #[test]
    fn deny_overrides_and_default_deny() {
        let p = Policy::from_toml(POLICY).unwrap();
        let k = FileSigner::generate().unwrap().key_id().clone();
        let alice = Subject {
            name: "alice",
            key: &k,
        };
        let bob = Subject {
            name: "bob",
            key: &k,
        };
        let none = BTreeMap::new();
        let db: BTreeMap<String, String> = [("tier".to_string(), "db".to_string())].into();
        assert_eq!(
            p.evaluate(alice, "service.restart", Some("web"), &none),
            Decision::Allow("ops-web".into())
        );
        assert_eq!(
            p.evaluate(alice, "service.restart", Some("db"), &none),
            Decision::DenyByDefault
        );
        assert_eq!(
            p.evaluate(alice, "service.restart", None, &none),
            Decision::DenyByDefault
        );
        assert_eq!(
            p.evaluate(bob, "service.restart", Some("web"), &none),
            Decision::DenyByDefault
        );
        assert_eq!(
            p.evaluate(bob, "ping", None, &none),
            Decision::Allow("#2".into())
        );
        assert_eq!(
            p.evaluate(alice, "package.install", None, &none),
            Decision::Allow("#4".into())
        );
        // The deny rule wins although an allow rule also matches.
        assert_eq!(
            p.evaluate(alice, "package.install", None, &db),
            Decision::DenyByRule("no-db-packages".into())
        );
        assert_eq!(
            p.evaluate(alice, "lb.drain", Some("web"), &none),
            Decision::DenyByDefault
        );
        assert_eq!(
            Policy::default().evaluate(alice, "ping", None, &none),
            Decision::DenyByDefault
        );
    }

    #[test]
    fn signer_by_key_id() {
        let k = FileSigner::generate().unwrap().key_id().clone();
        let text =
            format!("[[rule]]\neffect = \"allow\"\nsigners = [\"{k}\"]\nactions = [\"*\"]\n");
        let p = Policy::from_toml(&text).unwrap();
        assert!(
            p.evaluate(
                Subject {
                    name: "zed",
                    key: &k
                },
                "maintenance.on",
                None,
                &BTreeMap::new()
            )
            .is_allowed()
        );
        let other = FileSigner::generate().unwrap().key_id().clone();
        assert!(
            !p.evaluate(
                Subject {
                    name: "zed",
                    key: &other
                },
                "ping",
                None,
                &BTreeMap::new()
            )
            .is_allowed()
        );
    }

    #[test]
    fn invalid_policies_are_refused() {
        for text in [
            "[[rule]]\neffect = \"allow\"\nsigners = []\nactions = [\"*\"]\n",
            "[[rule]]\neffect = \"allow\"\nsigners = [\"*\"]\nactions = []\n",
            "[[rule]]\neffect = \"maybe\"\nsigners = [\"*\"]\nactions = [\"*\"]\n",
            "[[rule]]\neffect = \"allow\"\nsigners = [\"*\"]\nactions = [\"[\"]\n",
            "[[rule]]\neffect = \"allow\"\nsigners = [\"*\"]\nactions = [\"Ping\"]\n",
            "[[rule]]\neffect = \"allow\"\nsigners = [\"*\"]\nactions = [\"*\"]\nrole = [\"web\"]\n",
            "[[rule]]\neffect = \"allow\"\nsigners = [\"a b\"]\nactions = [\"*\"]\n",
            "[[rule]]\neffect = \"allow\"\nsigners = [\"*\"]\nactions = [\"*\"]\nroles = [\"we b\"]\n",
            "[[rule]]\nsigners = [\"*\"]\nactions = [\"*\"]\n",
            "rules = 3",
        ] {
            assert!(Policy::from_toml(text).is_err(), "{text}");
        }
    }
}
