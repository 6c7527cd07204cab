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
    assert!(b.app.registry.get(&key).is_none(), "B only read Redis");
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
