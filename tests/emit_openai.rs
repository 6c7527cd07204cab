//! `emit = "openai"`: streams written as OpenAI `chat.completion.chunk`s, with ids, resume,
//! progress, errors and heartbeats in that dialect.

mod common;

use common::*;
use http_body_util::BodyExt;
use sse_proxy::config::{Config, Dur};
use sse_proxy::protocol::Dialect;
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Both routes of the base config write OpenAI chunks.
fn openai(c: &mut Config) {
    for s in &mut c.streams {
        s.emit = Dialect::OpenAi;
    }
}

/// A mock answering every request with these tokens, `gap` apart.
async fn mock_answer(tokens: &[String], gap: Duration) -> MockUpstream {
    let t = tokens.to_vec();
    MockUpstream::start(move |_, _| Reply::sse(answer(&t, gap))).await
}

/// The chunk JSON of every event but `[DONE]`.
fn chunks(events: &[Ev]) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(Ev::json)
        .collect()
}

/// Concatenated `delta.content` of the chunks.
fn content_of(events: &[Ev]) -> String {
    chunks(events)
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect()
}

/// Every event is an unnamed `message` with data; the last is `data: [DONE]` with the last id.
fn assert_openai_shape(events: &[Ev], sid: &str) {
    assert!(
        events.iter().all(|e| e.event == "message" && !e.data.is_empty()),
        "{events:?}"
    );
    let done = events.last().expect("events");
    assert_eq!(done.data, "[DONE]");
    assert!(done.id.as_deref().is_some_and(|i| i.starts_with(sid)));
    let finish = &events[events.len() - 2];
    let c = finish.json();
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    for c in chunks(events) {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], format!("chatcmpl-{sid}"));
        assert!(c["created"].as_u64().is_some_and(|t| t > 1_600_000_000));
        assert_eq!(c["choices"][0]["index"], 0);
    }
}

#[tokio::test]
async fn a_stream_is_openai_chunks_ending_in_done() {
    let tokens = tricky_tokens(60);
    let up = mock_answer(&tokens, Duration::ZERO).await;
    let p = proxy(up.addr, openai).await;
    let resp = get(&format!("http://{}/stream?model=llama3", p.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    let sid = stream_id_of(&resp);
    let mut evs = Events::new(resp);
    let events = evs.all().await;
    let raw = String::from_utf8_lossy(&evs.raw).to_string();
    assert!(
        raw.starts_with("data: {"),
        "no retry block before the first event: {raw:.80}"
    );
    assert!(!raw.contains("retry:") && !raw.contains("event:"), "{raw}");
    assert_openai_shape(&events, &sid);
    assert_eq!(content_of(&events), tokens.concat());
    let all = chunks(&events);
    assert_eq!(all[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(all[0]["model"], "llama3");
    assert_eq!(all[0]["sse_proxy"]["thinking"]["status"], "thinking");
    assert!(all[1..]
        .iter()
        .all(|c| c["choices"][0]["delta"].get("role").is_none()));
    // Ids are the usual ones: every event but the finish chunk has the next seq; that chunk has
    // none of its own (a reader keeps the previous one), [DONE] right after it has its seq.
    let finish = &events[events.len() - 2];
    assert_eq!(finish.id, events[events.len() - 3].id);
    let finish_then_done = format!("{}\n\ndata: [DONE]\nid: ", finish.data);
    assert!(raw.contains(&finish_then_done), "{raw}");
    let mut with_id: Vec<Ev> = events.to_vec();
    with_id.remove(events.len() - 2);
    assert_gapless(&with_id, 1);
    for e in &events {
        if let Some(id) = &e.id {
            let line = format!("id: {id}\n\n");
            assert!(raw.contains(&line), "id is the last field: {raw}");
        }
    }
}

#[tokio::test]
async fn cut_and_resume_with_last_event_id_gives_the_exact_text() {
    let tokens = tricky_tokens(120);
    let up = mock_answer(&tokens, ms(3)).await;
    let p = proxy(up.addr, openai).await;
    let url = format!("http://{}/stream", p.addr);
    let resp = get(&url, &[]).await;
    let sid = stream_id_of(&resp);
    let mut all = Events::new(resp).take(4).await;
    assert_eq!(all.len(), 4);
    for cut in [3, 5] {
        let last = all.last().and_then(|e| e.id.clone()).expect("id");
        let resp = get(&url, &[("last-event-id", &last)]).await;
        assert_eq!(resp.status(), 200);
        let mut evs = Events::new(resp);
        all.extend(evs.take(cut).await);
    }
    let last = all.last().and_then(|e| e.id.clone()).expect("id");
    let resp = get(&url, &[("last-event-id", &last)]).await;
    all.extend(Events::new(resp).all().await);
    assert_openai_shape(&all, &sid);
    assert_eq!(content_of(&all), tokens.concat());
    assert_eq!(
        chunks(&all)
            .iter()
            .filter(|c| c["choices"][0]["delta"].get("role").is_some())
            .count(),
        1
    );
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn progress_rides_in_sse_proxy_on_empty_chunks() {
    let tokens: Vec<String> = (0..40).map(|i| format!(" w{i}")).collect();
    let up = mock_answer(&tokens, ms(1)).await;
    let p = proxy(up.addr, |c| {
        openai(c);
        c.progress.every_tokens = 5;
        c.progress.min_interval = Dur(ms(0));
        c.batching.max_tokens = 4;
    })
    .await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    let sid = stream_id_of(&resp);
    let events = Events::new(resp).all().await;
    assert_openai_shape(&events, &sid);
    assert_eq!(content_of(&events), tokens.concat());
    let progress: Vec<_> = chunks(&events)
        .into_iter()
        .filter(|c| c.get("sse_proxy").is_some_and(|s| s.get("progress").is_some()))
        .collect();
    assert!(progress.len() >= 2, "{events:?}");
    for c in &progress {
        assert_eq!(c["choices"][0]["delta"], serde_json::json!({}));
        assert_eq!(c["choices"][0]["finish_reason"], serde_json::Value::Null);
        assert!(c["sse_proxy"]["progress"]["tokens"].as_u64().is_some(), "{c}");
    }
}

#[tokio::test]
async fn an_upstream_break_is_an_openai_error() {
    let up =
        MockUpstream::start(|_, _| Reply::sse(vec![tok("a"), tok("b"), Step::Sleep(ms(50)), Step::Abort]))
            .await;
    let p = proxy(up.addr, openai).await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    let mut evs = Events::new(resp);
    let events = evs.all().await;
    assert!(!events.is_empty(), "{}", String::from_utf8_lossy(&evs.raw));
    assert_eq!(content_of(&events[..events.len() - 1]), "ab");
    let last = events.last().expect("events");
    assert!(last.id.is_some());
    let e = last.json();
    assert_eq!(e["error"]["code"], "upstream_reset");
    assert_eq!(e["error"]["type"], "sse_proxy");
    assert!(e["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(events.iter().all(|e| e.data != "[DONE]"));
}

#[tokio::test]
async fn heartbeats_are_a_lone_comment_line() {
    let up = MockUpstream::start(|_, _| Reply::sse(vec![tok("a"), Step::Hang])).await;
    let p = proxy(up.addr, |c| {
        openai(c);
        c.heartbeat.interval.0 = ms(50);
    })
    .await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    let mut body = resp.into_body();
    let mut raw = Vec::new();
    while raw.windows(11).filter(|w| w == b": heartbeat").count() < 2 {
        match tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("bytes in time")
        {
            Some(Ok(f)) => raw.extend_from_slice(&f.into_data().unwrap_or_default()),
            other => panic!("body ended: {other:?}"),
        }
    }
    let raw = String::from_utf8_lossy(&raw).to_string();
    assert!(raw.ends_with(": heartbeat\n"), "{raw}");
    assert!(!raw.contains(": heartbeat\n\n"), "{raw}");
}

#[tokio::test]
async fn a_resume_on_another_replica_reads_the_same_dialect_from_the_store() {
    use sse_proxy::store::{Handle, MemoryStore, StoreSettings};
    use std::sync::Arc;
    let lease = Duration::from_secs(5);
    let store = Arc::new(MemoryStore::new(
        StoreSettings {
            max_stream_bytes: 2 << 20,
            lease,
            retention: Duration::from_secs(300),
        },
        256 << 20,
    ));
    let tokens = tricky_tokens(100);
    let up = mock_answer(&tokens, ms(5)).await;
    let replica = |store: Arc<MemoryStore>| {
        let mut cfg = base_config(up.addr);
        openai(&mut cfg);
        proxy_on_store(cfg, Some(Handle::new(store, lease)))
    };
    let a = replica(store.clone()).await;
    let b = replica(store.clone()).await;
    let resp = get(&format!("http://{}/stream", a.addr), &[]).await;
    let sid = stream_id_of(&resp);
    let mut all = Events::new(resp).take(3).await;
    let last = all.last().and_then(|e| e.id.clone()).expect("id");
    let resp = get(&format!("http://{}/stream", b.addr), &[("last-event-id", &last)]).await;
    assert_eq!(resp.status(), 200);
    let mut evs = Events::new(resp);
    all.extend(evs.all().await);
    let raw = String::from_utf8_lossy(&evs.raw).to_string();
    assert!(
        raw.starts_with("data: {"),
        "no retry block from the other replica either: {raw:.80}"
    );
    assert!(
        b.app.registry.get(&parse_stream_id(&sid)).is_none(),
        "B only read the store"
    );
    assert_openai_shape(&all, &sid);
    assert_eq!(content_of(&all), tokens.concat());
}
