//! The admin listener's routes: `/metrics`, `/healthz`, `/readyz`, `/streams` (served by [`crate::server`]).

use crate::app::App;
use crate::http_util::{self, ProxyBody};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Connections the admin listener serves at once: enough for probes, scrapers and an operator;
/// more wait in the accept queue, so a flood cannot take file descriptors from the main listener.
pub const MAX_CONNECTIONS: usize = 64;

/// How often the recorder's histograms are cleaned up: it does not do it by itself when the
/// proxy serves `/metrics` itself.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Runs the recorder's upkeep until `stop` fires.
pub async fn upkeep(metrics: PrometheusHandle, stop: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => metrics.run_upkeep(),
        }
    }
}

/// Answers one admin request: `GET /metrics`, `/healthz`, `/readyz`, `/streams`.
pub fn handle<B>(app: &App, metrics: &PrometheusHandle, req: &Request<B>) -> Response<ProxyBody> {
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
        "/readyz" if !app.store_health.connected() => http_util::json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "status": "store_unavailable" }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::test_app;
    use http_body_util::BodyExt;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use std::sync::Arc;

    async fn get(app: &App, method: Method, path: &str) -> (StatusCode, serde_json::Value) {
        let metrics = PrometheusBuilder::new().build_recorder().handle();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .expect("request");
        let resp = handle(app, &metrics, &req);
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn admin_routes_report_the_state() {
        let app = test_app("");
        assert_eq!(get(&app, Method::GET, "/healthz").await.0, StatusCode::OK);
        let (status, streams) = get(&app, Method::GET, "/streams").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (streams["running"].as_u64(), streams["log_bytes"].as_u64()),
            (Some(0), Some(0))
        );
        assert_eq!(get(&app, Method::GET, "/readyz").await.1["status"], "ready");
        app.shutdown.cancel();
        let (status, body) = get(&app, Method::GET, "/readyz").await;
        assert_eq!(
            (status, &body["status"]),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!("shutting_down")
            )
        );
        assert_eq!(
            get(&app, Method::POST, "/healthz").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(get(&app, Method::GET, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test(start_paused = true)]
    async fn readyz_says_when_the_store_does_not_answer_and_recovers_by_itself() {
        use crate::store::gate::Gate;
        use crate::store::{Handle, MemoryStore, StoreSettings};
        let text = "[upstream]\nurl = \"http://127.0.0.1:9\"\n\n[[stream]]\npath = \"/stream\"\n";
        let cfg = crate::config::Config::from_toml_str(text, "<test>").expect("valid test config");
        let settings = StoreSettings {
            max_stream_bytes: 1 << 20,
            lease: Duration::from_secs(5),
            retention: Duration::from_secs(60),
        };
        let gate = Gate::new(Arc::new(MemoryStore::new(settings, usize::MAX)));
        let metrics = Arc::new(crate::metrics::Metrics::noop());
        let app = App::with_store(
            crate::settings::Settings::build(&cfg),
            None,
            CancellationToken::new(),
            metrics.clone(),
            Handle::new(gate.clone(), Duration::from_secs(5)),
        );
        let stop = CancellationToken::new();
        tokio::spawn(
            app.store_health
                .clone()
                .run(app.store.store.clone(), metrics, stop.clone()),
        );
        let until = |want: &'static str| {
            let app = &app;
            async move {
                loop {
                    let (status, body) = get(app, Method::GET, "/readyz").await;
                    if body["status"] == want {
                        return status;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(until("ready").await, StatusCode::OK);
        gate.fail(true);
        assert_eq!(until("store_unavailable").await, StatusCode::SERVICE_UNAVAILABLE);
        gate.fail(false);
        assert_eq!(until("ready").await, StatusCode::OK);
        stop.cancel();
    }

    #[tokio::test]
    async fn readyz_says_when_no_connection_slot_is_left() {
        let app = test_app("[server]\nmax_connections = 1\n");
        let _slot = app.connections.clone().try_acquire_owned().expect("a slot");
        let (status, body) = get(&app, Method::GET, "/readyz").await;
        assert_eq!(
            (status, &body["status"]),
            (StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!("at_capacity"))
        );
    }
}
