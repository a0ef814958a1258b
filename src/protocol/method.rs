//! Every method of the classes connection, channel, exchange, queue, basic,
//! confirm and tx, with RabbitMQ's extensions (exchange.bind/unbind,
//! basic.nack, confirm, connection.blocked/unblocked/update-secret).
//!
//! Arguments are written by hand rather than with the amq-protocol crate: one
//! declarative table below generates the structs, the decoder and the encoder,
//! long strings stay `Bytes` slices of the frame, and the hot methods
//! (publish, deliver, ack) decode with no allocation but their short strings.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::DecodeError;
use super::table::FieldTable;
use super::wire::{Reader, Wire, Writer};

macro_rules! methods {
    ($( $variant:ident = ($class:literal, $id:literal, $name:literal) { $( $field:ident : $ty:ty ),* $(,)? } )*) => {
        $(
            #[derive(Debug, Clone, PartialEq, Default)]
            pub struct $variant { $( pub $field: $ty, )* }
        )*

        /// One decoded AMQP method.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Method { $( $variant($variant), )* }

        $(
            impl From<$variant> for Method {
                fn from(m: $variant) -> Method { Method::$variant(m) }
            }
        )*

        impl Method {
            /// Decodes the payload of a method frame: class id, method id, arguments.
            pub fn decode(payload: Bytes) -> Result<Method, DecodeError> {
                let mut r = Reader::new(payload);
                let class = r.u16()?;
                let id = r.u16()?;
                match (class, id) {
                    $( ($class, $id) => Ok(Method::$variant($variant {
                        $( $field: <$ty as Wire>::read(&mut r)?, )*
                    })), )*
                    (class, method) => Err(DecodeError::UnknownMethod { class, method }),
                }
            }

            /// Appends class id, method id and arguments.
            pub fn encode(&self, buf: &mut BytesMut) {
                let mut w = Writer::new(buf);
                match self {
                    $( Method::$variant(_m) => {
                        w.u16($class);
                        w.u16($id);
                        $( Wire::write(&_m.$field, &mut w); )*
                    } )*
                }
            }

            /// (class id, method id).
            pub fn ids(&self) -> (u16, u16) {
                match self { $( Method::$variant(_) => ($class, $id), )* }
            }

            /// The spec's name, e.g. `basic.publish`, for logs and error texts.
            pub fn name(&self) -> &'static str {
                match self { $( Method::$variant(_) => $name, )* }
            }
        }
    };
}

methods! {
    ConnectionStart = (10, 10, "connection.start") {
        version_major: u8, version_minor: u8, server_properties: FieldTable,
        mechanisms: Bytes, locales: Bytes,
    }
    ConnectionStartOk = (10, 11, "connection.start-ok") {
        client_properties: FieldTable, mechanism: String, response: Bytes, locale: String,
    }
    ConnectionSecure = (10, 20, "connection.secure") { challenge: Bytes }
    ConnectionSecureOk = (10, 21, "connection.secure-ok") { response: Bytes }
    ConnectionTune = (10, 30, "connection.tune") { channel_max: u16, frame_max: u32, heartbeat: u16 }
    ConnectionTuneOk = (10, 31, "connection.tune-ok") { channel_max: u16, frame_max: u32, heartbeat: u16 }
    ConnectionOpen = (10, 40, "connection.open") { virtual_host: String, reserved_1: String, reserved_2: bool }
    ConnectionOpenOk = (10, 41, "connection.open-ok") { reserved_1: String }
    ConnectionClose = (10, 50, "connection.close") {
        reply_code: u16, reply_text: String, class_id: u16, method_id: u16,
    }
    ConnectionCloseOk = (10, 51, "connection.close-ok") {}
    ConnectionBlocked = (10, 60, "connection.blocked") { reason: String }
    ConnectionUnblocked = (10, 61, "connection.unblocked") {}
    ConnectionUpdateSecret = (10, 70, "connection.update-secret") { new_secret: Bytes, reason: String }
    ConnectionUpdateSecretOk = (10, 71, "connection.update-secret-ok") {}

    ChannelOpen = (20, 10, "channel.open") { reserved_1: String }
    ChannelOpenOk = (20, 11, "channel.open-ok") { reserved_1: Bytes }
    ChannelFlow = (20, 20, "channel.flow") { active: bool }
    ChannelFlowOk = (20, 21, "channel.flow-ok") { active: bool }
    ChannelClose = (20, 40, "channel.close") {
        reply_code: u16, reply_text: String, class_id: u16, method_id: u16,
    }
    ChannelCloseOk = (20, 41, "channel.close-ok") {}

    ExchangeDeclare = (40, 10, "exchange.declare") {
        reserved_1: u16, exchange: String, kind: String, passive: bool, durable: bool,
        auto_delete: bool, internal: bool, no_wait: bool, arguments: FieldTable,
    }
    ExchangeDeclareOk = (40, 11, "exchange.declare-ok") {}
    ExchangeDelete = (40, 20, "exchange.delete") {
        reserved_1: u16, exchange: String, if_unused: bool, no_wait: bool,
    }
    ExchangeDeleteOk = (40, 21, "exchange.delete-ok") {}
    ExchangeBind = (40, 30, "exchange.bind") {
        reserved_1: u16, destination: String, source: String, routing_key: String,
        no_wait: bool, arguments: FieldTable,
    }
    ExchangeBindOk = (40, 31, "exchange.bind-ok") {}
    ExchangeUnbind = (40, 40, "exchange.unbind") {
        reserved_1: u16, destination: String, source: String, routing_key: String,
        no_wait: bool, arguments: FieldTable,
    }
    ExchangeUnbindOk = (40, 51, "exchange.unbind-ok") {}

    QueueDeclare = (50, 10, "queue.declare") {
        reserved_1: u16, queue: String, passive: bool, durable: bool, exclusive: bool,
        auto_delete: bool, no_wait: bool, arguments: FieldTable,
    }
    QueueDeclareOk = (50, 11, "queue.declare-ok") { queue: String, message_count: u32, consumer_count: u32 }
    QueueBind = (50, 20, "queue.bind") {
        reserved_1: u16, queue: String, exchange: String, routing_key: String,
        no_wait: bool, arguments: FieldTable,
    }
    QueueBindOk = (50, 21, "queue.bind-ok") {}
    QueuePurge = (50, 30, "queue.purge") { reserved_1: u16, queue: String, no_wait: bool }
    QueuePurgeOk = (50, 31, "queue.purge-ok") { message_count: u32 }
    QueueDelete = (50, 40, "queue.delete") {
        reserved_1: u16, queue: String, if_unused: bool, if_empty: bool, no_wait: bool,
    }
    QueueDeleteOk = (50, 41, "queue.delete-ok") { message_count: u32 }
    QueueUnbind = (50, 50, "queue.unbind") {
        reserved_1: u16, queue: String, exchange: String, routing_key: String, arguments: FieldTable,
    }
    QueueUnbindOk = (50, 51, "queue.unbind-ok") {}

    BasicQos = (60, 10, "basic.qos") { prefetch_size: u32, prefetch_count: u16, global: bool }
    BasicQosOk = (60, 11, "basic.qos-ok") {}
    BasicConsume = (60, 20, "basic.consume") {
        reserved_1: u16, queue: String, consumer_tag: String, no_local: bool, no_ack: bool,
        exclusive: bool, no_wait: bool, arguments: FieldTable,
    }
    BasicConsumeOk = (60, 21, "basic.consume-ok") { consumer_tag: String }
    BasicCancel = (60, 30, "basic.cancel") { consumer_tag: String, no_wait: bool }
    BasicCancelOk = (60, 31, "basic.cancel-ok") { consumer_tag: String }
    BasicPublish = (60, 40, "basic.publish") {
        reserved_1: u16, exchange: String, routing_key: String, mandatory: bool, immediate: bool,
    }
    BasicReturn = (60, 50, "basic.return") {
        reply_code: u16, reply_text: String, exchange: String, routing_key: String,
    }
    BasicDeliver = (60, 60, "basic.deliver") {
        consumer_tag: String, delivery_tag: u64, redelivered: bool, exchange: String, routing_key: String,
    }
    BasicGet = (60, 70, "basic.get") { reserved_1: u16, queue: String, no_ack: bool }
    BasicGetOk = (60, 71, "basic.get-ok") {
        delivery_tag: u64, redelivered: bool, exchange: String, routing_key: String, message_count: u32,
    }
    BasicGetEmpty = (60, 72, "basic.get-empty") { reserved_1: String }
    BasicAck = (60, 80, "basic.ack") { delivery_tag: u64, multiple: bool }
    BasicReject = (60, 90, "basic.reject") { delivery_tag: u64, requeue: bool }
    BasicRecoverAsync = (60, 100, "basic.recover-async") { requeue: bool }
    BasicRecover = (60, 110, "basic.recover") { requeue: bool }
    BasicRecoverOk = (60, 111, "basic.recover-ok") {}
    BasicNack = (60, 120, "basic.nack") { delivery_tag: u64, multiple: bool, requeue: bool }

    ConfirmSelect = (85, 10, "confirm.select") { no_wait: bool }
    ConfirmSelectOk = (85, 11, "confirm.select-ok") {}

    TxSelect = (90, 10, "tx.select") {}
    TxSelectOk = (90, 11, "tx.select-ok") {}
    TxCommit = (90, 20, "tx.commit") {}
    TxCommitOk = (90, 21, "tx.commit-ok") {}
    TxRollback = (90, 30, "tx.rollback") {}
    TxRollbackOk = (90, 31, "tx.rollback-ok") {}
}

impl Method {
    /// Methods followed by a content header and body frames.
    pub fn has_content(&self) -> bool {
        matches!(
            self,
            Method::BasicPublish(_) | Method::BasicReturn(_) | Method::BasicDeliver(_) | Method::BasicGetOk(_)
        )
    }
}

/// Encodes a `basic.deliver` straight into `buf` without building a [`Method`]:
/// the delivery path runs once per message per consumer.
pub fn encode_deliver(
    buf: &mut BytesMut,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    buf.put_u16(60);
    buf.put_u16(60);
    let mut w = Writer::new(buf);
    w.short_str(consumer_tag);
    w.u64(delivery_tag);
    w.bit(redelivered);
    w.short_str(exchange);
    w.short_str(routing_key);
}
