//! One AMQP connection: its state, the read loop with heartbeat and
//! partial-frame supervision and the bound on what waits for its socket,
//! durable replies and confirms, frame routing to channels, and the close
//! handshake in both directions. The start/tune/open handshake is in
//! `handshake`; what blocks a publisher and the read buffer's sizing in
//! `flow`.

use rustc_hash::FxHashMap as HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc::unbounded_channel;
use tokio::sync::watch;

use super::Transport;
use super::channel::Channel;
use super::flow::{QUIET_READ, filled, make_room};
use super::replicated::TicketState;
use super::writer::{self, WriterContext, WriterTuning};
use crate::broker::message::OUTBOUND_READ_PAUSE;
use crate::broker::{AmqpError, Broker, BrokerEvent, ConnectionHandle, GlobalStats, OutboundShared, Outgoing, Scope};
use crate::config::Config;
use crate::protocol::method::*;
use crate::protocol::{Frame, Method, decode_frame, reply};
use crate::store::Durability;
use crate::store::disk::DiskAlarm;

/// A connection-level error: what goes into connection.close.
#[derive(Debug)]
pub(super) struct CloseReason {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl CloseReason {
    pub fn new(code: u16, detail: impl std::fmt::Display) -> Self {
        CloseReason { code, text: format!("{} - {detail}", reply::name(code)), class_id: 0, method_id: 0 }
    }

    pub fn from_error(err: AmqpError, ids: (u16, u16)) -> Self {
        CloseReason { code: err.code, text: err.text, class_id: ids.0, method_id: ids.1 }
    }
}

/// Why the read loop ended.
pub(super) enum Exit {
    /// The close handshake completed, or the socket closed.
    Done,
    /// We must send connection.close with this reason.
    Close(CloseReason),
    /// The peer stopped talking (heartbeat or handshake timeout) or the socket failed.
    Dropped(String),
}

impl From<CloseReason> for Exit {
    fn from(r: CloseReason) -> Self {
        Exit::Close(r)
    }
}

pub(super) struct Connection {
    pub id: u64,
    pub peer: SocketAddr,
    pub broker: Arc<Broker>,
    pub config: Arc<Config>,
    pub(super) reader: Box<dyn AsyncRead + Send + Unpin>,
    pub(super) buf: BytesMut,
    pub handle: ConnectionHandle,
    pub(super) tuning: Arc<WriterTuning>,
    pub frame_max: u32,
    pub(super) channel_max: u16,
    pub(super) heartbeat: u16,
    pub channels: HashMap<u16, Channel>,
    pub(super) user: String,
    /// The vhost connection.open named.
    pub(super) vhost: String,
    /// (access control generation, resource name -> answers by kind and
    /// access): see `permissions`.
    pub(super) permission_cache: (u64, HashMap<String, [Option<bool>; 6]>),
    /// What the broker asks of this connection (a channel to close).
    pub(super) events: tokio::sync::mpsc::UnboundedReceiver<BrokerEvent>,
    pub(super) registered: bool,
    pub(super) durability: watch::Receiver<Durability>,
    /// The log position captured before the current method, to tell whether
    /// the method appended durable definitions.
    pub(super) appended_before: u64,
    /// Replies held back until the log is durable up to a position.
    pub(super) deferred: Vec<(u64, u16, Method)>,
    /// On a node of a cluster: a change to the shared definitions this
    /// frame made, awaited (through the metadata group) before the next
    /// frame is read, so the connection's methods keep their order.
    pub(super) pending_change: Option<PendingChange>,
    /// Its publishes to replicated quorum queues (made on the first).
    pub(super) replicated: Option<super::replicated::ReplicatedPublisher>,
    /// Notified when some of those were committed (their confirms may go).
    pub(super) replicated_settled: Arc<tokio::sync::Notify>,
    /// basic.acks read and not settled yet (see `acks`).
    pub(super) pending_acks: super::acks::PendingAcks,
    /// Queues that got a consumer in this batch of frames: deliveries start
    /// once the consume-ok replies were written.
    pub start_delivery: Vec<String>,
    /// The client understands connection.blocked / unblocked.
    pub(super) blocked_notify: bool,
    /// A basic.publish arrived in the frames just read: only connections
    /// that publish are blocked by a resource alarm, as in RabbitMQ.
    pub published: bool,
    pub(super) disk_alarm: watch::Receiver<DiskAlarm>,
    pub(super) memory_alarm: watch::Receiver<bool>,
    /// Plain TCP or TLS, and the client certificate's name.
    pub(super) transport: Transport,
    /// The mechanism the client authenticated with.
    pub(super) auth_mechanism: String,
}

/// What a method of a node of a cluster waits for before the next frame.
pub(super) enum PendingChange {
    /// A change to the shared definitions, for the metadata group.
    Shared {
        channel: u16,
        change: Box<crate::broker::changes::Change>,
        /// The method's (class, method) ids, for an error's close.
        ids: (u16, u16),
        reply: Option<Method>,
    },
    /// A consume or get of a replicated queue, made at its leader (which
    /// sends the reply itself).
    AtLeader { channel: u16, ids: (u16, u16), work: crate::broker::remote::RemoteWork },
}

pub async fn run(socket: TcpStream, peer: SocketAddr, id: u64, broker: Arc<Broker>, config: Arc<Config>) {
    let _ = socket.set_nodelay(true);
    let (reader, writer) = socket.into_split();
    serve_stream((Box::new(reader), writer), Transport::default(), peer, id, broker, config).await
}

/// Serves one connection over any byte stream (TCP, or TLS over TCP),
/// given as its two halves.
pub async fn serve_stream<W: AsyncWrite + Send + Unpin + 'static>(
    (reader, write_half): (Box<dyn AsyncRead + Send + Unpin>, W),
    transport: Transport,
    peer: SocketAddr,
    id: u64,
    broker: Arc<Broker>,
    config: Arc<Config>,
) {
    let (tx, rx) = unbounded_channel();
    let (events_tx, events) = unbounded_channel();
    let shared = Arc::new(OutboundShared::default());
    let tuning = Arc::new(WriterTuning::default());
    tuning.frame_max.store(config.frame_max, Ordering::Relaxed);
    let context = WriterContext {
        shared: shared.clone(),
        tuning: tuning.clone(),
        broker: broker.clone(),
        connection_id: id,
        events: events_tx.clone(),
        send_timeout: Duration::from_millis(config.send_timeout.max(1)),
    };
    let writer_task = tokio::spawn(writer::run(write_half, rx, context));
    let mut conn = Connection {
        id,
        peer,
        frame_max: config.frame_max,
        channel_max: config.channel_max,
        config,
        reader,
        buf: BytesMut::with_capacity(QUIET_READ),
        handle: ConnectionHandle::new(id, tx, shared, false).with_events(events_tx),
        events,
        tuning,
        heartbeat: 0,
        channels: HashMap::default(),
        user: String::new(),
        vhost: "/".to_string(),
        permission_cache: (u64::MAX, HashMap::default()),
        registered: false,
        durability: broker.store().durability(),
        appended_before: 0,
        deferred: Vec::new(),
        pending_change: None,
        replicated: None,
        replicated_settled: Arc::default(),
        pending_acks: Default::default(),
        start_delivery: Vec::new(),
        blocked_notify: false,
        published: false,
        disk_alarm: broker.store().disk_alarm(),
        memory_alarm: broker.memory().alarm(),
        transport,
        auth_mechanism: String::new(),
        broker,
    };
    tracing::debug!(connection = id, "accepting AMQP connection from {peer}");
    let exit = match conn.handshake().await {
        Ok(()) => conn.serve().await,
        Err(exit) => exit,
    };
    match exit {
        Exit::Done => {
            if conn.registered {
                tracing::info!(connection = id, "closing AMQP connection {peer} (user '{}')", conn.user)
            }
        }
        Exit::Dropped(why) => tracing::warn!(connection = id, "closing AMQP connection {peer}: {why}"),
        Exit::Close(reason) => {
            tracing::warn!(connection = id, "closing AMQP connection {peer}: {}", reason.text);
            conn.close_from_server(reason).await;
        }
    }
    if conn.registered {
        conn.broker.close_connection(id);
    }
    conn.handle.send(Outgoing::Shutdown);
    drop(conn);
    // A writer stuck on a peer that stopped reading must not live forever.
    let abort = writer_task.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), writer_task).await.is_err() {
        abort.abort();
    }
}

impl Connection {
    /// Reads one frame, waiting at most `limit`. `Ok(None)` is a closed socket.
    pub(super) async fn read_frame(&mut self, limit: Option<Duration>) -> Result<Option<Frame>, Exit> {
        loop {
            match decode_frame(&mut self.buf, self.frame_max) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(CloseReason::new(e.reply_code(), e).into()),
            }
            make_room(&mut self.buf, false);
            let read = self.reader.read_buf(&mut self.buf);
            let result = match limit {
                Some(limit) => match tokio::time::timeout(limit, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(Exit::Dropped(format!(
                            "missed heartbeats from client, timeout: {}s",
                            limit.as_secs() / 2
                        )));
                    }
                },
                None => read.await,
            };
            match result {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(Exit::Dropped(format!("socket error: {e}"))),
            }
        }
    }

    async fn serve(&mut self) -> Exit {
        // A peer silent for two heartbeat intervals is gone.
        let limit = (self.heartbeat > 0).then(|| Duration::from_secs(self.heartbeat as u64 * 2));
        // A frame must arrive whole within that time too (60 s without
        // heartbeats): a client dribbling a frame a byte at a time is not
        // kept forever.
        let frame_limit = limit.unwrap_or(Duration::from_secs(60));
        let mut last_heard = tokio::time::Instant::now();
        let mut frame_started: Option<tokio::time::Instant> = None;
        let mut busy = false;
        loop {
            loop {
                let frame = match decode_frame(&mut self.buf, self.frame_max) {
                    Ok(Some(frame)) => {
                        // The time limit is per frame: a client streaming
                        // frames back to back is never "mid-frame" for long.
                        frame_started = None;
                        frame
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // What the client acked before the bad frame stays acked.
                        if let Err(reason) = self.settle_acks() {
                            return Exit::Close(reason);
                        }
                        return Exit::Close(CloseReason::new(e.reply_code(), e));
                    }
                };
                // Acks wait for the end of their run; any other frame
                // settles the run first.
                let frame = match self.defer_ack(frame) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => continue,
                    Err(reason) => return Exit::Close(reason),
                };
                if let Err(reason) = self.settle_acks() {
                    return Exit::Close(reason);
                }
                self.appended_before = self.broker.store().appended_position();
                match self.handle_frame(frame) {
                    Ok(true) => {}
                    Ok(false) => return Exit::Done,
                    Err(reason) => return Exit::Close(reason),
                }
                // One predictable branch per frame: set only by a change
                // to the shared definitions on a node of a cluster.
                if self.pending_change.is_some()
                    && let Some(pending) = self.pending_change.take()
                    && let Err(reason) = self.finish_change(pending).await
                {
                    return Exit::Close(reason);
                }
                if !self.deferred.is_empty()
                    && let Err(exit) = self.send_deferred().await
                {
                    return exit;
                }
            }
            if let Err(reason) = self.settle_acks() {
                return Exit::Close(reason);
            }
            self.release_confirms();
            if !self.start_delivery.is_empty() {
                // Let the writer put the consume-ok replies on the wire first.
                tokio::task::yield_now().await;
                for queue in std::mem::take(&mut self.start_delivery) {
                    self.broker.start_delivery(&self.vhost, &queue);
                }
            }
            if self.wait_for_the_log().await {
                // Heartbeats are not watched while blocked (RabbitMQ
                // pauses its monitor too): the client's wait on the socket.
                last_heard = tokio::time::Instant::now();
            }
            make_room(&mut self.buf, busy);
            let room = self.buf.capacity() - self.buf.len();
            let waiting = self.channels.values().any(|c| !c.confirms.is_empty());
            frame_started = if self.buf.is_empty() { None } else { frame_started.or(Some(last_heard)) };
            // A client that does not read what it is sent gets no more
            // replies, returns or confirms than fit the bound: stop reading
            // it until its socket drains (the writer's send timeout ends a
            // client that never reads). Its heartbeats wait meanwhile.
            let paused = self.handle.outbound_bytes() >= OUTBOUND_READ_PAUSE;
            // Flow control: while too many of its messages wait for a
            // replicated queue's group (no majority, a slow follower), the
            // publisher is not read, as RabbitMQ's credit flow blocks it.
            let held_back = self.replicated.as_ref().is_some_and(|r| r.held_back());
            let paused = paused || held_back;
            let deadline = match frame_started {
                _ if paused => None,
                Some(started) => limit.map(|l| last_heard + l).into_iter().chain([started + frame_limit]).min(),
                None => limit.map(|l| last_heard + l),
            };
            let shared = self.handle.outbound();
            tokio::select! {
                read = self.reader.read_buf(&mut self.buf), if !paused => match read {
                    Ok(0) => {
                        if self.registered {
                            tracing::warn!(connection = self.id, "client {} closed the socket without connection.close", self.peer);
                        }
                        return Exit::Done;
                    }
                    Ok(n) => {
                        last_heard = tokio::time::Instant::now();
                        busy = filled(n, room);
                    }
                    Err(e) => return Exit::Dropped(format!("socket error: {e}")),
                },
                _ = shared.drained(), if paused && !held_back => last_heard = tokio::time::Instant::now(),
                Some(event) = self.events.recv() => match event {
                    BrokerEvent::CloseChannel { channel, error } => {
                        if self.channels.contains_key(&channel)
                            && let Err(reason) = self.close_channel_with(channel, error, (0, 0))
                        {
                            return Exit::Close(reason);
                        }
                    }
                    BrokerEvent::CloseConnection { explanation } => {
                        // Confirms already earned go out before the close.
                        self.release_confirms();
                        return Exit::Close(CloseReason::new(reply::CONNECTION_FORCED, explanation));
                    }
                    BrokerEvent::Dropped { reason } => return Exit::Dropped(reason),
                },
                changed = self.durability.changed(), if waiting => {
                    if changed.is_err() {
                        return Exit::Dropped("the log writer stopped".into());
                    }
                }
                _ = self.replicated_settled.notified(), if (waiting || held_back) && self.replicated.is_some() => {}
                _ = sleep_until_opt(deadline) => {
                    if frame_started.is_some_and(|s| s + frame_limit <= tokio::time::Instant::now()) {
                        return Exit::Dropped(format!(
                            "a frame was not received whole within {} s",
                            frame_limit.as_secs()
                        ));
                    }
                    let secs = limit.map_or(0, |l| l.as_secs() / 2);
                    return Exit::Dropped(format!("missed heartbeats from client, timeout: {secs}s"));
                }
            }
        }
    }

    /// Makes a change to the shared definitions for a method on `channel`,
    /// then sends `reply` (None: the method had no-wait). A single node
    /// applies it now; a node of a cluster commits it through the metadata
    /// group once this frame is handled (see [`Connection::finish_change`]).
    pub(super) fn make_change(
        &mut self,
        channel: u16,
        change: crate::broker::changes::Change,
        ids: (u16, u16),
        reply: Option<Method>,
    ) -> Result<(), AmqpError> {
        if self.broker.is_clustered() {
            self.pending_change = Some(PendingChange::Shared { channel, change: Box::new(change), ids, reply });
            return Ok(());
        }
        self.broker.apply_change(&change)?;
        if let Some(reply) = reply {
            self.reply_when_durable(channel, reply);
        }
        Ok(())
    }

    /// Waits for a change committed through the metadata group, then
    /// replies, or closes the channel (or connection) with its error.
    async fn finish_change(&mut self, pending: PendingChange) -> Result<(), CloseReason> {
        let (channel, change, ids, reply) = match pending {
            PendingChange::Shared { channel, change, ids, reply } => (channel, *change, ids, reply),
            PendingChange::AtLeader { channel, ids, work } => {
                return match work.await {
                    Ok(()) => Ok(()),
                    Err(e) => self.close_channel_with(channel, e, ids),
                };
            }
        };
        match self.broker.change(change).await {
            Ok(()) => {
                if let Some(reply) = reply
                    && self.channels.contains_key(&channel)
                {
                    self.reply_when_durable(channel, reply);
                }
                Ok(())
            }
            Err(e) => self.close_channel_with(channel, e, ids),
        }
    }

    /// Queues a reply that must wait until what this method appended to the
    /// log (durable definitions, committed messages) is durable.
    pub fn reply_when_durable(&mut self, channel: u16, method: impl Into<Method>) {
        let appended = self.broker.store().appended_position();
        if appended > self.appended_before || !self.deferred.is_empty() {
            self.deferred.push((appended, channel, method.into()));
        } else {
            self.handle.method(channel, method);
        }
    }

    async fn send_deferred(&mut self) -> Result<(), Exit> {
        let target = self.deferred.iter().map(|d| d.0).max().unwrap_or(0);
        loop {
            let state = *self.durability.borrow_and_update();
            if state.failed {
                return Err(
                    CloseReason::new(reply::INTERNAL_ERROR, "the write-ahead log failed; restart the broker").into()
                );
            }
            if state.position >= target {
                break;
            }
            if self.durability.changed().await.is_err() {
                return Err(Exit::Dropped("the log writer stopped".into()));
            }
        }
        for (_, channel, method) in std::mem::take(&mut self.deferred) {
            self.handle.send(Outgoing::Method { channel, method });
        }
        Ok(())
    }

    /// Sends the publisher confirms whose messages are now durable, in
    /// publish order per channel, a run of acks as one `multiple` ack.
    pub(super) fn release_confirms(&mut self) {
        let durable = *self.durability.borrow_and_update();
        let mut confirmed = 0;
        for (&channel, ch) in self.channels.iter_mut() {
            let mut run: Option<u64> = None;
            let mut run_len = 0;
            while let Some(front) = ch.confirms.front() {
                // A replicated queue's commit, if it went to one.
                let replicated = front.ticket.as_ref().map(|t| t.state());
                if replicated == Some(TicketState::Waiting) {
                    break;
                }
                let durable_now = front.position.is_none_or(|p| p <= durable.position);
                if !durable_now && !durable.failed {
                    break;
                }
                let Some(c) = ch.confirms.pop_front() else { break };
                if c.nack || !durable_now || replicated == Some(TicketState::Failed) {
                    if let Some(tag) = run.take() {
                        self.handle.method(channel, BasicAck { delivery_tag: tag, multiple: run_len > 1 });
                        run_len = 0;
                    }
                    self.handle.method(channel, BasicNack { delivery_tag: c.seq, multiple: false, requeue: false });
                } else {
                    run = Some(c.seq);
                    run_len += 1;
                    confirmed += 1;
                }
            }
            if let Some(tag) = run {
                self.handle.method(channel, BasicAck { delivery_tag: tag, multiple: run_len > 1 });
            }
        }
        if confirmed > 0 {
            GlobalStats::add(&self.broker.stats().confirmed, confirmed);
        }
    }

    /// Returns Ok(false) once the client closed the connection.
    fn handle_frame(&mut self, frame: Frame) -> Result<bool, CloseReason> {
        match frame {
            Frame::Heartbeat => Ok(true),
            Frame::Method { channel: 0, method } => self.connection_method(method),
            Frame::Header { channel: 0, .. } | Frame::Body { channel: 0, .. } => {
                Err(CloseReason::new(reply::UNEXPECTED_FRAME, "content frame on channel 0"))
            }
            frame => {
                let channel = frame.channel();
                // channel_max bounds how many channels are open at once, not
                // their numbers (as RabbitMQ counts it).
                if let Frame::Method { method: Method::ChannelOpen(_), .. } = &frame
                    && self.channel_max != 0
                    && !self.channels.contains_key(&channel)
                    && self.channels.len() >= self.channel_max as usize
                {
                    return Err(CloseReason::new(
                        reply::NOT_ALLOWED,
                        format!(
                            "number of channels opened ({}) has reached the negotiated channel_max ({})",
                            self.channels.len(),
                            self.channel_max
                        ),
                    ));
                }
                if let Frame::Method { method: Method::ChannelOpen(_), .. } = &frame
                    && !self.channels.contains_key(&channel)
                {
                    self.broker.check_user_channels(&self.user).map_err(|e| CloseReason::from_error(e, (20, 10)))?;
                }
                self.channel_frame(channel, frame)?;
                Ok(true)
            }
        }
    }

    fn connection_method(&mut self, method: Method) -> Result<bool, CloseReason> {
        match method {
            Method::ConnectionClose(m) => {
                tracing::debug!(
                    connection = self.id,
                    "client closed the connection: {} {}",
                    m.reply_code,
                    m.reply_text
                );
                self.handle.method(0, ConnectionCloseOk {});
                Ok(false)
            }
            Method::ConnectionUpdateSecret(_) => {
                self.handle.method(0, ConnectionUpdateSecretOk {});
                Ok(true)
            }
            // Clients may answer a blocked notice; nothing to do.
            Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_) => Ok(true),
            other => {
                let ids = other.ids();
                let err = AmqpError::command_invalid(format!(
                    "{} is not valid on channel 0 after the handshake",
                    other.name()
                ));
                Err(CloseReason::from_error(err, ids))
            }
        }
    }

    /// Sends a channel error as channel.close, releases the channel's broker
    /// state, and ignores what the client sends on it until close-ok.
    pub fn close_channel_with(&mut self, channel: u16, err: AmqpError, ids: (u16, u16)) -> Result<(), CloseReason> {
        if err.scope == Scope::Connection {
            return Err(CloseReason::from_error(err, ids));
        }
        tracing::warn!(connection = self.id, channel, "channel error: {}", err.text);
        self.handle.method(
            channel,
            ChannelClose { reply_code: err.code, reply_text: err.text, class_id: ids.0, method_id: ids.1 },
        );
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.start_closing();
        }
        self.broker.close_channel(self.id, channel);
        Ok(())
    }

    /// Sends connection.close and waits briefly for close-ok, discarding
    /// everything else, as the spec asks.
    async fn close_from_server(&mut self, reason: CloseReason) {
        self.handle.method(
            0,
            ConnectionClose {
                reply_code: reason.code,
                reply_text: reason.text,
                class_id: reason.class_id,
                method_id: reason.method_id,
            },
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.read_frame(None)).await {
                Ok(Ok(Some(Frame::Method { channel: 0, method: Method::ConnectionCloseOk(_) }))) => return,
                Ok(Ok(Some(Frame::Method { channel: 0, method: Method::ConnectionClose(_) }))) => {
                    self.handle.method(0, ConnectionCloseOk {});
                    return;
                }
                Ok(Ok(Some(_))) => continue,
                Ok(Err(_)) => {
                    // Bytes that are not frames (the error itself was one):
                    // no close-ok can be found in them. Take what the client
                    // still sends until it closes, so that closing with
                    // unread bytes does not reset the socket and destroy
                    // the connection.close on its way to the client.
                    let mut scratch = [0u8; 4096];
                    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, self.reader.read(&mut scratch)).await {
                        if n == 0 {
                            break;
                        }
                    }
                    return;
                }
                // Closed socket or timeout: nothing more to wait for.
                _ => return,
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
