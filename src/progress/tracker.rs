//! Per-stream progress state, turned into `event: progress` snapshots.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::history::Learner;
use super::rate::RateMeter;
use super::{Cadence, Confidence, Trend};

/// Rate assumed for the ETA with neither a measured rate nor a prior rate.
const GENERIC_TOKENS_PER_SECOND: f64 = 30.0;
/// Highest percent shown before the final snapshot.
const MAX_RUNNING_PERCENT: f64 = 99.0;
/// Sent estimates kept for [`Tracker::estimate_error_at_quarter`]; when full,
/// every other one is dropped and the recording stride doubles.
const MAX_RECORDED_ESTIMATES: usize = 512;

/// Data of one `event: progress`.
///
/// `percent` and `tokens_per_second` are rounded to one decimal place;
/// `tokens_per_second` is 0.0 until a rate has been measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// Tokens flushed downstream so far; never decreases.
    pub tokens: u64,
    /// Time since the stream started, in milliseconds.
    pub elapsed_ms: u64,
    /// Smoothed recent tokens/s (0.0 while unknown).
    pub tokens_per_second: f64,
    /// Estimated total tokens; never below `tokens`.
    pub estimated_total: u64,
    /// 0.0..=99.0 while running, never decreasing; 100.0 in the final snapshot.
    pub percent: f64,
    /// Estimated time to completion, in milliseconds.
    pub eta_ms: u64,
    /// Trust in `estimated_total`.
    pub confidence: Confidence,
    /// Recent rate relative to the longer-horizon rate.
    pub trend: Trend,
    /// Model name of the stream.
    pub model: String,
}

/// Per-stream state: counts tokens, measures the rate, and builds snapshots.
#[derive(Debug)]
pub struct Tracker {
    learner: Arc<Learner>,
    route: String,
    model: String,
    every_tokens: u64,
    min_interval: Duration,
    start: Instant,
    tokens: u64,
    rate: RateMeter,
    last_sent: Option<Instant>,
    last_sent_tokens: u64,
    percent: f64,
    /// (tokens, estimated_total) of sent snapshots, at least `stride` tokens apart.
    estimates: Vec<(u64, u64)>,
    stride: u64,
    finished: bool,
}

impl Tracker {
    /// State for a stream of `model` on `route` that started at `start`, sending events at `cadence`.
    pub fn new(
        learner: Arc<Learner>,
        route: String,
        model: String,
        cadence: Cadence,
        start: Instant,
    ) -> Self {
        Self {
            learner,
            route,
            model,
            every_tokens: u64::try_from(cadence.every_tokens).unwrap_or(u64::MAX).max(1),
            min_interval: cadence.min_interval,
            start,
            tokens: 0,
            rate: RateMeter::new(),
            last_sent: None,
            last_sent_tokens: 0,
            percent: 0.0,
            estimates: Vec::new(),
            stride: 1,
            finished: false,
        }
    }

    /// Record `n` tokens that were just flushed downstream at `now`.
    pub fn on_tokens(&mut self, n: u64, now: Instant) {
        if self.finished {
            return;
        }
        self.tokens = self.tokens.saturating_add(n);
        self.rate.on_tokens(n, now);
    }

    /// A progress event is due (every_tokens reached since the last one AND min_interval elapsed).
    pub fn due(&self, now: Instant) -> bool {
        !self.finished
            && self.tokens - self.last_sent_tokens >= self.every_tokens
            && self
                .last_sent
                .is_none_or(|t| now.saturating_duration_since(t) >= self.min_interval)
    }

    /// Snapshot for a progress event (marks it sent); after `finish`, the final snapshot.
    pub fn snapshot(&mut self, now: Instant) -> Progress {
        if self.finished {
            return self.finish(now);
        }
        let estimate = self.learner.estimate(&self.route, &self.model, self.tokens);
        let estimated_total = estimate.total.max(self.tokens);
        // estimated_total > 0 here unless tokens == 0, where percent is 0 anyway.
        let raw = if estimated_total == 0 {
            0.0
        } else {
            self.tokens as f64 / estimated_total as f64 * 100.0
        };
        // Holding the last percent when the estimate grows keeps it monotone.
        self.percent = round1(raw.min(MAX_RUNNING_PERCENT)).max(self.percent);
        let rate = self
            .rate
            .rate()
            .or(estimate.prior_rate)
            .filter(|r| r.is_finite() && *r > 0.0)
            .unwrap_or(GENERIC_TOKENS_PER_SECOND);
        let remaining = (estimated_total - self.tokens) as f64;
        // f64 -> u64 `as` saturates, so an absurd ETA cannot wrap.
        let eta_ms = (remaining / rate * 1000.0).round() as u64;
        self.remember_estimate(estimated_total);
        self.mark_sent(now);
        Progress {
            tokens: self.tokens,
            elapsed_ms: self.elapsed_ms(now),
            tokens_per_second: self.measured_rate(),
            estimated_total,
            percent: self.percent,
            eta_ms,
            confidence: estimate.confidence,
            trend: self.rate.trend(),
            model: self.model.clone(),
        }
    }

    /// Adds `total`, the length of a completed answer, to what the learner knows of this
    /// stream's route and model.
    pub fn learn(&self, total: u64) {
        self.learner.record(&self.route, &self.model, total);
    }

    /// Final snapshot: percent 100, estimated_total = tokens, eta 0, confidence high.
    ///
    /// Recording the total in the learner is left to the caller, which alone
    /// knows whether the answer completed normally.
    pub fn finish(&mut self, now: Instant) -> Progress {
        self.finished = true;
        self.percent = 100.0;
        self.mark_sent(now);
        Progress {
            tokens: self.tokens,
            elapsed_ms: self.elapsed_ms(now),
            tokens_per_second: self.measured_rate(),
            estimated_total: self.tokens,
            percent: 100.0,
            eta_ms: 0,
            confidence: Confidence::High,
            trend: self.rate.trend(),
            model: self.model.clone(),
        }
    }

    /// |estimated_total − final| / final for the estimate shown when the stream
    /// passed 25% of `final_total`: the last sent snapshot at or before
    /// ceil(final_total / 4) tokens. `None` if no snapshot was sent by then.
    pub fn estimate_error_at_quarter(&self, final_total: u64) -> Option<f64> {
        if final_total == 0 {
            return None;
        }
        let quarter = final_total.div_ceil(4);
        let idx = self
            .estimates
            .partition_point(|&(tokens, _)| tokens <= quarter)
            .checked_sub(1)?;
        let (_, estimate) = self.estimates[idx];
        Some(estimate.abs_diff(final_total) as f64 / final_total as f64)
    }

    fn remember_estimate(&mut self, estimated_total: u64) {
        if let Some(&(last, _)) = self.estimates.last() {
            if self.tokens < last.saturating_add(self.stride) {
                return;
            }
        }
        if self.estimates.len() >= MAX_RECORDED_ESTIMATES {
            let mut i = 0;
            self.estimates.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.stride = self.stride.saturating_mul(2);
        }
        self.estimates.push((self.tokens, estimated_total));
    }

    fn mark_sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
        self.last_sent_tokens = self.tokens;
    }

    fn measured_rate(&self) -> f64 {
        self.rate.rate().map_or(0.0, round1)
    }

    fn elapsed_ms(&self, now: Instant) -> u64 {
        let ms = now.saturating_duration_since(self.start).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX)
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::{ModelPrior, Options};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn learner(opts: &Options) -> Arc<Learner> {
        Arc::new(Learner::new(opts))
    }

    fn tracker(l: &Arc<Learner>, every: usize, min_interval: Duration, start: Instant) -> Tracker {
        Tracker::new(
            Arc::clone(l),
            "/r".to_owned(),
            "m".to_owned(),
            Cadence {
                every_tokens: every,
                min_interval,
            },
            start,
        )
    }

    #[test]
    fn randomized_streams_keep_invariants() {
        for seed in 1..=300u64 {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let l = learner(&Options::default());
            for _ in 0..rng.gen_range(0..=40) {
                l.record("/r", "m", rng.gen_range(1..=800));
            }
            let every = rng.gen_range(1..=30);
            let min_interval = Duration::from_millis(rng.gen_range(0..=500));
            let start = Instant::now();
            let mut t = start;
            let mut tr = tracker(&l, every, min_interval, start);
            let total = rng.gen_range(0..=1500);
            let mut sent = 0u64;
            let mut prev: Option<(Instant, Progress)> = None;
            while sent < total {
                let n = rng.gen_range(1..=20).min(total - sent);
                sent += n;
                t += Duration::from_millis(rng.gen_range(0..=300));
                tr.on_tokens(n, t);
                // Other streams finishing meanwhile move the estimate both ways.
                if rng.gen_range(0..=30) == 0 {
                    l.record("/r", "m", rng.gen_range(1..=2000));
                }
                if !tr.due(t) {
                    continue;
                }
                let p = tr.snapshot(t);
                assert_eq!(p.tokens, sent, "seed {seed}");
                assert!(p.estimated_total >= p.tokens, "seed {seed}: {p:?}");
                assert!((0.0..=MAX_RUNNING_PERCENT).contains(&p.percent), "seed {seed}");
                if let Some((pt, pp)) = &prev {
                    assert!(p.tokens >= pp.tokens, "seed {seed}");
                    assert!(p.percent >= pp.percent, "seed {seed}");
                    assert!(p.tokens - pp.tokens >= every as u64, "seed {seed}");
                    assert!(t.duration_since(*pt) >= min_interval, "seed {seed}");
                    assert!(p.elapsed_ms >= pp.elapsed_ms, "seed {seed}");
                } else {
                    assert!(p.tokens >= every as u64, "seed {seed}");
                }
                prev = Some((t, p));
            }
            t += Duration::from_millis(rng.gen_range(0..=300));
            let f = tr.finish(t);
            assert_eq!(f.tokens, total, "seed {seed}");
            assert_eq!(f.estimated_total, total, "seed {seed}");
            assert_eq!(f.percent, 100.0);
            assert_eq!(f.eta_ms, 0);
            assert!(!tr.due(t + Duration::from_secs(10)));
            if let Some((_, pp)) = prev {
                assert!(f.tokens >= pp.tokens && f.percent >= pp.percent);
            }
        }
    }

    #[test]
    fn percent_stays_below_100_until_finish() {
        let l = learner(&Options::default());
        l.record("/r", "m", 50);
        let start = Instant::now();
        let mut tr = tracker(&l, 1, Duration::ZERO, start);
        let mut last = 0.0;
        for i in 1..=400u64 {
            let now = start + Duration::from_millis(30 * i);
            tr.on_tokens(1, now);
            let p = tr.snapshot(now);
            assert!(p.percent <= MAX_RUNNING_PERCENT && p.percent >= last);
            assert!(p.estimated_total > p.tokens, "{p:?}");
            last = p.percent;
        }
        let f = tr.finish(start + Duration::from_secs(13));
        assert_eq!((f.percent, f.estimated_total, f.eta_ms), (100.0, 400, 0));
        assert_eq!(f.confidence, Confidence::High);
    }

    #[test]
    fn percent_holds_when_estimate_grows() {
        let l = learner(&Options::default());
        for _ in 0..10 {
            l.record("/r", "m", 100);
        }
        let start = Instant::now();
        let mut tr = tracker(&l, 10, Duration::ZERO, start);
        tr.on_tokens(50, start);
        let p = tr.snapshot(start);
        assert_eq!((p.estimated_total, p.percent), (100, 50.0));
        // Many longer answers complete meanwhile: the estimate jumps to 1000.
        for _ in 0..200 {
            l.record("/r", "m", 1000);
        }
        tr.on_tokens(10, start + Duration::from_secs(1));
        let p = tr.snapshot(start + Duration::from_secs(1));
        assert_eq!((p.estimated_total, p.percent), (1000, 50.0));
    }

    #[test]
    fn eta_uses_measured_then_prior_then_generic_rate() {
        let opts = Options {
            priors: vec![ModelPrior {
                name: "m".to_owned(),
                expected_tokens: 350,
                tokens_per_second: Some(50.0),
            }],
            ..Options::default()
        };
        let l = learner(&opts);
        let start = Instant::now();
        let mut tr = tracker(&l, 10, Duration::ZERO, start);
        tr.on_tokens(100, start + Duration::from_secs(2));
        let p = tr.snapshot(start + Duration::from_secs(2));
        // 250 remaining at the prior's 50 tok/s.
        assert_eq!(
            (p.estimated_total, p.eta_ms, p.tokens_per_second),
            (350, 5000, 0.0)
        );
        assert_eq!(p.confidence, Confidence::Low);
        // 25 tok/s measured for 2 s.
        for i in 1..=10u64 {
            tr.on_tokens(5, start + Duration::from_secs(2) + Duration::from_millis(200 * i));
        }
        let p = tr.snapshot(start + Duration::from_secs(4));
        assert_eq!(p.tokens_per_second, 25.0);
        assert_eq!(p.eta_ms, 8000);
        assert_eq!(p.elapsed_ms, 4000);

        let l = learner(&Options::default());
        let mut tr = tracker(&l, 10, Duration::ZERO, start);
        tr.on_tokens(60, start);
        // 240 remaining of the generic 300 at the generic 30 tok/s.
        assert_eq!(tr.snapshot(start).eta_ms, 8000);
    }

    #[test]
    fn first_event_needs_every_tokens_then_both_limits() {
        let l = learner(&Options::default());
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        let mut tr = tracker(&l, 10, Duration::from_millis(250), start);
        tr.on_tokens(9, ms(10));
        assert!(!tr.due(ms(10)));
        tr.on_tokens(1, ms(20));
        assert!(tr.due(ms(20)));
        tr.snapshot(ms(20));
        tr.on_tokens(50, ms(100));
        assert!(!tr.due(ms(269)));
        assert!(tr.due(ms(270)));
        tr.snapshot(ms(270));
        tr.on_tokens(9, ms(900));
        assert!(!tr.due(ms(900)));
    }

    #[test]
    fn json_shape_matches_contract() {
        let l = learner(&Options::default());
        let start = Instant::now();
        let mut tr = tracker(&l, 10, Duration::ZERO, start);
        tr.on_tokens(30, start + Duration::from_millis(1500));
        let p = tr.snapshot(start + Duration::from_millis(1500));
        let json = serde_json::to_string(&p).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"tokens":30,"elapsed_ms":1500,"tokens_per_second":0.0,"estimated_total":300,"percent":10.0,"eta_ms":9000,"confidence":"low","trend":"steady","model":"m"}"#
        );
        let f = tr.finish(start + Duration::from_secs(2));
        let json = serde_json::to_string(&f).unwrap_or_default();
        assert!(json.contains(r#""estimated_total":30,"percent":100.0,"eta_ms":0,"confidence":"high""#));
    }

    #[test]
    fn quarter_error_uses_estimate_shown_at_quarter() {
        let l = learner(&Options::default());
        let start = Instant::now();
        let mut tr = tracker(&l, 10, Duration::ZERO, start);
        for i in 1..=40u64 {
            let now = start + Duration::from_millis(100 * i);
            tr.on_tokens(10, now);
            if tr.due(now) {
                tr.snapshot(now);
            }
            // The estimate changes from 300 to 500 after the 10th snapshot.
            if i == 10 {
                for _ in 0..5 {
                    l.record("/r", "m", 500);
                }
            }
        }
        tr.finish(start + Duration::from_secs(5));
        // Quarter of 400 is 100 tokens: the 10th snapshot, estimate 300.
        assert_eq!(tr.estimate_error_at_quarter(400), Some(0.25));
        // Quarter of 404 is 101 tokens: still the 10th snapshot.
        assert_eq!(tr.estimate_error_at_quarter(404), Some(104.0 / 404.0));
        // Quarter of 600 is 150 tokens: estimate 500 by then.
        assert_eq!(tr.estimate_error_at_quarter(600), Some(100.0 / 600.0));
        // No snapshot before 10 tokens.
        assert_eq!(tr.estimate_error_at_quarter(36), None);
        assert_eq!(tr.estimate_error_at_quarter(0), None);
    }

    #[test]
    fn recorded_estimates_stay_bounded_on_long_streams() {
        let l = learner(&Options::default());
        let start = Instant::now();
        let mut tr = tracker(&l, 1, Duration::ZERO, start);
        for i in 1..=1_000_000u64 {
            tr.on_tokens(1, start);
            if i % 7 == 0 {
                tr.snapshot(start);
            }
        }
        assert!(tr.estimates.len() <= MAX_RECORDED_ESTIMATES);
        // Resolution near the quarter point stays within ~1% of the count.
        let quarter = 250_000u64;
        let idx = tr.estimates.partition_point(|&(t, _)| t <= quarter) - 1;
        assert!(quarter - tr.estimates[idx].0 <= quarter / 100);
        // Extrapolation while past every known total: 1.25 × count.
        let err = tr.estimate_error_at_quarter(1_000_000).unwrap_or(1.0);
        assert!(err > 0.6 && err < 0.7, "{err}");
    }

    /// A log-normal answer length with the given median and sigma (Box-Muller), at least 1.
    fn lognormal_len(rng: &mut StdRng, median: f64, sigma: f64) -> u64 {
        // 1 - u is in (0, 1], so ln never sees 0.
        let u1 = 1.0 - rng.gen::<f64>();
        let u2 = rng.gen::<f64>();
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        ((median * (sigma * normal).exp()).round() as u64).max(1)
    }

    /// Fraction of `eval` log-normal answers whose estimate at 25% of their
    /// length is within 25% of it, after learning `learn` answers:
    /// (via the tracker's shown estimate, via the estimator at exactly ceil(L/4)).
    fn quarter_accuracy(sigma: f64, seed: u64, learn: usize, eval: usize) -> (f64, f64) {
        let l = learner(&Options::default());
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..learn {
            l.record("/r", "m", lognormal_len(&mut rng, 300.0, sigma));
        }
        let (mut shown_hits, mut exact_hits) = (0, 0);
        let start = Instant::now();
        for _ in 0..eval {
            let len = lognormal_len(&mut rng, 300.0, sigma);
            let direct = l.estimate("/r", "m", len.div_ceil(4)).total;
            if direct.abs_diff(len) as f64 <= 0.25 * len as f64 {
                exact_hits += 1;
            }
            let mut tr = tracker(&l, 10, Duration::ZERO, start);
            let mut t = start;
            let mut sent = 0;
            while sent < len {
                let n = rng.gen_range(1..=4).min(len - sent);
                sent += n;
                t += Duration::from_millis(rng.gen_range(20..=80) * n);
                tr.on_tokens(n, t);
                if tr.due(t) {
                    tr.snapshot(t);
                }
            }
            tr.finish(t);
            if tr.estimate_error_at_quarter(len).is_some_and(|e| e <= 0.25) {
                shown_hits += 1;
            }
            l.record("/r", "m", len);
        }
        (shown_hits as f64 / eval as f64, exact_hits as f64 / eval as f64)
    }

    /// The brief's scenario: median 300, sigma 0.5, learn 50, evaluate 100.
    ///
    /// 80% is not reachable here by any estimator that only knows the count:
    /// at 25% the count is ~75 and nearly every past total exceeds it, so the
    /// best guess is essentially the median, and P(|300 − L| ≤ 0.25·L) for
    /// L ~ logN(ln 300, 0.5) is only ~0.39. The assertion checks we are near
    /// that ceiling, not at 80%.
    #[test]
    fn accuracy_at_quarter_sigma_0_5() {
        let (shown, exact) = quarter_accuracy(0.5, 0x5EED_2024, 50, 100);
        println!("sigma 0.5: within 25% at quarter: shown {shown:.2}, exact {exact:.2}");
        assert!(shown >= 0.28 && exact >= 0.28, "shown {shown}, exact {exact}");
    }

    /// Same scenario at sigma 0.15, where 80% is reachable (theory ~0.90).
    #[test]
    fn accuracy_at_quarter_reaches_80_percent_at_sigma_0_15() {
        let (shown, exact) = quarter_accuracy(0.15, 0x5EED_2024, 50, 100);
        println!("sigma 0.15: within 25% at quarter: shown {shown:.2}, exact {exact:.2}");
        assert!(shown >= 0.8 && exact >= 0.8, "shown {shown}, exact {exact}");
    }

    /// Mean accuracy over many seeds per sigma, to locate the largest sigma
    /// with ≥ 80% independently of any one seed. Prints a table.
    #[test]
    #[ignore = "slow measurement; run with --ignored --nocapture"]
    fn accuracy_sweep_over_sigma() {
        const SEEDS: u64 = 40;
        let mut largest_ok = 0.0;
        for sigma in [0.10, 0.15, 0.175, 0.19, 0.20, 0.21, 0.225, 0.25, 0.30, 0.40, 0.50] {
            let (mut shown_sum, mut exact_sum, mut shown_min) = (0.0, 0.0, 1.0f64);
            for seed in 1..=SEEDS {
                let (shown, exact) = quarter_accuracy(sigma, seed * 7919, 50, 100);
                shown_sum += shown;
                exact_sum += exact;
                shown_min = shown_min.min(shown);
            }
            let (shown, exact) = (shown_sum / SEEDS as f64, exact_sum / SEEDS as f64);
            println!(
                "sigma {sigma:.3}: mean within-25% shown {shown:.3} (min {shown_min:.2}), exact {exact:.3}"
            );
            if shown >= 0.8 {
                largest_ok = sigma;
            }
        }
        println!("largest sigma with mean >= 0.80: {largest_ok}");
        assert!(largest_ok >= 0.15);
    }
}
