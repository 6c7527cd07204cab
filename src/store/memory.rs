//! The in-memory store: every stream's record in a map, bounded per stream and in total.
//!
//! The map's lock is let go before a record's is taken (only `create` holds both, to look at the
//! record an id already has), and no path takes the map's lock while holding a record's: they cannot
//! deadlock, and appends to different streams only meet for a map lookup.

use super::memory_cluster::Cluster;
use super::record::Record;
use super::{
    Admission, AdmitLimits, Batch, BoxFuture, Claim, ClaimInfo, Meta, NewStream, Read, Store, StoreError,
    StoreSettings, Trim, Wait,
};
use crate::ids::StreamId;
use crate::stream::Outcome;
use crate::sync::lock;
use std::collections::HashMap;
use std::future::ready;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};

/// Expired streams are looked for at most this often (on `create`).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One stream's slot: `None` once removed, so a caller holding a stale `Arc` sees `NotFound`.
struct Entry {
    record: Mutex<Option<Record>>,
    /// Wakes waiters whenever what a read returns may have changed.
    notify: watch::Sender<()>,
}

struct Streams {
    map: HashMap<StreamId, Arc<Entry>>,
    last_sweep: Instant,
}

/// Stream logs held in this process's memory, shared by everything in it that holds the `Arc`.
pub struct MemoryStore {
    settings: StoreSettings,
    max_total_bytes: usize,
    held: AtomicUsize,
    streams: Mutex<Streams>,
    cluster: Mutex<Cluster>,
}

/// `now + d`, saturating far in the future instead of overflowing.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

impl MemoryStore {
    /// An empty store; all streams together hold at most about `max_total_bytes` (finished streams
    /// are evicted first, oldest first, then the oldest frames of the largest running ones).
    pub fn new(settings: StoreSettings, max_total_bytes: usize) -> Self {
        MemoryStore {
            settings,
            max_total_bytes,
            held: AtomicUsize::new(0),
            streams: Mutex::new(Streams {
                map: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            cluster: Mutex::new(Cluster::default()),
        }
    }

    /// The store unit tests use: 1 MiB per stream, a 5 s lease, 60 s retention, no total bound.
    #[cfg(test)]
    pub(crate) fn for_tests() -> std::sync::Arc<Self> {
        let settings = StoreSettings {
            max_stream_bytes: 1 << 20,
            lease: std::time::Duration::from_secs(5),
            retention: std::time::Duration::from_secs(60),
        };
        std::sync::Arc::new(MemoryStore::new(settings, usize::MAX))
    }

    /// Bytes held by all streams, bookkeeping included.
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Streams held (running, finished and not yet swept).
    pub fn len(&self) -> usize {
        lock(&self.streams).map.len()
    }

    /// Whether no stream is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every stream that has expired by `now`.
    pub fn sweep(&self, now: Instant) {
        for (id, entry) in self.entries() {
            let expired = lock(&entry.record)
                .as_ref()
                .is_some_and(|r| r.expired(now, self.settings.retention));
            if expired {
                self.forget(id, &entry);
            }
        }
    }

    fn entries(&self) -> Vec<(StreamId, Arc<Entry>)> {
        let streams = lock(&self.streams);
        streams.map.iter().map(|(id, e)| (*id, e.clone())).collect()
    }

    fn entry(&self, id: StreamId) -> Result<Arc<Entry>, StoreError> {
        lock(&self.streams)
            .map
            .get(&id)
            .cloned()
            .ok_or(StoreError::NotFound)
    }

    /// Runs `f` on the record in `entry`, keeps the byte count right, and wakes waiters if `wake`.
    fn with_entry<T>(
        &self,
        id: StreamId,
        entry: &Arc<Entry>,
        wake: bool,
        f: impl FnOnce(&mut Record, Instant) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let now = Instant::now();
        let mut slot = lock(&entry.record);
        let Some(record) = slot.as_mut() else {
            return Err(StoreError::NotFound);
        };
        if record.expired(now, self.settings.retention) {
            drop(slot);
            self.forget(id, entry);
            return Err(StoreError::NotFound);
        }
        let before = record.charged();
        let out = f(record, now);
        // Counted under the record's lock, so the total never sees a release before its charge.
        self.account(before, record.charged());
        drop(slot);
        if wake {
            entry.notify.send_replace(());
        }
        out
    }

    fn with_record<T>(
        &self,
        id: StreamId,
        wake: bool,
        f: impl FnOnce(&mut Record, Instant) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let entry = self.entry(id)?;
        self.with_entry(id, &entry, wake, f)
    }

    fn account(&self, before: usize, after: usize) {
        if after > before {
            self.held.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.held.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Removes `entry` from the map if it is still the one under `id`, and releases it.
    fn forget(&self, id: StreamId, entry: &Arc<Entry>) {
        {
            let mut streams = lock(&self.streams);
            if streams.map.get(&id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
                streams.map.remove(&id);
            }
        }
        self.release(entry);
    }

    /// Empties an entry that is out of the map: frees its bytes and wakes its waiters.
    fn release(&self, entry: &Entry) {
        let record = lock(&entry.record).take();
        if let Some(r) = record {
            self.account(r.charged(), 0);
        }
        entry.notify.send_replace(());
    }

    fn create_now(&self, id: StreamId, new: NewStream) -> Result<(), StoreError> {
        let now = Instant::now();
        let retention = self.settings.retention;
        let entry = Arc::new(Entry {
            record: Mutex::new(Some(Record::new(new, later(now, self.settings.lease)))),
            notify: watch::Sender::new(()),
        });
        let (stale, sweep) = {
            let mut streams = lock(&self.streams);
            if let Some(old) = streams.map.get(&id) {
                // An expired holder of the id gives way; a live one keeps it.
                if lock(&old.record)
                    .as_ref()
                    .is_some_and(|r| !r.expired(now, retention))
                {
                    return Err(StoreError::Exists);
                }
            }
            let stale = streams.map.insert(id, entry);
            let sweep = now >= later(streams.last_sweep, SWEEP_EVERY);
            if sweep {
                streams.last_sweep = now;
            }
            (stale, sweep)
        };
        if let Some(old) = stale {
            self.release(&old);
        }
        if sweep {
            self.sweep(now);
        }
        Ok(())
    }

    fn append_now(&self, id: StreamId, batch: Batch) -> Result<u64, StoreError> {
        let max = self.settings.max_stream_bytes;
        let last = self.with_record(id, true, |r, _| {
            r.append(batch, max)?;
            Ok(r.last_seq())
        })?;
        self.enforce_budget();
        Ok(last)
    }

    fn finish_now(&self, id: StreamId, outcome: Outcome, batch: Batch) -> Result<Outcome, StoreError> {
        let max = self.settings.max_stream_bytes;
        let kept = self.with_record(id, true, |r, now| r.finish(outcome, batch, max, now))?;
        self.enforce_budget();
        Ok(kept)
    }

    async fn wait_for(&self, id: StreamId, after: u64, deadline: Instant) -> Result<Wait, StoreError> {
        let entry = self.entry(id)?;
        // Subscribed before looking, so a change between the look and the wait is not missed.
        let mut changed = entry.notify.subscribe();
        if !self.with_entry(id, &entry, false, |r, _| Ok(r.is_pending(after)))? {
            return Ok(Wait::Ready);
        }
        match timeout_at(deadline, changed.changed()).await {
            Ok(_) => Ok(Wait::Ready),
            Err(_) => Ok(Wait::Timeout),
        }
    }

    /// Evicts until all streams fit `max_total_bytes`, down to a low-water mark 10% below it so a
    /// store at its limit does not sort every stream on every append.
    fn enforce_budget(&self) {
        if self.held_bytes() <= self.max_total_bytes {
            return;
        }
        let target = self.max_total_bytes - self.max_total_bytes / 10;
        // Keys read once: a sort key that changes under the sort breaks its ordering.
        let mut finished = Vec::new();
        let mut running = Vec::new();
        for (id, entry) in self.entries() {
            let key = lock(&entry.record)
                .as_ref()
                .map(|r| (r.finished_at(), r.charged()));
            match key {
                Some((Some(at), _)) => finished.push((at, id, entry)),
                Some((None, charged)) => running.push((charged, id, entry)),
                None => {}
            }
        }
        finished.sort_by_key(|(at, id, _)| (*at, *id));
        for (_, id, entry) in finished {
            if self.held_bytes() <= target {
                return;
            }
            self.forget(id, &entry);
        }
        running.sort_by_key(|(charged, _, _)| std::cmp::Reverse(*charged));
        for (_, id, entry) in running {
            let excess = self.held_bytes().saturating_sub(target);
            if excess == 0 {
                return;
            }
            let _ = self.with_entry(id, &entry, true, |r, _| {
                Ok(r.trim(Trim::MaxBytes(r.bytes().saturating_sub(excess))))
            });
        }
    }
}

impl Store for MemoryStore {
    fn create(&self, id: StreamId, new: NewStream) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(ready(self.create_now(id, new)))
    }

    fn append(&self, id: StreamId, batch: Batch) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(ready(self.append_now(id, batch)))
    }

    fn read(&self, id: StreamId, after: u64, max_bytes: usize) -> BoxFuture<'_, Result<Read, StoreError>> {
        Box::pin(ready(
            self.with_record(id, false, |r, _| Ok(r.read(after, max_bytes))),
        ))
    }

    fn wait(&self, id: StreamId, after: u64, deadline: Instant) -> BoxFuture<'_, Result<Wait, StoreError>> {
        Box::pin(self.wait_for(id, after, deadline))
    }

    fn finish(
        &self,
        id: StreamId,
        outcome: Outcome,
        batch: Batch,
    ) -> BoxFuture<'_, Result<Outcome, StoreError>> {
        Box::pin(ready(self.finish_now(id, outcome, batch)))
    }

    fn trim(&self, id: StreamId, trim: Trim) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(ready(self.with_record(id, true, |r, _| Ok(r.trim(trim)))))
    }

    fn meta(&self, id: StreamId) -> BoxFuture<'_, Result<Meta, StoreError>> {
        Box::pin(ready(self.with_record(id, false, |r, now| Ok(r.meta(now)))))
    }

    fn refresh_lease(&self, id: StreamId) -> BoxFuture<'_, Result<(), StoreError>> {
        let lease = self.settings.lease;
        Box::pin(ready(
            self.with_record(id, false, |r, now| r.refresh(later(now, lease))),
        ))
    }

    fn remove(&self, id: StreamId) -> BoxFuture<'_, Result<(), StoreError>> {
        if let Ok(entry) = self.entry(id) {
            self.forget(id, &entry);
        }
        Box::pin(ready(Ok(())))
    }

    fn admit(&self, claim: Claim, limits: AdmitLimits) -> BoxFuture<'_, Result<Admission, StoreError>> {
        let now = Instant::now();
        let until = later(now, self.settings.lease);
        Box::pin(ready(Ok(lock(&self.cluster).admit(claim, limits, now, until))))
    }

    fn refresh_claim(&self, claim: Claim) -> BoxFuture<'_, Result<(), StoreError>> {
        let until = later(Instant::now(), self.settings.lease);
        lock(&self.cluster).refresh(claim, until);
        Box::pin(ready(Ok(())))
    }

    fn release(&self, claim: Claim) -> BoxFuture<'_, Result<(), StoreError>> {
        lock(&self.cluster).release(claim.id);
        Box::pin(ready(Ok(())))
    }

    fn claims(&self) -> BoxFuture<'_, Result<Vec<ClaimInfo>, StoreError>> {
        let held = lock(&self.cluster).claims(Instant::now());
        let list = held
            .into_iter()
            .map(|(id, replica)| ClaimInfo {
                id,
                replica,
                meta: self.with_record(id, false, |r, now| Ok(r.meta(now))).ok(),
            })
            .collect();
        Box::pin(ready(Ok(list)))
    }

    fn add_length(
        &self,
        route: String,
        model: String,
        total: u64,
        keep: usize,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        lock(&self.cluster).add_length((route, model), total, keep);
        Box::pin(ready(Ok(())))
    }

    fn lengths(
        &self,
        route: String,
        model: String,
        keep: usize,
    ) -> BoxFuture<'_, Result<Vec<u64>, StoreError>> {
        Box::pin(ready(Ok(lock(&self.cluster).lengths(&(route, model), keep))))
    }

    fn shared_secret(
        &self,
        name: &'static str,
        proposed: [u8; 16],
    ) -> BoxFuture<'_, Result<[u8; 16], StoreError>> {
        Box::pin(ready(Ok(lock(&self.cluster).secret(name, proposed))))
    }

    fn follow(&self, id: StreamId, token: u64, max: usize) -> BoxFuture<'_, Result<bool, StoreError>> {
        let lease = self.settings.lease;
        Box::pin(ready(self.with_record(id, false, |r, now| {
            Ok(r.follow(token, max, now, later(now, lease)))
        })))
    }

    fn refresh_follow(&self, id: StreamId, token: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        let lease = self.settings.lease;
        Box::pin(ready(self.with_record(id, false, |r, now| {
            r.refresh_follow(token, later(now, lease));
            Ok(())
        })))
    }

    fn unfollow(&self, id: StreamId, token: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        let _ = self.with_record(id, false, |r, _| {
            r.unfollow(token);
            Ok(())
        });
        Box::pin(ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::ENTRY_OVERHEAD;
    use crate::store::State;
    use bytes::Bytes;

    fn store(max_total: usize) -> MemoryStore {
        let settings = StoreSettings {
            max_stream_bytes: 1 << 20,
            lease: Duration::from_secs(5),
            retention: Duration::from_secs(60),
        };
        MemoryStore::new(settings, max_total)
    }

    /// A running stream holding `n` frames of `size` bytes.
    async fn filled(store: &MemoryStore, n: u64, size: usize) -> StreamId {
        let id = StreamId::random();
        store.create(id, NewStream::for_tests()).await.expect("create");
        let frames = (0..n).map(|_| Bytes::from(vec![b'x'; size])).collect();
        store.append(id, Batch::new(1, frames)).await.expect("append");
        id
    }

    async fn finished(store: &MemoryStore, id: StreamId) {
        let last = store.meta(id).await.expect("meta").last_seq;
        let kept = store
            .finish(id, Outcome::Completed, Batch::new(last + 1, Vec::new()))
            .await;
        assert_eq!(kept, Ok(Outcome::Completed));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_are_counted_and_released() {
        let store = store(usize::MAX);
        let id = filled(&store, 10, 100).await;
        assert_eq!(store.held_bytes(), 10 * (100 + ENTRY_OVERHEAD));
        assert_eq!(store.trim(id, Trim::Before(6)).await, Ok(6));
        assert_eq!(store.held_bytes(), 5 * (100 + ENTRY_OVERHEAD));
        store.remove(id).await.expect("remove");
        assert_eq!((store.held_bytes(), store.len()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_streams_are_swept_and_their_ids_freed() {
        let store = store(usize::MAX);
        let old = filled(&store, 10, 100).await;
        finished(&store, old).await;
        tokio::time::advance(Duration::from_secs(61)).await;
        // Creating another stream sweeps: the expired one's memory comes back without a lookup.
        let young = filled(&store, 1, 100).await;
        assert_eq!(store.len(), 1);
        assert_eq!(store.held_bytes(), 100 + ENTRY_OVERHEAD);
        assert_eq!(store.meta(old).await, Err(StoreError::NotFound));
        tokio::time::advance(Duration::from_secs(66)).await;
        // A lapsed lease plus the retention: the id of a crashed owner's stream is free again.
        store.create(young, NewStream::for_tests()).await.expect("reused");
        assert_eq!(store.held_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn total_budget_evicts_finished_oldest_first_then_trims_running() {
        let frame = 100 + ENTRY_OVERHEAD;
        let store = store(100 * frame);
        let old = filled(&store, 30, 100).await;
        finished(&store, old).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        let young = filled(&store, 30, 100).await;
        finished(&store, young).await;
        let running = filled(&store, 30, 100).await;
        assert_eq!(store.held_bytes(), 90 * frame, "under the budget nothing goes");
        store
            .append(running, Batch::new(31, vec![Bytes::from(vec![b'y'; 100]); 20]))
            .await
            .expect("append");
        assert_eq!(
            store.meta(old).await,
            Err(StoreError::NotFound),
            "oldest finished first"
        );
        assert!(store.meta(young).await.is_ok());
        assert!(store.held_bytes() <= 90 * frame, "{}", store.held_bytes());
        store
            .append(running, Batch::new(51, vec![Bytes::from(vec![b'z'; 100]); 60]))
            .await
            .expect("append");
        assert_eq!(store.meta(young).await, Err(StoreError::NotFound));
        let m = store.meta(running).await.expect("the running stream stays");
        assert_eq!((m.state, m.last_seq), (State::Running, 110));
        assert!(m.first_seq > 1, "its oldest frames went");
        assert!(store.held_bytes() <= 100 * frame, "{}", store.held_bytes());
    }
}
