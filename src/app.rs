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
use std::sync::{Arc, PoisonError, RwLock};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// State shared by every request.
pub struct App {
    /// What a config reload replaces; see [`App::runtime`].
    runtime: RwLock<Arc<Runtime>>,
    /// All streams.
    pub registry: Arc<Registry>,
    /// Who owns a stream.
    pub(crate) identity: IdentityRule,
    /// Admits new streams under the limits, counted across the replicas on the store.
    pub(crate) admission: Admission,
    /// Fires when shutdown starts.
    pub(crate) shutdown: CancellationToken,
    /// Client connections served at once: `server.max_connections` (`/readyz` says when none is left).
    pub connections: Arc<Semaphore>,
    /// Upgraded (WebSocket) tunnels open at most: `server.max_connections`.
    pub(crate) tunnels: Arc<Semaphore>,
    /// What every request and stream counts into.
    pub(crate) metrics: Arc<Metrics>,
    /// The stream store: every stream's events, for resumes of streams this process does not hold.
    pub(crate) store: store::Handle,
    /// Whether the stream store answers (`/readyz` says when it does not).
    pub(crate) store_health: store::health::Health,
}

/// The settings and what is built from them for new requests and new streams: one value,
/// replaced whole by a config reload. A running stream keeps the reader settings, route and
/// progress cadence it started with, a connection its cursor settings.
pub struct Runtime {
    /// The settings.
    pub(crate) settings: Arc<Settings>,
    /// The backend client.
    pub(crate) upstream: Upstream,
    /// What every new stream's reader shares.
    pub(crate) readers: Arc<reframe::Shared>,
    /// Learned answer lengths, once progress has been on (kept across reloads).
    pub learner: Option<Arc<Learner>>,
    /// The learned lengths shared with the other replicas, when the store is shared.
    pub(crate) history: Option<Arc<SharedHistory>>,
    /// Client-metrics rate limiter (`client_metrics.per_second`).
    pub(crate) client_reports: Arc<RateLimit>,
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
        let admission = Admission::new(registry.clone(), store.clone(), metrics.clone());
        let identity = IdentityRule::new(settings.identity.clone());
        let max_connections = settings.server.max_connections;
        let runtime = build_runtime(settings, learner, None, &registry, &store, &metrics);
        App {
            runtime: RwLock::new(Arc::new(runtime)),
            identity,
            connections: Arc::new(Semaphore::new(max_connections)),
            tunnels: Arc::new(Semaphore::new(max_connections)),
            registry,
            admission,
            shutdown,
            metrics,
            store,
            store_health,
        }
    }

    /// What new requests and streams use now: take it once per request, so that a reload in the
    /// middle of one does not mix two configs.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The settings new requests and streams use now.
    pub fn settings(&self) -> Arc<Settings> {
        self.runtime().settings.clone()
    }

    /// Learned answer lengths, when progress is or has been on.
    pub fn learner(&self) -> Option<Arc<Learner>> {
        self.runtime().learner.clone()
    }

    /// Runs new requests and streams with `settings` from now on (a config reload); running
    /// streams and open connections keep what they started with. The keys that cannot change
    /// while running (listeners, store, identity, log bounds) must be those of the running
    /// settings: see `reload`.
    /// Reloads are one at a time (`reload` holds its lock); requests go on meanwhile with the
    /// current runtime until the swap.
    pub fn apply(&self, settings: Settings) {
        let current = self.runtime();
        // Progress turned on by a reload learns from then on.
        let learner = current
            .learner
            .clone()
            .or_else(|| settings.progress.as_ref().map(|p| load_learner(&p.learner)));
        let (registry, store, metrics) = (&self.registry, &self.store, &self.metrics);
        let next = build_runtime(settings, learner, Some(&current), registry, store, metrics);
        self.admission.set_limits(admit_limits(&next.settings));
        *self.runtime.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
    }
}

/// The runtime of `settings` with `learner`; the shared history and the client-metrics bucket of
/// `previous` are kept.
fn build_runtime(
    settings: Settings,
    learner: Option<Arc<Learner>>,
    previous: Option<&Runtime>,
    registry: &Arc<Registry>,
    store: &store::Handle,
    metrics: &Arc<Metrics>,
) -> Runtime {
    let history = previous.and_then(|p| p.history.clone()).or_else(|| {
        let keep = settings.progress.as_ref()?.learner.max_history;
        let learner = learner.clone()?;
        store.store.is_shared().then(|| {
            Arc::new(SharedHistory::new(
                learner,
                store.store.clone(),
                keep,
                metrics.clone(),
            ))
        })
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
    let readers = Arc::new(reframe::Shared {
        settings: settings.reader,
        registry: registry.clone(),
        progress,
        store: store.clone(),
    });
    let per_second = settings.client_metrics.map_or(0, |c| c.per_second);
    let client_reports = match previous {
        // The bucket's level survives a reload that does not change its rate.
        Some(p) if p.settings.client_metrics.map_or(0, |c| c.per_second) == per_second => {
            p.client_reports.clone()
        }
        _ => Arc::new(RateLimit::new(per_second)),
    };
    let upstream = match previous {
        // The pooled backend connections survive a reload that does not change the backend.
        Some(p) if p.settings.upstream == settings.upstream => p.upstream.clone(),
        _ => Upstream::new(&settings.upstream, settings.server.workers),
    };
    Runtime {
        upstream,
        settings: Arc::new(settings),
        readers,
        learner,
        history,
        client_reports,
    }
}

/// The limits new streams are admitted under.
fn admit_limits(settings: &Settings) -> AdmitLimits {
    AdmitLimits {
        max_streams: settings.limits.max_streams,
        max_per_identity: settings.limits.max_streams_per_identity,
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

/// The learner of `opts`, with its state file loaded when there is one (a bad or missing file is
/// a warning: the learner starts empty).
pub(crate) fn load_learner(opts: &crate::progress::Options) -> Arc<Learner> {
    let (learner, err) = Learner::load(opts);
    if let Some(e) = err {
        tracing::warn!(error = %e, "progress state file not loaded; starting with no history");
    }
    Arc::new(learner)
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
    fn a_reload_replaces_the_runtime_and_keeps_what_outlives_it() {
        let app = test_app("");
        let before = app.runtime();
        assert!(before.learner.is_none(), "test_app starts without a learner");
        let text = "[upstream]\nurl = \"http://127.0.0.1:9\"\n[batching]\nmax_tokens = 5\n\
                    [limits]\nmax_streams = 1\n";
        let cfg = crate::config::Config::from_toml_str(text, "<test>").expect("valid");
        app.apply(Settings::build(&cfg));
        let after = app.runtime();
        assert_ne!(before.readers.settings.batching.max_tokens, 5);
        assert_eq!(after.readers.settings.batching.max_tokens, 5);
        assert!(after.settings.route("/stream").is_none(), "the new routes");
        assert!(
            before.settings.route("/stream").is_some(),
            "a snapshot keeps its own"
        );
        assert!(Arc::ptr_eq(&before.client_reports, &after.client_reports));
        assert!(after.learner.is_some(), "progress is on: it learns from now on");
        let _slot = app.registry.reserve(None).expect("one stream");
        assert_eq!(
            app.registry.reserve(None).err(),
            Some(crate::stream::Rejected::MaxStreams)
        );
    }

    #[test]
    fn clients_are_handed_off_on_a_shared_store_with_an_identity_too() {
        // The replicas share the identity key (see `server`): any of them tells a stream's owner.
        assert!(app("").store.handoff);
        let with_identity = app("[identity]\nfrom = \"header:authorization\"\n");
        assert!(with_identity.store.handoff);
        assert!(with_identity.runtime().readers.store.handoff);
    }
}
