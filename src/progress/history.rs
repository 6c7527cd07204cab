//! Learned distributions of answer lengths per (route, model), and their state file.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::{Confidence, ModelPrior, Options};

/// Guess used with neither a prior nor any history.
pub(crate) const GENERIC_EXPECTED_TOKENS: u64 = 300;
/// Recency half-life, in samples: a total recorded this many answers ago weighs half.
const HALF_LIFE_SAMPLES: f64 = 50.0;
/// Conditional samples (past totals above the count) needed for `Medium`.
const MEDIUM_MIN_SAMPLES: usize = 8;
/// Conditional samples needed for `High`.
const HIGH_MIN_SAMPLES: usize = 30;
/// Largest relative IQR ((q75 - q25) / median) of the conditional sample for
/// `Medium`. For log-normal totals the relative IQR is about 2·sinh(0.674·σ),
/// so 0.6 ≈ σ 0.44.
const MEDIUM_MAX_SPREAD: f64 = 0.6;
/// Largest relative IQR for `High`: 0.25 ≈ σ 0.18, about where estimates at a
/// quarter of the answer are within 25% for 80% of answers.
const HIGH_MAX_SPREAD: f64 = 0.25;
/// Longest route or model name kept in a key; longer ones are truncated
/// because the model name may come from user input.
const MAX_KEY_PART_BYTES: usize = 256;
/// Current state file format version.
const STATE_VERSION: u64 = 1;
/// State files larger than this are rejected rather than read into memory.
const MAX_STATE_BYTES: u64 = 16 * 1024 * 1024;

/// Distinguishes temp files of concurrent saves within one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Estimated total length of an answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Estimated total tokens; always greater than the count it was asked for.
    pub total: u64,
    /// How much the estimate can be trusted.
    pub confidence: Confidence,
    /// The model prior's tokens/s, for the ETA until a rate is measured.
    pub prior_rate: Option<f64>,
}

/// Error loading or saving the state file; the caller logs it and carries on.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state file exists but could not be read.
    #[error("cannot read progress state file {}: {source}", .path.display())]
    Read {
        /// State file path.
        path: PathBuf,
        /// Underlying I/O error.
        source: io::Error,
    },
    /// The state file is larger than any valid state.
    #[error("progress state file {} is too large ({size} bytes)", .path.display())]
    TooLarge {
        /// State file path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// The state file is not valid JSON of the expected shape.
    #[error("progress state file {} is corrupt: {source}", .path.display())]
    Corrupt {
        /// State file path.
        path: PathBuf,
        /// Parse error.
        source: serde_json::Error,
    },
    /// The state file has a format version this build does not know.
    #[error("progress state file {} has unsupported version {found}", .path.display())]
    UnsupportedVersion {
        /// State file path.
        path: PathBuf,
        /// Version found in the file.
        found: u64,
    },
    /// The state could not be encoded.
    #[error("cannot encode progress state: {0}")]
    Encode(#[source] serde_json::Error),
    /// The state file could not be written.
    #[error("cannot write progress state file {}: {source}", .path.display())]
    Write {
        /// State file path.
        path: PathBuf,
        /// Underlying I/O error.
        source: io::Error,
    },
}

/// On-disk format, version 1.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    /// Always [`STATE_VERSION`].
    version: u64,
    /// Keys, least recently used first.
    keys: Vec<KeyState>,
}

/// One (route, model) history in the state file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyState {
    route: String,
    model: String,
    /// Completed totals, oldest first.
    totals: Vec<u64>,
}

/// Only the version, read first so a future format is reported as such.
#[derive(Deserialize)]
struct VersionProbe {
    version: u64,
}

/// Bounded history of one (route, model).
#[derive(Debug, Default)]
struct Series {
    route: String,
    model: String,
    /// (total, seq), oldest first.
    order: VecDeque<(u64, u64)>,
    /// The same entries sorted by (total, seq), kept in step with `order`.
    sorted: Vec<(u64, u64)>,
    next_seq: u64,
    last_used: u64,
}

impl Series {
    fn push(&mut self, total: u64, max_history: usize) {
        let entry = (total, self.next_seq);
        self.next_seq += 1;
        self.order.push_back(entry);
        let pos = self.sorted.partition_point(|e| *e < entry);
        self.sorted.insert(pos, entry);
        while self.order.len() > max_history {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Ok(i) = self.sorted.binary_search(&old) {
                self.sorted.remove(i);
            }
        }
    }

    /// Weighted quantiles of past totals greater than `count`, or `None` if
    /// no past total exceeds it.
    fn conditional(&self, count: u64) -> Option<Estimate> {
        let tail = &self.sorted[self.sorted.partition_point(|&(t, _)| t <= count)..];
        let &(last, _) = tail.last()?;
        let newest = self.next_seq.saturating_sub(1);
        // u64 -> f64: ages are at most max_history, far below 2^53.
        let weight = |seq: u64| (0.5f64).powf((newest - seq) as f64 / HALF_LIFE_SAMPLES);
        let total_weight: f64 = tail.iter().map(|&(_, s)| weight(s)).sum();
        let targets = [0.25, 0.5, 0.75].map(|q| q * total_weight);
        let mut found = [None; 3];
        let mut acc = 0.0;
        for &(t, s) in tail {
            acc += weight(s);
            for (slot, &target) in found.iter_mut().zip(&targets) {
                if slot.is_none() && acc >= target {
                    *slot = Some(t);
                }
            }
        }
        // Float rounding may leave the last target a hair above `acc`.
        let [q25, median, q75] = found.map(|q| q.unwrap_or(last));
        let spread = (q75 - q25) as f64 / median as f64;
        let confidence = if tail.len() >= HIGH_MIN_SAMPLES && spread <= HIGH_MAX_SPREAD {
            Confidence::High
        } else if tail.len() >= MEDIUM_MIN_SAMPLES && spread <= MEDIUM_MAX_SPREAD {
            Confidence::Medium
        } else {
            Confidence::Low
        };
        Some(Estimate {
            total: median,
            confidence,
            prior_rate: None,
        })
    }
}

#[derive(Debug, Default)]
struct Inner {
    series: HashMap<String, Series>,
    clock: u64,
}

/// Shared, thread-safe learned state: one per proxy, shared by all streams.
#[derive(Debug)]
pub struct Learner {
    inner: Mutex<Inner>,
    priors: HashMap<String, ModelPrior>,
    state_file: Option<PathBuf>,
    max_history: usize,
    max_keys: usize,
}

impl Learner {
    /// An empty learner (nothing loaded from the state file).
    pub fn new(opts: &Options) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            priors: opts.priors.iter().map(|p| (p.name.clone(), p.clone())).collect(),
            state_file: opts.state_file.clone(),
            max_history: opts.max_history.max(1),
            max_keys: opts.max_keys.max(1),
        }
    }

    /// A learner loaded from `opts.state_file`; on error, an empty learner
    /// plus the error for the caller to log as a warning.
    pub fn load(opts: &Options) -> (Self, Option<StateError>) {
        let learner = Self::new(opts);
        let Some(path) = &opts.state_file else {
            return (learner, None);
        };
        match read_state(path) {
            Ok(Some(state)) => {
                for key in state.keys {
                    for total in key.totals {
                        learner.record(&key.route, &key.model, total);
                    }
                }
                (learner, None)
            }
            Ok(None) => {
                tracing::info!(path = %path.display(), "no progress state file yet, starting empty");
                (learner, None)
            }
            Err(e) => (learner, Some(e)),
        }
    }

    /// Add the total length of a *completed* answer to the history of (route, model).
    pub fn record(&self, route: &str, model: &str, total: u64) {
        // An empty answer says nothing about lengths and would never be
        // above any count anyway.
        if total == 0 {
            return;
        }
        let mut inner = self.lock();
        self.series_mut(&mut inner, route, model)
            .push(total, self.max_history);
    }

    /// Replaces the history of (route, model) with `totals`, oldest first (a history shared by
    /// several proxies, which includes this one's answers).
    pub fn replace(&self, route: &str, model: &str, totals: &[u64]) {
        let mut inner = self.lock();
        let series = self.series_mut(&mut inner, route, model);
        let (route, model) = (
            std::mem::take(&mut series.route),
            std::mem::take(&mut series.model),
        );
        *series = Series {
            route,
            model,
            last_used: series.last_used,
            ..Series::default()
        };
        for &total in totals.iter().filter(|t| **t > 0) {
            series.push(total, self.max_history);
        }
    }

    /// The series of (route, model), made (and the least recently used one dropped at
    /// `max_keys`) if need be, marked used now.
    fn series_mut<'a>(&self, inner: &'a mut Inner, route: &str, model: &str) -> &'a mut Series {
        let key = key(route, model);
        inner.clock += 1;
        let clock = inner.clock;
        if !inner.series.contains_key(&key) && inner.series.len() >= self.max_keys {
            let oldest = inner
                .series
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                inner.series.remove(&oldest);
            }
        }
        let series = inner.series.entry(key).or_insert_with(|| Series {
            route: truncate(route).to_owned(),
            model: truncate(model).to_owned(),
            ..Series::default()
        });
        series.last_used = clock;
        series
    }

    /// Estimated total length of an answer that is `tokens_so_far` long and not finished.
    pub fn estimate(&self, route: &str, model: &str, tokens_so_far: u64) -> Estimate {
        let prior = self.priors.get(model);
        let prior_rate = prior
            .and_then(|p| p.tokens_per_second)
            .filter(|r| r.is_finite() && *r > 0.0);
        let learned = {
            let mut inner = self.lock();
            inner.clock += 1;
            let clock = inner.clock;
            match inner.series.get_mut(&key(route, model)) {
                Some(series) if !series.order.is_empty() => {
                    series.last_used = clock;
                    Some(series.conditional(tokens_so_far))
                }
                _ => None,
            }
        };
        let estimate = match learned {
            Some(Some(estimate)) => estimate,
            // History exists but this answer is already longer than all of it.
            Some(None) => extrapolate(tokens_so_far),
            None => {
                let expected = prior.map_or(GENERIC_EXPECTED_TOKENS, |p| p.expected_tokens);
                if expected > tokens_so_far {
                    Estimate {
                        total: expected,
                        confidence: Confidence::Low,
                        prior_rate: None,
                    }
                } else {
                    extrapolate(tokens_so_far)
                }
            }
        };
        Estimate {
            prior_rate,
            ..estimate
        }
    }

    /// Number of totals learned for (route, model).
    pub fn samples(&self, route: &str, model: &str) -> usize {
        self.lock()
            .series
            .get(&key(route, model))
            .map_or(0, |s| s.order.len())
    }

    /// Write the history to `state_file` atomically (no-op without one). Blocking.
    pub fn save(&self) -> Result<(), StateError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let state = {
            let inner = self.lock();
            let mut series: Vec<&Series> = inner.series.values().collect();
            series.sort_by_key(|s| s.last_used);
            StateFile {
                version: STATE_VERSION,
                keys: series
                    .into_iter()
                    .map(|s| KeyState {
                        route: s.route.clone(),
                        model: s.model.clone(),
                        totals: s.order.iter().map(|&(t, _)| t).collect(),
                    })
                    .collect(),
            }
        };
        let bytes = serde_json::to_vec(&state).map_err(StateError::Encode)?;
        write_atomic(path, &bytes).map_err(|source| StateError::Write {
            path: path.clone(),
            source,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }
}

/// Past every known total: assume a quarter more is to come.
fn extrapolate(count: u64) -> Estimate {
    Estimate {
        total: count.saturating_add((count / 4).max(1)),
        confidence: Confidence::Low,
        prior_rate: None,
    }
}

fn truncate(s: &str) -> &str {
    if s.len() <= MAX_KEY_PART_BYTES {
        return s;
    }
    let mut end = MAX_KEY_PART_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn key(route: &str, model: &str) -> String {
    // NUL cannot be confused with a separator inside a route path.
    format!("{}\0{}", truncate(route), truncate(model))
}

/// `Ok(None)` when the file does not exist.
fn read_state(path: &Path) -> Result<Option<StateFile>, StateError> {
    let read_err = |source| StateError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    let size = bytes.len() as u64;
    if size > MAX_STATE_BYTES {
        return Err(StateError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    let corrupt = |source| StateError::Corrupt {
        path: path.to_owned(),
        source,
    };
    let probe: VersionProbe = serde_json::from_slice(&bytes).map_err(corrupt)?;
    if probe.version != STATE_VERSION {
        return Err(StateError::UnsupportedVersion {
            path: path.to_owned(),
            found: probe.version,
        });
    }
    serde_json::from_slice(&bytes).map(Some).map_err(corrupt)
}

/// Write to a temp file in the same directory, fsync, then rename over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "state file path has no file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: the temp file may not even exist.
        let _ = std::fs::remove_file(&tmp);
    } else if let Ok(d) = File::open(dir) {
        // Persist the rename itself; not possible on every platform, hence best effort.
        let _ = d.sync_all();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options::default()
    }

    fn prior(name: &str, expected: u64, rate: Option<f64>) -> ModelPrior {
        ModelPrior {
            name: name.to_owned(),
            expected_tokens: expected,
            tokens_per_second: rate,
        }
    }

    /// A fresh, empty directory under the system temp dir.
    fn temp_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "progress-test-{}-{test}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn opts_with_file(path: &Path) -> Options {
        Options {
            state_file: Some(path.to_owned()),
            ..opts()
        }
    }

    #[test]
    fn learner_is_shareable_across_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Learner>();
    }

    #[test]
    fn generic_guess_without_prior_or_history() {
        let l = Learner::new(&opts());
        let e = l.estimate("/r", "m", 0);
        assert_eq!(e.total, GENERIC_EXPECTED_TOKENS);
        assert_eq!(e.confidence, Confidence::Low);
        assert_eq!(e.prior_rate, None);
    }

    #[test]
    fn prior_used_before_history() {
        let o = Options {
            priors: vec![prior("llama3", 350, Some(42.0))],
            ..opts()
        };
        let l = Learner::new(&o);
        for count in [0, 100, 349] {
            let e = l.estimate("/r", "llama3", count);
            assert_eq!(e.total, 350);
            assert_eq!(e.confidence, Confidence::Low);
            assert_eq!(e.prior_rate, Some(42.0));
        }
        // Past the prior: extrapolate, never below the count.
        let e = l.estimate("/r", "llama3", 400);
        assert_eq!(e.total, 500);
        assert_eq!(e.confidence, Confidence::Low);
        // Another model falls back to the generic guess.
        assert_eq!(l.estimate("/r", "other", 0).total, GENERIC_EXPECTED_TOKENS);
    }

    #[test]
    fn history_replaces_prior_and_keeps_prior_rate() {
        let o = Options {
            priors: vec![prior("llama3", 350, Some(42.0))],
            ..opts()
        };
        let l = Learner::new(&o);
        l.record("/r", "llama3", 120);
        let e = l.estimate("/r", "llama3", 0);
        assert_eq!(e.total, 120);
        assert_eq!(e.prior_rate, Some(42.0));
    }

    #[test]
    fn replace_swaps_one_history_for_another() {
        let learner = Learner::new(&Options {
            max_history: 3,
            ..Options::default()
        });
        learner.record("/r", "m", 999);
        learner.record("/r", "other", 7);
        learner.replace("/r", "m", &[0, 100, 200, 300, 400]);
        assert_eq!(learner.samples("/r", "m"), 3, "bounded, empty answers left out");
        assert_eq!(learner.estimate("/r", "m", 150).total, 300);
        assert_eq!(learner.estimate("/r", "m", 350).total, 400, "the newest kept");
        assert_eq!(learner.samples("/r", "other"), 1, "other histories stay");
        learner.record("/r", "m", 500);
        assert_eq!(learner.samples("/r", "m"), 3, "recording goes on after a replace");
    }

    #[test]
    fn estimate_is_conditional_on_count() {
        let l = Learner::new(&opts());
        // Uniform ages matter little here: all within a few samples.
        for t in [100, 200, 300, 400, 500] {
            l.record("/r", "m", t);
        }
        assert_eq!(l.estimate("/r", "m", 0).total, 300);
        // Totals above 250 are 300, 400, 500.
        assert_eq!(l.estimate("/r", "m", 250).total, 400);
        // Exactly 400 already: only 500 is larger.
        assert_eq!(l.estimate("/r", "m", 400).total, 500);
        // Longer than anything seen: extrapolate.
        let e = l.estimate("/r", "m", 600);
        assert_eq!(e.total, 750);
        assert_eq!(e.confidence, Confidence::Low);
        assert_eq!(l.estimate("/r", "m", 1).total, 300);
    }

    #[test]
    fn estimate_always_above_count() {
        let l = Learner::new(&opts());
        for count in [0, 1, 2, 3, 299, 300, 10_000, u64::MAX - 1] {
            assert!(l.estimate("/r", "m", count).total > count);
        }
        assert_eq!(l.estimate("/r", "m", u64::MAX).total, u64::MAX);
    }

    #[test]
    fn recent_totals_weigh_more() {
        let l = Learner::new(&opts());
        for _ in 0..60 {
            l.record("/r", "m", 100);
        }
        for _ in 0..40 {
            l.record("/r", "m", 500);
        }
        // Unweighted, 100 would be the median (60 of 100 samples).
        assert_eq!(l.estimate("/r", "m", 0).total, 500);
    }

    #[test]
    fn confidence_thresholds() {
        let l = Learner::new(&opts());
        // 40 samples within ±5%: high.
        for i in 0..40 {
            l.record("/r", "tight", 290 + (i % 21));
        }
        assert_eq!(l.estimate("/r", "tight", 0).confidence, Confidence::High);
        // 10 samples, relative IQR ~0.2: medium (too few for high).
        for i in 0..10 {
            l.record("/r", "mid", 240 + 12 * i);
        }
        assert_eq!(l.estimate("/r", "mid", 0).confidence, Confidence::Medium);
        // Many samples but very spread: low.
        for i in 0..40 {
            l.record("/r", "wide", 50 + 25 * i);
        }
        assert_eq!(l.estimate("/r", "wide", 0).confidence, Confidence::Low);
        // Too few samples: low however tight.
        for _ in 0..3 {
            l.record("/r", "few", 300);
        }
        assert_eq!(l.estimate("/r", "few", 0).confidence, Confidence::Low);
        // Tight overall, but fewer than 30 totals above the count: not high.
        assert_ne!(l.estimate("/r", "tight", 305).confidence, Confidence::High);
    }

    #[test]
    fn history_is_bounded_and_sorted_copy_in_step() {
        let o = Options {
            max_history: 20,
            ..opts()
        };
        let l = Learner::new(&o);
        for t in (1..=100).rev() {
            l.record("/r", "m", t);
        }
        assert_eq!(l.samples("/r", "m"), 20);
        let inner = l.lock();
        let s = inner.series.get(&key("/r", "m")).expect("series");
        let mut from_order: Vec<_> = s.order.iter().copied().collect();
        from_order.sort_unstable();
        assert_eq!(from_order, s.sorted);
        // The newest 20 totals were 20..=1.
        assert_eq!(s.sorted.first().map(|e| e.0), Some(1));
        assert_eq!(s.sorted.last().map(|e| e.0), Some(20));
    }

    #[test]
    fn keys_are_bounded_lru() {
        let o = Options {
            max_keys: 3,
            ..opts()
        };
        let l = Learner::new(&o);
        l.record("/r", "a", 10);
        l.record("/r", "b", 10);
        l.record("/r", "c", 10);
        // Using "a" makes "b" the least recently used.
        l.estimate("/r", "a", 0);
        l.record("/r", "d", 10);
        assert_eq!(l.samples("/r", "a"), 1);
        assert_eq!(l.samples("/r", "b"), 0);
        assert_eq!(l.samples("/r", "c"), 1);
        assert_eq!(l.samples("/r", "d"), 1);
        // Many distinct user-supplied names never grow past the bound.
        for i in 0..1000 {
            l.record("/r", &format!("user-model-{i}"), 5);
        }
        assert_eq!(l.lock().series.len(), 3);
    }

    #[test]
    fn long_names_are_truncated_consistently() {
        let l = Learner::new(&opts());
        let long = "é".repeat(1000);
        l.record("/r", &long, 77);
        assert_eq!(l.samples("/r", &long), 1);
        assert_eq!(l.estimate("/r", &long, 0).total, 77);
        assert!(l
            .lock()
            .series
            .keys()
            .all(|k| k.len() <= 2 * MAX_KEY_PART_BYTES + 1));
    }

    #[test]
    fn zero_totals_are_ignored() {
        let l = Learner::new(&opts());
        l.record("/r", "m", 0);
        assert_eq!(l.samples("/r", "m"), 0);
    }

    #[test]
    fn state_round_trip() {
        let dir = temp_dir("round-trip");
        let path = dir.join("progress.json");
        let o = Options {
            max_keys: 2,
            ..opts_with_file(&path)
        };
        let l = Learner::new(&o);
        for t in [100, 200, 300] {
            l.record("/a", "m", t);
        }
        l.record("/b", "m", 42);
        l.save().expect("save");

        let (loaded, err) = Learner::load(&o);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(loaded.samples("/a", "m"), 3);
        assert_eq!(loaded.samples("/b", "m"), 1);
        // LRU order survives: "/a" is older, so a new key evicts it.
        loaded.record("/c", "m", 1);
        assert_eq!(loaded.samples("/a", "m"), 0);
        assert_eq!(loaded.samples("/b", "m"), 1);

        // A smaller bound applies to what is loaded.
        let small = Options {
            max_history: 2,
            ..o.clone()
        };
        let (loaded, _) = Learner::load(&small);
        assert_eq!(loaded.estimate("/a", "m", 150).total, 300);
        assert_eq!(loaded.samples("/a", "m"), 2);
        assert_eq!(loaded.estimate("/a", "m", 0).total, 300);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn state_file_format_is_versioned_json() {
        let dir = temp_dir("format");
        let path = dir.join("state.json");
        let l = Learner::new(&opts_with_file(&path));
        l.record("/r", "m", 7);
        l.save().expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            r#"{"version":1,"keys":[{"route":"/r","model":"m","totals":[7]}]}"#
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_state_file_is_fine() {
        let dir = temp_dir("missing");
        let (l, err) = Learner::load(&opts_with_file(&dir.join("nope.json")));
        assert!(err.is_none());
        assert_eq!(l.samples("/r", "m"), 0);
        let (_, err) = Learner::load(&opts());
        assert!(err.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_state_files_give_typed_errors_and_empty_learner() {
        let dir = temp_dir("corrupt");
        let path = dir.join("state.json");
        type Case = (&'static [u8], fn(&StateError) -> bool);
        let cases: [Case; 7] = [
            (b"\x00\xffgarbage", |e| matches!(e, StateError::Corrupt { .. })),
            (b"", |e| matches!(e, StateError::Corrupt { .. })),
            (
                br#"{"version":1,"keys":[{"route":"/r","model":"m","totals":[1,2"#,
                |e| matches!(e, StateError::Corrupt { .. }),
            ),
            (br#"{"version":2,"keys":[]}"#, |e| {
                matches!(e, StateError::UnsupportedVersion { found: 2, .. })
            }),
            (br#"{"version":"1","keys":[]}"#, |e| {
                matches!(e, StateError::Corrupt { .. })
            }),
            (br#"{"keys":[]}"#, |e| matches!(e, StateError::Corrupt { .. })),
            (
                br#"{"version":1,"keys":[{"route":"/r","model":"m","totals":[-5]}]}"#,
                |e| matches!(e, StateError::Corrupt { .. }),
            ),
        ];
        for (bytes, expected) in cases {
            std::fs::write(&path, bytes).expect("write");
            let (l, err) = Learner::load(&opts_with_file(&path));
            let err = err.expect("an error");
            assert!(expected(&err), "{err:?} for {:?}", String::from_utf8_lossy(bytes));
            assert!(!err.to_string().is_empty());
            assert_eq!(l.samples("/r", "m"), 0);
            assert_eq!(l.estimate("/r", "m", 0).total, GENERIC_EXPECTED_TOKENS);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unreadable_state_path_is_a_read_error() {
        let dir = temp_dir("unreadable");
        // A directory where the file should be.
        let (_, err) = Learner::load(&opts_with_file(&dir));
        assert!(matches!(err, Some(StateError::Read { .. })), "{err:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn atomic_write_leaves_no_temp_file() {
        let dir = temp_dir("atomic");
        let path = dir.join("state.json");
        std::fs::write(&path, b"old contents").expect("write");
        let l = Learner::new(&opts_with_file(&path));
        l.record("/r", "m", 9);
        l.save().expect("save");
        l.save().expect("save again");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("read dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["state.json"]);
        let (loaded, err) = Learner::load(&opts_with_file(&path));
        assert!(err.is_none());
        assert_eq!(loaded.samples("/r", "m"), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failed_write_is_an_error_and_leaves_nothing() {
        let dir = temp_dir("failed-write");
        let path = dir.join("missing-dir").join("state.json");
        let l = Learner::new(&opts_with_file(&path));
        l.record("/r", "m", 9);
        assert!(matches!(l.save(), Err(StateError::Write { .. })));
        // Renaming over a directory fails after the temp file was written.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join("inner")).expect("mkdir");
        let l = Learner::new(&opts_with_file(&blocked));
        l.record("/r", "m", 9);
        assert!(matches!(l.save(), Err(StateError::Write { .. })));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("read dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["blocked"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn save_without_state_file_is_a_no_op() {
        let l = Learner::new(&opts());
        l.record("/r", "m", 9);
        assert!(l.save().is_ok());
    }
}
