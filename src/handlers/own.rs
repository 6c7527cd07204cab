//! The proxy's own routes under `server.route_prefix`: client, demo page, cancel, client metrics.

use crate::app::{App, Runtime};
use crate::http_util::{self, ProxyBody, RequestBody};
use crate::ids::StreamId;
use crate::stream::{Outcome, State};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

/// The browser client (ES module), built from `clients/js`.
const CLIENT_JS: &str = include_str!("../../clients/js/dist/sse-client.js");
/// The Vue 3 composable (ES module importing `vue` and `./sse-client.js`).
const VUE_JS: &str = include_str!("../../clients/js/dist/vue.js");
/// The demo page.
const DEMO_HTML: &str = include_str!("../../clients/js/demo/index.html");

/// Handles `{route_prefix}{rest}`.
/// The request's `runtime` (its config snapshot) decides which of them are on.
pub async fn handle(
    app: &App,
    runtime: &Runtime,
    rest: &str,
    req: Request<RequestBody>,
) -> Response<ProxyBody> {
    let method = req.method().clone();
    match (&method, rest) {
        // `vue.js` imports its sibling as `./sse-client.js`; `client.js` is the documented name.
        (&Method::GET, "/client.js" | "/sse-client.js") => asset(CLIENT_JS, "text/javascript; charset=utf-8"),
        (&Method::GET, "/vue.js") => asset(VUE_JS, "text/javascript; charset=utf-8"),
        (&Method::GET, "/demo") if runtime.settings.demo => asset(DEMO_HTML, "text/html; charset=utf-8"),
        (&Method::POST, "/client-metrics") if runtime.settings.client_metrics.is_some() => {
            super::client_metrics::handle(app, runtime, req).await
        }
        (&Method::POST, r) => match cancel_id(r) {
            Some(id) => cancel(app, id, &req).await,
            None => not_found(),
        },
        _ => not_found(),
    }
}

fn not_found() -> Response<ProxyBody> {
    http_util::error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

fn asset(body: &'static str, content_type: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(http_util::full(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `/streams/{id}/cancel` → `{id}`.
fn cancel_id(rest: &str) -> Option<&str> {
    rest.strip_prefix("/streams/")?.strip_suffix("/cancel")
}

/// Longest a cancel waits for the reader to confirm the stream ended.
const CANCEL_CONFIRM: std::time::Duration = std::time::Duration::from_secs(2);

/// Owner-only Stop: 202 cancelled, 409 already finished, 404 unknown or not yours (one body).
async fn cancel(app: &App, id: &str, req: &Request<RequestBody>) -> Response<ProxyBody> {
    let not_found = || http_util::error(StatusCode::NOT_FOUND, "stream_not_found", "no such stream");
    let Some(stream) = StreamId::parse(id).and_then(|id| app.registry.get(&id)) else {
        return not_found();
    };
    if !app
        .identity
        .permits(stream.owner, app.identity.owner(req.headers()))
    {
        return not_found();
    }
    let requested = stream.cancel();
    // The reader may have finished the answer just before the cancel reached it: report what
    // actually happened, not what was asked.
    let state = match tokio::time::timeout(CANCEL_CONFIRM, stream.finished()).await {
        Ok(state) => state,
        Err(_) => stream.state(),
    };
    match state {
        State::Finished(outcome, _) if !requested || outcome != Outcome::Cancelled => http_util::json(
            StatusCode::CONFLICT,
            &serde_json::json!({
                "error": "stream_finished",
                "message": "the stream has already finished",
                "outcome": outcome.as_str(),
            }),
        ),
        _ => {
            tracing::info!(stream_id = %stream.id, "stream cancelled by its owner");
            http_util::json(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "stream_id": stream.id.to_string(), "cancelled": true, "tokens": stream.tokens() }),
            )
        }
    }
}
