//! Three real `warren` nodes on loopback, each with its own ports (chosen
//! at run time) and data directory, started with --node-name,
//! --cluster-port and --cluster-peers: every node's /api/nodes lists all
//! three as running with their Raft ids; a node killed with SIGKILL shows
//! as not running on the others, and as running again after its restart,
//! with the same Raft id (it is kept in its log); a wiped data directory
//! comes back as a new Raft id, which the metadata group's leader takes in
//! place of the old one (the node gets the definitions back); a data
//! directory started under another node name is refused with a clear
//! error; the cluster port serves only nodes holding the cluster's cookie.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::{Broker, http};
use serde_json::Value;

const NAMES: [&str; 3] = ["alpha@localhost", "beta@localhost", "gamma@localhost"];

/// Each node's view: name -> (running, raft id).
async fn view(broker: &Broker) -> BTreeMap<String, (bool, Option<u64>)> {
    let reply = http::get(broker.management.expect("management API"), "/api/nodes", Some(("guest", "guest"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let nodes = reply.json();
    nodes
        .as_array()
        .expect("a list of nodes")
        .iter()
        .map(|n| (n["name"].as_str().unwrap_or("").to_string(), (n["running"] == true, n["raft_id"].as_u64())))
        .collect()
}

/// Polls every broker's view until `ok` holds for all, for at most 20 s.
async fn until(what: &str, brokers: &[&Broker], ok: impl Fn(&BTreeMap<String, (bool, Option<u64>)>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut views = Vec::new();
        for b in brokers {
            views.push(view(b).await);
        }
        if views.iter().all(&ok) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; views: {views:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn all_running(v: &BTreeMap<String, (bool, Option<u64>)>) -> bool {
    v.len() == 3 && v.values().all(|(running, id)| *running && id.is_some())
}

#[tokio::test]
async fn nodes_know_their_peers_and_a_killed_node_comes_back_with_its_identity() {
    let mut cluster = TestCluster::start(&NAMES);
    let (dirs, ports, peers) = (cluster.dirs.clone(), cluster.ports.clone(), cluster.peers[2].clone());

    until("all three nodes running on every node", &cluster.nodes.iter().collect::<Vec<_>>(), all_running).await;
    // A vhost made once the metadata group has formed (it is retried
    // while the group forms: 503 until then).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let made = http::request(
            cluster.nodes[0].management.unwrap(),
            "PUT",
            "/api/vhosts/kept",
            Some(("guest", "guest")),
            Some("{}"),
        )
        .await;
        if made.status == 201 {
            break;
        }
        assert!(made.status == 503 && Instant::now() < deadline, "PUT /api/vhosts/kept: {} {}", made.status, made.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Each node's Raft id is the one its peers report.
    let ids: Vec<u64> = {
        let mut ids = Vec::new();
        for (i, node) in cluster.nodes.iter().enumerate() {
            ids.push(view(node).await[NAMES[i]].1.expect("its own Raft id"));
        }
        ids
    };
    for node in &cluster.nodes {
        let v = view(node).await;
        for (i, name) in NAMES.iter().enumerate() {
            assert_eq!(v[*name].1, Some(ids[i]), "{name}'s Raft id as another node sees it");
        }
    }
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);

    // Alpha's cluster port serves only nodes that hold the cluster's cookie.
    // Bytes that are not the handshake (a frame straight away) and a
    // handshake with another cookie are refused: the connection is closed
    // unanswered. With the cookie, an unknown request is refused by name,
    // a frame cut short and a length too small end their connections, and
    // alpha goes on serving.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use warren::cluster::auth::{self, Cookie};
    // A request: length, kind, group, request id, addressee (0: any).
    let request = |kind: u8, id: u64, to: u64| {
        let mut bytes = vec![25, 0, 0, 0, kind];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&to.to_le_bytes());
        bytes
    };
    let unknown = request(0x7E, 9, 0);
    let closed_unanswered = |mut socket: tokio::net::TcpStream| async move {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a refused connection got an answer: {read:?}");
    };
    let mut stranger = tokio::net::TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap();
    stranger.write_all(&unknown).await.unwrap();
    stranger.write_all(&[0u8; 64]).await.unwrap();
    closed_unanswered(stranger).await;
    let mut impostor = tokio::net::TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap();
    let refused = auth::connect(&mut impostor, &Cookie::from_secret(b"not the cluster's cookie")).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied, "{refused}");
    let secret = std::fs::read_to_string(cluster.cookie_path()).expect("the cookie file the nodes made");
    let cookie = Cookie::from_secret(secret.trim().as_bytes());
    let mut hostile = tokio::net::TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap();
    auth::connect(&mut hostile, &cookie).await.expect("the handshake with the cluster's cookie");
    hostile.write_all(&unknown).await.unwrap();
    let mut reply = [0u8; 29];
    tokio::time::timeout(Duration::from_secs(5), hostile.read_exact(&mut reply)).await.unwrap().unwrap();
    assert_eq!(reply[4], 0xFF, "an unknown request is refused, not answered");
    assert_eq!(u64::from_le_bytes(reply[13..21].try_into().unwrap()), 9, "the refusal names the request");
    let len = u32::from_le_bytes(reply[..4].try_into().unwrap()) as usize;
    let mut why = vec![0u8; len - 25];
    hostile.read_exact(&mut why).await.unwrap();
    // A request meant for another Raft id (the one a wiped node had) is
    // refused too, even one any node would otherwise answer.
    hostile.write_all(&request(6, 10, 12345)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), hostile.read_exact(&mut reply)).await.unwrap().unwrap();
    assert_eq!((reply[4], u64::from_le_bytes(reply[13..21].try_into().unwrap())), (0xFF, 10));
    let len = u32::from_le_bytes(reply[..4].try_into().unwrap()) as usize;
    let mut why = vec![0u8; len - 25];
    hostile.read_exact(&mut why).await.unwrap();
    let why = String::from_utf8_lossy(&why);
    assert!(why.contains("not node 12345"), "{why}");
    hostile.write_all(&[0, 0, 0, 0x40, 1, 2, 3]).await.unwrap();
    drop(hostile);
    let mut short = tokio::net::TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap();
    auth::connect(&mut short, &cookie).await.expect("the handshake with the cluster's cookie");
    short.write_all(&[3, 0, 0, 0, 1, 2, 3]).await.unwrap();
    drop(short);
    until("alpha still serving its peers", &cluster.nodes.iter().collect::<Vec<_>>(), all_running).await;

    // gamma killed with SIGKILL: the others see it stop.
    cluster.nodes[2].kill();
    let (alive, _) = cluster.nodes.split_at(2);
    let alive: Vec<&Broker> = alive.iter().collect();
    until("gamma shown as not running", &alive, |v| !v[NAMES[2]].0 && v[NAMES[0]].0 && v[NAMES[1]].0).await;

    // A data directory belongs to its node name.
    let refused = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--bind", "127.0.0.1", "--port", "0", "--management-port", "0", "--prometheus-port", "0"])
        .args(["--node-name", "delta@localhost", "--cluster-port", &ports[2].to_string(), "--cluster-peers", &peers])
        .arg("--data-dir")
        .arg(&dirs[2])
        .output()
        .expect("run warren");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("belongs to node 'gamma@localhost', not 'delta@localhost'"), "{stderr}");

    // Back on its data directory: the same Raft id, running again everywhere.
    cluster.nodes[2] = cluster.start_node(2);
    until("gamma running again", &cluster.nodes.iter().collect::<Vec<_>>(), all_running).await;
    assert_eq!(view(&cluster.nodes[0]).await[NAMES[2]].1, Some(ids[2]), "gamma keeps its Raft id across a restart");

    // Wiped: it comes back as a new member, with a new Raft id.
    cluster.nodes[2].kill();
    std::fs::remove_dir_all(&dirs[2]).unwrap();
    cluster.nodes[2] = cluster.start_node(2);
    let old = ids[2];
    until("gamma's new Raft id on every node", &cluster.nodes.iter().collect::<Vec<_>>(), |v| {
        all_running(v) && v[NAMES[2]].1.is_some_and(|id| id != old)
    })
    .await;
    // The leader takes the new id into the metadata group in place of the
    // old one (which can never vote again), and the wiped node has the
    // group's log again.
    let new = view(&cluster.nodes[0]).await[NAMES[2]].1.expect("gamma's new Raft id");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut statuses = Vec::new();
        for node in &cluster.nodes {
            let reply = http::get(node.management.unwrap(), "/api/metadata-store", Some(("guest", "guest"))).await;
            statuses.push(reply.json());
        }
        let replaced = statuses.iter().all(|s| {
            let mut members: Vec<&str> =
                s["members"].as_array().map(|m| m.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            members.sort();
            let ids: Vec<u64> =
                s["member_ids"].as_array().map(|m| m.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
            members == NAMES && ids.contains(&new) && !ids.contains(&old)
        });
        if replaced && statuses[2]["formed"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "the wiped node was not taken back into the metadata group: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kept = http::get(cluster.nodes[2].management.unwrap(), "/api/vhosts/kept", Some(("guest", "guest"))).await;
    assert_eq!(kept.status, 200, "the wiped node has the definitions again: {}", kept.body);
    let reply =
        http::get(cluster.nodes[0].management.unwrap(), "/api/nodes/beta@localhost", Some(("guest", "guest"))).await;
    let beta: Value = reply.json();
    assert_eq!((beta["name"].as_str(), beta["running"].as_bool()), (Some("beta@localhost"), Some(true)));
}
