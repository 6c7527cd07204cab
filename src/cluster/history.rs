//! Learned answer lengths shared through the stream store, so that every replica estimates from the
//! answers of all.
//!
//! The per-token path never waits for the store: a replica's [`Learner`] keeps estimating from its
//! local copy. A completed answer's length is added locally at once and sent to the store in the
//! background; before an answer of a route and model starts (while its backend request is in
//! flight) the local copy of that pair is replaced by the store's if it is older than [`FRESH`].

use crate::metrics::{Metrics, StoreOp};
use crate::progress::Learner;
use crate::store::{Store, StoreError};
use crate::sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{timeout, Instant};

/// A local copy younger than this is used as it is.
const FRESH: Duration = Duration::from_secs(1);

/// Longest a stream's start waits for the store's copy.
const ANSWER: Duration = Duration::from_millis(250);

/// Pairs whose last fetch is remembered; past it the memory is cleared (costing fetches, not
/// memory: model names come from requests).
const MAX_TRACKED: usize = 1024;

/// A [`Learner`] kept in step with the store's shared history.
pub struct SharedHistory {
    learner: Arc<Learner>,
    store: Arc<dyn Store>,
    /// Lengths kept per route and model (`progress.max_history`).
    keep: usize,
    fetched: Mutex<HashMap<(String, String), Instant>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for SharedHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedHistory")
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

impl SharedHistory {
    /// `learner`'s history, shared through `store`, `keep` lengths per route and model.
    pub fn new(learner: Arc<Learner>, store: Arc<dyn Store>, keep: usize, metrics: Arc<Metrics>) -> Self {
        SharedHistory {
            learner,
            store,
            keep,
            fetched: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Brings the local copy of `model` on `route` up to date, unless it is fresh; waits for the
    /// store at most [`ANSWER`].
    pub async fn refresh(&self, route: &str, model: &str) {
        if !self.due(route, model) {
            return;
        }
        let asked = self.store.lengths(route.to_owned(), model.to_owned(), self.keep);
        match timeout(ANSWER, asked).await {
            // Nothing shared yet: what this replica knows (say, from its state file) stays.
            Ok(Ok(lengths)) if lengths.is_empty() => {}
            Ok(Ok(lengths)) => self.learner.replace(route, model, &lengths),
            Ok(Err(e)) => self.failed(&e),
            Err(_) => self.failed(&StoreError::Unavailable("no answer in time".into())),
        }
    }

    /// Sends the length of a completed answer, already learned locally, to the store.
    pub fn share(self: &Arc<Self>, route: &str, model: &str, total: u64) {
        let (this, route, model) = (self.clone(), route.to_owned(), model.to_owned());
        tokio::spawn(async move {
            if let Err(e) = this.store.add_length(route, model, total, this.keep).await {
                this.failed(&e);
            }
        });
    }

    /// Whether the local copy is stale; if so it counts as fetched from now on.
    fn due(&self, route: &str, model: &str) -> bool {
        let now = Instant::now();
        let mut fetched = lock(&self.fetched);
        let key = (route.to_owned(), model.to_owned());
        if fetched.get(&key).is_some_and(|at| now < *at + FRESH) {
            return false;
        }
        if fetched.len() >= MAX_TRACKED {
            fetched.clear();
        }
        fetched.insert(key, now);
        true
    }

    fn failed(&self, e: &StoreError) {
        tracing::debug!(error = %e, "learned answer lengths not shared");
        self.metrics.store_errors.increment(StoreOp::History);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Options;
    use crate::store::MemoryStore;

    fn store() -> Arc<MemoryStore> {
        MemoryStore::for_tests()
    }

    fn shared(store: Arc<MemoryStore>) -> (Arc<Learner>, Arc<SharedHistory>) {
        let learner = Arc::new(Learner::new(&Options::default()));
        let metrics = Arc::new(Metrics::noop());
        let h = Arc::new(SharedHistory::new(learner.clone(), store, 5, metrics));
        (learner, h)
    }

    #[tokio::test(start_paused = true)]
    async fn one_learners_lengths_reach_another_once_its_copy_is_stale() {
        let store = store();
        let (a, on_a) = shared(store.clone());
        let (b, on_b) = shared(store.clone());
        on_b.refresh("/r", "m").await;
        for _ in 0..3 {
            a.record("/r", "m", 120);
            on_a.share("/r", "m", 120);
        }
        tokio::task::yield_now().await;
        on_b.refresh("/r", "m").await;
        assert_eq!(b.samples("/r", "m"), 0, "fresh copies are not fetched again");
        tokio::time::advance(FRESH).await;
        on_b.refresh("/r", "m").await;
        assert_eq!(b.samples("/r", "m"), 3);
        assert_eq!(b.estimate("/r", "m", 10).total, 120);
        assert_eq!(b.samples("/r", "other"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_shared_history_leaves_the_local_one() {
        let (learner, h) = shared(store());
        learner.record("/r", "m", 50);
        h.refresh("/r", "m").await;
        assert_eq!(learner.samples("/r", "m"), 1);
    }
}
