//! The label values of the labelled metrics: each a closed set, so every value is registered (and
//! exported at 0) from the start.

use crate::protocol::ErrorCode;

/// The values of one metric label.
pub trait LabelValue: Copy + 'static {
    /// The label's name.
    const KEY: &'static str;
    /// Every value, in declaration order.
    const ALL: &'static [Self];
    /// The value as exported.
    fn as_str(self) -> &'static str;
    /// The value's position in [`LabelValue::ALL`].
    fn index(self) -> usize;
}

/// A fieldless enum whose variants are the values of label `$key`, in the order listed.
macro_rules! label_values {
    (
        $(#[$attr:meta])*
        pub enum $name:ident: $key:literal {
            $( $(#[$doc:meta])* $variant:ident => $value:literal, )+
        }
    ) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $( $(#[$doc])* $variant, )+
        }

        impl LabelValue for $name {
            const KEY: &'static str = $key;
            const ALL: &'static [Self] = &[$($name::$variant),+];

            fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $value, )+
                }
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label_values! {
    /// `code` of `sse_proxy_errors_total`: the stream `error` event codes, and the backend failures
    /// answered with `502`/`504` before any stream started.
    pub enum ErrorLabel: "code" {
        /// [`ErrorCode::UpstreamReset`].
        UpstreamReset => "upstream_reset",
        /// [`ErrorCode::UpstreamTimeout`]: a backend silent for `idle_timeout` in the middle of a stream.
        UpstreamTimeout => "upstream_timeout",
        /// [`ErrorCode::UpstreamMalformed`].
        UpstreamMalformed => "upstream_malformed",
        /// The backend could not be reached (`502`).
        UpstreamUnreachable => "upstream_unreachable",
        /// The backend accepted no connection or sent no response head in time (`504`, no stream started).
        UpstreamResponseTimeout => "upstream_response_timeout",
        /// [`ErrorCode::Shutdown`].
        Shutdown => "shutdown",
        /// [`ErrorCode::Abandoned`].
        Abandoned => "abandoned",
        /// [`ErrorCode::Evicted`].
        Evicted => "evicted",
        /// [`ErrorCode::Internal`].
        Internal => "internal",
        /// [`ErrorCode::UpstreamLost`].
        UpstreamLost => "upstream_lost",
        /// [`ErrorCode::UpstreamError`].
        UpstreamError => "upstream_error",
    }
}

impl From<ErrorCode> for ErrorLabel {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::UpstreamReset => ErrorLabel::UpstreamReset,
            ErrorCode::UpstreamTimeout => ErrorLabel::UpstreamTimeout,
            ErrorCode::UpstreamMalformed => ErrorLabel::UpstreamMalformed,
            ErrorCode::Shutdown => ErrorLabel::Shutdown,
            ErrorCode::Abandoned => ErrorLabel::Abandoned,
            ErrorCode::Evicted => ErrorLabel::Evicted,
            ErrorCode::Internal => ErrorLabel::Internal,
            ErrorCode::UpstreamLost => ErrorLabel::UpstreamLost,
            ErrorCode::UpstreamError => ErrorLabel::UpstreamError,
        }
    }
}

label_values! {
    /// `reason` of `sse_proxy_upstream_events_dropped_total`: upstream items not sent on.
    pub enum DroppedReason: "reason" {
        /// An upstream `progress` event while the proxy sends its own.
        Progress => "progress",
        /// A keep-alive event (Anthropic's `ping`).
        Ping => "ping",
        /// A token with empty text (`skip_empty_tokens`, an empty delta).
        EmptyToken => "empty_token",
        /// A chunk without text whose fields, if any, go into `done` (a role, `finish_reason`, `usage`).
        NoText => "no_text",
    }
}

label_values! {
    /// `outcome` of `sse_proxy_streams_finished_total` (a stream's `Outcome`).
    pub enum FinishedOutcome: "outcome" {
        /// The upstream finished its answer.
        Completed => "completed",
        /// Its owner pressed Stop.
        Cancelled => "cancelled",
        /// Nobody came back within `detach_grace`.
        Abandoned => "abandoned",
        /// The upstream failed.
        Error => "error",
        /// The proxy shut down before the answer finished.
        Shutdown => "shutdown",
        /// Another replica declared it lost: this replica had stopped renewing its lease.
        Lost => "lost",
    }
}

label_values! {
    /// `result` of `sse_proxy_resumes_total`.
    pub enum ResumeResult: "result" {
        /// Events after the given id were sent.
        Replayed => "replayed",
        /// The stream had ended at the given id (`204`).
        Finished => "finished",
        /// Unknown, expired, evicted or foreign (`410`, or a restart).
        Gone => "gone",
        /// A malformed `Last-Event-ID` (`400`).
        BadRequest => "bad_request",
        /// The stream store could not be asked (`503`).
        Unavailable => "unavailable",
    }
}

label_values! {
    /// `reason` of `sse_proxy_rejected_total`: the limit that refused a request.
    pub enum RejectReason: "reason" {
        /// `limits.max_streams` running.
        MaxStreams => "max_streams",
        /// `limits.max_streams_per_identity` running for this identity.
        MaxStreamsPerIdentity => "max_streams_per_identity",
        /// `limits.max_followers` connections already follow the stream.
        MaxFollowers => "max_followers",
        /// Every `server.max_connections` slot taken (a connection, or an upgraded tunnel).
        MaxConnections => "max_connections",
        /// A client metrics report that is not valid.
        ClientMetricsInvalid => "client_metrics_invalid",
        /// Client metrics reports over `client_metrics.per_second`.
        ClientMetricsRate => "client_metrics_rate",
    }
}

label_values! {
    /// `reason` of `sse_proxy_client_errors_total`: what was wrong with the client's own request
    /// body. The same words are the `error` code of the JSON answer.
    pub enum ClientErrorReason: "reason" {
        /// Malformed or cut short (`400`).
        BadBody => "bad_body",
        /// Not received within `server.body_read_timeout` (`408`).
        BodyTimeout => "body_timeout",
        /// Over its limit (`413`).
        BodyTooLarge => "body_too_large",
    }
}

label_values! {
    /// `kind` of `sse_proxy_log_evictions_total`.
    pub enum EvictionKind: "kind" {
        /// A finished stream dropped whole.
        Finished => "finished",
        /// A running stream's oldest events dropped.
        Running => "running",
    }
}

label_values! {
    /// `status` of `sse_proxy_passthrough_requests_total`: the class of the backend's status.
    pub enum StatusClass: "status" {
        /// `2xx`.
        Success => "2xx",
        /// `3xx`.
        Redirection => "3xx",
        /// `4xx`.
        ClientError => "4xx",
        /// Anything else.
        Other => "5xx",
    }
}

impl StatusClass {
    /// The class of `status`.
    pub fn of(status: http::StatusCode) -> Self {
        match status.as_u16() / 100 {
            2 => StatusClass::Success,
            3 => StatusClass::Redirection,
            4 => StatusClass::ClientError,
            _ => StatusClass::Other,
        }
    }
}

label_values! {
    /// `outcome` of `sse_proxy_client_reports_total`: how a browser says its stream ended.
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum ReportOutcome: "outcome" {
        /// The answer completed.
        Done => "done",
        /// The user stopped it.
        Cancelled => "cancelled",
        /// It ended with an `error` event.
        Error => "error",
        /// The connection failed for good.
        Failed => "failed",
    }
}

label_values! {
    /// `op` of `sse_proxy_store_errors_total` and `sse_proxy_store_op_seconds`: a stream store
    /// operation.
    pub enum StoreOp: "op" {
        /// Creating a stream's record.
        Create => "create",
        /// Appending a batch of frames.
        Append => "append",
        /// Ending a stream's record.
        Finish => "finish",
        /// Refreshing the reader's lease.
        Refresh => "refresh",
        /// Looking a stream up for a resume.
        Meta => "meta",
        /// Reading frames for a remote cursor.
        Read => "read",
        /// Waiting for frames for a remote cursor.
        Wait => "wait",
        /// Dropping a stream's oldest frames.
        Trim => "trim",
        /// Removing a stream.
        Remove => "remove",
        /// The health check's round trip.
        Ping => "ping",
        /// Taking, refreshing or giving back a place in the cluster-wide limits.
        Admit => "admit",
        /// Listing the running answers of every replica (`/streams`).
        List => "list",
        /// Reading or adding learned answer lengths.
        History => "history",
        /// Reading or writing back the shared identity key.
        Key => "key",
    }
}

label_values! {
    /// `result` of `sse_proxy_config_reloads_total`: a reload of the config file (SIGHUP or
    /// `POST /reload`).
    pub enum ReloadResult: "result" {
        /// The new config was read, checked and applied.
        Ok => "ok",
        /// The new config was refused; the running one goes on.
        Error => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<L: LabelValue>() -> Vec<&'static str> {
        L::ALL
            .iter()
            .enumerate()
            .for_each(|(i, v)| assert_eq!(v.index(), i));
        L::ALL.iter().map(|v| v.as_str()).collect()
    }

    #[test]
    fn stream_error_codes_keep_their_wire_code_as_label() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorLabel::from(code).as_str(), code.as_str());
        }
    }

    #[test]
    fn label_values_are_indexed_in_order() {
        assert_eq!(
            values::<ErrorLabel>(),
            [
                "upstream_reset",
                "upstream_timeout",
                "upstream_malformed",
                "upstream_unreachable",
                "upstream_response_timeout",
                "shutdown",
                "abandoned",
                "evicted",
                "internal",
                "upstream_lost",
                "upstream_error",
            ]
        );
        assert_eq!(
            values::<DroppedReason>(),
            ["progress", "ping", "empty_token", "no_text"]
        );
        assert_eq!(
            values::<StoreOp>(),
            [
                "create", "append", "finish", "refresh", "meta", "read", "wait", "trim", "remove", "ping",
                "admit", "list", "history", "key"
            ]
        );
        assert_eq!(values::<EvictionKind>(), ["finished", "running"]);
        assert_eq!(values::<StatusClass>(), ["2xx", "3xx", "4xx", "5xx"]);
        assert_eq!(values::<ReloadResult>(), ["ok", "error"]);
        for l in [
            values::<FinishedOutcome>(),
            values::<ResumeResult>(),
            values::<RejectReason>(),
            values::<ClientErrorReason>(),
            values::<ReportOutcome>(),
        ] {
            assert!(!l.is_empty());
        }
    }

    #[test]
    fn status_classes() {
        let class = |s: u16| StatusClass::of(http::StatusCode::from_u16(s).expect("status")).as_str();
        assert_eq!(
            [class(200), class(304), class(404), class(503), class(102)],
            ["2xx", "3xx", "4xx", "5xx", "5xx"]
        );
    }
}
