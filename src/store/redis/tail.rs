//! One reader connection that tails, with `XREAD BLOCK`, every stream this store's waiters wait
//! on, however many they are.
//!
//! A waiter registers the stream's log key and its position and waits to be notified; the reader
//! reads all registered streams in one `XREAD`, each from the lowest position waited on, and wakes
//! the waiters an entry arrived for. A registration that the reader's current `XREAD` does not
//! include interrupts it with `CLIENT UNBLOCK`. Positions are explicit entry ids, so an entry
//! written before the reader includes a stream is still returned: no wake-up is lost.

use crate::sync::lock;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// Longest one `XREAD` blocks.
const BLOCK: Duration = Duration::from_secs(1);

/// First rest after the reader's connection failed; doubled on each failure in a row.
const RETRY_MIN: Duration = Duration::from_millis(100);

/// Longest rest between two attempts to connect again.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One waiter: the position it waits after and how to wake it.
struct Waiter {
    token: u64,
    after: u64,
    wake: Arc<Notify>,
}

/// The waiters of one store, by log key, and the reader's state.
pub(super) struct Tail {
    waiters: Mutex<HashMap<String, Vec<Waiter>>>,
    next_token: AtomicU64,
    /// A registration the reader has not seen yet.
    changed: Notify,
    /// The reader connection's `CLIENT ID` while it blocks in `XREAD`, 0 otherwise.
    blocked: AtomicI64,
}

/// A registered waiter; unregisters on drop.
pub(super) struct Registration {
    tail: Arc<Tail>,
    key: String,
    token: u64,
    /// Notified once an entry after the position has arrived.
    pub(super) wake: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut waiters = lock(&self.tail.waiters);
        if let Some(list) = waiters.get_mut(&self.key) {
            list.retain(|w| w.token != self.token);
            if list.is_empty() {
                waiters.remove(&self.key);
            }
        }
    }
}

impl Tail {
    /// A tail with its reader task, which ends once the tail is dropped.
    pub(super) fn start(client: Client) -> Arc<Tail> {
        let tail = Arc::new(Tail {
            waiters: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(0),
            changed: Notify::new(),
            blocked: AtomicI64::new(0),
        });
        tokio::spawn(read_loop(Arc::downgrade(&tail), client));
        tail
    }

    /// Registers a waiter for an entry after `after` in `key`, and makes sure the reader includes
    /// it (interrupting its blocking read through `conn` if need be).
    pub(super) async fn register(
        self: &Arc<Self>,
        key: String,
        after: u64,
        conn: &ConnectionManager,
    ) -> Registration {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let new_position = {
            let mut waiters = lock(&self.waiters);
            let list = waiters.entry(key.clone()).or_default();
            let lowered = list.iter().all(|w| w.after > after);
            list.push(Waiter {
                token,
                after,
                wake: wake.clone(),
            });
            lowered
        };
        if new_position {
            self.changed.notify_one();
            let blocked = self.blocked.load(Ordering::SeqCst);
            if blocked != 0 {
                let mut conn = conn.clone();
                // Failing to interrupt only delays the wake-up by at most one BLOCK.
                let _ = redis::cmd("CLIENT")
                    .arg("UNBLOCK")
                    .arg(blocked)
                    .query_async::<redis::Value>(&mut conn)
                    .await;
            }
        }
        Registration {
            tail: self.clone(),
            key,
            token,
            wake,
        }
    }

    /// Every registered key with the lowest position waited on in it.
    fn positions(&self) -> Vec<(String, u64)> {
        lock(&self.waiters)
            .iter()
            .filter_map(|(k, list)| list.iter().map(|w| w.after).min().map(|a| (k.clone(), a)))
            .collect()
    }

    /// Wakes (and unregisters) the waiters of `key` waiting after a seq below `seq`.
    fn arrived(&self, key: &str, seq: u64) {
        let mut waiters = lock(&self.waiters);
        if let Some(list) = waiters.get_mut(key) {
            list.retain(|w| {
                let woken = w.after < seq;
                if woken {
                    w.wake.notify_one();
                }
                !woken
            });
            if list.is_empty() {
                waiters.remove(key);
            }
        }
    }
}

/// A reader connection and its `CLIENT ID`.
async fn connect(client: &Client) -> redis::RedisResult<(MultiplexedConnection, i64)> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(BLOCK + CONNECT_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await?;
    Ok((conn, id))
}

/// The seq of entry id `<seq>-0`.
fn seq_of(entry_id: &str) -> Option<u64> {
    entry_id.split('-').next()?.parse().ok()
}

/// `XREAD` reply: per stream, its key and its entries (id, fields).
type XreadReply = Option<Vec<(String, Vec<(String, redis::Value)>)>>;

/// Rests between attempts to reach Redis: doubling from [`RETRY_MIN`] to [`RETRY_MAX`], back to
/// the start once it answers.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: RETRY_MIN }
    }

    /// The rest after one more failure.
    fn failed(&mut self) -> Duration {
        let rest = self.next;
        self.next = (self.next * 2).min(RETRY_MAX);
        rest
    }

    fn succeeded(&mut self) {
        self.next = RETRY_MIN;
    }
}

async fn read_loop(tail: Weak<Tail>, client: Client) {
    let mut reader: Option<(MultiplexedConnection, i64)> = None;
    let mut backoff = Backoff::new();
    loop {
        let Some(t) = tail.upgrade() else { return };
        let positions = t.positions();
        if positions.is_empty() {
            let _ = tokio::time::timeout(BLOCK, t.changed.notified()).await;
            continue;
        }
        let (conn, id) = match reader.as_mut() {
            Some(r) => r,
            None => match connect(&client).await {
                Ok(r) => reader.insert(r),
                Err(e) => {
                    tracing::debug!(error = %e, "stream store reader cannot connect");
                    drop(t);
                    tokio::time::sleep(backoff.failed()).await;
                    continue;
                }
            },
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS");
        for (key, _) in &positions {
            cmd.arg(key);
        }
        for (_, after) in &positions {
            cmd.arg(format!("{after}-0"));
        }
        t.blocked.store(*id, Ordering::SeqCst);
        let got = cmd.query_async::<XreadReply>(conn).await;
        t.blocked.store(0, Ordering::SeqCst);
        match got {
            Ok(streams) => {
                backoff.succeeded();
                for (key, entries) in streams.unwrap_or_default() {
                    if let Some(seq) = entries.last().and_then(|(eid, _)| seq_of(eid)) {
                        t.arrived(&key, seq);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "stream store reader failed");
                reader = None;
                drop(t);
                tokio::time::sleep(backoff.failed()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_backs_off_doubling_up_to_a_ceiling_and_starts_over_once_it_reads() {
        let mut b = Backoff::new();
        let rests: Vec<_> = (0..7).map(|_| b.failed().as_millis()).collect();
        assert_eq!(rests, [100, 200, 400, 800, 1600, 2000, 2000]);
        b.succeeded();
        assert_eq!(b.failed(), RETRY_MIN);
    }
}
