//! OpenAI Chat Completions and legacy Completions SSE: text in `choices[0].delta.content` or
//! `choices[0].text`, `data: [DONE]` at the end, `{"error": ...}` for a failure.

use super::{backend_error, field, Action, Input, Terminal};
use crate::metrics::DroppedReason;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// What an OpenAI stream sent besides text, for `done`.
#[derive(Debug, Default)]
pub struct OpenAi {
    finish_reason: Option<Value>,
    usage: Option<Value>,
    tool_calls: Vec<Value>,
}

impl OpenAi {
    pub(super) fn read<'a>(&mut self, i: Input<'a>) -> Action<'a> {
        if i.data.trim() == "[DONE]" {
            return Action::End(Terminal::default());
        }
        if i.event == "error" {
            return Action::Error(backend_error(i.data));
        }
        let Ok(v) = serde_json::from_str::<Value>(i.data) else {
            return Action::Malformed("an OpenAI chunk that is not JSON");
        };
        if field(&v, "error").is_some() {
            return Action::Error(backend_error(i.data));
        }
        if let Some(usage) = field(&v, "usage") {
            self.usage = Some(usage.clone());
        }
        let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
            // A usage-only chunk, or one this format does not know: nothing to send.
            return Action::Drop(DroppedReason::NoText);
        };
        if let Some(reason) = field(choice, "finish_reason") {
            self.finish_reason = Some(reason.clone());
        }
        let delta = choice.get("delta");
        if let Some(calls) = delta.and_then(|d| d.get("tool_calls")).and_then(Value::as_array) {
            self.tool_calls.extend(calls.iter().cloned());
        }
        let text = delta
            .and_then(|d| d.get("content"))
            .or_else(|| choice.get("text"))
            .and_then(Value::as_str);
        match text {
            Some(t) if !t.is_empty() => Action::Token(Cow::Owned(t.to_string())),
            _ => Action::Drop(DroppedReason::NoText),
        }
    }

    pub(super) fn done_fields(&mut self) -> Map<String, Value> {
        let mut out = Map::new();
        if let Some(r) = self.finish_reason.take() {
            out.insert("finish_reason".into(), r);
        }
        if let Some(u) = self.usage.take() {
            out.insert("usage".into(), u);
        }
        if !self.tool_calls.is_empty() {
            out.insert("tool_calls".into(), std::mem::take(&mut self.tool_calls).into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::{input, BackendError, Dialect};
    use super::*;
    use serde_json::json;

    fn read(d: &mut OpenAi, data: &'static str) -> Action<'static> {
        d.read(input("message", data))
    }

    #[test]
    fn chat_chunks_role_finish_reason_usage_and_done() {
        let mut d = OpenAi::default();
        let role = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
        assert_eq!(read(&mut d, role), Action::Drop(DroppedReason::NoText));
        let text = r#"{"choices":[{"index":0,"delta":{"content":"Hé \"x\"\n"},"finish_reason":null}]}"#;
        assert_eq!(read(&mut d, text), Action::Token("Hé \"x\"\n".into()));
        let fin = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        assert_eq!(read(&mut d, fin), Action::Drop(DroppedReason::NoText));
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        assert_eq!(read(&mut d, usage), Action::Drop(DroppedReason::NoText));
        assert_eq!(read(&mut d, "[DONE]"), Action::End(Terminal::default()));
        let mut dialect = Dialect::OpenAi(d);
        assert_eq!(
            Value::Object(dialect.done_fields()),
            json!({"finish_reason": "stop", "usage": {"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}})
        );
    }

    #[test]
    fn legacy_completions_and_tool_calls() {
        let mut d = OpenAi::default();
        assert_eq!(
            read(
                &mut d,
                r#"{"choices":[{"text":"abc","index":0,"finish_reason":null}]}"#
            ),
            Action::Token("abc".into())
        );
        let call = r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}"#;
        assert_eq!(read(&mut d, call), Action::Drop(DroppedReason::NoText));
        assert_eq!(
            Value::Object(d.done_fields()),
            json!({"tool_calls": [{"index":0,"function":{"arguments":"{"}}]})
        );
    }

    #[test]
    fn malformed_chunks_and_errors() {
        let mut d = OpenAi::default();
        assert!(matches!(read(&mut d, "{not json"), Action::Malformed(_)));
        // Missing fields: not text, not an error.
        assert_eq!(read(&mut d, r#"{"id":"x"}"#), Action::Drop(DroppedReason::NoText));
        assert_eq!(
            read(&mut d, r#"{"choices":[{"delta":{"content":5}}]}"#),
            Action::Drop(DroppedReason::NoText)
        );
        assert_eq!(
            read(
                &mut d,
                r#"{"error":{"message":"context length exceeded","type":"invalid_request_error"}}"#
            ),
            Action::Error(BackendError {
                message: "context length exceeded".into(),
                recoverable: true
            })
        );
        assert_eq!(
            d.read(input("error", r#"{"error":"overloaded"}"#)),
            Action::Error(BackendError {
                message: "overloaded".into(),
                recoverable: true
            })
        );
        assert_eq!(
            read(&mut d, r#"{"error":null,"choices":[{"text":"t"}]}"#),
            Action::Token("t".into())
        );
    }
}
