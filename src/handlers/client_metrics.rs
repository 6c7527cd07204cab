//! `POST {route_prefix}/client-metrics`: one small, strictly validated summary per stream from browsers.

use crate::app::{App, Runtime};
use crate::http_util::{self, ProxyBody, RequestBody};
use crate::metrics::{RejectReason, ReportOutcome};
use http::{Request, Response, StatusCode};
use serde::Deserialize;

/// Largest accepted report.
pub const MAX_REPORT_BYTES: usize = 1024;
/// Longest plausible stream, for range checks (1 hour).
const MAX_MS: f64 = 3_600_000.0;
/// Most reconnects one stream can plausibly report.
const MAX_RECONNECTS: u32 = 10_000;

/// A browser's summary of one stream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    #[serde(default)]
    ttft_ms: Option<f64>,
    #[serde(default)]
    total_ms: Option<f64>,
    #[serde(default)]
    reconnects: Option<u32>,
    #[serde(default)]
    reconnect_successes: Option<u32>,
    outcome: ReportOutcome,
}

impl Report {
    fn validate(&self) -> Result<(), &'static str> {
        let ms_ok = |v: Option<f64>| v.is_none_or(|x| x.is_finite() && (0.0..=MAX_MS).contains(&x));
        if !ms_ok(self.ttft_ms) || !ms_ok(self.total_ms) {
            return Err("ttft_ms and total_ms must be numbers of milliseconds between 0 and 3600000");
        }
        if self.reconnects.unwrap_or(0) > MAX_RECONNECTS {
            return Err("reconnects is out of range");
        }
        if self.reconnect_successes.unwrap_or(0) > self.reconnects.unwrap_or(0) {
            return Err("reconnect_successes cannot exceed reconnects");
        }
        Ok(())
    }
}

/// Validates and records one report: 204, 400 (malformed), 413 (too large), 429 (rate limited).
pub async fn handle(app: &App, runtime: &Runtime, req: Request<RequestBody>) -> Response<ProxyBody> {
    let m = &app.metrics;
    let bad = |msg: &str| {
        m.rejected.increment(RejectReason::ClientMetricsInvalid);
        http_util::error(StatusCode::BAD_REQUEST, "invalid_report", msg)
    };
    let is_json = http_util::has_content_type(req.headers(), "application/json");
    if !is_json {
        return bad("Content-Type must be application/json");
    }
    let within = runtime.settings.server.body_read_timeout;
    let body = match http_util::read_body(req.into_body(), MAX_REPORT_BYTES, within).await {
        Ok(b) => b,
        Err(http_util::BodyError::TooLarge(_)) => return bad("report larger than 1024 bytes"),
        Err(e) => return e.response(m),
    };
    let report: Report = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(&format!("malformed report: {e}")),
    };
    if let Err(msg) = report.validate() {
        return bad(msg);
    }
    if !runtime.client_reports.allow() {
        m.rejected.increment(RejectReason::ClientMetricsRate);
        return http_util::error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many reports");
    }
    if let Some(ms) = report.ttft_ms {
        m.client_ttft.record(ms / 1000.0);
    }
    if let Some(ms) = report.total_ms {
        m.client_total.record(ms / 1000.0);
    }
    m.client_reconnects
        .increment(u64::from(report.reconnects.unwrap_or(0)));
    m.client_reconnect_successes
        .increment(u64::from(report.reconnect_successes.unwrap_or(0)));
    m.client_reports.increment(report.outcome);
    http_util::status(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Report, String> {
        let r: Report = serde_json::from_str(s).map_err(|e| e.to_string())?;
        r.validate().map_err(str::to_string)?;
        Ok(r)
    }

    #[test]
    fn accepts_valid_and_rejects_the_rest() {
        assert!(parse(
            r#"{"ttft_ms":120.5,"total_ms":4000,"reconnects":2,"reconnect_successes":2,"outcome":"done"}"#
        )
        .is_ok());
        assert!(parse(r#"{"outcome":"cancelled"}"#).is_ok());
        for bad in [
            r#"{}"#,
            r#"{"outcome":"win"}"#,
            r#"{"outcome":"done","extra":1}"#,
            r#"{"outcome":"done","ttft_ms":-1}"#,
            r#"{"outcome":"done","total_ms":1e300}"#,
            r#"{"outcome":"done","reconnects":-1}"#,
            r#"{"outcome":"done","reconnects":1,"reconnect_successes":2}"#,
            r#"{"outcome":"done","reconnects":99999999}"#,
            r#"[1]"#,
            "not json",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
