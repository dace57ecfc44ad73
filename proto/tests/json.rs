//! The canonical JSON mapping the WebSocket `hanmadi.v1.json` subprotocol
//! and the HTTP API speak.

use bytes::Bytes;
use hanmadi_proto::pb::{self, client_frame, send, server_frame};

#[test]
fn client_frames_parse_from_schema_names_and_json_names() {
    let text = r#"{"req_id":"7","send":{"client_msg_id":"bTE=","user_id":"18446744073709551615","body":"hi"}}"#;
    let frame: pb::ClientFrame = serde_json::from_str(text).expect("parse");
    let Some(client_frame::Kind::Send(s)) = frame.kind else {
        panic!("not a send: {frame:?}");
    };
    assert_eq!(frame.req_id, 7);
    assert_eq!(s.client_msg_id, Bytes::from_static(b"m1"));
    assert_eq!(s.to, Some(send::To::UserId(u64::MAX)));
    // lowerCamelCase names and numbers for 64-bit fields are accepted too.
    let camel: pb::ClientFrame =
        serde_json::from_str(r#"{"reqId":7,"sync":{"after":"","limit":5},"futureField":1}"#)
            .expect("parse camel case with an unknown field");
    assert_eq!(camel.req_id, 7);
    assert!(matches!(camel.kind, Some(client_frame::Kind::Sync(_))));
}

#[test]
fn server_frames_print_ids_as_strings_and_bytes_as_base64() {
    let frame = pb::ServerFrame {
        req_id: 0,
        kind: Some(server_frame::Kind::Error(pb::Error {
            code: pb::ErrorCode::NotAMember as i32,
            message: "no".into(),
            retry_after_ms: 0,
        })),
    };
    let v = serde_json::to_value(&frame).expect("print");
    assert_eq!(
        v,
        serde_json::json!({"error": {"code": "ERROR_CODE_NOT_A_MEMBER", "message": "no"}})
    );
    let deliver = pb::ServerFrame {
        req_id: 3,
        kind: Some(server_frame::Kind::Deliver(pb::Deliver {
            message: Some(pb::Message {
                message_id: 1 << 60,
                sender: 9,
                body: "hello".into(),
                kind: pb::MessageKind::Text as i32,
                ..Default::default()
            }),
            cursor: Bytes::from_static(&[0xff, 0, 1]),
        })),
    };
    let v = serde_json::to_value(&deliver).expect("print");
    assert_eq!(v["req_id"], "3");
    assert_eq!(v["deliver"]["message"]["message_id"], "1152921504606846976");
    assert_eq!(v["deliver"]["message"]["kind"], "MESSAGE_KIND_TEXT");
    assert_eq!(v["deliver"]["cursor"], "/wAB");
    let back: pb::ServerFrame = serde_json::from_value(v).expect("parse back");
    assert_eq!(back, deliver);
}
