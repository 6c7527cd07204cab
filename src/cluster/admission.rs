//! A new answer's place in `limits.max_streams` and `limits.max_streams_per_identity`, counted by
//! the stream store across every replica that shares it.

use crate::identity::Owner;
use crate::ids::StreamId;
use crate::metrics::{Metrics, StoreOp};
use crate::store::{self, AdmitLimits, Claim, Store, StoreError};
use crate::stream::{Registry, Rejected, Slot};
use crate::sync::lock;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{timeout, Instant};

/// Longest a new answer waits for the store's admission before counting locally.
const ANSWER: Duration = Duration::from_secs(1);

/// How long the store is left alone after it failed an admission: new answers meanwhile are
/// counted locally without waiting for it.
const BACK_OFF: Duration = Duration::from_secs(1);

/// Admits new answers.
pub struct Admission {
    registry: Arc<Registry>,
    store: store::Handle,
    metrics: Arc<Metrics>,
    /// The store failed; it is asked again from then on.
    retry_at: Mutex<Option<Instant>>,
}

/// A running answer's place: counted in this process's registry and, when the store took it, held
/// there as a claim (which the answer's store writer refreshes with its lease). Both are given back
/// on drop.
pub struct Admitted {
    _slot: Slot,
    claim: Option<Held>,
}

/// A claim held in the store; released on drop.
struct Held {
    store: Arc<dyn Store>,
    claim: Claim,
    lease: Duration,
    metrics: Arc<Metrics>,
}

impl Admitted {
    /// A place counted in this process only.
    pub fn local(slot: Slot) -> Self {
        Admitted {
            _slot: slot,
            claim: None,
        }
    }

    /// The claim the store holds for the answer, to refresh with its lease.
    pub fn claim(&self) -> Option<&Claim> {
        self.claim.as_ref().map(|h| &h.claim)
    }

    /// Refreshes the claim every third of the lease, forever: run it alongside whatever comes
    /// before the answer's reader (which refreshes it from then on), such as a backend slow to
    /// answer, so that the place does not lapse meanwhile.
    pub async fn keep(&self) -> std::convert::Infallible {
        let Some(held) = self.claim.as_ref() else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(held.lease / 3).await;
            if let Err(e) = held.store.refresh_claim(held.claim.clone()).await {
                tracing::debug!(error = %e, "refreshing a place in the limits failed");
                held.metrics.store_errors.increment(StoreOp::Admit);
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let (store, claim, metrics) = (self.store.clone(), self.claim.clone(), self.metrics.clone());
        // A store in memory answers at once: the place is free when the answer's reader ends.
        super::give_back_on_drop(async move {
            if let Err(e) = store.release(claim).await {
                // Its lease lapses instead.
                tracing::debug!(error = %e, "a place in the cluster-wide limits was not given back");
                metrics.store_errors.increment(StoreOp::Admit);
            }
        });
    }
}

impl Admission {
    /// Admits into `registry` and `store` under the registry's limits.
    pub fn new(registry: Arc<Registry>, store: store::Handle, metrics: Arc<Metrics>) -> Self {
        Admission {
            registry,
            store,
            metrics,
            retry_at: Mutex::new(None),
        }
    }

    /// Admits new answers under `limits` from now on (a config reload): in the store's count
    /// across the replicas and in this replica's own.
    pub fn set_limits(&self, limits: AdmitLimits) {
        self.registry
            .set_limits(limits.max_streams, limits.max_per_identity);
    }

    /// The limits now: the registry's, which the local count uses too.
    fn limits(&self) -> AdmitLimits {
        let (max_streams, max_per_identity) = self.registry.limits();
        AdmitLimits {
            max_streams,
            max_per_identity,
        }
    }

    /// A place for answer `id` of `owner`, or the limit that is reached.
    pub async fn admit(&self, id: StreamId, owner: Option<Owner>) -> Result<Admitted, Rejected> {
        if self.store_usable() {
            let claim = Claim {
                id,
                owner,
                replica: self.store.replica.clone(),
            };
            let asked = timeout(ANSWER, self.store.store.admit(claim.clone(), self.limits())).await;
            match asked {
                Ok(Ok(store::Admission::Admitted)) => {
                    return Ok(Admitted {
                        _slot: self.registry.hold(owner),
                        claim: Some(Held {
                            store: self.store.store.clone(),
                            claim,
                            lease: self.store.lease,
                            metrics: self.metrics.clone(),
                        }),
                    });
                }
                Ok(Ok(store::Admission::Full(why))) => return Err(why),
                Ok(Err(e)) => self.store_failed(&e),
                Err(_) => self.store_failed(&StoreError::Unavailable("no answer in time".into())),
            }
        }
        // The store cannot count: this replica counts its own answers against the same limits.
        // Refusing every new answer instead would turn a store outage into a full outage, while
        // answers that run keep flowing without the store anyway; the limits still bound each
        // replica, and the answers admitted meanwhile are not in the cluster count.
        self.registry.reserve(owner).map(Admitted::local)
    }

    fn store_usable(&self) -> bool {
        let mut retry_at = lock(&self.retry_at);
        match *retry_at {
            Some(at) if Instant::now() < at => false,
            Some(_) => {
                *retry_at = None;
                true
            }
            None => true,
        }
    }

    fn store_failed(&self, e: &StoreError) {
        tracing::warn!(error = %e, "the stream store cannot count running answers; counting this replica's only");
        self.metrics.store_errors.increment(StoreOp::Admit);
        *lock(&self.retry_at) = Some(Instant::now() + BACK_OFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogBudget;
    use crate::store::gate::Gate;
    use crate::store::MemoryStore;

    fn admission(store: Arc<dyn Store>, max_streams: usize) -> (Arc<Registry>, Admission) {
        let metrics = Arc::new(Metrics::noop());
        let registry = Arc::new(Registry::new(
            Arc::new(LogBudget::default()),
            max_streams,
            1,
            1 << 20,
            Duration::from_secs(60),
            metrics.clone(),
        ));
        let handle = store::Handle::new(store, Duration::from_secs(5));
        let a = Admission::new(registry.clone(), handle, metrics);
        (registry, a)
    }

    fn memory() -> Arc<MemoryStore> {
        MemoryStore::for_tests()
    }

    #[tokio::test(start_paused = true)]
    async fn the_store_counts_and_a_dropped_place_is_given_back_at_once() {
        let store = memory();
        let (registry, a) = admission(store.clone(), 1);
        let first = a.admit(StreamId::random(), None).await.expect("admitted");
        assert!(first.claim().is_some());
        assert_eq!(registry.running(), 1);
        let full = a.admit(StreamId::random(), None).await;
        assert_eq!(full.err(), Some(Rejected::MaxStreams));
        drop(first);
        assert_eq!(registry.running(), 0);
        assert!(store.claims().await.expect("claims").is_empty());
        assert!(a.admit(StreamId::random(), None).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_place_kept_while_waiting_does_not_lapse() {
        let store = memory();
        let (_registry, a) = admission(store.clone(), 1);
        let waiting = a.admit(StreamId::random(), None).await.expect("admitted");
        let slow_backend = tokio::time::sleep(Duration::from_secs(30));
        tokio::select! {
            _ = slow_backend => {}
            never = waiting.keep() => match never {},
        }
        let full = a.admit(StreamId::random(), None).await;
        assert_eq!(
            full.err(),
            Some(Rejected::MaxStreams),
            "still held after 6 leases"
        );
        drop(waiting);
        let lapsed = a.admit(StreamId::random(), None).await.expect("admitted");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            a.admit(StreamId::random(), None).await.is_ok(),
            "a place nobody keeps lapses"
        );
        drop(lapsed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_store_counts_locally_and_is_left_alone_for_a_while() {
        let gate = Gate::new(memory());
        let (registry, a) = admission(gate.clone(), 1);
        gate.fail(true);
        let local = a.admit(StreamId::random(), None).await.expect("admitted locally");
        assert!(local.claim().is_none());
        assert_eq!(
            a.admit(StreamId::random(), None).await.err(),
            Some(Rejected::MaxStreams),
            "the local count holds the limit"
        );
        drop(local);
        gate.fail(false);
        let still_local = a.admit(StreamId::random(), None).await.expect("admitted");
        assert!(
            still_local.claim().is_none(),
            "within the back-off the store is not asked"
        );
        drop(still_local);
        tokio::time::advance(BACK_OFF).await;
        let claimed = a.admit(StreamId::random(), None).await.expect("admitted");
        assert!(claimed.claim().is_some(), "asked again after the back-off");
        assert_eq!(registry.running(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn new_limits_apply_to_the_store_count_and_the_local_one() {
        let gate = Gate::new(memory());
        let (_registry, a) = admission(gate.clone(), 1);
        let first = a.admit(StreamId::random(), None).await.expect("admitted");
        a.set_limits(AdmitLimits {
            max_streams: 2,
            max_per_identity: 1,
        });
        let second = a
            .admit(StreamId::random(), None)
            .await
            .expect("raised in the store");
        assert!(second.claim().is_some());
        drop(second);
        gate.fail(true);
        let local = a
            .admit(StreamId::random(), None)
            .await
            .expect("raised locally too");
        assert!(local.claim().is_none());
        assert_eq!(
            a.admit(StreamId::random(), None).await.err(),
            Some(Rejected::MaxStreams)
        );
        drop((first, local));
    }
}
