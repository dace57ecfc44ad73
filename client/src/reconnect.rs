//! [`ReconnectingClient`]: a connection that comes back, with an inbox
//! stream that survives the reconnects without gap, duplicate or
//! reordering (DESIGN §3, "Delivery guarantees").

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use hanmadi_proto::{ConversationId, ErrorAction, HistoryPage, SendAck, SyncBatch};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::client::{new_client_msg_id, Client, Deliveries, Event};
use crate::config::{ClientConfig, Target};
use crate::error::ClientError;
use crate::seam::{Received, Seam, SyncStep, DEFAULT_DEDUP_WINDOW};

/// Live entries held back during one sync before the helper stops reading
/// them; past this the connection's own event queue holds the rest, and
/// if that fills too the connection closes and the next sync starts over.
const MAX_HELD: usize = 8192;

/// Where to connect: an address and, for TLS, the name its certificate
/// carries (discovery lists each node's hostname as its TLS name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`.
    pub addr: String,
    /// Overrides `TlsOptions::server_name` for this endpoint; ignored over
    /// plain TCP.
    pub tls_server_name: Option<String>,
}

impl From<String> for Endpoint {
    fn from(addr: String) -> Self {
        Self {
            addr,
            tls_server_name: None,
        }
    }
}

impl From<&str> for Endpoint {
    fn from(addr: &str) -> Self {
        Self::from(addr.to_owned())
    }
}

type NextEndpoint = Box<dyn FnMut() -> BoxFuture<'static, Result<Endpoint, ClientError>> + Send>;

/// Where each connection attempt goes: a fixed list taken in turn, or a
/// function asked before every attempt (service discovery).
pub struct Endpoints {
    next: NextEndpoint,
}

impl Endpoints {
    /// Round-robin over `endpoints`, starting with the first.
    #[must_use]
    pub fn list<I, E>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = E>,
        E: Into<Endpoint>,
    {
        let endpoints: Vec<Endpoint> = endpoints.into_iter().map(Into::into).collect();
        let mut turn = 0;
        Self::from_fn(move || {
            let endpoint = endpoints.get(turn % endpoints.len().max(1)).cloned();
            turn = turn.wrapping_add(1);
            async move {
                endpoint.ok_or_else(|| {
                    ClientError::InvalidArgument(String::from("the endpoint list is empty"))
                })
            }
        })
    }

    /// Asks `next` for the endpoint of every attempt. An error it returns
    /// counts as a failed attempt (and ends the helper if its action is
    /// give up).
    #[must_use]
    pub fn from_fn<F, Fut>(mut next: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Endpoint, ClientError>> + Send + 'static,
    {
        Self {
            next: Box::new(move || Box::pin(next())),
        }
    }

    async fn next(&mut self) -> Result<Endpoint, ClientError> {
        (self.next)().await
    }
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoints").finish_non_exhaustive()
    }
}

/// How a [`ReconnectingClient`] reconnects, syncs and retries.
#[derive(Debug)]
pub struct ReconnectOptions {
    /// Where to connect; `None`: always `ClientConfig::addr`.
    pub endpoints: Option<Endpoints>,
    /// The cursor to resume after (one [`ReconnectingClient::last_cursor`]
    /// returned in an earlier run); empty: from the oldest retained entry.
    pub start_cursor: Bytes,
    /// The first reconnect wait's ceiling; it doubles per failed attempt.
    pub initial_backoff: Duration,
    /// The largest reconnect or retry wait.
    pub max_backoff: Duration,
    /// Failed connection attempts in a row before giving up; `None` keeps
    /// trying until closed.
    pub max_attempts: Option<u32>,
    /// Entries asked for per `Sync` page.
    pub sync_limit: u32,
    /// Recent message ids remembered for dedup (see [`Seam`]).
    pub dedup_window: usize,
    /// Attempts per request (a `send` and its retries) before its last
    /// error is returned.
    pub request_attempts: u32,
    /// Messages received but not yet taken by
    /// [`ReconnectingClient::next`].
    pub queue_capacity: usize,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        Self {
            endpoints: None,
            start_cursor: Bytes::new(),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_attempts: None,
            sync_limit: 200,
            dedup_window: DEFAULT_DEDUP_WINDOW,
            request_attempts: 8,
            queue_capacity: 1024,
        }
    }
}

/// The helper's connection, as its handles see it.
#[derive(Debug, Clone)]
enum Link {
    /// Between connections.
    Connecting,
    /// Connection number `generation` is up (maybe still syncing).
    Up { generation: u64, client: Client },
    /// The helper has stopped: closed (`None`) or given up.
    Ended { error: Option<ClientError> },
}

/// A client that reconnects by itself and hands out the user's inbox as
/// one ordered stream, across connections.
///
/// # The seam
///
/// On every (re)connect it sends `Sync{after: last cursor}` and pages until
/// `has_more == false`, handing out each entry in order; live `Deliver`s
/// that arrive meanwhile are held back and follow the sync. An entry is
/// handed out only if its cursor sorts after the last one handed out and
/// its `(conversation, message_id)` was not handed out recently, so the
/// overlap between sync and live traffic (which the server may send both
/// ways) yields no duplicate, and since the server pushes everything
/// committed after `Welcome`, no gap. [`Seam`] holds this rule and its
/// argument.
///
/// # Reconnects
///
/// A dropped connection, a silent one, or an error whose action is
/// reconnect (`SLOW_CONSUMER`, `SERVER_DRAINING`, `IDLE_TIMEOUT`, ...)
/// starts a new attempt after a jittered exponential wait (at least the
/// server's `retry_after_ms`), against the next endpoint. An error whose
/// action is give up (an expired token, `CURSOR_EXPIRED`, a TLS refusal)
/// ends the helper: [`ReconnectingClient::next`] returns it, then `None`.
///
/// # Sending
///
/// [`ReconnectingClient::send`] keeps one `client_msg_id` across its
/// retries and reconnects, so a message is stored once however often it is
/// resent. Use [`ReconnectingClient::handle`] to send from other tasks.
#[derive(Debug)]
pub struct ReconnectingClient {
    received: mpsc::Receiver<Result<Received, ClientError>>,
    handle: ReconnectingHandle,
    /// The cursor of the last message `next` returned.
    last_cursor: Bytes,
    task: JoinHandle<()>,
}

impl ReconnectingClient {
    /// Connects once and starts the helper. The first attempt is not
    /// retried, so a wrong address or token fails here, at once.
    ///
    /// Must be called within a Tokio runtime.
    ///
    /// # Errors
    ///
    /// As for [`Client::connect`], or the first endpoint's error.
    pub async fn start(
        config: ClientConfig,
        options: ReconnectOptions,
    ) -> Result<Self, ClientError> {
        let ReconnectOptions {
            endpoints,
            start_cursor,
            initial_backoff,
            max_backoff,
            max_attempts,
            sync_limit,
            dedup_window,
            request_attempts,
            queue_capacity,
        } = options;
        let mut endpoints =
            endpoints.unwrap_or_else(|| Endpoints::list([Endpoint::from(config.addr.clone())]));
        let endpoint = endpoints.next().await?;
        let first = Client::connect(config_for(&config, &endpoint)).await?;
        let (received_tx, received_rx) = mpsc::channel(queue_capacity.max(1));
        let (link_tx, link_rx) = watch::channel(Link::Connecting);
        let shutdown = CancellationToken::new();
        let supervisor = Supervisor {
            config,
            endpoints,
            seam: Seam::new(start_cursor.clone(), dedup_window),
            sync_limit,
            max_attempts,
            backoff: Backoff::new(initial_backoff, max_backoff),
            received: received_tx,
            link: link_tx,
            shutdown: shutdown.clone(),
            generation: 0,
        };
        let task = tokio::spawn(supervisor.run(first));
        Ok(Self {
            received: received_rx,
            handle: ReconnectingHandle {
                link: link_rx,
                shutdown,
                request_attempts: request_attempts.max(1),
                backoff: Backoff::new(initial_backoff, max_backoff),
            },
            last_cursor: start_cursor,
            task,
        })
    }

    /// The next inbox message, in order. `Some(Err(_))` is final: the
    /// helper gave up (then `None` follows); `None` after
    /// [`ReconnectingClient::close`] too.
    pub async fn next(&mut self) -> Option<Result<Received, ClientError>> {
        let item = self.received.recv().await?;
        if let Ok(received) = &item {
            self.last_cursor = received.cursor.clone();
        }
        Some(item)
    }

    /// The cursor of the last message [`ReconnectingClient::next`]
    /// returned (or the start cursor): store it to resume a later run
    /// after it.
    #[must_use]
    pub fn last_cursor(&self) -> &Bytes {
        &self.last_cursor
    }

    /// Reports progress: `Ack{last_cursor}` on the current connection
    /// (waiting for one if reconnecting). Nothing is sent before the first
    /// message.
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] once the helper has stopped.
    pub async fn ack(&self) -> Result<(), ClientError> {
        if self.last_cursor.is_empty() {
            return Ok(());
        }
        self.handle.ack_cursor(self.last_cursor.clone()).await
    }

    /// Sends a text message, retrying under one fresh `client_msg_id`.
    ///
    /// # Errors
    ///
    /// As for [`ReconnectingHandle::send_with_id`].
    pub async fn send(&self, to: Target, body: impl Into<String>) -> Result<SendAck, ClientError> {
        self.handle.send(to, body).await
    }

    /// Sends a text message under `client_msg_id`, retrying with the same
    /// id.
    ///
    /// # Errors
    ///
    /// As for [`ReconnectingHandle::send_with_id`].
    pub async fn send_with_id(
        &self,
        client_msg_id: Bytes,
        to: Target,
        body: impl Into<String>,
    ) -> Result<SendAck, ClientError> {
        self.handle.send_with_id(client_msg_id, to, body).await
    }

    /// A handle for sending and requests from other tasks.
    #[must_use]
    pub fn handle(&self) -> ReconnectingHandle {
        self.handle.clone()
    }

    /// The current connection, if one is up.
    #[must_use]
    pub fn client(&self) -> Option<Client> {
        self.handle.client()
    }

    /// Stops the helper and closes its connection. Messages already queued
    /// for [`ReconnectingClient::next`] are discarded.
    pub async fn close(self) {
        self.handle.shutdown.cancel();
        // The task never panics; if it did, there is nothing left to close.
        let _ = self.task.await;
    }
}

/// Sends and requests through a [`ReconnectingClient`]'s connection from
/// any task; cheap to clone. Each request waits for a connection while
/// the helper reconnects, and is retried (the same `client_msg_id` for a
/// send) on errors whose action is retry or reconnect.
#[derive(Debug, Clone)]
pub struct ReconnectingHandle {
    link: watch::Receiver<Link>,
    shutdown: CancellationToken,
    request_attempts: u32,
    /// The retry waits of one request; each request starts from a copy.
    backoff: Backoff,
}

impl ReconnectingHandle {
    /// The current connection, if one is up.
    #[must_use]
    pub fn client(&self) -> Option<Client> {
        match &*self.link.borrow() {
            Link::Up { client, .. } => Some(client.clone()),
            Link::Connecting | Link::Ended { .. } => None,
        }
    }

    /// Sends a text message under a fresh `client_msg_id`, kept across
    /// retries.
    ///
    /// # Errors
    ///
    /// As for [`ReconnectingHandle::send_with_id`].
    pub async fn send(&self, to: Target, body: impl Into<String>) -> Result<SendAck, ClientError> {
        self.send_with_id(new_client_msg_id(), to, body).await
    }

    /// Sends a text message under `client_msg_id`; a retry after a timeout
    /// or on a new connection reuses the id, so the server stores the
    /// message once.
    ///
    /// Waits for a connection as long as the helper tries to make one.
    ///
    /// # Errors
    ///
    /// A give-up error at once; any other after
    /// `ReconnectOptions::request_attempts` attempts; [`ClientError::Closed`]
    /// when the helper stops first.
    pub async fn send_with_id(
        &self,
        client_msg_id: Bytes,
        to: Target,
        body: impl Into<String>,
    ) -> Result<SendAck, ClientError> {
        let body = body.into();
        self.with_retries(|client| {
            let client_msg_id = client_msg_id.clone();
            let body = body.clone();
            async move { client.send_with_id(client_msg_id, to, body).await }
        })
        .await
    }

    /// A page of `conversation`'s history (see [`Client::history`]),
    /// retried like a send.
    ///
    /// # Errors
    ///
    /// As for [`ReconnectingHandle::send_with_id`].
    pub async fn history(
        &self,
        conversation: ConversationId,
        before: u64,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        self.with_retries(|client| async move { client.history(conversation, before, limit).await })
            .await
    }

    /// Reports that this device has everything up to `cursor`. A refusal
    /// from the server is not returned (`Ack` is not answered on success,
    /// so nothing waits for it); the helper logs it.
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] once the helper has stopped.
    pub async fn ack(&self, cursor: &[u8]) -> Result<(), ClientError> {
        self.ack_cursor(Bytes::copy_from_slice(cursor)).await
    }

    /// [`ReconnectingHandle::ack`] sharing the caller's `Bytes` with every
    /// attempt instead of copying the cursor each time.
    async fn ack_cursor(&self, cursor: Bytes) -> Result<(), ClientError> {
        self.with_retries(|client| {
            let cursor = cursor.clone();
            async move { client.ack_cursor(cursor).await.map(drop) }
        })
        .await
    }

    /// Reports that the user has read `conversation` up to `message_id`;
    /// refusals are logged, as for [`ReconnectingHandle::ack`].
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] once the helper has stopped.
    pub async fn read(
        &self,
        conversation: ConversationId,
        message_id: u64,
    ) -> Result<(), ClientError> {
        self.with_retries(
            |client| async move { client.read(conversation, message_id).await.map(drop) },
        )
        .await
    }

    /// Runs `request` on the current connection until it succeeds, gives
    /// up, or runs out of attempts.
    async fn with_retries<T, F, Fut>(&self, mut request: F) -> Result<T, ClientError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut backoff = self.backoff.clone();
        let mut failed_generation = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (generation, client) = self.connected(failed_generation).await?;
            let error = match request(client).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if attempt >= self.request_attempts {
                return Err(error);
            }
            match error.action() {
                ErrorAction::GiveUp => return Err(error),
                ErrorAction::Reconnect => failed_generation = generation,
                ErrorAction::Retry => {
                    let wait = error.retry_after().unwrap_or_else(|| backoff.next_delay());
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.shutdown.cancelled() => return Err(error),
                    }
                }
            }
        }
    }

    /// Waits for a connection newer than `failed_generation`.
    async fn connected(&self, failed_generation: u64) -> Result<(u64, Client), ClientError> {
        let mut link = self.link.clone();
        let state = link
            .wait_for(|link| match link {
                Link::Up { generation, .. } => *generation > failed_generation,
                Link::Ended { .. } => true,
                Link::Connecting => false,
            })
            .await;
        let Ok(state) = state else {
            return Err(ClientError::closed(None));
        };
        match &*state {
            Link::Up { generation, client } => Ok((*generation, client.clone())),
            Link::Ended { error } => Err(ClientError::closed(error.clone())),
            Link::Connecting => Err(ClientError::closed(None)),
        }
    }
}

/// How one connection ended, for the supervisor.
enum Outcome {
    /// Open a new one, waiting at least this long.
    Reconnect(Option<Duration>),
    /// Stop, with the error to report (`None`: closed on purpose).
    End(Option<ClientError>),
}

/// What woke the supervisor while a connection is up.
enum Wake {
    Page(Result<SyncBatch, ClientError>),
    Event(Option<Event>),
    Stop,
}

type PageFuture = Pin<Box<dyn Future<Output = Result<SyncBatch, ClientError>> + Send>>;

/// The task behind a [`ReconnectingClient`]: connects, syncs, merges, and
/// hands messages to the user's queue.
struct Supervisor {
    config: ClientConfig,
    endpoints: Endpoints,
    seam: Seam,
    sync_limit: u32,
    max_attempts: Option<u32>,
    backoff: Backoff,
    received: mpsc::Sender<Result<Received, ClientError>>,
    link: watch::Sender<Link>,
    shutdown: CancellationToken,
    generation: u64,
}

impl Supervisor {
    async fn run(mut self, first: (Client, Deliveries)) {
        let mut next = Some(first);
        let mut wait = None;
        let error = loop {
            let (client, deliveries) = match next.take() {
                Some(connection) => connection,
                None => match self.reconnect(wait.take()).await {
                    Ok(connection) => connection,
                    Err(error) => break error,
                },
            };
            self.generation += 1;
            self.link.send_replace(Link::Up {
                generation: self.generation,
                client: client.clone(),
            });
            let outcome = self.serve(&client, deliveries).await;
            self.link.send_replace(Link::Connecting);
            client.close().await;
            match outcome {
                Outcome::Reconnect(at_least) => wait = at_least,
                Outcome::End(error) => break error,
            }
        };
        if let Some(error) = &error {
            tracing::debug!(%error, "reconnecting client gave up");
        }
        // Handles waiting for a connection learn the end before the user
        // does, whether or not the user still reads.
        self.link.send_replace(Link::Ended {
            error: error.clone(),
        });
        if let Some(error) = error {
            tokio::select! {
                _ = self.received.send(Err(error)) => {}
                () = self.shutdown.cancelled() => {}
            }
        }
    }

    /// Opens a new connection after a backoff wait, trying until it works,
    /// gives up, or runs out of attempts. `Err(None)`: stopped on purpose.
    async fn reconnect(
        &mut self,
        mut at_least: Option<Duration>,
    ) -> Result<(Client, Deliveries), Option<ClientError>> {
        let mut attempts = 0u32;
        loop {
            let wait = self
                .backoff
                .next_delay()
                .max(at_least.take().unwrap_or_default());
            let endpoints = &mut self.endpoints;
            let config = &self.config;
            let attempt = async {
                tokio::time::sleep(wait).await;
                let endpoint = endpoints.next().await?;
                tracing::debug!(addr = %endpoint.addr, "reconnecting");
                Client::connect(config_for(config, &endpoint)).await
            };
            let result = tokio::select! {
                result = attempt => result,
                () = self.shutdown.cancelled() => return Err(None),
                () = self.received.closed() => return Err(None),
            };
            match result {
                Ok(connection) => return Ok(connection),
                Err(error) => {
                    attempts = attempts.saturating_add(1);
                    tracing::debug!(%error, attempts, "connection attempt failed");
                    let exhausted = self.max_attempts.is_some_and(|max| attempts >= max);
                    if exhausted || error.action() == ErrorAction::GiveUp {
                        return Err(Some(error));
                    }
                    at_least = error.retry_after();
                }
            }
        }
    }

    /// Syncs on a fresh connection, then relays its live entries, until it
    /// ends.
    async fn serve(&mut self, client: &Client, mut deliveries: Deliveries) -> Outcome {
        let limit = self.sync_limit;
        let mut after = self.seam.begin_sync();
        let mut page: PageFuture = fetch_page(client.clone(), after.clone(), limit, None);
        let mut syncing = true;
        let mut stalled = false;
        let mut ready = Vec::new();
        loop {
            let wake = tokio::select! {
                () = self.shutdown.cancelled() => Wake::Stop,
                () = self.received.closed() => Wake::Stop,
                result = &mut page, if syncing => Wake::Page(result),
                event = deliveries.recv(), if self.seam.buffered_len() < MAX_HELD => Wake::Event(event),
            };
            match wake {
                Wake::Stop => return Outcome::End(None),
                Wake::Page(Ok(batch)) => match self.seam.sync_page(batch, &mut ready) {
                    SyncStep::More { after: next } => {
                        after = next;
                        page = fetch_page(client.clone(), after.clone(), limit, None);
                    }
                    SyncStep::Done => {
                        syncing = false;
                        // The connection proved healthy: the next failure
                        // starts the backoff afresh.
                        self.backoff.reset();
                    }
                    SyncStep::Stalled => {
                        // What the page admitted before the stall is handed
                        // out first: the position already counts it.
                        stalled = true;
                    }
                },
                Wake::Page(Err(error)) if error.action() == ErrorAction::Retry => {
                    let wait = error
                        .retry_after()
                        .unwrap_or_else(|| self.backoff.next_delay());
                    page = fetch_page(client.clone(), after.clone(), limit, Some(wait));
                }
                Wake::Page(Err(error)) => return ended_by(Some(error)),
                Wake::Event(Some(Event::Deliver { message, cursor })) => {
                    self.seam.live(message, cursor, &mut ready);
                }
                Wake::Event(Some(Event::Refused { req_id, error })) => {
                    tracing::warn!(req_id, %error, "request refused");
                }
                Wake::Event(Some(Event::Closed { error })) => return ended_by(error),
                // `Closed` always comes before the end.
                Wake::Event(None) => return ended_by(None),
            }
            for received in ready.drain(..) {
                let handed = tokio::select! {
                    sent = self.received.send(Ok(received)) => sent.is_ok(),
                    () = self.shutdown.cancelled() => false,
                };
                if !handed {
                    return Outcome::End(None);
                }
            }
            if stalled {
                return Outcome::End(Some(ClientError::Protocol(String::from(
                    "Sync answered has_more without moving past its cursor",
                ))));
            }
        }
    }
}

/// What the helper does when a connection ends with `error` (`None`: a
/// clean close), or when its `Sync` fails with an error not worth a retry
/// on the same connection.
fn ended_by(error: Option<ClientError>) -> Outcome {
    match error {
        Some(error) if error.action() == ErrorAction::GiveUp => Outcome::End(Some(error)),
        Some(error) => Outcome::Reconnect(error.retry_after()),
        None => Outcome::Reconnect(None),
    }
}

/// One `Sync` request, optionally after a wait (a retry).
fn fetch_page(client: Client, after: Bytes, limit: u32, wait: Option<Duration>) -> PageFuture {
    Box::pin(async move {
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
        client.sync(&after, limit).await
    })
}

/// `config` pointed at `endpoint`.
fn config_for(config: &ClientConfig, endpoint: &Endpoint) -> ClientConfig {
    let mut config = config.clone();
    config.addr.clone_from(&endpoint.addr);
    if let (Some(tls), Some(name)) = (config.tls.as_mut(), &endpoint.tls_server_name) {
        tls.server_name.clone_from(name);
    }
    config
}
