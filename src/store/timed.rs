//! A store that times every operation of the store it wraps into `sse_proxy_store_op_seconds`.

use super::{
    Admission, AdmitLimits, Batch, BoxFuture, Claim, ClaimInfo, Meta, NewStream, Read, Store, StoreError,
    Trim, Wait,
};
use crate::ids::StreamId;
use crate::metrics::{Metrics, StoreOp};
use crate::stream::Outcome;
use std::future::Future;
use std::sync::Arc;
use tokio::time::Instant;

/// Wraps a store and records how long each of its operations took, by operation.
pub struct Timed {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Timed {
    /// `inner`, timed into `metrics`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Timed { inner, metrics }
    }

    /// `fut`, recording its time under `op` once it resolves or is given up (dropped: a caller's
    /// timeout). A future ready at once stays ready at once: the writer relies on that.
    fn time<'a, T: 'a>(&'a self, op: StoreOp, fut: impl Future<Output = T> + Send + 'a) -> BoxFuture<'a, T> {
        Box::pin(async move {
            let _timer = Timer {
                op,
                start: Instant::now(),
                metrics: &self.metrics,
            };
            fut.await
        })
    }
}

/// Records the time since `start` under `op` when dropped.
struct Timer<'a> {
    op: StoreOp,
    start: Instant,
    metrics: &'a Metrics,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        let secs = self.start.elapsed().as_secs_f64();
        self.metrics.store_op_seconds.record(self.op, secs);
    }
}

impl Store for Timed {
    fn create(&self, id: StreamId, new: NewStream) -> BoxFuture<'_, Result<(), StoreError>> {
        self.time(StoreOp::Create, self.inner.create(id, new))
    }

    fn append(&self, id: StreamId, batch: Batch) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.time(StoreOp::Append, self.inner.append(id, batch))
    }

    fn read(&self, id: StreamId, after: u64, max_bytes: usize) -> BoxFuture<'_, Result<Read, StoreError>> {
        self.time(StoreOp::Read, self.inner.read(id, after, max_bytes))
    }

    fn wait(&self, id: StreamId, after: u64, deadline: Instant) -> BoxFuture<'_, Result<Wait, StoreError>> {
        self.time(StoreOp::Wait, self.inner.wait(id, after, deadline))
    }

    fn finish(
        &self,
        id: StreamId,
        outcome: Outcome,
        batch: Batch,
    ) -> BoxFuture<'_, Result<Outcome, StoreError>> {
        self.time(StoreOp::Finish, self.inner.finish(id, outcome, batch))
    }

    fn trim(&self, id: StreamId, trim: Trim) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.time(StoreOp::Trim, self.inner.trim(id, trim))
    }

    fn meta(&self, id: StreamId) -> BoxFuture<'_, Result<Meta, StoreError>> {
        self.time(StoreOp::Meta, self.inner.meta(id))
    }

    fn refresh_lease(&self, id: StreamId) -> BoxFuture<'_, Result<(), StoreError>> {
        self.time(StoreOp::Refresh, self.inner.refresh_lease(id))
    }

    fn remove(&self, id: StreamId) -> BoxFuture<'_, Result<(), StoreError>> {
        self.time(StoreOp::Remove, self.inner.remove(id))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.time(StoreOp::Ping, self.inner.ping())
    }

    fn admit(&self, claim: Claim, limits: AdmitLimits) -> BoxFuture<'_, Result<Admission, StoreError>> {
        self.time(StoreOp::Admit, self.inner.admit(claim, limits))
    }

    fn refresh_claim(&self, claim: Claim) -> BoxFuture<'_, Result<(), StoreError>> {
        self.time(StoreOp::Admit, self.inner.refresh_claim(claim))
    }

    fn release(&self, claim: Claim) -> BoxFuture<'_, Result<(), StoreError>> {
        self.time(StoreOp::Admit, self.inner.release(claim))
    }

    fn claims(&self) -> BoxFuture<'_, Result<Vec<ClaimInfo>, StoreError>> {
        self.time(StoreOp::List, self.inner.claims())
    }

    fn add_length(
        &self,
        route: String,
        model: String,
        total: u64,
        keep: usize,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.time(StoreOp::History, self.inner.add_length(route, model, total, keep))
    }

    fn lengths(
        &self,
        route: String,
        model: String,
        keep: usize,
    ) -> BoxFuture<'_, Result<Vec<u64>, StoreError>> {
        self.time(StoreOp::History, self.inner.lengths(route, model, keep))
    }

    fn shared_secret(
        &self,
        name: &'static str,
        proposed: [u8; 16],
    ) -> BoxFuture<'_, Result<[u8; 16], StoreError>> {
        self.time(StoreOp::Key, self.inner.shared_secret(name, proposed))
    }

    fn follow(&self, id: StreamId, token: u64, max: usize) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.time(StoreOp::Admit, self.inner.follow(id, token, max))
    }

    fn refresh_follow(&self, id: StreamId, token: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.time(StoreOp::Admit, self.inner.refresh_follow(id, token))
    }

    fn unfollow(&self, id: StreamId, token: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.time(StoreOp::Admit, self.inner.unfollow(id, token))
    }

    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Prometheus;
    use crate::store::gate::Gate;
    use crate::store::MemoryStore;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    fn memory() -> Arc<MemoryStore> {
        MemoryStore::for_tests()
    }

    fn count(text: &str, op: &str) -> f64 {
        let prefix = format!("sse_proxy_store_op_seconds_count{{op=\"{op}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    }

    #[tokio::test(start_paused = true)]
    async fn every_operation_is_timed_by_op_and_a_ready_one_stays_ready() {
        let prom = Prometheus::standalone().expect("recorder");
        let gate = Gate::new(memory());
        let timed = Timed::new(gate.clone(), prom.metrics.clone());
        let id = StreamId::random();
        let new = NewStream::for_tests();
        // The memory store answers at once, and so does its timed wrapper.
        let mut create = timed.create(id, new);
        let polled = create.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(polled, Poll::Ready(Ok(()))));
        drop(create);
        gate.close();
        let append = tokio::spawn({
            let timed = Arc::new(timed);
            let t = timed.clone();
            async move {
                let r = t.append(id, Batch::new(1, vec!["x".into()])).await;
                (r, t)
            }
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
        gate.open();
        let (appended, timed) = append.await.expect("append task");
        assert_eq!(appended, Ok(1));
        timed.meta(id).await.expect("meta");
        timed.ping().await.expect("ping");
        // A ping given up after 1 s (the gate holds it) is timed too.
        gate.close();
        let given_up = tokio::time::timeout(Duration::from_secs(1), timed.ping()).await;
        assert!(given_up.is_err());
        gate.open();
        let text = prom.handle.render();
        assert_eq!(
            [
                count(&text, "create"),
                count(&text, "append"),
                count(&text, "meta")
            ],
            [1.0, 1.0, 1.0],
            "{text}"
        );
        assert_eq!((count(&text, "ping"), count(&text, "read")), (2.0, 0.0), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("sse_proxy_store_op_seconds_sum{op=\"ping\"} 1")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("sse_proxy_store_op_seconds_sum{op=\"append\"} 0.25")),
            "the append waited 250 ms at the gate:\n{text}"
        );
    }
}
