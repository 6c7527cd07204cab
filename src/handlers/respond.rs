//! Responses more than one handler sends: the event stream of a follower (local or from the store),
//! the 429 of a limit, and the answer to a failed backend request.

use crate::app::App;
use crate::cluster::Following;
use crate::connection::{Cursor, Remote};
use crate::http_util::{self, ProxyBody};
use crate::ids::StreamId;
use crate::metrics::{ErrorLabel, Metrics, RejectReason};
use crate::protocol::Dialect;
use crate::settings::Settings;
use crate::stream::{Follower, Rejected};
use crate::upstream::UpstreamError;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

/// A `200 text/event-stream` response following `follower`'s stream after seq `after`, as the
/// request's `settings` say.
pub fn event_stream_response(
    app: &App,
    settings: &Settings,
    follower: Follower,
    after: u64,
    span: tracing::Span,
) -> Response<ProxyBody> {
    let id = follower.stream().id;
    let dialect = follower.stream().log.dialect();
    let mut cursor = Cursor::new(
        follower,
        after,
        preamble(settings, dialect),
        settings.cursor,
        app.metrics.clone(),
    )
    .dialect(dialect);
    // OpenAI clients do not reconnect by themselves: handed off, they would end without the rest.
    if app.store.handoff && dialect == Dialect::Native {
        cursor = cursor.hand_off_on(app.shutdown.clone());
    }
    sse_response(id, cursor, span)
}

/// A `200 text/event-stream` response following, from the store after seq `after`, the stream
/// `follower` counts a connection of, written in `dialect` (its route's).
pub fn store_stream_response(
    app: &App,
    settings: &Settings,
    follower: Following,
    dialect: Dialect,
    after: u64,
    span: tracing::Span,
) -> Response<ProxyBody> {
    let id = follower.id();
    let remote = Remote::new(app.store.store.clone(), id, app.store.lease, app.shutdown.clone())
        .dialect(dialect)
        .counted(follower);
    let cursor = Cursor::remote(
        remote,
        after,
        preamble(settings, dialect),
        settings.cursor,
        app.metrics.clone(),
    )
    .dialect(dialect);
    sse_response(id, cursor, span)
}

/// What every stream response starts with: the `retry:` line on native routes.
fn preamble(settings: &Settings, dialect: Dialect) -> Bytes {
    dialect.preamble(settings.resume.client_retry.as_millis() as u64)
}

fn sse_response(id: StreamId, cursor: Cursor, span: tracing::Span) -> Response<ProxyBody> {
    let id = id.to_string();
    let body = cursor.into_body();
    let body = http_body_util::BodyExt::boxed_unsync(InSpan { inner: body, span });
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert("x-stream-id", v);
    }
    resp
}

/// A 429 with `Retry-After` (from `settings`), counted under the limit that was reached.
pub fn too_many(app: &App, settings: &Settings, why: Rejected) -> Response<ProxyBody> {
    app.metrics.rejected.increment(RejectReason::from(why));
    let mut resp = http_util::error(StatusCode::TOO_MANY_REQUESTS, why.code(), &why.to_string());
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(settings.limits.retry_after_secs),
    );
    resp
}

/// The response for a failed backend request, counted in `metrics`. The message is fixed: the
/// error chain (addresses, OS errors) is for the log, which the caller writes.
pub fn upstream_error(metrics: &Metrics, e: &UpstreamError) -> Response<ProxyBody> {
    match e {
        UpstreamError::Unreachable(_) => {
            metrics.error(ErrorLabel::UpstreamUnreachable);
            http_util::error(
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                "the backend is unreachable",
            )
        }
        UpstreamError::Timeout(_) => {
            // `upstream_timeout` on the wire (PROTOCOL.md), but counted apart from the streams
            // that go silent mid-answer, which end with an `error` event of the same code.
            metrics.error(ErrorLabel::UpstreamResponseTimeout);
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

/// A body that polls its inner body inside a tracing span, so cursor logs carry the stream id.
struct InSpan {
    inner: ProxyBody,
    span: tracing::Span,
}

impl http_body::Body for InSpan {
    type Data = Bytes;
    type Error = crate::http_util::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let _enter = this.span.enter();
        std::pin::Pin::new(&mut this.inner).poll_frame(cx)
    }
}
