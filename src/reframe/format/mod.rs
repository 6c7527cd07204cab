//! Upstream dialects: what one upstream event (or NDJSON line) means for the stream.
//!
//! Each format maps an item to an [`Action`]: token text for the batcher, an event to pass through,
//! something to drop, the upstream's own end, or its own error. Formats keep what the proxy's
//! `done` should carry (`finish_reason`, `usage`, statistics) until the stream ends. Frame encoding
//! is not their concern.

mod anthropic;
mod ollama;
mod openai;
mod sse;

use super::RouteSettings;
use crate::config::UpstreamFormat;
use crate::metrics::DroppedReason;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::Arc;

/// One upstream item: an SSE event, or one NDJSON line (with an empty event name).
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The SSE event type (`message` by default); empty for an NDJSON line.
    pub event: &'a str,
    /// The event data, or the line.
    pub data: &'a str,
}

/// What an upstream item means for the stream.
#[derive(Debug, PartialEq)]
pub enum Action<'a> {
    /// Token text.
    Token(Cow<'a, str>),
    /// Passed through unchanged, as a metadata event.
    Pass,
    /// Not sent.
    Drop(DroppedReason),
    /// The upstream's own end of the answer.
    End(Terminal),
    /// The backend reported an error: the stream ends with `upstream_error`.
    Error(BackendError),
    /// Not what the format allows: the stream ends with `upstream_malformed`.
    Malformed(&'static str),
}

/// The upstream's end of the answer.
#[derive(Debug, Default, PartialEq)]
pub struct Terminal {
    /// Token text the last item carried (an Ollama `done` line may have some).
    pub token: Option<String>,
    /// Whether the item is passed through before the proxy's `done` (a terminal event that is not
    /// itself `done`).
    pub pass: bool,
}

/// An error the backend reported in its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendError {
    /// The backend's message.
    pub message: String,
    /// Whether asking again may succeed (the backend's value, `true` when it gave none).
    pub recoverable: bool,
}

/// How a format's body is split into items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `text/event-stream`.
    Sse,
    /// Newline-delimited JSON (`application/x-ndjson`).
    Lines,
}

impl Framing {
    /// The framing a route's format reads.
    pub fn of(format: UpstreamFormat) -> Framing {
        match format {
            UpstreamFormat::Ollama => Framing::Lines,
            _ => Framing::Sse,
        }
    }
}

/// One stream's upstream dialect, with what it keeps for `done`.
#[derive(Debug)]
pub enum Dialect {
    /// Generic SSE.
    Sse(sse::Sse),
    /// OpenAI-compatible.
    OpenAi(openai::OpenAi),
    /// Anthropic Messages.
    Anthropic(anthropic::Anthropic),
    /// Ollama NDJSON.
    Ollama(ollama::Ollama),
}

impl Dialect {
    /// The dialect of `route`.
    pub fn new(route: &Arc<RouteSettings>) -> Dialect {
        match route.format {
            UpstreamFormat::Sse => Dialect::Sse(sse::Sse::new(route.clone())),
            UpstreamFormat::OpenAi => Dialect::OpenAi(openai::OpenAi::default()),
            UpstreamFormat::Anthropic => Dialect::Anthropic(anthropic::Anthropic::default()),
            UpstreamFormat::Ollama => Dialect::Ollama(ollama::Ollama::default()),
        }
    }

    /// What `input` means.
    pub fn read<'a>(&mut self, input: Input<'a>) -> Action<'a> {
        match self {
            Dialect::Sse(d) => d.read(input),
            Dialect::OpenAi(d) => d.read(input),
            Dialect::Anthropic(d) => d.read(input),
            Dialect::Ollama(d) => d.read(input),
        }
    }

    /// The fields the proxy's `done` carries besides `total_tokens`.
    pub fn done_fields(&mut self) -> Map<String, Value> {
        match self {
            Dialect::Sse(d) => std::mem::take(&mut d.kept),
            Dialect::OpenAi(d) => d.done_fields(),
            Dialect::Anthropic(d) => std::mem::take(&mut d.kept),
            Dialect::Ollama(d) => std::mem::take(&mut d.kept),
        }
    }
}

/// An error object as backends write it: `{"message":..,"recoverable":..}`,
/// `{"error":{"message":..}}`, `{"error":".."}`; anything else is the message itself.
fn backend_error(data: &str) -> BackendError {
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let message = [
        v.get("message"),
        v.get("error").and_then(|e| e.get("message")),
        v.get("error"),
    ]
    .into_iter()
    .flatten()
    .find_map(Value::as_str)
    .unwrap_or(data);
    let recoverable = v.get("recoverable").and_then(Value::as_bool).unwrap_or(true);
    BackendError {
        message: message.to_string(),
        recoverable,
    }
}

/// A non-null field of a JSON object.
fn field<'v>(v: &'v Value, name: &str) -> Option<&'v Value> {
    v.get(name).filter(|f| !f.is_null())
}

#[cfg(test)]
fn input<'a>(event: &'a str, data: &'a str) -> Input<'a> {
    Input { event, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_errors_in_their_usual_shapes() {
        let e = |d: &str| {
            let b = backend_error(d);
            (b.message, b.recoverable)
        };
        assert_eq!(e(r#"{"message":"m","recoverable":false}"#), ("m".into(), false));
        assert_eq!(e(r#"{"error":{"message":"m2","type":"x"}}"#), ("m2".into(), true));
        assert_eq!(e(r#"{"error":"m3"}"#), ("m3".into(), true));
        assert_eq!(e("plain words"), ("plain words".into(), true));
        assert_eq!(
            e(r#"{"recoverable":"yes"}"#),
            (r#"{"recoverable":"yes"}"#.into(), true)
        );
    }
}
