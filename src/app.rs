//! The proxy's shared state and the dispatch of main-listener requests.

use crate::config::Config;
use crate::handlers;
use crate::http_util::ProxyBody;
use crate::identity::IdentityRule;
use crate::metrics::Metrics;
use crate::progress::Learner;
use crate::reframe::{batcher, ReaderSettings, RouteSettings};
use crate::store::{self, StoreSettings};
use crate::stream::Registry;
use crate::upstream::Upstream;
use http::{Request, Response};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// State shared by every request.
pub struct App {
    /// The configuration.
    pub cfg: Arc<Config>,
    /// The backend client.
    pub upstream: Upstream,
    /// All streams.
    pub registry: Arc<Registry>,
    /// Who owns a stream.
    pub identity: IdentityRule,
    /// Per-route reader settings, in `cfg.streams` order.
    pub routes: Vec<Arc<RouteSettings>>,
    /// Settings shared by every stream reader.
    pub reader: Arc<ReaderSettings>,
    /// Learned answer lengths, when progress is on.
    pub learner: Option<Arc<Learner>>,
    /// Fires when shutdown starts.
    pub shutdown: CancellationToken,
    /// Client connections served at once: `server.max_connections` (`/readyz` says when none is left).
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Upgraded (WebSocket) tunnels open at most: `server.max_connections`.
    pub tunnels: Arc<tokio::sync::Semaphore>,
    /// Client-metrics rate limiter.
    pub client_reports: handlers::client_metrics::RateLimit,
    /// What every request and stream counts into.
    pub metrics: Arc<Metrics>,
    /// The stream store: every stream's events, for resumes of streams this process does not hold.
    pub store: store::Handle,
}

/// The memory store, bounded like the local logs.
fn memory_store(cfg: &Config) -> store::Handle {
    let settings = StoreSettings {
        max_stream_bytes: cfg.resume.max_stream_bytes.bytes(),
        lease: store::LEASE,
        retention: cfg.resume.retention.0,
    };
    store::Handle::memory(settings, cfg.resume.max_total_bytes.bytes())
}

impl App {
    /// Builds the state for a validated config, counting into `metrics`, with a memory store.
    pub fn new(
        cfg: Config,
        learner: Option<Arc<Learner>>,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        let store = memory_store(&cfg);
        Self::with_store(cfg, learner, shutdown, metrics, store)
    }

    /// Builds the state for a validated config, counting into `metrics`, writing streams to `store`.
    pub fn with_store(
        cfg: Config,
        learner: Option<Arc<Learner>>,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
        store: store::Handle,
    ) -> Self {
        let budget = Arc::new(crate::log::LogBudget::new(metrics.log_bytes.clone()));
        let registry = Arc::new(Registry::new(
            budget,
            cfg.limits.max_streams,
            cfg.limits.max_streams_per_identity,
            cfg.resume.max_total_bytes.bytes(),
            cfg.resume.retention.0,
            metrics.clone(),
        ));
        let reader = Arc::new(ReaderSettings {
            batching: batcher::Limits {
                max_delay: cfg.batching.max_delay.0,
                max_tokens: cfg.batching.max_tokens,
                max_bytes: cfg.batching.max_bytes.bytes(),
                adaptive: cfg.batching.adaptive,
            },
            idle_timeout: cfg.upstream.idle_timeout.0,
            max_event_bytes: cfg.upstream.max_event_bytes.bytes(),
            detach_grace: cfg.resume.detach_grace.0,
            cancel_on_disconnect: cfg.resume.on_disconnect == crate::config::OnDisconnect::Cancel,
            shutdown_grace: cfg.server.shutdown_grace.0,
            progress: learner
                .clone()
                .filter(|_| cfg.progress.enabled)
                .map(|l| (l, cfg.progress.every_tokens, cfg.progress.min_interval.0)),
            store: store.clone(),
        });
        App {
            upstream: Upstream::new(&cfg.upstream),
            identity: IdentityRule::new(cfg.identity.from.clone()),
            routes: cfg
                .streams
                .iter()
                .map(|r| Arc::new(RouteSettings::new(r)))
                .collect(),
            client_reports: handlers::client_metrics::RateLimit::new(cfg.client_metrics.per_second),
            connections: Arc::new(tokio::sync::Semaphore::new(cfg.server.max_connections)),
            tunnels: Arc::new(tokio::sync::Semaphore::new(cfg.server.max_connections)),
            cfg: Arc::new(cfg),
            registry,
            reader,
            learner,
            shutdown,
            metrics,
            store,
        }
    }

    /// Handles one request from the main listener.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let arrived = tokio::time::Instant::now();
        if let Some(resp) = handlers::own_method(&req) {
            return resp;
        }
        let path = req.uri().path();
        if let Some(own) = path
            .strip_prefix(self.cfg.server.route_prefix.as_str())
            .filter(|rest| rest.starts_with('/'))
        {
            let own = own.to_string();
            return handlers::own::handle(&self, &own, req).await;
        }
        let method_ok = matches!(*req.method(), http::Method::GET | http::Method::POST);
        match self.cfg.stream_route(path) {
            Some((idx, _)) if method_ok => handlers::stream::handle(&self, idx, req, peer, arrived).await,
            _ => handlers::passthrough::handle(&self, req, peer).await,
        }
    }
}
