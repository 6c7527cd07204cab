//! A store for tests: wraps another, and holds or fails its operations on demand.

use super::{
    Admission, AdmitLimits, Batch, BoxFuture, Claim, ClaimInfo, Meta, NewStream, Read, Store, StoreError,
    Trim, Wait,
};
use crate::ids::StreamId;
use crate::stream::Outcome;
use crate::sync::lock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::time::Instant;

/// Wraps a store. While closed, writes (`create`, `append`, `finish`) and pings wait; while
/// failing, every operation fails with [`StoreError::Unavailable`] (those once they pass the gate).
pub struct Gate {
    inner: Arc<dyn Store>,
    open: watch::Sender<bool>,
    failing: AtomicBool,
    waiting: AtomicUsize,
    appends: Mutex<Vec<(u64, usize)>>,
    refreshes: AtomicUsize,
}

/// Counts a write waiting at the gate while it exists.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    /// An open, working gate in front of `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Gate {
            inner,
            open: watch::Sender::new(true),
            failing: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            appends: Mutex::new(Vec::new()),
            refreshes: AtomicUsize::new(0),
        })
    }

    /// Writes wait from now on.
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    /// Writes go through again (the waiting ones too).
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Every operation fails (`true`) or works (`false`) from now on.
    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// Writes waiting at the gate now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// `(first seq, frames)` of every batch that passed the gate to `append`, in order.
    pub fn appends(&self) -> Vec<(u64, usize)> {
        lock(&self.appends).clone()
    }

    /// Lease refreshes asked for so far, failed ones included.
    pub fn refreshes(&self) -> usize {
        self.refreshes.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the gate fails every operation".into()));
        }
        Ok(())
    }

    async fn pass(&self) -> Result<(), StoreError> {
        let mut open = self.open.subscribe();
        if !*open.borrow_and_update() {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let _waiting = Waiting(&self.waiting);
            // The sender lives in `self`: this only returns once the gate opens.
            let _ = open.wait_for(|o| *o).await;
        }
        self.check()
    }
}

impl Store for Gate {
    fn create(&self, id: StreamId, new: NewStream) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.pass().await?;
            self.inner.create(id, new).await
        })
    }

    fn append(&self, id: StreamId, batch: Batch) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            self.pass().await?;
            lock(&self.appends).push((batch.first, batch.frames.len()));
            self.inner.append(id, batch).await
        })
    }

    fn read(&self, id: StreamId, after: u64, max_bytes: usize) -> BoxFuture<'_, Result<Read, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.read(id, after, max_bytes).await
        })
    }

    fn wait(&self, id: StreamId, after: u64, deadline: Instant) -> BoxFuture<'_, Result<Wait, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.wait(id, after, deadline).await
        })
    }

    fn finish(
        &self,
        id: StreamId,
        outcome: Outcome,
        batch: Batch,
    ) -> BoxFuture<'_, Result<Outcome, StoreError>> {
        Box::pin(async move {
            self.pass().await?;
            self.inner.finish(id, outcome, batch).await
        })
    }

    fn trim(&self, id: StreamId, trim: Trim) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.trim(id, trim).await
        })
    }

    fn meta(&self, id: StreamId) -> BoxFuture<'_, Result<Meta, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.meta(id).await
        })
    }

    fn refresh_lease(&self, id: StreamId) -> BoxFuture<'_, Result<(), StoreError>> {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            self.check()?;
            self.inner.refresh_lease(id).await
        })
    }

    fn remove(&self, id: StreamId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.remove(id).await
        })
    }

    fn admit(&self, claim: Claim, limits: AdmitLimits) -> BoxFuture<'_, Result<Admission, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.admit(claim, limits).await
        })
    }

    fn refresh_claim(&self, claim: Claim) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.refresh_claim(claim).await
        })
    }

    fn release(&self, claim: Claim) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.release(claim).await
        })
    }

    fn claims(&self) -> BoxFuture<'_, Result<Vec<ClaimInfo>, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.claims().await
        })
    }

    fn add_length(
        &self,
        route: String,
        model: String,
        total: u64,
        keep: usize,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.add_length(route, model, total, keep).await
        })
    }

    fn lengths(
        &self,
        route: String,
        model: String,
        keep: usize,
    ) -> BoxFuture<'_, Result<Vec<u64>, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.lengths(route, model, keep).await
        })
    }

    fn shared_secret(
        &self,
        name: &'static str,
        proposed: [u8; 16],
    ) -> BoxFuture<'_, Result<[u8; 16], StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.shared_secret(name, proposed).await
        })
    }

    fn follow(&self, id: StreamId, token: u64, max: usize) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.follow(id, token, max).await
        })
    }

    fn refresh_follow(&self, id: StreamId, token: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.refresh_follow(id, token).await
        })
    }

    fn unfollow(&self, id: StreamId, token: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.unfollow(id, token).await
        })
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.pass().await?;
            self.inner.ping().await
        })
    }
}
