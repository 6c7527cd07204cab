//! sse-proxy: an SSE-aware reverse proxy that re-frames LLM token streams.
//!
//! Data flows one way: upstream bytes → [`sse`] parser → [`reframe`] (batcher, progress) →
//! [`log`] (ids assigned here) → [`connection`] cursors → browsers.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod admin;
pub mod app;
pub mod client_conn;
pub mod config;
pub mod connection;
pub mod demo;
pub mod handlers;
pub mod http_util;
pub mod identity;
pub mod ids;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod progress;
pub mod protocol;
pub mod query;
pub mod rate_limit;
pub mod reframe;
pub mod server;
pub mod settings;
pub mod sse;
pub mod store;
pub mod stream;
mod sync;
pub mod telemetry;
pub mod upstream;
