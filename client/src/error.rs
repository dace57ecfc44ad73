//! [`ClientError`], and [`ServerError`] for the server's `Error` frames.
//!
//! Every error answers one question through [`ClientError::action`]: send
//! the request again on this connection, open a new connection, or give up.
//! The answer for a server error comes from its code's range (1xxx retry,
//! 2xxx reconnect, 3xxx give up), so codes added to the schema later are
//! handled too.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hanmadi_proto::{pb, CodecError, ErrorAction, ErrorCode};

/// An `Error` frame from the server: a refused request, or the reason it
/// closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The raw `ErrorCode` number, kept raw so codes newer than this build
    /// still tell [`ServerError::action`] what to do.
    pub code: i32,
    /// The server's explanation, for logs; not for parsing.
    pub message: String,
    /// For retry codes, the least wait the server asks for before retrying,
    /// up to [`MAX_RETRY_AFTER`].
    pub retry_after: Option<Duration>,
}

/// The longest wait a server's `retry_after_ms` can impose. The field holds
/// up to 49 days; a wait past this one comes from a broken server, and
/// would hold every retry and resync of the client that long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

impl ServerError {
    /// The code, when this build knows it.
    #[must_use]
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::try_from(self.code).ok()
    }

    /// What to do about it, from the code's range.
    #[must_use]
    pub fn action(&self) -> ErrorAction {
        ErrorAction::from_code(self.code)
    }
}

impl From<pb::Error> for ServerError {
    fn from(error: pb::Error) -> Self {
        Self {
            code: error.code,
            message: error.message,
            retry_after: (error.retry_after_ms > 0).then(|| {
                Duration::from_millis(u64::from(error.retry_after_ms)).min(MAX_RETRY_AFTER)
            }),
        }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self
            .error_code()
            .map_or("UNKNOWN", |code| code.as_str_name());
        write!(f, "server error {} {name}: {}", self.code, self.message)
    }
}

impl std::error::Error for ServerError {}

/// Why a client operation failed.
///
/// Cheap to clone (I/O and codec errors sit behind an [`Arc`]), because one
/// connection failure is reported to every request waiting on it and to the
/// event stream.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting, reading or writing the socket failed.
    #[error("connection I/O failed: {0}")]
    Io(#[source] Arc<io::Error>),
    /// The TLS handshake was refused, for example over the server's
    /// certificate.
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] rustls::Error),
    /// The WebSocket upgrade was refused or failed.
    #[error("WebSocket upgrade failed: {0}")]
    WebSocket(String),
    /// Service discovery failed or listed no usable node.
    #[error("discovery failed: {0}")]
    Discovery(String),
    /// `TlsOptions::server_name` is not a valid DNS name or IP address.
    #[error("invalid TLS server name {0:?}")]
    InvalidServerName(String),
    /// A frame could not be read or written: the server sent a frame above
    /// `ClientConfig::max_frame` or one that is not valid protobuf, or a
    /// request would exceed the server's frame limit.
    #[error("frame error: {0}")]
    Codec(#[source] Arc<CodecError>),
    /// The server refused the request, or closed the connection, with an
    /// `Error` frame.
    #[error("{0}")]
    Server(#[from] ServerError),
    /// The connection closed before the request was answered, so its
    /// outcome is unknown; `cause` says why it closed (`None`: closed
    /// cleanly, by either side).
    #[error("connection closed{}", match cause { Some(cause) => format!(": {cause}"), None => String::new() })]
    Closed {
        /// Why the connection closed, when it was not a clean close.
        cause: Option<Arc<ClientError>>,
    },
    /// No answer within the request timeout. The connection stays open; the
    /// outcome is unknown (a `Send` retried with the same `client_msg_id` is
    /// safe).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Nothing arrived from the server for this long, although the client
    /// sent pings: the connection is presumed dead.
    #[error("nothing received from the server for {0:?}; connection presumed dead")]
    Unresponsive(Duration),
    /// The event stream ([`crate::Deliveries`]) was not drained and its
    /// queue filled up, so the connection was closed rather than hold
    /// unbounded events; reconnect and `Sync` to catch up.
    #[error("event queue full ({capacity} events): the consumer fell behind")]
    SlowConsumer {
        /// The queue's capacity (`ClientConfig::event_capacity`).
        capacity: usize,
    },
    /// The server broke the protocol, e.g. answered a request with the wrong
    /// kind of frame.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// An argument cannot be sent as given.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// What to do about this error.
    ///
    /// - [`ErrorAction::Retry`]: send the request again (after
    ///   [`ClientError::retry_after`] if given) on the same connection.
    /// - [`ErrorAction::Reconnect`]: open a new connection, `Hello`, `Sync`.
    /// - [`ErrorAction::GiveUp`]: retrying cannot help (bad token, bad
    ///   argument, certificate refused, a server breaking the protocol).
    #[must_use]
    pub fn action(&self) -> ErrorAction {
        match self {
            Self::Server(error) => error.action(),
            Self::Timeout(_) => ErrorAction::Retry,
            // A refused upgrade is most often a draining or busy node.
            Self::Io(_)
            | Self::WebSocket(_)
            | Self::Discovery(_)
            | Self::Unresponsive(_)
            | Self::SlowConsumer { .. } => ErrorAction::Reconnect,
            Self::Closed { cause } => match cause.as_deref().map(Self::action) {
                Some(ErrorAction::GiveUp) => ErrorAction::GiveUp,
                _ => ErrorAction::Reconnect,
            },
            Self::Tls(_)
            | Self::InvalidServerName(_)
            | Self::Codec(_)
            | Self::Protocol(_)
            | Self::InvalidArgument(_) => ErrorAction::GiveUp,
        }
    }

    /// The wait the server asked for before a retry or reconnect, if any.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Server(error) => error.retry_after,
            Self::Closed { cause: Some(cause) } => cause.retry_after(),
            _ => None,
        }
    }

    /// The server's error, directly or as the reason a connection closed.
    #[must_use]
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Self::Server(error) => Some(error),
            Self::Closed { cause: Some(cause) } => cause.server_error(),
            _ => None,
        }
    }

    /// The error for a request whose connection closed with `cause`.
    pub(crate) fn closed(cause: Option<ClientError>) -> Self {
        Self::Closed {
            cause: cause.map(Arc::new),
        }
    }
}

impl From<io::Error> for ClientError {
    /// Keeps a TLS refusal apart from plain I/O: tokio-rustls reports both
    /// as `io::Error`, but only the latter is worth a reconnect.
    fn from(error: io::Error) -> Self {
        if let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Self::Tls(tls.clone());
        }
        Self::Io(Arc::new(error))
    }
}

impl From<CodecError> for ClientError {
    fn from(error: CodecError) -> Self {
        match error {
            CodecError::Io(io) => io.into(),
            other => Self::Codec(Arc::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: ErrorCode) -> ClientError {
        ClientError::Server(ServerError {
            code: code as i32,
            message: String::from("x"),
            retry_after: None,
        })
    }

    #[test]
    fn actions_follow_the_code_range_and_the_failure() {
        assert_eq!(server(ErrorCode::ServerBusy).action(), ErrorAction::Retry);
        assert_eq!(
            server(ErrorCode::SlowConsumer).action(),
            ErrorAction::Reconnect
        );
        assert_eq!(
            server(ErrorCode::TokenInvalid).action(),
            ErrorAction::GiveUp
        );
        assert_eq!(
            ClientError::Timeout(Duration::from_secs(1)).action(),
            ErrorAction::Retry
        );
        assert_eq!(
            ClientError::Io(Arc::new(io::Error::from(io::ErrorKind::ConnectionReset))).action(),
            ErrorAction::Reconnect
        );
        assert_eq!(
            ClientError::Protocol(String::new()).action(),
            ErrorAction::GiveUp
        );
    }

    #[test]
    fn a_closed_connection_reconnects_unless_its_cause_gives_up() {
        assert_eq!(ClientError::closed(None).action(), ErrorAction::Reconnect);
        // A rate-limit flood closes the connection: retrying on it is
        // impossible, so the action becomes reconnect.
        assert_eq!(
            ClientError::closed(Some(server(ErrorCode::RateLimited))).action(),
            ErrorAction::Reconnect
        );
        assert_eq!(
            ClientError::closed(Some(server(ErrorCode::TokenExpired))).action(),
            ErrorAction::GiveUp
        );
    }

    #[test]
    fn server_error_reads_retry_after_and_unknown_codes() {
        let error = ServerError::from(pb::Error {
            code: 1777,
            message: String::from("later"),
            retry_after_ms: 250,
        });
        assert_eq!(error.error_code(), None);
        assert_eq!(error.action(), ErrorAction::Retry);
        assert_eq!(error.retry_after, Some(Duration::from_millis(250)));
        let closed = ClientError::closed(Some(ClientError::Server(error)));
        assert_eq!(closed.retry_after(), Some(Duration::from_millis(250)));
        assert_eq!(closed.server_error().map(|e| e.code), Some(1777));
        assert!(closed.to_string().contains("1777 UNKNOWN: later"));
        let forever = ServerError::from(pb::Error {
            code: ErrorCode::RateLimited as i32,
            message: String::new(),
            retry_after_ms: u32::MAX,
        });
        assert_eq!(forever.retry_after, Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn tls_refusals_are_told_apart_from_io() {
        let refused = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::General(String::from("bad certificate")),
        );
        assert!(matches!(ClientError::from(refused), ClientError::Tls(_)));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(matches!(ClientError::from(reset), ClientError::Io(_)));
    }
}
