//! The quorum queue type: the messages of a classic queue plus what
//! RabbitMQ's quorum queues add to them, kept here so that no other module
//! asks which type a queue is for them: every message it takes is logged
//! (transient or not), each return to the queue counts as a delivery, a
//! message returned more often than the delivery limit leaves the queue
//! (dead-lettered when the queue says so), and a redelivered message tells
//! its consumer how often it was handed out before (`x-delivery-count`).
//!
//! Today its state lives on one node; the cluster issue makes this type
//! the state machine a Raft group replicates, which is why its rules are
//! here rather than spread over the broker.

use std::sync::Arc;

use super::arguments::QueueArgs;
use super::classic::ClassicQueue;
use super::dead_letter::Reason;
use super::message::Message;
use super::queue::QueuedMessage;
use super::queue_type::{Command, Effects, Settle};
use crate::protocol::{BasicProperties, FieldTable, FieldValue};

#[derive(Debug)]
pub struct QuorumQueue {
    messages: ClassicQueue,
}

impl QuorumQueue {
    pub fn new(max_priority: Option<u8>) -> QuorumQueue {
        QuorumQueue { messages: ClassicQueue::new(max_priority) }
    }

    /// The ready messages (a classic queue's, ordered the same way).
    pub fn messages(&self) -> &ClassicQueue {
        &self.messages
    }

    pub fn messages_mut(&mut self) -> &mut ClassicQueue {
        &mut self.messages
    }

    /// Applies one command (see `broker::queue_type`) at time `now`: a
    /// classic queue's, except that a requeue counts as a delivery and a
    /// message returned more often than the delivery limit leaves the
    /// queue (dead-lettered with reason `delivery_limit` when the queue
    /// has a dead-letter exchange).
    // Inlined always: at a call site the command is known, and its arm
    // is all that is left (a call costed S4 about 4% of its CPU).
    #[inline(always)]
    pub fn apply(&mut self, args: &QueueArgs, command: Command, now: u64, fx: &mut Effects) {
        match command {
            Command::Settle { mut entry, how: Settle::Requeue } => {
                entry.delivery_count = entry.delivery_count.saturating_add(1);
                if args.delivery_limit.is_some_and(|limit| entry.delivery_count as u64 > limit) {
                    entry.redelivered = true;
                    fx.departed_one(args.dead_letter_exchange.is_some(), entry, Reason::DeliveryLimit);
                } else {
                    self.messages.apply(args, Command::Settle { entry, how: Settle::Requeue }, now, fx);
                }
            }
            other => self.messages.apply(args, other, now, fx),
        }
    }

    /// The message as its consumer gets it: from its second delivery on,
    /// with how often it was handed out before in `x-delivery-count`.
    pub fn as_delivered(entry: &QueuedMessage, message: Arc<Message>) -> Arc<Message> {
        if entry.delivery_count == 0 {
            return message;
        }
        let Ok(mut props) = BasicProperties::decode(message.properties.clone()) else { return message };
        let headers = props.headers.get_or_insert_with(FieldTable::new);
        headers.insert("x-delivery-count", FieldValue::I64(entry.delivery_count as i64));
        Arc::new(Message {
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
            properties: props.to_bytes(),
            body: message.body.clone(),
            persistent: message.persistent,
            expiration_ms: message.expiration_ms,
            priority: message.priority,
        })
    }
}
