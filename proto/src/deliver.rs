//! `Deliver` frames built from a message encoded once for every recipient.
//!
//! After commit the router encodes a [`Message`] once ([`SharedMessage`]).
//! Each recipient's frame is then a small header of its own followed by
//! those shared bytes, which works because protobuf fields may appear in any
//! order and a message field is just a tag, a length and the bytes:
//!
//! ```text
//! [u32 BE frame length]                         length prefix
//! [0x22][varint]                                ServerFrame.deliver (field 4), length
//!     [0x12][varint][cursor]                    Deliver.cursor (field 2), omitted if empty
//!     [0x0A][varint]                            Deliver.message (field 1), length
//! [shared message bytes]                        Message, encoded once
//! ```
//!
//! `req_id` is 0 and therefore absent. Everything before the shared bytes is
//! a [`DeliverHeader`] on the stack (no heap allocation), which is why a
//! cursor may be at most [`MAX_CURSOR_LEN`] bytes; the cursors in use are
//! 8 (embedded engine) to 12 (FoundationDB versionstamp) bytes. A
//! [`DeliverFrame`] pairs the header with the shared bytes and is a
//! [`Buf`] whose two chunks go out in one vectored write (`write_all_buf`
//! on a stream that supports vectored writes, or `chunks_vectored` by hand).
//!
//! Neither builder checks the peer's frame limit: a message within the body
//! limit is far below it.
//!
//! [`put_sync_batch`] and [`put_history_page`] build the answers to `Sync`
//! and `History` the same way, from messages as storage holds them: each
//! message's bytes are copied into the page, never decoded and encoded
//! again. The result is byte for byte what prost would encode; the caller
//! sizes the page to its frame limit.

use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::Message as _;

use crate::codec::LENGTH_PREFIX_LEN;
use crate::pb::Message;

/// The longest cursor a [`DeliverHeader`] holds, in bytes.
pub const MAX_CURSOR_LEN: usize = 32;

/// Protobuf wire type of length-delimited fields.
const LENGTH_DELIMITED: u8 = 2;
/// Key of `ServerFrame.deliver` (field 4).
const SERVER_FRAME_DELIVER_KEY: u8 = (4 << 3) | LENGTH_DELIMITED;
/// Key of `Deliver.message` (field 1).
const DELIVER_MESSAGE_KEY: u8 = (1 << 3) | LENGTH_DELIMITED;
/// Key of `Deliver.cursor` (field 2).
const DELIVER_CURSOR_KEY: u8 = (2 << 3) | LENGTH_DELIMITED;
/// Field numbers of the replies built from stored bytes (`hanmadi.proto`).
const SERVER_FRAME_REQ_ID: u32 = 1;
const SERVER_FRAME_SYNC_BATCH: u32 = 5;
const SERVER_FRAME_HISTORY_PAGE: u32 = 6;
const DELIVER_MESSAGE: u32 = 1;
const DELIVER_CURSOR: u32 = 2;
const SYNC_BATCH_MESSAGES: u32 = 1;
const SYNC_BATCH_NEXT: u32 = 2;
const SYNC_BATCH_HAS_MORE: u32 = 3;
const HISTORY_PAGE_MESSAGES: u32 = 1;
const HISTORY_PAGE_HAS_MORE: u32 = 2;
/// Longest varint encoding of a `u64`.
const MAX_VARINT_LEN: usize = 10;
/// Room for the longest header: prefix, three keys, three lengths (the
/// cursor's fits one byte) and the cursor.
const HEADER_CAPACITY: usize =
    LENGTH_PREFIX_LEN + 3 + MAX_VARINT_LEN + 1 + MAX_CURSOR_LEN + MAX_VARINT_LEN;

/// Why a `Deliver` frame could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// The cursor is longer than [`MAX_CURSOR_LEN`].
    #[error("cursor of {len} bytes exceeds the maximum of {max} bytes")]
    CursorTooLong {
        /// The cursor's length.
        len: usize,
        /// [`MAX_CURSOR_LEN`].
        max: usize,
    },
    /// The frame would be longer than a 4-byte length prefix can announce.
    #[error("deliver frame of {len} bytes does not fit a 4-byte length prefix")]
    FrameTooLarge {
        /// The frame's length, prefix excluded.
        len: usize,
    },
}

/// A [`Message`] encoded once, shared by the `Deliver` frames of every
/// recipient. Cloning it clones a reference, not the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedMessage(Bytes);

impl SharedMessage {
    /// Encodes `message` once.
    #[must_use]
    pub fn encode(message: &Message) -> Self {
        Self(Bytes::from(message.encode_to_vec()))
    }

    /// Wraps bytes that already are an encoded [`Message`], such as a
    /// stored row. They are not checked: invalid bytes make frames the
    /// client cannot decode.
    #[must_use]
    pub fn from_encoded(encoded: Bytes) -> Self {
        Self(encoded)
    }

    /// The encoded message.
    #[must_use]
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The encoded message, giving up the wrapper.
    #[must_use]
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Decodes the message back, for a reader that needs its fields.
    ///
    /// # Errors
    ///
    /// [`prost::DecodeError`] if the bytes given to
    /// [`SharedMessage::from_encoded`] were not a `Message`.
    pub fn decode(&self) -> Result<Message, prost::DecodeError> {
        Message::decode(self.0.clone())
    }

    /// The per-recipient part of a `Deliver` frame carrying this message
    /// and `cursor`: everything before the shared bytes, built on the
    /// stack.
    ///
    /// # Errors
    ///
    /// [`DeliverError::CursorTooLong`] when `cursor` exceeds
    /// [`MAX_CURSOR_LEN`]; [`DeliverError::FrameTooLarge`] when the frame
    /// would not fit a 4-byte length prefix.
    pub fn deliver_header(&self, cursor: &[u8]) -> Result<DeliverHeader, DeliverError> {
        DeliverHeader::new(cursor, self.0.len())
    }

    /// A recipient's whole `Deliver` frame as header plus shared bytes, for
    /// a vectored write. Costs no heap allocation.
    ///
    /// # Errors
    ///
    /// As for [`SharedMessage::deliver_header`].
    pub fn deliver_frame(&self, cursor: &[u8]) -> Result<DeliverFrame, DeliverError> {
        Ok(DeliverFrame {
            header: self.deliver_header(cursor)?,
            written: 0,
            message: self.0.clone(),
        })
    }

    /// A recipient's whole `Deliver` frame in one contiguous buffer, byte
    /// for byte the same as [`SharedMessage::deliver_frame`]; for writers
    /// without vectored I/O. Copies the message.
    ///
    /// # Errors
    ///
    /// As for [`SharedMessage::deliver_header`].
    pub fn deliver_contiguous(&self, cursor: &[u8]) -> Result<Bytes, DeliverError> {
        let header = self.deliver_header(cursor)?;
        let mut frame = BytesMut::with_capacity(header.as_slice().len() + self.0.len());
        frame.put_slice(header.as_slice());
        frame.put_slice(&self.0);
        Ok(frame.freeze())
    }
}

/// The per-recipient start of a `Deliver` frame: length prefix, field keys
/// and lengths, and the cursor. Lives on the stack.
#[derive(Clone, Copy)]
pub struct DeliverHeader {
    /// The header bytes; only the first `len` are meaningful.
    bytes: [u8; HEADER_CAPACITY],
    /// How many bytes of `bytes` the header uses.
    len: u8,
}

impl DeliverHeader {
    /// Builds the header for a message of `message_len` encoded bytes.
    fn new(cursor: &[u8], message_len: usize) -> Result<Self, DeliverError> {
        if cursor.len() > MAX_CURSOR_LEN {
            return Err(DeliverError::CursorTooLong {
                len: cursor.len(),
                max: MAX_CURSOR_LEN,
            });
        }
        let cursor_field = if cursor.is_empty() {
            0
        } else {
            1 + varint_len(cursor.len()) + cursor.len()
        };
        let message_field_head = 1 + varint_len(message_len);
        let deliver_len = cursor_field
            .checked_add(message_field_head)
            .and_then(|n| n.checked_add(message_len));
        let frame_len = deliver_len.and_then(|d| d.checked_add(1 + varint_len(d)));
        let (Some(deliver_len), Some(frame_len)) = (deliver_len, frame_len) else {
            return Err(DeliverError::FrameTooLarge { len: usize::MAX });
        };
        let prefix =
            u32::try_from(frame_len).map_err(|_| DeliverError::FrameTooLarge { len: frame_len })?;

        let mut header = HeaderWriter {
            bytes: [0; HEADER_CAPACITY],
            len: 0,
        };
        header.put(&prefix.to_be_bytes());
        header.put(&[SERVER_FRAME_DELIVER_KEY]);
        header.put_varint(deliver_len);
        if !cursor.is_empty() {
            header.put(&[DELIVER_CURSOR_KEY]);
            header.put_varint(cursor.len());
            header.put(cursor);
        }
        header.put(&[DELIVER_MESSAGE_KEY]);
        header.put_varint(message_len);
        Ok(Self {
            bytes: header.bytes,
            // At most HEADER_CAPACITY (60) bytes were written.
            len: header.len as u8,
        })
    }

    /// The header's bytes.
    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl AsRef<[u8]> for DeliverHeader {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for DeliverHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DeliverHeader")
            .field(&self.as_slice())
            .finish()
    }
}

/// A recipient's complete `Deliver` frame, length prefix included: its own
/// [`DeliverHeader`] followed by the shared message bytes.
///
/// As a [`Buf`] it yields the two parts as separate chunks
/// (`chunks_vectored` fills two `IoSlice`s), so writing it never copies the
/// message; partial writes advance through it like any `Buf`.
#[derive(Debug, Clone)]
pub struct DeliverFrame {
    /// The per-recipient start of the frame.
    header: DeliverHeader,
    /// How many header bytes have been consumed.
    written: u8,
    /// The rest of the shared message bytes not consumed yet.
    message: Bytes,
}

impl DeliverFrame {
    /// The header bytes not consumed yet.
    #[must_use]
    pub fn header(&self) -> &[u8] {
        &self.header.as_slice()[usize::from(self.written)..]
    }

    /// The shared message bytes not consumed yet.
    #[must_use]
    pub fn message(&self) -> &Bytes {
        &self.message
    }

    /// The unconsumed rest of the frame in one contiguous buffer (a copy).
    #[must_use]
    pub fn to_bytes(&self) -> Bytes {
        let header = self.header();
        let mut frame = BytesMut::with_capacity(header.len() + self.message.len());
        frame.put_slice(header);
        frame.put_slice(&self.message);
        frame.freeze()
    }
}

impl Buf for DeliverFrame {
    fn remaining(&self) -> usize {
        self.header().len() + self.message.len()
    }

    fn chunk(&self) -> &[u8] {
        let header = self.header();
        if header.is_empty() {
            &self.message
        } else {
            header
        }
    }

    /// # Panics
    ///
    /// If `cnt` exceeds [`Buf::remaining`], as every `Buf` does.
    fn advance(&mut self, cnt: usize) {
        let header_left = self.header().len();
        if cnt <= header_left {
            // cnt <= header_left <= HEADER_CAPACITY, which fits a u8.
            self.written += cnt as u8;
        } else {
            self.written = self.header.len;
            self.message.advance(cnt - header_left);
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for part in [self.header(), &self.message[..]] {
            if part.is_empty() {
                continue;
            }
            let Some(slot) = dst.get_mut(filled) else {
                break;
            };
            *slot = IoSlice::new(part);
            filled += 1;
        }
        filled
    }
}

/// Fills a header buffer front to back. Every caller stays within
/// `HEADER_CAPACITY` by construction (see its definition).
struct HeaderWriter {
    /// The buffer being filled.
    bytes: [u8; HEADER_CAPACITY],
    /// How many bytes are filled.
    len: usize,
}

impl HeaderWriter {
    fn put(&mut self, src: &[u8]) {
        self.bytes[self.len..self.len + src.len()].copy_from_slice(src);
        self.len += src.len();
    }

    fn put_varint(&mut self, value: usize) {
        let mut rest = &mut self.bytes[self.len..];
        let room = rest.len();
        prost::encoding::encode_varint(value as u64, &mut rest);
        let written = room - rest.len();
        self.len += written;
    }
}

/// Bytes of a length-delimited field `tag` holding `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Writes the key and length of a length-delimited field.
fn put_field_head(out: &mut BytesMut, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

/// Appends a length-prefixed `ServerFrame { req_id, <kind field `tag`> }`
/// whose kind message is `body_len` bytes written by `body`.
fn put_server_frame(
    out: &mut BytesMut,
    req_id: u64,
    tag: u32,
    body_len: usize,
    body: impl FnOnce(&mut BytesMut),
) -> Result<(), DeliverError> {
    let req_id_len = if req_id == 0 {
        0
    } else {
        key_len(SERVER_FRAME_REQ_ID) + encoded_len_varint(req_id)
    };
    let frame_len = req_id_len + field_len(tag, body_len);
    let prefix =
        u32::try_from(frame_len).map_err(|_| DeliverError::FrameTooLarge { len: frame_len })?;
    out.reserve(LENGTH_PREFIX_LEN + frame_len);
    out.put_u32(prefix);
    if req_id != 0 {
        encode_key(SERVER_FRAME_REQ_ID, WireType::Varint, out);
        encode_varint(req_id, out);
    }
    put_field_head(out, tag, body_len);
    body(out);
    Ok(())
}

/// Appends `ServerFrame { req_id, sync_batch: SyncBatch { messages, next,
/// has_more } }`, length-prefixed, built from stored `(cursor, message)`
/// pairs: each message's stored encoding is copied as is, never decoded
/// and encoded again.
///
/// # Errors
///
/// [`DeliverError::FrameTooLarge`] past a 4-byte length prefix; the caller
/// sizes pages to its frame limit.
pub fn put_sync_batch<'a, I>(
    out: &mut BytesMut,
    req_id: u64,
    entries: I,
    next: &[u8],
    has_more: bool,
) -> Result<(), DeliverError>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    let deliver_len = |cursor: &[u8], message: &[u8]| {
        let cursor_len = if cursor.is_empty() {
            0
        } else {
            field_len(DELIVER_CURSOR, cursor.len())
        };
        cursor_len + field_len(DELIVER_MESSAGE, message.len())
    };
    let body_len = entries
        .clone()
        .map(|(c, m)| field_len(SYNC_BATCH_MESSAGES, deliver_len(c, m)))
        .sum::<usize>()
        + if next.is_empty() {
            0
        } else {
            field_len(SYNC_BATCH_NEXT, next.len())
        }
        + if has_more {
            key_len(SYNC_BATCH_HAS_MORE) + 1
        } else {
            0
        };
    put_server_frame(out, req_id, SERVER_FRAME_SYNC_BATCH, body_len, |out| {
        for (cursor, message) in entries {
            put_field_head(out, SYNC_BATCH_MESSAGES, deliver_len(cursor, message));
            put_field_head(out, DELIVER_MESSAGE, message.len());
            out.put_slice(message);
            if !cursor.is_empty() {
                put_field_head(out, DELIVER_CURSOR, cursor.len());
                out.put_slice(cursor);
            }
        }
        if !next.is_empty() {
            put_field_head(out, SYNC_BATCH_NEXT, next.len());
            out.put_slice(next);
        }
        if has_more {
            encode_key(SYNC_BATCH_HAS_MORE, WireType::Varint, out);
            encode_varint(1, out);
        }
    })
}

/// Appends `ServerFrame { req_id, history_page: HistoryPage { messages,
/// has_more } }`, length-prefixed, from stored message encodings copied as
/// is.
///
/// # Errors
///
/// [`DeliverError::FrameTooLarge`] past a 4-byte length prefix.
pub fn put_history_page<'a, I>(
    out: &mut BytesMut,
    req_id: u64,
    messages: I,
    has_more: bool,
) -> Result<(), DeliverError>
where
    I: Iterator<Item = &'a [u8]> + Clone,
{
    let body_len = messages
        .clone()
        .map(|m| field_len(HISTORY_PAGE_MESSAGES, m.len()))
        .sum::<usize>()
        + if has_more {
            key_len(HISTORY_PAGE_HAS_MORE) + 1
        } else {
            0
        };
    put_server_frame(out, req_id, SERVER_FRAME_HISTORY_PAGE, body_len, |out| {
        for message in messages {
            put_field_head(out, HISTORY_PAGE_MESSAGES, message.len());
            out.put_slice(message);
        }
        if has_more {
            encode_key(HISTORY_PAGE_HAS_MORE, WireType::Varint, out);
            encode_varint(1, out);
        }
    })
}

/// Bytes a varint encoding of `value` takes.
fn varint_len(value: usize) -> usize {
    prost::length_delimiter_len(value)
}
