//! Hanmadi's async Rust client over raw TCP or TLS (length-prefixed
//! protobuf frames, as in `proto/hanmadi.proto`) or WebSocket and WSS
//! (one frame per message, protobuf or JSON).
//!
//! Two levels:
//!
//! - [`Client`] is one authenticated connection. Its requests (`send`,
//!   `sync`, `history`, `ping`, ...) run concurrently and are matched to
//!   their answers by `req_id`; what the server pushes arrives on
//!   [`Deliveries`]. It keeps the connection alive with heartbeats and
//!   notices a dead one, but never reconnects.
//! - [`ReconnectingClient`] reconnects with backoff, syncs from the last
//!   cursor it handed out, and yields the inbox as one stream without gap,
//!   duplicate or reordering across connections; its sends keep one
//!   `client_msg_id` across retries, so each message is stored once.
//!
//! | module | owns |
//! |---|---|
//! | `config` | [`ClientConfig`], [`TlsOptions`], [`WebSocketOptions`], [`Target`] |
//! | `client` | [`Client`], [`Deliveries`], [`Event`] |
//! | `connection` | opening TCP/TLS/WebSocket, the `Hello` handshake, the task that owns the socket (reads, batched writes, heartbeats) |
//! | `requests` | `req_id`s and the waiters of requests in flight |
//! | `error` | [`ClientError`], [`ServerError`], and what to do about each ([`ErrorAction`]) |
//! | `seam` | [`Seam`]: the pure merge of sync pages and live deliveries |
//! | `reconnect` | [`ReconnectingClient`], [`ReconnectingHandle`], [`ReconnectOptions`], [`Endpoints`] |
//! | `discovery` | [`Endpoints::discovery`]: each attempt asks a node's `GET /v1/discovery` ([`DiscoveryOptions`], [`Transport`]) |
//! | `backoff` | jittered exponential waits |
//!
//! # Example
//!
//! ```no_run
//! use hanmadi_client::{ClientConfig, ReconnectOptions, ReconnectingClient, Target};
//!
//! # async fn run() -> Result<(), hanmadi_client::ClientError> {
//! let config = ClientConfig::new("127.0.0.1:7070", "token-from-login", "laptop-1");
//! let mut inbox = ReconnectingClient::start(config, ReconnectOptions::default()).await?;
//! let ack = inbox.send(Target::User(42), "안녕하세요").await?;
//! println!("stored as message {}", ack.message_id);
//! while let Some(received) = inbox.next().await {
//!     let received = received?; // an error here is final
//!     println!("{}: {}", received.message.sender, received.message.body);
//!     inbox.ack().await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! One connection without the helper:
//!
//! ```no_run
//! use hanmadi_client::{Client, ClientConfig, Event, Target};
//!
//! # async fn run() -> Result<(), hanmadi_client::ClientError> {
//! let (client, mut deliveries) =
//!     Client::connect(ClientConfig::new("127.0.0.1:7070", "token", "bot-7")).await?;
//! let batch = client.sync(&[], 100).await?;
//! println!("{} waiting, round trip {:?}", batch.messages.len(), client.ping().await?);
//! client.send(Target::Group(9), "hello, group").await?;
//! while let Some(event) = deliveries.recv().await {
//!     match event {
//!         Event::Deliver { message, cursor } => {
//!             println!("{}", message.body);
//!             client.ack(&cursor).await?;
//!         }
//!         Event::Refused { error, .. } => eprintln!("refused: {error}"),
//!         Event::Closed { error } => eprintln!("closed: {error:?}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Over TLS, hand [`TlsOptions`] any `Arc<rustls::ClientConfig>` built on
//! the ring provider, e.g. one trusting the server's certificate.

#![warn(missing_docs)]

mod backoff;
mod client;
mod config;
mod connection;
mod discovery;
mod error;
mod reconnect;
mod requests;
mod seam;

pub use client::{new_client_msg_id, Client, Deliveries, Event, MAX_CLIENT_MSG_ID_LEN};
pub use config::{
    ClientConfig, Target, TlsOptions, WebSocketOptions, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_EVENT_CAPACITY, DEFAULT_REQUEST_TIMEOUT,
};
pub use discovery::{DiscoveryOptions, Transport};
pub use error::{ClientError, ServerError, MAX_RETRY_AFTER};
pub use hanmadi_proto::websocket::Encoding;
pub use hanmadi_proto::{pb, ConversationId, ErrorAction, ErrorCode};
pub use reconnect::{
    Endpoint, Endpoints, ReconnectOptions, ReconnectingClient, ReconnectingHandle,
};
pub use seam::{Received, Seam, SyncStep, DEFAULT_DEDUP_WINDOW};
