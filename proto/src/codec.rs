//! TCP framing: a 4-byte big-endian length, then that many bytes of protobuf.
//!
//! [`FrameCodec`] splits a byte stream into frame payloads ([`Bytes`]) and
//! writes payloads behind their length prefix. [`MessageCodec`] adds the
//! protobuf step on top, typed by direction: the server uses
//! [`ServerCodec`] (decodes [`ClientFrame`], encodes [`ServerFrame`]), the
//! client library [`ClientCodec`] (the reverse). Both implement tokio-util's
//! [`Decoder`] and [`Encoder`], so they work with `Framed`, and can equally
//! be called by hand on a connection's own buffer.
//!
//! # Size limit and memory
//!
//! The decoder reads the length prefix and compares it with the maximum
//! before it reserves anything: a frame announcing 4 GiB is refused with
//! [`CodecError::FrameTooLarge`] while the buffer is as small as it was. A
//! frame within the limit gets room for exactly its announced length.
//! "Need more bytes" is `Ok(None)`. After `FrameTooLarge` the stream cannot
//! be resynchronised: the connection answers with the error's
//! [`CodecError::error_code`] and closes.
//!
//! `tokio_util::codec::FramedRead` starts every connection with an 8 KiB
//! read buffer and never gives it back. For a server holding very many
//! mostly idle connections, the gateway instead keeps its own [`BytesMut`]
//! (which starts with no allocation) and loops:
//!
//! 1. decode frames until [`Decoder::decode`] returns `Ok(None)`;
//! 2. [`shrink_idle`] the buffer, so a past large frame's room is released;
//! 3. [`reserve_read`], then `read_buf` from the socket (cancel-safe, so it
//!    can sit in a `select!`; partial input stays in the buffer).
//!
//! An idle connection then holds at most [`IDLE_BUFFER_CAPACITY`] bytes of
//! read buffer (usually [`READ_RESERVE`]); one that awaits readiness first
//! (`TcpStream::readable`) and reserves only once readable can hold none.
//!
//! [`ClientFrame`]: crate::ClientFrame
//! [`ServerFrame`]: crate::ServerFrame

use std::fmt;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

use crate::deliver::DeliverFrame;
use crate::pb::{ClientFrame, ErrorCode, ServerFrame};

/// The default largest frame, in bytes, length prefix excluded: 64 KiB.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

/// Size of the big-endian length prefix in front of every frame.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Above this capacity [`shrink_idle`] releases a read buffer that holds no
/// more than an unfinished small frame.
pub const IDLE_BUFFER_CAPACITY: usize = 1024;

/// Room [`reserve_read`] makes before a socket read: enough for a few
/// typical frames (a chat `Send` is around 150 bytes) in one read.
pub const READ_RESERVE: usize = 512;

/// Spare capacity below which [`reserve_read`] reserves [`READ_RESERVE`].
const MIN_READ_SPARE: usize = 64;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The length prefix announced more than the configured maximum. Nothing
    /// was allocated for it; the stream cannot be resynchronised.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced (or, when encoding, the actual) length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The payload is not a valid protobuf encoding of the expected frame.
    #[error("frame is not a valid protobuf message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A message could not be encoded into the output buffer.
    #[error("frame could not be encoded: {0}")]
    Encode(#[from] prost::EncodeError),
    /// Reading or writing the underlying stream failed, or it ended inside a
    /// frame.
    #[error("frame stream I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

impl CodecError {
    /// The code to send the peer in an `Error` frame before closing, or
    /// `None` when the stream itself failed and nothing can be sent.
    #[must_use]
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Self::FrameTooLarge { .. } => Some(ErrorCode::FrameTooLarge),
            Self::Decode(_) => Some(ErrorCode::MalformedFrame),
            Self::Encode(_) => Some(ErrorCode::Internal),
            Self::Io(_) => None,
        }
    }
}

/// Splits a byte stream into length-prefixed frame payloads and writes them.
///
/// The maximum applies both ways: incoming prefixes above it are refused,
/// and so are outgoing frames, which the peer would refuse anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCodec {
    /// Largest payload accepted or sent, in bytes, prefix excluded.
    max_frame_len: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame_len` bytes (prefix
    /// excluded). Values above `u32::MAX` are treated as `u32::MAX`, the
    /// most a 4-byte prefix can announce.
    #[must_use]
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            max_frame_len: max_frame_len.min(u32::MAX as usize),
        }
    }

    /// The largest payload this codec accepts or sends.
    #[must_use]
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Takes the next complete frame's payload off the front of `src`.
    ///
    /// Returns `Ok(None)` when `src` holds no complete frame yet; once the
    /// length prefix is in, `src` has room reserved for the whole frame. The
    /// payload is a slice of `src`'s allocation, not a copy.
    ///
    /// # Errors
    ///
    /// [`CodecError::FrameTooLarge`] when the prefix announces more than the
    /// maximum; `src` is left untouched and no memory is reserved.
    pub fn decode_frame(&self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        let Some(prefix) = src.first_chunk::<LENGTH_PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > self.max_frame_len {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        let frame_end = LENGTH_PREFIX_LEN + len;
        if src.len() < frame_end {
            src.reserve(frame_end - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_PREFIX_LEN);
        Ok(Some(src.split_to(len).freeze()))
    }

    /// Appends `message` to `dst` as one frame: its length, then its bytes.
    ///
    /// # Errors
    ///
    /// [`CodecError::FrameTooLarge`] when the encoding exceeds the maximum;
    /// `dst` is left untouched.
    pub fn encode_message<M: Message>(
        &self,
        message: &M,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let len = message.encoded_len();
        self.put_prefix(len, dst)?;
        message.encode(dst)?;
        Ok(())
    }

    /// `message` as one contiguous frame, ready to share among writers.
    ///
    /// # Errors
    ///
    /// [`CodecError::FrameTooLarge`] when the encoding exceeds the maximum.
    pub fn message_to_bytes<M: Message>(&self, message: &M) -> Result<Bytes, CodecError> {
        let mut dst = BytesMut::new();
        self.encode_message(message, &mut dst)?;
        Ok(dst.freeze())
    }

    /// Appends an already encoded payload to `dst` behind its length.
    ///
    /// # Errors
    ///
    /// [`CodecError::FrameTooLarge`] when `payload` exceeds the maximum;
    /// `dst` is left untouched.
    pub fn encode_payload(&self, payload: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_parts(&[payload], dst)
    }

    /// Writes one frame whose payload is `parts` one after the other, behind
    /// one length prefix, without joining them first.
    ///
    /// # Errors
    ///
    /// [`CodecError::FrameTooLarge`] when the parts together exceed the
    /// maximum; `dst` is left untouched.
    pub fn encode_parts(&self, parts: &[&[u8]], dst: &mut BytesMut) -> Result<(), CodecError> {
        self.put_prefix(parts.iter().map(|p| p.len()).sum(), dst)?;
        for part in parts {
            dst.extend_from_slice(part);
        }
        Ok(())
    }

    /// Checks `len` against the maximum, reserves room for the frame and
    /// writes its prefix.
    fn put_prefix(&self, len: usize, dst: &mut BytesMut) -> Result<(), CodecError> {
        let prefix = u32::try_from(len)
            .ok()
            .filter(|_| len <= self.max_frame_len)
            .ok_or(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            })?;
        dst.reserve(LENGTH_PREFIX_LEN + len);
        dst.put_u32(prefix);
        Ok(())
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = CodecError;

    /// As [`FrameCodec::decode_frame`].
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        self.decode_frame(src)
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = CodecError;

    /// Writes an already encoded payload behind its length prefix.
    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_payload(&payload, dst)
    }
}

impl<M: Message> Encoder<&M> for FrameCodec {
    type Error = CodecError;

    /// As [`FrameCodec::encode_message`].
    fn encode(&mut self, message: &M, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_message(message, dst)
    }
}

impl Encoder<DeliverFrame> for FrameCodec {
    type Error = CodecError;

    /// Copies a prebuilt `Deliver` frame (prefix included) into `dst`. The
    /// gateway writes [`DeliverFrame`]s with vectored I/O instead; this is
    /// for `Framed` sinks and tests.
    fn encode(&mut self, frame: DeliverFrame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = frame.remaining().saturating_sub(LENGTH_PREFIX_LEN);
        if len > self.max_frame_len {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        dst.reserve(frame.remaining());
        dst.put(frame);
        Ok(())
    }
}

/// Releases a read buffer's room once it holds no more than the start of a
/// small frame.
///
/// Call it after decoding every complete frame. When the buffer's capacity
/// exceeds [`IDLE_BUFFER_CAPACITY`] and its content (an unfinished frame,
/// if any) needs no more than that, the content moves to a fresh,
/// exactly-sized buffer and the large allocation is released (once the
/// frames sliced from it are dropped too). A buffer holding part of a large
/// frame, or several frames, is left alone.
pub fn shrink_idle(buf: &mut BytesMut) {
    if buf.capacity() <= IDLE_BUFFER_CAPACITY {
        return;
    }
    let needed = match buf.first_chunk::<LENGTH_PREFIX_LEN>() {
        Some(prefix) => LENGTH_PREFIX_LEN.saturating_add(u32::from_be_bytes(*prefix) as usize),
        None => buf.len(),
    };
    if needed <= IDLE_BUFFER_CAPACITY && buf.len() <= needed {
        *buf = BytesMut::from(&buf[..]);
    }
}

/// Makes room for the next socket read: reserves [`READ_RESERVE`] bytes
/// when fewer than 64 are spare, so one read can take several small frames.
pub fn reserve_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < MIN_READ_SPARE {
        buf.reserve(READ_RESERVE);
    }
}

/// A typed codec: length-prefixed frames decoded as `D` and encoded from `E`.
///
/// Decoded `bytes` fields are slices of the read buffer's allocation; copy
/// them (`Bytes::copy_from_slice`) before keeping them for long, or they keep
/// that whole allocation alive.
pub struct MessageCodec<D, E> {
    /// The framing beneath the protobuf step.
    frames: FrameCodec,
    /// The frame types; `fn(E) -> D` keeps the codec `Send + Sync` whatever
    /// they are.
    types: PhantomData<fn(E) -> D>,
}

/// The server's codec: decodes [`ClientFrame`], encodes [`ServerFrame`].
pub type ServerCodec = MessageCodec<ClientFrame, ServerFrame>;

/// The client's codec: decodes [`ServerFrame`], encodes [`ClientFrame`].
pub type ClientCodec = MessageCodec<ServerFrame, ClientFrame>;

impl<D, E> MessageCodec<D, E> {
    /// A codec refusing frames longer than `max_frame_len` bytes, both ways.
    #[must_use]
    pub fn new(max_frame_len: usize) -> Self {
        Self::from_frames(FrameCodec::new(max_frame_len))
    }

    /// A typed codec over the given framing.
    #[must_use]
    pub fn from_frames(frames: FrameCodec) -> Self {
        Self {
            frames,
            types: PhantomData,
        }
    }

    /// The framing beneath, for writing prebuilt payloads or frames.
    #[must_use]
    pub fn frames(&self) -> FrameCodec {
        self.frames
    }

    /// Takes the next complete frame off `src` and decodes it; the same as
    /// [`Decoder::decode`] without the trait.
    ///
    /// # Errors
    ///
    /// [`CodecError::FrameTooLarge`] as for [`FrameCodec::decode_frame`];
    /// [`CodecError::Decode`] when the payload is not a valid `D` (the frame
    /// is consumed, so the stream stays in step).
    pub fn decode_message(&self, src: &mut BytesMut) -> Result<Option<D>, CodecError>
    where
        D: Message + Default,
    {
        match self.frames.decode_frame(src)? {
            Some(payload) => Ok(Some(D::decode(payload)?)),
            None => Ok(None),
        }
    }

    /// Appends `message` to `dst` as one frame; the same as
    /// [`Encoder::encode`] without the trait.
    ///
    /// # Errors
    ///
    /// As for [`FrameCodec::encode_message`].
    pub fn encode_message(&self, message: &E, dst: &mut BytesMut) -> Result<(), CodecError>
    where
        E: Message,
    {
        self.frames.encode_message(message, dst)
    }
}

impl<D, E> Default for MessageCodec<D, E> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl<D, E> Clone for MessageCodec<D, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D, E> Copy for MessageCodec<D, E> {}

impl<D, E> fmt::Debug for MessageCodec<D, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageCodec")
            .field("decodes", &std::any::type_name::<D>())
            .field("encodes", &std::any::type_name::<E>())
            .field("max_frame_len", &self.frames.max_frame_len)
            .finish()
    }
}

impl<D: Message + Default, E> Decoder for MessageCodec<D, E> {
    type Item = D;
    type Error = CodecError;

    /// As [`MessageCodec::decode_message`].
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<D>, CodecError> {
        self.decode_message(src)
    }
}

impl<D, E: Message> Encoder<E> for MessageCodec<D, E> {
    type Error = CodecError;

    /// As [`MessageCodec::encode_message`].
    fn encode(&mut self, message: E, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.frames.encode_message(&message, dst)
    }
}

impl<D, E: Message> Encoder<&E> for MessageCodec<D, E> {
    type Error = CodecError;

    /// As [`MessageCodec::encode_message`].
    fn encode(&mut self, message: &E, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.frames.encode_message(message, dst)
    }
}
