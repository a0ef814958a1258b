//! warrenctl with `--url`: the same verbs through the management HTTP API
//! instead of the data directory's control socket, printing the same rows
//! (checked against the socket's own answers), acting on the same broker,
//! and failing with rabbitmqctl's exit codes (69 unreachable, 70 refused).

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::amqp::*;

/// warrenctl through the HTTP API of `broker`, as `user`.
fn http_ctl(broker: &common::Broker, user: (&str, &str), args: &[&str]) -> Output {
    let url = format!("http://{}", broker.management.expect("management API"));
    tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_warrenctl"))
            .args(["--url", &url, "--username", user.0, "--password", user.1, "--timeout", "10"])
            .args(args)
            .output()
            .expect("run warrenctl")
    })
}

fn lines(out: Output, what: &[&str]) -> Vec<String> {
    assert!(out.status.success(), "warrenctl {what:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").lines().map(str::to_string).collect()
}

/// Rows of a listing over HTTP and over the socket, which must agree.
fn both(broker: &common::Broker, args: &[&str]) -> Vec<String> {
    let mut full = vec!["-q", "--no-table-headers"];
    full.extend_from_slice(args);
    let over_http = lines(http_ctl(broker, ("guest", "guest"), &full), args);
    let over_socket = lines(tokio::task::block_in_place(|| broker.warrenctl(&full)), args);
    assert_eq!(over_http, over_socket, "{args:?}: HTTP and socket rows differ");
    over_http
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verbs_work_over_the_http_api() {
    let broker = common::Broker::start_with_http();
    let guest = ("guest", "guest");
    let conn = connect(&broker).await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, "jobs").await;
    for i in 0..3 {
        publish_acked(&ch, "jobs", &format!("job {i}")).await;
    }
    let queues = both(&broker, &["list_queues", "name", "messages_ready", "consumers", "durable", "arguments"]);
    assert_eq!(queues, ["jobs\t3\t0\tfalse\t[]"]);
    let exchanges = both(&broker, &["list_exchanges", "name", "type"]);
    assert!(exchanges.contains(&"amq.topic\ttopic".to_string()), "{exchanges:?}");
    both(&broker, &["list_bindings", "source_name", "destination_name", "routing_key"]);

    // Actions: a vhost, its permissions and limits, a user, a policy.
    let ok = |args: &[&str]| lines(http_ctl(&broker, guest, args), args);
    ok(&["add_vhost", "apps", "--description", "Apps", "--tags", "x,y"]);
    ok(&["set_permissions", "-p", "apps", "guest", ".*", ".*", ".*"]);
    ok(&["set_vhost_limits", "-p", "apps", r#"{"max-queues": 4}"#]);
    assert_eq!(
        both(&broker, &["list_vhosts", "name", "description", "tags"]),
        ["/\tDefault virtual host\t[]", "apps\tApps\t[x, y]"]
    );
    assert_eq!(both(&broker, &["list_vhost_limits", "-p", "apps"]), [r#"{"max-queues":4}"#]);
    ok(&["add_user", "bob", "s3cret"]);
    ok(&["set_user_tags", "bob", "management"]);
    ok(&["set_permissions", "-p", "apps", "bob", "^bob-", "^bob-", "^bob-"]);
    ok(&["authenticate_user", "bob", "s3cret"]);
    assert_eq!(http_ctl(&broker, guest, &["authenticate_user", "bob", "wrong"]).status.code(), Some(65));
    assert_eq!(both(&broker, &["list_users"]), ["bob\t[management]", "guest\t[administrator]"]);
    assert_eq!(both(&broker, &["list_permissions", "-p", "apps"]), ["bob\t^bob-\t^bob-\t^bob-", "guest\t.*\t.*\t.*"]);
    ok(&["set_policy", "-p", "apps", "--apply-to", "queues", "cap", "^bob-", r#"{"max-length":10}"#]);
    assert_eq!(
        both(&broker, &["list_policies", "-p", "apps", "name", "pattern", "definition"]),
        ["cap\t^bob-\t{\"max-length\":10}"]
    );

    // Purge and delete a queue.
    let purged = lines(http_ctl(&broker, guest, &["purge_queue", "jobs"]), &["purge_queue"]);
    assert!(purged.iter().any(|l| l.contains("Purging queue 'jobs'")), "{purged:?}");
    assert_eq!(both(&broker, &["list_queues", "name", "messages"]), ["jobs\t0"]);
    ok(&["delete_queue", "jobs"]);
    assert!(both(&broker, &["list_queues", "name"]).is_empty());

    // Definitions: exported over HTTP, they hold what was made.
    let scratch = tempfile::tempdir().expect("scratch");
    let file = scratch.path().join("defs.json");
    ok(&["export_definitions", file.to_str().expect("path")]);
    let defs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("written")).expect("JSON");
    assert!(defs["users"].as_array().expect("users").iter().any(|u| u["name"] == "bob"), "{defs}");
    assert!(defs["vhosts"].as_array().expect("vhosts").iter().any(|v| v["name"] == "apps"), "{defs}");

    // Closing the AMQP client's connection by its listed name.
    let names = both(&broker, &["list_connections", "name"]);
    assert_eq!(names.len(), 1, "{names:?}");
    ok(&["close_connection", &names[0], "maintenance"]);
    let deadline = Instant::now() + WAIT;
    while conn.status().connected() {
        assert!(Instant::now() < deadline, "the connection closed over HTTP stays open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Refusals: a management-only user may not add users (70), a missing
    // vhost is an error, an unreachable API is 69.
    let refused = http_ctl(&broker, ("bob", "s3cret"), &["add_user", "eve", "x"]);
    assert_eq!(refused.status.code(), Some(70), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"), "{refused:?}");
    let missing = http_ctl(&broker, guest, &["list_queues", "-p", "nowhere"]);
    assert_eq!(missing.status.code(), Some(70), "{missing:?}");
    let port = common::free_port();
    let unreachable = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_warrenctl"))
            .args(["--url", &format!("http://127.0.0.1:{port}"), "list_queues"])
            .output()
            .expect("run warrenctl")
    });
    assert_eq!(unreachable.status.code(), Some(69), "{unreachable:?}");
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("management API"), "{unreachable:?}");
}
