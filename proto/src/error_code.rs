//! The typed error code of a failed gRPC call: the master sets it as the
//! `troupe-error-code` metadata entry of the status (next to the gRPC code
//! and the human message); clients read it with [`code_of`] and branch on
//! it, never on the message text.

use tonic::Status;
use tonic::metadata::MetadataValue;
pub use troupe_base::error_code::{Coded, ErrorCode};

/// The metadata key (ASCII, lower case as HTTP/2 requires).
pub const METADATA_KEY: &str = "troupe-error-code";

/// `status` with `code` attached (replacing an earlier one).
pub fn with_code(mut status: Status, code: ErrorCode) -> Status {
    status
        .metadata_mut()
        .insert(METADATA_KEY, MetadataValue::from_static(code.as_str()));
    status
}

/// A status with a gRPC code, a message and a Troupe code.
pub fn status(grpc: tonic::Code, code: ErrorCode, message: impl Into<String>) -> Status {
    with_code(Status::new(grpc, message), code)
}

/// The Troupe code a status carries; `None` when it has none (a transport
/// failure, or a peer that sets none). An unknown name reads as
/// [`ErrorCode::Unclassified`].
pub fn code_of(status: &Status) -> Option<ErrorCode> {
    let v = status.metadata().get(METADATA_KEY)?;
    Some(ErrorCode::parse(v.to_str().unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_survives_the_http_trailers() {
        let s = status(
            tonic::Code::NotFound,
            ErrorCode::NoPendingRequest,
            "no pending certificate request for \"web1\"",
        );
        // What the client decodes: the status rebuilt from its headers.
        let http = s.into_http::<()>();
        let back = Status::from_header_map(http.headers()).unwrap();
        assert_eq!(back.code(), tonic::Code::NotFound);
        assert_eq!(code_of(&back), Some(ErrorCode::NoPendingRequest));
        assert_eq!(code_of(&Status::unavailable("x")), None);
        let odd = with_code(Status::internal("x"), ErrorCode::Internal);
        let mut odd2 = odd.clone();
        odd2.metadata_mut()
            .insert(METADATA_KEY, MetadataValue::from_static("from_the_future"));
        assert_eq!(code_of(&odd2), Some(ErrorCode::Unclassified));
    }
}
