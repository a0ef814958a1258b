//! The basic class: qos, consume, cancel, publish (its content follows in frames of its own), get, ack, nack, reject, recover.

use super::super::channel::*;
use super::super::connection::{Connection, PendingChange};
use crate::access::{Access, ResourceKind};
use crate::broker::AmqpError;
use crate::protocol::Method;
use crate::protocol::method::*;

impl Connection {
    /// basic.* methods but the content of a publish.
    pub(in crate::server) fn basic_method(&mut self, channel: u16, method: Method) -> Result<(), AmqpError> {
        let id = self.id;
        let broker = self.broker.clone();
        match method {
            Method::BasicQos(m) => {
                if m.prefetch_size != 0 {
                    return Err(AmqpError::not_implemented(format!("prefetch_size!=0 ({})", m.prefetch_size)));
                }
                broker.qos(id, channel, m.prefetch_count, m.global);
                self.handle.method(channel, BasicQosOk {});
            }
            Method::BasicConsume(m) => {
                let queue = self.queue_name(channel, m.queue)?;
                if queue != crate::broker::REPLY_TO_QUEUE {
                    self.check_access(Access::Read, ResourceKind::Queue, &queue)?;
                }
                let (tag, no_ack, exclusive, no_wait) = (&m.consumer_tag, m.no_ack, m.exclusive, m.no_wait);
                if broker.is_replicated(&self.vhost, &queue) {
                    // Made at the queue's leader, wherever it is.
                    let flags = (no_ack, exclusive, no_wait);
                    let work = broker.consume_replicated(
                        &self.handle,
                        channel,
                        &queue,
                        tag,
                        flags,
                        &m.arguments,
                        &self.user,
                    )?;
                    self.pending_change = Some(PendingChange::AtLeader { channel, ids: (60, 20), work });
                    return Ok(());
                }
                broker.consume(&self.handle, channel, &queue, tag, no_ack, exclusive, no_wait, &m.arguments)?;
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
                self.check_access(Access::Write, ResourceKind::Exchange, &m.exchange)?;
                self.check_topic(&m.exchange, &m.routing_key, true)?;
                self.channel_mut(channel)?.content =
                    Some(PendingContent { publish: m, header: None, body: Body::Empty, received: 0 });
            }
            Method::BasicGet(m) => {
                let queue = self.queue_name(channel, m.queue)?;
                self.check_access(Access::Read, ResourceKind::Queue, &queue)?;
                if broker.is_replicated(&self.vhost, &queue) {
                    let work = broker.get_replicated(&self.handle, channel, &queue, m.no_ack, &self.user)?;
                    self.pending_change = Some(PendingChange::AtLeader { channel, ids: (60, 70), work });
                    return Ok(());
                }
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
            // As RabbitMQ: redelivering to the same consumer only is not offered.
            Method::BasicRecoverAsync(m) if !m.requeue => return Err(AmqpError::not_implemented("requeue=false")),
            Method::BasicRecover(m) if !m.requeue => return Err(AmqpError::not_implemented("requeue=false")),
            Method::BasicRecoverAsync(_) => broker.recover(id, channel, None),
            Method::BasicRecover(_) => broker.recover(id, channel, Some(&self.handle)),
            other => return Err(not_on_a_channel(&other)),
        }
        Ok(())
    }
}
