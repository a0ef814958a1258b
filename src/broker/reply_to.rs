//! Direct reply-to: the `amq.rabbitmq.reply-to` pseudo-queue. A channel
//! consumes from it (no-ack); a request it publishes with that `reply_to`
//! carries a name that leads back to the channel; a reply published to
//! that name on the default exchange goes straight to the consumer,
//! through no queue.

use super::*;

/// The pseudo-queue's name; replies go to names that extend it.
pub const REPLY_TO_QUEUE: &str = "amq.rabbitmq.reply-to";

/// A channel's consumer of its direct replies.
#[derive(Debug, Clone)]
pub(super) struct ReplyConsumer {
    pub tag: Arc<str>,
    /// Part of the reply address, so that it cannot be guessed.
    pub secret: u64,
}

impl Broker {
    /// The address a request published on this channel with
    /// `reply_to = amq.rabbitmq.reply-to` carries instead; None when the
    /// channel does not consume its replies.
    pub fn reply_address(&self, conn: u64, channel: u16) -> Option<String> {
        let st = self.state.read();
        let secret = st.channel(conn, channel)?.lock().reply_to.as_ref()?.secret;
        Some(format!("{REPLY_TO_QUEUE}.{conn:x}.{channel:x}.{secret:016x}"))
    }
}

impl State {
    /// Hands a reply published to a reply address to its consumer; a
    /// reply whose channel is gone is dropped (unroutable).
    pub(super) fn reply_to(&self, message: &Arc<Message>) -> Routed {
        let unroutable = Routed::default();
        let Some((conn, channel, reply)) = self.reply_consumer_of(&message.routing_key) else { return unroutable };
        let Some(handle) = self.connections.get(&conn).map(|c| c.handle.clone()) else { return unroutable };
        let Some(ch) = self.channel(conn, channel) else { return unroutable };
        // The tag is taken and the delivery queued under the channel's
        // lock: tags reach the client in order.
        let mut ch = ch.lock();
        let delivery_tag = ch.take_tag();
        handle.send(Outgoing::Deliver {
            channel,
            consumer_tag: reply.tag,
            delivery_tag,
            redelivered: false,
            message: message.clone(),
        });
        Routed { routed: true, ..Routed::default() }
    }

    /// The channel a reply address leads to, and its reply consumer, while
    /// that channel still consumes its replies.
    pub(super) fn reply_consumer_of(&self, address: &str) -> Option<(u64, u16, ReplyConsumer)> {
        let rest = address.strip_prefix(REPLY_TO_QUEUE)?.strip_prefix('.')?;
        let mut parts = rest.split('.');
        let (Some(conn), Some(channel), Some(secret), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let conn = u64::from_str_radix(conn, 16).ok()?;
        let channel = u16::from_str_radix(channel, 16).ok()?;
        let secret = u64::from_str_radix(secret, 16).ok()?;
        let reply = self.channel(conn, channel)?.lock().reply_to.clone().filter(|r| r.secret == secret)?;
        Some((conn, channel, reply))
    }

    /// basic.cancel of a channel's reply consumer.
    pub(super) fn cancel_reply_consumer(&self, conn: u64, channel: u16, tag: &str) -> bool {
        let Some(ch) = self.channel(conn, channel) else { return false };
        let mut ch = ch.lock();
        if ch.reply_to.as_ref().is_some_and(|r| &*r.tag == tag) {
            ch.reply_to = None;
            true
        } else {
            false
        }
    }
}
