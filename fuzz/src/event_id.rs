//! `Last-Event-ID` parsing: never panics, accepts exactly what the proxy writes, and a valid id
//! survives a round trip.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sse_proxy::ids::STREAM_ID_LEN;
use sse_proxy::protocol::{EventId, EventIdError, MAX_EVENT_ID_LEN};

/// Parses `data` as a header value, and builds a valid id from its first 24 bytes.
pub fn check(data: &[u8]) {
    check_raw(data);
    if let (Some(stream), Some(seq)) = (data.get(..16), data.get(16..24)) {
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(seq);
        round_trip(stream, u64::from_le_bytes(seq_bytes));
    }
}

/// Any bytes: an error, or an id whose parts are exactly what was sent.
fn check_raw(raw: &[u8]) {
    match EventId::parse(raw) {
        Ok(id) => {
            let text = std::str::from_utf8(raw).expect("an accepted id is UTF-8");
            let (stream, seq) = text.split_once(':').expect("an accepted id has a ':'");
            assert_eq!(id.stream.to_string(), stream, "one spelling per stream id");
            assert_eq!(seq.parse::<u64>().ok(), Some(id.seq));
            assert!(raw.len() <= MAX_EVENT_ID_LEN);
            // What the proxy writes for this id is accepted as the same id.
            let written = format!("{}:{}", id.stream, id.seq);
            assert_eq!(EventId::parse(written.as_bytes()), Ok(id));
        }
        Err(EventIdError::TooLong) => assert!(raw.len() > MAX_EVENT_ID_LEN),
        Err(EventIdError::Shape) => {}
    }
}

/// A valid id, written as the proxy writes it (base64url without padding, decimal sequence).
fn round_trip(stream: &[u8], seq: u64) {
    let encoded = URL_SAFE_NO_PAD.encode(stream);
    assert_eq!(encoded.len(), STREAM_ID_LEN);
    let text = format!("{encoded}:{seq}");
    let id = EventId::parse(text.as_bytes()).expect("a valid id is accepted");
    assert_eq!(id.seq, seq);
    assert_eq!(id.stream.to_string(), encoded);
    assert_eq!(format!("{}:{}", id.stream, id.seq), text);
}
