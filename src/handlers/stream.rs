//! Stream routes: a new request starts a stream (one upstream request); a request with a
//! `Last-Event-ID` resumes one.

use super::respond::{event_stream_response, too_many, upstream_error};
use super::resume::{self, Resume};
use crate::app::{App, Runtime};
use crate::http_util::{self, ProxyBody, RequestBody};
use crate::identity::Owner;
use crate::ids::StreamId;
use crate::log::MemoryLog;
use crate::metrics::ResumeResult;
use crate::query;
use crate::reframe::body::UpstreamBody;
use crate::reframe::format::Framing;
use crate::reframe::Reader;
use crate::settings::{ModelSource, OnMiss, Route};
use crate::stream::Stream;
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

/// Handles a request on `route` of `runtime`.
pub async fn handle(
    app: &Arc<App>,
    runtime: &Runtime,
    route: &Arc<Route>,
    req: Request<RequestBody>,
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
        match resume::answer(app, &runtime.settings, id, owner).await {
            Resume::Respond(resp) => return resp,
            Resume::Gone if runtime.settings.resume.on_miss == OnMiss::Restart => {
                tracing::debug!("resume missed; restarting as a new stream");
            }
            Resume::Gone => return resume::gone(&app.metrics),
        }
    }
    start(app, runtime, route, req, peer, owner, arrived).await
}

/// Starts a new stream: admission, one upstream request, the reader task, and the first cursor.
async fn start(
    app: &Arc<App>,
    runtime: &Runtime,
    route: &Route,
    req: Request<RequestBody>,
    peer: SocketAddr,
    owner: Option<Owner>,
    arrived: Instant,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let settings = &runtime.settings;
    let limit = settings.upstream.max_request_body;
    let body = match http_util::read_body(body, limit, settings.server.body_read_timeout).await {
        Ok(b) => b,
        Err(e) => return e.response(&app.metrics),
    };
    let id = StreamId::random();
    // Only after the body: a client that never sends it must not hold a stream slot meanwhile.
    let admitted = match app.admission.admit(id, owner).await {
        Ok(a) => a,
        Err(why) => return too_many(app, settings, why),
    };
    let model = model_name(route.model_from.as_ref(), &parts, &body);
    let pq = query::without_param(&parts.uri, query::LAST_EVENT_ID_PARAM);
    let uri = match runtime.upstream.uri_for(&pq) {
        Ok(u) => u,
        Err(e) => return upstream_error(&app.metrics, &e),
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
    // The other replicas' learned lengths are fetched while the backend prepares its answer.
    let history = async {
        if let Some(h) = runtime.history.as_ref() {
            h.refresh(route.label(), &model).await;
        }
    };
    let asked = async { tokio::join!(runtime.upstream.send(upstream_req), history).0 };
    let resp = tokio::select! {
        resp = asked => resp,
        never = admitted.keep() => match never {},
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "stream request failed");
            return upstream_error(&app.metrics, &e);
        }
    };
    if !fits_format(&resp, route) {
        // Not a stream (a 401, a JSON error...), or a stream of another format: the browser gets
        // the backend's answer as it is.
        let (mut p, b) = resp.into_parts();
        strip_hop_by_hop(&mut p.headers);
        return Response::from_parts(p, b.map_err(Into::into).boxed_unsync());
    }
    let (resp_parts, body) = resp.into_parts();
    let body = UpstreamBody::new(body, &resp_parts.headers);
    // Staged: clients see an event once the stream store has it.
    let log = Arc::new(
        MemoryLog::staged(
            id,
            settings.resume.max_stream_bytes,
            app.registry.budget().clone(),
        )
        .emit(route.emit, &model),
    );
    let label = route.label().clone();
    let stream = Arc::new(Stream::new(id, label.clone(), model, owner, log));
    app.registry.insert(stream.clone());
    let Some(follower) = stream.attach(settings.limits.max_followers) else {
        return http_util::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot attach to a new stream",
        );
    };
    let span = tracing::info_span!("stream", stream_id = %id, route = %label, model = %stream.model);
    span.in_scope(|| tracing::info!("stream started"));
    let reader = Reader::new(
        stream,
        body,
        route.reader.clone(),
        &runtime.readers,
        admitted,
        arrived,
    );
    app.registry
        .spawn_reader(reader.run(app.shutdown.clone()).instrument(span.clone()));
    let mut out = event_stream_response(app, settings, follower, 0, span);
    copy_backend_headers(resp_parts.headers, out.headers_mut());
    out
}

/// Content types of the streams the proxy can read.
const EVENT_STREAM: &str = "text/event-stream";
const NDJSON: [&str; 2] = ["application/x-ndjson", "application/ndjson"];

/// Whether the backend answered 2xx with a stream of the route's format; a stream of the other
/// kind is counted and logged (it passes through unchanged).
fn fits_format(resp: &Response<Incoming>, route: &Route) -> bool {
    if !resp.status().is_success() {
        return false;
    }
    let headers = resp.headers();
    let sse = http_util::has_content_type(headers, EVENT_STREAM);
    let ndjson = NDJSON.iter().any(|t| http_util::has_content_type(headers, t));
    let (fits, other) = match Framing::of(route.reader.format) {
        Framing::Sse => (sse, ndjson),
        Framing::Lines => (ndjson, sse),
    };
    if other {
        route.format_mismatch.increment(1);
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        tracing::warn!(
            route = %route.label(),
            content_type,
            "the backend's answer does not fit the route's format; passed through unchanged"
        );
    }
    fits
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
