//! # troupe-events
//!
//! Owns what an event is and where it goes, for every part of Troupe that
//! raises events: the master daemon (`troupe_master::events`: runs, CSRs,
//! certificates, code, refusals, and the deploy records bastions send) and
//! the bastion's `troupe deploy` (its own deploy events, to sinks
//! configured on the bastion).
//!
//! - [`Event`], [`EventKind`]: one event, the JSON shape of docs/json.md
//!   ("Events").
//! - [`config`]: the `[events]` table (master.toml, the bastion's
//!   bastion.toml): webhook, email and exec sinks, kind filters.
//! - [`sinks`]: the sinks' workers: bounded queues, retries with a
//!   doubling delay, a timeout per attempt, failures logged and counted
//!   ([`sinks::Counters`]); offering an event never blocks.
//!
//! It must never: be linked by the agent (`cargo tree -e normal -p
//! troupe-agent` stays free of it: the agent raises no events and must stay
//! lean); block or fail its caller because a sink is slow or dead; log or
//! print a sink's secret (SMTP password, webhook URL token).

#![forbid(unsafe_code)]

pub mod config;
pub mod sinks;

use serde::{Deserialize, Serialize};
use troupe_base::error_code::ErrorCode;

/// What happened. The JSON name is the snake_case of the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A node's run reported failures (its previous run had none, or it is
    /// its first report).
    RunFailed,
    /// A node's run succeeded after a failed one.
    RunRecovered,
    /// A node missed its check-ins (3 run intervals).
    NodeStale,
    /// A certificate request waits for an operator (`troupe ca sign`).
    CsrPending,
    /// A host certificate expires within `events.cert_expiry_days`.
    CertExpiring,
    /// Staged code was promoted in a held environment (`troupe env promote`).
    CodePromoted,
    /// The module tree failed to load (the previous code keeps serving).
    CodeLoadFailed,
    /// A signed command was refused (by an agent's policy, or by the
    /// master: unknown signer, bad signature, ...).
    CommandRefused,
    /// `troupe deploy` started a release.
    DeployStarted,
    /// A release started a package.
    DeployPackageStarted,
    /// One step of a release on one host (not sent to sinks unless a sink
    /// names it: there are many).
    DeployStep,
    /// A host failed in a release.
    DeployHostFailed,
    /// A release finished a package.
    DeployPackageDone,
    /// A release ran to its end.
    DeployFinished,
    /// A release stopped before its end.
    DeployAborted,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 15] = [
        EventKind::RunFailed,
        EventKind::RunRecovered,
        EventKind::NodeStale,
        EventKind::CsrPending,
        EventKind::CertExpiring,
        EventKind::CodePromoted,
        EventKind::CodeLoadFailed,
        EventKind::CommandRefused,
        EventKind::DeployStarted,
        EventKind::DeployPackageStarted,
        EventKind::DeployStep,
        EventKind::DeployHostFailed,
        EventKind::DeployPackageDone,
        EventKind::DeployFinished,
        EventKind::DeployAborted,
    ];

    /// The snake_case name (`run_failed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RunFailed => "run_failed",
            EventKind::RunRecovered => "run_recovered",
            EventKind::NodeStale => "node_stale",
            EventKind::CsrPending => "csr_pending",
            EventKind::CertExpiring => "cert_expiring",
            EventKind::CodePromoted => "code_promoted",
            EventKind::CodeLoadFailed => "code_load_failed",
            EventKind::CommandRefused => "command_refused",
            EventKind::DeployStarted => "deploy_started",
            EventKind::DeployPackageStarted => "deploy_package_started",
            EventKind::DeployStep => "deploy_step",
            EventKind::DeployHostFailed => "deploy_host_failed",
            EventKind::DeployPackageDone => "deploy_package_done",
            EventKind::DeployFinished => "deploy_finished",
            EventKind::DeployAborted => "deploy_aborted",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether an event of this kind is bad news (chat sinks mark it).
    pub fn is_bad(self) -> bool {
        matches!(
            self,
            EventKind::RunFailed
                | EventKind::NodeStale
                | EventKind::CertExpiring
                | EventKind::CodeLoadFailed
                | EventKind::CommandRefused
                | EventKind::DeployHostFailed
                | EventKind::DeployAborted
        )
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event (docs/json.md, "Events").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in this master's event sequence (from 1, restarts with
    /// the master; 0 until emitted).
    #[serde(default)]
    pub seq: u64,
    pub kind: EventKind,
    /// When it happened, RFC 3339 in UTC.
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// A release id (`troupe deploy log ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// For an event a refusal or a failure caused (a command refused, code
    /// that failed to load, a run or a release step that failed): what it
    /// is, as a typed error code (ADR 0008, docs/json.md "Error codes"),
    /// for programs to branch on instead of `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// One human line, e.g. "web1: run failed (2 resources failed)".
    pub text: String,
    /// Details by kind (docs/json.md); an object, `{}` when none.
    pub data: serde_json::Value,
}

impl Event {
    /// An event of `kind` saying `text`, now.
    pub fn new(kind: EventKind, text: impl Into<String>) -> Event {
        Event {
            seq: 0,
            kind,
            time: now_rfc3339(),
            node: None,
            release: None,
            environment: None,
            code: None,
            text: text.into(),
            data: serde_json::json!({}),
        }
    }

    pub fn node(mut self, node: impl Into<String>) -> Event {
        self.node = Some(node.into());
        self
    }

    pub fn release(mut self, id: impl Into<String>) -> Event {
        self.release = Some(id.into());
        self
    }

    pub fn environment(mut self, env: impl Into<String>) -> Event {
        self.environment = Some(env.into());
        self
    }

    pub fn code(mut self, code: ErrorCode) -> Event {
        self.code = Some(code);
        self
    }

    pub fn data(mut self, data: serde_json::Value) -> Event {
        self.data = data;
        self
    }
}

/// The typed error code (ADR 0008) of a command answer's status or a
/// release step's result: the agent's refusal codes (`policy_denied`,
/// `unknown_signer`, ...; `troupe_command::verify::Refusal::code`), the
/// master's (`no_signers`, `replayed`, ...), `failed` (the action ran and
/// failed), `error`/`timeout`/`no_answer` (no answer came). `None` for `ok`.
pub fn status_code(status: &str) -> Option<ErrorCode> {
    Some(match status {
        "ok" => return None,
        "failed" => ErrorCode::Failed,
        "policy_denied" | "unknown_signer" | "no_signers" | "bad_signature" | "expired"
        | "not_yet_valid" | "ttl_too_long" => ErrorCode::PermissionDenied,
        "malformed" | "bad_argument" | "unknown_action" | "not_targeted" => {
            ErrorCode::InvalidArgument
        }
        "replayed" => ErrorCode::Conflict,
        "error" | "timeout" | "no_answer" | "replay_store_error" | "audit_error"
        | "store_error" => ErrorCode::Unavailable,
        _ => ErrorCode::Unclassified,
    })
}

/// Now, RFC 3339 in UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
