//! A normal shutdown of the real binary: streams end with their `shutdown` error, nothing is
//! logged as a failure, the process exits 0.

mod common;

use common::process::{stream_config, ProxyProcess};
use common::*;
use std::time::Duration;

/// The admin `/streams` list.
async fn streams(admin: std::net::SocketAddr) -> serde_json::Value {
    json_of(&body_bytes(get(&format!("http://{admin}/streams"), &[]).await).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_detached_stream_logs_no_error_and_exits_0() {
    let tokens: Vec<String> = (0..600).map(|i| format!("t{i} ")).collect();
    let up = MockUpstream::start(move |_, _| Reply::sse(answer(&tokens, Duration::from_millis(50)))).await;
    let cfg = stream_config(up.addr, "");
    let p = ProxyProcess::start(&["--config", cfg.path(), "--log-format", "json"]).await;

    let mut events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await);
    assert_eq!(events.next().await.expect("thinking").event, "thinking");
    assert_eq!(events.next().await.expect("a batch").event, "message");
    drop(events);
    let admin = p.admin;
    let mut detached = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !detached && tokio::time::Instant::now() < deadline {
        detached = streams(admin).await["streams"][0]["state"] == "detached";
        if !detached {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(detached, "the stream runs on with no client attached");

    p.sigterm();
    let (lines, log) = p.clean_exit().await;
    let finished: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "stream finished")
        .collect();
    assert_eq!(finished.len(), 1, "the reader ended its stream:\n{log}");
    assert_eq!(finished[0]["outcome"], "shutdown", "{log}");
}
