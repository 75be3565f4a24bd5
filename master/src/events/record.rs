//! `Orchestration.RecordDeploy`: a bastion's release records, checked
//! (size, id, a signer of `DATA/signers.toml`, its signature over
//! [`signing_bytes`]), stored ([`super::deploys`]) and turned into events
//! ([`super::hooks::deploy_record`]). The caller's certificate name is
//! stored as `by`.

use crate::state::MasterState;
use std::sync::Arc;
use tonic::Status;
use troupe_bastion::deploy_record::{
    DeployRecord, MAX_RECORD_BYTES, signing_bytes, valid_release_id,
};
use troupe_command::{KeyId, TrustedSigners};
use troupe_proto::v1::{DeployRecordReply, DeployRecordRequest};

/// Checks, stores and announces one record.
pub async fn record_deploy(
    state: &Arc<MasterState>,
    caller: &str,
    req: DeployRecordRequest,
) -> Result<DeployRecordReply, Status> {
    if req.record_json.len() > MAX_RECORD_BYTES {
        return Err(Status::invalid_argument(format!(
            "deploy record too large ({} bytes, at most {MAX_RECORD_BYTES})",
            req.record_json.len()
        )));
    }
    if !valid_release_id(&req.release) {
        return Err(Status::invalid_argument(format!(
            "{:?} is not a release id (1 to 64 of [0-9A-Za-z-])",
            req.release
        )));
    }
    let key =
        KeyId::parse(&req.key_id).map_err(|e| Status::invalid_argument(format!("key id: {e}")))?;
    let path = state.data_dir.join(crate::orchestra::SIGNERS_FILE);
    let trusted = match troupe_command::trust::read_trusted_file(&path, "signer list") {
        Ok(Some(text)) => TrustedSigners::from_toml(&text)
            .map_err(|e| Status::permission_denied(format!("{}: {e}", path.display())))?,
        Ok(None) => TrustedSigners::default(),
        Err(e) => return Err(Status::permission_denied(format!("{e:#}"))),
    };
    if trusted.name_of(&key).is_none() {
        let msg = format!("unknown signer {key}: not in the master's trusted-signer list");
        tracing::warn!(caller, "deploy record refused: {msg}");
        return Err(Status::permission_denied(format!("unknown_signer: {msg}")));
    }
    let sig = ed25519_dalek::Signature::from_slice(&req.signature)
        .map_err(|_| Status::invalid_argument("signature: not an ed25519 signature"))?;
    if key
        .verifying_key()
        .verify_strict(
            &signing_bytes(&req.release, req.seq, &req.record_json),
            &sig,
        )
        .is_err()
    {
        tracing::warn!(caller, "deploy record refused: bad signature");
        return Err(Status::permission_denied(
            "bad_signature: the deploy record's signature does not verify",
        ));
    }
    let record: DeployRecord = serde_json::from_slice(&req.record_json)
        .map_err(|e| Status::invalid_argument(format!("deploy record: {e}")))?;
    let st = state.clone();
    let caller = caller.to_string();
    let id = req.release.clone();
    let seq = req.seq;
    let stored = tokio::task::spawn_blocking(move || {
        let r = st.events.deploys.append(&id, seq, &caller, &record);
        if let Ok(true) = r {
            super::hooks::deploy_record(&st, &id, &caller, &record);
        }
        r
    })
    .await
    .map_err(|_| Status::internal("the deploy record task failed"))?;
    use super::deploys::DeployError as E;
    match stored {
        Ok(stored) => Ok(DeployRecordReply { stored }),
        Err(e @ (E::BadId(_) | E::StartSeq)) => Err(Status::invalid_argument(e.to_string())),
        Err(e @ (E::Unknown(_) | E::Exists(_) | E::Ended(_))) => {
            Err(Status::failed_precondition(e.to_string()))
        }
        Err(e @ E::Full(_)) => Err(Status::resource_exhausted(e.to_string())),
        Err(e @ E::Io { .. }) => {
            tracing::error!("could not store a deploy record: {e}");
            Err(Status::unavailable(format!("{e}")))
        }
    }
}
