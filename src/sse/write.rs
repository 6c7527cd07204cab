//! Encoding of downstream SSE frames (encode once, share the resulting `Bytes`).
//!
//! Every event is self-contained and ends with a blank line, its `id:` field last, after `event:`
//! and `data:`: a client that records the id as soon as it reads the line (not at dispatch, as
//! the spec has it) then loses no event cut off mid-way. Comments and `retry:` are one line with
//! no blank line after it, so no client reads them as an empty event. No caller-provided string can put
//! a raw CR or LF on the wire: data is split into one `data:` line per line, and CR/LF are
//! stripped from ids, event names and comments (NUL too from ids, since a client ignores an
//! `id` field containing NUL).

use bytes::{BufMut, BytesMut};

/// Appends one event: `event: {name}\n` unless name is None or "message", one `data: ` line per line of data (split on \n, \r\n and \r so that no raw CR/LF reaches the wire), `id: {id}\n` if Some, then a blank line.
///
/// CR/LF (and, in `id`, NUL) are stripped from `id` and `event`; an event name that is empty
/// after stripping is omitted, which a client reads as `message` anyway.
pub fn encode_event(buf: &mut BytesMut, id: Option<&str>, event: Option<&str>, data: &str) {
    let id_len = id.map_or(0, |id| id.len() + 5);
    let event_len = event.map_or(0, |e| e.len() + 8);
    // Exact for single-line data; each extra line costs 7 more bytes and may regrow once.
    buf.reserve(id_len + event_len + data.len() + 8);

    encode_fields(buf, event, data);
    if let Some(id) = id {
        buf.put_slice(b"id: ");
        put_stripped(buf, id.as_bytes(), true);
        buf.put_u8(b'\n');
    }
    buf.put_u8(b'\n');
}

/// Appends the `event:` and `data:` lines of an event (as [`encode_event`]) without its end: the
/// caller adds an `id:` line if any, then the blank line.
pub fn encode_fields(buf: &mut BytesMut, event: Option<&str>, data: &str) {
    if let Some(event) = event.filter(|e| !is_default_type(e)) {
        buf.put_slice(b"event: ");
        put_stripped(buf, event.as_bytes(), false);
        buf.put_u8(b'\n');
    }

    let bytes = data.as_bytes();
    let mut start = 0;
    for end in memchr::memchr2_iter(b'\n', b'\r', bytes) {
        if end < start {
            // The LF of a CRLF pair, already consumed with its CR.
            continue;
        }
        put_data_line(buf, &bytes[start..end]);
        start = end + 1;
        if bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n') {
            start += 1;
        }
    }
    put_data_line(buf, &bytes[start..]);
}

/// A comment line `: {text}\n` (CR and LF in `text` are stripped), with no blank line after it.
pub fn encode_comment(buf: &mut BytesMut, text: &str) {
    buf.reserve(text.len() + 4);
    buf.put_slice(b": ");
    put_stripped(buf, text.as_bytes(), false);
    buf.put_u8(b'\n');
}

/// The line `retry: {ms}\n`, with no blank line after it: it belongs to the event that follows
/// (a client applies it as soon as it reads the line), or to none if the body ends there.
pub fn encode_retry(buf: &mut BytesMut, ms: u64) {
    // u64::MAX has 20 decimal digits.
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = ms;
    loop {
        i -= 1;
        // `n % 10 < 10`, so the narrowing is lossless.
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.reserve(9 + digits.len() - i);
    buf.put_slice(b"retry: ");
    buf.put_slice(&digits[i..]);
    buf.put_u8(b'\n');
}

/// Whether `event` needs no `event:` line: a client defaults an absent or empty type to `message`.
fn is_default_type(event: &str) -> bool {
    event == "message" || event.bytes().all(|b| b == b'\r' || b == b'\n')
}

fn put_data_line(buf: &mut BytesMut, line: &[u8]) {
    buf.put_slice(b"data: ");
    buf.put_slice(line);
    buf.put_u8(b'\n');
}

/// Appends `s` without CR and LF (and without NUL when `strip_nul`).
fn put_stripped(buf: &mut BytesMut, s: &[u8], strip_nul: bool) {
    // A NUL needle of LF again turns memchr3 into "CR or LF" without a second code path.
    let third = if strip_nul { 0 } else { b'\n' };
    let mut start = 0;
    for end in memchr::memchr3_iter(b'\r', b'\n', third, s) {
        buf.put_slice(&s[start..end]);
        start = end + 1;
    }
    buf.put_slice(&s[start..]);
}
