//! warrenctl's user, permission, policy, vhost, connection, status and
//! definitions verbs: the request each sends and what it prints.

use std::process::ExitCode;

use serde_json::Value;

use warren::admin::Request;

use super::{Action, Args, Command, Listing, STATUS_FIELDS, exchange, print_listing, req};

/// The request and output of the user, permission and vhost verbs;
/// `vhost` is the one -p names.
pub(super) fn access_verb(
    command: &Command,
    vhost: &String,
) -> Option<(Request, Result<Listing, Action>, Vec<String>)> {
    let request = |verb: &str, args: Vec<&String>, vhost: Option<&String>| Request {
        command: verb.to_string(),
        name: None,
        args: args.into_iter().cloned().collect(),
        vhost: vhost.cloned(),
    };
    let action = |info: String, success: Option<&'static str>| Err(Action { info, success });
    let listing = |command: &'static str, what: &'static str, defaults: &'static [&'static str]| {
        Ok(Listing { command, what, defaults, per_vhost: true })
    };
    let global_listing = |command: &'static str, what: &'static str, defaults: &'static [&'static str]| {
        Ok(Listing { command, what, defaults, per_vhost: false })
    };
    Some(match command {
        Command::AddUser { username, password } => (
            request("add_user", vec![username, password], None),
            action(format!("Adding user \"{username}\" ..."), None),
            vec![],
        ),
        Command::DeleteUser { username } => (
            request("delete_user", vec![username], None),
            action(format!("Deleting user \"{username}\" ..."), None),
            vec![],
        ),
        Command::ChangePassword { username, new_password } => (
            request("change_password", vec![username, new_password], None),
            action(format!("Changing password for user \"{username}\" ..."), None),
            vec![],
        ),
        Command::AuthenticateUser { username, password } => (
            request("authenticate_user", vec![username, password], None),
            action(format!("Authenticating user \"{username}\" ..."), Some("Success")),
            vec![],
        ),
        Command::SetUserTags { username, tags } => {
            let mut args = vec![username];
            args.extend(tags.iter());
            (
                request("set_user_tags", args, None),
                action(format!("Setting tags for user \"{username}\" to [{}] ...", tags.join(", ")), None),
                vec![],
            )
        }
        Command::ListUsers { columns } => (
            request("list_users", vec![], None),
            global_listing("list_users", "users", &["user", "tags"]),
            columns.clone(),
        ),
        Command::SetPermissions { username, conf, write, read } => (
            request("set_permissions", vec![username, conf, write, read], Some(vhost)),
            action(format!("Setting permissions for user \"{username}\" in vhost \"{vhost}\" ..."), None),
            vec![],
        ),
        Command::ClearPermissions { username } => (
            request("clear_permissions", vec![username], Some(vhost)),
            action(format!("Clearing permissions for user \"{username}\" in vhost \"{vhost}\" ..."), None),
            vec![],
        ),
        Command::ListPermissions { columns } => (
            request("list_permissions", vec![], Some(vhost)),
            listing("list_permissions", "permissions", &["user", "configure", "write", "read"]),
            columns.clone(),
        ),
        Command::ListUserPermissions { username, columns } => (
            request("list_user_permissions", vec![username], None),
            global_listing("list_user_permissions", "permissions", &["vhost", "configure", "write", "read"]),
            columns.clone(),
        ),
        Command::SetTopicPermissions { username, exchange, write, read } => (
            request("set_topic_permissions", vec![username, exchange, write, read], Some(vhost)),
            action(
                format!("Setting topic permissions on \"{exchange}\" for user \"{username}\" in vhost \"{vhost}\" ..."),
                None,
            ),
            vec![],
        ),
        Command::ListTopicPermissions { columns } => (
            request("list_topic_permissions", vec![], Some(vhost)),
            listing("list_topic_permissions", "topic permissions", &["user", "exchange", "write", "read"]),
            columns.clone(),
        ),
        Command::SetPolicy(p) | Command::SetOperatorPolicy(p) => {
            let verb = if matches!(command, Command::SetPolicy(_)) { "set_policy" } else { "set_operator_policy" };
            let priority = p.priority.to_string();
            (
                request(verb, vec![&p.name, &p.pattern, &p.definition, &priority, &p.apply_to], Some(vhost)),
                action(
                    format!(
                        "Setting policy \"{}\" for pattern \"{}\" to \"{}\" with priority \"{}\" for vhost \"{vhost}\" ...",
                        p.name, p.pattern, p.definition, p.priority
                    ),
                    None,
                ),
                vec![],
            )
        }
        Command::ClearPolicy(p) | Command::ClearOperatorPolicy(p) => {
            let verb =
                if matches!(command, Command::ClearPolicy(_)) { "clear_policy" } else { "clear_operator_policy" };
            (
                request(verb, vec![&p.name], Some(vhost)),
                action(format!("Clearing policy \"{}\" on vhost \"{vhost}\" ...", p.name), None),
                vec![],
            )
        }
        Command::ListPolicies(v) | Command::ListOperatorPolicies(v) => {
            let verb =
                if matches!(command, Command::ListPolicies(_)) { "list_policies" } else { "list_operator_policies" };
            (
                request(verb, vec![], Some(vhost)),
                listing(verb, "policies", &["vhost", "name", "pattern", "apply-to", "definition", "priority"]),
                v.columns.clone(),
            )
        }
        Command::CloseConnection { connection, explanation } => {
            let mut args = vec![connection];
            args.extend(explanation.iter());
            (
                request("close_connection", args, None),
                action(
                    format!(
                        "Closing connection {connection}, reason: {} ...",
                        explanation.as_deref().unwrap_or("Closed via warrenctl")
                    ),
                    None,
                ),
                vec![],
            )
        }
        Command::Status => (request("status", vec![], None), global_listing("status", "status", STATUS_FIELDS), vec![]),
        Command::ListVhosts { columns } => {
            (request("list_vhosts", vec![], None), global_listing("list_vhosts", "vhosts", &["name"]), columns.clone())
        }
        Command::AddVhost { name, description, tags, default_queue_type } => {
            let none = String::new();
            let args = vec![
                name,
                description.as_ref().unwrap_or(&none),
                tags.as_ref().unwrap_or(&none),
                default_queue_type.as_ref().unwrap_or(&none),
            ];
            (request("add_vhost", args, None), action(format!("Adding vhost \"{name}\" ..."), None), vec![])
        }
        Command::SetVmMemoryHighWatermark { value, absolute } => {
            let (kind, text) = match (value.as_str(), absolute) {
                ("absolute", Some(size)) => ("absolute", size),
                (_, None) => ("relative", value),
                (_, Some(_)) => ("invalid", value),
            };
            (
                request("set_vm_memory_high_watermark", vec![&kind.to_string(), text], None),
                action(format!("Setting memory threshold on the node to {text} ..."), None),
                vec![],
            )
        }
        Command::DeleteVhost { name } => {
            (request("delete_vhost", vec![name], None), action(format!("Deleting vhost \"{name}\" ..."), None), vec![])
        }
        Command::SetVhostLimits { definition } => (
            request("set_vhost_limits", vec![definition], Some(vhost)),
            action(format!("Setting vhost limits to \"{definition}\" for vhost \"{vhost}\" ..."), None),
            vec![],
        ),
        Command::ClearVhostLimits => (
            request("clear_vhost_limits", vec![], Some(vhost)),
            action(format!("Clearing vhost \"{vhost}\" limits ..."), None),
            vec![],
        ),
        Command::SetUserLimits { username, definition } => (
            request("set_user_limits", vec![username, definition], None),
            action(format!("Setting user limits to \"{definition}\" for user \"{username}\" ..."), None),
            vec![],
        ),
        Command::ClearUserLimits { username, limit } => (
            request("clear_user_limits", vec![username, limit], None),
            action(format!("Clearing \"{limit}\" limit for user \"{username}\" ..."), None),
            vec![],
        ),
        Command::ListUserLimits { user, global: _ } => (
            request("list_user_limits", user.iter().collect(), None),
            global_listing("list_user_limits", "user limits", &["user", "limits"]),
            vec![],
        ),
        Command::ListVhostLimits { global } => {
            let scope = if *global { None } else { Some(vhost) };
            let shown = if *global {
                global_listing("list_vhost_limits", "limits", &["vhost", "limits"])
            } else {
                listing("list_vhost_limits", "limits", &["limits"])
            };
            (request("list_vhost_limits", vec![], scope), shown, vec![])
        }
        _ => return None,
    })
}

/// export_definitions / import_definitions.
pub(super) fn definitions(args: &Args, export: bool, path: &str) -> ExitCode {
    let mut request = req(args, if export { "export_definitions" } else { "import_definitions" }, None);
    if !export {
        let text = if path == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
        } else {
            std::fs::read_to_string(path)
        };
        match text {
            Ok(text) => request.args.push(text),
            Err(e) => {
                eprintln!("Error: cannot read {path}: {e}");
                return ExitCode::from(66);
            }
        }
        if !args.quiet {
            println!("Importing definitions in JSON from a file at \"{path}\" ...");
        }
    } else if !args.quiet && path != "-" {
        println!("Exporting definitions in JSON to a file at \"{path}\" ...");
    }
    let response = match exchange(args, &request, 65) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let row = response.rows.into_iter().next().unwrap_or_default();
    if export {
        let text = serde_json::to_string_pretty(row.get("definitions").unwrap_or(&Value::Null)).unwrap_or_default();
        if path == "-" {
            println!("{text}");
        } else if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("Error: cannot write {path}: {e}");
            return ExitCode::from(73);
        }
    } else if !args.quiet {
        println!("Successfully started definition import. {}", Value::Object(row));
    }
    ExitCode::SUCCESS
}

pub(super) fn run_access_verb(
    args: &Args,
    request: Request,
    output: Result<Listing, Action>,
    columns: &[String],
) -> ExitCode {
    if let Err(action) = &output
        && !args.quiet
    {
        println!("{}", action.info);
    }
    // As rabbitmqctl: 65 for a failed authentication, 69 for a failed check.
    let refused = match request.command.as_str() {
        "authenticate_user" => 65,
        "check_if_node_is_quorum_critical" => 69,
        _ => 70,
    };
    let response = match exchange(args, &request, refused) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match output {
        Ok(listing) => print_listing(args, &listing, columns, &response),
        Err(action) => {
            if let Some(line) = action.success {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
    }
}
