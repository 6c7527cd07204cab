//! Stream routes: a new request starts a stream (one upstream request); a request with a
//! `Last-Event-ID` resumes one.

use super::resume::{self, Resume};
use crate::app::App;
use crate::config::{ModelSource, OnMiss};
use crate::connection::{Cursor, CursorSettings, Remote};
use crate::http_util::{self, ProxyBody};
use crate::identity::Owner;
use crate::ids::StreamId;
use crate::log::MemoryLog;
use crate::metrics::{RejectReason, ResumeResult};
use crate::protocol;
use crate::query;
use crate::reframe::body::UpstreamBody;
use crate::reframe::Reader;
use crate::stream::{Follower, Rejected, Stream};
use crate::upstream::{client_host, forward_headers, strip_hop_by_hop};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;
use tracing::Instrument;

/// Longest model name kept; longer or odd names become `default`.
const MAX_MODEL_LEN: usize = 64;

/// Handles a request on stream route `idx`.
pub async fn handle(
    app: &Arc<App>,
    idx: usize,
    req: Request<Incoming>,
    peer: SocketAddr,
    arrived: Instant,
) -> Response<ProxyBody> {
    let owner = app.identity.owner(req.headers());
    let resume_from = match resume::requested(&req) {
        Ok(r) => r,
        Err(e) => {
            app.metrics.resumes.increment(ResumeResult::BadRequest);
            return http_util::error(StatusCode::BAD_REQUEST, "bad_last_event_id", &e.to_string());
        }
    };
    if let Some(id) = resume_from {
        match resume::answer(app, id, owner).await {
            Resume::Respond(resp) => return resp,
            Resume::Gone if app.cfg.resume.on_miss == OnMiss::Restart => {
                tracing::debug!("resume missed; restarting as a new stream");
            }
            Resume::Gone => return resume::gone(&app.metrics),
        }
    }
    start(app, idx, req, peer, owner, arrived).await
}

/// Starts a new stream: admission, one upstream request, the reader task, and the first cursor.
async fn start(
    app: &Arc<App>,
    idx: usize,
    req: Request<Incoming>,
    peer: SocketAddr,
    owner: Option<Owner>,
    arrived: Instant,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let limit = app.cfg.upstream.max_request_body.bytes();
    let body = match http_util::read_body(body, limit, app.cfg.server.body_read_timeout.0).await {
        Ok(b) => b,
        Err(e) => return e.response(&app.metrics),
    };
    // Only after the body: a client that never sends it must not hold a stream slot meanwhile.
    let slot = match app.registry.reserve(owner) {
        Ok(s) => s,
        Err(why) => return too_many(app, why),
    };
    let route_cfg = &app.cfg.streams[idx];
    let model = model_name(route_cfg.model_from.as_ref(), &parts, &body);
    let pq = query::without_param(&parts.uri, query::LAST_EVENT_ID_PARAM);
    let uri = match app.upstream.uri_for(&pq) {
        Ok(u) => u,
        Err(e) => return super::upstream_error(&app.metrics, &e),
    };
    let host = client_host(&parts);
    forward_headers(&mut parts.headers, host, peer);
    parts.headers.remove("last-event-id");
    // The proxy parses the answer: it asks for it uncompressed (and decodes it if it comes
    // compressed anyway, see `reframe::body`).
    parts
        .headers
        .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    parts.uri = uri;
    let upstream_req = Request::from_parts(parts, http_util::full(body));
    let resp = match app.upstream.send(upstream_req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "stream request failed");
            return super::upstream_error(&app.metrics, &e);
        }
    };
    if !is_event_stream(&resp) {
        // Not a stream (a 401, a JSON error...): the browser gets the backend's answer as it is.
        let (mut p, b) = resp.into_parts();
        strip_hop_by_hop(&mut p.headers);
        return Response::from_parts(p, b.map_err(Into::into).boxed_unsync());
    }
    let (resp_parts, body) = resp.into_parts();
    let body = UpstreamBody::new(body, &resp_parts.headers);
    let id = StreamId::random();
    // Staged: clients see an event once the stream store has it.
    let log = Arc::new(MemoryLog::staged(
        id,
        app.cfg.resume.max_stream_bytes.bytes(),
        app.registry.budget().clone(),
    ));
    let route = app.routes[idx].clone();
    let stream = Arc::new(Stream::new(id, route.label.clone(), model, owner, log));
    app.registry.insert(stream.clone());
    let Some(follower) = stream.attach(app.cfg.limits.max_followers) else {
        return http_util::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot attach to a new stream",
        );
    };
    let span = tracing::info_span!("stream", stream_id = %id, route = %route.label, model = %stream.model);
    span.in_scope(|| tracing::info!("stream started"));
    let reader = Reader::new(
        stream,
        body,
        route,
        app.reader.clone(),
        app.registry.clone(),
        slot,
        arrived,
    );
    app.registry
        .spawn_reader(reader.run(app.shutdown.clone()).instrument(span.clone()));
    let mut out = event_stream_response(app, follower, 0, span);
    copy_backend_headers(resp_parts.headers, out.headers_mut());
    out
}

/// Whether the backend answered 2xx with an event stream.
fn is_event_stream(resp: &Response<Incoming>) -> bool {
    resp.status().is_success() && http_util::has_content_type(resp.headers(), "text/event-stream")
}

/// Keeps the backend's own headers (cookies, CORS) except those the re-framing changes.
fn copy_backend_headers(mut from: http::HeaderMap, to: &mut http::HeaderMap) {
    strip_hop_by_hop(&mut from);
    for (name, value) in &from {
        let skip = matches!(
            name.as_str(),
            "content-type"
                | "content-length"
                | "content-encoding"
                | "cache-control"
                | "x-accel-buffering"
                | "x-stream-id"
        );
        if !skip {
            to.append(name.clone(), value.clone());
        }
    }
}

/// A `200 text/event-stream` response following `follower`'s stream after seq `after`.
pub fn event_stream_response(
    app: &App,
    follower: Follower,
    after: u64,
    span: tracing::Span,
) -> Response<ProxyBody> {
    let id = follower.stream().id;
    let (preamble, settings) = cursor_settings(app);
    sse_response(
        id,
        Cursor::new(follower, after, preamble, settings, app.metrics.clone()),
        span,
    )
}

/// A `200 text/event-stream` response following stream `id` in the store after seq `after`.
pub fn store_stream_response(
    app: &App,
    id: StreamId,
    after: u64,
    span: tracing::Span,
) -> Response<ProxyBody> {
    let remote = Remote::new(app.store.store.clone(), id, app.store.lease, app.shutdown.clone());
    let (preamble, settings) = cursor_settings(app);
    sse_response(
        id,
        Cursor::remote(remote, after, preamble, settings, app.metrics.clone()),
        span,
    )
}

/// The `retry:` preamble and write settings of every stream response.
fn cursor_settings(app: &App) -> (Bytes, CursorSettings) {
    let preamble = protocol::retry_preamble(app.cfg.resume.client_retry.0.as_millis() as u64);
    let settings = CursorSettings {
        heartbeat: app.cfg.heartbeat.interval.0,
        max_write_bytes: app.cfg.limits.max_write_bytes.bytes(),
    };
    (preamble, settings)
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

/// A 429 with `Retry-After`, counted under the limit that was reached.
pub fn too_many(app: &App, why: Rejected) -> Response<ProxyBody> {
    app.metrics.rejected.increment(RejectReason::from(why));
    let mut resp = http_util::error(StatusCode::TOO_MANY_REQUESTS, why.code(), &why.to_string());
    let secs = app.cfg.limits.retry_after.0.as_secs().max(1);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// The model name of a request, from the route's `model_from`.
fn model_name(source: Option<&ModelSource>, parts: &http::request::Parts, body: &Bytes) -> String {
    let raw: Option<String> = match source {
        None => None,
        Some(ModelSource::Fixed(n)) => Some(n.clone()),
        Some(ModelSource::Header(h)) => parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        Some(ModelSource::Query(q)) => query::param(&parts.uri, q),
        Some(ModelSource::Body(ptr)) => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.pointer(ptr).and_then(|m| m.as_str().map(str::to_string))),
    };
    raw.filter(|m| {
        !m.is_empty()
            && m.len() <= MAX_MODEL_LEN
            && m.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
    })
    .unwrap_or_else(|| "default".to_string())
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
