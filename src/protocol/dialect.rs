//! Downstream dialects: how a route's stream is written for its clients (`[[stream]] emit`).
//!
//! The re-framer appends events in the proxy's own vocabulary (token batches, `progress`, `done`,
//! `error`, upstream metadata events); the log encodes each one once, when it is appended, with the
//! [`Encoder`] of the stream's dialect. `native` writes them as they are; `openai` writes OpenAI
//! `chat.completion.chunk`s ([`super::openai`]).

use super::{openai, ErrorCode};
use bytes::{Bytes, BytesMut};

/// Encodes one stream's events, each once, when it is appended to the stream's log.
pub trait Encoder: Send + 'static {
    /// The wire bytes of the event with seq `seq` of stream `stream_id`; `event` `None` is a
    /// `message` (a token batch from the re-framer).
    fn frame(&mut self, stream_id: &str, seq: u64, event: Option<&str>, data: &str) -> Bytes;
}

/// The dialect a route's stream responses are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// The proxy's own events (`PROTOCOL.md`).
    #[default]
    Native,
    /// OpenAI Chat Completions chunks, ended by `data: [DONE]`.
    #[serde(rename = "openai")]
    OpenAi,
}

/// The native encoder: events as the re-framer appends them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Native;

impl Encoder for Native {
    fn frame(&mut self, stream_id: &str, seq: u64, event: Option<&str>, data: &str) -> Bytes {
        super::encode_frame(stream_id, seq, event, data)
    }
}

impl Dialect {
    /// A fresh encoder for one stream answering with `model`.
    pub fn encoder(self, model: &str) -> Box<dyn Encoder> {
        match self {
            Dialect::Native => Box::new(Native),
            Dialect::OpenAi => Box::new(openai::Encoder::new(model)),
        }
    }

    /// The first bytes of a stream response: native sends `retry: {ms}`; openai nothing, since its
    /// clients' decoders turn a block without data into an event they cannot parse.
    pub fn preamble(self, retry_ms: u64) -> Bytes {
        match self {
            Dialect::Native => super::retry_preamble(retry_ms),
            Dialect::OpenAi => Bytes::new(),
        }
    }

    /// The heartbeat comment.
    pub fn heartbeat(self) -> Bytes {
        match self {
            Dialect::Native => Bytes::from_static(super::HEARTBEAT),
            Dialect::OpenAi => Bytes::from_static(openai::HEARTBEAT),
        }
    }

    /// An error of one connection rather than of the stream (no id).
    pub fn error_frame(self, code: ErrorCode) -> Bytes {
        match self {
            Dialect::Native => super::error_frame(code),
            Dialect::OpenAi => openai::error_frame(code),
        }
    }

    /// The stream's error event with seq `seq`, written without its encoder (by a replica that
    /// finds the stream's reader gone).
    pub fn error_event(self, stream_id: &str, seq: u64, code: ErrorCode) -> Bytes {
        let data = super::error(code);
        match self {
            Dialect::Native => super::encode_frame(stream_id, seq, Some(super::EVENT_ERROR), &data),
            Dialect::OpenAi => {
                let mut buf = BytesMut::new();
                openai::put_error(&mut buf, &data);
                openai::put_id(&mut buf, stream_id, seq);
                buf.freeze()
            }
        }
    }
}
