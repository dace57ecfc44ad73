//! Token buckets: a connection's frame allowance, which large pages drain
//! by their size and whose refusals are counted, and the allowance of
//! sends one user shares across their connections.

use std::time::Instant;

/// Bytes of a `Sync` or `History` page that cost one more rate-limit token
/// beyond the request's own: a full 64 KiB page costs five.
pub(crate) const PAGE_BYTES_PER_TOKEN: f64 = 16.0 * 1024.0;

/// A connection's token bucket of frames.
#[derive(Debug)]
pub(crate) struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
    /// Refusals not yet forgiven: each adds one, and they fade at the
    /// bucket's rate, so a client that waits as told stays near zero while
    /// one that keeps sending regardless passes the burst in a moment,
    /// however many of its frames get through meanwhile.
    refused: f64,
}

impl RateLimit {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            at: Instant::now(),
            refused: 0.0,
        }
    }

    /// Takes `cost` more tokens for work already done (a large page): the
    /// bucket may go below empty, down to one burst, and the frames after
    /// wait until it refills.
    pub(crate) fn charge(&mut self, cost: f64) {
        self.tokens = (self.tokens - cost).max(-self.burst);
    }

    /// Takes a token for a frame; false (and one more refusal) when there
    /// is none.
    pub(crate) fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refused = (self.refused - elapsed * self.rate).max(0.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.refused += 1.0;
            false
        }
    }

    /// Counts a frame refused by another allowance (the user's sends).
    pub(crate) fn refuse(&mut self) {
        self.refused += 1.0;
    }

    /// More refusals outstanding than one burst: the client ignores them.
    pub(crate) fn flooded(&self) -> bool {
        self.refused > self.burst
    }
}

/// Bytes of a `Send`'s body that cost one more token of the user's sends
/// beyond the message's own: a largest (16 KiB) message costs five.
pub(crate) const SEND_BYTES_PER_TOKEN: usize = 4 * 1024;

/// A bucket several connections draw on (one user's sends on this node);
/// its rate and burst are the caller's.
#[derive(Debug)]
pub(crate) struct SharedBucket {
    /// `None` until first used: the bucket starts full.
    tokens: Option<f64>,
    at: Instant,
    rate: f64,
    burst: f64,
}

impl Default for SharedBucket {
    fn default() -> Self {
        Self {
            tokens: None,
            at: Instant::now(),
            rate: 1.0,
            burst: 1.0,
        }
    }
}

impl SharedBucket {
    /// Takes `cost` tokens from a bucket of `rate` per second holding at
    /// most `burst`; false, taking nothing, when it holds fewer.
    pub(crate) fn take(&mut self, rate: u32, burst: u32, cost: f64) -> bool {
        self.rate = f64::from(rate.max(1));
        self.burst = f64::from(burst.max(1));
        let now = Instant::now();
        let tokens = self.available(now);
        self.at = now;
        let taken = tokens >= cost.min(self.burst);
        self.tokens = Some(if taken { tokens - cost } else { tokens });
        taken
    }

    /// Whether the bucket has refilled: forgetting it then loses nothing.
    pub(crate) fn is_full(&self) -> bool {
        self.available(Instant::now()) >= self.burst
    }

    fn available(&self, now: Instant) -> f64 {
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.tokens
            .map_or(self.burst, |t| (t + elapsed * self.rate).min(self.burst))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_client_that_ignores_refusals_floods_even_when_frames_get_through() {
        // A token each millisecond; the client sends about ten times that,
        // so a frame gets through now and then and fewer than a burst of
        // refusals come between two of them.
        let mut rate = RateLimit::new(1000, 200);
        let started = Instant::now();
        let mut through = 0;
        while !rate.flooded() && started.elapsed() < Duration::from_secs(2) {
            if rate.take() {
                through += 1;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        assert!(rate.flooded(), "{through} frames through, never flooded");
    }

    #[test]
    fn a_client_that_waits_as_told_is_never_flooded() {
        let mut rate = RateLimit::new(1000, 10);
        for _ in 0..2000 {
            if !rate.take() {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(!rate.flooded());
        }
    }

    #[test]
    fn a_shared_bucket_starts_full_and_refills() {
        let mut sends = SharedBucket::default();
        assert!((0..5).all(|_| sends.take(1000, 5, 1.0)));
        assert!(!sends.take(1000, 5, 1.0));
        assert!(!sends.is_full());
        std::thread::sleep(Duration::from_millis(3));
        assert!(sends.take(1000, 5, 1.0));
        std::thread::sleep(Duration::from_millis(10));
        assert!(sends.is_full());
        // A large send costs more than one token.
        assert!(sends.take(1000, 5, 4.5));
        assert!(!sends.take(1000, 5, 1.0));
    }
}
