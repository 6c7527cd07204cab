//! Progress events through the real proxy: invariants, priors, learning across restarts.

mod common;

use common::*;
use sse_proxy::config::{Dur, ModelPrior};
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A mock whose answer length is `?n=` tokens, 1 ms apart.
async fn sized_upstream() -> MockUpstream {
    MockUpstream::start(|parts, _| {
        let n: usize = sse_proxy::query::param(&parts.uri, "n")
            .and_then(|v| v.parse().ok())
            .unwrap_or(50);
        let tokens: Vec<String> = (0..n).map(|i| format!(" w{i}")).collect();
        Reply::sse(answer(&tokens, ms(1)))
    })
    .await
}

fn fast_progress(c: &mut sse_proxy::config::Config) {
    c.progress.every_tokens = 5;
    c.progress.min_interval = Dur(ms(0));
    c.batching.max_tokens = 4;
}

fn progress_of(events: &[Ev]) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter(|e| e.event == "progress")
        .map(Ev::json)
        .collect()
}

#[tokio::test]
async fn progress_invariants_on_random_streams() {
    let up = sized_upstream().await;
    let p = proxy(up.addr, fast_progress).await;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..12 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = 20 + seed % 200;
        let url = format!("http://{}/stream?model=m{}&n={n}", p.addr, seed % 3);
        let events = Events::new(get(&url, &[]).await).all().await;
        assert_gapless(&events, 1);
        let prog = progress_of(&events);
        assert!(prog.len() >= 2, "n={n}: {} progress events", prog.len());
        let (mut tokens, mut percent) = (0u64, 0f64);
        for pr in &prog {
            let t = pr["tokens"].as_u64().expect("tokens");
            let pc = pr["percent"].as_f64().expect("percent");
            let est = pr["estimated_total"].as_u64().expect("estimated_total");
            assert!(t >= tokens && pc >= percent, "monotone: {pr}");
            assert!((0.0..=100.0).contains(&pc), "{pr}");
            assert!(est >= t, "{pr}");
            for k in ["elapsed_ms", "tokens_per_second", "eta_ms"] {
                assert!(pr[k].is_number(), "{k} in {pr}");
            }
            assert!(["low", "medium", "high"].contains(&pr["confidence"].as_str().expect("confidence")));
            assert!(["accelerating", "steady", "slowing"].contains(&pr["trend"].as_str().expect("trend")));
            (tokens, percent) = (t, pc);
        }
        // The final progress comes right before the terminal event and is exact.
        let k = events.len();
        assert_eq!(events[k - 1].event, "done");
        assert_eq!(events[k - 2].event, "progress");
        let last = events[k - 2].json();
        assert_eq!(last["percent"], 100.0);
        assert_eq!(last["tokens"], n);
        assert_eq!(last["estimated_total"], n);
        // Progress never runs ahead of the tokens it describes.
        let mut sent = 0u64;
        for e in &events {
            match e.event.as_str() {
                "message" => sent += e.json()["batch_size"].as_u64().expect("batch_size"),
                "progress" => assert_eq!(
                    e.json()["tokens"].as_u64(),
                    Some(sent),
                    "progress ahead of tokens"
                ),
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn prior_is_used_before_history_and_learning_follows() {
    let up = sized_upstream().await;
    let p = proxy(up.addr, |c| {
        fast_progress(c);
        c.progress.models.push(ModelPrior {
            name: "llama3".into(),
            expected_tokens: 350,
            tokens_per_second: Some(40.0),
        });
    })
    .await;
    let url = format!("http://{}/stream?model=llama3&n=100", p.addr);
    let first = progress_of(&Events::new(get(&url, &[]).await).all().await);
    assert_eq!(
        first[0]["estimated_total"], 350,
        "prior before any history: {}",
        first[0]
    );
    assert_eq!(first[0]["model"], "llama3");
    for _ in 0..10 {
        Events::new(get(&url, &[]).await).all().await;
    }
    let learned = progress_of(&Events::new(get(&url, &[]).await).all().await);
    let est = learned[0]["estimated_total"].as_u64().expect("estimate");
    assert!((90..=130).contains(&est), "learned estimate near 100, got {est}");
    // Unknown model falls back to `default` with a generic, low-confidence guess.
    let other = progress_of(
        &Events::new(get(&format!("http://{}/stream?n=30", p.addr), &[]).await)
            .all()
            .await,
    );
    assert_eq!(other[0]["model"], "default");
    assert_eq!(other[0]["confidence"], "low");
}

#[tokio::test]
async fn history_survives_a_restart_through_the_state_file() {
    let dir = std::env::temp_dir().join(format!("sse-proxy-progress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let state = dir.join("progress.json");
    let _ = std::fs::remove_file(&state);
    let up = sized_upstream().await;
    let url_of = |p: &TestProxy| format!("http://{}/stream?model=x&n=80", p.addr);
    let mut p = proxy(up.addr, |c| {
        fast_progress(c);
        c.progress.state_file = Some(state.clone());
    })
    .await;
    for _ in 0..8 {
        Events::new(get(&url_of(&p), &[]).await).all().await;
    }
    p.stop().await;
    assert!(state.exists(), "state file written at shutdown");
    let p2 = proxy(up.addr, |c| {
        fast_progress(c);
        c.progress.state_file = Some(state.clone());
    })
    .await;
    let prog = progress_of(&Events::new(get(&url_of(&p2), &[]).await).all().await);
    let est = prog[0]["estimated_total"].as_u64().expect("estimate");
    assert!(
        (75..=100).contains(&est),
        "estimate learned before the restart, got {est}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn corrupt_state_file_does_not_stop_the_proxy() {
    let dir = std::env::temp_dir().join(format!("sse-proxy-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let state = dir.join("progress.json");
    std::fs::write(&state, b"{\"version\": 1, \"keys\": [tru").expect("write");
    let up = sized_upstream().await;
    let p = proxy(up.addr, |c| {
        fast_progress(c);
        c.progress.state_file = Some(state.clone());
    })
    .await;
    let events = Events::new(get(&format!("http://{}/stream?n=40", p.addr), &[]).await)
        .all()
        .await;
    assert_eq!(events.last().expect("done").event, "done");
    let prog = progress_of(&events);
    assert_eq!(prog[0]["confidence"], "low", "started with empty history");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first event of an answer whose upstream sends one token and then nothing more.
async fn first_event(progress: bool) -> Ev {
    let steps = vec![tok("one"), Step::Hang];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy(up.addr, |c| {
        c.progress.enabled = progress;
        c.progress.every_tokens = 1;
        c.progress.min_interval = Dur(ms(0));
        // No timer may release the token within the wait of `Events::next`.
        c.batching.max_delay = Dur(Duration::from_secs(3600));
        c.heartbeat.interval = Dur(Duration::from_secs(3600));
        c.upstream.idle_timeout = Dur(Duration::from_secs(3600));
    })
    .await;
    let mut evs = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await);
    evs.next().await.expect("first")
}

#[tokio::test]
async fn progress_does_not_delay_the_first_token() {
    for on in [false, true] {
        // Held back for a progress event, the token would never come: nothing follows it.
        let first = first_event(on).await;
        assert_eq!(
            first.event, "message",
            "progress={on}: the first event is the token"
        );
        assert_eq!(first.json()["content"], "one");
    }
}

#[tokio::test]
async fn estimate_error_metric_is_recorded() {
    let up = sized_upstream().await;
    let p = proxy(up.addr, fast_progress).await;
    for _ in 0..3 {
        Events::new(get(&format!("http://{}/stream?n=120&model=err", p.addr), &[]).await)
            .all()
            .await;
    }
    let m = metrics_text(p.admin).await;
    assert!(
        metric(&m, "sse_proxy_progress_estimate_error_ratio_count") >= 3.0,
        "{m}"
    );
}
