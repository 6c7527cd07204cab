//! All streams of this process: lookup by id, admission limits, retention and memory eviction.

use super::{State, Stream};
use crate::identity::Owner;
use crate::ids::StreamId;
use crate::log::LogBudget;
use crate::metrics::{EvictionKind, Metrics, RejectReason};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// Why a stream or a connection to one was refused (answered `429`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// `limits.max_streams` running.
    #[error("too many streams are running; try again later")]
    MaxStreams,
    /// `limits.max_streams_per_identity` running for this user.
    #[error("too many of your streams are running; wait for one to finish")]
    MaxStreamsPerIdentity,
    /// `limits.max_followers` connections already follow the stream.
    #[error("too many connections follow this stream")]
    MaxFollowers,
}

impl From<Rejected> for RejectReason {
    fn from(why: Rejected) -> Self {
        match why {
            Rejected::MaxStreams => RejectReason::MaxStreams,
            Rejected::MaxStreamsPerIdentity => RejectReason::MaxStreamsPerIdentity,
            Rejected::MaxFollowers => RejectReason::MaxFollowers,
        }
    }
}

impl Rejected {
    /// The `error` code of the JSON body.
    pub fn code(self) -> &'static str {
        match self {
            Rejected::MaxStreams | Rejected::MaxStreamsPerIdentity => "too_many_streams",
            Rejected::MaxFollowers => "too_many_followers",
        }
    }
}

/// A snapshot of one stream for the admin `/streams` list (no content, no identity).
#[derive(Debug, serde::Serialize)]
pub struct StreamInfo {
    /// Stream id.
    pub id: String,
    /// The replica reading it.
    pub replica: String,
    /// `running`, `detached` or `finished` (`starting` for another replica's stream whose backend
    /// has not answered yet).
    pub state: &'static str,
    /// Outcome, when finished.
    pub outcome: Option<&'static str>,
    /// Configured route.
    pub route: String,
    /// Model name.
    pub model: String,
    /// Tokens so far (unknown for another replica's stream).
    pub tokens: Option<u64>,
    /// Connections attached (to the replica reading it).
    pub connections: Option<usize>,
    /// Seconds since start.
    pub age_seconds: Option<f64>,
    /// Bytes its log holds.
    pub bytes: usize,
    /// Last event seq.
    pub last_seq: u64,
}

#[derive(Default)]
struct Inner {
    streams: HashMap<StreamId, Arc<Stream>>,
    running: usize,
    running_by_owner: HashMap<Owner, usize>,
    /// Connections of this process following, from the store, streams another replica reads.
    remote_followers: HashMap<StreamId, usize>,
}

/// A connection following a stream another replica reads; counted against `max_followers` until
/// dropped.
pub struct RemoteFollower {
    registry: Arc<Registry>,
    id: StreamId,
}

impl RemoteFollower {
    /// The stream followed.
    pub fn id(&self) -> StreamId {
        self.id
    }
}

impl Drop for RemoteFollower {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(n) = inner.remote_followers.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                inner.remote_followers.remove(&self.id);
            }
        }
    }
}

/// The registry of streams.
pub struct Registry {
    inner: Mutex<Inner>,
    budget: Arc<LogBudget>,
    // Atomics: a config reload changes them while streams are admitted.
    max_streams: AtomicUsize,
    max_per_owner: AtomicUsize,
    max_total_bytes: usize,
    retention: Duration,
    readers: TaskTracker,
    metrics: Arc<Metrics>,
}

/// A reserved running-stream slot; released on drop.
pub struct Slot {
    registry: Arc<Registry>,
    owner: Option<Owner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        inner.running = inner.running.saturating_sub(1);
        if let Some(o) = self.owner {
            if let Some(n) = inner.running_by_owner.get_mut(&o) {
                *n -= 1;
                if *n == 0 {
                    inner.running_by_owner.remove(&o);
                }
            }
        }
        self.registry.metrics.streams_active.set(inner.running as f64);
    }
}

impl Registry {
    /// An empty registry, counting into `metrics`.
    pub fn new(
        budget: Arc<LogBudget>,
        max_streams: usize,
        max_per_owner: usize,
        max_total_bytes: usize,
        retention: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            budget,
            max_streams: AtomicUsize::new(max_streams),
            max_per_owner: AtomicUsize::new(max_per_owner),
            max_total_bytes,
            retention,
            readers: TaskTracker::new(),
            metrics,
        }
    }

    /// Runs a stream's reader task, tracked so that shutdown can wait for it to end its stream.
    pub fn spawn_reader<F>(&self, reader: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.readers.spawn(reader);
    }

    /// Waits up to `within` for every reader to end (each ends its stream within `shutdown_grace`
    /// once shutdown starts), so that none is dropped mid-stream when the runtime stops.
    pub async fn wait_readers(&self, within: Duration) {
        self.readers.close();
        if tokio::time::timeout(within, self.readers.wait()).await.is_err() {
            tracing::warn!(
                running = self.readers.len(),
                "stream readers still running after the grace period"
            );
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    /// The metrics the streams of this registry count into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The shared byte budget of all logs.
    pub fn budget(&self) -> &Arc<LogBudget> {
        &self.budget
    }

    /// Checks new streams against these limits from now on (a config reload); the running ones
    /// keep their slots.
    pub fn set_limits(&self, max_streams: usize, max_per_owner: usize) {
        self.max_streams.store(max_streams, Ordering::Relaxed);
        self.max_per_owner.store(max_per_owner, Ordering::Relaxed);
    }

    /// `(max_streams, max_per_owner)` now.
    pub fn limits(&self) -> (usize, usize) {
        (
            self.max_streams.load(Ordering::Relaxed),
            self.max_per_owner.load(Ordering::Relaxed),
        )
    }

    /// Reserves a running-stream slot for `owner`, or says which limit is reached.
    pub fn reserve(self: &Arc<Self>, owner: Option<Owner>) -> Result<Slot, Rejected> {
        let mut inner = self.lock();
        if inner.running >= self.max_streams.load(Ordering::Relaxed) {
            return Err(Rejected::MaxStreams);
        }
        if let Some(o) = owner {
            if inner
                .running_by_owner
                .get(&o)
                .is_some_and(|n| *n >= self.max_per_owner.load(Ordering::Relaxed))
            {
                return Err(Rejected::MaxStreamsPerIdentity);
            }
        }
        Ok(self.count(&mut inner, owner))
    }

    /// A running-stream slot for `owner` the stream store admitted: counted here, not checked.
    pub fn hold(self: &Arc<Self>, owner: Option<Owner>) -> Slot {
        let mut inner = self.lock();
        self.count(&mut inner, owner)
    }

    fn count(self: &Arc<Self>, inner: &mut Inner, owner: Option<Owner>) -> Slot {
        if let Some(o) = owner {
            *inner.running_by_owner.entry(o).or_insert(0) += 1;
        }
        inner.running += 1;
        self.metrics.streams_active.set(inner.running as f64);
        Slot {
            registry: self.clone(),
            owner,
        }
    }

    /// Counts a connection of this process following stream `id` from the store, unless `max`
    /// already do.
    pub fn follow_remote(self: &Arc<Self>, id: StreamId, max: usize) -> Option<RemoteFollower> {
        let mut inner = self.lock();
        let n = inner.remote_followers.entry(id).or_insert(0);
        if *n >= max {
            if *n == 0 {
                inner.remote_followers.remove(&id);
            }
            return None;
        }
        *n += 1;
        Some(RemoteFollower {
            registry: self.clone(),
            id,
        })
    }

    /// Adds a stream.
    pub fn insert(&self, stream: Arc<Stream>) {
        self.lock().streams.insert(stream.id, stream);
    }

    /// Looks a stream up.
    pub fn get(&self, id: &StreamId) -> Option<Arc<Stream>> {
        self.lock().streams.get(id).cloned()
    }

    /// Running streams now.
    pub fn running(&self) -> usize {
        self.lock().running
    }

    /// Streams held (running and retained).
    pub fn len(&self) -> usize {
        self.lock().streams.len()
    }

    /// Whether no stream is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops finished streams older than the retention, and evicts while over the byte budget.
    pub fn sweep(&self, now: Instant) {
        let mut inner = self.lock();
        let retention = self.retention;
        inner.streams.retain(|_, s| match s.state() {
            State::Finished(_, at) => now.saturating_duration_since(at) < retention,
            State::Running => true,
        });
        drop(inner);
        self.enforce_budget();
        self.publish_gauges();
    }

    /// Evicts until all logs fit `max_total_bytes`: finished streams first (oldest first), then the
    /// oldest events of the largest running logs. It evicts down to a low-water mark 10% below the
    /// limit, so a proxy at its limit does not sort every stream on every appended event.
    pub fn enforce_budget(&self) {
        if self.budget.held() <= self.max_total_bytes {
            return;
        }
        let target = self.max_total_bytes - self.max_total_bytes / 10;
        let mut inner = self.lock();
        let mut finished: Vec<(Instant, StreamId)> = inner
            .streams
            .values()
            .filter_map(|s| match s.state() {
                State::Finished(_, at) => Some((at, s.id)),
                State::Running => None,
            })
            .collect();
        finished.sort();
        for (_, id) in finished {
            if self.budget.held() <= target {
                return;
            }
            if let Some(s) = inner.streams.remove(&id) {
                s.log.clear();
                self.metrics.evictions.increment(EvictionKind::Finished);
            }
        }
        // Sizes are read once: other streams keep appending while we sort, and a sort key that
        // changes under the sort breaks its ordering (and makes the standard sort panic).
        let mut running: Vec<(usize, Arc<Stream>)> = inner
            .streams
            .values()
            .map(|s| (s.log.bytes(), s.clone()))
            .collect();
        drop(inner);
        running.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        for (_, s) in running {
            let held = self.budget.held();
            if held <= target {
                return;
            }
            let excess = held - target;
            s.log.shrink_to(s.log.bytes().saturating_sub(excess));
            self.metrics.evictions.increment(EvictionKind::Running);
        }
    }

    /// Updates the detached-streams gauge.
    fn publish_gauges(&self) {
        let detached = self
            .lock()
            .streams
            .values()
            .filter(|s| s.state() == State::Running && s.followers() == 0)
            .count();
        self.metrics.streams_detached.set(detached as f64);
    }

    /// Snapshot for `/streams`, newest first; `replica` is this process's name.
    pub fn list(&self, now: Instant, replica: &str) -> Vec<StreamInfo> {
        let streams: Vec<Arc<Stream>> = self.lock().streams.values().cloned().collect();
        let mut out: Vec<StreamInfo> = streams
            .iter()
            .map(|s| {
                let (state, outcome) = match s.state() {
                    State::Running if s.followers() == 0 => ("detached", None),
                    State::Running => ("running", None),
                    State::Finished(o, _) => ("finished", Some(o.as_str())),
                };
                StreamInfo {
                    id: s.id.to_string(),
                    replica: replica.to_owned(),
                    state,
                    outcome,
                    route: s.route.to_string(),
                    model: s.model.clone(),
                    tokens: Some(s.tokens()),
                    connections: Some(s.followers()),
                    age_seconds: Some(now.saturating_duration_since(s.started).as_secs_f64()),
                    bytes: s.log.bytes(),
                    last_seq: s.log.last_seq(),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            a.age_seconds
                .unwrap_or(0.0)
                .total_cmp(&b.age_seconds.unwrap_or(0.0))
        });
        out
    }

    /// Runs `sweep` every `every` until `stop` fires.
    pub async fn run_sweeper(self: Arc<Self>, every: Duration, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.sweep(Instant::now()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::MemoryLog;
    use crate::stream::Outcome;

    fn registry(max_total: usize) -> Arc<Registry> {
        Arc::new(Registry::new(
            Arc::new(LogBudget::default()),
            2,
            1,
            max_total,
            Duration::from_secs(60),
            Arc::new(Metrics::noop()),
        ))
    }

    fn add(r: &Registry, max_bytes: usize) -> Arc<Stream> {
        let id = StreamId::random();
        let log = Arc::new(MemoryLog::new(id, max_bytes, r.budget().clone()));
        let s = Arc::new(Stream::new(id, "/r".into(), "m".into(), None, log));
        r.insert(s.clone());
        s
    }

    #[test]
    fn limits_total_and_per_owner() {
        let r = registry(1 << 20);
        let a = Owner::test(1);
        let s1 = r.reserve(Some(a)).expect("first");
        assert_eq!(r.reserve(Some(a)).err(), Some(Rejected::MaxStreamsPerIdentity));
        let s2 = r.reserve(None).expect("anonymous");
        assert_eq!(r.reserve(Some(Owner::test(2))).err(), Some(Rejected::MaxStreams));
        drop(s1);
        drop(s2);
        assert_eq!(r.running(), 0);
        assert!(r.reserve(Some(a)).is_ok());
    }

    #[test]
    fn new_limits_apply_to_new_slots_and_leave_held_ones() {
        let r = registry(1 << 20);
        let a = Owner::test(1);
        let s1 = r.reserve(Some(a)).expect("first");
        r.set_limits(3, 2);
        let s2 = r
            .reserve(Some(a))
            .expect("a second for the owner under the raised limit");
        let s3 = r.reserve(None).expect("a third in total");
        assert_eq!(r.reserve(None).err(), Some(Rejected::MaxStreams));
        r.set_limits(1, 1);
        assert_eq!(r.running(), 3, "lowered limits end no running stream");
        drop((s1, s2, s3));
        let _only = r.reserve(None).expect("one");
        assert_eq!(r.reserve(None).err(), Some(Rejected::MaxStreams));
    }

    #[test]
    fn remote_followers_are_counted_per_stream_until_dropped() {
        let r = registry(1 << 20);
        let (id, other) = (StreamId::random(), StreamId::random());
        let f1 = r.follow_remote(id, 2).expect("first");
        let f2 = r.follow_remote(id, 2).expect("second");
        assert!(r.follow_remote(id, 2).is_none(), "a third of the same stream");
        assert!(r.follow_remote(other, 2).is_some(), "another stream counts apart");
        drop(f1);
        let f3 = r.follow_remote(id, 2).expect("a place came back");
        drop((f2, f3));
        assert!(r.lock().remote_followers.is_empty(), "nothing left behind");
        assert!(r.follow_remote(id, 0).is_none());
        assert!(r.lock().remote_followers.is_empty());
    }

    #[test]
    fn held_slots_are_counted_but_not_checked() {
        let r = registry(1 << 20);
        let a = Owner::test(1);
        let held: Vec<_> = (0..3).map(|_| r.hold(Some(a))).collect();
        assert_eq!(r.running(), 3, "the store admitted them");
        assert_eq!(r.reserve(None).err(), Some(Rejected::MaxStreams));
        drop(held);
        assert_eq!(r.running(), 0);
        assert!(r.reserve(Some(a)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn retention_drops_finished_streams() {
        let r = registry(1 << 20);
        let s = add(&r, 1 << 20);
        let running = add(&r, 1 << 20);
        s.finish(Outcome::Completed);
        r.sweep(Instant::now());
        assert!(r.get(&s.id).is_some());
        tokio::time::advance(Duration::from_secs(61)).await;
        r.sweep(Instant::now());
        assert!(r.get(&s.id).is_none());
        assert!(r.get(&running.id).is_some());
    }

    #[test]
    fn eviction_is_safe_while_other_threads_append() {
        let r = registry(50_000);
        let streams: Vec<_> = (0..40).map(|_| add(&r, 1 << 20)).collect();
        std::thread::scope(|scope| {
            for chunk in streams.chunks(10) {
                let r = &r;
                scope.spawn(move || {
                    for i in 0..2000 {
                        let s = &chunk[i % chunk.len()];
                        s.log.append(None, &"w".repeat(10 + i % 90));
                        r.enforce_budget();
                    }
                });
            }
        });
        // Each thread may add one event between the check and the eviction.
        assert!(r.budget().held() <= 50_000 + 4 * 200, "{}", r.budget().held());
    }

    #[test]
    fn budget_evicts_finished_oldest_first_then_shrinks_running() {
        let r = registry(10_000);
        let old = add(&r, 1 << 20);
        let young = add(&r, 1 << 20);
        let running = add(&r, 1 << 20);
        for s in [&old, &young, &running] {
            for _ in 0..40 {
                s.log.append(None, &"x".repeat(100));
            }
        }
        old.finish(Outcome::Completed);
        young.finish(Outcome::Completed);
        r.enforce_budget();
        assert!(
            r.budget().held() <= 9_000,
            "evicted to the low-water mark: {}",
            r.budget().held()
        );
        assert!(r.get(&old.id).is_none(), "oldest finished evicted first");
        for _ in 0..200 {
            running.log.append(None, &"y".repeat(100));
            r.enforce_budget();
        }
        assert!(r.get(&young.id).is_none());
        assert!(r.budget().held() <= 10_000, "{}", r.budget().held());
        assert!(running.log.bytes() > 0);
    }
}
