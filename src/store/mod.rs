//! The stream store: where a stream's log lives for everyone but the replica reading its upstream.
//!
//! The replica that reads an upstream serves its own connections from its in-memory
//! `log::MemoryLog` (no await, no allocation per token). Every batch of frames it appends
//! is also written here, in one call per batch, before any client is given the ids in it; a resume
//! or a follower on another replica, or after a restart, replays from the store and tails it.
//! [`Store`] is the asynchronous interface a networked store (Redis Streams) implements;
//! [`MemoryStore`] is the first implementation, and `contract` is the test suite every store must
//! pass.

#[cfg(any(test, feature = "store-contract"))]
pub mod contract;
#[cfg(any(test, feature = "store-contract"))]
pub mod gate;
pub mod health;
mod memory;
mod memory_cluster;
mod record;
mod redis;
mod timed;

pub use crate::log::Read;
pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use timed::Timed;

use crate::identity::Owner;
use crate::ids::StreamId;
use crate::stream::{Outcome, Rejected};
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The lease a replica holds on the streams it reads; it refreshes it every third of it.
pub const LEASE: Duration = Duration::from_secs(5);

/// The store a proxy writes its streams to, and how its own streams are recorded there.
#[derive(Clone)]
pub struct Handle {
    /// The store.
    pub store: Arc<dyn Store>,
    /// This process's name in the records of the streams it reads: unique per process, so that a
    /// restarted proxy is another replica.
    pub replica: Arc<str>,
    /// The store's lease (see [`StoreSettings::lease`]).
    pub lease: Duration,
    /// Other replicas can serve this process's streams from the store (it is shared): on shutdown
    /// its clients are sent to them while it reads its running upstreams to their end.
    pub handoff: bool,
}

impl Handle {
    /// `store`, written to by this process under a fresh replica name; no other replica serves
    /// from it unless [`Handle::shared`] says so.
    pub fn new(store: Arc<dyn Store>, lease: Duration) -> Self {
        Handle {
            store,
            replica: replica_name().into(),
            lease,
            handoff: false,
        }
    }

    /// The same store, shared with other replicas that serve its streams (Redis).
    pub fn shared(self) -> Self {
        Handle {
            handoff: true,
            ..self
        }
    }

    /// A [`MemoryStore`] with `settings`, holding at most `max_total_bytes`.
    pub fn memory(settings: StoreSettings, max_total_bytes: usize) -> Self {
        Self::new(
            Arc::new(MemoryStore::new(settings, max_total_bytes)),
            settings.lease,
        )
    }
}

/// `<host>-<random>`: the host (`HOSTNAME`, a pod's name on Kubernetes) for people, the random part
/// so that two processes never share a name.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .take(64)
        .collect();
    let host = if host.is_empty() { "sse-proxy" } else { &host };
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// A boxed future, so that [`Store`] can be used as `Arc<dyn Store>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer; the stream may well exist (→ `503`).
    #[error("the stream store is unavailable: {0}")]
    Unavailable(String),
    /// No such stream: never created, removed, or expired (→ `410`).
    #[error("no such stream in the store")]
    NotFound,
    /// `create` of an id that is already in the store.
    #[error("the stream already exists in the store")]
    Exists,
    /// A batch that does not continue the stream: its first seq is not the next one.
    #[error("the batch starts at seq {got} but the stream continues at {expected}")]
    Conflict {
        /// The seq the next batch must start at.
        expected: u64,
        /// The seq the refused batch started at.
        got: u64,
    },
    /// A finish declaring the stream lost while its reader still holds the lease: it is alive.
    #[error("the stream's lease is still held: it is not lost")]
    LeaseHeld,
    /// A write (append, lease refresh) to a stream that has finished, with the outcome it has.
    #[error("the stream has already finished ({})", .0.as_str())]
    Finished(Outcome),
}

/// What a store is bounded by; the same for every stream of one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    /// Bytes of frames one stream holds at most; the oldest go first, the newest always stays.
    pub max_stream_bytes: usize,
    /// How long a running stream's owner is trusted without a refresh.
    pub lease: Duration,
    /// How long a finished stream stays readable; a running stream whose lease has lapsed is
    /// removed this long after the lapse.
    pub retention: Duration,
}

/// The record of a new stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStream {
    /// Who may resume or cancel it (a keyed hash, never the credential).
    pub owner: Option<Owner>,
    /// The `[[stream]]` route it came from.
    pub route: String,
    /// The model answering it.
    pub model: String,
    /// The replica reading its upstream (and holding its lease).
    pub replica: String,
}

impl NewStream {
    /// The record tests create: no owner, route `/r`, model `m`, replica `a`.
    #[cfg(any(test, feature = "store-contract"))]
    pub fn for_tests() -> Self {
        NewStream {
            owner: None,
            route: "/r".into(),
            model: "m".into(),
            replica: "a".into(),
        }
    }
}

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Its upstream is being read.
    Running,
    /// It ended with this outcome; no more frames will come.
    Finished(Outcome),
}

/// Everything the store knows about a stream, apart from its frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Who may resume or cancel it.
    pub owner: Option<Owner>,
    /// The `[[stream]]` route it came from.
    pub route: String,
    /// The model answering it.
    pub model: String,
    /// The replica reading its upstream.
    pub replica: String,
    /// Running or finished.
    pub state: State,
    /// Seq of the oldest frame held (`last_seq + 1` when none is).
    pub first_seq: u64,
    /// Seq of the last frame written (0 before the first): every id up to it is durable.
    pub last_seq: u64,
    /// Bytes of the frames held.
    pub bytes: usize,
    /// The stream's last frame when it finished (its `done` or `error` event), kept apart from the
    /// frames so that trimming never loses how it ended.
    pub terminal: Option<Bytes>,
    /// Running, and its owner has not refreshed the lease in time: the replica reading it is
    /// presumed dead.
    pub lease_expired: bool,
}

/// Consecutive encoded frames, the first with seq `first`, the others following without a gap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Seq of `frames[0]`.
    pub first: u64,
    /// Encoded frames (`id: <stream>:<seq>` included), stored and read back byte for byte.
    pub frames: Vec<Bytes>,
}

impl Batch {
    /// A batch of `frames` starting at seq `first`.
    pub fn new(first: u64, frames: Vec<Bytes>) -> Self {
        Batch { first, frames }
    }

    /// Seq of the last frame (`first - 1` when empty).
    pub fn last(&self) -> u64 {
        (self.first + self.frames.len() as u64).saturating_sub(1)
    }
}

/// What to drop from the old end of a stream. Seqs never change: a reader that had read everything
/// dropped goes on, one that had not gets [`Read::Gone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trim {
    /// The oldest frames until at most this many bytes are held (all of them if need be).
    MaxBytes(usize),
    /// Every frame with a seq below this one.
    Before(u64),
}

/// How a [`Store::wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A read after the position may now return something other than `Pending` (read again; a
    /// networked store may wake spuriously).
    Ready,
    /// The deadline passed with nothing new.
    Timeout,
}

/// A running answer's place in the cluster-wide limits, held by the replica reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The answer's stream id.
    pub id: StreamId,
    /// Whose answer it is (counted against `max_streams_per_identity`).
    pub owner: Option<Owner>,
    /// The replica reading it.
    pub replica: Arc<str>,
}

/// The cluster-wide limits a [`Store::admit`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmitLimits {
    /// Running answers in total (`limits.max_streams`).
    pub max_streams: usize,
    /// Running answers of one owner (`limits.max_streams_per_identity`).
    pub max_per_identity: usize,
}

/// What a [`Store::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The claim is held until released or its lease lapses.
    Admitted,
    /// A limit is reached; nothing was taken.
    Full(Rejected),
}

/// A claim held now, as [`Store::claims`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimInfo {
    /// The answer's stream id.
    pub id: StreamId,
    /// The replica reading it.
    pub replica: String,
    /// The stream's metadata, once its record is created (after the backend's response head).
    pub meta: Option<Meta>,
}

/// A store of stream logs and their metadata, shared by every replica that uses it.
///
/// Every operation on an id the store does not hold fails with [`StoreError::NotFound`]; any
/// operation may fail with [`StoreError::Unavailable`].
pub trait Store: Send + Sync + 'static {
    /// Creates a running stream with no frames and a fresh lease; [`StoreError::Exists`] if the id
    /// is taken.
    fn create(&self, id: StreamId, new: NewStream) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Appends a batch atomically (all of it or nothing) and returns the last durable seq. The
    /// batch must start at `last_seq + 1` ([`StoreError::Conflict`] otherwise, so a retried batch
    /// that did land is detected, never stored twice); a finished stream refuses it with
    /// [`StoreError::Finished`]. The oldest frames are then dropped down to `max_stream_bytes`,
    /// keeping at least the newest.
    fn append(&self, id: StreamId, batch: Batch) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Frames after `after`, coalesced up to `max_bytes` (always at least one frame when any is
    /// available), with the semantics of `log::StreamLog::read_after`.
    fn read(&self, id: StreamId, after: u64, max_bytes: usize) -> BoxFuture<'_, Result<Read, StoreError>>;

    /// Resolves with [`Wait::Ready`] as soon as a read after `after` would not be `Pending` (at
    /// once if it already would not), or with [`Wait::Timeout`] at `deadline`.
    fn wait(&self, id: StreamId, after: u64, deadline: Instant) -> BoxFuture<'_, Result<Wait, StoreError>>;

    /// Appends the last `batch` (as [`Store::append`]) and marks the stream finished, atomically;
    /// returns the outcome it has. A stream already finished keeps its first outcome and ignores
    /// the batch. [`Outcome::Lost`] is refused with [`StoreError::LeaseHeld`] while the lease holds,
    /// checked in the same atomic step.
    fn finish(
        &self,
        id: StreamId,
        outcome: Outcome,
        batch: Batch,
    ) -> BoxFuture<'_, Result<Outcome, StoreError>>;

    /// Drops frames from the old end; returns the new `first_seq`.
    fn trim(&self, id: StreamId, trim: Trim) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// The stream's metadata.
    fn meta(&self, id: StreamId) -> BoxFuture<'_, Result<Meta, StoreError>>;

    /// Extends a running stream's lease by the store's `lease` from now; a finished stream refuses
    /// with [`StoreError::Finished`] (so an owner declared dead learns it).
    fn refresh_lease(&self, id: StreamId) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Removes the stream and its frames (removing an absent stream succeeds). Waiters wake up.
    fn remove(&self, id: StreamId) -> BoxFuture<'_, Result<(), StoreError>>;

    // What replicas share besides the streams: places in the cluster-wide limits (a claim lives
    // `lease` from its last refresh, so a crashed replica's places come back), learned answer
    // lengths, and secrets such as the identity key.

    /// Takes a place for `claim` unless `limits` are reached, atomically: lapsed claims are dropped
    /// first, then the total and the owner's claims are counted. A claim already held is refreshed
    /// and admitted again.
    fn admit(&self, claim: Claim, limits: AdmitLimits) -> BoxFuture<'_, Result<Admission, StoreError>>;

    /// Extends a claim's lease by the store's `lease` from now (taking the place again, limits
    /// unchecked, if it had lapsed: the answer is still running).
    fn refresh_claim(&self, claim: Claim) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Gives a claim's place back (releasing a claim not held succeeds).
    fn release(&self, claim: Claim) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Every claim held now (lapsed ones left out), with its stream's metadata.
    fn claims(&self) -> BoxFuture<'_, Result<Vec<ClaimInfo>, StoreError>>;

    /// Adds the length of a completed answer of `model` on `route` to their shared history,
    /// which keeps the newest `keep`.
    fn add_length(
        &self,
        route: String,
        model: String,
        total: u64,
        keep: usize,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The newest `keep` lengths of the shared history of `model` on `route`, oldest first.
    fn lengths(
        &self,
        route: String,
        model: String,
        keep: usize,
    ) -> BoxFuture<'_, Result<Vec<u64>, StoreError>>;

    /// The secret stored under `name`; the first caller's `proposed` one if none was stored yet.
    fn shared_secret(
        &self,
        name: &'static str,
        proposed: [u8; 16],
    ) -> BoxFuture<'_, Result<[u8; 16], StoreError>>;

    /// Counts follower `token` (a connection tailing stream `id` from the store) unless `max`
    /// followers whose lease has not lapsed already do; `false` when full. A token counted already
    /// is refreshed and admitted again.
    fn follow(&self, id: StreamId, token: u64, max: usize) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Extends follower `token`'s lease by the store's `lease` from now (counting it again, `max`
    /// unchecked, if it had lapsed).
    fn refresh_follow(&self, id: StreamId, token: u64) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Stops counting follower `token` (one not counted succeeds).
    fn unfollow(&self, id: StreamId, token: u64) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Whether other processes use this store too (then learned lengths are synced through it).
    fn is_shared(&self) -> bool {
        false
    }

    // Health (the health check's alone).

    /// One round trip to the store: [`StoreError::Unavailable`] while it cannot be reached. A
    /// store in this process is always reachable.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}
