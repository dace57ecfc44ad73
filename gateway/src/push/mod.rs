//! Push notifications for offline recipients: the webhook worker.
//!
//! - [`payload`]: the request bodies (Hanmadi's shape and Gorush's).
//! - `worker`: the scan of due users, the claim, the request, retries.
//!
//! The durable state (pending entries, the index by first-pending time,
//! jobs with their leases) lives in the chat keyspace
//! (`hanmadi_storage::chat`, `push.rs`); this module only decides when and
//! how to send. See `docs/ARCHITECTURE.md`, "Push notifications".

pub mod payload;
mod worker;

use std::time::Duration;

pub use payload::PushFormat;
pub(crate) use worker::run;

/// How the node pushes to offline recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// Where requests go (an `http://` URL); `None`: no worker.
    pub webhook: Option<String>,
    /// How long a message waits for its recipient to come online, sync or
    /// ack before it is pushed.
    pub delay: Duration,
    /// Whether requests carry the newest message's text.
    pub preview: bool,
    /// The JSON shape of requests.
    pub format: PushFormat,
    /// Most requests in flight at once.
    pub max_in_flight: usize,
    /// Longest one request may take.
    pub timeout: Duration,
    /// Attempts of one request before it is dropped.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each next one.
    pub retry_base: Duration,
    /// Longest wait between two attempts.
    pub retry_max: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            delay: Duration::from_secs(2),
            preview: true,
            format: PushFormat::Hanmadi,
            max_in_flight: 64,
            timeout: Duration::from_secs(10),
            max_attempts: 10,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
        }
    }
}
