//! Re-framing end to end: content, ids, batching, heartbeats, ends, upstream failures.

mod common;

use bytes::Bytes;
use common::*;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test]
async fn content_arrives_exactly_with_gapless_ids_and_headers() {
    let tokens = tricky_tokens(120);
    let t2 = tokens.clone();
    let up = MockUpstream::start(move |_, _| Reply::sse(answer(&t2, ms(2)))).await;
    let p = proxy(up.addr, |_| {}).await;
    let resp = get(&format!("http://{}/stream?q=1", p.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    let sid = h["x-stream-id"].to_str().expect("ascii").to_string();
    assert_eq!(sid.len(), 22);
    let mut evs = Events::new(resp);
    let events = evs.all().await;
    assert!(
        evs.raw.starts_with(b"retry: 1000\n"),
        "{:?}",
        String::from_utf8_lossy(&evs.raw[..40])
    );
    assert_gapless(&events, 1);
    assert!(events
        .iter()
        .all(|e| e.id.as_deref().is_some_and(|i| i.starts_with(&sid))));
    assert_eq!(text_of(&events), tokens.concat());
    assert_thinking_then_done(&events);
    wire::assert_every_client_reads(&evs.raw, Some(1000));
    let batches: Vec<u64> = events
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| e.json()["batch_size"].as_u64().expect("batch_size"))
        .collect();
    assert_eq!(batches.iter().sum::<u64>(), 120);
    assert!(
        batches.len() < 120,
        "tokens were batched: {} batches",
        batches.len()
    );
    assert_eq!(up.requests(), 1);
    assert_eq!(
        up.last_request().headers["accept-encoding"],
        "identity",
        "stream answers must not be compressed"
    );
}

/// `retry:` rides in the first event, heartbeats are single comment lines and `id:` ends every
/// event, so clients that dispatch at any blank line (`httpx-sse`, the `openai` SDKs) see no empty
/// event and clients that take the id on reading its line (`fetch-event-source`) skip none when cut.
#[tokio::test]
async fn every_client_reads_the_wire_format_even_when_a_heartbeat_comes_first() {
    let steps = vec![
        Step::Sleep(ms(500)),
        ev(Some("thinking"), r#"{"status":"on it"}"#),
        tok("a"),
        Step::Sleep(ms(500)),
        tok("b"),
        ev(Some("done"), "{}"),
    ];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy(up.addr, |c| c.heartbeat.interval.0 = ms(150)).await;
    let mut evs = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await);
    let events = evs.all().await;
    assert_eq!(text_of(&events), "ab");
    let raw = String::from_utf8_lossy(&evs.raw).into_owned();
    assert!(raw.starts_with("retry: 1000\n: heartbeat\n"), "{raw:?}");
    assert!(raw.contains("\n\n: heartbeat\n"), "{raw:?}");
    wire::assert_every_client_reads(&evs.raw, Some(1000));
}

#[tokio::test]
async fn first_token_is_not_delayed() {
    // Nothing follows token 1, and no timer (batch delay, heartbeat, idle timeout) fires within the
    // wait of `Events::next`: token 1 must still arrive, on its own.
    let steps = vec![tok("first"), Step::Hang];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy(up.addr, |c| {
        c.batching.max_delay.0 = HOUR;
        c.heartbeat.interval.0 = HOUR;
        c.upstream.idle_timeout.0 = HOUR;
    })
    .await;
    let mut evs = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await);
    let first = evs.next().await.expect("first event");
    assert_eq!(first.json()["content"], "first");
    assert_eq!(first.json()["batch_size"], 1);
}

#[tokio::test]
async fn non_token_events_flush_the_batch_and_keep_order() {
    let steps = vec![
        tok("a"),
        tok("b"),
        tok("c"),
        ev(Some("sources"), r#"{"urls": ["x"]}"#),
        tok("d"),
        ev(Some("done"), "bye"),
    ];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy(up.addr, |c| {
        c.batching.max_delay.0 = Duration::from_secs(5);
        c.batching.adaptive = false;
        c.progress.enabled = false;
    })
    .await;
    let events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await)
        .all()
        .await;
    let shape: Vec<(String, String)> = events.iter().map(|e| (e.event.clone(), e.data.clone())).collect();
    assert_eq!(
        shape,
        vec![
            ("message".into(), r#"{"content":"a","batch_size":1}"#.into()),
            ("message".into(), r#"{"content":"bc","batch_size":2}"#.into()),
            ("sources".into(), r#"{"urls": ["x"]}"#.into()),
            ("message".into(), r#"{"content":"d","batch_size":1}"#.into()),
            // The upstream's done is the one done: its data kept, total_tokens added.
            ("done".into(), r#"{"data":"bye","total_tokens":4}"#.into()),
        ]
    );
}

#[tokio::test]
async fn heartbeats_when_idle() {
    let steps = vec![tok("a"), Step::Sleep(ms(1200)), tok("b"), ev(Some("done"), "{}")];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy(up.addr, |c| c.heartbeat.interval.0 = ms(200)).await;
    let mut evs = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await);
    let events = evs.all().await;
    assert_eq!(text_of(&events), "ab");
    let raw = String::from_utf8_lossy(&evs.raw);
    let beats = raw.matches(": heartbeat\n").count();
    assert!(beats >= 3, "expected heartbeats while idle, got {beats}: {raw}");
    assert!(!raw.contains("heartbeat\n\n"), "a heartbeat block: {raw:?}");
    wire::assert_every_client_reads(&evs.raw, Some(1000));
}

#[tokio::test]
async fn upstream_without_terminal_gets_done_with_total() {
    let steps = vec![tok("x"), tok("y"), tok("z")];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy(up.addr, |c| c.progress.enabled = false).await;
    let events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await)
        .all()
        .await;
    let last = events.last().expect("events");
    assert_eq!(last.event, "done");
    assert_eq!(last.json()["total_tokens"], 3);
    assert_eq!(text_of(&events), "xyz");
}

#[tokio::test]
async fn upstream_crash_mid_stream_gives_error_event() {
    let steps = vec![tok("partial"), Step::Sleep(ms(50)), Step::Abort];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy(up.addr, |_| {}).await;
    let events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await)
        .all()
        .await;
    assert_eq!(text_of(&events), "partial");
    let last = events.last().expect("events");
    assert_eq!(last.event, "error");
    assert_eq!(last.json()["code"], "upstream_reset");
    assert_eq!(last.json()["recoverable"], true);
    assert_gapless(&events, 1);
}

#[tokio::test]
async fn oversized_event_ends_with_upstream_malformed() {
    let big = format!("data: {}\n\n", "x".repeat(10_000));
    let steps = vec![tok("ok"), Step::Bytes(Bytes::from(big)), tok("never")];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy(up.addr, |c| c.upstream.max_event_bytes.0 = 4096).await;
    let events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await)
        .all()
        .await;
    let last = events.last().expect("events");
    assert_eq!(last.json()["code"], "upstream_malformed");
    assert_eq!(last.json()["recoverable"], false);
    assert_eq!(text_of(&events), "ok");
}

#[tokio::test]
async fn invalid_utf8_is_replaced_not_fatal() {
    let steps = vec![
        Step::Bytes(Bytes::from_static(b"data: {\"content\": \"a\xff\xfeb\"}\r\n\r\n")),
        // A multi-byte character split across chunks.
        Step::Bytes(Bytes::from_static(b"data: {\"content\": \"\xe6\x97")),
        Step::Bytes(Bytes::from_static(b"\xa5\"}\r\n\r\n")),
    ];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy(up.addr, |_| {}).await;
    let events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await)
        .all()
        .await;
    assert_eq!(text_of(&events), "a\u{fffd}\u{fffd}b日");
    assert_eq!(events.last().expect("done").event, "done");
}

#[tokio::test]
async fn silent_upstream_times_out() {
    let steps = vec![tok("a"), Step::Hang];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy(up.addr, |c| c.upstream.idle_timeout.0 = ms(300)).await;
    let events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await)
        .all()
        .await;
    let last = events.last().expect("events");
    assert_eq!(last.json()["code"], "upstream_timeout");
    assert!(
        up.wait_closed(1, WAIT).await,
        "the silent upstream connection was closed"
    );
}

#[tokio::test]
async fn upstream_non_sse_and_errors_pass_through() {
    let up = MockUpstream::start(|parts, _| match parts.uri.path() {
        "/stream" => Reply::plain(401, "application/json", r#"{"detail":"not authenticated"}"#),
        _ => Reply::plain(200, "application/json", r#"{"plain":true}"#),
    })
    .await;
    let p = proxy(up.addr, |_| {}).await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(body_bytes(resp).await, r#"{"detail":"not authenticated"}"#);
    let resp = get(&format!("http://{}/s/json", p.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(body_bytes(resp).await, r#"{"plain":true}"#);
}

#[tokio::test]
async fn upstream_down_gives_502_json() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = dead.local_addr().expect("addr");
    drop(dead);
    let p = proxy(addr, |_| {}).await;
    for path in ["/stream", "/other"] {
        let resp = get(&format!("http://{}{path}", p.addr), &[]).await;
        assert_eq!(resp.status(), 502, "{path}");
        let v: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).expect("json");
        assert_eq!(v["error"], "upstream_unreachable");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test]
async fn slow_upstream_gives_504_json() {
    let mute = tcp::mute_server().await;
    let p = proxy(mute.addr, |c| c.upstream.response_timeout.0 = ms(300)).await;
    let resp = get(&format!("http://{}/x", p.addr), &[]).await;
    assert_eq!(resp.status(), 504);
    let v: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).expect("json");
    assert_eq!(v["error"], "upstream_timeout");
}

#[tokio::test]
async fn metrics_count_batching_saving() {
    let tokens: Vec<String> = (0..60).map(|i| format!("t{i} ")).collect();
    let t2 = tokens.clone();
    let up = MockUpstream::start(move |_, _| Reply::sse(answer(&t2, ms(1)))).await;
    let p = proxy(up.addr, |_| {}).await;
    let before = metrics_text(p.admin).await;
    let events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await)
        .all()
        .await;
    assert_eq!(text_of(&events), tokens.concat());
    let after = metrics_text(p.admin).await;
    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    assert!(delta("sse_proxy_upstream_events_total") >= 62.0);
    assert!(delta("sse_proxy_tokens_total") >= 60.0);
    assert!(delta("sse_proxy_downstream_events_total") >= events.len() as f64);
    for name in [
        "sse_proxy_streams_started_total",
        "sse_proxy_time_to_first_token_seconds_bucket{le=\"+Inf\"}",
        "sse_proxy_batch_tokens_count",
        "sse_proxy_stream_duration_seconds_count",
    ] {
        assert!(metric(&after, name) >= 1.0, "{name} missing:\n{after}");
    }
    assert!(after.contains("sse_proxy_streams_finished_total{outcome=\"completed\"}"));
    assert!(after.contains("# TYPE sse_proxy_time_to_first_token_seconds histogram"));
}

#[tokio::test]
async fn slow_request_body_on_a_stream_route_gets_408() {
    let up = MockUpstream::start(|_, _| Reply::sse(vec![tok("x")])).await;
    let p = proxy(up.addr, |c| c.server.body_read_timeout.0 = ms(300)).await;
    let mut s = tcp::open(
        p.addr,
        b"POST /stream HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"q\":",
    )
    .await;
    let (resp, end) = tcp::read_to_end(&mut s, WAIT).await;
    assert_eq!(end, tcp::End::Closed, "answer in time, then closed");
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"body_timeout\""), "{text}");
    assert_eq!(up.requests(), 0, "nothing went upstream");
}

#[tokio::test]
async fn requests_waiting_for_their_body_hold_no_stream_slot() {
    let up = MockUpstream::start(|_, _| Reply::sse(vec![tok("x"), ev(Some("done"), "{}")])).await;
    let p = proxy(up.addr, |c| c.limits.max_streams = 2).await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        // `Expect: 100-continue` makes the proxy say when it starts reading the body, so the test
        // knows the request reached the stream handler before the real one is sent.
        let mut s = tcp::open(
            p.addr,
            b"POST /stream HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\nExpect: 100-continue\r\n\r\n",
        )
        .await;
        let head = tcp::read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 100"), "{head}");
        silent.push(s);
    }
    let resp = send("POST", &format!("http://{}/stream", p.addr), &[], "{}").await;
    assert_eq!(
        resp.status(),
        200,
        "a request without its body took a stream slot"
    );
    let events = Events::new(resp).all().await;
    assert_eq!(text_of(&events), "x");
    assert_eq!(p.app.registry.running(), 0);
    drop(silent);
}
