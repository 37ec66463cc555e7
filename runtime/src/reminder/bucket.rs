//! The node's firing rate limit: one token bucket shared by all the reminder shards of a node,
//! so that a backlog (every reminder that came due during an outage) drains at
//! `reminders.fires_per_second_max` instead of waking every entity at once.

use std::time::{Duration, Instant};

/// Tokens the bucket holds when full, as seconds of the rate: a short burst is allowed (a
/// shard firing a few reminders due at the same millisecond), a backlog is not.
pub const BURST_SECONDS: f64 = 0.1;

/// A token bucket: `rate_per_second` tokens a second, at most `burst` held.
#[derive(Debug)]
pub struct TokenBucket {
    rate_per_second: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate_per_second` (above 0) with a burst of [`BURST_SECONDS`] of it
    /// (at least one token).
    pub fn new(rate_per_second: u32, now: Instant) -> Self {
        assert!(rate_per_second > 0, "a token bucket needs a rate above 0");
        let rate_per_second = f64::from(rate_per_second);
        let burst = (rate_per_second * BURST_SECONDS).ceil().max(1.0);
        Self {
            rate_per_second,
            burst,
            tokens: burst,
            refilled_at: now,
        }
    }

    /// The most tokens the bucket holds.
    pub fn burst(&self) -> u64 {
        self.burst as u64
    }

    /// Takes one token, or says how long until one is there.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_second).min(self.burst);
        self.refilled_at = now.max(self.refilled_at);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        Err(Duration::from_secs_f64(missing / self.rate_per_second).max(Duration::from_millis(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_gives_its_burst_then_waits() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100, start);
        assert_eq!(bucket.burst(), 10);
        for _ in 0..10 {
            bucket.try_take(start).expect("a token of the burst");
        }
        let wait = bucket.try_take(start).expect_err("the burst is spent");
        assert!(
            wait >= Duration::from_millis(9) && wait <= Duration::from_millis(11),
            "one token of 100/s is 10 ms away, not {wait:?}"
        );
        bucket
            .try_take(start + Duration::from_millis(10))
            .expect("refilled after 10 ms");
    }

    #[test]
    fn the_rate_holds_over_time_and_idle_time_refills_only_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(50, start);
        // Over 10 simulated seconds, taking whenever possible every millisecond.
        let mut taken = 0u64;
        for millisecond in 0..10_000 {
            if bucket
                .try_take(start + Duration::from_millis(millisecond))
                .is_ok()
            {
                taken += 1;
            }
        }
        // 10 s at 50/s, plus the initial burst of 5.
        assert!((500..=506).contains(&taken), "took {taken}");
        // An hour idle refills the burst, not an hour of tokens.
        let later = start + Duration::from_secs(3_600);
        let mut burst = 0;
        while bucket.try_take(later).is_ok() {
            burst += 1;
        }
        assert_eq!(burst, bucket.burst());
    }

    #[test]
    fn a_tiny_rate_still_has_one_token() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1, start);
        assert_eq!(bucket.burst(), 1);
        bucket.try_take(start).expect("one token");
        assert!(bucket.try_take(start).is_err());
    }
}
