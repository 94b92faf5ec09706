//! Exponential backoff with optional jitter, shared by everything that retries (plugin
//! restarts, source reconnects).

use std::time::{Duration, Instant};

/// Delays doubling from `min` to `max`; [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    jitter: bool,
    retry_at: Option<Instant>,
    seed: u64,
}

impl Backoff {
    /// Backoff without jitter.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            next: min,
            jitter: false,
            retry_at: None,
            seed: 0,
        }
    }

    /// Backoff whose delays are spread over [½, 1] of the nominal delay, so many sources
    /// failing together do not retry together. `seed` decorrelates instances.
    pub fn with_jitter(min: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            jitter: true,
            seed: seed | 1,
            ..Backoff::new(min, max)
        }
    }

    /// Record a failure; returns how long to wait before retrying.
    pub fn fail(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        let delay = if self.jitter {
            // xorshift: deterministic per seed, good enough to spread retries.
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            let fraction = 0.5 + (self.seed % 1000) as f64 / 2000.0;
            nominal.mul_f64(fraction)
        } else {
            nominal
        };
        self.retry_at = Some(Instant::now() + delay);
        delay
    }

    /// Record a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
        self.retry_at = None;
    }

    /// Time left before a retry is allowed, if any.
    pub fn remaining(&self) -> Option<Duration> {
        let left = self.retry_at?.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(350));
        assert_eq!(
            [b.fail(), b.fail(), b.fail(), b.fail()],
            [ms(100), ms(200), ms(350), ms(350)]
        );
        assert!(b.remaining().is_some());
        b.reset();
        assert_eq!(b.fail(), ms(100));
        let mut j = Backoff::with_jitter(ms(100), ms(1000), 42);
        for _ in 0..20 {
            let d = j.fail();
            assert!(d >= ms(50) && d <= ms(1000), "{d:?}");
        }
    }
}
