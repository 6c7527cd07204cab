//! Stream ids: 128 random bits, written as base64url (event ids built on them are in `protocol`).

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
}
