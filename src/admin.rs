//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/streams`.

use crate::app::App;
use crate::http_util::{self, ProxyBody};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the admin routes until `stop` fires.
pub async fn serve(listener: TcpListener, app: Arc<App>, metrics: PrometheusHandle, stop: CancellationToken) {
    // The recorder does not clean up its histograms by itself when we serve /metrics ourselves.
    let upkeep = metrics.clone();
    let upkeep_stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = upkeep_stop.cancelled() => return,
                _ = tick.tick() => upkeep.run_upkeep(),
            }
        }
    });
    let builder = crate::server::builder(Duration::from_secs(10));
    loop {
        let Some((tcp, _)) = crate::server::accept(&listener, &stop).await else {
            return;
        };
        let app = app.clone();
        let metrics = metrics.clone();
        let svc = service_fn(move |req| {
            let resp = route(&app, &metrics, &req);
            async move { Ok::<_, Infallible>(resp) }
        });
        let conn = builder.serve_connection(TokioIo::new(tcp), svc).into_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

fn route(app: &App, metrics: &PrometheusHandle, req: &Request<Incoming>) -> Response<ProxyBody> {
    if req.method() != Method::GET {
        return http_util::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "admin routes are GET only",
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let mut resp = Response::new(http_util::full(metrics.render()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/healthz" => http_util::json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
        "/readyz" if app.shutdown.is_cancelled() => http_util::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "shutting_down" }),
        ),
        "/readyz" if app.connections.available_permits() == 0 => http_util::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "at_capacity" }),
        ),
        "/readyz" => http_util::json(StatusCode::OK, &serde_json::json!({ "status": "ready" })),
        "/streams" => {
            let list = app.registry.list(tokio::time::Instant::now());
            http_util::json(
                StatusCode::OK,
                &serde_json::json!({
                    "running": app.registry.running(),
                    "log_bytes": app.registry.budget().held(),
                    "streams": list,
                }),
            )
        }
        _ => http_util::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "try /metrics, /healthz, /readyz or /streams",
        ),
    }
}
