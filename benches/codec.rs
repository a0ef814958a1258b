//! The codec on the publish → deliver → ack path, next to the amq-protocol
//! crate (the codec lapin uses) doing the same work, so the choice of a
//! hand-written codec stays justified by a number:
//!
//!     cargo bench --bench codec
//!
//! Each iteration handles one 1 KiB persistent message: decode the
//! basic.publish method, content header and body frames; encode a
//! basic.deliver with its content; decode a basic.ack.

use std::hint::black_box;
use std::io::Cursor;

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};

use warren::protocol::method::{BasicAck, BasicPublish, encode_deliver};
use warren::protocol::{BasicProperties, Method, decode_frame, encode_content, encode_method};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, BasicProperties as AmqProperties, basic};

const BODY: [u8; 1024] = [b'x'; 1024];
const FRAME_MAX: u32 = 131_072;

/// The bytes a publisher sends for one message, encoded by our codec.
fn publish_wire() -> BytesMut {
    let mut buf = BytesMut::new();
    let publish: Method =
        BasicPublish { exchange: String::new(), routing_key: "task_queue".into(), ..Default::default() }.into();
    encode_method(&mut buf, 1, &publish);
    let props = BasicProperties { delivery_mode: Some(2), ..Default::default() }.to_bytes();
    encode_content(&mut buf, 1, &props, &BODY, FRAME_MAX);
    buf
}

fn ack_wire() -> BytesMut {
    let mut buf = BytesMut::new();
    encode_method(&mut buf, 1, &BasicAck { delivery_tag: 42, multiple: false }.into());
    buf
}

fn warren(c: &mut Criterion) {
    let publish = publish_wire();
    let ack = ack_wire();
    let props = BasicProperties { delivery_mode: Some(2), ..Default::default() }.to_bytes();
    let mut group = c.benchmark_group("warren");
    group.bench_function("decode publish+header+body", |b| {
        b.iter(|| {
            let mut buf = publish.clone();
            for _ in 0..3 {
                black_box(decode_frame(&mut buf, FRAME_MAX).unwrap());
            }
        })
    });
    let mut out = BytesMut::with_capacity(4096);
    group.bench_function("encode deliver+header+body", |b| {
        b.iter(|| {
            out.clear();
            warren::protocol::frame::encode_method_with(&mut out, 1, |buf| {
                encode_deliver(buf, "amq.ctag-0123456789", 42, false, "", "task_queue")
            });
            encode_content(&mut out, 1, &props, black_box(&BODY), FRAME_MAX);
            black_box(out.len());
        })
    });
    group.bench_function("decode ack", |b| {
        b.iter(|| {
            let mut buf = ack.clone();
            black_box(decode_frame(&mut buf, FRAME_MAX).unwrap());
        })
    });
    group.finish();
}

fn amq_protocol(c: &mut Criterion) {
    let publish = publish_wire();
    let ack = ack_wire();
    let mut group = c.benchmark_group("amq-protocol");
    group.bench_function("decode publish+header+body", |b| {
        b.iter(|| {
            let mut input: &[u8] = &publish;
            for _ in 0..3 {
                let (rest, frame) = parse_frame(input).unwrap();
                black_box(frame);
                input = rest;
            }
        })
    });
    let mut storage = vec![0u8; 8192];
    group.bench_function("encode deliver+header+body", |b| {
        b.iter(|| {
            let frames = [
                AMQPFrame::Method(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                        consumer_tag: "amq.ctag-0123456789".into(),
                        delivery_tag: 42,
                        redelivered: false,
                        exchange: "".into(),
                        routing_key: "task_queue".into(),
                    })),
                ),
                AMQPFrame::Header(
                    1,
                    AMQPContentHeader {
                        class_id: 60,
                        body_size: BODY.len() as u64,
                        properties: AmqProperties::default().with_delivery_mode(2),
                    },
                ),
                AMQPFrame::Body(1, black_box(&BODY).to_vec()),
            ];
            let mut ctx = WriteContext::from(Cursor::new(&mut storage[..]));
            for frame in &frames {
                ctx = gen_frame(frame)(ctx).unwrap();
            }
            black_box(ctx.position);
        })
    });
    group.bench_function("decode ack", |b| {
        b.iter(|| {
            let input: &[u8] = &ack;
            black_box(parse_frame(input).unwrap());
        })
    });
    group.finish();
}

criterion_group!(benches, warren, amq_protocol);
criterion_main!(benches);
