//! Groups tokens into batches by count, size and time (sans-IO: time is passed in).

use std::time::Duration;
use tokio::time::Instant;

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a token waits.
    pub max_delay: Duration,
    /// Tokens per batch at most.
    pub max_tokens: usize,
    /// Bytes of text per batch at most.
    pub max_bytes: usize,
    /// Follow the token rate.
    pub adaptive: bool,
}

/// A batch ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The concatenated token text.
    pub text: String,
    /// How many tokens it holds.
    pub tokens: usize,
}

/// Accumulates tokens and says when to flush.
#[derive(Debug)]
pub struct Batcher {
    limits: Limits,
    text: String,
    tokens: usize,
    deadline: Option<Instant>,
    seen_first: bool,
    last_token: Option<Instant>,
    /// Smoothed gap between tokens (adaptive mode).
    gap: Option<Duration>,
}

impl Batcher {
    /// An empty batcher.
    pub fn new(limits: Limits) -> Self {
        Batcher {
            limits,
            text: String::new(),
            tokens: 0,
            deadline: None,
            seen_first: false,
            last_token: None,
            gap: None,
        }
    }

    /// Adds a token received at `now`; returns a batch when one must go out at once.
    pub fn push(&mut self, token: &str, now: Instant) -> Option<Batch> {
        self.observe_gap(now);
        if !self.text.is_empty() && self.text.len() + token.len() > self.limits.max_bytes {
            // The new token would overflow the byte limit: send what we have, start afresh with it.
            let out = self.take();
            self.add(token, now);
            if self.due(now) {
                // Only one batch can be returned: the new one is due now, for the caller's timer.
                self.deadline = Some(now);
            }
            return out;
        }
        self.add(token, now);
        self.flush_if_due(now)
    }

    fn add(&mut self, token: &str, now: Instant) {
        if self.tokens == 0 {
            self.deadline = Some(now + self.limits.max_delay);
        }
        self.text.push_str(token);
        self.tokens += 1;
    }

    fn flush_if_due(&mut self, now: Instant) -> Option<Batch> {
        let first = !self.seen_first;
        self.seen_first = true;
        if first || self.due(now) {
            return self.take();
        }
        None
    }

    /// Whether the pending batch must go now: full, a trickle, or past its deadline.
    fn due(&self, now: Instant) -> bool {
        let full = self.tokens >= self.limits.max_tokens || self.text.len() >= self.limits.max_bytes;
        full || self.trickle(now) || self.deadline.is_some_and(|d| now >= d)
    }

    /// Adaptive mode: hold a batch only if another token is expected before its deadline.
    fn trickle(&self, now: Instant) -> bool {
        match (self.limits.adaptive, self.gap, self.deadline) {
            (true, Some(gap), Some(deadline)) => now + gap > deadline,
            _ => false,
        }
    }

    fn observe_gap(&mut self, now: Instant) {
        if let Some(prev) = self.last_token {
            let g = now.saturating_duration_since(prev);
            // EWMA with weight 1/4: follows a change of pace within a few tokens.
            self.gap = Some(match self.gap {
                Some(old) => (old * 3 + g) / 4,
                None => g,
            });
        }
        self.last_token = Some(now);
    }

    /// When the pending batch must be flushed, if one is pending (possibly `now`: flush it at once).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Takes the pending batch, if any (deadline reached, another event arrived, or the end).
    pub fn take(&mut self) -> Option<Batch> {
        if self.tokens == 0 {
            return None;
        }
        self.deadline = None;
        let tokens = std::mem::take(&mut self.tokens);
        let cap = self.text.capacity();
        let text = std::mem::replace(
            &mut self.text,
            String::with_capacity(cap.min(self.limits.max_bytes)),
        );
        Some(Batch { text, tokens })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(adaptive: bool) -> Limits {
        Limits {
            max_delay: Duration::from_millis(100),
            max_tokens: 4,
            max_bytes: 16,
            adaptive,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn first_token_goes_at_once() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(false));
        assert_eq!(
            b.push("a", t0),
            Some(Batch {
                text: "a".into(),
                tokens: 1
            })
        );
        assert_eq!(b.push("b", t0 + ms(1)), None);
        assert_eq!(b.deadline(), Some(t0 + ms(101)));
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_on_count_bytes_and_time() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(false));
        b.push("a", t0);
        assert_eq!(b.push("1", t0 + ms(1)), None);
        assert_eq!(b.push("2", t0 + ms(2)), None);
        assert_eq!(b.push("3", t0 + ms(3)), None);
        assert_eq!(
            b.push("4", t0 + ms(4)),
            Some(Batch {
                text: "1234".into(),
                tokens: 4
            })
        );
        // Bytes: 10 + 10 > 16 flushes the first before adding the second.
        assert_eq!(b.push("0123456789", t0 + ms(5)), None);
        assert_eq!(
            b.push("abcdefghij", t0 + ms(6)),
            Some(Batch {
                text: "0123456789".into(),
                tokens: 1
            })
        );
        // Time: the pending token goes when its deadline passes.
        assert_eq!(b.deadline(), Some(t0 + ms(106)));
        assert_eq!(
            b.push("k", t0 + ms(106)),
            Some(Batch {
                text: "abcdefghijk".into(),
                tokens: 2
            })
        );
        assert_eq!(b.take(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn oversized_single_token_goes_alone() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(false));
        b.push("a", t0);
        let big = "x".repeat(40);
        assert_eq!(b.push(&big, t0 + ms(1)), Some(Batch { text: big, tokens: 1 }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_left_by_an_overflow_is_due_at_once() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(false));
        b.push("a", t0);
        assert_eq!(b.push("bb", t0 + ms(1)), None);
        // The pending batch goes; the oversized token left behind cannot grow and must not wait.
        let big = "x".repeat(40);
        assert_eq!(
            b.push(&big, t0 + ms(2)),
            Some(Batch {
                text: "bb".into(),
                tokens: 1
            })
        );
        assert_eq!(b.deadline(), Some(t0 + ms(2)));
        assert_eq!(b.take(), Some(Batch { text: big, tokens: 1 }));
    }

    #[tokio::test(start_paused = true)]
    async fn adaptive_trickle_goes_at_once_and_burst_is_grouped() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(true));
        b.push("a", t0);
        // Slow: 300 ms apart, longer than max_delay: every token goes at once.
        let mut t = t0;
        for i in 0..5 {
            t += ms(300);
            assert!(b.push("s", t).is_some(), "slow token {i} held");
        }
        // Fast: 10 ms apart. After a few tokens to learn the new pace, grouped by max_tokens.
        let mut sizes = Vec::new();
        for _ in 0..40 {
            t += ms(10);
            if let Some(batch) = b.push("f", t) {
                sizes.push(batch.tokens);
            }
        }
        assert!(sizes.len() <= 14, "burst sent as {sizes:?}");
        assert!(sizes[sizes.len() - 4..].iter().all(|&n| n == 4), "{sizes:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_adaptive_slow_tokens_wait_for_deadline() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(false));
        b.push("a", t0);
        assert_eq!(b.push("s", t0 + ms(300)), None);
    }
}
