//! S1 over TLS beside plain S1, in one run against one broker: a durable
//! queue, persistent 1 KiB messages, one publisher with confirms (at most
//! 100 in flight), one consumer acking each message with prefetch 100, for
//! `SECONDS` (default 8) per run, alternating plain and TLS `REPS` times
//! (default 3). Both sides use the same client (lapin; its rustls connector
//! for amqps) so the difference is TLS. Certificates are made with rcgen.
//! Prints each run's message rate and the broker's CPU per message, then
//! the medians and the ratio.
//!
//! `cargo bench --bench tls_s1`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use support::{KillOnDrop, free_port};

/// The broker's user + system CPU ticks so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    num(11) + num(12)
}

async fn connect(uri: &str, ca: &str) -> Connection {
    let config = OwnedTLSConfig { identity: None, cert_chain: Some(ca.to_string()) };
    let runtime = lapin::runtime::default_runtime().expect("runtime");
    Connection::connect_with_config(uri, ConnectionProperties::default(), config, runtime).await.expect("connect")
}

/// One S1 run; returns messages per second.
async fn s1(uri: &str, ca: &str, queue: &str, seconds: u64) -> f64 {
    let pconn = connect(uri, ca).await;
    let cconn = connect(uri, ca).await;
    let pch = pconn.create_channel().await.expect("channel");
    let cch = cconn.create_channel().await.expect("channel");
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    pch.queue_declare(queue.into(), durable, FieldTable::default()).await.expect("declare");
    pch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    cch.basic_qos(100, BasicQosOptions::default()).await.expect("qos");
    let mut deliveries = cch
        .basic_consume(queue.into(), "s1".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect("consume");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let consumer = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(Ok(d)) = deliveries.next().await {
            // The run ends by closing the connection under the consumer.
            if d.ack(BasicAckOptions::default()).await.is_err() {
                break;
            }
            n += 1;
        }
        n
    });
    let body = vec![b'x'; 1024];
    let props = BasicProperties::default().with_delivery_mode(2);
    let started = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    let mut published = 0u64;
    while Instant::now() < deadline {
        let confirm = pch
            .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body, props.clone())
            .await
            .expect("publish");
        in_flight.push_back(confirm);
        if in_flight.len() >= 100
            && let Some(c) = in_flight.pop_front()
        {
            c.await.expect("confirm");
        }
        published += 1;
    }
    for c in in_flight {
        c.await.expect("confirm");
    }
    let rate = published as f64 / started.elapsed().as_secs_f64();
    let _ = cconn.close(200, "done".into()).await;
    let _ = consumer.await;
    let _ = pconn.close(200, "done".into()).await;
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds: u64 = std::env::var("SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let reps: usize = std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let scratch = tempfile::tempdir().expect("scratch");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.distinguished_name.push(DnType::CommonName, "bench CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).expect("CA").pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().expect("ip"))];
    let cert = params.signed_by(&key, &issuer).expect("certificate");
    std::fs::write(scratch.path().join("server.pem"), cert.pem()).expect("write");
    std::fs::write(scratch.path().join("server.key"), key.serialize_pem()).expect("write");
    let (port, tls_port) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--tls-port", &tls_port.to_string()])
        .args(["--management-port", "0", "--prometheus-port", "0", "--data-dir"])
        .arg(scratch.path().join("data"))
        .arg("--tls-cert")
        .arg(scratch.path().join("server.pem"))
        .arg("--tls-key")
        .arg(scratch.path().join("server.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start warren");
    let pid = child.id();
    let _broker = KillOnDrop(child);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
            assert!(Instant::now() < deadline, "the broker did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let plain = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        let tls = format!("amqps://guest:guest@127.0.0.1:{tls_port}/%2f");
        let (mut plain_rates, mut tls_rates, mut plain_cpu, mut tls_cpu) = (vec![], vec![], vec![], vec![]);
        for rep in 0..reps {
            for (label, uri) in [("plain", &plain), ("tls", &tls)] {
                let before = cpu_ticks(pid);
                let rate = s1(uri, &ca_pem, &format!("s1-{label}-{rep}"), seconds).await;
                let ticks = cpu_ticks(pid) - before;
                let us_per_msg = ticks as f64 * 10_000.0 / (rate * seconds as f64);
                println!("{label} rep {rep}: {rate:.0} msg/s, broker {us_per_msg:.2} µs CPU per message");
                if label == "plain" {
                    plain_rates.push(rate);
                    plain_cpu.push(us_per_msg);
                } else {
                    tls_rates.push(rate);
                    tls_cpu.push(us_per_msg);
                }
            }
        }
        let (p, t) = (median(plain_rates), median(tls_rates));
        println!(
            "tls_s1: plain {p:.0} msg/s, TLS {t:.0} msg/s (ratio {:.2}); broker CPU per message plain {:.2} µs, TLS {:.2} µs",
            t / p,
            median(plain_cpu),
            median(tls_cpu)
        );
    });
}
