//! A token bucket: at most `per_second` events per second, in bursts of up to as many.

use std::sync::Mutex;
use tokio::time::Instant;

/// A token bucket shared by its callers: `per_second` tokens per second, bursts up to the same number.
pub struct RateLimit {
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// A full bucket.
    pub fn new(per_second: u32) -> Self {
        let r = f64::from(per_second);
        RateLimit {
            per_second: r,
            state: Mutex::new((r, Instant::now())),
        }
    }

    /// Takes one token if available.
    pub fn allow(&self) -> bool {
        let mut s = crate::sync::lock(&self.state);
        let now = Instant::now();
        let refill = now.saturating_duration_since(s.1).as_secs_f64() * self.per_second;
        s.0 = (s.0 + refill).min(self.per_second);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limit_refills() {
        let rl = RateLimit::new(2);
        assert!(rl.allow() && rl.allow());
        assert!(!rl.allow());
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        assert!(rl.allow());
        assert!(!rl.allow());
    }
}
