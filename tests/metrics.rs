//! `/metrics` is well-formed Prometheus text and has every metric the dashboards rely on.

mod common;

use common::*;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Splits a sample line into (metric name, labels without `le`, `le`, value).
fn parse_sample(line: &str) -> (String, String, Option<String>, f64) {
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("sample without value: {line:?}"));
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
    };
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (
            n,
            rest.strip_suffix('}')
                .unwrap_or_else(|| panic!("unclosed labels: {line:?}")),
        ),
        None => (series, ""),
    };
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line:?}"
    );
    let mut le = None;
    let mut rest = Vec::new();
    // Label values here never contain commas or quotes.
    for pair in labels.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or_else(|| panic!("unquoted label in {line:?}"));
        if k == "le" {
            le = Some(v.to_string());
        } else {
            rest.push(format!("{k}={v}"));
        }
    }
    (name.to_string(), rest.join(","), le, value)
}

/// A small validator: every sample has a `# TYPE`; histograms have ascending `le` buckets ending
/// in `+Inf`, non-decreasing counts, and `_sum` and `_count` (= the `+Inf` bucket).
fn validate(text: &str) -> HashMap<String, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    // histogram -> labels -> (buckets, sum, count)
    type Series = (Vec<(f64, f64)>, Option<f64>, Option<f64>);
    let mut hist: HashMap<String, BTreeMap<String, Series>> = HashMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("TYPE line");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                "{line}"
            );
            assert!(
                types.insert(name.to_string(), ty.to_string()).is_none(),
                "duplicate TYPE: {line}"
            );
            continue;
        }
        if line.starts_with('#') {
            assert!(line.starts_with("# HELP "), "unknown comment: {line}");
            continue;
        }
        let (name, labels, le, value) = parse_sample(line);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s).filter(|base| {
                    types
                        .get(*base)
                        .is_some_and(|t| t == "histogram" || t == "summary")
                })
            })
            .unwrap_or(&name)
            .to_string();
        let ty = types
            .get(&family)
            .unwrap_or_else(|| panic!("no # TYPE before {line:?}"));
        if ty == "counter" {
            assert!(value >= 0.0, "negative counter: {line}");
        }
        if ty != "histogram" {
            continue;
        }
        let series = hist.entry(family.clone()).or_default().entry(labels).or_default();
        match name.strip_prefix(family.as_str()) {
            Some("_bucket") => {
                let le = le.unwrap_or_else(|| panic!("bucket without le: {line}"));
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or_else(|_| panic!("bad le: {line}"))
                };
                series.0.push((bound, value));
            }
            Some("_sum") => series.1 = Some(value),
            Some("_count") => series.2 = Some(value),
            _ => panic!("unexpected histogram sample: {line}"),
        }
    }
    for (name, by_labels) in &hist {
        for (labels, (buckets, sum, count)) in by_labels {
            assert!(!buckets.is_empty(), "{name}{{{labels}}}: no buckets");
            for w in buckets.windows(2) {
                assert!(
                    w[0].0 < w[1].0,
                    "{name}{{{labels}}}: le not ascending: {buckets:?}"
                );
                assert!(
                    w[0].1 <= w[1].1,
                    "{name}{{{labels}}}: bucket counts decrease: {buckets:?}"
                );
            }
            let last = buckets.last().expect("bucket");
            assert!(last.0.is_infinite(), "{name}{{{labels}}}: no +Inf bucket");
            assert!(sum.is_some(), "{name}{{{labels}}}: no _sum");
            assert_eq!(
                *count,
                Some(last.1),
                "{name}{{{labels}}}: _count differs from the +Inf bucket"
            );
        }
    }
    types
}

/// A passthrough POST whose chunked body is malformed; waits for the proxy's answer.
async fn broken_chunked_body(addr: std::net::SocketAddr) {
    let mut s = tcp::open(
        addr,
        b"POST /plain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nZZ\r\n",
    )
    .await;
    let head = tcp::read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn metrics_are_well_formed_and_complete() {
    let tokens: Vec<String> = (0..40).map(|i| format!("w{i} ")).collect();
    let t2 = tokens.clone();
    let up = MockUpstream::start(move |parts, _| match parts.uri.path() {
        "/stream" if parts.uri.query() == Some("kind=abort") => {
            Reply::sse(vec![tok("x"), Step::Sleep(ms(20)), Step::Abort])
        }
        "/stream" if parts.uri.query() == Some("kind=idle") => Reply::sse(vec![
            tok("a"),
            Step::Sleep(ms(700)),
            tok("b"),
            ev(Some("done"), "{}"),
        ]),
        "/stream" => Reply::sse(answer(&t2, ms(3))),
        _ => Reply::plain(200, "text/plain", "ok"),
    })
    .await;
    let p = proxy(up.addr, |c| c.heartbeat.interval.0 = ms(150)).await;
    let base = format!("http://{}", p.addr);
    let events = Events::new(get(&format!("{base}/stream?kind=ok"), &[]).await)
        .all()
        .await;
    assert_eq!(text_of(&events), tokens.concat());
    let events = Events::new(get(&format!("{base}/stream?kind=abort"), &[]).await)
        .all()
        .await;
    assert_eq!(events.last().expect("events").json()["code"], "upstream_reset");
    let mut idle = Events::new(get(&format!("{base}/stream?kind=idle"), &[]).await);
    let events = idle.all().await;
    assert_eq!(text_of(&events), "ab");
    assert!(String::from_utf8_lossy(&idle.raw).contains(": heartbeat"));
    assert_eq!(body_bytes(get(&format!("{base}/plain"), &[]).await).await, "ok");
    broken_chunked_body(p.addr).await;
    // A connection held open while /metrics is read.
    let _held = Events::new(get(&format!("{base}/stream?kind=idle"), &[]).await);

    let text = metrics_text(p.admin).await;
    let types = validate(&text);
    let required = [
        ("sse_proxy_connections_active", "gauge"),
        ("sse_proxy_streams_active", "gauge"),
        ("sse_proxy_streams_started_total", "counter"),
        ("sse_proxy_streams_finished_total", "counter"),
        ("sse_proxy_upstream_events_total", "counter"),
        ("sse_proxy_downstream_events_total", "counter"),
        ("sse_proxy_tokens_total", "counter"),
        ("sse_proxy_heartbeats_total", "counter"),
        ("sse_proxy_errors_total", "counter"),
        ("sse_proxy_client_errors_total", "counter"),
        ("sse_proxy_batch_tokens", "histogram"),
        ("sse_proxy_time_to_first_token_seconds", "histogram"),
        ("sse_proxy_stream_duration_seconds", "histogram"),
        ("sse_proxy_stream_tokens_per_second", "histogram"),
        ("sse_proxy_config_reloads_total", "counter"),
        ("sse_proxy_config_last_reload_success_timestamp_seconds", "gauge"),
    ];
    for (name, ty) in required {
        assert_eq!(
            types.get(name).map(String::as_str),
            Some(ty),
            "{name} missing or mistyped:\n{text}"
        );
    }
    assert!(metric(&text, "sse_proxy_connections_active") >= 1.0, "{text}");
    assert!(metric(&text, "sse_proxy_streams_started_total") >= 4.0, "{text}");
    assert!(
        metric(&text, "sse_proxy_streams_finished_total{outcome=\"completed\"}") >= 2.0,
        "{text}"
    );
    assert!(
        metric(&text, "sse_proxy_streams_finished_total{outcome=\"error\"}") >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "sse_proxy_errors_total{code=\"upstream_reset\"}") >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "sse_proxy_client_errors_total{reason=\"bad_body\"}") >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "sse_proxy_heartbeats_total") >= 1.0, "{text}");
    assert!(metric(&text, "sse_proxy_tokens_total") >= 43.0, "{text}");
    assert!(
        metric(&text, "sse_proxy_stream_tokens_per_second_count") >= 1.0,
        "{text}"
    );

    match std::process::Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => {
            use std::io::Write;
            let mut child = std::process::Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run promtool");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write metrics");
            let out = child.wait_with_output().expect("promtool output");
            assert!(
                out.status.success(),
                "promtool check metrics failed:\n{}{}\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        _ => eprintln!("promtool not on PATH: only the built-in validator ran"),
    }
}

#[tokio::test]
async fn a_backend_that_never_answers_and_one_that_goes_silent_count_apart() {
    const BEFORE_STREAM: &str = "sse_proxy_errors_total{code=\"upstream_response_timeout\"}";
    const MID_STREAM: &str = "sse_proxy_errors_total{code=\"upstream_timeout\"}";

    let mute = tcp::mute_server().await;
    let p = proxy(mute.addr, |c| c.upstream.response_timeout.0 = ms(300)).await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    assert_eq!(resp.status(), 504);
    // The JSON code is the one PROTOCOL.md gives the 504; only the metric label differs.
    assert_eq!(json_of(&body_bytes(resp).await)["error"], "upstream_timeout");
    let text = metrics_text(p.admin).await;
    assert_eq!(
        (metric(&text, BEFORE_STREAM), metric(&text, MID_STREAM)),
        (1.0, 0.0),
        "{text}"
    );

    let up = MockUpstream::start(|_, _| Reply::sse(vec![tok("a"), Step::Hang])).await;
    let p = proxy(up.addr, |c| c.upstream.idle_timeout.0 = ms(300)).await;
    let events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await)
        .all()
        .await;
    assert_eq!(events.last().expect("events").json()["code"], "upstream_timeout");
    let text = metrics_text(p.admin).await;
    assert_eq!(
        (metric(&text, BEFORE_STREAM), metric(&text, MID_STREAM)),
        (0.0, 1.0),
        "{text}"
    );
}

#[tokio::test]
async fn labelled_counters_are_exported_at_zero_from_the_start() {
    let up = MockUpstream::start(|_, _| Reply::plain(200, "text/plain", "ok")).await;
    let p = proxy(up.addr, |_| {}).await;
    let text = metrics_text(p.admin).await;
    let families: [(&str, &str, &[&str]); 12] = [
        (
            "sse_proxy_errors_total",
            "code",
            &[
                "upstream_reset",
                "upstream_timeout",
                "upstream_malformed",
                "upstream_unreachable",
                "upstream_response_timeout",
                "shutdown",
                "abandoned",
                "evicted",
                "internal",
                "upstream_lost",
                "upstream_error",
            ],
        ),
        (
            "sse_proxy_upstream_events_dropped_total",
            "reason",
            &["progress", "ping", "empty_token", "no_text"],
        ),
        (
            "sse_proxy_upstream_format_mismatch_total",
            "route",
            &["/stream", "/s/*"],
        ),
        (
            "sse_proxy_rejected_total",
            "reason",
            &[
                "max_streams",
                "max_streams_per_identity",
                "max_followers",
                "max_connections",
                "client_metrics_invalid",
                "client_metrics_rate",
            ],
        ),
        (
            "sse_proxy_client_errors_total",
            "reason",
            &["bad_body", "body_timeout", "body_too_large"],
        ),
        (
            "sse_proxy_streams_finished_total",
            "outcome",
            &["completed", "cancelled", "abandoned", "error", "shutdown", "lost"],
        ),
        (
            "sse_proxy_resumes_total",
            "result",
            &["replayed", "finished", "gone", "bad_request", "unavailable"],
        ),
        (
            "sse_proxy_store_errors_total",
            "op",
            &[
                "create", "append", "finish", "refresh", "meta", "read", "wait", "trim", "remove", "ping",
                "admit", "list", "history", "key",
            ],
        ),
        ("sse_proxy_log_evictions_total", "kind", &["finished", "running"]),
        (
            "sse_proxy_passthrough_requests_total",
            "status",
            &["2xx", "3xx", "4xx", "5xx"],
        ),
        (
            "sse_proxy_client_reports_total",
            "outcome",
            &["done", "cancelled", "error", "failed"],
        ),
        ("sse_proxy_config_reloads_total", "result", &["ok", "error"]),
    ];
    for (name, label, values) in families {
        for v in values {
            let line = format!("{name}{{{label}=\"{v}\"}} 0");
            assert!(text.lines().any(|l| l == line), "no `{line}`:\n{text}");
        }
    }
    for op in [
        "create", "append", "finish", "refresh", "meta", "read", "wait", "trim", "remove",
    ] {
        let line = format!("sse_proxy_store_op_seconds_count{{op=\"{op}\"}} 0");
        assert!(text.lines().any(|l| l == line), "no `{line}`:\n{text}");
    }
    // The health check pings from the start.
    let pings = "sse_proxy_store_op_seconds_count{op=\"ping\"} ";
    assert!(
        text.lines().any(|l| l.starts_with(pings)),
        "no `{pings}`:\n{text}"
    );
    for line in ["sse_proxy_streams_lost_total 0", "sse_proxy_store_connected 1"] {
        assert!(text.lines().any(|l| l == line), "no `{line}`:\n{text}");
    }
    validate(&text);
}

#[tokio::test]
async fn each_proxy_in_a_process_counts_its_own() {
    let up = MockUpstream::start(|_, _| Reply::sse(answer(&["a".into(), "b".into()], Duration::ZERO))).await;
    let busy = proxy(up.addr, |_| {}).await;
    let idle = proxy(up.addr, |_| {}).await;
    let events = Events::new(get(&format!("http://{}/stream", busy.addr), &[]).await)
        .all()
        .await;
    assert_eq!(text_of(&events), "ab");
    let busy = metrics_text(busy.admin).await;
    let idle = metrics_text(idle.admin).await;
    for (sample, counted) in [
        ("sse_proxy_streams_started_total", 1.0),
        ("sse_proxy_tokens_total", 2.0),
    ] {
        assert_eq!(metric(&busy, sample), counted, "{sample}:\n{busy}");
        assert_eq!(metric(&idle, sample), 0.0, "{sample}:\n{idle}");
    }
}
