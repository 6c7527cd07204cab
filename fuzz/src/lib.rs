//! Checks shared by the fuzz targets (`fuzz_targets/`) and the stable test `tests/fuzz_checks.rs`,
//! which runs them over the test vectors, seeded random inputs and the committed corpora.

#![forbid(unsafe_code)]

pub mod batcher;
pub mod config;
pub mod event_id;
pub mod reference_sse;
pub mod sse;
