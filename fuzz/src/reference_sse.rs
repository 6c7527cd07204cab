//! A deliberately simple `text/event-stream` parser, written line by line from the WHATWG HTML
//! "event stream interpretation" algorithm (section 9.2.6), used as the oracle for
//! `sse_proxy::sse::Parser`.
//!
//! It takes the whole stream at once and does exactly what the spec text says, in its order:
//! decode the bytes as UTF-8 (which strips one leading BOM), cut the text into lines, process
//! each line, dispatch on a blank line, discard the unfinished event at the end. No chunking, no
//! zero-copy, no limits: if this and the real parser disagree, the real parser is wrong (or this
//! file does not say what the spec says, which a reader can check against the spec text quoted
//! in the comments).
//!
//! Two things are not spec steps but what the proxy exposes, and are marked as such: `retry`
//! values are kept as `u64` (a value too large for it is ignored), and `peak_event_bytes`
//! measures the real parser's documented memory bound.

/// One dispatched event, as the proxy's parser exposes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event type (`"message"` unless an `event` field set another).
    pub event: String,
    /// The data buffer without its last LF.
    pub data: String,
    /// The last event ID string at dispatch; `None` when it is the empty string.
    pub id: Option<String>,
}

/// Everything the stream produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Dispatched events, in order.
    pub events: Vec<Event>,
    /// The reconnection time set by the last valid `retry` field.
    pub retry: Option<u64>,
    /// Whether anything was discarded at the end: an unfinished line (comments too), or a data
    /// or event type buffer that was never dispatched.
    pub discarded: bool,
    /// Not a spec step: the largest value, at any point, of data buffer + event type buffer +
    /// the line being processed (comment lines excluded), in bytes of decoded UTF-8. The real
    /// parser promises to keep the bytes it holds for one event at most at its limit.
    pub peak_event_bytes: usize,
}

/// The parser's state: the three buffers of the spec and the reconnection time.
#[derive(Default)]
struct State {
    data: String,
    event_type: String,
    last_event_id: String,
    retry: Option<u64>,
    events: Vec<Event>,
    peak: usize,
}

/// Parses a complete stream.
pub fn parse(input: &[u8]) -> Outcome {
    // "Streams must be decoded using the UTF-8 decode algorithm." That algorithm replaces
    // invalid sequences with U+FFFD and removes one leading byte order mark.
    let decoded = String::from_utf8_lossy(input);
    let text = decoded.strip_prefix('\u{FEFF}').unwrap_or(&decoded);

    let (lines, unfinished) = split_lines(text);
    let mut state = State::default();
    for line in lines {
        state.measure(line);
        state.process_line(line);
        state.measure("");
    }
    if !unfinished.starts_with(':') {
        state.measure(unfinished);
    }

    // "Once the end of the file is reached, any pending data must be discarded."
    let discarded = !unfinished.is_empty() || !state.data.is_empty() || !state.event_type.is_empty();
    Outcome {
        events: state.events,
        retry: state.retry,
        discarded,
        peak_event_bytes: state.peak,
    }
}

/// Cuts the text into lines. "CRLF, a single LF not preceded by CR, and a single CR not followed
/// by LF" end a line. Returns the complete lines and the unfinished rest.
fn split_lines(text: &str) -> (Vec<&str>, &str) {
    let bytes = text.as_bytes();
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' {
            lines.push(&text[start..i]);
            if i + 1 < bytes.len() && bytes[i + 1] == b'\n' {
                i += 2;
            } else {
                i += 1;
            }
            start = i;
        } else if bytes[i] == b'\n' {
            lines.push(&text[start..i]);
            i += 1;
            start = i;
        } else {
            i += 1;
        }
    }
    (lines, &text[start..])
}

impl State {
    fn process_line(&mut self, line: &str) {
        if line.is_empty() {
            // "If the line is empty (a blank line): dispatch the event."
            self.dispatch();
        } else if line.starts_with(':') {
            // "If the line starts with a U+003A COLON character (:): ignore the line."
        } else if let Some(colon) = line.find(':') {
            // "Collect the characters on the line before the first colon, and let field be that
            // string. Collect the characters on the line after the first colon, and let value be
            // that string. If value starts with a U+0020 SPACE character, remove it from value."
            let field = &line[..colon];
            let mut value = &line[colon + 1..];
            if value.starts_with(' ') {
                value = &value[1..];
            }
            self.process_field(field, value);
        } else {
            // "Otherwise, the string is not empty but does not contain a colon: process the
            // field using the whole line as the field name, and the empty string as the value."
            self.process_field(line, "");
        }
    }

    /// "Field names must be compared literally, with no case folding performed."
    fn process_field(&mut self, field: &str, value: &str) {
        if field == "event" {
            // "Set the event type buffer to field value."
            self.event_type = value.to_string();
        } else if field == "data" {
            // "Append the field value to the data buffer, then append a single U+000A LINE
            // FEED (LF) character to the data buffer."
            self.data.push_str(value);
            self.data.push('\n');
        } else if field == "id" {
            // "If the field value does not contain U+0000 NULL, then set the last event ID
            // buffer to the field value. Otherwise, ignore the field."
            if !value.contains('\0') {
                self.last_event_id = value.to_string();
            }
        } else if field == "retry" {
            // "If the field value consists of only ASCII digits, then interpret the field value
            // as an integer in base ten, and set the event stream's reconnection time to that
            // integer. Otherwise, ignore the field."
            // Not a spec step: the proxy keeps a u64, so an empty value or one too large for a
            // u64 is ignored as well.
            let digits = value.chars().all(|c| c.is_ascii_digit());
            if digits && !value.is_empty() {
                if let Ok(n) = value.parse::<u64>() {
                    self.retry = Some(n);
                }
            }
        } else {
            // "Otherwise: the field is ignored."
        }
    }

    fn dispatch(&mut self) {
        // 1. "Set the last event ID string of the event source to the value of the last event
        // ID buffer. The buffer does not get reset."
        let last_event_id = self.last_event_id.clone();
        // 2. "If the data buffer is an empty string, set the data buffer and the event type
        // buffer to the empty string and return."
        if self.data.is_empty() {
            self.data = String::new();
            self.event_type = String::new();
            return;
        }
        // 3. "If the data buffer's last character is a U+000A LINE FEED (LF) character, then
        // remove the last character from the data buffer."
        let mut data = self.data.clone();
        if data.ends_with('\n') {
            data.pop();
        }
        // 5. "Initialize event's type attribute to "message", its data attribute to data, ...
        // and its lastEventId attribute to the last event ID string of the event source."
        // 6. "If the event type buffer has a value other than the empty string, change the type
        // of the newly created event to equal the value of the event type buffer."
        let mut event = Event {
            event: "message".to_string(),
            data,
            id: if last_event_id.is_empty() {
                None
            } else {
                Some(last_event_id)
            },
        };
        if !self.event_type.is_empty() {
            event.event = self.event_type.clone();
        }
        // 7. "Set the data buffer and the event type buffer to the empty string."
        self.data = String::new();
        self.event_type = String::new();
        // 8. "Queue a task ... to dispatch the newly created event."
        self.events.push(event);
    }

    /// Not a spec step: records the bytes held for the event being built plus `line`.
    fn measure(&mut self, line: &str) {
        if line.starts_with(':') {
            return;
        }
        let held = self.data.len() + self.event_type.len() + line.len();
        if held > self.peak {
            self.peak = held;
        }
    }
}
