//! Server-Sent Events: an incremental upstream parser and a downstream frame encoder.
//!
//! [`parse`] follows the WHATWG HTML "event stream interpretation" rules; [`write`] produces
//! frames that any conforming client (and [`parse::Parser`]) reads back unchanged.

pub mod parse;
pub mod write;

#[cfg(test)]
mod tests;

pub use parse::{Event, ParseError, Parser, Text};
pub use write::{encode_comment, encode_event, encode_fields, encode_retry};
