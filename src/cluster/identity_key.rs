//! The key of the owner hashes, shared by every replica on the store.
//!
//! The first replica to start stores its random key (`SET NX`); the others read it. A store that
//! loses its data (a Redis restarted without persistence) would let the next replica to start store
//! a key of its own, so every replica writes the key it uses back, if absent, once a lease: they
//! all hold the same one, so whichever writes first restores it.

use crate::metrics::{Metrics, StoreOp};
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The name of the identity key in the store.
pub const NAME: &str = "identity-key";

/// Writes `key` back into `store` every `every` if the store has none, until `stop`.
pub async fn keep_identity_key(
    store: Arc<dyn Store>,
    key: [u8; 16],
    every: Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.shared_secret(NAME, key).await {
            Ok(kept) if kept == key => {}
            Ok(_) => tracing::warn!(
                "the stream store holds another identity key than this replica's; owners' resumes across replicas fail until the replicas restart"
            ),
            Err(e) => {
                tracing::debug!(error = %e, "the identity key could not be checked");
                metrics.store_errors.increment(StoreOp::Key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::gate::Gate;
    use crate::store::{MemoryStore, StoreSettings};

    #[tokio::test(start_paused = true)]
    async fn a_lost_key_is_written_back_with_the_same_value() {
        let settings = StoreSettings {
            max_stream_bytes: 1 << 20,
            lease: Duration::from_secs(5),
            retention: Duration::from_secs(60),
        };
        let lost = Gate::new(Arc::new(MemoryStore::new(settings, usize::MAX)));
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::noop());
        let task = tokio::spawn(keep_identity_key(
            lost.clone(),
            [4; 16],
            Duration::from_secs(5),
            metrics,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            lost.shared_secret(NAME, [5; 16]).await,
            Ok([4; 16]),
            "a replica starting later reads the key in use"
        );
        stop.cancel();
        task.await.expect("the task ends when stopped");
    }
}
