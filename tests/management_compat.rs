//! What RabbitMQ's tools probe beyond the everyday objects, through the
//! `rabbitmq_http_client` crate against the real binary: the detailed
//! queue listing, deleting users in bulk, the cluster name, and the
//! (empty) feature flags, deprecated features and runtime parameters.

mod common;

use rabbitmq_http_client::api::Client;
use rabbitmq_http_client::password_hashing::{base64_encoded_salted_password_hash_sha256, salt};
use rabbitmq_http_client::requests::UserParams;

use common::Broker;

type Api = Client<String, String, String>;

#[tokio::test]
async fn the_probed_endpoints_answer_as_the_client_expects() {
    let broker = Broker::start_with_http();
    let api: Api = Client::new(broker.management_url(), "guest".to_string(), "guest".to_string());

    api.declare_classic_queue("/", "detailed-q").await.expect("declare");
    let detailed = api.list_queues_with_details().await.expect("detailed listing");
    assert_eq!(detailed.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["detailed-q"]);

    for name in ["ann", "ben", "cy"] {
        let hash = base64_encoded_salted_password_hash_sha256(&salt(), "pw");
        api.create_user(&UserParams { name, password_hash: &hash, tags: "management" }).await.expect("create user");
    }
    api.delete_users(vec!["ann", "cy", "nobody"]).await.expect("bulk delete");
    let mut users: Vec<String> = api.list_users().await.expect("users").into_iter().map(|u| u.name).collect();
    users.sort();
    assert_eq!(users, ["ben", "guest"]);

    let identity = api.get_cluster_name().await.expect("cluster name");
    assert!(identity.name.starts_with("warren@"), "{}", identity.name);
    let overview = api.overview().await.expect("overview");
    assert_eq!(overview.cluster_name, identity.name, "the overview names the same cluster");
    assert_eq!(api.list_feature_flags().await.expect("feature flags").len(), 0);
    assert!(api.list_runtime_parameters().await.expect("parameters").is_empty());
}

#[tokio::test]
async fn channels_show_their_mode_and_can_be_fetched_by_name() {
    use common::amqp::{channel, confirm_channel, connect};
    let broker = Broker::start_with_http();
    let conn = connect(&broker).await;
    let _plain = channel(&conn).await;
    let _confirming = confirm_channel(&conn).await;
    let api = broker.management.expect("management API");
    let listed = common::http::get(api, "/api/channels", Some(("guest", "guest"))).await.json();
    let channels = listed.as_array().expect("an array");
    let modes: Vec<(u64, bool)> =
        channels.iter().map(|c| (c["number"].as_u64().expect("number"), c["confirm"] == true)).collect();
    assert_eq!(modes, [(1, false), (2, true)], "{listed}");
    let name = channels[1]["name"].as_str().expect("name");
    let encoded: String = name
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    let one = common::http::get(api, &format!("/api/channels/{encoded}"), Some(("guest", "guest"))).await;
    assert_eq!((one.status, one.json()["number"].as_u64()), (200, Some(2)), "{one:?}");
    let missing = common::http::get(api, "/api/channels/nope", Some(("guest", "guest"))).await;
    assert_eq!(missing.status, 404);
}
