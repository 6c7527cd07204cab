//! Measures what the issues put numbers on: the downstream/upstream event ratio at 50 tokens/s with
//! the default config, the time to first token added by the proxy, and re-framing throughput.
//!
//! Run: `cargo bench --bench stream` (prints a table; no assertions).

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use sse_proxy::config::Config;
use std::time::{Duration, Instant};

fn default_config(upstream: std::net::SocketAddr) -> Config {
    // The shipped proxy.toml, pointed at the mock and on free ports.
    let mut cfg = Config::from_toml_str(include_str!("../proxy.toml"), "proxy.toml").expect("proxy.toml");
    cfg.upstream.url = toml::Value::String(format!("http://{upstream}"))
        .try_into()
        .expect("url");
    cfg.server.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.server.admin_listen = "127.0.0.1:0".parse().expect("addr");
    cfg
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn ratio_at_50_tps() {
    let tokens: Vec<String> = (0..250).map(|i| format!(" tok{i}")).collect();
    let t2 = tokens.clone();
    let up = MockUpstream::start(move |_, _| Reply::sse(answer(&t2, Duration::from_millis(20)))).await;
    let p = proxy_with(default_config(up.addr)).await;
    let streams = 4;
    let mut handles = Vec::new();
    for _ in 0..streams {
        let url = format!("http://{}/api/question/stream?model=llama3", p.addr);
        handles.push(tokio::spawn(async move {
            Events::new(get(&url, &[]).await).all().await
        }));
    }
    let (mut down, mut batches) = (0usize, 0usize);
    for h in handles {
        let events = h.await.expect("join");
        assert_eq!(text_of(&events), tokens.concat());
        down += events.len();
        batches += events.iter().filter(|e| e.event == "message").count();
    }
    let up_events = streams * (tokens.len() + 2);
    println!(
        "50 tokens/s, default config: {up_events} upstream events -> {down} downstream events \
         (ratio {:.3}; token batches only: {batches}, ratio {:.3}; {:.1} tokens per batch)",
        down as f64 / up_events as f64,
        batches as f64 / (streams * tokens.len()) as f64,
        (streams * tokens.len()) as f64 / batches as f64,
    );
}

async fn first_token(url: &str) -> f64 {
    let t0 = Instant::now();
    let mut evs = Events::new(get(url, &[]).await);
    loop {
        let e = evs.next().await.expect("event");
        if e.event == "message" {
            return t0.elapsed().as_secs_f64() * 1000.0;
        }
    }
}

async fn added_ttft() {
    let steps = vec![tok("first"), tok("second"), ev(Some("done"), "{}")];
    let up = MockUpstream::start(move |_, _| Reply::sse(steps.clone())).await;
    let p = proxy_with(default_config(up.addr)).await;
    let (direct_url, proxied_url) = (
        format!("http://{}/api/question/stream", up.addr),
        format!("http://{}/api/question/stream", p.addr),
    );
    let n = 300;
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        first_token(&direct_url).await;
        first_token(&proxied_url).await;
    }
    for _ in 0..n {
        direct.push(first_token(&direct_url).await);
        proxied.push(first_token(&proxied_url).await);
    }
    let (d50, p50) = (percentile(&mut direct, 0.5), percentile(&mut proxied, 0.5));
    let (d99, p99) = (percentile(&mut direct, 0.99), percentile(&mut proxied, 0.99));
    println!(
        "time to first token over {n} requests (ms): direct p50 {d50:.3} p99 {d99:.3}; through the proxy p50 {p50:.3} p99 {p99:.3}; added p50 {:.3} ms",
        p50 - d50
    );
}

async fn throughput() {
    let n = 200_000;
    let tokens: Vec<String> = (0..n).map(|i| format!(" t{i}")).collect();
    let t2 = tokens.clone();
    let up = MockUpstream::start(move |_, _| Reply::sse(answer(&t2, Duration::ZERO))).await;
    let p = proxy_with(default_config(up.addr)).await;
    let t0 = Instant::now();
    let events = Events::new(get(&format!("http://{}/api/question/stream", p.addr), &[]).await)
        .all()
        .await;
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(text_of(&events).len(), tokens.concat().len());
    println!(
        "re-framing throughput, one stream as fast as the mock sends: {n} tokens in {secs:.2} s = {:.0} tokens/s ({} downstream events)",
        n as f64 / secs,
        events.len()
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        ratio_at_50_tps().await;
        added_ttft().await;
        throughput().await;
    });
}
