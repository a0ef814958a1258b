//! The queue class: declare, bind, unbind, purge, delete.

use super::super::channel::*;
use super::super::connection::Connection;
use crate::access::{Access, ResourceKind};
use crate::broker::changes::Change;
use crate::broker::{AmqpError, Destination};
use crate::protocol::Method;
use crate::protocol::method::*;

impl Connection {
    /// queue.declare, bind, unbind, purge and delete.
    pub(in crate::server) fn queue_method(&mut self, channel: u16, method: Method) -> Result<(), AmqpError> {
        let id = self.id;
        let broker = self.broker.clone();
        let vhost = self.vhost.clone();
        match method {
            Method::QueueDeclare(m) => {
                if !m.passive && !m.queue.starts_with(crate::broker::REPLY_TO_QUEUE) {
                    // A server-named queue is checked by its prefix.
                    let name = if m.queue.is_empty() { "amq.gen-" } else { m.queue.as_str() };
                    self.check_access(Access::Configure, ResourceKind::Queue, name)?;
                    // As RabbitMQ: the dead-letter exchange is checked when the queue is made.
                    if let Some(dlx) = m.arguments.get("x-dead-letter-exchange").and_then(|v| v.as_str())
                        && !broker.queue_exists(&vhost, name)
                    {
                        self.check_access(Access::Read, ResourceKind::Queue, name)?;
                        self.check_access(Access::Write, ResourceKind::Exchange, dlx)?;
                    }
                }
                if broker.declares_replicated(&vhost, &m) {
                    // A new quorum queue of a cluster: made on every node.
                    let queue = m.queue.clone();
                    self.channel_mut(channel)?.last_queue = Some(queue.clone());
                    let reply =
                        (!m.no_wait).then(|| QueueDeclareOk { queue, message_count: 0, consumer_count: 0 }.into());
                    return self.shared_queue_change(channel, m.into(), (50, 10), reply);
                }
                let (queue, message_count, consumer_count) = broker.queue_declare(&vhost, id, &m)?;
                self.channel_mut(channel)?.last_queue = Some(queue.clone());
                if !m.no_wait {
                    self.reply_when_durable(channel, QueueDeclareOk { queue, message_count, consumer_count });
                }
            }
            Method::QueueBind(m) => {
                let queue = self.queue_name(channel, m.queue)?;
                self.check_binding(&m.exchange, ResourceKind::Queue, &queue, &m.routing_key)?;
                if broker.is_replicated(&vhost, &queue) {
                    let reply = (!m.no_wait).then(|| QueueBindOk {}.into());
                    return self.shared_queue_change(channel, QueueBind { queue, ..m }.into(), (50, 20), reply);
                }
                broker.bind(&vhost, id, &m.exchange, Destination::Queue(queue), &m.routing_key, &m.arguments)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, QueueBindOk {});
                }
            }
            Method::QueueUnbind(m) => {
                let queue = self.queue_name(channel, m.queue)?;
                self.check_binding(&m.exchange, ResourceKind::Queue, &queue, &m.routing_key)?;
                if broker.is_replicated(&vhost, &queue) {
                    let reply = Some(QueueUnbindOk {}.into());
                    return self.shared_queue_change(channel, QueueUnbind { queue, ..m }.into(), (50, 50), reply);
                }
                broker.unbind(&vhost, id, &m.exchange, Destination::Queue(queue), &m.routing_key, &m.arguments)?;
                self.reply_when_durable(channel, QueueUnbindOk {});
            }
            Method::QueuePurge(m) => {
                let queue = self.queue_name(channel, m.queue)?;
                self.check_access(Access::Read, ResourceKind::Queue, &queue)?;
                let message_count = broker.queue_purge(&vhost, id, &queue)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, QueuePurgeOk { message_count });
                }
            }
            Method::QueueDelete(m) => {
                let queue = self.queue_name(channel, m.queue)?;
                self.check_access(Access::Configure, ResourceKind::Queue, &queue)?;
                if broker.is_replicated(&vhost, &queue) {
                    // if-unused and if-empty are judged here, on this node's view.
                    let message_count = broker.queue_delete_check(&vhost, &queue, m.if_unused, m.if_empty)?;
                    let reply = (!m.no_wait).then(|| QueueDeleteOk { message_count }.into());
                    return self.shared_queue_change(channel, QueueDelete { queue, ..m }.into(), (50, 40), reply);
                }
                let (message_count, own_consumers) =
                    broker.queue_delete(&vhost, (id, channel), &queue, m.if_unused, m.if_empty)?;
                if !m.no_wait {
                    self.reply_when_durable(channel, QueueDeleteOk { message_count });
                }
                // The channel's own consumers learn of it after the delete-ok.
                for consumer_tag in own_consumers {
                    self.reply_when_durable(channel, BasicCancel { consumer_tag, no_wait: true });
                }
            }
            other => return Err(not_on_a_channel(&other)),
        }
        Ok(())
    }

    /// A queue method that changes what every node of a cluster shares (a
    /// replicated quorum queue): made through the metadata group.
    fn shared_queue_change(
        &mut self,
        channel: u16,
        method: Method,
        ids: (u16, u16),
        reply: Option<Method>,
    ) -> Result<(), AmqpError> {
        let change = Change::for_queue(&self.vhost, method);
        self.make_change(channel, change, ids, reply)
    }
}
