//! Users and permissions, managed with warrenctl at run time: a user
//! confined by regular expressions cannot touch what it must not (each
//! refusal checked for its 403 and RabbitMQ's text), logins follow the
//! user store (passwords, deletion, vhost access), topic permissions on
//! routing keys, and every change survives kill -9.

mod common;

use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

use common::amqp::*;

fn ctl(broker: &common::Broker, args: &[&str]) -> String {
    let out = broker.warrenctl(args);
    assert!(out.status.success(), "warrenctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn url(broker: &common::Broker, user: &str, password: &str) -> String {
    format!("amqp://{user}:{password}@{}/%2f", broker.addr)
}

async fn login(broker: &common::Broker, user: &str, password: &str) -> lapin::Result<Connection> {
    within("connect", Connection::connect(&url(broker, user, password), ConnectionProperties::default())).await
}

/// bob may configure, write and read only what starts with "bob-".
fn confine_bob(broker: &common::Broker) {
    ctl(broker, &["add_user", "bob", "s3cret"]);
    ctl(broker, &["set_permissions", "-p", "/", "bob", "^bob-", "^bob-", "^bob-"]);
}

fn refused(access: &str, kind: &str, name: &str) -> String {
    format!("ACCESS_REFUSED - {access} access to {kind} '{name}' in vhost '/' refused for user 'bob'")
}

#[tokio::test]
async fn a_confined_user_is_refused_everything_outside_its_patterns() {
    let broker = common::Broker::start();
    confine_bob(&broker);
    // What bob must not touch, made by guest.
    let admin = connect(&broker).await;
    let ach = confirm_channel(&admin).await;
    declare_queue(&ach, "other").await;
    within(
        "exchange",
        ach.exchange_declare("other-x".into(), ExchangeKind::Direct, Default::default(), FieldTable::default()),
    )
    .await
    .expect("exchange");

    let bob = login(&broker, "bob", "s3cret").await.expect("bob logs in");
    let ch = confirm_channel(&bob).await;
    declare_queue(&ch, "bob-q").await;
    within(
        "declare bob-x",
        ch.exchange_declare("bob-x".into(), ExchangeKind::Direct, Default::default(), FieldTable::default()),
    )
    .await
    .expect("bob-x");
    within(
        "bind",
        ch.queue_bind("bob-q".into(), "bob-x".into(), "k".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("bind within bob's patterns");
    let confirm = within(
        "publish",
        ch.basic_publish("bob-x".into(), "k".into(), Default::default(), b"mine", BasicProperties::default()),
    )
    .await
    .expect("publish");
    within("confirm", confirm).await.expect("confirm");
    assert_eq!(drain(&ch, "bob-q").await, ["mine"]);

    // Each refusal closes the channel: a fresh one per attempt.
    let cases: Vec<(&str, String)> = vec![
        ("declare queue other", refused("configure", "queue", "other")),
        ("declare exchange other-x2", refused("configure", "exchange", "other-x2")),
        ("delete queue other", refused("configure", "queue", "other")),
        ("delete exchange other-x", refused("configure", "exchange", "other-x")),
        ("purge other", refused("read", "queue", "other")),
        ("get other", refused("read", "queue", "other")),
        ("consume other", refused("read", "queue", "other")),
        ("bind bob-q to other-x", refused("read", "exchange", "other-x")),
        ("bind other to bob-x", refused("write", "queue", "other")),
        ("publish to the default exchange", refused("write", "exchange", "amq.default")),
        ("publish to other-x", refused("write", "exchange", "other-x")),
    ];
    for (what, text) in cases {
        let ch = confirm_channel(&bob).await;
        let no_args = FieldTable::default;
        match what {
            "declare queue other" => {
                expect_error(what, ch.queue_declare("other".into(), Default::default(), no_args()), 403, &text).await
            }
            "declare exchange other-x2" => {
                let fut = ch.exchange_declare("other-x2".into(), ExchangeKind::Direct, Default::default(), no_args());
                expect_error(what, fut, 403, &text).await
            }
            "delete queue other" => {
                expect_error(what, ch.queue_delete("other".into(), Default::default()), 403, &text).await
            }
            "delete exchange other-x" => {
                expect_error(what, ch.exchange_delete("other-x".into(), Default::default()), 403, &text).await
            }
            "purge other" => expect_error(what, ch.queue_purge("other".into(), Default::default()), 403, &text).await,
            "get other" => expect_error(what, ch.basic_get("other".into(), Default::default()), 403, &text).await,
            "consume other" => {
                let fut = ch.basic_consume("other".into(), "c".into(), Default::default(), no_args());
                expect_error(what, fut, 403, &text).await
            }
            "bind bob-q to other-x" => {
                let fut = ch.queue_bind("bob-q".into(), "other-x".into(), "k".into(), Default::default(), no_args());
                expect_error(what, fut, 403, &text).await
            }
            "bind other to bob-x" => {
                let fut = ch.queue_bind("other".into(), "bob-x".into(), "k".into(), Default::default(), no_args());
                expect_error(what, fut, 403, &text).await
            }
            _ => {
                let exchange = if what.ends_with("other-x") { "other-x" } else { "" };
                let publish = async {
                    ch.basic_publish(
                        exchange.into(),
                        "other".into(),
                        Default::default(),
                        b"x",
                        BasicProperties::default(),
                    )
                    .await?
                    .await
                };
                expect_error(what, publish, 403, &text).await
            }
        }
    }
    // Nothing of guest's was touched.
    assert_eq!(ready(&ach, "other").await, 0);
    publish_acked(&ach, "other", "still mine").await;
    assert_eq!(drain(&ach, "other").await, ["still mine"]);
}

#[tokio::test]
async fn logins_follow_the_user_store() {
    let broker = common::Broker::start();
    ctl(&broker, &["add_user", "carol", "first"]);
    // A user without permissions on the vhost may not open it.
    let err = login(&broker, "carol", "first").await.expect_err("no permissions on /");
    assert_eq!(reply_code(&err), Some(530), "{err:?}");
    ctl(&broker, &["set_permissions", "carol", ".*", ".*", ".*"]);
    login(&broker, "carol", "first").await.expect("carol logs in");
    let err = login(&broker, "carol", "wrong").await.expect_err("wrong password");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");

    let ok = broker.warrenctl(&["authenticate_user", "carol", "first"]);
    assert!(ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("Success"), "{ok:?}");
    let bad = broker.warrenctl(&["authenticate_user", "carol", "wrong"]);
    assert!(!bad.status.success(), "{bad:?}");

    ctl(&broker, &["change_password", "carol", "second"]);
    login(&broker, "carol", "second").await.expect("the new password works");
    assert_eq!(reply_code(&login(&broker, "carol", "first").await.expect_err("the old one does not")), Some(403));

    ctl(&broker, &["set_user_tags", "carol", "monitoring", "policymaker"]);
    let users = ctl(&broker, &["list_users", "--no-table-headers"]);
    assert!(users.lines().any(|l| l == "carol\t[monitoring, policymaker]"), "{users}");
    assert!(users.lines().any(|l| l == "guest\t[administrator]"), "{users}");
    let perms = ctl(&broker, &["list_permissions", "-p", "/", "--no-table-headers"]);
    assert!(perms.lines().any(|l| l == "carol\t.*\t.*\t.*"), "{perms}");
    let mine = ctl(&broker, &["list_user_permissions", "carol", "--no-table-headers"]);
    assert!(mine.lines().any(|l| l == "/\t.*\t.*\t.*"), "{mine}");

    ctl(&broker, &["clear_permissions", "carol"]);
    assert_eq!(reply_code(&login(&broker, "carol", "second").await.expect_err("permissions cleared")), Some(530));
    ctl(&broker, &["delete_user", "carol"]);
    assert_eq!(reply_code(&login(&broker, "carol", "second").await.expect_err("user deleted")), Some(403));
    let missing = broker.warrenctl(&["delete_user", "carol"]);
    assert!(!missing.status.success(), "deleting a missing user fails: {missing:?}");
}

#[tokio::test]
async fn topic_permissions_limit_routing_keys() {
    let broker = common::Broker::start();
    ctl(&broker, &["add_user", "bob", "s3cret"]);
    ctl(&broker, &["set_permissions", "bob", ".*", ".*", ".*"]);
    ctl(&broker, &["set_topic_permissions", "bob", "amq.topic", "^bob\\.", "^bob\\."]);
    let bob = login(&broker, "bob", "s3cret").await.expect("bob");
    let ch = confirm_channel(&bob).await;
    declare_queue(&ch, "feed").await;
    within(
        "bind",
        ch.queue_bind("feed".into(), "amq.topic".into(), "bob.#".into(), Default::default(), FieldTable::default()),
    )
    .await
    .expect("bind to bob's keys");
    let confirm = within(
        "publish",
        ch.basic_publish("amq.topic".into(), "bob.news".into(), Default::default(), b"ok", BasicProperties::default()),
    )
    .await
    .expect("publish");
    within("confirm", confirm).await.expect("confirm");
    assert_eq!(drain(&ch, "feed").await, ["ok"]);
    let ch = confirm_channel(&bob).await;
    let publish = async {
        ch.basic_publish("amq.topic".into(), "alice.news".into(), Default::default(), b"no", BasicProperties::default())
            .await?
            .await
    };
    expect_error(
        "publish with another key",
        publish,
        403,
        "ACCESS_REFUSED - write access to topic 'alice.news' in exchange 'amq.topic' in vhost '/' refused for user 'bob'",
    )
    .await;
    let ch = confirm_channel(&bob).await;
    let bind =
        ch.queue_bind("feed".into(), "amq.topic".into(), "alice.#".into(), Default::default(), FieldTable::default());
    expect_error(
        "bind with another key",
        bind,
        403,
        "ACCESS_REFUSED - read access to topic 'alice.#' in exchange 'amq.topic' in vhost '/' refused for user 'bob'",
    )
    .await;
    // Other exchanges are not limited by amq.topic's topic permissions.
    publish_acked(&confirm_channel(&bob).await, "feed", "direct").await;
}

#[tokio::test]
async fn users_and_permissions_survive_kill_9() {
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("data");
    let mut broker = common::Broker::start_in(&dir, &["--segment-size", "65536"]);
    confine_bob(&broker);
    ctl(&broker, &["add_user", "gone", "x"]);
    ctl(&broker, &["set_permissions", "gone", ".*", ".*", ".*"]);
    ctl(&broker, &["delete_user", "gone"]);
    {
        // Enough traffic for several segments, so the definitions live on
        // in the snapshots of later segments.
        let conn = connect(&broker).await;
        let ch = confirm_channel(&conn).await;
        declare_queue(&ch, "filler").await;
        for i in 0..400 {
            publish_props(
                &ch,
                "filler",
                format!("{i:0512}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await;
        }
        assert_eq!(drain(&ch, "filler").await.len(), 400);
        // A confirmed persistent message: the log up to here is durable.
        publish_props(&ch, "filler", b"marker", BasicProperties::default().with_delivery_mode(2)).await;
    }
    broker.kill();
    let broker = common::Broker::start_in(&dir, &["--segment-size", "65536"]);
    let bob = login(&broker, "bob", "s3cret").await.expect("bob survives");
    let ch = confirm_channel(&bob).await;
    expect_error(
        "still confined",
        ch.queue_declare("other".into(), Default::default(), FieldTable::default()),
        403,
        &refused("configure", "queue", "other"),
    )
    .await;
    assert_eq!(reply_code(&login(&broker, "gone", "x").await.expect_err("stays deleted")), Some(403));
    login(&broker, "guest", "guest").await.expect("the seeded guest is still there");
}

#[tokio::test]
async fn deleting_a_user_closes_its_connections() {
    let broker = common::Broker::start();
    ctl(&broker, &["add_user", "dave", "pw"]);
    ctl(&broker, &["set_permissions", "dave", ".*", ".*", ".*"]);
    let dave = login(&broker, "dave", "pw").await.expect("dave");
    let _ch = channel(&dave).await;
    ctl(&broker, &["delete_user", "dave"]);
    let deadline = std::time::Instant::now() + WAIT;
    while dave.status().connected() {
        assert!(std::time::Instant::now() < deadline, "a deleted user's connection stays open");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
