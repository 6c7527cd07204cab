//! Proxies on `[store] kind = "redis"`, against a real `redis-server`: a resume on another replica
//! replays from Redis and tails it; an unreachable Redis stops a proxy that requires it and not one
//! that does not.

mod common;

use common::redis_server::RedisServer;
use common::*;
use sse_proxy::config::{Config, StoreKind};
use std::time::Duration;

/// `cfg` on the Redis at `url`.
fn on_redis(cfg: &mut Config, url: &str) {
    cfg.store.kind = StoreKind::Redis;
    cfg.store.url = url.to_owned();
    cfg.store.key_prefix = "sse-proxy-test".into();
}

#[tokio::test]
async fn a_resume_on_another_replica_replays_from_redis_then_tails_live() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let tokens = tricky_tokens(150);
    let t = tokens.clone();
    let up = MockUpstream::start(move |_, _| Reply::sse(answer(&t, Duration::from_millis(5)))).await;
    let a = proxy(up.addr, |c| on_redis(c, &redis.url())).await;
    let b = proxy(up.addr, |c| on_redis(c, &redis.url())).await;

    assert_resume_crosses_replicas(&a, &b, &up, &tokens).await;
}

/// A loopback port nothing listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test]
async fn an_unreachable_required_redis_stops_the_proxy_with_a_clear_error() {
    let mut cfg = base_config("127.0.0.1:9".parse().expect("addr"));
    on_redis(&mut cfg, &format!("redis://:hunter2@127.0.0.1:{}/0", dead_port()));
    let settings = sse_proxy::settings::Settings::build(&cfg);
    let metrics = sse_proxy::metrics::Prometheus::standalone().expect("metrics recorder");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let err = match sse_proxy::server::bind(settings, shutdown, metrics).await {
        Ok(_) => panic!("a proxy started without its required Redis"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("required and unavailable"), "{err}");
    assert!(!err.contains("hunter2"), "the password is not printed: {err}");
}

#[tokio::test]
async fn an_unreachable_optional_redis_falls_back_to_memory() {
    let tokens = tricky_tokens(20);
    let t = tokens.clone();
    let up = MockUpstream::start(move |_, _| Reply::sse(answer(&t, Duration::ZERO))).await;
    let url = format!("redis://127.0.0.1:{}/0", dead_port());
    let p = proxy(up.addr, |c| {
        on_redis(c, &url);
        c.store.required = false;
    })
    .await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    let all = Events::new(resp).all().await;
    assert_eq!(text_of(&all), tokens.concat());
}

/// `/readyz` of the proxy with admin address `admin`: its status and its `status` word.
async fn readyz(admin: std::net::SocketAddr) -> (u16, String) {
    let r = get(&format!("http://{admin}/readyz"), &[]).await;
    let status = r.status().as_u16();
    let body = json_of(&body_bytes(r).await);
    (status, body["status"].as_str().unwrap_or_default().to_owned())
}

/// Polls `/readyz` of `admin` until it answers `want`.
async fn until_ready_is(admin: std::net::SocketAddr, want: (u16, &str)) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, word) = readyz(admin).await;
        if (status, word.as_str()) == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {status} {word}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn redis_lost_at_runtime_keeps_answers_live_gets_resumes_a_503_and_recovers_by_itself() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let tokens = tricky_tokens(80);
    let t = tokens.clone();
    let up = MockUpstream::start(move |parts, _| {
        // `?slow` runs through the outage and past Redis's return.
        let gap = if parts.uri.query() == Some("slow") {
            200
        } else {
            40
        };
        Reply::sse(answer(&t, Duration::from_millis(gap)))
    })
    .await;
    let a = proxy(up.addr, |c| on_redis(c, &redis.url())).await;
    let b = proxy(up.addr, |c| on_redis(c, &redis.url())).await;
    until_ready_is(a.admin, (200, "ready")).await;
    let resp = get(&format!("http://{}/stream?slow", a.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    let mut slow = Events::new(resp);
    let mut slow_seen = slow.take(2).await;
    assert_eq!(
        metric(&metrics_text(a.admin).await, "sse_proxy_store_connected"),
        1.0
    );

    // 20 answers on A, each with its client attached, running when Redis goes away.
    let mut clients = Vec::new();
    for _ in 0..20 {
        let resp = get(&format!("http://{}/stream", a.addr), &[]).await;
        assert_eq!(resp.status(), 200);
        let sid = stream_id_of(&resp);
        let mut events = Events::new(resp);
        let first = events.take(2).await;
        assert_eq!(first.len(), 2);
        clients.push((sid, first, events));
    }
    // A follower on B tails one of them from Redis.
    let followed = clients[1].1[1].id.clone().expect("event id");
    let r = get(
        &format!("http://{}/stream", b.addr),
        &[("last-event-id", &followed)],
    )
    .await;
    assert_eq!(r.status(), 200);
    let mut follower = Events::new(r);
    let mut on_b = follower.take(1).await;
    redis.stop();
    // Its reads fail: the body ends without an event, so the browser resumes later.
    on_b.extend(follower.all().await);
    assert!(on_b.iter().all(|e| e.event != "error"), "{on_b:?}");
    assert_gapless(&on_b, 3);

    // A resume on B of one of them: the store cannot say, so come back later (never 410).
    let (sid, first, _) = &clients[0];
    let last = first[1].id.clone().expect("event id");
    let r = get(&format!("http://{}/stream", b.addr), &[("last-event-id", &last)]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(json_of(&body_bytes(r).await)["error"], "store_unavailable");
    assert_eq!(&stream_id_of_events(first), sid);

    // An answer started while Redis is away: its events never reach Redis; a resume on B is a 503.
    let resp = get(&format!("http://{}/stream", a.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    let mut unstored = Events::new(resp);
    let seen = unstored.take(2).await;
    let last = seen[1].id.clone().expect("event id");
    let r = get(&format!("http://{}/stream", b.addr), &[("last-event-id", &last)]).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));

    until_ready_is(a.admin, (503, "store_unavailable")).await;
    until_ready_is(b.admin, (503, "store_unavailable")).await;
    assert_eq!(
        metric(&metrics_text(a.admin).await, "sse_proxy_store_connected"),
        0.0
    );

    // Every attached client gets its whole answer, live.
    let finishing = clients.into_iter().map(|(_, mut seen, mut events)| {
        tokio::spawn(async move {
            seen.extend(events.all().await);
            seen
        })
    });
    for done in finishing {
        let all = done.await.expect("client");
        assert_gapless(&all, 1);
        assert_eq!(text_of(&all), tokens.concat());
        assert_eq!(all.last().map(|e| e.event.as_str()), Some("done"));
    }
    let mut rest = seen;
    rest.extend(unstored.all().await);
    assert_eq!(text_of(&rest), tokens.concat());
    assert_eq!(readyz(a.admin).await, (503, "store_unavailable".to_owned()));
    let text = metrics_text(a.admin).await;
    assert!(
        metric(&text, "sse_proxy_store_errors_total{op=\"append\"}") >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "sse_proxy_store_errors_total{op=\"ping\"}") >= 1.0,
        "{text}"
    );

    // Redis comes back (empty): both replicas recover without a restart.
    redis.restart();
    until_ready_is(a.admin, (200, "ready")).await;
    until_ready_is(b.admin, (200, "ready")).await;
    assert_eq!(
        metric(&metrics_text(a.admin).await, "sse_proxy_store_connected"),
        1.0
    );

    // The answer still running is written again to the Redis that came back empty, and becomes
    // resumable on B (until then B cannot find it).
    slow_seen.extend(slow.take(2).await);
    let last = slow_seen.last().and_then(|e| e.id.clone()).expect("event id");
    let deadline = tokio::time::Instant::now() + WAIT;
    let r = loop {
        let r = get(&format!("http://{}/stream", b.addr), &[("last-event-id", &last)]).await;
        if r.status() == 200 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "B never found it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(slow);
    slow_seen.extend(Events::new(r).all().await);
    assert_gapless(&slow_seen, 1);
    assert_eq!(text_of(&slow_seen), tokens.concat());

    // New answers are resumable across replicas again.
    let resp = get(&format!("http://{}/stream", a.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    let mut all = Events::new(resp).take(3).await;
    let last = all[2].id.clone().expect("event id");
    let r = get(&format!("http://{}/stream", b.addr), &[("last-event-id", &last)]).await;
    assert_eq!(r.status(), 200);
    all.extend(Events::new(r).all().await);
    assert_gapless(&all, 1);
    assert_eq!(text_of(&all), tokens.concat());
    assert_eq!(up.requests(), 23, "one upstream request per answer");
}

/// The stream id in the first event id of `events`.
fn stream_id_of_events(events: &[Ev]) -> String {
    let id = events[0].id.clone().expect("event id");
    id.rsplit_once(':').map(|(s, _)| s.to_owned()).unwrap_or(id)
}
