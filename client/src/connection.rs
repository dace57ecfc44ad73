//! The socket side: opening a connection (TCP, then TLS and WebSocket if
//! asked), the `Hello`/`Welcome` handshake, and the one task that owns the
//! socket afterwards.
//!
//! The task waits at once on the next bytes from the server, a write of
//! pending output, frames queued by [`crate::Client`] handles, the
//! heartbeat timer and shutdown. Every branch is cancel-safe: partial input
//! stays in `read_buffer`, unwritten output in `write_buffer`, so whichever
//! branch wins, nothing is lost. Reading never waits for writing, so a
//! server that is itself blocked writing to us cannot deadlock the pair.
//!
//! Replies are routed by `req_id` to the waiters in [`Requests`]; `Deliver`
//! and refusals of fire-and-forget requests go to the event queue that
//! [`crate::Deliveries`] drains.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hanmadi_proto::websocket::{max_message_len, WsFrames};
use hanmadi_proto::{
    client_frame, reserve_read, server_frame, shrink_idle, ClientCodec, ClientFrame, Deliver,
    Hello, Ping, ServerFrame, Welcome,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::client::Event;
use crate::config::ClientConfig;
use crate::error::{ClientError, ServerError};
use crate::requests::Requests;

/// A byte stream the connection can run over: TCP, TLS, or anything a
/// caller hands to [`crate::Client::handshake`].
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// The stream behind the connection task; boxed so the task is one type
/// whatever the transport.
pub(crate) type BoxStream = Box<dyn Stream>;

/// Output waiting to be written above which the task stops taking queued
/// frames, so a stalled socket pushes back on callers (their queue fills)
/// instead of growing this buffer.
const WRITE_BUFFER_HIGH: usize = 64 * 1024;

/// How far away the timer is set when there is nothing to time.
const NO_TIMER: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How long a graceful close may spend writing what is still queued.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Opens the transport: TCP with `TCP_NODELAY` (the task batches writes
/// itself, and chat frames are small and latency-bound), then TLS if the
/// config asks for it.
///
/// # Errors
///
/// [`ClientError::Io`] when the address does not resolve or connect;
/// [`ClientError::InvalidServerName`] or [`ClientError::Tls`] for TLS.
pub(crate) async fn open(config: &ClientConfig) -> Result<BoxStream, ClientError> {
    let tcp = TcpStream::connect(&config.addr).await?;
    tcp.set_nodelay(true)?;
    let Some(tls) = &config.tls else {
        return over_websocket(tcp, config, "ws").await;
    };
    let server_name = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
        .map_err(|_| ClientError::InvalidServerName(tls.server_name.clone()))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config))
        .connect(server_name, tcp)
        .await?;
    over_websocket(stream, config, "wss").await
}

/// `stream` as is, or, when the config asks for WebSocket, after the
/// upgrade, seen as the same frame stream.
async fn over_websocket<S: Stream + 'static>(
    stream: S,
    config: &ClientConfig,
    scheme: &str,
) -> Result<BoxStream, ClientError> {
    let Some(ws) = &config.websocket else {
        return Ok(Box::new(stream));
    };
    let host = config
        .tls
        .as_ref()
        .map_or(config.addr.as_str(), |t| t.server_name.as_str());
    let url = format!("{scheme}://{host}{}", ws.path);
    let mut request = url
        .into_client_request()
        .map_err(|e| ClientError::WebSocket(e.to_string()))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        http::HeaderValue::from_static(ws.encoding.subprotocol()),
    );
    let ws_config = WebSocketConfig::default()
        .write_buffer_size(0)
        .max_message_size(Some(max_message_len(config.max_frame)));
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config))
        .await
        .map_err(|e| ClientError::WebSocket(e.to_string()))?;
    Ok(Box::new(WsFrames::<_, ServerFrame, ClientFrame>::new(
        socket,
        ws.encoding,
    )))
}

/// Sends `Hello` and waits for `Welcome`. Frames that follow `Welcome` in
/// the same read stay in `read_buffer` for the task.
///
/// # Errors
///
/// [`ClientError::Server`] when the server refuses the `Hello`; I/O,
/// codec and protocol errors as they come.
pub(crate) async fn hello(
    stream: &mut BoxStream,
    config: &ClientConfig,
    requests: &Requests,
    read_buffer: &mut BytesMut,
) -> Result<Welcome, ClientError> {
    let codec = ClientCodec::new(config.max_frame);
    let hello = ClientFrame {
        req_id: requests.next_req_id(),
        kind: Some(client_frame::Kind::Hello(Hello {
            token: config.token.clone(),
            device_id: config.device_id.clone(),
        })),
    };
    stream
        .write_all(&codec.frames().message_to_bytes(&hello)?)
        .await?;
    stream.flush().await?;
    loop {
        while let Some(frame) = codec.decode_message(read_buffer)? {
            // The refusal may carry the Hello's req_id or 0; either way it
            // answers the Hello, since nothing else has been sent.
            match frame.kind {
                Some(server_frame::Kind::Welcome(welcome)) => return Ok(welcome),
                Some(server_frame::Kind::Error(error)) => {
                    return Err(ClientError::Server(error.into()))
                }
                Some(other) => {
                    return Err(ClientError::Protocol(format!(
                        "expected Welcome in answer to Hello, got {}",
                        kind_name(&other)
                    )))
                }
                // A kind newer than this build: not the answer we wait for.
                None => {}
            }
        }
        reserve_read(read_buffer);
        if stream.read_buf(read_buffer).await? == 0 {
            return Err(ClientError::Io(Arc::new(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection before answering Hello",
            ))));
        }
    }
}

/// The name of a server frame's kind, for error messages.
pub(crate) fn kind_name(kind: &server_frame::Kind) -> &'static str {
    match kind {
        server_frame::Kind::Welcome(_) => "Welcome",
        server_frame::Kind::SendAck(_) => "SendAck",
        server_frame::Kind::Deliver(_) => "Deliver",
        server_frame::Kind::SyncBatch(_) => "SyncBatch",
        server_frame::Kind::HistoryPage(_) => "HistoryPage",
        server_frame::Kind::Pong(_) => "Pong",
        server_frame::Kind::Error(_) => "Error",
    }
}

/// Gives a received `Deliver` its own small allocations for the fields a
/// client keeps (cursor, `client_msg_id`): decoded `bytes` fields are
/// slices of the read buffer and would otherwise pin it.
pub(crate) fn detach(deliver: &mut Deliver) {
    deliver.cursor = Bytes::copy_from_slice(&deliver.cursor);
    if let Some(message) = deliver.message.as_mut() {
        message.client_msg_id = Bytes::copy_from_slice(&message.client_msg_id);
    }
}

/// Everything the connection task owns.
pub(crate) struct Connection {
    pub(crate) reader: ReadHalf<BoxStream>,
    pub(crate) writer: WriteHalf<BoxStream>,
    /// Decodes with the client's own frame limit; encodes only pings.
    pub(crate) codec: ClientCodec,
    /// Partial input; lives here, not in a local, so a cancelled read loses
    /// nothing.
    pub(crate) read_buffer: BytesMut,
    /// Encoded output not yet accepted by the socket.
    pub(crate) write_buffer: BytesMut,
    /// Bytes were written since the last flush; TLS may still hold them.
    pub(crate) needs_flush: bool,
    /// Encoded frames from the `Client` handles.
    pub(crate) outbound: mpsc::Receiver<Bytes>,
    /// Where `Deliver` and refusals go; the task holds the only sender, so
    /// the queue ends exactly when the task does.
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) requests: Arc<Requests>,
    pub(crate) shutdown: CancellationToken,
    /// `Welcome.heartbeat_ms`; `None` when the server asks for none.
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) last_read: Instant,
    pub(crate) last_write: Instant,
    pub(crate) last_ping: Instant,
    /// The `req_id` of the last heartbeat ping, whose answer (or refusal)
    /// concerns no caller; 0 when none is outstanding.
    pub(crate) heartbeat_req: u64,
}

/// Writes some of `buffer`, or flushes once it is all written: one step
/// either way, so it can sit in a `select!` (both are cancel-safe: an
/// unfinished call wrote nothing, and TLS keeps unflushed bytes).
async fn write_some(writer: &mut WriteHalf<BoxStream>, buffer: &mut BytesMut) -> Wake {
    if buffer.is_empty() {
        Wake::Flushed(writer.flush().await)
    } else {
        Wake::Wrote(writer.write_buf(buffer).await)
    }
}

/// What woke the task.
enum Wake {
    Read(io::Result<usize>),
    Wrote(io::Result<usize>),
    Flushed(io::Result<()>),
    Outbound(Option<Bytes>),
    Timer,
    Shutdown,
}

impl Connection {
    /// Runs the connection to its end, then fails every waiter with the
    /// reason and ends the event queue. `finished` is cancelled last, so a
    /// caller of `Client::close` sees the reason already in place.
    pub(crate) async fn run(mut self, finished: CancellationToken) {
        let _finished = finished.drop_guard();
        let cause = self.serve().await.err();
        match &cause {
            Some(error) => tracing::debug!(%error, "connection closed"),
            None => tracing::debug!("connection closed cleanly"),
        }
        self.requests.close(cause);
        // Drops the event sender before `_finished` fires.
        drop(self);
    }

    async fn serve(&mut self) -> Result<(), ClientError> {
        // One timer for the connection's life. Traffic pushes the heartbeat
        // back on every frame; the timer is moved only when it has fired or
        // must fire sooner, not on every turn of the loop.
        let timer = sleep_until(Instant::now() + NO_TIMER);
        tokio::pin!(timer);
        loop {
            while let Some(frame) = self.codec.decode_message(&mut self.read_buffer)? {
                self.dispatch(frame)?;
            }
            shrink_idle(&mut self.read_buffer);
            // Without heartbeats, a deadline that never comes in practice.
            let wake_at = self
                .heartbeat(Instant::now())?
                .unwrap_or_else(|| Instant::now() + NO_TIMER);
            if timer.is_elapsed() || wake_at < timer.deadline() {
                timer.as_mut().reset(wake_at);
            }
            reserve_read(&mut self.read_buffer);
            let can_take = self.write_buffer.len() < WRITE_BUFFER_HIGH;
            let wake = tokio::select! {
                read = self.reader.read_buf(&mut self.read_buffer) => Wake::Read(read),
                output = write_some(&mut self.writer, &mut self.write_buffer), if !self.write_buffer.is_empty() || self.needs_flush => output,
                frame = self.outbound.recv(), if can_take => Wake::Outbound(frame),
                () = &mut timer => Wake::Timer,
                () = self.shutdown.cancelled() => Wake::Shutdown,
            };
            match wake {
                Wake::Read(read) => {
                    if read? == 0 {
                        return self.end_of_stream();
                    }
                    self.last_read = Instant::now();
                }
                Wake::Wrote(wrote) => {
                    if wrote? == 0 {
                        return Err(io::Error::from(io::ErrorKind::WriteZero).into());
                    }
                    self.last_write = Instant::now();
                    self.needs_flush = true;
                }
                Wake::Flushed(flushed) => {
                    flushed?;
                    self.needs_flush = false;
                }
                Wake::Outbound(Some(frame)) => self.take_outbound(&frame),
                // Every Client handle is gone: nobody can use the connection.
                Wake::Outbound(None) | Wake::Shutdown => return self.close_gracefully().await,
                Wake::Timer => {}
            }
        }
    }

    /// Appends a queued frame, and whatever else is queued up to the high
    /// mark, so a burst of requests goes out in one write.
    fn take_outbound(&mut self, first: &[u8]) {
        self.write_buffer.extend_from_slice(first);
        while self.write_buffer.len() < WRITE_BUFFER_HIGH {
            match self.outbound.try_recv() {
                Ok(frame) => self.write_buffer.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
    }

    /// The server closed its side: cleanly between frames, or mid-frame.
    fn end_of_stream(&self) -> Result<(), ClientError> {
        if self.read_buffer.is_empty() {
            Ok(())
        } else {
            Err(ClientError::Io(Arc::new(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection inside a frame",
            ))))
        }
    }

    /// Writes what callers already queued (an `Ack` before `close`, say),
    /// within [`CLOSE_GRACE`], then shuts the write side.
    async fn close_gracefully(&mut self) -> Result<(), ClientError> {
        while let Ok(frame) = self.outbound.try_recv() {
            self.write_buffer.extend_from_slice(&frame);
        }
        let writer = &mut self.writer;
        let write_buffer = &mut self.write_buffer;
        let _ = timeout(CLOSE_GRACE, async {
            writer.write_all_buf(write_buffer).await?;
            writer.shutdown().await
        })
        .await;
        Ok(())
    }

    /// Routes one frame from the server.
    ///
    /// # Errors
    ///
    /// An `Error` with `req_id` 0 (the server closes after it), a `Deliver`
    /// without a message, or an event queue left full.
    fn dispatch(&mut self, frame: ServerFrame) -> Result<(), ClientError> {
        let ServerFrame { req_id, kind } = frame;
        let Some(kind) = kind else {
            // A kind newer than this build (typing, presence): skip it.
            tracing::trace!(req_id, "skipping a frame of unknown kind");
            return Ok(());
        };
        match kind {
            // Deliver is pushed with req_id 0; one carrying another id is
            // still a delivery, never a request's answer.
            server_frame::Kind::Deliver(deliver) => return self.deliver(deliver),
            server_frame::Kind::Error(error) if req_id == 0 => {
                return Err(ClientError::Server(error.into()))
            }
            other if req_id == 0 => {
                tracing::debug!(kind = kind_name(&other), "ignoring unsolicited frame");
                return Ok(());
            }
            _ => {}
        }
        if req_id == self.heartbeat_req {
            self.heartbeat_req = 0;
            return Ok(());
        }
        if let Some(waiter) = self.requests.take(req_id) {
            // The waiter may have given up this instant; nothing to do then.
            let _ = waiter.send(Ok(kind));
            return Ok(());
        }
        match kind {
            // Ack and Read are not answered unless they fail, and a request
            // that timed out no longer waits: either way the refusal still
            // matters to someone, so it goes to the event stream.
            server_frame::Kind::Error(error) => self.emit(Event::Refused {
                req_id,
                error: ServerError::from(error),
            }),
            // A late answer to a request that timed out.
            other => {
                tracing::debug!(req_id, kind = kind_name(&other), "answer nobody waits for");
                Ok(())
            }
        }
    }

    fn deliver(&mut self, mut deliver: Deliver) -> Result<(), ClientError> {
        detach(&mut deliver);
        let Some(message) = deliver.message else {
            return Err(ClientError::Protocol(String::from(
                "Deliver frame without a message",
            )));
        };
        self.emit(Event::Deliver {
            message,
            cursor: deliver.cursor,
        })
    }

    /// Queues an event without waiting: a full queue closes the connection
    /// (see `ClientConfig::event_capacity`); a dropped `Deliveries` means
    /// nobody listens, which is no reason to close.
    fn emit(&self, event: Event) -> Result<(), ClientError> {
        match self.events.try_send(event) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(ClientError::SlowConsumer {
                capacity: self.events.max_capacity(),
            }),
        }
    }

    /// Keeps the server's idle deadline from firing and notices a dead
    /// server; returns when to look again.
    ///
    /// A ping goes out when nothing was written for a heartbeat (the
    /// server's idle deadline counts frames it receives) or nothing was
    /// read for one (fire-and-forget `Ack`s get no answers, so only a ping
    /// proves the server still listens), at most once per heartbeat.
    /// Nothing read for two heartbeats despite that means the connection is
    /// dead.
    ///
    /// # Errors
    ///
    /// [`ClientError::Unresponsive`] when the server has been silent for two
    /// heartbeats.
    fn heartbeat(&mut self, now: Instant) -> Result<Option<Instant>, ClientError> {
        let Some(interval) = self.heartbeat else {
            return Ok(None);
        };
        let dead_at = self.last_read + interval * 2;
        if now >= dead_at {
            return Err(ClientError::Unresponsive(now - self.last_read));
        }
        let mut ping_at = self.last_write.min(self.last_read).max(self.last_ping) + interval;
        if now >= ping_at {
            self.queue_ping(now)?;
            ping_at = now + interval;
        }
        Ok(Some(ping_at.min(dead_at)))
    }

    fn queue_ping(&mut self, now: Instant) -> Result<(), ClientError> {
        let req_id = self.requests.next_req_id();
        let ping = ClientFrame {
            req_id,
            kind: Some(client_frame::Kind::Ping(Ping {})),
        };
        self.codec.encode_message(&ping, &mut self.write_buffer)?;
        self.heartbeat_req = req_id;
        self.last_ping = now;
        Ok(())
    }
}

impl Drop for Connection {
    /// Fails the waiters even if the task unwinds; after a normal end the
    /// reason is already recorded and this changes nothing.
    fn drop(&mut self) {
        self.requests.close(None);
    }
}
