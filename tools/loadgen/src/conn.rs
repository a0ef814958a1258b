//! One AMQP 0-9-1 client connection with one channel (number 1).
//!
//! Owns the socket and its two buffers. Frames are encoded and decoded with
//! the broker's own codec (`warren::protocol`); this module adds the client
//! side of the handshake, the few request/reply methods the load generator
//! needs (declare, purge, delete, qos, consume, confirm.select, get, close),
//! and the non-blocking primitives the publish and consume loops are built
//! on: callers append many frames to [`Conn::wbuf`] and drain many frames out
//! of one read, so a single `write(2)` or `read(2)` carries a whole batch.

use std::io::ErrorKind;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use warren::protocol::constants::{FRAME_MIN_SIZE, PROTOCOL_HEADER};
use warren::protocol::method::*;
use warren::protocol::{FieldTable, FieldValue, Frame, Method, decode_frame, encode_method, reply};

use crate::uri::AmqpUri;

/// The only channel the load generator opens on a connection.
pub const CHANNEL: u16 = 1;
/// Stop appending frames once this much waits to be written.
pub const WRITE_HIGH: usize = 256 * 1024;
/// Spare room kept in the read buffer before each read.
const READ_ROOM: usize = 256 * 1024;
/// frame_max asked for when the server sets no limit.
const FRAME_MAX: u32 = 131_072;
/// How long a handshake or a request/reply exchange may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    /// Frames waiting to be written; hot loops append to it directly.
    pub wbuf: BytesMut,
    /// The negotiated maximum frame size, header and end octet included.
    pub frame_max: u32,
    /// The connection's name, for error messages.
    name: String,
}

impl Conn {
    /// Connects, logs in with PLAIN, tunes (no heartbeats) and opens channel 1.
    pub async fn open(uri: &AmqpUri, name: &str) -> Result<Conn> {
        let addr = uri.address();
        let stream = TcpStream::connect(&addr).await.with_context(|| format!("{name}: connect to {addr}"))?;
        stream.set_nodelay(true).ok();
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_ROOM),
            wbuf: BytesMut::with_capacity(WRITE_HIGH),
            frame_max: FRAME_MIN_SIZE,
            name: name.to_string(),
        };
        tokio::time::timeout(RPC_TIMEOUT, conn.handshake(uri))
            .await
            .map_err(|_| anyhow!("{name}: no handshake with {addr} within {}s", RPC_TIMEOUT.as_secs()))?
            .with_context(|| format!("{name}: handshake with {addr}"))?;
        Ok(conn)
    }

    async fn handshake(&mut self, uri: &AmqpUri) -> Result<()> {
        self.stream.write_all(PROTOCOL_HEADER).await?;
        match self.recv_method().await? {
            Method::ConnectionStart(start) => {
                if !start.mechanisms.split(|b| *b == b' ').any(|m| m == b"PLAIN") {
                    bail!("the server does not offer PLAIN authentication");
                }
            }
            other => bail!("expected connection.start, got {}", other.name()),
        }
        let mut response = vec![0u8];
        response.extend_from_slice(uri.user.as_bytes());
        response.push(0);
        response.extend_from_slice(uri.password.as_bytes());
        let mut caps = FieldTable::new();
        caps.insert("publisher_confirms", FieldValue::Bool(true));
        caps.insert("consumer_cancel_notify", FieldValue::Bool(true));
        let mut props = FieldTable::new();
        props.insert("product", FieldValue::string("warren-loadgen"));
        props.insert("version", FieldValue::string(env!("CARGO_PKG_VERSION")));
        props.insert("connection_name", FieldValue::string(&self.name));
        props.insert("capabilities", FieldValue::Table(caps));
        self.send(ConnectionStartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response: Bytes::from(response),
            locale: "en_US".into(),
        })
        .await?;
        let tune = match self.recv_method().await? {
            Method::ConnectionTune(t) => t,
            Method::ConnectionSecure(_) => bail!("the server asked for a SASL challenge PLAIN does not have"),
            other => bail!("expected connection.tune, got {}", other.name()),
        };
        self.frame_max = if tune.frame_max == 0 { FRAME_MAX } else { tune.frame_max.min(FRAME_MAX) };
        self.send(ConnectionTuneOk { channel_max: tune.channel_max, frame_max: self.frame_max, heartbeat: 0 }).await?;
        self.send(ConnectionOpen { virtual_host: uri.vhost.clone(), ..Default::default() }).await?;
        match self.recv_method().await? {
            Method::ConnectionOpenOk(_) => {}
            other => bail!("expected connection.open-ok, got {}", other.name()),
        }
        match self.call(ChannelOpen::default()).await? {
            Method::ChannelOpenOk(_) => Ok(()),
            other => bail!("expected channel.open-ok, got {}", other.name()),
        }
    }

    // ---------------------------------------------------------- hot-loop I/O

    /// Takes the next complete frame out of what has been read, if any.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        decode_frame(&mut self.rbuf, self.frame_max)
            .map_err(|e| anyhow!("{}: bad frame from the server: {e}", self.name))
    }

    /// Reads what the socket holds without waiting. Returns the bytes read
    /// (0 when nothing was there); the server closing the socket is an error.
    pub fn read_available(&mut self) -> Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_ROOM / 4 {
            self.rbuf.reserve(READ_ROOM);
        }
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => bail!("{}: the server closed the connection", self.name),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(anyhow!("{}: read: {e}", self.name)),
        }
    }

    /// Writes as much of [`Conn::wbuf`] as the socket takes without waiting.
    pub fn write_available(&mut self) -> Result<()> {
        while !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => bail!("{}: write: {e}", self.name),
            }
        }
        Ok(())
    }

    pub fn pending_write(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Waits until the socket is readable (or writable, when frames are
    /// pending), or `max` has passed.
    pub async fn wait_io(&self, max: Duration) -> Result<()> {
        let interest = if self.pending_write() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        if let Ok(ready) = tokio::time::timeout(max, self.stream.ready(interest)).await {
            ready.with_context(|| format!("{}: poll", self.name))?;
        }
        Ok(())
    }

    /// Writes everything pending, waiting as needed.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await.with_context(|| format!("{}: write", self.name))?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Appends a method frame on channel 1 (or 0 for the connection class).
    pub fn push(&mut self, method: impl Into<Method>) {
        let method = method.into();
        let channel = if method.ids().0 == 10 { 0 } else { CHANNEL };
        encode_method(&mut self.wbuf, channel, &method);
    }

    /// The error for a close sent by the server; answers it with close-ok.
    pub fn closed_by_server(&mut self, method: &Method) -> Option<anyhow::Error> {
        let (what, code, text) = match method {
            Method::ConnectionClose(c) => {
                self.push(ConnectionCloseOk {});
                ("connection", c.reply_code, &c.reply_text)
            }
            Method::ChannelClose(c) => {
                self.push(ChannelCloseOk {});
                ("channel", c.reply_code, &c.reply_text)
            }
            _ => return None,
        };
        let _ = self.write_available();
        Some(anyhow!("{}: {what} closed by the server: {code} {text}", self.name))
    }

    // ----------------------------------------------------- request and reply

    async fn send(&mut self, method: impl Into<Method>) -> Result<()> {
        self.push(method);
        self.flush().await
    }

    async fn recv_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = self.next_frame()? {
                return Ok(frame);
            }
            self.rbuf.reserve(READ_ROOM / 4);
            let n = self.stream.read_buf(&mut self.rbuf).await.with_context(|| format!("{}: read", self.name))?;
            if n == 0 {
                bail!("{}: the server closed the connection", self.name);
            }
        }
    }

    /// The next method, skipping content, heartbeats and flow notices; a
    /// close from the server is an error.
    async fn recv_method(&mut self) -> Result<Method> {
        loop {
            if let Frame::Method { method, .. } = self.recv_frame().await? {
                if let Some(err) = self.closed_by_server(&method) {
                    return Err(err);
                }
                match method {
                    Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_) | Method::BasicDeliver(_) => {}
                    m => return Ok(m),
                }
            }
        }
    }

    /// Sends a synchronous method and returns the server's reply.
    async fn call(&mut self, method: impl Into<Method>) -> Result<Method> {
        let method = method.into();
        let name = method.name();
        self.send(method).await?;
        tokio::time::timeout(RPC_TIMEOUT, self.recv_method())
            .await
            .map_err(|_| anyhow!("{}: no reply to {name} within {}s", self.name, RPC_TIMEOUT.as_secs()))?
    }

    /// queue.declare; returns the message count.
    pub async fn declare_queue(&mut self, queue: &str, durable: bool, arguments: FieldTable) -> Result<u32> {
        let m = QueueDeclare { queue: queue.into(), durable, arguments, ..Default::default() };
        match self.call(m).await.with_context(|| format!("declaring queue '{queue}'"))? {
            Method::QueueDeclareOk(ok) => Ok(ok.message_count),
            other => bail!("declaring queue '{queue}': unexpected {}", other.name()),
        }
    }

    /// Passive queue.declare: (messages, consumers) of an existing queue.
    pub async fn inspect_queue(&mut self, queue: &str) -> Result<(u32, u32)> {
        let m = QueueDeclare { queue: queue.into(), passive: true, ..Default::default() };
        match self.call(m).await.with_context(|| format!("looking up queue '{queue}'"))? {
            Method::QueueDeclareOk(ok) => Ok((ok.message_count, ok.consumer_count)),
            other => bail!("looking up queue '{queue}': unexpected {}", other.name()),
        }
    }

    pub async fn purge_queue(&mut self, queue: &str) -> Result<u32> {
        match self.call(QueuePurge { queue: queue.into(), ..Default::default() }).await? {
            Method::QueuePurgeOk(ok) => Ok(ok.message_count),
            other => bail!("purging queue '{queue}': unexpected {}", other.name()),
        }
    }

    pub async fn delete_queue(&mut self, queue: &str) -> Result<u32> {
        match self.call(QueueDelete { queue: queue.into(), ..Default::default() }).await? {
            Method::QueueDeleteOk(ok) => Ok(ok.message_count),
            other => bail!("deleting queue '{queue}': unexpected {}", other.name()),
        }
    }

    /// exchange.declare of a durable fanout exchange.
    pub async fn declare_fanout(&mut self, exchange: &str) -> Result<()> {
        let m =
            ExchangeDeclare { exchange: exchange.into(), kind: "fanout".into(), durable: true, ..Default::default() };
        match self.call(m).await.with_context(|| format!("declaring exchange '{exchange}'"))? {
            Method::ExchangeDeclareOk(_) => Ok(()),
            other => bail!("declaring exchange '{exchange}': unexpected {}", other.name()),
        }
    }

    pub async fn bind_queue(&mut self, queue: &str, exchange: &str) -> Result<()> {
        let m = QueueBind { queue: queue.into(), exchange: exchange.into(), ..Default::default() };
        match self.call(m).await.with_context(|| format!("binding '{queue}' to '{exchange}'"))? {
            Method::QueueBindOk(_) => Ok(()),
            other => bail!("binding '{queue}' to '{exchange}': unexpected {}", other.name()),
        }
    }

    pub async fn qos(&mut self, prefetch_count: u16) -> Result<()> {
        match self.call(BasicQos { prefetch_count, ..Default::default() }).await? {
            Method::BasicQosOk(_) => Ok(()),
            other => bail!("basic.qos: unexpected {}", other.name()),
        }
    }

    pub async fn consume(
        &mut self,
        queue: &str,
        consumer_tag: &str,
        no_ack: bool,
        arguments: FieldTable,
    ) -> Result<()> {
        let m = BasicConsume {
            queue: queue.into(),
            consumer_tag: consumer_tag.into(),
            no_ack,
            arguments,
            ..Default::default()
        };
        match self.call(m).await.with_context(|| format!("consuming from '{queue}'"))? {
            Method::BasicConsumeOk(_) => Ok(()),
            other => bail!("consuming from '{queue}': unexpected {}", other.name()),
        }
    }

    pub async fn confirm_select(&mut self) -> Result<()> {
        match self.call(ConfirmSelect { no_wait: false }).await? {
            Method::ConfirmSelectOk(_) => Ok(()),
            other => bail!("confirm.select: unexpected {}", other.name()),
        }
    }

    /// basic.get without auto-ack (the message goes back to the queue when
    /// the connection closes); true when a message came.
    pub async fn get_one(&mut self, queue: &str) -> Result<bool> {
        match self.call(BasicGet { queue: queue.into(), no_ack: false, ..Default::default() }).await? {
            Method::BasicGetOk(_) => Ok(true),
            Method::BasicGetEmpty(_) => Ok(false),
            other => bail!("basic.get: unexpected {}", other.name()),
        }
    }

    /// connection.close, waiting a little for close-ok; errors are ignored
    /// (the socket goes away either way).
    pub async fn close(mut self) {
        let close =
            ConnectionClose { reply_code: reply::REPLY_SUCCESS, reply_text: "bye".into(), ..Default::default() };
        let exchange = async {
            self.send(close).await?;
            loop {
                if let Frame::Method { method: Method::ConnectionCloseOk(_), .. } = self.recv_frame().await? {
                    return Ok::<(), anyhow::Error>(());
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), exchange).await;
    }
}
