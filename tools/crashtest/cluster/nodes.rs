//! The cluster under test: three (or more) real `warren` nodes on loopback,
//! each with its own ports and data directory, and the faults the driver
//! makes: SIGKILL and restart, SIGSTOP and SIGCONT, and partitions. The
//! queue's leader is found through a node's management API.
//!
//! With links, node i reaches node j only through a proxy of its own
//! (`proxy`, shared with the integration tests), and a partition is made
//! by cutting proxies: no root, and the machine's network is left alone.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::broker::{Broker, BrokerConfig};
use crate::proxy::{Carries, OPEN, Proxy};

/// The shapes of partition the driver makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A node picked at random cut off from the others.
    OneIsolated,
    /// The queue's leader cut off from the others.
    LeaderIsolated,
    /// The nodes split in two halves, each of which reaches only itself
    /// and one bridge node: every node sees a majority, a different one
    /// (with three nodes, Jepsen's majority ring).
    Bridge,
}

impl Shape {
    pub fn label(self) -> &'static str {
        match self {
            Shape::OneIsolated => "node isolated",
            Shape::LeaderIsolated => "leader isolated",
            Shape::Bridge => "bridge",
        }
    }
}

/// Which way a cut goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Both,
    /// The cut-off side's messages are dropped; it hears the others.
    Outgoing,
    /// The cut-off side hears nothing; its own messages arrive.
    Incoming,
}

/// A partition as made: which node pairs were cut, and which nodes were
/// left without a majority (no confirm may come from their clients).
#[derive(Debug, Clone)]
pub struct Partition {
    pub cut: Vec<(usize, usize)>,
    pub minority: BTreeSet<String>,
}

/// One node: how to start it, and the process when it runs.
pub struct Node {
    pub name: String,
    config: BrokerConfig,
    pub broker: Option<Broker>,
    /// Stopped with SIGSTOP and not continued yet.
    pub paused: bool,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    starts: u32,
    /// With links: `links[i][j]` carries node i's connections to node j.
    links: Vec<Vec<Option<Arc<Proxy>>>>,
}

/// `count` different ports free now, below the kernel's range for
/// outgoing connections: a node keeps its ports across restarts, and a
/// port of that range may meanwhile be taken as the local end of some
/// connection (another node's to a third), for good, so the node could
/// not start again. Where that range starts too low, the OS picks them.
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let mut ports: Vec<u16> = Vec::with_capacity(count);
    let mut tries = 0;
    while ports.len() < count {
        let port = if low > 10_000 && tries < 10_000 {
            tries += 1;
            fastrand::u16(10_000..low)
        } else {
            TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
        };
        if !ports.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    Ok(ports)
}

impl Cluster {
    /// Starts `count` nodes under `dir` (one data directory and log each,
    /// a cookie they share), with a proxy on each node-to-node link if
    /// `links`.
    pub async fn start(warren: &Path, dir: &Path, count: usize, fsync: &str, links: bool) -> anyhow::Result<Cluster> {
        let names: Vec<String> = (0..count).map(|i| format!("node{i}@localhost")).collect();
        let all = free_ports(2 * count)?;
        let (ports, management_ports) = all.split_at(count);
        let mut proxies = Vec::new();
        let mut peer_lists = Vec::new();
        for i in 0..count {
            let mut row = Vec::new();
            let mut peers = Vec::new();
            for (j, (name, port)) in names.iter().zip(ports).enumerate() {
                if i == j || !links {
                    row.push(None);
                    peers.push(format!("{name}@127.0.0.1:{port}"));
                } else {
                    let proxy = Proxy::start(*port).await;
                    peers.push(format!("{name}@127.0.0.1:{}", proxy.port));
                    row.push(Some(proxy));
                }
            }
            proxies.push(row);
            peer_lists.push(peers.join(","));
        }
        let cookie = dir.join("cookie");
        std::fs::write(&cookie, format!("clustertest-{:016x}", fastrand::u64(..)))?;
        // Warren refuses a cookie others may read.
        std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let extra_args = vec![
                "--node-name".into(),
                name.clone(),
                "--cluster-port".into(),
                ports[i].to_string(),
                "--cluster-peers".into(),
                peer_lists[i].clone(),
                "--cluster-cookie-file".into(),
                cookie.display().to_string(),
            ];
            let config = BrokerConfig {
                warren: warren.to_path_buf(),
                data_dir: dir.join(format!("node{i}")),
                log: dir.join(format!("node{i}.log")),
                fsync: fsync.to_string(),
                segment_size: 8 << 20,
                extra_args,
                management_port: management_ports[i],
            };
            nodes.push(Node { name: name.clone(), config, broker: None, paused: false });
        }
        let mut cluster = Cluster { nodes, starts: 0, links: proxies };
        for i in 0..count {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.starts += 1;
        let label = format!("start {} of {}", self.starts, self.nodes[i].name);
        self.nodes[i].broker = Some(Broker::start(&self.nodes[i].config, &label)?);
        self.nodes[i].paused = false;
        Ok(())
    }

    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut broker) = self.nodes[i].broker.take() {
            if self.nodes[i].paused {
                broker.signal("CONT")?;
            }
            broker.kill().with_context(|| format!("killing {}", self.nodes[i].name))?;
        }
        self.nodes[i].paused = false;
        Ok(())
    }

    pub fn pause(&mut self, i: usize) -> anyhow::Result<()> {
        let broker = self.nodes[i].broker.as_ref().context("pausing a node that is down")?;
        broker.signal("STOP")?;
        self.nodes[i].paused = true;
        Ok(())
    }

    pub fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(broker) = &self.nodes[i].broker {
            broker.signal("CONT")?;
        }
        self.nodes[i].paused = false;
        Ok(())
    }

    /// Makes a partition of `shape`, cut `way`, around `leader`.
    pub fn partition(&self, shape: Shape, way: Way, leader: usize) -> anyhow::Result<Partition> {
        let count = self.nodes.len();
        anyhow::ensure!(self.links.iter().flatten().any(Option::is_some), "partitions need a cluster with links");
        let (cut, minority): (Vec<(usize, usize)>, Vec<usize>) = match shape {
            Shape::OneIsolated | Shape::LeaderIsolated => {
                let alone = if shape == Shape::LeaderIsolated { leader } else { fastrand::usize(..count) };
                ((0..count).filter(|j| *j != alone).map(|j| (alone, j)).collect(), vec![alone])
            }
            Shape::Bridge => {
                let mut order: Vec<usize> = (0..count).collect();
                fastrand::shuffle(&mut order);
                let (halves, _bridge) = order.split_at(count - 1);
                let (a, b) = halves.split_at(halves.len() / 2);
                (a.iter().flat_map(|i| b.iter().map(move |j| (*i, *j))).collect(), Vec::new())
            }
        };
        for (i, j) in &cut {
            // (i, j): i is the side cut off; `way` says from what.
            let (from_i, to_i) = match way {
                Way::Both => (false, false),
                Way::Outgoing => (false, true),
                Way::Incoming => (true, false),
            };
            // i's connections to j carry i's requests forward, j's replies back;
            // j's connections to i carry j's requests forward, i's replies back.
            self.set_link(*i, *j, Carries { forward: from_i, backward: to_i });
            self.set_link(*j, *i, Carries { forward: to_i, backward: from_i });
        }
        let minority = minority.into_iter().map(|i| self.nodes[i].name.clone()).collect();
        Ok(Partition { cut, minority })
    }

    fn set_link(&self, i: usize, j: usize, carries: Carries) {
        if let Some(proxy) = &self.links[i][j] {
            proxy.set(carries);
        }
    }

    /// Every link carries everything again.
    pub fn heal(&self) {
        for (i, row) in self.links.iter().enumerate() {
            for (j, proxy) in row.iter().enumerate() {
                if let Some(proxy) = proxy
                    && i != j
                {
                    proxy.set(OPEN);
                }
            }
        }
    }

    /// The name of each node that runs, with its AMQP URL (paused ones
    /// included: a client of a paused node waits, as it would for a hung
    /// machine).
    pub fn urls(&self) -> Vec<(String, String)> {
        self.nodes.iter().filter_map(|n| n.broker.as_ref().map(|b| (n.name.clone(), b.url()))).collect()
    }

    fn management(&self, i: usize) -> Option<SocketAddr> {
        let node = &self.nodes[i];
        node.broker.as_ref().filter(|_| !node.paused).and_then(|b| b.management)
    }

    /// The node that leads `queue`, as every running, unpaused node says
    /// (they must agree), within `limit`.
    pub fn queue_leader(&self, queue: &str, limit: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + limit;
        loop {
            let mut said = Vec::new();
            for i in 0..self.nodes.len() {
                if let Some(addr) = self.management(i) {
                    said.push(leader_said_by(addr, queue));
                }
            }
            if let Some(Some(leader)) = said.first()
                && said.iter().all(|s| s.as_ref() == Some(leader))
                && let Some(at) = self.nodes.iter().position(|n| n.name == *leader)
                && self.nodes[at].broker.is_some()
                && !self.nodes[at].paused
            {
                return Ok(at);
            }
            anyhow::ensure!(Instant::now() < deadline, "no agreed leader of {queue} within {limit:?}: {said:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The leader a node's management API names for `queue` (None: none known,
/// or no answer).
fn leader_said_by(addr: SocketAddr, queue: &str) -> Option<String> {
    let url = format!("http://{addr}/api/queues/%2F/{queue}");
    let agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(2))).build().new_agent();
    let mut reply = agent.get(&url).header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=").call().ok()?;
    let queue: serde_json::Value = reply.body_mut().read_json().ok()?;
    queue["leader"].as_str().map(str::to_string)
}
