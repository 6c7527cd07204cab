//! In-memory log: a bounded deque of encoded frames, and the mark of how far readers may see.

use super::{Read, StreamLog, Subscription};
use crate::ids::StreamId;
use crate::protocol::{Dialect, Encoder, Native};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Bookkeeping overhead counted per held event, on top of its bytes.
const ENTRY_OVERHEAD: usize = 32;

/// Bytes held by all logs together, shared by every `MemoryLog`, mirrored in the
/// `sse_proxy_log_bytes` gauge.
#[derive(Debug)]
pub struct LogBudget {
    held: AtomicUsize,
    gauge: metrics::Gauge,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget::new(metrics::Gauge::noop())
    }
}

impl LogBudget {
    /// An empty budget that mirrors what it holds in `gauge` (the default records nowhere).
    pub fn new(gauge: metrics::Gauge) -> Self {
        LogBudget {
            held: AtomicUsize::new(0),
            gauge,
        }
    }

    /// Bytes held by all logs.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.held.fetch_add(n, Ordering::Relaxed);
        self.gauge.increment(n as f64);
    }

    fn sub(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
        self.gauge.decrement(n as f64);
    }
}

struct Inner {
    frames: VecDeque<Bytes>,
    /// Seq of `frames[0]`.
    first: u64,
    bytes: usize,
    closed: bool,
    /// Seq of the last frame readers may see.
    durable: u64,
    /// Appends wait for `mark_durable`; otherwise `durable` follows them.
    staged: bool,
    /// Writes each event once, as it is appended, in the stream's dialect.
    encoder: Box<dyn Encoder>,
}

impl Inner {
    /// Seq the next append gets.
    fn next(&self) -> u64 {
        self.first + self.frames.len() as u64
    }

    /// Seq of the last frame appended (0 before the first).
    fn last(&self) -> u64 {
        self.next() - 1
    }

    /// Drops the oldest frames until at most `max` bytes are held, keeping at least the newest `keep`;
    /// returns bytes freed.
    fn drop_oldest(&mut self, max: usize, keep: usize) -> usize {
        let mut freed = 0;
        while self.bytes > max && self.frames.len() > keep {
            if let Some(old) = self.frames.pop_front() {
                self.first += 1;
                self.bytes -= old.len() + ENTRY_OVERHEAD;
                freed += old.len() + ENTRY_OVERHEAD;
            }
        }
        freed
    }
}

/// A log held in this process's memory, bounded to `max_bytes` (oldest events dropped first).
///
/// A staged log ([`MemoryLog::staged`]) shows readers only the events up to its durable mark, which
/// the stream's reader moves once the stream store has them; a log made with [`MemoryLog::new`] shows
/// every event as soon as it is appended.
pub struct MemoryLog {
    id: String,
    dialect: Dialect,
    max_bytes: usize,
    budget: Arc<LogBudget>,
    inner: Mutex<Inner>,
    notify: watch::Sender<()>,
}

impl MemoryLog {
    /// An empty log for `stream` whose events are visible as soon as they are appended (unit tests:
    /// the proxy's logs are staged behind the store).
    #[cfg(test)]
    pub fn new(stream: StreamId, max_bytes: usize, budget: Arc<LogBudget>) -> Self {
        Self::build(stream, max_bytes, budget, false)
    }

    /// An empty log for `stream` whose events are visible only up to its durable mark.
    pub fn staged(stream: StreamId, max_bytes: usize, budget: Arc<LogBudget>) -> Self {
        Self::build(stream, max_bytes, budget, true)
    }

    fn build(stream: StreamId, max_bytes: usize, budget: Arc<LogBudget>, staged: bool) -> Self {
        MemoryLog {
            id: stream.to_string(),
            dialect: Dialect::Native,
            max_bytes,
            budget,
            inner: Mutex::new(Inner {
                frames: VecDeque::new(),
                first: 1,
                bytes: 0,
                closed: false,
                durable: 0,
                staged,
                encoder: Box::new(Native),
            }),
            notify: watch::Sender::new(()),
        }
    }

    /// Writes its events in `dialect`, for a stream answered by `model` (native by default).
    pub fn emit(mut self, dialect: Dialect, model: &str) -> Self {
        self.dialect = dialect;
        crate::sync::lock(&self.inner).encoder = dialect.encoder(model);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    fn wake(&self) {
        self.notify.send_replace(());
    }
}

impl StreamLog for MemoryLog {
    fn append(&self, event: Option<&str>, data: &str) -> u64 {
        let mut inner = self.lock();
        if inner.closed {
            return 0;
        }
        let seq = inner.next();
        let frame = inner.encoder.frame(&self.id, seq, event, data);
        let size = frame.len() + ENTRY_OVERHEAD;
        inner.frames.push_back(frame);
        inner.bytes += size;
        let visible = !inner.staged;
        if visible {
            inner.durable = seq;
        }
        let freed = inner.drop_oldest(self.max_bytes, 1);
        drop(inner);
        self.budget.add(size);
        self.budget.sub(freed);
        // A staged append changes nothing a reader sees, unless it pushed out frames one was due.
        if visible || freed > 0 {
            self.wake();
        }
        seq
    }

    fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        // Whatever the store got, the end is shown locally: its clients must not wait forever.
        inner.durable = inner.last();
        drop(inner);
        self.wake();
    }

    fn read_after(&self, after: u64, max_bytes: usize) -> Read {
        let inner = self.lock();
        let end = inner.durable;
        // Once `after <= last` holds, `after + 1` cannot overflow (`last` is below the next seq).
        if after > inner.last() || after + 1 < inner.first {
            // Past the last event is a forged position; before the start was evicted.
            return Read::Gone;
        }
        if after > end {
            // Appended but not yet marked durable: another replica may already have shown it from
            // the store, whose answer reaches this one a moment later. It is waited for.
            return Read::Pending;
        }
        if after == end {
            // A closed log is durable up to its last event.
            return if inner.closed { Read::End } else { Read::Pending };
        }
        let start = (after + 1 - inner.first) as usize;
        let available = (end - after) as usize;
        let (chunk, count) = super::coalesce(&inner.frames, start, start + available, max_bytes);
        Read::Data {
            chunk,
            last: after + count as u64,
        }
    }

    fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn subscribe(&self) -> Subscription {
        Subscription::new(self.notify.subscribe())
    }

    fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn last_seq(&self) -> u64 {
        self.lock().last()
    }

    fn first_seq(&self) -> u64 {
        self.lock().first
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    fn shrink_to(&self, max_bytes: usize) {
        // The total budget is a hard bound: under pressure even the newest event goes (a follower
        // that has read it goes on; one that has not gets `evicted`). Events dropped before the
        // store had them leave the stream's reader no choice but live-only (`frames_after` says so).
        let freed = self.lock().drop_oldest(max_bytes, 0);
        self.budget.sub(freed);
        self.wake();
    }

    fn clear(&self) {
        let mut inner = self.lock();
        let freed = inner.bytes;
        inner.first += inner.frames.len() as u64;
        inner.frames.clear();
        inner.bytes = 0;
        inner.closed = true;
        inner.durable = inner.last();
        drop(inner);
        self.budget.sub(freed);
        self.wake();
    }

    fn durable_seq(&self) -> u64 {
        self.lock().durable
    }

    fn mark_durable(&self, seq: u64) {
        let mut inner = self.lock();
        let to = seq.min(inner.last());
        if to <= inner.durable {
            return;
        }
        inner.durable = to;
        drop(inner);
        self.wake();
    }

    fn set_live_only(&self, on: bool) {
        let mut inner = self.lock();
        inner.staged = !on;
        let last = inner.last();
        if !on || inner.durable == last {
            return;
        }
        inner.durable = last;
        drop(inner);
        self.wake();
    }

    fn is_live_only(&self) -> bool {
        !self.lock().staged
    }

    fn frames_after(&self, after: u64) -> Option<Vec<Bytes>> {
        let inner = self.lock();
        if after >= inner.last() {
            return Some(Vec::new());
        }
        // `after < last` here, so `after + 1` cannot overflow.
        let start = (after + 1).checked_sub(inner.first)?;
        Some(inner.frames.range(start as usize..).cloned().collect())
    }
}

impl Drop for MemoryLog {
    fn drop(&mut self) {
        let held = self.lock().bytes;
        self.budget.sub(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn log(max: usize) -> (MemoryLog, Arc<LogBudget>) {
        let budget = Arc::new(LogBudget::default());
        (MemoryLog::new(StreamId::random(), max, budget.clone()), budget)
    }

    fn text(r: Read) -> (String, u64) {
        match r {
            Read::Data { chunk, last } => (String::from_utf8_lossy(&chunk).into_owned(), last),
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[test]
    fn ids_are_gapless_and_encoded_once() {
        let (log, _) = log(1 << 20);
        assert_eq!(log.append(None, "a"), 1);
        assert_eq!(log.append(Some("thinking"), "b\nc"), 2);
        let (t, last) = text(log.read_after(0, 1 << 20));
        assert_eq!(last, 2);
        let id = &log.id;
        assert_eq!(
            t,
            format!("data: a\nid: {id}:1\n\nevent: thinking\ndata: b\ndata: c\nid: {id}:2\n\n")
        );
        assert_eq!(log.read_after(2, 100), Read::Pending);
        log.close();
        assert_eq!(log.read_after(2, 100), Read::End);
        assert_eq!(log.append(None, "late"), 0);
    }

    #[test]
    fn coalesces_up_to_max_bytes_but_always_one_frame() {
        let (log, _) = log(1 << 20);
        for i in 0..10 {
            log.append(None, &format!("{i}"));
        }
        let frame_len = match log.read_after(0, 1) {
            Read::Data { chunk, last } => {
                assert_eq!(last, 1);
                chunk.len()
            }
            other => panic!("{other:?}"),
        };
        let (_, last) = text(log.read_after(0, frame_len * 3));
        assert_eq!(last, 3);
        let (_, last) = text(log.read_after(3, usize::MAX));
        assert_eq!(last, 10);
    }

    #[test]
    fn bounded_and_evicted_positions_are_gone() {
        let (log, budget) = log(1000);
        for _ in 0..100 {
            log.append(None, &"x".repeat(50));
        }
        assert!(log.bytes() <= 1000, "{}", log.bytes());
        assert_eq!(budget.held(), log.bytes());
        assert!(log.first_seq() > 1);
        assert_eq!(log.read_after(0, 100), Read::Gone);
        assert!(matches!(
            log.read_after(log.first_seq() - 1, 10_000),
            Read::Data { .. }
        ));
        assert_eq!(log.read_after(101, 100), Read::Gone, "forged future seq");
        assert_eq!(log.read_after(u64::MAX, 100), Read::Gone);
        log.clear();
        assert_eq!(budget.held(), 0);
        assert_eq!(log.read_after(99, 100), Read::Gone);
    }

    #[test]
    fn shrink_may_drop_every_event_keeping_positions() {
        let (log, budget) = log(1 << 20);
        for _ in 0..5 {
            log.append(None, "x");
        }
        log.shrink_to(0);
        assert_eq!((log.bytes(), budget.held()), (0, 0));
        assert_eq!((log.first_seq(), log.last_seq()), (6, 5));
        assert_eq!(
            log.read_after(5, 100),
            Read::Pending,
            "a caught-up reader goes on"
        );
        assert_eq!(log.read_after(4, 100), Read::Gone, "a reader behind was evicted");
        assert_eq!(log.append(None, "y"), 6);
        assert!(matches!(log.read_after(5, 100), Read::Data { last: 6, .. }));
    }

    #[test]
    fn budget_released_on_drop() {
        let (log, budget) = log(1 << 20);
        log.append(None, "hello");
        assert!(budget.held() > 0);
        drop(log);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn subscription_wakes_on_append() {
        let (log, _) = log(1 << 20);
        let log = Arc::new(log);
        let mut sub = log.subscribe();
        sub.mark_seen();
        assert_eq!(log.read_after(0, 100), Read::Pending);
        let l2 = log.clone();
        tokio::spawn(async move { l2.append(None, "x") });
        sub.changed().await;
        assert!(matches!(log.read_after(0, 100), Read::Data { last: 1, .. }));
    }
    fn staged(max: usize) -> MemoryLog {
        MemoryLog::staged(StreamId::random(), max, Arc::new(LogBudget::default()))
    }

    #[test]
    fn staged_events_are_hidden_until_marked_durable() {
        let log = staged(1 << 20);
        for t in ["a", "b", "c"] {
            log.append(None, t);
        }
        assert_eq!((log.last_seq(), log.durable_seq()), (3, 0));
        assert_eq!(log.read_after(0, 1 << 20), Read::Pending, "nothing durable yet");
        assert_eq!(
            log.read_after(1, 1 << 20),
            Read::Pending,
            "an id the store may already have shown elsewhere is waited for"
        );
        assert_eq!(log.read_after(4, 1 << 20), Read::Gone, "an id never appended");
        let frames = log.frames_after(0).expect("all held");
        assert_eq!(frames.len(), 3);
        log.mark_durable(2);
        let (t, last) = text(log.read_after(0, 1 << 20));
        assert_eq!(last, 2, "reads stop at the durable mark");
        assert!(t.contains("data: b") && !t.contains("data: c"), "{t}");
        assert_eq!(log.read_after(2, 1 << 20), Read::Pending);
        assert_eq!(log.read_after(3, 1 << 20), Read::Pending);
        log.mark_durable(1);
        assert_eq!(log.durable_seq(), 2, "the mark never goes back");
        log.mark_durable(99);
        assert_eq!(log.durable_seq(), 3, "nor past the last event");
        assert_eq!(log.frames_after(3), Some(Vec::new()));
        assert_eq!(log.frames_after(2).map(|f| f.len()), Some(1));
    }

    #[test]
    fn a_staged_log_ends_only_once_closed_and_close_shows_everything() {
        let log = staged(1 << 20);
        log.append(None, "a");
        log.append(Some("done"), "{}");
        log.mark_durable(1);
        assert_eq!(log.read_after(1, 1 << 20), Read::Pending);
        log.close();
        assert_eq!(log.durable_seq(), 2);
        assert!(matches!(log.read_after(1, 1 << 20), Read::Data { last: 2, .. }));
        assert_eq!(log.read_after(2, 1 << 20), Read::End);
    }

    #[test]
    fn live_only_shows_every_append_until_staged_again() {
        let log = staged(1 << 20);
        log.append(None, "a");
        log.set_live_only(true);
        assert_eq!(log.durable_seq(), 1, "what was waiting is shown");
        log.append(None, "b");
        assert_eq!(log.durable_seq(), 2);
        log.set_live_only(false);
        log.append(None, "c");
        assert_eq!(log.durable_seq(), 2, "staged again");
        assert!(matches!(log.read_after(0, 1 << 20), Read::Data { last: 2, .. }));
    }

    #[test]
    fn dropped_staged_events_are_reported_missing() {
        let log = staged(1 << 20);
        for _ in 0..4 {
            log.append(None, "x");
        }
        log.mark_durable(2);
        log.shrink_to(0);
        assert_eq!(
            log.frames_after(2),
            None,
            "events 3 and 4 never reached the store"
        );
        assert_eq!(
            log.read_after(2, 1 << 20),
            Read::Gone,
            "a reader due them is evicted"
        );
        assert_eq!(log.frames_after(4), Some(Vec::new()));
        // The per-log bound drops unconfirmed events too.
        let small = staged(300);
        for _ in 0..10 {
            small.append(None, &"y".repeat(50));
        }
        assert!(small.first_seq() > 1);
        assert_eq!(small.frames_after(0), None);
    }

    #[tokio::test(start_paused = true)]
    async fn readers_wake_when_events_become_durable_not_when_staged() {
        let log = Arc::new(staged(1 << 20));
        let mut sub = log.subscribe();
        sub.mark_seen();
        log.append(None, "x");
        let woke = tokio::time::timeout(Duration::from_secs(60), sub.changed()).await;
        assert!(woke.is_err(), "a staged append wakes nobody");
        let l2 = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            l2.mark_durable(1);
        });
        sub.changed().await;
        assert!(matches!(log.read_after(0, 100), Read::Data { last: 1, .. }));
    }
}
