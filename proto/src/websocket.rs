//! WebSocket framing (feature `websocket`): one WebSocket message is one
//! frame, binary as protobuf or text as protobuf's canonical JSON mapping.
//!
//! [`WsFrames`] presents a WebSocket as the byte stream of length-prefixed
//! frames that TCP carries, so the connection tasks of the server and of the
//! client run over it unchanged, with the same limits, back-pressure and
//! error frames. Reading turns each message into a 4-byte length and the
//! protobuf bytes (a binary message's payload is handed on without a copy);
//! writing cuts the byte stream at frame boundaries and sends each frame as
//! one message, transcoded to JSON when the peer chose JSON.

use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::codec::LENGTH_PREFIX_LEN;

/// The subprotocol of binary replies: each message one protobuf frame.
pub const SUBPROTOCOL_PROTO: &str = "hanmadi.v1.proto";

/// The subprotocol of text replies: each message one frame as JSON.
pub const SUBPROTOCOL_JSON: &str = "hanmadi.v1.json";

/// The path of the WebSocket endpoint on the HTTP and HTTPS ports.
pub const WS_PATH: &str = "/ws";

/// The largest WebSocket message accepted where frames may be
/// `max_frame` bytes: a JSON frame is wordier than its protobuf, and a
/// binary message past `max_frame` is still read so the frame codec can
/// refuse it with `FRAME_TOO_LARGE`.
pub fn max_message_len(max_frame: usize) -> usize {
    max_frame.saturating_mul(4).max(4096)
}

/// How frames written to a WebSocket are sent. Either side may send either
/// kind; this picks what the writer produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// Binary messages of protobuf (`hanmadi.v1.proto`, and the default
    /// when no subprotocol was agreed).
    #[default]
    Binary,
    /// Text messages of JSON (`hanmadi.v1.json`).
    Json,
}

impl Encoding {
    /// The subprotocol that asks for this encoding.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Self::Binary => SUBPROTOCOL_PROTO,
            Self::Json => SUBPROTOCOL_JSON,
        }
    }

    /// The encoding a subprotocol names, if it is one of ours.
    pub fn from_subprotocol(name: &str) -> Option<Self> {
        match name.trim() {
            SUBPROTOCOL_PROTO => Some(Self::Binary),
            SUBPROTOCOL_JSON => Some(Self::Json),
            _ => None,
        }
    }
}

/// A WebSocket seen as a stream of length-prefixed frames.
///
/// `In` is the frame type the peer sends (parsed from JSON text messages),
/// `Out` the type this side writes (printed as JSON in [`Encoding::Json`]):
/// `WsFrames<S, ClientFrame, ServerFrame>` on a server,
/// `WsFrames<S, ServerFrame, ClientFrame>` on a client.
///
/// A message that cannot become a frame is handed on as a frame the frame
/// codec refuses in the same way as on TCP: a message over the size limit
/// as a length prefix past any maximum, and text that is not a valid JSON
/// frame as a frame that is not valid protobuf. The connection task then
/// answers with its usual `Error` frame and closes.
pub struct WsFrames<S, In, Out> {
    ws: WebSocketStream<S>,
    encoding: Encoding,
    /// Length prefix of the frame being read, and how much of it is out.
    prefix: [u8; LENGTH_PREFIX_LEN],
    prefix_at: usize,
    /// Rest of the frame being read.
    payload: Bytes,
    eof: bool,
    /// Written bytes not yet cut into whole frames and sent.
    pending: BytesMut,
    frames: PhantomData<fn(In) -> Out>,
}

impl<S, In, Out> std::fmt::Debug for WsFrames<S, In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsFrames")
            .field("encoding", &self.encoding)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// A frame no codec accepts: field number 0 is not valid protobuf.
const MALFORMED: &[u8] = &[0];

impl<S, In, Out> WsFrames<S, In, Out>
where
    S: AsyncRead + AsyncWrite + Unpin,
    In: prost::Message + DeserializeOwned + Default,
    Out: prost::Message + Serialize + Default,
{
    /// Wraps an open WebSocket; frames this side writes go out as
    /// `encoding`.
    pub fn new(ws: WebSocketStream<S>, encoding: Encoding) -> Self {
        Self {
            ws,
            encoding,
            prefix: [0; LENGTH_PREFIX_LEN],
            prefix_at: LENGTH_PREFIX_LEN,
            payload: Bytes::new(),
            eof: false,
            pending: BytesMut::new(),
            frames: PhantomData,
        }
    }

    /// The encoding this side writes.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    fn stage(&mut self, payload: Bytes) {
        match u32::try_from(payload.len()) {
            Ok(len) => {
                self.prefix = len.to_be_bytes();
                self.payload = payload;
            }
            Err(_) => self.stage_too_large(),
        }
        self.prefix_at = 0;
    }

    fn stage_too_large(&mut self) {
        self.prefix = u32::MAX.to_be_bytes();
        self.payload = Bytes::new();
        self.prefix_at = 0;
    }

    /// Turns the next WebSocket message into a staged frame; `false` at
    /// the end of the stream.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            let next = ready!(self.ws.poll_next_unpin(cx));
            match next {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(false)),
                Some(Ok(Message::Binary(payload))) => self.stage(payload),
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<In>(text.as_str()) {
                    Ok(frame) => self.stage(frame.encode_to_vec().into()),
                    Err(_) => self.stage(Bytes::from_static(MALFORMED)),
                },
                // Pings are answered by the WebSocket layer itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Err(tungstenite::Error::Capacity(_))) => self.stage_too_large(),
                // Broken WebSocket framing is a malformed frame, answered
                // and struck as one; a peer that just went away is not.
                Some(Err(tungstenite::Error::Utf8(_))) => self.stage(Bytes::from_static(MALFORMED)),
                Some(Err(tungstenite::Error::Protocol(e))) if is_broken_framing(&e) => {
                    self.stage(Bytes::from_static(MALFORMED));
                }
                Some(Err(
                    tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                )) => return Poll::Ready(Ok(false)),
                Some(Err(e)) => return Poll::Ready(Err(ws_error(e))),
            }
            return Poll::Ready(Ok(true));
        }
    }

    /// Sends every whole frame in `pending`, one message each.
    fn poll_send_frames(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(len) = whole_frame(&self.pending) {
            ready!(self.ws.poll_ready_unpin(cx)).map_err(ws_error)?;
            let mut frame = self.pending.split_to(LENGTH_PREFIX_LEN + len).freeze();
            frame.advance(LENGTH_PREFIX_LEN);
            let message = match self.encoding {
                Encoding::Binary => Message::Binary(frame),
                Encoding::Json => {
                    let frame = Out::decode(frame)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    let text = serde_json::to_string(&frame)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    Message::text(text)
                }
            };
            self.ws.start_send_unpin(message).map_err(ws_error)?;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `bufs` once the frames before them are on their way, so at
    /// most one write's worth waits here and a stalled peer pushes back on
    /// the writer as a stalled socket does.
    fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_send_frames(cx))?;
        let mut n = 0;
        for buf in bufs {
            self.pending.extend_from_slice(buf);
            n += buf.len();
        }
        if let Poll::Ready(Err(e)) = self.poll_send_frames(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }
}

/// The payload length of the first frame in `buf`, once all of it is there.
fn whole_frame(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; LENGTH_PREFIX_LEN] = buf.get(..LENGTH_PREFIX_LEN)?.try_into().ok()?;
    let len = u32::from_be_bytes(prefix) as usize;
    (buf.len() >= LENGTH_PREFIX_LEN + len).then_some(len)
}

/// Whether `e` is the peer breaking WebSocket's framing rules, rather than
/// the connection ending or a closing handshake going wrong.
fn is_broken_framing(e: &tungstenite::error::ProtocolError) -> bool {
    use tungstenite::error::ProtocolError as P;
    matches!(
        e,
        P::NonZeroReservedBits
            | P::UnmaskedFrameFromClient
            | P::FragmentedControlFrame
            | P::ControlFrameTooBig
            | P::UnknownControlFrameType(_)
            | P::UnknownDataFrameType(_)
            | P::UnexpectedContinueFrame
            | P::ExpectedFragment(_)
            | P::InvalidOpcode(_)
    )
}

fn ws_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, e)
        }
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

impl<S, In, Out> AsyncRead for WsFrames<S, In, Out>
where
    S: AsyncRead + AsyncWrite + Unpin,
    In: prost::Message + DeserializeOwned + Default,
    Out: prost::Message + Serialize + Default,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.prefix_at < LENGTH_PREFIX_LEN {
                let n = (LENGTH_PREFIX_LEN - this.prefix_at).min(buf.remaining());
                buf.put_slice(&this.prefix[this.prefix_at..this.prefix_at + n]);
                this.prefix_at += n;
                return Poll::Ready(Ok(()));
            }
            if !this.payload.is_empty() {
                let n = this.payload.len().min(buf.remaining());
                buf.put_slice(&this.payload[..n]);
                this.payload.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if !ready!(this.poll_message(cx))? {
                this.eof = true;
            }
        }
    }
}

impl<S, In, Out> AsyncWrite for WsFrames<S, In, Out>
where
    S: AsyncRead + AsyncWrite + Unpin,
    In: prost::Message + DeserializeOwned + Default,
    Out: prost::Message + Serialize + Default,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_take(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_take(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_frames(cx))?;
        ready!(this.ws.poll_flush_unpin(cx)).map_err(ws_error)?;
        // An idle connection keeps no write buffer.
        if this.pending.is_empty() && this.pending.capacity() > 0 {
            this.pending = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_frames(cx))?;
        match ready!(this.ws.poll_close_unpin(cx)) {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(ws_error(e))),
        }
    }
}
