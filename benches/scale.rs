//! Scale of connections and queues on the real binary, with raw AMQP
//! clients (the broker's own codec) so the client costs little:
//!
//! 1. a connection storm: `IDLE` (10,000) connections opened (handshake
//!    complete, no heartbeats) 64 at a time: connections per second, and
//!    the broker's resident memory per idle connection;
//! 2. with those still open, `ACTIVE` (1,000) connections that each
//!    publish 20 transient 100-byte messages a second to one of 100 queues
//!    and consume from it (no-ack) for 10 s: messages published and
//!    delivered per second;
//! 3. `QUEUES` (10,000) durable queues declared on one connection: memory
//!    per queue; then 100,000 transient and 100,000 persistent 100-byte
//!    messages queued: memory per queued message;
//! 4. kill -9 and restart on the same data directory: the time to listen
//!    again, every queue back, resident memory after the replay.
//!
//! `cargo bench --bench scale` (IDLE, ACTIVE, QUEUES override the counts).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use bytes::{Bytes, BytesMut};
use support::resident_bytes as resident;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::protocol::frame::encode_content;
use warren::protocol::method::*;
use warren::protocol::{BasicProperties, Frame, Method, decode_frame, encode_method};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

struct Broker {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &std::path::Path) -> (Broker, Duration) {
    use std::io::BufRead;
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--bind", "127.0.0.1", "--port", "0", "--management-port", "0", "--prometheus-port", "0"])
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start warren");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("warren exited").expect("stdout");
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.trim().parse().expect("address");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Broker { child, addr }, started.elapsed())
}

/// A raw AMQP connection.
struct Raw {
    socket: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Raw {
        let socket = TcpStream::connect(addr).await.expect("connect");
        socket.set_nodelay(true).ok();
        let mut c = Raw { socket, buf: BytesMut::with_capacity(4096) };
        c.socket.write_all(b"AMQP\x00\x00\x09\x01").await.expect("header");
        c.expect(|m| matches!(m, Method::ConnectionStart(_))).await;
        let response = Bytes::from_static(b"\0guest\0guest");
        c.send(
            0,
            ConnectionStartOk { mechanism: "PLAIN".into(), response, locale: "en_US".into(), ..Default::default() },
        )
        .await;
        c.expect(|m| matches!(m, Method::ConnectionTune(_))).await;
        c.send(0, ConnectionTuneOk { channel_max: 2047, frame_max: 131_072, heartbeat: 0 }).await;
        c.send(0, ConnectionOpen { virtual_host: "/".into(), ..Default::default() }).await;
        c.expect(|m| matches!(m, Method::ConnectionOpenOk(_))).await;
        c.send(1, ChannelOpen::default()).await;
        c.expect(|m| matches!(m, Method::ChannelOpenOk(_))).await;
        c
    }

    async fn send(&mut self, channel: u16, method: impl Into<Method>) {
        let mut out = BytesMut::new();
        encode_method(&mut out, channel, &method.into());
        self.socket.write_all(&out).await.expect("write");
    }

    async fn frame(&mut self) -> Frame {
        loop {
            if let Some(frame) = decode_frame(&mut self.buf, 0).expect("frame") {
                return frame;
            }
            self.buf.reserve(4096);
            let n = self.socket.read_buf(&mut self.buf).await.expect("read");
            assert!(n > 0, "the broker closed the connection");
        }
    }

    async fn expect(&mut self, want: impl Fn(&Method) -> bool) {
        loop {
            match self.frame().await {
                Frame::Method { method, .. } if want(&method) => return,
                Frame::Method { method: Method::ConnectionClose(c), .. } => panic!("closed: {}", c.reply_text),
                _ => {}
            }
        }
    }
}

/// Opens `count` connections, `parallel` at a time.
async fn storm(addr: SocketAddr, count: usize, parallel: usize) -> Vec<Raw> {
    let mut all = Vec::with_capacity(count);
    while all.len() < count {
        let n = parallel.min(count - all.len());
        let batch: Vec<_> = (0..n).map(|_| tokio::spawn(Raw::open(addr))).collect();
        for t in batch {
            all.push(t.await.expect("open"));
        }
    }
    all
}

/// One active connection: declares its queue, consumes it with no-ack,
/// publishes `rate` messages a second until `until`; counts both ways.
async fn active(
    mut c: Raw,
    queue: String,
    rate: u64,
    until: Instant,
    published: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
) {
    c.send(1, QueueDeclare { queue: queue.clone(), ..Default::default() }).await;
    c.expect(|m| matches!(m, Method::QueueDeclareOk(_))).await;
    c.send(1, BasicConsume { queue: queue.clone(), no_ack: true, ..Default::default() }).await;
    c.expect(|m| matches!(m, Method::BasicConsumeOk(_))).await;
    let (mut reader, mut writer) = c.socket.into_split();
    let mut buf = c.buf;
    let counter = tokio::spawn(async move {
        loop {
            while let Ok(Some(frame)) = decode_frame(&mut buf, 0) {
                if let Frame::Method { method: Method::BasicDeliver(_), .. } = frame {
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            buf.reserve(16 * 1024);
            match reader.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let props = BasicProperties::default().to_bytes();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / rate.max(1)));
    while Instant::now() < until {
        tick.tick().await;
        let mut out = BytesMut::new();
        encode_method(&mut out, 1, &BasicPublish { routing_key: queue.clone(), ..Default::default() }.into());
        encode_content(&mut out, 1, &props, &[b'a'; 100], 131_072);
        if writer.write_all(&out).await.is_err() {
            break;
        }
        published.fetch_add(1, Ordering::Relaxed);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    counter.abort();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (idle, actives, queues) = (env_or("IDLE", 10_000), env_or("ACTIVE", 1_000), env_or("QUEUES", 10_000));
    let scratch = tempfile::tempdir().expect("scratch");
    let data = scratch.path().join("data");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let (broker, _) = start(&data);
        let pid = broker.child.id();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let base = resident(pid);
        let started = Instant::now();
        let idle_conns = storm(broker.addr, idle, 64).await;
        let storm_secs = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let with_idle = resident(pid);
        println!(
            "scale: {idle} idle connections opened in {storm_secs:.1} s ({:.0} connections/s, handshake included); \
             broker RSS {:.0} -> {:.0} MiB: {:.1} KiB per idle connection",
            idle as f64 / storm_secs,
            mib(base),
            mib(with_idle),
            (with_idle.saturating_sub(base)) as f64 / idle as f64 / 1024.0
        );

        let act = storm(broker.addr, actives, 64).await;
        let (published, delivered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let until = Instant::now() + Duration::from_secs(10);
        let tasks: Vec<_> = act
            .into_iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(active(c, format!("act-{}", i % 100), 20, until, published.clone(), delivered.clone())))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        println!(
            "scale: {actives} active connections beside the idle ones, 10 s: {:.0} msg/s published, {:.0} msg/s delivered; broker RSS {:.0} MiB",
            published.load(Ordering::Relaxed) as f64 / 10.0,
            delivered.load(Ordering::Relaxed) as f64 / 10.0,
            mib(resident(pid))
        );
        drop(idle_conns);
        tokio::time::sleep(Duration::from_secs(2)).await;

        let mut c = Raw::open(broker.addr).await;
        let before = resident(pid);
        let started = Instant::now();
        let mut out = BytesMut::new();
        for i in 0..queues {
            encode_method(&mut out, 1, &QueueDeclare { queue: format!("many-{i}"), durable: true, ..Default::default() }.into());
        }
        c.socket.write_all(&out).await.expect("declares");
        for _ in 0..queues {
            c.expect(|m| matches!(m, Method::QueueDeclareOk(_))).await;
        }
        let declare_secs = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let with_queues = resident(pid);
        println!(
            "scale: {queues} durable queues declared in {declare_secs:.1} s ({:.0}/s); {:.1} KiB per queue",
            queues as f64 / declare_secs,
            (with_queues.saturating_sub(before)) as f64 / queues as f64 / 1024.0
        );

        const MESSAGES: usize = 100_000;
        for (queue, mode, durable) in [("backlog-transient", 1u8, false), ("backlog-persistent", 2u8, true)] {
            c.send(1, QueueDeclare { queue: queue.into(), durable, ..Default::default() }).await;
            c.expect(|m| matches!(m, Method::QueueDeclareOk(_))).await;
            let before = resident(pid);
            let props = BasicProperties { delivery_mode: Some(mode), ..Default::default() }.to_bytes();
            let mut out = BytesMut::new();
            for _ in 0..MESSAGES {
                encode_method(&mut out, 1, &BasicPublish { routing_key: queue.into(), ..Default::default() }.into());
                encode_content(&mut out, 1, &props, &[b'm'; 100], 131_072);
            }
            c.socket.write_all(&out).await.expect("publish");
            loop {
                c.send(1, QueueDeclare { queue: queue.into(), durable, passive: true, ..Default::default() }).await;
                let count = loop {
                    if let Frame::Method { method: Method::QueueDeclareOk(ok), .. } = c.frame().await {
                        break ok.message_count;
                    }
                };
                if count as usize >= MESSAGES {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let after = resident(pid);
            println!(
                "scale: {MESSAGES} {} 100-byte messages queued: {:.0} bytes per queued message",
                if mode == 2 { "persistent" } else { "transient" },
                (after.saturating_sub(before)) as f64 / MESSAGES as f64
            );
        }
        drop(c);
        let before_kill = resident(pid);
        drop(broker); // kill -9
        let (broker, took) = start(&data);
        let pid = broker.child.id();
        let mut c = Raw::open(broker.addr).await;
        let mut back = 0;
        for i in (0..queues).step_by((queues / 100).max(1)) {
            c.send(1, QueueDeclare { queue: format!("many-{i}"), durable: true, passive: true, ..Default::default() }).await;
            c.expect(|m| matches!(m, Method::QueueDeclareOk(_))).await;
            back += 1;
        }
        c.send(1, QueueDeclare { queue: "backlog-persistent".into(), durable: true, passive: true, ..Default::default() }).await;
        let kept = loop {
            if let Frame::Method { method: Method::QueueDeclareOk(ok), .. } = c.frame().await {
                break ok.message_count;
            }
        };
        println!(
            "scale: kill -9 with {:.0} MiB resident, restarted in {:.2} s to listening; {back} sampled queues all back, \
             {kept} persistent messages back; broker RSS after the replay {:.0} MiB",
            mib(before_kill),
            took.as_secs_f64(),
            mib(resident(pid))
        );
    });
}
