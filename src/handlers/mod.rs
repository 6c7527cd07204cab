//! Request handlers of the main listener.

pub mod client_metrics;
pub mod own;
pub mod passthrough;
pub mod resume;
pub mod stream;

use crate::http_util::{self, ProxyBody};
use crate::upstream::UpstreamError;
use http::{Response, StatusCode};

/// The response for a failed backend request.
pub fn upstream_error(e: &UpstreamError) -> Response<ProxyBody> {
    match e {
        UpstreamError::Unreachable(_) => {
            crate::metrics::error("upstream_unreachable");
            http_util::error(StatusCode::BAD_GATEWAY, "upstream_unreachable", &e.to_string())
        }
        UpstreamError::Timeout(_) => {
            crate::metrics::error("upstream_timeout");
            http_util::error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", &e.to_string())
        }
        UpstreamError::BadRequest(_) => {
            http_util::error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string())
        }
    }
}
