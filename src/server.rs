//! The proxy put together: both listeners bound, the shared state built from the settings, and
//! graceful shutdown.

use crate::admin;
use crate::app::load_learner;
use crate::app::App;
use crate::client_conn::{AwaitingHead, Timeouts};
use crate::handlers;
use crate::http_util::RequestBody;
use crate::listener;
use crate::metrics::Prometheus;
use crate::progress::Learner;
use crate::reload::{Load, Reloader};
use crate::settings::Settings;
use http::Request;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How long admin connections may take to finish once the proxy has stopped.
const ADMIN_DRAIN: Duration = Duration::from_secs(1);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} for the {listener} listener: {source}")]
    Bind {
        /// Which listener.
        listener: Listener,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `[store] kind = "redis"` with `required = true`, and Redis cannot be reached.
    #[error("the stream store at {url} is required and unavailable: {source}")]
    Store {
        /// The configured URL.
        url: String,
        /// Why.
        source: crate::store::StoreError,
    },
    /// A worker thread could not start its runtime.
    #[error("cannot start a worker thread: {0}")]
    Worker(std::io::Error),
    /// `[store] ca_file` cannot be read or holds no PEM certificate.
    #[error("store.ca_file {path}: {reason}; give a PEM file with the CA certificate(s) of Redis's TLS certificate")]
    StoreCa {
        /// The configured path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// One of the proxy's two listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `server.listen`: the clients.
    Main,
    /// `server.admin_listen`: metrics, health, streams.
    Admin,
}

impl Listener {
    /// The config key of its address.
    pub fn config_key(self) -> &'static str {
        match self {
            Listener::Main => "server.listen",
            Listener::Admin => "server.admin_listen",
        }
    }
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Listener::Main => "main",
            Listener::Admin => "admin",
        })
    }
}

/// A proxy whose listeners are bound, ready to serve.
pub struct Bound {
    /// One socket per worker (`server.workers`), all on one address.
    main: Vec<std::net::TcpListener>,
    admin: TcpListener,
    app: Arc<App>,
    prometheus: Prometheus,
    reloader: Option<Arc<Reloader>>,
}

/// Binds both listeners and builds the shared state, which records into `metrics` (and the admin
/// `/metrics` renders it). `shutdown` fires to stop serving.
pub async fn bind(
    settings: Settings,
    shutdown: CancellationToken,
    metrics: Prometheus,
) -> Result<Bound, ServerError> {
    bind_with_store(settings, shutdown, metrics, None).await
}

/// [`bind`], writing streams to `store` instead of a memory store of this process's own (tests run
/// several proxies on one store).
pub async fn bind_with_store(
    settings: Settings,
    shutdown: CancellationToken,
    metrics: Prometheus,
    store: Option<crate::store::Handle>,
) -> Result<Bound, ServerError> {
    let bind = |listener: Listener, addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| ServerError::Bind {
            listener,
            addr,
            source,
        })
    };
    let addr = settings.server.listen;
    let main = listener::bind(addr, settings.server.workers).map_err(|source| ServerError::Bind {
        listener: Listener::Main,
        addr,
        source,
    })?;
    let admin = bind(Listener::Admin, settings.server.admin_listen).await?;
    let mut settings = settings;
    settings.count_into(&metrics);
    let learner = settings.progress.as_ref().map(|p| load_learner(&p.learner));
    metrics
        .metrics
        .config_last_reload_success
        .set(crate::reload::unix_now());
    let store = match store {
        Some(store) => store,
        None => configured_store(&settings).await?,
    };
    let key = identity_key(&settings, &store).await?;
    let mut app = App::with_store(settings, learner, shutdown, metrics.metrics.clone(), store);
    if let Some(key) = key {
        app = app.with_identity_key(key);
    }
    let app = Arc::new(app);
    Ok(Bound {
        main,
        admin,
        app,
        prometheus: metrics,
        reloader: None,
    })
}

/// The store `[store]` selects: Redis, or this process's memory (also when Redis is unreachable
/// and not `required`, with a warning).
async fn configured_store(settings: &Settings) -> Result<crate::store::Handle, ServerError> {
    let cfg = &settings.store;
    if cfg.kind == crate::config::StoreKind::Memory {
        return Ok(crate::app::memory_store(settings));
    }
    let store_settings = crate::app::store_settings(settings);
    let ca = cfg.ca_file.as_deref().map(read_ca).transpose()?;
    match crate::store::RedisStore::connect_with_ca(&cfg.url, ca, &cfg.key_prefix, store_settings).await {
        Ok(store) => Ok(crate::store::Handle::new(Arc::new(store), cfg.lease.0).shared()),
        Err(source) if cfg.required => Err(ServerError::Store {
            url: redacted(&cfg.url),
            source,
        }),
        Err(e) => {
            tracing::warn!(url = %redacted(&cfg.url), error = %e, "the Redis stream store is unavailable; running on the memory store");
            Ok(crate::app::memory_store(settings))
        }
    }
}

/// Longest the start waits for the store's identity key.
const KEY_WAIT: Duration = Duration::from_secs(5);

/// The key of the owner hashes, when `[identity]` is configured: the one every replica on the store
/// uses (the first to start stores it), so that an owner resumes on any replica. A required Redis
/// that does not give it stops the start; otherwise this process uses a key of its own.
async fn identity_key(
    settings: &Settings,
    store: &crate::store::Handle,
) -> Result<Option<[u8; 16]>, ServerError> {
    if settings.identity.is_none() {
        return Ok(None);
    }
    let asked = store
        .store
        .shared_secret(crate::cluster::identity_key::NAME, rand::random());
    let source = match tokio::time::timeout(KEY_WAIT, asked).await {
        Ok(Ok(key)) => return Ok(Some(key)),
        Ok(Err(e)) => e,
        Err(_) => crate::store::StoreError::Unavailable("no answer in time".into()),
    };
    let cfg = &settings.store;
    if cfg.required {
        return Err(ServerError::Store {
            url: redacted(&cfg.url),
            source,
        });
    }
    tracing::warn!(error = %source, "the stream store has no identity key for this replica; owners cannot resume on other replicas");
    Ok(None)
}

/// The PEM CA certificates in `path`, checked to hold at least one.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, ServerError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let err = |reason: String| ServerError::StoreCa {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(format!("cannot be read ({e})")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("is not valid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(err("holds no CERTIFICATE block".into()));
    }
    Ok(pem)
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl Bound {
    /// The main listener's address.
    pub fn main_addr(&self) -> SocketAddr {
        self.main
            .first()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or(self.app.settings().server.listen)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.app.settings().server.admin_listen)
    }

    /// Makes the proxy reloadable (SIGHUP, `POST /reload`): `running` is the config it was built
    /// from, `load` reads it again as at start.
    pub fn with_reload(mut self, running: crate::config::Config, load: Load) -> Self {
        let reloader = Reloader::new(self.app.clone(), self.prometheus.clone(), running, load);
        self.reloader = Some(Arc::new(reloader));
        self
    }

    /// What reloads the config, when the proxy was started from a config file.
    pub fn reloader(&self) -> Option<Arc<Reloader>> {
        self.reloader.clone()
    }

    /// The shared state (tests inspect the registry).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves on the current runtime until shutdown, then drains: streams get `shutdown_grace` to
    /// finish. Every socket of the main listener is served here (the binary serves them on
    /// threads of their own with [`Bound::start`]).
    pub async fn serve(self) {
        let Bound {
            main,
            admin,
            app,
            prometheus,
            reloader,
        } = self;
        let stop_admin = background(&app, admin, prometheus.handle, reloader);
        let serve = main_loop(&app);
        let loops = main.into_iter().filter_map(|l| match TcpListener::from_std(l) {
            Ok(l) => Some(serve(l)),
            Err(e) => {
                tracing::error!(error = %e, "cannot serve a socket of the main listener");
                None
            }
        });
        futures_util::future::join_all(loops).await;
        finish(&app, stop_admin).await;
    }

    /// Starts the worker threads, one per socket of the main listener (`server.workers`), each
    /// serving its socket on a single-threaded runtime of its own; the rest runs on the current
    /// runtime. [`Serving::serve`] runs until shutdown.
    pub async fn start(self) -> Result<Serving, ServerError> {
        let Bound {
            main,
            admin,
            app,
            prometheus,
            reloader,
        } = self;
        let workers = match crate::workers::start(main, main_loop(&app)).await {
            Ok(w) => w,
            Err(e) => {
                app.shutdown.cancel();
                return Err(ServerError::Worker(e));
            }
        };
        let stop_admin = background(&app, admin, prometheus.handle, reloader);
        Ok(Serving {
            app,
            workers,
            stop_admin,
        })
    }
}

/// A proxy serving on its worker threads.
pub struct Serving {
    app: Arc<App>,
    workers: crate::workers::Workers,
    stop_admin: CancellationToken,
}

impl Serving {
    /// Serves until shutdown, then drains: streams get `shutdown_grace` to finish; returns once
    /// the worker threads have stopped.
    pub async fn serve(self) {
        self.workers.served().await;
        finish(&self.app, self.stop_admin).await;
        self.workers.exit().await;
    }
}

/// Starts what runs beside the main listener until the returned token fires: the admin
/// listener, the sweeper, metrics upkeep, the store's health and identity key, progress saves.
fn background(
    app: &Arc<App>,
    admin: TcpListener,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    reloader: Option<Arc<Reloader>>,
) -> CancellationToken {
    let settings = app.settings();
    let stop_admin = CancellationToken::new();
    let sweep_every =
        (settings.resume.retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    tokio::spawn(app.registry.clone().run_sweeper(sweep_every, stop_admin.clone()));
    tokio::spawn(admin::upkeep(metrics.clone(), stop_admin.clone()));
    if app.identity.is_configured() && app.store.store.is_shared() {
        tokio::spawn(crate::cluster::identity_key::keep_identity_key(
            app.store.store.clone(),
            app.identity.key(),
            app.store.lease,
            app.metrics.clone(),
            stop_admin.clone(),
        ));
    }
    tokio::spawn(app.store_health.clone().run(
        app.store.store.clone(),
        app.metrics.clone(),
        stop_admin.clone(),
    ));
    let admin_state = Admin {
        app: app.clone(),
        metrics,
        reloader,
    };
    tokio::spawn(serve_admin(admin, admin_state, stop_admin.clone()));
    if settings
        .progress
        .as_ref()
        .is_some_and(|p| p.learner.state_file.is_some())
    {
        tokio::spawn(save_periodically(app.clone(), stop_admin.clone()));
    }
    stop_admin
}

/// The accept loop of one socket of the main listener, until shutdown and its drain; every
/// socket's loop shares the connection slots.
fn main_loop(app: &Arc<App>) -> impl Fn(TcpListener) -> MainLoop + Clone + Send + 'static {
    let settings = app.settings();
    let opts = listener::Options {
        name: "main",
        timeouts: timeouts(&settings),
        slots: app.connections.clone(),
        awaiting: AwaitingHead::new(),
        drain: drain(&settings),
        metrics: Some(app.metrics.clone()),
    };
    let state = app.clone();
    let dispatch =
        move |req: Request<RequestBody>, peer: SocketAddr| handlers::dispatch(state.clone(), req, peer);
    let shutdown = app.shutdown.clone();
    move |tcp: TcpListener| -> MainLoop {
        Box::pin(listener::serve(
            tcp,
            opts.clone(),
            shutdown.clone(),
            dispatch.clone(),
        ))
    }
}

/// A running accept loop of the main listener.
type MainLoop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// How long connections and stream readers may take to finish once shutdown starts.
fn drain(settings: &Settings) -> Duration {
    settings.server.shutdown_grace + Duration::from_secs(5)
}

/// Once the main listener has drained: waits for the stream readers, saves what progress
/// learned, and stops the background work.
async fn finish(app: &Arc<App>, stop_admin: CancellationToken) {
    app.registry.wait_readers(drain(&app.settings())).await;
    if let Some(learner) = app.learner() {
        save_learner(learner).await;
    }
    stop_admin.cancel();
    tracing::info!("stopped");
}

/// The deadlines of a client connection on either listener.
fn timeouts(settings: &Settings) -> Timeouts {
    Timeouts {
        header_read: settings.server.header_read_timeout,
        idle: settings.server.idle_timeout,
    }
}

/// What the admin routes answer from.
#[derive(Clone)]
struct Admin {
    app: Arc<App>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    reloader: Option<Arc<Reloader>>,
}

/// Serves the admin routes, at most [`admin::MAX_CONNECTIONS`] connections at once, until `stop`.
async fn serve_admin(tcp: TcpListener, admin: Admin, stop: CancellationToken) {
    let opts = listener::Options {
        name: "admin",
        timeouts: timeouts(&admin.app.settings()),
        slots: Arc::new(Semaphore::new(admin::MAX_CONNECTIONS)),
        awaiting: AwaitingHead::new(),
        drain: ADMIN_DRAIN,
        metrics: None,
    };
    let handler = move |req: Request<RequestBody>, _peer: SocketAddr| {
        let admin = admin.clone();
        async move { admin::handle(&admin.app, &admin.metrics, admin.reloader.as_ref(), &req).await }
    };
    listener::serve(tcp, opts, stop, handler).await;
}

async fn save_learner(learner: Arc<Learner>) {
    match tokio::task::spawn_blocking(move || learner.save()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "progress state not saved"),
        Err(e) => tracing::warn!(error = %e, "progress state save task failed"),
    }
}

/// Saves the learner every minute, once there is one (a reload may turn progress on).
async fn save_periodically(app: Arc<App>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if let Some(learner) = app.learner() {
                    save_learner(learner).await;
                }
            }
        }
    }
}
