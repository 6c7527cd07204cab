//! Ollama's native NDJSON: `/api/chat` text in `message.content`, `/api/generate` in `response`;
//! the object with `"done": true` ends, its statistics go into `done`.

use super::{field, Action, BackendError, Input, Terminal};
use crate::metrics::DroppedReason;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// The statistics of Ollama's last object that `done` carries.
const STATS: [&str; 7] = [
    "done_reason",
    "eval_count",
    "total_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_duration",
    "load_duration",
];

/// What an Ollama stream's last object said, for `done`.
#[derive(Debug, Default)]
pub struct Ollama {
    pub(super) kept: Map<String, Value>,
}

impl Ollama {
    pub(super) fn read<'a>(&mut self, i: Input<'a>) -> Action<'a> {
        let Ok(v) = serde_json::from_str::<Value>(i.data) else {
            return Action::Malformed("an NDJSON line that is not JSON");
        };
        if !v.is_object() {
            return Action::Malformed("an NDJSON line that is not a JSON object");
        }
        if let Some(e) = field(&v, "error") {
            let message = e.as_str().map_or_else(|| e.to_string(), str::to_string);
            return Action::Error(BackendError {
                message,
                recoverable: true,
            });
        }
        let text = v
            .get("message")
            .and_then(|m| m.get("content"))
            .or_else(|| v.get("response"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty());
        if v.get("done").and_then(Value::as_bool) == Some(true) {
            for name in STATS {
                if let Some(s) = field(&v, name) {
                    self.kept.insert(name.into(), s.clone());
                }
            }
            return Action::End(Terminal {
                token: text.map(str::to_string),
                pass: false,
            });
        }
        match text {
            Some(t) => Action::Token(Cow::Owned(t.to_string())),
            None => Action::Drop(DroppedReason::NoText),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::input;
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_and_generate_lines_and_the_done_statistics() {
        let mut d = Ollama::default();
        let chat =
            r#"{"model":"m","created_at":"t","message":{"role":"assistant","content":"Hé"},"done":false}"#;
        assert_eq!(d.read(input("", chat)), Action::Token("Hé".into()));
        let gen = r#"{"model":"m","response":" there","done":false}"#;
        assert_eq!(d.read(input("", gen)), Action::Token(" there".into()));
        let empty = r#"{"model":"m","response":"","done":false}"#;
        assert_eq!(d.read(input("", empty)), Action::Drop(DroppedReason::NoText));
        let done = r#"{"model":"m","message":{"role":"assistant","content":"!"},"done":true,"done_reason":"stop","total_duration":123,"eval_count":3,"context":[1,2]}"#;
        assert_eq!(
            d.read(input("", done)),
            Action::End(Terminal {
                token: Some("!".into()),
                pass: false
            })
        );
        assert_eq!(
            Value::Object(std::mem::take(&mut d.kept)),
            json!({"done_reason": "stop", "total_duration": 123, "eval_count": 3})
        );
    }

    #[test]
    fn malformed_lines_and_errors() {
        let mut d = Ollama::default();
        assert!(matches!(
            d.read(input("", "{\"response\":")),
            Action::Malformed(_)
        ));
        assert!(matches!(d.read(input("", "[1]")), Action::Malformed(_)));
        assert_eq!(
            d.read(input("", r#"{"model":"m"}"#)),
            Action::Drop(DroppedReason::NoText)
        );
        assert_eq!(
            d.read(input("", r#"{"error":"model 'x' not found"}"#)),
            Action::Error(BackendError {
                message: "model 'x' not found".into(),
                recoverable: true
            })
        );
        assert_eq!(
            d.read(input("", r#"{"response":5,"done":false}"#)),
            Action::Drop(DroppedReason::NoText)
        );
    }
}
