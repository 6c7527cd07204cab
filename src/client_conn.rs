//! One client connection, from accept to close (on every listener: main, admin, demo backend).
//!
//! hyper serves the connection (HTTP/1.1 or h2c); a watcher races it against two deadlines:
//! - until the first request head is complete, `header_read_timeout` from accept. hyper's own
//!   HTTP/1.1 header timer starts only after protocol detection, and h2 has none, so a socket that
//!   sends nothing, or part of the h2 preface, or a preface and no request, would hold its
//!   `max_connections` slot forever. Racing the whole connection future covers every one of those
//!   states without depending on how hyper reads the first bytes. For a later HTTP/1.1 request the
//!   head has `header_read_timeout` from its first byte (hyper's timer would count the idle time
//!   before it too, closing keep-alive connections long before `idle_timeout`);
//! - with no request in flight, `idle_timeout` from the end of the last response, then a graceful
//!   close (HTTP/1.1: close; h2: GOAWAY). A response still being written (an SSE stream) is never
//!   idle, whatever its pace.
//!
//! At `max_connections`, a new connection takes the slot of the oldest one that has not completed
//! a request head yet ([`AwaitingHead`]): otherwise silent sockets would hold every slot for
//! `header_read_timeout`, the listen backlog would fill, and real clients' connects would wait in
//! the kernel's SYN retries. A client that sends its request right after connecting is in that set
//! for well under a millisecond; a connection with a request in flight is never closed for room.

use crate::http_util::{BoxError, ProxyBody, RequestBody};
use crate::metrics::Metrics;
use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a listener does with a request: a plain async function of the request and the address
/// of the client that sent it.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The response, once ready.
    type Future: Future<Output = Response<ProxyBody>> + Send + 'static;
    /// Answers `req` from `peer`.
    fn call(&self, req: Request<RequestBody>, peer: SocketAddr) -> Self::Future;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request<RequestBody>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    type Future = Fut;

    fn call(&self, req: Request<RequestBody>, peer: SocketAddr) -> Fut {
        self(req, peer)
    }
}

/// What every connection of one listener shares.
pub struct Shared<H> {
    /// Serves HTTP/1.1 and h2c.
    pub builder: auto::Builder<TokioExecutor>,
    /// Connections without a complete request head yet.
    pub awaiting: Arc<AwaitingHead>,
    /// Deadlines of each connection.
    pub timeouts: Timeouts,
    /// Fires to close the connections gracefully.
    pub shutdown: CancellationToken,
    /// Where open connections are counted (`sse_proxy_connections_active`); the main listener's.
    pub metrics: Option<Arc<Metrics>>,
    /// Answers the requests.
    pub handler: H,
}

/// The deadlines of a client connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From accept to the first complete request head, and from the first byte of a later
    /// HTTP/1.1 request head to its end.
    pub header_read: Duration,
    /// With no request in flight, this long before the connection is closed.
    pub idle: Duration,
}

/// Why the watcher ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// A request head did not arrive in time: the connection is dropped.
    NoHead,
    /// Nothing in flight for `idle`: the connection is closed gracefully.
    Idle,
}

/// The connections that have not completed a request head yet, oldest first.
#[derive(Debug, Default)]
pub struct AwaitingHead {
    inner: Mutex<(u64, BTreeMap<u64, CancellationToken>)>,
}

impl AwaitingHead {
    /// An empty set.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn lock(&self) -> MutexGuard<'_, (u64, BTreeMap<u64, CancellationToken>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn join(self: &Arc<Self>) -> Awaiting {
        let evict = CancellationToken::new();
        let mut inner = self.lock();
        let seq = inner.0;
        inner.0 += 1;
        inner.1.insert(seq, evict.clone());
        Awaiting {
            set: self.clone(),
            seq,
            evict,
        }
    }

    /// Closes the oldest connection that has not completed a request head; `false` when there
    /// is none.
    pub fn evict_oldest(&self) -> bool {
        let oldest = self.lock().1.pop_first();
        oldest.map(|(_, evict)| evict.cancel()).is_some()
    }
}

/// A connection's place in [`AwaitingHead`], left when its first request head arrives or it ends.
#[derive(Debug)]
struct Awaiting {
    set: Arc<AwaitingHead>,
    seq: u64,
    evict: CancellationToken,
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        self.set.lock().1.remove(&self.seq);
    }
}

/// What a connection is doing, as its IO, its requests and its watcher see it.
#[derive(Debug)]
struct State {
    accepted: Instant,
    /// Requests whose head arrived and whose response has not ended.
    in_flight: usize,
    /// Request heads received.
    requests: u64,
    http2: bool,
    /// The end of the last response (or accept).
    idle_since: Instant,
    /// The first byte read since `idle_since`: an HTTP/1.1 request head has begun.
    head_since: Option<Instant>,
    /// In [`AwaitingHead`] until the first request head.
    awaiting: Option<Awaiting>,
}

impl State {
    fn new(now: Instant, awaiting: Option<Awaiting>) -> Self {
        State {
            accepted: now,
            in_flight: 0,
            requests: 0,
            http2: false,
            idle_since: now,
            head_since: None,
            awaiting,
        }
    }

    /// The next deadline and what happens then; `None` while a request is in flight.
    fn deadline(&self, t: Timeouts) -> Option<(Instant, Expiry)> {
        if self.in_flight > 0 {
            return None;
        }
        if self.requests == 0 {
            return Some((self.accepted + t.header_read, Expiry::NoHead));
        }
        match self.head_since {
            // Bytes between h2 requests are frames (PING, WINDOW_UPDATE), not the start of a head.
            Some(head) if !self.http2 => Some((head + t.header_read, Expiry::NoHead)),
            _ => Some((self.idle_since + t.idle, Expiry::Idle)),
        }
    }
}

/// Shared by a connection's IO, its in-flight requests and its watcher.
#[derive(Debug)]
struct Activity {
    state: Mutex<State>,
    changed: Notify,
}

impl Activity {
    fn new(awaiting: Option<Awaiting>) -> Arc<Self> {
        Arc::new(Activity {
            state: Mutex::new(State::new(Instant::now(), awaiting)),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is a few plain fields: one left by a panicking thread is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State) -> bool) {
        let changed = f(&mut self.state());
        if changed {
            // One waiter (the watcher); a notification while it is busy is kept for its next wait.
            self.changed.notify_one();
        }
    }

    fn on_read(&self) {
        self.update(|s| {
            let starts_head = s.in_flight == 0 && s.head_since.is_none();
            if starts_head {
                s.head_since = Some(Instant::now());
            }
            starts_head
        });
    }

    /// A request head arrived; the request is in flight until the returned guard is dropped.
    fn begin(self: &Arc<Self>, version: Version) -> InFlight {
        let mut awaiting = None;
        self.update(|s| {
            s.in_flight += 1;
            s.requests += 1;
            s.http2 = version == Version::HTTP_2;
            s.head_since = None;
            awaiting = s.awaiting.take();
            true
        });
        // Leaves AwaitingHead outside the state lock.
        drop(awaiting);
        InFlight(self.clone())
    }

    fn deadline(&self, t: Timeouts) -> Option<(Instant, Expiry)> {
        self.state().deadline(t)
    }

    fn in_flight(&self) -> usize {
        self.state().in_flight
    }

    fn requests(&self) -> u64 {
        self.state().requests
    }

    fn idle_since(&self) -> Instant {
        self.state().idle_since
    }
}

/// A request in flight, from its head until its response body ends or is dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(|s| {
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.idle_since = Instant::now();
                s.head_since = None;
            }
            true
        });
    }
}

/// A response body that keeps its request in flight until it ends.
struct TrackedBody {
    inner: ProxyBody,
    in_flight: Option<InFlight>,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            self.in_flight = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client socket, reporting reads to the watcher (the first byte of a later request head).
struct WatchedIo {
    tcp: TcpStream,
    activity: Arc<Activity>,
    /// Until the first read: which protocol the client speaks is still to be told.
    detecting: bool,
}

/// Most bytes read at once while no request is in flight (a request head is awaited).
const HEAD_READ_CHUNK: usize = 8 * 1024;

/// Bytes that start the HTTP/2 connection preface (`PRI * HTTP/2.0...`), as far as one peek tells.
const H2_PREFACE_START: &[u8] = b"PR";

impl WatchedIo {
    /// Whether the connection's first bytes cannot start an HTTP/2 preface (`false` at EOF, and
    /// while too few bytes have arrived to tell).
    fn poll_surely_http1(&self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut first = [0u8; H2_PREFACE_START.len()];
        let mut peeked = ReadBuf::new(&mut first);
        ready!(self.tcp.poll_peek(cx, &mut peeked))?;
        let seen = peeked.filled();
        Poll::Ready(Ok(!seen.is_empty() && !H2_PREFACE_START.starts_with(seen)))
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.detecting {
            // hyper-util's first read (up to 24 bytes) tells h2c from HTTP/1.1, and it hands those
            // bytes to HTTP/1.1 as a read of their own: the request head then takes a second read,
            // for which hyper doubles the connection's read buffer to 16 KiB for good. A peek
            // tells without taking bytes; a first read of nothing says "not h2" to the detection
            // (`serve_connection_with_upgrades`), and hyper reads the whole head at once.
            let surely_http1 = ready!(self.poll_surely_http1(cx));
            self.detecting = false;
            if surely_http1? {
                return Poll::Ready(Ok(()));
            }
        }
        let before = buf.filled().len();
        let r = if buf.remaining() > HEAD_READ_CHUNK && self.activity.in_flight() == 0 {
            // hyper checks a head's size against `MAX_REQUEST_HEAD_BYTES` between reads, and
            // offers a read as much room as its grown buffer has: one large read could carry a
            // whole over-long head past the check.
            let mut chunk = [0u8; HEAD_READ_CHUNK];
            let mut part = ReadBuf::new(&mut chunk);
            let r = ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut part));
            buf.put_slice(part.filled());
            r
        } else {
            ready!(Pin::new(&mut self.tcp).poll_read(cx, buf))
        };
        if r.is_ok() && buf.filled().len() > before {
            self.activity.on_read();
        }
        Poll::Ready(r)
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Serves one accepted connection with `shared.handler` until it ends or the watcher closes it;
/// `permit` (its connection slot) is held until then. Until its first request head, the
/// connection is in `shared.awaiting` (and may be closed for room).
pub fn serve<H: Handler>(
    tcp: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    shared: &Shared<H>,
) -> impl Future<Output = ()> + Send + 'static {
    let timeouts = shared.timeouts;
    let shutdown = shared.shutdown.clone();
    let open = shared.metrics.as_ref().map(|m| m.connections_active.clone());
    let place = shared.awaiting.join();
    let evict = place.evict.clone();
    let activity = Activity::new(Some(place));
    let io = WatchedIo {
        tcp,
        activity: activity.clone(),
        detecting: true,
    };
    let tracker = activity.clone();
    let handler = shared.handler.clone();
    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
        let in_flight = tracker.begin(req.version());
        let resp = handler.call(req.map(BodyExt::boxed), peer);
        async move {
            let resp: Response<ProxyBody> = resp.await;
            Ok::<_, Infallible>(resp.map(|inner| TrackedBody {
                inner,
                in_flight: Some(in_flight),
            }))
        }
    });
    // On the heap, once: moved into the task and then into `watch`, an inline connection would
    // take its (h2-sized) room in each of their states, for as long as the connection is open.
    let conn = Box::pin(
        shared
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc)
            .into_owned(),
    );
    async move {
        if let Some(open) = &open {
            open.increment(1.0);
        }
        watch(conn, &activity, timeouts, &shutdown, &evict).await;
        if let Some(open) = &open {
            open.decrement(1.0);
        }
        drop(permit);
    }
}

/// Drives `conn` to its end, closing it when a deadline passes, `shutdown` fires, or `evict`
/// fires before its first request head.
async fn watch<C>(
    mut conn: Pin<Box<C>>,
    activity: &Activity,
    t: Timeouts,
    shutdown: &CancellationToken,
    evict: &CancellationToken,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut evictable = true;
    let why = loop {
        let next = activity.deadline(t);
        tokio::select! {
            r = conn.as_mut() => return ended(r),
            _ = shutdown.cancelled() => break None,
            _ = activity.changed.notified() => {}
            _ = evict.cancelled(), if evictable => {
                // Its first request may have arrived since it was picked: then it stays.
                if activity.requests() == 0 {
                    tracing::debug!("at max_connections: closing a connection that sent no request head");
                    return;
                }
                evictable = false;
            }
            _ = sleep_until(next.map(|(at, _)| at)) => match activity.deadline(t) {
                Some((at, why)) if at <= Instant::now() => break Some(why),
                _ => {}
            },
        }
    };
    if why == Some(Expiry::NoHead) {
        tracing::debug!("no request head within header_read_timeout; closing the connection");
        return;
    }
    // Idle, or shutting down: responses in flight finish; HTTP/1.1 closes, h2 sends GOAWAY and
    // closes once its streams are done. A peer that keeps an h2 connection open with nothing in
    // flight (no answer to the GOAWAY's PING) is dropped after `header_read` more.
    conn.as_mut().graceful_shutdown();
    let closing = Instant::now();
    loop {
        let quiet = (activity.in_flight() == 0).then(|| closing.max(activity.idle_since()) + t.header_read);
        tokio::select! {
            r = conn.as_mut() => return ended(r),
            _ = activity.changed.notified() => {}
            _ = sleep_until(quiet) => {
                if activity.in_flight() == 0 {
                    tracing::debug!("connection did not close after a graceful shutdown; dropping it");
                    return;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn ended<E: std::fmt::Display>(r: Result<(), E>) {
    if let Err(e) = r {
        // A client closing an endless SSE body is the normal end of a stream.
        tracing::debug!(error = %e, "connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    #[tokio::test(start_paused = true)]
    async fn first_head_is_timed_from_accept() {
        let a = Activity::new(None);
        let accepted = Instant::now();
        assert_eq!(a.deadline(T), Some((accepted + T.header_read, Expiry::NoHead)));
        tokio::time::advance(Duration::from_secs(3)).await;
        // Bytes that do not complete a head (a partial h2 preface) change nothing.
        a.on_read();
        assert_eq!(a.deadline(T), Some((accepted + T.header_read, Expiry::NoHead)));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_expires_while_a_response_is_in_flight() {
        let a = Activity::new(None);
        let req = a.begin(Version::HTTP_11);
        let req2 = a.begin(Version::HTTP_11);
        tokio::time::advance(Duration::from_secs(3600)).await;
        a.on_read();
        assert_eq!(a.deadline(T), None);
        drop(req);
        assert_eq!(a.deadline(T), None);
        drop(req2);
        let ended = Instant::now();
        assert_eq!(a.deadline(T), Some((ended + T.idle, Expiry::Idle)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_http1_head_is_timed_from_its_first_byte() {
        let a = Activity::new(None);
        drop(a.begin(Version::HTTP_11));
        tokio::time::advance(Duration::from_secs(30)).await;
        let first_byte = Instant::now();
        a.on_read();
        tokio::time::advance(Duration::from_secs(1)).await;
        a.on_read();
        assert_eq!(a.deadline(T), Some((first_byte + T.header_read, Expiry::NoHead)));
        drop(a.begin(Version::HTTP_11));
        let ended = Instant::now();
        assert_eq!(a.deadline(T), Some((ended + T.idle, Expiry::Idle)));
    }

    #[tokio::test(start_paused = true)]
    async fn h2_frames_between_requests_do_not_start_a_head() {
        let a = Activity::new(None);
        drop(a.begin(Version::HTTP_2));
        let ended = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        a.on_read();
        assert_eq!(a.deadline(T), Some((ended + T.idle, Expiry::Idle)));
    }

    #[test]
    fn the_oldest_connection_awaiting_a_head_is_evicted_first() {
        let set = AwaitingHead::new();
        let (a, b, c) = (set.join(), set.join(), set.join());
        drop(b);
        assert!(set.evict_oldest());
        assert!(a.evict.is_cancelled() && !c.evict.is_cancelled());
        // A first request head takes a connection out of the set.
        let activity = Activity::new(Some(c));
        drop(activity.begin(Version::HTTP_11));
        assert!(!set.evict_oldest());
        drop(a);
        assert!(set.lock().1.is_empty());
    }
}
