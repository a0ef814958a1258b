//! What the driver publishes, derived from a seed and a message key.
//!
//! Every message is named by a [`Key`] (cycle, publisher, sequence number),
//! carried in the `message-id` property. Everything else about it (body
//! size, body bytes, routing key, whether the consumer acks it from a given
//! queue) is a pure function of the run's seed and that key, so the checker
//! can regenerate the exact body a message must have and compare it byte for
//! byte, and the same seed replays the same schedule.
//!
//! Bodies of at least [`HEADER_LEN`] + 4 bytes are also self-describing: a
//! magic, the key, filler, and a trailing FNV-1a checksum over everything
//! before it, so a body names itself and shows damage even when its
//! properties were lost. Shorter bodies (down to empty) are filler only.

use std::fmt;

/// The durable topic exchange every message goes through.
pub const EXCHANGE: &str = "crashtest.topic";

/// Durable queues and their binding keys on [`EXCHANGE`]. Routing keys are
/// `m.{a|b}.{c|d}`, so a message reaches one, two or three queues.
pub const QUEUES: [(&str, &str); 3] = [("crashtest.all", "m.#"), ("crashtest.a", "m.a.*"), ("crashtest.d", "*.*.d")];

/// Routing key of the probe published after each restart: it matches every
/// binding, so its arrival in every queue shows every binding survived.
pub const PROBE_ROUTING_KEY: &str = "m.a.d";

const ROUTING_KEYS: [&str; 4] = ["m.a.c", "m.a.d", "m.b.c", "m.b.d"];

const MAGIC: &[u8; 4] = b"WCT1";
/// Magic, cycle (u32), publisher (u16), sequence (u32), little-endian.
pub const HEADER_LEN: usize = 14;

const SALT_SIZE: u64 = 1;
const SALT_ROUTE: u64 = 2;
const SALT_BODY: u64 = 3;
const SALT_ACK: u64 = 4;
const SALT_KILL: u64 = 5;
const SALT_PROBE: u64 = 6;

/// Names one published message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub cycle: u32,
    pub publisher: u16,
    pub seq: u32,
}

impl Key {
    /// Parses a `message-id` written by [`Key`]'s `Display`: `c{cycle}-p{publisher}-s{seq}`.
    pub fn parse(id: &str) -> Option<Key> {
        let mut parts = id.split('-');
        let cycle = parts.next()?.strip_prefix('c')?.parse().ok()?;
        let publisher = parts.next()?.strip_prefix('p')?.parse().ok()?;
        let seq = parts.next()?.strip_prefix('s')?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Key { cycle, publisher, seq })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}-p{}-s{}", self.cycle, self.publisher, self.seq)
    }
}

/// `message-id` of the probe published after the restart of `cycle`.
pub fn probe_id(cycle: u32) -> String {
    format!("probe-c{cycle}")
}

/// One round of SplitMix64 over `a` combined with `b`: a cheap, well-mixed
/// hash for deriving independent decisions from (seed, key, salt).
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, 32 bits.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811C_9DC5;
    for &b in bytes {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Fills `buf` with a deterministic byte stream seeded by `seed`.
fn fill(buf: &mut [u8], seed: u64) {
    let mut state = seed;
    for chunk in buf.chunks_mut(8) {
        state = mix(state, 0x5151);
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// The parameters every derived value depends on.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub seed: u64,
    pub min_size: usize,
    pub max_size: usize,
    /// Chance, in percent, that the consumer acks a delivery.
    pub ack_percent: u8,
}

impl Workload {
    fn hash(&self, key: Key, salt: u64) -> u64 {
        let h = mix(self.seed, salt);
        let h = mix(h, key.cycle as u64);
        let h = mix(h, key.publisher as u64);
        mix(h, key.seq as u64)
    }

    /// Body length of `key`, in `min_size..=max_size`.
    pub fn size(&self, key: Key) -> usize {
        let span = (self.max_size - self.min_size) as u64 + 1;
        self.min_size + (self.hash(key, SALT_SIZE) % span) as usize
    }

    pub fn routing_key(&self, key: Key) -> &'static str {
        ROUTING_KEYS[(self.hash(key, SALT_ROUTE) % 4) as usize]
    }

    /// The exact body `key` was published with.
    pub fn body(&self, key: Key) -> Vec<u8> {
        let len = self.size(key);
        let mut body = vec![0u8; len];
        fill(&mut body, self.hash(key, SALT_BODY));
        if len >= HEADER_LEN + 4 {
            body[..4].copy_from_slice(MAGIC);
            body[4..8].copy_from_slice(&key.cycle.to_le_bytes());
            body[8..10].copy_from_slice(&key.publisher.to_le_bytes());
            body[10..14].copy_from_slice(&key.seq.to_le_bytes());
            let sum = fnv1a(&body[..len - 4]);
            body[len - 4..].copy_from_slice(&sum.to_le_bytes());
        }
        body
    }

    /// Whether the consumer acks `key` when it gets it from queue `queue`.
    pub fn acks(&self, key: Key, queue: usize) -> bool {
        mix(self.hash(key, SALT_ACK), queue as u64) % 100 < self.ack_percent as u64
    }

    /// Milliseconds after the workload starts at which cycle `cycle` kills the broker.
    pub fn kill_delay_ms(&self, cycle: u32, max_run_ms: u64) -> u64 {
        mix(mix(self.seed, SALT_KILL), cycle as u64) % (max_run_ms + 1)
    }

    /// Body of the probe published after the restart of `cycle`.
    pub fn probe_body(&self, cycle: u32) -> Vec<u8> {
        let mut body = vec![0u8; 64];
        fill(&mut body, mix(mix(self.seed, SALT_PROBE), cycle as u64));
        body
    }
}

/// Which of [`QUEUES`] a routing key of the form `m.X.Y` reaches (the
/// bindings `m.#`, `m.a.*` and `*.*.d`, evaluated by hand).
pub fn routes(routing_key: &str) -> [bool; 3] {
    let words: Vec<&str> = routing_key.split('.').collect();
    let all = words.first() == Some(&"m");
    let a = words.len() == 3 && words[0] == "m" && words[1] == "a";
    let d = words.len() == 3 && words[2] == "d";
    [all, a, d]
}

/// The key a self-describing body names, if its magic and checksum are intact.
pub fn identify(body: &[u8]) -> Option<Key> {
    let len = body.len();
    if len < HEADER_LEN + 4 || &body[..4] != MAGIC {
        return None;
    }
    let sum = u32::from_le_bytes(body[len - 4..].try_into().ok()?);
    if fnv1a(&body[..len - 4]) != sum {
        return None;
    }
    Some(Key {
        cycle: u32::from_le_bytes(body[4..8].try_into().ok()?),
        publisher: u16::from_le_bytes(body[8..10].try_into().ok()?),
        seq: u32::from_le_bytes(body[10..14].try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload { seed: 42, min_size: 0, max_size: 4096, ack_percent: 50 }
    }

    #[test]
    fn keys_round_trip_through_message_ids() {
        let key = Key { cycle: 7, publisher: 3, seq: 123_456 };
        assert_eq!(key.to_string(), "c7-p3-s123456");
        assert_eq!(Key::parse(&key.to_string()), Some(key));
        for bad in ["", "c1-p2", "c1-p2-s3-x", "x1-p2-s3", "c1-p2-s", "probe-c1", "c1-p99999-s1"] {
            assert_eq!(Key::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bodies_are_deterministic_sized_and_self_describing() {
        let w = workload();
        let mut sizes = std::collections::HashSet::new();
        for seq in 0..500 {
            let key = Key { cycle: 1, publisher: 0, seq };
            let body = w.body(key);
            assert_eq!(body, w.body(key));
            assert_eq!(body.len(), w.size(key));
            assert!(body.len() <= 4096);
            sizes.insert(body.len());
            if body.len() >= HEADER_LEN + 4 {
                assert_eq!(identify(&body), Some(key));
                let mut damaged = body.clone();
                let i = body.len() / 2;
                damaged[i] ^= 0x40;
                assert_eq!(identify(&damaged), None, "a flipped bit must break the checksum");
            }
        }
        assert!(sizes.len() > 400, "sizes should vary: {}", sizes.len());
        let other = Workload { seed: 43, ..w };
        let key = Key { cycle: 1, publisher: 0, seq: 1 };
        assert_ne!(w.body(key), other.body(key), "the seed changes the bodies");
    }

    #[test]
    fn fixed_sizes_are_honoured() {
        let w = Workload { seed: 1, min_size: 100, max_size: 100, ack_percent: 50 };
        assert!((0..50).all(|seq| w.body(Key { cycle: 1, publisher: 1, seq }).len() == 100));
        let w = Workload { seed: 1, min_size: 0, max_size: 0, ack_percent: 50 };
        assert!((0..50).all(|seq| w.body(Key { cycle: 1, publisher: 1, seq }).is_empty()));
    }

    #[test]
    fn routes_follow_the_bindings() {
        assert_eq!(routes("m.a.c"), [true, true, false]);
        assert_eq!(routes("m.a.d"), [true, true, true]);
        assert_eq!(routes("m.b.c"), [true, false, false]);
        assert_eq!(routes("m.b.d"), [true, false, true]);
        assert_eq!(routes(PROBE_ROUTING_KEY), [true, true, true]);
        let w = workload();
        let used: std::collections::HashSet<_> =
            (0..200).map(|seq| w.routing_key(Key { cycle: 2, publisher: 1, seq })).collect();
        assert_eq!(used.len(), 4, "every routing key is used");
    }

    #[test]
    fn ack_decisions_follow_the_percentage() {
        let count = |percent| {
            let w = Workload { ack_percent: percent, ..workload() };
            (0..2000).filter(|&seq| w.acks(Key { cycle: 1, publisher: 0, seq }, 0)).count()
        };
        assert_eq!(count(0), 0);
        assert_eq!(count(100), 2000);
        let half = count(50);
        assert!((800..1200).contains(&half), "{half}");
    }

    #[test]
    fn kill_delays_stay_within_the_limit_and_vary() {
        let w = workload();
        let delays: Vec<u64> = (1..=50).map(|c| w.kill_delay_ms(c, 1500)).collect();
        assert!(delays.iter().all(|&d| d <= 1500));
        assert!(delays.iter().collect::<std::collections::HashSet<_>>().len() > 40);
        assert_eq!(w.kill_delay_ms(3, 0), 0);
    }
}
