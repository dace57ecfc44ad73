//! `Deliver` frames built from a shared, once-encoded message.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hanmadi_proto::deliver::{put_history_page, put_sync_batch};
use hanmadi_proto::{
    server_frame, ClientCodec, ConversationId, Deliver, DeliverError, FrameCodec, HistoryPage,
    Message, ServerFrame, SharedMessage, SyncBatch, MAX_CURSOR_LEN,
};
use proptest::prelude::*;
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder};

/// Strips the length prefix, checks it, and decodes the rest.
fn decode_frame(wire: &[u8]) -> ServerFrame {
    let (prefix, payload) = wire.split_at(4);
    assert_eq!(
        u32::from_be_bytes(prefix.try_into().unwrap()) as usize,
        payload.len()
    );
    ServerFrame::decode(payload).unwrap()
}

fn expected(message: &Message, cursor: &[u8]) -> ServerFrame {
    ServerFrame {
        req_id: 0,
        kind: Some(server_frame::Kind::Deliver(Deliver {
            message: Some(message.clone()),
            cursor: Bytes::copy_from_slice(cursor),
        })),
    }
}

/// Checks both builders for one message and cursor.
fn check(message: &Message, cursor: &[u8]) {
    let shared = SharedMessage::encode(message);
    let frame = shared.deliver_frame(cursor).unwrap();
    let contiguous = shared.deliver_contiguous(cursor).unwrap();
    assert_eq!(frame.to_bytes(), contiguous, "variants differ");
    assert_eq!(frame.remaining(), contiguous.len());
    assert_eq!(frame.message(), shared.as_bytes());
    assert_eq!(
        shared.deliver_header(cursor).unwrap().as_slice(),
        frame.header()
    );
    assert_eq!(decode_frame(&contiguous), expected(message, cursor));
}

#[test]
fn decodes_as_an_ordinary_deliver() {
    let direct = ConversationId::direct(3, 8);
    let message = common::text_message(direct, 1 << 62, "hello");
    for cursor_len in 0..=MAX_CURSOR_LEN {
        let cursor: Vec<u8> = (0..cursor_len as u8).collect();
        check(&message, &cursor);
    }
    check(&common::system_message(), &[1, 2, 3]);
    check(&Message::default(), &[]);
    check(&Message::default(), &[9; 12]);
}

#[test]
fn multi_byte_lengths() {
    // Bodies around the 1-, 2- and 3-byte varint boundaries of every length.
    for body_len in [100, 110, 127, 128, 16_250, 16_383, 16_384, 70_000] {
        let message = common::text_message(ConversationId::group(4), 77, &"x".repeat(body_len));
        check(&message, &[0, 0, 0, 0, 0, 0, 0, 1]);
    }
}

#[test]
fn cursor_longer_than_the_cap_is_refused() {
    let shared = SharedMessage::encode(&common::system_message());
    let cursor = [0; MAX_CURSOR_LEN + 1];
    assert_eq!(
        shared.deliver_frame(&cursor).unwrap_err(),
        DeliverError::CursorTooLong {
            len: MAX_CURSOR_LEN + 1,
            max: MAX_CURSOR_LEN
        }
    );
    assert!(shared.deliver_contiguous(&cursor).is_err());
}

#[test]
fn vectored_chunks_are_header_then_shared_message() {
    let shared = SharedMessage::encode(&common::system_message());
    let frame = shared.deliver_frame(&[5; 8]).unwrap();
    let mut slices = [IoSlice::new(&[]); 4];
    assert_eq!(frame.chunks_vectored(&mut slices), 2);
    assert_eq!(&*slices[0], frame.header());
    assert_eq!(&*slices[1], &shared.as_bytes()[..]);
    // The shared part is the same allocation, not a copy.
    assert_eq!(slices[1].as_ptr(), shared.as_bytes().as_ptr());

    let mut one = [IoSlice::new(&[])];
    assert_eq!(frame.chunks_vectored(&mut one), 1);
    assert_eq!(frame.chunks_vectored(&mut []), 0);
}

#[test]
fn partial_writes_advance_through_both_parts() {
    let shared = SharedMessage::encode(&common::text_message(
        ConversationId::direct(1, 2),
        5,
        "partial",
    ));
    let whole = shared.deliver_contiguous(&[7; 10]).unwrap();
    // Consume the frame in every step size, as a socket taking a few bytes
    // per write would.
    for step in 1..=whole.len() {
        let mut frame = shared.deliver_frame(&[7; 10]).unwrap();
        let mut written = Vec::new();
        while frame.has_remaining() {
            let mut slices = [IoSlice::new(&[]); 2];
            let filled = frame.chunks_vectored(&mut slices);
            let mut taken = 0;
            for slice in &slices[..filled] {
                let take = (step - taken).min(slice.len());
                written.extend_from_slice(&slice[..take]);
                taken += take;
            }
            frame.advance(taken);
        }
        assert_eq!(written, whole, "step {step}");
    }
}

#[test]
fn put_into_a_buffer_copies_it_whole() {
    let shared = SharedMessage::encode(&common::system_message());
    let mut buf = BytesMut::new();
    buf.put(shared.deliver_frame(&[1]).unwrap());
    assert_eq!(buf.freeze(), shared.deliver_contiguous(&[1]).unwrap());
}

#[test]
fn frame_codec_writes_deliver_frames() {
    let message = common::system_message();
    let shared = SharedMessage::encode(&message);
    let mut buf = BytesMut::new();
    let mut codec = FrameCodec::default();
    codec
        .encode(shared.deliver_frame(&[3, 3]).unwrap(), &mut buf)
        .unwrap();
    let decoded = ClientCodec::default().decode(&mut buf).unwrap().unwrap();
    assert_eq!(decoded, expected(&message, &[3, 3]));

    let mut small = FrameCodec::new(8);
    assert!(small
        .encode(shared.deliver_frame(&[3, 3]).unwrap(), &mut buf)
        .is_err());
}

#[test]
fn shared_message_decodes_back() {
    let message = common::system_message();
    let shared = SharedMessage::encode(&message);
    assert_eq!(shared.decode().unwrap(), message);
    let again = SharedMessage::from_encoded(shared.clone().into_bytes());
    assert_eq!(again, shared);
}

proptest! {
    #[test]
    fn random_messages_and_cursors(
        message in common::arb_message(),
        cursor in proptest::collection::vec(any::<u8>(), 0..=MAX_CURSOR_LEN),
    ) {
        check(&message, &cursor);
    }

    /// Pages built from stored bytes are byte for byte what prost encodes
    /// for the same decoded frame.
    #[test]
    fn pages_from_stored_bytes_equal_prost_encoding(
        req_id in prop_oneof![Just(0u64), any::<u64>()],
        entries in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..=MAX_CURSOR_LEN), common::arb_message()),
            0..6,
        ),
        next in proptest::collection::vec(any::<u8>(), 0..=MAX_CURSOR_LEN),
        has_more in any::<bool>(),
    ) {
        let stored: Vec<(Vec<u8>, Bytes)> = entries
            .iter()
            .map(|(c, m)| (c.clone(), Bytes::from(m.encode_to_vec())))
            .collect();
        let mut out = BytesMut::new();
        put_sync_batch(
            &mut out,
            req_id,
            stored.iter().map(|(c, m)| (c.as_slice(), m.as_ref())),
            &next,
            has_more,
        )
        .unwrap();
        let want = ServerFrame {
            req_id,
            kind: Some(server_frame::Kind::SyncBatch(SyncBatch {
                messages: entries
                    .iter()
                    .map(|(c, m)| Deliver {
                        message: Some(m.clone()),
                        cursor: Bytes::copy_from_slice(c),
                    })
                    .collect(),
                next: Bytes::copy_from_slice(&next),
                has_more,
            })),
        };
        prop_assert_eq!(out[4..].to_vec(), want.encode_to_vec());
        prop_assert_eq!(decode_frame(&out), want);

        let mut out = BytesMut::new();
        put_history_page(&mut out, req_id, stored.iter().map(|(_, m)| m.as_ref()), has_more)
            .unwrap();
        let want = ServerFrame {
            req_id,
            kind: Some(server_frame::Kind::HistoryPage(HistoryPage {
                messages: entries.iter().map(|(_, m)| m.clone()).collect(),
                has_more,
            })),
        };
        prop_assert_eq!(out[4..].to_vec(), want.encode_to_vec());
        prop_assert_eq!(decode_frame(&out), want);
    }
}
