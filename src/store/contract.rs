//! The contract every [`Store`] must keep, as test cases any store's tests run.
//!
//! Each case takes a [`Factory`] that builds an empty store with the given settings, and panics on
//! the first broken promise. `tests/store_contract.rs` runs them on [`super::MemoryStore`]; a
//! networked store runs the very same cases against a real server. Cases wait with
//! `tokio::time::sleep`, so they take no time under paused tokio time and real time against a
//! server whose clock cannot be paused.

use super::{
    Admission, AdmitLimits, Batch, BoxFuture, Claim, Meta, NewStream, Read, State, Store, StoreError,
    StoreSettings, Trim, Wait,
};
use crate::identity::Owner;
use crate::ids::StreamId;
use crate::stream::{Outcome, Rejected};
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, Instant};

/// The lease the cases' stores are built with; long enough that "not yet expired right after a
/// refresh" holds on a loaded machine against a real server.
pub const LEASE: Duration = Duration::from_secs(2);

/// How long the cases' stores keep finished streams.
pub const RETENTION: Duration = Duration::from_secs(3);

/// Longest a case waits for something that must happen.
pub const WAIT: Duration = Duration::from_secs(20);

/// A wait that must end by its deadline, nothing being appended.
const SHORT: Duration = Duration::from_millis(100);

/// Margin past an expiry before checking it, for a store whose clock is another process's.
const SLACK: Duration = Duration::from_millis(500);

/// Builds an empty store.
pub trait Factory {
    /// A new, empty store with `settings`.
    fn store(&self, settings: StoreSettings) -> BoxFuture<'_, Arc<dyn Store>>;
}

impl<F, Fut> Factory for F
where
    F: Fn(StoreSettings) -> Fut,
    Fut: Future<Output = Arc<dyn Store>> + Send + 'static,
{
    fn store(&self, settings: StoreSettings) -> BoxFuture<'_, Arc<dyn Store>> {
        Box::pin(self(settings))
    }
}

/// The settings most cases use: streams large enough never to be trimmed by appends.
pub fn settings() -> StoreSettings {
    StoreSettings {
        max_stream_bytes: 1 << 20,
        lease: LEASE,
        retention: RETENTION,
    }
}

/// A stream record as a replica would create it.
fn record(owner: Option<Owner>) -> NewStream {
    NewStream {
        owner,
        route: "/api/chat/*".into(),
        model: "llama3:8b".into(),
        replica: "replica-a".into(),
    }
}

/// One encoded frame as the log writes it.
fn frame(id: StreamId, seq: u64, event: Option<&str>, data: &str) -> Bytes {
    crate::protocol::encode_frame(&id.to_string(), seq, event, data)
}

/// Frames `first..=last` with data `f(seq)`.
fn frames(id: StreamId, first: u64, last: u64, f: impl Fn(u64) -> String) -> Vec<Bytes> {
    (first..=last).map(|seq| frame(id, seq, None, &f(seq))).collect()
}

fn concat(frames: &[Bytes]) -> Bytes {
    let mut buf = BytesMut::new();
    for f in frames {
        buf.extend_from_slice(f);
    }
    buf.freeze()
}

/// A new running stream in `store`.
async fn created(store: &dyn Store) -> StreamId {
    let id = StreamId::random();
    store.create(id, record(None)).await.expect("create");
    id
}

async fn append(store: &dyn Store, id: StreamId, frames: &[Bytes], first: u64) {
    let last = store
        .append(id, Batch::new(first, frames.to_vec()))
        .await
        .expect("append");
    assert_eq!(
        last,
        first + frames.len() as u64 - 1,
        "append returns the last durable seq"
    );
}

async fn read(store: &dyn Store, id: StreamId, after: u64, max: usize) -> Read {
    store.read(id, after, max).await.expect("read")
}

async fn meta(store: &dyn Store, id: StreamId) -> Meta {
    store.meta(id).await.expect("meta")
}

fn data(r: Read) -> (Bytes, u64) {
    match r {
        Read::Data { chunk, last } => (chunk, last),
        other => panic!("expected data, got {other:?}"),
    }
}

/// Reads until something other than `Pending`, waiting between reads (a `Ready` may be spurious).
async fn read_next(store: &dyn Store, id: StreamId, after: u64, max: usize) -> Read {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = read(store, id, after, max).await;
        if r != Read::Pending {
            return r;
        }
        let woke = store.wait(id, after, deadline).await.expect("wait");
        assert_eq!(woke, Wait::Ready, "nothing arrived within {WAIT:?}");
    }
}

/// Ids are gapless (a batch must continue the stream) and frames are read back byte for byte.
pub async fn ids_gapless_and_frames_byte_identical(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let id = created(&*store).await;
    let all = vec![
        frame(id, 1, None, "{\"t\":\"Hello\"}"),
        frame(id, 2, Some("thinking"), "line one\nline two"),
        frame(id, 3, None, "émoji 🙂 and a \r carriage return"),
        frame(id, 4, Some("progress"), &"x".repeat(64 * 1024)),
        frame(id, 5, None, ""),
    ];
    append(&*store, id, &all[..3], 1).await;
    append(&*store, id, &all[3..], 4).await;
    assert_eq!(data(read(&*store, id, 0, usize::MAX).await), (concat(&all), 5));
    for (first, why) in [(7, "a gap"), (5, "a retried batch that had landed"), (0, "seq 0")] {
        let batch = Batch::new(first, frames(id, first, first, |_| "dup".into()));
        assert_eq!(
            store.append(id, batch).await,
            Err(StoreError::Conflict {
                expected: 6,
                got: first
            }),
            "{why} is refused"
        );
    }
    assert_eq!(
        store.append(id, Batch::new(6, Vec::new())).await,
        Ok(5),
        "an empty batch"
    );
    assert_eq!(meta(&*store, id).await.last_seq, 5);
    assert_eq!(data(read(&*store, id, 0, usize::MAX).await), (concat(&all), 5));
}

/// A read after a position returns exactly the frames after it.
pub async fn reads_after_a_position(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let id = created(&*store).await;
    let all = frames(id, 1, 5, |seq| format!("token {seq}"));
    append(&*store, id, &all[..2], 1).await;
    append(&*store, id, &all[2..], 3).await;
    for after in 0..5u64 {
        let (chunk, last) = data(read(&*store, id, after, usize::MAX).await);
        assert_eq!(
            (chunk, last),
            (concat(&all[after as usize..]), 5),
            "after {after}"
        );
    }
    assert_eq!(read(&*store, id, 5, usize::MAX).await, Read::Pending);
}

/// Reads coalesce up to the byte bound, and always return at least one frame.
pub async fn coalescing_bound_keeps_at_least_one_frame(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let id = created(&*store).await;
    let all = frames(id, 1, 10, |seq| "y".repeat(seq as usize * 10));
    append(&*store, id, &all, 1).await;
    let (one, two) = (all[0].len(), all[0].len() + all[1].len());
    assert_eq!(data(read(&*store, id, 0, 0).await), (all[0].clone(), 1));
    assert_eq!(data(read(&*store, id, 0, 1).await), (all[0].clone(), 1));
    assert_eq!(data(read(&*store, id, 0, two - 1).await).1, 1);
    assert_eq!(data(read(&*store, id, 0, two).await), (concat(&all[..2]), 2));
    assert_eq!(data(read(&*store, id, 0, one + 1).await).1, 1);
    assert_eq!(
        data(read(&*store, id, 3, usize::MAX).await),
        (concat(&all[3..]), 10)
    );
}

/// A caught-up reader gets `Pending`; a wait ends at its deadline, or as soon as a frame lands.
pub async fn pending_then_wakes_on_append(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let id = created(&*store).await;
    let all = frames(id, 1, 2, |seq| format!("t{seq}"));
    append(&*store, id, &all[..1], 1).await;
    assert_eq!(read(&*store, id, 1, usize::MAX).await, Read::Pending);
    let wait = store.wait(id, 1, Instant::now() + SHORT).await;
    assert_eq!(wait, Ok(Wait::Timeout), "nothing was appended");
    let wait = store.wait(id, 0, Instant::now() + WAIT).await;
    assert_eq!(wait, Ok(Wait::Ready), "a frame is already there");
    let writer = {
        let (store, batch) = (store.clone(), Batch::new(2, all[1..].to_vec()));
        tokio::spawn(async move {
            sleep(SHORT).await;
            store.append(id, batch).await
        })
    };
    assert_eq!(
        data(read_next(&*store, id, 1, usize::MAX).await),
        (all[1].clone(), 2)
    );
    assert_eq!(writer.await.expect("writer"), Ok(2));
}

/// After `finish`, a reader gets the last frames and then `End`; waiters wake; writes are refused.
pub async fn end_after_finish(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let id = created(&*store).await;
    append(&*store, id, &frames(id, 1, 2, |_| "t".into()), 1).await;
    let done = frame(id, 3, Some("done"), "{\"total_tokens\":2}");
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { read_next(&*store, id, 2, usize::MAX).await })
    };
    let kept = store
        .finish(id, Outcome::Completed, Batch::new(3, vec![done.clone()]))
        .await;
    assert_eq!(kept, Ok(Outcome::Completed));
    assert_eq!(data(waiter.await.expect("waiter")), (done.clone(), 3));
    assert_eq!(read(&*store, id, 3, usize::MAX).await, Read::End);
    let wait = store.wait(id, 3, Instant::now() + WAIT).await;
    assert_eq!(wait, Ok(Wait::Ready), "an ended stream does not block");
    let m = meta(&*store, id).await;
    assert_eq!(m.state, State::Finished(Outcome::Completed));
    assert_eq!((m.last_seq, m.terminal), (3, Some(done)));
    assert!(!m.lease_expired, "a finished stream holds no lease");
    let late = Batch::new(4, frames(id, 4, 4, |_| "late".into()));
    assert_eq!(
        store.append(id, late).await,
        Err(StoreError::Finished(Outcome::Completed))
    );
    assert_eq!(
        store.refresh_lease(id).await,
        Err(StoreError::Finished(Outcome::Completed))
    );
    // A stream can finish with no last frame.
    let empty = created(&*store).await;
    let kept = store
        .finish(empty, Outcome::Cancelled, Batch::new(1, Vec::new()))
        .await;
    assert_eq!(kept, Ok(Outcome::Cancelled));
    assert_eq!(read(&*store, empty, 0, usize::MAX).await, Read::End);
    assert_eq!(meta(&*store, empty).await.terminal, None);
}

/// The first outcome is kept: a second `finish` changes nothing and appends nothing.
pub async fn finish_is_idempotent(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let id = created(&*store).await;
    append(&*store, id, &frames(id, 1, 1, |_| "t".into()), 1).await;
    let cancelled = frame(id, 2, Some("done"), "{\"cancelled\":true}");
    let kept = store
        .finish(id, Outcome::Cancelled, Batch::new(2, vec![cancelled.clone()]))
        .await;
    assert_eq!(kept, Ok(Outcome::Cancelled));
    let error = frame(id, 3, Some("error"), "{\"code\":\"upstream_lost\"}");
    let kept = store.finish(id, Outcome::Error, Batch::new(3, vec![error])).await;
    assert_eq!(kept, Ok(Outcome::Cancelled), "the first outcome is kept");
    let m = meta(&*store, id).await;
    assert_eq!(m.state, State::Finished(Outcome::Cancelled));
    assert_eq!((m.last_seq, m.terminal), (2, Some(cancelled)));
    assert_eq!(read(&*store, id, 2, usize::MAX).await, Read::End);
    // A last batch that does not continue the stream leaves it running.
    let other = created(&*store).await;
    let stray = Batch::new(5, frames(other, 5, 5, |_| "x".into()));
    assert_eq!(
        store.finish(other, Outcome::Completed, stray).await,
        Err(StoreError::Conflict { expected: 1, got: 5 })
    );
    assert_eq!(meta(&*store, other).await.state, State::Running);
}

/// Positions before the oldest frame held, past the last, and `u64::MAX` are `Gone`; the newest
/// frame is kept whatever its size.
pub async fn gone_for_evicted_and_forged_positions(f: &dyn Factory) {
    let max = 1000;
    let store = f
        .store(StoreSettings {
            max_stream_bytes: max,
            ..settings()
        })
        .await;
    let id = created(&*store).await;
    for first in (1..=50).step_by(5) {
        append(
            &*store,
            id,
            &frames(id, first, first + 4, |_| "x".repeat(80)),
            first,
        )
        .await;
    }
    let m = meta(&*store, id).await;
    assert!(m.bytes <= max && m.bytes > 0, "bounded: {} bytes", m.bytes);
    assert!(m.first_seq > 1, "the oldest frames went");
    assert_eq!(m.last_seq, 50);
    let first = m.first_seq;
    for after in [0, first - 2] {
        assert_eq!(
            read(&*store, id, after, usize::MAX).await,
            Read::Gone,
            "evicted {after}"
        );
    }
    let (_, last) = data(read(&*store, id, first - 1, usize::MAX).await);
    assert_eq!(last, 50);
    assert_eq!(read(&*store, id, 50, usize::MAX).await, Read::Pending);
    for forged in [51, 1000, u64::MAX - 1, u64::MAX] {
        assert_eq!(
            read(&*store, id, forged, usize::MAX).await,
            Read::Gone,
            "forged {forged}"
        );
    }
    let wait = store.wait(id, u64::MAX, Instant::now() + WAIT).await;
    assert_eq!(wait, Ok(Wait::Ready), "a forged position does not block");
    let big = frame(id, 51, None, &"z".repeat(3 * max));
    append(&*store, id, std::slice::from_ref(&big), 51).await;
    let m = meta(&*store, id).await;
    assert_eq!(
        (m.first_seq, m.bytes),
        (51, big.len()),
        "only the newest, oversized frame"
    );
    assert_eq!(data(read(&*store, id, 50, usize::MAX).await), (big, 51));
}

/// Trimming drops old frames and never renumbers: a caught-up reader goes on.
pub async fn trim_keeps_positions(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let id = created(&*store).await;
    let all = frames(id, 1, 10, |seq| format!("token {seq}"));
    append(&*store, id, &all, 1).await;
    assert_eq!(store.trim(id, Trim::Before(4)).await, Ok(4));
    let m = meta(&*store, id).await;
    assert_eq!((m.first_seq, m.last_seq), (4, 10));
    assert_eq!(m.bytes, concat(&all[3..]).len());
    assert_eq!(read(&*store, id, 2, usize::MAX).await, Read::Gone);
    assert_eq!(
        data(read(&*store, id, 3, usize::MAX).await),
        (concat(&all[3..]), 10)
    );
    assert_eq!(store.trim(id, Trim::Before(2)).await, Ok(4), "nothing comes back");
    let tail = concat(&all[8..]).len();
    assert_eq!(store.trim(id, Trim::MaxBytes(tail)).await, Ok(9));
    assert_eq!(
        store.trim(id, Trim::MaxBytes(0)).await,
        Ok(11),
        "every frame may go"
    );
    let m = meta(&*store, id).await;
    assert_eq!((m.first_seq, m.last_seq, m.bytes), (11, 10, 0));
    assert_eq!(
        read(&*store, id, 10, usize::MAX).await,
        Read::Pending,
        "caught up"
    );
    assert_eq!(read(&*store, id, 9, usize::MAX).await, Read::Gone, "behind");
    let next = frames(id, 11, 11, |_| "after trim".into());
    append(&*store, id, &next, 11).await;
    assert_eq!(
        data(read(&*store, id, 10, usize::MAX).await),
        (next[0].clone(), 11)
    );
    assert_eq!(store.trim(id, Trim::Before(u64::MAX)).await, Ok(12));
    append(&*store, id, &frames(id, 12, 12, |_| "t".into()), 12).await;
    let kept = store
        .finish(id, Outcome::Completed, Batch::new(13, Vec::new()))
        .await;
    assert_eq!(kept, Ok(Outcome::Completed));
    assert_eq!(store.trim(id, Trim::MaxBytes(0)).await, Ok(13));
    assert_eq!(read(&*store, id, 12, usize::MAX).await, Read::End);
}

/// Metadata reads back as written; unknown ids are `NotFound` for every operation.
pub async fn metadata_round_trip(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let id = StreamId::random();
    let owner = Owner::from_bytes(*b"0123456789abcdef");
    let new = NewStream {
        owner: Some(owner),
        route: "/api/stream/*".into(),
        model: "modèle:7b".into(),
        replica: "replica-b:8080".into(),
    };
    store.create(id, new.clone()).await.expect("create");
    let expected = Meta {
        owner: Some(owner),
        route: new.route.clone(),
        model: new.model.clone(),
        replica: new.replica.clone(),
        state: State::Running,
        first_seq: 1,
        last_seq: 0,
        bytes: 0,
        terminal: None,
        lease_expired: false,
    };
    assert_eq!(meta(&*store, id).await, expected);
    let all = frames(id, 1, 2, |seq| format!("t{seq}"));
    append(&*store, id, &all, 1).await;
    let m = meta(&*store, id).await;
    assert_eq!((m.last_seq, m.bytes), (2, concat(&all).len()));
    assert_eq!(store.create(id, record(None)).await, Err(StoreError::Exists));
    assert_eq!(
        meta(&*store, id).await.owner,
        Some(owner),
        "a second create changes nothing"
    );
    let ownerless = created(&*store).await;
    assert_eq!(meta(&*store, ownerless).await.owner, None);
    assert_not_found(&*store, StreamId::random()).await;
}

/// Every operation on `id` fails with `NotFound` (removing succeeds).
async fn assert_not_found(store: &dyn Store, id: StreamId) {
    let nf = Some(StoreError::NotFound);
    assert_eq!(store.meta(id).await.err(), nf);
    assert_eq!(store.read(id, 0, 100).await.err(), nf);
    assert_eq!(store.wait(id, 0, Instant::now() + SHORT).await.err(), nf);
    let batch = Batch::new(1, frames(id, 1, 1, |_| "t".into()));
    assert_eq!(store.append(id, batch).await.err(), nf);
    let last = Batch::new(1, Vec::new());
    assert_eq!(store.finish(id, Outcome::Completed, last).await.err(), nf);
    assert_eq!(store.trim(id, Trim::MaxBytes(0)).await.err(), nf);
    assert_eq!(store.refresh_lease(id).await.err(), nf);
    assert_eq!(store.remove(id).await, Ok(()));
}

/// Several streams appended to at once, each tailed by a reader, arrive whole and in order.
pub async fn concurrent_appenders_and_readers(f: &dyn Factory) {
    const STREAMS: usize = 8;
    const BATCHES: u64 = 100;
    let store = f.store(settings()).await;
    let mut tasks = Vec::new();
    for _ in 0..STREAMS {
        let id = created(&*store).await;
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut written = BytesMut::new();
                let mut next = 1;
                for b in 0..BATCHES {
                    let batch = frames(id, next, next + b % 3, |seq| format!("{id} {seq}"));
                    for fr in &batch {
                        written.extend_from_slice(fr);
                    }
                    next += batch.len() as u64;
                    store
                        .append(id, Batch::new(next - batch.len() as u64, batch))
                        .await
                        .expect("append");
                    if b % 10 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                let done = frame(id, next, Some("done"), "{}");
                written.extend_from_slice(&done);
                let kept = store
                    .finish(id, Outcome::Completed, Batch::new(next, vec![done]))
                    .await;
                assert_eq!(kept, Ok(Outcome::Completed));
                written.freeze()
            })
        };
        let reader = {
            let store = store.clone();
            tokio::spawn(async move {
                let (mut got, mut pos) = (BytesMut::new(), 0);
                loop {
                    match read_next(&*store, id, pos, 4096).await {
                        Read::Data { chunk, last } => {
                            got.extend_from_slice(&chunk);
                            pos = last;
                        }
                        Read::End => return got.freeze(),
                        other => panic!("a tailing reader got {other:?} at {pos}"),
                    }
                }
            })
        };
        tasks.push((writer, reader));
    }
    for (writer, reader) in tasks {
        let written = writer.await.expect("writer");
        let read = reader.await.expect("reader");
        assert_eq!(read, written, "a reader got exactly what was written");
    }
}

/// Only a lapsed lease lets another replica declare a stream lost: a replica that checked the
/// metadata just before the owner refreshed must not end a stream that is still being read.
pub async fn a_held_lease_refuses_a_lost_finish(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let id = created(&*store).await;
    let lost = frame(id, 1, Some("error"), "{\"code\":\"upstream_lost\"}");
    let refused = store.finish(id, Outcome::Lost, Batch::new(1, vec![lost])).await;
    assert_eq!(
        refused,
        Err(StoreError::LeaseHeld),
        "the owner still holds its lease"
    );
    let m = meta(&*store, id).await;
    assert_eq!(m.state, State::Running, "the stream goes on");
    assert_eq!(m.last_seq, 0, "the refused error frame was not stored");
    let appended = store
        .append(id, Batch::new(1, vec![frame(id, 1, None, "a")]))
        .await;
    assert_eq!(appended, Ok(1), "the owner keeps appending");
    let done = frame(id, 2, Some("done"), "{}");
    let kept = store
        .finish(id, Outcome::Completed, Batch::new(2, vec![done]))
        .await;
    assert_eq!(kept, Ok(Outcome::Completed), "the owner itself finishes as usual");
}

/// A lease runs from the last refresh; a lapsed one shows in the metadata until someone finishes
/// the stream, which another replica may do.
pub async fn lease_expiry_is_visible(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let id = created(&*store).await;
    assert!(
        !meta(&*store, id).await.lease_expired,
        "a new stream holds its lease"
    );
    sleep(LEASE / 2).await;
    store.refresh_lease(id).await.expect("refresh");
    sleep(LEASE * 3 / 4).await;
    assert!(
        !meta(&*store, id).await.lease_expired,
        "a lease runs from its last refresh"
    );
    sleep(LEASE / 2).await;
    let m = meta(&*store, id).await;
    assert!(m.lease_expired, "not refreshed for longer than the lease");
    assert_eq!(m.state, State::Running, "only a finish ends a stream");
    let lost = frame(id, 1, Some("error"), "{\"code\":\"upstream_lost\"}");
    let kept = store.finish(id, Outcome::Lost, Batch::new(1, vec![lost])).await;
    assert_eq!(kept, Ok(Outcome::Lost));
    let m = meta(&*store, id).await;
    assert!(!m.lease_expired, "a finished stream holds no lease");
    assert_eq!(m.state, State::Finished(Outcome::Lost));
    assert_eq!(
        store.refresh_lease(id).await,
        Err(StoreError::Finished(Outcome::Lost)),
        "the owner learns it was declared lost"
    );
}

/// A finished stream is forgotten `retention` after it finished, a running one whose lease lapsed
/// `retention` after the lapse.
pub async fn streams_expire(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let finished = created(&*store).await;
    let orphan = created(&*store).await;
    let kept = store
        .finish(finished, Outcome::Completed, Batch::new(1, Vec::new()))
        .await;
    assert_eq!(kept, Ok(Outcome::Completed));
    assert!(store.meta(finished).await.is_ok());
    sleep(RETENTION + SLACK).await;
    assert_eq!(store.meta(finished).await, Err(StoreError::NotFound));
    sleep(LEASE).await;
    assert_eq!(store.meta(orphan).await, Err(StoreError::NotFound));
}

/// A removed stream is `NotFound` everywhere, a waiter on it wakes, and its id can be used again.
pub async fn remove_then_not_found(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let id = created(&*store).await;
    append(&*store, id, &frames(id, 1, 1, |_| "t".into()), 1).await;
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            match store.wait(id, 1, Instant::now() + WAIT).await {
                Ok(Wait::Ready) => store.read(id, 1, 100).await.map(|_| ()),
                Ok(Wait::Timeout) => panic!("a waiter on a removed stream was not woken"),
                Err(e) => Err(e),
            }
        })
    };
    tokio::task::yield_now().await;
    assert_eq!(store.remove(id).await, Ok(()));
    assert_eq!(waiter.await.expect("waiter"), Err(StoreError::NotFound));
    assert_not_found(&*store, id).await;
    store
        .create(id, record(None))
        .await
        .expect("the id is free again");
    assert_eq!(meta(&*store, id).await.last_seq, 0);
}

/// A claim of replica `replica` on stream `id` for `owner`.
fn claim(id: StreamId, owner: Option<Owner>, replica: &str) -> Claim {
    Claim {
        id,
        owner,
        replica: replica.into(),
    }
}

/// Cluster-wide admission: over either limit a claim is refused and nothing is taken; a release
/// gives the place back; taking a place already held is admitted again.
pub async fn admission_counts_claims_and_releases_them(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let limits = AdmitLimits {
        max_streams: 3,
        max_per_identity: 2,
    };
    let (alice, bob) = (Owner::from_bytes([1; 16]), Owner::from_bytes([2; 16]));
    let a1 = claim(StreamId::random(), Some(alice), "replica-a");
    let a2 = claim(StreamId::random(), Some(alice), "replica-b");
    let admit = |c: &Claim| store.admit(c.clone(), limits);
    assert_eq!(admit(&a1).await, Ok(Admission::Admitted));
    assert_eq!(admit(&a2).await, Ok(Admission::Admitted));
    assert_eq!(
        admit(&a1).await,
        Ok(Admission::Admitted),
        "a claim held is admitted again"
    );
    let a3 = claim(StreamId::random(), Some(alice), "replica-a");
    assert_eq!(
        admit(&a3).await,
        Ok(Admission::Full(Rejected::MaxStreamsPerIdentity))
    );
    let b1 = claim(StreamId::random(), Some(bob), "replica-a");
    assert_eq!(admit(&b1).await, Ok(Admission::Admitted), "another owner's count");
    let anon = claim(StreamId::random(), None, "replica-b");
    assert_eq!(admit(&anon).await, Ok(Admission::Full(Rejected::MaxStreams)));
    let mut held: Vec<_> = store
        .claims()
        .await
        .expect("claims")
        .into_iter()
        .map(|c| (c.id, c.replica))
        .collect();
    held.sort();
    let mut expected = vec![
        (a1.id, "replica-a".to_string()),
        (a2.id, "replica-b".to_string()),
        (b1.id, "replica-a".to_string()),
    ];
    expected.sort();
    assert_eq!(held, expected, "refused claims took nothing");

    assert_eq!(store.release(a1.clone()).await, Ok(()));
    assert_eq!(store.release(a1.clone()).await, Ok(()), "releasing twice");
    assert_eq!(
        admit(&a3).await,
        Ok(Admission::Admitted),
        "alice's place came back"
    );
    assert_eq!(admit(&anon).await, Ok(Admission::Full(Rejected::MaxStreams)));
    assert_eq!(store.release(b1).await, Ok(()));
    assert_eq!(
        admit(&anon).await,
        Ok(Admission::Admitted),
        "a total place came back"
    );
}

/// A claim lives a lease from its last refresh; a lapsed one frees its place, and its holder's
/// refresh takes the place again.
pub async fn lapsed_claims_free_their_place(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let limits = AdmitLimits {
        max_streams: 1,
        max_per_identity: 1,
    };
    let owner = Some(Owner::from_bytes([7; 16]));
    let kept = claim(StreamId::random(), owner, "replica-a");
    let other = claim(StreamId::random(), owner, "replica-b");
    assert_eq!(store.admit(kept.clone(), limits).await, Ok(Admission::Admitted));
    sleep(LEASE / 2).await;
    assert_eq!(store.refresh_claim(kept.clone()).await, Ok(()));
    sleep(LEASE * 3 / 4).await;
    assert_eq!(
        store.admit(other.clone(), limits).await,
        Ok(Admission::Full(Rejected::MaxStreams)),
        "a claim lives a lease from its last refresh"
    );
    sleep(LEASE / 2).await;
    assert!(
        store.claims().await.expect("claims").is_empty(),
        "a lapsed claim is not listed"
    );
    assert_eq!(
        store.admit(other.clone(), limits).await,
        Ok(Admission::Admitted),
        "the lapsed claim's place (and its owner's) came back"
    );
    assert_eq!(store.refresh_claim(kept.clone()).await, Ok(()));
    let mut held: Vec<_> = store
        .claims()
        .await
        .expect("claims")
        .into_iter()
        .map(|c| c.id)
        .collect();
    held.sort();
    let mut both = vec![kept.id, other.id];
    both.sort();
    assert_eq!(
        held, both,
        "a refresh takes a lapsed place again, limits unchecked"
    );
}

/// The claims list carries each stream's metadata once its record exists.
pub async fn claims_list_their_streams_metadata(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let limits = AdmitLimits {
        max_streams: 10,
        max_per_identity: 10,
    };
    let started = claim(StreamId::random(), None, "replica-a");
    let starting = claim(StreamId::random(), None, "replica-b");
    for c in [&started, &starting] {
        assert_eq!(store.admit(c.clone(), limits).await, Ok(Admission::Admitted));
    }
    store.create(started.id, record(None)).await.expect("create");
    append(
        &*store,
        started.id,
        &frames(started.id, 1, 2, |s| format!("t{s}")),
        1,
    )
    .await;
    let list = store.claims().await.expect("claims");
    assert_eq!(list.len(), 2);
    for c in list {
        if c.id == started.id {
            assert_eq!(c.replica, "replica-a");
            let m = c.meta.expect("metadata of a created stream");
            assert_eq!(
                (m.route.as_str(), m.model.as_str(), m.last_seq),
                ("/api/chat/*", "llama3:8b", 2)
            );
        } else {
            assert_eq!(
                (c.id, c.replica.as_str(), c.meta),
                (starting.id, "replica-b", None)
            );
        }
    }
}

/// Learned lengths: per route and model, oldest first, the newest `keep` kept.
pub async fn lengths_keep_the_newest_per_route_and_model(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let (route, model) = ("/api/chat/*".to_string(), "llama3:8b".to_string());
    let lengths = |r: &str, m: &str, keep| store.lengths(r.into(), m.into(), keep);
    assert_eq!(lengths(&route, &model, 5).await, Ok(vec![]));
    for total in 1..=7 {
        let added = store
            .add_length(route.clone(), model.clone(), total * 100, 5)
            .await;
        assert_eq!(added, Ok(()));
    }
    assert_eq!(
        lengths(&route, &model, 5).await,
        Ok(vec![300, 400, 500, 600, 700])
    );
    assert_eq!(lengths(&route, &model, 2).await, Ok(vec![600, 700]));
    assert_eq!(lengths(&route, "other", 5).await, Ok(vec![]));
    assert_eq!(lengths("/other", &model, 5).await, Ok(vec![]));
}

/// A secret is the first proposal; later ones get it back.
pub async fn shared_secret_first_proposal_wins(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let first = store.shared_secret("test-key", [1; 16]).await;
    assert_eq!(first, Ok([1; 16]));
    assert_eq!(store.shared_secret("test-key", [2; 16]).await, Ok([1; 16]));
    assert_eq!(store.shared_secret("other-key", [3; 16]).await, Ok([3; 16]));
}

/// Followers tailing a stream from the store: counted up to a bound, given back when they leave
/// or their lease lapses; a stream the store does not hold has none.
pub async fn followers_are_counted_until_they_leave_or_lapse(f: &dyn Factory) {
    let store = f.store(settings()).await;
    let id = created(&*store).await;
    assert_eq!(store.follow(id, 1, 2).await, Ok(true));
    assert_eq!(store.follow(id, 2, 2).await, Ok(true));
    assert_eq!(
        store.follow(id, 1, 2).await,
        Ok(true),
        "a follower counted already"
    );
    assert_eq!(store.follow(id, 3, 2).await, Ok(false), "a third");
    let other = created(&*store).await;
    assert_eq!(
        store.follow(other, 3, 2).await,
        Ok(true),
        "another stream counts apart"
    );
    assert_eq!(store.unfollow(id, 2).await, Ok(()));
    assert_eq!(store.unfollow(id, 2).await, Ok(()), "leaving twice");
    assert_eq!(store.follow(id, 3, 2).await, Ok(true), "a place came back");
    sleep(LEASE / 2).await;
    assert_eq!(store.refresh_follow(id, 1).await, Ok(()));
    sleep(LEASE * 3 / 4).await;
    assert_eq!(store.follow(id, 4, 2).await, Ok(true), "follower 3 lapsed");
    assert_eq!(
        store.follow(id, 5, 2).await,
        Ok(false),
        "follower 1 was refreshed"
    );
    let unknown = StreamId::random();
    assert_eq!(store.follow(unknown, 1, 2).await, Err(StoreError::NotFound));
    assert_eq!(store.unfollow(unknown, 1).await, Ok(()));
}
