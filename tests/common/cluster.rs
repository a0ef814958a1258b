//! Real `warren` nodes on loopback for the cluster tests: each with its
//! own ports (chosen at run time) and data directory, every node of a test
//! sharing one cookie file in the test's scratch directory, and the end
//! of every node's log printed if the test fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::proxy::{CUT, Carries, OPEN, Proxy};
use super::{Broker, LogsOnFailure, free_listen_ports, http};

/// A node's view of the metadata group (`/api/metadata-store`).
pub async fn metadata_status(broker: &Broker) -> serde_json::Value {
    let management = broker.management.expect("management API");
    let reply = http::get(management, "/api/metadata-store", Some(("guest", "guest"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// Polls until every broker names the same leader (not `not`), for at
/// most 20 s; the leader's name.
pub async fn agreed_leader(brokers: &[&Broker], not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = Vec::new();
        for b in brokers {
            seen.push(metadata_status(b).await);
        }
        let leader = seen[0]["leader"].as_str().map(str::to_string);
        if let Some(leader) = leader
            && Some(leader.as_str()) != not
            && seen.iter().all(|s| {
                s["leader"].as_str() == Some(leader.as_str()) && s["members"].as_array().is_some_and(|m| m.len() == 3)
            })
        {
            return leader;
        }
        assert!(Instant::now() < deadline, "no agreed metadata leader within 20 s: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `path` on `broker` until it answers `status`, for at most 20 s.
pub async fn until_status(broker: &Broker, path: &str, status: u16) -> http::Reply {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = http::get(broker.management.expect("management API"), path, Some(("guest", "guest"))).await;
        if reply.status == status {
            return reply;
        }
        assert!(Instant::now() < deadline, "GET {path} still {} after 20 s: {}", reply.status, reply.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct TestCluster {
    /// The running nodes, by index into `names` (dropped first: killed).
    pub nodes: Vec<Broker>,
    _logs: LogsOnFailure,
    pub names: Vec<&'static str>,
    pub dirs: Vec<PathBuf>,
    /// Each node's cluster port.
    pub ports: Vec<u16>,
    /// Each node's `--cluster-peers`.
    pub peers: Vec<String>,
    /// With links: `links[i][j]` is the proxy node i reaches node j through.
    pub links: Vec<Vec<Option<Arc<Proxy>>>>,
    /// More arguments every node starts with.
    pub extra_args: Vec<String>,
    /// Dropped last: the data directories, logs and cookie.
    pub scratch: tempfile::TempDir,
}

impl TestCluster {
    /// Starts a node of each name, one after the other, each reaching the
    /// others directly.
    pub fn start(names: &[&'static str]) -> TestCluster {
        TestCluster::start_with(names, &[])
    }

    /// As [`TestCluster::start`], every node with `extra` arguments too.
    pub fn start_with(names: &[&'static str], extra: &[&str]) -> TestCluster {
        let mut cluster = TestCluster::prepare(names);
        cluster.extra_args = extra.iter().map(|a| a.to_string()).collect();
        let peers = names.iter().zip(&cluster.ports).map(|(n, p)| format!("{n}@127.0.0.1:{p}")).collect::<Vec<_>>();
        cluster.peers = vec![peers.join(","); names.len()];
        cluster.nodes = (0..names.len()).map(|i| cluster.start_node(i)).collect();
        cluster
    }

    /// As [`TestCluster::start`], but node i reaches node j through a proxy
    /// of its own (`links[i][j]`), which the test may cut.
    pub async fn start_with_links(names: &[&'static str]) -> TestCluster {
        let mut cluster = TestCluster::prepare(names);
        for i in 0..names.len() {
            let mut row = Vec::new();
            let mut peers = Vec::new();
            for (j, (name, &port)) in names.iter().zip(&cluster.ports).enumerate() {
                if i == j {
                    row.push(None);
                    peers.push(format!("{name}@127.0.0.1:{port}"));
                } else {
                    let proxy = Proxy::start(port).await;
                    peers.push(format!("{name}@127.0.0.1:{}", proxy.port));
                    row.push(Some(proxy));
                }
            }
            cluster.links.push(row);
            cluster.peers.push(peers.join(","));
        }
        cluster.nodes = (0..names.len()).map(|i| cluster.start_node(i)).collect();
        cluster
    }

    fn prepare(names: &[&'static str]) -> TestCluster {
        let scratch = tempfile::tempdir().expect("scratch dir");
        let dirs: Vec<PathBuf> = names.iter().map(|n| scratch.path().join(n.replace('@', "-"))).collect();
        TestCluster {
            nodes: Vec::new(),
            _logs: LogsOnFailure(dirs.clone()),
            names: names.to_vec(),
            dirs,
            ports: free_listen_ports(names.len()),
            peers: Vec::new(),
            links: Vec::new(),
            extra_args: Vec::new(),
            scratch,
        }
    }

    /// Sets what the link from node i to node j carries (both ways of its
    /// connections: a one-way cut is `forward` on (i, j) and `backward` on
    /// (j, i)).
    pub fn link(&self, i: usize, j: usize, carries: Carries) {
        self.links[i][j].as_ref().expect("a cluster started with links").set(carries);
    }

    /// Cuts node `i` off from every other node, both ways.
    pub fn isolate(&self, i: usize) {
        for j in (0..self.names.len()).filter(|j| *j != i) {
            self.link(i, j, CUT);
            self.link(j, i, CUT);
        }
    }

    /// Every link carries everything again.
    pub fn heal(&self) {
        for i in 0..self.names.len() {
            for j in (0..self.names.len()).filter(|j| *j != i) {
                self.link(i, j, OPEN);
            }
        }
    }

    /// The cookie file every node of this cluster reads.
    pub fn cookie_path(&self) -> PathBuf {
        self.scratch.path().join("cookie")
    }

    /// Starts node `i` on its data directory (it must not be running).
    pub fn start_node(&self, i: usize) -> Broker {
        self.start_as(i, self.names[i], &self.dirs[i])
    }

    /// Starts a node under `name` on `dir`, with node `i`'s cluster port.
    pub fn start_as(&self, i: usize, name: &str, dir: &Path) -> Broker {
        let port = self.ports[i].to_string();
        let cookie = self.cookie_path();
        let cookie = cookie.to_str().expect("a UTF-8 path");
        let args = ["--node-name", name, "--cluster-port", &port, "--cluster-peers", &self.peers[i]];
        let mut args = args.to_vec();
        args.extend(["--cluster-cookie-file", cookie]);
        args.extend(self.extra_args.iter().map(String::as_str));
        Broker::start_in_with_http(dir, &args)
    }

    /// Node `i` killed with SIGKILL and started again on its data directory.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        self.nodes[i] = self.start_node(i);
    }

    pub fn all(&self) -> Vec<&Broker> {
        self.nodes.iter().collect()
    }

    /// The index of the node of this name.
    pub fn index(&self, name: &str) -> usize {
        self.names.iter().position(|n| *n == name).unwrap_or_else(|| panic!("no node {name} in this cluster"))
    }
}
