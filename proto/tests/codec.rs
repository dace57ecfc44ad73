//! The TCP framing: limits, partial input, garbage, and round trips.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use hanmadi_proto::codec::{reserve_read, shrink_idle, IDLE_BUFFER_CAPACITY, READ_RESERVE};
use hanmadi_proto::{
    ClientCodec, ClientFrame, CodecError, ErrorCode, FrameCodec, ServerCodec, DEFAULT_MAX_FRAME,
};
use proptest::prelude::*;
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

/// Encodes frames back to back with the client's codec.
fn wire<'a>(frames: impl IntoIterator<Item = &'a ClientFrame>) -> Vec<u8> {
    let mut codec = ClientCodec::default();
    let mut out = BytesMut::new();
    for frame in frames {
        codec.encode(frame, &mut out).unwrap();
    }
    out.to_vec()
}

/// Decodes every complete frame in `buf`, as the gateway's read loop does.
fn drain(codec: &mut ServerCodec, buf: &mut BytesMut, out: &mut Vec<ClientFrame>) {
    while let Some(frame) = codec.decode(buf).unwrap() {
        out.push(frame);
    }
}

#[test]
fn every_client_frame_round_trips() {
    let frames = common::every_client_frame();
    let mut buf = BytesMut::from(&wire(&frames)[..]);
    let mut decoded = Vec::new();
    drain(&mut ServerCodec::default(), &mut buf, &mut decoded);
    assert_eq!(decoded, frames);
    assert!(buf.is_empty());
}

#[test]
fn every_server_frame_round_trips() {
    let frames = common::every_server_frame();
    let mut server = ServerCodec::default();
    let mut buf = BytesMut::new();
    for frame in &frames {
        server.encode(frame, &mut buf).unwrap();
    }
    let mut client = ClientCodec::default();
    for expected in &frames {
        assert_eq!(client.decode(&mut buf).unwrap().as_ref(), Some(expected));
    }
    assert_eq!(client.decode(&mut buf).unwrap(), None);
}

#[test]
fn frame_is_length_then_protobuf() {
    let frame = &common::every_client_frame()[1];
    let bytes = wire([frame]);
    let payload = frame.encode_to_vec();
    assert_eq!(bytes[..4], (payload.len() as u32).to_be_bytes());
    assert_eq!(bytes[4..], payload[..]);
}

#[test]
fn four_gib_prefix_is_refused_without_allocating() {
    let mut buf = BytesMut::new();
    buf.put_u32(u32::MAX);
    buf.put_slice(b"and some more");
    let capacity = buf.capacity();
    let err = ServerCodec::default().decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { len, max }
            if len == u32::MAX as usize && max == DEFAULT_MAX_FRAME),
        "{err:?}"
    );
    assert_eq!(err.error_code(), Some(ErrorCode::FrameTooLarge));
    assert_eq!(buf.capacity(), capacity);
    assert!(buf.capacity() < 64, "capacity {}", buf.capacity());
    assert_eq!(buf.len(), 17, "the buffer is left as it was");
}

#[test]
fn limit_is_inclusive_and_configurable() {
    let mut codec = FrameCodec::new(10);
    let mut buf = BytesMut::new();
    codec
        .encode(Bytes::from_static(&[7; 10]), &mut buf)
        .unwrap();
    assert_eq!(codec.decode(&mut buf).unwrap().unwrap(), &[7; 10][..]);

    let err = codec
        .encode(Bytes::from_static(&[7; 11]), &mut buf)
        .unwrap_err();
    assert!(matches!(
        err,
        CodecError::FrameTooLarge { len: 11, max: 10 }
    ));
    assert!(buf.is_empty(), "a refused frame writes nothing");

    buf.put_u32(11);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::FrameTooLarge { len: 11, max: 10 })
    ));
}

#[test]
fn header_reserves_exactly_the_announced_frame() {
    let mut buf = BytesMut::new();
    buf.put_u32(10_000);
    let mut codec = FrameCodec::default();
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    assert!(buf.capacity() >= 10_004);
    assert!(buf.capacity() < 2 * 10_004, "capacity {}", buf.capacity());
}

#[test]
fn partial_header_reserves_nothing() {
    let mut buf = BytesMut::new();
    buf.put_slice(&[0, 0, 1]);
    let capacity = buf.capacity();
    assert_eq!(FrameCodec::default().decode(&mut buf).unwrap(), None);
    assert_eq!(buf.capacity(), capacity);
}

#[test]
fn empty_frame_decodes_as_frame_without_kind() {
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    let frame = ServerCodec::default().decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame, ClientFrame::default());
}

#[test]
fn malformed_payload_is_a_decode_error_and_is_consumed() {
    let mut buf = BytesMut::new();
    buf.put_u32(3);
    buf.put_slice(&[0xff, 0xff, 0xff]);
    let mut codec = ServerCodec::default();
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(matches!(err, CodecError::Decode(_)), "{err:?}");
    assert_eq!(err.error_code(), Some(ErrorCode::MalformedFrame));
    assert!(buf.is_empty());
}

#[test]
fn split_at_every_position_across_two_reads() {
    let frames = common::every_client_frame();
    let bytes = wire(&frames);
    for split in 0..=bytes.len() {
        let mut codec = ServerCodec::default();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for part in [&bytes[..split], &bytes[split..]] {
            reserve_read(&mut buf);
            buf.extend_from_slice(part);
            drain(&mut codec, &mut buf, &mut decoded);
            shrink_idle(&mut buf);
        }
        assert_eq!(decoded, frames, "split at {split}");
        assert!(buf.is_empty());
    }
}

#[test]
fn one_byte_reads() {
    let frames = common::every_client_frame();
    let bytes = wire(&frames);
    let mut codec = ServerCodec::default();
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for byte in bytes {
        buf.put_u8(byte);
        drain(&mut codec, &mut buf, &mut decoded);
        shrink_idle(&mut buf);
    }
    assert_eq!(decoded, frames);
    assert!(buf.is_empty());
}

#[test]
fn every_split_point_of_many_reads() {
    // Three reads, cut at every pair of positions.
    let frames = &common::every_client_frame()[..4];
    let bytes = wire(frames);
    for first in 0..=bytes.len() {
        for second in first..=bytes.len() {
            let mut codec = ServerCodec::default();
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            for part in [&bytes[..first], &bytes[first..second], &bytes[second..]] {
                buf.extend_from_slice(part);
                drain(&mut codec, &mut buf, &mut decoded);
            }
            assert_eq!(decoded, frames, "cuts at {first} and {second}");
        }
    }
}

#[test]
fn shrink_idle_releases_a_large_frames_room() {
    let big = ClientFrame {
        req_id: 1,
        kind: Some(hanmadi_proto::client_frame::Kind::Send(
            hanmadi_proto::pb::Send {
                client_msg_id: Bytes::from_static(b"id"),
                to: Some(hanmadi_proto::send::To::UserId(2)),
                body: "x".repeat(60_000),
            },
        )),
    };
    let small = &common::every_client_frame()[7];
    let bytes = wire([&big, small]);
    // The big frame, then the first 3 bytes of the small one's prefix.
    let cut = bytes.len() - small.encoded_len() - 1;

    let mut codec = ServerCodec::default();
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    buf.extend_from_slice(&bytes[..cut]);
    drain(&mut codec, &mut buf, &mut decoded);
    assert_eq!(decoded.len(), 1);
    assert_eq!(buf.len(), 3);

    shrink_idle(&mut buf);
    assert!(buf.capacity() <= IDLE_BUFFER_CAPACITY, "{}", buf.capacity());

    buf.extend_from_slice(&bytes[cut..]);
    drain(&mut codec, &mut buf, &mut decoded);
    assert_eq!(decoded, vec![big, small.clone()]);

    shrink_idle(&mut buf);
    reserve_read(&mut buf);
    assert!(buf.capacity() <= READ_RESERVE + 64, "{}", buf.capacity());
}

#[test]
fn shrink_idle_keeps_a_large_frame_in_progress() {
    let mut buf = BytesMut::new();
    buf.put_u32(50_000);
    buf.put_slice(&[0; 100]);
    assert_eq!(FrameCodec::default().decode(&mut buf).unwrap(), None);
    let capacity = buf.capacity();
    shrink_idle(&mut buf);
    assert_eq!(buf.capacity(), capacity);
    assert_eq!(buf.len(), 104);
}

#[test]
fn stream_ending_inside_a_frame_is_an_error() {
    let bytes = wire(&common::every_client_frame()[..2]);
    let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
    let mut codec = ServerCodec::default();
    assert!(codec.decode_eof(&mut buf).unwrap().is_some());
    assert!(matches!(codec.decode_eof(&mut buf), Err(CodecError::Io(_))));
}

#[tokio::test]
async fn framed_over_a_one_byte_pipe() {
    // A duplex whose buffer holds one byte hands the reader one byte at a time.
    let (client_io, server_io) = tokio::io::duplex(1);
    let frames = common::every_client_frame();
    let sent = frames.clone();
    let writer = tokio::spawn(async move {
        let mut sink = FramedWrite::new(client_io, ClientCodec::default());
        for frame in sent {
            sink.send(frame).await.unwrap();
        }
    });
    let received: Vec<ClientFrame> = FramedRead::new(server_io, ServerCodec::default())
        .map(Result::unwrap)
        .collect()
        .await;
    writer.await.unwrap();
    assert_eq!(received, frames);
}

#[tokio::test]
async fn framed_stops_on_an_oversized_frame() {
    let (mut client_io, server_io) = tokio::io::duplex(64);
    tokio::io::AsyncWriteExt::write_all(&mut client_io, &[0xff, 0xff, 0xff, 0xff, 1, 2])
        .await
        .unwrap();
    let mut frames = FramedRead::new(server_io, ClientCodec::new(1024));
    assert!(matches!(
        frames.next().await,
        Some(Err(CodecError::FrameTooLarge { max: 1024, .. }))
    ));
    drop(client_io);
    assert!(frames.next().await.is_none());
}

#[test]
fn message_to_bytes_matches_the_encoder() {
    let frame = &common::every_server_frame()[3];
    let shared = FrameCodec::default().message_to_bytes(frame).unwrap();
    let mut buf = BytesMut::new();
    ServerCodec::default()
        .encode(frame.clone(), &mut buf)
        .unwrap();
    assert_eq!(shared, buf.freeze());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for max in [16, 1024, DEFAULT_MAX_FRAME] {
            let mut server = ServerCodec::new(max);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = server.decode(&mut buf) {}
            let mut client = ClientCodec::new(max);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = client.decode(&mut buf) {}
            let _ = client.decode_eof(&mut buf);
        }
    }

    #[test]
    fn random_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::new();
        buf.put_u32(payload.len() as u32);
        buf.put_slice(&payload);
        let mut copy = buf.clone();
        let _ = ServerCodec::default().decode(&mut buf);
        let _ = ClientCodec::default().decode(&mut copy);
    }

    #[test]
    fn truncated_frames_decode_a_prefix_and_never_panic(
        frames in proptest::collection::vec(common::arb_client_frame(), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = wire(&frames);
        let cut = cut.index(bytes.len() + 1);
        let mut buf = BytesMut::from(&bytes[..cut]);
        let mut codec = ServerCodec::default();
        let mut decoded = Vec::new();
        drain(&mut codec, &mut buf, &mut decoded);
        prop_assert!(decoded.len() <= frames.len());
        prop_assert_eq!(&decoded[..], &frames[..decoded.len()]);
        if cut < bytes.len() {
            prop_assert!(decoded.len() < frames.len());
        }
        let _ = codec.decode_eof(&mut buf);
    }

    #[test]
    fn random_frames_round_trip_across_random_reads(
        frames in proptest::collection::vec(common::arb_client_frame(), 1..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let bytes = wire(&frames);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut codec = ServerCodec::default();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut start = 0;
        for end in cuts {
            reserve_read(&mut buf);
            buf.extend_from_slice(&bytes[start..end]);
            start = end;
            drain(&mut codec, &mut buf, &mut decoded);
            shrink_idle(&mut buf);
        }
        prop_assert_eq!(decoded, frames);
    }
}
