//! The queue class: declare, bind, unbind, purge, delete.

use super::super::channel::*;
use super::super::connection::Connection;
use crate::broker::{AmqpError, Destination};
use crate::protocol::Method;
use crate::protocol::method::*;

impl Connection {
    /// queue.declare, bind, unbind, purge and delete.
    pub(in crate::server) fn queue_method(&mut self, channel: u16, method: Method) -> Result<(), AmqpError> {
        let id = self.id;
        let broker = self.broker.clone();
        match method {
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
                let (message_count, own_consumers) =
                    broker.queue_delete(id, channel, &queue, m.if_unused, m.if_empty)?;
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
}
