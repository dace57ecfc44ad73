//! Frames shared by the integration tests: one of every kind, and proptest
//! strategies for random ones.

#![allow(dead_code)]

use bytes::Bytes;
use hanmadi_proto::pb::{self, send};
use hanmadi_proto::{
    client_frame, server_frame, Ack, ClientFrame, ConversationId, Deliver, Error, ErrorCode, Hello,
    History, HistoryPage, MembershipChange, Message, MessageKind, Ping, Pong, Read, SendAck,
    ServerFrame, SyncBatch, Welcome,
};
use proptest::prelude::*;

pub fn text_message(conversation: ConversationId, message_id: u64, body: &str) -> Message {
    Message {
        conversation: Some(conversation.into()),
        message_id,
        sender: 42,
        client_msg_id: Bytes::from_static(b"0123456789abcdef"),
        sent_at: 1_760_000_000_000,
        kind: MessageKind::Text as i32,
        body: body.to_owned(),
        membership: None,
    }
}

pub fn system_message() -> Message {
    Message {
        conversation: Some(ConversationId::group(9).into()),
        message_id: 1 << 60,
        sender: 7,
        client_msg_id: Bytes::new(),
        sent_at: 1_760_000_000_001,
        kind: MessageKind::MembersAdded as i32,
        body: String::new(),
        membership: Some(MembershipChange {
            user_ids: vec![3, 4, 5],
        }),
    }
}

/// One client frame of every kind, plus one with no kind.
pub fn every_client_frame() -> Vec<ClientFrame> {
    use client_frame::Kind;
    let kinds = vec![
        Some(Kind::Hello(Hello {
            token: "token.abc".into(),
            device_id: "phone-1".into(),
        })),
        Some(Kind::Send(pb::Send {
            client_msg_id: Bytes::from_static(&[1; 16]),
            to: Some(send::To::UserId(77)),
            body: "hello there".into(),
        })),
        Some(Kind::Send(pb::Send {
            client_msg_id: Bytes::from_static(&[2; 16]),
            to: Some(send::To::GroupId(5)),
            body: "안녕하세요".into(),
        })),
        Some(Kind::Sync(pb::Sync {
            after: Bytes::from_static(&[0, 0, 0, 0, 0, 0, 1, 7]),
            limit: 100,
        })),
        Some(Kind::History(History {
            conversation: Some(ConversationId::direct(3, 8).into()),
            before: 123_456,
            limit: 50,
        })),
        Some(Kind::Ack(Ack {
            cursor: Bytes::from_static(&[9; 12]),
        })),
        Some(Kind::Read(Read {
            conversation: Some(ConversationId::group(5).into()),
            message_id: 99,
        })),
        Some(Kind::Ping(Ping {})),
        None,
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| ClientFrame {
            req_id: i as u64 * 1_000_003,
            kind,
        })
        .collect()
}

/// One server frame of every kind.
pub fn every_server_frame() -> Vec<ServerFrame> {
    use server_frame::Kind;
    let direct = ConversationId::direct(3, 8);
    let kinds = vec![
        Kind::Welcome(Welcome {
            user_id: 3,
            session_id: 1 << 40,
            heartbeat_ms: 30_000,
            max_frame_len: 65_536,
            max_body_len: 4_096,
            server_time: 1_760_000_000_000,
        }),
        Kind::SendAck(SendAck {
            client_msg_id: Bytes::from_static(&[1; 16]),
            conversation: Some(direct.into()),
            message_id: 555,
            sent_at: 1_760_000_000_000,
        }),
        Kind::Deliver(Deliver {
            message: Some(text_message(direct, 556, "hi")),
            cursor: Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 3]),
        }),
        Kind::SyncBatch(SyncBatch {
            messages: vec![
                Deliver {
                    message: Some(text_message(direct, 557, "one")),
                    cursor: Bytes::from_static(&[4]),
                },
                Deliver {
                    message: Some(system_message()),
                    cursor: Bytes::from_static(&[5]),
                },
            ],
            next: Bytes::from_static(&[5]),
            has_more: true,
        }),
        Kind::HistoryPage(HistoryPage {
            messages: vec![text_message(direct, 2, "b"), text_message(direct, 1, "a")],
            has_more: false,
        }),
        Kind::Pong(Pong {}),
        Kind::Error(Error {
            code: ErrorCode::RateLimited as i32,
            message: "slow down".into(),
            retry_after_ms: 250,
        }),
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| ServerFrame {
            req_id: i as u64,
            kind: Some(kind),
        })
        .collect()
}

/// A random client frame of a random kind.
pub fn arb_client_frame() -> impl Strategy<Value = ClientFrame> {
    use client_frame::Kind;
    let kind = prop_oneof![
        (".{0,20}", ".{0,10}")
            .prop_map(|(token, device_id)| Kind::Hello(Hello { token, device_id })),
        (
            proptest::collection::vec(any::<u8>(), 1..=64),
            any::<u64>(),
            any::<bool>(),
            ".{0,300}"
        )
            .prop_map(|(id, to, group, body)| Kind::Send(pb::Send {
                client_msg_id: Bytes::from(id),
                to: Some(if group {
                    send::To::GroupId(to)
                } else {
                    send::To::UserId(to)
                }),
                body,
            })),
        (proptest::collection::vec(any::<u8>(), 0..=16), any::<u32>()).prop_map(
            |(after, limit)| Kind::Sync(pb::Sync {
                after: Bytes::from(after),
                limit
            })
        ),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(group, before, limit)| {
            Kind::History(History {
                conversation: Some(ConversationId::group(group).into()),
                before,
                limit,
            })
        }),
        proptest::collection::vec(any::<u8>(), 0..=16).prop_map(|cursor| Kind::Ack(Ack {
            cursor: Bytes::from(cursor)
        })),
        Just(Kind::Ping(Ping {})),
    ];
    (any::<u64>(), kind).prop_map(|(req_id, kind)| ClientFrame {
        req_id,
        kind: Some(kind),
    })
}

/// A random message of either conversation kind.
pub fn arb_message() -> impl Strategy<Value = Message> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..=64),
        any::<u64>(),
        ".{0,400}",
    )
        .prop_map(
            |(a, b, group, message_id, sender, client_msg_id, sent_at, body)| {
                let conversation = if group {
                    ConversationId::group(a)
                } else {
                    ConversationId::direct(a, b)
                };
                Message {
                    conversation: Some(conversation.into()),
                    message_id,
                    sender,
                    client_msg_id: Bytes::from(client_msg_id),
                    sent_at,
                    kind: MessageKind::Text as i32,
                    body,
                    membership: None,
                }
            },
        )
}
