//! A raw-TCP mock upstream: it writes exactly the bytes a test scripts, framing included, so tests
//! can send what no well-behaved HTTP server would (a body cut mid-event, a chunked body without
//! its last chunk, a reset, bytes one at a time, an error page inside a body).

use super::tcp;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request head (and body) the mock reads.
const MAX_REQUEST: usize = 1 << 20;

/// One step of a raw answer.
#[derive(Clone, Debug)]
pub enum Raw {
    /// Write these bytes.
    Bytes(Bytes),
    /// Write these bytes one at a time, waiting this long after each.
    Drip(Bytes, Duration),
    /// Wait.
    Sleep(Duration),
    /// Close the connection with a FIN (the end of a close-delimited body).
    Close,
    /// Close the connection with a TCP reset.
    Reset,
    /// Send nothing more and keep the connection open.
    Hang,
}

/// How the scripted body is framed.
#[derive(Clone, Copy, Debug)]
pub enum Framing {
    /// No length, no chunks: the body ends when the connection closes.
    Close,
    /// `Transfer-Encoding: chunked` (the script writes the chunks, see [`chunk`]).
    Chunked,
    /// `Content-Length: n`.
    Length(usize),
}

/// A `200 text/event-stream` response head with `framing` and `extra` headers. Every answer says
/// `Connection: close`, so the proxy never reuses a connection the script breaks.
pub fn sse_head(framing: Framing, extra: &[(&str, &str)]) -> Raw {
    head(200, "text/event-stream", framing, extra)
}

/// A response head.
pub fn head(status: u16, content_type: &str, framing: Framing, extra: &[(&str, &str)]) -> Raw {
    let mut h = format!("HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nConnection: close\r\n");
    match framing {
        Framing::Close => {}
        Framing::Chunked => h.push_str("Transfer-Encoding: chunked\r\n"),
        Framing::Length(n) => h.push_str(&format!("Content-Length: {n}\r\n")),
    }
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    Raw::Bytes(Bytes::from(h))
}

/// `b` as one chunk of a chunked body.
pub fn chunk(b: &[u8]) -> Raw {
    let mut out = format!("{:x}\r\n", b.len()).into_bytes();
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
    Raw::Bytes(Bytes::from(out))
}

/// The last chunk of a chunked body.
pub fn last_chunk() -> Raw {
    Raw::Bytes(Bytes::from_static(b"0\r\n\r\n"))
}

/// A running raw mock upstream; stops when dropped.
pub struct RawUpstream {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    _server: tcp::Server,
}

impl RawUpstream {
    /// Starts a mock that answers its `n`-th request (from 0) with `script(n)`.
    pub async fn start<F>(script: F) -> RawUpstream
    where
        F: Fn(usize) -> Vec<Raw> + Send + Sync + 'static,
    {
        let requests = Arc::new(AtomicUsize::new(0));
        let (n, script) = (requests.clone(), Arc::new(script));
        let server = tcp::Server::start(move |tcp, stop| {
            let (n, script) = (n.clone(), script.clone());
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = serve(tcp, n, script) => {}
                }
            }
        })
        .await;
        RawUpstream {
            addr: server.addr,
            requests,
            _server: server,
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn serve<F>(mut tcp: TcpStream, n: Arc<AtomicUsize>, script: Arc<F>)
where
    F: Fn(usize) -> Vec<Raw>,
{
    let _ = tcp.set_nodelay(true);
    if read_request(&mut tcp).await.is_none() {
        return;
    }
    let steps = script(n.fetch_add(1, Ordering::SeqCst));
    for step in steps {
        let ok = match step {
            Raw::Bytes(b) => tcp.write_all(&b).await.is_ok(),
            Raw::Drip(b, every) => drip(&mut tcp, &b, every).await,
            Raw::Sleep(d) => {
                tokio::time::sleep(d).await;
                true
            }
            Raw::Close => break,
            Raw::Reset => {
                let _ = tcp.set_zero_linger();
                return;
            }
            Raw::Hang => {
                // Keep the connection until the peer closes it (or the mock stops).
                let mut buf = [0u8; 1024];
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                return;
            }
        };
        if !ok {
            return;
        }
    }
    let _ = tcp.shutdown().await;
}

async fn drip(tcp: &mut TcpStream, b: &[u8], every: Duration) -> bool {
    for byte in b {
        if tcp.write_all(std::slice::from_ref(byte)).await.is_err() {
            return false;
        }
        tokio::time::sleep(every).await;
    }
    true
}

/// Reads one request head and its `Content-Length` body; `None` when the peer went away.
async fn read_request(s: &mut TcpStream) -> Option<()> {
    let mut got = Vec::new();
    let head_end = tcp::read_past(s, &mut got, 0, b"\r\n\r\n", MAX_REQUEST).await?;
    let length = tcp::content_length(&got[..head_end])
        .unwrap_or(0)
        .min(MAX_REQUEST);
    tcp::read_to_len(s, &mut got, head_end + length).await
}
