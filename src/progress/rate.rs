//! Smoothed generation rate and its trend.

use tokio::time::Instant;

use super::Trend;

/// Time constant of the reported ("recent") rate, in seconds.
const SHORT_TAU_SECS: f64 = 1.5;
/// Time constant of the longer-horizon rate the trend compares against.
const LONG_TAU_SECS: f64 = 6.0;
/// A rate is reported only after this much inter-batch time has been observed.
const MIN_OBSERVED_SECS: f64 = 0.2;
/// The trend stays steady until this much inter-batch time has been observed.
const TREND_WARMUP_SECS: f64 = 1.0;
/// Dead band: leave `Steady` when short/long differs from 1 by more than this.
const TREND_ENTER: f64 = 0.15;
/// Hysteresis: return to `Steady` only once short/long is back within this.
const TREND_EXIT: f64 = 0.05;

/// Exponentially time-weighted tokens/s: decayed token count over decayed time.
///
/// A ratio of decayed sums (rather than an EWMA of per-batch rates) stays
/// correct when batches arrive with zero or very uneven spacing.
#[derive(Debug, Clone)]
struct Ewma {
    tau: f64,
    tokens: f64,
    secs: f64,
}

impl Ewma {
    fn new(tau: f64) -> Self {
        Self {
            tau,
            tokens: 0.0,
            secs: 0.0,
        }
    }

    fn add(&mut self, tokens: f64, dt: f64) {
        let decay = (-dt / self.tau).exp();
        self.tokens = self.tokens * decay + tokens;
        self.secs = self.secs * decay + dt;
    }

    fn rate(&self) -> Option<f64> {
        (self.secs > 0.0).then(|| self.tokens / self.secs)
    }
}

/// Smoothed tokens/s over recent batches plus a hysteretic trend.
#[derive(Debug, Clone)]
pub(crate) struct RateMeter {
    last: Option<Instant>,
    observed_secs: f64,
    short: Ewma,
    long: Ewma,
    trend: Trend,
}

impl Default for RateMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateMeter {
    /// An empty meter: no rate, steady trend.
    pub(crate) fn new() -> Self {
        Self {
            last: None,
            observed_secs: 0.0,
            short: Ewma::new(SHORT_TAU_SECS),
            long: Ewma::new(LONG_TAU_SECS),
            trend: Trend::Steady,
        }
    }

    /// Record a batch of `n` tokens flushed at `now`.
    pub(crate) fn on_tokens(&mut self, n: u64, now: Instant) {
        // The first batch only starts the clock: the time before it is
        // time-to-first-token, not generation, and would bias the rate low.
        let Some(last) = self.last else {
            self.last = Some(now);
            return;
        };
        let dt = now.saturating_duration_since(last).as_secs_f64();
        self.last = Some(now.max(last));
        // u64 -> f64 loses precision only beyond 2^53 tokens.
        let n = n as f64;
        self.short.add(n, dt);
        self.long.add(n, dt);
        self.observed_secs += dt;
        self.update_trend();
    }

    /// Recent smoothed tokens/s, once enough time has been observed.
    pub(crate) fn rate(&self) -> Option<f64> {
        if self.observed_secs < MIN_OBSERVED_SECS {
            return None;
        }
        self.short.rate()
    }

    /// Current trend.
    pub(crate) fn trend(&self) -> Trend {
        self.trend
    }

    fn update_trend(&mut self) {
        if self.observed_secs < TREND_WARMUP_SECS {
            return;
        }
        let (Some(short), Some(long)) = (self.short.rate(), self.long.rate()) else {
            return;
        };
        if long <= 0.0 {
            return;
        }
        let ratio = short / long;
        // Leaving the dead band wins from any state (a stall right after a
        // burst goes straight to slowing); coming back needs the narrower band.
        self.trend = match self.trend {
            _ if ratio > 1.0 + TREND_ENTER => Trend::Accelerating,
            _ if ratio < 1.0 - TREND_ENTER => Trend::Slowing,
            Trend::Accelerating if ratio < 1.0 + TREND_EXIT => Trend::Steady,
            Trend::Slowing if ratio > 1.0 - TREND_EXIT => Trend::Steady,
            unchanged => unchanged,
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const BATCH: u64 = 4;

    /// Feeds batches of `BATCH` tokens at `rate(t)` tok/s for `secs` seconds,
    /// returning the trend after every batch.
    fn feed(
        meter: &mut RateMeter,
        t: &mut Duration,
        start: Instant,
        secs: f64,
        mut rate: impl FnMut() -> f64,
    ) -> Vec<Trend> {
        let end = *t + Duration::from_secs_f64(secs);
        let mut trends = Vec::new();
        while *t < end {
            *t += Duration::from_secs_f64(BATCH as f64 / rate());
            meter.on_tokens(BATCH, start + *t);
            trends.push(meter.trend());
        }
        trends
    }

    #[test]
    fn no_rate_before_enough_time() {
        let start = Instant::now();
        let mut m = RateMeter::new();
        assert_eq!(m.rate(), None);
        m.on_tokens(5, start);
        assert_eq!(m.rate(), None);
        m.on_tokens(5, start + Duration::from_millis(50));
        assert_eq!(m.rate(), None);
    }

    #[test]
    fn steady_rate_is_measured_and_steady() {
        let start = Instant::now();
        let mut m = RateMeter::new();
        let mut t = Duration::ZERO;
        m.on_tokens(BATCH, start);
        let trends = feed(&mut m, &mut t, start, 10.0, || 25.0);
        assert!(trends.iter().all(|&tr| tr == Trend::Steady));
        let r = m.rate().unwrap_or_default();
        assert!((r - 25.0).abs() < 0.01, "rate {r}");
    }

    #[test]
    fn rate_excludes_time_to_first_token() {
        let start = Instant::now();
        let mut m = RateMeter::new();
        // Ten seconds of silence before the first token must not count.
        let mut t = Duration::from_secs(10);
        m.on_tokens(BATCH, start + t);
        feed(&mut m, &mut t, start, 2.0, || 40.0);
        let r = m.rate().unwrap_or_default();
        assert!((r - 40.0).abs() < 0.01, "rate {r}");
    }

    #[test]
    fn rate_is_recent_not_average_since_start() {
        let start = Instant::now();
        let mut m = RateMeter::new();
        let mut t = Duration::ZERO;
        m.on_tokens(BATCH, start);
        feed(&mut m, &mut t, start, 20.0, || 10.0);
        feed(&mut m, &mut t, start, 8.0, || 50.0);
        let r = m.rate().unwrap_or_default();
        // The average since start is ~21 tok/s; the smoothed rate follows 50.
        assert!(r > 48.0, "rate {r}");
    }

    #[test]
    fn doubling_rate_accelerates() {
        let start = Instant::now();
        let mut m = RateMeter::new();
        let mut t = Duration::ZERO;
        m.on_tokens(BATCH, start);
        let before = feed(&mut m, &mut t, start, 10.0, || 20.0);
        assert!(before.iter().all(|&tr| tr == Trend::Steady));
        let after = feed(&mut m, &mut t, start, 2.0, || 40.0);
        assert_eq!(after.last(), Some(&Trend::Accelerating));
    }

    #[test]
    fn halving_rate_slows() {
        let start = Instant::now();
        let mut m = RateMeter::new();
        let mut t = Duration::ZERO;
        m.on_tokens(BATCH, start);
        feed(&mut m, &mut t, start, 10.0, || 40.0);
        let after = feed(&mut m, &mut t, start, 2.0, || 20.0);
        assert_eq!(after.last(), Some(&Trend::Slowing));
    }

    #[test]
    fn returns_to_steady_once_rate_settles() {
        let start = Instant::now();
        let mut m = RateMeter::new();
        let mut t = Duration::ZERO;
        m.on_tokens(BATCH, start);
        feed(&mut m, &mut t, start, 10.0, || 20.0);
        feed(&mut m, &mut t, start, 2.0, || 40.0);
        assert_eq!(m.trend(), Trend::Accelerating);
        feed(&mut m, &mut t, start, 30.0, || 40.0);
        assert_eq!(m.trend(), Trend::Steady);
    }

    #[test]
    fn jitter_within_dead_band_stays_steady() {
        let start = Instant::now();
        let mut rng = StdRng::seed_from_u64(0x9E37_79B9_7F4A_7C15);
        let mut m = RateMeter::new();
        let mut t = Duration::ZERO;
        m.on_tokens(BATCH, start);
        // Every batch's own rate is off by up to ±14%.
        let trends = feed(&mut m, &mut t, start, 60.0, || {
            30.0 * (1.0 + 0.28 * (rng.gen::<f64>() - 0.5))
        });
        assert!(trends.len() > 300);
        assert!(trends.iter().all(|&tr| tr == Trend::Steady));
    }

    #[test]
    fn burst_then_stall_slows() {
        let start = Instant::now();
        let mut m = RateMeter::new();
        let mut t = Duration::ZERO;
        m.on_tokens(BATCH, start);
        feed(&mut m, &mut t, start, 10.0, || 20.0);
        feed(&mut m, &mut t, start, 1.5, || 80.0);
        assert_eq!(m.trend(), Trend::Accelerating);
        // One batch after a 4 s stall.
        t += Duration::from_secs(4);
        m.on_tokens(BATCH, start + t);
        assert_eq!(m.trend(), Trend::Slowing);
    }
}
