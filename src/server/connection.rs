//! One AMQP connection: its state, the read loop with heartbeat
//! supervision, resource-alarm blocking, durable replies and confirms,
//! frame routing to channels, and the close handshake in both directions.
//! The start/tune/open handshake is in `handshake`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc::unbounded_channel;
use tokio::sync::watch;

use super::channel::Channel;
use super::writer::{self, WriterTuning};
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

/// Bytes read per read call, about.
const READ_CHUNK: usize = 64 * 1024;

/// Room for the next read. While a frame is partly read the decoder has
/// reserved exactly what it still needs: reading no further keeps a large
/// body frame (a message body, kept in queues as a slice of this buffer)
/// alone in its allocation rather than pinning one shared with the frames
/// after it. Otherwise the buffer gets a read's worth of room.
fn make_room(buf: &mut BytesMut) {
    let partial_frame = buf.len() >= crate::protocol::constants::FRAME_HEADER_SIZE;
    if !partial_frame && buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

pub(super) struct Connection {
    pub id: u64,
    pub peer: SocketAddr,
    pub broker: Arc<Broker>,
    pub config: Arc<Config>,
    pub(super) reader: OwnedReadHalf,
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
}

pub async fn run(socket: TcpStream, peer: SocketAddr, id: u64, broker: Arc<Broker>, config: Arc<Config>) {
    let _ = socket.set_nodelay(true);
    let (reader, write_half) = socket.into_split();
    let (tx, rx) = unbounded_channel();
    let (events_tx, events) = unbounded_channel();
    let shared = Arc::new(OutboundShared::default());
    let tuning = Arc::new(WriterTuning::default());
    tuning.frame_max.store(config.frame_max, Ordering::Relaxed);
    let writer_task = tokio::spawn(writer::run(write_half, rx, shared.clone(), tuning.clone(), broker.clone(), id));
    let mut conn = Connection {
        id,
        peer,
        frame_max: config.frame_max,
        channel_max: config.channel_max,
        config,
        reader,
        buf: BytesMut::with_capacity(64 * 1024),
        handle: ConnectionHandle::new(id, tx, shared, false).with_events(events_tx),
        events,
        tuning,
        heartbeat: 0,
        channels: HashMap::new(),
        user: String::new(),
        vhost: "/".to_string(),
        permission_cache: (u64::MAX, HashMap::new()),
        registered: false,
        durability: broker.store().durability(),
        appended_before: 0,
        deferred: Vec::new(),
        start_delivery: Vec::new(),
        blocked_notify: false,
        published: false,
        disk_alarm: broker.store().disk_alarm(),
        memory_alarm: broker.memory().alarm(),
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
            make_room(&mut self.buf);
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
        let mut last_heard = tokio::time::Instant::now();
        loop {
            loop {
                let frame = match decode_frame(&mut self.buf, self.frame_max) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => return Exit::Close(CloseReason::new(e.reply_code(), e)),
                };
                self.appended_before = self.broker.store().appended_position();
                match self.handle_frame(frame) {
                    Ok(true) => {}
                    Ok(false) => return Exit::Done,
                    Err(reason) => return Exit::Close(reason),
                }
                if !self.deferred.is_empty()
                    && let Err(exit) = self.send_deferred().await
                {
                    return exit;
                }
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
            make_room(&mut self.buf);
            let waiting = self.channels.values().any(|c| !c.confirms.is_empty());
            let deadline = limit.map(|l| last_heard + l);
            tokio::select! {
                read = self.reader.read_buf(&mut self.buf) => match read {
                    Ok(0) => {
                        if self.registered {
                            tracing::warn!(connection = self.id, "client {} closed the socket without connection.close", self.peer);
                        }
                        return Exit::Done;
                    }
                    Ok(_) => last_heard = tokio::time::Instant::now(),
                    Err(e) => return Exit::Dropped(format!("socket error: {e}")),
                },
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
                },
                changed = self.durability.changed(), if waiting => {
                    if changed.is_err() {
                        return Exit::Dropped("the log writer stopped".into());
                    }
                }
                _ = sleep_until_opt(deadline) => {
                    let secs = limit.map_or(0, |l| l.as_secs() / 2);
                    return Exit::Dropped(format!("missed heartbeats from client, timeout: {secs}s"));
                }
            }
        }
    }

    /// Why a connection that publishes must stop being read now, if it must:
    /// the memory alarm, the free-disk alarm, or more than `log_backlog_limit` bytes waiting
    /// for the disk (publishers then slow to what the disk takes).
    fn block_reason(&self) -> Option<&'static str> {
        if self.durability.borrow().failed {
            return None;
        }
        if *self.memory_alarm.borrow() || self.broker.memory().publishers_must_wait() {
            return Some("low on memory");
        }
        if self.disk_alarm.borrow().raised {
            return Some("low on disk");
        }
        if self.broker.store().compaction_behind() {
            return Some("the write-ahead log is compacting");
        }
        (self.broker.store().backlog_bytes() > self.config.log_backlog_limit)
            .then_some("the write-ahead log is behind the disk")
    }

    /// A connection that just published stops reading while a resource
    /// alarm holds; clients that asked for it are told with
    /// connection.blocked, and connection.unblocked once it cleared.
    /// Connections that only consume go on, so acks can free space.
    /// Returns whether it blocked.
    async fn wait_for_the_log(&mut self) -> bool {
        if !std::mem::take(&mut self.published) {
            return false;
        }
        let Some(reason) = self.block_reason() else { return false };
        if self.blocked_notify {
            self.handle.method(0, ConnectionBlocked { reason: reason.into() });
        }
        tracing::debug!(connection = self.id, "blocking {}: {reason}", self.peer);
        while self.block_reason().is_some() {
            tokio::select! {
                changed = self.durability.changed() => if changed.is_err() { break },
                changed = self.disk_alarm.changed() => if changed.is_err() { break },
                changed = self.memory_alarm.changed() => if changed.is_err() { break },
                // Compaction catching up has no channel of its own.
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            self.release_confirms();
        }
        if self.blocked_notify {
            self.handle.method(0, ConnectionUnblocked {});
        }
        true
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
    fn release_confirms(&mut self) {
        let durable = *self.durability.borrow_and_update();
        let mut confirmed = 0;
        for (&channel, ch) in self.channels.iter_mut() {
            let mut run: Option<u64> = None;
            let mut run_len = 0;
            while let Some(front) = ch.confirms.front() {
                let durable_now = front.position.is_none_or(|p| p <= durable.position);
                if !durable_now && !durable.failed {
                    break;
                }
                let Some(c) = ch.confirms.pop_front() else { break };
                if c.nack || !durable_now {
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
                // Closed socket, undecodable bytes or timeout: nothing more to wait for.
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
