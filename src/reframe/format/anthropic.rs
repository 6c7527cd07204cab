//! Anthropic Messages SSE: `content_block_delta` text deltas are tokens, `ping` is dropped, the
//! other events pass through in order, `message_stop` ends, `event: error` is the backend's error.

use super::{backend_error, field, Action, Input, Terminal};
use crate::metrics::DroppedReason;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// What an Anthropic stream sent for `done` (`stop_reason`, `usage`).
#[derive(Debug, Default)]
pub struct Anthropic {
    pub(super) kept: Map<String, Value>,
}

impl Anthropic {
    pub(super) fn read<'a>(&mut self, i: Input<'a>) -> Action<'a> {
        match i.event {
            "ping" => Action::Drop(DroppedReason::Ping),
            "message_stop" => Action::End(Terminal {
                token: None,
                pass: true,
            }),
            "error" => Action::Error(backend_error(i.data)),
            "content_block_delta" => {
                let Ok(v) = serde_json::from_str::<Value>(i.data) else {
                    return Action::Malformed("an Anthropic content_block_delta that is not JSON");
                };
                let Some(delta) = v.get("delta") else {
                    return Action::Malformed("an Anthropic content_block_delta without delta");
                };
                if delta.get("type").and_then(Value::as_str) != Some("text_delta") {
                    // Tool input, thinking: metadata for the client.
                    return Action::Pass;
                }
                match delta.get("text").and_then(Value::as_str) {
                    Some("") => Action::Drop(DroppedReason::EmptyToken),
                    Some(t) => Action::Token(Cow::Owned(t.to_string())),
                    None => Action::Malformed("an Anthropic text_delta without text"),
                }
            }
            "message_delta" => {
                if let Ok(v) = serde_json::from_str::<Value>(i.data) {
                    if let Some(r) = v.get("delta").and_then(|d| field(d, "stop_reason")) {
                        self.kept.insert("stop_reason".into(), r.clone());
                    }
                    if let Some(u) = field(&v, "usage") {
                        self.kept.insert("usage".into(), u.clone());
                    }
                }
                Action::Pass
            }
            _ => Action::Pass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{input, BackendError};
    use super::*;
    use serde_json::json;

    #[test]
    fn a_messages_stream() {
        let mut d = Anthropic::default();
        let start = r#"{"type":"message_start","message":{"id":"msg_1","role":"assistant","content":[]}}"#;
        assert_eq!(d.read(input("message_start", start)), Action::Pass);
        assert_eq!(d.read(input("content_block_start", "{}")), Action::Pass);
        assert_eq!(
            d.read(input("ping", r#"{"type":"ping"}"#)),
            Action::Drop(DroppedReason::Ping)
        );
        let delta =
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi \"there\""}}"#;
        assert_eq!(
            d.read(input("content_block_delta", delta)),
            Action::Token("Hi \"there\"".into())
        );
        let tool = r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{"}}"#;
        assert_eq!(d.read(input("content_block_delta", tool)), Action::Pass);
        assert_eq!(d.read(input("content_block_stop", "{}")), Action::Pass);
        let md =
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#;
        assert_eq!(d.read(input("message_delta", md)), Action::Pass);
        assert_eq!(
            d.read(input("message_stop", r#"{"type":"message_stop"}"#)),
            Action::End(Terminal {
                token: None,
                pass: true
            })
        );
        assert_eq!(
            Value::Object(std::mem::take(&mut d.kept)),
            json!({"stop_reason": "end_turn", "usage": {"output_tokens": 15}})
        );
    }

    #[test]
    fn malformed_deltas_and_errors() {
        let mut d = Anthropic::default();
        assert!(matches!(
            d.read(input("content_block_delta", "{oops")),
            Action::Malformed(_)
        ));
        assert!(matches!(
            d.read(input("content_block_delta", "{}")),
            Action::Malformed(_)
        ));
        assert!(matches!(
            d.read(input("content_block_delta", r#"{"delta":{"type":"text_delta"}}"#)),
            Action::Malformed(_)
        ));
        let err = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            d.read(input("error", err)),
            Action::Error(BackendError {
                message: "Overloaded".into(),
                recoverable: true
            })
        );
        // A message_delta that is not JSON still passes through; it only loses its stop_reason.
        assert_eq!(d.read(input("message_delta", "nope")), Action::Pass);
    }
}
