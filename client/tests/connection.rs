//! `Client` against a scripted fake server over real loopback sockets:
//! handshake, answer routing, events, heartbeats, and every way a
//! connection ends.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{config, cursor, deliver, error, welcome, within, Listener, Peer};
use hanmadi_client::{
    new_client_msg_id, Client, ClientConfig, ClientError, ConversationId, Deliveries, ErrorAction,
    ErrorCode, Event, Target, TlsOptions,
};
use hanmadi_proto::{client_frame, pb, server_frame, CodecError, Welcome};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Connects a client to `listener` and plays the server's handshake.
async fn connect(
    listener: &Listener,
    config: ClientConfig,
    welcome: Welcome,
) -> (Client, Deliveries, Peer<TcpStream>) {
    let server = async {
        let mut peer = listener.accept().await;
        peer.handshake(welcome).await;
        peer
    };
    let (connected, peer) = tokio::join!(Client::connect(config), server);
    let (client, deliveries) = connected.expect("client connects");
    (client, deliveries, peer)
}

#[tokio::test]
async fn handshake_sends_hello_and_returns_welcome() {
    let listener = Listener::bind().await;
    let server = async {
        let mut peer = listener.accept().await;
        let hello = peer.handshake(welcome(42, 30_000)).await;
        (peer, hello)
    };
    let (connected, (_peer, hello)) =
        within(async { tokio::join!(Client::connect(config(&listener.addr)), server) }).await;
    let (client, _deliveries) = connected.expect("client connects");
    assert_eq!(hello.token, "token-1");
    assert_eq!(hello.device_id, "device-1");
    assert_eq!(client.user_id(), 42);
    assert_eq!(client.welcome().session_id, 77);
    assert_eq!(client.welcome().heartbeat_ms, 30_000);
    assert!(!client.is_closed());
}

#[tokio::test]
async fn a_refused_hello_is_a_give_up_error() {
    let listener = Listener::bind().await;
    let server = async {
        let mut peer = listener.accept().await;
        let (req_id, _) = peer.recv_kind().await;
        peer.send(req_id, error(ErrorCode::TokenExpired, "log in again"))
            .await;
    };
    let (connected, ()) =
        within(async { tokio::join!(Client::connect(config(&listener.addr)), server) }).await;
    let error = connected.expect_err("the token is refused");
    assert_eq!(error.action(), ErrorAction::GiveUp);
    let server_error = error.server_error().expect("a server error");
    assert_eq!(server_error.error_code(), Some(ErrorCode::TokenExpired));
    assert_eq!(server_error.message, "log in again");
}

#[tokio::test]
async fn a_server_that_hangs_up_during_the_handshake_is_worth_a_reconnect() {
    let listener = Listener::bind().await;
    let server = async {
        let mut peer = listener.accept().await;
        peer.recv_kind().await;
    };
    let (connected, ()) =
        within(async { tokio::join!(Client::connect(config(&listener.addr)), server) }).await;
    let error = connected.expect_err("no Welcome");
    assert!(matches!(error, ClientError::Io(_)), "{error:?}");
    assert_eq!(error.action(), ErrorAction::Reconnect);
}

#[tokio::test]
async fn answers_are_routed_by_req_id_whatever_their_order() {
    let listener = Listener::bind().await;
    let (client, _deliveries, mut peer) =
        within(connect(&listener, config(&listener.addr), welcome(42, 0))).await;
    let server = async {
        let mut requests = Vec::new();
        for _ in 0..3 {
            requests.push(peer.recv_kind().await);
        }
        let mut req_ids: Vec<u64> = requests.iter().map(|(req_id, _)| *req_id).collect();
        req_ids.sort_unstable();
        req_ids.dedup();
        assert_eq!(req_ids.len(), 3, "every request has its own req_id");
        // Newest first: the opposite of the order they were sent in.
        for (req_id, kind) in requests.into_iter().rev() {
            let answer = match kind {
                client_frame::Kind::Send(send) => server_frame::Kind::SendAck(pb::SendAck {
                    client_msg_id: send.client_msg_id,
                    conversation: Some(ConversationId::direct(42, 9).to_proto()),
                    message_id: 555,
                    sent_at: 1,
                }),
                client_frame::Kind::History(history) => {
                    assert_eq!(history.limit, 10);
                    server_frame::Kind::HistoryPage(pb::HistoryPage {
                        messages: vec![common::message(3)],
                        has_more: true,
                    })
                }
                client_frame::Kind::Ping(_) => server_frame::Kind::Pong(pb::Pong {}),
                other => panic!("unexpected request {other:?}"),
            };
            peer.send(req_id, answer).await;
        }
    };
    let id = new_client_msg_id();
    let (sent, page, round_trip, ()) = within(async {
        tokio::join!(
            client.send_with_id(id.clone(), Target::User(9), "hi"),
            client.history(ConversationId::group(1), 0, 10),
            client.ping(),
            server
        )
    })
    .await;
    let sent = sent.expect("send acknowledged");
    assert_eq!(sent.client_msg_id, id);
    assert_eq!(sent.message_id, 555);
    let page = page.expect("history answered");
    assert_eq!(page.messages[0].message_id, 1003);
    assert!(page.has_more);
    round_trip.expect("ping answered");
}

#[tokio::test]
async fn deliveries_and_refusals_reach_the_event_stream() {
    let listener = Listener::bind().await;
    let (client, mut deliveries, mut peer) =
        within(connect(&listener, config(&listener.addr), welcome(42, 0))).await;

    peer.send(0, server_frame::Kind::Deliver(deliver(0))).await;
    let Some(Event::Deliver {
        message,
        cursor: at,
    }) = within(deliveries.recv()).await
    else {
        panic!("expected a delivery");
    };
    assert_eq!(message.message_id, 1000);
    assert_eq!(at, cursor(0));

    let ack_req = within(client.ack(&at)).await.expect("ack queued");
    let (req_id, kind) = within(peer.recv_kind()).await;
    assert_eq!(req_id, ack_req);
    assert!(matches!(kind, client_frame::Kind::Ack(ack) if ack.cursor == cursor(0)));
    peer.send(req_id, error(ErrorCode::InvalidArgument, "bad cursor"))
        .await;
    let Some(Event::Refused { req_id, error }) = within(deliveries.recv()).await else {
        panic!("expected the refusal");
    };
    assert_eq!(req_id, ack_req);
    assert_eq!(error.error_code(), Some(ErrorCode::InvalidArgument));

    let read_req = within(client.read(ConversationId::group(2), 1000))
        .await
        .expect("read queued");
    let (req_id, kind) = within(peer.recv_kind()).await;
    assert_eq!(req_id, read_req);
    let client_frame::Kind::Read(read) = kind else {
        panic!("expected Read, got {kind:?}");
    };
    assert_eq!(read.message_id, 1000);
    assert_eq!(
        ConversationId::try_from(read.conversation.as_ref()),
        Ok(ConversationId::group(2))
    );
}

#[tokio::test]
async fn a_closing_error_ends_the_stream_and_fails_waiting_requests() {
    let listener = Listener::bind().await;
    let (client, mut deliveries, mut peer) =
        within(connect(&listener, config(&listener.addr), welcome(42, 0))).await;
    let sync = tokio::spawn({
        let client = client.clone();
        async move { client.sync(&[], 10).await }
    });
    let (_, kind) = within(peer.recv_kind()).await;
    assert!(matches!(kind, client_frame::Kind::Sync(_)));
    peer.send(0, error(ErrorCode::SlowConsumer, "queue full"))
        .await;
    drop(peer);

    let failed = within(sync)
        .await
        .expect("task ran")
        .expect_err("the sync was never answered");
    assert!(
        matches!(failed, ClientError::Closed { cause: Some(_) }),
        "{failed:?}"
    );
    assert_eq!(failed.action(), ErrorAction::Reconnect);
    assert_eq!(
        failed.server_error().and_then(|e| e.error_code()),
        Some(ErrorCode::SlowConsumer)
    );

    let Some(Event::Closed {
        error: Some(ClientError::Server(reason)),
    }) = within(deliveries.recv()).await
    else {
        panic!("expected Closed with the server's reason");
    };
    assert_eq!(reason.error_code(), Some(ErrorCode::SlowConsumer));
    assert!(within(deliveries.recv()).await.is_none(), "Closed is last");
    within(client.closed()).await;
    assert!(client.is_closed());
    assert!(matches!(
        client.ping().await,
        Err(ClientError::Closed { cause: Some(_) })
    ));
}

#[tokio::test]
async fn an_oversized_frame_from_the_server_closes_with_a_clear_error() {
    let listener = Listener::bind().await;
    let mut config = config(&listener.addr);
    config.max_frame = 1024;
    let (_client, mut deliveries, mut peer) =
        within(connect(&listener, config, welcome(42, 0))).await;
    // Only the length prefix: the client must refuse it before the body.
    peer.framed
        .get_mut()
        .write_all(&1_000_000u32.to_be_bytes())
        .await
        .expect("write prefix");
    let Some(Event::Closed {
        error: Some(ClientError::Codec(codec)),
    }) = within(deliveries.recv()).await
    else {
        panic!("expected Closed with a codec error");
    };
    assert!(
        matches!(
            codec.as_ref(),
            CodecError::FrameTooLarge {
                len: 1_000_000,
                max: 1024
            }
        ),
        "{codec:?}"
    );
    assert_eq!(
        ClientError::Codec(Arc::clone(&codec)).action(),
        ErrorAction::GiveUp
    );
}

#[tokio::test]
async fn a_dropped_connection_fails_pending_requests() {
    let listener = Listener::bind().await;
    let (client, mut deliveries, mut peer) =
        within(connect(&listener, config(&listener.addr), welcome(42, 0))).await;
    let send = tokio::spawn({
        let client = client.clone();
        async move { client.send(Target::Group(3), "lost?").await }
    });
    let (_, kind) = within(peer.recv_kind()).await;
    assert!(matches!(kind, client_frame::Kind::Send(_)));
    drop(peer);

    let failed = within(send)
        .await
        .expect("task ran")
        .expect_err("no answer came");
    assert!(
        matches!(failed, ClientError::Closed { cause: None }),
        "{failed:?}"
    );
    assert_eq!(failed.action(), ErrorAction::Reconnect);
    assert!(matches!(
        within(deliveries.recv()).await,
        Some(Event::Closed { error: None })
    ));
    assert!(matches!(
        client.history(ConversationId::group(3), 0, 1).await,
        Err(ClientError::Closed { .. })
    ));
    assert!(matches!(
        client.ack(&cursor(0)).await,
        Err(ClientError::Closed { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_an_idle_connection_alive_and_detect_a_silent_server() {
    let listener = Listener::bind().await;
    let (_client, mut deliveries, mut peer) =
        connect(&listener, config(&listener.addr), welcome(42, 1000)).await;
    let heartbeat = Duration::from_millis(1000);

    let start = Instant::now();
    let (req_id, kind) = peer.recv_kind().await;
    assert!(matches!(kind, client_frame::Kind::Ping(_)), "{kind:?}");
    let waited = start.elapsed();
    assert!(
        waited >= heartbeat && waited < heartbeat * 3 / 2,
        "{waited:?}"
    );
    peer.send(req_id, server_frame::Kind::Pong(pb::Pong {}))
        .await;
    let answered = Instant::now();

    // The next ping comes a heartbeat later; this time the server says
    // nothing at all.
    let (_, kind) = peer.recv_kind().await;
    assert!(matches!(kind, client_frame::Kind::Ping(_)), "{kind:?}");
    let waited = answered.elapsed();
    assert!(
        waited >= heartbeat && waited < heartbeat * 3 / 2,
        "{waited:?}"
    );

    // The pong to the heartbeat was not an event; the first event is the
    // end, two heartbeats after the last byte from the server.
    let event = deliveries.recv().await;
    assert!(
        matches!(
            event,
            Some(Event::Closed {
                error: Some(ClientError::Unresponsive(_))
            })
        ),
        "{event:?}"
    );
    let silent = answered.elapsed();
    assert!(
        silent >= heartbeat * 2 && silent < heartbeat * 5 / 2,
        "{silent:?}"
    );
    assert!(peer.recv().await.is_none(), "the client hung up");
}

#[tokio::test(start_paused = true)]
async fn heartbeats_also_flow_while_the_client_only_sends_unanswered_acks() {
    let listener = Listener::bind().await;
    let (client, _deliveries, mut peer) =
        connect(&listener, config(&listener.addr), welcome(42, 1000)).await;
    let start = Instant::now();
    // Acks every 400 ms keep the write side busy, but nothing comes back;
    // only a ping proves the server is there.
    let acks = tokio::spawn({
        let client = client.clone();
        async move {
            for i in 0..4 {
                tokio::time::sleep(Duration::from_millis(400)).await;
                client.ack(&cursor(i)).await.expect("ack queued");
            }
        }
    });
    let ping_at = loop {
        let (req_id, kind) = peer.recv_kind().await;
        if let client_frame::Kind::Ping(_) = kind {
            peer.send(req_id, server_frame::Kind::Pong(pb::Pong {}))
                .await;
            break start.elapsed();
        }
    };
    assert!(
        ping_at >= Duration::from_millis(1000) && ping_at < Duration::from_millis(1500),
        "{ping_at:?}"
    );
    acks.await.expect("acks sent");
    assert!(!client.is_closed());
}

#[tokio::test(start_paused = true)]
async fn traffic_both_ways_needs_no_ping_for_heartbeats_on_end() {
    let listener = Listener::bind().await;
    let (client, mut deliveries, mut peer) =
        connect(&listener, config(&listener.addr), welcome(42, 1000)).await;
    let start = Instant::now();
    let span = Duration::from_millis(3500);
    // Every 400 ms the server delivers and the client acknowledges, for
    // three heartbeats and more: each heartbeat deadline passes with fresh
    // traffic behind it, so none calls for a ping.
    let mut next = 0;
    while start.elapsed() < span {
        peer.send(0, server_frame::Kind::Deliver(deliver(next)))
            .await;
        let Some(Event::Deliver { cursor, .. }) = deliveries.recv().await else {
            panic!("a delivery");
        };
        client.ack(&cursor).await.expect("ack queued");
        let (_, kind) = peer.recv_kind().await;
        assert!(matches!(kind, client_frame::Kind::Ack(_)), "{kind:?}");
        next += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(next >= 8, "{next}");
    assert!(!client.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_request_times_out_but_the_connection_lives_on() {
    let listener = Listener::bind().await;
    let mut config = config(&listener.addr);
    config.request_timeout = Duration::from_secs(3);
    let (client, mut deliveries, mut peer) = connect(&listener, config, welcome(42, 0)).await;
    let start = Instant::now();
    let sync = tokio::spawn({
        let client = client.clone();
        async move { client.sync(&cursor(4), 10).await }
    });
    let (sync_req, kind) = peer.recv_kind().await;
    assert!(matches!(kind, client_frame::Kind::Sync(sync) if sync.after == cursor(4)));
    let failed = sync.await.expect("task ran").expect_err("never answered");
    assert!(matches!(failed, ClientError::Timeout(_)), "{failed:?}");
    assert_eq!(failed.action(), ErrorAction::Retry);
    assert!(start.elapsed() >= Duration::from_secs(3));

    // The late answer is dropped quietly; the connection still works.
    peer.send(
        sync_req,
        server_frame::Kind::SyncBatch(pb::SyncBatch::default()),
    )
    .await;
    let ping = tokio::spawn({
        let client = client.clone();
        async move { client.ping().await }
    });
    peer.answer_ping().await;
    ping.await.expect("task ran").expect("pong");
    assert!(
        tokio::time::timeout(Duration::from_secs(1), deliveries.recv())
            .await
            .is_err(),
        "a late answer is not an event"
    );
}

#[tokio::test]
async fn close_writes_what_is_queued_then_hangs_up() {
    let listener = Listener::bind().await;
    let (client, mut deliveries, mut peer) =
        within(connect(&listener, config(&listener.addr), welcome(42, 0))).await;
    within(client.ack(&cursor(7))).await.expect("ack queued");
    within(client.clone().close()).await;
    let (_, kind) = within(peer.recv_kind()).await;
    assert!(matches!(kind, client_frame::Kind::Ack(ack) if ack.cursor == cursor(7)));
    assert!(within(peer.recv()).await.is_none());
    assert!(matches!(
        within(deliveries.recv()).await,
        Some(Event::Closed { error: None })
    ));
    assert!(client.is_closed());
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let listener = Listener::bind().await;
    let (client, mut deliveries, mut peer) =
        within(connect(&listener, config(&listener.addr), welcome(42, 0))).await;
    let other = client.clone();
    drop(client);
    drop(other);
    assert!(within(peer.recv()).await.is_none());
    assert!(matches!(
        within(deliveries.recv()).await,
        Some(Event::Closed { error: None })
    ));
}

#[tokio::test]
async fn a_request_over_the_servers_frame_limit_fails_alone() {
    let listener = Listener::bind().await;
    let mut small = welcome(42, 0);
    small.max_frame_len = 200;
    let (client, _deliveries, mut peer) =
        within(connect(&listener, config(&listener.addr), small)).await;
    let failed = within(client.send(Target::User(9), "x".repeat(1000)))
        .await
        .expect_err("too large to send");
    assert!(matches!(failed, ClientError::Codec(_)), "{failed:?}");
    assert_eq!(failed.action(), ErrorAction::GiveUp);
    let bad_id = within(client.send_with_id(Bytes::new(), Target::User(9), "x")).await;
    assert!(matches!(bad_id, Err(ClientError::InvalidArgument(_))));

    // Nothing was sent; the connection still answers.
    let (pinged, ()) = within(async { tokio::join!(client.ping(), peer.answer_ping()) }).await;
    pinged.expect("pong");
}

#[tokio::test]
async fn an_unread_event_queue_closes_the_connection_as_a_slow_consumer() {
    let listener = Listener::bind().await;
    let mut config = config(&listener.addr);
    config.event_capacity = 2;
    let (client, mut deliveries, mut peer) =
        within(connect(&listener, config, welcome(42, 0))).await;
    for i in 0..5 {
        peer.send(0, server_frame::Kind::Deliver(deliver(i))).await;
    }
    within(client.closed()).await;
    for i in 0..2 {
        let Some(Event::Deliver { message, .. }) = within(deliveries.recv()).await else {
            panic!("expected delivery {i}");
        };
        assert_eq!(message.message_id, 1000 + i);
    }
    let event = within(deliveries.recv()).await;
    assert!(
        matches!(
            event,
            Some(Event::Closed {
                error: Some(ClientError::SlowConsumer { capacity: 2 })
            })
        ),
        "{event:?}"
    );
    assert!(within(peer.recv()).await.is_none());
}

#[tokio::test]
async fn handshake_runs_over_any_stream() {
    let (client_end, server_end) = tokio::io::duplex(4096);
    let server = async {
        let mut peer = Peer::new(server_end);
        peer.handshake(welcome(8, 0)).await;
        peer.answer_ping().await;
        peer
    };
    let client = async {
        let (client, _deliveries) = Client::handshake(client_end, config("in-memory"))
            .await
            .expect("handshake");
        assert_eq!(client.user_id(), 8);
        client.ping().await.expect("pong");
    };
    within(async { tokio::join!(client, server) }).await;
}

/// A self-signed certificate for `localhost` and rustls configs on the
/// ring provider: a server one, and a client one trusting it.
fn tls_configs() -> (rustls::ServerConfig, rustls::ClientConfig) {
    let certified =
        rcgen::generate_simple_self_signed(vec![String::from("localhost")]).expect("certificate");
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.into())
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("trust the certificate");
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, client)
}

#[tokio::test]
async fn speaks_tls_and_refuses_a_certificate_for_another_name() {
    let (server_config, client_config) = tls_configs();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let client_config = Arc::new(client_config);
    let listener = Listener::bind().await;

    let tls = |name: &str| {
        config(&listener.addr).with_tls(TlsOptions {
            server_name: name.to_owned(),
            config: Arc::clone(&client_config),
        })
    };
    let server = async {
        let stream = acceptor
            .accept(listener.accept_stream().await)
            .await
            .expect("TLS accept");
        let mut peer = Peer::new(stream);
        peer.handshake(welcome(42, 0)).await;
        peer.answer_ping().await;
        peer
    };
    let client = async {
        let (client, _deliveries) = Client::connect(tls("localhost")).await.expect("connects");
        client.ping().await.expect("pong over TLS");
    };
    within(async { tokio::join!(client, server) }).await;

    let server = async {
        // The client aborts the handshake; the server's side just fails.
        let _ = acceptor.accept(listener.accept_stream().await).await;
    };
    let (refused, ()) =
        within(async { tokio::join!(Client::connect(tls("elsewhere.example")), server) }).await;
    let error = refused.expect_err("the certificate names localhost only");
    assert!(matches!(error, ClientError::Tls(_)), "{error:?}");
    assert_eq!(error.action(), ErrorAction::GiveUp);

    let bad_name = Client::connect(tls("not a name")).await;
    assert!(matches!(bad_name, Err(ClientError::InvalidServerName(_))));
}
