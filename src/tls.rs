//! TLS on Warren's listeners (rustls with the ring provider, TLS 1.2 and
//! 1.3): the `[tls]` settings, the server configuration built from PEM
//! files, optional client-certificate verification against a CA (as
//! RabbitMQ's `verify_peer` and `fail_if_no_peer_cert`), the common name a
//! verified client certificate carries (the `EXTERNAL` mechanism's user),
//! and an accept loop that completes each handshake in its own task so a
//! slow client never holds up the others.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The `[tls]` section of the config file (and the `--tls-*` flags).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Port of the amqps listener (RabbitMQ's 5671); 0 picks a free one.
    pub port: u16,
    /// The server's certificate chain, PEM.
    pub cert: Option<PathBuf>,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to.
    pub ca: Option<PathBuf>,
    /// "verify_peer" (the default when `ca` is set: a client certificate,
    /// if presented, must be valid) or "verify_none".
    pub verify: Option<String>,
    /// With verify_peer, refuse clients that present no certificate.
    pub fail_if_no_peer_cert: bool,
    /// Serve the management API over TLS too.
    pub management: bool,
    /// Serve the Prometheus endpoint over TLS too.
    pub prometheus: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            port: 5671,
            cert: None,
            key: None,
            ca: None,
            verify: None,
            fail_if_no_peer_cert: false,
            management: false,
            prometheus: false,
        }
    }
}

impl TlsConfig {
    /// Whether TLS is configured at all (a certificate and a key).
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// The rustls server configuration, or None when no certificate and key
/// are configured. Refuses a half configuration and unreadable files.
pub fn server_config(tls: &TlsConfig) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    let (cert, key) = match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => return Ok(None),
        _ => return Err("TLS needs both a certificate (--tls-cert) and a key (--tls-key)".into()),
    };
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?;
    let verify_peer = match tls.verify.as_deref() {
        None => tls.ca.is_some(),
        Some("verify_peer") => true,
        Some("verify_none") => false,
        Some(other) => return Err(format!("TLS: verify must be verify_peer or verify_none, not '{other}'")),
    };
    let builder = match (&tls.ca, verify_peer) {
        (Some(ca), true) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(ca)? {
                roots.add(c).map_err(|e| format!("TLS: a CA certificate in {} is not usable: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if tls.fail_if_no_peer_cert { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| format!("TLS: {e}"))?)
        }
        (None, true) => return Err("TLS: verify_peer needs the CA certificates (--tls-ca)".into()),
        (_, false) => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| format!("TLS: {e}"))?;
    config.alpn_protocols = Vec::new();
    Ok(Some(Arc::new(config)))
}

/// The common name of a verified client certificate, if the client
/// presented one.
pub fn peer_common_name(stream: &TlsStream<TcpStream>) -> Option<String> {
    let (_, session) = stream.get_ref();
    let der = session.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(name)
}

/// Accepts TCP connections and runs each TLS handshake in its own task,
/// bounded by `timeout`; completed streams come out of the returned
/// channel. A failed handshake (a refused client certificate, a client
/// speaking plain AMQP to the TLS port) is logged and dropped.
pub fn accept_loop(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
    what: &'static str,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("{what}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            if tx.is_closed() {
                return;
            }
            let (acceptor, done) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => {
                        let _ = done.send((stream, peer)).await;
                    }
                    Ok(Err(e)) => tracing::warn!("{what}: TLS handshake with {peer} failed: {e}"),
                    Err(_) => tracing::warn!("{what}: TLS handshake with {peer} timed out"),
                }
            });
        }
    });
    rx
}
