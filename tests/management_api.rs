//! The management HTTP API against the real `warren` binary, driven by the
//! `rabbitmq_http_client` crate (the Rust client RabbitMQ's team keeps for
//! this API), so every reply must deserialize into its types: overview,
//! whoami and nodes; vhosts, users, permissions and policies; queues
//! (classic and quorum, counts, purge, delete, paging), getting and
//! publishing messages, exchanges and bindings (deleted by properties key);
//! connections, channels and consumers of a live AMQP client, and closing
//! it; definitions exported and imported into a second broker; health
//! checks; the raw replies a client sees without credentials, with bad
//! ones, without a management tag and for a missing object; and the two
//! requests KEDA's RabbitMQ scaler makes, with rates that follow a steady
//! publisher.

mod common;

use std::time::{Duration, Instant};

use lapin::options::{BasicConsumeOptions, BasicGetOptions};
use lapin::types::FieldTable;
use rabbitmq_http_client::api::Client;
use rabbitmq_http_client::api::HttpClientError as ApiError;
use rabbitmq_http_client::commons::{BindingDestinationType, ExchangeType, PaginationParams, PolicyTarget};
use rabbitmq_http_client::password_hashing::{base64_encoded_salted_password_hash_sha256, salt};
use rabbitmq_http_client::requests::{
    BindingDeletionParams, ExchangeParams, Permissions, PolicyParams, QueueParams, UserParams, VirtualHostParams,
};
use rabbitmq_http_client::responses::HealthCheckFailureDetails;
use serde_json::{Map, Value, json};

use common::Broker;
use common::amqp::*;
use common::http;

type Api = Client<String, String, String>;

fn client_as(broker: &Broker, user: &str, password: &str) -> Api {
    Client::new(broker.management_url(), user.to_string(), password.to_string())
}

fn client(broker: &Broker) -> Api {
    client_as(broker, "guest", "guest")
}

/// Polls `probe` until it returns Some, failing after `limit`.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, limit: Duration, mut probe: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sampler refreshes object totals and rates every 5 s.
const SAMPLED: Duration = Duration::from_secs(15);

async fn create_user(api: &Api, name: &str, password: &str, tags: &str) {
    let hash = base64_encoded_salted_password_hash_sha256(&salt(), password);
    api.create_user(&UserParams { name, password_hash: &hash, tags }).await.expect("create_user");
}

fn status(e: &ApiError) -> Option<u16> {
    e.status_code().map(|s| s.as_u16())
}

#[tokio::test]
async fn overview_whoami_and_nodes() {
    let broker = Broker::start_with_http();
    let api = client(&broker);
    let overview = api.overview().await.expect("overview");
    let version: Vec<u32> = overview.rabbitmq_version.split('.').map(|p| p.parse().expect("numeric")).collect();
    assert_eq!(version.len(), 3, "{}", overview.rabbitmq_version);
    assert!(version >= vec![3, 13, 0], "{version:?}");
    let queues_before = overview.object_totals.queues;
    let exchanges_before = overview.object_totals.exchanges;
    assert!(exchanges_before > 0, "the default exchanges count: {:?}", overview.object_totals);

    api.declare_classic_queue("/", "ov.a").await.expect("declare");
    api.declare_classic_queue("/", "ov.b").await.expect("declare");
    for body in ["1", "2", "3"] {
        assert!(api.publish_message("/", "", "ov.a", body, Map::new()).await.expect("publish").routed);
    }
    api.declare_exchange("/", &ExchangeParams::new("ov.x", ExchangeType::Fanout, true, false, None)).await.expect("x");
    let overview = api.overview().await.expect("overview");
    assert_eq!(overview.object_totals.queues, queues_before + 2);
    assert_eq!(overview.queue_totals.messages, 3);
    assert_eq!(overview.queue_totals.messages_ready_for_delivery, 3);
    assert_eq!(overview.queue_totals.messages_delivered_but_unacknowledged_by_consumers, 0);
    eventually("object_totals.exchanges to count ov.x", SAMPLED, || async {
        (api.overview().await.expect("overview").object_totals.exchanges == exchanges_before + 1).then_some(())
    })
    .await;

    let me = api.current_user().await.expect("whoami");
    assert_eq!(me.name, "guest");
    assert!(me.tags.0.iter().any(|t| t == "administrator"), "{:?}", me.tags);

    let nodes = api.list_nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let node = &nodes[0];
    assert_eq!(node.name, overview.node);
    assert!(node.processors >= 1 && node.uptime >= 1 && node.fd_total >= 1, "{node:?}");
    assert!(node.enabled_plugins.0.iter().any(|p| p == "rabbitmq_management"), "{node:?}");
    assert!(!node.being_drained);
    assert!(node.os_pid > 0, "{node:?}");
}

#[tokio::test]
async fn vhosts_lifecycle() {
    let broker = Broker::start_with_http();
    let api = client(&broker);
    assert!(api.list_vhosts().await.expect("list").iter().any(|v| v.name == "/"));
    assert_eq!(api.get_vhost("/").await.expect("get /").name, "/");
    assert!(api.get_vhost("no-such-vhost").await.expect_err("missing vhost").is_not_found());

    let name = "tests/vh 1";
    let params = VirtualHostParams {
        description: Some("for tests"),
        tags: Some(vec!["a", "b"]),
        ..VirtualHostParams::named(name)
    };
    api.create_vhost(&params).await.expect("create");
    let vh = api.get_vhost(name).await.expect("get");
    assert_eq!(vh.description.as_deref(), Some("for tests"));
    assert_eq!(vh.tags.expect("tags").0, vec!["a", "b"]);
    assert!(api.list_vhosts().await.expect("list").iter().any(|v| v.name == name));

    // The creator got full permissions: guest may declare and connect there.
    let perms = api.get_permissions(name, "guest").await.expect("guest's permissions");
    assert_eq!((perms.configure.as_str(), perms.write.as_str(), perms.read.as_str()), (".*", ".*", ".*"));
    api.declare_classic_queue(name, "in-vh").await.expect("declare in the new vhost");
    let url = format!("amqp://guest:guest@{}/{}", broker.addr, "tests%2Fvh%201");
    let conn = connect_url(&url).await;
    assert_eq!(ready(&channel(&conn).await, "in-vh").await, 0);
    drop(conn);

    api.update_vhost(&VirtualHostParams { description: Some("changed"), ..VirtualHostParams::named(name) })
        .await
        .expect("update");
    assert_eq!(api.get_vhost(name).await.expect("get").description.as_deref(), Some("changed"));

    api.delete_vhost(name, false).await.expect("delete");
    assert!(api.get_vhost(name).await.expect_err("deleted").is_not_found());
    assert!(api.delete_vhost(name, false).await.is_err(), "deleting a missing vhost is an error");
    api.delete_vhost(name, true).await.expect("idempotent delete");
    assert!(!api.list_vhosts().await.expect("list").iter().any(|v| v.name == name));
}

#[tokio::test]
async fn users_and_permissions() {
    let broker = Broker::start_with_http();
    let api = client(&broker);
    create_user(&api, "alice", "s3cret", "management,policymaker").await;
    let alice = api.get_user("alice").await.expect("get_user");
    assert_eq!(alice.tags.0, vec!["management", "policymaker"]);
    assert!(api.list_users().await.expect("list").iter().any(|u| u.name == "alice"));

    // Alice may log in to the API, but sees no vhost yet.
    let as_alice = client_as(&broker, "alice", "s3cret");
    let me = as_alice.current_user().await.expect("whoami as alice");
    assert_eq!(me.name, "alice");
    assert!(as_alice.list_vhosts().await.expect("vhosts").is_empty());

    api.create_vhost(&VirtualHostParams::named("alices")).await.expect("vhost");
    let grant = Permissions { user: "alice", vhost: "alices", configure: "^alice\\.", write: ".*", read: ".*" };
    api.declare_permissions(&grant).await.expect("declare_permissions");
    let mine = api.list_permissions_of("alice").await.expect("permissions of alice");
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!((mine[0].vhost.as_str(), mine[0].configure.as_str()), ("alices", "^alice\\."));
    assert!(api.list_permissions().await.expect("all").iter().any(|p| p.user == "guest" && p.vhost == "/"));
    assert_eq!(api.list_permissions_in("alices").await.expect("in alices").len(), 2, "guest (creator) and alice");

    // Confined to her vhost: she sees its queues only, not those of "/".
    api.declare_classic_queue("/", "guest.q").await.expect("declare");
    as_alice.declare_classic_queue("alices", "alice.q").await.expect("alice declares her queue");
    let refused = as_alice.declare_classic_queue("alices", "other.q").await.expect_err("outside her configure");
    assert_eq!(status(&refused), Some(401), "{refused:?}");
    let names: Vec<String> = as_alice.list_queues().await.expect("queues").into_iter().map(|q| q.name).collect();
    assert_eq!(names, vec!["alice.q"]);
    let vhosts: Vec<String> = as_alice.list_vhosts().await.expect("vhosts").into_iter().map(|v| v.name).collect();
    assert_eq!(vhosts, vec!["alices"]);
    let denied = as_alice.get_queue_info("/", "guest.q").await.expect_err("not her vhost");
    assert!(denied.is_unauthorized(), "{denied:?}");
    assert!(as_alice.list_users().await.expect_err("not an administrator").is_unauthorized());

    api.clear_permissions("alices", "alice", false).await.expect("clear");
    assert!(api.get_permissions("alices", "alice").await.expect_err("cleared").is_not_found());
    api.delete_user("alice", false).await.expect("delete_user");
    assert!(api.get_user("alice").await.expect_err("deleted").is_not_found());
    assert!(as_alice.current_user().await.expect_err("deleted user").is_unauthorized());
    assert!(api.delete_user("alice", false).await.is_err());
}

#[tokio::test]
async fn policies_are_listed_and_applied() {
    let broker = Broker::start_with_http();
    let api = client(&broker);
    let mut definition = Map::new();
    definition.insert("max-length".into(), json!(2));
    let params = PolicyParams {
        apply_to: PolicyTarget::Queues,
        priority: 3,
        ..PolicyParams::new("/", "cap", "^capped\\.", definition.clone())
    };
    api.declare_policy(&params).await.expect("declare_policy");
    let all = api.list_policies().await.expect("list");
    let p = all.iter().find(|p| p.name == "cap").expect("listed");
    assert_eq!((p.vhost.as_str(), p.pattern.as_str(), p.priority), ("/", "^capped\\.", 3));
    assert_eq!(p.apply_to, PolicyTarget::Queues);
    assert_eq!(p.definition.0.as_ref(), Some(&definition));
    assert_eq!(api.list_policies_in("/").await.expect("in /").len(), 1);
    assert_eq!(api.get_policy("/", "cap").await.expect("get").name, "cap");

    api.declare_classic_queue("/", "capped.q").await.expect("declare");
    for body in ["1", "2", "3", "4"] {
        api.publish_message("/", "", "capped.q", body, Map::new()).await.expect("publish");
    }
    let q = api.get_queue_info("/", "capped.q").await.expect("queue");
    assert_eq!(q.policy.as_deref(), Some("cap"));
    assert_eq!(q.message_count, 2, "max-length 2 from the policy");
    api.delete_policy("/", "cap", false).await.expect("delete");
    assert!(api.list_policies().await.expect("list").is_empty());
}

#[tokio::test]
async fn queues_declare_count_purge_delete() {
    let broker = Broker::start_with_http();
    let api = client(&broker);
    api.declare_classic_queue("/", "cq").await.expect("classic");
    api.declare_quorum_queue("/", "qq").await.expect("quorum");
    api.declare_queue("/", &QueueParams::new_durable_classic_queue("cq", None)).await.expect("same redeclare");
    api.create_vhost(&VirtualHostParams::named("elsewhere")).await.expect("vhost");
    api.declare_classic_queue("elsewhere", "cq").await.expect("same name, other vhost");

    let cq = api.get_queue_info("/", "cq").await.expect("cq");
    assert_eq!((cq.queue_type.as_str(), cq.durable, cq.auto_delete, cq.exclusive), ("classic", true, false, false));
    assert_eq!(api.get_queue_info("/", "qq").await.expect("qq").queue_type, "quorum");
    let all: Vec<(String, String)> =
        api.list_queues().await.expect("all").into_iter().map(|q| (q.vhost, q.name)).collect();
    assert_eq!(all.len(), 3, "{all:?}");
    let mut in_root: Vec<String> = api.list_queues_in("/").await.expect("in /").into_iter().map(|q| q.name).collect();
    in_root.sort();
    assert_eq!(in_root, vec!["cq", "qq"]);

    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    for i in 0..5 {
        publish_acked(&ch, "cq", &format!("m{i}")).await;
    }
    publish_acked(&ch, "qq", "one").await;
    let cq = api.get_queue_info("/", "cq").await.expect("cq");
    assert_eq!((cq.message_count, cq.unacknowledged_message_count), (5, 0));
    assert_eq!(api.get_queue_info("/", "qq").await.expect("qq").message_count, 1);

    api.purge_queue("/", "cq").await.expect("purge");
    assert_eq!(api.get_queue_info("/", "cq").await.expect("cq").message_count, 0);
    assert_eq!(ready(&ch, "cq").await, 0, "AMQP agrees");
    assert!(api.purge_queue("/", "nope").await.is_err());

    api.delete_queue("/", "cq", false).await.expect("delete");
    assert!(api.get_queue_info("/", "cq").await.expect_err("deleted").is_not_found());
    assert!(api.delete_queue("/", "cq", false).await.is_err(), "a missing queue");
    api.delete_queue("/", "cq", true).await.expect("idempotent");
    assert!(api.get_queue_info("elsewhere", "cq").await.is_ok(), "the other vhost's queue stays");
}

#[tokio::test]
async fn queues_paged() {
    let broker = Broker::start_with_http();
    let api = client(&broker);
    let names: Vec<String> = (0..5).map(|i| format!("page.{i}")).collect();
    for n in &names {
        api.declare_classic_queue("/", n).await.expect("declare");
    }
    let page1 = api.list_queues_paged(&PaginationParams::new(1, 3)).await.expect("page 1");
    let page2 = api.list_queues_paged(&PaginationParams::new(2, 3)).await.expect("page 2");
    assert_eq!(page1.len(), 3);
    assert_eq!(page2.len(), 2, "page 2 holds the rest");
    let mut seen: Vec<String> = page1.iter().chain(&page2).map(|q| q.name.clone()).collect();
    seen.sort();
    assert_eq!(seen, names, "every queue once");
    let in_root = api.list_queues_in_paged("/", &PaginationParams::new(2, 4)).await.expect("in /, page 2");
    assert_eq!(in_root.len(), 1);
    assert!(api.list_queues_paged(&PaginationParams::new(3, 3)).await.is_err(), "page out of range");
}

#[tokio::test]
async fn get_messages_with_ack_modes() {
    let broker = Broker::start_with_http();
    let api = client(&broker);
    api.declare_classic_queue("/", "g").await.expect("declare");
    let mut props = Map::new();
    props.insert("timestamp".into(), json!(123456789));
    api.publish_message("/", "", "g", "first", props.clone()).await.expect("publish");
    api.publish_message("/", "", "g", "second", Map::new()).await.expect("publish");

    let peek = api.get_messages("/", "g", 1, "ack_requeue_true").await.expect("get requeue");
    assert_eq!((peek.len(), peek[0].payload.as_str(), peek[0].redelivered), (1, "first", false));
    assert_eq!(api.get_queue_info("/", "g").await.expect("queue").message_count, 2, "requeued");

    let one = api.get_messages("/", "g", 1, "ack_requeue_false").await.expect("get 1");
    assert_eq!(one.len(), 1);
    let m = &one[0];
    assert_eq!((m.payload.as_str(), m.redelivered, m.message_count), ("first", true, 1));
    assert_eq!((m.exchange.as_str(), m.routing_key.as_str(), m.payload_bytes), ("", "g", 5));
    assert_eq!(m.payload_encoding, "string");
    assert_eq!(m.properties.0, props, "properties echo what was published");
    let two = api.get_messages("/", "g", 1, "ack_requeue_false").await.expect("get 2");
    assert_eq!((two[0].payload.as_str(), two[0].redelivered, two[0].message_count), ("second", false, 0));
    assert!(two[0].properties.0.is_empty(), "{:?}", two[0].properties);
    assert!(api.get_messages("/", "g", 1, "ack_requeue_false").await.expect("empty").is_empty());
}

#[tokio::test]
async fn exchanges_and_publish() {
    let broker = Broker::start_with_http();
    let api = client(&broker);
    let mut args = Map::new();
    args.insert("alternate-exchange".into(), json!("amq.fanout"));
    let params = ExchangeParams::new("ex.topic", ExchangeType::Topic, true, false, Some(args.clone()));
    api.declare_exchange("/", &params).await.expect("declare");
    let x = api.get_exchange_info("/", "ex.topic").await.expect("get");
    assert_eq!((x.exchange_type.as_str(), x.durable, x.auto_delete), ("topic", true, false));
    assert_eq!(x.arguments.0, args);
    let listed: Vec<String> = api.list_exchanges_in("/").await.expect("list").into_iter().map(|x| x.name).collect();
    for name in ["", "amq.direct", "amq.topic", "ex.topic"] {
        assert!(listed.iter().any(|n| n == name), "{name:?} in {listed:?}");
    }
    assert!(api.get_exchange_info("/", "no.such").await.expect_err("missing").is_not_found());

    let plain = ExchangeParams::new("ex.plain", ExchangeType::Direct, false, false, None);
    api.declare_exchange("/", &plain).await.expect("declare");
    api.declare_classic_queue("/", "sink").await.expect("queue");
    assert!(!api.publish_message("/", "ex.plain", "k", "lost", Map::new()).await.expect("publish").routed);
    api.bind_queue("/", "sink", "ex.plain", Some("k"), None).await.expect("bind");
    assert!(api.publish_message("/", "ex.plain", "k", "kept", Map::new()).await.expect("publish").routed);
    assert!(api.publish_message("/", "", "sink", "direct", Map::new()).await.expect("default exchange").routed);
    let got = api.get_messages("/", "sink", 5, "ack_requeue_false").await.expect("get");
    let payloads: Vec<&str> = got.iter().map(|m| m.payload.as_str()).collect();
    assert_eq!(payloads, vec!["kept", "direct"]);
    assert!(api.publish_message("/", "no.such", "k", "x", Map::new()).await.is_err());

    api.delete_exchange("/", "ex.plain", false).await.expect("delete");
    assert!(api.get_exchange_info("/", "ex.plain").await.expect_err("deleted").is_not_found());
    assert!(api.delete_exchange("/", "ex.plain", false).await.is_err());
}

#[tokio::test]
async fn bindings_by_properties_key() {
    let broker = Broker::start_with_http();
    let api = client(&broker);
    api.declare_exchange("/", &ExchangeParams::new("bx", ExchangeType::Direct, true, false, None)).await.expect("x");
    api.declare_classic_queue("/", "bq").await.expect("queue");
    let mut args = Map::new();
    args.insert("tag".into(), json!("v1"));
    api.bind_queue("/", "bq", "bx", Some("rk"), None).await.expect("bind plain");
    api.bind_queue("/", "bq", "bx", Some("rk"), Some(args.clone())).await.expect("bind with args");

    let from_bx = |list: Vec<rabbitmq_http_client::responses::BindingInfo>| -> Vec<_> {
        list.into_iter().filter(|b| b.source == "bx").collect()
    };
    let in_vhost = from_bx(api.list_bindings_in("/").await.expect("list"));
    assert_eq!(in_vhost.len(), 2, "{in_vhost:?}");
    for b in &in_vhost {
        assert_eq!((b.destination.as_str(), b.routing_key.as_str()), ("bq", "rk"));
        assert_eq!(b.destination_type, BindingDestinationType::Queue);
    }
    let plain = in_vhost.iter().find(|b| b.arguments.0.is_empty()).expect("plain binding");
    assert_eq!(plain.properties_key.as_deref(), Some("rk"));
    let with = in_vhost.iter().find(|b| b.arguments.0 == args).expect("binding with arguments");
    let key = with.properties_key.clone().expect("properties_key");
    assert!(key.starts_with("rk~") && key.len() > 3, "{key}");

    let of_queue = api.list_queue_bindings("/", "bq").await.expect("queue bindings");
    assert_eq!(of_queue.len(), 3, "the default exchange's and both: {of_queue:?}");
    assert!(of_queue.iter().any(|b| b.source.is_empty() && b.routing_key == "bq"));

    let params = |arguments| BindingDeletionParams {
        virtual_host: "/",
        source: "bx",
        destination: "bq",
        destination_type: BindingDestinationType::Queue,
        routing_key: "rk",
        arguments,
    };
    api.delete_binding(&params(None), false).await.expect("delete the plain one");
    let left = from_bx(api.list_queue_bindings("/", "bq").await.expect("list"));
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].arguments.0, args, "exactly the plain binding went");
    assert!(api.publish_message("/", "bx", "rk", "x", Map::new()).await.expect("publish").routed, "one binding left");
    api.delete_binding(&params(Some(args)), false).await.expect("delete the other");
    assert!(from_bx(api.list_bindings_in("/").await.expect("list")).is_empty());
    assert!(api.delete_binding(&params(None), false).await.is_err(), "no such binding");
}

#[tokio::test]
async fn connections_channels_consumers_and_close() {
    let broker = Broker::start_with_http();
    let api = client(&broker);
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare_queue(&ch, "watched").await;
    let opts = BasicConsumeOptions::default();
    // Kept alive: lapin cancels a consumer when it is dropped.
    let _consumer = within("consume", ch.basic_consume("watched".into(), "ctag-1".into(), opts, FieldTable::default()))
        .await
        .expect("consume");

    let conns = api.list_connections().await.expect("connections");
    assert_eq!(conns.len(), 1, "{conns:?}");
    let c = &conns[0];
    assert_eq!((c.username.as_str(), c.protocol.as_str()), ("guest", "AMQP 0-9-1"));
    assert_eq!(api.list_connections_in("/").await.expect("in /").len(), 1);
    let raw = http::get(broker.management.expect("http"), "/api/connections", Some(("guest", "guest"))).await.json();
    assert_eq!(raw[0]["vhost"], "/");
    assert_eq!(api.get_connection_info(&c.name).await.expect("by name").name, c.name);

    let channels = api.list_channels().await.expect("channels");
    assert_eq!(channels.len(), 1, "{channels:?}");
    assert_eq!((channels[0].vhost.as_str(), channels[0].consumer_count), ("/", 1));
    assert_eq!(channels[0].connection_details.name, c.name);
    assert_eq!(api.list_channels_on(&c.name).await.expect("on connection").len(), 1);

    let consumers = api.list_consumers().await.expect("consumers");
    assert_eq!(consumers.len(), 1, "{consumers:?}");
    let k = &consumers[0];
    assert_eq!((k.consumer_tag.as_str(), k.queue.name.as_str(), k.queue.vhost.as_str()), ("ctag-1", "watched", "/"));
    assert!(k.manual_ack);
    let details = k.channel_details.as_ref().expect("channel_details");
    assert_eq!((details.connection_name.as_str(), details.username.as_str()), (c.name.as_str(), "guest"));
    assert_eq!(api.list_consumers_in("/").await.expect("in /").len(), 1);

    api.close_connection(&c.name, Some("closed by the test"), false).await.expect("close");
    eventually("the lapin connection to be closed", WAIT, || async { (!conn.status().connected()).then_some(()) })
        .await;
    eventually("no connections listed", WAIT, || async {
        api.list_connections().await.expect("connections").is_empty().then_some(())
    })
    .await;
    assert!(api.list_consumers().await.expect("consumers").is_empty());
    assert!(api.close_connection(&c.name, None, false).await.is_err(), "already gone");
}

#[tokio::test]
async fn definitions_export_and_import() {
    let broker = Broker::start_with_http();
    let api = client(&broker);
    api.create_vhost(&VirtualHostParams::named("defs/vh")).await.expect("vhost");
    create_user(&api, "bob", "pw", "monitoring").await;
    api.declare_permissions(&Permissions { user: "bob", vhost: "defs/vh", configure: "", write: ".*", read: ".*" })
        .await
        .expect("permissions");
    api.declare_classic_queue("defs/vh", "dq").await.expect("queue");
    api.declare_exchange("defs/vh", &ExchangeParams::new("dx", ExchangeType::Topic, true, false, None))
        .await
        .expect("x");
    api.bind_queue("defs/vh", "dq", "dx", Some("a.#"), None).await.expect("bind");

    let defs = api.export_cluster_wide_definitions_as_data().await.expect("export");
    assert!(defs.virtual_hosts.iter().any(|v| v.name == "defs/vh"));
    assert!(defs.users.iter().any(|u| u.name == "bob" && u.tags.0 == vec!["monitoring"]));
    assert!(defs.permissions.iter().any(|p| p.user == "bob" && p.vhost == "defs/vh" && p.configure.is_empty()));
    assert!(defs.queues.iter().any(|q| q.name == "dq" && q.vhost == "defs/vh" && q.durable));
    assert!(defs.exchanges.iter().any(|x| x.name == "dx" && x.exchange_type == "topic"));
    assert!(defs.bindings.iter().any(|b| b.source == "dx" && b.destination == "dq" && b.routing_key == "a.#"));
    assert!(!defs.exchanges.iter().any(|x| x.name.starts_with("amq.") || x.name.is_empty()), "no built-in exchanges");

    let text = api.export_cluster_wide_definitions_as_string().await.expect("export text");
    let other = Broker::start_with_http();
    let api2 = client(&other);
    api2.import_cluster_wide_definitions(serde_json::from_str(&text).expect("json")).await.expect("import");
    assert!(api2.get_vhost("defs/vh").await.is_ok());
    assert_eq!(api2.get_user("bob").await.expect("bob").tags.0, vec!["monitoring"]);
    assert_eq!(api2.get_permissions("defs/vh", "bob").await.expect("bob's permissions").write, ".*");
    assert_eq!(api2.get_queue_info("defs/vh", "dq").await.expect("dq").queue_type, "classic");
    assert_eq!(api2.get_exchange_info("defs/vh", "dx").await.expect("dx").exchange_type, "topic");
    assert!(api2.list_bindings_in("defs/vh").await.expect("bindings").iter().any(|b| b.source == "dx"));
    // Bob's password came along: he can log in to the second broker.
    assert_eq!(client_as(&other, "bob", "pw").current_user().await.expect("bob logs in").name, "bob");
}

#[tokio::test]
async fn health_checks() {
    let broker = Broker::start_with_http();
    let api = client(&broker);
    api.health_check_local_alarms().await.expect("no local alarms");
    api.health_check_cluster_wide_alarms().await.expect("no alarms");
    api.health_check_port_listener(broker.management.expect("http").port()).await.expect("management port");
    api.health_check_port_listener(broker.addr.port()).await.expect("AMQP port");
    let unused = common::free_port();
    match api.health_check_port_listener(unused).await {
        Err(ApiError::HealthCheckFailed { details: HealthCheckFailureDetails::NoActivePortListener(d), .. }) => {
            assert_eq!((d.status.as_str(), d.inactive_port), ("failed", unused));
        }
        other => panic!("port {unused} has no listener, got {other:?}"),
    }
}

#[tokio::test]
async fn raw_auth_and_not_found_replies() {
    let broker = Broker::start_with_http();
    let addr = broker.management.expect("http");
    let none = http::get(addr, "/api/overview", None).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Basic realm=\"RabbitMQ Management\""));

    let wrong = http::get(addr, "/api/overview", Some(("guest", "wrong"))).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "not_authorized");

    create_user(&client(&broker), "plain", "pw", "").await;
    let plain = http::get(addr, "/api/overview", Some(("plain", "pw"))).await;
    assert_eq!(plain.status, 401);
    assert_eq!(plain.json(), json!({"error": "not_authorised", "reason": "Not management user"}));

    let missing = http::get(addr, "/api/queues/%2F/no-such-queue", Some(("guest", "guest"))).await;
    assert_eq!(missing.status, 404);
    assert!(missing.header("content-type").is_some_and(|c| c.starts_with("application/json")), "{missing:?}");
    assert_eq!(missing.json(), json!({"error": "Object Not Found", "reason": "Not Found"}));
}

/// KEDA's two requests: the queue by name, and by regex (paged object).
async fn keda_queries(addr: std::net::SocketAddr, queue: &str) -> (Value, Value) {
    let auth = Some(("guest", "guest"));
    let one = http::get(addr, &format!("/api/queues/%2F/{queue}"), auth).await;
    assert_eq!(one.status, 200, "{one:?}");
    let path = format!("/api/queues/%2F?page=1&use_regex=true&pagination=false&name=%5E{queue}%24&page_size=100");
    let paged = http::get(addr, &path, auth).await;
    assert_eq!(paged.status, 200, "{paged:?}");
    let paged = paged.json();
    assert_eq!(paged["page_count"], 1, "{paged}");
    let items = paged["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "only {queue} matches: {paged}");
    (one.json(), items[0].clone())
}

/// The fields KEDA reads, with the JSON types Go needs; returns the
/// (publish, deliver_get) rates.
fn keda_fields(q: &Value) -> (f64, f64) {
    for counter in ["messages", "messages_ready", "messages_unacknowledged"] {
        assert!(q[counter].is_u64(), "{counter} must be an integer: {q}");
    }
    let rate = |what: &str| q["message_stats"][what]["rate"].as_f64().unwrap_or_else(|| panic!("{what}.rate: {q}"));
    (rate("publish_details"), rate("deliver_get_details"))
}

#[tokio::test]
async fn keda_scaler_requests() {
    let broker = Broker::start_with_http();
    let addr = broker.management.expect("http");
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "keda-q").await;
    declare_queue(&ch, "keda-q-other").await;
    publish_acked(&ch, "keda-q-other", "not counted").await;
    let (idle, _) = keda_queries(addr, "keda-q").await;
    assert_eq!((idle["messages"].as_u64(), idle["messages_ready"].as_u64()), (Some(0), Some(0)));

    // A steady publisher (and a getter) for at least 6 s, until the rates show.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (stop, ch) = (stop.clone(), ch.clone());
        tokio::spawn(async move {
            let (started, mut published, mut got) = (Instant::now(), 0u64, 0u64);
            while started.elapsed() < Duration::from_secs(6) || !stop.load(std::sync::atomic::Ordering::Relaxed) {
                publish_acked(&ch, "keda-q", "tick").await;
                published += 1;
                if published % 3 == 0 {
                    let get = ch.basic_get("keda-q".into(), BasicGetOptions { no_ack: true });
                    got += within("basic.get", get).await.expect("basic.get").is_some() as u64;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (published, got)
        })
    };
    eventually("publish and deliver_get rates above zero in both KEDA modes", Duration::from_secs(30), || async {
        let (one, item) = keda_queries(addr, "keda-q").await;
        let (rates_one, rates_item) = (keda_fields(&one), keda_fields(&item));
        (rates_one.0 > 0.0 && rates_one.1 > 0.0 && rates_item.0 > 0.0 && rates_item.1 > 0.0).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (published, got) = within("the publisher", worker).await.expect("publisher task");
    let (one, item) = keda_queries(addr, "keda-q").await;
    for q in [&one, &item] {
        assert_eq!(q["messages"].as_u64(), Some(published - got), "{q}");
        assert_eq!(q["messages_ready"].as_u64(), Some(published - got), "{q}");
        assert_eq!(q["name"], "keda-q");
    }
}
