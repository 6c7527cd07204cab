//! Shared test harness: a scriptable mock upstream, an in-process proxy, and an SSE client.
#![allow(dead_code)]

pub mod backend;
pub mod balancer;
pub mod chaos;
pub mod client;
pub mod follow;
pub mod h2raw;
pub mod process;
pub mod raw;
pub mod redis_server;
pub mod tcp;
pub mod wire;

pub use client::*;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sse_proxy::config::Config;
use sse_proxy::sse::Parser;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Longest any single wait in a test may take before it fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------------
// Mock upstream

/// One step of a scripted upstream body.
#[derive(Clone, Debug)]
pub enum Step {
    /// Send these bytes.
    Bytes(Bytes),
    /// Wait.
    Sleep(Duration),
    /// Break the connection (no final chunk).
    Abort,
    /// Never send anything more.
    Hang,
    /// Wait until the test releases it (`Notify::notify_one`, which is kept if nobody waits yet).
    Wait(Arc<Notify>),
}

/// A scripted upstream answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub steps: Vec<Step>,
}

impl Reply {
    /// A `text/event-stream` answer.
    pub fn sse(steps: Vec<Step>) -> Self {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream; charset=utf-8".into())],
            steps,
        }
    }

    /// Any other answer with a fixed body.
    pub fn plain(status: u16, content_type: &str, body: &str) -> Self {
        Reply {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            steps: vec![Step::Bytes(Bytes::from(body.to_string()))],
        }
    }
}

/// One SSE event as an upstream would send it (CRLF line ends, like sse-starlette).
pub fn ev(event: Option<&str>, data: &str) -> Step {
    let mut s = String::new();
    if let Some(e) = event {
        s.push_str(&format!("event: {e}\r\n"));
    }
    for line in data.split('\n') {
        s.push_str(&format!("data: {line}\r\n"));
    }
    s.push_str("\r\n");
    Step::Bytes(Bytes::from(s))
}

/// A token event `data: {"content": tok}`.
pub fn tok(t: &str) -> Step {
    ev(None, &serde_json::json!({ "content": t }).to_string())
}

/// thinking, the tokens with `gap` between them, done.
pub fn answer(tokens: &[String], gap: Duration) -> Vec<Step> {
    let mut steps = vec![ev(Some("thinking"), r#"{"status": "thinking"}"#)];
    for t in tokens {
        if !gap.is_zero() {
            steps.push(Step::Sleep(gap));
        }
        steps.push(tok(t));
    }
    steps.push(ev(Some("done"), r#"{"status": "complete"}"#));
    steps
}

/// Tokens exercising escaping: spaces, newlines, quotes, backslashes, non-ASCII.
pub fn tricky_tokens(n: usize) -> Vec<String> {
    let pool = [
        "Hello",
        " world",
        ",",
        " \"quoted\"",
        " back\\slash",
        "\n",
        " café",
        " 日本語",
        " 🚀",
        " tab\there",
        "\r\n",
        " data: x",
        "",
    ];
    (0..n)
        .map(|i| {
            format!(
                "{}{}",
                pool[i % pool.len()],
                if i % 7 == 0 { i.to_string() } else { String::new() }
            )
        })
        .collect()
}

/// What the mock upstream saw.
#[derive(Default)]
pub struct Seen {
    /// Requests received.
    pub requests: AtomicUsize,
    /// Bodies dropped before their script finished (the proxy closed the connection).
    pub closed_early: AtomicUsize,
    /// Wakes on every early close.
    pub closed: Notify,
    /// Request lines and headers received.
    pub log: Mutex<Vec<http::request::Parts>>,
    /// Request bodies received.
    pub bodies: Mutex<Vec<Bytes>>,
}

/// A running mock upstream; stops accepting when dropped.
pub struct MockUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    _server: tcp::Server,
}

struct Script {
    steps: std::vec::IntoIter<Step>,
    seen: Arc<Seen>,
    finished: bool,
}

impl Script {
    fn mark_finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if !self.finished {
            self.seen.closed_early.fetch_add(1, Ordering::SeqCst);
            self.seen.closed.notify_waiters();
        }
    }
}

impl MockUpstream {
    /// Starts a mock whose answer is computed per request by `f`.
    pub async fn start<F>(f: F) -> MockUpstream
    where
        F: Fn(&http::request::Parts, &Bytes) -> Reply + Send + Sync + 'static,
    {
        let seen = Arc::new(Seen::default());
        let f = Arc::new(f);
        let seen2 = seen.clone();
        let server = tcp::Server::start(move |tcp, _| {
            let (f, seen) = (f.clone(), seen2.clone());
            let svc = service_fn(move |req: Request<Incoming>| {
                let (f, seen) = (f.clone(), seen.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    seen.requests.fetch_add(1, Ordering::SeqCst);
                    let reply = f(&parts, &body);
                    seen.log.lock().unwrap().push(parts);
                    seen.bodies.lock().unwrap().push(body);
                    Ok::<_, Infallible>(respond(reply, seen))
                }
            });
            async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            }
        })
        .await;
        MockUpstream {
            addr: server.addr,
            seen,
            _server: server,
        }
    }

    /// The last request line and headers received.
    pub fn last_request(&self) -> http::request::Parts {
        self.seen
            .log
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("a request was received")
    }

    /// The last request body received.
    pub fn last_body(&self) -> Bytes {
        self.seen
            .bodies
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("a request was received")
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    /// Bodies closed early so far.
    pub fn closed_early(&self) -> usize {
        self.seen.closed_early.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` bodies were closed early.
    pub async fn wait_closed(&self, n: usize, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.seen.closed.notified();
            if self.closed_early() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.closed_early() >= n;
            }
        }
    }
}

fn respond(reply: Reply, seen: Arc<Seen>) -> Response<TestBody> {
    let script = Script {
        steps: reply.steps.into_iter(),
        seen,
        finished: false,
    };
    let stream = futures_util::stream::unfold(script, |mut s| async move {
        loop {
            match s.steps.next() {
                None => {
                    s.mark_finished();
                    return None;
                }
                Some(Step::Bytes(b)) => return Some((Ok::<_, BoxError>(Frame::data(b)), s)),
                Some(Step::Sleep(d)) => tokio::time::sleep(d).await,
                Some(Step::Abort) => {
                    s.mark_finished();
                    return Some((Err("scripted abort".into()), s));
                }
                Some(Step::Hang) => std::future::pending::<()>().await,
                Some(Step::Wait(n)) => n.notified().await,
            }
        }
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    *resp.status_mut() = StatusCode::from_u16(reply.status).expect("status");
    for (k, v) in reply.headers {
        resp.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            http::HeaderValue::from_str(&v).expect("value"),
        );
    }
    resp
}

// ------------------------------------------------------------------------------------------
// Proxy

/// A proxy running in this process.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub app: Arc<sse_proxy::app::App>,
    pub shutdown: CancellationToken,
    pub done: tokio::task::JoinHandle<()>,
}

impl TestProxy {
    /// Starts a graceful shutdown and waits until the proxy has stopped.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, &mut self.done)
            .await
            .expect("proxy stops in time")
            .expect("proxy task");
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A test config's text: loopback listeners on free ports, `upstream` as the backend, then `routes`
/// (`[[stream]]` tables and any other config).
fn config_text(upstream: SocketAddr, routes: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "2s"

[upstream]
url = "http://{upstream}"
connect_timeout = "2s"
response_timeout = "5s"

{routes}
"#
    )
}

/// The base config used by tests: one stream route `/stream` (and `/s/*`), token at `/content`.
pub fn base_config(upstream: SocketAddr) -> Config {
    let routes = r#"
[[stream]]
path = "/stream"
token_path = "/content"
model_from = "query:model"

[[stream]]
path = "/s/*"
token_path = "/content"
"#;
    Config::from_toml_str(&config_text(upstream, routes), "<test>").expect("base config")
}

/// A proxy in front of `upstream` with these `[[stream]]` tables (and any other config) instead of
/// the base config's routes.
pub async fn proxy_routes(upstream: SocketAddr, routes: &str) -> TestProxy {
    proxy_with(Config::from_toml_str(&config_text(upstream, routes), "<test>").expect("config")).await
}

/// Starts a proxy in front of `upstream` with `edit` applied to the base config.
pub async fn proxy(upstream: SocketAddr, edit: impl FnOnce(&mut Config)) -> TestProxy {
    let mut cfg = base_config(upstream);
    edit(&mut cfg);
    proxy_with(cfg).await
}

/// Starts a proxy with exactly this config.
pub async fn proxy_with(cfg: Config) -> TestProxy {
    proxy_on_store(cfg, None).await
}

/// Starts a proxy with this config writing its streams to `store` (several proxies may share one),
/// or to a memory store of its own.
pub async fn proxy_on_store(cfg: Config, store: Option<sse_proxy::store::Handle>) -> TestProxy {
    let shutdown = CancellationToken::new();
    let settings = sse_proxy::settings::Settings::build(&cfg);
    // A registry of its own: tests running side by side in one process count apart.
    let metrics = sse_proxy::metrics::Prometheus::standalone().expect("metrics recorder");
    let bound = sse_proxy::server::bind_with_store(settings, shutdown.clone(), metrics, store)
        .await
        .expect("bind proxy");
    let (addr, admin, app) = (bound.main_addr(), bound.admin_addr(), bound.app().clone());
    let done = tokio::spawn(bound.serve());
    TestProxy {
        addr,
        admin,
        app,
        shutdown,
        done,
    }
}

// ------------------------------------------------------------------------------------------
// Reading responses (requests are sent by `client`, raw bytes by `tcp`)

/// A parsed downstream event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ev {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

impl Ev {
    /// The seq of `id: <stream>:<seq>`.
    pub fn seq(&self) -> u64 {
        let id = self.id.as_deref().expect("event has an id");
        id.rsplit_once(':').expect("id shape").1.parse().expect("seq")
    }

    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {}", self.data))
    }
}

/// Reads events from an SSE response as they arrive.
pub struct Events {
    body: Incoming,
    parser: Parser,
    pub raw: Vec<u8>,
    ended: bool,
}

impl Events {
    /// Wraps a response body.
    pub fn new(resp: Response<Incoming>) -> Self {
        Events {
            body: resp.into_body(),
            parser: Parser::new(1 << 24),
            raw: Vec::new(),
            ended: false,
        }
    }

    /// The next event, or `None` at the end of the body (or when it breaks).
    pub async fn next(&mut self) -> Option<Ev> {
        loop {
            if let Some(e) = self.parser.next_event() {
                return Some(Ev {
                    event: e.event.as_str().to_string(),
                    data: e.data.as_str().to_string(),
                    id: e.id.map(|i| i.as_str().to_string()),
                });
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("event in time")
            {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.raw.extend_from_slice(&d);
                        self.parser.feed(d).expect("parse");
                    }
                }
                _ => self.ended = true,
            }
        }
    }

    /// Every remaining event until the body ends.
    pub async fn all(&mut self) -> Vec<Ev> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

/// Concatenated `content` of the token batches among `events`.
pub fn text_of(events: &[Ev]) -> String {
    events
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| e.json()["content"].as_str().expect("content").to_string())
        .collect()
}

/// Asserts an answer starts with the reference `thinking` event and ends with its `done`.
pub fn assert_thinking_then_done(events: &[Ev]) {
    assert_eq!(events[0].event, "thinking");
    assert_eq!(events[0].data, r#"{"status": "thinking"}"#);
    assert_upstream_done(events);
}

/// Asserts the last event is the one `done`: the upstream's `{"status": "complete"}` with the
/// answer's `total_tokens` added.
pub fn assert_upstream_done(events: &[Ev]) {
    let last = events.last().expect("events");
    let total: u64 = events
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| e.json()["batch_size"].as_u64().expect("batch_size"))
        .sum();
    assert_eq!(last.event, "done", "{events:?}");
    assert_eq!(
        last.json(),
        serde_json::json!({"status": "complete", "total_tokens": total})
    );
    let dones = events.iter().filter(|e| e.event == "done").count();
    assert_eq!(dones, 1, "one done: {events:?}");
}

/// Asserts the ids are `<stream>:1..=n` in order, all of one stream.
pub fn assert_gapless(events: &[Ev], first: u64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq(), first + i as u64, "gap at event {i}: {e:?}");
    }
    let streams: std::collections::HashSet<_> = events
        .iter()
        .map(|e| {
            e.id.as_deref()
                .and_then(|i| i.rsplit_once(':'))
                .map(|p| p.0.to_string())
        })
        .collect();
    assert!(streams.len() <= 1, "events of several streams: {streams:?}");
}

/// Fetches `/metrics` from the admin listener.
pub async fn metrics_text(admin: SocketAddr) -> String {
    let b = body_bytes(get(&format!("http://{admin}/metrics"), &[]).await).await;
    String::from_utf8(b.to_vec()).expect("utf8 metrics")
}

/// The value of a sample line (`name{labels} value`) in Prometheus text, or 0.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Percent-encodes a query parameter value (`application/x-www-form-urlencoded`).
pub fn qs(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

// ------------------------------------------------------------------------------------------
// More helpers (resume, cancel, chaos)

/// The `X-Stream-Id` of a stream response.
pub fn stream_id_of(resp: &Response<Incoming>) -> String {
    resp.headers()
        .get("x-stream-id")
        .expect("x-stream-id header")
        .to_str()
        .expect("ascii stream id")
        .to_string()
}

/// The stream id parsed, for registry lookups.
pub fn parse_stream_id(sid: &str) -> sse_proxy::ids::StreamId {
    sse_proxy::ids::StreamId::parse(sid).expect("valid stream id")
}

/// A random, well-formed stream id that no proxy issued.
pub fn forged_stream_id() -> String {
    sse_proxy::ids::StreamId::random().to_string()
}

/// Parses a JSON body.
pub fn json_of(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

/// Polls `f` every 10 ms until it holds or `within` passes; returns whether it held.
pub async fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Events {
    /// The next `n` events (fewer if the body ends first).
    pub async fn take(&mut self, n: usize) -> Vec<Ev> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next().await {
                Some(e) => out.push(e),
                None => break,
            }
        }
        out
    }
}

/// The request paths and queries the mock received, in order.
pub fn seen_uris(seen: &Seen) -> Vec<String> {
    seen.log
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.uri.path_and_query().map_or("/", |pq| pq.as_str()).to_string())
        .collect()
}

/// Starts a stream on `a`, reads three events, resumes on `b` (which does not read it) and checks
/// that the client gets exactly `tokens`, gapless, from one upstream request, `b` replaying and
/// tailing the shared store. Returns the stream id and every event the client got.
pub async fn assert_resume_crosses_replicas(
    a: &TestProxy,
    b: &TestProxy,
    up: &MockUpstream,
    tokens: &[String],
) -> (String, Vec<Ev>) {
    let resp = get(&format!("http://{}/stream", a.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    let sid = stream_id_of(&resp);
    let mut all = Events::new(resp).take(3).await;
    assert_eq!(all.len(), 3);
    let key = parse_stream_id(&sid);
    assert!(b.app.registry.get(&key).is_none(), "B does not read it");

    let last = all[2].id.clone().expect("event id");
    let resp = get(&format!("http://{}/stream", b.addr), &[("last-event-id", &last)]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(stream_id_of(&resp), sid);
    all.extend(Events::new(resp).all().await);
    assert_gapless(&all, 1);
    assert_eq!(text_of(&all), tokens.concat());
    assert_eq!(all.last().map(|e| e.event.as_str()), Some("done"));
    assert_eq!(up.requests(), 1, "one upstream request");
    assert!(b.app.registry.get(&key).is_none(), "B only read the store");
    (sid, all)
}
