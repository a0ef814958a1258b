//! The AMQP codec on its own: round trips (property tests), byte layouts
//! checked against the spec by hand, and hostile input.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use warren::protocol::method::*;
use warren::protocol::wire::{Reader, Wire, Writer};
use warren::protocol::{
    BasicProperties, DecodeError, FieldTable, FieldValue, Frame, Method, decode_frame, encode_content, encode_method,
};

fn short_string() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._:/ -]{0,40}"
}

fn bytes_value() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn field_value() -> impl Strategy<Value = FieldValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        any::<f32>().prop_filter("NaN never equals itself", |f| !f.is_nan()).prop_map(FieldValue::F32),
        any::<f64>().prop_filter("NaN never equals itself", |f| !f.is_nan()).prop_map(FieldValue::F64),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| FieldValue::Decimal { scale, value }),
        bytes_value().prop_map(FieldValue::LongStr),
        bytes_value().prop_map(FieldValue::ByteArray),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(FieldValue::Array),
            proptest::collection::vec((short_string(), inner), 0..6).prop_map(|e| FieldValue::Table(FieldTable(e))),
        ]
    })
}

fn field_table() -> impl Strategy<Value = FieldTable> {
    proptest::collection::vec((short_string(), field_value()), 0..8).prop_map(FieldTable)
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    let s = || proptest::option::of(short_string());
    (
        (
            s(),
            s(),
            proptest::option::of(field_table()),
            proptest::option::of(any::<u8>()),
            proptest::option::of(any::<u8>()),
        ),
        (s(), s(), s(), s(), proptest::option::of(any::<u64>())),
        (s(), s(), s(), s()),
    )
        .prop_map(|(a, b, c)| BasicProperties {
            content_type: a.0,
            content_encoding: a.1,
            headers: a.2,
            delivery_mode: a.3,
            priority: a.4,
            correlation_id: b.0,
            reply_to: b.1,
            expiration: b.2,
            message_id: b.3,
            timestamp: b.4,
            kind: c.0,
            user_id: c.1,
            app_id: c.2,
            cluster_id: c.3,
        })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        (short_string(), short_string(), any::<bool>(), any::<bool>()).prop_map(
            |(exchange, routing_key, mandatory, immediate)| {
                BasicPublish { reserved_1: 0, exchange, routing_key, mandatory, immediate }.into()
            }
        ),
        (short_string(), any::<u64>(), any::<bool>(), short_string(), short_string()).prop_map(
            |(consumer_tag, delivery_tag, redelivered, exchange, routing_key)| {
                BasicDeliver { consumer_tag, delivery_tag, redelivered, exchange, routing_key }.into()
            }
        ),
        (any::<u64>(), any::<bool>()).prop_map(|(delivery_tag, multiple)| BasicAck { delivery_tag, multiple }.into()),
        (any::<u64>(), any::<bool>(), any::<bool>()).prop_map(|(delivery_tag, multiple, requeue)| BasicNack {
            delivery_tag,
            multiple,
            requeue
        }
        .into()),
        (short_string(), any::<[bool; 5]>(), field_table()).prop_map(|(queue, f, arguments)| {
            QueueDeclare {
                reserved_1: 0,
                queue,
                passive: f[0],
                durable: f[1],
                exclusive: f[2],
                auto_delete: f[3],
                no_wait: f[4],
                arguments,
            }
            .into()
        }),
        (short_string(), short_string(), any::<[bool; 5]>(), field_table()).prop_map(
            |(exchange, kind, f, arguments)| {
                ExchangeDeclare {
                    reserved_1: 0,
                    exchange,
                    kind,
                    passive: f[0],
                    durable: f[1],
                    auto_delete: f[2],
                    internal: f[3],
                    no_wait: f[4],
                    arguments,
                }
                .into()
            }
        ),
        (field_table(), short_string(), bytes_value(), short_string()).prop_map(
            |(client_properties, mechanism, response, locale)| {
                ConnectionStartOk { client_properties, mechanism, response, locale }.into()
            }
        ),
        (any::<u16>(), short_string(), any::<u16>(), any::<u16>()).prop_map(
            |(reply_code, reply_text, class_id, method_id)| {
                ChannelClose { reply_code, reply_text, class_id, method_id }.into()
            }
        ),
        (any::<u32>(), any::<u16>(), any::<bool>()).prop_map(|(prefetch_size, prefetch_count, global)| BasicQos {
            prefetch_size,
            prefetch_count,
            global
        }
        .into()),
    ]
}

proptest! {
    #[test]
    fn field_tables_round_trip(table in field_table()) {
        let mut buf = BytesMut::new();
        table.write(&mut Writer::new(&mut buf));
        let mut reader = Reader::new(buf.freeze());
        prop_assert_eq!(FieldTable::read(&mut reader).unwrap(), table);
        prop_assert_eq!(reader.remaining(), 0);
    }

    #[test]
    fn properties_round_trip(props in properties()) {
        prop_assert_eq!(BasicProperties::decode(props.to_bytes()).unwrap(), props);
    }

    #[test]
    fn method_frames_round_trip(method in method(), channel in any::<u16>()) {
        let mut buf = BytesMut::new();
        encode_method(&mut buf, channel, &method);
        let frame = decode_frame(&mut buf, 0).unwrap().unwrap();
        prop_assert_eq!(frame, Frame::Method { channel, method });
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn content_splits_into_frames_that_reassemble(body in proptest::collection::vec(any::<u8>(), 0..20_000),
                                                   frame_max in 4096u32..9000, props in properties()) {
        let mut buf = BytesMut::new();
        let raw_props = props.to_bytes();
        encode_content(&mut buf, 3, &raw_props, &body, frame_max);
        let header = match decode_frame(&mut buf, frame_max).unwrap().unwrap() {
            Frame::Header { channel: 3, header } => header,
            other => panic!("expected a content header, got {other:?}"),
        };
        prop_assert_eq!(header.body_size, body.len() as u64);
        prop_assert_eq!(BasicProperties::decode(header.properties).unwrap(), props);
        let mut joined = Vec::new();
        while let Some(frame) = decode_frame(&mut buf, frame_max).unwrap() {
            match frame {
                Frame::Body { channel: 3, payload } => {
                    prop_assert!(payload.len() + 8 <= frame_max as usize);
                    joined.extend_from_slice(&payload);
                }
                other => panic!("expected a body frame, got {other:?}"),
            }
        }
        prop_assert_eq!(joined, body);
    }

    /// Whatever arrives, decoding returns a frame, "need more", or an error; never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = decode_frame(&mut buf, 131_072) {}
    }

    /// Every strict prefix of a valid frame is "need more bytes", never an error.
    #[test]
    fn prefixes_of_a_frame_are_incomplete(method in method()) {
        let mut full = BytesMut::new();
        encode_method(&mut full, 1, &method);
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            prop_assert_eq!(decode_frame(&mut part, 0), Ok(None));
        }
    }

    /// Valid frames with their method arguments cut short are syntax errors.
    #[test]
    fn truncated_arguments_are_syntax_errors(method in method(), cut in 1usize..8) {
        let mut payload = BytesMut::new();
        method.encode(&mut payload);
        let keep = payload.len().saturating_sub(cut).max(4);
        prop_assume!(keep < payload.len());
        let truncated = Method::decode(payload.freeze().slice(..keep));
        prop_assert!(matches!(&truncated, Err(e) if e.reply_code() == 502), "{:?}", truncated);
    }
}

fn frame_bytes(kind: u8, channel: u16, payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u8(kind);
    buf.put_u16(channel);
    buf.put_u32(payload.len() as u32);
    buf.put_slice(payload);
    buf.put_u8(0xCE);
    buf
}

#[test]
fn queue_declare_matches_the_spec_layout_byte_for_byte() {
    // class 50, method 10, ticket 0, shortstr "q", bits passive|exclusive|no-wait = 0b10101, empty table.
    let expected: &[u8] = &[0, 50, 0, 10, 0, 0, 1, b'q', 0b0001_0101, 0, 0, 0, 0];
    let method: Method =
        QueueDeclare { queue: "q".into(), passive: true, exclusive: true, no_wait: true, ..Default::default() }.into();
    let mut buf = BytesMut::new();
    method.encode(&mut buf);
    assert_eq!(&buf[..], expected);
    assert_eq!(Method::decode(Bytes::from_static(expected)).unwrap(), method);
}

#[test]
fn field_value_tags_follow_rabbitmq() {
    // 's' is a signed 16-bit integer in RabbitMQ's table grammar, 'l' a signed 64-bit one.
    let mut raw = BytesMut::new();
    raw.put_u32(0);
    for (key, tag, value) in [(b"a", b's', &[0xFF, 0xFE][..]), (b"b", b'l', &[0, 0, 0, 0, 0, 0, 0, 7][..])] {
        raw.put_u8(1);
        raw.put_slice(key);
        raw.put_u8(tag);
        raw.put_slice(value);
    }
    let len = (raw.len() - 4) as u32;
    raw[..4].copy_from_slice(&len.to_be_bytes());
    let table = FieldTable::read(&mut Reader::new(raw.freeze())).unwrap();
    assert_eq!(table.get("a"), Some(&FieldValue::I16(-2)));
    assert_eq!(table.get("b"), Some(&FieldValue::I64(7)));
}

#[test]
fn oversized_frame_is_refused_from_its_header_alone() {
    let mut buf = BytesMut::new();
    buf.put_u8(1);
    buf.put_u16(1);
    buf.put_u32(1_000_000);
    // Only the 7-byte header is buffered: the verdict must not wait for the payload.
    assert_eq!(decode_frame(&mut buf, 131_072), Err(DecodeError::FrameTooLarge { size: 1_000_008, max: 131_072 }));
}

#[test]
fn bad_frame_end_and_unknown_type_are_frame_errors() {
    let mut bad_end = frame_bytes(1, 0, &[0, 10, 0, 51]);
    let last = bad_end.len() - 1;
    bad_end[last] = 0xAB;
    let err = decode_frame(&mut bad_end, 0).unwrap_err();
    assert_eq!((err.clone(), err.reply_code()), (DecodeError::BadFrameEnd(0xAB), 501));
    let mut unknown = frame_bytes(9, 0, &[]);
    assert_eq!(decode_frame(&mut unknown, 0).unwrap_err().reply_code(), 501);
    let mut heartbeat_on_channel = frame_bytes(8, 4, &[]);
    assert_eq!(decode_frame(&mut heartbeat_on_channel, 0), Err(DecodeError::HeartbeatOnChannel(4)));
}

#[test]
fn unknown_methods_are_command_invalid() {
    let mut frame = frame_bytes(1, 1, &[0, 60, 0, 99]);
    assert_eq!(decode_frame(&mut frame, 0), Err(DecodeError::UnknownMethod { class: 60, method: 99 }));
}

#[test]
fn a_thousand_nested_tables_are_refused_without_recursing_that_deep() {
    // Build the innermost table first; each level wraps the previous one as key "n", type 'F'.
    let mut table = BytesMut::new();
    table.put_u32(0);
    for _ in 0..1000 {
        let mut outer = BytesMut::new();
        outer.put_u32((1 + 1 + 1 + table.len()) as u32);
        outer.put_u8(1);
        outer.put_u8(b'n');
        outer.put_u8(b'F');
        outer.put_slice(&table);
        table = outer;
    }
    let err = FieldTable::read(&mut Reader::new(table.freeze())).unwrap_err();
    assert!(matches!(err, DecodeError::TooDeep(_)), "{err:?}");
    assert_eq!(err.reply_code(), 502);
}

#[test]
fn table_length_beyond_the_payload_is_truncated_not_a_panic() {
    let mut raw = BytesMut::new();
    raw.put_u32(u32::MAX);
    raw.put_slice(b"abc");
    assert_eq!(FieldTable::read(&mut Reader::new(raw.freeze())), Err(DecodeError::Truncated));
}

#[test]
fn invalid_utf8_in_a_short_string_is_a_syntax_error() {
    let payload = [0, 60, 0, 40, 0, 0, 2, 0xC3, 0x28, 0, 0];
    let err = Method::decode(Bytes::copy_from_slice(&payload)).unwrap_err();
    assert_eq!((err.clone(), err.reply_code()), (DecodeError::InvalidUtf8, 502));
}

#[test]
fn body_slices_share_the_read_buffer() {
    let mut buf = frame_bytes(3, 1, &[7u8; 1000]);
    let start = buf.as_ptr() as usize;
    let Some(Frame::Body { payload, .. }) = decode_frame(&mut buf, 0).unwrap() else { panic!("expected a body frame") };
    // The payload points into the original allocation, 7 bytes past the frame header: no copy was made.
    assert_eq!(payload.as_ptr() as usize, start + 7);
}
