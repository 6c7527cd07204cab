//! Request handlers of the main listener.

pub mod client_metrics;
pub mod own;
pub mod passthrough;
pub mod resume;
pub mod stream;

use crate::http_util::{self, ProxyBody};
use crate::upstream::UpstreamError;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

/// The methods the proxy handles (sent in `Allow`): everything but `CONNECT` is forwarded.
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Answers the requests the proxy never forwards: `CONNECT` (it is not a forward proxy) and the
/// `*` request target (`OPTIONS *` asks about the server itself, and would otherwise be joined to
/// the backend URL as `http://host:port*`).
pub fn own_method<B>(req: &Request<B>) -> Option<Response<ProxyBody>> {
    let asterisk = req.uri() == "*";
    let mut resp = match *req.method() {
        Method::CONNECT => http_util::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "CONNECT is not supported: this is a reverse proxy",
        ),
        Method::OPTIONS if asterisk => http_util::status(StatusCode::OK),
        _ if asterisk => {
            return Some(http_util::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request target * is only allowed with OPTIONS",
            ))
        }
        _ => return None,
    };
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
    Some(resp)
}

/// The response for a failed backend request. The message is fixed: the error chain (addresses,
/// OS errors) is for the log, which the caller writes.
pub fn upstream_error(e: &UpstreamError) -> Response<ProxyBody> {
    match e {
        UpstreamError::Unreachable(_) => {
            crate::metrics::error("upstream_unreachable");
            http_util::error(
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                "the backend is unreachable",
            )
        }
        UpstreamError::Timeout(_) => {
            crate::metrics::error("upstream_timeout");
            http_util::error(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the backend did not answer in time",
            )
        }
        UpstreamError::BadRequest(_) => http_util::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request target cannot be forwarded to the backend",
        ),
    }
}
