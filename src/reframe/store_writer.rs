//! Writes one stream's log to the stream store and moves the log's durable mark.
//!
//! The reader appends to its local log without waiting for anything. This writer sends whatever was
//! appended since the last batch in one [`Store::append`] (events appended while a batch is in
//! flight go in the next: one round trip per batch, never one per event) and marks it durable once
//! the store has it; only then do local cursors see it, so any id a client holds can be asked for on
//! any replica. When the store fails or stalls, the stream goes on live-only (its local clients see
//! every event at once), the failure is counted, and the writer tries again later from where the
//! store stopped. The futures borrow the store, so each operation costs the store's own box only.

use crate::ids::StreamId;
use crate::log::StreamLog;
use crate::metrics::{Metrics, StoreOp};
use crate::protocol::ErrorCode;
use crate::store::{Batch, BoxFuture, Claim, NewStream, Store, StoreError};
use crate::stream::{Outcome, Stream};
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::{interval_at, timeout_at, Instant, Interval, MissedTickBehavior};

/// How often the writer looks at its clock (stalls, retries, lease) at most; a short lease is
/// looked at more often, so that its refresh has several chances before it lapses.
const TICK: Duration = Duration::from_millis(500);
/// How long an operation may stay in flight before the stream goes on live-only (plus a tick).
const STALL: Duration = Duration::from_secs(1);
/// First wait before trying a failed store again; doubled up to the lease.
const RETRY_MIN: Duration = Duration::from_millis(500);
/// Conflicting last batches tried before the end is left to the store's lease.
const FINISH_ATTEMPTS: usize = 3;

/// How the stream's events reach its local clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Shown once the store has them.
    Staged,
    /// The store failed: shown at once, sent to the store again once it answers.
    LiveOnly,
    /// The store cannot get the rest of this stream: shown at once, to the end.
    Detached,
}

/// The write to the store in flight (at most one, so batches stay in order).
enum InFlight<'s> {
    Create(BoxFuture<'s, Result<(), StoreError>>),
    /// A batch whose last event has this seq.
    Append(u64, BoxFuture<'s, Result<u64, StoreError>>),
    /// Ending the store's copy of a stream it cannot get the rest of.
    Abandon(BoxFuture<'s, Result<Outcome, StoreError>>),
}

impl InFlight<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Done> {
        match self {
            InFlight::Create(f) => f.as_mut().poll(cx).map(Done::Created),
            InFlight::Append(last, f) => {
                let last = *last;
                f.as_mut().poll(cx).map(|r| Done::Appended(last, r))
            }
            InFlight::Abandon(f) => f.as_mut().poll(cx).map(Done::Abandoned),
        }
    }

    fn op(&self) -> StoreOp {
        match self {
            InFlight::Create(_) => StoreOp::Create,
            InFlight::Append(..) => StoreOp::Append,
            InFlight::Abandon(_) => StoreOp::Finish,
        }
    }
}

/// Something the writer has to handle.
pub(super) enum Done {
    Created(Result<(), StoreError>),
    Appended(u64, Result<u64, StoreError>),
    Abandoned(Result<Outcome, StoreError>),
    Refreshed(Result<(), StoreError>),
    ClaimRefreshed(Result<(), StoreError>),
    Tick,
}

/// Another replica declared the stream lost (its lease lapsed): the reader must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lost;

/// The store side of one stream's reader.
pub(super) struct StoreWriter<'s> {
    store: &'s dyn Store,
    id: StreamId,
    /// The stream's record, kept to create it again after a failure.
    record: NewStream,
    log: Arc<dyn StreamLog>,
    lease: Duration,
    mode: Mode,
    created: bool,
    /// Seq of the last event the store has.
    stored: u64,
    /// Seq of the last event appended locally, as the reader last said.
    appended: u64,
    write: Option<InFlight<'s>>,
    /// When the write in flight was sent.
    write_at: Instant,
    /// The write in flight was already counted as stalled.
    stalled: bool,
    refresh: Option<BoxFuture<'s, Result<(), StoreError>>>,
    /// The stream's place in the cluster-wide limits, refreshed as long as the stream runs,
    /// whatever happens to its record.
    claim: Option<Claim>,
    claim_refresh: Option<BoxFuture<'s, Result<(), StoreError>>>,
    claim_at: Instant,
    tick: Interval,
    lease_at: Instant,
    retry_at: Option<Instant>,
    backoff: Duration,
    metrics: Arc<Metrics>,
}

impl<'s> StoreWriter<'s> {
    /// A writer for `stream` that creates its record in `store` at once.
    pub(super) fn new(
        store: &'s dyn Store,
        lease: Duration,
        stream: &Stream,
        new: NewStream,
        metrics: Arc<Metrics>,
    ) -> Self {
        let now = Instant::now();
        let every = TICK.min(lease / 6).max(Duration::from_millis(10));
        let mut tick = interval_at(now + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut writer = StoreWriter {
            store,
            id: stream.id,
            log: stream.log.clone(),
            lease,
            mode: Mode::Staged,
            created: false,
            stored: 0,
            appended: 0,
            write: Some(InFlight::Create(store.create(stream.id, new.clone()))),
            record: new,
            write_at: now,
            stalled: false,
            refresh: None,
            claim: None,
            claim_refresh: None,
            claim_at: now + lease / 3,
            tick,
            lease_at: now + lease / 3,
            retry_at: None,
            backoff: RETRY_MIN,
            metrics,
        };
        // A create that is done at once leaves nothing to wait for (it cannot be `Lost`).
        let _ = writer.poll_now();
        writer
    }

    /// Refreshes `claim` (the stream's place in the cluster-wide limits) with the lease from now on.
    pub(super) fn refresh_claim(&mut self, claim: Option<Claim>) {
        self.claim = claim;
    }

    /// Sends the events after what the store has, up to `appended`, unless a write is in flight.
    pub(super) fn kick(&mut self, appended: u64) -> Result<(), Lost> {
        self.appended = appended;
        let idle = self.write.is_none() && self.retry_at.is_none();
        if !idle || !self.created || self.mode == Mode::Detached || appended <= self.stored {
            return Ok(());
        }
        match self.log.frames_after(self.stored) {
            Some(frames) if !frames.is_empty() => {
                let batch = Batch::new(self.stored + 1, frames);
                let last = batch.last();
                self.start(InFlight::Append(last, self.store.append(self.id, batch)));
                self.poll_now()
            }
            Some(_) => Ok(()),
            None => {
                self.abandon();
                Ok(())
            }
        }
    }

    /// Handles the write just started if it is already done (a store in memory answers at once),
    /// so that its events are shown without another turn of the reader's loop. The write is polled
    /// again with the reader's waker by [`StoreWriter::next`] otherwise.
    fn poll_now(&mut self) -> Result<(), Lost> {
        let mut cx = Context::from_waker(Waker::noop());
        match self.write.as_mut().map(|w| w.poll(&mut cx)) {
            Some(Poll::Ready(done)) => {
                self.write = None;
                self.handle(done)
            }
            _ => Ok(()),
        }
    }

    /// Waits for a write to land, a lease refresh to answer, or the clock. Cancel-safe: everything
    /// in flight lives in `self`.
    pub(super) async fn next(&mut self) -> Done {
        poll_fn(|cx| self.poll_done(cx)).await
    }

    fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<Done> {
        if let Some(write) = self.write.as_mut() {
            if let Poll::Ready(done) = write.poll(cx) {
                self.write = None;
                return Poll::Ready(done);
            }
        }
        if let Some(refresh) = self.refresh.as_mut() {
            if let Poll::Ready(r) = refresh.as_mut().poll(cx) {
                self.refresh = None;
                return Poll::Ready(Done::Refreshed(r));
            }
        }
        if let Some(refresh) = self.claim_refresh.as_mut() {
            if let Poll::Ready(r) = refresh.as_mut().poll(cx) {
                self.claim_refresh = None;
                return Poll::Ready(Done::ClaimRefreshed(r));
            }
        }
        self.tick.poll_tick(cx).map(|_| Done::Tick)
    }

    /// Acts on what [`StoreWriter::next`] returned.
    pub(super) fn handle(&mut self, done: Done) -> Result<(), Lost> {
        // A write that landed was counted already if it stalled.
        let stalled = match done {
            Done::Created(_) | Done::Appended(..) | Done::Abandoned(_) => std::mem::take(&mut self.stalled),
            Done::Refreshed(_) | Done::ClaimRefreshed(_) | Done::Tick => false,
        };
        match done {
            Done::Created(Ok(())) | Done::Created(Err(StoreError::Exists)) => {
                // `Exists` is an earlier attempt that landed: ids are random 128-bit numbers.
                self.created = true;
            }
            Done::Created(Err(e)) => self.degrade(StoreOp::Create, &e, stalled),
            Done::Appended(last, Ok(durable)) => {
                self.stored = durable.max(last);
                self.log.mark_durable(self.stored);
                self.backoff = RETRY_MIN;
                if self.mode == Mode::LiveOnly && self.stored >= self.appended {
                    tracing::info!("stream store caught up; events are shown once stored again");
                    self.mode = Mode::Staged;
                    self.log.set_live_only(false);
                }
            }
            Done::Appended(_, Err(StoreError::Conflict { expected, .. })) => self.resync(expected),
            Done::Appended(_, Err(StoreError::Finished(_))) => return self.lost(),
            Done::Appended(_, Err(StoreError::NotFound)) => self.recreate(),
            Done::Appended(_, Err(e)) => self.degrade(StoreOp::Append, &e, stalled),
            Done::Abandoned(r) => {
                if let Err(StoreError::Unavailable(e)) = r {
                    tracing::debug!(error = %e, "the store's copy of the stream could not be ended");
                    self.metrics.store_errors.increment(StoreOp::Finish);
                }
            }
            Done::Refreshed(Ok(())) => {}
            // Finished by this writer itself (`abandon`) or by another replica.
            Done::Refreshed(Err(StoreError::Finished(_))) if self.mode == Mode::Detached => {}
            Done::Refreshed(Err(StoreError::Finished(_))) => return self.lost(),
            Done::Refreshed(Err(StoreError::NotFound)) => self.recreate(),
            Done::Refreshed(Err(e)) => {
                tracing::debug!(error = %e, "lease refresh failed");
                self.metrics.store_errors.increment(StoreOp::Refresh);
                // Tried again at the next tick, not a third of a lease later: two failures in a row
                // would otherwise let the lease lapse, and other replicas declare a live stream lost.
                self.lease_at = Instant::now();
            }
            Done::ClaimRefreshed(Ok(())) => {}
            Done::ClaimRefreshed(Err(e)) => {
                tracing::debug!(error = %e, "refreshing the stream's place in the limits failed");
                self.metrics.store_errors.increment(StoreOp::Admit);
            }
            Done::Tick => self.on_tick(),
        }
        Ok(())
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        if let Some(write) = self.write.as_ref() {
            if now.duration_since(self.write_at) >= STALL && !self.stalled {
                // Local clients must not wait on a store that does not answer.
                let op = write.op();
                self.stalled = true;
                self.metrics.store_errors.increment(op);
                tracing::warn!(
                    op = crate::metrics::LabelValue::as_str(op),
                    "the stream store is not answering; the stream goes on live-only"
                );
                self.live_only();
            }
        }
        if self.retry_at.is_some_and(|at| now >= at) {
            // Appends are sent again by the next `kick`; a record never created is asked for again.
            self.retry_at = None;
            if !self.created && self.write.is_none() {
                let create = self.store.create(self.id, self.record.clone());
                self.start(InFlight::Create(create));
            }
        }
        let refreshing = self.created && self.mode != Mode::Detached;
        if refreshing && self.refresh.is_none() && now >= self.lease_at {
            self.lease_at = now + self.lease / 3;
            self.refresh = Some(self.store.refresh_lease(self.id));
        }
        if let Some(claim) = self.claim.as_ref() {
            if self.claim_refresh.is_none() && now >= self.claim_at {
                self.claim_at = now + self.lease / 3;
                self.claim_refresh = Some(self.store.refresh_claim(claim.clone()));
            }
        }
    }

    fn start(&mut self, write: InFlight<'s>) {
        self.write = Some(write);
        self.write_at = Instant::now();
        self.stalled = false;
    }

    /// The store's next expected seq differs from ours: take its word, then resend from there.
    fn resync(&mut self, expected: u64) {
        let have = expected.saturating_sub(1);
        if have > self.appended {
            tracing::warn!(
                store = have,
                local = self.appended,
                "the stream store has events this replica never wrote; the stream goes on live-only"
            );
            self.detach();
            return;
        }
        self.stored = have;
        self.log.mark_durable(have);
    }

    /// Goes live-only for a while and counts the failure (unless the stall was counted already).
    fn degrade(&mut self, op: StoreOp, e: &StoreError, counted: bool) {
        if !counted {
            self.metrics.store_errors.increment(op);
            tracing::warn!(op = crate::metrics::LabelValue::as_str(op), error = %e, "stream store failed; the stream goes on live-only");
        }
        self.live_only();
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(self.lease.max(RETRY_MIN));
    }

    fn live_only(&mut self) {
        if self.mode == Mode::Staged {
            self.mode = Mode::LiveOnly;
            self.log.set_live_only(true);
        }
    }

    /// The store no longer has the stream (a Redis that came back empty, keys expired during an
    /// outage): it is written again from its first event while this replica still has them all,
    /// so that it can be resumed anywhere again; live-only to the end otherwise.
    fn recreate(&mut self) {
        if self.log.first_seq() > 1 {
            tracing::warn!("the stream store no longer has this stream; it goes on live-only");
            self.detach();
            return;
        }
        tracing::warn!("the stream store no longer has this stream; writing it again");
        self.live_only();
        self.created = false;
        self.stored = 0;
        if self.write.is_none() {
            let create = self.store.create(self.id, self.record.clone());
            self.start(InFlight::Create(create));
        }
    }

    /// Live-only to the end, the store left alone.
    fn detach(&mut self) {
        self.mode = Mode::Detached;
        self.log.set_live_only(true);
    }

    /// Events the store lacks were dropped locally (memory bounds): the store's copy can never be
    /// completed, so it is ended with `evicted` for readers elsewhere, and the stream goes on here.
    fn abandon(&mut self) {
        tracing::warn!("events were dropped before the stream store had them; the stream goes on live-only");
        self.detach();
        let batch = Batch::new(
            self.stored + 1,
            vec![self.log.dialect().error_frame(ErrorCode::Evicted)],
        );
        self.start(InFlight::Abandon(self.store.finish(
            self.id,
            Outcome::Error,
            batch,
        )));
    }

    fn lost(&mut self) -> Result<(), Lost> {
        tracing::warn!("another replica declared this stream lost; it stops here");
        self.detach();
        Err(Lost)
    }

    /// Ends the store's copy with `outcome` and everything not sent yet, waiting at most a lease; the
    /// local log is then durable to its end whatever the store said.
    pub(super) async fn finish(mut self, outcome: Outcome, appended: u64) {
        let deadline = Instant::now() + self.lease;
        if timeout_at(deadline, self.finish_store(outcome, appended))
            .await
            .is_err()
        {
            self.metrics.store_errors.increment(StoreOp::Finish);
            tracing::warn!("the stream store did not take the end of the stream in time");
        }
        self.log.set_live_only(true);
    }

    async fn finish_store(&mut self, outcome: Outcome, appended: u64) {
        self.appended = appended;
        // The last batch must continue the one in flight.
        if let Some(mut write) = self.write.take() {
            let done = poll_fn(|cx| write.poll(cx)).await;
            if self.handle(done).is_err() {
                return;
            }
        }
        if !self.created && self.mode != Mode::Detached {
            // Never stored (the store was away): one more try, so the answer can be resumed.
            match self.store.create(self.id, self.record.clone()).await {
                Ok(()) | Err(StoreError::Exists) => self.created = true,
                Err(e) => {
                    tracing::warn!(error = %e, "the stream store did not take the stream");
                    self.metrics.store_errors.increment(StoreOp::Create);
                    return;
                }
            }
        }
        for _ in 0..FINISH_ATTEMPTS {
            if !self.created || self.mode == Mode::Detached {
                return;
            }
            let Some(frames) = self.log.frames_after(self.stored) else {
                self.abandon();
                if let Some(mut write) = self.write.take() {
                    let done = poll_fn(|cx| write.poll(cx)).await;
                    let _ = self.handle(done);
                }
                return;
            };
            let batch = Batch::new(self.stored + 1, frames);
            let last = batch.last();
            match self.store.finish(self.id, outcome, batch).await {
                Ok(_) => {
                    self.log.mark_durable(last);
                    return;
                }
                Err(StoreError::Conflict { expected, .. }) => self.resync(expected),
                // Declared lost, or forgotten: nothing more to write.
                Err(StoreError::Finished(_)) | Err(StoreError::NotFound) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "the stream store did not take the end of the stream");
                    self.metrics.store_errors.increment(StoreOp::Finish);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogBudget, MemoryLog};
    use crate::store::gate::Gate;
    use crate::store::MemoryStore;

    /// Drives `writer` as the reader's loop does until `until`.
    async fn drive(writer: &mut StoreWriter<'_>, until: Instant) {
        while let Ok(done) = timeout_at(until, writer.next()).await {
            let _ = writer.handle(done);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_lease_has_several_refreshes_before_it_lapses() {
        let gate = Gate::new(MemoryStore::for_tests());
        let id = StreamId::random();
        let log = Arc::new(MemoryLog::staged(id, 1 << 20, Arc::new(LogBudget::default())));
        let stream = Stream::new(id, "/r".into(), "m".into(), None, log);
        let lease = Duration::from_secs(1);
        let metrics = Arc::new(Metrics::noop());
        let mut writer = StoreWriter::new(&*gate, lease, &stream, NewStream::for_tests(), metrics);
        let start = Instant::now();
        drive(&mut writer, start + Duration::from_millis(100)).await;
        assert!(writer.created, "the record is in the store");
        // A store that answers every refresh with an error until the lease would lapse.
        gate.fail(true);
        drive(&mut writer, start + lease - Duration::from_millis(1)).await;
        assert!(
            gate.refreshes() >= 3,
            "{} refreshes tried within a 1 s lease",
            gate.refreshes()
        );
    }
}
