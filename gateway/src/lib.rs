//! Hanmadi gateway: the `hanmadi` binary's server side.
//!
//! - [`server`]: a running node (router, registry, listeners) and its drain.
//! - [`listener`]: accept loops for TCP and TLS.
//! - [`conn`]: one task per connection: handshake, frames, limits, writes.
//! - [`registry`]: user → live connections; the router's delivery sink and
//!   the node's presence index; per-address counts and strikes.
//! - `rate`: token buckets (a connection's frames, a user's sends).
//! - [`auth`]: tokens (Hanmadi's own and HS256 JWTs).
//! - [`tls`]: rustls configuration and self-signed certificates.
//! - [`config`]: flags, environment and TOML configuration.
//! - [`metrics`]: counters for `/metrics`.
//! - [`http`]: the HTTP API, `/healthz` and `/metrics`.
//! - [`password`]: argon2id password hashing, a bounded number at once.
//! - [`push`]: the webhook worker that pushes to offline recipients.
//! - [`ws`]: `/ws`, WebSocket connections on the HTTP and HTTPS ports.
//! - [`web`]: the web chat client (`GET /`) and operator view (`GET
//!   /admin`), embedded in the binary.
//! - [`http_listener`]: the HTTP and HTTPS listeners (the routes of
//!   [`http`] and [`ws`], behind TLS for HTTPS).

pub mod auth;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod http;
pub mod http_listener;
pub mod listener;
pub mod metrics;
pub mod password;
pub mod push;
mod rate;
pub mod registry;
pub mod server;
pub mod tls;
pub mod web;
pub mod ws;

pub use server::{Listeners, Server, ServerOptions};

/// Milliseconds since the Unix epoch (0 for a clock before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
