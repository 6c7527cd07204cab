//! Silent sockets against `max_connections`: how long a real client waits for its answer while
//! many connections that never send a byte are open. The proxy runs as its own process (the
//! release binary) with `max_connections = 100`; this process opens the silent sockets, then
//! sends one real request.
//!
//! Run: `cargo bench --bench silent_sockets` (prints figures; no assertions).
//! `BENCH_SILENT` (default 1000) sets the number of silent sockets, `BENCH_HEADER_READ_TIMEOUT`
//! (default: unset, the proxy's own default of 10s) the proxy's `server.header_read_timeout`,
//! `BENCH_SETTLE_MS` (default 500) the pause between the proxy being full and the real request.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_CONNECTIONS: usize = 100;
const GIVE_UP: Duration = Duration::from_secs(600);

/// A backend that answers every request with a short text.
async fn backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                    .await;
            });
        }
    });
    addr
}

/// Sends one request on a new connection and returns how long the whole answer took.
async fn real_request(addr: &str) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /real HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "unexpected answer: {text:?}");
    started.elapsed()
}

fn main() {
    let silent: usize = std::env::var("BENCH_SILENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let header_read_timeout = std::env::var("BENCH_HEADER_READ_TIMEOUT").ok();
    let settle_ms: u64 = std::env::var("BENCH_SETTLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let upstream = backend().await;
        let dir = std::env::temp_dir().join(format!("sse-proxy-silent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = dir.join("proxy.toml");
        let timeout_line = header_read_timeout
            .as_deref()
            .map(|t| format!("header_read_timeout = \"{t}\"\n"))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                 max_connections = {MAX_CONNECTIONS}\n{timeout_line}\
                 [upstream]\nurl = \"http://{upstream}\"\n"
            ),
        )
        .expect("config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sse-proxy"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sse-proxy");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
        let addr = v["listening"].as_str().expect("listening").to_string();

        let alone = real_request(&addr).await;
        // The silent sockets connect all at once, as an attacker's would; past the listen backlog
        // their connects wait in SYN-SENT, retried by the kernel.
        let connected = Arc::new(AtomicUsize::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let sockets: Vec<_> = (0..silent)
            .map(|_| {
                let (addr, connected, stop) = (addr.clone(), connected.clone(), stop.clone());
                tokio::spawn(async move {
                    if let Ok(s) = TcpStream::connect(&addr).await {
                        connected.fetch_add(1, Ordering::SeqCst);
                        stop.cancelled().await;
                        drop(s);
                    }
                })
            })
            .collect();
        let launched = Instant::now();
        while connected.load(Ordering::SeqCst) < silent.min(MAX_CONNECTIONS) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(settle_ms)).await;
        let open_then = connected.load(Ordering::SeqCst);
        match tokio::time::timeout(GIVE_UP, real_request(&addr)).await {
            Ok(waited) => println!(
                "{silent} silent sockets ({open_then} connected {:.1} s after launch, when the real request \
                 started), max_connections = {MAX_CONNECTIONS}, header_read_timeout = {}: the real request \
                 took {:.3} s (alone: {:.1} ms)",
                launched.elapsed().as_secs_f64() - waited.as_secs_f64(),
                header_read_timeout.as_deref().unwrap_or("10s (the default)"),
                waited.as_secs_f64(),
                alone.as_secs_f64() * 1000.0,
            ),
            Err(_) => {
                println!("{silent} silent sockets: the real request was not answered within {GIVE_UP:?}")
            }
        }
        stop.cancel();
        for s in sockets {
            s.abort();
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    });
}
