//! A downstream connection: a cursor over a stream's log, turned into a response body.
//!
//! The cursor reads whatever the log holds after its position in one coalesced write (so a slow
//! client never builds a queue of small writes), waits for the log to grow, and writes a heartbeat
//! comment when nothing was written for the heartbeat interval. It reads this process's log of a
//! stream it reads itself, or the stream store for a stream another replica reads.
//!
//! When the process shuts down and another replica can serve the stream from a shared store, the
//! cursor hands its client off: it writes what the store already has, then a short `retry:` line
//! (no blank line after it, so no client reads an empty event), and ends the body, so the client
//! resumes elsewhere from its last event.

use crate::cluster::Following;
use crate::http_util::ProxyBody;
use crate::ids::StreamId;
use crate::log::{Read, Subscription};
use crate::metrics::{Metrics, StoreOp};
use crate::protocol::{Dialect, ErrorCode};
use crate::store::{Batch, Store, StoreError, Wait};
use crate::stream::{Follower, Outcome};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

/// Per-connection write settings.
#[derive(Debug, Clone, Copy)]
pub struct CursorSettings {
    /// Idle time before a heartbeat.
    pub heartbeat: Duration,
    /// Largest coalesced write.
    pub max_write_bytes: usize,
}

/// The reconnection delay a client is given when it is handed off to another replica. Short, so the
/// answer goes on with a pause of about one batch (`batching.max_delay` is 100 ms by default); not
/// zero, so this process's listener is closed (and a balancer skips it) before the client comes
/// back, and so many clients handed off at once are not one burst of connects. The next replica's
/// `retry:` preamble restores `resume.client_retry` for later reconnections.
pub const HANDOFF_RETRY: Duration = Duration::from_millis(250);

/// Where a cursor reads.
enum Source {
    /// This process's log of a stream it reads; its client is handed off once `handoff` fires.
    Local {
        follower: Follower,
        sub: Subscription,
        handoff: Option<CancellationToken>,
    },
    /// The stream store.
    Remote(Remote),
}

/// A stream in the store that another replica reads, tailed from there.
pub struct Remote {
    store: Arc<dyn Store>,
    id: StreamId,
    lease: Duration,
    check_at: Instant,
    stop: CancellationToken,
    /// Counts this connection against `max_followers` while it lives.
    follower: Option<Following>,
    /// When the follower's lease in the store is renewed next.
    renew_at: Instant,
    dialect: Dialect,
}

/// How a wait for more of a stream ended.
enum Waited {
    /// Read again.
    Changed,
    /// The heartbeat is due.
    Beat,
    /// The proxy is shutting down.
    Stop,
}

impl Remote {
    /// Tails `id` in `store`, making sure every `lease` that a replica still reads it; ends when
    /// `stop` fires (the client is handed off: it resumes from its last event elsewhere).
    pub fn new(store: Arc<dyn Store>, id: StreamId, lease: Duration, stop: CancellationToken) -> Self {
        Remote {
            store,
            id,
            lease,
            check_at: Instant::now() + lease,
            stop,
            follower: None,
            renew_at: Instant::now() + lease / 3,
            dialect: Dialect::Native,
        }
    }

    /// The same, counted by `follower` while it lives (its lease renewed every third of the lease).
    pub fn counted(self, follower: Following) -> Self {
        Remote {
            follower: Some(follower),
            ..self
        }
    }

    /// Writes the error it ends a lost stream with in `dialect` (the stream's).
    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    async fn wait(
        &mut self,
        after: u64,
        beat_at: Instant,
        metrics: &Metrics,
    ) -> Result<Waited, (StoreOp, StoreError)> {
        let now = Instant::now();
        if now >= self.renew_at {
            self.renew_at = now + self.lease / 3;
            if let Some(f) = self.follower.as_ref() {
                f.renew().await;
            }
        }
        if now >= self.check_at {
            self.check_at = now + self.lease;
            self.check_owner(metrics).await?;
            return Ok(Waited::Changed);
        }
        let deadline = beat_at.min(self.check_at).min(self.renew_at);
        tokio::select! {
            _ = self.stop.cancelled() => Ok(Waited::Stop),
            w = self.store.wait(self.id, after, deadline) => match w.map_err(|e| (StoreOp::Wait, e))? {
                Wait::Ready => Ok(Waited::Changed),
                Wait::Timeout if Instant::now() >= beat_at => Ok(Waited::Beat),
                Wait::Timeout => Ok(Waited::Changed),
            },
        }
    }

    /// Ends the stream with `upstream_lost` if the replica reading it let its lease lapse.
    async fn check_owner(&self, metrics: &Metrics) -> Result<(), (StoreOp, StoreError)> {
        let meta = self.store.meta(self.id).await.map_err(|e| (StoreOp::Meta, e))?;
        if !meta.lease_expired {
            return Ok(());
        }
        let seq = meta.last_seq + 1;
        let code = ErrorCode::UpstreamLost;
        let frame = self.dialect.error_event(&self.id.to_string(), seq, code);
        match self
            .store
            .finish(self.id, Outcome::Lost, Batch::new(seq, vec![frame]))
            .await
        {
            Ok(_) => {
                tracing::warn!("the replica reading this stream stopped renewing its lease; it ends here");
                metrics.error(code);
                metrics.streams_lost.increment(1);
                Ok(())
            }
            // The reader wrote or refreshed its lease meanwhile (it is alive), or the stream ended
            // anyway.
            Err(StoreError::Conflict { .. } | StoreError::LeaseHeld | StoreError::Finished(_)) => Ok(()),
            Err(e) => Err((StoreOp::Finish, e)),
        }
    }
}

/// Waits for `token`, or forever when `None`.
async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

/// A connection's position in a stream's log.
pub struct Cursor {
    source: Source,
    pos: u64,
    preamble: Option<Bytes>,
    settings: CursorSettings,
    metrics: Arc<Metrics>,
    last_write: Instant,
    done: bool,
    dialect: Dialect,
}

impl Cursor {
    /// A cursor that first writes `preamble` (the `retry:` line, a field of the first event or
    /// heartbeat-then-event that follows), then the events after `after`;
    /// it counts heartbeats and evictions into `metrics`.
    pub fn new(
        follower: Follower,
        after: u64,
        preamble: Bytes,
        settings: CursorSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let sub = follower.stream().log.subscribe();
        Self::with_source(
            Source::Local {
                follower,
                sub,
                handoff: None,
            },
            after,
            preamble,
            settings,
            metrics,
        )
    }

    /// Hands the client off once `handoff` fires (another replica can serve the stream from the
    /// store): after everything the store has, unless the log is live-only, whose ids the store may
    /// lack (the client then stays to the end).
    pub fn hand_off_on(mut self, handoff: CancellationToken) -> Self {
        if let Source::Local { handoff: h, .. } = &mut self.source {
            *h = Some(handoff);
        }
        self
    }

    /// [`Cursor::new`] for a stream read from the store.
    pub fn remote(
        remote: Remote,
        after: u64,
        preamble: Bytes,
        settings: CursorSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_source(Source::Remote(remote), after, preamble, settings, metrics)
    }

    fn with_source(
        source: Source,
        after: u64,
        preamble: Bytes,
        settings: CursorSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Cursor {
            source,
            pos: after,
            preamble: Some(preamble),
            settings,
            metrics,
            last_write: Instant::now(),
            done: false,
            dialect: Dialect::Native,
        }
    }

    /// Writes its heartbeats and connection errors in `dialect` (the stream's).
    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// The next bytes to write, or `None` when the stream has ended for this connection.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(p) = self.preamble.take().filter(|p| !p.is_empty()) {
            return Some(p);
        }
        if self.done {
            return None;
        }
        loop {
            let max = self.settings.max_write_bytes;
            let read = match &mut self.source {
                Source::Local { follower, sub, .. } => {
                    sub.mark_seen();
                    Ok(follower.stream().log.read_after(self.pos, max))
                }
                Source::Remote(r) => r
                    .store
                    .read(r.id, self.pos, max)
                    .await
                    .map_err(|e| (StoreOp::Read, e)),
            };
            match read {
                Ok(Read::Data { chunk, last }) => {
                    self.pos = last;
                    self.last_write = Instant::now();
                    return Some(chunk);
                }
                Ok(Read::End) => return None,
                // The log dropped events this connection had not read yet (memory bound).
                Ok(Read::Gone) | Err((_, StoreError::NotFound)) => return Some(self.evicted()),
                Ok(Read::Pending) if self.handing_off() => return self.hand_off(),
                Ok(Read::Pending) => {}
                Err((op, e)) => return self.store_failed(op, &e),
            }
            let beat_at = self.last_write + self.settings.heartbeat;
            let waited = match &mut self.source {
                Source::Local { sub, handoff, .. } => {
                    // Once fired, the hand-off is checked at every read.
                    let handoff = handoff.as_ref().filter(|h| !h.is_cancelled());
                    tokio::select! {
                        biased;
                        () = sub.changed() => Ok(Waited::Changed),
                        () = sleep_until(beat_at) => Ok(Waited::Beat),
                        () = cancelled(handoff) => Ok(Waited::Changed),
                    }
                }
                Source::Remote(r) => r.wait(self.pos, beat_at, &self.metrics).await,
            };
            match waited {
                Ok(Waited::Changed) => {}
                Ok(Waited::Beat) => {
                    self.last_write = Instant::now();
                    self.metrics.heartbeats.increment(1);
                    return Some(self.dialect.heartbeat());
                }
                Ok(Waited::Stop) => return self.hand_off(),
                Err((_, StoreError::NotFound)) => return Some(self.evicted()),
                Err((op, e)) => return self.store_failed(op, &e),
            }
        }
    }

    /// Whether the client has everything the store has of a local stream and is to be handed off.
    fn handing_off(&self) -> bool {
        match &self.source {
            Source::Local {
                follower,
                handoff: Some(h),
                ..
            } => h.is_cancelled() && !follower.stream().log.is_live_only(),
            _ => false,
        }
    }

    /// The last bytes of a handed-off connection: come back soon (to another replica).
    fn hand_off(&mut self) -> Option<Bytes> {
        tracing::debug!(
            after = self.pos,
            "shutting down: the client resumes on another replica"
        );
        self.done = true;
        let retry = self.dialect.preamble(HANDOFF_RETRY.as_millis() as u64);
        // A dialect without `retry:` ends with nothing: its clients do not reconnect by themselves.
        (!retry.is_empty()).then_some(retry)
    }

    fn evicted(&mut self) -> Bytes {
        self.done = true;
        self.metrics.error(ErrorCode::Evicted);
        self.dialect.error_frame(ErrorCode::Evicted)
    }

    /// The store cannot be read: the body ends without an event, so the client resumes from its
    /// last event (an `error` event would make it give up or start over).
    fn store_failed(&mut self, op: StoreOp, e: &StoreError) -> Option<Bytes> {
        tracing::warn!(op = crate::metrics::LabelValue::as_str(op), error = %e, "stream store failed; closing the connection so the client resumes");
        self.metrics.store_errors.increment(op);
        self.done = true;
        None
    }

    /// The response body that drives this cursor; dropping it (client gone) detaches the follower.
    pub fn into_body(self) -> ProxyBody {
        let s = futures_util::stream::unfold(self, |mut c| async move {
            let chunk = c.next_chunk().await?;
            Some((Ok(Frame::data(chunk)), c))
        });
        StreamBody::new(s).boxed_unsync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::StreamId;
    use crate::log::{LogBudget, MemoryLog};
    use crate::protocol;
    use crate::stream::Stream;

    fn setup(max_log: usize) -> (Arc<Stream>, Cursor) {
        let id = StreamId::random();
        let log = Arc::new(MemoryLog::new(id, max_log, Arc::new(LogBudget::default())));
        let s = Arc::new(Stream::new(id, "/r".into(), "m".into(), None, log));
        let f = s.attach(4).expect("attach");
        let settings = CursorSettings {
            heartbeat: Duration::from_secs(15),
            max_write_bytes: 1 << 16,
        };
        (
            s.clone(),
            Cursor::new(
                f,
                0,
                Bytes::from_static(b"retry: 1000\n"),
                settings,
                Arc::new(Metrics::noop()),
            ),
        )
    }

    fn s(b: Option<Bytes>) -> String {
        String::from_utf8(b.expect("chunk").to_vec()).expect("utf8")
    }

    #[tokio::test(start_paused = true)]
    async fn preamble_then_coalesced_events_then_end() {
        let (stream, mut c) = setup(1 << 20);
        assert_eq!(s(c.next_chunk().await), "retry: 1000\n");
        stream.log.append(None, "a");
        stream.log.append(None, "b");
        let chunk = s(c.next_chunk().await);
        assert_eq!(chunk.matches("data: ").count(), 2, "{chunk}");
        stream.log.close();
        assert!(c.next_chunk().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_after_idle_interval() {
        let (stream, mut c) = setup(1 << 20);
        c.next_chunk().await;
        let t0 = Instant::now();
        assert_eq!(s(c.next_chunk().await), ": heartbeat\n");
        assert_eq!(Instant::now() - t0, Duration::from_secs(15));
        // A write resets the idle clock.
        tokio::time::advance(Duration::from_secs(10)).await;
        stream.log.append(None, "x");
        c.next_chunk().await;
        let t1 = Instant::now();
        assert_eq!(s(c.next_chunk().await), ": heartbeat\n");
        assert_eq!(Instant::now() - t1, Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn live_events_wake_the_cursor() {
        let (stream, mut c) = setup(1 << 20);
        c.next_chunk().await;
        let s2 = stream.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            s2.log.append(None, "live");
        });
        assert!(s(c.next_chunk().await).contains("data: live"));
    }

    #[tokio::test(start_paused = true)]
    async fn evicted_position_ends_with_error() {
        let (stream, mut c) = setup(300);
        c.next_chunk().await;
        for _ in 0..20 {
            stream.log.append(None, &"z".repeat(50));
        }
        let chunk = s(c.next_chunk().await);
        assert!(chunk.contains("\"code\":\"evicted\""), "{chunk}");
        assert!(c.next_chunk().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_body_detaches() {
        let (stream, c) = setup(1 << 20);
        assert_eq!(stream.followers(), 1);
        drop(c.into_body());
        assert_eq!(stream.followers(), 0);
    }
    mod remote {
        use super::*;
        use crate::store::gate::Gate;
        use crate::store::{MemoryStore, NewStream, StoreSettings};

        const LEASE: Duration = Duration::from_secs(5);

        fn memory(lease: Duration) -> Arc<MemoryStore> {
            let settings = StoreSettings {
                max_stream_bytes: 1 << 20,
                lease,
                retention: Duration::from_secs(60),
            };
            Arc::new(MemoryStore::new(settings, usize::MAX))
        }

        /// A stream another replica reads, with `n` frames in the store.
        async fn written(store: &dyn Store, n: u64) -> StreamId {
            let id = StreamId::random();
            let new = NewStream {
                owner: None,
                route: "/r".into(),
                model: "m".into(),
                replica: "elsewhere".into(),
            };
            store.create(id, new).await.expect("create");
            append(store, id, 1, n).await;
            id
        }

        async fn append(store: &dyn Store, id: StreamId, first: u64, last: u64) {
            let frames = (first..=last)
                .map(|seq| protocol::encode_frame(&id.to_string(), seq, None, &format!("t{seq}")))
                .collect();
            store.append(id, Batch::new(first, frames)).await.expect("append");
        }

        fn cursor(store: Arc<dyn Store>, id: StreamId, after: u64, stop: &CancellationToken) -> Cursor {
            counted_cursor(store, id, after, stop, Arc::new(crate::metrics::Metrics::noop()))
        }

        fn counted_cursor(
            store: Arc<dyn Store>,
            id: StreamId,
            after: u64,
            stop: &CancellationToken,
            metrics: Arc<Metrics>,
        ) -> Cursor {
            let settings = CursorSettings {
                heartbeat: Duration::from_secs(15),
                max_write_bytes: 1 << 16,
            };
            let remote = Remote::new(store, id, LEASE, stop.clone());
            Cursor::remote(
                remote,
                after,
                Bytes::from_static(b"retry: 1000\n"),
                settings,
                metrics,
            )
        }

        #[tokio::test(start_paused = true)]
        async fn replays_from_the_store_then_tails_it_live() {
            let store = memory(Duration::from_secs(600));
            let id = written(&*store, 3).await;
            let stop = CancellationToken::new();
            let mut c = cursor(store.clone(), id, 1, &stop);
            assert_eq!(s(c.next_chunk().await), "retry: 1000\n");
            let chunk = s(c.next_chunk().await);
            assert!(
                chunk.contains(&format!("data: t2\nid: {id}:2\n\n"))
                    && chunk.contains(&format!("data: t3\nid: {id}:3\n\n")),
                "{chunk}"
            );
            assert!(!chunk.contains("t1"));
            let writer = store.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                append(&*writer, id, 4, 4).await;
            });
            assert!(s(c.next_chunk().await).contains("data: t4"));
            let t0 = Instant::now();
            assert_eq!(s(c.next_chunk().await), ": heartbeat\n");
            assert_eq!(Instant::now() - t0, Duration::from_secs(15));
            let done = protocol::encode_frame(&id.to_string(), 5, Some("done"), "{}");
            let kept = store
                .finish(id, Outcome::Completed, Batch::new(5, vec![done]))
                .await;
            assert_eq!(kept, Ok(Outcome::Completed));
            assert!(s(c.next_chunk().await).contains("event: done"));
            assert!(c.next_chunk().await.is_none());
        }

        #[tokio::test(start_paused = true)]
        async fn a_lapsed_lease_ends_the_stream_with_upstream_lost_within_two_leases() {
            let store = memory(LEASE);
            let id = written(&*store, 2).await;
            let stop = CancellationToken::new();
            let prom = crate::metrics::Prometheus::standalone().expect("recorder");
            let mut c = counted_cursor(store.clone(), id, 0, &stop, prom.metrics.clone());
            c.next_chunk().await;
            let t0 = Instant::now();
            assert!(s(c.next_chunk().await).contains("data: t2"));
            let mut chunk = s(c.next_chunk().await);
            while chunk.starts_with(':') {
                chunk = s(c.next_chunk().await);
            }
            assert!(Instant::now() - t0 <= 2 * LEASE, "{:?}", Instant::now() - t0);
            assert!(chunk.starts_with("event: error\n"), "{chunk}");
            assert!(chunk.ends_with(&format!("\nid: {id}:3\n\n")), "{chunk}");
            assert!(chunk.contains("\"code\":\"upstream_lost\""), "{chunk}");
            assert!(chunk.contains("\"recoverable\":false"), "{chunk}");
            assert!(c.next_chunk().await.is_none());
            let meta = store.meta(id).await.expect("meta");
            assert_eq!(meta.state, crate::store::State::Finished(Outcome::Lost));
            let text = prom.handle.render();
            assert!(
                text.lines().any(|l| l == "sse_proxy_streams_lost_total 1"),
                "{text}"
            );
            // A second follower finds it ended: counted once.
            let mut again = counted_cursor(store.clone(), id, 0, &stop, prom.metrics.clone());
            while again.next_chunk().await.is_some() {}
            let text = prom.handle.render();
            assert!(
                text.lines().any(|l| l == "sse_proxy_streams_lost_total 1"),
                "{text}"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn a_live_owner_keeps_its_stream() {
            let store = memory(LEASE);
            let id = written(&*store, 1).await;
            let owner = store.clone();
            tokio::spawn(async move {
                for seq in 2..=20 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = owner.refresh_lease(id).await;
                    append(&*owner, id, seq, seq).await;
                }
            });
            let stop = CancellationToken::new();
            let mut c = cursor(store.clone(), id, 0, &stop);
            c.next_chunk().await;
            let mut seen = String::new();
            while !seen.contains("data: t20") {
                seen.push_str(&s(c.next_chunk().await));
            }
            assert!(!seen.contains("upstream_lost"), "{seen}");
        }

        #[tokio::test(start_paused = true)]
        async fn a_counted_follower_stays_counted_while_it_tails() {
            let store = memory(LEASE);
            let id = written(&*store, 1).await;
            let owner = store.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = owner.refresh_lease(id).await;
                }
            });
            let metrics = Arc::new(Metrics::noop());
            let registry = Arc::new(crate::stream::Registry::new(
                Arc::new(LogBudget::default()),
                10,
                10,
                1 << 20,
                Duration::from_secs(60),
                metrics.clone(),
            ));
            let handle = crate::store::Handle::new(store.clone(), LEASE);
            let following = crate::cluster::follow(&handle, &registry, id, 1, &metrics)
                .await
                .expect("counted");
            let stop = CancellationToken::new();
            let remote = Remote::new(store.clone(), id, LEASE, stop.clone()).counted(following);
            let settings = CursorSettings {
                heartbeat: Duration::from_secs(15),
                max_write_bytes: 1 << 16,
            };
            let mut c = Cursor::remote(remote, 1, Bytes::new(), settings, metrics);
            c.next_chunk().await;
            for _ in 0..3 {
                assert_eq!(s(c.next_chunk().await), ": heartbeat\n");
            }
            assert_eq!(
                store.follow(id, 7, 1).await,
                Ok(false),
                "still counted 9 leases on"
            );
            drop(c);
            assert_eq!(store.follow(id, 7, 1).await, Ok(true), "uncounted once gone");
        }

        #[tokio::test(start_paused = true)]
        async fn a_stream_gone_from_the_store_is_evicted() {
            let store = memory(LEASE);
            let id = written(&*store, 1).await;
            let stop = CancellationToken::new();
            let mut c = cursor(store.clone(), id, 1, &stop);
            c.next_chunk().await;
            store.remove(id).await.expect("remove");
            assert!(s(c.next_chunk().await).contains("\"code\":\"evicted\""));
            assert!(c.next_chunk().await.is_none());
        }

        #[tokio::test(start_paused = true)]
        async fn an_unavailable_store_ends_the_body_without_an_event_and_shutdown_hands_off() {
            let gate = Gate::new(memory(Duration::from_secs(600)));
            let id = written(&*gate, 1).await;
            let stop = CancellationToken::new();
            let mut c = cursor(gate.clone(), id, 0, &stop);
            c.next_chunk().await;
            assert!(s(c.next_chunk().await).contains("data: t1"));
            gate.fail(true);
            assert!(
                c.next_chunk().await.is_none(),
                "the client resumes by its last id"
            );
            gate.fail(false);
            let mut c = cursor(gate.clone(), id, 1, &stop);
            c.next_chunk().await;
            let stopper = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                stopper.cancel();
            });
            assert_eq!(
                s(c.next_chunk().await),
                "retry: 250\n",
                "come back soon, elsewhere"
            );
            assert!(c.next_chunk().await.is_none());
        }
    }
}
