//! Listeners, the accept loop and graceful shutdown.

use crate::admin;
use crate::app::App;
use crate::client_conn;
use crate::config::Config;
use crate::metrics::{Prometheus, RejectReason};
use crate::progress::{self, Learner};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A proxy whose listeners are bound, ready to serve.
pub struct Bound {
    main: TcpListener,
    admin: TcpListener,
    app: Arc<App>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// Binds both listeners and builds the shared state, which records into `metrics` (and the admin
/// `/metrics` renders it). `shutdown` fires to stop serving.
pub async fn bind(
    cfg: Config,
    shutdown: CancellationToken,
    metrics: Prometheus,
) -> Result<Bound, ServerError> {
    bind_with_store(cfg, shutdown, metrics, None).await
}

/// [`bind`], writing streams to `store` instead of a memory store of this process's own (tests run
/// several proxies on one store).
pub async fn bind_with_store(
    cfg: Config,
    shutdown: CancellationToken,
    metrics: Prometheus,
    store: Option<crate::store::Handle>,
) -> Result<Bound, ServerError> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })
    };
    let main = bind(cfg.server.listen).await?;
    let admin = bind(cfg.server.admin_listen).await?;
    let learner = cfg.progress.enabled.then(|| load_learner(&cfg));
    let app = Arc::new(match store {
        Some(store) => App::with_store(cfg, learner, shutdown, metrics.metrics, store),
        None => App::new(cfg, learner, shutdown, metrics.metrics),
    });
    Ok(Bound {
        main,
        admin,
        app,
        metrics: metrics.handle,
    })
}

fn load_learner(cfg: &Config) -> Arc<Learner> {
    let opts = progress::Options {
        every_tokens: cfg.progress.every_tokens,
        min_interval: cfg.progress.min_interval.0,
        priors: cfg
            .progress
            .models
            .iter()
            .map(|p| progress::ModelPrior {
                name: p.name.clone(),
                expected_tokens: p.expected_tokens,
                tokens_per_second: p.tokens_per_second,
            })
            .collect(),
        state_file: cfg.progress.state_file.clone(),
        max_history: cfg.progress.max_history,
        max_keys: progress::DEFAULT_MAX_KEYS,
    };
    let (learner, err) = Learner::load(&opts);
    if let Some(e) = err {
        tracing::warn!(error = %e, "progress state file not loaded; starting with no history");
    }
    Arc::new(learner)
}

impl Bound {
    /// The main listener's address.
    pub fn main_addr(&self) -> SocketAddr {
        self.main
            .local_addr()
            .unwrap_or_else(|_| self.app.cfg.server.listen)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or_else(|_| self.app.cfg.server.admin_listen)
    }

    /// The shared state (tests inspect the registry).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Serves until shutdown, then drains: streams get `shutdown_grace` to finish.
    pub async fn serve(self) {
        let app = self.app;
        let stop_admin = CancellationToken::new();
        let sweep_every =
            (app.cfg.resume.retention.0 / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::spawn(app.registry.clone().run_sweeper(sweep_every, stop_admin.clone()));
        tokio::spawn(admin::serve(
            self.admin,
            app.clone(),
            self.metrics,
            stop_admin.clone(),
        ));
        if let Some(learner) = app.learner.clone() {
            if app.cfg.progress.state_file.is_some() {
                tokio::spawn(save_periodically(learner, stop_admin.clone()));
            }
        }
        serve_main(self.main, app.clone()).await;
        let grace = app.cfg.server.shutdown_grace.0 + Duration::from_secs(5);
        app.registry.wait_readers(grace).await;
        if let Some(learner) = app.learner.clone() {
            save_learner(learner).await;
        }
        stop_admin.cancel();
        tracing::info!("stopped");
    }
}

async fn save_learner(learner: Arc<Learner>) {
    match tokio::task::spawn_blocking(move || learner.save()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "progress state not saved"),
        Err(e) => tracing::warn!(error = %e, "progress state save task failed"),
    }
}

async fn save_periodically(learner: Arc<Learner>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => save_learner(learner.clone()).await,
        }
    }
}

/// Largest request head (request line and headers) accepted from a client. A larger one is
/// answered `431 Request Header Fields Too Large` (HTTP/1.1) or refused (HTTP/2) instead of being
/// forwarded to the backend; hyper's own HTTP/1.1 default (about 400 KB) is far above what any
/// browser sends.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;

/// A server connection builder: HTTP/1.1 and h2c, request heads limited to
/// [`MAX_REQUEST_HEAD_BYTES`], and hyper's HTTP/1.1 header read timeout armed when given (the main
/// listener passes `None`: [`crate::client_conn`] times request heads there).
pub fn builder(header_read_timeout: impl Into<Option<Duration>>) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_REQUEST_HEAD_BYTES as u32);
    b
}

/// The next connection, or `None` once `stop` fires. Accept errors (out of file descriptors and
/// the like) are logged and retried after a short pause instead of spinning.
pub async fn accept(listener: &TcpListener, stop: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn serve_main(listener: TcpListener, app: Arc<App>) {
    let shutdown = app.shutdown.clone();
    let builder = builder(None);
    let connections = TaskTracker::new();
    let awaiting = client_conn::AwaitingHead::new();
    loop {
        let Some((tcp, peer)) = accept(&listener, &shutdown).await else {
            break;
        };
        let Some(permit) = connection_slot(&app, &awaiting, &shutdown).await else {
            break;
        };
        let _ = tcp.set_nodelay(true);
        connections.spawn(client_conn::serve(
            &builder,
            tcp,
            peer,
            app.clone(),
            permit,
            &awaiting,
        ));
    }
    drop(listener);
    connections.close();
    let grace = app.cfg.server.shutdown_grace.0 + Duration::from_secs(5);
    tracing::info!(grace = ?app.cfg.server.shutdown_grace.0, "shutting down: no new connections, draining");
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!("connections still open after the grace period; closing them");
    }
}

/// A `max_connections` slot for an accepted connection. At capacity (counted in
/// `sse_proxy_rejected_total{reason="max_connections"}`) the oldest connection that has sent no
/// request head is closed to make room; with none, the connection waits for a slot and the next
/// ones wait in the accept queue. `None` once shutdown starts.
async fn connection_slot(
    app: &App,
    awaiting: &client_conn::AwaitingHead,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(p) = app.connections.clone().try_acquire_owned() {
        return Some(p);
    }
    app.metrics.rejected.increment(RejectReason::MaxConnections);
    if !awaiting.evict_oldest() {
        tracing::debug!("at max_connections: a connection waits for a slot");
    }
    tokio::select! {
        _ = shutdown.cancelled() => None,
        p = app.connections.clone().acquire_owned() => p.ok(),
    }
}
