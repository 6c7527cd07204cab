//! sse-proxy: an SSE-aware reverse proxy that re-frames LLM token streams.
//!
//! Data flows one way: upstream bytes → [`sse`] parser → [`reframe`] (batcher, progress) →
//! `log` (ids assigned here) → `connection` cursors → browsers.
//!
//! The public surface is what the binary, the integration tests, the benchmarks and the fuzz targets
//! use: building and running a proxy ([`config`] → [`settings`] → [`server`], with [`metrics`] and
//! [`telemetry`]; [`app`] and [`stream`] to look inside a running one; [`admin`]'s limits; [`demo`]'s
//! synthetic model), the wire format ([`protocol`], [`ids`], [`query`]), the pieces fuzzed or
//! benchmarked alone ([`sse`] parser, [`reframe`]'s batcher), and the [`store`] interface with its
//! contract suite, which a store outside this crate must pass. Everything else is `pub(crate)`.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod admin;
pub mod app;
pub(crate) mod client_conn;
pub mod cluster;
pub mod config;
pub(crate) mod connection;
pub mod demo;
pub(crate) mod handlers;
pub(crate) mod http_util;
pub(crate) mod identity;
pub mod ids;
pub(crate) mod listener;
pub(crate) mod log;
pub mod metrics;
pub(crate) mod progress;
pub mod protocol;
pub mod query;
pub(crate) mod rate_limit;
pub mod reframe;
pub mod reload;
pub mod server;
pub mod settings;
pub mod sse;
pub mod store;
pub mod stream;
mod sync;
pub mod telemetry;
pub(crate) mod upstream;
pub(crate) mod workers;
