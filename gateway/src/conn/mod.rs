//! One task per connection (DESIGN §3.1, §7).
//!
//! The task owns its socket and waits at once on the next frame, its
//! outbound queue, requests in flight, the idle deadline and shutdown.
//! Partial input lives in the connection's buffer, so a cancelled read loses
//! nothing. After each wake-up it writes everything pending — replies and
//! queued `Deliver` frames — with vectored writes. Requests run concurrently
//! up to a cap; at the cap the task stops reading, which is how a full
//! append queue pushes back on a socket sender.
//!
//! Here: the handshake and the loop. `dispatch` says what each frame kind
//! does, `writer` writes replies and deliveries and pulls the inbox,
//! `pages` builds sync and history answers, `rate` is the token bucket,
//! `reply` holds replies, `Error` frames and close reasons.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::stream::{FuturesUnordered, StreamExt};
use hanmadi_proto::pb::{self, client_frame, server_frame};
use hanmadi_proto::{reserve_read, shrink_idle, ErrorCode, ServerCodec};
use hanmadi_router::Router;
use hanmadi_storage::chat::Cursor;
use hanmadi_storage::kv::Kv;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::auth::TokenIssuer;
use crate::metrics::{Metrics, TransportLabel};
use crate::now_ms;
use crate::registry::{ConnShared, Outbound, Registry};

mod dispatch;
mod pages;
mod reply;
mod writer;

use crate::rate::{RateLimit, PAGE_BYTES_PER_TOKEN, SEND_BYTES_PER_TOKEN};
use reply::{error_frame, error_frame_after, Close, Pending, Reply, STORE_FAILED};

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnConfig {
    /// Largest frame accepted, and the most a reply may take.
    pub max_frame: usize,
    /// Time from accept to a valid `Hello` (on TLS, from the end of the
    /// TLS handshake, which has a deadline of the same length).
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
    /// In a cluster: set once the change feed's reader knows where it
    /// starts. A connection reads its inbox head only after, so the feed,
    /// the backstop for lost notifications, covers every entry past that
    /// head.
    pub feed_started: Option<Arc<tokio::sync::SetOnce<()>>>,
}

impl<K: Kv> ConnContext<K> {
    /// In a cluster, waits until the change feed's reader knows where it
    /// starts: an inbox read after that is covered by the feed, the
    /// backstop for lost notifications. `false` when the node stops or
    /// `deadline` passes first; at once `true` on one node.
    pub(crate) async fn feed_started(&self, deadline: tokio::time::Instant) -> bool {
        match &self.feed_started {
            Some(started) => wait_for_feed(started, &self.shutdown, deadline).await,
            None => true,
        }
    }
}

/// Whether `started` is set before the node stops and before `deadline`.
async fn wait_for_feed(
    started: &tokio::sync::SetOnce<()>,
    shutdown: &CancellationToken,
    deadline: tokio::time::Instant,
) -> bool {
    tokio::select! {
        _ = started.wait() => true,
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep_until(deadline) => false,
    }
}

impl<K: Kv> std::fmt::Debug for ConnContext<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnContext")
            .field("config", &self.config)
            .finish_non_exhaustive()
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
            return Box::pin(goodbye(&ctx, peer, &mut stream, &codec, 0, close)).await;
        }
        Ok(None) => return "peer_closed",
        Err(close) => return Box::pin(goodbye(&ctx, peer, &mut stream, &codec, 0, close)).await,
    };
    if hello.device_id.is_empty() || hello.device_id.len() > 64 {
        let close = Close::with(
            ErrorCode::InvalidArgument,
            "bad_hello",
            "device_id must be 1 to 64 bytes",
        );
        return Box::pin(goodbye(&ctx, peer, &mut stream, &codec, req_id, close)).await;
    }
    let user = match Box::pin(authenticate(&ctx, &hello.token)).await {
        Ok(u) => u,
        Err(close) => {
            return Box::pin(goodbye(&ctx, peer, &mut stream, &codec, req_id, close)).await
        }
    };
    // In a cluster, this node is in the user's presence entry before the
    // Welcome: every commit for the user from then on, through any node,
    // notifies this one (one that does not, the client syncs).
    let announced = match &ctx.presence {
        Some(index) => Some(Box::pin(index.announce(user)).await),
        None => None,
    };
    let deadline = tokio::time::Instant::now() + ctx.config.handshake_timeout;
    if !ctx.feed_started(deadline).await {
        let close = if ctx.shutdown.is_cancelled() {
            Close::draining()
        } else {
            tracing::warn!("the change feed has not started; refusing a connection");
            Close::with(ErrorCode::Unavailable, "store_error", STORE_FAILED)
        };
        return Box::pin(goodbye(&ctx, peer, &mut stream, &codec, req_id, close)).await;
    }
    // Where live delivery starts: read before registering, so a message
    // committed in between is older than the Welcome (the client syncs it)
    // rather than filtered out of the live stream.
    let head = match Box::pin(ctx.router.store().inbox_head(user)).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "inbox head read failed at Hello");
            let close = Close::with(ErrorCode::Unavailable, "store_error", STORE_FAILED);
            return Box::pin(goodbye(&ctx, peer, &mut stream, &codec, req_id, close)).await;
        }
    };
    let shared = match ctx.registry.register(user) {
        Ok(s) => s,
        Err(e) => {
            let close = Close::with(ErrorCode::TooManyConnections, e.reason(), e.to_string());
            return Box::pin(goodbye(&ctx, peer, &mut stream, &codec, req_id, close)).await;
        }
    };
    let registered = Registered {
        registry: Arc::clone(&ctx.registry),
        shared: Arc::clone(&shared),
    };
    drop(announced);
    // Deleting an account revokes the connections registered at that
    // moment; one checked before the deletion but registered after it is
    // caught here, since a deletion that this read misses revokes it.
    if let Err(close) = Box::pin(authenticate(&ctx, &hello.token)).await {
        drop(registered);
        return Box::pin(goodbye(&ctx, peer, &mut stream, &codec, req_id, close)).await;
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
    drop(registered);
    match reason {
        Ok(()) => {
            // The peer closed: complete the close (a WebSocket answers the
            // peer's Close frame; TLS sends close_notify).
            let _ = tokio::time::timeout(Duration::from_millis(500), conn.stream.shutdown()).await;
            "peer_closed"
        }
        Err(close) => {
            let reason = close.reason;
            strike_if_abuse(&ctx, peer, reason);
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

/// A connection's place in the registry, given up when dropped: however
/// its task ends, a panic included, the connection stops counting as
/// online and its queue stops taking deliveries.
struct Registered {
    registry: Arc<Registry>,
    shared: Arc<ConnShared>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.unregister(&self.shared);
    }
}

/// What a `Send` costs the user's sends: one token, and one more per whole
/// 4 KiB of body, so that a flood of the largest messages writes a fifth
/// of what one of small ones may. `None` for other frames.
fn send_cost(frame: &pb::ClientFrame) -> Option<f64> {
    match &frame.kind {
        Some(client_frame::Kind::Send(s)) => {
            Some(1.0 + (s.body.len() / SEND_BYTES_PER_TOKEN) as f64)
        }
        _ => None,
    }
}

/// Counts a strike against `peer`'s address ([`Registry::strike`]) when
/// its connection is closed for abuse: broken framing, no valid `Hello` in
/// time, a bad token, a flood past the rate limit. Slowness and silence
/// are not abuse: phones on bad networks do both. Struck before the
/// goodbye is written, so the address's next connection already meets it.
fn strike_if_abuse<K: Kv>(ctx: &ConnContext<K>, peer: SocketAddr, reason: &str) {
    if matches!(
        reason,
        "bad_frame" | "no_hello" | "bad_hello" | "bad_token" | "handshake_timeout" | "rate_limited"
    ) {
        ctx.registry.strike(peer.ip());
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
async fn goodbye<S: AsyncRead + AsyncWrite + Unpin, K: Kv>(
    ctx: &ConnContext<K>,
    peer: SocketAddr,
    stream: &mut S,
    codec: &ServerCodec,
    req_id: u64,
    close: Close,
) -> &'static str {
    strike_if_abuse(ctx, peer, close.reason);
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

    /// Takes a send of `cost` from the user's sends (shared by their
    /// connections on this node); a refusal counts toward this
    /// connection's flood.
    fn take_user_send(&self, rate: &mut RateLimit, cost: f64) -> bool {
        let config = &self.ctx.config;
        let taken = self
            .shared
            .take_send(config.rate_per_sec, config.rate_burst, cost);
        if !taken {
            rate.refuse();
        }
        taken
    }

    async fn serve_frames(&mut self) -> Result<(), Close> {
        let mut inflight: FuturesUnordered<Pending> = FuturesUnordered::new();
        let mut rate = RateLimit::new(self.ctx.config.rate_per_sec, self.ctx.config.rate_burst);
        let idle = self.ctx.config.idle_timeout;
        let mut idle_deadline = tokio::time::Instant::now() + idle;
        // One timer for the connection's life, armed for the deadline as it
        // stood and moved only when it fires early: frames push the
        // deadline back without touching the runtime's timer wheel.
        let idle_timer = tokio::time::sleep_until(idle_deadline);
        tokio::pin!(idle_timer);
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
                    "the account's tokens were revoked, or the account deleted",
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
                    let allowed = rate.take()
                        && send_cost(&frame).is_none_or(|cost| self.take_user_send(&mut rate, cost));
                    if !allowed {
                        if rate.flooded() {
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
                () = &mut idle_timer, if can_read => {
                    if idle_deadline > tokio::time::Instant::now() {
                        idle_timer.as_mut().reset(idle_deadline);
                        continue;
                    }
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::SetOnce;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    /// A handshake waiting for the change feed's start goes on once it
    /// starts, and gives up, without waiting out its deadline, when the
    /// node stops first.
    #[tokio::test(start_paused = true)]
    async fn a_wait_for_the_feed_ends_at_its_start_or_at_shutdown() {
        let hour = Instant::now() + Duration::from_secs(3600);
        let started = Arc::new(SetOnce::new());
        let shutdown = CancellationToken::new();
        let waiter = {
            let (started, shutdown) = (Arc::clone(&started), shutdown.clone());
            tokio::spawn(async move { super::wait_for_feed(&started, &shutdown, hour).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "it returned before the feed started");
        started.set(()).expect("set once");
        assert!(waiter.await.expect("waiter"), "the started feed was missed");

        let unstarted = SetOnce::new();
        let at = Instant::now();
        let stopper = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                shutdown.cancel();
            })
        };
        assert!(!super::wait_for_feed(&unstarted, &shutdown, hour).await);
        assert_eq!(
            at.elapsed(),
            Duration::from_millis(50),
            "it outwaited the shutdown"
        );
        stopper.await.expect("stopper");

        let at = Instant::now();
        let soon = at + Duration::from_millis(20);
        assert!(!super::wait_for_feed(&unstarted, &CancellationToken::new(), soon).await);
        assert_eq!(at.elapsed(), Duration::from_millis(20));
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
