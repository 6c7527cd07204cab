//! The real binary with `server.workers = 2`: both worker threads serve, every answer is whole,
//! an answer resumes on another connection (whichever worker takes it), and SIGTERM drains both.
#![cfg(target_os = "linux")]

mod common;

use common::process::{stream_config, ProxyProcess, TempFile};
use common::*;
use std::time::Duration;

/// The worker threads of process `pid` (named `sse-proxy-w<i>`) and how often each has slept
/// and been woken (`voluntary_ctxt_switches`): a worker with no connection never wakes.
fn worker_wakeups(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !comm.starts_with("sse-proxy-w") {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("voluntary_ctxt_switches");
        out.push((comm.to_string(), switches));
    }
    out.sort();
    out
}

/// [`stream_config`] with `server.workers = 2`.
fn two_workers(upstream: std::net::SocketAddr) -> TempFile {
    let text = std::fs::read_to_string(stream_config(upstream, "").path())
        .expect("config")
        .replace("[server]\n", "[server]\nworkers = 2\n");
    assert!(text.contains("workers = 2"), "{text}");
    TempFile::new("workers.toml", &text)
}

fn id_of(e: &Ev) -> String {
    e.id.clone().expect("event id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_both_serve_every_answer_whole_and_resumes_cross_connections() {
    let tokens: Vec<String> = (0..40).map(|i| format!("w{i} ")).collect();
    let t = tokens.clone();
    let up = MockUpstream::start(move |_, _| Reply::sse(answer(&t, Duration::from_millis(2)))).await;
    let cfg = two_workers(up.addr);
    let p = ProxyProcess::start(&["--config", cfg.path()]).await;
    let before = worker_wakeups(p.pid());
    assert_eq!(before.len(), 2, "two worker threads: {before:?}");

    // Many connections at once (each its own client, so its own source port).
    let answers = (0..40).map(|_| {
        let url = format!("http://{}/stream", p.addr);
        async move { Events::new(get(&url, &[]).await).all().await }
    });
    for events in futures_util::future::join_all(answers).await {
        assert_upstream_done(&events);
        assert_eq!(text_of(&events), tokens.concat());
    }
    let after = worker_wakeups(p.pid());
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        assert!(
            a > b,
            "worker {name} served none of 40 connections: {before:?} → {after:?}"
        );
    }

    // Cut after a few events and resume on a new connection, several times over.
    for _ in 0..8 {
        let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
        let sid = stream_id_of(&resp);
        let mut all = Events::new(resp).take(2).await;
        assert_eq!(all.len(), 2);
        let last = id_of(all.last().expect("events"));
        let resp = get(
            &format!("http://{}/stream", p.addr),
            &[("last-event-id", last.as_str())],
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(stream_id_of(&resp), sid);
        all.extend(Events::new(resp).all().await);
        assert_gapless(&all, 1);
        assert_eq!(text_of(&all), tokens.concat());
        assert_eq!(all.last().expect("events").event, "done");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_streams_of_both_workers_and_exits_0() {
    let tokens: Vec<String> = (0..600).map(|i| format!("t{i} ")).collect();
    let up = MockUpstream::start(move |_, _| Reply::sse(answer(&tokens, Duration::from_millis(50)))).await;
    let cfg = two_workers(up.addr);
    let p = ProxyProcess::start(&["--config", cfg.path(), "--log-format", "json"]).await;

    let before = worker_wakeups(p.pid());
    let mut open = Vec::new();
    for _ in 0..16 {
        let mut events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await);
        assert_eq!(events.next().await.expect("thinking").event, "thinking");
        open.push(events);
    }
    let after = worker_wakeups(p.pid());
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        assert!(
            a > b,
            "worker {name} serves none of 16 streams: {before:?} → {after:?}"
        );
    }

    p.sigterm();
    // Every stream, on either worker, ends with its `shutdown` error after the 1 s grace.
    for mut events in open {
        let all = events.all().await;
        let last = all.last().expect("events");
        assert_eq!(last.event, "error", "{all:?}");
        assert_eq!(last.json()["code"], "shutdown", "{all:?}");
    }
    let (lines, log) = p.clean_exit().await;
    let finished = lines
        .iter()
        .filter(|l| l["message"] == "stream finished" && l["outcome"] == "shutdown")
        .count();
    assert_eq!(finished, 16, "{log}");
}
