//! [`Client`]: one authenticated connection, its requests, and the
//! [`Deliveries`] stream of what the server pushes.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hanmadi_proto::{
    client_frame, pb, server_frame, Ack, ClientCodec, ClientFrame, ConversationId, History,
    HistoryPage, Ping, Read, SendAck, SyncBatch, Welcome, DEFAULT_MAX_FRAME,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{ClientConfig, Target};
use crate::connection::{self, detach, kind_name, BoxStream, Connection};
use crate::error::{ClientError, ServerError};
use crate::requests::{Forget, Requests};

/// Frames callers may queue before a request waits for the connection
/// task to take them.
const OUTBOUND_CAPACITY: usize = 256;

pub use hanmadi_proto::MAX_CLIENT_MSG_ID_LEN;

/// A fresh random `client_msg_id`: 16 bytes, as a UUID's.
#[must_use]
pub fn new_client_msg_id() -> Bytes {
    Bytes::copy_from_slice(&rand::random::<[u8; 16]>())
}

/// What the server pushes, in the order it arrived.
#[derive(Debug, Clone)]
pub enum Event {
    /// A message for this user, live.
    Deliver {
        /// The message.
        message: pb::Message,
        /// Its inbox cursor: pass it to [`Client::ack`], and to
        /// [`Client::sync`] after a reconnect.
        cursor: Bytes,
    },
    /// The server refused a request nobody waits for any more: an `Ack` or
    /// `Read` (which are not answered unless they fail), or a request whose
    /// caller timed out.
    Refused {
        /// The request's `req_id`, as returned by [`Client::ack`] or
        /// [`Client::read`].
        req_id: u64,
        /// The refusal.
        error: ServerError,
    },
    /// The connection has ended; always the last event.
    Closed {
        /// Why: the server's closing `Error`, a failure, or `None` for a
        /// clean close by either side.
        error: Option<ClientError>,
    },
}

/// One authenticated connection to a Hanmadi server.
///
/// A background task owns the socket; `Client` is a cheap handle to it
/// (clone it to use the connection from several tasks). Requests run
/// concurrently, each answered by `req_id`, each bounded by
/// [`ClientConfig::request_timeout`]. While the connection is otherwise
/// silent the task sends `Ping` every `Welcome.heartbeat_ms`, and it
/// declares the connection dead after two heartbeats without a byte from
/// the server.
///
/// The connection ends when the server closes it, on a failure, on
/// [`Client::close`], or when every `Client` handle is dropped. Requests
/// then fail with [`ClientError::Closed`] and [`Deliveries`] ends with
/// [`Event::Closed`]. A `Client` never reconnects: that is
/// [`crate::ReconnectingClient`]'s job.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    welcome: Welcome,
    requests: Arc<Requests>,
    outbound: mpsc::Sender<Bytes>,
    /// Encodes requests with the server's frame limit, so a request the
    /// server would refuse by closing the connection fails here alone.
    codec: ClientCodec,
    request_timeout: Duration,
    shutdown: CancellationToken,
    finished: CancellationToken,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("user_id", &self.inner.welcome.user_id)
            .field("session_id", &self.inner.welcome.session_id)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `config.addr` (TLS if `config.tls` is set), sends
    /// `Hello`, and waits for `Welcome`.
    ///
    /// Must be called within a Tokio runtime: the connection's task is
    /// spawned on it.
    ///
    /// # Errors
    ///
    /// - [`ClientError::Io`] when connecting fails or everything takes
    ///   longer than `config.connect_timeout` (kind `TimedOut`).
    /// - [`ClientError::Tls`] / [`ClientError::InvalidServerName`] for TLS.
    /// - [`ClientError::Server`] when the server refuses the `Hello` (an
    ///   expired token is [`hanmadi_proto::ErrorCode::TokenExpired`], a give-up code).
    /// - [`ClientError::Protocol`] / [`ClientError::Codec`] when the answer
    ///   is not a `Welcome`.
    pub async fn connect(config: ClientConfig) -> Result<(Client, Deliveries), ClientError> {
        within_connect_timeout(&config, async {
            let stream = connection::open(&config).await?;
            Self::start(stream, &config).await
        })
        .await
    }

    /// Runs the handshake and the connection over a stream the caller
    /// opened already: a proxy tunnel, a socket with custom options, an
    /// in-memory pipe in a test. `config.addr` and `config.tls` are not
    /// used.
    ///
    /// Must be called within a Tokio runtime.
    ///
    /// # Errors
    ///
    /// As for [`Client::connect`], minus connecting.
    pub async fn handshake<S>(
        stream: S,
        config: ClientConfig,
    ) -> Result<(Client, Deliveries), ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        within_connect_timeout(&config, Self::start(Box::new(stream), &config)).await
    }

    async fn start(
        mut stream: BoxStream,
        config: &ClientConfig,
    ) -> Result<(Client, Deliveries), ClientError> {
        let requests = Arc::new(Requests::new());
        let mut read_buffer = BytesMut::new();
        let welcome = connection::hello(&mut stream, config, &requests, &mut read_buffer).await?;
        let (reader, writer) = tokio::io::split(stream);
        let (events_tx, events_rx) = mpsc::channel(config.event_capacity.max(1));
        let (outbound_tx, outbound_rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let shutdown = CancellationToken::new();
        let finished = CancellationToken::new();
        let now = Instant::now();
        let server_max_frame = match welcome.max_frame_len {
            0 => DEFAULT_MAX_FRAME,
            n => n as usize,
        };
        let connection = Connection {
            reader,
            writer,
            codec: ClientCodec::new(config.max_frame),
            read_buffer,
            write_buffer: BytesMut::new(),
            needs_flush: false,
            outbound: outbound_rx,
            events: events_tx,
            requests: Arc::clone(&requests),
            shutdown: shutdown.clone(),
            heartbeat: (welcome.heartbeat_ms > 0)
                .then(|| Duration::from_millis(u64::from(welcome.heartbeat_ms))),
            last_read: now,
            last_write: now,
            last_ping: now,
            heartbeat_req: 0,
        };
        tokio::spawn(connection.run(finished.clone()));
        let client = Client {
            inner: Arc::new(Inner {
                welcome,
                requests: Arc::clone(&requests),
                outbound: outbound_tx,
                codec: ClientCodec::new(server_max_frame),
                request_timeout: config.request_timeout,
                shutdown,
                finished,
            }),
        };
        let deliveries = Deliveries {
            events: events_rx,
            requests,
            done: false,
        };
        Ok((client, deliveries))
    }

    /// The server's `Welcome`: user, session, heartbeat and limits.
    #[must_use]
    pub fn welcome(&self) -> &Welcome {
        &self.inner.welcome
    }

    /// The authenticated user's id.
    #[must_use]
    pub fn user_id(&self) -> u64 {
        self.inner.welcome.user_id
    }

    /// Whether the connection has ended.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.inner.finished.is_cancelled()
    }

    /// Waits until the connection has ended, for whatever reason.
    pub async fn closed(&self) {
        self.inner.finished.cancelled().await;
    }

    /// Sends a text message under a fresh random `client_msg_id`.
    ///
    /// The id is lost with an error, so this cannot be retried safely; a
    /// caller that retries after an unknown outcome (a timeout, a closed
    /// connection) takes an id from [`new_client_msg_id`] and calls
    /// [`Client::send_with_id`] with it each time.
    ///
    /// # Errors
    ///
    /// [`ClientError::Server`] when refused (its action says whether a
    /// retry can succeed); [`ClientError::Timeout`] or
    /// [`ClientError::Closed`] when the outcome is unknown.
    pub async fn send(&self, to: Target, body: impl Into<String>) -> Result<SendAck, ClientError> {
        self.send_with_id(new_client_msg_id(), to, body).await
    }

    /// Sends a text message under the given `client_msg_id` (1 to 64
    /// bytes). Sending again with the same id, on this or any later
    /// connection, returns the first `SendAck` and stores nothing new.
    ///
    /// # Errors
    ///
    /// [`ClientError::InvalidArgument`] for an id of the wrong length;
    /// otherwise as for [`Client::send`].
    pub async fn send_with_id(
        &self,
        client_msg_id: Bytes,
        to: Target,
        body: impl Into<String>,
    ) -> Result<SendAck, ClientError> {
        if client_msg_id.is_empty() || client_msg_id.len() > MAX_CLIENT_MSG_ID_LEN {
            return Err(ClientError::InvalidArgument(format!(
                "client_msg_id must be 1 to {MAX_CLIENT_MSG_ID_LEN} bytes, not {}",
                client_msg_id.len()
            )));
        }
        let send = pb::Send {
            client_msg_id,
            to: Some(to.into()),
            body: body.into(),
        };
        match self.request(client_frame::Kind::Send(send)).await? {
            server_frame::Kind::SendAck(ack) => Ok(ack),
            other => Err(unexpected("SendAck", &other)),
        }
    }

    /// Asks for up to `limit` inbox entries after `after` (empty: from the
    /// oldest retained), oldest first. Page on with `SyncBatch.next` while
    /// `has_more`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Server`] with `CURSOR_EXPIRED` when `after` is older
    /// than the retention window; otherwise as for any request.
    pub async fn sync(&self, after: &[u8], limit: u32) -> Result<SyncBatch, ClientError> {
        let sync = pb::Sync {
            after: Bytes::copy_from_slice(after),
            limit,
        };
        match self.request(client_frame::Kind::Sync(sync)).await? {
            server_frame::Kind::SyncBatch(mut batch) => {
                batch.messages.iter_mut().for_each(detach);
                batch.next = Bytes::copy_from_slice(&batch.next);
                Ok(batch)
            }
            other => Err(unexpected("SyncBatch", &other)),
        }
    }

    /// Asks for up to `limit` messages of `conversation` with ids below
    /// `before` (0: from the newest), newest first.
    ///
    /// # Errors
    ///
    /// [`ClientError::Server`] with `NOT_A_MEMBER` or `NOT_FOUND` and the
    /// like; otherwise as for any request.
    pub async fn history(
        &self,
        conversation: ConversationId,
        before: u64,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        let history = History {
            conversation: Some(conversation.to_proto()),
            before,
            limit,
        };
        match self.request(client_frame::Kind::History(history)).await? {
            server_frame::Kind::HistoryPage(page) => Ok(page),
            other => Err(unexpected("HistoryPage", &other)),
        }
    }

    /// Reports that this device has everything up to `cursor`. Not
    /// answered: returns once queued, with the `req_id` under which a
    /// refusal would arrive as [`Event::Refused`].
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] when the connection has ended.
    pub async fn ack(&self, cursor: &[u8]) -> Result<u64, ClientError> {
        self.ack_cursor(Bytes::copy_from_slice(cursor)).await
    }

    /// [`Client::ack`] for a cursor already held as `Bytes`, shared rather
    /// than copied: the reconnect helper's `ack`, typically called once per
    /// message, comes through here.
    pub(crate) async fn ack_cursor(&self, cursor: Bytes) -> Result<u64, ClientError> {
        self.notify(client_frame::Kind::Ack(Ack { cursor })).await
    }

    /// Reports that the user has read `conversation` up to `message_id`.
    /// Not answered, like [`Client::ack`].
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] when the connection has ended.
    pub async fn read(
        &self,
        conversation: ConversationId,
        message_id: u64,
    ) -> Result<u64, ClientError> {
        let read = Read {
            conversation: Some(conversation.to_proto()),
            message_id,
        };
        self.notify(client_frame::Kind::Read(read)).await
    }

    /// Sends a `Ping` and returns the round-trip time to its `Pong`.
    ///
    /// # Errors
    ///
    /// As for any request.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        match self.request(client_frame::Kind::Ping(Ping {})).await? {
            server_frame::Kind::Pong(_) => Ok(started.elapsed()),
            other => Err(unexpected("Pong", &other)),
        }
    }

    /// Closes the connection: writes what is already queued (within a
    /// second), shuts the socket, and waits for the task to end. Other
    /// handles to the connection see it closed.
    pub async fn close(self) {
        self.inner.shutdown.cancel();
        self.inner.finished.cancelled().await;
    }

    /// Sends a request and waits for the frame answering it.
    async fn request(&self, kind: client_frame::Kind) -> Result<server_frame::Kind, ClientError> {
        let inner = &*self.inner;
        let req_id = inner.requests.next_req_id();
        let frame = inner.encode(req_id, kind)?;
        let reply = inner.requests.register(req_id)?;
        let _forget = Forget {
            requests: &inner.requests,
            req_id,
        };
        let exchange = async {
            inner
                .outbound
                .send(frame)
                .await
                .map_err(|_| inner.requests.closed_error())?;
            // A dropped sender means the task ended without answering.
            reply
                .await
                .unwrap_or_else(|_| Err(inner.requests.closed_error()))
        };
        match tokio::time::timeout(inner.request_timeout, exchange).await {
            Ok(Ok(server_frame::Kind::Error(error))) => Err(ClientError::Server(error.into())),
            Ok(answer) => answer,
            Err(_) => Err(ClientError::Timeout(inner.request_timeout)),
        }
    }

    /// Queues a frame that gets no answer unless it fails. An ended
    /// connection needs no separate check: the task drops the queue's
    /// receiver when it ends, so the send fails.
    async fn notify(&self, kind: client_frame::Kind) -> Result<u64, ClientError> {
        let inner = &*self.inner;
        let req_id = inner.requests.next_req_id();
        let frame = inner.encode(req_id, kind)?;
        match tokio::time::timeout(inner.request_timeout, inner.outbound.send(frame)).await {
            Ok(Ok(())) => Ok(req_id),
            Ok(Err(_)) => Err(inner.requests.closed_error()),
            Err(_) => Err(ClientError::Timeout(inner.request_timeout)),
        }
    }
}

impl Inner {
    fn encode(&self, req_id: u64, kind: client_frame::Kind) -> Result<Bytes, ClientError> {
        let frame = ClientFrame {
            req_id,
            kind: Some(kind),
        };
        Ok(self.codec.frames().message_to_bytes(&frame)?)
    }
}

fn unexpected(expected: &str, got: &server_frame::Kind) -> ClientError {
    ClientError::Protocol(format!("expected {expected}, got {}", kind_name(got)))
}

/// Bounds `connecting` by `config.connect_timeout`; running out is an I/O
/// error of kind `TimedOut`, so it counts as worth a reconnect.
async fn within_connect_timeout<T>(
    config: &ClientConfig,
    connecting: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let limit = config.connect_timeout;
    tokio::time::timeout(limit, connecting)
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Io(Arc::new(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {} took longer than {limit:?}", config.addr),
            ))))
        })
}

/// The events of one connection: `Deliver`s and refusals in arrival order,
/// then one [`Event::Closed`], then the end (`None`).
///
/// Drain it promptly: it holds at most [`ClientConfig::event_capacity`]
/// events, and a full queue closes the connection. Dropping it is fine
/// when pushed messages do not matter (events are then discarded).
#[derive(Debug)]
pub struct Deliveries {
    events: mpsc::Receiver<Event>,
    requests: Arc<Requests>,
    /// `Closed` has been handed out.
    done: bool,
}

impl Deliveries {
    /// The next event; `None` after [`Event::Closed`].
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next event, as [`Deliveries::recv`].
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if self.done {
            return Poll::Ready(None);
        }
        match ready!(self.events.poll_recv(cx)) {
            Some(event) => Poll::Ready(Some(event)),
            None => {
                // The task recorded the reason before dropping the sender.
                self.done = true;
                Poll::Ready(Some(Event::Closed {
                    error: self.requests.close_cause(),
                }))
            }
        }
    }
}

impl futures::Stream for Deliveries {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().poll_recv(cx)
    }
}
