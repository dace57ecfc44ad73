//! `/ws` against a real node, with a raw WebSocket client: subprotocol
//! negotiation, and bad input over WebSocket (each gets a clear `Error` and
//! a closed connection).

#[allow(dead_code)]
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{error_code, start, start_with_conn};
use futures::{SinkExt, StreamExt};
use hanmadi_gateway::conn::ConnConfig;
use hanmadi_gateway::ServerOptions;
use hanmadi_proto::pb::{self, client_frame, server_frame, ErrorCode};
use hanmadi_proto::prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// Opens `/ws` offering `protocol`; returns the socket and the subprotocol
/// the server chose.
async fn open(node: &common::Node, protocol: Option<&str>) -> (Ws, Option<String>) {
    let addr = node.server.http_addr().expect("http listener");
    let mut request = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("request");
    if let Some(p) = protocol {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().expect("header"));
    }
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("upgrade");
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (ws, chosen)
}

/// The next frame, binary or JSON; `None` once the server closed.
async fn recv(ws: &mut Ws) -> Option<(pb::ServerFrame, bool)> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s");
        match next {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
            Some(Ok(Message::Binary(b))) => {
                return Some((pb::ServerFrame::decode(b).expect("protobuf"), false))
            }
            Some(Ok(Message::Text(t))) => {
                return Some((serde_json::from_str(t.as_str()).expect("json frame"), true))
            }
            Some(Ok(_)) => {}
        }
    }
}

fn hello_json(token: &str) -> Message {
    Message::text(
        serde_json::json!({"req_id": "1", "hello": {"token": token, "device_id": "ws"}})
            .to_string(),
    )
}

/// A JSON WebSocket that said `Hello` with `token` and got `Welcome`.
async fn logged_in(node: &common::Node, token: &str) -> Ws {
    let (mut ws, _) = open(node, Some("hanmadi.v1.json")).await;
    ws.send(hello_json(token)).await.expect("send");
    let (welcome, _) = recv(&mut ws).await.expect("welcome");
    common::assert_welcome(&welcome);
    ws
}

/// A node with user 1, and a JSON WebSocket logged in as that user.
async fn node_and_logged_in() -> (common::Node, String, Ws) {
    let node = start(ServerOptions::default()).await;
    let token = node.user(1).await;
    let ws = logged_in(&node, &token).await;
    (node, token, ws)
}

async fn assert_closed(ws: &mut Ws) {
    assert!(recv(ws).await.is_none(), "the server closes the connection");
}

/// The next frame is an `Error` with `want`, and then the server closes.
async fn error_then_closed(ws: &mut Ws, want: ErrorCode) {
    let (reply, _) = recv(ws).await.expect("an error frame");
    assert_eq!(error_code(&reply), Some(want), "{reply:?}");
    assert_closed(ws).await;
}

#[tokio::test]
async fn the_subprotocol_picks_the_reply_encoding() {
    let node = start(ServerOptions::default()).await;
    node.user(1).await;
    // JSON asked for: a JSON Hello gets a JSON Welcome.
    let (mut ws, chosen) = open(&node, Some("hanmadi.v1.json")).await;
    assert_eq!(chosen.as_deref(), Some("hanmadi.v1.json"));
    ws.send(hello_json(&node.token(1))).await.expect("send");
    let (welcome, json) = recv(&mut ws).await.expect("welcome");
    assert!(json, "a text reply");
    assert!(matches!(welcome.kind, Some(server_frame::Kind::Welcome(ref w)) if w.user_id == 1));
    // Binary asked for (first known protocol in the offer): a JSON request
    // still works, the reply is binary.
    let (mut ws, chosen) = open(&node, Some("chat.v9, hanmadi.v1.proto, hanmadi.v1.json")).await;
    assert_eq!(chosen.as_deref(), Some("hanmadi.v1.proto"));
    ws.send(hello_json(&node.token(1))).await.expect("send");
    let (welcome, json) = recv(&mut ws).await.expect("welcome");
    assert!(!json, "a binary reply");
    common::assert_welcome(&welcome);
    // Nothing offered: binary.
    let (mut ws, chosen) = open(&node, None).await;
    assert_eq!(chosen, None);
    let hello = pb::ClientFrame {
        req_id: 1,
        kind: Some(client_frame::Kind::Hello(pb::Hello {
            token: node.token(1),
            device_id: "bin".into(),
        })),
    };
    ws.send(Message::Binary(hello.encode_to_vec().into()))
        .await
        .expect("send");
    let (welcome, json) = recv(&mut ws).await.expect("welcome");
    assert!(!json);
    common::assert_welcome(&welcome);
}

#[tokio::test]
async fn a_plain_get_of_ws_is_told_to_upgrade() {
    let node = start(ServerOptions::default()).await;
    let addr = node.server.http_addr().expect("http listener");
    let response = reqwest::get(format!("http://{addr}/ws"))
        .await
        .expect("request");
    assert_eq!(response.status(), reqwest::StatusCode::UPGRADE_REQUIRED);
    let body: serde_json::Value = response.json().await.expect("json error");
    assert_eq!(body["error"]["code"], ErrorCode::Unsupported as i32);
}

#[tokio::test]
async fn bad_tokens_over_websocket() {
    let node = start(ServerOptions::default()).await;
    node.user(1).await;
    let expired = node.server.auth().issue(1, 1_000, Duration::from_secs(1));
    for (token, want) in [
        ("not a token".to_owned(), ErrorCode::TokenInvalid),
        (expired, ErrorCode::TokenExpired),
        (node.token(42), ErrorCode::TokenInvalid),
    ] {
        let (mut ws, _) = open(&node, Some("hanmadi.v1.json")).await;
        ws.send(hello_json(&token)).await.expect("send");
        error_then_closed(&mut ws, want).await;
    }
}

#[tokio::test]
async fn malformed_json_closes_with_malformed_frame() {
    let (_node, _, mut ws) = node_and_logged_in().await;
    ws.send(Message::text("{\"req_id\": \"2\", \"send\": ["))
        .await
        .expect("send");
    error_then_closed(&mut ws, ErrorCode::MalformedFrame).await;
}

/// WebSocket frames that break the framing rules, written raw after a
/// valid `Hello`: each is a malformed frame, answered with
/// `MALFORMED_FRAME` and a close, not a bare close.
#[tokio::test]
async fn broken_websocket_framing_closes_with_malformed_frame() {
    use tokio::io::AsyncWriteExt as _;

    // A client frame: FIN and `first` (opcode and reserved bits), masked
    // with a zero key, so the payload goes as it is.
    fn raw(first: u8, payload: &[u8]) -> Vec<u8> {
        let len = u8::try_from(payload.len()).expect("short payload");
        [&[first, 0x80 | len, 0, 0, 0, 0][..], payload].concat()
    }
    let cases = [
        ("invalid UTF-8 in a text message", raw(0x81, b"{\xff\xfe}")),
        ("a reserved bit set", raw(0xC2, b"x")),
        ("an unknown data opcode", raw(0x83, b"x")),
        ("a continuation with nothing to continue", raw(0x80, b"x")),
        // Unmasked: the mask bit clear.
        ("an unmasked frame", vec![0x82, 1, b'x']),
    ];
    let (node, token, _) = node_and_logged_in().await;
    for (what, bytes) in cases {
        let mut ws = logged_in(&node, &token).await;
        ws.get_mut().write_all(&bytes).await.expect(what);
        let (reply, _) = recv(&mut ws)
            .await
            .unwrap_or_else(|| panic!("{what}: no error"));
        assert_eq!(
            error_code(&reply),
            Some(ErrorCode::MalformedFrame),
            "{what}"
        );
        assert_closed(&mut ws).await;
    }
}

#[tokio::test]
async fn oversized_messages_close_with_frame_too_large() {
    let node = start(ServerOptions::default()).await;
    node.user(1).await;
    // Over the frame limit but within what the WebSocket layer reads.
    let (mut ws, _) = open(&node, None).await;
    ws.send(Message::Binary(Bytes::from(vec![
        0u8;
        hanmadi_proto::DEFAULT_MAX_FRAME
            + 1
    ])))
    .await
    .expect("send");
    error_then_closed(&mut ws, ErrorCode::FrameTooLarge).await;
    // Past what the WebSocket layer accepts at all.
    let (mut ws, _) = open(&node, None).await;
    let huge = vec![0u8; hanmadi_proto::DEFAULT_MAX_FRAME * 8];
    // The server may close while this is still being written.
    let _ = ws.send(Message::Binary(Bytes::from(huge))).await;
    if let Some((reply, _)) = recv(&mut ws).await {
        assert_eq!(
            error_code(&reply),
            Some(ErrorCode::FrameTooLarge),
            "{reply:?}"
        );
        assert_closed(&mut ws).await;
    }
    // The node keeps serving.
    logged_in(&node, &node.token(1)).await;
}

#[tokio::test]
async fn a_silent_websocket_gets_the_handshake_timeout() {
    let node = start_with_conn(ConnConfig {
        handshake_timeout: Duration::from_millis(200),
        ..ConnConfig::default()
    })
    .await;
    let (mut ws, _) = open(&node, Some("hanmadi.v1.json")).await;
    let (reply, json) = recv(&mut ws).await.expect("an error");
    assert!(json);
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::HandshakeTimeout),
        "{reply:?}"
    );
    assert_closed(&mut ws).await;
}

#[tokio::test]
async fn deleting_the_account_closes_its_live_sockets() {
    let (node, token, mut ws) = node_and_logged_in().await;
    let addr = node.server.http_addr().expect("http listener");
    let deleted = reqwest::Client::new()
        .delete(format!("http://{addr}/v1/users/me"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), reqwest::StatusCode::NO_CONTENT);
    error_then_closed(&mut ws, ErrorCode::TokenInvalid).await;
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close() {
    let (_node, _, mut ws) = node_and_logged_in().await;
    ws.send(Message::Close(None)).await.expect("close");
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an answer within 5 s");
    assert!(
        matches!(reply, Some(Ok(Message::Close(_)))),
        "the server answers the close: {reply:?}"
    );
}

#[tokio::test]
async fn an_idle_websocket_is_closed_with_idle_timeout() {
    let node = start_with_conn(ConnConfig {
        idle_timeout: Duration::from_millis(300),
        ..ConnConfig::default()
    })
    .await;
    let token = node.user(1).await;
    let mut ws = logged_in(&node, &token).await;
    error_then_closed(&mut ws, ErrorCode::IdleTimeout).await;
}

/// 500 pings back to back over WebSocket: the burst is answered, then
/// the node refuses with `RATE_LIMITED` and finally closes.
#[tokio::test]
async fn a_websocket_flood_past_the_rate_limit_is_refused_then_closed() {
    let node = start_with_conn(ConnConfig {
        rate_per_sec: 20,
        rate_burst: 20,
        ..ConnConfig::default()
    })
    .await;
    let token = node.user(1).await;
    let mut ws = logged_in(&node, &token).await;
    let pings = (0..500u64).map(|i| {
        Ok(Message::text(
            serde_json::json!({"req_id": (100 + i).to_string(), "ping": {}}).to_string(),
        ))
    });
    // The server may close while the pings are still being written.
    let _ = ws.send_all(&mut futures::stream::iter(pings)).await;
    let (mut pongs, mut limited) = (0, 0);
    while let Some((f, _)) = recv(&mut ws).await {
        match (&f.kind, error_code(&f)) {
            (Some(server_frame::Kind::Pong(_)), _) => pongs += 1,
            (_, Some(ErrorCode::RateLimited)) => limited += 1,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert!((20..500).contains(&pongs), "pongs: {pongs}");
    assert!(limited > 0);
    logged_in(&node, &token).await;
}
