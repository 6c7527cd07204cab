//! The pooled HTTP client to the backend, and how requests are rewritten for it.

use crate::http_util::ProxyBody;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Why the backend could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connection refused, reset, or DNS failure (502).
    #[error("the backend is unreachable: {0}")]
    Unreachable(String),
    /// No connection or no response headers in time (504).
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
    /// The request could not be built for the backend (bad path).
    #[error("the request cannot be forwarded: {0}")]
    BadRequest(String),
}

/// Largest read buffer of one backend connection.
const UPSTREAM_READ_BUFFER: usize = 64 * 1024;

/// The backend and the time it is given (`[upstream]`, resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// Base URL, `http://host:port` with an optional path prefix and no query.
    pub url: Uri,
    /// TCP connect timeout (answered with 504).
    pub connect_timeout: Duration,
    /// Time allowed for the backend's response headers (answered with 504).
    pub response_timeout: Duration,
    /// Largest request body forwarded on a stream route (buffered so the stream can outlive the client).
    pub max_request_body: usize,
}

/// The backend client.
#[derive(Clone)]
pub struct Upstream {
    /// One pool per worker thread ([`crate::workers`]): a backend connection is driven by a task
    /// on the thread that opened it, so a request from another thread would cross threads at
    /// every read.
    clients: Arc<[Client<HttpConnector, ProxyBody>]>,
    scheme_authority: String,
    base_path: String,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Upstream {
    /// A pooled HTTP/1.1 client for the backend, with a pool for each of `workers` threads.
    pub fn new(settings: &UpstreamSettings, workers: usize) -> Self {
        let uri = &settings.url;
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        Upstream {
            clients: (0..workers.max(1)).map(|_| client(settings)).collect(),
            scheme_authority: format!("http://{authority}"),
            base_path: uri.path().trim_end_matches('/').to_string(),
            connect_timeout: settings.connect_timeout,
            response_timeout: settings.response_timeout,
        }
    }

    /// The backend URI for a client's path and query.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        format!("{}{}{}", self.scheme_authority, self.base_path, path_and_query)
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamError::BadRequest(e.to_string()))
    }

    /// Sends a request and waits for the response headers, within the timeouts.
    pub async fn send(&self, mut req: Request<ProxyBody>) -> Result<Response<Incoming>, UpstreamError> {
        // The backend speaks HTTP/1.1 whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;
        let client = &self.clients[crate::workers::index() % self.clients.len()];
        match tokio::time::timeout(self.response_timeout, client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(self.response_timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if is_timeout(&e) => Err(UpstreamError::Timeout(self.connect_timeout)),
            Ok(Err(e)) => Err(UpstreamError::Unreachable(error_chain(&e))),
        }
    }
}

/// A pooled HTTP/1.1 client for the backend.
fn client(settings: &UpstreamSettings) -> Client<HttpConnector, ProxyBody> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(settings.connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        // A backend that sends faster than the proxy parses must not grow a read buffer of
        // hundreds of KiB per connection (hyper's default ceiling), kept while pooled.
        .http1_max_buf_size(UPSTREAM_READ_BUFFER)
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the legacy proxy ones), never forwarded.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers, including every name listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = crate::http_util::connection_tokens(headers)
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Rewrites a client's request headers for the backend: hop-by-hop removed, `Host` left to the
/// client (the backend's authority), the peer appended to `X-Forwarded-For`, and
/// `X-Forwarded-Proto`/`-Host` added unless a proxy in front already set them.
pub fn forward_headers(headers: &mut HeaderMap, host: Option<HeaderValue>, peer: SocketAddr) {
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    let ip = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    // A TLS terminator in front of the proxy has already said what the client used: keep its word.
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if let (false, Some(h)) = (headers.contains_key("x-forwarded-host"), host) {
        headers.insert("x-forwarded-host", h);
    }
}

/// The host a client asked for: the `Host` header, or the URI authority (HTTP/2).
pub fn client_host(req: &http::request::Parts) -> Option<HeaderValue> {
    req.headers.get(header::HOST).cloned().or_else(|| {
        req.uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_listed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, X-Custom"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["authorization"]);
    }

    #[test]
    fn forwarded_headers_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("host", HeaderValue::from_static("app.example"));
        forward_headers(
            &mut h,
            Some(HeaderValue::from_static("app.example")),
            "127.0.0.9:5000".parse().expect("addr"),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert!(h.get("host").is_none());
        let mut behind_tls = HeaderMap::new();
        behind_tls.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        behind_tls.insert("x-forwarded-host", HeaderValue::from_static("chat.example"));
        forward_headers(
            &mut behind_tls,
            Some(HeaderValue::from_static("internal:8080")),
            "127.0.0.1:1".parse().expect("addr"),
        );
        assert_eq!(behind_tls["x-forwarded-proto"], "https");
        assert_eq!(behind_tls["x-forwarded-host"], "chat.example");
    }

    #[test]
    fn uri_joins_base_path() {
        let cfg: crate::config::Config =
            crate::config::Config::from_toml_str("[upstream]\nurl = \"http://127.0.0.1:9/base/\"\n", "x")
                .expect("cfg");
        let u = Upstream::new(&crate::settings::Settings::build(&cfg).upstream, 1);
        assert_eq!(
            u.uri_for("/a?b=1").expect("uri").to_string(),
            "http://127.0.0.1:9/base/a?b=1"
        );
    }
}
