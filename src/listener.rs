//! The accept loop every listener runs (main, admin, the demo's backend): a cap on open
//! connections, one task per connection with the deadlines of [`crate::client_conn`], and a
//! bounded drain once the listener is told to stop.

use crate::client_conn::{self, AwaitingHead, Handler, Timeouts};
use crate::metrics::{Metrics, RejectReason};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest request head (request line and headers) accepted from a client. A larger one is
/// answered `431 Request Header Fields Too Large` (HTTP/1.1) or refused (HTTP/2) instead of being
/// forwarded to the backend; hyper's own HTTP/1.1 default (about 400 KB) is far above what any
/// browser sends.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// How a listener serves its connections.
#[derive(Debug, Clone)]
pub struct Options {
    /// Names the listener in logs (`main`, `admin`, ...).
    pub name: &'static str,
    /// Deadlines of each connection.
    pub timeouts: Timeouts,
    /// One permit per open connection. At none left, the oldest connection that has sent no
    /// request head is closed to make room; with none of those, new ones wait in the accept queue.
    pub slots: Arc<Semaphore>,
    /// The connections without a request head yet, shared by every accept loop of the listener
    /// (one per worker thread), so any of them makes room at `slots`' limit.
    pub awaiting: Arc<AwaitingHead>,
    /// How long open connections may take to finish once the listener stops.
    pub drain: Duration,
    /// Where connections are counted, in `sse_proxy_connections_active`, and a full listener, in
    /// `sse_proxy_rejected_total{reason="max_connections"}`: the main listener's.
    pub metrics: Option<Arc<Metrics>>,
}

/// A server connection builder: HTTP/1.1 and h2c, request heads limited to
/// [`MAX_REQUEST_HEAD_BYTES`]. hyper's own HTTP/1.1 header timer is not armed:
/// [`crate::client_conn`] times request heads, on both protocols.
pub fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_REQUEST_HEAD_BYTES as u32);
    b
}

/// Backlog of each listening socket (what `TcpListener::bind` gives).
const BACKLOG: u32 = 1024;

/// Binds `count` listening sockets on `addr` (port 0: one free port for all of them), in
/// non-blocking mode for whichever runtime serves each. More than one share the address with
/// `SO_REUSEPORT`, the kernel spreading new connections over them by a hash of their addresses;
/// the address is first bound once without it, so that another process holding it is an error
/// (`address in use`) rather than a silent share of its traffic. Called within a runtime.
pub fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let probe = std::net::TcpListener::bind(addr)?;
    if count <= 1 {
        probe.set_nonblocking(true)?;
        return Ok(vec![probe]);
    }
    let addr = probe.local_addr()?;
    drop(probe);
    (0..count)
        .map(|_| {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(addr)?;
            socket.listen(BACKLOG)?.into_std()
        })
        .collect()
}

/// Serves `listener` with `handler` until `stop` fires, then stops accepting and gives the open
/// connections `opts.drain` to finish (they are told to close gracefully when `stop` fires).
pub async fn serve<H: Handler>(listener: TcpListener, opts: Options, stop: CancellationToken, handler: H) {
    let shared = client_conn::Shared {
        builder: builder(),
        awaiting: opts.awaiting.clone(),
        timeouts: opts.timeouts,
        shutdown: stop.clone(),
        metrics: opts.metrics.clone(),
        handler,
    };
    let connections = TaskTracker::new();
    loop {
        let Some((tcp, peer)) = accept(&listener, &stop).await else {
            break;
        };
        let Some(permit) = slot(&opts, &shared.awaiting, &stop).await else {
            break;
        };
        let _ = tcp.set_nodelay(true);
        connections.spawn(client_conn::serve(tcp, peer, permit, &shared));
    }
    drop(listener);
    connections.close();
    tracing::info!(listener = opts.name, drain = ?opts.drain, "no new connections; draining");
    if tokio::time::timeout(opts.drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = opts.name,
            "connections still open after the drain period; closing them"
        );
    }
}

/// The next connection, or `None` once `stop` fires. Accept errors (out of file descriptors and
/// the like) are logged and retried after a short pause instead of spinning.
async fn accept(listener: &TcpListener, stop: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// A slot for an accepted connection. At capacity the oldest connection that has sent no request
/// head is closed to make room; with none, the connection waits for a slot and the next ones wait
/// in the accept queue. `None` once `stop` fires.
async fn slot(
    opts: &Options,
    awaiting: &AwaitingHead,
    stop: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(p) = opts.slots.clone().try_acquire_owned() {
        return Some(p);
    }
    if let Some(m) = &opts.metrics {
        m.rejected.increment(RejectReason::MaxConnections);
    }
    if !awaiting.evict_oldest() {
        tracing::debug!(
            listener = opts.name,
            "at max_connections: a connection waits for a slot"
        );
    }
    tokio::select! {
        _ = stop.cancelled() => None,
        p = opts.slots.clone().acquire_owned() => p.ok(),
    }
}
