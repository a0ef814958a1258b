//! This node of a cluster: its name and Raft id, its cluster port, and what
//! it knows of its peers (the static list it was given, as RabbitMQ's
//! classic config peer discovery).
//!
//! A node's Raft id is made at its first start and kept in its log (a
//! `parameter.set` of kind `node`): it is the node's identity in every
//! group. A node whose data directory was wiped gets a new id, so it can
//! never vote with state it lost; a data directory started under another
//! node name is refused. Each node asks each peer, once a second, who it
//! is (`KIND_HELLO` on the cluster port): a peer that answered within the
//! last [`RUNNING_WITHIN`] is running.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use parking_lot::Mutex;

use super::transport::{GroupServer, Transport};
use super::types::NodeId;
use super::wire::TO_ANY;
use crate::store::LogStore;
use crate::store::format::{ParameterKind, Record};

/// The request kind of "who are you" (served for [`NODE_GROUP`]).
pub const KIND_HELLO: u8 = 6;
/// The group id of requests to the node itself rather than to a group.
pub const NODE_GROUP: u64 = u64::MAX;
/// A peer that answered within this is running.
pub const RUNNING_WITHIN: Duration = Duration::from_secs(3);
/// How often each peer is asked.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a peer whose connection ended has to take a new one before it
/// counts as there (a refusal or a close within it: gone).
const GONE_WITHIN: Duration = Duration::from_millis(500);
/// The key of the node identity parameter.
const IDENTITY_KEY: &str = "node";

/// A peer as configured: `NAME@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub addr: String,
}

impl std::str::FromStr for Peer {
    type Err = String;

    /// Splits at the last `@`, so a name may hold one (`warren@host1@10.0.0.1:25672`).
    fn from_str(text: &str) -> Result<Peer, String> {
        let Some((name, addr)) = text.trim().rsplit_once('@') else {
            return Err(format!("cluster peer '{text}' is not NAME@HOST:PORT"));
        };
        let port_ok = addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if name.is_empty() || !port_ok {
            return Err(format!("cluster peer '{text}' is not NAME@HOST:PORT"));
        }
        Ok(Peer { name: name.to_string(), addr: addr.to_string() })
    }
}

/// Parses a comma-separated list of peers.
pub fn parse_peers(list: &str) -> Result<Vec<Peer>, String> {
    list.split(',').filter(|p| !p.trim().is_empty()).map(str::parse).collect()
}

/// The identity kept in the log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub name: String,
    pub id: NodeId,
}

/// This node's identity: the one in the log, or a new one (logged). Err
/// when the log belongs to a node of another name.
pub fn identity(
    store: &LogStore,
    parameters: &BTreeMap<(ParameterKind, String), Bytes>,
    name: &str,
) -> Result<Identity, String> {
    if let Some(value) = parameters.get(&(ParameterKind::Node, IDENTITY_KEY.to_string())) {
        let known: Identity =
            serde_json::from_slice(value).map_err(|e| format!("the node identity in the log cannot be read: {e}"))?;
        if known.name != name {
            return Err(format!(
                "this data directory belongs to node '{}', not '{name}': start it with --node-name {}, or give '{name}' a data directory of its own",
                known.name, known.name
            ));
        }
        return Ok(known);
    }
    // Never 0 (openraft's default id) or the node group's id.
    let identity = Identity { name: name.to_string(), id: fastrand::u64(1..u64::MAX - 1) };
    let value = serde_json::to_vec(&identity).map_err(|e| e.to_string())?;
    store
        .define(Record::Parameter { kind: ParameterKind::Node, key: IDENTITY_KEY.to_string(), value: value.into() })
        .map_err(|e| format!("cannot log the node identity: {e}"))?;
    Ok(identity)
}

/// What this node knows of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub name: String,
    pub addr: String,
    /// Its Raft id, once it answered.
    pub id: Option<NodeId>,
    pub running: bool,
    /// Whether it holds any of the metadata group's log (the group was
    /// formed), as it last answered.
    pub formed: bool,
}

struct Seen {
    id: Option<NodeId>,
    formed: bool,
    /// The name it answered with (a wrong address answers with another).
    name: Option<String>,
    at: Option<Instant>,
}

/// This node of the cluster.
pub struct ClusterNode {
    pub identity: Identity,
    pub transport: Arc<Transport>,
    /// The address peers reach this node at (its own entry in the peer
    /// list, else the address it listens on).
    advertised: String,
    peers: Vec<Peer>,
    seen: Mutex<Vec<Seen>>,
    /// The name of each peer found gone (see [`ClusterNode::peers_gone`]).
    gone: tokio::sync::broadcast::Sender<String>,
}

/// Answers "who are you" for the node: its identity, and whether it
/// holds any of the metadata group's log.
struct Hello(Identity, Arc<LogStore>);

impl GroupServer for Hello {
    fn serve(&self, kind: u8, _payload: Bytes) -> std::pin::Pin<Box<dyn Future<Output = io::Result<Vec<u8>>> + Send>> {
        let reply = match kind {
            KIND_HELLO => {
                let metadata = self.1.raft_state(super::metadata::METADATA_GROUP);
                Ok(encode_hello(&self.0, metadata.last.is_some() || metadata.purged.is_some()))
            }
            other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unknown node request {other}"))),
        };
        Box::pin(std::future::ready(reply))
    }
}

/// id u64, formed u8, name length u16, name.
fn encode_hello(identity: &Identity, formed: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(11 + identity.name.len());
    out.put_u64_le(identity.id);
    out.put_u8(formed as u8);
    out.put_u16_le(identity.name.len().min(u16::MAX as usize) as u16);
    out.extend_from_slice(&identity.name.as_bytes()[..identity.name.len().min(u16::MAX as usize)]);
    out
}

fn decode_hello(bytes: &[u8]) -> Option<(Identity, bool)> {
    let id = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let formed = match bytes.get(8)? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let len = u16::from_le_bytes(bytes.get(9..11)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(bytes.get(11..11 + len)?).ok()?;
    (bytes.len() == 11 + len).then(|| (Identity { name: name.to_string(), id }, formed))
}

impl ClusterNode {
    /// Binds the cluster port and starts asking the peers who they are.
    pub async fn start(
        identity: Identity,
        addr: SocketAddr,
        peers: Vec<Peer>,
        store: Arc<LogStore>,
        cookie: Arc<super::auth::Cookie>,
    ) -> io::Result<Arc<ClusterNode>> {
        let transport = Transport::bind(addr, cookie, identity.id).await?;
        transport.add_group(NODE_GROUP, Arc::new(Hello(identity.clone(), store)));
        let advertised = peers
            .iter()
            .find(|p| p.name == identity.name)
            .map_or_else(|| transport.local_addr().to_string(), |p| p.addr.clone());
        let peers: Vec<Peer> = peers.into_iter().filter(|p| p.name != identity.name).collect();
        let seen = peers.iter().map(|_| Seen { id: None, formed: false, name: None, at: None }).collect();
        let gone = tokio::sync::broadcast::channel(16).0;
        let node = Arc::new(ClusterNode { identity, transport, advertised, peers, seen: Mutex::new(seen), gone });
        let weak = Arc::downgrade(&node);
        let mut lost = node.transport.links_lost();
        tokio::spawn(async move {
            while let Some(addr) = super::failover::next_news(&mut lost).await {
                let Some(node) = weak.upgrade() else { return };
                node.check_gone(&addr).await;
            }
        });
        let weak = Arc::downgrade(&node);
        tokio::spawn(async move {
            loop {
                let Some(node) = weak.upgrade() else { return };
                node.probe().await;
                drop(node);
                tokio::time::sleep(PROBE_EVERY).await;
            }
        });
        Ok(node)
    }

    /// Asks every peer at once who it is.
    async fn probe(&self) {
        let asks = self.peers.iter().enumerate().map(|(i, peer)| async move {
            let reply = self.transport.call(&peer.addr, TO_ANY, KIND_HELLO, NODE_GROUP, &[], PROBE_EVERY).await;
            (i, reply.ok().and_then(|b| decode_hello(&b)))
        });
        for (i, answer) in futures_util::future::join_all(asks).await {
            let peer = &self.peers[i];
            let mut seen = self.seen.lock();
            match answer {
                Some((who, formed)) if who.name == peer.name => {
                    if seen[i].id.is_some_and(|id| id != who.id) {
                        tracing::warn!("cluster peer {} has a new Raft id: its data directory was replaced", peer.name);
                    }
                    seen[i] = Seen { id: Some(who.id), formed, name: Some(who.name), at: Some(Instant::now()) };
                }
                Some((who, _)) => {
                    if seen[i].name.as_deref() != Some(&who.name) {
                        tracing::warn!(
                            "cluster peer {} at {} answers as '{}': check --cluster-peers",
                            peer.name,
                            peer.addr,
                            who.name
                        );
                    }
                    seen[i].name = Some(who.name);
                }
                None => {}
            }
        }
    }

    /// The name of each peer found gone from now on: a connection to it
    /// ended and its cluster port no longer serves (see
    /// `Transport::is_gone`). Its groups need not wait out their leader's
    /// lease: `failover`. Told once per peer until it answers again.
    pub fn peers_gone(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.gone.subscribe()
    }

    /// A connection to `addr` ended: if its peer is gone, it is not
    /// running from now on, and that is told.
    async fn check_gone(&self, addr: &str) {
        let Some(i) = self.peers.iter().position(|p| p.addr == addr) else { return };
        if !self.transport.is_gone(addr, GONE_WITHIN).await {
            return;
        }
        let was_running = self.seen.lock()[i].at.take().is_some();
        if was_running {
            let name = self.peers[i].name.clone();
            tracing::info!("cluster peer {name} is gone (its cluster port does not serve)");
            let _ = self.gone.send(name);
        }
    }

    /// Every peer, in the order configured.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let seen = self.seen.lock();
        self.peers
            .iter()
            .zip(seen.iter())
            .map(|(peer, s)| PeerStatus {
                name: peer.name.clone(),
                addr: peer.addr.clone(),
                id: s.id,
                running: s.at.is_some_and(|at| at.elapsed() < RUNNING_WITHIN),
                formed: s.formed,
            })
            .collect()
    }

    /// The address peers reach this node's cluster port at.
    pub fn advertised_addr(&self) -> String {
        self.advertised.clone()
    }

    pub fn shutdown(&self) {
        self.transport.shutdown();
    }
}

impl super::transport::AddressBook for ClusterNode {
    /// A configured node's address, by name (memberships name nodes).
    fn address_of(&self, name: &str) -> Option<String> {
        if name == self.identity.name {
            return Some(self.advertised.clone());
        }
        self.peers.iter().find(|p| p.name == name).map(|p| p.addr.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_name_at_host_and_port() {
        let peers = parse_peers("rabbit1@127.0.0.1:25672, warren@a@localhost:1,").unwrap();
        assert_eq!(
            peers,
            vec![
                Peer { name: "rabbit1".into(), addr: "127.0.0.1:25672".into() },
                Peer { name: "warren@a".into(), addr: "localhost:1".into() },
            ]
        );
        for bad in ["rabbit1", "@127.0.0.1:1", "n@127.0.0.1", "n@127.0.0.1:99999", "n@:1"] {
            let err = parse_peers(bad).unwrap_err();
            assert!(err.contains("NAME@HOST:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn hello_round_trips_and_refuses_cut_bytes() {
        let me = Identity { name: "warren-2".into(), id: 77 };
        let bytes = encode_hello(&me, true);
        assert_eq!(decode_hello(&bytes), Some((me.clone(), true)));
        assert_eq!(decode_hello(&encode_hello(&me, false)), Some((me, false)));
        for cut in 0..bytes.len() {
            assert_eq!(decode_hello(&bytes[..cut]), None);
        }
    }
}
