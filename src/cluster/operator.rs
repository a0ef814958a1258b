//! warrenctl's cluster verbs, through the control socket: the
//! `rabbitmq-queues` verbs (`quorum_status`,
//! `check_if_node_is_quorum_critical`, `add_member`, `delete_member`,
//! `grow`, `shrink`, `rebalance`), answered from `member_status`,
//! `membership` and `leaders`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::leaders::rebalance;
use super::member_status::{queue_status, quorum_critical};
use super::membership::{Selection, add_member, delete_member, grow, shrink};
use super::quorum::QueueGroups;
use crate::admin::{Request, Response, fail, ok, rows};

/// How long `delete_member` and `shrink` wait for a member to be gone.
const REMOVE_WITHIN: Duration = Duration::from_secs(30);

/// The cluster verbs of the control socket.
pub struct Admin(pub Arc<QueueGroups>);

impl crate::admin::ClusterAdmin for Admin {
    fn execute(&self, req: Request) -> Option<Pin<Box<dyn Future<Output = Response> + Send>>> {
        let groups = self.0.clone();
        let verb: Pin<Box<dyn Future<Output = Response> + Send>> = match req.command.as_str() {
            "quorum_status" => Box::pin(async move {
                let (vhost, name) = queue_of(&req);
                let Some(broker) = groups.broker().upgrade() else { return fail("the broker is stopping".into()) };
                match queue_status(&broker, Some(&groups), vhost, name).await {
                    Ok(members) => ok(rows(members)),
                    Err(refused) => fail(refused.reason),
                }
            }),
            "check_if_node_is_quorum_critical" => Box::pin(async move {
                let critical = quorum_critical(&groups);
                if critical.is_empty() {
                    return ok(vec![]);
                }
                let named: Vec<String> =
                    critical.iter().map(|q| format!("'{}' in vhost '{}'", q.name, q.virtual_host)).collect();
                fail(format!(
                    "There are quorum queues that would lose their quorum if node {} is shut down: {}",
                    groups.node().identity.name,
                    named.join(", ")
                ))
            }),
            // args: the node, then the seconds to wait for it to catch up.
            "add_member" => Box::pin(async move {
                let (vhost, name) = queue_of(&req);
                let wait = Duration::from_secs(arg(&req, 1).parse().unwrap_or(60));
                match add_member(&groups, vhost, name, arg(&req, 0), Some(wait)).await {
                    Ok(()) => ok(vec![]),
                    Err(refused) => fail(refused.reason),
                }
            }),
            "delete_member" => Box::pin(async move {
                let (vhost, name) = queue_of(&req);
                match delete_member(&groups, vhost, name, arg(&req, 0), REMOVE_WITHIN).await {
                    Ok(()) => ok(vec![]),
                    Err(refused) => fail(refused.reason),
                }
            }),
            // args: node, all|even, vhost pattern, queue pattern, errors only.
            "grow" => Box::pin(async move {
                let even = match arg(&req, 1) {
                    "all" => false,
                    "even" => true,
                    other => return fail(format!("strategy '{other}' is neither 'all' nor 'even'")),
                };
                let selection = match Selection::new(arg(&req, 2), arg(&req, 3)) {
                    Ok(s) => s,
                    Err(refused) => return fail(refused.reason),
                };
                match grow(&groups, arg(&req, 0), even, &selection).await {
                    Ok(outcomes) => {
                        ok(rows(outcomes.into_iter().filter(|o| !errors_only(&req, 4) || o.result != "ok")))
                    }
                    Err(refused) => fail(refused.reason),
                }
            }),
            // args: node, errors only.
            "shrink" => Box::pin(async move {
                let outcomes = shrink(&groups, arg(&req, 0), REMOVE_WITHIN).await;
                ok(rows(outcomes.into_iter().filter(|o| !errors_only(&req, 1) || o.result != "ok")))
            }),
            // args: all|quorum|classic, vhost pattern, queue pattern.
            "rebalance" => Box::pin(async move {
                let selection = match Selection::new(arg(&req, 1), arg(&req, 2)) {
                    Ok(s) => s,
                    Err(refused) => return fail(refused.reason),
                };
                match arg(&req, 0) {
                    "all" | "quorum" => ok(rows(rebalance(&groups, &selection).await)),
                    // Classic queues have one node each: nothing to move.
                    "classic" => ok(vec![]),
                    other => fail(format!("queue type '{other}' is none of 'all', 'quorum' or 'classic'")),
                }
            }),
            _ => return None,
        };
        Some(verb)
    }
}

fn queue_of(req: &Request) -> (&str, &str) {
    (req.vhost.as_deref().unwrap_or("/"), req.name.as_deref().unwrap_or(""))
}

fn arg(req: &Request, i: usize) -> &str {
    req.args.get(i).map_or("", String::as_str)
}

fn errors_only(req: &Request, i: usize) -> bool {
    arg(req, i) == "true"
}
