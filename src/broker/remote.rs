//! Consuming from a replicated quorum queue on any node of a cluster.
//!
//! Only the leader's replica of such a queue hands messages out, so a
//! client's basic.consume and basic.get are made at the leader, through
//! a session this node's cluster layer keeps with it
//! (`cluster::consumers`, behind [`ReplicaRouter`]). Here is the client
//! node's part: the consumer tag registered on the client's channel, each
//! delivery the leader sent given a delivery tag of that channel (kept in
//! the channel's `remote_unacked`, beside its own deliveries, so that an
//! ack with `multiple` covers both), and the settles of those deliveries,
//! which go back to the leader by the leader's delivery tags
//! ([`RemoteLink`]).

use std::future::Future;
use std::pin::Pin;

use super::queue_type::Settle;
use super::replicas::ReplicaRouter;
use super::*;

/// Where the deliveries of one session with a leader are settled.
pub trait RemoteLink: Send + Sync + 'static {
    /// Settles deliveries by the leader's delivery tags; not waited for.
    fn settle(&self, tags: Vec<u64>, how: Settle);
}

/// A delivery a leader made to a consumer of this node, not settled yet.
pub(super) struct RemoteUnacked {
    link: Arc<dyn RemoteLink>,
    /// The leader's delivery tag.
    tag: u64,
}

impl std::fmt::Debug for RemoteUnacked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteUnacked({})", self.tag)
    }
}

/// Sends each session's settled deliveries to its leader, one request per
/// session and kind of settle.
pub(super) fn settle_remote(settled: Vec<RemoteUnacked>, how: Settle) {
    let mut by_link: Vec<(Arc<dyn RemoteLink>, Vec<u64>)> = Vec::new();
    for u in settled {
        match by_link.iter_mut().find(|(link, _)| Arc::ptr_eq(link, &u.link)) {
            Some((_, tags)) => tags.push(u.tag),
            None => by_link.push((u.link, vec![u.tag])),
        }
    }
    for (link, tags) in by_link {
        link.settle(tags, how);
    }
}

pub type RemoteWork = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// A client's basic.consume of a replicated queue, to be made at its leader.
pub struct RemoteConsume {
    pub handle: ConnectionHandle,
    pub channel: u16,
    pub group: u64,
    pub vhost: Arc<str>,
    pub user: String,
    pub queue: Arc<str>,
    pub tag: Arc<str>,
    pub no_ack: bool,
    pub exclusive: bool,
    pub no_wait: bool,
    /// The channel's consumer prefetch (basic.qos, global = false).
    pub prefetch: u16,
    pub arguments: FieldTable,
}

/// A client's basic.get of a replicated queue, to be made at its leader.
pub struct RemoteGet {
    pub handle: ConnectionHandle,
    pub channel: u16,
    pub group: u64,
    pub vhost: Arc<str>,
    pub user: String,
    pub queue: Arc<str>,
    pub no_ack: bool,
}

/// A message a leader handed to one of this node's clients: `settle` is
/// where it is settled (None: it was settled when handed out, no-ack).
pub struct RemoteDelivery {
    pub redelivered: bool,
    pub message: Arc<Message>,
    pub settle: Option<(Arc<dyn RemoteLink>, u64)>,
}

/// A channel, its vhost, and the replicated queue it names: its name, group
/// and type.
type ReplicatedTarget = (Arc<ChannelLock>, Arc<str>, Arc<str>, u64, QueueType);

impl State {
    fn replicated_target(&self, conn: u64, channel: u16, queue: &str) -> Result<ReplicatedTarget> {
        let cell = self
            .channel(conn, channel)
            .ok_or_else(|| AmqpError::connection(reply::CHANNEL_ERROR, "channel not open"))?;
        let vhost = cell.lock().vhost.clone();
        let q = self.queue(&vhost, queue).ok_or_else(|| no_queue(&vhost, queue))?.lock();
        let group = q.replica.as_ref().map(|r| r.group).ok_or_else(|| no_queue(&vhost, queue))?;
        Ok((cell.clone(), vhost.clone(), q.name.clone(), group, q.args.queue_type))
    }
}

impl Broker {
    fn router_for_remote(&self) -> Result<Arc<dyn ReplicaRouter>> {
        self.replica_router().ok_or_else(|| AmqpError::connection(reply::INTERNAL_ERROR, "not a node of a cluster"))
    }

    /// basic.consume of a replicated queue: checks it here and registers
    /// the tag on the channel, then returns the work that makes the
    /// consumer at the queue's leader (which sends consume-ok, or fails
    /// with the leader's refusal).
    #[allow(clippy::too_many_arguments)]
    pub fn consume_replicated(
        &self,
        handle: &ConnectionHandle,
        channel: u16,
        queue: &str,
        tag: &str,
        (no_ack, exclusive, no_wait): (bool, bool, bool),
        arguments: &FieldTable,
        user: &str,
    ) -> Result<RemoteWork> {
        let router = self.router_for_remote()?;
        let st = self.state.read();
        let (cell, vhost, queue, group, kind) = st.replicated_target(handle.id, channel, queue)?;
        arguments::check_consume_keys(kind, arguments, &queue, &vhost)?;
        ConsumerArgs::parse(arguments, &queue)?;
        let tag: Arc<str> = if tag.is_empty() { Arc::from(generated_name("amq.ctag-")) } else { Arc::from(tag) };
        let prefetch = {
            let mut ch = cell.lock();
            if ch.consumers.contains_key(&tag) || ch.reply_to.as_ref().is_some_and(|r| r.tag == tag) {
                return Err(AmqpError::connection(
                    reply::NOT_ALLOWED,
                    format!("attempt to reuse consumer tag '{tag}'"),
                ));
            }
            ch.consumers.insert(tag.clone(), queue.clone());
            ch.consumer_prefetch
        };
        Ok(router.consume(RemoteConsume {
            handle: handle.clone(),
            channel,
            group,
            vhost,
            user: user.to_string(),
            queue,
            tag,
            no_ack,
            exclusive,
            no_wait,
            prefetch,
            arguments: arguments.clone(),
        }))
    }

    /// basic.get of a replicated queue: the work that takes a message at
    /// the queue's leader and sends get-ok or get-empty.
    pub fn get_replicated(
        &self,
        handle: &ConnectionHandle,
        channel: u16,
        queue: &str,
        no_ack: bool,
        user: &str,
    ) -> Result<RemoteWork> {
        let router = self.router_for_remote()?;
        let (_, vhost, queue, group, _) = self.state.read().replicated_target(handle.id, channel, queue)?;
        Ok(router.get(RemoteGet {
            handle: handle.clone(),
            channel,
            group,
            vhost,
            user: user.to_string(),
            queue,
            no_ack,
        }))
    }

    /// A consumer the leader refused, or cancelled (its queue was
    /// deleted): its tag leaves the channel; with `notify`, the client is
    /// told with basic.cancel (if it asked for such notices).
    pub fn remote_consumer_gone(&self, conn: u64, channel: u16, tag: &str, notify: bool) {
        let st = self.state.read();
        let Some(cell) = st.channel(conn, channel) else { return };
        if cell.lock().consumers.remove(tag).is_none() || !notify {
            return;
        }
        if let Some(entry) = st.connections.get(&conn)
            && entry.handle.cancel_notify
        {
            entry.handle.method(channel, BasicCancel { consumer_tag: tag.to_string(), no_wait: true });
        }
    }

    /// Has a client's channel closed with `error` (the leader closed the
    /// session's channel: a consumer timeout).
    pub fn close_client_channel(&self, conn: u64, channel: u16, error: AmqpError) {
        if let Some(entry) = self.state.read().connections.get(&conn) {
            entry.handle.event(BrokerEvent::CloseChannel { channel, error });
        }
    }

    /// Hands a message the leader delivered to consumer `tag` of this
    /// node's channel to its client. False when the channel or the
    /// consumer is gone here (the caller gives the message back).
    pub fn deliver_remote(&self, conn: u64, channel: u16, tag: &Arc<str>, delivery: RemoteDelivery) -> bool {
        let st = self.state.read();
        let (Some(cell), Some(entry)) = (st.channel(conn, channel), st.connections.get(&conn)) else { return false };
        let mut ch = cell.lock();
        if !ch.consumers.contains_key(tag) {
            return false;
        }
        let delivery_tag = ch.take_tag();
        let stat = match delivery.settle {
            Some((link, tag)) => {
                ch.remote_unacked.insert(delivery_tag, RemoteUnacked { link, tag });
                &self.stats.delivered_consume_manual_ack
            }
            None => &self.stats.delivered_consume_auto_ack,
        };
        GlobalStats::add(stat, 1);
        if delivery.redelivered {
            GlobalStats::add(&self.stats.redelivered, 1);
        }
        entry.handle.send(Outgoing::Deliver {
            channel,
            consumer_tag: tag.clone(),
            delivery_tag,
            redelivered: delivery.redelivered,
            message: delivery.message,
        });
        true
    }

    /// Answers a client's basic.get with a message the leader took for
    /// it. False when the channel is gone here (the caller gives it back).
    pub fn get_ok_remote(&self, conn: u64, channel: u16, message_count: u32, delivery: RemoteDelivery) -> bool {
        let st = self.state.read();
        let (Some(cell), Some(entry)) = (st.channel(conn, channel), st.connections.get(&conn)) else { return false };
        let mut ch = cell.lock();
        let delivery_tag = ch.take_tag();
        let no_ack = delivery.settle.is_none();
        if let Some((link, tag)) = delivery.settle {
            ch.remote_unacked.insert(delivery_tag, RemoteUnacked { link, tag });
        }
        let stat = if no_ack { &self.stats.delivered_get_auto_ack } else { &self.stats.delivered_get_manual_ack };
        GlobalStats::add(stat, 1);
        let method = BasicGetOk {
            delivery_tag,
            redelivered: delivery.redelivered,
            exchange: delivery.message.exchange.clone(),
            routing_key: delivery.message.routing_key.clone(),
            message_count,
        };
        entry.handle.send(Outgoing::Content { channel, method: method.into(), message: delivery.message });
        true
    }
}
