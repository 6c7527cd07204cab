//! The `openai` dialect: a stream written as OpenAI Chat Completions chunks (see `PROTOCOL.md`).
//!
//! Each event of the stream's log is one `chat.completion.chunk` in a `data:` line with the usual
//! `id: <stream>:<seq>` last. A token batch is `delta.content`; the first chunk also carries
//! `delta.role`; `done` is a chunk with `finish_reason` (and `usage` when the upstream sent it)
//! followed by `data: [DONE]`; an error is `{"error":{…}}`. Progress and metadata events are
//! chunks with an empty delta and an `sse_proxy` field: a frame is encoded once, when it is
//! appended, and may already be on the wire and in the store, so nothing is added to an earlier one.

use super::{event_id, ErrorCode, EVENT_DONE, EVENT_ERROR, EVENT_MESSAGE};
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde_json::{Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// The heartbeat: a comment line alone, which no SSE decoder turns into an event.
pub const HEARTBEAT: &[u8] = b": heartbeat\n";

/// The data of the last event of a completed stream.
pub const DONE_DATA: &str = "[DONE]";

/// The code of an error whose data is not the proxy's own error object.
const UPSTREAM_ERROR: &str = "upstream_error";

/// Prefix of every chunk's `id` (the OpenAI API's own), followed by the stream id.
const CHUNK_ID_PREFIX: &str = "chatcmpl-";

/// Encodes one stream's events as `chat.completion.chunk`s.
#[derive(Debug)]
pub struct Encoder {
    model: String,
    created: u64,
    /// Whether a chunk (carrying `delta.role`) was written.
    started: bool,
}

impl Encoder {
    /// An encoder for a stream answered by `model`, created now.
    pub fn new(model: &str) -> Self {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self::at(model, created)
    }

    /// An encoder whose chunks say they were created at `created` (Unix seconds).
    pub fn at(model: &str, created: u64) -> Self {
        Encoder {
            model: model.to_string(),
            created,
            started: false,
        }
    }

    fn put_chunk(&mut self, buf: &mut BytesMut, stream_id: &str, body: ChunkBody<'_>) {
        let id = format!("{CHUNK_ID_PREFIX}{stream_id}");
        let role = (!self.started).then_some("assistant");
        self.started = true;
        let chunk = Chunk {
            id: &id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: [Choice {
                index: 0,
                delta: Delta {
                    role,
                    content: body.content,
                },
                finish_reason: body.finish_reason,
            }],
            usage: body.usage,
            sse_proxy: body.extra,
        };
        // Serializing strs, integers and JSON values cannot fail.
        put_data(buf, &serde_json::to_string(&chunk).unwrap_or_default());
    }
}

impl super::dialect::Encoder for Encoder {
    fn frame(&mut self, stream_id: &str, seq: u64, event: Option<&str>, data: &str) -> Bytes {
        let mut buf = BytesMut::with_capacity(data.len() + self.model.len() + 192);
        match event.unwrap_or(EVENT_MESSAGE) {
            EVENT_MESSAGE => match batch_text(data) {
                Some(text) => self.put_chunk(&mut buf, stream_id, ChunkBody::content(&text)),
                None => self.put_chunk(&mut buf, stream_id, ChunkBody::extra(EVENT_MESSAGE, data)),
            },
            EVENT_DONE => {
                let done = serde_json::from_str::<Value>(data).unwrap_or(Value::Null);
                let finish = done
                    .get("finish_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("stop");
                let body = ChunkBody {
                    content: None,
                    finish_reason: Some(finish),
                    usage: done.get("usage").filter(|u| u.is_object()),
                    extra: Some(one(EVENT_DONE, done.clone())),
                };
                self.put_chunk(&mut buf, stream_id, body);
                buf.put_u8(b'\n');
                put_data(&mut buf, DONE_DATA);
            }
            EVENT_ERROR => put_error(&mut buf, data),
            other => self.put_chunk(&mut buf, stream_id, ChunkBody::extra(other, data)),
        }
        put_id(&mut buf, stream_id, seq);
        super::log_frame(buf)
    }
}

/// An error of one connection (no id): `data: {"error":{…}}` and a blank line.
pub fn error_frame(code: ErrorCode) -> Bytes {
    let mut buf = BytesMut::new();
    put_error(&mut buf, &super::error(code));
    buf.put_u8(b'\n');
    buf.freeze()
}

/// Writes the `data:` line of an error, from the data of a native `error` event (`{"code",
/// "message","recoverable"}`; other data is the message of an `upstream_error`).
pub(super) fn put_error(buf: &mut BytesMut, native: &str) {
    let parsed = serde_json::from_str::<Value>(native).ok();
    let field = |k: &str| parsed.as_ref().and_then(|v| v.get(k)).cloned();
    let message = match field("message") {
        Some(Value::String(s)) => s,
        _ => native.to_string(),
    };
    let code = match field("code") {
        Some(Value::String(s)) => s,
        _ => UPSTREAM_ERROR.to_string(),
    };
    let recoverable = field("recoverable").and_then(|v| v.as_bool());
    let body = ErrorBody {
        error: ErrorDetail {
            message: &message,
            kind: "sse_proxy",
            code: &code,
        },
        sse_proxy: recoverable.map(|recoverable| Recoverable { recoverable }),
    };
    // Serializing strs and a bool cannot fail.
    put_data(buf, &serde_json::to_string(&body).unwrap_or_default());
}

/// Writes `id: {stream_id}:{seq}` and the blank line ending the event.
pub(super) fn put_id(buf: &mut BytesMut, stream_id: &str, seq: u64) {
    event_id::put(buf, stream_id, seq);
    buf.put_u8(b'\n');
}

/// `data: {json}\n`: JSON text has no raw line ends, so one line holds it.
fn put_data(buf: &mut BytesMut, json: &str) {
    buf.put_slice(b"data: ");
    buf.put_slice(json.as_bytes());
    buf.put_u8(b'\n');
}

/// The text of a re-framer's token batch (`{"content":"…","batch_size":N}`), or `None` when the
/// data is something else (an upstream `message` event passed through).
fn batch_text(data: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Batch {
        content: String,
        #[allow(dead_code)]
        batch_size: u64,
    }
    serde_json::from_str::<Batch>(data).ok().map(|b| b.content)
}

/// `{name: data}`, the data as JSON when it is JSON and as a string otherwise.
fn one(name: &str, value: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(name.to_string(), value);
    m
}

/// What differs between chunks.
struct ChunkBody<'a> {
    content: Option<&'a str>,
    finish_reason: Option<&'a str>,
    usage: Option<&'a Value>,
    extra: Option<Map<String, Value>>,
}

impl<'a> ChunkBody<'a> {
    fn content(text: &'a str) -> Self {
        ChunkBody {
            content: Some(text),
            finish_reason: None,
            usage: None,
            extra: None,
        }
    }

    /// An empty delta carrying event `name`'s data in `sse_proxy`.
    fn extra(name: &str, data: &str) -> Self {
        let value = serde_json::from_str::<Value>(data).unwrap_or_else(|_| Value::from(data));
        ChunkBody {
            content: None,
            finish_reason: None,
            usage: None,
            extra: Some(one(name, value)),
        }
    }
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sse_proxy: Option<Map<String, Value>>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sse_proxy: Option<Recoverable>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a str,
}

#[derive(Serialize)]
struct Recoverable {
    recoverable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::dialect::Encoder as _;
    use crate::protocol::{batch, done, error, Dialect, EVENT_PROGRESS};

    const SID: &str = "I1VXJqotTFkkycKPq4BGrA";

    fn enc() -> Encoder {
        Encoder::at("llama3", 1_700_000_000)
    }

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).expect("utf-8")
    }

    /// The JSON of the frame's only `data:` line, its `id:` checked last.
    fn chunk(frame: &Bytes, seq: u64) -> Value {
        let t = text(frame);
        let id_line = format!("\nid: {SID}:{seq}\n\n");
        let body = t.strip_suffix(&id_line).expect("id last, then a blank line");
        let json = body.strip_prefix("data: ").expect("data first");
        assert!(!json.contains('\n'), "one data line: {t:?}");
        serde_json::from_str(json).expect("chunk JSON")
    }

    #[test]
    fn first_chunk_carries_the_role_and_the_rest_only_content() {
        let mut e = enc();
        let first = e.frame(SID, 1, None, &batch("Hello", 2));
        assert_eq!(
            text(&first),
            format!(
                "data: {{\"id\":\"chatcmpl-{SID}\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"llama3\",\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"Hello\"}},\"finish_reason\":null}}]}}\nid: {SID}:1\n\n"
            )
        );
        let second = chunk(&e.frame(SID, 2, None, &batch(" world", 1)), 2);
        assert_eq!(
            second["choices"][0]["delta"],
            serde_json::json!({"content": " world"})
        );
        assert_eq!(second["choices"][0]["finish_reason"], Value::Null);
        assert!(second.get("sse_proxy").is_none() && second.get("usage").is_none());
    }

    #[test]
    fn text_of_any_kind_is_escaped_into_one_line() {
        let mut e = enc();
        let nasty = "a\"b\\c\nd\r\ne\u{0}f\u{2028} é 日本 😀 data: x\n\nid: y";
        let c = chunk(&e.frame(SID, 7, None, &batch(nasty, 3)), 7);
        assert_eq!(c["choices"][0]["delta"]["content"], nasty);
    }

    #[test]
    fn done_is_the_finish_chunk_then_the_done_marker_with_the_id() {
        let mut e = enc();
        e.frame(SID, 1, None, &batch("a", 1));
        let f = e.frame(SID, 2, Some(EVENT_DONE), &done(5, false));
        let t = text(&f);
        let (first, rest) = t.split_once("\n\n").expect("two events");
        assert_eq!(rest, format!("data: [DONE]\nid: {SID}:2\n\n"));
        let c: Value = serde_json::from_str(first.strip_prefix("data: ").expect("data")).expect("json");
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        assert_eq!(c["choices"][0]["delta"], serde_json::json!({}));
        assert!(c.get("usage").is_none(), "no usage unless the upstream sent it");
        assert_eq!(c["sse_proxy"]["done"]["total_tokens"], 5);
    }

    #[test]
    fn done_keeps_the_upstreams_finish_reason_and_usage() {
        let mut e = enc();
        let data = r#"{"total_tokens":3,"finish_reason":"length","usage":{"prompt_tokens":4,"completion_tokens":3,"total_tokens":7}}"#;
        let f = e.frame(SID, 1, Some(EVENT_DONE), data);
        let first = text(&f).split("\n\n").next().expect("chunk");
        let c: Value = serde_json::from_str(first.strip_prefix("data: ").expect("data")).expect("json");
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert_eq!(c["usage"]["completion_tokens"], 3);
        assert_eq!(c["usage"]["total_tokens"], 7);
        // Nothing came before: this chunk is the first, so it carries the role.
        assert_eq!(c["choices"][0]["delta"]["role"], "assistant");
    }

    #[test]
    fn cancelled_done_says_so() {
        let f = enc().frame(SID, 4, Some(EVENT_DONE), &done(2, true));
        let first = text(&f).split("\n\n").next().expect("chunk");
        let c: Value = serde_json::from_str(first.strip_prefix("data: ").expect("data")).expect("json");
        assert_eq!(c["sse_proxy"]["done"]["cancelled"], true);
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn errors_have_the_openai_error_shape() {
        let mut e = enc();
        let f = e.frame(SID, 3, Some(EVENT_ERROR), &error(ErrorCode::UpstreamTimeout));
        assert_eq!(
            text(&f),
            format!("data: {{\"error\":{{\"message\":\"the backend sent nothing for too long\",\"type\":\"sse_proxy\",\"code\":\"upstream_timeout\"}},\"sse_proxy\":{{\"recoverable\":true}}}}\nid: {SID}:3\n\n")
        );
        // Data that is not the proxy's error object is an upstream error with that message.
        let c = chunk(&e.frame(SID, 4, Some(EVENT_ERROR), "boom \"x\""), 4);
        assert_eq!(c["error"]["message"], "boom \"x\"");
        assert_eq!(c["error"]["code"], "upstream_error");
        assert_eq!(c["error"]["type"], "sse_proxy");
        // Of one connection: no id.
        assert_eq!(
            &error_frame(ErrorCode::Evicted)[..],
            &b"data: {\"error\":{\"message\":\"this connection fell too far behind and the events it missed were dropped\",\"type\":\"sse_proxy\",\"code\":\"evicted\"},\"sse_proxy\":{\"recoverable\":false}}\n\n"[..]
        );
        assert_eq!(
            Dialect::OpenAi.error_event(SID, 9, ErrorCode::UpstreamLost),
            e.frame(SID, 9, Some(EVENT_ERROR), &error(ErrorCode::UpstreamLost))
        );
    }

    #[test]
    fn progress_and_metadata_ride_in_sse_proxy_on_an_empty_delta() {
        let mut e = enc();
        e.frame(SID, 1, None, &batch("a", 1));
        let p = r#"{"tokens":10,"estimated_total":40,"percent":25}"#;
        let c = chunk(&e.frame(SID, 2, Some(EVENT_PROGRESS), p), 2);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["choices"][0]["delta"], serde_json::json!({}));
        assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(c["sse_proxy"]["progress"]["percent"], 25);
        let c = chunk(&e.frame(SID, 3, Some("thinking"), r#"{"step":1}"#), 3);
        assert_eq!(c["sse_proxy"]["thinking"]["step"], 1);
        // Data that is not JSON is kept as a string; so is a passed-through `message`.
        let c = chunk(&e.frame(SID, 4, Some("sources"), "plain\ntext"), 4);
        assert_eq!(c["sse_proxy"]["sources"], "plain\ntext");
        let c = chunk(&e.frame(SID, 5, None, r#"{"other":1}"#), 5);
        assert_eq!(c["sse_proxy"]["message"]["other"], 1);
        assert!(c["choices"][0]["delta"].get("content").is_none());
    }

    #[test]
    fn a_progress_event_first_still_carries_the_role() {
        let mut e = enc();
        let c = chunk(&e.frame(SID, 1, Some(EVENT_PROGRESS), "{}"), 1);
        assert_eq!(c["choices"][0]["delta"], serde_json::json!({"role": "assistant"}));
        let c = chunk(&e.frame(SID, 2, None, &batch("x", 1)), 2);
        assert_eq!(c["choices"][0]["delta"], serde_json::json!({"content": "x"}));
    }

    #[test]
    fn no_standalone_retry_and_a_lone_comment_heartbeat() {
        assert!(Dialect::OpenAi.preamble(1000).is_empty());
        assert_eq!(&Dialect::OpenAi.heartbeat()[..], b": heartbeat\n");
        assert_eq!(&Dialect::Native.preamble(1000)[..], b"retry: 1000\n");
    }

    #[test]
    fn native_encoder_is_the_native_frame() {
        let mut n = Dialect::Native.encoder("m");
        assert_eq!(
            n.frame(SID, 1, Some("thinking"), "x"),
            crate::protocol::encode_frame(SID, 1, Some("thinking"), "x")
        );
    }
}
