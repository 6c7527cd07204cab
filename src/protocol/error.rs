//! The codes of the `error` events the proxy writes, with their messages.

/// Why a stream (or one connection to it) ended with an `error` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The upstream connection broke mid-answer.
    UpstreamReset,
    /// The upstream was silent for `idle_timeout`.
    UpstreamTimeout,
    /// The upstream sent something that is not a valid event stream (an oversized event, a body
    /// that cannot be decoded).
    UpstreamMalformed,
    /// The proxy is shutting down.
    Shutdown,
    /// Nobody reattached within `detach_grace`.
    Abandoned,
    /// This connection fell behind events dropped under the memory bounds.
    Evicted,
    /// The proxy itself failed while streaming.
    Internal,
    /// The replica reading the answer stopped renewing its lease before the answer was complete.
    UpstreamLost,
    /// The backend itself reported an error in its stream (its message is sent instead of ours).
    UpstreamError,
}

impl ErrorCode {
    /// Every code, in the order `PROTOCOL.md` lists them.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::UpstreamReset,
        ErrorCode::UpstreamTimeout,
        ErrorCode::UpstreamMalformed,
        ErrorCode::Shutdown,
        ErrorCode::Abandoned,
        ErrorCode::Evicted,
        ErrorCode::Internal,
        ErrorCode::UpstreamLost,
        ErrorCode::UpstreamError,
    ];

    /// The wire and metric code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UpstreamReset => "upstream_reset",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamMalformed => "upstream_malformed",
            ErrorCode::Shutdown => "shutdown",
            ErrorCode::Abandoned => "abandoned",
            ErrorCode::Evicted => "evicted",
            ErrorCode::Internal => "internal",
            ErrorCode::UpstreamLost => "upstream_lost",
            ErrorCode::UpstreamError => "upstream_error",
        }
    }

    /// The human-readable `message`.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::UpstreamReset => "the backend connection broke before the answer was complete",
            ErrorCode::UpstreamTimeout => "the backend sent nothing for too long",
            ErrorCode::UpstreamMalformed => "the backend sent an invalid or oversized event",
            ErrorCode::Shutdown => "the proxy is restarting; ask again",
            ErrorCode::Abandoned => "nobody was listening; the answer was stopped",
            ErrorCode::Evicted => "this connection fell too far behind and the events it missed were dropped",
            ErrorCode::Internal => "the proxy failed while streaming this answer",
            ErrorCode::UpstreamLost => "the proxy reading this answer stopped before it was complete",
            ErrorCode::UpstreamError => "the backend reported an error",
        }
    }

    /// Whether asking again may succeed.
    pub fn recoverable(self) -> bool {
        !matches!(
            self,
            ErrorCode::UpstreamMalformed
                | ErrorCode::Abandoned
                | ErrorCode::Evicted
                | ErrorCode::UpstreamLost
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_recoverability() {
        let table: Vec<(&str, bool)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str(), c.recoverable()))
            .collect();
        assert_eq!(
            table,
            [
                ("upstream_reset", true),
                ("upstream_timeout", true),
                ("upstream_malformed", false),
                ("shutdown", true),
                ("abandoned", false),
                ("evicted", false),
                ("internal", true),
                ("upstream_lost", false),
                ("upstream_error", true),
            ]
        );
    }
}
