//! The proxy's own routes: embedded assets, the demo switch, and client metrics validation.

mod common;

use common::*;

async fn post_json(p: &TestProxy, body: &str) -> (u16, String) {
    let url = format!("http://{}/_sse-proxy/client-metrics", p.addr);
    let resp = send("POST", &url, &[("content-type", "application/json")], body).await;
    let status = resp.status().as_u16();
    (
        status,
        String::from_utf8_lossy(&body_bytes(resp).await).into_owned(),
    )
}

#[tokio::test]
async fn assets_are_served_and_the_demo_is_off_by_default() {
    let up = MockUpstream::start(|_, _| Reply::plain(200, "text/plain", "upstream")).await;
    let p = proxy(up.addr, |_| {}).await;
    for (path, ctype, needle) in [
        (
            "/_sse-proxy/client.js",
            "text/javascript; charset=utf-8",
            "SseClient",
        ),
        (
            "/_sse-proxy/sse-client.js",
            "text/javascript; charset=utf-8",
            "SseClient",
        ),
        (
            "/_sse-proxy/vue.js",
            "text/javascript; charset=utf-8",
            "useEnhancedStreaming",
        ),
    ] {
        let resp = get(&format!("http://{}{path}", p.addr), &[]).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], ctype);
        let body = body_bytes(resp).await;
        assert!(String::from_utf8_lossy(&body).contains(needle), "{path}");
    }
    let resp = get(&format!("http://{}/_sse-proxy/demo", p.addr), &[]).await;
    assert_eq!(resp.status(), 404);
    let v: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).expect("json");
    assert_eq!(v["error"], "not_found");
    assert_eq!(up.requests(), 0, "own routes never reach the backend");

    let p = proxy(up.addr, |c| c.demo.enabled = true).await;
    let resp = get(&format!("http://{}/_sse-proxy/demo", p.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(String::from_utf8_lossy(&body_bytes(resp).await).contains("/_sse-proxy/client.js"));
}

#[tokio::test]
async fn client_metrics_accepts_valid_reports_and_exports_them() {
    let up = MockUpstream::start(|_, _| Reply::plain(200, "text/plain", "")).await;
    let p = proxy(up.addr, |_| {}).await;
    let before = metrics_text(p.admin).await;
    let (status, _) = post_json(
        &p,
        r#"{"ttft_ms":180,"total_ms":5200,"reconnects":2,"reconnect_successes":1,"outcome":"done"}"#,
    )
    .await;
    assert_eq!(status, 204);
    let after = metrics_text(p.admin).await;
    let delta = |s: &str| metric(&after, s) - metric(&before, s);
    assert_eq!(delta("sse_proxy_client_reports_total{outcome=\"done\"}"), 1.0);
    assert_eq!(delta("sse_proxy_client_reconnects_total"), 2.0);
    assert_eq!(delta("sse_proxy_client_reconnect_successes_total"), 1.0);
    assert_eq!(delta("sse_proxy_client_time_to_first_token_seconds_count"), 1.0);
    assert!(after.contains("sse_proxy_client_time_to_first_token_seconds_bucket{le=\"0.25\"}"));
}

#[tokio::test]
async fn client_metrics_rejects_malformed_and_oversized_reports() {
    let up = MockUpstream::start(|_, _| Reply::plain(200, "text/plain", "")).await;
    let p = proxy(up.addr, |_| {}).await;
    let oversized = format!(r#"{{"outcome":"done","pad":"{}"}}"#, "x".repeat(4000));
    for bad in [
        "",
        "not json",
        "[]",
        r#"{"ttft_ms":10}"#,
        r#"{"outcome":"done","extra":true}"#,
        r#"{"outcome":"done","ttft_ms":-5}"#,
        r#"{"outcome":"done","total_ms":99999999999}"#,
        r#"{"outcome":"done","reconnects":1,"reconnect_successes":3}"#,
        r#"{"outcome":"maybe"}"#,
        oversized.as_str(),
    ] {
        let (status, body) = post_json(&p, bad).await;
        assert_eq!(status, 400, "{bad:.60}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json error body");
        assert_eq!(v["error"], "invalid_report");
    }
    // Not JSON at all.
    let url = format!("http://{}/_sse-proxy/client-metrics", p.addr);
    let resp = send(
        "POST",
        &url,
        &[("content-type", "text/plain")],
        r#"{"outcome":"done"}"#,
    )
    .await;
    assert_eq!(resp.status(), 400);
    // Wrong method.
    assert_eq!(get(&url, &[]).await.status(), 404);
}

#[tokio::test]
async fn client_metrics_are_rate_limited() {
    let up = MockUpstream::start(|_, _| Reply::plain(200, "text/plain", "")).await;
    let p = proxy(up.addr, |c| c.client_metrics.per_second = 3).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(post_json(&p, r#"{"outcome":"cancelled"}"#).await.0);
    }
    assert_eq!(&statuses[..3], &[204, 204, 204]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
}
