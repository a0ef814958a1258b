//! The leader's end of the consumer sessions (`session_wire`): a node whose
//! client consumes from, gets from or settles a replicated quorum queue
//! that this node leads does it here.
//!
//! Each session is a connection of this node's broker with one channel
//! (1), on which consumers and gets are made as a client's would be: the
//! prefetch, priorities, single active consumer, redelivered flags and the
//! settles committed through the group work as for this node's own
//! clients. What the broker sends that connection waits here until the
//! session's node polls for it; deliveries it has not fetched count
//! against the connection's outbound limit, so a node that stops polling
//! stops receiving.
//!
//! A session not heard from for [`LEASE`] is closed, and its unsettled
//! deliveries go back to the queue: the node that held them is gone or cut
//! off. A node that does not lead the queue's group answers every request
//! with `NotLeader` and closes the session.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, oneshot};

use super::session_wire::*;
use crate::broker::{Broker, BrokerEvent, ConnectionHandle, ConnectionInfo, Message, OutboundShared, Outgoing};
use crate::protocol::Method;
use crate::protocol::method::ChannelClose;

/// How long a session lives without a request from its node.
pub const LEASE: Duration = Duration::from_secs(10);
/// How long a poll waits for something to bring back.
pub const POLL_WAIT: Duration = Duration::from_secs(1);
/// How long a basic.get waits for the broker's answer.
const GET_WITHIN: Duration = Duration::from_secs(5);
/// The most one poll brings back.
const POLL_MOST_ITEMS: usize = 1024;
const POLL_MOST_BYTES: usize = 1 << 20;
/// The session's channel on its connection.
const CHANNEL: u16 = 1;

/// The sessions this node serves as the leader of quorum queues' groups.
pub struct SessionServer {
    broker: Weak<Broker>,
    sessions: Mutex<HashMap<(u64, u64), Arc<ServedSession>>>,
}

struct ServedSession {
    conn: u64,
    handle: ConnectionHandle,
    /// Deliveries and cancels the broker sent, not polled yet.
    waiting: Mutex<VecDeque<Outgoing>>,
    arrived: Notify,
    /// Where the answer to a basic.get in progress goes.
    get_reply: Mutex<Option<oneshot::Sender<Outgoing>>>,
    heard_at: Mutex<Instant>,
    pump: Mutex<Option<tokio::task::AbortHandle>>,
}

/// A message as a session carries it.
pub fn carried(message: &Message) -> CarriedMessage {
    CarriedMessage {
        exchange: message.exchange.clone(),
        routing_key: message.routing_key.clone(),
        properties: message.properties.clone(),
        body: message.body.clone(),
    }
}

impl SessionServer {
    pub fn new(broker: Weak<Broker>) -> Arc<SessionServer> {
        Arc::new(SessionServer { broker, sessions: Mutex::new(HashMap::new()) })
    }

    /// Serves one request; `leads`: whether this node leads the queue's group.
    pub async fn serve(self: &Arc<Self>, leads: bool, request: SessionRequest) -> SessionReply {
        let key = (request.origin, request.session);
        let Some(broker) = self.broker.upgrade().filter(|_| leads) else {
            self.close(key);
            return SessionReply::NotLeader;
        };
        match request.op {
            SessionOp::Consume { vhost, user, queue, tag, no_ack, exclusive, prefetch, arguments } => {
                let session = match self.open(&broker, key, &vhost, &user) {
                    Ok(session) => session,
                    Err(e) => return SessionReply::Refused(e),
                };
                broker.qos(session.conn, CHANNEL, prefetch, false);
                match broker.consume(&session.handle, CHANNEL, &queue, &tag, no_ack, exclusive, true, &arguments) {
                    Ok(()) => {
                        broker.start_delivery(&vhost, &queue);
                        SessionReply::Done
                    }
                    Err(e) => SessionReply::Refused(e),
                }
            }
            SessionOp::Get { vhost, user, queue, no_ack } => {
                let session = match self.open(&broker, key, &vhost, &user) {
                    Ok(session) => session,
                    Err(e) => return SessionReply::Refused(e),
                };
                let (tx, rx) = oneshot::channel();
                *session.get_reply.lock() = Some(tx);
                if let Err(e) = broker.get(&session.handle, CHANNEL, &queue, no_ack) {
                    session.get_reply.lock().take();
                    return SessionReply::Refused(e);
                }
                match tokio::time::timeout(GET_WITHIN, rx).await {
                    Ok(Ok(Outgoing::Content { method: Method::BasicGetOk(ok), message, .. })) => SessionReply::Got {
                        tag: ok.delivery_tag,
                        redelivered: ok.redelivered,
                        message_count: ok.message_count,
                        message: carried(&message),
                    },
                    _ => SessionReply::Empty,
                }
            }
            op => {
                let Some(session) = self.sessions.lock().get(&key).cloned() else { return SessionReply::Unknown };
                *session.heard_at.lock() = Instant::now();
                match op {
                    SessionOp::Cancel { tag } => {
                        broker.cancel(session.conn, CHANNEL, &tag);
                    }
                    SessionOp::Settle { how: SettleHow::Ack, tags } => {
                        let acks: Vec<(u64, bool)> = tags.iter().map(|t| (*t, false)).collect();
                        // An unknown tag (settled already) ends the run:
                        // then each is settled on its own.
                        if broker.ack_many(session.conn, CHANNEL, &acks).is_err() {
                            for tag in tags {
                                let _ = broker.ack(session.conn, CHANNEL, tag, false);
                            }
                        }
                    }
                    SessionOp::Settle { how, tags } => {
                        for tag in tags {
                            let _ = broker.reject(session.conn, CHANNEL, tag, false, how == SettleHow::Requeue);
                        }
                    }
                    SessionOp::Poll => return self.poll(&broker, &session).await,
                    SessionOp::Close => self.close(key),
                    SessionOp::Consume { .. } | SessionOp::Get { .. } => {}
                }
                SessionReply::Done
            }
        }
    }

    /// The session `key`, made (as a connection of the broker) if new.
    fn open(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        key: (u64, u64),
        vhost: &str,
        user: &str,
    ) -> Result<Arc<ServedSession>, crate::broker::AmqpError> {
        let mut sessions = self.sessions.lock();
        if let Some(session) = sessions.get(&key) {
            *session.heard_at.lock() = Instant::now();
            return Ok(session.clone());
        }
        let conn = crate::server::next_connection_id();
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let handle = ConnectionHandle::new(conn, tx, Arc::new(OutboundShared::default()), true).with_events(events);
        let info = ConnectionInfo {
            peer: format!("cluster node {}", key.0),
            user: user.to_string(),
            vhost: vhost.to_string(),
            client: "warren consumer session".into(),
            heartbeat: 0,
            frame_max: 0,
            connected_at: crate::store::wall_ms(),
            tls: false,
            auth_mechanism: "cluster".into(),
        };
        broker.register_connection(handle.clone(), info)?;
        broker.open_channel(conn, CHANNEL);
        let session = Arc::new(ServedSession {
            conn,
            handle,
            waiting: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
            get_reply: Mutex::new(None),
            heard_at: Mutex::new(Instant::now()),
            pump: Mutex::new(None),
        });
        let pump = tokio::spawn(pump(Arc::downgrade(self), key, session.clone(), (rx, events_rx)));
        *session.pump.lock() = Some(pump.abort_handle());
        sessions.insert(key, session.clone());
        Ok(session)
    }

    /// Ends a session: what it holds unsettled goes back to the queue.
    fn close(&self, key: (u64, u64)) {
        let Some(session) = self.sessions.lock().remove(&key) else { return };
        if let Some(pump) = session.pump.lock().take() {
            pump.abort();
        }
        if let Some(broker) = self.broker.upgrade() {
            broker.close_connection(session.conn);
        }
    }

    /// What the session has waiting, after up to [`POLL_WAIT`] if nothing.
    async fn poll(&self, broker: &Broker, session: &ServedSession) -> SessionReply {
        let deadline = tokio::time::Instant::now() + POLL_WAIT;
        loop {
            let arrived = session.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let taken: Vec<Outgoing> = {
                let mut waiting = session.waiting.lock();
                let mut bytes = 0;
                let mut count = 0;
                for item in waiting.iter() {
                    if count == POLL_MOST_ITEMS || bytes >= POLL_MOST_BYTES {
                        break;
                    }
                    count += 1;
                    if let Outgoing::Deliver { message, .. } = item {
                        bytes += message.body.len();
                    }
                }
                waiting.drain(..count).collect()
            };
            if !taken.is_empty() {
                if session.handle.outbound().written(&taken) {
                    broker.resume_connection(session.conn);
                }
                let items = taken
                    .into_iter()
                    .filter_map(|item| match item {
                        Outgoing::Deliver { consumer_tag, delivery_tag, redelivered, message, .. } => {
                            Some(SessionItem::Deliver {
                                consumer_tag: consumer_tag.to_string(),
                                tag: delivery_tag,
                                redelivered,
                                message: carried(&message),
                            })
                        }
                        Outgoing::Method { method: Method::BasicCancel(c), .. } => {
                            Some(SessionItem::Cancelled { consumer_tag: c.consumer_tag })
                        }
                        Outgoing::Method { method: Method::ChannelClose(c), .. } => {
                            Some(SessionItem::Closed { code: c.reply_code, text: c.reply_text })
                        }
                        _ => None,
                    })
                    .collect();
                return SessionReply::Items(items);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return SessionReply::Items(Vec::new());
            }
        }
    }
}

/// Moves what the broker sends a session's connection to where its polls
/// and gets take it, and closes the session once its lease ran out.
async fn pump(
    server: Weak<SessionServer>,
    key: (u64, u64),
    session: Arc<ServedSession>,
    (mut sent, mut events): (mpsc::UnboundedReceiver<Outgoing>, mpsc::UnboundedReceiver<BrokerEvent>),
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            event = events.recv() => match event {
                // A consumer timeout: the client's channel is closed with
                // the error, and what the session held goes back now.
                Some(BrokerEvent::CloseChannel { error, .. }) => {
                    let close = ChannelClose { reply_code: error.code, reply_text: error.text, class_id: 0, method_id: 0 };
                    session.waiting.lock().push_back(Outgoing::Method { channel: CHANNEL, method: close.into() });
                    session.arrived.notify_one();
                    if let Some(broker) = server.upgrade().and_then(|s| s.broker.upgrade()) {
                        broker.close_channel(session.conn, CHANNEL);
                    }
                }
                // Its vhost deleted, or closed by an operator: the session ends.
                Some(_) | None => {
                    if let Some(server) = server.upgrade() {
                        server.close(key);
                    }
                    return;
                }
            },
            item = sent.recv() => {
                let Some(item) = item else { return };
                match item {
                    Outgoing::Deliver { .. } | Outgoing::Method { method: Method::BasicCancel(_), .. } => {
                        session.waiting.lock().push_back(item);
                        session.arrived.notify_one();
                    }
                    Outgoing::Content { method: Method::BasicGetOk(_), .. }
                    | Outgoing::Method { method: Method::BasicGetEmpty(_), .. } => {
                        session.handle.outbound().written(std::slice::from_ref(&item));
                        if let Some(reply) = session.get_reply.lock().take() {
                            let _ = reply.send(item);
                        }
                    }
                    other => {
                        session.handle.outbound().written(std::slice::from_ref(&other));
                    }
                }
            }
            _ = tick.tick() => {
                if session.heard_at.lock().elapsed() > LEASE {
                    if let Some(server) = server.upgrade() {
                        tracing::info!("a consumer session of node {} expired: its deliveries go back", key.0);
                        server.close(key);
                    }
                    return;
                }
            }
        }
    }
}
