//! Passthrough end to end against the mock upstream: bytes, queries, headers, big bodies, h2c,
//! malformed requests, and the stream route's request-body handling.

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioIo;
use sse_proxy::config::ModelSource;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn all_bytes(repeat: usize) -> Bytes {
    let one: Vec<u8> = (0..=255u8).collect();
    Bytes::from(one.repeat(repeat))
}

/// A mock that answers with the request body it received.
async fn echo_mock() -> MockUpstream {
    MockUpstream::start(|parts, body| Reply {
        status: 201,
        headers: vec![
            ("content-type".into(), "application/octet-stream".into()),
            ("x-method".into(), parts.method.to_string()),
        ],
        steps: vec![Step::Bytes(body.clone())],
    })
    .await
}

#[tokio::test]
async fn binary_bodies_are_byte_exact_both_ways() {
    let up = echo_mock().await;
    let p = proxy(up.addr, |_| {}).await;
    for (i, method) in ["GET", "POST", "PUT"].into_iter().enumerate() {
        let body = all_bytes(1 + 40 * i);
        let resp = send_bytes(
            method,
            &format!("http://{}/bin/{method}", p.addr),
            &[],
            body.clone(),
        )
        .await;
        assert_eq!(resp.status(), 201, "{method}");
        assert_eq!(resp.headers()["x-method"], method);
        assert_eq!(resp.headers()["content-type"], "application/octet-stream");
        assert_eq!(body_bytes(resp).await, body, "{method}: response body");
        let seen = up.last_body();
        assert_eq!(seen, body, "{method}: request body");
        let parts = Some(up.last_request()).map(|p| (p.method.clone(), p.uri.path().to_string()));
        assert_eq!(
            parts,
            Some((method.parse().expect("method"), format!("/bin/{method}")))
        );
    }
}

#[tokio::test]
async fn query_strings_are_preserved_exactly() {
    let up = MockUpstream::start(|parts, _| match parts.uri.path() {
        "/stream" => Reply::sse(vec![tok("x")]),
        _ => Reply::plain(200, "text/plain", "ok"),
    })
    .await;
    let p = proxy(up.addr, |_| {}).await;
    let queries = [
        "a=1&b=%20two%20&c=x+y&a=2&a=3",
        "empty=&flag&&k=%2B%26%3D&utf=%E6%97%A5%E6%9C%AC&pct=%zz",
        "q=hello%20world+again&sort=-date&tags[]=a&tags[]=b",
    ];
    for q in queries {
        for path in ["/pt/q", "/stream"] {
            let resp = get(&format!("http://{}{path}?{q}", p.addr), &[]).await;
            assert_eq!(resp.status(), 200, "{path}?{q}");
            let _ = body_bytes(resp).await;
            let seen = Some(up.last_request()).map(|p| p.uri.to_string());
            assert_eq!(seen.as_deref(), Some(format!("{path}?{q}").as_str()));
        }
    }
}

#[tokio::test]
async fn headers_pass_and_hop_by_hop_are_removed_both_ways() {
    let up = MockUpstream::start(|_, _| Reply {
        status: 418,
        headers: vec![
            ("content-type".into(), "text/plain".into()),
            ("x-custom-resp".into(), "resp-value".into()),
            ("set-cookie".into(), "a=1".into()),
            ("set-cookie".into(), "b=2".into()),
            ("connection".into(), "x-resp-hop".into()),
            ("x-resp-hop".into(), "secret".into()),
            ("keep-alive".into(), "timeout=5".into()),
            ("proxy-authenticate".into(), "Basic".into()),
            ("upgrade".into(), "websocket".into()),
        ],
        steps: vec![Step::Bytes(Bytes::from_static(b"teapot"))],
    })
    .await;
    let p = proxy(up.addr, |_| {}).await;
    // Raw HTTP/1.1 so every header goes on the wire exactly as written.
    let req = "GET /h?x=1 HTTP/1.1\r\n\
               Host: app.example\r\n\
               X-Custom: one\r\n\
               X-Custom: two\r\n\
               Authorization: Bearer t\r\n\
               Connection: keep-alive, X-Hop\r\n\
               X-Hop: must-go\r\n\
               Keep-Alive: timeout=5\r\n\
               TE: trailers\r\n\
               Upgrade: websocket\r\n\
               Proxy-Authorization: Basic eDp5\r\n\
               X-Forwarded-For: 10.0.0.1\r\n\
               \r\n";
    let (head, body) = tcp::exchange(p.addr, req.as_bytes()).await;
    let head_l = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 418"), "{head}");
    assert!(head_l.contains("\r\nx-custom-resp: resp-value\r\n"), "{head}");
    assert!(
        head_l.contains("\r\nset-cookie: a=1\r\n") && head_l.contains("\r\nset-cookie: b=2\r\n"),
        "{head}"
    );
    for gone in ["x-resp-hop", "keep-alive", "proxy-authenticate", "upgrade"] {
        assert!(
            !head_l.contains(&format!("\r\n{gone}:")),
            "{gone} leaked downstream: {head}"
        );
    }
    assert!(!head_l.contains("x-resp-hop"), "{head}");
    assert_eq!(body, b"teapot");

    let parts = up.last_request();
    let h = &parts.headers;
    let custom: Vec<_> = h
        .get_all("x-custom")
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect();
    assert_eq!(custom, ["one", "two"]);
    assert_eq!(h["authorization"], "Bearer t");
    for gone in ["x-hop", "keep-alive", "te", "upgrade", "proxy-authorization"] {
        assert!(h.get(gone).is_none(), "{gone} forwarded upstream: {h:?}");
    }
    // The proxy's own connection to the backend may say keep-alive, never the client's list.
    if let Some(c) = h.get("connection") {
        assert!(
            !c.to_str().expect("ascii").to_ascii_lowercase().contains("x-hop"),
            "{c:?}"
        );
    }
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "app.example");
    assert_eq!(h["host"], up.addr.to_string());
}

type ChanBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body fed by a channel; it ends when the sender is dropped.
fn rx_body(rx: mpsc::Receiver<Bytes>) -> ChanBody {
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        let b = rx.recv().await?;
        Some((Ok::<_, BoxError>(Frame::data(b)), rx))
    });
    StreamBody::new(s).boxed_unsync()
}

/// An upstream that streams its answer from a channel the test drives, and reports the request
/// body's chunks as they arrive.
async fn channel_upstream(
    answer: mpsc::Receiver<Bytes>,
    request_chunks: mpsc::UnboundedSender<usize>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let answer = std::sync::Mutex::new(Some(answer));
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (answer, chunks) = (answer.clone(), request_chunks.clone());
            let svc = service_fn(move |req: Request<Incoming>| {
                let (answer, chunks) = (answer.clone(), chunks.clone());
                async move {
                    let mut body = req.into_body();
                    // Read the request body as it streams (it must not be buffered whole by the proxy).
                    while let Some(Ok(f)) = body.frame().await {
                        if let Ok(d) = f.into_data() {
                            let _ = chunks.send(d.len());
                        }
                    }
                    let _ = chunks.send(0);
                    let rx = answer.lock().expect("lock").take().expect("one request");
                    Ok::<_, Infallible>(Response::new(rx_body(rx)))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn large_bodies_stream_without_being_buffered() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 20;
    let (answer_tx, answer_rx) = mpsc::channel::<Bytes>(1);
    let (req_tx, mut req_rx) = mpsc::unbounded_channel::<usize>();
    let up = channel_upstream(answer_rx, req_tx).await;
    let p = proxy(up, |_| {}).await;

    // Upload 20 MiB: the upstream sees the first MiB before the client has sent the second.
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(1);
    let req_body = rx_body(body_rx);
    let req = Request::post(format!("http://{}/big", p.addr))
        .body(req_body)
        .expect("request");
    let resp = tokio::spawn(send_request(req));
    let pattern = |i: usize| Bytes::from(vec![(i % 251) as u8; CHUNK]);
    body_tx.send(pattern(0)).await.expect("send first chunk");
    let mut got = 0usize;
    while got < CHUNK {
        let n = tokio::time::timeout(WAIT, req_rx.recv())
            .await
            .expect("upstream saw the first MiB in time");
        got += n.expect("chunk");
    }
    for i in 1..CHUNKS {
        body_tx.send(pattern(i)).await.expect("send chunk");
    }
    drop(body_tx);
    loop {
        match tokio::time::timeout(WAIT, req_rx.recv())
            .await
            .expect("upload in time")
        {
            Some(0) | None => break,
            Some(n) => got += n,
        }
    }
    assert_eq!(got, CHUNK * CHUNKS);

    // Download 20 MiB: the client sees the first chunk before the upstream has produced the last.
    answer_tx.send(pattern(0)).await.expect("first answer chunk");
    let resp = tokio::time::timeout(WAIT, resp)
        .await
        .expect("response in time")
        .expect("join");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = Vec::with_capacity(CHUNK * CHUNKS);
    while received.len() < CHUNK {
        let f = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("first chunk in time");
        let d = f.expect("frame").expect("data").into_data().expect("data frame");
        received.extend_from_slice(&d);
    }
    let sender = tokio::spawn(async move {
        for i in 1..CHUNKS {
            answer_tx.send(pattern(i)).await.expect("answer chunk");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    received.extend_from_slice(&rest);
    sender.await.expect("sender");
    assert_eq!(received.len(), CHUNK * CHUNKS);
    for (i, c) in received.chunks(CHUNK).enumerate() {
        assert!(c.iter().all(|&b| b == (i % 251) as u8), "chunk {i} corrupted");
    }
}

/// Sends over h2c and checks the answer came back as HTTP/2 with status 200.
async fn h2_ok(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> http::Response<hyper::body::Incoming> {
    let resp = send_on(client, req).await;
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    resp
}

#[tokio::test]
async fn h2c_prior_knowledge_passthrough_and_stream() {
    let tokens = tricky_tokens(40);
    let t2 = tokens.clone();
    let up = MockUpstream::start(move |parts, body| match parts.uri.path() {
        "/stream" => Reply::sse(answer(&t2, Duration::from_millis(1))),
        _ => Reply {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/octet-stream".into()),
                ("connection".into(), "keep-alive".into()),
                ("keep-alive".into(), "timeout=5".into()),
                ("x-up".into(), "1".into()),
            ],
            steps: vec![Step::Bytes(body.clone())],
        },
    })
    .await;
    let p = proxy(up.addr, |_| {}).await;
    let client = h2c_client();
    let body = all_bytes(8);
    let req = Request::post(format!("http://{}/h2/echo?a=%20b", p.addr))
        .header("x-custom", "h2")
        .body(Full::new(body.clone()))
        .expect("request");
    let resp = h2_ok(&client, req).await;
    assert_eq!(resp.headers()["x-up"], "1");
    assert_eq!(body_bytes(resp).await, body);
    let parts = up.last_request();
    assert_eq!(parts.uri.to_string(), "/h2/echo?a=%20b");
    assert_eq!(parts.headers["x-custom"], "h2");
    assert_eq!(parts.headers["x-forwarded-host"], p.addr.to_string());
    assert_eq!(up.seen.bodies.lock().expect("lock").last(), Some(&body));

    let req = Request::get(format!("http://{}/stream?q=h2", p.addr))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = h2_ok(&client, req).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = Events::new(resp).all().await;
    assert_gapless(&events, 1);
    assert_eq!(text_of(&events), tokens.concat());
    assert_eq!(events.last().expect("events").event, "done");
}

#[tokio::test]
async fn malformed_requests_get_errors_and_the_proxy_survives() {
    let up = MockUpstream::start(|_, _| Reply::plain(200, "text/plain", "fine")).await;
    let p = proxy(up.addr, |_| {}).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad version", b"GET / HTTP/9\r\n\r\n".to_vec()),
        ("bad version, no end", b"GET / HTTP/9\r\n".to_vec()),
        (
            "header without colon",
            b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n".to_vec(),
        ),
        ("100 KB header", big.into_bytes()),
        ("binary garbage", (0..=255u8).cycle().take(2000).collect()),
        ("bad method", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
    ];
    for (name, bytes) in cases {
        let before = up.requests();
        let out = tcp::send_raw(p.addr, &bytes).await;
        let text = String::from_utf8_lossy(&out);
        if !out.is_empty() {
            let status: u16 = text
                .strip_prefix("HTTP/1.1 ")
                .and_then(|r| r.get(..3))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{name}: not an HTTP response: {text:?}"));
            assert!((400..500).contains(&status), "{name}: status {status}");
            if name == "100 KB header" {
                assert_eq!(status, 431, "{name}");
            }
        }
        assert_eq!(
            up.requests(),
            before,
            "{name}: a malformed request reached the upstream"
        );
        // The proxy still serves.
        let resp = get(&format!("http://{}/after", p.addr), &[]).await;
        assert_eq!(resp.status(), 200, "after {name}");
        assert_eq!(body_bytes(resp).await, "fine");
    }
}

/// A response body as sent, without its chunked framing.
fn unframed(head: &str, body: &[u8]) -> String {
    let body = match tcp::content_length(head.as_bytes()) {
        Some(_) => body.to_vec(),
        None => tcp::dechunk(body),
    };
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn request_heads_in_pieces_or_large_within_the_limit_reach_the_backend() {
    let up = MockUpstream::start(|parts, _| {
        let big = parts.headers.get("x-big").map_or(0, |v| v.len());
        Reply::plain(200, "text/plain", &format!("{} {big}", parts.method))
    })
    .await;
    let p = proxy(up.addr, |_| {}).await;
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(60 * 1024)
    );
    let post = "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    let get = "GET /g HTTP/1.1\r\nHost: x\r\n\r\n";
    // Split after the bytes that tell HTTP/1.1 from an h2 preface ("P" is both POST and PRI).
    let cases = [
        ("POST, P alone first", post, 1, "POST 0"),
        ("POST, PO first", post, 2, "POST 0"),
        ("GET, G alone first", get, 1, "GET 0"),
        ("60 KB head whole", big.as_str(), big.len(), "GET 61440"),
        ("60 KB head in two writes", big.as_str(), 9000, "GET 61440"),
    ];
    for (name, head, split, want) in cases {
        let mut s = tcp::connect(p.addr).await;
        s.write_all(&head.as_bytes()[..split]).await.expect("write");
        s.flush().await.expect("flush");
        s.write_all(&head.as_bytes()[split..]).await.expect("write");
        let (resp_head, body) = tcp::read_response(&mut s).await;
        assert!(resp_head.starts_with("HTTP/1.1 200"), "{name}: {resp_head}");
        assert_eq!(unframed(&resp_head, &body), want, "{name}");
        // The connection serves a second request, whole in one write.
        s.write_all(get.as_bytes()).await.expect("write");
        let (resp_head, body) = tcp::read_response(&mut s).await;
        assert!(
            resp_head.starts_with("HTTP/1.1 200"),
            "{name}, second request: {resp_head}"
        );
        assert_eq!(unframed(&resp_head, &body), "GET 0", "{name}, second request");
    }
}

#[tokio::test]
async fn stream_route_body_over_the_limit_is_413_json() {
    let up = MockUpstream::start(|_, _| Reply::sse(vec![tok("a")])).await;
    let p = proxy(up.addr, |c| c.upstream.max_request_body.0 = 1024).await;
    let body = "x".repeat(64 * 1024);
    let resp = send(
        "POST",
        &format!("http://{}/stream", p.addr),
        &[("content-type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).expect("json");
    assert_eq!(v["error"], "body_too_large");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(up.requests(), 0);
    // Under the limit is fine, and the slot of the refused stream was released.
    let resp = send(
        "POST",
        &format!("http://{}/stream", p.addr),
        &[],
        &"y".repeat(1000),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let events = Events::new(resp).all().await;
    assert_eq!(text_of(&events), "a");
    assert_eq!(
        up.seen.bodies.lock().expect("lock").last().map(|b| b.len()),
        Some(1000)
    );
}

#[tokio::test]
async fn model_from_body_pointer_picks_the_model() {
    let steps = vec![tok("a"), Step::Sleep(Duration::from_secs(30)), tok("b")];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy(up.addr, |c| {
        c.streams[0].model_from = Some(ModelSource::Body("/model".into()))
    })
    .await;
    let body = r#"{"model": "llama3-8b", "question": "hi"}"#;
    let resp = send(
        "POST",
        &format!("http://{}/stream?model=from-query", p.addr),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-stream-id"].to_str().expect("ascii").to_string();
    let mut evs = Events::new(resp);
    assert_eq!(evs.next().await.expect("first").json()["content"], "a");
    let v: serde_json::Value =
        serde_json::from_slice(&body_bytes(get(&format!("http://{}/streams", p.admin), &[]).await).await)
            .expect("json");
    let s = v["streams"]
        .as_array()
        .expect("list")
        .iter()
        .find(|s| s["id"] == id.as_str())
        .cloned()
        .expect("stream listed");
    assert_eq!(s["model"], "llama3-8b");
    assert_eq!(
        up.seen.bodies.lock().expect("lock").last().map(|b| b.to_vec()),
        Some(body.as_bytes().to_vec())
    );
}

/// A backend that accepts any upgrade and then echoes bytes back in upper case.
async fn upgrading_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                if tcp::read_past(&mut s, &mut head, 0, b"\r\n\r\n", usize::MAX)
                    .await
                    .is_none()
                {
                    return;
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                assert!(head.contains("upgrade: shout"), "backend got the upgrade: {head}");
                let _ = s
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: shout\r\n\r\n",
                    )
                    .await;
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n].to_ascii_uppercase()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn upgrades_are_tunnelled_both_ways() {
    let backend = upgrading_backend().await;
    let p = proxy(backend, |_| {}).await;
    let mut s = tcp::open(
        p.addr,
        b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: shout\r\n\r\n",
    )
    .await;
    let head = tcp::read_head(&mut s).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: shout"), "{head}");
    for msg in [&b"hello"[..], b"second message"] {
        s.write_all(msg).await.expect("write");
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(got, msg.to_ascii_uppercase());
    }
}

/// The value of a response header in a raw HTTP/1.1 head, lower-cased name.
fn head_value(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

#[tokio::test]
async fn options_asterisk_is_answered_by_the_proxy() {
    let up = MockUpstream::start(|_, _| Reply::plain(200, "text/plain", "from the backend")).await;
    let p = proxy(up.addr, |_| {}).await;
    let (head, body) = tcp::exchange(p.addr, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let allow = head_value(&head, "allow").unwrap_or_else(|| panic!("no Allow: {head}"));
    for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        assert!(allow.split(", ").any(|a| a == m), "{m} missing from {allow:?}");
    }
    assert!(!allow.contains("CONNECT"), "{allow}");
    assert!(body.is_empty(), "{:?}", String::from_utf8_lossy(&body));
    // `*` with any other method is a bad request, not a request to the backend.
    let (head, body) = tcp::exchange(p.addr, b"GET * HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(json_of(&body)["error"], "bad_request");
    assert_eq!(up.requests(), 0, "forwarded to the backend");
    // An OPTIONS for a path still goes to the backend.
    let resp = send("OPTIONS", &format!("http://{}/api", p.addr), &[], "").await;
    assert_eq!(body_bytes(resp).await, "from the backend");
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn connect_is_refused_with_405() {
    let up = MockUpstream::start(|_, _| Reply::plain(200, "text/plain", "from the backend")).await;
    let p = proxy(up.addr, |_| {}).await;
    let target = up.addr.to_string();
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    let (head, body) = tcp::exchange(p.addr, req.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    let allow = head_value(&head, "allow").unwrap_or_else(|| panic!("no Allow: {head}"));
    assert!(allow.contains("GET") && !allow.contains("CONNECT"), "{allow}");
    assert_eq!(
        head_value(&head, "content-type").as_deref(),
        Some("application/json")
    );
    let v = json_of(&body);
    assert_eq!(v["error"], "method_not_allowed");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("CONNECT")),
        "{v}"
    );
    assert_eq!(up.requests(), 0, "forwarded to the backend");
    // Other methods are unaffected.
    for m in ["GET", "POST", "PUT", "DELETE", "PATCH", "TRACE"] {
        let resp = send(m, &format!("http://{}/x", p.addr), &[], "").await;
        assert_eq!(resp.status(), 200, "{m}");
    }
    assert_eq!(up.requests(), 6);
}

#[tokio::test]
async fn a_broken_chunked_body_is_the_clients_error() {
    // Compares the proxy's upstream_unreachable count before and after.
    let up = echo_mock().await;
    let p = proxy(up.addr, |_| {}).await;
    let before = metrics_text(p.admin).await;
    let unreachable = "sse_proxy_errors_total{code=\"upstream_unreachable\"}";
    let client_errors = "sse_proxy_client_errors_total{reason=\"bad_body\"}";
    let req = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nmore\r\n0\r\n\r\n";
    let (head, body) = tcp::exchange(p.addr, req).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let v = json_of(&body);
    assert_eq!(v["error"], "bad_body", "{v}");
    let msg = v["message"].as_str().expect("message");
    for internal in ["hyper", "chunk", "error:", "unreachable", "backend"] {
        assert!(
            !msg.to_ascii_lowercase().contains(internal),
            "internal detail in {msg:?}"
        );
    }
    let after = metrics_text(p.admin).await;
    assert_eq!(
        metric(&after, unreachable),
        metric(&before, unreachable),
        "{after}"
    );
    assert!(
        metric(&after, client_errors) > metric(&before, client_errors),
        "{after}"
    );
    // A stream route reads the body itself: same answer, no detail.
    let seen = up.requests();
    let req = b"POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n";
    let (head, body) = tcp::exchange(p.addr, req).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let v = json_of(&body);
    assert_eq!(v["error"], "bad_body", "{v}");
    assert!(!v["message"].as_str().expect("message").contains("chunk"), "{v}");
    assert_eq!(up.requests(), seen, "the broken body reached the backend");
    // The proxy still serves.
    let resp = send("POST", &format!("http://{}/echo", p.addr), &[], "fine").await;
    assert_eq!(body_bytes(resp).await, "fine");
}

#[tokio::test]
async fn an_unreachable_backend_is_502_without_internal_detail() {
    let unused = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = unused.local_addr().expect("addr");
    drop(unused);
    let p = proxy(addr, |_| {}).await;
    let resp = get(&format!("http://{}/x", p.addr), &[]).await;
    assert_eq!(resp.status(), 502);
    let v = json_of(&body_bytes(resp).await);
    assert_eq!(v["error"], "upstream_unreachable");
    let msg = v["message"].as_str().expect("message");
    for internal in ["refused", "tcp", "client error", "os error", "127.0.0.1"] {
        assert!(
            !msg.to_ascii_lowercase().contains(internal),
            "internal detail in {msg:?}"
        );
    }
}
