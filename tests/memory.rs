//! Bounded memory: the memory alarm blocks publishers (connection.blocked)
//! while consumers go on, and queued messages, transient ones included, are
//! paged out to the log and come back in order.

mod common;

use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;

use common::amqp::*;

/// warrenctl status as JSON.
fn status(broker: &common::Broker) -> serde_json::Value {
    let out = broker.warrenctl(&["--formatter", "json", "status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

async fn poll(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn set_watermark(broker: &common::Broker, args: &[&str]) {
    let mut all = vec!["set_vm_memory_high_watermark"];
    all.extend_from_slice(args);
    let out = broker.warrenctl(&all);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_alarm_blocks_publishers_while_consumers_go_on() {
    let broker = common::Broker::start_with_http();
    let publisher = connect(&broker).await;
    let pch = confirm_channel(&publisher).await;
    declare_queue(&pch, "work").await;
    for i in 0..3 {
        publish_props(&pch, "work", format!("before {i}").as_bytes(), BasicProperties::default()).await;
    }
    set_watermark(&broker, &["absolute", "0"]);
    poll("the memory alarm", Duration::from_secs(5), || status(&broker)["memory_alarm"] == true).await;
    let health = common::http::request(
        broker.management.expect("management port"),
        "GET",
        "/api/health/checks/alarms",
        Some(("guest", "guest")),
        None,
    )
    .await;
    assert_eq!(health.status, 503, "{}", health.body);
    assert_eq!(health.json()["alarms"][0]["resource"], "memory");

    // A publish: the connection stops being read and is told why.
    let confirm = pch
        .basic_publish("".into(), "work".into(), BasicPublishOptions::default(), b"during", BasicProperties::default())
        .await
        .expect("publish");
    poll("connection.blocked", Duration::from_secs(5), || publisher.status().blocked()).await;
    // Its next method is not read either: no declare-ok while blocked.
    let pch2 = pch.clone();
    let declare = tokio::spawn(async move {
        pch2.queue_declare("declared-while-blocked".into(), QueueDeclareOptions::default(), FieldTable::default()).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!declare.is_finished(), "a blocked publisher's methods wait");

    // Another client consumes meanwhile.
    let consumer = connect(&broker).await;
    let cch = channel(&consumer).await;
    let got = drain(&cch, "work").await;
    assert!(got.len() >= 3 && got[..3] == ["before 0", "before 1", "before 2"], "{got:?}");

    set_watermark(&broker, &["0.4"]);
    poll("connection.unblocked", Duration::from_secs(5), || !publisher.status().blocked()).await;
    within("confirm after unblocking", confirm).await.expect("confirm");
    within("declare after unblocking", declare).await.expect("join").expect("declare-ok");
    assert_eq!(status(&broker)["memory_alarm"], false);
    assert!(broker.log().contains("memory alarm set"), "{}", broker.log());
    assert!(broker.log().contains("memory alarm cleared"), "{}", broker.log());
}

#[tokio::test]
async fn a_bad_watermark_is_refused_by_warrenctl_and_at_start() {
    let broker = common::Broker::start();
    let out = broker.warrenctl(&["set_vm_memory_high_watermark", "lots"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid memory high watermark 'lots'"), "{out:?}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--memory-high-watermark=lots", "--port", "0", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .expect("run warren");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid memory high watermark 'lots'"), "{stderr}");
}

const BODY: usize = 8 * 1024;

/// Takes the messages numbered `numbers` from a consumer, in that order,
/// acking each; `what` names message n with `{}` for its number.
async fn expect_in_order(deliveries: &mut lapin::Consumer, numbers: impl IntoIterator<Item = usize>, what: &str) {
    for n in numbers {
        let d = next(deliveries).await;
        let name = what.replace("{}", &n.to_string());
        assert!(d.data == body(n), "{name}: got message {} ({} bytes)", number(&d.data), d.data.len());
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
}

/// The number a body starts with, for messages that name what arrived.
fn number(data: &[u8]) -> String {
    String::from_utf8_lossy(&data[..8.min(data.len())]).into_owned()
}

fn body(n: usize) -> Vec<u8> {
    let mut b = format!("{n:08}").into_bytes();
    b.resize(BODY, (n % 251) as u8);
    b
}

/// With paging always on, a backlog of transient messages leaves memory
/// for the log and comes back in publish order, in a queue that is not
/// durable and in a durable one mixing transient and persistent messages;
/// after a kill -9 only the persistent ones are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_backlogs_page_out_to_the_log_and_come_back_in_order() {
    const COUNT: usize = 3000;
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let mut broker = common::Broker::start_in(&data, &["--memory-paging-ratio", "0"]);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    ch.queue_declare("scratch".into(), QueueDeclareOptions::default(), FieldTable::default()).await.expect("declare");
    ch.queue_declare(
        "mixed".into(),
        QueueDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let mut confirms = Vec::new();
    for n in 0..COUNT {
        for (queue, props) in [
            ("scratch", BasicProperties::default()),
            ("mixed", if n % 3 == 0 { persistent.clone() } else { BasicProperties::default() }),
        ] {
            let c = ch
                .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body(n), props)
                .await
                .expect("publish");
            confirms.push(c);
        }
    }
    for c in confirms {
        assert!(within("confirm", c).await.expect("confirm").is_ack());
    }
    // Nearly all of both backlogs leave memory (each queue keeps a small window).
    poll("bodies paged out", Duration::from_secs(20), || {
        status(&broker)["log_spilled_messages"].as_u64().unwrap_or(0) as usize >= COUNT + COUNT * 2 / 3 - 400
    })
    .await;
    assert_eq!(status(&broker)["memory_paging"], true);

    // Half of "scratch" consumed in order, the rest left for later.
    let consumer = connect(&broker).await;
    let cch = channel(&consumer).await;
    cch.basic_qos(100, BasicQosOptions::default()).await.expect("qos");
    let mut deliveries = consume(&cch, "scratch", "c", false).await;
    expect_in_order(&mut deliveries, 0..COUNT / 2, "message {} of the non-durable queue").await;
    // Closing the channel gives its unacked (paged-out) messages back to
    // their places; a requeue puts one back at its place too.
    cch.close(200, "bye".into()).await.expect("close");
    let cch2 = channel(&consumer).await;
    let got =
        cch2.basic_get("scratch".into(), BasicGetOptions { no_ack: false }).await.expect("get").expect("a message");
    assert!(got.delivery.data == body(COUNT / 2), "got {}", number(&got.delivery.data));
    got.delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.expect("nack");
    cch2.basic_qos(200, BasicQosOptions::default()).await.expect("qos");
    let mut rest = consume(&cch2, "scratch", "c2", false).await;
    expect_in_order(&mut rest, COUNT / 2..COUNT, "message {} of the non-durable queue").await;
    // Every paged-out body of the drained queue was released.
    poll("scratch's pages released", Duration::from_secs(5), || {
        status(&broker)["log_spilled_messages"].as_u64().unwrap_or(u64::MAX) as usize <= COUNT * 2 / 3
    })
    .await;

    // kill -9: the durable queue keeps its persistent messages only, in order.
    broker.kill();
    drop(conn);
    drop(consumer);
    let broker = common::Broker::start_in(&data, &["--memory-paging-ratio", "0"]);
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let expected: Vec<usize> = (0..COUNT).filter(|n| n % 3 == 0).collect();
    assert_eq!(ready(&ch, "mixed").await as usize, expected.len());
    ch.basic_qos(500, BasicQosOptions::default()).await.expect("qos");
    let mut mixed = consume(&ch, "mixed", "m", false).await;
    expect_in_order(&mut mixed, expected, "persistent message {} after the restart").await;
    assert_eq!(status(&broker)["log_spilled_messages"], 0);
}

/// Paged-out transient messages that expire are dead-lettered with their
/// bodies (read back from the log), in order, and their pages are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_out_messages_expire_into_a_dead_letter_queue_whole() {
    const COUNT: usize = 1000;
    let scratch = tempfile::tempdir().unwrap();
    let broker = common::Broker::start_in(&scratch.path().join("data"), &["--memory-paging-ratio", "0"]);
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    ch.queue_declare("dead".into(), QueueDeclareOptions::default(), FieldTable::default()).await.expect("declare");
    let args = table(&[
        ("x-message-ttl", lapin::types::AMQPValue::LongInt(700)),
        ("x-dead-letter-exchange", long_string("")),
        ("x-dead-letter-routing-key", long_string("dead")),
    ]);
    ch.queue_declare("short-lived".into(), QueueDeclareOptions::default(), args).await.expect("declare");
    for n in 0..COUNT {
        publish_props(&ch, "short-lived", &body(n), BasicProperties::default()).await;
    }
    assert!(status(&broker)["log_spilled_messages"].as_u64().unwrap_or(0) > 0, "bodies were paged out");
    poll("every message dead-lettered", Duration::from_secs(20), || {
        common::amqp::queue_stats(&broker, "dead").0 as usize == COUNT
    })
    .await;
    let cch = channel(&conn).await;
    cch.basic_qos(200, BasicQosOptions::default()).await.expect("qos");
    let mut deliveries = consume(&cch, "dead", "d", false).await;
    for n in 0..COUNT {
        let d = next(&mut deliveries).await;
        assert!(
            d.data == body(n),
            "dead-lettered message {n}: got message {} ({} bytes)",
            number(&d.data),
            d.data.len()
        );
        let headers = d.properties.headers().as_ref().expect("x-death headers");
        assert!(headers.inner().contains_key("x-death"), "message {n} carries x-death");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    poll("pages released", Duration::from_secs(5), || status(&broker)["log_spilled_messages"] == 0).await;
}
