//! The stream store's health check: one task pings the store every [`EVERY`], keeps
//! `sse_proxy_store_connected` current and tells `/readyz` whether the store answers.

use super::Store;
use crate::metrics::{Metrics, StoreOp};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{interval, timeout, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// How often the store is pinged.
pub const EVERY: Duration = Duration::from_secs(1);

/// A ping slower than this counts as a failure.
const TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the store answered its last health check; shared by the check and `/readyz`.
#[derive(Debug, Clone)]
pub struct Health {
    connected: Arc<AtomicBool>,
}

impl Health {
    /// A store that was just reached: connected until a check says otherwise.
    pub fn new(metrics: &Metrics) -> Self {
        metrics.store_connected.set(1.0);
        Health {
            connected: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Whether the store answered its last health check.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Pings `store` every [`EVERY`] until `stop` fires; one ping at a time, so a store that does
    /// not answer is never sent a pile of them.
    pub async fn run(self, store: Arc<dyn Store>, metrics: Arc<Metrics>, stop: CancellationToken) {
        let mut tick = interval(EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let answered = match timeout(TIMEOUT, store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer in time".to_owned()),
            };
            self.update(answered, &metrics);
        }
    }

    fn update(&self, answered: Result<(), String>, metrics: &Metrics) {
        let up = answered.is_ok();
        let was = self.connected.swap(up, Ordering::SeqCst);
        metrics.store_connected.set(if up { 1.0 } else { 0.0 });
        match answered {
            Ok(()) if !was => tracing::info!("the stream store answers again"),
            Ok(()) => {}
            Err(e) => {
                metrics.store_errors.increment(StoreOp::Ping);
                if was {
                    tracing::warn!(error = %e, "the stream store does not answer; resumes from it get 503 until it does");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Prometheus;
    use crate::store::gate::Gate;
    use crate::store::{MemoryStore, StoreSettings};

    fn gate() -> Arc<Gate> {
        let settings = StoreSettings {
            max_stream_bytes: 1 << 20,
            lease: Duration::from_secs(5),
            retention: Duration::from_secs(60),
        };
        Gate::new(Arc::new(MemoryStore::new(settings, usize::MAX)))
    }

    fn sample(prom: &Prometheus, name: &str) -> String {
        let text = prom.handle.render();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or("missing")
            .to_owned()
    }

    /// Waits (on paused time) until `health` says `up`; returns how long that took.
    async fn until(health: &Health, up: bool) -> Duration {
        let t0 = tokio::time::Instant::now();
        while health.connected() != up {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        t0.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_store_shows_within_a_check_and_recovers_by_itself() {
        let prom = Prometheus::standalone().expect("recorder");
        let gate = gate();
        let health = Health::new(&prom.metrics);
        assert_eq!(sample(&prom, "sse_proxy_store_connected"), "1");
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            health
                .clone()
                .run(gate.clone(), prom.metrics.clone(), stop.clone()),
        );
        tokio::time::sleep(3 * EVERY).await;
        assert!(health.connected());
        gate.fail(true);
        assert!(until(&health, false).await <= EVERY + Duration::from_millis(10));
        assert_eq!(sample(&prom, "sse_proxy_store_connected"), "0");
        assert_eq!(sample(&prom, "sse_proxy_store_errors_total{op=\"ping\"}"), "1");
        gate.fail(false);
        assert!(until(&health, true).await <= EVERY + Duration::from_millis(10));
        assert_eq!(sample(&prom, "sse_proxy_store_connected"), "1");
        stop.cancel();
        task.await.expect("health task");
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_does_not_answer_is_down_once_the_ping_times_out() {
        let prom = Prometheus::standalone().expect("recorder");
        let gate = gate();
        let health = Health::new(&prom.metrics);
        let stop = CancellationToken::new();
        tokio::spawn(
            health
                .clone()
                .run(gate.clone(), prom.metrics.clone(), stop.clone()),
        );
        tokio::time::sleep(EVERY / 2).await;
        gate.close();
        // The first ping after the close is sent at EVERY and times out TIMEOUT later.
        let took = until(&health, false).await + EVERY / 2;
        assert!(
            took >= EVERY + TIMEOUT && took <= EVERY + TIMEOUT + Duration::from_millis(10),
            "{took:?}"
        );
        gate.open();
        until(&health, true).await;
        stop.cancel();
    }
}
