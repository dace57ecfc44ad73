//! Open-loop traffic over sockets: the pacers that send on schedule and
//! the receivers that check and time every delivery.
//!
//! A pacer fires message `k` at `start + k / rate` whatever happened to
//! earlier ones (open loop): a slow server does not slow the offered load,
//! and a send held back by the in-flight cap is charged from when it was
//! due. Two pacers split the rate so that firing sends is not bound to one
//! core.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::{BufMut as _, Bytes, BytesMut};
use hanmadi_client::{
    Client, ClientError, Deliveries, ErrorCode, Event, ReconnectingHandle, Target,
};
use hanmadi_proto::SendAck;
use rand::seq::SliceRandom as _;
use rand::SeedableRng as _;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ledger::{Acked, Body, Received};
use crate::stats::{SendFailure, Stats};

/// Pacer tasks sharing the rate.
const PACERS: usize = 2;

/// How long deliveries must have stopped before a drain with unanswered
/// sends ends.
const DRAIN_QUIET: Duration = Duration::from_secs(2);

/// One sender's route: its connection, the conversation and the target.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// Index of the sending connection.
    pub connection: usize,
    /// The conversation's index in this run.
    pub conversation: u32,
    /// Who the message goes to.
    pub target: Target,
}

/// A connection to send through: a plain one, or a reconnecting client's.
#[derive(Debug, Clone)]
pub enum Sender {
    /// One connection.
    Plain(Client),
    /// A reconnecting client (sends retry across reconnects).
    Reconnecting(ReconnectingHandle),
    /// The HTTP API, as this user.
    Http(HttpSender),
}

/// Sends through `POST /v1/direct/{id}/messages` and
/// `POST /v1/groups/{id}/messages`.
#[derive(Debug, Clone)]
pub struct HttpSender {
    /// The shared client (one connection pool).
    pub client: reqwest::Client,
    /// `http://HOST:PORT`.
    pub base: String,
    /// The user's token.
    pub token: String,
}

impl Sender {
    /// Sends; the stored message's id, or what the failure counts as.
    async fn send(&self, id: Bytes, to: Target, body: String) -> Result<u64, SendFailure> {
        let ack: Result<SendAck, ClientError> = match self {
            Self::Plain(c) => c.send_with_id(id, to, body).await,
            Self::Reconnecting(h) => h.send_with_id(id, to, body).await,
            Self::Http(h) => return h.send(&id, to, body).await,
        };
        ack.map(|a| a.message_id).map_err(|e| classify(&e))
    }
}

impl HttpSender {
    async fn send(&self, id: &[u8], to: Target, body: String) -> Result<u64, SendFailure> {
        #[derive(serde::Deserialize)]
        struct Ack {
            message_id: String,
        }
        let path = match to {
            Target::User(u) => format!("{}/v1/direct/{u}/messages", self.base),
            Target::Group(g) => format!("{}/v1/groups/{g}/messages", self.base),
        };
        // The API's client_msg_id is text: the bytes in unpadded base64url.
        let client_msg_id = URL_SAFE_NO_PAD.encode(id);
        let response = self
            .client
            .post(path)
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "client_msg_id": client_msg_id, "body": body }))
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    SendFailure::Timeout
                } else {
                    SendFailure::Other
                }
            })?;
        match response.status().as_u16() {
            200 | 201 => {}
            429 => return Err(SendFailure::RateLimited),
            503 => return Err(SendFailure::Busy),
            _ => return Err(SendFailure::Other),
        }
        let ack: Ack = response.json().await.map_err(|_| SendFailure::Other)?;
        ack.message_id.parse().map_err(|_| SendFailure::Other)
    }
}

/// What a socket load run shares between its tasks.
#[derive(Debug)]
pub struct Load {
    /// This run's id, written into every body.
    pub run: u32,
    /// The connections, by index.
    pub clients: Vec<Sender>,
    /// Every sender's route; pacers go through them in a seeded order.
    pub routes: Vec<Route>,
    /// Connections in each conversation: deliveries each message calls for.
    pub members: Vec<u32>,
    /// Body size.
    pub body_size: usize,
    /// Sends awaiting their ack at most, all pacers together.
    pub in_flight: usize,
    /// Counters and histograms.
    pub stats: Arc<Stats>,
    /// Acknowledged messages per conversation.
    pub acked: Acked,
    /// Deliveries the acknowledged messages call for.
    pub expected: AtomicU64,
    /// Sequence for `client_msg_id`s, unique within the run.
    pub next_id: AtomicU64,
    /// Seed of the sending order.
    pub seed: u64,
}

impl Load {
    /// Sends at `rate` per second for `duration`, then waits for every ack.
    pub async fn pace(self: &Arc<Self>, rate: f64, duration: Duration) {
        let start = Instant::now();
        let pacers: Vec<JoinHandle<()>> = (0..PACERS)
            .map(|part| {
                let load = Arc::clone(self);
                tokio::spawn(load.pacer(part, rate, start, duration))
            })
            .collect();
        for p in pacers {
            let _ = p.await;
        }
    }

    async fn pacer(self: Arc<Self>, part: usize, rate: f64, start: Instant, duration: Duration) {
        let mut routes: Vec<Route> = self
            .routes
            .iter()
            .enumerate()
            .filter(|(i, _)| i % PACERS == part)
            .map(|(_, r)| *r)
            .collect();
        if routes.is_empty() || rate <= 0.0 {
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed ^ part as u64);
        routes.shuffle(&mut rng);
        let interval = Duration::from_secs_f64(PACERS as f64 / rate);
        let cap = (self.in_flight / PACERS).clamp(1, Semaphore::MAX_PERMITS);
        let permits = Arc::new(Semaphore::new(cap));
        let end = start + duration;
        let mut k: u64 = 0;
        let mut next_route = 0usize;
        loop {
            let due = start + interval.mul_f64(k as f64);
            if due >= end {
                break;
            }
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            // Over the cap, the send waits for an ack and keeps its due time.
            let permit = match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    self.stats.held.fetch_add(1, Ordering::Relaxed);
                    match Arc::clone(&permits).acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => break,
                    }
                }
            };
            let route = routes[next_route];
            next_route = (next_route + 1) % routes.len();
            let due_us = crate::stats::micros(due - self.stats.epoch);
            // Each send is a task of its own: an ack wakes only its send,
            // and sends complete on every worker of the runtime.
            let send = Arc::clone(&self).send(route, due_us);
            tokio::spawn(async move {
                send.await;
                drop(permit);
            });
            k += 1;
        }
        // Every permit back: every send of this pacer has ended (and
        // dropped its handle on the load before its permit).
        let all = u32::try_from(cap).unwrap_or(u32::MAX);
        let _ = permits.acquire_many(all).await;
    }

    /// One send and the bookkeeping of its outcome.
    fn send(self: Arc<Self>, route: Route, due_us: u64) -> impl std::future::Future<Output = ()> {
        let seq = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut id = BytesMut::with_capacity(12);
        id.put_u32(self.run);
        id.put_u64(seq);
        let id: Bytes = id.freeze();
        let body = Body {
            run: self.run,
            conversation: route.conversation,
            due_us,
        }
        .render(self.body_size);
        let client = self.clients[route.connection].clone();
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        async move {
            match client.send(id, route.target, body).await {
                Ok(message_id) => {
                    self.acked.push(route.conversation, message_id);
                    let members = self.members[route.conversation as usize];
                    self.expected
                        .fetch_add(u64::from(members), Ordering::Relaxed);
                    self.stats.record_ack(route.connection, due_us);
                }
                Err(failure) => self.stats.record_failure(failure),
            }
        }
    }

    /// Waits until every delivery the acks call for has arrived, or `limit`.
    ///
    /// A send that timed out or failed on its connection may still have
    /// been committed, and its deliveries count in `delivered` too: with
    /// such sends in the run, reaching `expected` proves nothing, so the
    /// wait goes on until deliveries have stopped for [`DRAIN_QUIET`].
    pub async fn drain(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut seen = self.stats.delivered.load(Ordering::Relaxed);
        let mut since = Instant::now();
        while Instant::now() < deadline {
            let delivered = self.stats.delivered.load(Ordering::Relaxed);
            if delivered != seen {
                seen = delivered;
                since = Instant::now();
            }
            let uncertain = self.stats.timeouts.load(Ordering::Relaxed)
                + self.stats.other_errors.load(Ordering::Relaxed);
            if drained(
                delivered,
                self.expected.load(Ordering::Relaxed),
                uncertain,
                since.elapsed(),
            ) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Whether a drain is over: `delivered` reached the `expected` deliveries
/// of the acknowledged sends and, when `uncertain` sends may have been
/// stored unacknowledged, nothing has arrived for [`DRAIN_QUIET`] (`quiet`).
fn drained(delivered: u64, expected: u64, uncertain: u64, quiet: Duration) -> bool {
    delivered >= expected && (uncertain == 0 || quiet >= DRAIN_QUIET)
}

/// What a failed send counts as.
pub fn classify(e: &ClientError) -> SendFailure {
    match e.server_error().and_then(|s| s.error_code()) {
        Some(ErrorCode::RateLimited) => SendFailure::RateLimited,
        Some(ErrorCode::ServerBusy) => SendFailure::Busy,
        _ if matches!(e, ClientError::Timeout(_)) => SendFailure::Timeout,
        _ => SendFailure::Other,
    }
}

/// Reads connection `index`'s deliveries until it closes, checking and
/// timing each; answers what it received.
pub fn spawn_receiver(
    index: usize,
    mut deliveries: Deliveries,
    run: u32,
    stats: Arc<Stats>,
    stopping: Arc<AtomicBool>,
) -> JoinHandle<Received> {
    tokio::spawn(async move {
        let mut received = Received::default();
        while let Some(event) = deliveries.recv().await {
            match event {
                Event::Deliver { message, .. } => {
                    let Some(body) = Body::parse(&message.body) else {
                        continue;
                    };
                    if body.run != run {
                        continue;
                    }
                    received.record(body.conversation, message.message_id);
                    stats.record_delivery(index, body.due_us);
                }
                Event::Refused { .. } => {
                    stats.other_errors.fetch_add(1, Ordering::Relaxed);
                }
                Event::Closed { error } => {
                    if !stopping.load(Ordering::Relaxed) {
                        stats.disconnects.fetch_add(1, Ordering::Relaxed);
                        if let Some(e) = error {
                            tracing::warn!(connection = index, "connection closed: {e}");
                        }
                    }
                    break;
                }
            }
        }
        received
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_with_unanswered_sends_waits_for_deliveries_to_stop() {
        let busy = Duration::from_millis(100);
        // Every acknowledged send delivered, nothing else in doubt.
        assert!(drained(10, 10, 0, Duration::ZERO));
        assert!(!drained(9, 10, 0, DRAIN_QUIET));
        // A timed-out send's deliveries may fill the count while an
        // acknowledged one is still on its way.
        assert!(!drained(10, 10, 1, busy));
        assert!(drained(10, 10, 1, DRAIN_QUIET));
        assert!(!drained(9, 10, 1, DRAIN_QUIET));
    }
}
