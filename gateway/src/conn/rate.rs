//! The per-connection rate limit: a token bucket of frames, which large
//! pages drain by their size.

use std::time::Instant;

/// Bytes of a `Sync` or `History` page that cost one more rate-limit token
/// beyond the request's own: a full 64 KiB page costs five.
pub(super) const PAGE_BYTES_PER_TOKEN: f64 = 16.0 * 1024.0;

/// A token bucket of frames.
#[derive(Debug)]
pub(super) struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
    pub(super) refused: u32,
}

impl RateLimit {
    pub(super) fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            at: Instant::now(),
            refused: 0,
        }
    }

    /// Takes `cost` more tokens for work already done (a large page): the
    /// bucket may go below empty, down to one burst, and the frames after
    /// wait until it refills.
    pub(super) fn charge(&mut self, cost: f64) {
        self.tokens = (self.tokens - cost).max(-self.burst);
    }

    pub(super) fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}
