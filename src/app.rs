//! The proxy's shared state: settings, the backend client, the streams, and the limits every
//! request checks. Which handler answers a request is decided in `handlers`.

use crate::cluster::{Admission, SharedHistory};
use crate::identity::IdentityRule;
use crate::log::LogBudget;
use crate::metrics::Metrics;
use crate::progress::Learner;
use crate::rate_limit::RateLimit;
use crate::reframe::{self, ProgressEvents};
use crate::settings::Settings;
use crate::store::{self, AdmitLimits, StoreSettings};
use crate::stream::Registry;
use crate::upstream::Upstream;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// State shared by every request.
pub struct App {
    /// The settings.
    pub(crate) settings: Arc<Settings>,
    /// The backend client.
    pub(crate) upstream: Upstream,
    /// All streams.
    pub registry: Arc<Registry>,
    /// Who owns a stream.
    pub(crate) identity: IdentityRule,
    /// What every stream's reader shares.
    pub(crate) readers: Arc<reframe::Shared>,
    /// Learned answer lengths, when progress is on.
    pub learner: Option<Arc<Learner>>,
    /// The learned lengths shared with the other replicas, when the store is shared.
    pub(crate) history: Option<Arc<SharedHistory>>,
    /// Admits new streams under the limits, counted across the replicas on the store.
    pub(crate) admission: Admission,
    /// Fires when shutdown starts.
    pub(crate) shutdown: CancellationToken,
    /// Client connections served at once: `server.max_connections` (`/readyz` says when none is left).
    pub connections: Arc<Semaphore>,
    /// Upgraded (WebSocket) tunnels open at most: `server.max_connections`.
    pub(crate) tunnels: Arc<Semaphore>,
    /// Client-metrics rate limiter (`client_metrics.per_second`).
    pub(crate) client_reports: RateLimit,
    /// What every request and stream counts into.
    pub(crate) metrics: Arc<Metrics>,
    /// The stream store: every stream's events, for resumes of streams this process does not hold.
    pub(crate) store: store::Handle,
    /// Whether the stream store answers (`/readyz` says when it does not).
    pub(crate) store_health: store::health::Health,
}

/// What the stream store is bounded by: the local logs' bounds and `[store] lease`.
pub(crate) fn store_settings(settings: &Settings) -> StoreSettings {
    StoreSettings {
        max_stream_bytes: settings.resume.max_stream_bytes,
        lease: settings.store.lease.0,
        retention: settings.resume.retention,
    }
}

/// The memory store, bounded like the local logs.
pub(crate) fn memory_store(settings: &Settings) -> store::Handle {
    store::Handle::memory(store_settings(settings), settings.resume.max_total_bytes)
}

impl App {
    /// The state for `settings`, counting into `metrics`, with a memory store; `learner` is used
    /// when progress is on.
    pub fn new(
        settings: Settings,
        learner: Option<Arc<Learner>>,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        let store = memory_store(&settings);
        Self::with_store(settings, learner, shutdown, metrics, store)
    }

    /// The state for `settings`, counting into `metrics`, writing streams to `store` (every
    /// operation timed into `metrics`).
    pub fn with_store(
        settings: Settings,
        learner: Option<Arc<Learner>>,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
        mut store: store::Handle,
    ) -> Self {
        store = store::Handle {
            store: Arc::new(store::Timed::new(store.store, metrics.clone())),
            ..store
        };
        let store_health = store::health::Health::new(&metrics);
        let registry = Arc::new(Registry::new(
            Arc::new(LogBudget::new(metrics.log_bytes.clone())),
            settings.limits.max_streams,
            settings.limits.max_streams_per_identity,
            settings.resume.max_total_bytes,
            settings.resume.retention,
            metrics.clone(),
        ));
        let history = settings
            .progress
            .as_ref()
            .zip(learner.clone())
            .filter(|_| store.store.is_shared())
            .map(|(p, learner)| {
                let keep = p.learner.max_history;
                Arc::new(SharedHistory::new(
                    learner,
                    store.store.clone(),
                    keep,
                    metrics.clone(),
                ))
            });
        let progress = settings
            .progress
            .as_ref()
            .zip(learner.clone())
            .map(|(p, learner)| ProgressEvents {
                learner,
                cadence: p.cadence,
                shared: history.clone(),
            });
        let limits = AdmitLimits {
            max_streams: settings.limits.max_streams,
            max_per_identity: settings.limits.max_streams_per_identity,
        };
        let admission = Admission::new(registry.clone(), store.clone(), limits, metrics.clone());
        let readers = Arc::new(reframe::Shared {
            settings: settings.reader,
            registry: registry.clone(),
            progress,
            store: store.clone(),
        });
        let per_second = settings.client_metrics.map_or(0, |c| c.per_second);
        App {
            upstream: Upstream::new(&settings.upstream),
            identity: IdentityRule::new(settings.identity.clone()),
            client_reports: RateLimit::new(per_second),
            connections: Arc::new(Semaphore::new(settings.server.max_connections)),
            tunnels: Arc::new(Semaphore::new(settings.server.max_connections)),
            settings: Arc::new(settings),
            registry,
            readers,
            learner,
            history,
            admission,
            shutdown,
            metrics,
            store,
            store_health,
        }
    }
}

impl App {
    /// Uses `key` for the owner hashes (the key every replica on the store shares).
    pub(crate) fn with_identity_key(mut self, key: [u8; 16]) -> Self {
        self.identity = self.identity.with_key(key);
        self
    }

    /// This process's name in the stream store (the `replica` of the streams it reads).
    pub fn replica(&self) -> &str {
        &self.store.replica
    }
}

/// A state for handler tests: the base config plus `extra` TOML, no sockets, a backend that is
/// never asked (nothing listens on port 9).
#[cfg(test)]
pub(crate) fn test_app(extra: &str) -> Arc<App> {
    let text = format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n\n[[stream]]\npath = \"/stream\"\n{extra}");
    let cfg = crate::config::Config::from_toml_str(&text, "<test>").expect("valid test config");
    let metrics = Arc::new(Metrics::noop());
    Arc::new(App::new(
        Settings::build(&cfg),
        None,
        CancellationToken::new(),
        metrics,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(identity: &str) -> App {
        let text = format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n{identity}");
        let cfg = crate::config::Config::from_toml_str(&text, "<test>").expect("valid test config");
        let settings = Settings::build(&cfg);
        let store = memory_store(&settings).shared();
        let metrics = Arc::new(Metrics::noop());
        App::with_store(settings, None, CancellationToken::new(), metrics, store)
    }

    #[test]
    fn clients_are_handed_off_on_a_shared_store_with_an_identity_too() {
        // The replicas share the identity key (see `server`): any of them tells a stream's owner.
        assert!(app("").store.handoff);
        let with_identity = app("[identity]\nfrom = \"header:authorization\"\n");
        assert!(with_identity.store.handoff);
        assert!(with_identity.readers.store.handoff);
    }
}
