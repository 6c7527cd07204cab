//! Metric names, their descriptions and buckets, and the Prometheus recorder.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

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
/// Stream store operations that failed, by `op`.
pub const STORE_ERRORS: &str = "sse_proxy_store_errors_total";
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

const LATENCY: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const DURATION: &[f64] = &[0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];
const BATCH: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0];
const RATE: &[f64] = &[1.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 250.0, 500.0];
const RATIO: &[f64] = &[0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0, 2.0];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the global recorder once per process and returns its handle.
pub fn install() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            let builder = [
                (TTFT, LATENCY),
                (CLIENT_TTFT, LATENCY),
                (STREAM_DURATION, DURATION),
                (CLIENT_TOTAL, DURATION),
                (BATCH_TOKENS, BATCH),
                (STREAM_TPS, RATE),
                (PROGRESS_ERROR, RATIO),
            ]
            .into_iter()
            .try_fold(PrometheusBuilder::new(), |b, (name, buckets)| {
                b.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
            })
            .map_err(|e| e.to_string())?;
            let handle = builder.install_recorder().map_err(|e| e.to_string())?;
            describe();
            Ok(handle)
        })
        .clone()
}

fn describe() {
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        "Open client connections on the main listener."
    );
    describe_gauge!(STREAMS_ACTIVE, "Upstream streams running now.");
    describe_gauge!(
        STREAMS_DETACHED,
        "Running streams with no client attached (within detach_grace)."
    );
    describe_gauge!(LOG_BYTES, Unit::Bytes, "Bytes held by all stream logs.");
    describe_counter!(STREAMS_STARTED, "Streams started.");
    describe_counter!(STREAMS_FINISHED, "Streams finished, by outcome.");
    describe_counter!(UPSTREAM_EVENTS, "SSE events read from upstreams.");
    describe_counter!(
        DOWNSTREAM_EVENTS,
        "SSE events appended to stream logs (downstream / upstream is the batching saving)."
    );
    describe_counter!(TOKENS, "Tokens streamed.");
    describe_counter!(HEARTBEATS, "Heartbeat comments written to clients.");
    describe_counter!(ERRORS, "Errors, by code.");
    describe_counter!(RESUMES, "Resume requests, by result.");
    describe_counter!(REJECTED, "Requests refused by a limit, by reason.");
    describe_counter!(
        CLIENT_ERRORS,
        "Requests refused because of the client's own request (a malformed, slow or too large body), by reason."
    );
    describe_counter!(EVICTIONS, "Log evictions under resume.max_total_bytes, by kind.");
    describe_counter!(
        STORE_ERRORS,
        "Stream store operations that failed or stalled, by op (the streams went on live-only)."
    );
    describe_counter!(PASSTHROUGH, "Requests passed through unchanged, by status class.");
    describe_histogram!(BATCH_TOKENS, "Tokens per downstream batch.");
    describe_histogram!(TTFT, Unit::Seconds, "Request arrival to first token sent.");
    describe_histogram!(STREAM_DURATION, Unit::Seconds, "Stream start to end.");
    describe_histogram!(STREAM_TPS, "Tokens per second of finished streams.");
    describe_histogram!(
        PROGRESS_ERROR,
        "|estimated_total - final| / final at 25% of each completed stream."
    );
    describe_histogram!(
        CLIENT_TTFT,
        Unit::Seconds,
        "Time to first token as measured by browsers."
    );
    describe_histogram!(
        CLIENT_TOTAL,
        Unit::Seconds,
        "Stream duration as measured by browsers."
    );
    describe_counter!(CLIENT_RECONNECTS, "Reconnects reported by browsers.");
    describe_counter!(
        CLIENT_RECONNECT_SUCCESSES,
        "Successful reconnects reported by browsers."
    );
    describe_counter!(CLIENT_REPORTS, "Client metric reports accepted, by outcome.");
}

/// Counts an error by code.
pub fn error(code: &'static str) {
    metrics::counter!(ERRORS, "code" => code).increment(1);
}

/// Counts a failed stream store operation.
pub fn store_error(op: &'static str) {
    metrics::counter!(STORE_ERRORS, "op" => op).increment(1);
}

/// Counts a request refused because of the client's own bytes, by reason.
pub fn client_error(reason: &'static str) {
    metrics::counter!(CLIENT_ERRORS, "reason" => reason).increment(1);
}

/// Increments a label-less counter.
pub fn counter_inc(name: &'static str) {
    metrics::counter!(name).increment(1);
}
