//! Per-request bounds of the HTTP API: a request-rate limit per remote
//! address and a deadline per request.
//!
//! The rate limit is a token bucket per IP address (`governor`'s keyed
//! limiter, GCRA): `rate_per_sec` on average, `burst` at once. A request
//! over it is answered `429 RATE_LIMITED` with `Retry-After` at once, before
//! any handler work. Buckets of addresses that went quiet are dropped every
//! [`PRUNE_EVERY`] requests, so a scan from many addresses cannot grow the
//! map without end. `/healthz` and `/metrics` are not limited: load
//! balancers and scrapers poll them from one address by design.
//!
//! Log-ins are paced per username as well, from whatever addresses they
//! come ([`LOGIN_BURST`] at once, then [`LOGIN_PER_MINUTE`]): one account's
//! password cannot be guessed faster by spreading the guesses over many
//! addresses, and each refused attempt costs no password hash.
//!
//! The deadline bounds how long a handler may run (storage stalls, a queue
//! for password hashing): past it the request is answered `503
//! SERVER_BUSY` with `Retry-After` and the handler is dropped. A long-poll
//! sync gets its longest wait on top, so the deadline never cuts a wait the
//! client asked for.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hanmadi_proto::ErrorCode;

use super::error::ApiError;

/// Requests between two sweeps of idle buckets.
pub const PRUNE_EVERY: u64 = 4096;

/// The HTTP API's per-request bounds, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Requests per second one remote address may make, on average.
    pub rate_per_sec: u32,
    /// Requests one remote address may make at once.
    pub burst: u32,
    /// Longest a handler may run before the request is answered 503.
    pub deadline: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            rate_per_sec: 100,
            burst: 200,
            deadline: Duration::from_secs(10),
        }
    }
}

/// Log-in attempts one username may take at once.
pub const LOGIN_BURST: u32 = 5;

/// Log-in attempts one username may take per minute after its burst.
pub const LOGIN_PER_MINUTE: u32 = 6;

/// A token bucket per key whose idle buckets are dropped every
/// [`PRUNE_EVERY`] checks, so keys a client chooses (addresses, usernames)
/// cannot grow the map without end.
#[derive(Debug)]
struct Paced<K: Clone + Eq + std::hash::Hash> {
    buckets: DefaultKeyedRateLimiter<K>,
    /// Checks made, to schedule the sweeps.
    checks: AtomicU64,
}

impl<K: Clone + Eq + std::hash::Hash> Paced<K> {
    fn new(quota: Quota) -> Self {
        Self {
            buckets: RateLimiter::keyed(quota),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until one is
    /// free.
    fn check(&self, key: &K) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
        self.buckets
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The shared state of the two layers, and the pace of log-ins.
#[derive(Debug)]
pub struct RequestLimiter {
    limits: RequestLimits,
    /// Requests per remote address.
    requests: Paced<IpAddr>,
    /// Log-in attempts per username (lowercased, as usernames compare).
    logins: Paced<String>,
}

impl RequestLimiter {
    /// A limiter for `limits`; zero rates count as one.
    #[must_use]
    pub fn new(limits: RequestLimits) -> Self {
        let at_least_one = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Self {
            limits,
            requests: Paced::new(
                Quota::per_second(at_least_one(limits.rate_per_sec))
                    .allow_burst(at_least_one(limits.burst)),
            ),
            logins: Paced::new(
                Quota::per_minute(at_least_one(LOGIN_PER_MINUTE))
                    .allow_burst(at_least_one(LOGIN_BURST)),
            ),
        }
    }

    /// Takes one log-in attempt from `username`'s bucket, or says how long
    /// until one is free.
    pub fn log_in_attempt(&self, username: &str) -> Result<(), Duration> {
        self.logins.check(&username.to_lowercase())
    }

    /// Takes one request from `ip`'s bucket, or says how long until one is
    /// free.
    fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.requests.check(&ip)
    }

    /// Addresses that currently have a bucket.
    #[must_use]
    pub fn tracked_addresses(&self) -> usize {
        self.requests.buckets.len()
    }
}

/// Middleware: refuses a request over its address's rate with `429`.
///
/// Requests without a peer address (the router called in-process, as some
/// tests do) are not limited.
pub async fn rate_limit(
    State(limiter): State<Arc<RequestLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let exempt = path == "/healthz" || path == "/metrics";
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| crate::registry::limited_address(addr.ip()));
    if let (false, Some(ip)) = (exempt, peer) {
        if let Err(wait) = limiter.check(ip) {
            let mut response = ApiError::new(
                ErrorCode::RateLimited,
                "too many requests from this address",
            )
            .into_response();
            // Whole seconds, rounded up: `Retry-After` takes no fractions.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
    }
    next.run(request).await
}

/// Middleware: answers `503 SERVER_BUSY` when the handler outlives the
/// deadline (plus the longest long-poll wait for `/v1/sync`).
pub async fn deadline(
    State(limiter): State<Arc<RequestLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    let mut budget = limiter.limits.deadline;
    if request.uri().path() == "/v1/sync" {
        budget += super::sync::MAX_WAIT;
    }
    match tokio::time::timeout(budget, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ErrorCode::ServerBusy,
            "the request did not finish in time; try again",
        )
        .into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_bucket() {
        let limiter = RequestLimiter::new(RequestLimits {
            rate_per_sec: 1,
            burst: 3,
            deadline: Duration::from_secs(1),
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
        }
        let wait = limiter.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limiter.check(b).is_ok());
        assert_eq!(limiter.tracked_addresses(), 2);
    }
}
