//! Broker settings: command-line flags, an optional TOML file, and defaults
//! that match RabbitMQ's (port 5672, guest/guest from loopback only).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub password: String,
    /// Like RabbitMQ's `loopback_users`: this user may only connect from 127.0.0.1 / ::1.
    #[serde(default)]
    pub loopback_only: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    pub data_dir: PathBuf,
    /// Largest frame we accept and propose in connection.tune, header included.
    pub frame_max: u32,
    pub channel_max: u16,
    /// Heartbeat interval proposed to clients, in seconds (0 disables).
    pub heartbeat: u16,
    /// Seconds a client has to finish the handshake.
    pub handshake_timeout: u64,
    /// Milliseconds a write to a client may wait for it to read before
    /// the connection is dropped (a client that stopped reading).
    pub send_timeout: u64,
    /// Largest message body accepted, in bytes (RabbitMQ's max_message_size).
    pub max_message_size: u64,
    /// Size of a log segment file, in bytes.
    pub segment_size: u32,
    /// When the log is fdatasync'ed: "batch" (every group commit, the
    /// default), "`<N>ms`" (at most every N ms) or "never".
    pub fsync: String,
    /// Start even if a sealed log segment is damaged, setting it aside.
    pub skip_damaged_segments: bool,
    /// Compact the log as its live data shrinks (the default). Off keeps
    /// every segment, for inspecting a log as it was written.
    pub compaction: bool,
    /// Free space on the log's file system below which publishers are
    /// blocked, as RabbitMQ's `disk_free_limit`: bytes, or a size such as
    /// "2GB" or "500MiB"; 0 turns the alarm off. Default: two segments
    /// plus 50 MB.
    pub disk_free_limit: Option<Size>,
    /// Milliseconds a delivery may stay unacknowledged before its channel
    /// is closed (RabbitMQ's `consumer_timeout`, 30 minutes by default); 0
    /// turns it off. A queue's `x-consumer-timeout` overrides it.
    pub consumer_timeout: u64,
    /// A RabbitMQ JSON definitions file imported at every start
    /// (RabbitMQ's `load_definitions`).
    pub load_definitions: Option<PathBuf>,
    /// Bytes appended to the log but not yet handed to the disk above which
    /// connections stop reading (and send connection.blocked).
    pub log_backlog_limit: usize,
    /// Threads that serve connections. One thread (the default) runs every
    /// connection task: frames a publisher's read produces for consumers are
    /// written in one syscall per consumer once the publisher's batch is
    /// processed, and no wake-up crosses cores. The log writer thread and the
    /// segment preparer run beside it.
    pub threads: usize,
    pub users: Vec<User>,
    /// Resident memory above which publishers are blocked (RabbitMQ's
    /// `vm_memory_high_watermark`): a fraction of the machine's or the
    /// cgroup's memory (0.4, the default) or bytes (`536870912`, `"512MiB"`);
    /// queues page their messages out to the log above half of it.
    pub memory_high_watermark: crate::broker::memory::Watermark,
    /// Fraction of the watermark above which queues page their messages
    /// out to the log (RabbitMQ's `vm_memory_high_watermark_paging_ratio`,
    /// 0.5 by default); 0 pages out always.
    pub memory_high_watermark_paging_ratio: f64,
    /// Connections the broker accepts at most (RabbitMQ's `connection_max`);
    /// 0 means no limit.
    pub connection_max: usize,
    /// Port of the management HTTP API (RabbitMQ's 15672); 0 turns it off.
    pub management_port: u16,
    /// Address the management API listens on [default: `bind`'s].
    pub management_bind: Option<IpAddr>,
    /// Port of the Prometheus endpoint (RabbitMQ's 15692); 0 turns it off.
    pub prometheus_port: u16,
    /// The amqps listener and TLS for the HTTP listeners.
    pub tls: crate::tls::TlsConfig,
    /// This node's place in a cluster (off without a cluster port).
    pub cluster: ClusterConfig,
}

/// The `[cluster]` table: a static cluster, as RabbitMQ's classic config
/// peer discovery.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name [default: `warren@HOST`].
    pub node_name: Option<String>,
    /// Port of node-to-node traffic; 0 (the default) runs a single node.
    pub port: u16,
    /// Every node of the cluster as `NAME@HOST:PORT` (this one may be listed).
    pub peers: Vec<String>,
    /// The file holding the secret every node of the cluster shares
    /// [default: `.warren.cookie` in the home directory, made on first use].
    pub cookie_file: Option<PathBuf>,
}

impl ClusterConfig {
    /// The cookie file: the one given, else `$HOME/.warren.cookie`, as
    /// Erlang keeps `$HOME/.erlang.cookie` (so nodes of one user on one
    /// machine share it), else `.warren.cookie` in the working directory.
    pub fn cookie_path(&self) -> PathBuf {
        match (&self.cookie_file, std::env::var_os("HOME")) {
            (Some(path), _) => path.clone(),
            (None, Some(home)) => PathBuf::from(home).join(".warren.cookie"),
            (None, None) => PathBuf::from(".warren.cookie"),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::from([0, 0, 0, 0]),
            port: 5672,
            data_dir: PathBuf::from("warren-data"),
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            handshake_timeout: 10,
            send_timeout: 30_000,
            max_message_size: 128 << 20,
            segment_size: 64 << 20,
            fsync: "batch".into(),
            skip_damaged_segments: false,
            compaction: true,
            disk_free_limit: None,
            consumer_timeout: 30 * 60 * 1000,
            load_definitions: None,
            log_backlog_limit: 64 << 20,
            threads: 1,
            users: vec![User { name: "guest".into(), password: "guest".into(), loopback_only: true }],
            connection_max: 0,
            memory_high_watermark: Default::default(),
            memory_high_watermark_paging_ratio: crate::broker::memory::PAGING_RATIO,
            management_port: 15672,
            management_bind: None,
            prometheus_port: 15692,
            tls: Default::default(),
            cluster: Default::default(),
        }
    }
}

/// A number of bytes, written as an integer or a string with a unit as
/// RabbitMQ accepts them: k, KiB, M, MiB, G, GiB, T, TiB are powers of two;
/// kB, MB, GB, TB powers of ten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeText")]
pub struct Size(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Number(u64),
    Text(String),
}

impl TryFrom<SizeText> for Size {
    type Error = String;
    fn try_from(v: SizeText) -> Result<Size, String> {
        match v {
            SizeText::Number(n) => Ok(Size(n)),
            SizeText::Text(t) => t.parse(),
        }
    }
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(text: &str) -> Result<Size, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let number: u64 = digits.parse().map_err(|_| format!("invalid size '{text}': expected bytes or e.g. 2GB"))?;
        let factor: u64 = match unit.trim() {
            "" => 1,
            "k" | "K" | "KiB" | "kiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            other => return Err(format!("invalid size '{text}': unknown unit '{other}'")),
        };
        number.checked_mul(factor).map(Size).ok_or_else(|| format!("invalid size '{text}': too large"))
    }
}

impl Config {
    /// The free-disk limit in bytes: as configured, or two segments plus 50 MB.
    pub fn disk_free_limit_bytes(&self) -> u64 {
        self.disk_free_limit.map_or(2 * self.segment_size as u64 + 50_000_000, |s| s.0)
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout)
    }

    /// Where warrenctl finds the running broker.
    pub fn control_socket(&self) -> PathBuf {
        control_socket_path(&self.data_dir)
    }
}

pub fn control_socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("warren.sock")
}

/// Where the write-ahead log's segments live inside a data directory.
pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

#[cfg(test)]
mod tests {
    use super::Size;

    #[test]
    fn sizes_read_as_rabbitmq_writes_them() {
        assert_eq!("52428800".parse::<Size>(), Ok(Size(52_428_800)));
        assert_eq!("50MB".parse::<Size>(), Ok(Size(50_000_000)));
        assert_eq!("2GiB".parse::<Size>(), Ok(Size(2 << 30)));
        assert_eq!("1G".parse::<Size>(), Ok(Size(1 << 30)));
        assert_eq!("0".parse::<Size>(), Ok(Size(0)));
        assert!("12 parsecs".parse::<Size>().is_err());
        assert!("MB".parse::<Size>().is_err());
        let config: super::Config = toml::from_str("disk_free_limit = \"1GB\"").unwrap();
        assert_eq!(config.disk_free_limit_bytes(), 1_000_000_000);
        let config: super::Config = toml::from_str("disk_free_limit = 1000").unwrap();
        assert_eq!(config.disk_free_limit_bytes(), 1000);
    }

    #[test]
    fn the_cluster_table_names_the_node_its_port_and_peers() {
        let text =
            "[cluster]\nnode_name = \"a@h\"\nport = 25672\npeers = [\"a@h@127.0.0.1:25672\", \"b@127.0.0.1:25673\"]\n";
        let config: super::Config = toml::from_str(text).unwrap();
        assert_eq!(config.cluster.node_name.as_deref(), Some("a@h"));
        assert_eq!(config.cluster.port, 25672);
        assert_eq!(config.cluster.peers.len(), 2);
        assert_eq!(super::Config::default().cluster.port, 0, "a single node unless a cluster port is given");
        let err = toml::from_str::<super::Config>("[cluster]\nnodes = []\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `nodes`"), "{err}");
    }
}
