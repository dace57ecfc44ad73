//! Jittered exponential backoff between reconnect and retry attempts.

use std::time::Duration;

use rand::Rng;

/// Waits that double from `initial` up to `max`, each drawn at random from
/// the upper half of its ceiling ("equal jitter"): clients disconnected
/// together (a draining node) spread out instead of returning in step,
/// and no wait collapses to zero.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    /// Attempts since the last reset; the exponent.
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    /// The wait before the next attempt; each call raises the next ceiling.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(2u32.saturating_pow(self.failures))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::rng().random_range(0..=spread))
    }

    /// Back to the initial wait, after a connection proved healthy.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_cap_with_jitter_and_reset() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut backoff = Backoff::new(initial, max);
        let mut ceiling = initial;
        for _ in 0..40 {
            let wait = backoff.next_delay();
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{wait:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(max);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= initial);
    }

    #[test]
    fn zero_initial_wait_stays_zero() {
        let mut backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(backoff.next_delay(), Duration::ZERO);
    }
}
