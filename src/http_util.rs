//! Body types and small response builders shared by the handlers.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

/// Any boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response and upstream request.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body of fixed bytes.
pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A JSON error `{"error": code, "message": message}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    json(status, &serde_json::json!({ "error": code, "message": message }))
}

/// A response with a status and no body.
pub fn status(status: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    resp
}
