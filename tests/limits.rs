//! Broker-wide limits on the real binary, each refused with RabbitMQ's
//! reply code and text while well-behaved clients keep being served:
//! `connection_max` (530 `connection refused: node connection limit (N)
//! is reached`).

mod common;

use common::amqp::*;
use common::raw::RawClient;

#[tokio::test]
async fn connections_over_connection_max_are_refused_and_the_others_served() {
    let broker = common::Broker::start_in(
        &tempfile::tempdir().expect("scratch").keep().join("data"),
        &["--connection-max", "2"],
    );
    let first = connect(&broker).await;
    let second = RawClient::open_as(broker.addr, "guest", "guest", "/").await.expect("the second fits");
    let refused = RawClient::open_as(broker.addr, "guest", "guest", "/").await.err().expect("the third is over");
    assert_eq!(refused, (530, "NOT_ALLOWED - connection refused: node connection limit (2) is reached".to_string()));
    // The connections inside the limit are served meanwhile.
    let ch = confirm_channel(&first).await;
    declare_queue(&ch, "still-served").await;
    publish_acked(&ch, "still-served", "hello").await;
    assert_eq!(drain(&ch, "still-served").await, ["hello"]);
    // A closed connection frees its place.
    drop(second);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match RawClient::open_as(broker.addr, "guest", "guest", "/").await {
            Ok(_) => break,
            Err(close) => {
                assert_eq!(close.0, 530, "{close:?}");
                assert!(std::time::Instant::now() < deadline, "the closed connection's place never freed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
