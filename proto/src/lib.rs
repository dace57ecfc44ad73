//! Hanmadi's wire protocol: the schema's generated types and the frame codec.
//!
//! The schema lives in `proto/hanmadi.proto` (package `hanmadi.v1`); the build
//! turns it into the prost types of [`pb`], re-exported here. This crate does
//! no I/O of its own: it turns bytes into frames and frames into bytes.
//!
//! | module | owns |
//! |---|---|
//! | [`pb`] | the generated messages and enums: [`ClientFrame`], [`ServerFrame`], [`Message`], [`ErrorCode`], ... |
//! | [`codec`] | TCP framing: a 4-byte big-endian length, then protobuf; size limit checked before allocating ([`FrameCodec`], [`MessageCodec`]) |
//! | [`deliver`] | a `Deliver` frame as a per-recipient header plus a message encoded once and shared by every recipient ([`SharedMessage`], [`DeliverFrame`]) |
//! | [`conversation`] | [`ConversationId`], the validated form of [`Conversation`] that storage keys by |
//! | [`error_code`] | what a client does about each [`ErrorCode`] ([`ErrorAction`]) |
//! | `websocket` | (feature `websocket`) WebSocket framing: a WebSocket seen as the TCP frame stream, binary or JSON (`WsFrames`) |
//!
//! Two generated names are not re-exported at the root: `pb::Send` and
//! `pb::Sync` share their names with the standard library's marker traits,
//! which an import of the structs would shadow; and `pb::conversation` (the
//! oneof of [`Conversation`]) would clash with the [`conversation`] module.
//! Name them through [`pb`].

#![warn(missing_docs)]

pub mod codec;
pub mod conversation;
pub mod deliver;
pub mod error_code;
#[cfg(feature = "websocket")]
pub mod websocket;

/// The types generated from `hanmadi.proto` (package `hanmadi.v1`).
///
/// Field docs below are the schema's comments. Every `bytes` field is a
/// [`bytes::Bytes`], so decoding from a [`bytes::Bytes`] frame slices it
/// rather than copying. Every type also implements serde's `Serialize` and
/// `Deserialize` as protobuf's canonical JSON mapping with the schema's
/// field names: 64-bit integers as decimal strings, `bytes` as base64, enums
/// by name (numbers accepted), default values omitted.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/hanmadi.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/hanmadi.v1.serde.rs"));
}

pub use codec::{
    reserve_read, shrink_idle, ClientCodec, CodecError, FrameCodec, MessageCodec, ServerCodec,
    DEFAULT_MAX_FRAME,
};
pub use conversation::{ConversationError, ConversationId};
pub use deliver::{DeliverError, DeliverFrame, DeliverHeader, SharedMessage, MAX_CURSOR_LEN};
pub use error_code::ErrorAction;
pub use pb::{
    client_frame, send, server_frame, Ack, ClientFrame, Conversation, Deliver, DirectConversation,
    Error, ErrorCode, Hello, History, HistoryPage, MembershipChange, Message, MessageKind, Ping,
    Pong, Read, SendAck, ServerFrame, SyncBatch, Welcome,
};

/// The prost version the generated types implement, for dependents that
/// call `prost::Message` methods without a prost dependency of their own.
pub use prost;

/// Longest `client_msg_id` (`Send`), in bytes; it must not be empty.
/// Client, router and storage all hold sends to this one bound.
pub const MAX_CLIENT_MSG_ID_LEN: usize = 64;

/// The schema's encoded `google.protobuf.FileDescriptorSet`, with source
/// comments: the input for a JSON mapping generator or a reflection-based
/// encoder (the WebSocket `hanmadi.v1.json` subprotocol).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/hanmadi_descriptor.bin"));
