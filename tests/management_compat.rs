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
