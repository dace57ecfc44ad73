//! What a connection answers: replies, `Error` frames, and the reason it
//! closes.

use std::future::Future;
use std::pin::Pin;

use bytes::BytesMut;
use hanmadi_proto::pb::{self, server_frame};
use hanmadi_proto::ErrorCode;
use hanmadi_router::RouterError;

/// A request running in the background, and its reply (`None` for a
/// request answered only when it fails).
pub(super) type Pending = Pin<Box<dyn Future<Output = Option<Reply>> + Send>>;

/// An answer to a request.
pub(super) enum Reply {
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
pub(super) fn error_frame(
    req_id: u64,
    code: ErrorCode,
    message: impl Into<String>,
) -> pb::ServerFrame {
    error_frame_after(req_id, code, message, 0)
}

/// An `Error` frame asking the client to wait `retry_after_ms` first.
pub(super) fn error_frame_after(
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
pub(super) const STORE_FAILED: &str = "storage failed; try again later";

pub(super) fn router_error(req_id: u64, e: &RouterError) -> pb::ServerFrame {
    if let RouterError::Store(cause) = e {
        tracing::warn!(error = %cause, "request failed in storage");
    }
    error_frame(req_id, e.code(), e.to_string())
}

/// Why the connection ends; sent to the peer as an `Error` when it has a
/// code.
#[derive(Debug)]
pub(super) struct Close {
    pub(super) code: Option<ErrorCode>,
    pub(super) message: String,
    pub(super) reason: &'static str,
}

impl Close {
    pub(super) fn with(code: ErrorCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code: Some(code),
            message: message.into(),
            reason,
        }
    }

    pub(super) fn quiet(reason: &'static str) -> Self {
        Self {
            code: None,
            message: String::new(),
            reason,
        }
    }

    pub(super) fn draining() -> Self {
        Self::with(
            ErrorCode::ServerDraining,
            "draining",
            "server is shutting down; reconnect elsewhere",
        )
    }

    pub(super) fn slow_consumer() -> Self {
        Self::with(
            ErrorCode::SlowConsumer,
            "slow_consumer",
            "outbound queue full: reconnect and sync",
        )
    }
}
