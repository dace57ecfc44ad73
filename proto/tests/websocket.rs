//! `WsFrames`: a WebSocket seen as the length-prefixed frame stream, over an
//! in-memory pipe between a real server-role and client-role WebSocket.

mod common;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use hanmadi_proto::pb::{self, client_frame, server_frame};
use hanmadi_proto::websocket::{Encoding, WsFrames};
use hanmadi_proto::{ClientCodec, ServerCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type ServerSide = WsFrames<DuplexStream, pb::ClientFrame, pb::ServerFrame>;

/// A server-side adapter writing `encoding`, and the raw client WebSocket.
async fn pair(encoding: Encoding) -> (ServerSide, WebSocketStream<DuplexStream>) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let config = WebSocketConfig::default().max_message_size(Some(1024));
    let server = WebSocketStream::from_raw_socket(a, Role::Server, Some(config)).await;
    let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
    (WsFrames::new(server, encoding), client)
}

async fn read_frame(server: &mut ServerSide) -> Result<Option<pb::ClientFrame>, String> {
    let codec = ServerCodec::new(1024);
    let mut buf = BytesMut::new();
    loop {
        if let Some(frame) = codec.decode_message(&mut buf).map_err(|e| e.to_string())? {
            return Ok(Some(frame));
        }
        if server.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Ok(None);
        }
    }
}

fn ping(req_id: u64) -> pb::ClientFrame {
    pb::ClientFrame {
        req_id,
        kind: Some(client_frame::Kind::Ping(pb::Ping {})),
    }
}

#[tokio::test]
async fn binary_and_text_messages_read_as_frames() {
    let (mut server, mut client) = pair(Encoding::Binary).await;
    let mut bin = BytesMut::new();
    ClientCodec::new(1024)
        .encode_message(&ping(1), &mut bin)
        .expect("encode");
    // The payload without its length prefix is the binary message.
    client
        .send(Message::Binary(bin.split_off(4).freeze()))
        .await
        .expect("send");
    client
        .send(Message::text(r#"{"req_id":"2","ping":{}}"#))
        .await
        .expect("send");
    client.send(Message::Close(None)).await.expect("close");
    assert_eq!(read_frame(&mut server).await, Ok(Some(ping(1))));
    assert_eq!(read_frame(&mut server).await, Ok(Some(ping(2))));
    assert_eq!(read_frame(&mut server).await, Ok(None));
}

#[tokio::test]
async fn frames_written_go_out_one_message_each_in_the_chosen_encoding() {
    for encoding in [Encoding::Binary, Encoding::Json] {
        let (mut server, mut client) = pair(encoding).await;
        let frames: Vec<pb::ServerFrame> = (1..=3)
            .map(|req_id| pb::ServerFrame {
                req_id,
                kind: Some(server_frame::Kind::Pong(pb::Pong {})),
            })
            .collect();
        let mut out = BytesMut::new();
        let codec = ServerCodec::new(1024);
        for f in &frames {
            codec.encode_message(f, &mut out).expect("encode");
        }
        // Written in uneven pieces: frames are cut at their boundaries.
        let (first, rest) = out.split_at(5);
        server.write_all(first).await.expect("write");
        server.write_all(rest).await.expect("write");
        server.flush().await.expect("flush");
        for want in &frames {
            let got = match client.next().await.expect("message").expect("ok") {
                Message::Binary(b) if encoding == Encoding::Binary => {
                    <pb::ServerFrame as prost::Message>::decode(b).expect("decode")
                }
                Message::Text(t) if encoding == Encoding::Json => {
                    serde_json::from_str(t.as_str()).expect("json")
                }
                other => panic!("unexpected message for {encoding:?}: {other:?}"),
            };
            assert_eq!(&got, want);
        }
    }
}

#[tokio::test]
async fn bad_messages_become_frames_the_codec_refuses() {
    let (mut server, mut client) = pair(Encoding::Json).await;
    client.send(Message::text("{not json")).await.expect("send");
    let err = read_frame(&mut server).await.expect_err("malformed");
    assert!(err.contains("invalid"), "{err}");

    let (mut server, mut client) = pair(Encoding::Json).await;
    client
        .send(Message::Binary(Bytes::from(vec![0u8; 4096])))
        .await
        .expect("send");
    let err = read_frame(&mut server).await.expect_err("too large");
    assert!(err.contains("large") || err.contains("exceeds"), "{err}");
}

/// Fuzzes the JSON decoder of WebSocket text messages: any text, and
/// valid JSON frames with bytes flipped or cut, reads as a frame or as a
/// refusal (which the codec turns into `MALFORMED_FRAME`), never a panic.
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// A text message: arbitrary, or a valid frame's JSON damaged.
    fn arb_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            (
                crate::common::arb_client_frame(),
                proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
                any::<prop::sample::Index>(),
            )
                .prop_map(|(frame, flips, cut)| {
                    let mut bytes = serde_json::to_vec(&frame).expect("frames print as JSON");
                    for (at, byte) in flips {
                        let at = at.index(bytes.len());
                        bytes[at] = byte;
                    }
                    bytes.truncate(cut.index(bytes.len() + 1).max(1));
                    String::from_utf8_lossy(&bytes).into_owned()
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_text_message_is_a_frame_or_a_refusal(text in arb_text()) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let (mut server, mut client) = pair(Encoding::Json).await;
                client.send(Message::text(text)).await.expect("send");
                let _ = read_frame(&mut server).await;
            });
        }
    }
}
