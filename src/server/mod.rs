//! The network layer: the listeners (plain AMQP, and amqps over
//! [`crate::tls`]), one task per connection (handshake, tuning, heartbeats,
//! channel multiplexing, content assembly) and one writer task per
//! connection that coalesces outgoing frames.
//!
//! Owns sockets and AMQP session state; it turns frames into calls on the
//! [`Broker`] and never touches broker state directly.

mod acks;
mod channel;
mod connection;
mod flow;
mod handshake;
mod methods;
mod permissions;
mod replicated;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::config::Config;

/// Connection ids, shared by every listener.
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// A connection id no other connection has (the cluster's consumer
/// sessions are connections of the broker too).
pub fn next_connection_id() -> u64 {
    NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed)
}

/// How a connection reached the broker.
#[derive(Debug, Clone, Default)]
pub(crate) struct Transport {
    pub tls: bool,
    /// The common name of the client's verified certificate (TLS only).
    pub peer_common_name: Option<String>,
}

/// Accepts amqps connections until the task is dropped: each TLS
/// handshake runs on its own (bounded by the handshake timeout), then the
/// connection is served like a plain one.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    broker: Arc<Broker>,
    config: Arc<Config>,
) {
    let mut accepted = crate::tls::accept_loop(listener, tls, config.handshake_timeout(), "amqps");
    while let Some((stream, peer)) = accepted.recv().await {
        let id = next_connection_id();
        let transport = Transport { tls: true, peer_common_name: crate::tls::peer_common_name(&stream) };
        let (broker, config) = (broker.clone(), config.clone());
        tokio::spawn(async move {
            let (reader, writer) = tokio::io::split(stream);
            connection::serve_stream((Box::new(reader), writer), transport, peer, id, broker, config).await
        });
    }
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, config: Arc<Config>) {
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                let id = next_connection_id();
                let broker = broker.clone();
                let config = config.clone();
                tokio::spawn(async move { connection::run(socket, peer, id, broker, config).await });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

pub fn is_loopback(peer: &SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_loopback_peers_count_as_local() {
        for local in ["127.0.0.1:5672", "127.1.2.3:1", "[::1]:5672", "[::ffff:127.0.0.1]:5672"] {
            assert!(is_loopback(&local.parse().unwrap()), "{local}");
        }
        for remote in ["10.0.0.5:5672", "192.168.1.2:1", "[::ffff:10.0.0.5]:5672", "[2001:db8::1]:5672"] {
            assert!(!is_loopback(&remote.parse().unwrap()), "{remote}");
        }
    }
}
