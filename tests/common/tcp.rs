//! HTTP/1.1 as raw bytes on a TCP socket: a test writes exactly the bytes it means (malformed
//! ones too) and reads back exactly what came, framing included.

use super::WAIT;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A listener on a free local port that hands each connection to a task of its own, until dropped.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Server {
    /// Starts accepting; `serve` gets each connection and a token cancelled when the server drops.
    pub async fn start<F, Fut>(serve: F) -> Server
    where
        F: Fn(TcpStream, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = stopped.cancelled() => return,
                    r = listener.accept() => match r { Ok((t, _)) => t, Err(_) => continue },
                };
                tokio::spawn(serve(tcp, stopped.clone()));
            }
        });
        Server { addr, stop }
    }
}

/// A server that accepts connections and never answers; it holds them until dropped.
pub async fn mute_server() -> Server {
    Server::start(|s, stop| async move {
        stop.cancelled().await;
        drop(s);
    })
    .await
}

/// Connects to `addr`.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// Connects to `addr` and writes `bytes`.
pub async fn open(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = connect(addr).await;
    s.write_all(bytes).await.expect("write");
    s
}

/// Reads from `s` onto `got` until `got[from..]` holds `end`; returns the index just past it.
/// `None` when the peer closes (or resets) first, or `got` grows past `limit`.
pub async fn read_past(
    s: &mut TcpStream,
    got: &mut Vec<u8>,
    from: usize,
    end: &[u8],
    limit: usize,
) -> Option<usize> {
    let mut buf = [0u8; 4096];
    loop {
        let tail = got.get(from..).unwrap_or_default();
        if let Some(i) = tail.windows(end.len()).position(|w| w == end) {
            return Some(from + i + end.len());
        }
        if got.len() > limit {
            return None;
        }
        let n = s.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        got.extend_from_slice(&buf[..n]);
    }
}

/// Reads from `s` onto `got` until it holds `len` bytes; `None` when the peer closes first.
pub async fn read_to_len(s: &mut TcpStream, got: &mut Vec<u8>, len: usize) -> Option<()> {
    let mut buf = [0u8; 4096];
    while got.len() < len {
        let n = s.read(&mut buf).await.ok().filter(|n| *n > 0)?;
        got.extend_from_slice(&buf[..n]);
    }
    Some(())
}

/// The `Content-Length` of a message head, if it has one.
pub fn content_length(head: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(head)
        .to_ascii_lowercase()
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads from `s` until `end` has been received; returns everything read. Panics when the peer
/// closes first or nothing comes within `WAIT`.
pub async fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let found = tokio::time::timeout(WAIT, read_past(s, &mut got, 0, end, usize::MAX))
        .await
        .expect("bytes in time");
    assert!(found.is_some(), "closed early: {}", String::from_utf8_lossy(&got));
    got
}

/// Reads from `s` up to the end of a message head; returns everything read, as text.
pub async fn read_head(s: &mut TcpStream) -> String {
    String::from_utf8_lossy(&read_until(s, b"\r\n\r\n").await).into_owned()
}

/// Reads one response from `s`: its head and its body as framed on the wire (a `Content-Length`
/// body, or a chunked one up to its last chunk).
pub async fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let read = async {
        let head_end = read_past(s, &mut got, 0, b"\r\n\r\n", usize::MAX).await?;
        let body_end = match content_length(&got[..head_end]) {
            Some(n) => {
                read_to_len(s, &mut got, head_end + n).await?;
                head_end + n
            }
            None => {
                let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
                assert!(head.contains("transfer-encoding: chunked"), "{head}");
                while !got[head_end..].ends_with(b"0\r\n\r\n") {
                    let len = got.len() + 1;
                    read_to_len(s, &mut got, len).await?;
                }
                got.len()
            }
        };
        Some((head_end, body_end))
    };
    let framed = tokio::time::timeout(WAIT, read).await.expect("response in time");
    let Some((head_end, body_end)) = framed else {
        panic!("closed in the response: {:?}", String::from_utf8_lossy(&got));
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    (head, got[head_end..body_end].to_vec())
}

/// Writes `req` on a new connection and reads one response: its head and its body (unchunked).
pub async fn exchange(addr: SocketAddr, req: &[u8]) -> (String, Vec<u8>) {
    let mut s = open(addr, req).await;
    let (head, body) = read_response(&mut s).await;
    let body = if content_length(head.as_bytes()).is_some() {
        body
    } else {
        dechunk(&body)
    };
    (head, body)
}

/// The data of a chunked body.
pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..nl]).expect("ascii").trim(), 16).expect("hex");
        b = &b[nl + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// How a read to the end of a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The peer closed the connection (FIN).
    Closed,
    /// The connection was reset.
    Reset,
    /// Still open when the time ran out.
    Open,
}

/// Reads until the peer closes the connection or `within` passes: what arrived, and how it ended.
pub async fn read_to_end(s: &mut TcpStream, within: Duration) -> (Vec<u8>, End) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (got, End::Open),
            Ok(Ok(0)) => return (got, End::Closed),
            Ok(Err(_)) => return (got, End::Reset),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether the peer closes the connection (end of stream or reset) within `WAIT`, whatever it
/// sends before.
pub async fn closed_by_peer(s: &mut TcpStream) -> bool {
    read_to_end(s, WAIT).await.1 != End::Open
}

/// Sends `bytes` on a new connection and returns what came back before the connection closed
/// (or 3 s passed). The peer may answer and close before reading everything: a failed write is
/// fine.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = connect(addr).await;
    let _ = s.write_all(bytes).await;
    read_to_end(&mut s, Duration::from_secs(3)).await.0
}
