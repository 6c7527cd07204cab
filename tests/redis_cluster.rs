//! What replicas on one Redis share besides the streams: the cluster-wide limits, the `/streams`
//! list, the learned answer lengths, the identity key, and the count of followers tailing a stream
//! from the store. Against a real `redis-server`.

mod common;

use common::process::{stream_config, ProxyProcess};
use common::redis_server::RedisServer;
use common::*;
use sse_proxy::config::{Config, Dur, SourceSpec, StoreKind};
use sse_proxy::store::{RedisStore, Store};
use std::time::Duration;

const PREFIX: &str = "sse-proxy-test";

/// `cfg` on the Redis at `url`.
fn on_redis(cfg: &mut Config, url: &str) {
    cfg.store.kind = StoreKind::Redis;
    cfg.store.url = url.to_owned();
    cfg.store.key_prefix = PREFIX.into();
}

/// An upstream that sends a token, then nothing more: the stream runs until it is ended.
async fn hanging_upstream() -> MockUpstream {
    MockUpstream::start(|_, _| {
        Reply::sse(vec![
            ev(Some("thinking"), r#"{"status": "thinking"}"#),
            tok("first"),
            Step::Hang,
        ])
    })
    .await
}

/// A running stream: its id and its events.
struct Running {
    sid: String,
    _events: Events,
}

/// Starts a stream on `addr` with `headers`: its status, and the stream when it is 200 (once its
/// first token arrived, so that it is running).
async fn start(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> (u16, Option<Running>) {
    let resp = get(&format!("http://{addr}/stream"), headers).await;
    let status = resp.status().as_u16();
    if status != 200 {
        return (status, None);
    }
    let sid = stream_id_of(&resp);
    let mut events = Events::new(resp);
    let first = events.take(2).await;
    assert_eq!(text_of(&first), "first");
    (status, Some(Running { sid, _events: events }))
}

fn rejected(text: &str, reason: &str) -> f64 {
    metric(text, &format!("sse_proxy_rejected_total{{reason=\"{reason}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_streams_counts_the_answers_of_every_replica() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = hanging_upstream().await;
    let limited = |c: &mut Config| {
        on_redis(c, &redis.url());
        c.limits.max_streams = 2;
    };
    let a = proxy(up.addr, limited).await;
    let b = proxy(up.addr, limited).await;
    let (s1, first) = start(a.addr, &[]).await;
    let (s2, _second) = start(b.addr, &[]).await;
    assert_eq!((s1, s2), (200, 200));
    let resp = get(&format!("http://{}/stream", a.addr), &[]).await;
    assert_eq!(resp.status(), 429, "A counts the answer B reads");
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(json_of(&body_bytes(resp).await)["error"], "too_many_streams");
    assert_eq!(rejected(&metrics_text(a.admin).await, "max_streams"), 1.0);
    assert_eq!(start(b.addr, &[]).await.0, 429, "B counts the answer A reads");
    assert_eq!(up.requests(), 2, "a refused stream asks the backend nothing");

    // Cancelling the first answer (the owner's Stop) ends it: its place is free on every replica.
    let sid = first.as_ref().map(|r| r.sid.clone()).expect("stream id");
    let cancel = send(
        "POST",
        &format!("http://{}/_sse-proxy/streams/{sid}/cancel", a.addr),
        &[],
        "",
    )
    .await;
    assert_eq!(cancel.status(), 202);
    drop(first);
    let mut freed = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while freed.is_none() && tokio::time::Instant::now() < deadline {
        match start(b.addr, &[]).await {
            (200, evs) => freed = evs,
            (status, _) => {
                assert_eq!(status, 429);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(freed.is_some(), "the ended answer's place was freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_streams_per_identity_counts_across_replicas() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = hanging_upstream().await;
    let limited = |c: &mut Config| {
        on_redis(c, &redis.url());
        c.identity.from = Some(SourceSpec::Header(http::header::AUTHORIZATION));
        c.limits.max_streams_per_identity = 1;
    };
    let a = proxy(up.addr, limited).await;
    let b = proxy(up.addr, limited).await;
    let (s1, _alice) = start(a.addr, &[("authorization", "Bearer alice")]).await;
    assert_eq!(s1, 200);
    let (s2, _) = start(b.addr, &[("authorization", "Bearer alice")]).await;
    assert_eq!(s2, 429, "alice's answer on A counts on B");
    assert_eq!(
        rejected(&metrics_text(b.admin).await, "max_streams_per_identity"),
        1.0
    );
    let (s3, _bob) = start(b.addr, &[("authorization", "Bearer bob")]).await;
    assert_eq!(s3, 200, "another identity has its own count");
}

/// A replica killed with running answers: their places come back once their leases lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_answers_stop_counting_when_their_leases_lapse() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = hanging_upstream().await;
    let extra = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\nkey_prefix = \"{PREFIX}\"\nlease = \"1s\"\n\n[limits]\nmax_streams = 2\n",
        redis.url()
    );
    let cfg = stream_config(up.addr, &extra);
    let a = ProxyProcess::start(&["--config", cfg.path()]).await;
    let b = proxy(up.addr, |c| {
        on_redis(c, &redis.url());
        c.store.lease = Dur(Duration::from_secs(1));
        c.limits.max_streams = 2;
    })
    .await;
    let (s1, on_a1) = start(a.addr, &[]).await;
    let (s2, on_a2) = start(a.addr, &[]).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(
        start(b.addr, &[]).await.0,
        429,
        "A's two answers fill the cluster"
    );
    drop(a); // SIGKILL: nothing released
    drop((on_a1, on_a2));
    let mut freed = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut held = Vec::new();
    while freed < 2 && tokio::time::Instant::now() < deadline {
        match start(b.addr, &[]).await {
            (200, evs) => {
                freed += 1;
                held.push(evs);
            }
            (status, _) => {
                assert_eq!(status, 429);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(freed, 2, "both places of the dead replica came back");
    assert_eq!(start(b.addr, &[]).await.0, 429, "and the limit still holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_on_any_replica_lists_every_replicas_running_answers() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = hanging_upstream().await;
    let a = proxy(up.addr, |c| on_redis(c, &redis.url())).await;
    let b = proxy(up.addr, |c| on_redis(c, &redis.url())).await;
    let resp = get(&format!("http://{}/stream?model=m-a", a.addr), &[]).await;
    let on_a = stream_id_of(&resp);
    let mut evs_a = Events::new(resp);
    evs_a.take(2).await;
    let resp = get(&format!("http://{}/stream?model=m-b", b.addr), &[]).await;
    let on_b = stream_id_of(&resp);
    let mut evs_b = Events::new(resp);
    evs_b.take(2).await;

    for (me, other) in [(&a, &b), (&b, &a)] {
        let v = json_of(&body_bytes(get(&format!("http://{}/streams", me.admin), &[]).await).await);
        let replica = |p: &TestProxy| p.app.replica().to_string();
        assert_eq!(v["replica"], replica(me).as_str());
        assert_eq!(v["running"], 2, "{v}");
        let list = v["streams"].as_array().expect("streams");
        for (sid, reader, model) in [(&on_a, &a, "m-a"), (&on_b, &b, "m-b")] {
            let s = list
                .iter()
                .find(|s| s["id"] == sid.as_str())
                .unwrap_or_else(|| panic!("{sid} listed on {}: {v}", replica(me)));
            assert_eq!(s["replica"], replica(reader).as_str(), "{s}");
            assert_eq!(s["model"], model);
            assert_eq!(s["route"], "/stream");
            assert_eq!(s["state"], "running");
        }
        assert_eq!(list.len(), 2, "each answer once: {v}");
        let _ = other;
    }
}

/// A route and model whose answers are always `n` tokens long, with progress every 10 tokens.
fn learning(c: &mut Config, url: &str) {
    on_redis(c, url);
    c.progress.every_tokens = 10;
    c.progress.min_interval = Dur(Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_history_learned_on_one_replica_is_used_on_another() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    const LEN: usize = 60;
    let tokens: Vec<String> = (0..LEN).map(|i| format!("t{i} ")).collect();
    let t = tokens.clone();
    let up = MockUpstream::start(move |_, _| Reply::sse(answer(&t, Duration::from_millis(2)))).await;
    let a = proxy(up.addr, |c| learning(c, &redis.url())).await;
    let b = proxy(up.addr, |c| learning(c, &redis.url())).await;
    const LEARNED: usize = 8;
    for _ in 0..LEARNED {
        let all = Events::new(get(&format!("http://{}/stream?model=m", a.addr), &[]).await)
            .all()
            .await;
        assert_eq!(text_of(&all), tokens.concat());
    }
    // The answers reach Redis once they have ended for their clients.
    let store = RedisStore::connect(&redis.url(), PREFIX, sse_proxy::store::contract::settings())
        .await
        .expect("connect");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = store
            .lengths("/stream".into(), "m".into(), 100)
            .await
            .expect("lengths");
        if got.len() == LEARNED {
            assert!(got.iter().all(|&n| n == LEN as u64), "{got:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A's lengths never reached Redis: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        b.app.learner().as_ref().map(|l| l.samples("/stream", "m")),
        Some(0)
    );

    let all = Events::new(get(&format!("http://{}/stream?model=m", b.addr), &[]).await)
        .all()
        .await;
    let first = all
        .iter()
        .find(|e| e.event == "progress")
        .expect("a progress event")
        .json();
    assert_eq!(
        first["estimated_total"], LEN,
        "B estimates from A's history: {first}"
    );
    assert_ne!(first["confidence"], "low", "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_key_is_shared_so_the_owner_resumes_on_another_replica() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let tokens = tricky_tokens(120);
    let t = tokens.clone();
    let up = MockUpstream::start(move |_, _| Reply::sse(answer(&t, Duration::from_millis(5)))).await;
    let owned = |c: &mut Config| {
        on_redis(c, &redis.url());
        c.identity.from = Some(SourceSpec::Header(http::header::AUTHORIZATION));
    };
    let a = proxy(up.addr, owned).await;
    let b = proxy(up.addr, owned).await;
    let alice = [("authorization", "Bearer alice")];
    let resp = get(&format!("http://{}/stream", a.addr), &alice).await;
    assert_eq!(resp.status(), 200);
    let mut all = Events::new(resp).take(3).await;
    let last = all[2].id.clone().expect("event id");

    let url = format!("http://{}/stream", b.addr);
    let mallory = get(
        &url,
        &[("authorization", "Bearer mallory"), ("last-event-id", &last)],
    )
    .await;
    assert_eq!(mallory.status(), 410, "another credential");
    let resp = get(&url, &[alice[0], ("last-event-id", &last)]).await;
    assert_eq!(resp.status(), 200, "the owner resumes on B");
    all.extend(Events::new(resp).all().await);
    assert_gapless(&all, 1);
    assert_eq!(text_of(&all), tokens.concat());
    assert_eq!(up.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_tailing_the_store_count_against_max_followers() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = hanging_upstream().await;
    let a = proxy(up.addr, |c| on_redis(c, &redis.url())).await;
    let b = proxy(up.addr, |c| {
        on_redis(c, &redis.url());
        c.limits.max_followers = 2;
    })
    .await;
    let resp = get(&format!("http://{}/stream", a.addr), &[]).await;
    let sid = stream_id_of(&resp);
    let mut evs = Events::new(resp);
    let first = evs.take(1).await;
    let id = first[0].id.clone().expect("event id");
    let url = format!("http://{}/stream", b.addr);
    let f1 = get(&url, &[("last-event-id", &id)]).await;
    let f2 = get(&url, &[("last-event-id", &id)]).await;
    assert_eq!((f1.status().as_u16(), f2.status().as_u16()), (200, 200));
    let f3 = get(&url, &[("last-event-id", &id)]).await;
    assert_eq!(f3.status(), 429, "a third follower on B of {sid}");
    assert_eq!(json_of(&body_bytes(f3).await)["error"], "too_many_followers");
    assert_eq!(rejected(&metrics_text(b.admin).await, "max_followers"), 1.0);
    drop(f1);
    let ok = async {
        loop {
            let r = get(&url, &[("last-event-id", &id)]).await;
            if r.status() == 200 {
                return r;
            }
            assert_eq!(r.status(), 429);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let again = tokio::time::timeout(WAIT, ok).await.expect("a place freed");
    drop((again, f2));
}

/// Redis loses its data (a restart without persistence): the running replicas write their key back,
/// so a replica started afterwards still hashes owners as they do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_key_survives_redis_losing_its_data() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let tokens = tricky_tokens(60);
    let t = tokens.clone();
    let up = MockUpstream::start(move |_, _| Reply::sse(answer(&t, Duration::from_millis(5)))).await;
    let owned = |c: &mut Config| {
        on_redis(c, &redis.url());
        c.store.lease = Dur(Duration::from_secs(1));
        c.identity.from = Some(SourceSpec::Header(http::header::AUTHORIZATION));
    };
    let a = proxy(up.addr, owned).await;
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis-server");
    let key = format!("{PREFIX}:identity-key");
    let get_key = |mut conn: redis::aio::MultiplexedConnection| {
        let key = key.clone();
        async move {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await
                .expect("GET")
        }
    };
    let before = get_key(conn.clone()).await.expect("A stored its key");
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut conn)
        .await
        .expect("FLUSHALL");
    let deadline = tokio::time::Instant::now() + WAIT;
    while get_key(conn.clone()).await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key was never written back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get_key(conn.clone()).await, Some(before), "the same key");
    let b = proxy(up.addr, owned).await;
    let alice = [("authorization", "Bearer alice")];
    let resp = get(&format!("http://{}/stream", a.addr), &alice).await;
    let mut all = Events::new(resp).take(2).await;
    let last = all[1].id.clone().expect("event id");
    let resp = get(
        &format!("http://{}/stream", b.addr),
        &[alice[0], ("last-event-id", &last)],
    )
    .await;
    assert_eq!(
        resp.status(),
        200,
        "the owner resumes on the replica started after the loss"
    );
    all.extend(Events::new(resp).all().await);
    assert_eq!(text_of(&all), tokens.concat());
}

/// With `[identity]` set, a stopping replica hands its clients off like any other: the replica they
/// come back to tells their owner with the shared key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_identity_a_stopping_replica_hands_the_owner_to_another() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let tokens = tricky_tokens(100);
    let t = tokens.clone();
    let up = MockUpstream::start(move |_, _| Reply::sse(answer(&t, Duration::from_millis(10)))).await;
    let owned = |c: &mut Config| {
        on_redis(c, &redis.url());
        c.identity.from = Some(SourceSpec::Header(http::header::AUTHORIZATION));
    };
    let mut a = proxy(up.addr, owned).await;
    let b = proxy(up.addr, owned).await;
    let alice = [("authorization", "Bearer alice")];
    let mut on_a = Events::new(get(&format!("http://{}/stream", a.addr), &alice).await);
    let mut all = on_a.take(3).await;
    a.shutdown.cancel();
    all.extend(on_a.all().await);
    let last = all.last().expect("events").clone();
    assert_ne!(last.event, "done", "A sent its client away before the end");
    let id = last.id.expect("event id");
    let resp = get(
        &format!("http://{}/stream", b.addr),
        &[alice[0], ("last-event-id", &id)],
    )
    .await;
    assert_eq!(resp.status(), 200, "the owner resumes on B");
    all.extend(Events::new(resp).all().await);
    assert_gapless(&all, 1);
    assert_eq!(text_of(&all), tokens.concat());
    assert_eq!(up.requests(), 1, "one upstream request");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_tailing_the_store_are_counted_across_replicas() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = hanging_upstream().await;
    let a = proxy(up.addr, |c| on_redis(c, &redis.url())).await;
    let two = |c: &mut Config| {
        on_redis(c, &redis.url());
        c.limits.max_followers = 2;
    };
    let b = proxy(up.addr, two).await;
    let c = proxy(up.addr, two).await;
    let mut evs = Events::new(get(&format!("http://{}/stream", a.addr), &[]).await);
    let id = evs.take(1).await[0].id.clone().expect("event id");
    let on = |p: &TestProxy| format!("http://{}/stream", p.addr);
    let f1 = get(&on(&b), &[("last-event-id", &id)]).await;
    let f2 = get(&on(&c), &[("last-event-id", &id)]).await;
    assert_eq!((f1.status().as_u16(), f2.status().as_u16()), (200, 200));
    let f3 = get(&on(&b), &[("last-event-id", &id)]).await;
    assert_eq!(f3.status(), 429, "B counts C's follower");
    assert_eq!(get(&on(&c), &[("last-event-id", &id)]).await.status(), 429);
    drop(f2);
    let again = async {
        loop {
            let r = get(&on(&b), &[("last-event-id", &id)]).await;
            if r.status() == 200 {
                return r;
            }
            assert_eq!(r.status(), 429);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let f4 = tokio::time::timeout(WAIT, again).await.expect("C's place freed");
    drop((f1, f4));
}
