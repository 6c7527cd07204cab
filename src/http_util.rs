//! Body types and small response builders shared by the handlers.

use crate::metrics::{ClientErrorReason, LabelValue, Metrics};
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{BodyExt, Empty, Full};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

/// Any boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response and upstream request.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The body of every request a handler gets: the client's bytes, boxed so that handlers are plain
/// functions of a request wherever it comes from (a client connection, or a test).
pub type RequestBody = BoxBody<Bytes, hyper::Error>;

/// A request body of fixed bytes (for requests made in-process by unit tests).
#[cfg(test)]
pub fn request_body(b: impl Into<Bytes>) -> RequestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

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

/// Whether the `Content-Type` is `mime` (case-insensitive, parameters such as `charset` allowed).
pub fn has_content_type(headers: &http::HeaderMap, mime: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with(mime))
}

/// The comma-separated tokens of every `Connection` header, trimmed (empty ones included).
pub fn connection_tokens(headers: &http::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// A response with a status and no body.
pub fn status(status: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    resp
}

/// Why a request body the proxy reads itself could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Larger than allowed (413).
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// Not sent completely within the time allowed (408).
    #[error("request body not received within {0:?}")]
    Timeout(std::time::Duration),
    /// The connection failed while reading (400).
    #[error("request body could not be read: {0}")]
    Broken(String),
}

/// Reads a whole request body of at most `limit` bytes within `within`.
pub async fn read_body(
    body: RequestBody,
    limit: usize,
    within: std::time::Duration,
) -> Result<Bytes, BodyError> {
    use http_body_util::Limited;
    match tokio::time::timeout(within, Limited::new(body, limit).collect()).await {
        Err(_) => Err(BodyError::Timeout(within)),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(limit)),
        Ok(Err(e)) => Err(BodyError::Broken(e.to_string())),
    }
}

impl BodyError {
    /// The JSON error response, counted in `sse_proxy_client_errors_total` of `metrics`. The
    /// message is fixed: what hyper said about the bytes goes to the log only.
    pub fn response(&self, metrics: &Metrics) -> Response<ProxyBody> {
        let (status, reason) = match self {
            BodyError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ClientErrorReason::BodyTooLarge),
            BodyError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, ClientErrorReason::BodyTimeout),
            BodyError::Broken(_) => (StatusCode::BAD_REQUEST, ClientErrorReason::BadBody),
        };
        tracing::debug!(error = %self, "request body refused");
        metrics.client_errors.increment(reason);

        let message = match self {
            BodyError::Broken(_) => "the request body could not be read (malformed or cut short)".to_string(),
            other => other.to_string(),
        };
        // The label is the JSON `error` code too.
        error(status, reason.as_str(), &message)
    }
}

/// A client's request body on its way to the backend. A read error is recorded before it is
/// passed on, so that when the backend request then fails the client is blamed (`400`), not the
/// backend (`502`).
pub struct ClientBody {
    inner: RequestBody,
    failure: ClientBodyFailure,
}

/// The error a [`ClientBody`] yields when the client's bytes could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body could not be read: {0}")]
pub struct ClientBodyError(#[source] hyper::Error);

/// Whether a [`ClientBody`] failed, with the detail for the log.
#[derive(Clone, Default)]
pub struct ClientBodyFailure(Arc<OnceLock<String>>);

impl ClientBodyFailure {
    /// The error, once reading the body failed.
    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

impl ClientBody {
    /// Wraps a request body; the returned handle tells later whether reading it failed.
    pub fn new(inner: RequestBody) -> (Self, ClientBodyFailure) {
        let failure = ClientBodyFailure::default();
        let body = ClientBody {
            inner,
            failure: failure.clone(),
        };
        (body, failure)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(e)) => {
                let _ = self.failure.0.set(e.to_string());
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e)))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_tokens_over_every_header() {
        let mut h = http::HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.append(header::CONNECTION, HeaderValue::from_static(" x-custom ,,"));
        let tokens: Vec<&str> = connection_tokens(&h).collect();
        assert_eq!(tokens, ["keep-alive", "Upgrade", "x-custom", "", ""]);
        assert_eq!(connection_tokens(&http::HeaderMap::new()).count(), 0);
    }
}
