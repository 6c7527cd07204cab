//! The real `sse-proxy` binary: `check`, `demo`, overrides, JSON logs, graceful shutdown.

mod common;

use common::process::{json_lines, run, stream_config, ProxyProcess, TempFile};
use common::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn manifest_path(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn check(config: &str) -> (i32, String, String) {
    run(&["check", "--config", config])
}

#[test]
fn check_accepts_the_shipped_config() {
    let (code, out, err) = check(manifest_path("proxy.toml").to_str().expect("utf8"));
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn check_rejects_bad_configs_with_location_and_help() {
    let up = "[upstream]\nurl = \"http://127.0.0.1:8000\"\n";
    let cases = [
        (
            "unknown-key",
            format!("{up}bogus = 1\n"),
            (3, 1),
            "expected one of `url`",
        ),
        (
            "bad-duration",
            format!("{up}idle_timeout = \"10 parsecs\"\n"),
            (3, 16),
            "\"250ms\"",
        ),
        (
            "bad-url",
            "[upstream]\nurl = \"https://x.example\"\n".to_string(),
            (2, 7),
            "http://HOST:PORT",
        ),
        (
            "no-upstream",
            "[server]\nshutdown_grace = \"1s\"\n".to_string(),
            (1, 1),
            "url = \"http://HOST:PORT\"",
        ),
        (
            "bad-size",
            format!("{up}max_event_bytes = \"1 MB\"\n"),
            (3, 19),
            "\"8KiB\"",
        ),
        (
            "unknown-table",
            format!("{up}[bogus]\nx = 1\n"),
            (3, 2),
            "expected one of",
        ),
        (
            "zero-response-timeout",
            format!("{up}response_timeout = \"0s\"\n"),
            (3, 1),
            "upstream.response_timeout must be above 0",
        ),
        (
            "zero-header-read-timeout",
            format!("{up}[server]\nheader_read_timeout = \"0ms\"\n"),
            (4, 1),
            "server.header_read_timeout must be above 0",
        ),
        (
            "zero-retention",
            format!("{up}[resume]\nretention = \"0s\"\n"),
            (4, 1),
            "resume.retention must be above 0",
        ),
        (
            "same-listeners",
            format!("{up}[server]\nlisten = \"127.0.0.1:7000\"\nadmin_listen = \"127.0.0.1:7000\"\n"),
            (5, 1),
            "server.admin_listen",
        ),
    ];
    for (name, text, (line, col), help) in cases {
        let f = TempFile::new(&format!("{name}.toml"), &text);
        let (code, out, err) = check(f.path());
        assert_eq!(code, 64, "{name}: stdout {out} stderr {err}");
        let prefix = format!("{}:{line}:{col}: ", f.path());
        assert!(err.contains(&prefix), "{name}: expected {prefix:?} in {err:?}");
        assert!(err.contains(help), "{name}: expected {help:?} in {err:?}");
    }
    let mut latin1 = format!("{up}# caf").into_bytes();
    latin1.extend_from_slice(b"\xE9\n");
    let f = TempFile::with_bytes("latin1.toml", &latin1);
    let (code, _, err) = check(f.path());
    assert_eq!(code, 64, "{err}");
    let prefix = format!("{}:3:6: ", f.path());
    assert!(
        err.contains(&prefix) && err.contains("UTF-8"),
        "expected {prefix:?} in {err:?}"
    );
    let missing = manifest_path("does-not-exist.toml");
    let (code, _, err) = check(missing.to_str().expect("utf8"));
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("does-not-exist.toml") && err.contains("--config"),
        "{err}"
    );
}

#[test]
fn override_flags_work_before_and_after_the_subcommand() {
    let f = TempFile::new("overrides.toml", "[upstream]\nurl = \"http://127.0.0.1:8000\"\n");
    let good = [
        vec!["check", "--config", f.path(), "--upstream", "http://127.0.0.1:9"],
        vec!["--upstream", "http://127.0.0.1:9", "check", "--config", f.path()],
        vec!["--config", f.path(), "check", "--log-format", "json"],
        vec![
            "check",
            "--listen",
            "127.0.0.1:1",
            "--admin-listen",
            "127.0.0.1:2",
            "--config",
            f.path(),
            "--upstream",
            "http://127.0.0.1:9/base",
        ],
    ];
    for args in good {
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{args:?}: stdout {out} stderr {err}");
        assert!(out.contains("ok"), "{args:?}: {out}");
    }
    // The override is applied, not merely accepted: a bad --upstream fails the check.
    for args in [
        vec!["check", "--config", f.path(), "--upstream", "https://x.example"],
        vec!["--upstream", "https://x.example", "check", "--config", f.path()],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(
            err.contains("--upstream:1:1") && err.contains("http://HOST:PORT"),
            "{args:?}: {err}"
        );
    }
    // Overridden listeners are checked like written ones (the admin default is 127.0.0.1:9090).
    let (code, _, err) = run(&["check", "--config", f.path(), "--listen", "127.0.0.1:9090"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("--listen:1:1") && err.contains("server.admin_listen"),
        "{err}"
    );
    let (code, _, err) = run(&["check", "--config", f.path(), "--workers", "0"]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("--workers:1:1") && err.contains("server.workers must be between 1 and 1024"),
        "{err}"
    );
    // The demo runs its own backend: a config or backend given to it is refused, not ignored.
    for args in [
        vec!["demo", "--upstream", "http://127.0.0.1:9"],
        vec!["--config", f.path(), "demo"],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(err.contains("demo"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_stream_page_client_and_admin() {
    let p = ProxyProcess::start(&["demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]).await;
    // A short, quick answer (the defaults think for 1 s and answer for about 10 s).
    let ask = "question=hi&tokens=40&rate=200&think_ms=100";
    let resp = get(&format!("http://{}/api/question/text?{ask}", p.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).expect("json");
    let expected = v["answer"].as_str().expect("answer").to_string();

    let resp = get(
        &format!("http://{}/api/question/stream?{ask}&model=demo", p.addr),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = Events::new(resp).all().await;
    assert_gapless(&events, 1);
    assert_eq!(events[0].event, "thinking");
    assert!(events[0].json()["text"].is_string(), "{:?}", events[0]);
    assert_eq!(events[1].event, "sources");
    assert!(events[1].json()["sources"].is_array(), "{:?}", events[1]);
    assert_eq!(text_of(&events), expected);
    assert!(events
        .iter()
        .any(|e| e.event == "message" && e.json()["batch_size"].as_u64() > Some(0)));
    let progress: Vec<_> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| e.json())
        .collect();
    assert!(!progress.is_empty(), "no progress events");
    assert_eq!(
        progress.last().expect("progress")["percent"].as_f64(),
        Some(100.0)
    );
    assert!(progress.iter().all(|p| p["model"] == "demo"));
    assert_eq!(events.last().expect("events").event, "done");

    let resp = get(&format!("http://{}/_sse-proxy/demo", p.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
    let html = String::from_utf8(body_bytes(resp).await.to_vec()).expect("utf8");
    assert!(html.to_ascii_lowercase().contains("<html") && html.contains("/_sse-proxy/client.js"));
    let resp = get(&format!("http://{}/_sse-proxy/client.js", p.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/javascript"));
    assert!(!body_bytes(resp).await.is_empty());

    let m = metrics_text(p.admin).await;
    assert!(metric(&m, "sse_proxy_streams_started_total") >= 1.0, "{m}");
    for (path, status) in [("/healthz", 200), ("/readyz", 200)] {
        let resp = get(&format!("http://{}{path}", p.admin), &[]).await;
        assert_eq!(resp.status(), status, "{path}");
    }
}

/// A config for the binary in front of a mock: `/stream` re-framed, 1 s shutdown grace, 500 ms
/// heartbeats.
fn temp_config(upstream: SocketAddr) -> TempFile {
    stream_config(upstream, "\n[heartbeat]\ninterval = \"500ms\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_overrides_the_config() {
    let up = MockUpstream::start(|parts, _| match parts.uri.path() {
        "/api/question/stream" => Reply::sse(answer(&["over".into(), "ride".into()], Duration::ZERO)),
        _ => Reply::plain(200, "text/plain", "passthrough"),
    })
    .await;
    let config = manifest_path("proxy.toml");
    let upstream = format!("http://{}", up.addr);
    let p = ProxyProcess::start(&[
        "--config",
        config.to_str().expect("utf8"),
        "--upstream",
        &upstream,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .await;
    assert_ne!(p.addr.port(), 8080);
    assert_ne!(p.admin.port(), 9090);
    let events = Events::new(get(&format!("http://{}/api/question/stream?question=x", p.addr), &[]).await)
        .all()
        .await;
    assert_eq!(text_of(&events), "override");
    assert_eq!(events.last().expect("events").event, "done");
    let resp = get(&format!("http://{}/anything", p.addr), &[]).await;
    assert_eq!(body_bytes(resp).await, "passthrough");
    assert_eq!(up.requests(), 2);
}

/// Every key named `key` anywhere in `v`.
fn find_key<'a>(v: &'a serde_json::Value, key: &str, out: &mut Vec<&'a serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    out.push(x);
                }
                find_key(x, key, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| find_key(x, key, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_stream_id() {
    let up = MockUpstream::start(|_, _| Reply::sse(answer(&["a".into(), "b".into()], Duration::ZERO))).await;
    let cfg = temp_config(up.addr);
    let p = ProxyProcess::start(&["--config", cfg.path(), "--log-format", "json"]).await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    let id = resp.headers()["x-stream-id"].to_str().expect("ascii").to_string();
    let events = Events::new(resp).all().await;
    assert_eq!(text_of(&events), "ab");
    p.sigterm();
    let (st, err) = p.exit().await;
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    let lines = json_lines(&err);
    assert!(lines.len() >= 3, "{err}");
    let stream_lines: Vec<_> = lines
        .iter()
        .filter(|l| matches!(l["message"].as_str(), Some("stream started" | "stream finished")))
        .collect();
    assert_eq!(stream_lines.len(), 2, "{err}");
    for l in stream_lines {
        let mut ids = Vec::new();
        find_key(l, "stream_id", &mut ids);
        assert!(
            ids.iter().any(|v| v.as_str() == Some(id.as_str())),
            "no stream_id {id} in {l}"
        );
        assert!(l["level"].is_string() && l["timestamp"].is_string(), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_ends_long_streams_with_shutdown() {
    let up = MockUpstream::start(|parts, _| {
        let long = parts.uri.query() == Some("kind=long");
        let (n, gap) = if long { (600, 100) } else { (6, 50) };
        let tokens: Vec<String> = (0..n).map(|i| format!("t{i} ")).collect();
        Reply::sse(answer(&tokens, Duration::from_millis(gap)))
    })
    .await;
    let cfg = temp_config(up.addr);
    let p = ProxyProcess::start(&["--config", cfg.path()]).await;
    let mut long = Events::new(get(&format!("http://{}/stream?kind=long", p.addr), &[]).await);
    assert_eq!(long.next().await.expect("thinking").event, "thinking");
    assert_eq!(long.next().await.expect("first batch").event, "message");
    let mut short = Events::new(get(&format!("http://{}/stream?kind=short", p.addr), &[]).await);
    assert_eq!(short.next().await.expect("thinking").event, "thinking");

    let t0 = Instant::now();
    p.sigterm();
    let short_task = tokio::spawn(async move { short.all().await });
    let long_task = tokio::spawn(async move { long.all().await });

    // New connections are refused once draining starts.
    let mut refused = false;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(p.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused,
        "the main listener still accepts connections after SIGTERM"
    );
    // The admin listener stays up while draining and says not ready (its answer also shows the
    // process was still running, draining, when the main listener refused).
    let resp = get(&format!("http://{}/readyz", p.admin), &[]).await;
    assert_eq!(resp.status(), 503);

    let short_events = tokio::time::timeout(WAIT, short_task)
        .await
        .expect("short in time")
        .expect("join");
    let last = short_events.last().expect("short events");
    assert_eq!(last.event, "done", "{short_events:?}");
    assert_eq!(
        text_of(&short_events[..]),
        (0..6).map(|i| format!("t{i} ")).collect::<String>()
    );

    let long_events = tokio::time::timeout(WAIT, long_task)
        .await
        .expect("long in time")
        .expect("join");
    let ended = t0.elapsed();
    let last = long_events.last().expect("long events");
    assert_eq!(last.event, "error", "{last:?}");
    assert_eq!(last.json()["code"], "shutdown");
    assert_eq!(last.json()["recoverable"], true);
    assert!(
        ended >= Duration::from_millis(900),
        "ended {ended:?} after SIGTERM, before the 1 s grace"
    );
    assert!(!long_events.iter().any(|e| e.event == "done"));

    let (st, _) = p.exit().await;
    assert!(st.is_some_and(|s| s.success()), "exit status {st:?}");
}
