//! warrenctl's `rabbitmq-queues` verbs: a quorum queue's members and
//! leaders (quorum_status, check_if_node_is_quorum_critical, add_member,
//! delete_member, grow, shrink, rebalance): the request each sends and
//! what it prints.

use warren::admin::Request;

use super::{Action, Args, Command, Listing, QUORUM_STATUS_COLUMNS};

/// The rows of grow and shrink, as rabbitmq-queues prints them.
pub(super) const MEMBER_CHANGE_COLUMNS: &[&str] = &["vhost", "name", "size", "result"];
/// The rows of rebalance: each running node's count of leaders afterwards.
pub(super) const REBALANCE_COLUMNS: &[&str] = &["Node name", "Number of quorum queue leaders"];

/// The request and output of a `rabbitmq-queues` verb.
pub(super) fn queue_verb(args: &Args) -> Option<(Request, Result<Listing, Action>, Vec<String>)> {
    let vhost = &args.vhost;
    let request = |verb: &str, name: Option<&String>, args: Vec<String>, vhost: Option<&String>| Request {
        command: verb.to_string(),
        name: name.cloned(),
        args,
        vhost: vhost.cloned(),
    };
    let action = |info: String, success: Option<&'static str>| Err(Action { info, success });
    let listing = |command: &'static str, what: &'static str, defaults: &'static [&'static str], per_vhost| {
        Ok(Listing { command, what, defaults, per_vhost })
    };
    Some(match &args.command {
        Command::QuorumStatus { queue } => (
            request("quorum_status", Some(queue), vec![], Some(vhost)),
            listing("quorum_status", "the members of a quorum queue", QUORUM_STATUS_COLUMNS, true),
            vec![],
        ),
        Command::CheckIfNodeIsQuorumCritical => (
            request("check_if_node_is_quorum_critical", None, vec![], None),
            action(
                "Checking if the node is critical for the quorum of any quorum queue ...".into(),
                Some("No quorum queue would lose its quorum if this node were shut down"),
            ),
            vec![],
        ),
        Command::AddMember { queue, node } => {
            // The broker answers before this waits out --timeout.
            let wait = args.timeout.saturating_sub(2).max(1).to_string();
            (
                request("add_member", Some(queue), vec![node.clone(), wait], Some(vhost)),
                action(format!("Adding a replica for queue {queue} on node {node}..."), None),
                vec![],
            )
        }
        Command::DeleteMember { queue, node } => (
            request("delete_member", Some(queue), vec![node.clone()], Some(vhost)),
            action(format!("Removing a replica of queue {queue} in vhost {vhost} on node {node}..."), None),
            vec![],
        ),
        Command::Grow { node, strategy, vhost_pattern, queue_pattern, errors_only } => (
            request(
                "grow",
                None,
                vec![
                    node.clone(),
                    strategy.clone(),
                    vhost_pattern.clone(),
                    queue_pattern.clone(),
                    errors_only.to_string(),
                ],
                None,
            ),
            listing("grow", "the quorum queues given a member", MEMBER_CHANGE_COLUMNS, false),
            vec![],
        ),
        Command::Shrink { node, errors_only } => (
            request("shrink", None, vec![node.clone(), errors_only.to_string()], None),
            listing("shrink", "the quorum queues that lost a member", MEMBER_CHANGE_COLUMNS, false),
            vec![],
        ),
        Command::Rebalance { queue_type, vhost_pattern, queue_pattern } => (
            request("rebalance", None, vec![queue_type.clone(), vhost_pattern.clone(), queue_pattern.clone()], None),
            listing("rebalance", "quorum queue leaders per node", REBALANCE_COLUMNS, false),
            vec![],
        ),
        _ => return None,
    })
}
