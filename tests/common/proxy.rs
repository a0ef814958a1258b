//! A TCP proxy on one node-to-node link, for partitions made by the test
//! itself (no root, no change to the machine's network): node i reaches
//! node j only through proxy (i, j), and the test cuts it. warren-clustertest
//! uses this file too (`tools/crashtest/cluster`).
//!
//! A cut closes every connection through the proxy, and connections made
//! while it lasts are held open but carry nothing in the cut direction
//! (as a network that drops packets: the other side sees silence, not a
//! reset). Healing closes those too, so no connection ever loses bytes in
//! its middle: each carries a direction whole or not at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Which directions a link carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carries {
    /// From the connecting node to the one it connects to.
    pub forward: bool,
    /// The replies, back.
    pub backward: bool,
}

pub const OPEN: Carries = Carries { forward: true, backward: true };
pub const CUT: Carries = Carries { forward: false, backward: false };

pub struct Proxy {
    pub port: u16,
    /// The link's state; each change closes the connections made before.
    state: watch::Sender<(u64, Carries)>,
    epoch: AtomicU64,
    accept: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.accept.lock().take() {
            task.abort();
        }
    }
}

impl Proxy {
    /// A proxy on a free loopback port to `target_port` on loopback.
    pub async fn start(target_port: u16) -> Arc<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("a proxy port");
        let port = listener.local_addr().expect("its address").port();
        let (state, _) = watch::channel((0, OPEN));
        let proxy = Arc::new(Proxy { port, state, epoch: AtomicU64::new(0), accept: Mutex::new(None) });
        let states = proxy.state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut watcher = states.subscribe();
                let (epoch, carries) = *watcher.borrow_and_update();
                tokio::spawn(async move {
                    let relay = relay(client, target_port, carries);
                    // Any change of the link's state ends the connection.
                    tokio::select! {
                        _ = relay => {}
                        _ = watcher.wait_for(|(now, _)| *now != epoch) => {}
                    }
                });
            }
        });
        *proxy.accept.lock() = Some(task.abort_handle());
        proxy
    }

    /// Sets which directions the link carries from now on.
    pub fn set(&self, carries: Carries) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.state.send_replace((epoch, carries));
    }
}

/// Carries one connection's bytes: a direction that is cut is read and
/// dropped; a link cut both ways does not even connect on.
async fn relay(client: TcpStream, target_port: u16, carries: Carries) {
    let _ = client.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    if carries == CUT {
        let mut sink = [0u8; 4096];
        while matches!(client_read.read(&mut sink).await, Ok(n) if n > 0) {}
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else { return };
    let _ = server.set_nodelay(true);
    let (mut server_read, mut server_write) = server.into_split();
    let forward = pump(&mut client_read, &mut server_write, carries.forward);
    let backward = pump(&mut server_read, &mut client_write, carries.backward);
    // Either side ending ends the connection.
    tokio::select! {
        _ = forward => {}
        _ = backward => {}
    }
}

/// Copies `from` to `to` until either ends, or with `carry` off reads
/// and drops what arrives.
async fn pump(from: &mut (impl AsyncReadExt + Unpin), to: &mut (impl AsyncWriteExt + Unpin), carry: bool) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if carry && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
