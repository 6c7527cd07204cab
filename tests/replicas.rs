//! Several proxies on one stream store: a resume of a stream another proxy reads replays from the
//! store and tails it; a failing store keeps answers live for their clients and is counted, and a
//! resume that needs it gets `503` with `Retry-After`.

mod common;

use common::*;
use sse_proxy::store::gate::Gate;
use sse_proxy::store::{Handle, MemoryStore, Store, StoreSettings};
use sse_proxy::stream::State;
use std::sync::Arc;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(5);

fn shared_store() -> Arc<MemoryStore> {
    let settings = StoreSettings {
        max_stream_bytes: 2 << 20,
        lease: LEASE,
        retention: Duration::from_secs(300),
    };
    Arc::new(MemoryStore::new(settings, 256 << 20))
}

/// A proxy in front of `upstream` writing to `store`, under a replica name of its own.
async fn replica(upstream: std::net::SocketAddr, store: Arc<dyn Store>) -> TestProxy {
    proxy_on_store(base_config(upstream), Some(Handle::new(store, LEASE))).await
}

async fn mock_answer(tokens: &[String], gap: Duration) -> MockUpstream {
    let t = tokens.to_vec();
    MockUpstream::start(move |_, _| Reply::sse(answer(&t, gap))).await
}

async fn resume(p: &TestProxy, last_event_id: &str) -> http::Response<hyper::body::Incoming> {
    get(
        &format!("http://{}/stream", p.addr),
        &[("last-event-id", last_event_id)],
    )
    .await
}

fn id_of(e: &Ev) -> String {
    e.id.clone().expect("event id")
}

#[tokio::test]
async fn a_resume_on_another_proxy_replays_from_the_store_then_tails_live() {
    let tokens = tricky_tokens(150);
    let up = mock_answer(&tokens, Duration::from_millis(5)).await;
    let store = shared_store();
    let a = replica(up.addr, store.clone()).await;
    let b = replica(up.addr, store.clone()).await;

    let (sid, all) = assert_resume_crosses_replicas(&a, &b, &up, &tokens).await;
    let done = all.last().expect("events");

    // The end as B sees it is the end as A sees it.
    assert_eq!(resume(&b, &id_of(done)).await.status(), 204);
    assert_eq!(resume(&a, &id_of(done)).await.status(), 204);
    // From the start, on B: the very same events.
    let again = Events::new(resume(&b, &format!("{sid}:0")).await).all().await;
    assert_eq!(again[..], all[..]);
    for bad in [format!("{sid}:100000"), format!("{}:1", forged_stream_id())] {
        assert_eq!(resume(&b, &bad).await.status(), 410, "{bad}");
    }
}

#[tokio::test]
async fn a_follower_on_another_proxy_sees_the_same_events_live() {
    let tokens = tricky_tokens(100);
    let up = mock_answer(&tokens, Duration::from_millis(5)).await;
    let store = shared_store();
    let a = replica(up.addr, store.clone()).await;
    let b = replica(up.addr, store.clone()).await;

    let resp = get(&format!("http://{}/stream", a.addr), &[]).await;
    let sid = stream_id_of(&resp);
    let mut on_a = Events::new(resp);
    let first = on_a.take(1).await;
    let follower = tokio::spawn({
        let url = format!("http://{}/stream", b.addr);
        let from = format!("{sid}:0");
        async move {
            Events::new(get(&url, &[("last-event-id", &from)]).await)
                .all()
                .await
        }
    });
    let mut seen_on_a = first;
    seen_on_a.extend(on_a.all().await);
    let seen_on_b = follower.await.expect("follower");
    assert_eq!(seen_on_b[..], seen_on_a[..]);
    assert_eq!(text_of(&seen_on_b), tokens.concat());
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn a_failing_store_keeps_answers_live_counts_and_gets_resumes_a_503() {
    // The answer stays open: what the client gets, it gets live.
    let up = MockUpstream::start(|_, _| Reply::sse(vec![tok("live "), tok("only"), Step::Hang])).await;
    let gate = Gate::new(shared_store());
    gate.fail(true);
    let a = replica(up.addr, gate.clone()).await;
    let b = replica(up.addr, gate.clone()).await;
    let before = metrics_text(a.admin).await;
    let before_b = metrics_text(b.admin).await;

    let resp = get(&format!("http://{}/stream", a.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    let sid = stream_id_of(&resp);
    let mut events = Events::new(resp);
    let mut seen = Vec::new();
    while text_of(&seen) != "live only" {
        seen.push(events.next().await.expect("the answer flows"));
    }
    assert_gapless(&seen, 1);
    let stream = a.app.registry.get(&parse_stream_id(&sid)).expect("A reads it");
    assert_eq!(stream.state(), State::Running, "seen while the answer goes on");

    // B cannot tell whether the stream exists: not 410, but come back later.
    let r = resume(&b, &format!("{sid}:1")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(json_of(&body_bytes(r).await)["error"], "store_unavailable");
    // A serves the stream it reads from its own memory.
    let r = resume(&a, &format!("{sid}:0")).await;
    assert_eq!(r.status(), 200);
    let mut replay = Events::new(r);
    let replayed = replay.take(seen.len()).await;
    assert_eq!(replayed[..], seen[..]);

    let after = metrics_text(a.admin).await;
    let delta = |sample: &str| metric(&after, sample) - metric(&before, sample);
    assert!(
        delta("sse_proxy_store_errors_total{op=\"create\"}") >= 1.0,
        "the failed create is counted"
    );
    // Each replica counts its own: the resume that got the 503 was B's.
    let after_b = metrics_text(b.admin).await;
    let delta_b = |sample: &str| metric(&after_b, sample) - metric(&before_b, sample);
    assert_eq!(delta_b("sse_proxy_store_errors_total{op=\"meta\"}"), 1.0);
    assert_eq!(delta_b("sse_proxy_resumes_total{result=\"unavailable\"}"), 1.0);
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn a_resume_of_events_the_live_reader_has_not_stored_yet_gets_a_503_not_a_410() {
    // The answer stays open: its reader is alive and keeps its lease.
    let steps = vec![
        tok("not "),
        Step::Sleep(Duration::from_secs(2)),
        tok("stored"),
        Step::Hang,
    ];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let gate = Gate::new(shared_store());
    let a = replica(up.addr, gate.clone()).await;
    let b = replica(up.addr, gate.clone()).await;

    let resp = get(&format!("http://{}/stream", a.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    let sid = stream_id_of(&resp);
    let mut events = Events::new(resp);
    let first = events.next().await.expect("a first event");
    // Writes hang from now on: after a stall, A's clients get the rest live only.
    gate.close();
    let mut seen = vec![first];
    while text_of(&seen) != "not stored" {
        seen.push(events.next().await.expect("the answer flows"));
    }
    let last = id_of(seen.last().expect("events"));
    let key = parse_stream_id(&sid);
    let stream = a.app.registry.get(&key).expect("A reads it");
    assert!(
        stream.log.durable_seq() > 1 && gate.waiting() >= 1,
        "given out while not stored"
    );

    // B finds the stream running with fewer events than the id: it comes back later.
    let r = resume(&b, &last).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(json_of(&body_bytes(r).await)["error"], "store_unavailable");

    // Once the store takes writes again, A catches up and B serves the rest.
    gate.open();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = resume(&b, &id_of(&seen[0])).await;
        if r.status() == 200 {
            let replayed = Events::new(r).take(seen.len() - 1).await;
            assert_eq!(replayed[..], seen[1..]);
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(tokio::time::Instant::now() < deadline, "B never served it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(up.requests(), 1);
}
