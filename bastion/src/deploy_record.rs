//! The records of a release's log (`troupe deploy`), as the bastion sends
//! them to the master (`Orchestration.RecordDeploy`) and the master stores
//! them (`DATA/deploys/ID.jsonl`, one record a line, see
//! `troupe_master::events::deploys`).
//!
//! The bastion picks the release id ([`new_release_id`]) and numbers its
//! records from 0 (`seq`); each record is signed with the same key that
//! signs the release's commands, over [`signing_bytes`] (a fixed prefix, so
//! a record's signature can never pass for a command envelope's). The
//! master accepts a record only from a signer in its `DATA/signers.toml`,
//! in order (a replayed or repeated `seq` is dropped), and opens a release
//! only with `started` (seq 0).

use serde::{Deserialize, Serialize};

/// Domain separation of record signatures.
pub const SIGNING_PREFIX: &[u8] = b"troupe-deploy-record-v1\n";
/// Largest record the master accepts (bytes of JSON).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// One package of the plan, with its batches of hosts in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedPackage {
    pub name: String,
    pub version: String,
    pub batches: Vec<Vec<String>>,
}

/// One line of a release's log. Times are RFC 3339 (UTC) as the bastion
/// saw them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeployRecord {
    /// The release began: what it will do.
    Started {
        title: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        environment: Option<String>,
        packages: Vec<PlannedPackage>,
        /// Hosts that matched but are not connected now.
        #[serde(default)]
        not_connected: Vec<String>,
        time: String,
    },
    /// A package's first batch is about to start.
    PackageStarted {
        package: String,
        version: String,
        hosts: usize,
        time: String,
    },
    /// One step on one host (each health-check attempt is its own).
    Step {
        host: String,
        package: String,
        step: String,
        attempt: u32,
        /// `ok`, `failed`, or the agent's refusal code.
        result: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        message: String,
        /// When the step was sent.
        started: String,
        duration_ms: u64,
    },
    /// A host stopped at a step: what it was left with and how to undo it.
    HostFailed {
        host: String,
        package: String,
        step: String,
        error: String,
        #[serde(default)]
        left: Vec<String>,
        #[serde(default)]
        undo: Vec<String>,
        time: String,
    },
    /// A host went through every step of a package (live progress: the
    /// package's hosts are counted as they finish, not at its end).
    HostDone {
        host: String,
        package: String,
        time: String,
    },
    /// Every batch of a package ran (or the release stopped in it).
    PackageDone {
        package: String,
        version: String,
        ok: Vec<String>,
        failed: Vec<String>,
        time: String,
    },
    /// The release ran to its end: `complete` (every host updated) or
    /// `failed` (within --max-failures).
    Finished {
        status: String,
        completed: usize,
        failed_hosts: usize,
        time: String,
    },
    /// The release stopped before its end (too many failures, an error,
    /// the operator interrupting it).
    Aborted {
        reason: String,
        completed: usize,
        failed_hosts: usize,
        time: String,
    },
}

impl DeployRecord {
    /// The record's snake_case name (`started`, `step`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            DeployRecord::Started { .. } => "started",
            DeployRecord::PackageStarted { .. } => "package_started",
            DeployRecord::Step { .. } => "step",
            DeployRecord::HostFailed { .. } => "host_failed",
            DeployRecord::HostDone { .. } => "host_done",
            DeployRecord::PackageDone { .. } => "package_done",
            DeployRecord::Finished { .. } => "finished",
            DeployRecord::Aborted { .. } => "aborted",
        }
    }

    /// Whether the record ends the release.
    pub fn is_end(&self) -> bool {
        matches!(
            self,
            DeployRecord::Finished { .. } | DeployRecord::Aborted { .. }
        )
    }
}

/// The bytes a record's signature covers.
pub fn signing_bytes(release: &str, seq: u64, record_json: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_PREFIX.len() + release.len() + 24 + record_json.len());
    m.extend_from_slice(SIGNING_PREFIX);
    m.extend_from_slice(release.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(seq.to_string().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(record_json);
    m
}

/// Whether `id` is a release id: 1 to 64 of `[0-9A-Za-z-]`, starting with
/// a letter or digit (so it is always a safe file name).
pub fn valid_release_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && id.as_bytes()[0].is_ascii_alphanumeric()
}

/// A new release id: the UTC start time and 6 random hex digits
/// (`20261206T210334Z-3f9a0c`), so ids sort by start time.
pub fn new_release_id() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = now.chars().filter(|c| *c != '-' && *c != ':').collect();
    let mut r = [0u8; 3];
    let _ = getrandom::fill(&mut r);
    format!("{stamp}-{:02x}{:02x}{:02x}", r[0], r[1], r[2])
}

/// Now, RFC 3339 in UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Sends a release's records to the master, in order, each signed.
/// Never fails the release: a record the master does not take is reported
/// once on stderr and the release goes on (its log on the master then has
/// a gap, or is missing when even `started` was not stored).
pub struct Recorder {
    channel: Option<tonic::transport::Channel>,
    /// The release id.
    pub id: String,
    seq: u64,
    ended: bool,
    warned: bool,
    /// The bastion's own sinks ([`crate::deploy_events`]), if configured.
    pub local: Option<crate::deploy_events::LocalEvents>,
}

impl Recorder {
    /// A recorder for a new release id (nothing sent until [`Self::connect`]).
    pub fn new() -> Recorder {
        Recorder {
            channel: None,
            id: new_release_id(),
            seq: 0,
            ended: false,
            warned: false,
            local: None,
        }
    }

    /// Records go over `channel` from now on.
    pub fn connect(&mut self, channel: tonic::transport::Channel) {
        self.channel = Some(channel);
    }

    /// Whether `started` was sent and no end yet.
    pub fn open(&self) -> bool {
        self.seq > 0 && !self.ended
    }

    /// Signs and sends one record (at most 10 s).
    pub async fn send(&mut self, signer: &mut dyn troupe_command::Signer, record: DeployRecord) {
        let Some(channel) = self.channel.clone() else {
            return;
        };
        if self.ended {
            return;
        }
        self.ended = record.is_end();
        let seq = self.seq;
        self.seq += 1;
        if let Some(l) = &mut self.local {
            l.record(seq, &record);
        }
        let r = async {
            let json = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
            let sig = signer
                .sign(&signing_bytes(&self.id, seq, &json))
                .map_err(|e| format!("signing: {e}"))?;
            let req = troupe_proto::v1::DeployRecordRequest {
                release: self.id.clone(),
                seq,
                record_json: json,
                key_id: signer.key_id().to_string(),
                signature: sig.to_bytes().to_vec(),
            };
            let mut client =
                troupe_proto::v1::orchestration_client::OrchestrationClient::new(channel);
            match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                client.record_deploy(req),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(s)) => Err(troupe_identity::status_message(&s)),
                Err(_) => Err("no answer within 10 s".to_string()),
            }
        }
        .await;
        if let Err(e) = r
            && !self.warned
        {
            self.warned = true;
            eprintln!(
                "troupe: warning: the master did not store the release log ({} record of release {}): {e}; the release goes on",
                record.name(),
                self.id
            );
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_safe_and_records_round_trip() {
        let id = new_release_id();
        assert!(valid_release_id(&id), "{id}");
        assert_eq!(id.len(), "20261206T210334Z-3f9a0c".len(), "{id}");
        for bad in ["", "../x", "-a", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_release_id(bad), "{bad:?}");
        }
        let r = DeployRecord::HostFailed {
            host: "web1".into(),
            package: "nginx".into(),
            step: "stop nginx".into(),
            error: "failed: boom".into(),
            left: vec!["in maintenance".into()],
            undo: vec![],
            time: now_rfc3339(),
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.starts_with(r#"{"record":"host_failed""#), "{j}");
        assert_eq!(serde_json::from_str::<DeployRecord>(&j).unwrap(), r);
        assert!(serde_json::from_str::<DeployRecord>(r#"{"record":"nope"}"#).is_err());
        assert_ne!(
            signing_bytes("a", 1, b"{}"),
            signing_bytes("a", 11, b"{}")[..]
        );
    }
}
