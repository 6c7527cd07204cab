//! The Redis store: one Redis Stream per answer and a metadata hash beside it, shared by every
//! replica that points at the same Redis (7.x or Valkey).
//!
//! Keys of stream `<id>`, all with the hash tag `{<id>}` so that they land on one Redis Cluster
//! slot: `<prefix>:{<id>}:log`, a Redis Stream whose entry `<seq>-0` holds frame `seq` in field `f`
//! (a `Last-Event-ID` seq is an `XRANGE` position as is), and `<prefix>:{<id>}:meta`, a hash with
//! the owner hash bytes, route, model, replica, state (`running` or the outcome), first and last
//! seq, bytes held, terminal frame and lease deadline (server milliseconds). Each operation is one
//! Lua script, so one round trip and atomic: an append checks the batch's first seq, `XADD`s every
//! frame, trims the oldest with `XTRIM MINID` and refreshes the log's TTL. A running stream's keys
//! live `lease + retention` from the last lease refresh (a crashed replica leaves nothing behind
//! forever), a finished one's `retention` from its finish. Waits share one reader connection that
//! tails every stream waited on (`tail`), whatever the number of waiters.

mod cluster;
mod scripts;
mod tail;

use super::{
    Admission, AdmitLimits, Batch, BoxFuture, Claim, ClaimInfo, Meta, NewStream, Read, State, Store,
    StoreError, StoreSettings, Trim, Wait,
};
use crate::identity::Owner;
use crate::ids::StreamId;
use crate::stream::Outcome;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError};
use scripts::Scripts;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tail::Tail;
use tokio::time::Instant;

/// How long connecting, and then any one command, may take before the store counts as unavailable.
const TIMEOUT: Duration = Duration::from_secs(2);

/// First wait before connecting again after the connection is lost; doubled up to
/// [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(100);

/// Longest wait between two attempts to connect again.
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// How often a waiter looks at its stream's state (see [`RedisStore::wait`]).
const POLL: Duration = Duration::from_secs(1);

/// Stream logs and their metadata kept in Redis.
pub struct RedisStore {
    /// The one connection blocking reads share.
    tail: Arc<Tail>,
    conn: ConnectionManager,
    prefix: String,
    settings: StoreSettings,
    scripts: Scripts,
}

/// The client of the Redis at `url`; over TLS, trusting `ca_pem` if given, otherwise the system's
/// roots (or those of `SSL_CERT_FILE` and `SSL_CERT_DIR` when set).
fn client(url: &str, ca_pem: Option<Vec<u8>>) -> Result<Client, StoreError> {
    // rustls picks no crypto provider by itself once another crate enables a second one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match ca_pem {
        None => Client::open(url),
        Some(pem) => Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            },
        ),
    }
    .map_err(unavailable)
}

/// One connection to see that Redis answers: the connection manager retries a refused
/// connection, a failed TLS handshake or a wrong password until its timeout, which would hide why.
async fn probe(client: &Client) -> Result<(), StoreError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    tokio::time::timeout(
        TIMEOUT,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| StoreError::Unavailable("connecting to the stream store timed out".into()))?
    .map(drop)
    .map_err(unavailable)
}

/// What a script answered: its status word, then its values.
type Reply = Vec<Vec<u8>>;

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// `command`, failing with [`StoreError::Unavailable`] unless it answers within [`TIMEOUT`]
/// (the connection manager's response timeout does not cover waiting for a new connection).
async fn within<T>(command: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
    match tokio::time::timeout(TIMEOUT, command).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(StoreError::Unavailable(
            "the stream store did not answer in time".into(),
        )),
    }
}

fn malformed(what: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected reply from the store: {what}"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn text(v: &[u8]) -> Result<&str, StoreError> {
    std::str::from_utf8(v).map_err(|_| malformed("not UTF-8"))
}

fn number(v: Option<&Vec<u8>>) -> Result<u64, StoreError> {
    let v = v.ok_or_else(|| malformed("missing number"))?;
    text(v)?.parse().map_err(|_| malformed("not a number"))
}

fn outcome(word: &[u8]) -> Result<Outcome, StoreError> {
    Outcome::ALL
        .into_iter()
        .find(|o| o.as_str().as_bytes() == word)
        .ok_or_else(|| malformed("unknown outcome"))
}

/// The error a refusal (`nf`, `fin`, `conflict`, `exists`) stands for, given the batch's first seq.
fn refusal(reply: &Reply, got: u64) -> StoreError {
    match reply.first().map(Vec::as_slice) {
        Some(b"nf") => StoreError::NotFound,
        Some(b"exists") => StoreError::Exists,
        Some(b"held") => StoreError::LeaseHeld,
        Some(b"fin") => match reply.get(1).map(|w| outcome(w)) {
            Some(Ok(o)) => StoreError::Finished(o),
            _ => malformed("finished without an outcome"),
        },
        Some(b"conflict") => match number(reply.get(1)) {
            Ok(expected) => StoreError::Conflict { expected, got },
            Err(e) => e,
        },
        _ => malformed("unknown status"),
    }
}

/// `Ok(reply)` when its status is `ok`, the refusal's error otherwise.
fn ok(reply: Reply, got: u64) -> Result<Reply, StoreError> {
    if reply.first().map(Vec::as_slice) == Some(b"ok") {
        Ok(reply)
    } else {
        Err(refusal(&reply, got))
    }
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://` or `rediss://`, with a password if need be) and
    /// keeps its keys under `key_prefix`; [`StoreError::Unavailable`] if it cannot be reached.
    pub async fn connect(url: &str, key_prefix: &str, settings: StoreSettings) -> Result<Self, StoreError> {
        Self::connect_with_ca(url, None, key_prefix, settings).await
    }

    /// [`RedisStore::connect`], checking a `rediss://` server's certificate against the CAs in
    /// `ca_pem` (PEM) instead of the system's roots.
    pub async fn connect_with_ca(
        url: &str,
        ca_pem: Option<Vec<u8>>,
        key_prefix: &str,
        settings: StoreSettings,
    ) -> Result<Self, StoreError> {
        let client = client(url, ca_pem)?;
        probe(&client).await?;
        // A lost connection is made again in the background, at most RECONNECT_MAX apart; every
        // operation meanwhile fails within TIMEOUT (see `run`), so nothing piles up behind it.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_min_delay(RECONNECT_MIN)
            .set_max_delay(RECONNECT_MAX);
        let conn = tokio::time::timeout(
            TIMEOUT,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| StoreError::Unavailable("connecting to the stream store timed out".into()))?
        .map_err(unavailable)?;
        Ok(RedisStore {
            tail: Tail::start(client),
            conn,
            prefix: key_prefix.to_owned(),
            settings,
            scripts: Scripts::new(),
        })
    }

    /// The metadata hash's and the log's keys of stream `id`.
    fn keys(&self, id: StreamId) -> [String; 2] {
        [
            format!("{}:{{{id}}}:meta", self.prefix),
            format!("{}:{{{id}}}:log", self.prefix),
        ]
    }

    /// Milliseconds a running stream's keys live after a lease refresh.
    fn running_ttl(&self) -> u64 {
        millis(self.settings.lease.saturating_add(self.settings.retention))
    }

    /// Runs `script` on stream `id` with `args`.
    async fn run(
        &self,
        script: &redis::Script,
        id: StreamId,
        args: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Result<Reply, StoreError> {
        let mut inv = script.prepare_invoke();
        for key in self.keys(id) {
            inv.key(key);
        }
        args(&mut inv);
        let mut conn = self.conn.clone();
        within(inv.invoke_async(&mut conn)).await
    }

    async fn create_now(&self, id: StreamId, new: NewStream) -> Result<(), StoreError> {
        let owner = new.owner.map(|o| o.to_bytes().to_vec()).unwrap_or_default();
        let (lease, ttl) = (millis(self.settings.lease), self.running_ttl());
        let reply = self
            .run(&self.scripts.create, id, |inv| {
                inv.arg(owner)
                    .arg(new.route)
                    .arg(new.model)
                    .arg(new.replica)
                    .arg(lease)
                    .arg(ttl);
            })
            .await?;
        ok(reply, 0).map(drop)
    }

    async fn append_now(&self, id: StreamId, batch: Batch) -> Result<u64, StoreError> {
        let max = self.settings.max_stream_bytes;
        let first = batch.first;
        let reply = self
            .run(&self.scripts.append, id, |inv| {
                inv.arg(first).arg(max);
                for f in batch.frames {
                    inv.arg(f.as_ref());
                }
            })
            .await?;
        number(ok(reply, first)?.get(1))
    }

    async fn finish_now(&self, id: StreamId, outcome_: Outcome, batch: Batch) -> Result<Outcome, StoreError> {
        let max = self.settings.max_stream_bytes;
        let retention = millis(self.settings.retention);
        let first = batch.first;
        let reply = self
            .run(&self.scripts.finish, id, |inv| {
                inv.arg(first).arg(max).arg(retention).arg(outcome_.as_str());
                for f in batch.frames {
                    inv.arg(f.as_ref());
                }
            })
            .await?;
        let reply = ok(reply, first)?;
        outcome(
            reply
                .get(1)
                .ok_or_else(|| malformed("finish without an outcome"))?,
        )
    }

    async fn read_now(&self, id: StreamId, after: u64, max_bytes: usize) -> Result<Read, StoreError> {
        let mut reply = self
            .run(&self.scripts.read, id, |inv| {
                inv.arg(after).arg(max_bytes);
            })
            .await?;
        match reply.first().map(Vec::as_slice) {
            Some(b"gone") => Ok(Read::Gone),
            Some(b"pending") => Ok(Read::Pending),
            Some(b"end") => Ok(Read::End),
            Some(b"data") if reply.len() == 3 => {
                let last = number(reply.get(2))?;
                let chunk = Bytes::from(reply.swap_remove(1));
                Ok(Read::Data { chunk, last })
            }
            _ => Err(refusal(&reply, 0)),
        }
    }

    /// Whether a read after `after` would be `Pending`.
    async fn is_pending(&self, id: StreamId, after: u64) -> Result<bool, StoreError> {
        let reply = self
            .run(&self.scripts.pending, id, |inv| {
                inv.arg(after);
            })
            .await?;
        match reply.first().map(Vec::as_slice) {
            Some(b"pending") => Ok(true),
            Some(b"ready") => Ok(false),
            _ => Err(refusal(&reply, 0)),
        }
    }

    /// Checks the stream's state, then waits for the shared reader ([`tail`]) to see an entry
    /// after `after`; looks at the state again every [`POLL`], so a finish with no last frame or a
    /// removal wakes a waiter this late at worst.
    async fn wait_for(&self, id: StreamId, after: u64, deadline: Instant) -> Result<Wait, StoreError> {
        let [_, log] = self.keys(id);
        loop {
            if !self.is_pending(id, after).await? {
                return Ok(Wait::Ready);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Wait::Timeout);
            }
            let registered = self.tail.register(log.clone(), after, &self.conn).await;
            let until = deadline.min(now + POLL);
            if tokio::time::timeout_at(until, registered.wake.notified())
                .await
                .is_ok()
            {
                return Ok(Wait::Ready);
            }
        }
    }

    async fn trim_now(&self, id: StreamId, trim: Trim) -> Result<u64, StoreError> {
        let (kind, value) = match trim {
            Trim::MaxBytes(max) => ("max", max as u64),
            Trim::Before(seq) => ("before", seq),
        };
        let reply = self
            .run(&self.scripts.trim, id, |inv| {
                inv.arg(kind).arg(value);
            })
            .await?;
        number(ok(reply, 0)?.get(1))
    }

    async fn meta_now(&self, id: StreamId) -> Result<Meta, StoreError> {
        let reply = ok(self.run(&self.scripts.meta, id, |_| {}).await?, 0)?;
        let [_, owner, route, model, replica, state, first, last, bytes, terminal, expired] =
            <[Vec<u8>; 11]>::try_from(reply).map_err(|_| malformed("metadata"))?;
        let owner = match owner.len() {
            0 => None,
            _ => Some(Owner::from_bytes(
                owner.try_into().map_err(|_| malformed("owner hash"))?,
            )),
        };
        let state = match state.as_slice() {
            b"running" => State::Running,
            word => State::Finished(outcome(word)?),
        };
        Ok(Meta {
            owner,
            route: text(&route)?.to_owned(),
            model: text(&model)?.to_owned(),
            replica: text(&replica)?.to_owned(),
            state,
            first_seq: number(Some(&first))?,
            last_seq: number(Some(&last))?,
            bytes: usize::try_from(number(Some(&bytes))?).unwrap_or(usize::MAX),
            terminal: (!terminal.is_empty()).then(|| Bytes::from(terminal)),
            lease_expired: expired == b"1",
        })
    }

    async fn refresh_now(&self, id: StreamId) -> Result<(), StoreError> {
        let (lease, ttl) = (millis(self.settings.lease), self.running_ttl());
        let reply = self
            .run(&self.scripts.refresh, id, |inv| {
                inv.arg(lease).arg(ttl);
            })
            .await?;
        ok(reply, 0).map(drop)
    }

    async fn remove_now(&self, id: StreamId) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        within(redis::cmd("DEL").arg(&self.keys(id)).query_async::<()>(&mut conn)).await
    }

    async fn ping_now(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        within(redis::cmd("PING").query_async::<()>(&mut conn)).await
    }
}

impl Store for RedisStore {
    fn create(&self, id: StreamId, new: NewStream) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.create_now(id, new))
    }

    fn append(&self, id: StreamId, batch: Batch) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.append_now(id, batch))
    }

    fn read(&self, id: StreamId, after: u64, max_bytes: usize) -> BoxFuture<'_, Result<Read, StoreError>> {
        Box::pin(self.read_now(id, after, max_bytes))
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
        Box::pin(self.finish_now(id, outcome, batch))
    }

    fn trim(&self, id: StreamId, trim: Trim) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.trim_now(id, trim))
    }

    fn meta(&self, id: StreamId) -> BoxFuture<'_, Result<Meta, StoreError>> {
        Box::pin(self.meta_now(id))
    }

    fn refresh_lease(&self, id: StreamId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.refresh_now(id))
    }

    fn remove(&self, id: StreamId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.remove_now(id))
    }

    fn admit(&self, claim: Claim, limits: AdmitLimits) -> BoxFuture<'_, Result<Admission, StoreError>> {
        Box::pin(self.admit_now(claim, limits))
    }

    fn refresh_claim(&self, claim: Claim) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.refresh_claim_now(claim))
    }

    fn release(&self, claim: Claim) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.release_now(claim))
    }

    fn claims(&self) -> BoxFuture<'_, Result<Vec<ClaimInfo>, StoreError>> {
        Box::pin(self.claims_now())
    }

    fn add_length(
        &self,
        route: String,
        model: String,
        total: u64,
        keep: usize,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.add_length_now(route, model, total, keep))
    }

    fn lengths(
        &self,
        route: String,
        model: String,
        keep: usize,
    ) -> BoxFuture<'_, Result<Vec<u64>, StoreError>> {
        Box::pin(self.lengths_now(route, model, keep))
    }

    fn shared_secret(
        &self,
        name: &'static str,
        proposed: [u8; 16],
    ) -> BoxFuture<'_, Result<[u8; 16], StoreError>> {
        Box::pin(self.shared_secret_now(name, proposed))
    }

    fn follow(&self, id: StreamId, token: u64, max: usize) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.follow_now(id, token, Some(max)))
    }

    fn refresh_follow(&self, id: StreamId, token: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.follow_now(id, token, None).await.map(drop) })
    }

    fn unfollow(&self, id: StreamId, token: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.unfollow_now(id, token))
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.ping_now())
    }
}
