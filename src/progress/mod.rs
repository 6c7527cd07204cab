//! Progress events for a token stream: smoothed rate, trend, and a total-length
//! estimate learned per (route, model) from the lengths of past answers.
//!
//! Sans-IO: every call takes the current time as a [`tokio::time::Instant`];
//! only [`Learner::load`] and [`Learner::save`] touch the file system
//! (blocking `std::fs`, call them from `spawn_blocking` or at startup).

mod history;
mod rate;
mod tracker;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use history::Learner;
pub use tracker::Tracker;

/// Default minimum number of tokens between two progress events.
pub const DEFAULT_EVERY_TOKENS: usize = 10;
/// Default minimum time between two progress events.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(250);
/// Default number of past totals kept per (route, model).
pub const DEFAULT_MAX_HISTORY: usize = 200;
/// Default number of (route, model) keys kept; least recently used is evicted.
pub const DEFAULT_MAX_KEYS: usize = 256;

/// How often progress events go out: at most one per `every_tokens` tokens and `min_interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Minimum number of tokens between two progress events.
    pub every_tokens: usize,
    /// Minimum time between two progress events.
    pub min_interval: Duration,
}

impl Default for Cadence {
    fn default() -> Self {
        Self {
            every_tokens: DEFAULT_EVERY_TOKENS,
            min_interval: DEFAULT_MIN_INTERVAL,
        }
    }
}

/// What the [`Learner`] knows before it learns, and how much it keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Per-model priors used before anything has been learned.
    pub priors: Vec<ModelPrior>,
    /// Where learned history is persisted; `None` keeps it in memory only.
    pub state_file: Option<PathBuf>,
    /// Number of past totals kept per (route, model).
    pub max_history: usize,
    /// Number of (route, model) keys kept.
    pub max_keys: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            priors: Vec::new(),
            state_file: None,
            max_history: DEFAULT_MAX_HISTORY,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

/// Operator-supplied expectation for a model (`[[progress.model]]` in the proxy config).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrior {
    /// Model name as it appears in requests (as given by `model_from`).
    pub name: String,
    /// Expected answer length in tokens.
    pub expected_tokens: u64,
    /// Expected generation rate, used for the ETA until a rate is measured.
    #[serde(default)]
    pub tokens_per_second: Option<f64>,
}

/// How much the total-length estimate can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// Generic guess, prior only, extrapolation, or few/widely spread samples.
    Low,
    /// Enough samples with moderate spread.
    Medium,
    /// Many samples with small spread, or the stream has finished.
    High,
}

/// Direction of the recent generation rate relative to the longer-horizon rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trend {
    /// Recent rate clearly above the longer-horizon rate.
    Accelerating,
    /// Recent rate within the dead band of the longer-horizon rate.
    Steady,
    /// Recent rate clearly below the longer-horizon rate.
    Slowing,
}
