//! The state shared by every service of the running master.
//!
//! Later services (catalog, reports, orchestration) add their own fields
//! here and their tonic services to [`crate::daemon::router`].

use crate::tls::ServerTls;
use std::path::PathBuf;
use std::sync::Arc;
use troupe_pki::Authority;

/// Everything a request handler may need. Built once by the daemon and
/// shared as `Arc<MasterState>`.
pub struct MasterState {
    /// The data directory (`--data`).
    pub data_dir: PathBuf,
    /// The module tree (`--modules`), if given.
    pub modules: Option<PathBuf>,
    /// The certificate authority.
    pub ca: Arc<Authority>,
    /// The live TLS server configuration (reloaded when the CRL changes).
    pub tls: Arc<ServerTls>,
}

impl MasterState {
    /// Rebuilds the TLS configuration with the CA's current CRL, so a
    /// revocation takes effect on the next handshake.
    pub fn reload_crl(&self) {
        if let Err(e) = self.tls.reload(&self.ca) {
            tracing::error!("could not reload the TLS configuration with the new CRL: {e:#}");
        }
    }
}
