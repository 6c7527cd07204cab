//! Stream ids (128 random bits, base64url) and `Last-Event-ID` values (`<stream_id>:<seq>`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::fmt;

/// A stream's id: 128 random bits, written as 22 base64url characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId([u8; 16]);

/// Length of a stream id's text form.
pub const STREAM_ID_LEN: usize = 22;

impl StreamId {
    /// A new random id from the OS generator.
    pub fn random() -> Self {
        StreamId(rand::random())
    }

    /// Parses the 22-character text form.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != STREAM_ID_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        let arr: [u8; 16] = bytes.try_into().ok()?;
        // Reject non-canonical encodings (stray low bits in the last char) so one id has one spelling.
        let id = StreamId(arr);
        (id.to_string() == s).then_some(id)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; STREAM_ID_LEN];
        let n = URL_SAFE_NO_PAD
            .encode_slice(self.0, &mut buf)
            .map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_round_trips() {
        for _ in 0..100 {
            let id = StreamId::random();
            let s = id.to_string();
            assert_eq!(s.len(), STREAM_ID_LEN);
            assert!(s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(StreamId::parse(&s), Some(id));
        }
        assert_ne!(StreamId::random(), StreamId::random());
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
