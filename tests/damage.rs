//! Damage in the log is found and named, and never turns into a wrong
//! message: the real broker refuses to start on a flipped byte in a sealed
//! segment, and with --skip-damaged-segments it starts without that segment.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const SEGMENT: &str = "65536";

async fn fill(url: &str, count: usize) {
    let conn = Connection::connect(url, ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    ch.queue_declare("kept".into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await
        .unwrap();
    for i in 0..count {
        let body = format!("message-{i:05}-").repeat(60);
        ch.basic_publish(
            "".into(),
            "kept".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    conn.close(200, "done".into()).await.unwrap();
}

#[tokio::test]
async fn a_flipped_byte_in_a_sealed_segment_stops_startup_naming_segment_and_offset() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("data");
    let mut broker = common::Broker::start_in(&dir, &["--segment-size", SEGMENT]);
    fill(&broker.url(), 200).await;
    broker.stop();

    let files = common::segment_files(&dir);
    assert!(files.len() >= 3, "expected several segments, got {files:?}");
    // Flip a byte in the middle of the first (sealed) segment's records.
    let victim = &files[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let used = bytes.iter().rposition(|b| *b != 0).unwrap();
    let at = used / 2;
    bytes[at] ^= 0x40;
    std::fs::write(victim, &bytes).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--management-port",
            "0",
            "--prometheus-port",
            "0",
            "--segment-size",
            SEGMENT,
            "--data-dir",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the broker must not start on a damaged sealed segment");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(stderr.contains(name), "the error names the segment: {stderr}");
    assert!(stderr.contains("offset"), "the error names the offset: {stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));

    // With the explicit option it starts; every message it delivers is intact.
    let broker = common::Broker::start_in(&dir, &["--segment-size", SEGMENT, "--skip-damaged-segments"]);
    assert!(dir.join("log").join(format!("{name}.damaged")).exists());
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut seen = 0;
    while let Some(msg) =
        tokio::time::timeout(Duration::from_secs(5), ch.basic_get("kept".into(), BasicGetOptions { no_ack: true }))
            .await
            .expect("basic.get answered")
            .unwrap()
    {
        let body = String::from_utf8(msg.delivery.data.clone()).expect("utf-8 body");
        let prefix = &body[..14];
        assert_eq!(body, prefix.repeat(60), "a delivered message is exactly what was published");
        seen += 1;
    }
    assert!(seen > 0 && seen < 200, "messages of the other segments are served ({seen})");
}
