//! Incremental, sans-IO parser for `text/event-stream` bodies.
//!
//! Implements the WHATWG HTML "event stream interpretation" rules: CRLF / LF / CR line ends
//! (also when split between chunks), one leading BOM stripped, `:` comments, the `data`,
//! `event`, `id` and `retry` fields, dispatch on a blank line, and an unfinished event at end
//! of stream discarded. Bytes are decoded as UTF-8 with replacement one completed line at a
//! time, so chunk boundaries never change the result.
//!
//! Memory bound: the bytes held for the event being built (data buffer + event type + the
//! current unfinished line) never exceed `max_event_bytes`; [`ParseError::EventTooLarge`] is
//! returned instead. Comment lines are the exception by design: they are discarded as they
//! arrive without being buffered, so a long (or endless) comment costs no memory and is not
//! an error. The `id` buffer is bounded by the same check, because it comes from one line.

use std::collections::VecDeque;
use std::fmt;

use bytes::{Bytes, BytesMut};

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];
const MESSAGE: &str = "message";

/// Bytes guaranteed to be valid UTF-8 (cheap clone, zero-copy slices of the input where possible).
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text(Bytes);

impl Text {
    /// Wraps a static string without copying.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// Decodes `bytes` as UTF-8, replacing invalid sequences with U+FFFD (zero-copy when valid).
    pub fn from_utf8_lossy(bytes: Bytes) -> Self {
        match String::from_utf8_lossy(&bytes) {
            std::borrow::Cow::Borrowed(_) => Self(bytes),
            std::borrow::Cow::Owned(fixed) => Self(Bytes::from(fixed)),
        }
    }

    /// The text as a string slice (re-validates the bytes: O(len), no allocation).
    pub fn as_str(&self) -> &str {
        // Without `unsafe` a `&str` over `Bytes` needs a validation pass; every constructor
        // guarantees UTF-8, so the fallback is unreachable and only avoids a panic path.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Consumes the text, returning the underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<Text> for &str {
    fn eq(&self, other: &Text) -> bool {
        other.0 == self.as_bytes()
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Self {
        Self::from_static(s)
    }
}

impl TryFrom<Bytes> for Text {
    type Error = std::str::Utf8Error;

    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Self(bytes))
    }
}

impl From<Text> for Bytes {
    fn from(t: Text) -> Self {
        t.0
    }
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Event type; `"message"` when the `event` field was absent or empty.
    pub event: Text,
    /// Data lines joined with LF (no trailing LF).
    pub data: Text,
    /// The last-event-id buffer at dispatch time; `None` when empty.
    pub id: Option<Text>,
}

/// Parser failure; the parser is poisoned afterwards.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ParseError {
    /// The event being built (data + event type + current line) exceeded the configured limit.
    #[error("upstream event larger than {limit} bytes")]
    EventTooLarge {
        /// The configured `max_event_bytes`.
        limit: usize,
    },
}

/// The data buffer, shaped so that the common single-line event stays a slice of its chunk.
#[derive(Debug, Default)]
enum DataBuf {
    /// No `data` field seen since the last dispatch (spec: data buffer is empty).
    #[default]
    Empty,
    /// Exactly one `data` line (spec buffer is this value + LF).
    One(Text),
    /// Several lines already joined with LF (valid UTF-8 by construction).
    Many(BytesMut),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bom {
    /// At stream start; this many leading bytes matched the BOM so far and are held back.
    Pending(usize),
    Done,
}

/// Incremental SSE parser (sans-IO: feed chunks, pull events).
#[derive(Debug)]
pub struct Parser {
    limit: usize,
    bom: Bom,
    /// The previous chunk ended in CR, so a leading LF in the next one belongs to that line end.
    after_cr: bool,
    /// Bytes of an unfinished line that started in an earlier chunk.
    partial: BytesMut,
    /// The unfinished line is a comment: its bytes are dropped instead of buffered.
    in_comment: bool,
    data: DataBuf,
    /// Length of the spec data buffer (every line's value + LF, after UTF-8 repair).
    data_len: usize,
    event_type: Option<Text>,
    last_event_id: Option<Text>,
    retry: Option<u64>,
    queue: VecDeque<Event>,
    poisoned: Option<ParseError>,
}

impl Parser {
    /// `max_event_bytes`: upper bound on one event (data buffer + event name + the current unfinished line).
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            limit: max_event_bytes,
            bom: Bom::Pending(0),
            after_cr: false,
            partial: BytesMut::new(),
            in_comment: false,
            data: DataBuf::Empty,
            data_len: 0,
            event_type: None,
            last_event_id: None,
            retry: None,
            queue: VecDeque::new(),
            poisoned: None,
        }
    }

    /// Feeds one chunk (any boundary: inside CRLF, inside a multi-byte UTF-8 char, inside the BOM).
    ///
    /// Completed events are queued; returns `Err(ParseError::EventTooLarge { limit })` once the
    /// limit is exceeded (the parser is then poisoned: every later call returns the same error;
    /// events completed before the error stay available from [`Parser::next_event`]).
    pub fn feed(&mut self, chunk: Bytes) -> Result<(), ParseError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        let result = self.feed_inner(chunk);
        if let Err(err) = &result {
            self.poisoned = Some(err.clone());
            // Free the buffered event right away: the stream is dead.
            self.partial = BytesMut::new();
            self.data = DataBuf::Empty;
            self.data_len = 0;
            self.event_type = None;
        }
        result
    }

    /// Next completed event, in order.
    pub fn next_event(&mut self) -> Option<Event> {
        self.queue.pop_front()
    }

    /// End of stream: an unfinished event is discarded (per spec). Returns whether bytes were discarded (for logging).
    ///
    /// "Discarded" means an unfinished line (comments included) or an event with pending
    /// `data`/`event` fields. Afterwards the parser reads a new stream (BOM stripping included),
    /// keeping the last event ID and retry, like an `EventSource` reconnection.
    pub fn finish(&mut self) -> bool {
        let discarded = !self.partial.is_empty()
            || self.in_comment
            || matches!(self.bom, Bom::Pending(n) if n > 0)
            || !matches!(self.data, DataBuf::Empty)
            || self.event_type.is_some();
        self.bom = Bom::Pending(0);
        self.after_cr = false;
        self.partial.clear();
        self.in_comment = false;
        self.data = DataBuf::Empty;
        self.data_len = 0;
        self.event_type = None;
        discarded
    }

    /// Last `retry:` value seen (ms), if any. (The proxy drops upstream retry but may log it.)
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Bytes held for the current event and unfinished line (test hook for the memory bound).
    #[cfg(test)]
    pub(super) fn buffered_len(&self) -> usize {
        self.pending_len() + self.partial.len()
    }

    fn feed_inner(&mut self, chunk: Bytes) -> Result<(), ParseError> {
        let Some(chunk) = self.strip_bom(chunk) else {
            return Ok(());
        };
        if chunk.is_empty() {
            return Ok(());
        }
        let bytes: &[u8] = &chunk;
        let mut pos = 0;
        if self.after_cr {
            self.after_cr = false;
            if bytes.first() == Some(&b'\n') {
                pos = 1;
            }
        }
        while let Some(off) = bytes
            .get(pos..)
            .and_then(|rest| memchr::memchr2(b'\n', b'\r', rest))
        {
            let end = pos + off;
            let next = if bytes[end] == b'\r' {
                match bytes.get(end + 1) {
                    Some(b'\n') => end + 2,
                    Some(_) => end + 1,
                    None => {
                        self.after_cr = true;
                        end + 1
                    }
                }
            } else {
                end + 1
            };
            self.complete_line(&chunk, pos, end)?;
            pos = next;
        }
        self.buffer_partial(bytes.get(pos..).unwrap_or_default())
    }

    /// Strips a leading BOM, possibly split across chunks. Returns the bytes left to parse,
    /// or `None` when the whole chunk is (so far) a BOM prefix being held back.
    fn strip_bom(&mut self, chunk: Bytes) -> Option<Bytes> {
        let Bom::Pending(held) = self.bom else {
            return Some(chunk);
        };
        let mut matched = held;
        let mut used = 0;
        for &b in chunk.iter() {
            if BOM.get(matched) != Some(&b) {
                break;
            }
            matched += 1;
            used += 1;
            if matched == BOM.len() {
                self.bom = Bom::Done;
                return Some(chunk.slice(used..));
            }
        }
        if used == chunk.len() {
            self.bom = Bom::Pending(matched);
            return None;
        }
        self.bom = Bom::Done;
        if held == 0 {
            return Some(chunk);
        }
        // A BOM prefix held from earlier chunks turned out not to be a BOM: it is line content.
        let mut joined = BytesMut::with_capacity(held + chunk.len());
        joined.extend_from_slice(&BOM[..held]);
        joined.extend_from_slice(&chunk);
        Some(joined.freeze())
    }

    /// Bytes currently held for the event being built.
    fn pending_len(&self) -> usize {
        self.data_len + self.event_type.as_ref().map_or(0, Text::len)
    }

    fn too_large(&self, line_len: usize) -> Result<(), ParseError> {
        if self.pending_len().saturating_add(line_len) > self.limit {
            Err(ParseError::EventTooLarge { limit: self.limit })
        } else {
            Ok(())
        }
    }

    fn buffer_partial(&mut self, seg: &[u8]) -> Result<(), ParseError> {
        if seg.is_empty() || self.in_comment {
            return Ok(());
        }
        if self.partial.is_empty() && seg.first() == Some(&b':') {
            self.in_comment = true;
            return Ok(());
        }
        self.too_large(self.partial.len() + seg.len())?;
        self.partial.extend_from_slice(seg);
        Ok(())
    }

    fn complete_line(&mut self, chunk: &Bytes, start: usize, end: usize) -> Result<(), ParseError> {
        if self.in_comment {
            self.in_comment = false;
            return Ok(());
        }
        let line = if self.partial.is_empty() {
            chunk.slice(start..end)
        } else {
            let seg = chunk.get(start..end).unwrap_or_default();
            self.too_large(self.partial.len() + seg.len())?;
            self.partial.extend_from_slice(seg);
            self.partial.split().freeze()
        };
        self.process_line(line)
    }

    fn process_line(&mut self, line: Bytes) -> Result<(), ParseError> {
        let (field, value) = match memchr::memchr(b':', &line) {
            None if line.is_empty() => {
                self.dispatch();
                return Ok(());
            }
            Some(0) => return Ok(()),
            None => (&line[..], Bytes::new()),
            Some(colon) => {
                let skip = if line.get(colon + 1) == Some(&b' ') { 2 } else { 1 };
                (&line[..colon], line.slice(colon + skip..))
            }
        };
        self.too_large(line.len())?;
        match field {
            b"data" => self.push_data(value),
            b"event" => {
                let value = Text::from_utf8_lossy(value);
                self.event_type = (!value.is_empty()).then_some(value);
            }
            b"id" => self.set_last_event_id(value),
            b"retry" => self.retry = parse_retry(&value).or(self.retry),
            _ => {}
        }
        // UTF-8 repair can grow a value (1 invalid byte -> 3-byte U+FFFD), so check again.
        self.too_large(0)
    }

    fn set_last_event_id(&mut self, value: Bytes) {
        if memchr::memchr(0, &value).is_none() {
            let value = Text::from_utf8_lossy(value);
            self.last_event_id = (!value.is_empty()).then_some(value);
        }
    }

    fn push_data(&mut self, value: Bytes) {
        let value = Text::from_utf8_lossy(value);
        self.data_len += value.len() + 1;
        self.data = match std::mem::take(&mut self.data) {
            DataBuf::Empty => DataBuf::One(value),
            DataBuf::One(first) => {
                let mut buf = BytesMut::with_capacity(first.len() + 1 + value.len());
                buf.extend_from_slice(first.as_bytes());
                buf.extend_from_slice(b"\n");
                buf.extend_from_slice(value.as_bytes());
                DataBuf::Many(buf)
            }
            DataBuf::Many(mut buf) => {
                buf.extend_from_slice(b"\n");
                buf.extend_from_slice(value.as_bytes());
                DataBuf::Many(buf)
            }
        };
    }

    fn dispatch(&mut self) {
        let event_type = self.event_type.take();
        self.data_len = 0;
        let data = match std::mem::take(&mut self.data) {
            DataBuf::Empty => return,
            DataBuf::One(text) => text,
            // Every piece appended to `buf` came from a `Text`, so it is valid UTF-8.
            DataBuf::Many(buf) => Text(buf.freeze()),
        };
        self.queue.push_back(Event {
            event: event_type.unwrap_or(Text::from_static(MESSAGE)),
            data,
            id: self.last_event_id.clone(),
        });
    }
}

/// Spec: a `retry` value of ASCII digits only; empty values and values overflowing u64 are ignored.
fn parse_retry(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}
