//! The shape of a stream response as the strictest third-party clients read it.
//!
//! `httpx-sse` (and the `openai` SDKs' decoders derived from it) dispatch an event at every blank
//! line once any field, or any id earlier, was read; `@microsoft/fetch-event-source` records an
//! event's id as soon as it reads the `id:` line. So a response they read without empty events
//! and without skipping an event cut off mid-way has blank lines only where an event with data
//! ends, and the `id:` line last in every event.

/// Asserts that `raw` (a whole or cut-off response body) has that shape: every blank line ends an
/// event with a `data:` line, an event's `id:` is its last field, and the `retry:` line (if
/// `retry`) is a field of the first event, not a block of its own. Comments are single lines.
pub fn assert_every_client_reads(raw: &[u8], retry: Option<u64>) {
    let text = String::from_utf8_lossy(raw);
    let mut fields: Vec<&str> = Vec::new();
    let mut events = 0;
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        if lines.peek().is_none() {
            // After the last line end: an unfinished line (a cut body), never dispatched.
            break;
        }
        assert!(!line.contains('\r'), "a CR in {line:?}: {text:?}");
        if line.is_empty() {
            assert!(
                fields.contains(&"data"),
                "a blank line after {fields:?} dispatches an event without data: {text:?}"
            );
            if let Some(i) = fields.iter().position(|f| *f == "id") {
                assert_eq!(
                    i,
                    fields.len() - 1,
                    "id is not the last field: {fields:?} in {text:?}"
                );
            }
            if events == 0 {
                if let Some(ms) = retry {
                    assert_eq!(
                        fields[0], "retry",
                        "the first event does not carry retry: {text:?}"
                    );
                    assert!(
                        text.starts_with(&format!("retry: {ms}\n")),
                        "the body does not start with retry: {ms}: {text:?}"
                    );
                }
            }
            events += 1;
            fields.clear();
        } else if !line.starts_with(':') {
            fields.push(line.split(':').next().unwrap_or(line));
        }
    }
    // What follows the last event can only be a `retry:` line (a hand-off) or a partial event.
    assert!(
        !fields.contains(&"id") || fields.last() == Some(&"id"),
        "id is not the last field of the unfinished event {fields:?}: {text:?}"
    );
}
