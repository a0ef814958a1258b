//! The client's end of the consumer sessions (`session_wire`): this
//! node's clients consume from and get from replicated quorum queues
//! through the queue's leader, wherever it is (`sessions` is the leader's
//! end; on the leader's own node the session is served without the
//! network).
//!
//! One session per client channel and queue group. Its poller fetches
//! what the leader delivered and hands it to the client's channel
//! (`broker::remote`), whose acks go back by the leader's delivery tags.
//! When the leader changes (or does not answer for half a [`LEASE`]) the
//! session attaches to the new leader under a new id and makes its
//! consumers there again: what the old session held goes back to the
//! queue at the old leader (closed, or at its lease's end), and the
//! client's later settles of those deliveries are dropped: they come
//! again (at least once).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::propose::AGAIN;
use super::quorum::QueueGroups;
use super::session_wire::*;
use super::sessions::LEASE;
use super::types::NodeId;
use crate::broker::queue_type::Settle;
use crate::broker::remote::{RemoteConsume, RemoteDelivery, RemoteGet, RemoteLink, RemoteWork};
use crate::broker::{AmqpError, Broker, ConnectionHandle, OUTBOUND_HIGH_WATER, OutboundShared, message_from_parts};
use crate::protocol::FieldTable;
use crate::protocol::method::{BasicConsumeOk, BasicGetEmpty};

/// How long a consume or get tries to reach the queue's leader.
const REACH_WITHIN: Duration = Duration::from_secs(10);

/// This node's sessions, by (connection, channel, queue group).
#[derive(Default)]
pub struct ClientSessions {
    sessions: Mutex<HashMap<(u64, u16, u64), Arc<ClientSession>>>,
}

struct ClientSession {
    conn: u64,
    channel: u16,
    group: u64,
    vhost: Arc<str>,
    user: String,
    /// The client connection's outbound queue: not polled while full.
    outbound: Arc<OutboundShared>,
    /// The consumers, to make again at a new leader. Held while a
    /// consume is made or a poll's items are handed out, so a consumer's
    /// consume-ok goes out before its first delivery.
    consumers: tokio::sync::Mutex<HashMap<Arc<str>, ConsumeSpec>>,
    /// The leader and the id the session has there now.
    attached: Mutex<Option<Arc<Attachment>>>,
    poller: Mutex<Option<tokio::task::AbortHandle>>,
    /// Settles, cancels and closes, sent in order by one task (an ack
    /// must reach the leader before the close of its channel's session).
    outbox: mpsc::UnboundedSender<Outbound>,
}

/// A request sent without waiting for it: to the session `id` at `leader`.
struct Outbound {
    leader: NodeId,
    id: u64,
    op: SessionOp,
}

#[derive(Clone)]
struct ConsumeSpec {
    queue: Arc<str>,
    no_ack: bool,
    exclusive: bool,
    prefetch: u16,
    arguments: FieldTable,
}

/// A session at one leader: where its deliveries are settled.
struct Attachment {
    leader: NodeId,
    id: u64,
    groups: Weak<QueueGroups>,
    session: Weak<ClientSession>,
}

impl RemoteLink for Attachment {
    fn settle(&self, tags: Vec<u64>, how: Settle) {
        let Some(session) = self.session.upgrade() else { return };
        // Settles for a session that was replaced are dropped: its
        // deliveries went back to the queue at the old leader.
        if session.attached.lock().as_ref().is_none_or(|a| a.id != self.id) {
            return;
        }
        let how = match how {
            Settle::Ack => SettleHow::Ack,
            Settle::Requeue => SettleHow::Requeue,
            Settle::Discard => SettleHow::Discard,
        };
        session.send(self, SessionOp::Settle { how, tags });
    }
}

/// Sends a session's outbound requests one after the other, each batch
/// of consecutive settles of one kind as one request.
async fn send_loop(groups: Weak<QueueGroups>, group: u64, mut outbox: mpsc::UnboundedReceiver<Outbound>) {
    while let Some(first) = outbox.recv().await {
        let mut batch: Vec<Outbound> = vec![first];
        while let Ok(next) = outbox.try_recv() {
            if let Some(last) = batch.last_mut()
                && (last.leader, last.id) == (next.leader, next.id)
                && let (SessionOp::Settle { how, tags }, SessionOp::Settle { how: next_how, tags: more }) =
                    (&mut last.op, &next.op)
                && how == next_how
            {
                tags.extend_from_slice(more);
                continue;
            }
            batch.push(next);
        }
        let Some(groups) = groups.upgrade() else { return };
        for Outbound { leader, id, op } in batch {
            let request = SessionRequest { origin: groups.me(), session: id, op };
            let _ = groups.call_session(group, leader, request).await;
        }
    }
}

fn unreachable_leader(queue: &str, vhost: &str) -> AmqpError {
    AmqpError::not_found(format!("leader of quorum queue '{queue}' in vhost '{vhost}' is down or inaccessible"))
}

impl ClientSessions {
    /// The session of a channel with a group's leader, made (and its
    /// poller started) if new.
    fn session(
        &self,
        groups: &Arc<QueueGroups>,
        (handle, channel, group): (&ConnectionHandle, u16, u64),
        vhost: &Arc<str>,
        user: &str,
    ) -> Arc<ClientSession> {
        let mut sessions = self.sessions.lock();
        if let Some(session) = sessions.get(&(handle.id, channel, group)) {
            return session.clone();
        }
        let (outbox, sending) = mpsc::unbounded_channel();
        groups.spawn(send_loop(Arc::downgrade(groups), group, sending));
        let session = Arc::new(ClientSession {
            outbox,
            conn: handle.id,
            channel,
            group,
            outbound: handle.outbound(),
            vhost: vhost.clone(),
            user: user.to_string(),
            consumers: tokio::sync::Mutex::new(HashMap::new()),
            attached: Mutex::new(None),
            poller: Mutex::new(None),
        });
        let poller = groups.spawn(poll_loop(Arc::downgrade(groups), session.clone()));
        *session.poller.lock() = Some(poller);
        sessions.insert((handle.id, channel, group), session.clone());
        session
    }

    /// A client's basic.consume, made at the leader.
    pub fn consume(&self, groups: &Arc<QueueGroups>, broker: Weak<Broker>, r: RemoteConsume) -> RemoteWork {
        let session = self.session(groups, (&r.handle, r.channel, r.group), &r.vhost, &r.user);
        let groups = Arc::downgrade(groups);
        Box::pin(async move {
            let spec = ConsumeSpec {
                queue: r.queue.clone(),
                no_ack: r.no_ack,
                exclusive: r.exclusive,
                prefetch: r.prefetch,
                arguments: r.arguments,
            };
            let gone = |e: AmqpError| {
                if let Some(broker) = broker.upgrade() {
                    broker.remote_consumer_gone(r.handle.id, r.channel, &r.tag, false);
                }
                Err(e)
            };
            let deadline = Instant::now() + REACH_WITHIN;
            let mut consumers = session.consumers.lock().await;
            while Instant::now() < deadline {
                let Some(groups) = groups.upgrade() else { break };
                let Some(at) = session.attach(&groups, &broker, &mut consumers).await else {
                    tokio::time::sleep(AGAIN).await;
                    continue;
                };
                let op = spec.consume_op(&session, &r.tag);
                match groups.call_session(r.group, at.leader, at.request(op)).await {
                    Ok(SessionReply::Done) => {
                        consumers.insert(r.tag.clone(), spec);
                        if !r.no_wait {
                            r.handle.method(r.channel, BasicConsumeOk { consumer_tag: r.tag.to_string() });
                        }
                        return Ok(());
                    }
                    Ok(SessionReply::Refused(e)) => return gone(e),
                    _ => {
                        session.detach(&at);
                        tokio::time::sleep(AGAIN).await;
                    }
                }
            }
            gone(unreachable_leader(&r.queue, &r.vhost))
        })
    }

    /// A client's basic.get, made at the leader.
    pub fn get(&self, groups: &Arc<QueueGroups>, broker: Weak<Broker>, r: RemoteGet) -> RemoteWork {
        let session = self.session(groups, (&r.handle, r.channel, r.group), &r.vhost, &r.user);
        let groups = Arc::downgrade(groups);
        Box::pin(async move {
            let deadline = Instant::now() + REACH_WITHIN;
            let mut consumers = session.consumers.lock().await;
            while Instant::now() < deadline {
                let (Some(groups), Some(broker_now)) = (groups.upgrade(), broker.upgrade()) else { break };
                let Some(at) = session.attach(&groups, &broker, &mut consumers).await else {
                    tokio::time::sleep(AGAIN).await;
                    continue;
                };
                let op = SessionOp::Get {
                    vhost: r.vhost.to_string(),
                    user: r.user.clone(),
                    queue: r.queue.to_string(),
                    no_ack: r.no_ack,
                };
                match groups.call_session(r.group, at.leader, at.request(op)).await {
                    Ok(SessionReply::Got { tag, redelivered, message_count, message }) => {
                        let message =
                            message_from_parts(message.exchange, message.routing_key, message.properties, message.body);
                        let link: Arc<dyn RemoteLink> = at.clone();
                        let settle = (!r.no_ack).then(|| (link.clone(), tag));
                        let delivery = RemoteDelivery { redelivered, message: Arc::new(message), settle };
                        if !broker_now.get_ok_remote(r.handle.id, r.channel, message_count, delivery) && !r.no_ack {
                            link.settle(vec![tag], Settle::Requeue);
                        }
                        return Ok(());
                    }
                    Ok(SessionReply::Empty) => {
                        crate::broker::GlobalStats::add(&broker_now.stats().get_empty, 1);
                        r.handle.method(r.channel, BasicGetEmpty::default());
                        return Ok(());
                    }
                    Ok(SessionReply::Refused(e)) => return Err(e),
                    _ => {
                        session.detach(&at);
                        tokio::time::sleep(AGAIN).await;
                    }
                }
            }
            Err(unreachable_leader(&r.queue, &r.vhost))
        })
    }

    /// A client cancelled a consumer (its tag already left the channel).
    pub fn cancel(&self, groups: &Arc<QueueGroups>, (conn, channel, group): (u64, u16, u64), tag: Arc<str>) {
        let Some(session) = self.sessions.lock().get(&(conn, channel, group)).cloned() else { return };
        groups.spawn(async move {
            let mut consumers = session.consumers.lock().await;
            consumers.remove(&tag);
            let attached = session.attached.lock().clone();
            if let Some(at) = attached {
                session.send(&at, SessionOp::Cancel { tag: tag.to_string() });
            }
        });
    }

    /// A client's channel closed: its sessions end, and what they held
    /// goes back to the queues at their leaders.
    pub fn channel_closed(&self, conn: u64, channel: u16) {
        let mut closing = Vec::new();
        self.sessions.lock().retain(|&(c, ch, _), session| {
            let keep = (c, ch) != (conn, channel);
            if !keep {
                closing.push(session.clone());
            }
            keep
        });
        for session in closing {
            session.close();
        }
    }

    fn forget(&self, session: &ClientSession) {
        let key = (session.conn, session.channel, session.group);
        let mut sessions = self.sessions.lock();
        if sessions.get(&key).is_some_and(|s| std::ptr::eq(&**s, session)) {
            sessions.remove(&key);
        }
    }
}

impl ConsumeSpec {
    fn consume_op(&self, session: &ClientSession, tag: &str) -> SessionOp {
        SessionOp::Consume {
            vhost: session.vhost.to_string(),
            user: session.user.clone(),
            queue: self.queue.to_string(),
            tag: tag.to_string(),
            no_ack: self.no_ack,
            exclusive: self.exclusive,
            prefetch: self.prefetch,
            arguments: self.arguments.clone(),
        }
    }
}

impl Attachment {
    fn request(&self, op: SessionOp) -> SessionRequest {
        let origin = self.groups.upgrade().map_or(0, |g| g.me());
        SessionRequest { origin, session: self.id, op }
    }
}

impl ClientSession {
    /// The session's attachment to the group's leader: made if there is
    /// none, with its consumers made again there. None: no leader known,
    /// or it did not answer.
    async fn attach(
        self: &Arc<Self>,
        groups: &Arc<QueueGroups>,
        broker: &Weak<Broker>,
        consumers: &mut HashMap<Arc<str>, ConsumeSpec>,
    ) -> Option<Arc<Attachment>> {
        if let Some(at) = self.attached.lock().clone() {
            return Some(at);
        }
        let leader = groups.leader_of(self.group)?;
        let at = Arc::new(Attachment {
            leader,
            id: fastrand::u64(1..),
            groups: Arc::downgrade(groups),
            session: Arc::downgrade(self),
        });
        let tags: Vec<Arc<str>> = consumers.keys().cloned().collect();
        for tag in tags {
            let Some(spec) = consumers.get(&tag) else { continue };
            match groups.call_session(self.group, leader, at.request(spec.consume_op(self, &tag))).await {
                Ok(SessionReply::Done) => {}
                Ok(SessionReply::Refused(e)) => {
                    // Refused at the new leader (another exclusive
                    // consumer came first, say): the client learns it lost it.
                    tracing::info!("consumer '{tag}' of quorum queue '{}' not made again: {}", spec.queue, e.text);
                    consumers.remove(&tag);
                    if let Some(broker) = broker.upgrade() {
                        broker.remote_consumer_gone(self.conn, self.channel, &tag, true);
                    }
                }
                _ => {
                    self.send(&at, SessionOp::Close);
                    return None;
                }
            }
        }
        *self.attached.lock() = Some(at.clone());
        Some(at)
    }

    /// Gives up `at` (its leader changed or does not answer); the next
    /// request attaches again. Its session there is ended (if the leader
    /// can be reached): what it holds goes back to the queue now rather
    /// than at its lease's end.
    fn detach(&self, at: &Arc<Attachment>) {
        let mut attached = self.attached.lock();
        if attached.as_ref().is_some_and(|a| Arc::ptr_eq(a, at)) {
            *attached = None;
            drop(attached);
            self.send(at, SessionOp::Close);
        }
    }

    fn close(&self) {
        if let Some(poller) = self.poller.lock().take() {
            poller.abort();
        }
        if let Some(at) = self.attached.lock().take() {
            self.send(&at, SessionOp::Close);
        }
    }

    /// Sends `op` to the session `at` names, after what was sent before.
    fn send(&self, at: &Attachment, op: SessionOp) {
        let _ = self.outbox.send(Outbound { leader: at.leader, id: at.id, op });
    }
}

/// Fetches what the leader delivered to a session's consumers and hands it
/// to the client's channel, for as long as the session lives.
async fn poll_loop(groups: Weak<QueueGroups>, session: Arc<ClientSession>) {
    let mut answered_at = Instant::now();
    loop {
        let Some(groups_now) = groups.upgrade() else { return };
        let broker = groups_now.broker();
        if !groups_now.reaches(session.group) {
            // The queue is gone: its consumers are cancelled.
            let mut consumers = session.consumers.lock().await;
            if let Some(broker) = broker.upgrade() {
                for tag in consumers.keys() {
                    broker.remote_consumer_gone(session.conn, session.channel, tag, true);
                }
            }
            consumers.clear();
            groups_now.clients().forget(&session);
            return;
        }
        let attached = {
            let mut consumers = session.consumers.lock().await;
            session.attach(&groups_now, &broker, &mut consumers).await
        };
        let Some(at) = attached else {
            drop(groups_now);
            tokio::time::sleep(AGAIN).await;
            continue;
        };
        // A client not reading its socket is not fed more: the leader's
        // deliveries wait there (and count against its outbound limit).
        if session.outbound.pending() >= OUTBOUND_HIGH_WATER {
            drop(groups_now);
            let _ = tokio::time::timeout(AGAIN, session.outbound.drained()).await;
            continue;
        }
        let reply = groups_now.call_session(session.group, at.leader, at.request(SessionOp::Poll)).await;
        match reply {
            Ok(SessionReply::Items(items)) => {
                answered_at = Instant::now();
                let mut consumers = session.consumers.lock().await;
                hand_out(&session, &at, &broker, &mut consumers, items);
            }
            Ok(SessionReply::NotLeader) | Ok(SessionReply::Unknown) => session.detach(&at),
            _ => {
                // A leader that is gone or not heard from: the group's new
                // leader, or this one once it has not answered for half a lease.
                let moved = groups_now.leader_of(session.group) != Some(at.leader);
                if moved || answered_at.elapsed() > LEASE / 2 {
                    session.detach(&at);
                    answered_at = Instant::now();
                }
                drop(groups_now);
                tokio::time::sleep(AGAIN).await;
            }
        }
    }
}

/// Hands a poll's items to the client's channel.
fn hand_out(
    session: &ClientSession,
    at: &Arc<Attachment>,
    broker: &Weak<Broker>,
    consumers: &mut HashMap<Arc<str>, ConsumeSpec>,
    items: Vec<SessionItem>,
) {
    let Some(broker) = broker.upgrade() else { return };
    // Items of a session replaced meanwhile went back to the queue there.
    if !session.attached.lock().as_ref().is_some_and(|a| Arc::ptr_eq(a, at)) {
        return;
    }
    let link: Arc<dyn RemoteLink> = at.clone();
    let mut give_back = Vec::new();
    for item in items {
        match item {
            SessionItem::Deliver { consumer_tag, tag, redelivered, message } => {
                let Some((tag_here, spec)) = consumers.get_key_value(consumer_tag.as_str()) else {
                    // Cancelled here meanwhile: the client never saw it.
                    give_back.push(tag);
                    continue;
                };
                let message =
                    message_from_parts(message.exchange, message.routing_key, message.properties, message.body);
                let settle = (!spec.no_ack).then(|| (link.clone(), tag));
                let delivery = RemoteDelivery { redelivered, message: Arc::new(message), settle };
                if !broker.deliver_remote(session.conn, session.channel, tag_here, delivery) && !spec.no_ack {
                    give_back.push(tag);
                }
            }
            SessionItem::Cancelled { consumer_tag } => {
                consumers.remove(consumer_tag.as_str());
                broker.remote_consumer_gone(session.conn, session.channel, &consumer_tag, true);
            }
            SessionItem::Closed { code, text } => {
                let error = AmqpError { code, text, scope: crate::broker::Scope::Channel };
                broker.close_client_channel(session.conn, session.channel, error);
            }
        }
    }
    if !give_back.is_empty() {
        link.settle(give_back, Settle::Requeue);
    }
}
