//! What replicas share through Redis besides the streams.
//!
//! **Claims** on the cluster-wide limits: `<prefix>:{running}:claims`, a sorted set of the running
//! answers' stream ids scored by their lease deadline (server milliseconds);
//! `<prefix>:{running}:owner:<hex>`, the same for one owner; and two hashes from stream id to owner
//! (hex) and to replica. Each operation is one Lua script: an admission drops the lapsed claims,
//! counts and adds, atomically, so two replicas never both take the last place. All these keys
//! carry the hash tag `{running}`, so they share one Redis Cluster slot and a script may name an
//! owner's key it only learns while it runs. They live twice a lease past their last write.
//!
//! **Followers** tailing a stream from the store: `<prefix>:{<id>}:followers`, beside the stream's
//! keys, a sorted set of connection tokens scored by their lease deadline.
//!
//! **Learned lengths**: `<prefix>:lengths:<route>|<model>`, a list of the newest totals (newest
//! first), trimmed to `progress.max_history` and kept a week past its last write (model names come
//! from requests, so a key nobody writes to goes away).
//!
//! **Secrets**: `<prefix>:<name>`, set once with `SET NX` by the first replica that starts.

use super::{millis, unavailable, RedisStore};
use crate::ids::StreamId;
use crate::store::{Admission, AdmitLimits, Claim, ClaimInfo, StoreError};
use crate::stream::Rejected;
use std::sync::LazyLock;
use std::time::Duration;

/// How long a history nobody writes to is kept.
const LENGTHS_TTL: Duration = Duration::from_secs(7 * 86_400);

/// Helpers of every claims script. `KEYS`: claims, owners, replicas; `ARGV[1]`: the owner keys'
/// prefix.
const PRELUDE: &str = r#"
local all, owners, replicas = KEYS[1], KEYS[2], KEYS[3]
local okeys = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function s(n) return string.format('%.0f', n) end
-- Drops every claim whose lease has lapsed.
local function sweep()
  local dead = redis.call('ZRANGEBYSCORE', all, '-inf', s(now))
  for _, id in ipairs(dead) do
    local o = redis.call('HGET', owners, id)
    if o and o ~= '' then redis.call('ZREM', okeys .. o, id) end
    redis.call('HDEL', owners, id)
    redis.call('HDEL', replicas, id)
  end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', all, '-inf', s(now)) end
end
-- Holds claim id of owner o ('' for none) read by replica r for lease ms; the keys live ttl ms.
local function hold(id, o, r, lease, ttl)
  local deadline = s(now + tonumber(lease))
  redis.call('ZADD', all, deadline, id)
  redis.call('HSET', owners, id, o)
  redis.call('HSET', replicas, id, r)
  for _, k in ipairs({all, owners, replicas}) do redis.call('PEXPIRE', k, ttl) end
  if o ~= '' then
    redis.call('ZADD', okeys .. o, deadline, id)
    redis.call('PEXPIRE', okeys .. o, ttl)
  end
end
"#;

/// `ARGV`: owner keys' prefix, id, owner, replica, lease ms, ttl ms, max streams, max per owner.
const ADMIT: &str = r#"
sweep()
local id, o = ARGV[2], ARGV[3]
if not redis.call('ZSCORE', all, id) then
  if redis.call('ZCARD', all) >= tonumber(ARGV[7]) then return 'max_streams' end
  if o ~= '' then
    redis.call('ZREMRANGEBYSCORE', okeys .. o, '-inf', s(now))
    if redis.call('ZCARD', okeys .. o) >= tonumber(ARGV[8]) then return 'max_streams_per_identity' end
  end
end
hold(id, o, ARGV[4], ARGV[5], ARGV[6])
return 'ok'
"#;

/// `ARGV`: owner keys' prefix, id, owner, replica, lease ms, ttl ms.
const REFRESH: &str = r#"
hold(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return 'ok'
"#;

/// `ARGV`: owner keys' prefix, id, owner.
const RELEASE: &str = r#"
local id, o = ARGV[2], ARGV[3]
redis.call('ZREM', all, id)
redis.call('HDEL', owners, id)
redis.call('HDEL', replicas, id)
if o ~= '' then redis.call('ZREM', okeys .. o, id) end
return 'ok'
"#;

/// `ARGV`: owner keys' prefix. Every claim held: id, replica, id, replica...
const LIST: &str = r#"
sweep()
local out = {}
for _, id in ipairs(redis.call('ZRANGE', all, 0, -1)) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', replicas, id) or ''
end
return out
"#;

/// `KEYS`: the stream's metadata, its followers; `ARGV`: token, lease ms, max (`-1`: a refresh,
/// unchecked).
const FOLLOW: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 'nf' end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function s(n) return string.format('%.0f', n) end
local max = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', s(now))
if max >= 0 and not redis.call('ZSCORE', KEYS[2], ARGV[1]) and redis.call('ZCARD', KEYS[2]) >= max then
  return 'full'
end
redis.call('ZADD', KEYS[2], s(now + tonumber(ARGV[2])), ARGV[1])
redis.call('PEXPIRE', KEYS[2], s(2 * tonumber(ARGV[2])))
return 'ok'
"#;

/// `KEYS[1]`: the secret's key; `ARGV[1]`: the proposed value. The value kept.
const SECRET: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"#;

fn claims_script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PRELUDE}{body}"))
}

static ADMIT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| claims_script(ADMIT));
static REFRESH_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| claims_script(REFRESH));
static RELEASE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| claims_script(RELEASE));
static LIST_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| claims_script(LIST));
static SECRET_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SECRET));
static FOLLOW_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FOLLOW));

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl RedisStore {
    /// Runs a claims script with `ARGV[1]` set and `args` after it.
    async fn run_claims<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        args: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Result<T, StoreError> {
        let base = format!("{}:{{running}}", self.prefix);
        let mut inv = script.prepare_invoke();
        inv.key(format!("{base}:claims"))
            .key(format!("{base}:owners"))
            .key(format!("{base}:replicas"))
            .arg(format!("{base}:owner:"));
        args(&mut inv);
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn).await.map_err(unavailable)
    }

    /// `ARGV[2..=6]` of the admit and refresh scripts.
    fn hold_args(&self, claim: &Claim, inv: &mut redis::ScriptInvocation<'_>) {
        let lease = millis(self.settings.lease);
        inv.arg(claim.id.to_string())
            .arg(claim.owner.map(|o| hex(&o.to_bytes())).unwrap_or_default())
            .arg(claim.replica.as_bytes())
            .arg(lease)
            .arg(lease.saturating_mul(2));
    }

    pub(super) async fn admit_now(&self, claim: Claim, limits: AdmitLimits) -> Result<Admission, StoreError> {
        let word: String = self
            .run_claims(&ADMIT_SCRIPT, |inv| {
                self.hold_args(&claim, inv);
                inv.arg(limits.max_streams).arg(limits.max_per_identity);
            })
            .await?;
        match word.as_str() {
            "ok" => Ok(Admission::Admitted),
            "max_streams" => Ok(Admission::Full(Rejected::MaxStreams)),
            "max_streams_per_identity" => Ok(Admission::Full(Rejected::MaxStreamsPerIdentity)),
            _ => Err(super::malformed("admission")),
        }
    }

    pub(super) async fn refresh_claim_now(&self, claim: Claim) -> Result<(), StoreError> {
        self.run_claims::<String>(&REFRESH_SCRIPT, |inv| self.hold_args(&claim, inv))
            .await
            .map(drop)
    }

    pub(super) async fn release_now(&self, claim: Claim) -> Result<(), StoreError> {
        self.run_claims::<String>(&RELEASE_SCRIPT, |inv| {
            inv.arg(claim.id.to_string())
                .arg(claim.owner.map(|o| hex(&o.to_bytes())).unwrap_or_default());
        })
        .await
        .map(drop)
    }

    pub(super) async fn claims_now(&self) -> Result<Vec<ClaimInfo>, StoreError> {
        let flat: Vec<String> = self.run_claims(&LIST_SCRIPT, |_| {}).await?;
        let held: Vec<_> = flat
            .chunks_exact(2)
            .filter_map(|pair| Some((StreamId::parse(&pair[0])?, pair[1].clone())))
            .collect();
        // One multiplexed connection: the lookups go out together, as a pipeline would.
        let metas = futures_util::future::join_all(held.iter().map(|(id, _)| self.meta_now(*id))).await;
        let mut out = Vec::with_capacity(held.len());
        for ((id, replica), meta) in held.into_iter().zip(metas) {
            let meta = match meta {
                Ok(m) => Some(m),
                Err(StoreError::NotFound) => None,
                Err(e) => return Err(e),
            };
            out.push(ClaimInfo { id, replica, meta });
        }
        Ok(out)
    }

    /// The followers of stream `id`: a sorted set of tokens by lease deadline, beside its
    /// metadata (same hash tag).
    fn followers_key(&self, id: StreamId) -> String {
        format!("{}:{{{id}}}:followers", self.prefix)
    }

    /// Counts follower `token` of `id`, unless `max` are counted (`None`: a refresh, unchecked).
    pub(super) async fn follow_now(
        &self,
        id: StreamId,
        token: u64,
        max: Option<usize>,
    ) -> Result<bool, StoreError> {
        let [meta, _] = self.keys(id);
        let mut inv = FOLLOW_SCRIPT.prepare_invoke();
        inv.key(meta)
            .key(self.followers_key(id))
            .arg(token)
            .arg(millis(self.settings.lease))
            .arg(max.map_or(-1, |m| i64::try_from(m).unwrap_or(i64::MAX)));
        let mut conn = self.conn.clone();
        let word: String = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        match word.as_str() {
            "ok" => Ok(true),
            "full" => Ok(false),
            "nf" => Err(StoreError::NotFound),
            _ => Err(super::malformed("follow")),
        }
    }

    pub(super) async fn unfollow_now(&self, id: StreamId, token: u64) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("ZREM")
            .arg(self.followers_key(id))
            .arg(token)
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    fn lengths_key(&self, route: &str, model: &str) -> String {
        format!("{}:lengths:{route}|{model}", self.prefix)
    }

    pub(super) async fn add_length_now(
        &self,
        route: String,
        model: String,
        total: u64,
        keep: usize,
    ) -> Result<(), StoreError> {
        let key = self.lengths_key(&route, &model);
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .lpush(&key, total)
            .ignore()
            .ltrim(&key, 0, keep.max(1) as isize - 1)
            .ignore()
            .pexpire(&key, millis(LENGTHS_TTL) as i64)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    pub(super) async fn lengths_now(
        &self,
        route: String,
        model: String,
        keep: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let key = self.lengths_key(&route, &model);
        let mut conn = self.conn.clone();
        let mut newest_first: Vec<u64> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(0)
            .arg(keep.max(1) as isize - 1)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        newest_first.reverse();
        Ok(newest_first)
    }

    pub(super) async fn shared_secret_now(
        &self,
        name: &'static str,
        proposed: [u8; 16],
    ) -> Result<[u8; 16], StoreError> {
        let mut inv = SECRET_SCRIPT.prepare_invoke();
        inv.key(format!("{}:{name}", self.prefix)).arg(&proposed[..]);
        let mut conn = self.conn.clone();
        let kept: Vec<u8> = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        kept.try_into()
            .map_err(|_| super::malformed("a stored secret of the wrong length"))
    }
}
