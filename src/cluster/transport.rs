//! Node-to-node traffic on the cluster port: one TCP connection from each
//! node to each peer carries the requests of every Raft group, and each
//! node serves the groups it holds to its peers ([`wire`] has the bytes).
//!
//! - [`Transport`] owns the listener, the outgoing connections (opened on
//!   first use, dropped on any error and opened again by the next
//!   request) and the groups served here.
//! - [`GroupNetwork`] is one group's openraft network: its clients send
//!   through the transport.
//! - [`RaftGroup`] serves a group's `openraft::Raft` to peers.
//!
//! Every connection starts with the cookie handshake ([`auth`]): only
//! nodes that share the cluster's cookie are served or talked to.
//!
//! A request that gets no reply within its time-out fails; its late reply
//! is dropped. A peer that is down costs a failed connect per request,
//! and openraft backs off from an unreachable peer.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Cursor};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::impls::BasicNode;
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{OptionalSend, Raft};
use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::auth::{self, Cookie};
use super::types::*;
use super::wire::*;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a node serves to its peers for one group.
pub trait GroupServer: Send + Sync + 'static {
    /// Serves one request of `kind`; the reply's payload, or why not.
    fn serve(&self, kind: u8, payload: Bytes) -> BoxFuture<io::Result<Vec<u8>>>;
}

/// A group's Raft, served to peers.
pub struct RaftGroup<SM: RaftStateMachine<RaftConfig, SnapshotData = Cursor<Vec<u8>>>>(pub Raft<RaftConfig, SM>);

fn failed(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl<SM> GroupServer for RaftGroup<SM>
where
    SM: RaftStateMachine<RaftConfig, SnapshotData = Cursor<Vec<u8>>>,
{
    fn serve(&self, kind: u8, payload: Bytes) -> BoxFuture<io::Result<Vec<u8>>> {
        let raft = self.0.clone();
        Box::pin(async move {
            match kind {
                KIND_APPEND => {
                    let reply = raft.append_entries(decode_append(&payload)?).await.map_err(failed)?;
                    Ok(encode_append_reply(&reply))
                }
                KIND_VOTE => Ok(encode_vote_reply(&raft.vote(decode_vote_request(&payload)?).await.map_err(failed)?)),
                KIND_PRE_VOTE => {
                    Ok(encode_vote_reply(&raft.pre_vote(decode_vote_request(&payload)?).await.map_err(failed)?))
                }
                KIND_SNAPSHOT => {
                    let (vote, meta, data) = decode_snapshot(&payload)?;
                    let snapshot = Snapshot { meta, snapshot: Cursor::new(data.to_vec()) };
                    Ok(encode_snapshot_reply(&raft.install_full_snapshot(vote, snapshot).await.map_err(failed)?))
                }
                KIND_TRANSFER_LEADER => {
                    let reply = raft.handle_transfer_leader(decode_transfer(&payload)?).await.map_err(failed)?;
                    Ok(encode_transfer_reply(&reply))
                }
                other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unknown request kind {other}"))),
            }
        })
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<(u8, Bytes)>>>>;

/// One outgoing connection to a peer: its write half, and the requests
/// waiting for their replies (its reader task resolves them).
struct PeerLink {
    /// The connection's write half, and whether its reader still runs
    /// (a connection whose reader stopped is dead, whatever a write says).
    writer: tokio::sync::Mutex<Option<(tokio::net::tcp::OwnedWriteHalf, Arc<AtomicBool>)>>,
    pending: Pending,
    /// The connection's reader task, stopped with the link.
    reader: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.get_mut().take() {
            reader.abort();
        }
    }
}

/// A node's end of the cluster port.
pub struct Transport {
    local_addr: SocketAddr,
    groups: RwLock<HashMap<u64, Arc<dyn GroupServer>>>,
    peers: Mutex<HashMap<String, Arc<PeerLink>>>,
    next_request: AtomicU64,
    /// The listener's task and each served connection's, stopped by
    /// [`Transport::shutdown`] (so the port is free again at once).
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Every connection, either way, starts with the cookie handshake.
    cookie: Arc<Cookie>,
    /// This node's Raft id: a request meant for another is refused.
    id: NodeId,
    /// The address of each outgoing connection that ended (the peer
    /// closed it or it failed), for [`Transport::links_lost`].
    lost: tokio::sync::broadcast::Sender<String>,
}

/// How long a connection's cookie handshake may take.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(5);

impl Transport {
    /// Listens on `addr` and serves the groups added later, as node `id`,
    /// to nodes that hold `cookie` (and talks only to such nodes).
    pub async fn bind(addr: SocketAddr, cookie: Arc<Cookie>, id: NodeId) -> io::Result<Arc<Transport>> {
        let listener = TcpListener::bind(addr).await?;
        let transport = Arc::new(Transport {
            local_addr: listener.local_addr()?,
            groups: RwLock::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            tasks: Mutex::new(Vec::new()),
            cookie,
            id,
            lost: tokio::sync::broadcast::channel(64).0,
        });
        let weak = Arc::downgrade(&transport);
        let accept = tokio::spawn(async move {
            loop {
                let socket = match listener.accept().await {
                    Ok((socket, _)) => socket,
                    Err(e) => {
                        // Out of file descriptors, say: an accept that fails
                        // at once must not spin (on one runtime thread it
                        // would stall every connection), so wait a little.
                        tracing::warn!("the cluster port cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(transport) = weak.upgrade() else { return };
                let _ = socket.set_nodelay(true);
                let served = transport.clone();
                let task = tokio::spawn(async move { served.serve_peer(socket).await });
                let mut tasks = transport.tasks.lock();
                tasks.retain(|t| !t.is_finished());
                tasks.push(task.abort_handle());
            }
        });
        transport.tasks.lock().push(accept.abort_handle());
        Ok(transport)
    }

    /// Stops listening and serving, and drops the connections to peers:
    /// the node is gone for its peers from now on.
    pub fn shutdown(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        self.groups.write().clear();
        self.peers.lock().clear();
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of each outgoing connection that ends from now on
    /// (not those this node drops itself).
    pub fn links_lost(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.lost.subscribe()
    }

    /// Whether nothing serves the cluster port at `addr` any more: a
    /// connection is refused, or closed before the handshake is done (as
    /// a proxy in front of a dead node does). A node that is merely slow,
    /// or a link that drops packets, is not gone: it keeps the handshake
    /// waiting, and after `within` it counts as there.
    pub async fn is_gone(&self, addr: &str, within: Duration) -> bool {
        let attempt = async {
            let mut socket = TcpStream::connect(addr).await?;
            auth::connect(&mut socket, &self.cookie).await
        };
        match tokio::time::timeout(within, attempt).await {
            Ok(Err(e)) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::BrokenPipe
            ),
            Ok(Ok(())) | Err(_) => false,
        }
    }

    pub fn add_group(&self, group: u64, server: Arc<dyn GroupServer>) {
        self.groups.write().insert(group, server);
    }

    /// Stops serving a group (its requests fail from now on).
    pub fn remove_group(&self, group: u64) {
        self.groups.write().remove(&group);
    }

    /// Serves one peer's connection: each request in a task of its own,
    /// replies written as they are ready.
    async fn serve_peer(self: Arc<Self>, mut socket: TcpStream) {
        let peer = socket.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
        match tokio::time::timeout(HANDSHAKE_WITHIN, auth::accept(&mut socket, &self.cookie)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!("cluster port: refused a connection from {peer}: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    "cluster port: refused a connection from {peer}: no handshake within {HANDSHAKE_WITHIN:?}"
                );
                return;
            }
        }
        let (mut reader, mut writer) = socket.into_split();
        let (replies, mut outbox) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(frame) = outbox.recv().await {
                if writer.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        while let Ok((header, payload)) = read_frame(&mut reader).await {
            let server = self.groups.read().get(&header.group).cloned();
            let replies = replies.clone();
            let me = self.id;
            tokio::spawn(async move {
                let group = header.group;
                let reply = match server {
                    // Meant for the id this address had before its data
                    // directory was wiped: never answered for it.
                    _ if header.to != TO_ANY && header.to != me => Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("this is node {me}, not node {}", header.to),
                    )),
                    Some(server) => server.serve(header.kind, payload).await,
                    None => Err(io::Error::new(io::ErrorKind::NotFound, format!("no Raft group {group} here"))),
                };
                let frame = match reply {
                    Ok(bytes) => frame(Header { kind: header.kind | REPLY, ..header }, &bytes),
                    Err(e) => frame(Header { kind: KIND_FAILED, ..header }, e.to_string().as_bytes()),
                };
                let _ = replies.send(frame);
            });
        }
    }

    /// Sends a request to node `to` ([`TO_ANY`]: whichever node) at `addr`
    /// and waits for its reply.
    pub async fn call(
        &self,
        addr: &str,
        to: NodeId,
        kind: u8,
        group: u64,
        payload: &[u8],
        limit: Duration,
    ) -> io::Result<Bytes> {
        let link = self.peers.lock().entry(addr.to_string()).or_insert_with(PeerLink::new).clone();
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        link.pending.lock().insert(request, tx);
        let bytes = frame(Header { kind, group, request, to }, payload);
        let sent = tokio::time::timeout(limit, link.send(addr, &self.cookie, &self.lost, bytes)).await;
        let outcome = match sent {
            Ok(Ok(())) => tokio::time::timeout(limit, rx).await,
            Ok(Err(e)) => {
                link.pending.lock().remove(&request);
                return Err(e);
            }
            Err(_) => {
                link.pending.lock().remove(&request);
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("{addr}: no connection within {limit:?}")));
            }
        };
        match outcome {
            Ok(Ok((reply_kind, bytes))) if reply_kind == kind | REPLY => Ok(bytes),
            Ok(Ok((KIND_FAILED, why))) => Err(io::Error::other(format!("{addr}: {}", String::from_utf8_lossy(&why)))),
            Ok(Ok((other, _))) => {
                Err(io::Error::new(io::ErrorKind::InvalidData, format!("{addr}: reply kind {other}")))
            }
            Ok(Err(_)) => Err(io::Error::new(io::ErrorKind::ConnectionReset, format!("{addr}: connection lost"))),
            Err(_) => {
                link.pending.lock().remove(&request);
                Err(io::Error::new(io::ErrorKind::TimedOut, format!("{addr}: no reply within {limit:?}")))
            }
        }
    }
}

impl PeerLink {
    fn new() -> Arc<PeerLink> {
        Arc::new(PeerLink { writer: tokio::sync::Mutex::new(None), pending: Arc::default(), reader: Mutex::new(None) })
    }

    /// Writes a frame, connecting first if there is no connection.
    async fn send(
        &self,
        addr: &str,
        cookie: &Cookie,
        lost: &tokio::sync::broadcast::Sender<String>,
        frame: Vec<u8>,
    ) -> io::Result<()> {
        let mut writer = self.writer.lock().await;
        if writer.as_ref().is_some_and(|(_, alive)| !alive.load(Ordering::Acquire)) {
            *writer = None;
        }
        if writer.is_none() {
            let mut socket = TcpStream::connect(addr).await?;
            let _ = socket.set_nodelay(true);
            match tokio::time::timeout(HANDSHAKE_WITHIN, auth::connect(&mut socket, cookie)).await {
                Ok(result) => result.map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?,
                Err(_) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, format!("{addr}: no cluster handshake")));
                }
            }
            let (mut reader, write_half) = socket.into_split();
            let pending = self.pending.clone();
            let alive = Arc::new(AtomicBool::new(true));
            let reading = alive.clone();
            let (lost, addr) = (lost.clone(), addr.to_string());
            let task = tokio::spawn(async move {
                while let Ok((header, payload)) = read_frame(&mut reader).await {
                    if let Some(waiter) = pending.lock().remove(&header.request) {
                        let _ = waiter.send((header.kind, payload));
                    }
                }
                // The connection is gone: the next request opens another,
                // and whoever waits on this one learns now (their senders
                // drop) rather than at their time-out.
                reading.store(false, Ordering::Release);
                pending.lock().clear();
                let _ = lost.send(addr);
            });
            if let Some(old) = self.reader.lock().replace(task.abort_handle()) {
                old.abort();
            }
            *writer = Some((write_half, alive));
        }
        // The frame is written by a task of its own: a caller that stops
        // waiting (its time-out) must not cut a frame short, or the peer
        // would read the next frames' bytes as the rest of it. The
        // connection is out of the slot meanwhile: if the caller goes, the
        // task finishes the frame and drops it, and the next frame goes
        // over a new connection. (Only a frame already being written goes
        // on: one that was waiting for a connection goes with its caller.)
        let Some((mut stream, alive)) = writer.take() else { return Err(io::Error::other("no connection")) };
        let writing = tokio::spawn(async move {
            let written = stream.write_all(&frame).await;
            (stream, written)
        });
        match writing.await {
            Ok((stream, Ok(()))) => {
                *writer = Some((stream, alive));
                Ok(())
            }
            Ok((_, Err(e))) => Err(e),
            Err(e) => Err(io::Error::other(e)),
        }
    }
}

/// Reads one frame: its header and payload.
async fn read_frame(reader: &mut (impl AsyncReadExt + Unpin)) -> io::Result<(Header, Bytes)> {
    let len = reader.read_u32_le().await? as usize;
    if !(FRAME_HEADER - 4..=MAX_FRAME).contains(&len) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame length {len}")));
    }
    let mut header = [0u8; FRAME_HEADER - 4];
    reader.read_exact(&mut header).await?;
    let parsed = parse_header(&header);
    // Grown as the bytes arrive, not allocated from the length field: a
    // peer claiming a gigabyte must send it.
    let want = len - header.len();
    let mut payload = Vec::with_capacity(want.min(64 << 10));
    (&mut *reader).take(want as u64).read_to_end(&mut payload).await?;
    if payload.len() != want {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection ended inside a frame"));
    }
    Ok((parsed, payload.into()))
}

/// Where a node named in a membership is reached: a membership names its
/// nodes (openraft's `BasicNode::addr` holds the node's name), and each
/// node finds the address from its own configuration, so every node may
/// reach a peer its own way (the cluster tests put a proxy on each link).
pub trait AddressBook: Send + Sync + 'static {
    fn address_of(&self, name: &str) -> Option<String>;
}

/// Makes a group's whole state for a snapshot sent to a follower, when
/// the group's snapshots carry no data of their own (`machine`).
pub trait SnapshotSource: Send + Sync + 'static {
    fn snapshot_bytes(&self) -> io::Result<Vec<u8>>;
}

/// One group's openraft network: clients to each peer, through the transport.
#[derive(Clone)]
pub struct GroupNetwork {
    pub transport: Arc<Transport>,
    pub group: u64,
    /// None: a membership's `BasicNode::addr` is the address itself.
    pub book: Option<Arc<dyn AddressBook>>,
    /// Where a snapshot without data gets its state.
    pub snapshots: Option<Arc<dyn SnapshotSource>>,
}

impl RaftNetworkFactory<RaftConfig> for GroupNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            transport: self.transport.clone(),
            group: self.group,
            target,
            node: node.addr.clone(),
            book: self.book.clone(),
            snapshots: self.snapshots.clone(),
        }
    }
}

/// A whole snapshot sent to a member has this long, plus a millisecond
/// for each [`SNAPSHOT_BYTES_PER_MS`] of it (20 MB/s, well under what
/// loopback or a LAN carries while both ends write it).
const SNAPSHOT_BASE_TIME: Duration = Duration::from_secs(10);
const SNAPSHOT_BYTES_PER_MS: usize = 20_000;
/// An append has openraft's time-out plus a millisecond for each of these
/// bytes (10 MB/s: a follower writing and syncing it on a busy disk).
const APPEND_BYTES_PER_MS: usize = 10_000;

/// Sends one group's RPCs to one peer.
pub struct PeerClient {
    transport: Arc<Transport>,
    group: u64,
    /// The member's Raft id: only that node may answer.
    target: NodeId,
    /// Its name (or, without an address book, its address).
    node: String,
    book: Option<Arc<dyn AddressBook>>,
    snapshots: Option<Arc<dyn SnapshotSource>>,
}

impl PeerClient {
    async fn call(&self, kind: u8, payload: Vec<u8>, option: &RPCOption) -> io::Result<Bytes> {
        self.call_within(kind, payload, option.hard_ttl()).await
    }

    async fn call_within(&self, kind: u8, payload: Vec<u8>, limit: Duration) -> io::Result<Bytes> {
        // Looked up on every call: the address book learns of peers as
        // they answer.
        let addr = self.book.as_ref().and_then(|b| b.address_of(&self.node)).unwrap_or_else(|| self.node.clone());
        self.transport.call(&addr, self.target, kind, self.group, &payload, limit).await
    }
}

fn rpc_error(e: io::Error) -> RPCError<RaftConfig> {
    match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => RPCError::Unreachable(Unreachable::new(&e)),
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

fn decoded<T>(r: io::Result<T>) -> Result<T, RPCError<RaftConfig>> {
    r.map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl RaftNetworkV2<RaftConfig> for PeerClient {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<RaftConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<RaftConfig>, RPCError<RaftConfig>> {
        let payload = encode_append(&rpc);
        // openraft's time-out (the heartbeat interval) is meant for an
        // append of a few entries: one of large batches of large messages
        // takes the follower longer to write, and cut short each time it
        // would never get through.
        let limit = option.hard_ttl() + Duration::from_millis((payload.len() / APPEND_BYTES_PER_MS) as u64);
        let reply = self.call_within(KIND_APPEND, payload, limit).await.map_err(rpc_error)?;
        decoded(decode_append_reply(&reply))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftConfig>, RPCError<RaftConfig>> {
        let reply = self.call(KIND_VOTE, encode_vote_request(&rpc), &option).await.map_err(rpc_error)?;
        decoded(decode_vote_reply(&reply))
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<RaftConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftConfig>, RPCError<RaftConfig>> {
        let reply = self.call(KIND_PRE_VOTE, encode_vote_request(&rpc), &option).await.map_err(rpc_error)?;
        decoded(decode_vote_reply(&reply))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<LeaderId, NodeId, BasicNode, Cursor<Vec<u8>>>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<RaftConfig>, StreamingError<RaftConfig>> {
        let made;
        let mut data = snapshot.snapshot.get_ref();
        if data.is_empty()
            && let Some(source) = &self.snapshots
        {
            // Reading a long queue back takes a while: the runtime's other
            // tasks (heartbeats) move to another worker meanwhile.
            let multi_thread = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            let bytes = if multi_thread {
                tokio::task::block_in_place(|| source.snapshot_bytes())
            } else {
                source.snapshot_bytes()
            };
            made = bytes.map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
            data = &made;
        }
        let payload = encode_snapshot(&vote, &snapshot.meta, data);
        // A whole queue can be hundreds of megabytes: openraft's time-out
        // (meant for a chunk) would cut every attempt short, and each
        // attempt makes the snapshot again.
        let limit = option
            .hard_ttl()
            .max(SNAPSHOT_BASE_TIME + Duration::from_millis((payload.len() / SNAPSHOT_BYTES_PER_MS) as u64));
        match self.call_within(KIND_SNAPSHOT, payload, limit).await {
            Ok(reply) => decode_snapshot_reply(&reply).map_err(|e| StreamingError::Network(NetworkError::new(&e))),
            Err(e) => Err(match rpc_error(e) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Network(n) => StreamingError::Network(n),
                other => StreamingError::Network(NetworkError::new(&other)),
            }),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<RaftConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<RaftConfig>, RPCError<RaftConfig>> {
        let reply = self.call(KIND_TRANSFER_LEADER, encode_transfer(&req), &option).await.map_err(rpc_error)?;
        decoded(decode_transfer_reply(&reply))
    }
}
