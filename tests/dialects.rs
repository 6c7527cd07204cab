//! Upstream dialects end to end: the backend's own error events, OpenAI, Anthropic and Ollama
//! streams from scripted upstreams (the reference backend's are in `tests/backend.rs`), and
//! answers whose content type does not fit their route.

mod common;

use bytes::Bytes;
use common::*;
use serde_json::json;
use sse_proxy::config::Config;
use std::time::Duration;

/// An answer of `content_type` made of these lines, each sent as its own chunk.
fn reply(content_type: &str, chunks: &[String]) -> Reply {
    Reply {
        status: 200,
        headers: vec![("content-type".into(), content_type.into())],
        steps: chunks
            .iter()
            .map(|c| Step::Bytes(Bytes::from(c.clone())))
            .collect(),
    }
}

/// `data: <json>` events of OpenAI chat chunks for `tokens`, then `finish_reason`, usage, [DONE].
fn openai_chunks(tokens: &[String]) -> Vec<String> {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), json!(null))];
    out.extend(tokens.iter().map(|t| chunk(json!({"content": t}), json!(null))));
    out.push(chunk(json!({}), json!("stop")));
    out.push(format!(
        "data: {}\n\n",
        json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": tokens.len(), "total_tokens": tokens.len() + 2}})
    ));
    out.push("data: [DONE]\n\n".into());
    out
}

/// Ollama /api/chat NDJSON lines for `tokens`, then the `done` object.
fn ollama_lines(tokens: &[String]) -> Vec<String> {
    let mut out: Vec<String> = tokens
        .iter()
        .map(|t| {
            format!(
                "{}\n",
                json!({"model": "m", "message": {"role": "assistant", "content": t}, "done": false})
            )
        })
        .collect();
    out.push(format!(
        "{}\n",
        json!({"model": "m", "message": {"role": "assistant", "content": ""}, "done": true,
            "done_reason": "stop", "total_duration": 99, "eval_count": tokens.len()})
    ));
    out
}

fn names(events: &[Ev]) -> Vec<&str> {
    events.iter().map(|e| e.event.as_str()).collect()
}

/// Reads `first` events, drops the connection, resumes after the last one read, and returns all
/// events (checked gapless across the cut).
async fn cut_and_resume(p: &TestProxy, path: &str, body: &str, first: usize) -> Vec<Ev> {
    let url = format!("http://{}{path}", p.addr);
    let mut evs = Events::new(send("POST", &url, &[("content-type", "application/json")], body).await);
    let mut events = evs.take(first).await;
    drop(evs);
    let last = events
        .last()
        .and_then(|e| e.id.clone())
        .expect("an id to resume from");
    let resumed = send("POST", &url, &[("last-event-id", &last)], body).await;
    assert_eq!(resumed.status(), 200);
    events.extend(Events::new(resumed).all().await);
    assert_gapless(&events, 1);
    events
}

async fn finished(admin: std::net::SocketAddr, outcome: &str) -> f64 {
    metric(
        &metrics_text(admin).await,
        &format!("sse_proxy_streams_finished_total{{outcome=\"{outcome}\"}}"),
    )
}

async fn wait_finished(admin: std::net::SocketAddr, outcome: &str) {
    for _ in 0..2000 {
        if finished(admin, outcome).await >= 1.0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no stream finished as {outcome}");
}

#[tokio::test]
async fn a_backend_error_event_ends_the_stream_with_upstream_error() {
    let steps = vec![
        ev(Some("thinking"), r#"{"status": "thinking"}"#),
        tok("a"),
        tok("b"),
        tok("c"),
        tok("d"),
        tok("e"),
        ev(
            Some("error"),
            r#"{"message": "model overloaded", "recoverable": false}"#,
        ),
    ];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy(up.addr, |_| {}).await;
    let events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await)
        .all()
        .await;
    assert_gapless(&events, 1);
    assert_eq!(text_of(&events), "abcde");
    let last = events.last().expect("events");
    assert_eq!(last.event, "error", "{events:?}");
    assert_eq!(
        last.json(),
        serde_json::json!({"code": "upstream_error", "message": "model overloaded", "recoverable": false})
    );
    assert_eq!(
        events.iter().filter(|e| e.event == "error").count(),
        1,
        "{events:?}"
    );
    assert!(!events.iter().any(|e| e.event == "done"), "{events:?}");
    let progress_at_end = events
        .iter()
        .filter(|e| e.event == "progress")
        .any(|e| e.json()["percent"] == 100);
    assert!(!progress_at_end, "no final progress: {events:?}");
    wait_finished(p.admin, "error").await;
    assert_eq!(finished(p.admin, "completed").await, 0.0);
    let text = metrics_text(p.admin).await;
    assert_eq!(
        metric(&text, "sse_proxy_errors_total{code=\"upstream_error\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_backend_error_without_recoverable_is_recoverable() {
    let steps = vec![tok("a"), ev(Some("error"), r#"{"message": "try later"}"#)];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy(up.addr, |_| {}).await;
    let events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await)
        .all()
        .await;
    let last = events.last().expect("events");
    assert_eq!(
        (last.event.as_str(), last.json()),
        (
            "error",
            serde_json::json!({"code": "upstream_error", "message": "try later", "recoverable": true})
        )
    );
}

#[tokio::test]
async fn openai_streams_are_tokens_and_one_done_with_finish_reason_and_usage() {
    let tokens = tricky_tokens(40);
    let chunks = openai_chunks(&tokens);
    let up = MockUpstream::start(move |_, _| reply("text/event-stream", &chunks)).await;
    let p = proxy_routes(
        up.addr,
        "[[stream]]\npath = \"/v1/chat/completions\"\nformat = \"openai\"",
    )
    .await;
    let events = cut_and_resume(&p, "/v1/chat/completions", "{}", 3).await;
    assert_eq!(text_of(&events), tokens.concat());
    let last = events.last().expect("events");
    assert_eq!(last.event, "done");
    assert_eq!(
        last.json(),
        json!({"total_tokens": tokens.iter().filter(|t| !t.is_empty()).count(), "finish_reason": "stop",
            "usage": {"prompt_tokens": 2, "completion_tokens": 40, "total_tokens": 42}})
    );
    // Only batches, progress and the one done: no raw chunks, no [DONE].
    assert!(
        names(&events)
            .iter()
            .all(|n| ["message", "progress", "done"].contains(n)),
        "{events:?}"
    );
    assert_eq!(names(&events).iter().filter(|n| **n == "done").count(), 1);
}

#[tokio::test]
async fn an_openai_error_object_mid_stream_ends_with_upstream_error() {
    let mut chunks = openai_chunks(&["a".into(), "b".into()]);
    chunks.truncate(3);
    chunks.push("data: {\"error\":{\"message\":\"rate limited\",\"type\":\"requests\"}}\n\n".into());
    let up = MockUpstream::start(move |_, _| reply("text/event-stream", &chunks)).await;
    let p = proxy_routes(up.addr, "[[stream]]\npath = \"/v1/*\"\nformat = \"openai\"").await;
    let events = Events::new(get(&format!("http://{}/v1/x", p.addr), &[]).await)
        .all()
        .await;
    assert_eq!(text_of(&events), "ab");
    let last = events.last().expect("events");
    assert_eq!(
        (last.event.as_str(), last.json()),
        (
            "error",
            json!({"code": "upstream_error", "message": "rate limited", "recoverable": true})
        )
    );
    assert!(!names(&events).contains(&"done"));
    wait_finished(p.admin, "error").await;
}

#[tokio::test]
async fn malformed_chunks_end_with_upstream_malformed() {
    let cases: [(&str, &str, Vec<String>); 3] = [
        (
            "openai",
            "text/event-stream",
            vec![
                "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n".into(),
                "data: {oops\n\n".into(),
            ],
        ),
        (
            "anthropic",
            "text/event-stream",
            vec![
                "event: content_block_delta\ndata: {\"delta\":{\"type\":\"text_delta\",\"text\":\"a\"}}\n\n"
                    .into(),
                "event: content_block_delta\ndata: {\"delta\":5\n\n".into(),
            ],
        ),
        (
            "ollama",
            "application/x-ndjson",
            vec![
                "{\"response\":\"a\",\"done\":false}\n".into(),
                "{\"response\":\n".into(),
            ],
        ),
    ];
    for (format, content_type, chunks) in cases {
        let ct = content_type.to_string();
        let up = MockUpstream::start(move |_, _| reply(&ct, &chunks)).await;
        let p = proxy_routes(
            up.addr,
            &format!("[[stream]]\npath = \"/x\"\nformat = \"{format}\""),
        )
        .await;
        let events = Events::new(get(&format!("http://{}/x", p.addr), &[]).await)
            .all()
            .await;
        assert_eq!(text_of(&events), "a", "{format}");
        let last = events.last().expect("events");
        assert_eq!(last.event, "error", "{format}: {events:?}");
        assert_eq!(last.json()["code"], "upstream_malformed", "{format}");
    }
}

#[tokio::test]
async fn anthropic_streams_pass_metadata_in_order_drop_pings_and_end_with_done() {
    let e = |name: &str, data: serde_json::Value| format!("event: {name}\ndata: {data}\n\n");
    let delta = |t: &str| {
        e(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}),
        )
    };
    let chunks = vec![
        e(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1"}}),
        ),
        e(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0}),
        ),
        e("ping", json!({"type": "ping"})),
        delta("Hello"),
        delta(", \"world\"\n"),
        e(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        e(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
        ),
        e("message_stop", json!({"type": "message_stop"})),
    ];
    let up = MockUpstream::start(move |_, _| reply("text/event-stream", &chunks)).await;
    let p = proxy_routes(
        up.addr,
        "[[stream]]\npath = \"/v1/messages\"\nformat = \"anthropic\"\n[progress]\nenabled = false",
    )
    .await;
    let events = cut_and_resume(&p, "/v1/messages", "{}", 2).await;
    assert_eq!(text_of(&events), "Hello, \"world\"\n");
    let without_batches: Vec<&str> = names(&events).into_iter().filter(|n| *n != "message").collect();
    assert_eq!(
        without_batches,
        [
            "message_start",
            "content_block_start",
            "content_block_stop",
            "message_delta",
            "message_stop",
            "done"
        ]
    );
    assert_eq!(
        events.last().expect("events").json(),
        json!({"total_tokens": 2, "stop_reason": "end_turn", "usage": {"output_tokens": 2}})
    );
    let text = metrics_text(p.admin).await;
    assert_eq!(
        metric(&text, "sse_proxy_upstream_events_dropped_total{reason=\"ping\"}"),
        1.0
    );
}

#[tokio::test]
async fn an_anthropic_error_event_ends_with_upstream_error() {
    let chunks = vec![
        "event: content_block_delta\ndata: {\"delta\":{\"type\":\"text_delta\",\"text\":\"a\"}}\n\n".to_string(),
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n".into(),
    ];
    let up = MockUpstream::start(move |_, _| reply("text/event-stream", &chunks)).await;
    let p = proxy_routes(up.addr, "[[stream]]\npath = \"/m\"\nformat = \"anthropic\"").await;
    let events = Events::new(get(&format!("http://{}/m", p.addr), &[]).await)
        .all()
        .await;
    assert_eq!(
        events.last().expect("events").json(),
        json!({"code": "upstream_error", "message": "Overloaded", "recoverable": true})
    );
    assert!(!names(&events).contains(&"done"));
}

#[tokio::test]
async fn ollama_ndjson_is_reframed_with_ids_resume_and_its_statistics_in_done() {
    let tokens = tricky_tokens(30);
    let lines = ollama_lines(&tokens);
    let up = MockUpstream::start(move |_, _| reply("application/x-ndjson", &lines)).await;
    let p = proxy_routes(up.addr, "[[stream]]\npath = \"/api/chat\"\nformat = \"ollama\"").await;
    let events = cut_and_resume(&p, "/api/chat", "{}", 2).await;
    // The empty token in the pool is not a token.
    assert_eq!(text_of(&events), tokens.concat());
    let last = events.last().expect("events");
    assert_eq!(last.event, "done");
    let total = tokens.iter().filter(|t| !t.is_empty()).count();
    assert_eq!(
        last.json(),
        json!({"total_tokens": total, "done_reason": "stop", "total_duration": 99, "eval_count": 30})
    );
}

#[tokio::test]
async fn ollama_behind_and_openai_chunks_in_front_resume_exactly() {
    let tokens = tricky_tokens(30);
    let lines = ollama_lines(&tokens);
    let up = MockUpstream::start(move |_, _| reply("application/x-ndjson", &lines)).await;
    let route = "[[stream]]\npath = \"/api/chat\"\nformat = \"ollama\"\nemit = \"openai\"";
    let p = proxy_routes(up.addr, route).await;
    // A cut after two chunks, then a resume (the last frame holds two events: the finish chunk and
    // `[DONE]`, so ids are checked here, not with assert_gapless).
    let url = format!("http://{}/api/chat", p.addr);
    let mut evs = Events::new(send("POST", &url, &[("content-type", "application/json")], "{}").await);
    let mut events = evs.take(2).await;
    drop(evs);
    let last = events
        .last()
        .and_then(|e| e.id.clone())
        .expect("an id to resume from");
    let resumed = send("POST", &url, &[("last-event-id", &last)], "{}").await;
    assert_eq!(resumed.status(), 200);
    events.extend(Events::new(resumed).all().await);
    // The finish chunk carries no id of its own (the `[DONE]` after it in the frame does).
    let mut seqs: Vec<u64> = events.iter().map(Ev::seq).collect();
    seqs.dedup();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gap, no repeat"
    );
    assert!(events.iter().all(|e| e.event == "message"), "{events:?}");
    assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
    let chunks: Vec<serde_json::Value> = events
        .iter()
        .filter(|e| e.data != "[DONE]")
        .map(Ev::json)
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, tokens.concat());
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let roles = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["role"] == "assistant")
        .count();
    assert_eq!(roles, 1, "the role on the first chunk only");
    assert_eq!(
        chunks.last().map(|c| c["choices"][0]["finish_reason"].clone()),
        Some(json!("stop"))
    );
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn an_ndjson_line_over_the_event_limit_is_malformed() {
    let lines = vec![format!("{{\"response\":\"{}\"}}\n", "x".repeat(4096))];
    let up = MockUpstream::start(move |_, _| reply("application/x-ndjson", &lines)).await;
    let mut cfg = Config::from_toml_str(
        &format!("[upstream]\nurl = \"http://{}\"\nmax_event_bytes = \"1KiB\"\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[[stream]]\npath = \"/g\"\nformat = \"ollama\"", up.addr),
        "<test>",
    )
    .expect("config");
    cfg.server.shutdown_grace.0 = Duration::from_secs(2);
    let p = proxy_with(cfg).await;
    let events = Events::new(get(&format!("http://{}/g", p.addr), &[]).await)
        .all()
        .await;
    assert_eq!(
        events.last().expect("events").json()["code"],
        "upstream_malformed"
    );
}

#[tokio::test]
async fn sse_terminal_data_and_empty_tokens() {
    let chunks: Vec<String> = ["a", "", "b"]
        .iter()
        .map(|t| format!("data: {}\n\n", json!({"content": t})))
        .chain([
            "data: [DONE]\n\n".to_string(),
            "data: {\"content\":\"after\"}\n\n".into(),
        ])
        .collect();
    let up = MockUpstream::start(move |_, _| reply("text/event-stream", &chunks)).await;
    let p = proxy_routes(
        up.addr,
        "[[stream]]\npath = \"/t\"\ntoken_path = \"/content\"\nterminal_data = [\"[DONE]\"]\nskip_empty_tokens = true",
    )
    .await;
    let events = Events::new(get(&format!("http://{}/t", p.addr), &[]).await)
        .all()
        .await;
    assert_eq!(text_of(&events), "ab");
    assert_eq!(events.last().expect("events").json(), json!({"total_tokens": 2}));
    let text = metrics_text(p.admin).await;
    assert_eq!(
        metric(
            &text,
            "sse_proxy_upstream_events_dropped_total{reason=\"empty_token\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn upstream_progress_events_are_dropped_while_the_proxy_sends_its_own() {
    let steps = vec![
        tok("a"),
        ev(Some("progress"), r#"{"percent": 50}"#),
        tok("b"),
        ev(Some("done"), r#"{"status": "complete"}"#),
    ];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy(up.addr, |_| {}).await;
    let events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await)
        .all()
        .await;
    assert!(
        events
            .iter()
            .filter(|e| e.event == "progress")
            .all(|e| e.json().get("tokens").is_some()),
        "only the proxy's own progress: {events:?}"
    );
    assert_upstream_done(&events);
    let text = metrics_text(p.admin).await;
    assert_eq!(
        metric(
            &text,
            "sse_proxy_upstream_events_dropped_total{reason=\"progress\"}"
        ),
        1.0
    );

    // Without the proxy's progress, the backend's own goes through.
    let steps = vec![
        tok("a"),
        ev(Some("progress"), r#"{"percent": 50}"#),
        ev(Some("done"), "{}"),
    ];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy(up.addr, |c| c.progress.enabled = false).await;
    let events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await)
        .all()
        .await;
    assert_eq!(names(&events), ["message", "progress", "done"]);
    assert_eq!(events[1].data, r#"{"percent": 50}"#);
}

#[tokio::test]
async fn a_stream_of_the_other_format_passes_through_and_is_counted() {
    let ndjson = "{\"response\":\"a\",\"done\":true}\n";
    let sse = "data: {\"content\":\"a\"}\n\n";
    let up = MockUpstream::start(move |parts, _| match parts.uri.path() {
        "/stream" => Reply::plain(200, "application/x-ndjson", ndjson),
        _ => Reply::plain(200, "text/event-stream", sse),
    })
    .await;
    let p = proxy_routes(
        up.addr,
        "[[stream]]\npath = \"/stream\"\n[[stream]]\npath = \"/api/generate\"\nformat = \"ollama\"",
    )
    .await;
    let a = get(&format!("http://{}/stream", p.addr), &[]).await;
    assert_eq!(a.headers()["content-type"], "application/x-ndjson");
    assert!(a.headers().get("x-stream-id").is_none());
    assert_eq!(body_bytes(a).await, ndjson);
    let b = get(&format!("http://{}/api/generate", p.addr), &[]).await;
    assert_eq!(b.headers()["content-type"], "text/event-stream");
    assert_eq!(body_bytes(b).await, sse);
    let text = metrics_text(p.admin).await;
    for route in ["/stream", "/api/generate"] {
        let sample = format!("sse_proxy_upstream_format_mismatch_total{{route=\"{route}\"}}");
        assert_eq!(metric(&text, &sample), 1.0, "{route}: {text}");
    }
}
