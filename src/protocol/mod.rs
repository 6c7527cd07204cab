//! The browser-facing wire format (see `PROTOCOL.md`; `clients/js/src/protocol.ts` is its reader).
//!
//! Everything the proxy itself writes into a stream response is built here: the `retry:` preamble,
//! event ids, the data of token batches, `done` and `error` events, and the heartbeat. Upstream
//! events that pass through keep their own name and data. A route may write its streams in another
//! dialect ([`Dialect`]): `openai` is the module beside this one.

mod dialect;
mod error;
mod event_id;
pub mod openai;

pub use dialect::{Dialect, Encoder, Native};
pub use error::ErrorCode;
pub use event_id::{EventId, EventIdError, MAX_EVENT_ID_LEN};

use crate::sse;
use bytes::{Bytes, BytesMut};

/// Event type of token batches: the SSE default, written without an `event:` line.
pub const EVENT_MESSAGE: &str = "message";
/// Event type of progress reports.
pub const EVENT_PROGRESS: &str = "progress";
/// Event type of the proxy's own normal end of a stream.
pub const EVENT_DONE: &str = "done";
/// Event type of the terminal error of a stream or connection.
pub const EVENT_ERROR: &str = "error";

/// The comment line written after the heartbeat interval without a write: one line end and no
/// blank line, which some clients would read as an empty event.
pub const HEARTBEAT: &[u8] = b": heartbeat\n";

/// The first bytes of every stream response: the line `retry: {ms}` (the client's reconnection
/// delay) with no blank line after it, so it is a field of the response's first event (comments
/// in between are ignored) rather than an event of its own. At the end of a handed-off response
/// it belongs to no event: the body ends before a blank line would dispatch one.
pub fn retry_preamble(ms: u64) -> Bytes {
    let mut buf = BytesMut::new();
    sse::encode_retry(&mut buf, ms);
    buf.freeze()
}

/// One event of a stream's log, `id: {stream_id}:{seq}` last (after `event:` and `data:`);
/// `event` `None` is a `message`.
pub fn encode_frame(stream_id: &str, seq: u64, event: Option<&str>, data: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(stream_id.len() + data.len() + 48);
    sse::encode_fields(&mut buf, event, data);
    event_id::put(&mut buf, stream_id, seq);
    buf.extend_from_slice(b"\n");
    log_frame(buf)
}

/// A frame as a log keeps it: in an allocation of its own size. `freeze` of a partly filled
/// buffer would keep its spare room and add a shared header, per frame, for as long as the log
/// holds it.
pub(crate) fn log_frame(buf: BytesMut) -> Bytes {
    let mut exact = Vec::from(buf);
    exact.shrink_to_fit();
    Bytes::from(exact)
}

/// An `error` event without an id, for an error of one connection rather than of the stream.
pub fn error_frame(code: ErrorCode) -> Bytes {
    let mut buf = BytesMut::new();
    sse::encode_event(&mut buf, None, Some(EVENT_ERROR), &error(code));
    buf.freeze()
}

/// The data of a token batch: `{"content":"<text>","batch_size":N}`.
pub fn batch(text: &str, tokens: usize) -> String {
    #[derive(serde::Serialize)]
    struct Batch<'a> {
        content: &'a str,
        batch_size: usize,
    }
    // Serializing a str and an integer cannot fail.
    serde_json::to_string(&Batch {
        content: text,
        batch_size: tokens,
    })
    .unwrap_or_default()
}

/// The data of the proxy's `done`: `{"total_tokens":N}`, or `{"cancelled":true,"total_tokens":N}`
/// after Stop.
pub fn done(total_tokens: u64, cancelled: bool) -> String {
    if cancelled {
        format!(r#"{{"cancelled":true,"total_tokens":{total_tokens}}}"#)
    } else {
        format!(r#"{{"total_tokens":{total_tokens}}}"#)
    }
}

/// The data of an `error` event: `{"code":"…","message":"…","recoverable":…}`.
pub fn error(code: ErrorCode) -> String {
    #[derive(serde::Serialize)]
    struct Error {
        code: &'static str,
        message: &'static str,
        recoverable: bool,
    }
    // Serializing two strs and a bool cannot fail.
    serde_json::to_string(&Error {
        code: code.as_str(),
        message: code.message(),
        recoverable: code.recoverable(),
    })
    .unwrap_or_default()
}

/// The data of the `error` event that ends a stream whose backend reported an error itself:
/// `{"code":"upstream_error","message":<the backend's>,"recoverable":<the backend's>}`.
pub fn upstream_error(message: &str, recoverable: bool) -> String {
    #[derive(serde::Serialize)]
    struct Error<'a> {
        code: &'static str,
        message: &'a str,
        recoverable: bool,
    }
    // Serializing two strs and a bool cannot fail.
    serde_json::to_string(&Error {
        code: ErrorCode::UpstreamError.as_str(),
        message,
        recoverable,
    })
    .unwrap_or_default()
}

/// The data of the proxy's `done` when the upstream sent one of its own, or left fields for it
/// (`finish_reason`, `usage`, statistics): those fields with `total_tokens` added when absent.
pub fn done_with(mut fields: serde_json::Map<String, serde_json::Value>, total_tokens: u64) -> String {
    fields
        .entry("total_tokens")
        .or_insert_with(|| total_tokens.into());
    serde_json::Value::Object(fields).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_frames_keep_no_spare_room() {
        // A log holds its frames for the life of the stream and after: each in an allocation of
        // its own size, whatever the dialect and the event.
        let batch_data = batch("Hello, world", 3);
        let events = [
            (None, batch_data.as_str()),
            (Some(EVENT_DONE), r#"{"total_tokens":3}"#),
            (Some(EVENT_ERROR), &error(ErrorCode::UpstreamLost)),
        ];
        for dialect in [Dialect::Native, Dialect::OpenAi] {
            let mut encoder = dialect.encoder("llama3");
            for (seq, (event, data)) in events.iter().enumerate() {
                let frame = encoder.frame("I1VXJqotTFkkycKPq4BGrA", seq as u64 + 1, *event, data);
                let held = Vec::from(frame);
                assert_eq!(held.capacity(), held.len(), "{dialect:?} {event:?}");
            }
        }
    }

    #[test]
    fn preamble_and_heartbeat_bytes() {
        assert_eq!(&retry_preamble(1000)[..], b"retry: 1000\n");
        assert_eq!(&retry_preamble(0)[..], b"retry: 0\n");
        assert_eq!(HEARTBEAT, b": heartbeat\n");
    }

    #[test]
    fn frames_carry_stream_and_seq() {
        let sid = "I1VXJqotTFkkycKPq4BGrA";
        assert_eq!(
            &encode_frame(sid, 1, None, r#"{"content":"a","batch_size":1}"#)[..],
            &b"data: {\"content\":\"a\",\"batch_size\":1}\nid: I1VXJqotTFkkycKPq4BGrA:1\n\n"[..]
        );
        assert_eq!(
            &encode_frame(sid, 42, Some("thinking"), "b\nc")[..],
            &b"event: thinking\ndata: b\ndata: c\nid: I1VXJqotTFkkycKPq4BGrA:42\n\n"[..]
        );
        assert_eq!(
            &encode_frame(sid, u64::MAX, Some(EVENT_MESSAGE), "")[..],
            &b"data: \nid: I1VXJqotTFkkycKPq4BGrA:18446744073709551615\n\n"[..]
        );
    }

    #[test]
    fn batch_bytes_and_escaping() {
        assert_eq!(batch("The", 1), r#"{"content":"The","batch_size":1}"#);
        assert_eq!(
            batch("a\"b\\c\nd é 日本 😀", 3),
            "{\"content\":\"a\\\"b\\\\c\\nd é 日本 😀\",\"batch_size\":3}"
        );
    }

    #[test]
    fn done_bytes() {
        assert_eq!(done(0, false), r#"{"total_tokens":0}"#);
        assert_eq!(done(151, false), r#"{"total_tokens":151}"#);
        assert_eq!(done(7, true), r#"{"cancelled":true,"total_tokens":7}"#);
    }

    #[test]
    fn error_bytes() {
        assert_eq!(
            error(ErrorCode::Abandoned),
            r#"{"code":"abandoned","message":"nobody was listening; the answer was stopped","recoverable":false}"#
        );
        assert_eq!(
            error(ErrorCode::Shutdown),
            r#"{"code":"shutdown","message":"the proxy is restarting; ask again","recoverable":true}"#
        );
        assert_eq!(
            &error_frame(ErrorCode::Evicted)[..],
            &b"event: error\ndata: {\"code\":\"evicted\",\"message\":\"this connection fell too far behind and the events it missed were dropped\",\"recoverable\":false}\n\n"[..]
        );
    }

    #[test]
    fn upstream_error_and_merged_done() {
        assert_eq!(
            upstream_error("boom \"x\"", false),
            r#"{"code":"upstream_error","message":"boom \"x\"","recoverable":false}"#
        );
        let fields = serde_json::json!({"status": "complete"});
        let serde_json::Value::Object(fields) = fields else {
            unreachable!()
        };
        assert_eq!(
            done_with(fields.clone(), 5),
            r#"{"status":"complete","total_tokens":5}"#
        );
        let mut own = fields;
        own.insert("total_tokens".into(), 9.into());
        assert_eq!(done_with(own, 5), r#"{"status":"complete","total_tokens":9}"#);
    }

    #[test]
    fn every_error_payload_is_what_the_client_reads() {
        for code in ErrorCode::ALL {
            let v: serde_json::Value = serde_json::from_str(&error(code)).expect("json");
            assert_eq!(v["code"], code.as_str());
            assert_eq!(v["message"], code.message());
            assert_eq!(v["recoverable"], code.recoverable());
            assert_eq!(v.as_object().map(|o| o.len()), Some(3));
        }
    }
}
