//! A scriptable fake server over real sockets: each test plays the server
//! side frame by frame with the proto crate's `ServerCodec`.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hanmadi_client::ClientConfig;
use hanmadi_proto::{
    client_frame, pb, server_frame, ClientFrame, ConversationId, ErrorCode, Hello, ServerCodec,
    ServerFrame, Welcome, DEFAULT_MAX_FRAME,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

/// The most any real-time test step may take.
pub const STEP_LIMIT: Duration = Duration::from_secs(10);

/// Runs one test step, failing the test instead of hanging it.
pub async fn within<T>(step: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP_LIMIT, step)
        .await
        .expect("test step took too long")
}

/// A listener on an ephemeral loopback port.
pub struct Listener {
    listener: TcpListener,
    pub addr: String,
}

impl Listener {
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        Self { listener, addr }
    }

    pub async fn accept(&self) -> Peer<TcpStream> {
        Peer::new(self.accept_stream().await)
    }

    pub async fn accept_stream(&self) -> TcpStream {
        let (stream, _) = self.listener.accept().await.expect("accept");
        stream
    }
}

/// An address that refuses connections: a socket bound to it and never
/// listening. Unlike a listener that was bound and dropped, its port
/// cannot be handed to another test's listener while this one holds it.
pub struct Refused {
    _socket: tokio::net::TcpSocket,
    pub addr: String,
}

impl Refused {
    pub fn bind() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let addr = socket.local_addr().expect("local addr").to_string();
        Self {
            _socket: socket,
            addr,
        }
    }
}

/// The server's end of one connection.
pub struct Peer<S> {
    pub framed: Framed<S, ServerCodec>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    pub fn new(stream: S) -> Self {
        Self {
            framed: Framed::new(stream, ServerCodec::new(DEFAULT_MAX_FRAME)),
        }
    }

    /// The next client frame; `None` once the client closed.
    pub async fn recv(&mut self) -> Option<ClientFrame> {
        match self.framed.next().await {
            Some(Ok(frame)) => Some(frame),
            // A reset counts as closed: the client dropped the socket.
            Some(Err(_)) | None => None,
        }
    }

    /// The next client frame, which must exist and have a kind.
    pub async fn recv_kind(&mut self) -> (u64, client_frame::Kind) {
        let frame = self.recv().await.expect("client sent a frame");
        (frame.req_id, frame.kind.expect("frame has a kind"))
    }

    pub async fn send(&mut self, req_id: u64, kind: server_frame::Kind) {
        self.framed
            .send(ServerFrame {
                req_id,
                kind: Some(kind),
            })
            .await
            .expect("write to client");
    }

    /// Takes the next frame, which must be a `Ping`, and answers it.
    pub async fn answer_ping(&mut self) {
        let (req_id, kind) = self.recv_kind().await;
        assert!(matches!(kind, client_frame::Kind::Ping(_)), "{kind:?}");
        self.send(req_id, server_frame::Kind::Pong(pb::Pong {}))
            .await;
    }

    /// Takes the `Hello` and answers with `welcome`.
    pub async fn handshake(&mut self, welcome: Welcome) -> Hello {
        let (req_id, kind) = self.recv_kind().await;
        let client_frame::Kind::Hello(hello) = kind else {
            panic!("expected Hello, got {kind:?}");
        };
        assert_ne!(req_id, 0, "Hello carries a req_id");
        self.send(req_id, server_frame::Kind::Welcome(welcome))
            .await;
        hello
    }
}

pub fn welcome(user_id: u64, heartbeat_ms: u32) -> Welcome {
    Welcome {
        user_id,
        session_id: 77,
        heartbeat_ms,
        max_frame_len: DEFAULT_MAX_FRAME as u32,
        max_body_len: 16 * 1024,
        server_time: 1_700_000_000_000,
    }
}

pub fn config(addr: &str) -> ClientConfig {
    ClientConfig::new(addr, "token-1", "device-1")
}

pub fn error(code: ErrorCode, message: &str) -> server_frame::Kind {
    server_frame::Kind::Error(pb::Error {
        code: code as i32,
        message: message.to_owned(),
        retry_after_ms: 0,
    })
}

/// Inbox entry `i`'s cursor: `i + 1`, 8 bytes big-endian, like the
/// embedded engine's commit counter.
pub fn cursor(i: usize) -> Bytes {
    Bytes::copy_from_slice(&(i as u64 + 1).to_be_bytes())
}

/// Inbox entry `i`'s message: id `1000 + i`, in one of two groups.
pub fn message(i: usize) -> pb::Message {
    pb::Message {
        conversation: Some(ConversationId::group(1 + (i % 2) as u64).to_proto()),
        message_id: 1000 + i as u64,
        sender: 5,
        body: format!("message {i}"),
        kind: pb::MessageKind::Text as i32,
        ..pb::Message::default()
    }
}

pub fn deliver(i: usize) -> pb::Deliver {
    pb::Deliver {
        message: Some(message(i)),
        cursor: cursor(i),
    }
}
