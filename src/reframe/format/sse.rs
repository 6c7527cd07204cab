//! Generic SSE: tokens in `token_event` (at `token_path`), ends at `terminal_events` or a
//! `terminal_data` value, the backend's own errors in `error_events`.

use super::{backend_error, Action, Input, Terminal};
use crate::metrics::DroppedReason;
use crate::protocol::EVENT_DONE;
use crate::reframe::{token, RouteSettings};
use serde_json::{Map, Value};
use std::sync::Arc;

/// A generic SSE stream's rules, and the fields its own `done` brought.
#[derive(Debug)]
pub struct Sse {
    route: Arc<RouteSettings>,
    pub(super) kept: Map<String, Value>,
}

impl Sse {
    pub(super) fn new(route: Arc<RouteSettings>) -> Sse {
        Sse {
            route,
            kept: Map::new(),
        }
    }

    pub(super) fn read<'a>(&mut self, i: Input<'a>) -> Action<'a> {
        let r = &*self.route;
        if r.terminal_data.iter().any(|d| d == i.data) {
            return Action::End(Terminal::default());
        }
        if i.event == r.token_event {
            if let Some(tok) = token::extract(i.data, r.token_path.as_ref()) {
                if tok.is_empty() && r.skip_empty_tokens {
                    return Action::Drop(DroppedReason::EmptyToken);
                }
                return Action::Token(tok);
            }
            tracing::debug!("token event without token text; passed through");
        }
        if r.error_events.iter().any(|e| e == i.event) {
            return Action::Error(backend_error(i.data));
        }
        if !r.terminal_events.iter().any(|t| t == i.event) {
            return Action::Pass;
        }
        if i.event != EVENT_DONE {
            return Action::End(Terminal {
                token: None,
                pass: true,
            });
        }
        // The upstream's `done` becomes the proxy's: one `done`, its fields and `total_tokens`.
        match serde_json::from_str(i.data) {
            Ok(Value::Object(fields)) => self.kept = fields,
            _ if i.data.is_empty() => {}
            _ => {
                self.kept.insert("data".into(), i.data.into());
            }
        }
        Action::End(Terminal::default())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{input, BackendError, Dialect};
    use super::*;
    use crate::config::UpstreamFormat;
    use std::borrow::Cow;

    fn route(edit: impl FnOnce(&mut RouteSettings)) -> Dialect {
        let mut r = RouteSettings::for_test();
        r.token_path = Some(token::Pointer::parse("/content"));
        edit(&mut r);
        assert_eq!(r.format, UpstreamFormat::Sse);
        Dialect::new(&Arc::new(r))
    }

    #[test]
    fn tokens_metadata_and_the_upstream_done_merged() {
        let mut d = route(|_| {});
        assert_eq!(
            d.read(input("message", r#"{"content":"hi"}"#)),
            Action::Token(Cow::Borrowed("hi"))
        );
        assert_eq!(d.read(input("thinking", "{}")), Action::Pass);
        // A token event without token text passes through, as before.
        assert_eq!(d.read(input("message", "not json")), Action::Pass);
        assert_eq!(
            d.read(input("message", r#"{"content":""}"#)),
            Action::Token("".into())
        );
        assert_eq!(
            d.read(input("done", r#"{"status":"complete"}"#)),
            Action::End(Terminal::default())
        );
        assert_eq!(
            Value::Object(d.done_fields()),
            serde_json::json!({"status": "complete"})
        );
        assert_eq!(d.read(input("done", "bye")), Action::End(Terminal::default()));
        assert_eq!(Value::Object(d.done_fields()), serde_json::json!({"data": "bye"}));
    }

    #[test]
    fn terminal_data_other_terminals_errors_and_empty_tokens() {
        let mut d = route(|r| {
            r.terminal_data = vec!["[DONE]".into()];
            r.terminal_events = vec!["end".into()];
            r.skip_empty_tokens = true;
        });
        assert_eq!(
            d.read(input("message", r#"{"content":""}"#)),
            Action::Drop(DroppedReason::EmptyToken)
        );
        assert_eq!(
            d.read(input("message", "[DONE]")),
            Action::End(Terminal::default())
        );
        assert_eq!(
            d.read(input("end", "{}")),
            Action::End(Terminal {
                token: None,
                pass: true
            })
        );
        assert_eq!(
            d.read(input("error", r#"{"message":"boom","recoverable":false}"#)),
            Action::Error(BackendError {
                message: "boom".into(),
                recoverable: false
            })
        );
        let mut none = route(|r| r.error_events.clear());
        assert_eq!(none.read(input("error", "{}")), Action::Pass);
    }
}
