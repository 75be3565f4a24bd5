//! The `troupe.v1.Ca` gRPC service: bootstrap (CA and CRL fetch, CSR
//! submission, polling) without a client certificate, and renewal over
//! mutual TLS with the identity taken from the verified certificate.

use crate::state::MasterState;
use crate::tls::peer_identity;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use troupe_pki::authority::{CaError, PollOutcome, SubmitOutcome};
use troupe_pki::csr::{CsrError, MAX_CSR_BYTES};
use troupe_proto::v1::ca_server::{Ca, CaServer};
use troupe_proto::v1::certificate_status::State;
use troupe_proto::v1::{
    CaCertificate, CertificateStatus, Crl, Empty, PollCertificateRequest, RenewRequest,
    SubmitCsrRequest,
};

/// Largest message the CA service decodes: a CSR plus a name, with room.
pub const MAX_CA_MESSAGE_BYTES: usize = MAX_CSR_BYTES + 4096;

/// The service implementation.
pub struct CaService {
    state: Arc<MasterState>,
}

/// The tonic service, with a tight message-size limit (absurdly large
/// requests are refused before they are decoded).
pub fn server(state: Arc<MasterState>) -> CaServer<CaService> {
    CaServer::new(CaService { state })
        .max_decoding_message_size(MAX_CA_MESSAGE_BYTES)
        .max_encoding_message_size(troupe_proto::MAX_MESSAGE_BYTES)
}

/// Maps a CA error to a gRPC status with a clear message and its typed
/// code (`troupe-error-code`). Internal failures are logged in full and
/// reported vaguely.
pub fn status_of(e: CaError) -> Status {
    let code = e.code();
    troupe_proto::error_code::with_code(status_text(e), code)
}

fn status_text(e: CaError) -> Status {
    match &e {
        CaError::Csr(CsrError::TooLarge(_)) => Status::resource_exhausted(e.to_string()),
        CaError::Csr(_) | CaError::Name(_) => Status::invalid_argument(e.to_string()),
        CaError::Psk(_) => Status::permission_denied(e.to_string()),
        CaError::AlreadyCertified { .. } => Status::already_exists(e.to_string()),
        CaError::RevokedHost(_) | CaError::PendingConflict(_) => {
            Status::failed_precondition(e.to_string())
        }
        CaError::TooManyPending(_) => Status::resource_exhausted(e.to_string()),
        CaError::NoPending(_) | CaError::NoValidCert(_) | CaError::UnknownHost(_) => {
            Status::not_found(e.to_string())
        }
        CaError::PeerNotValid(_) => Status::unauthenticated(e.to_string()),
        CaError::Storage(_) | CaError::Io(_) | CaError::Crypto(_) => {
            tracing::error!("CA failure: {e}");
            Status::internal("internal certificate authority error (see the master's log)")
        }
    }
}

fn status(state: State, pem: String, message: impl Into<String>) -> CertificateStatus {
    CertificateStatus {
        state: state as i32,
        certificate_pem: pem,
        message: message.into(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CaError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Status::internal("CA task failed"))?
        .map_err(status_of)
}

fn source<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[tonic::async_trait]
impl Ca for CaService {
    async fn get_ca_certificate(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<CaCertificate>, Status> {
        Ok(Response::new(CaCertificate {
            pem: self.state.ca.ca_pem().to_string(),
        }))
    }

    async fn get_crl(&self, _req: Request<Empty>) -> Result<Response<Crl>, Status> {
        Ok(Response::new(Crl {
            pem: self.state.ca.crl_pem(),
        }))
    }

    async fn submit_csr(
        &self,
        req: Request<SubmitCsrRequest>,
    ) -> Result<Response<CertificateStatus>, Status> {
        let src = source(&req);
        let src_text = src.clone();
        let r = req.into_inner();
        let ca = self.state.ca.clone();
        let name = r.name.clone();
        let out = blocking(move || ca.submit_csr(&r.name, &r.csr, &src)).await?;
        Ok(Response::new(match out {
            SubmitOutcome::Signed(c) => {
                status(State::Signed, c.pem, "signed with the pre-shared key")
            }
            SubmitOutcome::Pending => {
                crate::events::hooks::csr_pending(&self.state, &name, &src_text);
                status(
                    State::Pending,
                    String::new(),
                    format!(
                        "no pre-shared key: the request waits for an operator to run `troupe ca sign {name}` on the master"
                    ),
                )
            }
        }))
    }

    async fn poll_certificate(
        &self,
        req: Request<PollCertificateRequest>,
    ) -> Result<Response<CertificateStatus>, Status> {
        let r = req.into_inner();
        let ca = self.state.ca.clone();
        let name = r.name.clone();
        let out = blocking(move || ca.poll(&r.name, &r.public_key_sha256)).await?;
        Ok(Response::new(match out {
            PollOutcome::Signed(c) => status(State::Signed, c.pem, "signed"),
            PollOutcome::Pending => status(
                State::Pending,
                String::new(),
                format!("waiting for an operator to run `troupe ca sign {name}`"),
            ),
            PollOutcome::Rejected => status(
                State::Rejected,
                String::new(),
                format!("an operator rejected the certificate request for {name}"),
            ),
            PollOutcome::Unknown => status(
                State::Unknown,
                String::new(),
                format!("the CA has no request for {name} with this key (cleaned?)"),
            ),
        }))
    }

    async fn renew(
        &self,
        req: Request<RenewRequest>,
    ) -> Result<Response<CertificateStatus>, Status> {
        let peer = peer_identity(&self.state.ca, &req)?;
        let src = source(&req);
        let r = req.into_inner();
        let ca = self.state.ca.clone();
        let out = blocking(move || ca.renew(&peer.name, &peer.serial, &r.csr, &src)).await?;
        self.state.reload_crl();
        Ok(Response::new(status(State::Signed, out.pem, "renewed")))
    }
}
