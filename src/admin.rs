//! The admin listener's routes: `/metrics`, `/healthz`, `/readyz`, `/streams` (served by [`crate::server`]).

use crate::app::App;
use crate::http_util::{self, ProxyBody};
use crate::metrics::StoreOp;
use crate::reload::{ReloadError, Reloader};
use crate::store::{self, ClaimInfo, StoreError};
use crate::stream::StreamInfo;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashSet;
use std::sync::Arc;
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

/// Longest `/streams` waits for the stream store's list of every replica's answers.
const LIST_WAIT: Duration = Duration::from_secs(2);

/// Answers one admin request: `GET /metrics`, `/healthz`, `/readyz`, `/streams`, and
/// `POST /reload` with `reloader` (none: the proxy runs a config of its own).
pub async fn handle<B>(
    app: &App,
    metrics: &PrometheusHandle,
    reloader: Option<&Arc<Reloader>>,
    req: &Request<B>,
) -> Response<ProxyBody> {
    if req.uri().path() == "/reload" {
        return reload(app, reloader, req.method()).await;
    }
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
        "/streams" => streams(app).await,
        _ => http_util::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "try /metrics, /healthz, /readyz, /streams or POST /reload",
        ),
    }
}

/// `POST /reload`: reads the config file again and applies it to new requests and streams.
/// `200 {"result":"ok","changed":[...],"restart_required":[...]}`, or `422
/// {"result":"error","error":"proxy.toml:12:5: ..."}` with the running config kept.
async fn reload(app: &App, reloader: Option<&Arc<Reloader>>, method: &Method) -> Response<ProxyBody> {
    if method != Method::POST {
        let mut resp = http_util::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "/reload is POST only",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let result = match reloader {
        Some(r) => r.reload().await,
        None => {
            let e = ReloadError::NoConfigFile;
            crate::reload::refused(app, &e);
            Err(e)
        }
    };
    match result {
        Ok(applied) => {
            let mut body = serde_json::json!({
                "result": "ok",
                "changed": applied.changed,
                "restart_required": applied.restart_required,
            });
            if !applied.restart_required.is_empty() {
                body["warning"] = format!(
                    "{} changed in the file but cannot change while running: the running value is kept until a restart",
                    applied.restart_required.join(", ")
                )
                .into();
            }
            http_util::json(StatusCode::OK, &body)
        }
        Err(e) => {
            let status = match e {
                ReloadError::Config(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ReloadError::NoConfigFile => StatusCode::CONFLICT,
                ReloadError::Interrupted(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let body = serde_json::json!({ "result": "error", "error": e.to_string() });
            http_util::json(status, &body)
        }
    }
}

/// The streams this replica holds, and the running answers the other replicas on the store read.
async fn streams(app: &App) -> Response<ProxyBody> {
    let mut list = app.registry.list(tokio::time::Instant::now(), app.replica());
    let mut running = app.registry.running();
    let mut body = serde_json::json!({ "replica": app.replica() });
    match tokio::time::timeout(LIST_WAIT, app.store.store.claims()).await {
        Ok(Ok(claims)) => {
            let here: HashSet<String> = list.iter().map(|s| s.id.clone()).collect();
            // This replica's own claims are counted in `running` already (with those whose
            // backend has not answered yet, which the registry does not hold).
            let elsewhere = claims
                .into_iter()
                .filter(|c| c.replica != app.replica() && !here.contains(&c.id.to_string()));
            for c in elsewhere {
                running += 1;
                list.push(remote_info(c));
            }
        }
        Ok(Err(e)) => list_failed(app, &mut body, &e),
        Err(_) => list_failed(
            app,
            &mut body,
            &StoreError::Unavailable("no answer in time".into()),
        ),
    }
    body["running"] = running.into();
    body["log_bytes"] = app.registry.budget().held().into();
    body["streams"] = serde_json::to_value(list).unwrap_or_default();
    http_util::json(StatusCode::OK, &body)
}

/// The `/streams` entry of an answer another replica reads.
fn remote_info(c: ClaimInfo) -> StreamInfo {
    let meta = c.meta;
    let (state, outcome) = match meta.as_ref().map(|m| m.state) {
        None => ("starting", None),
        Some(store::State::Running) => ("running", None),
        Some(store::State::Finished(o)) => ("finished", Some(o.as_str())),
    };
    StreamInfo {
        id: c.id.to_string(),
        replica: c.replica,
        state,
        outcome,
        route: meta.as_ref().map(|m| m.route.clone()).unwrap_or_default(),
        model: meta.as_ref().map(|m| m.model.clone()).unwrap_or_default(),
        tokens: None,
        connections: None,
        age_seconds: None,
        bytes: meta.as_ref().map_or(0, |m| m.bytes),
        last_seq: meta.as_ref().map_or(0, |m| m.last_seq),
    }
}

/// The store could not list the other replicas' answers: this replica's only, and why.
fn list_failed(app: &App, body: &mut serde_json::Value, e: &StoreError) {
    tracing::warn!(error = %e, "the stream store cannot list the other replicas' streams");
    app.metrics.store_errors.increment(StoreOp::List);
    body["store_error"] = e.to_string().into();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::test_app;
    use http_body_util::BodyExt;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use std::sync::Arc;

    async fn get(app: &App, method: Method, path: &str) -> (StatusCode, serde_json::Value) {
        ask(app, None, method, path).await
    }

    async fn ask(
        app: &App,
        reloader: Option<&Arc<Reloader>>,
        method: Method,
        path: &str,
    ) -> (StatusCode, serde_json::Value) {
        let metrics = PrometheusBuilder::new().build_recorder().handle();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .expect("request");
        let resp = handle(app, &metrics, reloader, &req).await;
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

    #[tokio::test]
    async fn reload_applies_a_valid_file_and_refuses_an_invalid_one() {
        use crate::config::Config;
        use crate::metrics::Prometheus;
        let base = "[upstream]\nurl = \"http://127.0.0.1:9\"\n\n[[stream]]\npath = \"/stream\"\n";
        let file = Arc::new(std::sync::Mutex::new(base.to_string()));
        let read = file.clone();
        let load: crate::reload::Load = Box::new(move || {
            let text = crate::sync::lock(&read).clone();
            Config::from_toml_str(&text, "proxy.toml")
        });
        let running = Config::from_toml_str(base, "proxy.toml").expect("valid");
        let prometheus = Prometheus::standalone().expect("recorder");
        let app = Arc::new(App::new(
            crate::settings::Settings::build(&running),
            None,
            CancellationToken::new(),
            prometheus.metrics.clone(),
        ));
        let reloader = Arc::new(Reloader::new(app.clone(), prometheus.clone(), running, load));
        let count = |result: &str| {
            let line = format!("sse_proxy_config_reloads_total{{result=\"{result}\"}} ");
            let text = prometheus.handle.render();
            text.lines()
                .find_map(|l| l.strip_prefix(line.as_str()).map(str::to_string))
                .unwrap_or_default()
        };
        assert_eq!((count("ok"), count("error")), ("0".into(), "0".into()));

        let (status, v) = ask(&app, Some(&reloader), Method::GET, "/reload").await;
        assert_eq!(
            (status, &v["error"]),
            (StatusCode::METHOD_NOT_ALLOWED, &"method_not_allowed".into())
        );

        *crate::sync::lock(&file) =
            format!("{base}[batching]\nmax_tokens = 3\n[server]\nlisten = \"127.0.0.1:1\"\n");
        let (status, v) = ask(&app, Some(&reloader), Method::POST, "/reload").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["result"], "ok");
        assert_eq!(v["changed"], serde_json::json!(["batching"]));
        assert_eq!(v["restart_required"], serde_json::json!(["server.listen"]));
        assert!(
            v["warning"].as_str().is_some_and(|w| w.contains("restart")),
            "{v}"
        );
        assert_eq!(app.settings().reader.batching.max_tokens, 3);
        assert_ne!(app.settings().server.listen.port(), 1);

        *crate::sync::lock(&file) = format!("{base}[batching]\nmax_tokens = 0\n");
        let (status, v) = ask(&app, Some(&reloader), Method::POST, "/reload").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(v["result"], "error");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(
            error == "proxy.toml:7:1: batching.max_tokens must be at least 1",
            "{error}"
        );
        assert_eq!(
            app.settings().reader.batching.max_tokens,
            3,
            "the running config goes on"
        );
        assert_eq!((count("ok"), count("error")), ("1".into(), "1".into()));

        let (status, v) = ask(&app, None, Method::POST, "/reload").await;
        assert_eq!((status, &v["result"]), (StatusCode::CONFLICT, &"error".into()));
        assert_eq!(count("error"), "2");
    }

    /// A test app on `store`.
    fn app_on(store: Arc<dyn crate::store::Store>) -> App {
        let text = "[upstream]\nurl = \"http://127.0.0.1:9\"\n\n[[stream]]\npath = \"/stream\"\n";
        let cfg = crate::config::Config::from_toml_str(text, "<test>").expect("valid test config");
        let handle = crate::store::Handle::new(store, Duration::from_secs(5));
        let metrics = Arc::new(crate::metrics::Metrics::noop());
        App::with_store(
            crate::settings::Settings::build(&cfg),
            None,
            CancellationToken::new(),
            metrics,
            handle,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn streams_lists_other_replicas_answers_or_says_why_not() {
        use crate::ids::StreamId;
        use crate::store::{gate::Gate, AdmitLimits, Claim, MemoryStore, NewStream, Store, StoreSettings};
        let memory = Arc::new(MemoryStore::new(
            StoreSettings {
                max_stream_bytes: 1 << 20,
                lease: Duration::from_secs(5),
                retention: Duration::from_secs(60),
            },
            usize::MAX,
        ));
        let gate = Gate::new(memory);
        let app = app_on(gate.clone());
        let limits = AdmitLimits {
            max_streams: 10,
            max_per_identity: 10,
        };
        let (reading, starting) = (StreamId::random(), StreamId::random());
        for id in [reading, starting] {
            let claim = Claim {
                id,
                owner: None,
                replica: "replica-b".into(),
            };
            gate.admit(claim, limits).await.expect("admitted");
        }
        let new = NewStream {
            owner: None,
            route: "/stream".into(),
            model: "m".into(),
            replica: "replica-b".into(),
        };
        gate.create(reading, new).await.expect("create");
        let (status, v) = get(&app, Method::GET, "/streams").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!((&v["replica"], &v["running"]), (&app.replica().into(), &2.into()));
        let list = v["streams"].as_array().expect("streams");
        let entry = |id: StreamId| {
            list.iter()
                .find(|s| s["id"] == id.to_string().as_str())
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(entry(reading)["replica"], "replica-b");
        assert_eq!(entry(reading)["state"], "running");
        assert_eq!(entry(reading)["model"], "m");
        assert_eq!(entry(starting)["state"], "starting");
        assert!(v.get("store_error").is_none());

        gate.fail(true);
        let (status, v) = get(&app, Method::GET, "/streams").await;
        assert_eq!(status, StatusCode::OK, "this replica's streams are listed anyway");
        assert_eq!(v["running"], 0);
        assert!(
            v["store_error"]
                .as_str()
                .is_some_and(|e| e.contains("unavailable")),
            "{v}"
        );
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
