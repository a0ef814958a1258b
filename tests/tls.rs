//! AMQP over TLS (amqps) with lapin's rustls connector, against
//! certificates made here with rcgen: publish and consume over TLS, the
//! EXTERNAL mechanism (the client certificate's common name is the user),
//! a client certificate from another CA refused, plain AMQP on the TLS port
//! refused, and the management API over HTTPS. Meanwhile plain clients are
//! served.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::amqp::*;

/// A certificate and its key, PEM.
struct Pem {
    cert: String,
    key: String,
}

struct Pki {
    ca: Pem,
    server: Pem,
    /// CN=guest, signed by the CA.
    client: Pem,
    /// CN=guest, signed by a CA the broker does not trust.
    stranger: Pem,
}

fn ca(name: &str) -> (Pem, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("CA certificate");
    let pem = Pem { cert: cert.pem(), key: key.serialize_pem() };
    (pem, Issuer::new(params, key))
}

fn leaf(common_name: &str, issuer: &Issuer<'static, KeyPair>, server: bool) -> Pem {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, common_name);
    if server {
        params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    }
    let cert = params.signed_by(&key, issuer).expect("certificate");
    Pem { cert: cert.pem(), key: key.serialize_pem() }
}

fn pki() -> Pki {
    let (ca_pem, issuer) = ca("warren test CA");
    let (_, other) = ca("someone else's CA");
    Pki {
        server: leaf("127.0.0.1", &issuer, true),
        client: leaf("guest", &issuer, false),
        stranger: leaf("guest", &other, false),
        ca: ca_pem,
    }
}

/// Writes the server's files and starts a broker with TLS (and HTTPS for
/// the management API when `https`).
fn tls_broker(dir: &Path, pki: &Pki, https: bool) -> common::Broker {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in [("ca.pem", &pki.ca.cert), ("server.pem", &pki.server.cert), ("server.key", &pki.server.key)] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let config = dir.join("warren.toml");
    std::fs::write(&config, format!("[tls]\nport = 0\nmanagement = {https}\n")).unwrap();
    let path = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let args = [
        "--config".to_string(),
        path("warren.toml"),
        "--tls-cert".into(),
        path("server.pem"),
        "--tls-key".into(),
        path("server.key"),
        "--tls-ca".into(),
        path("ca.pem"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if https {
        common::Broker::start_in_with_http(&dir.join("data"), &args)
    } else {
        common::Broker::start_in(&dir.join("data"), &args)
    }
}

async fn connect_tls(uri: &str, ca: &Pem, identity: Option<&Pem>) -> lapin::Result<Connection> {
    let config = OwnedTLSConfig {
        identity: identity
            .map(|p| OwnedIdentity::PKCS8 { pem: p.cert.clone().into_bytes(), key: p.key.clone().into_bytes() }),
        cert_chain: Some(ca.cert.clone()),
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect_with_config(
            uri,
            ConnectionProperties::default(),
            config,
            lapin::runtime::default_runtime().expect("tokio runtime"),
        ),
    )
    .await
    .expect("connect within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_over_tls_with_password_and_external_logins() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = pki();
    let broker = tls_broker(scratch.path(), &pki, false);
    let tls = broker.tls.expect("amqps listener");
    let uri = format!("amqps://guest:guest@127.0.0.1:{}/%2f", tls.port());

    // Password login over TLS, no client certificate.
    let conn = connect_tls(&uri, &pki.ca, None).await.expect("amqps connection");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    declare_queue(&ch, "secure").await;
    for i in 0..100 {
        let body = format!("secret {i}");
        let confirm = ch
            .basic_publish(
                "".into(),
                "secure".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        assert!(confirm.await.expect("confirm").is_ack());
    }

    // EXTERNAL: the certificate's common name (guest) is the user.
    let external = format!("amqps://127.0.0.1:{}/%2f?auth_mechanism=external", tls.port());
    let conn2 = connect_tls(&external, &pki.ca, Some(&pki.client)).await.expect("EXTERNAL login");
    let ch2 = conn2.create_channel().await.expect("channel");
    ch2.basic_qos(10, BasicQosOptions::default()).await.expect("qos");
    let mut consumer = ch2
        .basic_consume("secure".into(), "c".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    for i in 0..100 {
        let d = within("delivery", consumer.next()).await.expect("delivery").expect("ok");
        assert_eq!(d.data, format!("secret {i}").into_bytes());
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    // A plain client on the plain port is served alongside.
    let plain = connect(&broker).await;
    let pch = channel(&plain).await;
    publish_props(&pch, "secure", b"plain", BasicProperties::default()).await;
    let d = within("delivery", consumer.next()).await.expect("delivery").expect("ok");
    assert_eq!(d.data, b"plain");
    let log = broker.log();
    assert!(log.contains("connection 127.0.0.1"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_certificates_and_plain_amqp_on_the_tls_port_are_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = pki();
    let broker = tls_broker(scratch.path(), &pki, false);
    let tls = broker.tls.expect("amqps listener");

    // A certificate from a CA the broker does not trust: the handshake fails.
    let uri = format!("amqps://127.0.0.1:{}/%2f?auth_mechanism=external", tls.port());
    assert!(connect_tls(&uri, &pki.ca, Some(&pki.stranger)).await.is_err(), "a stranger's certificate is refused");
    // EXTERNAL without a certificate: no such mechanism offered.
    let uri = format!("amqps://127.0.0.1:{}/%2f?auth_mechanism=external", tls.port());
    assert!(connect_tls(&uri, &pki.ca, None).await.is_err(), "EXTERNAL needs a certificate");
    // Plain AMQP on the TLS port: no AMQP answer, the socket is closed.
    let mut raw = tokio::net::TcpStream::connect(tls).await.expect("connect");
    raw.write_all(common::raw::HEADER).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(12), raw.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the TLS port closes a plain client");
    assert!(!answer.starts_with(b"AMQP"), "no AMQP spoken on the TLS port before the handshake");

    // Everyone else is served, over TLS and in plain.
    let good = format!("amqps://guest:guest@127.0.0.1:{}/%2f", tls.port());
    let conn = connect_tls(&good, &pki.ca, Some(&pki.client)).await.expect("a trusted certificate works");
    assert!(conn.status().connected());
    let plain = connect(&broker).await;
    assert!(plain.status().connected());
    let log = broker.log();
    assert!(log.contains("TLS handshake with 127.0.0.1"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_management_api_serves_https_and_lists_tls_connections() {
    let scratch = tempfile::tempdir().unwrap();
    let pki = pki();
    let broker = tls_broker(scratch.path(), &pki, true);
    let tls = broker.tls.expect("amqps listener");
    let uri = format!("amqps://127.0.0.1:{}/%2f?auth_mechanism=external", tls.port());
    let _conn = connect_tls(&uri, &pki.ca, Some(&pki.client)).await.expect("EXTERNAL login");

    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from(
        rustls::pki_types::pem::PemObject::from_pem_slice(pki.ca.cert.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'_>| c.to_vec())
            .expect("CA"),
    );
    roots.add(ca).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let management = broker.management.expect("management API");
    let tcp = tokio::net::TcpStream::connect(management).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut stream = within("TLS handshake", connector.connect(name, tcp)).await.expect("https handshake");
    let request = "GET /api/connections HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut response = Vec::new();
    let _ = within("response", stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(body.contains("\"ssl\":true"), "{body}");
    assert!(body.contains("\"auth_mechanism\":\"EXTERNAL\""), "{body}");
    // Plain HTTP on the HTTPS port gets nothing useful.
    let mut plain = tokio::net::TcpStream::connect(management).await.expect("connect");
    plain.write_all(request.as_bytes()).await.expect("request");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(12), plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
}
