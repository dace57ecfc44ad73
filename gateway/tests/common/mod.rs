//! A real node on 127.0.0.1:0 over a real embedded store, and a raw frame
//! client for abuse tests.

use std::time::Duration;

use bytes::BytesMut;
use hanmadi_gateway::conn::ConnConfig;
use hanmadi_gateway::{Listeners, Server, ServerOptions};
use hanmadi_proto::pb::{self, client_frame, server_frame};
use hanmadi_proto::websocket::Encoding;
use hanmadi_proto::ClientCodec;
use hanmadi_storage::backend::fjall::{FjallBackend, FjallOptions};
use hanmadi_storage::chat::UserRecord;
use hanmadi_storage::embedded::{EmbeddedKv, EmbeddedOptions};
use hanmadi_storage::{ChatStore, StoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type Kv = EmbeddedKv<FjallBackend>;

/// The token secret of every test node.
pub const SECRET: &[u8] = b"test secret, not for production";

/// How a test client reaches the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // each test binary uses some of them
pub enum Transport {
    Tcp,
    Tls,
    Ws(Encoding),
    Wss(Encoding),
}

pub struct Node {
    pub server: Server<Kv>,
    pub _dir: tempfile::TempDir,
    /// The TLS listener's certificate (trusted by the test clients).
    pub cert: std::path::PathBuf,
}

pub async fn start(options: ServerOptions) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    hanmadi_gateway::tls::generate_self_signed(&["localhost".into()], &cert, &key)
        .expect("generate certificate");
    let tls_config = hanmadi_gateway::tls::server_config(&cert, &key).expect("tls config");
    let tls = TcpListener::bind("127.0.0.1:0").await.expect("bind tls");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let https = TcpListener::bind("127.0.0.1:0").await.expect("bind https");
    let backend = FjallBackend::open(dir.path(), FjallOptions::default()).expect("open fjall");
    let kv = EmbeddedKv::with_backend(backend, EmbeddedOptions::default()).expect("engine");
    let store = ChatStore::new(kv, StoreConfig::single_node());
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let options = ServerOptions {
        secret: SECRET.to_vec(),
        ..options
    };
    let server = Server::start(
        store,
        Listeners {
            tcp: Some(tcp),
            tls: Some((tls, tls_config.clone())),
            http: Some(http),
            https: Some((https, tls_config)),
            link: None,
        },
        options,
    );
    Node {
        server,
        _dir: dir,
        cert,
    }
}

/// A node with the default options but for the connection settings.
pub async fn start_with_conn(conn: ConnConfig) -> Node {
    start(ServerOptions {
        conn,
        ..ServerOptions::default()
    })
    .await
}

impl Node {
    pub async fn user(&self, id: u64) -> String {
        self.server
            .router()
            .store()
            .create_user(
                id,
                &UserRecord {
                    username: format!("user{id}"),
                    ..UserRecord::default()
                },
            )
            .await
            .expect("create user");
        self.token(id)
    }

    /// Creates the users `members` and a group `name` of them, owned by the
    /// first; returns the group's id.
    pub async fn group_of(&self, name: &str, members: &[u64]) -> u64 {
        for &u in members {
            self.user(u).await;
        }
        let (owner, others) = members.split_first().expect("an owner");
        let (group, _) = self
            .server
            .router()
            .create_group(*owner, name.into(), others.to_vec())
            .await
            .expect("group");
        group
    }

    /// A client configuration for `user` over TCP or TLS.
    pub fn client_config(
        &self,
        user: u64,
        device: &str,
        transport: Transport,
    ) -> hanmadi_client::ClientConfig {
        let s = &self.server;
        let addr = match transport {
            Transport::Tcp => s.tcp_addr(),
            Transport::Tls => s.tls_addr(),
            Transport::Ws(_) => s.http_addr(),
            Transport::Wss(_) => s.https_addr(),
        }
        .expect("the transport's listener");
        let mut config =
            hanmadi_client::ClientConfig::new(addr.to_string(), self.token(user), device);
        if matches!(transport, Transport::Tls | Transport::Wss(_)) {
            let tls = hanmadi_gateway::tls::client_config_trusting(&self.cert).expect("trust");
            config = config.with_tls(hanmadi_client::TlsOptions {
                server_name: "localhost".into(),
                config: tls,
            });
        }
        if let Transport::Ws(encoding) | Transport::Wss(encoding) = transport {
            config = config.with_websocket(encoding);
        }
        config
    }

    /// Connects `user` through the client library.
    pub async fn connect(
        &self,
        user: u64,
        device: &str,
        transport: Transport,
    ) -> (hanmadi_client::Client, hanmadi_client::Deliveries) {
        hanmadi_client::Client::connect(self.client_config(user, device, transport))
            .await
            .expect("connect")
    }

    /// Connects each of `users`, one after the other, in order.
    pub async fn connect_each(
        &self,
        users: &[u64],
        device: &str,
        transport: Transport,
    ) -> Vec<(hanmadi_client::Client, hanmadi_client::Deliveries)> {
        let mut conns = Vec::with_capacity(users.len());
        for &u in users {
            conns.push(self.connect(u, device, transport).await);
        }
        conns
    }

    pub fn token(&self, id: u64) -> String {
        self.server
            .auth()
            .issue(id, now_ms(), Duration::from_secs(3600))
    }

    /// An HS256 JWT for `id`, as an application's backend mints one.
    #[allow(dead_code)] // each test binary uses some helpers
    pub fn jwt(&self, id: u64) -> String {
        let claims = serde_json::json!({"sub": id.to_string(), "exp": now_ms() / 1000 + 3600});
        hanmadi_gateway::auth::sign_hs256_jwt(SECRET, &claims).expect("sign a JWT")
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A client that speaks frames by hand.
pub struct Raw {
    pub stream: TcpStream,
    codec: ClientCodec,
    buf: BytesMut,
}

impl Raw {
    pub async fn connect(node: &Node) -> Raw {
        let addr = node.server.tcp_addr().expect("tcp listener");
        Raw::from_stream(TcpStream::connect(addr).await.expect("connect"))
    }

    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw {
            stream,
            codec: ClientCodec::new(hanmadi_proto::DEFAULT_MAX_FRAME),
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, frame: &pb::ClientFrame) {
        let mut out = BytesMut::new();
        self.codec.encode_message(frame, &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    /// The next frame, or `None` once the server closed.
    pub async fn recv(&mut self) -> Option<pb::ServerFrame> {
        loop {
            if let Some(f) = self
                .codec
                .decode_message(&mut self.buf)
                .expect("server frame")
            {
                return Some(f);
            }
            match tokio::time::timeout(Duration::from_secs(10), self.stream.read_buf(&mut self.buf))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => panic!("no frame from the server within 10 s"),
            }
        }
    }

    /// Connects and says `Hello` with `token`; asserts the reply is `Welcome`.
    pub async fn logged_in(node: &Node, token: &str) -> Raw {
        let mut raw = Raw::connect(node).await;
        let w = raw.hello(token).await;
        assert_welcome(&w);
        raw
    }

    pub async fn hello(&mut self, token: &str) -> pb::ServerFrame {
        self.send(&pb::ClientFrame {
            req_id: 1,
            kind: Some(client_frame::Kind::Hello(pb::Hello {
                token: token.to_owned(),
                device_id: "raw".into(),
            })),
        })
        .await;
        self.recv().await.expect("a reply to Hello")
    }
}

/// Asserts that `frame` is a `Welcome`.
#[track_caller]
pub fn assert_welcome(frame: &pb::ServerFrame) {
    assert!(
        matches!(frame.kind, Some(server_frame::Kind::Welcome(_))),
        "got {frame:?}"
    );
}

/// The error code of an `Error` frame.
pub fn error_code(frame: &pb::ServerFrame) -> Option<pb::ErrorCode> {
    match &frame.kind {
        Some(server_frame::Kind::Error(e)) => pb::ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}
