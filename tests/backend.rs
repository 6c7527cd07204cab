//! The proxy in front of the reference FastAPI backend (a real uvicorn process, real sockets).

mod common;

use common::*;
use sse_proxy::config::{Config, RoutePath};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Points the base config's `/stream` route at the backend's stream path.
fn backend_route(c: &mut Config) {
    c.streams[0].path = RoutePath::Exact("/api/question/stream".into());
}

/// A TCP relay in front of `target` that counts the stream requests going through it.
struct Relay {
    addr: SocketAddr,
    stream_requests: Arc<AtomicUsize>,
}

async fn relay(target: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let c2 = count.clone();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let count = c2.clone();
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(target).await else {
                    return;
                };
                let (mut ur, mut uw) = up.into_split();
                let (mut dr, mut dw) = down.split();
                let to_up = async {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match dr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        let hits = chunk
                            .windows(25)
                            .filter(|w| w == b"GET /api/question/stream?")
                            .count();
                        count.fetch_add(hits, Ordering::SeqCst);
                        if uw.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                    let _ = uw.shutdown().await;
                };
                let to_down = async {
                    let _ = tokio::io::copy(&mut ur, &mut dw).await;
                    let _ = dw.shutdown().await;
                };
                tokio::join!(to_up, to_down);
            });
        }
    });
    Relay {
        addr,
        stream_requests: count,
    }
}

async fn answer_text(addr: SocketAddr, question: &str, tokens: usize) -> String {
    let url = format!(
        "http://{addr}/api/question/text?question={}&tokens={tokens}",
        qs(question)
    );
    let resp = get(&url, &[]).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).expect("json");
    assert_eq!(v["tokens"], tokens);
    v["answer"].as_str().expect("answer").to_string()
}

#[tokio::test]
async fn stream_content_matches_the_backend_answer_exactly() {
    let Some(be) = backend::start() else { return };
    let r = relay(be.addr).await;
    let p = proxy(r.addr, backend_route).await;
    let questions = [
        "why is the sky blue?",
        "naïve café ☕ \"quotes\" back\\slash",
        "line\nbreak & 100% + more",
        "",
    ];
    for (i, q) in questions.iter().enumerate() {
        let tokens = 60 + 37 * i;
        let expected = answer_text(p.addr, q, tokens).await;
        // The special tokens are always there for >= 8 tokens.
        for special in [
            "\"quoted\"",
            "back\\slash",
            "café",
            "日本語",
            "🚀",
            "\n",
            "data: {not-a-field}",
        ] {
            assert!(expected.contains(special), "{special:?} missing in {expected:?}");
        }
        let before = r.stream_requests.load(Ordering::SeqCst);
        let url = format!(
            "http://{}/api/question/stream?question={}&tokens={tokens}&rate=0",
            p.addr,
            qs(q)
        );
        let resp = get(&url, &[]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let events = Events::new(resp).all().await;
        assert_gapless(&events, 1);
        assert_eq!(text_of(&events), expected, "question {q:?}");
        assert_thinking_then_done(&events);
        let total: u64 = events
            .iter()
            .filter(|e| e.event == "message")
            .map(|e| e.json()["batch_size"].as_u64().expect("batch_size"))
            .sum();
        assert_eq!(total, tokens as u64);
        assert_eq!(
            r.stream_requests.load(Ordering::SeqCst) - before,
            1,
            "upstream requested once"
        );
    }
}

#[tokio::test]
async fn backend_abort_mid_stream_gives_upstream_reset() {
    let Some(be) = backend::start() else { return };
    let p = proxy(be.addr, backend_route).await;
    let expected = answer_text(p.addr, "abort me", 50).await;
    let url = format!(
        "http://{}/api/question/stream?question=abort+me&tokens=50&rate=200&fail_after=10",
        p.addr
    );
    let events = Events::new(get(&url, &[]).await).all().await;
    assert_gapless(&events, 1);
    let last = events.last().expect("events");
    assert_eq!(last.event, "error", "{events:?}");
    assert_eq!(last.json()["code"], "upstream_reset");
    assert_eq!(last.json()["recoverable"], true);
    assert!(!events.iter().any(|e| e.event == "done"));
    let text = text_of(&events);
    assert!(
        !text.is_empty() && expected.starts_with(&text),
        "{text:?} is not a prefix of {expected:?}"
    );
    let tokens: u64 = events
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| e.json()["batch_size"].as_u64().expect("batch_size"))
        .sum();
    assert_eq!(tokens, 10);
}

#[tokio::test]
async fn passthrough_echo_and_private() {
    let Some(be) = backend::start() else { return };
    let p = proxy(be.addr, backend_route).await;
    let body = r#"{"question": "naïve \"café\" \\ 日本語 🚀", "n": [1, 2.5, null], "nested": {"k": "v\n"}}"#;
    let via_proxy = send(
        "POST",
        &format!("http://{}/api/echo?x=1&y=%20z", p.addr),
        &[
            ("content-type", "application/json"),
            ("x-forwarded-for", "10.1.2.3"),
        ],
        body,
    )
    .await;
    assert_eq!(via_proxy.status(), 200);
    let proxied = body_bytes(via_proxy).await;
    let v: serde_json::Value = serde_json::from_slice(&proxied).expect("json");
    let sent: serde_json::Value = serde_json::from_str(body).expect("json");
    assert_eq!(v["body"], sent);
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/api/echo");
    assert_eq!(v["query"], "x=1&y=%20z");
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], p.addr.to_string());
    assert_eq!(h["host"], be.addr.to_string());
    assert_eq!(h["content-length"], body.len().to_string());
    // Byte-exact both ways: the same request sent straight to the backend gives the same bytes.
    let direct = send(
        "POST",
        &format!("http://{}/api/echo?x=1&y=%20z", be.addr),
        &[
            ("content-type", "application/json"),
            ("x-forwarded-for", "10.1.2.3, 127.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", &p.addr.to_string()),
        ],
        body,
    )
    .await;
    assert_eq!(body_bytes(direct).await, proxied);

    let resp = get(&format!("http://{}/api/private", p.addr), &[]).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(body_bytes(resp).await, r#"{"detail":"not authenticated"}"#);
    let resp = get(
        &format!("http://{}/api/private", p.addr),
        &[("authorization", "Bearer secret")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_bytes(resp).await, r#"{"ok":true,"user":"test"}"#);
}

#[tokio::test]
async fn backend_pings_are_dropped_and_proxy_heartbeats_sent() {
    let Some(be) = backend::start_with_env(&[("PING_SECONDS", "1")]) else {
        return;
    };
    let p = proxy(be.addr, |c| {
        backend_route(c);
        c.heartbeat.interval.0 = Duration::from_millis(300);
    })
    .await;
    let expected = answer_text(p.addr, "ping", 20).await;
    let url = format!(
        "http://{}/api/question/stream?question=ping&tokens=20&rate=0&delay_first_ms=3500",
        p.addr
    );
    let mut evs = Events::new(get(&url, &[]).await);
    let events = evs.all().await;
    assert_eq!(text_of(&events), expected);
    assert_eq!(events.last().expect("events").event, "done");
    assert_gapless(&events, 1);
    let raw = String::from_utf8_lossy(&evs.raw);
    assert!(!raw.contains(": ping"), "backend ping comments leaked: {raw}");
    let beats = raw.matches(": heartbeat\n").count();
    assert!(
        beats >= 3,
        "expected proxy heartbeats during the 3.5 s wait, got {beats}: {raw}"
    );
}

/// Under scripts/test.sh or CI a missing venv fails; only a person running by hand may skip.
#[test]
fn a_missing_venv_fails_unless_run_by_hand() {
    use backend::locate_python;
    use std::path::{Path, PathBuf};
    let venv = PathBuf::from("/repo/examples/fastapi-backend/.venv/bin/python");
    let named = PathBuf::from("/elsewhere/bin/python");
    let none = |_: &Path| false;
    let only = |want: &'static str| move |p: &Path| p == Path::new(want);

    let err = locate_python(None, venv.clone(), true, none).expect_err("required");
    assert!(err.contains("venv is missing"), "{err}");
    assert_eq!(locate_python(None, venv.clone(), false, none), Ok(None));
    for required in [true, false] {
        let err = locate_python(Some(named.clone()), venv.clone(), required, none).expect_err("named");
        assert!(
            err.contains("SSE_PROXY_PYTHON=/elsewhere/bin/python does not exist"),
            "{err}"
        );
        assert_eq!(
            locate_python(
                Some(named.clone()),
                venv.clone(),
                required,
                only("/elsewhere/bin/python")
            ),
            Ok(Some(named.clone()))
        );
        assert_eq!(
            locate_python(
                None,
                venv.clone(),
                required,
                only("/repo/examples/fastapi-backend/.venv/bin/python")
            ),
            Ok(Some(venv.clone()))
        );
    }
}

/// A proxy in front of the backend with its OpenAI and Ollama endpoints as stream routes.
async fn dialect_proxy(backend: SocketAddr) -> TestProxy {
    let routes = r#"
[[stream]]
path = "/v1/chat/completions"
format = "openai"

[[stream]]
path = "/api/chat"
format = "ollama"

[[stream]]
path = "/api/generate"
format = "ollama"
"#;
    proxy_routes(backend, routes).await
}

/// Posts `body` to `path`, reads `first` events, drops the connection and resumes after them;
/// returns every event (gapless across the cut).
async fn post_cut_and_resume(p: &TestProxy, path: &str, body: &str, first: usize) -> Vec<Ev> {
    let url = format!("http://{}{path}", p.addr);
    let json = [("content-type", "application/json")];
    let resp = send("POST", &url, &json, body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut evs = Events::new(resp);
    let mut events = evs.take(first).await;
    drop(evs);
    let last = events.last().and_then(|e| e.id.clone()).expect("an id");
    let resumed = send("POST", &url, &[json[0], ("last-event-id", &last)], body).await;
    assert_eq!(resumed.status(), 200);
    events.extend(Events::new(resumed).all().await);
    assert_gapless(&events, 1);
    events
}

#[tokio::test]
async fn openai_and_ollama_endpoints_are_reframed_exactly_with_resume() {
    let Some(be) = backend::start() else { return };
    let p = dialect_proxy(be.addr).await;
    let q = "naïve café ☕ \"quotes\" back\\slash";
    let expected = answer_text(be.addr, q, 80).await;
    let messages = serde_json::json!([{"role": "user", "content": q}]);

    let body = serde_json::json!({"model": "fake", "messages": messages, "max_tokens": 80,
        "stream": true, "stream_options": {"include_usage": true}});
    let events = post_cut_and_resume(&p, "/v1/chat/completions?rate=400", &body.to_string(), 4).await;
    assert_eq!(text_of(&events), expected, "openai");
    let done = events.last().expect("events");
    assert_eq!(done.event, "done");
    assert_eq!(done.json()["total_tokens"], 80);
    assert_eq!(done.json()["finish_reason"], "length");
    assert_eq!(done.json()["usage"]["completion_tokens"], 80);

    for (path, body) in [
        (
            "/api/chat?rate=400",
            serde_json::json!({"model": "fake", "messages": messages, "options": {"num_predict": 80}}),
        ),
        (
            "/api/generate?rate=400",
            serde_json::json!({"model": "fake", "prompt": q, "options": {"num_predict": 80}}),
        ),
    ] {
        let events = post_cut_and_resume(&p, path, &body.to_string(), 4).await;
        assert_eq!(text_of(&events), expected, "{path}");
        let done = events.last().expect("events").json();
        assert_eq!(
            (&done["total_tokens"], &done["eval_count"], &done["done_reason"]),
            (
                &serde_json::json!(80),
                &serde_json::json!(80),
                &serde_json::json!("stop")
            ),
            "{path}"
        );
    }

    // The non-stream answer passes through unchanged.
    let body = serde_json::json!({"model": "fake", "messages": messages, "max_tokens": 80});
    let url = format!("http://{}/v1/chat/completions", p.addr);
    let resp = send(
        "POST",
        &url,
        &[("content-type", "application/json")],
        &body.to_string(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let whole = json_of(&body_bytes(resp).await);
    assert_eq!(whole["choices"][0]["message"]["content"], expected.as_str());
}
