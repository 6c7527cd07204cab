//! Resuming with `Last-Event-ID`: replay, 204/410/400, identity, retention, eviction, limits,
//! admin listing and resume metrics.

mod common;

use common::*;
use http::header::HeaderValue;
use sse_proxy::config::{OnMiss, SourceSpec};
use sse_proxy::stream::{Outcome, State};
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn with_identity(c: &mut sse_proxy::config::Config) {
    c.identity.from = Some(SourceSpec::Header(http::header::AUTHORIZATION));
}

/// `n` distinct tokens `<prefix><i> `.
fn words(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i} ")).collect()
}

/// A mock answering every request with these tokens, `gap` apart.
async fn mock_answer(tokens: &[String], gap: Duration) -> MockUpstream {
    let t = tokens.to_vec();
    MockUpstream::start(move |_, _| Reply::sse(answer(&t, gap))).await
}

/// A mock that sends two tokens and then nothing more (a stream that stays running).
async fn mock_hanging() -> MockUpstream {
    MockUpstream::start(|_, _| Reply::sse(vec![tok("a"), tok("b"), Step::Hang])).await
}

async fn resume_header(
    p: &TestProxy,
    path: &str,
    id: &str,
    auth: Option<&str>,
) -> http::Response<hyper::body::Incoming> {
    let mut h = vec![("last-event-id", id)];
    if let Some(a) = auth {
        h.push(("authorization", a));
    }
    get(&format!("http://{}{path}", p.addr), &h).await
}

fn id_of(e: &Ev) -> String {
    e.id.clone().expect("event id")
}

async fn metrics_now(p: &TestProxy) -> String {
    metrics_text(p.admin).await
}

fn resumes(text: &str, result: &str) -> f64 {
    metric(text, &format!("sse_proxy_resumes_total{{result=\"{result}\"}}"))
}

#[tokio::test]
async fn resume_mid_stream_gives_the_rest_exactly_once() {
    let tokens = tricky_tokens(150);
    let up = mock_answer(&tokens, ms(5)).await;
    let p = proxy(up.addr, |_| {}).await;
    let resp = get(&format!("http://{}/stream?q=1", p.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    let sid = stream_id_of(&resp);
    let mut all = Events::new(resp).take(3).await;
    assert_eq!(all.len(), 3);

    // First cut: resume with the header.
    let resp = resume_header(&p, "/stream?q=1", &id_of(&all[2]), None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(stream_id_of(&resp), sid);
    let mut evs = Events::new(resp);
    all.extend(evs.take(4).await);
    drop(evs);

    // Second cut: resume with the query parameter.
    let last = id_of(all.last().expect("events"));
    let resp = get(&format!("http://{}/stream?q=1&last_event_id={last}", p.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    all.extend(Events::new(resp).all().await);

    assert_gapless(&all, 1);
    assert!(all.iter().all(|e| id_of(e).starts_with(&sid)));
    assert_eq!(text_of(&all), tokens.concat());
    assert_eq!(all.last().expect("events").event, "done");
    assert_eq!(up.requests(), 1, "resumes never ask the upstream again");
}

#[tokio::test]
async fn finished_while_detached_then_rest_and_done_then_204() {
    let tokens = words("w", 60);
    let up = mock_answer(&tokens, ms(3)).await;
    let p = proxy(up.addr, |_| {}).await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    let sid = stream_id_of(&resp);
    let mut all = Events::new(resp).take(2).await;
    assert_eq!(all.len(), 2);

    // Nobody attached while the upstream finishes.
    let stream = p.app.registry.get(&parse_stream_id(&sid)).expect("stream held");
    assert!(
        wait_for(WAIT, || matches!(stream.state(), State::Finished(..))).await,
        "the stream finished without a client"
    );
    assert!(matches!(stream.state(), State::Finished(Outcome::Completed, _)));
    assert_eq!(up.closed_early(), 0, "the upstream was read to its end");

    let resp = resume_header(&p, "/stream", &id_of(&all[1]), None).await;
    assert_eq!(resp.status(), 200);
    all.extend(Events::new(resp).all().await);
    assert_gapless(&all, 1);
    assert_eq!(text_of(&all), tokens.concat());
    let done = all.last().expect("events");
    assert_eq!(done.event, "done");

    let resp = resume_header(&p, "/stream", &id_of(done), None).await;
    assert_eq!(resp.status(), 204);
    assert!(body_bytes(resp).await.is_empty());
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn unusable_ids_all_get_the_same_410() {
    let up = MockUpstream::start(|parts, _| match parts.uri.path() {
        "/s/short" => Reply::sse(vec![tok("x"), ev(Some("done"), "{}")]),
        _ => Reply::sse(vec![tok("a"), tok("b"), Step::Hang]),
    })
    .await;
    let p = proxy(up.addr, |c| {
        with_identity(c);
        c.resume.retention.0 = ms(400);
    })
    .await;
    let alice = "Bearer alice";
    let resp = get(&format!("http://{}/stream", p.addr), &[("authorization", alice)]).await;
    assert_eq!(resp.status(), 200);
    let sid = stream_id_of(&resp);
    let mut live = Events::new(resp);
    let first = live.next().await.expect("first event");

    // The owner may resume.
    let ok = resume_header(&p, "/stream", &id_of(&first), Some(alice)).await;
    assert_eq!(ok.status(), 200);
    drop(ok);

    let mut bodies = Vec::new();
    let mut check = |what: &str, status: http::StatusCode, body: bytes::Bytes| {
        assert_eq!(status, 410, "{what}: {}", String::from_utf8_lossy(&body));
        bodies.push((what.to_string(), body));
    };
    let r = resume_header(&p, "/stream", &format!("{sid}:1"), Some("Bearer mallory")).await;
    check("foreign identity", r.status(), body_bytes(r).await);
    let r = resume_header(&p, "/stream", &format!("{sid}:1"), None).await;
    check("no identity", r.status(), body_bytes(r).await);
    let r = resume_header(&p, "/stream", &format!("{}:1", forged_stream_id()), Some(alice)).await;
    check("forged id", r.status(), body_bytes(r).await);
    let r = resume_header(&p, "/stream", &format!("{sid}:999"), Some(alice)).await;
    check("seq from the future", r.status(), body_bytes(r).await);

    // Expired: a finished stream after its retention (the sweeper runs every 100 ms here).
    let short = get(&format!("http://{}/s/short", p.addr), &[("authorization", alice)]).await;
    let short_sid = stream_id_of(&short);
    let short_events = Events::new(short).all().await;
    assert_eq!(short_events.last().expect("events").event, "done");
    let key = parse_stream_id(&short_sid);
    assert!(
        wait_for(WAIT, || p.app.registry.get(&key).is_none()).await,
        "the finished stream expired"
    );
    let r = resume_header(&p, "/s/short", &format!("{short_sid}:1"), Some(alice)).await;
    check("expired", r.status(), body_bytes(r).await);

    let (_, reference) = &bodies[0];
    let v = json_of(reference);
    assert_eq!(v["error"], "resume_unavailable");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    for (what, b) in &bodies {
        assert_eq!(b, reference, "{what}: the 410 body is byte-identical");
    }

    // Nothing of the above disturbed the running stream.
    assert_eq!(live.next().await.expect("second event").seq(), 2);
    assert_eq!(up.requests(), 2);
}

#[tokio::test]
async fn malformed_ids_get_400_json() {
    let up = mock_hanging().await;
    let p = proxy(up.addr, |_| {}).await;
    let sid = forged_stream_id();
    let long = "a".repeat(1000);
    let url = format!("http://{}/stream", p.addr);
    let mut raw: Vec<Vec<u8>> = vec![
        b"nope".to_vec(),
        sid.clone().into_bytes(),
        format!("{sid}:").into_bytes(),
        format!("{sid}:-1").into_bytes(),
        format!("{sid}:1x").into_bytes(),
        b"short:1".to_vec(),
        long.clone().into_bytes(),
    ];
    let mut non_utf8 = sid.clone().into_bytes();
    non_utf8[3] = 0xff;
    non_utf8.extend_from_slice(b":\xfe1");
    raw.push(non_utf8);
    for value in raw {
        let req = http::Request::get(&url)
            .header(
                "last-event-id",
                HeaderValue::from_bytes(&value).expect("header value"),
            )
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let resp = send_request(req).await;
        let shown = String::from_utf8_lossy(&value)
            .chars()
            .take(40)
            .collect::<String>();
        assert_eq!(resp.status(), 400, "{shown}");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let v = json_of(&body_bytes(resp).await);
        assert_eq!(v["error"], "bad_last_event_id", "{shown}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    for q in ["nope", "%ff%fe:1", long.as_str()] {
        let resp = get(&format!("{url}?last_event_id={q}"), &[]).await;
        assert_eq!(resp.status(), 400, "query {q}");
        assert_eq!(json_of(&body_bytes(resp).await)["error"], "bad_last_event_id");
    }
    assert_eq!(up.requests(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn on_miss_restart_forwards_a_fresh_stream_without_the_id() {
    let tokens = words("r", 20);
    let up = mock_answer(&tokens, ms(1)).await;
    let p = proxy(up.addr, |c| c.resume.on_miss = OnMiss::Restart).await;
    let forged = format!("{}:7", forged_stream_id());

    // Query parameter: stripped, the other parameters kept as they were.
    let resp = get(
        &format!("http://{}/stream?q=a%20b&last_event_id={forged}&x=2", p.addr),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let sid = stream_id_of(&resp);
    assert_ne!(sid, forged[..22]);
    let events = Events::new(resp).all().await;
    assert_gapless(&events, 1);
    assert_eq!(text_of(&events), tokens.concat());

    // Header: not forwarded.
    let resp = resume_header(&p, "/stream?q=2", &forged, None).await;
    assert_eq!(resp.status(), 200);
    let events = Events::new(resp).all().await;
    assert_gapless(&events, 1);
    assert_eq!(text_of(&events), tokens.concat());

    assert_eq!(
        seen_uris(&up.seen),
        vec!["/stream?q=a%20b&x=2".to_string(), "/stream?q=2".to_string()]
    );
    let forwarded_id = up
        .seen
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|parts| parts.headers.contains_key("last-event-id"));
    assert!(!forwarded_id, "Last-Event-ID is not forwarded upstream");

    // A fresh request with an empty parameter is a new stream too, and the parameter is stripped.
    let p2 = proxy(up.addr, |_| {}).await;
    let resp = get(&format!("http://{}/stream?q=3&last_event_id=", p2.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    Events::new(resp).all().await;
    assert_eq!(
        seen_uris(&up.seen).last().map(String::as_str),
        Some("/stream?q=3")
    );
}

#[tokio::test]
async fn two_followers_see_identical_events_and_ids() {
    let tokens = tricky_tokens(100);
    let up = mock_answer(&tokens, ms(3)).await;
    let p = proxy(up.addr, |_| {}).await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    let sid = stream_id_of(&resp);
    let mut a = Events::new(resp);
    let mut a_events = a.take(2).await;
    let resp = resume_header(&p, "/stream", &format!("{sid}:0"), None).await;
    assert_eq!(resp.status(), 200);
    let mut b = Events::new(resp);
    let (rest_a, b_events) = tokio::join!(a.all(), b.all());
    a_events.extend(rest_a);
    assert_gapless(&a_events, 1);
    assert_eq!(a_events, b_events);
    assert_eq!(text_of(&b_events), tokens.concat());
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn detach_grace_abandons_the_upstream() {
    let tokens = words("d", 200);
    let up = mock_answer(&tokens, ms(20)).await;
    let p = proxy(up.addr, |c| c.resume.detach_grace.0 = ms(300)).await;
    let before = metrics_now(&p).await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    let sid = stream_id_of(&resp);
    let mut seen = Events::new(resp).take(3).await;
    assert_eq!(seen.len(), 3);
    let cut = tokio::time::Instant::now();
    assert!(
        up.wait_closed(1, WAIT).await,
        "the upstream was cancelled after detach_grace"
    );
    let waited = cut.elapsed();
    assert!(waited >= ms(290), "cancelled before the grace passed: {waited:?}");
    let stream = p.app.registry.get(&parse_stream_id(&sid)).expect("stream held");
    assert!(matches!(stream.state(), State::Finished(Outcome::Abandoned, _)));

    let resp = resume_header(&p, "/stream", &id_of(&seen[2]), None).await;
    assert_eq!(resp.status(), 200);
    seen.extend(Events::new(resp).all().await);
    assert_gapless(&seen, 1);
    let last = seen.last().expect("events");
    assert_eq!(last.event, "error");
    assert_eq!(last.json()["code"], "abandoned");
    assert_eq!(last.json()["recoverable"], false);
    let text = text_of(&seen);
    assert!(
        !text.is_empty() && tokens.concat().starts_with(&text),
        "a prefix of the answer: {text:?}"
    );
    assert!(text.len() < tokens.concat().len());
    assert_eq!(up.requests(), 1);

    let after = metrics_now(&p).await;
    let key = "sse_proxy_streams_finished_total{outcome=\"abandoned\"}";
    assert_eq!(metric(&after, key) - metric(&before, key), 1.0);
}

#[tokio::test]
async fn total_budget_bounds_memory_and_evicts_finished_streams() {
    const MAX_TOTAL: usize = 8 << 10;
    // More running streams than the budget holds even one event of each: the bound still holds.
    const STREAMS: usize = 80;
    let up = MockUpstream::start(|parts, _| {
        let n: usize = parts.uri.path().trim_start_matches("/s/").parse().unwrap_or(0);
        let tokens: Vec<String> = (0..60).map(|i| format!("stream{n}-token{i} ")).collect();
        Reply::sse(answer(&tokens, ms(3 + (n % 3) as u64)))
    })
    .await;
    let p = proxy(up.addr, |c| {
        c.upstream.max_event_bytes.0 = 1 << 10;
        c.resume.max_stream_bytes.0 = 2 << 10;
        c.resume.max_total_bytes.0 = MAX_TOTAL as u64;
    })
    .await;
    let gauge = |t: &str| metric(t, "sse_proxy_log_bytes");
    assert!(gauge(&metrics_now(&p).await) <= MAX_TOTAL as f64);

    let addr = p.addr;
    let clients: Vec<_> = (0..STREAMS)
        .map(|n| {
            tokio::spawn(async move {
                let resp = get(&format!("http://{addr}/s/{n}"), &[]).await;
                assert_eq!(resp.status(), 200);
                let sid = stream_id_of(&resp);
                let events = Events::new(resp).all().await;
                (sid, events)
            })
        })
        .collect();
    let mut samples = 0;
    let mut peak_held = 0;
    let mut peak_gauge = 0.0f64;
    // Until every client is done and every upstream has finished (clients that fall behind the
    // evictions end early with `evicted`; their streams go on detached).
    while !clients.iter().all(|c| c.is_finished()) || p.app.registry.running() > 0 {
        let held = p.app.registry.budget().held();
        peak_held = peak_held.max(held);
        peak_gauge = peak_gauge.max(gauge(&metrics_now(&p).await));
        samples += 1;
        tokio::time::sleep(ms(5)).await;
    }
    let mut results = Vec::new();
    for c in clients {
        results.push(c.await.expect("client task"));
    }
    assert!(samples > 10, "sampled while the streams ran ({samples} samples)");
    assert!(peak_held <= MAX_TOTAL, "held {peak_held} > {MAX_TOTAL}");
    assert!(peak_gauge <= MAX_TOTAL as f64, "gauge {peak_gauge} > {MAX_TOTAL}");
    let mt = metrics_now(&p).await;
    let evictions = metric(&mt, "sse_proxy_log_evictions_total{kind=\"finished\"}");
    assert!(evictions >= 1.0, "finished streams were evicted");

    // The streams that finished first were evicted: resuming them is 410, like any unknown id.
    let evicted: Vec<&(String, Vec<Ev>)> = results
        .iter()
        .filter(|(sid, _)| p.app.registry.get(&parse_stream_id(sid)).is_none())
        .collect();
    assert!(!evicted.is_empty());
    for (sid, events) in evicted.iter().take(5) {
        let id = events.last().map_or(format!("{sid}:0"), id_of);
        let r = resume_header(&p, "/s/0", &id, None).await;
        assert_eq!(r.status(), 410, "{sid}");
        assert_eq!(json_of(&body_bytes(r).await)["error"], "resume_unavailable");
    }
    assert_eq!(up.requests(), STREAMS);
}

#[tokio::test]
async fn resume_before_the_oldest_retained_event_is_gone() {
    let tokens = words("long-token-text-", 120);
    let up = mock_answer(&tokens, Duration::ZERO).await;
    let p = proxy(up.addr, |c| {
        c.upstream.max_event_bytes.0 = 1 << 10;
        c.resume.max_stream_bytes.0 = 2 << 10;
        c.batching.max_tokens = 1;
        c.progress.enabled = false;
    })
    .await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    let sid = stream_id_of(&resp);
    let stream = p.app.registry.get(&parse_stream_id(&sid)).expect("stream held");
    let events = Events::new(resp).all().await;
    let last = events.last().expect("events").seq();
    assert!(wait_for(WAIT, || stream.log.is_closed()).await);
    let first = stream.log.first_seq();
    assert!(
        first > 3,
        "the log dropped its oldest events (first held: {first})"
    );
    assert!(stream.log.bytes() <= 2 << 10);

    for seq in [0, first - 2] {
        let r = resume_header(&p, "/stream", &format!("{sid}:{seq}"), None).await;
        assert_eq!(r.status(), 410, "seq {seq}");
    }
    // From just before the oldest held event: everything held.
    let r = resume_header(&p, "/stream", &format!("{sid}:{}", first - 1), None).await;
    assert_eq!(r.status(), 200);
    let rest = Events::new(r).all().await;
    assert_gapless(&rest, first);
    assert_eq!(rest.last().expect("events").seq(), last);
    assert_eq!(rest[..], events[events.len() - rest.len()..]);
}

#[tokio::test]
async fn max_streams_gives_429_and_resumes_do_not_count() {
    let up = mock_hanging().await;
    let p = proxy(up.addr, |c| {
        c.limits.max_streams = 2;
        c.limits.retry_after.0 = Duration::from_secs(7);
    })
    .await;
    let url = format!("http://{}/stream", p.addr);
    let a = get(&url, &[]).await;
    let b = get(&url, &[]).await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let sid = stream_id_of(&a);
    let r = get(&url, &[]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(r.headers()["content-type"], "application/json");
    let v = json_of(&body_bytes(r).await);
    assert_eq!(v["error"], "too_many_streams");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(up.requests(), 2);

    let r = resume_header(&p, "/stream", &format!("{sid}:0"), None).await;
    assert_eq!(r.status(), 200, "a resume is not a new stream");
    let mut evs = Events::new(r);
    assert_eq!(evs.next().await.expect("replayed").seq(), 1);
    assert_eq!(up.requests(), 2);
    drop((a, b));
}

#[tokio::test]
async fn max_streams_per_identity_gives_429_per_user() {
    let up = mock_hanging().await;
    let p = proxy(up.addr, |c| {
        with_identity(c);
        c.limits.max_streams_per_identity = 1;
    })
    .await;
    let url = format!("http://{}/stream", p.addr);
    let alice = [("authorization", "Bearer alice")];
    let a = get(&url, &alice).await;
    assert_eq!(a.status(), 200);
    let sid = stream_id_of(&a);
    let r = get(&url, &alice).await;
    assert_eq!(r.status(), 429);
    assert!(r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.parse::<u64>().is_ok()));
    assert_eq!(json_of(&body_bytes(r).await)["error"], "too_many_streams");
    let b = get(&url, &[("authorization", "Bearer bob")]).await;
    assert_eq!(b.status(), 200, "another user is not limited by alice's streams");
    let r = resume_header(&p, "/stream", &format!("{sid}:1"), Some("Bearer alice")).await;
    assert_eq!(r.status(), 200, "resuming does not count against the limit");
    assert_eq!(up.requests(), 2);
    drop((a, b));
}

#[tokio::test]
async fn max_followers_gives_429_to_the_extra_follower() {
    let up = mock_hanging().await;
    let p = proxy(up.addr, |c| c.limits.max_followers = 2).await;
    let a = get(&format!("http://{}/stream", p.addr), &[]).await;
    let sid = stream_id_of(&a);
    let mut a = Events::new(a);
    a.next().await.expect("first event");
    let b = resume_header(&p, "/stream", &format!("{sid}:0"), None).await;
    assert_eq!(b.status(), 200);
    let r = resume_header(&p, "/stream", &format!("{sid}:0"), None).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v = json_of(&body_bytes(r).await);
    assert!(
        v["error"].as_str().is_some_and(|e| e.starts_with("too_many")),
        "{v}"
    );
    // A follower leaving frees its place.
    drop(b);
    let stream = p.app.registry.get(&parse_stream_id(&sid)).expect("stream");
    assert!(wait_for(WAIT, || stream.followers() == 1).await);
    let c = resume_header(&p, "/stream", &format!("{sid}:0"), None).await;
    assert_eq!(c.status(), 200);
}

#[tokio::test]
async fn admin_lists_streams_without_content_or_identity() {
    let up = MockUpstream::start(|_, _| {
        Reply::sse(vec![tok("SECRETWORD-one "), tok("SECRETWORD-two"), Step::Hang])
    })
    .await;
    let p = proxy(up.addr, with_identity).await;
    let resp = get(
        &format!(
            "http://{}/stream?model=gpt-test&question=private-question",
            p.addr
        ),
        &[("authorization", "Bearer token-of-alice")],
    )
    .await;
    let sid = stream_id_of(&resp);
    let mut evs = Events::new(resp);
    let got = evs.take(2).await;
    assert_eq!(text_of(&got), "SECRETWORD-one SECRETWORD-two");

    let body = body_bytes(get(&format!("http://{}/streams", p.admin), &[]).await).await;
    let text = String::from_utf8_lossy(&body).to_string();
    for secret in [
        "SECRETWORD",
        "token-of-alice",
        "Bearer",
        "private-question",
        "authorization",
    ] {
        assert!(!text.contains(secret), "/streams leaks {secret:?}: {text}");
    }
    let v = json_of(&body);
    let list = v["streams"].as_array().expect("streams array");
    let s = list
        .iter()
        .find(|s| s["id"] == sid.as_str())
        .expect("the stream is listed");
    assert_eq!(s["state"], "running");
    assert_eq!(s["route"], "/stream");
    assert_eq!(s["model"], "gpt-test");
    assert_eq!(s["tokens"], 2);
    assert_eq!(s["connections"], 1);
    assert!(s["bytes"].as_u64().is_some_and(|b| b > 0));

    drop(evs);
    let key = parse_stream_id(&sid);
    let detached = || p.app.registry.get(&key).is_some_and(|s| s.followers() == 0);
    assert!(wait_for(WAIT, detached).await);
    let v = json_of(&body_bytes(get(&format!("http://{}/streams", p.admin), &[]).await).await);
    let s = v["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .find(|s| s["id"] == sid.as_str())
        .cloned();
    let s = s.expect("still listed");
    assert_eq!(s["state"], "detached");
    assert_eq!(s["connections"], 0);
}

#[tokio::test]
async fn resume_metrics_count_each_result() {
    let tokens = words("m", 30);
    let up = mock_answer(&tokens, ms(2)).await;
    let p = proxy(up.addr, |_| {}).await;
    let before = metrics_now(&p).await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    let sid = stream_id_of(&resp);
    let all = Events::new(resp).all().await;
    let last = id_of(all.last().expect("events"));

    let r = resume_header(&p, "/stream", &format!("{sid}:1"), None).await;
    assert_eq!(r.status(), 200);
    Events::new(r).all().await;
    let r = resume_header(&p, "/stream", &format!("{sid}:0"), None).await;
    assert_eq!(r.status(), 200);
    Events::new(r).all().await;
    let r = resume_header(&p, "/stream", &last, None).await;
    assert_eq!(r.status(), 204);
    for id in [format!("{}:1", forged_stream_id()), format!("{sid}:100000")] {
        assert_eq!(resume_header(&p, "/stream", &id, None).await.status(), 410);
    }
    for id in ["x", "y:1", "zz"] {
        assert_eq!(resume_header(&p, "/stream", id, None).await.status(), 400);
    }
    let after = metrics_now(&p).await;
    let delta = |result: &str| resumes(&after, result) - resumes(&before, result);
    assert_eq!(delta("replayed"), 2.0);
    assert_eq!(delta("finished"), 1.0);
    assert_eq!(delta("gone"), 2.0);
    assert_eq!(delta("bad_request"), 3.0);
}
