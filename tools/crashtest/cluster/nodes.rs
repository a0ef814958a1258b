//! The cluster under test: three (or more) real `warren` nodes on loopback,
//! each with its own ports and data directory, and the faults the driver
//! makes: SIGKILL and restart, SIGSTOP and SIGCONT. The queue's leader is
//! found through a node's management API.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::broker::{Broker, BrokerConfig};

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
}

/// A port free now (the OS picks it; it is free again once the probe closes).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// Starts `count` nodes under `dir` (one data directory and log each,
    /// a cookie they share).
    pub fn start(warren: &Path, dir: &Path, count: usize, fsync: &str) -> anyhow::Result<Cluster> {
        let names: Vec<String> = (0..count).map(|i| format!("node{i}@localhost")).collect();
        let ports: Vec<u16> = (0..count).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
        let peers: Vec<String> = names.iter().zip(&ports).map(|(n, p)| format!("{n}@127.0.0.1:{p}")).collect();
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
                peers.join(","),
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
                management_port: free_port()?,
            };
            nodes.push(Node { name: name.clone(), config, broker: None, paused: false });
        }
        let mut cluster = Cluster { nodes, starts: 0 };
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

    /// The AMQP URL of each node that runs (paused ones included: a client
    /// of a paused node waits, as it would for a hung machine).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().filter_map(|n| n.broker.as_ref().map(Broker::url)).collect()
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
