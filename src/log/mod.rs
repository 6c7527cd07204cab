//! The stream log: re-framed events of one stream, ids assigned on append, read by cursors.
//!
//! A stream appends; every connection is a cursor that reads after a sequence number. Live delivery and
//! replay are the same read. The replica reading a stream's upstream keeps its log in memory
//! ([`MemoryLog`]); a staged log shows readers only what the stream store (`crate::store`) has
//! confirmed, so an id a client was given can be asked for on any replica.

mod memory;

pub use memory::{LogBudget, MemoryLog};

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use tokio::sync::watch;

/// The result of reading a log after a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// One or more encoded frames, coalesced, and the seq of the last one.
    Data {
        /// Encoded frames, ready for the wire.
        chunk: Bytes,
        /// Seq of the last frame in `chunk`.
        last: u64,
    },
    /// Nothing after this position yet; wait on the subscription.
    Pending,
    /// The log is closed and everything has been read.
    End,
    /// The position is no longer (or never was) in the log.
    Gone,
}

/// The frames `frames[start..end]` (at least one) coalesced into one chunk of at most `max_bytes`
/// (or the first frame alone when it is larger), and how many frames it holds. One frame is shared,
/// not copied.
pub(crate) fn coalesce(
    frames: &VecDeque<Bytes>,
    start: usize,
    end: usize,
    max_bytes: usize,
) -> (Bytes, usize) {
    let Some(first) = frames.get(start) else {
        return (Bytes::new(), 0);
    };
    let mut total = first.len();
    let mut count = 1;
    for f in frames.range(start + 1..end.min(frames.len())) {
        if total + f.len() > max_bytes {
            break;
        }
        total += f.len();
        count += 1;
    }
    if count == 1 {
        return (first.clone(), 1);
    }
    let mut buf = BytesMut::with_capacity(total);
    for f in frames.range(start..start + count) {
        buf.put_slice(f);
    }
    (buf.freeze(), count)
}

/// One stream's append-only event log.
pub trait StreamLog: Send + Sync + 'static {
    /// Encodes and appends an event with the next seq (`id: <stream>:<seq>`); returns the seq.
    /// `event` is the event type (`None` for `message`). Appends after `close` are ignored and return 0.
    fn append(&self, event: Option<&str>, data: &str) -> u64;
    /// The dialect its events are written in.
    fn dialect(&self) -> crate::protocol::Dialect {
        crate::protocol::Dialect::Native
    }
    /// Marks the log complete: readers get `End` once they have read everything.
    fn close(&self);
    /// Frames after `after`, coalesced up to `max_bytes` (always at least one frame when any is available).
    fn read_after(&self, after: u64, max_bytes: usize) -> Read;
    /// A handle that wakes when the log changes.
    fn subscribe(&self) -> Subscription;
    /// Bytes held.
    fn bytes(&self) -> usize;
    /// Seq of the last appended event (0 when empty).
    fn last_seq(&self) -> u64;
    /// Seq of the oldest event still held (`last_seq + 1` when none is held).
    fn first_seq(&self) -> u64;
    /// Whether `close` was called.
    fn is_closed(&self) -> bool;
    /// Drops every event (eviction); readers get `Gone`.
    fn clear(&self);
    /// Drops the oldest events until at most `max_bytes` are held (all of them if need be: the total
    /// memory bound wins over keeping a running stream's newest event). Seqs stay as they were.
    fn shrink_to(&self, max_bytes: usize);
    /// Seq of the last event readers may see (0 before any): reads end there and ids past it are
    /// `Gone`. It follows every append unless the log is staged.
    fn durable_seq(&self) -> u64;
    /// Makes the events up to `seq` visible (never past the last appended, never backwards).
    fn mark_durable(&self, seq: u64);
    /// Live-only (`true`): everything appended so far, and every later append, is visible at once.
    /// `false` (a staged log): appends wait for [`StreamLog::mark_durable`] again.
    fn set_live_only(&self, on: bool);
    /// Whether appends are visible at once (not staged behind the store): readers may have ids the
    /// store lacks.
    fn is_live_only(&self) -> bool;
    /// The encoded events after `after` up to the last appended (the first has seq `after + 1`;
    /// empty when there are none); `None` when some of them were dropped.
    fn frames_after(&self, after: u64) -> Option<Vec<Bytes>>;
}

/// Wakes a cursor when its log changes.
#[derive(Debug)]
pub struct Subscription(watch::Receiver<()>);

impl Subscription {
    /// Wraps a watch receiver fed by a log.
    pub fn new(rx: watch::Receiver<()>) -> Self {
        Subscription(rx)
    }

    /// Marks the current state seen; call before reading so no change is missed.
    pub fn mark_seen(&mut self) {
        self.0.borrow_and_update();
    }

    /// Waits for a change after the last `mark_seen`. Returns at once if the log is gone.
    pub async fn changed(&mut self) {
        // An error means the log was dropped: the next read tells the cursor what to do.
        let _ = self.0.changed().await;
    }
}
