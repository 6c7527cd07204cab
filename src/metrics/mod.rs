//! The proxy's metrics: their names, descriptions and buckets, and the handles it records through.
//!
//! Library code installs no recorder and looks no metric up by name. Whoever builds the proxy (the
//! `sse-proxy` binary, a test, a benchmark) makes a recorder ([`recorder`]) and registers the
//! proxy's metrics in it once ([`Prometheus::register`]); the proxy then records through the
//! resolved [`Metrics`] handles, and the admin `/metrics` renders that recorder alone, so every
//! proxy built in one process can have a registry of its own.

mod labels;

pub use labels::{
    ClientErrorReason, DroppedReason, ErrorLabel, EvictionKind, FinishedOutcome, LabelValue, RejectReason,
    ReloadResult, ReportOutcome, ResumeResult, StatusClass, StoreOp,
};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::marker::PhantomData;
use std::sync::Arc;

/// Open client connections (main listener).
pub const CONNECTIONS_ACTIVE: &str = "sse_proxy_connections_active";
/// Running upstream streams.
pub const STREAMS_ACTIVE: &str = "sse_proxy_streams_active";
/// Running streams with no connection attached.
pub const STREAMS_DETACHED: &str = "sse_proxy_streams_detached";
/// Bytes held by all stream logs.
pub const LOG_BYTES: &str = "sse_proxy_log_bytes";
/// Streams started.
pub const STREAMS_STARTED: &str = "sse_proxy_streams_started_total";
/// Streams finished, by `outcome`.
pub const STREAMS_FINISHED: &str = "sse_proxy_streams_finished_total";
/// Events parsed from upstreams.
pub const UPSTREAM_EVENTS: &str = "sse_proxy_upstream_events_total";
/// Events appended to stream logs (each sent once to every follower).
pub const DOWNSTREAM_EVENTS: &str = "sse_proxy_downstream_events_total";
/// Tokens streamed.
pub const TOKENS: &str = "sse_proxy_tokens_total";
/// Heartbeat comments written.
pub const HEARTBEATS: &str = "sse_proxy_heartbeats_total";
/// Errors, by `code`.
pub const ERRORS: &str = "sse_proxy_errors_total";
/// Resume attempts, by `result`.
pub const RESUMES: &str = "sse_proxy_resumes_total";
/// Requests refused, by `reason`.
pub const REJECTED: &str = "sse_proxy_rejected_total";
/// Requests refused because of the client's own bytes, by `reason`.
pub const CLIENT_ERRORS: &str = "sse_proxy_client_errors_total";
/// Log evictions under the total byte budget, by `kind`.
pub const EVICTIONS: &str = "sse_proxy_log_evictions_total";
/// Stream store operations that failed or stalled, by `op`.
pub const STORE_ERRORS: &str = "sse_proxy_store_errors_total";
/// Time of each stream store operation, by `op`.
pub const STORE_OP_SECONDS: &str = "sse_proxy_store_op_seconds";
/// 1 while the stream store answers its health check, 0 while it does not.
pub const STORE_CONNECTED: &str = "sse_proxy_store_connected";
/// Streams ended because the replica reading them stopped renewing its lease.
pub const STREAMS_LOST: &str = "sse_proxy_streams_lost_total";
/// Upstream items not sent on, by `reason`.
pub const UPSTREAM_DROPPED: &str = "sse_proxy_upstream_events_dropped_total";
/// Stream answers whose content type did not fit their route's format, by `route`.
pub const FORMAT_MISMATCH: &str = "sse_proxy_upstream_format_mismatch_total";
/// Requests passed through, by status class.
pub const PASSTHROUGH: &str = "sse_proxy_passthrough_requests_total";
/// Tokens per downstream batch.
pub const BATCH_TOKENS: &str = "sse_proxy_batch_tokens";
/// Request arrival to first token sent.
pub const TTFT: &str = "sse_proxy_time_to_first_token_seconds";
/// Stream start to end.
pub const STREAM_DURATION: &str = "sse_proxy_stream_duration_seconds";
/// Token rate of finished streams.
pub const STREAM_TPS: &str = "sse_proxy_stream_tokens_per_second";
/// |estimate − final| / final at 25% of each completed stream.
pub const PROGRESS_ERROR: &str = "sse_proxy_progress_estimate_error_ratio";
/// Client-reported time to first token.
pub const CLIENT_TTFT: &str = "sse_proxy_client_time_to_first_token_seconds";
/// Client-reported total time.
pub const CLIENT_TOTAL: &str = "sse_proxy_client_stream_duration_seconds";
/// Client-reported reconnects.
pub const CLIENT_RECONNECTS: &str = "sse_proxy_client_reconnects_total";
/// Client-reported successful reconnects.
pub const CLIENT_RECONNECT_SUCCESSES: &str = "sse_proxy_client_reconnect_successes_total";
/// Client reports, by `outcome`.
pub const CLIENT_REPORTS: &str = "sse_proxy_client_reports_total";
/// Reloads of the config file, by `result`.
pub const CONFIG_RELOADS: &str = "sse_proxy_config_reloads_total";
/// When the running config was last read and applied (at start, then at each reload), in Unix seconds.
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "sse_proxy_config_last_reload_success_timestamp_seconds";

const LATENCY: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const STORE_LATENCY: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const DURATION: &[f64] = &[0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];
const BATCH: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0];
const RATE: &[f64] = &[1.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0];
const RATIO: &[f64] = &[0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0, 2.0];

/// Why no recorder could be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the metrics recorder: {0}")]
pub struct RecorderError(#[from] BuildError);

/// A Prometheus recorder with the proxy's histogram buckets, installed nowhere.
pub fn recorder() -> Result<PrometheusRecorder, RecorderError> {
    let builder = [
        (TTFT, LATENCY),
        (CLIENT_TTFT, LATENCY),
        (STREAM_DURATION, DURATION),
        (CLIENT_TOTAL, DURATION),
        (BATCH_TOKENS, BATCH),
        (STREAM_TPS, RATE),
        (PROGRESS_ERROR, RATIO),
        (STORE_OP_SECONDS, STORE_LATENCY),
    ]
    .into_iter()
    .try_fold(PrometheusBuilder::new(), |b, (name, buckets)| {
        b.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
    })?;
    Ok(builder.build_recorder())
}

/// The proxy's metrics in one Prometheus recorder: the handles the proxy records through, and the
/// handle the admin `/metrics` renders.
#[derive(Clone)]
pub struct Prometheus {
    /// What the proxy records through.
    pub metrics: Arc<Metrics>,
    /// Renders the recorder for `/metrics`.
    pub handle: PrometheusHandle,
    /// The recorder, for the metrics labelled by a configured route.
    recorder: Arc<PrometheusRecorder>,
}

impl Prometheus {
    /// Registers the proxy's metrics in `recorder`; [`Prometheus::global`] is what to install
    /// globally.
    pub fn register(recorder: PrometheusRecorder) -> Self {
        Prometheus {
            metrics: Arc::new(Metrics::register(&recorder)),
            handle: recorder.handle(),
            recorder: Arc::new(recorder),
        }
    }

    /// The proxy's metrics in a [`recorder`] of their own, installed nowhere (one per test proxy).
    pub fn standalone() -> Result<Self, RecorderError> {
        Ok(Prometheus::register(recorder()?))
    }

    /// The same recorder, to install as the process's global one.
    pub fn global(&self) -> SharedRecorder {
        SharedRecorder(self.recorder.clone())
    }

    /// The counter `name{route="<route>"}`, registered (and exported at 0) now.
    pub fn route_counter(&self, name: &'static str, route: &str) -> Counter {
        let key = Key::from_parts(name, vec![Label::new("route", route.to_string())]);
        self.recorder.register_counter(&key, &METADATA)
    }
}

/// A [`PrometheusRecorder`] shared by the proxy and the global `metrics` macros.
#[derive(Debug, Clone)]
pub struct SharedRecorder(Arc<PrometheusRecorder>);

impl Recorder for SharedRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: metrics::SharedString) {
        self.0.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: metrics::SharedString) {
        self.0.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: metrics::SharedString) {
        self.0.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.0.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.0.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.0.register_histogram(key, metadata)
    }
}

/// One counter per value of a closed label set, all registered at start so that every value is
/// exported, at 0 until counted.
#[derive(Debug)]
pub struct Family<L> {
    counters: Box<[Counter]>,
    label: PhantomData<fn(L)>,
}

impl<L: LabelValue> Family<L> {
    fn register<R: Recorder + ?Sized>(recorder: &R, name: &'static str) -> Self {
        let counters = L::ALL
            .iter()
            .map(|v| {
                let key = Key::from_parts(name, vec![Label::from_static_parts(L::KEY, v.as_str())]);
                recorder.register_counter(&key, &METADATA)
            })
            .collect();
        Family {
            counters,
            label: PhantomData,
        }
    }

    /// Counts one under `value`.
    pub fn increment(&self, value: L) {
        if let Some(c) = self.counters.get(value.index()) {
            c.increment(1);
        }
    }
}

/// One histogram per value of a closed label set, all registered at start.
#[derive(Debug)]
pub struct HistogramFamily<L> {
    histograms: Box<[Histogram]>,
    label: PhantomData<fn(L)>,
}

impl<L: LabelValue> HistogramFamily<L> {
    fn register<R: Recorder + ?Sized>(recorder: &R, name: &'static str) -> Self {
        let histograms = L::ALL
            .iter()
            .map(|v| {
                let key = Key::from_parts(name, vec![Label::from_static_parts(L::KEY, v.as_str())]);
                recorder.register_histogram(&key, &METADATA)
            })
            .collect();
        HistogramFamily {
            histograms,
            label: PhantomData,
        }
    }

    /// Records `value` under `label`.
    pub fn record(&self, label: L, value: f64) {
        if let Some(h) = self.histograms.get(label.index()) {
            h.record(value);
        }
    }
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Every metric of the proxy, resolved once: recording is an atomic update, never a lookup by name.
#[derive(Debug)]
pub struct Metrics {
    /// [`CONNECTIONS_ACTIVE`].
    pub connections_active: Gauge,
    /// [`STREAMS_ACTIVE`].
    pub streams_active: Gauge,
    /// [`STREAMS_DETACHED`].
    pub streams_detached: Gauge,
    /// [`LOG_BYTES`].
    pub log_bytes: Gauge,
    /// [`STREAMS_STARTED`].
    pub streams_started: Counter,
    /// [`STREAMS_FINISHED`].
    pub streams_finished: Family<FinishedOutcome>,
    /// [`UPSTREAM_EVENTS`].
    pub upstream_events: Counter,
    /// [`UPSTREAM_DROPPED`].
    pub upstream_dropped: Family<DroppedReason>,
    /// [`DOWNSTREAM_EVENTS`].
    pub downstream_events: Counter,
    /// [`TOKENS`].
    pub tokens: Counter,
    /// [`HEARTBEATS`].
    pub heartbeats: Counter,
    /// [`ERRORS`].
    pub errors: Family<ErrorLabel>,
    /// [`RESUMES`].
    pub resumes: Family<ResumeResult>,
    /// [`REJECTED`].
    pub rejected: Family<RejectReason>,
    /// [`CLIENT_ERRORS`].
    pub client_errors: Family<ClientErrorReason>,
    /// [`EVICTIONS`].
    pub evictions: Family<EvictionKind>,
    /// [`STORE_ERRORS`].
    pub store_errors: Family<StoreOp>,
    /// [`STORE_OP_SECONDS`].
    pub store_op_seconds: HistogramFamily<StoreOp>,
    /// [`STORE_CONNECTED`].
    pub store_connected: Gauge,
    /// [`STREAMS_LOST`].
    pub streams_lost: Counter,
    /// [`PASSTHROUGH`].
    pub passthrough: Family<StatusClass>,
    /// [`BATCH_TOKENS`].
    pub batch_tokens: Histogram,
    /// [`TTFT`].
    pub ttft: Histogram,
    /// [`STREAM_DURATION`].
    pub stream_duration: Histogram,
    /// [`STREAM_TPS`].
    pub stream_tps: Histogram,
    /// [`PROGRESS_ERROR`].
    pub progress_error: Histogram,
    /// [`CLIENT_TTFT`].
    pub client_ttft: Histogram,
    /// [`CLIENT_TOTAL`].
    pub client_total: Histogram,
    /// [`CLIENT_RECONNECTS`].
    pub client_reconnects: Counter,
    /// [`CLIENT_RECONNECT_SUCCESSES`].
    pub client_reconnect_successes: Counter,
    /// [`CLIENT_REPORTS`].
    pub client_reports: Family<ReportOutcome>,
    /// [`CONFIG_RELOADS`].
    pub config_reloads: Family<ReloadResult>,
    /// [`CONFIG_LAST_RELOAD_SUCCESS`].
    pub config_last_reload_success: Gauge,
}

impl Metrics {
    /// Describes and registers every metric in `recorder`.
    pub fn register<R: Recorder + ?Sized>(recorder: &R) -> Self {
        describe(recorder);
        let counter = |name| recorder.register_counter(&Key::from_static_name(name), &METADATA);
        let gauge = |name| recorder.register_gauge(&Key::from_static_name(name), &METADATA);
        let histogram = |name| recorder.register_histogram(&Key::from_static_name(name), &METADATA);
        Metrics {
            connections_active: gauge(CONNECTIONS_ACTIVE),
            streams_active: gauge(STREAMS_ACTIVE),
            streams_detached: gauge(STREAMS_DETACHED),
            log_bytes: gauge(LOG_BYTES),
            streams_started: counter(STREAMS_STARTED),
            streams_finished: Family::register(recorder, STREAMS_FINISHED),
            upstream_events: counter(UPSTREAM_EVENTS),
            upstream_dropped: Family::register(recorder, UPSTREAM_DROPPED),
            downstream_events: counter(DOWNSTREAM_EVENTS),
            tokens: counter(TOKENS),
            heartbeats: counter(HEARTBEATS),
            errors: Family::register(recorder, ERRORS),
            resumes: Family::register(recorder, RESUMES),
            rejected: Family::register(recorder, REJECTED),
            client_errors: Family::register(recorder, CLIENT_ERRORS),
            evictions: Family::register(recorder, EVICTIONS),
            store_errors: Family::register(recorder, STORE_ERRORS),
            store_op_seconds: HistogramFamily::register(recorder, STORE_OP_SECONDS),
            store_connected: gauge(STORE_CONNECTED),
            streams_lost: counter(STREAMS_LOST),
            passthrough: Family::register(recorder, PASSTHROUGH),
            batch_tokens: histogram(BATCH_TOKENS),
            ttft: histogram(TTFT),
            stream_duration: histogram(STREAM_DURATION),
            stream_tps: histogram(STREAM_TPS),
            progress_error: histogram(PROGRESS_ERROR),
            client_ttft: histogram(CLIENT_TTFT),
            client_total: histogram(CLIENT_TOTAL),
            client_reconnects: counter(CLIENT_RECONNECTS),
            client_reconnect_successes: counter(CLIENT_RECONNECT_SUCCESSES),
            client_reports: Family::register(recorder, CLIENT_REPORTS),
            config_reloads: Family::register(recorder, CONFIG_RELOADS),
            config_last_reload_success: gauge(CONFIG_LAST_RELOAD_SUCCESS),
        }
    }

    /// Handles that record nothing (unit tests).
    pub fn noop() -> Self {
        Metrics::register(&metrics::NoopRecorder)
    }

    /// Counts an error under its label.
    pub fn error(&self, label: impl Into<ErrorLabel>) {
        self.errors.increment(label.into());
    }
}

fn describe<R: Recorder + ?Sized>(r: &R) {
    let gauge =
        |name, unit, help: &'static str| r.describe_gauge(KeyName::from_const_str(name), unit, help.into());
    let counter =
        |name, help: &'static str| r.describe_counter(KeyName::from_const_str(name), None, help.into());
    let histogram = |name, unit, help: &'static str| {
        r.describe_histogram(KeyName::from_const_str(name), unit, help.into())
    };
    gauge(
        CONNECTIONS_ACTIVE,
        None,
        "Open client connections on the main listener.",
    );
    gauge(STREAMS_ACTIVE, None, "Upstream streams running now.");
    gauge(
        STREAMS_DETACHED,
        None,
        "Running streams with no client attached (within detach_grace).",
    );
    gauge(LOG_BYTES, Some(Unit::Bytes), "Bytes held by all stream logs.");
    counter(STREAMS_STARTED, "Streams started.");
    counter(STREAMS_FINISHED, "Streams finished, by outcome.");
    counter(
        UPSTREAM_EVENTS,
        "SSE events (or NDJSON lines) read from upstreams.",
    );
    counter(
        UPSTREAM_DROPPED,
        "Upstream events not sent on, by reason (progress while the proxy sends its own, ping, empty_token, no_text).",
    );
    counter(
        FORMAT_MISMATCH,
        "Stream answers passed through unchanged because their content type did not fit the route's format, by route.",
    );
    counter(
        DOWNSTREAM_EVENTS,
        "SSE events appended to stream logs (downstream / upstream is the batching saving).",
    );
    counter(TOKENS, "Tokens streamed.");
    counter(HEARTBEATS, "Heartbeat comments written to clients.");
    counter(ERRORS, "Errors, by code.");
    counter(RESUMES, "Resume requests, by result.");
    counter(REJECTED, "Requests refused by a limit, by reason.");
    counter(
        CLIENT_ERRORS,
        "Requests refused because of the client's own request (a malformed, slow or too large body), by reason.",
    );
    counter(EVICTIONS, "Log evictions under resume.max_total_bytes, by kind.");
    counter(
        STORE_ERRORS,
        "Stream store operations that failed or stalled, by op (the streams went on live-only).",
    );
    histogram(
        STORE_OP_SECONDS,
        Some(Unit::Seconds),
        "Time of each stream store operation, by op (a wait lasts until frames arrive or it times out).",
    );
    gauge(
        STORE_CONNECTED,
        None,
        "1 while the stream store answers its health check, 0 while it does not.",
    );
    counter(
        STREAMS_LOST,
        "Streams this replica declared lost: the replica reading them stopped renewing its lease.",
    );
    counter(PASSTHROUGH, "Requests passed through unchanged, by status class.");
    histogram(BATCH_TOKENS, None, "Tokens per downstream batch.");
    histogram(TTFT, Some(Unit::Seconds), "Request arrival to first token sent.");
    histogram(STREAM_DURATION, Some(Unit::Seconds), "Stream start to end.");
    histogram(STREAM_TPS, None, "Tokens per second of finished streams.");
    histogram(
        PROGRESS_ERROR,
        None,
        "|estimated_total - final| / final at 25% of each completed stream.",
    );
    histogram(
        CLIENT_TTFT,
        Some(Unit::Seconds),
        "Time to first token as measured by browsers.",
    );
    histogram(
        CLIENT_TOTAL,
        Some(Unit::Seconds),
        "Stream duration as measured by browsers.",
    );
    counter(CLIENT_RECONNECTS, "Reconnects reported by browsers.");
    counter(
        CLIENT_RECONNECT_SUCCESSES,
        "Successful reconnects reported by browsers.",
    );
    counter(CLIENT_REPORTS, "Client metric reports accepted, by outcome.");
    counter(
        CONFIG_RELOADS,
        "Reloads of the config file (SIGHUP or POST /reload on the admin listener), by result.",
    );
    gauge(
        CONFIG_LAST_RELOAD_SUCCESS,
        Some(Unit::Seconds),
        "When the running config was last read and applied (at start, then at each reload), in Unix seconds.",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_count_apart_and_export_every_label_from_zero() {
        let a = Prometheus::standalone().expect("recorder a");
        let b = Prometheus::standalone().expect("recorder b");
        a.metrics.error(ErrorLabel::UpstreamResponseTimeout);
        a.metrics.error(crate::protocol::ErrorCode::UpstreamTimeout);
        let has = |p: &Prometheus, line: &str| p.handle.render().lines().any(|l| l == line);
        let sample = |code: &str, n: u32| format!("sse_proxy_errors_total{{code=\"{code}\"}} {n}");
        assert!(has(&a, &sample("upstream_response_timeout", 1)));
        assert!(has(&a, &sample("upstream_timeout", 1)));
        assert!(has(&a, &sample("upstream_reset", 0)));
        for label in ErrorLabel::ALL {
            assert!(has(&b, &sample(label.as_str(), 0)), "{label:?}");
        }
    }
}
