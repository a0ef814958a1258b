//! Channels: opening and closing, the channel class, content assembly for
//! basic.publish, and the dispatch of every other method to its class's
//! handler in `super::methods` (exchange, queue, basic, confirm and tx).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::connection::{CloseReason, Connection};
use super::replicated::{ReplicatedPublisher, Ticket};
use crate::broker::{AmqpError, GlobalStats, Message, Outgoing, REPLY_TO_QUEUE};
use crate::protocol::method::*;
use crate::protocol::{BasicProperties, ContentHeader, FieldTable, Frame, Method, reply};

/// A publish waiting for its content header and body frames.
pub(super) struct PendingContent {
    pub(super) publish: BasicPublish,
    pub(super) header: Option<ContentHeader>,
    pub(super) body: Body,
    pub(super) received: u64,
}

/// Body frames as they arrive: a single frame stays the slice of the read
/// buffer it came in; only multi-frame bodies are copied together.
pub(super) enum Body {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Body {
    /// Adds a body frame. The buffer grows with the bytes that arrive (at
    /// most twice what came so far, never more than the header announced):
    /// a header announcing a huge body costs nothing until its bytes come.
    fn push(&mut self, chunk: Bytes, total: u64) {
        *self = match std::mem::replace(self, Body::Empty) {
            Body::Empty => Body::One(chunk),
            Body::One(first) => {
                let arrived = first.len() + chunk.len();
                let capacity = (total as usize).min(arrived.saturating_mul(2));
                let mut all = BytesMut::with_capacity(capacity);
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
pub(super) enum TxOp {
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
    /// The commit of the replicated queues it went to (a node of a cluster).
    pub ticket: Option<Arc<super::replicated::Ticket>>,
}

#[derive(Default)]
pub(super) struct Channel {
    /// We sent channel.close and wait for close-ok, dropping everything else.
    closing: bool,
    pub(super) content: Option<PendingContent>,
    pub(super) confirm: bool,
    /// Sequence number of the last publish in confirm mode.
    publish_seq: u64,
    pub confirms: VecDeque<PendingConfirm>,
    /// Some once tx.select was seen: the uncommitted work.
    pub(super) tx: Option<Vec<TxOp>>,
    /// RabbitMQ lets an empty queue name mean the last queue declared on the channel.
    pub(super) last_queue: Option<String>,
}

impl Channel {
    pub(super) fn is_closing(&self) -> bool {
        self.closing
    }

    pub fn start_closing(&mut self) {
        self.closing = true;
        self.content = None;
        self.tx = None;
    }
}

/// A method that has no business on an open channel (connection class, or
/// one only the server sends).
pub(super) fn not_on_a_channel(method: &Method) -> AmqpError {
    AmqpError::command_invalid(format!("'{}' is not a method a client sends on a channel", method.name()))
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
        if let Some(user_id) = properties.user_id.as_deref()
            && user_id != self.user
        {
            let err = AmqpError::precondition(format!(
                "user_id property set to '{user_id}' but authenticated user was '{}'",
                self.user
            ));
            return self.close_channel_with(channel, err, (60, 40));
        }
        // The properties are kept as long as the message: copied out of the
        // read buffer, whose allocation they would otherwise keep alive
        // (with the neighbouring frames in it) for all that time.
        let mut encoded = Bytes::copy_from_slice(&header.properties);
        let reply_to_rpc = properties.reply_to.as_deref() == Some(REPLY_TO_QUEUE);
        let has_bcc = properties.headers.as_ref().is_some_and(|h| h.get("BCC").is_some());
        if reply_to_rpc || has_bcc {
            match self.rewrite_properties(channel, &properties) {
                Ok(bytes) => encoded = bytes,
                Err(err) => return self.close_channel_with(channel, err, (60, 40)),
            }
        }
        let Some(ch) = self.channels.get_mut(&channel) else { return Ok(()) };
        let message = Arc::new(Message {
            exchange,
            routing_key,
            properties: encoded,
            body: pending.body.into_bytes(),
            persistent: properties.is_persistent(),
            expiration_ms,
            priority: properties.priority.unwrap_or(0),
        });
        let exchange = message.exchange.clone();
        let result = if let Some(ops) = ch.tx.as_mut() {
            ops.push(TxOp::Publish { exchange: exchange.clone(), mandatory, headers: properties.headers, message });
            self.broker.check_publishable(&self.vhost, &exchange)
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
    pub(super) fn publish_now(
        &mut self,
        channel: u16,
        exchange: &str,
        mandatory: bool,
        headers: Option<&FieldTable>,
        message: Arc<Message>,
    ) -> Result<(), AmqpError> {
        let confirm = self.channels.get(&channel).is_some_and(|c| c.confirm);
        let stats = self.broker.stats();
        GlobalStats::add(&stats.received, 1);
        if confirm {
            GlobalStats::add(&stats.received_confirm, 1);
        }
        let routed = match self.broker.publish(&self.vhost, exchange, headers, message.clone()) {
            Ok(routed) => routed,
            // The log failed: a confirm-mode publisher gets a nack and keeps its channel.
            Err(err) if confirm && err.code == reply::INTERNAL_ERROR => {
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.publish_seq += 1;
                    let seq = ch.publish_seq;
                    ch.confirms.push_back(PendingConfirm { seq, position: None, nack: true, ticket: None });
                }
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        let stats = self.broker.stats();
        let outcome = match (routed.routed, mandatory) {
            (true, _) => &stats.routed,
            (false, true) => &stats.unroutable_returned,
            (false, false) => &stats.unroutable_dropped,
        };
        GlobalStats::add(outcome, 1);
        let ticket = if routed.replicated.is_empty() {
            None
        } else {
            self.publish_replicated(&routed.replicated, &message, confirm)
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
            let (position, nack) = (routed.durable_position, routed.rejected);
            ch.confirms.push_back(PendingConfirm { seq, position, nack, ticket });
        }
        Ok(())
    }

    /// Hands a message to the groups of the replicated queues it reached;
    /// with `confirm`, the ticket its confirm waits for (a publish the
    /// groups cannot take is nacked).
    fn publish_replicated(&mut self, groups: &[u64], message: &Arc<Message>, confirm: bool) -> Option<Arc<Ticket>> {
        if self.replicated.is_none() {
            let router = self.broker.replica_router()?;
            self.replicated = Some(ReplicatedPublisher::start(router, self.replicated_settled.clone()));
        }
        self.replicated.as_ref().and_then(|r| r.publish(groups, message, confirm))
    }

    /// The properties a publish is stored with when they must change: a
    /// direct reply-to request carries the channel's reply address, and
    /// `BCC` never travels with the message.
    fn rewrite_properties(&self, channel: u16, properties: &BasicProperties) -> Result<Bytes, AmqpError> {
        let mut rewritten = properties.clone();
        if rewritten.reply_to.as_deref() == Some(REPLY_TO_QUEUE) {
            let address = self
                .broker
                .reply_address(self.id, channel)
                .ok_or_else(|| AmqpError::precondition("fast reply consumer does not exist"))?;
            rewritten.reply_to = Some(address);
        }
        if let Some(headers) = rewritten.headers.as_mut() {
            headers.0.retain(|(k, _)| k != "BCC");
        }
        Ok(rewritten.to_bytes())
    }

    /// Resolves RabbitMQ's shorthand: an empty queue name is the channel's last declared queue.
    pub(super) fn queue_name(&self, channel: u16, name: String) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name);
        }
        self.channels
            .get(&channel)
            .and_then(|c| c.last_queue.clone())
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    pub(super) fn channel_mut(&mut self, channel: u16) -> Result<&mut Channel, AmqpError> {
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

            Method::ExchangeDeclare(_)
            | Method::ExchangeDelete(_)
            | Method::ExchangeBind(_)
            | Method::ExchangeUnbind(_) => {
                return self.exchange_method(channel, method);
            }
            Method::QueueDeclare(_)
            | Method::QueueBind(_)
            | Method::QueueUnbind(_)
            | Method::QueuePurge(_)
            | Method::QueueDelete(_) => return self.queue_method(channel, method),
            Method::BasicQos(_)
            | Method::BasicConsume(_)
            | Method::BasicCancel(_)
            | Method::BasicPublish(_)
            | Method::BasicGet(_)
            | Method::BasicAck(_)
            | Method::BasicReject(_)
            | Method::BasicNack(_)
            | Method::BasicRecoverAsync(_)
            | Method::BasicRecover(_) => return self.basic_method(channel, method),
            Method::ConfirmSelect(_) | Method::TxSelect(_) | Method::TxCommit(_) | Method::TxRollback(_) => {
                return self.confirm_tx_method(channel, method);
            }
            other => return Err(not_on_a_channel(&other)),
        }
        Ok(())
    }

    /// In a transaction, an ack names a delivery that is unsettled now and
    /// not already settled earlier in the same transaction; otherwise the
    /// channel closes at once and nothing of the transaction is applied.
    pub(super) fn check_tx_tag(&mut self, channel: u16, tag: u64, multiple: bool) -> Result<(), AmqpError> {
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

    pub(super) fn reject(&mut self, channel: u16, tag: u64, multiple: bool, requeue: bool) -> Result<(), AmqpError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_buffer_grows_with_what_arrives_not_with_what_is_announced() {
        let announced = 128 << 20;
        let mut body = Body::Empty;
        body.push(Bytes::from(vec![1u8; 1000]), announced);
        body.push(Bytes::from(vec![2u8; 1000]), announced);
        let Body::Many(all) = &body else { panic!("two frames are copied together") };
        assert!(all.capacity() <= 4096, "capacity {} for 2000 bytes of a 128 MiB body", all.capacity());
        for _ in 0..1000 {
            body.push(Bytes::from(vec![3u8; 1000]), announced);
        }
        let Body::Many(all) = &body else { panic!("still one buffer") };
        assert_eq!(all.len(), 1_002_000);
        assert!(all.capacity() < 4 << 20, "capacity {} for ~1 MB", all.capacity());
        let bytes = body.into_bytes();
        assert_eq!((&bytes[..2], bytes[1000], bytes[2000], bytes.len()), (&[1u8, 1][..], 2, 3, 1_002_000));
        // A small body announced exactly is allocated exactly once.
        let mut exact = Body::Empty;
        exact.push(Bytes::from(vec![0u8; 10]), 20);
        exact.push(Bytes::from(vec![0u8; 10]), 20);
        let Body::Many(all) = &exact else { panic!("two frames") };
        assert_eq!((all.len(), all.capacity()), (20, 20));
    }
}
