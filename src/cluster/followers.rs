//! Connections that tail, from the store, a stream another replica reads: counted against
//! `limits.max_followers` by the store across every replica but the one reading the stream (which
//! counts its own connections), each with a lease its cursor renews, so a killed replica's
//! followers stop counting.

use crate::ids::StreamId;
use crate::metrics::{Metrics, StoreOp};
use crate::store::{self, Store, StoreError};
use crate::stream::{Registry, RemoteFollower};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

/// Longest a follower waits for the store to count it.
const ANSWER: Duration = Duration::from_secs(1);

/// A counted follower; counted no more once dropped.
pub enum Following {
    /// Counted by the store.
    Store(StoreFollower),
    /// Counted by this replica alone (the store could not count).
    Local(RemoteFollower),
}

/// A follower the store counts.
pub struct StoreFollower {
    store: Arc<dyn Store>,
    id: StreamId,
    token: u64,
    metrics: Arc<Metrics>,
}

/// Why a follower was not counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotFollowing {
    /// `max_followers` follow the stream already.
    Full,
    /// The store no longer holds the stream.
    Gone,
}

/// Counts a new connection tailing stream `id` from the store, unless `max` do; counts it in
/// `registry` when the store cannot say.
pub async fn follow(
    store: &store::Handle,
    registry: &Arc<Registry>,
    id: StreamId,
    max: usize,
    metrics: &Arc<Metrics>,
) -> Result<Following, NotFollowing> {
    let token = rand::random();
    let counted = match timeout(ANSWER, store.store.follow(id, token, max)).await {
        Ok(Ok(true)) => {
            return Ok(Following::Store(StoreFollower {
                store: store.store.clone(),
                id,
                token,
                metrics: metrics.clone(),
            }))
        }
        Ok(Ok(false)) => return Err(NotFollowing::Full),
        Ok(Err(StoreError::NotFound)) => return Err(NotFollowing::Gone),
        Ok(Err(e)) => e,
        Err(_) => StoreError::Unavailable("no answer in time".into()),
    };
    // As for admission: a store that cannot count must not keep followers out.
    tracing::warn!(error = %counted, "the stream store cannot count followers; counting this replica's");
    metrics.store_errors.increment(StoreOp::Admit);
    registry
        .follow_remote(id, max)
        .map(Following::Local)
        .ok_or(NotFollowing::Full)
}

impl Following {
    /// The stream followed.
    pub fn id(&self) -> StreamId {
        match self {
            Following::Store(f) => f.id,
            Following::Local(f) => f.id(),
        }
    }

    /// Extends the follower's lease in the store (call it more often than the lease).
    pub async fn renew(&self) {
        if let Following::Store(f) = self {
            if let Err(e) = f.store.refresh_follow(f.id, f.token).await {
                tracing::debug!(error = %e, "a follower's lease was not renewed");
                f.metrics.store_errors.increment(StoreOp::Admit);
            }
        }
    }
}

impl Drop for StoreFollower {
    fn drop(&mut self) {
        let (store, id, token, metrics) = (self.store.clone(), self.id, self.token, self.metrics.clone());
        super::give_back_on_drop(async move {
            if let Err(e) = store.unfollow(id, token).await {
                // Its lease lapses instead.
                tracing::debug!(error = %e, "a follower was not uncounted");
                metrics.store_errors.increment(StoreOp::Admit);
            }
        });
    }
}
