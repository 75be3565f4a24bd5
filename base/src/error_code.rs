//! Typed error codes: what a refusal *is*, carried next to the message an
//! operator reads, so a program (a CLI adding a hint, the agent deciding
//! whether to retry) branches on the code and never on the wording.
//!
//! The master puts the code in the admin socket's JSON error answer
//! (`{"ok":false,"error":"...","code":"no_pending_request"}`) and in the
//! `troupe-error-code` metadata of a failed gRPC call
//! (`troupe_proto::error_code`). The names are stable snake_case strings
//! (documented in `docs/json.md`); a code this build does not know reads
//! back as [`ErrorCode::Unclassified`], so an older client keeps working
//! against a newer master.
//!
//! Inside a process, an error carries its code as a [`Coded`] anywhere in
//! its `anyhow` chain; [`code_of`] finds it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What kind of failure an error is. Stable names (snake_case on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The thing asked about is not known (a node without reports or facts,
    /// a host the CA knows nothing of).
    NotFound,
    /// `troupe ca sign|reject`: the host has no pending certificate request.
    NoPendingRequest,
    /// `troupe ca revoke`: the host holds no valid certificate.
    NoValidCertificate,
    /// The host's certificate is revoked (it must be cleaned to join again),
    /// or the presented client certificate is revoked, expired or unknown.
    Revoked,
    /// The host already holds a valid certificate.
    AlreadyCertified,
    /// The request collides with the CA's or the master's state: another
    /// pending request, a command already submitted or in flight.
    Conflict,
    /// A limit was reached (too many pending requests, a request too large).
    LimitExceeded,
    /// The caller may not do this (a wrong or used one-time key, a refused
    /// signature, a uid that may not use the admin socket).
    PermissionDenied,
    /// The request itself is wrong (a malformed request, a bad host name or
    /// CSR, a bad `--where`).
    InvalidArgument,
    /// This needs the running master (the CA was opened directly).
    NeedsMaster,
    /// The master serves no module tree (started without `--modules`).
    NoModuleTree,
    /// The node's catalog does not compile (the agent keeps its cached one).
    CompileFailed,
    /// The master cannot do it now (shutting down, storage failing, no tree
    /// loaded yet); trying again later may work.
    Unavailable,
    /// The master's own failure (see its log).
    Internal,
    /// Carried out on a host and failed there: a run's resources, a
    /// command's action, a release step (the message says why). Carried by
    /// events (`run_failed`, `deploy_host_failed`, ...), not by refusals.
    Failed,
    /// No specific code: read the message. Also what an unknown code from a
    /// newer peer reads as.
    #[serde(other)]
    Unclassified,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::NotFound,
        ErrorCode::NoPendingRequest,
        ErrorCode::NoValidCertificate,
        ErrorCode::Revoked,
        ErrorCode::AlreadyCertified,
        ErrorCode::Conflict,
        ErrorCode::LimitExceeded,
        ErrorCode::PermissionDenied,
        ErrorCode::InvalidArgument,
        ErrorCode::NeedsMaster,
        ErrorCode::NoModuleTree,
        ErrorCode::CompileFailed,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Failed,
        ErrorCode::Unclassified,
    ];

    /// The wire name, e.g. `no_pending_request`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::NoPendingRequest => "no_pending_request",
            ErrorCode::NoValidCertificate => "no_valid_certificate",
            ErrorCode::Revoked => "revoked",
            ErrorCode::AlreadyCertified => "already_certified",
            ErrorCode::Conflict => "conflict",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NeedsMaster => "needs_master",
            ErrorCode::NoModuleTree => "no_module_tree",
            ErrorCode::CompileFailed => "compile_failed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Failed => "failed",
            ErrorCode::Unclassified => "unclassified",
        }
    }

    /// Reads a wire name; an unknown one is [`ErrorCode::Unclassified`].
    pub fn parse(s: &str) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or(ErrorCode::Unclassified)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error message with its code. Displays as the message only, so
/// wrapping an error in it never changes what an operator reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coded {
    pub code: ErrorCode,
    pub message: String,
}

impl Coded {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Coded {
        Coded {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Coded {}

/// An `anyhow` error with `code`: `bail_code!`-style without a macro.
pub fn error(code: ErrorCode, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Coded::new(code, message))
}

/// The code of the first [`Coded`] in `e`'s chain (the outermost one wins:
/// a caller may re-classify what it wraps).
pub fn code_of(e: &anyhow::Error) -> Option<ErrorCode> {
    e.chain()
        .find_map(|c| c.downcast_ref::<Coded>())
        .map(|c| c.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_and_unknown_reads_unclassified() {
        for c in ErrorCode::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), c);
            assert_eq!(ErrorCode::parse(c.as_str()), c);
        }
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"from_a_newer_master\"").unwrap(),
            ErrorCode::Unclassified
        );
        assert_eq!(ErrorCode::parse("nope"), ErrorCode::Unclassified);
    }

    #[test]
    fn code_travels_in_the_chain_and_text_is_unchanged() {
        let e = error(ErrorCode::NotFound, "no report for web1");
        assert_eq!(e.to_string(), "no report for web1");
        let e = e.context("asking the master");
        assert_eq!(code_of(&e), Some(ErrorCode::NotFound));
        assert_eq!(code_of(&anyhow::anyhow!("plain")), None);
    }
}
