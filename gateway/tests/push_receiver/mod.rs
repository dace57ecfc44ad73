//! A push gateway stand-in on 127.0.0.1: an axum server that records
//! every request and answers with the status the test chooses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// The `Idempotency-Key` header.
    pub key: Option<String>,
    /// The body (`Null` when the receiver keeps no bodies).
    pub body: Value,
    /// The recipient, in Hanmadi's format or Gorush's.
    pub recipient: Option<u64>,
    /// `unseen` of a Hanmadi-format body.
    pub unseen: Option<u64>,
    /// What the receiver answered (`0`: never answered).
    pub status: u16,
    pub at: Instant,
}

impl Received {
    /// The recipient, in Hanmadi's format or Gorush's.
    pub fn user(&self) -> Option<u64> {
        self.recipient
    }
}

/// Whether a Hanmadi-format body is a push for `user`.
pub fn is_user(body: &Value, user: u64) -> bool {
    body["user_id"].as_str() == Some(user.to_string().as_str())
}

fn recipient(body: &Value) -> Option<u64> {
    let id = body["user_id"]
        .as_str()
        .or_else(|| body["notifications"][0]["data"]["user_id"].as_str())?;
    id.parse().ok()
}

/// Chooses the answer to a request from its body and how many requests
/// with the same idempotency key came before it; `0` never answers.
pub type Respond = dyn Fn(&Value, usize) -> u16 + Send + Sync;

struct State {
    log: Mutex<Vec<Received>>,
    changed: Notify,
    respond: Box<Respond>,
    /// How long each answer takes, so overlapping requests can be counted.
    hold: Duration,
    /// Whether to keep each body (a load test keeps only what it counts).
    keep_bodies: bool,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.peak.fetch_max(now, Ordering::SeqCst);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let status = {
        let mut log = state.log.lock();
        let earlier = log
            .iter()
            .filter(|r| r.key.is_some() && r.key == key)
            .count();
        let status = if body.is_null() {
            400
        } else {
            (state.respond)(&body, earlier)
        };
        log.push(Received {
            path: uri.path().to_owned(),
            key,
            recipient: recipient(&body),
            unseen: body["unseen"].as_u64(),
            body: if state.keep_bodies { body } else { Value::Null },
            status,
            at: Instant::now(),
        });
        status
    };
    state.changed.notify_waiters();
    if !state.hold.is_zero() {
        tokio::time::sleep(state.hold).await;
    }
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    if status == 0 {
        std::future::pending::<()>().await;
    }
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl Receiver {
    /// A receiver on a fresh port.
    pub async fn start(respond: impl Fn(&Value, usize) -> u16 + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, Box::new(respond), Duration::ZERO)
    }

    /// A receiver on `listener`, each answer taking `hold`.
    pub fn serve(listener: TcpListener, respond: Box<Respond>, hold: Duration) -> Self {
        Self::serve_with(listener, respond, hold, true)
    }

    /// As [`Receiver::serve`], keeping request bodies or not.
    pub fn serve_with(
        listener: TcpListener,
        respond: Box<Respond>,
        hold: Duration,
        keep_bodies: bool,
    ) -> Self {
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            log: Mutex::new(Vec::new()),
            changed: Notify::new(),
            respond,
            hold,
            keep_bodies,
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.log.lock().clone()
    }

    /// Requests for `user`.
    pub fn for_user(&self, user: u64) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.user() == Some(user))
            .collect()
    }

    /// Most requests that were ever in progress at once.
    pub fn peak(&self) -> usize {
        self.state.peak.load(Ordering::SeqCst)
    }

    /// Waits until the requests so far satisfy `done`, at most `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.state.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(&self.state.log.lock()) {
                return self.requests();
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "{what}: not within {timeout:?}; received {:#?}",
                    self.requests()
                );
            }
        }
    }

    /// Waits for `n` requests for `user`.
    pub async fn wait_for_user(&self, user: u64, n: usize, timeout: Duration) -> Vec<Received> {
        self.wait_until(&format!("{n} push(es) for user {user}"), timeout, |log| {
            log.iter().filter(|r| r.user() == Some(user)).count() >= n
        })
        .await;
        self.for_user(user)
    }
}
