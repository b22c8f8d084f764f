//! Reconnect delays: capped exponential backoff with full jitter.
//!
//! Pure: the caller passes the random draw, so the schedule is tested without a clock or a
//! random source. Jitter spreads the reconnects of a whole fleet after a broker restart, so
//! hundreds of agents do not knock at the same instant.

use std::time::Duration;

/// The reconnect schedule of one connection.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A schedule starting at `min` and never exceeding `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The delay before the next attempt. `unit` is a uniform random draw in `[0, 1)`; the
    /// delay is uniform in `[ceiling / 2, ceiling)`, where the ceiling doubles per failure
    /// up to the cap, so the agent never hammers the broker and never waits longer than `max`.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let exp = self.attempt.min(30);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self
            .min
            .checked_mul(1u32 << exp)
            .unwrap_or(self.max)
            .min(self.max);
        let unit = unit.clamp(0.0, 1.0);
        ceiling.mul_f64(0.5 + unit / 2.0)
    }

    /// A successful connection starts the schedule again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_until_the_cap_and_never_exceed_it() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let top: Vec<_> = (0..8).map(|_| b.next_delay(1.0)).collect();
        let ms: Vec<u128> = top.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        for _ in 0..100 {
            assert!(b.next_delay(0.999) <= Duration::from_secs(2));
        }
    }

    #[test]
    fn jitter_spreads_delays_over_the_upper_half() {
        let mut low = Backoff::new(Duration::from_millis(1000), Duration::from_secs(60));
        let mut high = low.clone();
        assert_eq!(low.next_delay(0.0), Duration::from_millis(500));
        assert_eq!(high.next_delay(1.0), Duration::from_millis(1000));
    }

    #[test]
    fn reset_starts_again_from_the_minimum() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..5 {
            b.next_delay(1.0);
        }
        b.reset();
        assert_eq!(b.next_delay(1.0), Duration::from_millis(100));
    }

    #[test]
    fn a_huge_number_of_failures_does_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..10_000 {
            assert!(b.next_delay(0.5) <= Duration::from_secs(30));
        }
    }
}
