//! Event ids: `<stream_id>:<seq>`, written on every logged event and read back from `Last-Event-ID`.

use crate::ids::{StreamId, STREAM_ID_LEN};
use bytes::{BufMut, BytesMut};
use std::fmt::Write as _;

/// A parsed `Last-Event-ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventId {
    /// The stream.
    pub stream: StreamId,
    /// The last event the client has.
    pub seq: u64,
}

/// Longest `Last-Event-ID` accepted (22 + 1 + 20 digits).
pub const MAX_EVENT_ID_LEN: usize = STREAM_ID_LEN + 1 + 20;

/// Why a `Last-Event-ID` was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventIdError {
    /// Longer than any valid id.
    #[error("Last-Event-ID is longer than {MAX_EVENT_ID_LEN} bytes")]
    TooLong,
    /// Not `<22 base64url chars>:<decimal seq>`.
    #[error("Last-Event-ID must look like <stream_id>:<seq>, as sent in the `id:` field")]
    Shape,
}

impl EventId {
    /// Parses `<stream_id>:<seq>` from raw header or query bytes.
    pub fn parse(raw: &[u8]) -> Result<EventId, EventIdError> {
        if raw.len() > MAX_EVENT_ID_LEN {
            return Err(EventIdError::TooLong);
        }
        let s = std::str::from_utf8(raw).map_err(|_| EventIdError::Shape)?;
        let (sid, seq) = s.split_once(':').ok_or(EventIdError::Shape)?;
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(EventIdError::Shape);
        }
        let seq = seq.parse().map_err(|_| EventIdError::Shape)?;
        let stream = StreamId::parse(sid).ok_or(EventIdError::Shape)?;
        Ok(EventId { stream, seq })
    }
}

/// Writes the `id: {stream_id}:{seq}` line. `stream_id` is a [`StreamId`]'s text (base64url), so it
/// needs no stripping.
pub(super) fn put(buf: &mut BytesMut, stream_id: &str, seq: u64) {
    buf.put_slice(b"id: ");
    buf.put_slice(stream_id.as_bytes());
    // Writing an integer into BytesMut cannot fail.
    let _ = writeln!(buf, ":{seq}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_ids_parse_back() {
        let id = StreamId::random();
        let mut buf = BytesMut::new();
        put(&mut buf, &id.to_string(), 42);
        assert_eq!(&buf[..], format!("id: {id}:42\n").as_bytes());
        let value = buf.strip_prefix(b"id: ").and_then(|v| v.strip_suffix(b"\n"));
        assert_eq!(
            EventId::parse(value.unwrap_or_default()),
            Ok(EventId { stream: id, seq: 42 })
        );
    }

    #[test]
    fn event_id_parse() {
        let id = StreamId::random();
        let ok = EventId::parse(format!("{id}:42").as_bytes()).expect("valid");
        assert_eq!(ok, EventId { stream: id, seq: 42 });
        for bad in [
            String::new(),
            "x".into(),
            format!("{id}"),
            format!("{id}:"),
            format!("{id}:-1"),
            format!("{id}:+1"),
            format!("{id}:1a"),
            format!("{id}x:1"),
            format!("{id}:99999999999999999999"),
            "AAAAAAAAAAAAAAAAAAAAAB:1".into(),
        ] {
            assert!(EventId::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(EventId::parse(&[b'a'; 1000]), Err(EventIdError::TooLong));
        assert_eq!(
            EventId::parse(&[0xff, 0xfe, b':', b'1']),
            Err(EventIdError::Shape)
        );
    }
}
