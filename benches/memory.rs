//! Memory under hostile clients: many streams whose clients connect and never read, against a fast
//! upstream. The proxy runs as its own process (the release binary) so that its resident memory is
//! measured alone; this process hosts the upstream and the clients.
//!
//! Run: `cargo bench --bench memory` (prints figures; no assertions).

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const STREAMS: usize = 300;
const TOKENS: usize = 20_000;
const MAX_TOTAL_MIB: u64 = 16;

/// An upstream that streams `TOKENS` tokens as fast as it can, generated lazily.
async fn fast_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(|_req| async {
                let s = futures_util::stream::unfold(0usize, |i| async move {
                    let frame = match i {
                        i if i < TOKENS => format!("data: {{\"content\": \" token-{i:06}\"}}\r\n\r\n"),
                        i if i == TOKENS => "event: done\r\ndata: {}\r\n\r\n".to_string(),
                        _ => return None,
                    };
                    Some((Ok::<_, Infallible>(Frame::data(Bytes::from(frame))), i + 1))
                });
                let mut resp = Response::new(StreamBody::new(s).boxed());
                resp.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("text/event-stream"),
                );
                Ok::<_, Infallible>(resp)
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc));
        }
    });
    addr
}

/// Resident set size of a process in KiB (Linux).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let upstream = fast_upstream().await;
        let dir = std::env::temp_dir().join(format!("sse-proxy-memory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = dir.join("proxy.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                 [upstream]\nurl = \"http://{upstream}\"\nmax_event_bytes = \"64KiB\"\n\
                 [[stream]]\npath = \"/s/*\"\ntoken_path = \"/content\"\n\
                 [resume]\nmax_stream_bytes = \"4MiB\"\nmax_total_bytes = \"{MAX_TOTAL_MIB}MiB\"\n"
            ),
        )
        .expect("config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sse-proxy"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .envs(std::env::var("BENCH_MALLOC_ARENA_MAX").ok().map(|v| ("MALLOC_ARENA_MAX", v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sse-proxy");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("listening line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
        let addr = v["listening"].as_str().expect("listening").to_string();
        let pid = child.id();
        let baseline = rss_kib(pid);
        let started = Instant::now();
        let mut sockets = Vec::new();
        for i in 0..STREAMS {
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.set_recv_buffer_size(4096).expect("rcvbuf");
            let mut s = sock.connect(addr.parse().expect("addr")).await.expect("connect");
            s.write_all(format!("GET /s/{i} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes()).await.expect("write");
            sockets.push(s);
        }
        let mut peak = 0;
        while started.elapsed() < Duration::from_secs(20) {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let end = rss_kib(pid);
        let admin = v["admin"].as_str().expect("admin");
        let metrics = reqwest_metrics(admin).await;
        println!(
            "{STREAMS} streams x {TOKENS} tokens, clients never read: proxy RSS {:.1} MiB idle -> peak {:.1} MiB \
             over 20 s ({:.1} MiB at the end); resume.max_total_bytes {MAX_TOTAL_MIB} MiB; {}",
            baseline as f64 / 1024.0,
            peak as f64 / 1024.0,
            end as f64 / 1024.0,
            metrics,
        );
        drop(sockets);
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// A few gauges and counters from the proxy's /metrics.
async fn reqwest_metrics(admin: &str) -> String {
    use tokio::io::AsyncReadExt;
    let Ok(mut s) = tokio::net::TcpStream::connect(admin).await else {
        return "metrics unavailable".into();
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text).await;
    [
        "sse_proxy_log_bytes",
        "sse_proxy_streams_active",
        "sse_proxy_log_evictions_total{kind=\"running\"}",
    ]
    .iter()
    .filter_map(|name| text.lines().find(|l| l.starts_with(name)))
    .collect::<Vec<_>>()
    .join(", ")
}
