//! Channels: opening and closing, content assembly for basic.publish, and
//! the handlers of the classes that work on a channel (channel, exchange,
//! queue, basic, confirm, tx). Each handler parses nothing itself (the codec
//! did), applies the method to the broker, and queues the reply.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::connection::{CloseReason, Connection};
use crate::broker::{AmqpError, Destination, Message, Outgoing};
use crate::protocol::method::*;
use crate::protocol::{BasicProperties, ContentHeader, FieldTable, Frame, Method, reply};

/// A publish waiting for its content header and body frames.
struct PendingContent {
    publish: BasicPublish,
    header: Option<ContentHeader>,
    body: Body,
    received: u64,
}

/// Body frames as they arrive: a single frame stays the slice of the read
/// buffer it came in; only multi-frame bodies are copied together.
enum Body {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Body {
    fn push(&mut self, chunk: Bytes, total: u64) {
        *self = match std::mem::replace(self, Body::Empty) {
            Body::Empty => Body::One(chunk),
            Body::One(first) => {
                let mut all = BytesMut::with_capacity(total as usize);
                all.extend_from_slice(&first);
                all.extend_from_slice(&chunk);
                Body::Many(all)
            }
            Body::Many(mut all) => {
                all.extend_from_slice(&chunk);
                Body::Many(all)
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::One(b) => b,
            Body::Many(all) => all.freeze(),
        }
    }
}

/// Work deferred by a transaction until tx.commit.
enum TxOp {
    Publish { exchange: String, mandatory: bool, headers: Option<FieldTable>, message: Arc<Message> },
    Ack { tag: u64, multiple: bool },
    Reject { tag: u64, multiple: bool, requeue: bool },
}

/// A publisher confirm waiting for its turn: confirms go out in publish
/// order, each once its message is durable (`position`), runs of acks
/// coalesced into one `basic.ack` with `multiple`.
pub(super) struct PendingConfirm {
    pub seq: u64,
    /// Log position that must be durable first; None for messages that
    /// were not logged (transient, or only non-durable queues).
    pub position: Option<u64>,
    pub nack: bool,
}

#[derive(Default)]
pub(super) struct Channel {
    /// We sent channel.close and wait for close-ok, dropping everything else.
    closing: bool,
    content: Option<PendingContent>,
    confirm: bool,
    /// Sequence number of the last publish in confirm mode.
    publish_seq: u64,
    pub confirms: VecDeque<PendingConfirm>,
    /// Some once tx.select was seen: the uncommitted work.
    tx: Option<Vec<TxOp>>,
    /// RabbitMQ lets an empty queue name mean the last queue declared on the channel.
    last_queue: Option<String>,
}

impl Channel {
    pub fn start_closing(&mut self) {
        self.closing = true;
        self.content = None;
        self.tx = None;
    }
}

fn unexpected(detail: &str) -> CloseReason {
    CloseReason::new(reply::UNEXPECTED_FRAME, detail)
}

impl Connection {
    pub(super) fn channel_frame(&mut self, channel: u16, frame: Frame) -> Result<(), CloseReason> {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return match frame {
                Frame::Method { method: Method::ChannelOpen(_), .. } => {
                    self.channels.insert(channel, Channel::default());
                    self.broker.open_channel(self.id, channel);
                    self.handle.method(channel, ChannelOpenOk::default());
                    Ok(())
                }
                // A close-ok racing our own cleanup of the channel.
                Frame::Method { method: Method::ChannelCloseOk(_), .. } => Ok(()),
                Frame::Method { method, .. } => Err(CloseReason::from_error(
                    AmqpError::connection(
                        reply::CHANNEL_ERROR,
                        format!("expected 'channel.open' on channel {channel}, got '{}'", method.name()),
                    ),
                    method.ids(),
                )),
                _ => Err(CloseReason::new(
                    reply::CHANNEL_ERROR,
                    format!("content frame on channel {channel}, which is not open"),
                )),
            };
        };
        if ch.closing {
            match frame {
                Frame::Method { method: Method::ChannelCloseOk(_), .. } => {
                    self.channels.remove(&channel);
                }
                Frame::Method { method: Method::ChannelClose(_), .. } => {
                    self.handle.method(channel, ChannelCloseOk {});
                    self.channels.remove(&channel);
                }
                _ => {}
            }
            return Ok(());
        }
        match frame {
            Frame::Method { method, .. } => {
                if ch.content.is_some() {
                    return Err(unexpected(&format!(
                        "expected content frame on channel {channel}, got method '{}'",
                        method.name()
                    )));
                }
                let ids = method.ids();
                match self.channel_method(channel, method) {
                    Ok(()) => Ok(()),
                    Err(err) => self.close_channel_with(channel, err, ids),
                }
            }
            Frame::Header { header, .. } => {
                let max = self.config.max_message_size;
                let Some(pending) = ch.content.as_mut().filter(|p| p.header.is_none()) else {
                    return Err(unexpected(&format!("content header on channel {channel} without basic.publish")));
                };
                if header.body_size > max {
                    let err = AmqpError::precondition(format!(
                        "message size {} is larger than configured max size {max}",
                        header.body_size
                    ));
                    return self.close_channel_with(channel, err, (60, 40));
                }
                let done = header.body_size == 0;
                pending.header = Some(header);
                if done { self.finish_publish(channel) } else { Ok(()) }
            }
            Frame::Body { payload, .. } => {
                let Some(pending) = ch.content.as_mut() else {
                    return Err(unexpected(&format!("content body on channel {channel} without basic.publish")));
                };
                let Some(size) = pending.header.as_ref().map(|h| h.body_size) else {
                    return Err(unexpected(&format!("content body on channel {channel} before its content header")));
                };
                pending.received += payload.len() as u64;
                if pending.received > size {
                    return Err(CloseReason::new(
                        reply::FRAME_ERROR,
                        format!("content body larger than the {size} bytes its header announced"),
                    ));
                }
                pending.body.push(payload, size);
                if pending.received == size { self.finish_publish(channel) } else { Ok(()) }
            }
            Frame::Heartbeat => Ok(()),
        }
    }

    /// The content of a publish is complete: route it (or keep it for tx.commit).
    fn finish_publish(&mut self, channel: u16) -> Result<(), CloseReason> {
        let Some(ch) = self.channels.get_mut(&channel) else { return Ok(()) };
        let Some(pending) = ch.content.take() else { return Ok(()) };
        let Some(header) = pending.header else { return Ok(()) };
        let properties = BasicProperties::decode(header.properties.clone()).map_err(|e| CloseReason {
            code: e.reply_code(),
            text: format!("{} - content header: {e}", reply::name(e.reply_code())),
            class_id: 60,
            method_id: 40,
        })?;
        let BasicPublish { exchange, routing_key, mandatory, .. } = pending.publish;
        let expiration_ms = match properties.expiration.as_deref().map(str::parse::<u64>) {
            None => None,
            Some(Ok(ms)) => Some(ms),
            Some(Err(_)) => {
                let text = properties.expiration.clone().unwrap_or_default();
                let err = AmqpError::precondition(format!("invalid expiration '{text}'"));
                return self.close_channel_with(channel, err, (60, 40));
            }
        };
        let message = Arc::new(Message {
            exchange,
            routing_key,
            properties: header.properties,
            body: pending.body.into_bytes(),
            persistent: properties.is_persistent(),
            expiration_ms,
        });
        let exchange = message.exchange.clone();
        let result = if let Some(ops) = ch.tx.as_mut() {
            ops.push(TxOp::Publish { exchange: exchange.clone(), mandatory, headers: properties.headers, message });
            self.broker.check_publishable(&exchange)
        } else {
            self.publish_now(channel, &exchange, mandatory, properties.headers.as_ref(), message)
        };
        match result {
            Ok(()) => Ok(()),
            Err(err) => self.close_channel_with(channel, err, (60, 40)),
        }
    }

    /// Routes one message; sends basic.return for an unroutable mandatory
    /// message and, in confirm mode, the confirm (after the return, as the
    /// spec orders them).
    fn publish_now(
        &mut self,
        channel: u16,
        exchange: &str,
        mandatory: bool,
        headers: Option<&FieldTable>,
        message: Arc<Message>,
    ) -> Result<(), AmqpError> {
        let confirm = self.channels.get(&channel).is_some_and(|c| c.confirm);
        let routed = match self.broker.publish(exchange, headers, message.clone()) {
            Ok(routed) => routed,
            // The log failed: a confirm-mode publisher gets a nack and keeps its channel.
            Err(err) if confirm && err.code == reply::INTERNAL_ERROR => {
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.publish_seq += 1;
                    let seq = ch.publish_seq;
                    ch.confirms.push_back(PendingConfirm { seq, position: None, nack: true });
                }
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        if mandatory && !routed.routed {
            let method = BasicReturn {
                reply_code: reply::NO_ROUTE,
                reply_text: "NO_ROUTE".into(),
                exchange: exchange.to_string(),
                routing_key: message.routing_key.clone(),
            };
            self.handle.send(Outgoing::Content { channel, method: method.into(), message });
        }
        if let Some(ch) = self.channels.get_mut(&channel)
            && ch.confirm
        {
            ch.publish_seq += 1;
            let seq = ch.publish_seq;
            ch.confirms.push_back(PendingConfirm { seq, position: routed.durable_position, nack: routed.rejected });
        }
        Ok(())
    }

    /// Resolves RabbitMQ's shorthand: an empty queue name is the channel's last declared queue.
    fn queue_name(&self, channel: u16, name: String) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name);
        }
        self.channels
            .get(&channel)
            .and_then(|c| c.last_queue.clone())
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    fn channel_mut(&mut self, channel: u16) -> Result<&mut Channel, AmqpError> {
        self.channels.get_mut(&channel).ok_or_else(|| AmqpError::connection(reply::CHANNEL_ERROR, "channel not open"))
    }

    fn channel_method(&mut self, channel: u16, method: Method) -> Result<(), AmqpError> {
        let id = self.id;
        let broker = self.broker.clone();
        match method {
            Method::ChannelOpen(_) => {
                return Err(AmqpError::connection(
                    reply::CHANNEL_ERROR,
                    format!("second 'channel.open' seen on channel {channel}"),
                ));
            }
            Method::ChannelClose(_) => {
                broker.close_channel(id, channel);
                self.channels.remove(&channel);
                self.handle.method(channel, ChannelCloseOk {});
            }
            // We never send channel.close without marking the channel closing, so this is stray.
            Method::ChannelCloseOk(_) | Method::ChannelFlowOk(_) => {}
            Method::ChannelFlow(m) => {
                broker.flow(id, channel, m.active);
                self.handle.method(channel, ChannelFlowOk { active: m.active });
            }

            Method::ExchangeDeclare(m) => {
                broker.exchange_declare(&m)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, ExchangeDeclareOk {});
                }
            }
            Method::ExchangeDelete(m) => {
                broker.exchange_delete(&m.exchange, m.if_unused)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, ExchangeDeleteOk {});
                }
            }
            Method::ExchangeBind(m) => {
                broker.bind(id, &m.source, Destination::Exchange(m.destination), &m.routing_key, &m.arguments)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, ExchangeBindOk {});
                }
            }
            Method::ExchangeUnbind(m) => {
                broker.unbind(id, &m.source, Destination::Exchange(m.destination), &m.routing_key, &m.arguments)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, ExchangeUnbindOk {});
                }
            }

            Method::QueueDeclare(m) => {
                let (queue, message_count, consumer_count) = broker.queue_declare(id, &m)?;
                self.channel_mut(channel)?.last_queue = Some(queue.clone());
                if !m.no_wait {
                    self.reply_when_durable(channel, QueueDeclareOk { queue, message_count, consumer_count });
                }
            }
            Method::QueueBind(m) => {
                let queue = self.queue_name(channel, m.queue)?;
                broker.bind(id, &m.exchange, Destination::Queue(queue), &m.routing_key, &m.arguments)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, QueueBindOk {});
                }
            }
            Method::QueueUnbind(m) => {
                let queue = self.queue_name(channel, m.queue)?;
                broker.unbind(id, &m.exchange, Destination::Queue(queue), &m.routing_key, &m.arguments)?;
                self.reply_when_durable(channel, QueueUnbindOk {});
            }
            Method::QueuePurge(m) => {
                let queue = self.queue_name(channel, m.queue)?;
                let message_count = broker.queue_purge(id, &queue)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, QueuePurgeOk { message_count });
                }
            }
            Method::QueueDelete(m) => {
                let queue = self.queue_name(channel, m.queue)?;
                let message_count = broker.queue_delete(id, &queue, m.if_unused, m.if_empty)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, QueueDeleteOk { message_count });
                }
            }

            Method::BasicQos(m) => {
                if m.prefetch_size != 0 {
                    return Err(AmqpError::not_implemented(format!("prefetch_size!=0 ({})", m.prefetch_size)));
                }
                broker.qos(id, channel, m.prefetch_count, m.global);
                self.handle.method(channel, BasicQosOk {});
            }
            Method::BasicConsume(m) => {
                let queue = self.queue_name(channel, m.queue)?;
                broker.consume(&self.handle, channel, &queue, &m.consumer_tag, m.no_ack, m.exclusive, m.no_wait)?;
                self.start_delivery.push(queue);
            }
            Method::BasicCancel(m) => {
                broker.cancel(id, channel, &m.consumer_tag);
                if !m.no_wait {
                    self.handle.method(channel, BasicCancelOk { consumer_tag: m.consumer_tag });
                }
            }
            Method::BasicPublish(m) => {
                if m.immediate {
                    return Err(AmqpError::not_implemented("immediate=true"));
                }
                self.published = true;
                self.channel_mut(channel)?.content =
                    Some(PendingContent { publish: m, header: None, body: Body::Empty, received: 0 });
            }
            Method::BasicGet(m) => {
                let queue = self.queue_name(channel, m.queue)?;
                broker.get(&self.handle, channel, &queue, m.no_ack)?;
            }
            Method::BasicAck(m) => {
                if self.channel_mut(channel)?.tx.is_some() {
                    self.check_tx_tag(channel, m.delivery_tag, m.multiple)?;
                }
                if let Some(ops) = self.channel_mut(channel)?.tx.as_mut() {
                    ops.push(TxOp::Ack { tag: m.delivery_tag, multiple: m.multiple });
                } else {
                    broker.ack(id, channel, m.delivery_tag, m.multiple)?;
                }
            }
            Method::BasicReject(m) => self.reject(channel, m.delivery_tag, false, m.requeue)?,
            Method::BasicNack(m) => self.reject(channel, m.delivery_tag, m.multiple, m.requeue)?,
            Method::BasicRecoverAsync(_) => broker.recover(id, channel, None),
            Method::BasicRecover(_) => broker.recover(id, channel, Some(&self.handle)),

            Method::ConfirmSelect(m) => {
                let ch = self.channel_mut(channel)?;
                if ch.tx.is_some() {
                    return Err(AmqpError::precondition("cannot switch from tx to confirm mode"));
                }
                ch.confirm = true;
                if !m.no_wait {
                    self.handle.method(channel, ConfirmSelectOk {});
                }
            }

            Method::TxSelect(_) => {
                let ch = self.channel_mut(channel)?;
                if ch.confirm {
                    return Err(AmqpError::precondition("cannot switch from confirm to tx mode"));
                }
                ch.tx.get_or_insert_with(Vec::new);
                self.handle.method(channel, TxSelectOk {});
            }
            Method::TxCommit(_) => {
                let ch = self.channel_mut(channel)?;
                let Some(ops) = ch.tx.replace(Vec::new()) else {
                    return Err(AmqpError::precondition("channel is not transactional"));
                };
                for op in ops {
                    match op {
                        TxOp::Publish { exchange, mandatory, headers, message } => {
                            self.publish_now(channel, &exchange, mandatory, headers.as_ref(), message)?
                        }
                        TxOp::Ack { tag, multiple } => broker.ack(id, channel, tag, multiple)?,
                        TxOp::Reject { tag, multiple, requeue } => {
                            broker.reject(id, channel, tag, multiple, requeue)?
                        }
                    }
                }
                // As RabbitMQ: commit-ok once the committed messages are on disk.
                self.reply_when_durable(channel, TxCommitOk {});
            }
            Method::TxRollback(_) => {
                let ch = self.channel_mut(channel)?;
                if ch.tx.replace(Vec::new()).is_none() {
                    return Err(AmqpError::precondition("channel is not transactional"));
                }
                self.handle.method(channel, TxRollbackOk {});
            }

            other => {
                return Err(AmqpError::command_invalid(format!(
                    "'{}' is not a method a client sends on a channel",
                    other.name()
                )));
            }
        }
        Ok(())
    }

    /// In a transaction, an ack names a delivery that is unsettled now and
    /// not already settled earlier in the same transaction; otherwise the
    /// channel closes at once and nothing of the transaction is applied.
    fn check_tx_tag(&mut self, channel: u16, tag: u64, multiple: bool) -> Result<(), AmqpError> {
        self.broker.check_delivery_tag(self.id, channel, tag, multiple)?;
        let settled_in_tx = self.channel_mut(channel)?.tx.as_ref().is_some_and(|ops| {
            ops.iter().any(|op| match *op {
                TxOp::Ack { tag: t, multiple: m } | TxOp::Reject { tag: t, multiple: m, .. } => {
                    t == tag || (m && (t == 0 || tag <= t))
                }
                TxOp::Publish { .. } => false,
            })
        });
        if settled_in_tx && !multiple {
            return Err(AmqpError::precondition(format!("unknown delivery tag {tag}")));
        }
        Ok(())
    }

    fn reject(&mut self, channel: u16, tag: u64, multiple: bool, requeue: bool) -> Result<(), AmqpError> {
        if self.channel_mut(channel)?.tx.is_some() {
            self.check_tx_tag(channel, tag, multiple)?;
        }
        if let Some(ops) = self.channel_mut(channel)?.tx.as_mut() {
            ops.push(TxOp::Reject { tag, multiple, requeue });
            return Ok(());
        }
        self.broker.reject(self.id, channel, tag, multiple, requeue)
    }
}
