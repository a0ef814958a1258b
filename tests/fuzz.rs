//! Structured fuzzing, with a time budget: `WARREN_FUZZ_SECONDS` per test
//! (default 8, what CI runs; set it to hours for a long run) and a seed from
//! `WARREN_FUZZ_SEED` (default: random, printed, so a failure can be
//! replayed). Seeds that once found a failure are listed in
//! `tests/fuzz-regressions.txt` and replayed first, every run.
//!
//! - The decoders: valid frames of random methods, mutated (bits flipped,
//!   bytes cut, lengths changed, garbage spliced in), fed to the frame
//!   decoder and the method, property and table decoders: never a panic,
//!   and a frame that decodes re-encodes to what was read.
//! - The connection state machine, on the real binary over real sockets:
//!   connections that open (or botch) the handshake, then send random
//!   sequences of methods with random arguments on random channels,
//!   contents with wrong sizes or out of order, heartbeats, acks of
//!   unknown tags, closes at odd moments, and garbage. The broker must stay
//!   up, never log a panic, and keep serving a well-behaved client.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::protocol::frame::encode_content;
use warren::protocol::method::*;
use warren::protocol::{BasicProperties, FieldTable, FieldValue, Method, decode_frame, encode_method};

use common::amqp::*;
use common::raw::HEADER;

fn budget() -> Duration {
    let secs = std::env::var("WARREN_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    Duration::from_secs(secs)
}

fn base_seed() -> u64 {
    std::env::var("WARREN_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..))
}

/// Seeds that found failures once, replayed first.
fn regressions() -> Vec<u64> {
    include_str!("fuzz-regressions.txt")
        .lines()
        .filter_map(|l| l.split('#').next().map(str::trim).filter(|s| !s.is_empty()).and_then(|s| s.parse().ok()))
        .collect()
}

/// Random protocol values, biased towards names and arguments that matter.
struct Gen(fastrand::Rng);

impl Gen {
    fn name(&mut self) -> String {
        match self.0.u8(..10) {
            0 => String::new(),
            1 => "amq.direct".into(),
            2 => "amq.gen-fuzz".into(),
            3 => "amq.rabbitmq.reply-to".into(),
            4 => (0..self.0.usize(..300)).map(|_| self.0.alphanumeric()).collect(),
            _ => format!("f{}", self.0.u8(..4)),
        }
    }

    fn value(&mut self) -> FieldValue {
        match self.0.u8(..7) {
            0 => FieldValue::I64(self.0.i64(-5..100_000)),
            1 => FieldValue::I32(self.0.i32(-5..1000)),
            2 => FieldValue::string(&self.name()),
            3 => FieldValue::Bool(self.0.bool()),
            4 => FieldValue::Table(FieldTable::new()),
            5 => FieldValue::U8(self.0.u8(..)),
            _ => FieldValue::string(
                ["quorum", "classic", "stream", "lazy", "reject-publish", "drop-head", "single"][self.0.usize(..7)],
            ),
        }
    }

    fn table(&mut self) -> FieldTable {
        const KEYS: [&str; 14] = [
            "x-max-length",
            "x-max-length-bytes",
            "x-message-ttl",
            "x-expires",
            "x-queue-type",
            "x-dead-letter-exchange",
            "x-dead-letter-routing-key",
            "x-max-priority",
            "x-overflow",
            "x-single-active-consumer",
            "x-priority",
            "x-delivery-limit",
            "alternate-exchange",
            "x-match",
        ];
        let mut t = FieldTable::new();
        for _ in 0..self.0.usize(..3) {
            t.insert(KEYS[self.0.usize(..KEYS.len())], self.value());
        }
        t
    }

    fn properties(&mut self) -> Bytes {
        let mut p = BasicProperties::default();
        if self.0.bool() {
            p.delivery_mode = Some(self.0.u8(..4));
        }
        if self.0.u8(..4) == 0 {
            p.expiration = Some(["0", "100", "-1", "abc", "99999999999999999999"][self.0.usize(..5)].into());
        }
        if self.0.u8(..4) == 0 {
            p.priority = Some(self.0.u8(..));
        }
        if self.0.u8(..4) == 0 {
            let mut h = self.table();
            if self.0.bool() {
                h.insert("CC", FieldValue::Array(vec![FieldValue::string(&self.name())]));
            }
            p.headers = Some(h);
        }
        if self.0.u8(..6) == 0 {
            p.reply_to = Some(self.name());
        }
        if self.0.u8(..8) == 0 {
            p.user_id = Some(["guest", "someone"][self.0.usize(..2)].into());
        }
        p.to_bytes()
    }

    fn method(&mut self) -> Method {
        let r = &mut self.0;
        let b = |r: &mut fastrand::Rng| r.bool();
        match r.u8(..30) {
            0 => ChannelOpen::default().into(),
            1 => ChannelClose { reply_code: 200, ..Default::default() }.into(),
            2 => ChannelCloseOk {}.into(),
            3 => ChannelFlow { active: b(r) }.into(),
            4 | 5 => {
                let (queue, arguments) = (self.name(), self.table());
                let r = &mut self.0;
                QueueDeclare {
                    queue,
                    passive: r.u8(..5) == 0,
                    durable: r.bool(),
                    exclusive: r.bool(),
                    auto_delete: r.bool(),
                    no_wait: r.u8(..5) == 0,
                    arguments,
                    ..Default::default()
                }
                .into()
            }
            6 => {
                let (exchange, arguments) = (self.name(), self.table());
                let kind = ["direct", "fanout", "topic", "headers", "x-bogus", ""][self.0.usize(..6)].to_string();
                let r = &mut self.0;
                ExchangeDeclare {
                    exchange,
                    kind,
                    passive: r.u8(..5) == 0,
                    durable: r.bool(),
                    auto_delete: r.bool(),
                    internal: r.u8(..4) == 0,
                    arguments,
                    ..Default::default()
                }
                .into()
            }
            7 => QueueBind {
                queue: self.name(),
                exchange: self.name(),
                routing_key: self.name(),
                arguments: self.table(),
                ..Default::default()
            }
            .into(),
            8 => QueueUnbind {
                queue: self.name(),
                exchange: self.name(),
                routing_key: self.name(),
                ..Default::default()
            }
            .into(),
            9 => ExchangeBind {
                destination: self.name(),
                source: self.name(),
                routing_key: self.name(),
                ..Default::default()
            }
            .into(),
            10 => ExchangeDelete { exchange: self.name(), if_unused: self.0.bool(), ..Default::default() }.into(),
            11 => QueuePurge { queue: self.name(), ..Default::default() }.into(),
            12 => QueueDelete {
                queue: self.name(),
                if_unused: self.0.bool(),
                if_empty: self.0.bool(),
                ..Default::default()
            }
            .into(),
            13 => BasicQos {
                prefetch_size: if r.u8(..8) == 0 { 1 } else { 0 },
                prefetch_count: r.u16(..5),
                global: r.bool(),
            }
            .into(),
            14 | 15 => {
                let (queue, arguments) = (self.name(), self.table());
                let r = &mut self.0;
                let consumer_tag = if r.bool() { String::new() } else { format!("c{}", r.u8(..3)) };
                BasicConsume {
                    queue,
                    consumer_tag,
                    no_ack: r.bool(),
                    exclusive: r.u8(..4) == 0,
                    arguments,
                    ..Default::default()
                }
                .into()
            }
            16 => BasicCancel { consumer_tag: format!("c{}", r.u8(..3)), no_wait: r.bool() }.into(),
            17 => BasicGet { queue: self.name(), no_ack: self.0.bool(), ..Default::default() }.into(),
            18 | 19 => BasicAck { delivery_tag: r.u64(..6), multiple: r.bool() }.into(),
            20 => BasicNack { delivery_tag: r.u64(..6), multiple: r.bool(), requeue: r.bool() }.into(),
            21 => BasicReject { delivery_tag: r.u64(..6), requeue: r.bool() }.into(),
            22 => BasicRecover { requeue: r.bool() }.into(),
            23 => ConfirmSelect { no_wait: r.bool() }.into(),
            24 => TxSelect {}.into(),
            25 => TxCommit {}.into(),
            26 => TxRollback {}.into(),
            27 => ConnectionClose { reply_code: 200, ..Default::default() }.into(),
            28 => ConnectionCloseOk {}.into(),
            // Methods only the server sends.
            _ => [
                Method::from(BasicDeliver::default()),
                QueueDeclareOk::default().into(),
                ConnectionTune::default().into(),
                ConnectionStartOk::default().into(),
            ][r.usize(..4)]
            .clone(),
        }
    }

    /// Appends one action; false when it broke the framing (nothing
    /// after it can be read as frames).
    fn step(&mut self, out: &mut BytesMut) -> bool {
        let channel = [0, 1, 1, 1, 2, 2, 3][self.0.usize(..7)];
        match self.0.u8(..20) {
            0..=11 => encode_method(out, channel, &self.method()),
            12..=15 => {
                // A publish with its content, sometimes wrong.
                let publish = BasicPublish {
                    exchange: if self.0.bool() { String::new() } else { self.name() },
                    routing_key: self.name(),
                    mandatory: self.0.bool(),
                    immediate: self.0.u8(..10) == 0,
                    ..Default::default()
                };
                encode_method(out, channel, &publish.into());
                let body = vec![b'z'; self.0.usize(..3000)];
                let props = self.properties();
                match self.0.u8(..8) {
                    0 => {}                                                                   // no content at all
                    1 => encode_content(out, channel, &props, &body[..body.len() / 2], 4096), // short body
                    _ => encode_content(out, channel, &props, &body, 4096),
                }
            }
            16 => {
                // A content header or body with no publish before it.
                encode_content(out, channel, &self.properties(), b"orphan", 4096);
            }
            17 => out.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0xCE]),
            18 => {
                // A frame with a payload of random bytes (a method that does not parse).
                let n = self.0.usize(..40);
                out.extend_from_slice(&[1, 0, channel as u8]);
                out.extend_from_slice(&(n as u32).to_be_bytes());
                out.extend((0..n).map(|_| self.0.u8(..)));
                out.extend_from_slice(&[0xCE]);
            }
            _ => {
                // Garbage: the framing is lost.
                out.extend((0..self.0.usize(1..64)).map(|_| self.0.u8(..)));
                return false;
            }
        }
        true
    }
}

/// Feeds the decoders mutated frames for the time budget.
#[test]
fn the_decoders_survive_mutated_frames() {
    let deadline = Instant::now() + budget();
    let seed = base_seed();
    println!("decoder fuzz: WARREN_FUZZ_SEED={seed}");
    let seeds: Vec<u64> = regressions();
    let mut n = 0u64;
    while n < seeds.len() as u64 || Instant::now() < deadline {
        let s = seeds.get(n as usize).copied().unwrap_or(seed.wrapping_add(n));
        let mut g = Gen(fastrand::Rng::with_seed(s));
        let mut frames = BytesMut::new();
        for _ in 0..g.0.usize(1..12) {
            g.step(&mut frames);
        }
        let mut data = frames.to_vec();
        for _ in 0..g.0.usize(..4) {
            if data.is_empty() {
                break;
            }
            let at = g.0.usize(..data.len());
            match g.0.u8(..4) {
                0 => data[at] ^= 1 << g.0.u8(..8),
                1 => data.truncate(at),
                2 => data.insert(at, g.0.u8(..)),
                _ => data[at] = g.0.u8(..),
            }
        }
        let mut buf = BytesMut::from(&data[..]);
        let mut decoded = 0;
        while decoded < 64 {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_frame(&mut buf, 0))) {
                Ok(Ok(Some(warren::protocol::Frame::Method { channel, method }))) => {
                    // What decodes re-encodes to a frame that decodes the same.
                    let mut again = BytesMut::new();
                    encode_method(&mut again, channel, &method);
                    match decode_frame(&mut again, 0) {
                        Ok(Some(warren::protocol::Frame::Method { method: m2, .. })) => {
                            assert_eq!(
                                format!("{m2:?}"),
                                format!("{method:?}"),
                                "seed {s}: re-encoding changed the method"
                            )
                        }
                        other => panic!("seed {s}: a decoded method did not re-encode: {other:?}"),
                    }
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) | Ok(Err(_)) => break,
                Err(_) => panic!("seed {s}: the decoder panicked (replay with WARREN_FUZZ_SEED={s})"),
            }
            decoded += 1;
        }
        n += 1;
    }
    println!("decoder fuzz: {n} inputs");
    assert!(n > 100, "the budget allowed only {n} inputs");
}

/// One connection's worth of fuzz: a handshake (usually valid), then a
/// random sequence of actions, then whatever the broker answers for a
/// moment. Returns the bytes the broker sent.
async fn session(addr: std::net::SocketAddr, seed: u64) -> usize {
    let mut g = Gen(fastrand::Rng::with_seed(seed));
    let mut socket = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => panic!("seed {seed}: cannot connect: {e}"),
    };
    let mut out = BytesMut::new();
    if g.0.u8(..10) == 0 {
        // A botched handshake: a wrong header, or frames before it.
        match g.0.u8(..3) {
            0 => out.extend_from_slice(b"AMQP\x01\x01\x00\x0a"),
            1 => encode_method(&mut out, 0, &g.method()),
            _ => out.extend((0..g.0.usize(1..40)).map(|_| g.0.u8(..))),
        }
    } else {
        out.extend_from_slice(HEADER);
        let response = Bytes::from_static(b"\0guest\0guest");
        encode_method(
            &mut out,
            0,
            &ConnectionStartOk { mechanism: "PLAIN".into(), response, locale: "en_US".into(), ..Default::default() }
                .into(),
        );
        let frame_max = [0, 4096, 131_072][g.0.usize(..3)];
        encode_method(
            &mut out,
            0,
            &ConnectionTuneOk { channel_max: [0, 3, 2047][g.0.usize(..3)], frame_max, heartbeat: 0 }.into(),
        );
        encode_method(
            &mut out,
            0,
            &ConnectionOpen { virtual_host: ["/", "/", "/", "nowhere"][g.0.usize(..4)].into(), ..Default::default() }
                .into(),
        );
        for _ in 0..g.0.usize(1..60) {
            if !g.step(&mut out) {
                break;
            }
        }
    }
    // Sent in a few writes, as a real client would.
    let mut sent = 0;
    while sent < out.len() {
        let end = (sent + g.0.usize(1..4096)).min(out.len());
        if socket.write_all(&out[sent..end]).await.is_err() {
            break;
        }
        sent = end;
    }
    let mut scratch = vec![0u8; 65536];
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(150);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, socket.read(&mut scratch)).await {
        if n == 0 {
            break;
        }
        received += n;
    }
    received
}

/// A well-behaved client still gets a round trip.
async fn served(broker: &common::Broker, seed: u64) {
    let conn =
        tokio::time::timeout(Duration::from_secs(10), lapin::Connection::connect(&broker.url(), Default::default()))
            .await
            .unwrap_or_else(|_| panic!("after seed {seed}: no connection within 10 s"))
            .unwrap_or_else(|e| panic!("after seed {seed}: cannot connect: {e}"));
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "fuzz-canary").await;
    publish_acked(&ch, "fuzz-canary", "alive").await;
    assert_eq!(drain(&ch, "fuzz-canary").await, ["alive"], "after seed {seed}");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_state_machine_survives_random_sessions() {
    let broker = common::Broker::start();
    let seed = base_seed();
    println!("connection fuzz: WARREN_FUZZ_SEED={seed}");
    let deadline = Instant::now() + budget();
    let seeds = regressions();
    let mut n = 0u64;
    let mut answered = 0;
    while n < seeds.len() as u64 || Instant::now() < deadline {
        let s = seeds.get(n as usize).copied().unwrap_or(seed.wrapping_add(n));
        // A few sessions at once, as clients overlap.
        let batch: Vec<_> = (0..4).map(|i| tokio::spawn(session(broker.addr, s.wrapping_add(i << 48)))).collect();
        for task in batch {
            answered += (task.await.expect("session") > 0) as usize;
        }
        n += 1;
        if n.is_multiple_of(25) {
            served(&broker, s).await;
            let log = broker.log();
            assert!(!log.contains("panicked"), "after seed {s} (WARREN_FUZZ_SEED={s}):\n{log}");
        }
    }
    served(&broker, seed).await;
    let log = broker.log();
    assert!(!log.contains("panicked"), "{log}");
    println!("connection fuzz: {} sessions, {answered} answered", n * 4);
    assert!(answered > 0 && n > 10, "{n} rounds, {answered} answered");
}
