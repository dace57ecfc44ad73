//! One task per connection (DESIGN §3.1, §7).
//!
//! The task owns its socket and waits at once on the next frame, its
//! outbound queue, requests in flight, the idle deadline and shutdown.
//! Partial input lives in the connection's buffer, so a cancelled read loses
//! nothing. After each wake-up it writes everything pending — replies and
//! queued `Deliver` frames — with vectored writes. Requests run concurrently
//! up to a cap; at the cap the task stops reading, which is how a full
//! append queue pushes back on a socket sender.

use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::stream::{FuturesUnordered, StreamExt};
use hanmadi_proto::deliver::{put_history_page, put_sync_batch};
use hanmadi_proto::pb::{self, client_frame, send, server_frame};
use hanmadi_proto::{
    codec::LENGTH_PREFIX_LEN, reserve_read, shrink_idle, ConversationId, ErrorCode, ServerCodec,
    SharedMessage,
};
use hanmadi_router::{Router, RouterError, SendRequest, Target};
use hanmadi_storage::chat::Cursor;
use hanmadi_storage::kv::Kv;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::auth::TokenIssuer;
use crate::metrics::{Metrics, TransportLabel};
use crate::now_ms;
use crate::registry::{ConnShared, Outbound, Registry};

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnConfig {
    /// Largest frame accepted, and the most a reply may take.
    pub max_frame: usize,
    /// Time from accept to a valid `Hello` (including TLS).
    pub handshake_timeout: Duration,
    /// How often clients should ping (sent in `Welcome`).
    pub heartbeat: Duration,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Frames per second a connection may send, on average.
    pub rate_per_sec: u32,
    /// Frames a connection may send in a burst.
    pub rate_burst: u32,
    /// Longest a socket write may stall.
    pub write_timeout: Duration,
    /// Requests of one connection running at once.
    pub max_in_flight: usize,
    /// Longest body accepted (sent in `Welcome`).
    pub max_body: usize,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            max_frame: hanmadi_proto::DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            rate_per_sec: 100,
            rate_burst: 200,
            write_timeout: Duration::from_secs(10),
            max_in_flight: 64,
            max_body: 16 * 1024,
        }
    }
}

/// What every connection task shares.
pub struct ConnContext<K: Kv> {
    /// The node's router.
    pub router: Arc<Router<K>>,
    /// The connection registry.
    pub registry: Arc<Registry>,
    /// Token verification.
    pub auth: Arc<TokenIssuer>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Limits.
    pub config: ConnConfig,
    /// Fires when the node drains.
    pub shutdown: CancellationToken,
    /// In a cluster: the presence index, where a connection is announced
    /// before its `Welcome`.
    pub presence: Option<Arc<crate::cluster::presence::PresenceIndex<K>>>,
}

impl<K: Kv> std::fmt::Debug for ConnContext<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnContext")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A request running in the background, and its reply (`None` for a
/// request answered only when it fails).
type Pending = Pin<Box<dyn Future<Output = Option<Reply>> + Send>>;

/// Bytes of a `Sync` or `History` page that cost one more rate-limit token
/// beyond the request's own: a full 64 KiB page costs five.
const PAGE_BYTES_PER_TOKEN: f64 = 16.0 * 1024.0;

/// An answer to a request.
enum Reply {
    /// A frame to encode.
    Frame(pb::ServerFrame),
    /// A frame already encoded, length prefix included: sync and history
    /// pages, built from the stored message bytes without decoding them.
    Encoded(BytesMut),
}

impl From<pb::ServerFrame> for Reply {
    fn from(frame: pb::ServerFrame) -> Self {
        Self::Frame(frame)
    }
}

/// An `Error` frame that leaves the client its own retry backoff.
fn error_frame(req_id: u64, code: ErrorCode, message: impl Into<String>) -> pb::ServerFrame {
    error_frame_after(req_id, code, message, 0)
}

/// An `Error` frame asking the client to wait `retry_after_ms` first.
fn error_frame_after(
    req_id: u64,
    code: ErrorCode,
    message: impl Into<String>,
    retry_after_ms: u32,
) -> pb::ServerFrame {
    pb::ServerFrame {
        req_id,
        kind: Some(server_frame::Kind::Error(pb::Error {
            code: code as i32,
            message: message.into(),
            retry_after_ms,
        })),
    }
}

/// A request the router refused. `SERVER_BUSY`, the one router code with
/// a retry hint of its own, never reaches a socket: `Router::send` waits
/// for room in the append queue instead.
/// What a client is told when storage failed: the engine's own text stays
/// in the server's log.
const STORE_FAILED: &str = "storage failed; try again later";

fn router_error(req_id: u64, e: &RouterError) -> pb::ServerFrame {
    if let RouterError::Store(cause) = e {
        tracing::warn!(error = %cause, "request failed in storage");
    }
    error_frame(req_id, e.code(), e.to_string())
}

/// Why the connection ends; sent to the peer as an `Error` when it has a
/// code.
#[derive(Debug)]
struct Close {
    code: Option<ErrorCode>,
    message: String,
    reason: &'static str,
}

impl Close {
    fn with(code: ErrorCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code: Some(code),
            message: message.into(),
            reason,
        }
    }

    fn quiet(reason: &'static str) -> Self {
        Self {
            code: None,
            message: String::new(),
            reason,
        }
    }

    fn draining() -> Self {
        Self::with(
            ErrorCode::ServerDraining,
            "draining",
            "server is shutting down; reconnect elsewhere",
        )
    }

    fn slow_consumer() -> Self {
        Self::with(
            ErrorCode::SlowConsumer,
            "slow_consumer",
            "outbound queue full: reconnect and sync",
        )
    }
}

/// A token bucket of frames.
#[derive(Debug)]
struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
    refused: u32,
}

impl RateLimit {
    fn new(rate: u32, burst: u32) -> Self {
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
    fn charge(&mut self, cost: f64) {
        self.tokens = (self.tokens - cost).max(-self.burst);
    }

    fn take(&mut self) -> bool {
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

/// A connection after its handshake.
struct Connection<S, K: Kv> {
    stream: S,
    ctx: Arc<ConnContext<K>>,
    codec: ServerCodec,
    rbuf: BytesMut,
    /// Encoded replies waiting to be written.
    wbuf: BytesMut,
    shared: Arc<ConnShared>,
    user: u64,
    device: String,
    /// The last cursor written to this connection.
    last_cursor: Option<Cursor>,
    outbound: Vec<Outbound>,
}

/// Serves one accepted socket to the end: handshake, then frames.
pub async fn serve<S, K>(
    ctx: Arc<ConnContext<K>>,
    stream: S,
    peer: SocketAddr,
    transport: &'static str,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: Kv,
{
    let metrics = Arc::clone(&ctx.metrics);
    let gauge = metrics
        .connections
        .get_or_create(&TransportLabel { transport })
        .clone();
    gauge.inc();
    let reason = run(ctx, stream, peer).await;
    metrics.closed(reason);
    gauge.dec();
}

async fn run<S, K>(ctx: Arc<ConnContext<K>>, mut stream: S, peer: SocketAddr) -> &'static str
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: Kv,
{
    let codec = ServerCodec::new(ctx.config.max_frame);
    let mut rbuf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + ctx.config.handshake_timeout;
    // The handshake's futures are boxed: they are done with once the
    // connection is up, and should not weigh on every idle connection.
    let hello = Box::pin(async {
        tokio::select! {
        r = read_frame(&mut stream, &codec, &mut rbuf) => r,
        () = tokio::time::sleep_until(deadline) => Err(Close::with(
            ErrorCode::HandshakeTimeout,
            "handshake_timeout",
            "no Hello within the handshake deadline",
        )),
        () = ctx.shutdown.cancelled() => Err(Close::draining()),
        }
    })
    .await;
    let (req_id, hello) = match hello {
        Ok(Some(pb::ClientFrame {
            req_id,
            kind: Some(client_frame::Kind::Hello(h)),
        })) => (req_id, h),
        Ok(Some(_)) => {
            let close = Close::with(
                ErrorCode::Unauthenticated,
                "no_hello",
                "the first frame must be Hello",
            );
            return Box::pin(goodbye(&mut stream, &codec, 0, close)).await;
        }
        Ok(None) => return "peer_closed",
        Err(close) => return Box::pin(goodbye(&mut stream, &codec, 0, close)).await,
    };
    if hello.device_id.is_empty() || hello.device_id.len() > 64 {
        let close = Close::with(
            ErrorCode::InvalidArgument,
            "bad_hello",
            "device_id must be 1 to 64 bytes",
        );
        return Box::pin(goodbye(&mut stream, &codec, req_id, close)).await;
    }
    let user = match Box::pin(authenticate(&ctx, &hello.token)).await {
        Ok(u) => u,
        Err(close) => return Box::pin(goodbye(&mut stream, &codec, req_id, close)).await,
    };
    // In a cluster, this node is in the user's presence entry before the
    // Welcome: every commit for the user from then on, through any node,
    // notifies this one (one that does not, the client syncs).
    let announced = match &ctx.presence {
        Some(index) => Some(Box::pin(index.announce(user)).await),
        None => None,
    };
    // Where live delivery starts: read before registering, so a message
    // committed in between is older than the Welcome (the client syncs it)
    // rather than filtered out of the live stream.
    let head = match Box::pin(ctx.router.store().inbox_head(user)).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "inbox head read failed at Hello");
            let close = Close::with(ErrorCode::Unavailable, "store_error", STORE_FAILED);
            return Box::pin(goodbye(&mut stream, &codec, req_id, close)).await;
        }
    };
    let shared = match ctx.registry.register(user) {
        Ok(s) => s,
        Err(e) => {
            let close = Close::with(
                ErrorCode::TooManyConnections,
                "too_many_connections",
                e.to_string(),
            );
            return Box::pin(goodbye(&mut stream, &codec, req_id, close)).await;
        }
    };
    drop(announced);
    // Deleting an account revokes the connections registered at that
    // moment; one checked before the deletion but registered after it is
    // caught here, since a deletion that this read misses revokes it.
    if let Err(close) = Box::pin(authenticate(&ctx, &hello.token)).await {
        ctx.registry.unregister(&shared);
        return Box::pin(goodbye(&mut stream, &codec, req_id, close)).await;
    }
    tracing::debug!(user, %peer, "connection authenticated");
    let mut conn = Connection {
        stream,
        ctx: Arc::clone(&ctx),
        codec,
        rbuf,
        wbuf: BytesMut::new(),
        shared: Arc::clone(&shared),
        user,
        device: hello.device_id,
        last_cursor: head,
        outbound: Vec::new(),
    };
    let welcome = pb::ServerFrame {
        req_id,
        kind: Some(server_frame::Kind::Welcome(pb::Welcome {
            user_id: user,
            session_id: shared.id,
            heartbeat_ms: ctx.config.heartbeat.as_millis() as u32,
            max_frame_len: ctx.config.max_frame as u32,
            max_body_len: ctx.config.max_body as u32,
            server_time: now_ms(),
        })),
    };
    let reason = match conn.reply(&welcome) {
        Ok(()) => conn.serve_frames().await,
        Err(close) => Err(close),
    };
    ctx.registry.unregister(&shared);
    match reason {
        Ok(()) => {
            // The peer closed: complete the close (a WebSocket answers the
            // peer's Close frame; TLS sends close_notify).
            let _ = tokio::time::timeout(Duration::from_millis(500), conn.stream.shutdown()).await;
            "peer_closed"
        }
        Err(close) => {
            let reason = close.reason;
            // Queued deliveries are dropped: the client syncs them after it
            // reconnects, and the reason must not wait behind them.
            conn.shared.clear();
            if let Some(code) = close.code {
                if conn.reply(&error_frame(0, code, close.message)).is_ok() {
                    let _ = tokio::time::timeout(ctx.config.write_timeout, Box::pin(conn.flush()))
                        .await;
                }
            }
            Box::pin(linger_close(&mut conn.stream)).await;
            reason
        }
    }
}

/// Closes after a last message: a half-close, then unread input is
/// discarded for a moment. Closing a socket with unread input makes the
/// kernel send a reset, which would destroy the error frame before the
/// peer reads it.
async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = tokio::time::timeout(Duration::from_millis(500), stream.shutdown()).await;
    let mut scratch = [0u8; 4096];
    let drain = async {
        let mut left: usize = 1 << 20;
        while left > 0 {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
}

async fn authenticate<K: Kv>(ctx: &ConnContext<K>, token: &str) -> Result<u64, Close> {
    crate::auth::authenticate(&ctx.auth, ctx.router.store(), token, now_ms())
        .await
        .map_err(|refusal| match refusal {
            crate::auth::Refusal::Token(e) => {
                Close::with(e.error_code(), "bad_token", e.to_string())
            }
            crate::auth::Refusal::Store(e) => {
                tracing::warn!(error = %e, "account read failed at Hello");
                Close::with(ErrorCode::Unavailable, "store_error", STORE_FAILED)
            }
        })
}

/// Reads one frame, `None` at a clean end of stream.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    codec: &ServerCodec,
    rbuf: &mut BytesMut,
) -> Result<Option<pb::ClientFrame>, Close> {
    loop {
        match codec.decode_message(rbuf) {
            Ok(Some(frame)) => return Ok(Some(frame)),
            Ok(None) => {}
            Err(e) => {
                let code = e.error_code().unwrap_or(ErrorCode::MalformedFrame);
                return Err(Close::with(code, "bad_frame", e.to_string()));
            }
        }
        reserve_read(rbuf);
        match stream.read_buf(rbuf).await {
            Ok(0) if rbuf.is_empty() => return Ok(None),
            Ok(0) => return Err(Close::quiet("truncated_frame")),
            Ok(_) => {}
            Err(_) => return Err(Close::quiet("read_error")),
        }
    }
}

/// Sends a last `Error` and closes, for connections that never registered.
async fn goodbye<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    codec: &ServerCodec,
    req_id: u64,
    close: Close,
) -> &'static str {
    if let Some(code) = close.code {
        let mut buf = BytesMut::new();
        if codec
            .encode_message(&error_frame(req_id, code, close.message), &mut buf)
            .is_ok()
        {
            let write = async {
                stream.write_all(&buf).await?;
                stream.flush().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
        }
    }
    linger_close(stream).await;
    close.reason
}

impl<S, K> Connection<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: Kv,
{
    fn reply(&mut self, frame: &pb::ServerFrame) -> Result<(), Close> {
        self.codec
            .encode_message(frame, &mut self.wbuf)
            .map_err(|e| Close::with(ErrorCode::Internal, "encode_error", e.to_string()))?;
        self.ctx.metrics.frames_out.inc();
        Ok(())
    }

    /// Queues the answer of a request that ran in the background.
    fn answer(&mut self, reply: Reply) -> Result<(), Close> {
        match reply {
            Reply::Frame(frame) => self.reply(&frame),
            Reply::Encoded(frame) => {
                self.wbuf.extend_from_slice(&frame);
                self.ctx.metrics.frames_out.inc();
                Ok(())
            }
        }
    }

    async fn serve_frames(&mut self) -> Result<(), Close> {
        let mut inflight: FuturesUnordered<Pending> = FuturesUnordered::new();
        let mut rate = RateLimit::new(self.ctx.config.rate_per_sec, self.ctx.config.rate_burst);
        let idle = self.ctx.config.idle_timeout;
        let mut idle_deadline = tokio::time::Instant::now() + idle;
        let shared = Arc::clone(&self.shared);
        let shutdown = self.ctx.shutdown.clone();
        loop {
            // The write path is boxed, and taken only when there is
            // something to write, so an idle connection's task stays small.
            if !self.wbuf.is_empty() || shared.has_queued() {
                Box::pin(self.flush()).await?;
            }
            if shared.is_slow() {
                return Err(Close::slow_consumer());
            }
            if shared.is_revoked() {
                return Err(Close::with(
                    ErrorCode::TokenInvalid,
                    "revoked",
                    "the account was deleted",
                ));
            }
            let can_read = inflight.len() < self.ctx.config.max_in_flight;
            tokio::select! {
                frame = read_frame(&mut self.stream, &self.codec, &mut self.rbuf), if can_read => {
                    let Some(frame) = frame? else {
                        return Ok(());
                    };
                    idle_deadline = tokio::time::Instant::now() + idle;
                    self.ctx.metrics.frames_in.inc();
                    if !rate.take() {
                        if rate.refused > self.ctx.config.rate_burst {
                            return Err(Close::with(ErrorCode::RateLimited, "rate_limited", "sustained flood past the rate limit"));
                        }
                        let wait_ms = (1000 / self.ctx.config.rate_per_sec.max(1)).max(1);
                        self.reply(&error_frame_after(frame.req_id, ErrorCode::RateLimited, "rate limit exceeded", wait_ms))?;
                        continue;
                    }
                    if self.rbuf.is_empty() {
                        shrink_idle(&mut self.rbuf);
                    }
                    if let Some(now) = self.handle(frame)? {
                        inflight.push(now);
                    }
                }
                Some(reply) = inflight.next(), if !inflight.is_empty() => {
                    // A client with requests in flight waits for us: it is
                    // not idle, whatever it last sent.
                    idle_deadline = tokio::time::Instant::now() + idle;
                    if let Some(reply) = reply {
                        if let Reply::Encoded(page) = &reply {
                            // A page costs by its size, so looping `Sync`
                            // over a full inbox costs what it reads.
                            rate.charge(page.len() as f64 / PAGE_BYTES_PER_TOKEN);
                        }
                        self.answer(reply)?;
                    }
                }
                () = shared.wake.notified() => {}
                // Only while frames are being read: with every request slot
                // taken the server is the one behind, and the client's next
                // frames wait unread in the socket.
                () = tokio::time::sleep_until(idle_deadline), if can_read => {
                    return Err(Close::with(ErrorCode::IdleTimeout, "idle_timeout", "no frame within the idle deadline"));
                }
                () = shutdown.cancelled() => {
                    // Requests already running (sends being committed) finish
                    // and are answered before the reconnect notice.
                    let drain = async {
                        while let Some(reply) = inflight.next().await {
                            if reply.is_some_and(|reply| self.answer(reply).is_err()) {
                                break;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(3), drain).await;
                    return Err(Close::draining());
                }
            }
        }
    }

    /// Validates a conversation from the wire, answering `INVALID_ARGUMENT`
    /// (and returning `None`) when it is malformed.
    fn conversation(
        &mut self,
        req_id: u64,
        conversation: Option<&pb::Conversation>,
    ) -> Result<Option<ConversationId>, Close> {
        match ConversationId::try_from(conversation) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                self.reply(&error_frame(
                    req_id,
                    ErrorCode::InvalidArgument,
                    e.to_string(),
                ))?;
                Ok(None)
            }
        }
    }

    /// Dispatches one frame: answers at once, or returns a future that
    /// answers when its work is done.
    fn handle(&mut self, frame: pb::ClientFrame) -> Result<Option<Pending>, Close> {
        let req_id = frame.req_id;
        let Some(kind) = frame.kind else {
            self.reply(&error_frame(
                req_id,
                ErrorCode::Unsupported,
                "frame has no kind",
            ))?;
            return Ok(None);
        };
        let router = Arc::clone(&self.ctx.router);
        let user = self.user;
        let max_frame = self.ctx.config.max_frame;
        let fut: Pending = match kind {
            client_frame::Kind::Ping(_) => {
                self.reply(&pb::ServerFrame {
                    req_id,
                    kind: Some(server_frame::Kind::Pong(pb::Pong {})),
                })?;
                return Ok(None);
            }
            client_frame::Kind::Hello(_) => {
                self.reply(&error_frame(
                    req_id,
                    ErrorCode::Unsupported,
                    "already authenticated",
                ))?;
                return Ok(None);
            }
            client_frame::Kind::Send(s) => {
                let to = match s.to {
                    Some(send::To::UserId(u)) => Target::User(u),
                    Some(send::To::GroupId(g)) => Target::Group(g),
                    None => {
                        self.reply(&error_frame(
                            req_id,
                            ErrorCode::InvalidArgument,
                            "Send without a recipient",
                        ))?;
                        return Ok(None);
                    }
                };
                let req = SendRequest {
                    client_msg_id: s.client_msg_id,
                    to,
                    body: s.body,
                };
                Box::pin(async move {
                    let frame = match router.send(user, req).await {
                        Ok(ack) => pb::ServerFrame {
                            req_id,
                            kind: Some(server_frame::Kind::SendAck(ack.into())),
                        },
                        Err(e) => router_error(req_id, &e),
                    };
                    Some(frame.into())
                })
            }
            client_frame::Kind::Sync(s) => Box::pin(async move {
                Some(match router.sync(user, &s.after, s.limit).await {
                    Ok(batch) => sync_batch(req_id, &batch, max_frame),
                    Err(e) => router_error(req_id, &e).into(),
                })
            }),
            client_frame::Kind::History(h) => {
                let Some(conversation) = self.conversation(req_id, h.conversation.as_ref())? else {
                    return Ok(None);
                };
                Box::pin(async move {
                    Some(
                        match router.history(user, conversation, h.before, h.limit).await {
                            Ok(page) => history_page(req_id, &page, max_frame),
                            Err(e) => router_error(req_id, &e).into(),
                        },
                    )
                })
            }
            client_frame::Kind::Ack(a) => {
                let device = self.device.clone();
                // Acks and reads are answered only when they fail.
                Box::pin(async move {
                    let done = router.ack(user, &device, &a.cursor).await;
                    done.err().map(|e| router_error(req_id, &e).into())
                })
            }
            client_frame::Kind::Read(r) => {
                let Some(conversation) = self.conversation(req_id, r.conversation.as_ref())? else {
                    return Ok(None);
                };
                Box::pin(async move {
                    let done = router.read(user, conversation, r.message_id).await;
                    done.err().map(|e| router_error(req_id, &e).into())
                })
            }
        };
        Ok(Some(fut))
    }

    /// Writes everything pending: replies, then queued deliveries, in
    /// vectored writes.
    async fn flush(&mut self) -> Result<(), Close> {
        // Set while a pull has inbox pages left: each page is written before
        // the next is read, so a backlog never piles up in `wbuf`, which the
        // outbound queue's cap does not bound.
        let mut pull = false;
        loop {
            self.outbound.clear();
            // While a pull has pages left, queued deliveries wait: writing
            // one now would move the cursor past the pages not read yet.
            if !pull {
                self.shared.drain_into(&mut self.outbound, 256);
            }
            if self.outbound.is_empty() && self.wbuf.is_empty() && !pull {
                // A burst must not leave an idle connection holding its
                // buffers.
                if self.outbound.capacity() > 16 {
                    self.outbound = Vec::new();
                }
                if self.wbuf.capacity() > 4096 {
                    self.wbuf = BytesMut::new();
                }
                return Ok(());
            }
            let released: usize = self.outbound.iter().map(Outbound::byte_len).sum();
            pull |= keep_unwritten(&mut self.outbound, &mut self.last_cursor);
            let prefix = self.wbuf.split().freeze();
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(1 + 2 * self.outbound.len());
            if !prefix.is_empty() {
                slices.push(IoSlice::new(&prefix));
            }
            for item in &self.outbound {
                if let Outbound::Deliver { frame, .. } = item {
                    slices.push(IoSlice::new(frame.header()));
                    slices.push(IoSlice::new(frame.message()));
                }
            }
            // Replies are small: the whole prefix counts as one frame.
            let frame_lens =
                std::iter::once(prefix.len()).chain(self.outbound.iter().map(Outbound::byte_len));
            let writes = write_all_vectored(
                &mut self.stream,
                &mut slices,
                frame_lens,
                self.ctx.config.write_timeout,
                &self.shared,
            )
            .await?;
            self.shared.release(released);
            let m = &self.ctx.metrics;
            m.frames_out.inc_by(self.outbound.len() as u64);
            m.socket_writes.inc_by(writes);
            if pull {
                pull = Box::pin(self.pull()).await?;
            }
        }
    }

    /// Reads a page of the inbox after the last written cursor into `wbuf`
    /// as `Deliver` frames; returns whether more pages follow.
    async fn pull(&mut self) -> Result<bool, Close> {
        let after = self.last_cursor;
        let batch = self
            .ctx
            .router
            .sync(self.user, after.as_ref().map_or(&[], Cursor::as_bytes), 0)
            .await
            .map_err(|e| Close::with(e.code(), "pull_failed", e.to_string()))?;
        for e in &batch.entries {
            let header = SharedMessage::from_encoded(e.message.clone())
                .deliver_header(e.cursor.as_bytes())
                .map_err(|err| Close::with(ErrorCode::Internal, "encode_error", err.to_string()))?;
            self.wbuf.extend_from_slice(header.as_slice());
            self.wbuf.extend_from_slice(&e.message);
            self.last_cursor = Some(e.cursor);
        }
        self.ctx
            .metrics
            .frames_out
            .inc_by(batch.entries.len() as u64);
        Ok(batch.has_more)
    }
}

/// Keeps the deliveries of `drained` to write, in order, advancing
/// `last_cursor` past them; returns whether a `Pull` was among them.
///
/// Cursors only move forward on a connection: deliveries already covered
/// by a pull are dropped, and so are those queued after a `Pull`, whose
/// commits the pull reads in order. Written first, they would move the
/// cursor past the commit the pull is for, which would never be delivered.
fn keep_unwritten(drained: &mut Vec<Outbound>, last_cursor: &mut Option<Cursor>) -> bool {
    let mut pull = false;
    drained.retain(|item| match item {
        Outbound::Pull => {
            pull = true;
            false
        }
        Outbound::PullUntil(until) => {
            pull |= last_cursor.is_none_or(|last| last < *until);
            false
        }
        Outbound::Deliver { cursor, .. } => {
            if pull || last_cursor.is_some_and(|last| *cursor <= last) {
                return false;
            }
            *last_cursor = Some(*cursor);
            true
        }
    });
    pull
}

/// How many leading items, of these encoded sizes, fit in one frame of
/// `max_frame` bytes with room left for the envelope (`req_id`, `next`,
/// `has_more`); at least one, so every page makes progress.
fn frame_fit(max_frame: usize, sizes: impl Iterator<Item = usize>) -> usize {
    let budget = max_frame.saturating_sub(LENGTH_PREFIX_LEN + 64);
    let mut total = 0usize;
    sizes
        .enumerate()
        .take_while(|&(i, size)| {
            total += size;
            i == 0 || total <= budget
        })
        .count()
}

/// A `SyncBatch` that fits in one frame, built from the stored bytes.
fn sync_batch(req_id: u64, batch: &hanmadi_storage::chat::SyncBatch, max_frame: usize) -> Reply {
    // A `Deliver` entry is its message and cursor plus field keys and
    // lengths: 8 bytes up to 16 KiB; the envelope room absorbs the 2 more
    // of each larger message, as only a few fit in a frame.
    let sizes = batch
        .entries
        .iter()
        .map(|e| e.message.len() + e.cursor.0.len() + 8);
    let fit = frame_fit(max_frame, sizes);
    let cut = fit < batch.entries.len();
    let next = if cut {
        Some(batch.entries[fit - 1].cursor)
    } else {
        batch.next
    };
    let entries = batch.entries[..fit]
        .iter()
        .map(|e| (e.cursor.as_bytes(), e.message.as_ref()));
    let mut out = BytesMut::new();
    let next = next.as_ref().map_or(&[][..], Cursor::as_bytes);
    match put_sync_batch(&mut out, req_id, entries, next, batch.has_more || cut) {
        Ok(()) => Reply::Encoded(out),
        Err(e) => error_frame(req_id, ErrorCode::Internal, e.to_string()).into(),
    }
}

/// A `HistoryPage` that fits in one frame, built from the stored bytes.
fn history_page(req_id: u64, page: &hanmadi_storage::chat::HistoryPage, max_frame: usize) -> Reply {
    // A repeated message field adds a key and a length of at most 4 bytes.
    let fit = frame_fit(max_frame, page.messages.iter().map(|m| m.len() + 4));
    let cut = fit < page.messages.len();
    let messages = page.messages[..fit].iter().map(|m| m.as_ref());
    let mut out = BytesMut::new();
    match put_history_page(&mut out, req_id, messages, page.has_more || cut) {
        Ok(()) => Reply::Encoded(out),
        Err(e) => error_frame(req_id, ErrorCode::Internal, e.to_string()).into(),
    }
}

/// Writes every slice, however the socket splits it; returns the number of
/// write calls. `frame_lens` are the lengths of the whole frames the slices
/// hold, in order.
///
/// A write stalled on a full socket gives up once the outbound queue
/// overflows too (that reader is a slow consumer), but only at a frame
/// boundary, so the close reason that follows is not spliced into a frame.
async fn write_all_vectored<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut slices: &mut [IoSlice<'_>],
    frame_lens: impl Iterator<Item = usize> + Clone,
    timeout: Duration,
    shared: &ConnShared,
) -> Result<u64, Close> {
    // Walked only once the queue overflowed, which is rare.
    let at_frame_boundary = |written: usize| {
        let mut end = 0;
        written == 0
            || frame_lens.clone().any(|len| {
                end += len;
                end == written
            })
    };
    let mut writes = 0;
    let mut written = 0usize;
    let mut give_up = false;
    let deadline = tokio::time::Instant::now() + timeout;
    while !slices.is_empty() {
        if give_up && at_frame_boundary(written) {
            return Err(Close::slow_consumer());
        }
        let result = loop {
            tokio::select! {
                r = stream.write_vectored(slices) => break r,
                () = shared.wake.notified(), if !give_up => {
                    if shared.is_slow() {
                        give_up = true;
                        if at_frame_boundary(written) {
                            return Err(Close::slow_consumer());
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Err(Close::quiet("write_timeout")),
            }
        };
        let n = match result {
            Ok(0) | Err(_) => return Err(Close::quiet("write_error")),
            Ok(n) => n,
        };
        writes += 1;
        written += n;
        IoSlice::advance_slices(&mut slices, n);
    }
    // TLS and WebSocket layers may hold the tail of what was written.
    tokio::select! {
        r = stream.flush() => r.map_err(|_| Close::quiet("write_error"))?,
        () = tokio::time::sleep_until(deadline) => return Err(Close::quiet("write_timeout")),
    }
    Ok(writes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use hanmadi_proto::SharedMessage;
    use hanmadi_storage::chat::{Cursor, CURSOR_LEN};

    use super::{frame_fit, keep_unwritten, Outbound};

    fn deliver(n: u8) -> Outbound {
        let cursor = Cursor([n; CURSOR_LEN]);
        let message = SharedMessage::encode(&hanmadi_proto::Message::default());
        Outbound::Deliver {
            cursor,
            frame: message.deliver_frame(cursor.as_bytes()).unwrap(),
        }
    }

    fn cursors(items: &[Outbound]) -> Vec<u8> {
        items
            .iter()
            .map(|item| match item {
                Outbound::Deliver { cursor, .. } => cursor.0[0],
                Outbound::Pull | Outbound::PullUntil(_) => 0,
            })
            .collect()
    }

    #[test]
    fn written_cursors_only_move_forward() {
        let mut last = Some(Cursor([3; CURSOR_LEN]));
        let mut drained = vec![deliver(2), deliver(3), deliver(5), deliver(4), deliver(6)];
        assert!(!keep_unwritten(&mut drained, &mut last));
        assert_eq!(cursors(&drained), [5, 6]);
        assert_eq!(last, Some(Cursor([6; CURSOR_LEN])));
    }

    #[test]
    fn deliveries_after_a_pull_wait_for_it() {
        // The pull is for a commit older than 7: writing 7 first would
        // move the cursor past it.
        let mut last = None;
        let mut drained = vec![deliver(1), Outbound::Pull, deliver(7), Outbound::Pull];
        assert!(keep_unwritten(&mut drained, &mut last));
        assert_eq!(cursors(&drained), [1]);
        assert_eq!(last, Some(Cursor([1; CURSOR_LEN])));
    }

    #[test]
    fn pages_keep_at_least_one_item() {
        assert_eq!(frame_fit(1000, [10, 20, 30].into_iter()), 3);
        // 1000 bytes leave 932 after the length prefix and the envelope.
        assert_eq!(frame_fit(1000, [900, 32].into_iter()), 2);
        assert_eq!(frame_fit(1000, [900, 33].into_iter()), 1);
        assert_eq!(frame_fit(1000, [5000, 20].into_iter()), 1);
        assert_eq!(frame_fit(1000, std::iter::empty()), 0);
    }

    /// Every idle connection holds its task's future: keep it small (the
    /// handshake and write paths are boxed for this).
    #[test]
    fn connection_future_stays_small() {
        type K =
            hanmadi_storage::embedded::EmbeddedKv<hanmadi_storage::backend::fjall::FjallBackend>;
        fn size_of_ret<F, Fut>(_: &F) -> usize
        where
            F: Fn(std::sync::Arc<super::ConnContext<K>>, tokio::net::TcpStream) -> Fut,
        {
            std::mem::size_of::<Fut>()
        }
        let serve = |ctx: std::sync::Arc<super::ConnContext<K>>, s: tokio::net::TcpStream| {
            super::serve(
                ctx,
                s,
                std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
                "tcp",
            )
        };
        let size = size_of_ret(&serve);
        assert!(size <= 2048, "the connection future grew to {size} bytes");
    }
}
