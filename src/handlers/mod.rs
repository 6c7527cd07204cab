//! The main listener's requests: [`dispatch`] picks the handler, and every handler is a plain
//! async function of the shared state ([`App`]) and the request.

pub mod client_metrics;
pub mod own;
pub mod passthrough;
pub mod respond;
pub mod resume;
pub mod stream;

use crate::app::App;
use crate::http_util::{self, ProxyBody, RequestBody};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// The methods the proxy handles (sent in `Allow`): everything but `CONNECT` is forwarded.
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Answers one request of the main listener from `peer`: the proxy's own routes under
/// `server.route_prefix`, `GET`/`POST` on a stream route, and everything else forwarded.
///
/// The handler's future is boxed for the time of its request only: hyper keeps room for the
/// future this returns in every connection for as long as it is open, so it must stay small.
pub fn dispatch(
    app: Arc<App>,
    req: Request<RequestBody>,
    peer: SocketAddr,
) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>> {
    let arrived = tokio::time::Instant::now();
    if let Some(resp) = own_method(&req) {
        return Box::pin(std::future::ready(resp));
    }
    // One config for the whole request, even if a reload lands in the middle of it.
    let runtime = app.runtime();
    let path = req.uri().path();
    if let Some(rest) = runtime.settings.own_route(path) {
        let rest = rest.to_string();
        return Box::pin(async move { own::handle(&app, &runtime, &rest, req).await });
    }
    let method_ok = matches!(*req.method(), Method::GET | Method::POST);
    match runtime.settings.route(path).cloned() {
        Some(route) if method_ok => {
            Box::pin(async move { stream::handle(&app, &runtime, &route, req, peer, arrived).await })
        }
        _ => Box::pin(async move { passthrough::handle(&app, &runtime.upstream, req, peer).await }),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::test_app;
    use http_body_util::BodyExt;

    fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Request<RequestBody> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(http_util::request_body(body.to_string()))
            .expect("request")
    }

    async fn answer(app: &Arc<App>, req: Request<RequestBody>) -> (StatusCode, http::HeaderMap, String) {
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let resp = dispatch(app.clone(), req, peer).await;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    fn error_code(body: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(body).expect("a JSON error body");
        v["error"].as_str().unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn own_routes_follow_the_settings() {
        let app = test_app("");
        let (status, headers, body) = answer(&app, request("GET", "/_sse-proxy/client.js", &[], "")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert!(body.contains("SseClient"));
        // The demo page is off unless enabled; so is everything not under the prefix's routes.
        let (status, _, body) = answer(&app, request("GET", "/_sse-proxy/demo", &[], "")).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (StatusCode::NOT_FOUND, "not_found")
        );
        let demo = test_app("[demo]\nenabled = true\n");
        let (status, headers, _) = answer(&demo, request("GET", "/_sse-proxy/demo", &[], "")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        // A moved prefix moves the routes.
        let moved = test_app("[server]\nroute_prefix = \"/p\"\n");
        let (status, _, _) = answer(&moved, request("GET", "/p/vue.js", &[], "")).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn client_metrics_and_cancel_answer_without_a_backend() {
        let app = test_app("");
        let report = r#"{"outcome":"done","ttft_ms":12}"#;
        let json = [("content-type", "application/json")];
        let (status, _, _) = answer(&app, request("POST", "/_sse-proxy/client-metrics", &json, report)).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _, body) =
            answer(&app, request("POST", "/_sse-proxy/client-metrics", &[], report)).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (StatusCode::BAD_REQUEST, "invalid_report")
        );
        let off = test_app("[client_metrics]\nenabled = false\n");
        let (status, _, _) = answer(&off, request("POST", "/_sse-proxy/client-metrics", &json, report)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let cancel = format!("/_sse-proxy/streams/{}/cancel", crate::ids::StreamId::random());
        let (status, _, body) = answer(&app, request("POST", &cancel, &[], "")).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (StatusCode::NOT_FOUND, "stream_not_found")
        );
    }

    #[tokio::test]
    async fn requests_never_forwarded_and_bad_resumes_are_answered_here() {
        let app = test_app("");
        let (status, headers, _) = answer(&app, request("CONNECT", "example.com:443", &[], "")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[header::ALLOW], ALLOWED_METHODS);
        let bad = [("last-event-id", "not-an-id")];
        let (status, _, body) = answer(&app, request("GET", "/stream", &bad, "")).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (StatusCode::BAD_REQUEST, "bad_last_event_id")
        );
        let unknown = format!("{}:3", crate::ids::StreamId::random());
        let resume = [("last-event-id", unknown.as_str())];
        let (status, _, body) = answer(&app, request("GET", "/stream", &resume, "")).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (StatusCode::GONE, "resume_unavailable")
        );
        assert_eq!(app.registry.len(), 0);
    }
}
