//! In-memory log: a bounded deque of encoded frames.

use super::{Read, StreamLog, Subscription};
use crate::ids::StreamId;
use crate::protocol;
use bytes::{BufMut, Bytes, BytesMut};
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
}

impl Inner {
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
pub struct MemoryLog {
    id: String,
    max_bytes: usize,
    budget: Arc<LogBudget>,
    inner: Mutex<Inner>,
    notify: watch::Sender<()>,
}

impl MemoryLog {
    /// An empty log for `stream`.
    pub fn new(stream: StreamId, max_bytes: usize, budget: Arc<LogBudget>) -> Self {
        MemoryLog {
            id: stream.to_string(),
            max_bytes,
            budget,
            inner: Mutex::new(Inner {
                frames: VecDeque::new(),
                first: 1,
                bytes: 0,
                closed: false,
            }),
            notify: watch::Sender::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }
}

impl StreamLog for MemoryLog {
    fn append(&self, event: Option<&str>, data: &str) -> u64 {
        let mut inner = self.lock();
        if inner.closed {
            return 0;
        }
        let seq = Self::next_seq(&inner);
        let frame = protocol::encode_frame(&self.id, seq, event, data);
        let size = frame.len() + ENTRY_OVERHEAD;
        inner.frames.push_back(frame);
        inner.bytes += size;
        let freed = inner.drop_oldest(self.max_bytes, 1);
        drop(inner);
        self.budget.add(size);
        self.budget.sub(freed);
        self.notify.send_replace(());
        seq
    }

    fn close(&self) {
        self.lock().closed = true;
        self.notify.send_replace(());
    }

    fn read_after(&self, after: u64, max_bytes: usize) -> Read {
        let inner = self.lock();
        let next = Self::next_seq(&inner);
        // Once `after < next` holds, `after + 1` cannot overflow.
        if after >= next || after + 1 < inner.first {
            // Past the end is a forged position; before the start was evicted.
            return Read::Gone;
        }
        let start = (after + 1 - inner.first) as usize;
        if start == inner.frames.len() {
            return if inner.closed { Read::End } else { Read::Pending };
        }
        let first = &inner.frames[start];
        let mut total = first.len();
        let mut count = 1;
        for f in inner.frames.range(start + 1..) {
            if total + f.len() > max_bytes {
                break;
            }
            total += f.len();
            count += 1;
        }
        let chunk = if count == 1 {
            first.clone()
        } else {
            let mut buf = BytesMut::with_capacity(total);
            for f in inner.frames.range(start..start + count) {
                buf.put_slice(f);
            }
            buf.freeze()
        };
        Read::Data {
            chunk,
            last: after + count as u64,
        }
    }

    fn subscribe(&self) -> Subscription {
        Subscription::new(self.notify.subscribe())
    }

    fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn last_seq(&self) -> u64 {
        Self::next_seq(&self.lock()) - 1
    }

    fn first_seq(&self) -> u64 {
        self.lock().first
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    fn shrink_to(&self, max_bytes: usize) {
        // The total budget is a hard bound: under pressure even the newest event goes (a follower
        // that has read it goes on; one that has not gets `evicted`).
        let freed = self.lock().drop_oldest(max_bytes, 0);
        self.budget.sub(freed);
        self.notify.send_replace(());
    }

    fn clear(&self) {
        let mut inner = self.lock();
        let freed = inner.bytes;
        inner.first += inner.frames.len() as u64;
        inner.frames.clear();
        inner.bytes = 0;
        inner.closed = true;
        drop(inner);
        self.budget.sub(freed);
        self.notify.send_replace(());
    }
}

impl MemoryLog {
    /// Seq the next append gets.
    fn next_seq(inner: &Inner) -> u64 {
        inner.first + inner.frames.len() as u64
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
            format!("id: {id}:1\ndata: a\n\nid: {id}:2\nevent: thinking\ndata: b\ndata: c\n\n")
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
}
