//! The frame codec and `Deliver` fan-out encoding.
//!
//! - `codec/send_100B`: one `ClientFrame::Send` with a 100-byte body,
//!   encoded (client side) and decoded (server side).
//! - `codec/decode_stream`: a read buffer holding 1,000 such frames, decoded
//!   to the end as the gateway's read loop does.
//! - `deliver/1000_recipients`: one message fanned out to 1,000 recipients,
//!   each with its own cursor: the per-recipient header alone, header plus
//!   shared bytes (what the gateway queues), one contiguous copy, and a full
//!   `ServerFrame` encode per recipient (the path the shared message avoids).
//!
//! Run: `cargo bench -p hanmadi-benches --bench codec`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hanmadi_proto::pb::{self, send};
use hanmadi_proto::{
    client_frame, server_frame, ClientCodec, ClientFrame, ConversationId, Deliver, FrameCodec,
    Message, MessageKind, ServerCodec, ServerFrame, SharedMessage,
};

const BODY_LEN: usize = 100;
const STREAM_FRAMES: usize = 1_000;
const RECIPIENTS: usize = 1_000;

fn send_frame(req_id: u64) -> ClientFrame {
    ClientFrame {
        req_id,
        kind: Some(client_frame::Kind::Send(pb::Send {
            client_msg_id: Bytes::from_static(&[0xA5; 16]),
            to: Some(send::To::GroupId(1_234_567)),
            body: "a".repeat(BODY_LEN),
        })),
    }
}

fn message() -> Message {
    Message {
        conversation: Some(ConversationId::group(1_234_567).into()),
        message_id: 0x0123_4567_89AB_CDEF,
        sender: 987_654_321,
        client_msg_id: Bytes::from_static(&[0xA5; 16]),
        sent_at: 1_760_000_000_000,
        kind: MessageKind::Text as i32,
        body: "a".repeat(BODY_LEN),
        membership: None,
    }
}

/// An 8-byte cursor per recipient, like the embedded engine's.
fn cursors() -> Vec<[u8; 8]> {
    (0..RECIPIENTS as u64)
        .map(|i| (1_000_000 + i).to_be_bytes())
        .collect()
}

fn expect<T, E: std::fmt::Debug>(result: Result<T, E>) -> T {
    result.expect("benchmark inputs are valid")
}

fn bench_send(c: &mut Criterion) {
    let frame = send_frame(7);
    let client = ClientCodec::default();
    let server = ServerCodec::default();
    let mut wire = BytesMut::new();
    expect(client.encode_message(&frame, &mut wire));
    let wire = wire.freeze();

    let mut group = c.benchmark_group("codec/send_100B");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode", |b| {
        let mut dst = BytesMut::with_capacity(1024);
        b.iter(|| {
            dst.clear();
            expect(client.encode_message(black_box(&frame), &mut dst));
            black_box(dst.len())
        });
    });
    group.bench_function("decode", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut src| black_box(expect(server.decode_message(&mut src))),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn bench_decode_stream(c: &mut Criterion) {
    let client = ClientCodec::default();
    let server = ServerCodec::default();
    let mut wire = BytesMut::new();
    for req_id in 0..STREAM_FRAMES as u64 {
        expect(client.encode_message(&send_frame(req_id), &mut wire));
    }
    let wire = wire.freeze();

    let mut group = c.benchmark_group("codec/decode_stream");
    group.throughput(Throughput::Elements(STREAM_FRAMES as u64));
    group.bench_function("1000_send_frames", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut src| {
                let mut count = 0;
                while let Some(frame) = expect(server.decode_message(&mut src)) {
                    black_box(frame);
                    count += 1;
                }
                assert_eq!(count, STREAM_FRAMES);
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn bench_deliver(c: &mut Criterion) {
    let message = message();
    let shared = SharedMessage::encode(&message);
    let cursors = cursors();
    let frames = FrameCodec::default();

    let mut group = c.benchmark_group("deliver/1000_recipients");
    group.throughput(Throughput::Elements(RECIPIENTS as u64));
    group.bench_function("header_only", |b| {
        b.iter(|| {
            for cursor in &cursors {
                black_box(expect(shared.deliver_header(black_box(cursor))));
            }
        });
    });
    group.bench_function("header_plus_shared", |b| {
        b.iter(|| {
            for cursor in &cursors {
                black_box(expect(shared.deliver_frame(black_box(cursor))));
            }
        });
    });
    group.bench_function("contiguous_copy", |b| {
        b.iter(|| {
            for cursor in &cursors {
                black_box(expect(shared.deliver_contiguous(black_box(cursor))));
            }
        });
    });
    group.bench_function("full_encode", |b| {
        b.iter(|| {
            for cursor in &cursors {
                let frame = ServerFrame {
                    req_id: 0,
                    kind: Some(server_frame::Kind::Deliver(Deliver {
                        message: Some(message.clone()),
                        cursor: Bytes::copy_from_slice(black_box(cursor)),
                    })),
                };
                black_box(expect(frames.message_to_bytes(&frame)));
            }
        });
    });
    group.finish();
}

criterion_group!(benches, bench_send, bench_decode_stream, bench_deliver);
criterion_main!(benches);
