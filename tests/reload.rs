//! Live reload of the config file, on the real binary: SIGHUP and `POST /reload` on the admin
//! listener, over real sockets.

mod common;

use common::process::{run, ProxyProcess, TempFile};
use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Notify;

/// A config in front of `upstream` with both listeners on port 0, `/stream` re-framed with the
/// token at `/content`, then `extra` TOML.
fn config_text(upstream: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "1s"

[upstream]
url = "{upstream}"

[[stream]]
path = "/stream"
token_path = "/content"
{extra}"#
    )
}

/// Rewrites the config file in place.
fn rewrite(cfg: &TempFile, text: &str) {
    std::fs::write(cfg.path(), text).expect("rewrite the config file");
}

/// `POST /reload` on the admin listener: the status and the JSON body.
async fn post_reload(admin: SocketAddr) -> (u16, serde_json::Value) {
    let resp = send("POST", &format!("http://{admin}/reload"), &[], "").await;
    let status = resp.status().as_u16();
    (status, json_of(&body_bytes(resp).await))
}

/// `sse_proxy_config_reloads_total{result}` now.
async fn reloads(admin: SocketAddr, result: &str) -> f64 {
    let text = metrics_text(admin).await;
    metric(
        &text,
        &format!("sse_proxy_config_reloads_total{{result=\"{result}\"}}"),
    )
}

/// Waits until `sse_proxy_config_reloads_total{result}` reaches `n`.
async fn wait_reloads(admin: SocketAddr, result: &str, n: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while reloads(admin, result).await < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload with result {result} counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The `batch_size` of every token batch.
fn batch_sizes(events: &[Ev]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| e.json()["batch_size"].as_u64().expect("batch_size"))
        .collect()
}

const HEARTBEAT: &str = ": heartbeat\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_new_streams_and_routes_while_a_running_stream_keeps_its_settings() {
    let (release_a, release_b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (ra, rb) = (release_a.clone(), release_b.clone());
    // Each answer sends one token, waits for the test, then sends eight more at once.
    let up = MockUpstream::start(move |parts, _| {
        let who = parts.uri.query().unwrap_or_default().to_string();
        let release = if who == "who=a" { ra.clone() } else { rb.clone() };
        let mut steps = vec![ev(Some("thinking"), r#"{"status": "thinking"}"#), tok("0 ")];
        steps.push(Step::Wait(release));
        steps.extend((1..9).map(|i| tok(&format!("{i} "))));
        steps.push(ev(Some("done"), r#"{"status": "complete"}"#));
        if parts.uri.path() == "/other" {
            return Reply::sse(answer(&["x".into(), "y".into()], std::time::Duration::ZERO));
        }
        Reply::sse(steps)
    })
    .await;
    let upstream = format!("http://{}", up.addr);
    let before = "[limits]\nmax_streams = 1\n\
                  [batching]\nmax_tokens = 1\n\
                  [heartbeat]\ninterval = \"1h\"\n\
                  [progress]\nenabled = false\n";
    let cfg = TempFile::new("proxy.toml", &config_text(&upstream, before));
    let p = ProxyProcess::start(&["--config", cfg.path()]).await;

    let mut a = Events::new(get(&format!("http://{}/stream?who=a", p.addr), &[]).await);
    assert_eq!(a.next().await.expect("thinking").event, "thinking");
    assert_eq!(a.next().await.expect("first token").event, "message");
    let full = get(&format!("http://{}/stream?who=b", p.addr), &[]).await;
    assert_eq!(full.status(), 429, "limits.max_streams = 1 before the reload");
    let other = get(&format!("http://{}/other", p.addr), &[]).await;
    assert!(
        other.headers().get("x-stream-id").is_none(),
        "/other passes through before the reload"
    );
    body_bytes(other).await;

    let after = "[limits]\nmax_streams = 2\n\
                 [batching]\nmax_tokens = 4\nmax_delay = \"1h\"\nadaptive = false\n\
                 [heartbeat]\ninterval = \"50ms\"\n\
                 [progress]\nenabled = true\nevery_tokens = 1\nmin_interval = \"0s\"\n\
                 [[stream]]\npath = \"/other\"\ntoken_path = \"/content\"\n";
    rewrite(&cfg, &config_text(&upstream, after));
    p.sighup();
    wait_reloads(p.admin, "ok", 1.0).await;

    let b = get(&format!("http://{}/stream?who=b", p.addr), &[]).await;
    assert_eq!(b.status(), 200, "limits.max_streams = 2 after the reload");
    let mut b = Events::new(b);
    assert_eq!(b.next().await.expect("thinking").event, "thinking");
    // B, idle at its backend's pause, gets heartbeats every 50ms; A, idle longer, keeps its 1h.
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&metrics_text(p.admin).await, "sse_proxy_heartbeats_total") < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "no heartbeat");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let third = get(&format!("http://{}/stream?who=c", p.addr), &[]).await;
    assert_eq!(third.status(), 429, "limits.max_streams = 2 holds");

    release_a.notify_one();
    release_b.notify_one();
    let a_rest = a.all().await;
    let b_rest = b.all().await;
    for rest in [&a_rest, &b_rest] {
        let done = rest.last().expect("events");
        assert_eq!(
            (done.event.as_str(), done.json()["total_tokens"].as_u64()),
            ("done", Some(9))
        );
    }
    assert_eq!(
        batch_sizes(&a_rest),
        [1; 8],
        "the running stream keeps max_tokens = 1: {a_rest:?}"
    );
    assert!(a_rest.iter().all(|e| e.event != "progress"), "{a_rest:?}");
    assert!(!String::from_utf8_lossy(&a.raw).contains(HEARTBEAT));
    let b_sizes = batch_sizes(&b_rest);
    assert_eq!(b_sizes.iter().sum::<u64>(), 9, "{b_rest:?}");
    assert!(
        b_sizes.iter().all(|n| *n <= 4) && b_sizes.iter().any(|n| *n > 1),
        "a new stream batches up to 4: {b_sizes:?}"
    );
    assert!(b_rest.iter().any(|e| e.event == "progress"), "{b_rest:?}");
    assert!(String::from_utf8_lossy(&b.raw).contains(HEARTBEAT));

    let other = get(&format!("http://{}/other", p.addr), &[]).await;
    assert!(
        other.headers().get("x-stream-id").is_some(),
        "/other is a stream route after the reload"
    );
    let events = Events::new(other).all().await;
    assert_eq!(text_of(&events), "xy");
    assert!(events.iter().all(|e| e.id.is_some()), "{events:?}");
    assert_eq!(reloads(p.admin, "error").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_refused_with_its_location_and_the_running_config_goes_on() {
    let up = MockUpstream::start(|_, _| {
        let tokens: Vec<String> = (0..5).map(|i| format!("{i} ")).collect();
        Reply::sse(answer(&tokens, std::time::Duration::ZERO))
    })
    .await;
    let upstream = format!("http://{}", up.addr);
    let good = config_text(&upstream, "[batching]\nmax_tokens = 1\n");
    let cfg = TempFile::new("proxy.toml", &good);
    let p = ProxyProcess::start(&["--config", cfg.path(), "--log-format", "json"]).await;
    let text = metrics_text(p.admin).await;
    for result in ["ok", "error"] {
        let line = format!("sse_proxy_config_reloads_total{{result=\"{result}\"}} 0");
        assert!(text.lines().any(|l| l == line), "no `{line}`:\n{text}");
    }

    let bad = config_text(&upstream, "[batching]\nmax_tokens = 4\nmax_tokenz = 2\n");
    rewrite(&cfg, &bad);
    // The message `sse-proxy check` gives for the same file, as at start.
    let (code, _, stderr) = run(&["check", "--config", cfg.path()]);
    assert_eq!(code, 64, "{stderr}");
    let expected = stderr
        .trim()
        .strip_prefix("error: ")
        .expect("an error line")
        .to_string();
    let line = bad
        .lines()
        .position(|l| l.starts_with("max_tokenz"))
        .expect("line")
        + 1;
    assert!(
        expected.starts_with(&format!("{}:{line}:1: ", cfg.path())),
        "{expected}"
    );

    let (status, v) = post_reload(p.admin).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["result"], "error");
    assert_eq!(v["error"], expected.as_str());
    p.sighup();
    wait_reloads(p.admin, "error", 2.0).await;
    assert_eq!(reloads(p.admin, "ok").await, 0.0);

    let events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await)
        .all()
        .await;
    assert_upstream_done(&events);
    assert_eq!(
        batch_sizes(&events),
        [1; 5],
        "the running max_tokens = 1 goes on: {events:?}"
    );

    // GET and the other methods are refused.
    let resp = get(&format!("http://{}/reload", p.admin), &[]).await;
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    assert_eq!(json_of(&body_bytes(resp).await)["error"], "method_not_allowed");

    p.sigterm();
    let (st, log) = p.exit().await;
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    let refused: Vec<_> = process::json_lines(&log)
        .into_iter()
        .filter(|l| l["message"] == "config reload refused; the running config goes on")
        .collect();
    assert_eq!(refused.len(), 2, "{log}");
    for l in refused {
        assert_eq!(l["level"], "ERROR", "{l}");
        assert_eq!(l["error"], expected.as_str(), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_listen_addresses_are_reported_and_the_command_line_overrides_are_kept() {
    let up =
        MockUpstream::start(|_, _| Reply::sse(answer(&["a".into(), "b".into()], std::time::Duration::ZERO)))
            .await;
    // The file's backend is nobody: `--upstream` overrides it, at start and at every reload.
    let cfg = TempFile::new("proxy.toml", &config_text("http://127.0.0.1:9", ""));
    let upstream = format!("http://{}", up.addr);
    let p = ProxyProcess::start(&["--config", cfg.path(), "--upstream", &upstream]).await;

    let moved = config_text("http://127.0.0.1:9", "[batching]\nmax_tokens = 3\n")
        .replace(
            "admin_listen = \"127.0.0.1:0\"",
            "admin_listen = \"127.0.0.1:19091\"",
        )
        .replace("\nlisten = \"127.0.0.1:0\"", "\nlisten = \"127.0.0.1:18081\"");
    assert!(moved.contains("19091") && moved.contains("18081"), "{moved}");
    rewrite(&cfg, &moved);
    let (status, v) = post_reload(p.admin).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"], "ok");
    assert_eq!(
        v["restart_required"],
        serde_json::json!(["server.listen", "server.admin_listen"])
    );
    assert_eq!(v["changed"], serde_json::json!(["batching"]));
    let warning = v["warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("server.listen, server.admin_listen") && warning.contains("restart"),
        "{warning}"
    );

    // Still on the addresses it started with, still in front of the --upstream backend.
    let events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await)
        .all()
        .await;
    assert_eq!(text_of(&events), "ab");
    assert_upstream_done(&events);

    p.sigterm();
    let (st, log) = p.exit().await;
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("cannot change while running")
            && l.contains("server.listen")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_has_no_file_to_reload_and_says_so_without_stopping() {
    let p = ProxyProcess::start(&["demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]).await;
    p.sighup();
    wait_reloads(p.admin, "error", 1.0).await;
    let (status, v) = post_reload(p.admin).await;
    assert_eq!((status, &v["result"]), (409, &"error".into()), "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("without a config file")),
        "{v}"
    );
    let resp = get(&format!("http://{}/healthz", p.admin), &[]).await;
    assert_eq!(resp.status(), 200, "still running after SIGHUP");
}
