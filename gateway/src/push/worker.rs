//! The webhook worker: pages the due part of the push index, claims each
//! due user (one job per user, leased in storage), sends the job's request
//! and records the outcome.
//!
//! Bounds: at most `max_in_flight` users are held at once (a semaphore),
//! each holding one request body; a scan reads at most that many index
//! entries beyond those already held. While the gateway is down, jobs wait
//! in storage for their retry time, not in memory, so nothing grows.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hanmadi_storage::chat::{
    Claimed, DueFrom, DueKind, DuePush, PushClaim, PushContent, PushJob, PushOutcome,
};
use hanmadi_storage::kv::Kv;
use hanmadi_storage::ChatStore;
use parking_lot::Mutex;
use rand::Rng as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{payload, PushConfig};
use crate::metrics::Metrics;
use crate::now_ms;

/// A claim's lease outlasts its request by this much: time for the claim
/// and outcome transactions, and for clock differences between nodes.
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// How often a scan starts from the front of the index, for entries
/// written behind where scans start (see [`DueFrom`]).
const FULL_SCAN_EVERY: Duration = Duration::from_secs(5);

/// How long a draining node waits for push requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Most bytes of a response read (and dropped) so its connection can be
/// kept alive; a longer one is cut and its connection closed.
const MAX_RESPONSE_READ: usize = 64 * 1024;

/// What one attempt's response means.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// 2xx.
    Accepted,
    /// Any other answer but the retryable ones: dropped at once.
    Rejected(u16),
    /// 5xx, 408, 429, a timeout or no connection.
    Retry(String),
}

fn classify(status: reqwest::StatusCode) -> Verdict {
    if status.is_success() {
        Verdict::Accepted
    } else if status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        Verdict::Retry(format!("status {}", status.as_u16()))
    } else {
        Verdict::Rejected(status.as_u16())
    }
}

/// The wait after failed attempt number `attempt` (1-based): the base
/// doubled per attempt up to the cap, its upper half drawn at random so
/// many users failing together do not come back together.
fn backoff(config: &PushConfig, attempt: u32) -> Duration {
    let doubling = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
    let full = config
        .retry_base
        .saturating_mul(doubling)
        .min(config.retry_max);
    let half = full / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// Users held by this worker; an entry leaves with its task.
struct Held {
    users: Mutex<HashSet<u64>>,
}

struct HeldGuard {
    held: Arc<Held>,
    user: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.held.users.lock().remove(&self.user);
    }
}

/// What every attempt shares.
struct Shared<K: Kv> {
    store: ChatStore<K>,
    client: reqwest::Client,
    url: reqwest::Url,
    config: PushConfig,
    metrics: Arc<Metrics>,
    /// This process's id as a claim holder.
    owner: u64,
}

/// Runs the worker until `shutdown`, then lets requests in flight finish.
pub(crate) async fn run<K: Kv>(
    store: ChatStore<K>,
    config: PushConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let Some(url) = config
        .webhook
        .as_deref()
        .and_then(|u| reqwest::Url::parse(u).ok())
    else {
        tracing::error!("push webhook URL is not a URL; pushes are off");
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        // A redirect is an answer: the configured URL is the endpoint.
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(config.max_in_flight)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the push HTTP client; pushes are off");
            return;
        }
    };
    let max_in_flight = config.max_in_flight.max(1);
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let held = Arc::new(Held {
        users: Mutex::new(HashSet::new()),
    });
    // Often enough that a push leaves well within a second of its time.
    let idle_tick =
        (config.delay / 10).clamp(Duration::from_millis(20), Duration::from_millis(250));
    let shared = Arc::new(Shared {
        store,
        client,
        url,
        config,
        metrics,
        owner: rand::random(),
    });
    let mut tasks = JoinSet::new();
    let mut from = DueFrom::default();
    let mut last_full_scan = Instant::now();
    tracing::info!(webhook = %without_secrets(&shared.url), "push worker started");
    loop {
        let free = permits.available_permits();
        let mut caught_up = true;
        if free > 0 {
            let held_now = held.users.lock().len();
            // Past the entries of users already held, at most a slot's worth.
            let limit = free + held_now;
            let delay_ms = u64::try_from(shared.config.delay.as_millis()).unwrap_or(u64::MAX);
            if last_full_scan.elapsed() >= FULL_SCAN_EVERY {
                from = DueFrom::default();
                last_full_scan = Instant::now();
            }
            let now = now_ms();
            match shared.store.due_pushes(from, now, delay_ms, limit).await {
                Ok(due) => {
                    caught_up = due.len() < limit;
                    // The next scan starts at the first entry still there,
                    // or where this one ended.
                    let first = |kind| due.iter().filter(|d| d.kind == kind).map(|d| d.at).min();
                    from = DueFrom {
                        pending: first(DueKind::Pending)
                            .unwrap_or_else(|| now.saturating_sub(delay_ms)),
                        scheduled: first(DueKind::Scheduled).unwrap_or(now),
                    };
                    let mut seen = HashSet::new();
                    for d in due {
                        if !seen.insert(d.user) || held.users.lock().contains(&d.user) {
                            continue;
                        }
                        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                            caught_up = false;
                            break;
                        };
                        held.users.lock().insert(d.user);
                        let guard = HeldGuard {
                            held: Arc::clone(&held),
                            user: d.user,
                            _permit: permit,
                        };
                        tasks.spawn(attempt(Arc::clone(&shared), d, guard));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "push scan failed"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            // A slot came free: scan again at once unless the index ran
            // dry, for every slot freed meanwhile (one scan, not one each).
            Some(_) = tasks.join_next(), if !caught_up && !tasks.is_empty() => {
                while tasks.try_join_next().is_some() {}
            }
            () = tokio::time::sleep(idle_tick) => {
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    // Requests in flight get a moment to finish; one cut off here is sent
    // again, with the same key, after its lease by whoever runs next.
    let finish = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, finish).await.is_err() {
        tasks.shutdown().await;
    }
}

/// Claims one due user and, if there is a request to send, sends it.
async fn attempt<K: Kv>(shared: Arc<Shared<K>>, due: DuePush, guard: HeldGuard) {
    let config = &shared.config;
    let build = |content: &PushContent, key: &str| {
        payload::build(config.format, config.preview, content, key)
    };
    let claim = PushClaim {
        owner: shared.owner,
        now: now_ms(),
        delay_ms: u64::try_from(config.delay.as_millis()).unwrap_or(u64::MAX),
        lease_ms: u64::try_from((config.timeout + LEASE_MARGIN).as_millis()).unwrap_or(u64::MAX),
        build: &build,
    };
    match shared.store.claim_push(due, claim).await {
        Ok(Claimed::Send(job)) => send(&shared, job).await,
        Ok(Claimed::Unreachable) => {
            shared.metrics.push_dropped("no_devices");
        }
        Ok(Claimed::Nothing) => {}
        Err(e) => tracing::warn!(user = due.user, error = %e, "push claim failed"),
    }
    drop(guard);
}

async fn send<K: Kv>(shared: &Shared<K>, job: PushJob) {
    let metrics = &shared.metrics;
    let config = &shared.config;
    metrics.push_in_flight_started();
    let started = Instant::now();
    let verdict = match shared
        .client
        .post(shared.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", &job.idempotency_key)
        .body(job.body.clone())
        .send()
        .await
    {
        Ok(mut response) => {
            let verdict = classify(response.status());
            // Read the answer so the connection can serve the next request.
            let mut read = 0;
            while let Ok(Some(chunk)) = response.chunk().await {
                read += chunk.len();
                if read > MAX_RESPONSE_READ {
                    break;
                }
            }
            verdict
        }
        Err(e) => Verdict::Retry(e.to_string()),
    };
    metrics
        .push_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.push_in_flight.dec();
    let outcome = match verdict {
        Verdict::Accepted => {
            metrics.push_sent.inc();
            PushOutcome::Done
        }
        Verdict::Rejected(status) => {
            tracing::warn!(user = job.user, status, key = %job.idempotency_key,
                "push gateway refused a request; dropped");
            metrics.push_dropped("rejected");
            PushOutcome::Done
        }
        Verdict::Retry(why) if job.attempt >= config.max_attempts => {
            tracing::warn!(user = job.user, attempts = job.attempt, error = %why,
                key = %job.idempotency_key, "push failed on every attempt; dropped");
            metrics.push_dropped("attempts");
            PushOutcome::Done
        }
        Verdict::Retry(why) => {
            let wait = backoff(config, job.attempt);
            tracing::debug!(user = job.user, attempt = job.attempt, error = %why,
                retry_in_ms = wait.as_millis() as u64, "push failed; will retry");
            metrics.push_retried.inc();
            PushOutcome::RetryAt(
                now_ms().saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
            )
        }
    };
    if let Err(e) = shared
        .store
        .finish_push(job.user, &job.idempotency_key, outcome, now_ms())
        .await
    {
        // The job stays leased: it is sent again, with the same key, when
        // the lease ends.
        tracing::warn!(user = job.user, error = %e, "recording a push outcome failed");
    }
}

/// `url` without what may be a secret: the user and password (sent as
/// Basic authentication) and the query.
fn without_secrets(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_logged_webhook_shows_no_credentials_or_query() {
        let url =
            reqwest::Url::parse("http://hook:s3cret@push.internal:8080/send?key=abc").unwrap();
        assert_eq!(without_secrets(&url), "http://push.internal:8080/send");
    }

    #[test]
    fn statuses() {
        use reqwest::StatusCode as S;
        assert_eq!(classify(S::OK), Verdict::Accepted);
        assert_eq!(classify(S::ACCEPTED), Verdict::Accepted);
        assert_eq!(classify(S::BAD_REQUEST), Verdict::Rejected(400));
        assert_eq!(classify(S::MOVED_PERMANENTLY), Verdict::Rejected(301));
        assert!(matches!(
            classify(S::INTERNAL_SERVER_ERROR),
            Verdict::Retry(_)
        ));
        assert!(matches!(classify(S::TOO_MANY_REQUESTS), Verdict::Retry(_)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let config = PushConfig {
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_millis(1000),
            ..PushConfig::default()
        };
        for _ in 0..100 {
            let first = backoff(&config, 1);
            assert!((50..=100).contains(&first.as_millis()), "{first:?}");
            let third = backoff(&config, 3);
            assert!((200..=400).contains(&third.as_millis()), "{third:?}");
            let late = backoff(&config, 40);
            assert!((500..=1000).contains(&late.as_millis()), "{late:?}");
        }
    }
}
