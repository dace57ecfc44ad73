//! Bad input against a real node: each gets a clear `Error` and a closed
//! connection, and the node keeps serving.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::{error_code, start, start_with_conn, Raw};
use hanmadi_gateway::conn::ConnConfig;
use hanmadi_gateway::ServerOptions;
use hanmadi_proto::pb::{self, client_frame, server_frame, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn assert_closed(raw: &mut Raw) {
    assert!(
        raw.recv().await.is_none(),
        "the server closes the connection"
    );
}

/// The node still answers a well-behaved client.
async fn still_serving(node: &common::Node, user: u64) {
    Raw::logged_in(node, &node.token(user)).await;
}

/// A new connection that says `Hello` with `token` is refused with `want`
/// and closed.
async fn hello_refused(node: &common::Node, token: &str, want: ErrorCode) {
    let mut raw = Raw::connect(node).await;
    let reply = raw.hello(token).await;
    assert_eq!(error_code(&reply), Some(want), "token {token:?}: {reply:?}");
    assert_closed(&mut raw).await;
}

/// A socket the node refused at accept: reset, which the client may see
/// already at connect, or at its first read.
async fn refused_at_accept(connected: std::io::Result<tokio::net::TcpStream>) {
    if let Ok(stream) = connected {
        assert_closed(&mut Raw::from_stream(stream)).await;
    }
}

/// The next frame is an `Error` with `want`, and then the server closes.
async fn error_then_closed(raw: &mut Raw, want: ErrorCode) {
    let reply = raw.recv().await.expect("an error frame");
    assert_eq!(error_code(&reply), Some(want), "{reply:?}");
    assert_closed(raw).await;
}

#[tokio::test]
async fn wrong_expired_and_forged_tokens() {
    let node = start(ServerOptions::default()).await;
    node.user(1).await;
    let expired = node.server.auth().issue(1, 1_000, Duration::from_secs(1));
    let forged = {
        let other = hanmadi_gateway::auth::TokenIssuer::new(b"some other secret");
        other.issue(1, common::now_ms(), Duration::from_secs(60))
    };
    for (token, want) in [
        ("not a token".to_owned(), ErrorCode::TokenInvalid),
        (expired, ErrorCode::TokenExpired),
        (forged, ErrorCode::TokenInvalid),
    ] {
        hello_refused(&node, &token, want).await;
    }
    // A token for an account that does not exist.
    hello_refused(&node, &node.token(42), ErrorCode::TokenInvalid).await;
    still_serving(&node, 1).await;
}

#[tokio::test]
async fn four_gib_length_prefix() {
    let node = start(ServerOptions::default()).await;
    node.user(1).await;
    let mut raw = Raw::connect(&node).await;
    raw.stream
        .write_all(&[0xff, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    error_then_closed(&mut raw, ErrorCode::FrameTooLarge).await;
    still_serving(&node, 1).await;
}

#[tokio::test]
async fn garbage_bytes() {
    let node = start(ServerOptions::default()).await;
    let token = node.user(1).await;
    let mut raw = Raw::logged_in(&node, &token).await;
    // A valid length, then bytes that are no protobuf.
    raw.stream
        .write_all(&[0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    error_then_closed(&mut raw, ErrorCode::MalformedFrame).await;
    still_serving(&node, 1).await;
}

#[tokio::test]
async fn handshake_never_completed_is_closed_at_the_deadline() {
    let node = start_with_conn(ConnConfig {
        handshake_timeout: Duration::from_millis(300),
        ..ConnConfig::default()
    })
    .await;
    node.user(1).await;
    let mut raw = Raw::connect(&node).await;
    // Half a frame, then silence.
    raw.stream.write_all(&[0, 0]).await.expect("write");
    let started = std::time::Instant::now();
    let reply = raw.recv().await.expect("an error frame");
    assert_eq!(error_code(&reply), Some(ErrorCode::HandshakeTimeout));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_closed(&mut raw).await;
    still_serving(&node, 1).await;
}

#[tokio::test]
async fn flood_past_the_rate_limit() {
    let node = start_with_conn(ConnConfig {
        rate_per_sec: 20,
        rate_burst: 20,
        ..ConnConfig::default()
    })
    .await;
    let token = node.user(1).await;
    let mut raw = Raw::connect(&node).await;
    raw.hello(&token).await;
    // 500 pings back to back: the first burst is answered, then the node
    // refuses with RATE_LIMITED and finally closes.
    let mut out = bytes::BytesMut::new();
    let codec = hanmadi_proto::ClientCodec::new(hanmadi_proto::DEFAULT_MAX_FRAME);
    for i in 0..500u64 {
        codec
            .encode_message(
                &pb::ClientFrame {
                    req_id: 100 + i,
                    kind: Some(client_frame::Kind::Ping(pb::Ping {})),
                },
                &mut out,
            )
            .expect("encode");
    }
    // The server may close while we are still writing.
    let _ = raw.stream.write_all(&out).await;
    let mut pongs = 0;
    let mut limited = 0;
    while let Some(f) = raw.recv().await {
        match (&f.kind, error_code(&f)) {
            (Some(server_frame::Kind::Pong(_)), _) => pongs += 1,
            (_, Some(ErrorCode::RateLimited)) => limited += 1,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert!((20..500).contains(&pongs), "pongs: {pongs}");
    assert!(limited > 0);
    still_serving(&node, 1).await;
}

/// The idle deadline of the idle-connection tests: short, so they end fast.
const IDLE: Duration = Duration::from_millis(300);

/// A node that closes connections idle for [`IDLE`].
async fn start_idle() -> common::Node {
    start_with_conn(ConnConfig {
        idle_timeout: IDLE,
        ..ConnConfig::default()
    })
    .await
}

#[tokio::test]
async fn idle_connection_is_closed() {
    let node = start_idle().await;
    let token = node.user(1).await;
    let mut raw = Raw::connect(&node).await;
    raw.hello(&token).await;
    let reply = raw.recv().await.expect("an error frame");
    assert_eq!(error_code(&reply), Some(ErrorCode::IdleTimeout));
    let mut rest = Vec::new();
    let _ = raw.stream.read_to_end(&mut rest).await;
    assert!(rest.is_empty());
}

/// Each frame moves the idle deadline: a client that pings more often than
/// the deadline stays connected across several of them, and is closed one
/// deadline after it stops.
#[tokio::test]
async fn a_connection_that_keeps_sending_is_not_idle() {
    let node = start_idle().await;
    let token = node.user(1).await;
    let mut raw = Raw::logged_in(&node, &token).await;
    let started = tokio::time::Instant::now();
    for req_id in 1..=10u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        raw.send(&pb::ClientFrame {
            req_id,
            kind: Some(client_frame::Kind::Ping(pb::Ping {})),
        })
        .await;
        let reply = raw.recv().await.expect("the connection stays open");
        assert!(
            matches!(reply.kind, Some(server_frame::Kind::Pong(_))),
            "{reply:?}"
        );
    }
    assert!(started.elapsed() >= 3 * IDLE);
    let reply = raw.recv().await.expect("an error frame");
    assert_eq!(error_code(&reply), Some(ErrorCode::IdleTimeout));
}

/// `Sync` over a full inbox costs what it reads: each page of ~56 KiB takes
/// four tokens more than its frame, so ten pages in a row overrun a bucket
/// of twenty that ten pings would not; and each page stops at the byte
/// budget however many entries it asked for.
#[tokio::test]
async fn large_pages_cost_the_rate_limit_by_their_size() {
    let node = start_with_conn(ConnConfig {
        rate_per_sec: 1,
        rate_burst: 20,
        ..ConnConfig::default()
    })
    .await;
    let token = node.user(1).await;
    node.user(2).await;
    let router = node.server.router();
    for i in 0..60 {
        router
            .send(
                2,
                hanmadi_router::SendRequest {
                    client_msg_id: format!("fill-{i}").into_bytes().into(),
                    to: hanmadi_router::Target::User(1),
                    body: "x".repeat(15_000),
                },
            )
            .await
            .expect("send");
    }
    let mut raw = Raw::logged_in(&node, &token).await;
    let mut pages = 0;
    let mut limited = 0;
    for req_id in 1..=10u64 {
        raw.send(&pb::ClientFrame {
            req_id,
            kind: Some(client_frame::Kind::Sync(pb::Sync {
                after: bytes::Bytes::new(),
                limit: 500,
            })),
        })
        .await;
        // Deliveries of the fill may come first; the answer is the frame
        // with this request's id.
        let reply = loop {
            let f = raw.recv().await.expect("an answer");
            if f.req_id == req_id {
                break f;
            }
        };
        match (&reply.kind, error_code(&reply)) {
            (Some(server_frame::Kind::SyncBatch(batch)), _) => {
                pages += 1;
                assert!(batch.has_more, "60 messages of 15 KB never fit one page");
                assert!(
                    (1..=4).contains(&batch.messages.len()),
                    "{} messages in one page",
                    batch.messages.len()
                );
            }
            (_, Some(ErrorCode::RateLimited)) => limited += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(
        pages >= 1 && limited > 0,
        "pages {pages}, refused {limited}"
    );
}

/// A client whose requests the server is slow to answer is waiting, not
/// idle: with its one request slot taken for longer than the idle deadline
/// (a read mark waiting for room in a full receipt queue), the connection
/// stays open and its next frame is answered once the server catches up.
#[tokio::test]
async fn a_connection_the_server_is_slow_to_answer_is_not_idle() {
    let node = start(ServerOptions {
        conn: ConnConfig {
            idle_timeout: IDLE,
            max_in_flight: 1,
            ..ConnConfig::default()
        },
        router: hanmadi_router::RouterConfig {
            receipts: hanmadi_router::ReceiptsConfig {
                max_pending: 1,
                linger: Duration::from_millis(1500),
            },
            ..hanmadi_router::RouterConfig::default()
        },
        ..ServerOptions::default()
    })
    .await;
    let token = node.user(1).await;
    node.user(2).await;
    let mut raw = Raw::logged_in(&node, &token).await;
    let read = |req_id, peer| pb::ClientFrame {
        req_id,
        kind: Some(client_frame::Kind::Read(pb::Read {
            conversation: Some(hanmadi_proto::ConversationId::direct(1, peer).into()),
            message_id: 1,
        })),
    };
    // The first fills the queue; the second waits for the writer, which
    // lingers 1.5 s, five idle deadlines.
    raw.send(&read(1, 1)).await;
    raw.send(&read(2, 2)).await;
    raw.send(&pb::ClientFrame {
        req_id: 3,
        kind: Some(client_frame::Kind::Ping(pb::Ping {})),
    })
    .await;
    let reply = tokio::time::timeout(Duration::from_secs(10), raw.recv())
        .await
        .expect("an answer within 10 s")
        .expect("the connection stays open");
    assert!(
        matches!(reply.kind, Some(server_frame::Kind::Pong(_))),
        "{reply:?}"
    );
}

#[tokio::test]
async fn connection_limits_per_user_and_per_address() {
    let node = start(ServerOptions {
        registry: hanmadi_gateway::registry::RegistryLimits {
            per_user: 2,
            per_ip: 4,
            outbound_bytes: 1 << 20,
            tarpit: std::time::Duration::from_secs(10),
        },
        ..ServerOptions::default()
    })
    .await;
    let token = node.user(1).await;
    node.user(2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(Raw::logged_in(&node, &token).await);
    }
    hello_refused(&node, &token, ErrorCode::TooManyConnections).await;
    // Two more sockets from this address fill its allowance of four; the
    // next is closed before it can say anything.
    let mut other = Raw::connect(&node).await;
    other.hello(&node.token(2)).await;
    held.push(other);
    let _fourth = Raw::connect(&node).await;
    let addr = node.server.tcp_addr().expect("tcp listener");
    refused_at_accept(tokio::net::TcpStream::connect(addr).await).await;
    let metrics = node.server.metrics().render();
    assert!(metrics.contains("too_many_from_address"), "{metrics}");
}

/// A socket to `node` from another loopback address.
async fn connect_from(
    node: &common::Node,
    source: [u8; 4],
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind((std::net::Ipv4Addr::from(source), 0).into())
        .expect("bind a loopback address");
    let addr = node.server.tcp_addr().expect("tcp listener");
    socket.connect(addr).await
}

#[tokio::test]
async fn an_address_that_keeps_breaking_the_protocol_is_shut_out_for_a_while() {
    let defaults = ServerOptions::default();
    let node = start(ServerOptions {
        registry: hanmadi_gateway::registry::RegistryLimits {
            tarpit: Duration::from_millis(300),
            ..defaults.registry
        },
        ..defaults
    })
    .await;
    let token = node.user(1).await;
    let limit = hanmadi_gateway::registry::STRIKE_LIMIT as usize;
    // Each oversized frame is refused, closes its connection and strikes
    // the address, until the address is shut out: its next connection is
    // held unread and unanswered (the tarpit, 300 ms here), then reset.
    // Strikes fade by one a second, so it takes the limit, or one or two
    // more.
    let mut refused = 0;
    loop {
        let Ok(stream) = connect_from(&node, [127, 0, 0, 2]).await else {
            break; // reset at accept
        };
        let mut raw = Raw::from_stream(stream);
        let _ = raw.stream.write_all(&[0xff; 4]).await;
        let sent = std::time::Instant::now();
        match raw.recv().await {
            Some(reply) => {
                assert_eq!(error_code(&reply), Some(ErrorCode::FrameTooLarge));
                assert_closed(&mut raw).await;
                refused += 1;
                assert!(refused <= limit + 3, "never shut out");
            }
            None => {
                // Held for the tarpit's time, not answered.
                let held = sent.elapsed();
                assert!(held >= Duration::from_millis(250), "reset after {held:?}");
                break;
            }
        }
    }
    assert!(refused >= limit, "shut out after {refused} strikes");
    // Other addresses are served as before.
    let mut other = Raw::from_stream(
        connect_from(&node, [127, 0, 0, 3])
            .await
            .expect("connect from another address"),
    );
    common::assert_welcome(&other.hello(&token).await);
    still_serving(&node, 1).await;
    let metrics = node.server.metrics().render();
    assert!(metrics.contains("address_struck"), "{metrics}");
}

/// Sends `n` messages "hi" to user 2, with req_ids from `first`.
async fn send_hi(raw: &mut Raw, first: u64, n: u64) {
    for req_id in first..first + n {
        raw.send(&pb::ClientFrame {
            req_id,
            kind: Some(client_frame::Kind::Send(pb::Send {
                client_msg_id: req_id.to_be_bytes().to_vec().into(),
                to: Some(pb::send::To::UserId(2)),
                body: "hi".into(),
            })),
        })
        .await;
    }
}

/// Of the next `n` answers to sends, how many were `SendAck`s (the rest
/// must be `RATE_LIMITED`); the user's own messages delivered meanwhile are
/// skipped.
async fn acked_of(raw: &mut Raw, n: usize) -> usize {
    let (mut acked, mut answered) = (0, 0);
    while answered < n {
        let f = raw.recv().await.expect("an answer");
        match (&f.kind, error_code(&f)) {
            (Some(server_frame::Kind::SendAck(_)), _) => acked += 1,
            (_, Some(ErrorCode::RateLimited)) => {}
            (Some(server_frame::Kind::Deliver(_)), _) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
        answered += 1;
    }
    acked
}

#[tokio::test]
async fn a_users_connections_share_one_allowance_of_sends() {
    let node = start_with_conn(ConnConfig {
        rate_per_sec: 1,
        rate_burst: 10,
        ..ConnConfig::default()
    })
    .await;
    let token = node.user(1).await;
    node.user(2).await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(Raw::logged_in(&node, &token).await);
    }
    // Ten sends on each connection: each within its own burst of ten,
    // forty in all against the user's ten.
    for (c, raw) in conns.iter_mut().enumerate() {
        send_hi(raw, 100 * (c as u64 + 1), 10).await;
    }
    let mut acked = 0;
    for raw in &mut conns {
        acked += acked_of(raw, 10).await;
    }
    // Ten from the burst, and one a second refilled while the test runs.
    assert!((10..=13).contains(&acked), "acked {acked} of 40");
    // Reconnecting does not refill it: of three sends on a new connection,
    // at most one (refilled meanwhile) goes through.
    drop(conns);
    let mut again = Raw::logged_in(&node, &token).await;
    send_hi(&mut again, 900, 3).await;
    let acked_again = acked_of(&mut again, 3).await;
    assert!(
        acked_again <= 1,
        "{acked_again} of 3 sends through after a reconnect"
    );
}

#[tokio::test]
async fn a_first_frame_other_than_hello_is_refused() {
    let node = start(ServerOptions::default()).await;
    node.user(1).await;
    let mut raw = Raw::connect(&node).await;
    raw.send(&pb::ClientFrame {
        req_id: 7,
        kind: Some(client_frame::Kind::Ping(pb::Ping::default())),
    })
    .await;
    error_then_closed(&mut raw, ErrorCode::Unauthenticated).await;
    still_serving(&node, 1).await;
}

#[tokio::test]
async fn a_hello_with_an_empty_or_long_device_id_is_refused() {
    let node = start(ServerOptions::default()).await;
    let token = node.user(1).await;
    for device_id in [String::new(), "d".repeat(65)] {
        let mut raw = Raw::connect(&node).await;
        raw.send(&pb::ClientFrame {
            req_id: 3,
            kind: Some(client_frame::Kind::Hello(pb::Hello {
                token: token.clone(),
                device_id: device_id.clone(),
            })),
        })
        .await;
        let reply = raw.recv().await.expect("an error frame");
        assert_eq!(
            error_code(&reply),
            Some(ErrorCode::InvalidArgument),
            "{device_id:?}: {reply:?}"
        );
        assert_eq!(reply.req_id, 3, "answers the Hello");
        assert_closed(&mut raw).await;
    }
    still_serving(&node, 1).await;
}

/// A stream that ends inside a frame (half its payload, then the client's
/// half-close) is closed without a reply: nothing can be answered.
#[tokio::test]
async fn a_stream_that_ends_inside_a_frame_is_closed_quietly() {
    let node = start(ServerOptions::default()).await;
    let token = node.user(1).await;
    let mut raw = Raw::logged_in(&node, &token).await;
    raw.stream
        .write_all(&[0, 0, 0, 10, 0x08, 0x01])
        .await
        .expect("write");
    raw.stream.shutdown().await.expect("half-close");
    assert_closed(&mut raw).await;
    still_serving(&node, 1).await;
}

/// Closes of `reason` the node has counted.
fn closes(node: &common::Node, reason: &'static str) -> u64 {
    node.server
        .metrics()
        .closes
        .get_or_create(&hanmadi_gateway::metrics::ReasonLabel { reason })
        .get()
}

/// Reads until the node closes the socket (a reset counts too).
async fn until_closed(stream: &mut tokio::net::TcpStream, what: &str) {
    let mut seen = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut seen))
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after 10 s"));
    if let Err(e) = end {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{what}: {e}");
    }
}

/// On the TLS port: a plaintext `Hello` fails the TLS handshake and is
/// closed, a socket that starts no handshake is closed at the handshake
/// deadline, and TLS clients are served throughout.
#[tokio::test]
async fn plaintext_and_silence_on_the_tls_port_are_closed() {
    let node = start_with_conn(ConnConfig {
        handshake_timeout: Duration::from_millis(300),
        ..ConnConfig::default()
    })
    .await;
    let token = node.user(1).await;
    let tls = node.server.tls_addr().expect("tls listener");
    let mut plain = tokio::net::TcpStream::connect(tls).await.expect("connect");
    let mut hello = bytes::BytesMut::new();
    hanmadi_proto::ClientCodec::new(hanmadi_proto::DEFAULT_MAX_FRAME)
        .encode_message(
            &pb::ClientFrame {
                req_id: 1,
                kind: Some(client_frame::Kind::Hello(pb::Hello {
                    token,
                    device_id: "plain".into(),
                })),
            },
            &mut hello,
        )
        .expect("encode");
    // The node may close before all of it is written.
    let _ = plain.write_all(&hello).await;
    until_closed(&mut plain, "plaintext").await;
    assert_eq!(closes(&node, "tls_handshake_failed"), 1);

    let mut silent = tokio::net::TcpStream::connect(tls).await.expect("connect");
    until_closed(&mut silent, "silence").await;
    assert_eq!(closes(&node, "handshake_timeout"), 1);

    let (client, _events) = node.connect(1, "tls", common::Transport::Tls).await;
    client
        .send(hanmadi_client::Target::User(1), "over TLS")
        .await
        .expect("a TLS client is served");
}
