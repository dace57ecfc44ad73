//! What a connection needs: [`ClientConfig`], [`TlsOptions`],
//! [`WebSocketOptions`], and the
//! recipient of a send, [`Target`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hanmadi_proto::websocket::{Encoding, WS_PATH};
use hanmadi_proto::{pb, DEFAULT_MAX_FRAME};

/// Default for [`ClientConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for [`ClientConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for [`ClientConfig::event_capacity`].
pub const DEFAULT_EVENT_CAPACITY: usize = 4096;

/// TLS settings: the name to verify the server's certificate against, and
/// the rustls configuration (roots, protocol versions, ring provider).
#[derive(Clone)]
pub struct TlsOptions {
    /// The DNS name (or IP address) the certificate must be valid for.
    pub server_name: String,
    /// Any rustls client configuration; the client library adds nothing to
    /// it, so it is where roots and client certificates go.
    pub config: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// How to open and run one connection.
#[derive(Clone)]
pub struct ClientConfig {
    /// The server's TCP or TLS listener, as `host:port`.
    pub addr: String,
    /// `Some` to speak TLS, `None` for plain TCP.
    pub tls: Option<TlsOptions>,
    /// `Some` to speak WebSocket (over TLS: WSS) to `addr`, which is then
    /// the HTTP or HTTPS listener; `None` for length-prefixed frames.
    pub websocket: Option<WebSocketOptions>,
    /// The `Hello` token: from `POST /v1/sessions`, or an HS256 JWT.
    pub token: String,
    /// A stable id for this device or installation, 1 to 64 bytes; the
    /// server keeps delivery progress (`Ack`) per device.
    pub device_id: String,
    /// The largest frame accepted from the server, in bytes, length prefix
    /// excluded. A larger one closes the connection with
    /// [`crate::ClientError::Codec`] before anything is allocated for it.
    pub max_frame: usize,
    /// How long a request waits for its answer.
    pub request_timeout: Duration,
    /// How long TCP connect, the TLS handshake and `Hello`/`Welcome` may
    /// take together.
    pub connect_timeout: Duration,
    /// How many events [`crate::Deliveries`] may hold unread. When it is
    /// full the connection closes with [`crate::ClientError::SlowConsumer`]
    /// instead of buffering without bound or stalling replies; a
    /// reconnecting client then catches up with `Sync`.
    pub event_capacity: usize,
}

impl ClientConfig {
    /// A plain-TCP configuration with the default limits and timeouts.
    #[must_use]
    pub fn new(
        addr: impl Into<String>,
        token: impl Into<String>,
        device_id: impl Into<String>,
    ) -> Self {
        Self {
            addr: addr.into(),
            tls: None,
            websocket: None,
            token: token.into(),
            device_id: device_id.into(),
            max_frame: DEFAULT_MAX_FRAME,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }

    /// The same configuration speaking TLS.
    #[must_use]
    pub fn with_tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The same configuration speaking WebSocket at `/ws` with `encoding`
    /// (WSS when TLS is set too).
    #[must_use]
    pub fn with_websocket(mut self, encoding: Encoding) -> Self {
        self.websocket = Some(WebSocketOptions {
            path: WS_PATH.to_owned(),
            encoding,
        });
        self
    }
}

/// How to speak WebSocket.
#[derive(Debug, Clone)]
pub struct WebSocketOptions {
    /// The endpoint's path, `/ws` on a Hanmadi node.
    pub path: String,
    /// What this client sends and asks the server to send:
    /// [`Encoding::Binary`] (subprotocol `hanmadi.v1.proto`) or
    /// [`Encoding::Json`] (`hanmadi.v1.json`).
    pub encoding: Encoding,
}

impl fmt::Debug for ClientConfig {
    /// Leaves the token out: it is a credential, and configs end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("websocket", &self.websocket)
            .field("token", &"<redacted>")
            .field("device_id", &self.device_id)
            .field("max_frame", &self.max_frame)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("event_capacity", &self.event_capacity)
            .finish()
    }
}

/// Who a message is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Another user: the message goes to the direct conversation with them.
    User(u64),
    /// A group the sender is a member of.
    Group(u64),
}

impl From<Target> for pb::send::To {
    fn from(target: Target) -> Self {
        match target {
            Target::User(user_id) => Self::UserId(user_id),
            Target::Group(group_id) => Self::GroupId(group_id),
        }
    }
}
