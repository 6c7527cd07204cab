//! Just enough HTTP/2 on a raw socket to test what the proxy does with a connection: the preface,
//! frames in and out, and a GET whose header block uses HPACK literals only.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame types.
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// One frame.
#[derive(Debug)]
pub struct RawFrame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// Encodes a frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A HEADERS frame for `GET path` that ends the stream: `:method GET` and `:scheme http` from the
/// static table, `:path` and `:authority` as literals without indexing.
pub fn get_request(stream: u32, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86];
    for (index, value) in [(0x04u8, path), (0x01u8, "localhost")] {
        block.push(index);
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    frame(HEADERS, END_STREAM | END_HEADERS, stream, &block)
}

/// Writes the preface and an empty SETTINGS frame.
pub async fn handshake(s: &mut TcpStream) -> std::io::Result<()> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&out).await
}

/// Reads one frame; `None` at the end of the connection (or on a reset).
pub async fn read_frame(s: &mut TcpStream) -> Option<RawFrame> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.ok()?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some(RawFrame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// Reads frames, acknowledging SETTINGS and PING, until `stop` holds for one (returned) or the
/// connection ends (`None`).
pub async fn read_until(s: &mut TcpStream, stop: impl Fn(&RawFrame) -> bool) -> Option<RawFrame> {
    loop {
        let f = read_frame(s).await?;
        if stop(&f) {
            return Some(f);
        }
        let ack = match f.kind {
            SETTINGS if f.flags & ACK == 0 => Some(frame(SETTINGS, ACK, 0, &[])),
            PING if f.flags & ACK == 0 => Some(frame(PING, ACK, 0, &f.payload)),
            _ => None,
        };
        if let Some(ack) = ack {
            // The server may already be closing; what it sends next is what the test looks at.
            let _ = s.write_all(&ack).await;
        }
    }
}
