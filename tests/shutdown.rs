//! A graceful shutdown of the real binary: on SIGTERM (and SIGINT) the
//! broker stops accepting, lets the confirms already earned go out, tells
//! every client with 320 CONNECTION_FORCED and RabbitMQ's text, syncs the
//! log and exits 0; every message it confirmed is there after a restart.

mod common;

use std::time::{Duration, Instant};

use common::amqp::*;
use common::raw::RawClient;
use warren::protocol::Method;

const SHUTDOWN_TEXT: &str = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'";

fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {pid}");
}

async fn graceful_shutdown_on(signal: &str) {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("data");
    let mut broker = common::Broker::start_in(&dir, &[]);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    within("declare", ch.queue_declare("kept".into(), durable, Default::default())).await.expect("declare");
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    for i in 0..50 {
        publish_props(&ch, "kept", format!("m{i}").as_bytes(), props.clone()).await;
    }
    let mut raw = RawClient::open_as(broker.addr, "guest", "guest", "/").await.expect("raw client");

    let pid = broker.pid().expect("running");
    send_signal(pid, signal);
    match within("connection.close", raw.expect_method()).await {
        Method::ConnectionClose(close) => {
            assert_eq!((close.reply_code, close.reply_text.as_str()), (320, SHUTDOWN_TEXT))
        }
        other => panic!("expected connection.close, got {other:?}"),
    }
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = broker.try_exit_status() {
            break status;
        }
        assert!(Instant::now() < deadline, "the broker did not exit after SIG{signal}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(!conn.status().connected(), "the lapin client was told too");
    assert!(tokio::net::TcpStream::connect(broker.addr).await.is_err(), "nothing listens any more");

    let broker = common::Broker::start_in(&dir, &[]);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    let bodies = drain(&ch, "kept").await;
    assert_eq!(bodies, (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>(), "every confirmed message is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_320_and_keeps_every_confirmed_message() {
    graceful_shutdown_on("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_does_the_same() {
    graceful_shutdown_on("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let scratch = tempfile::tempdir().expect("scratch");
    let mut broker = common::Broker::start_in(&scratch.path().join("data"), &[]);
    // A client that never answers the broker's connection.close: the
    // graceful shutdown waits seconds for it.
    let _silent = RawClient::open_as(broker.addr, "guest", "guest", "/").await.expect("raw client");
    let pid = broker.pid().expect("running");
    send_signal(pid, "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(broker.try_exit_status().is_none(), "still waiting for the silent client");
    let second = Instant::now();
    send_signal(pid, "TERM");
    let status = loop {
        if let Some(status) = broker.try_exit_status() {
            break status;
        }
        assert!(second.elapsed() < Duration::from_secs(2), "the second signal did not end the broker at once");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(broker.log().contains("second signal"), "{}", broker.log());
}
