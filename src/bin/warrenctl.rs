//! `warrenctl`: rabbitmqctl-style administration of a running Warren broker.
//!
//! It reaches the broker through the control socket in the broker's data
//! directory (see `warren::admin`), so it needs `--data-dir` (or
//! `WARREN_DATA_DIR`) to name the same directory the broker was started with.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

use warren::admin::{Request, Response};
use warren::config::control_socket_path;

#[derive(Parser, Debug)]
#[command(version, about = "Administer a running Warren broker (rabbitmqctl-compatible listings)")]
struct Args {
    /// Data directory of the broker [default: ./warren-data].
    #[arg(long, env = "WARREN_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Control socket path (overrides --data-dir).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Quiet: no informational lines.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Print rows only, without the column header.
    #[arg(long, global = true)]
    no_table_headers: bool,
    /// Output format: table (tab-separated) or json, as rabbitmqctl's --formatter.
    #[arg(long, global = true, default_value = "table", value_parser = ["table", "json"])]
    formatter: String,
    /// Seconds to wait for the broker.
    #[arg(short, long, global = true, default_value_t = 60)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
enum Command {
    /// Queues: name messages_ready messages_unacknowledged messages consumers durable auto_delete exclusive arguments message_bytes_ready
    ListQueues { columns: Vec<String> },
    /// Exchanges: name type durable auto_delete internal arguments
    ListExchanges { columns: Vec<String> },
    /// Bindings: source_name source_kind destination_name destination_kind routing_key arguments
    ListBindings { columns: Vec<String> },
    /// Connections: name peer user vhost channels client timeout frame_max state
    ListConnections { columns: Vec<String> },
    /// Consumers: queue_name consumer_tag channel_pid ack_required exclusive prefetch_count active arguments
    ListConsumers { columns: Vec<String> },
    /// Drops the ready messages of a queue.
    PurgeQueue { name: String },
    /// Deletes a queue and its messages.
    DeleteQueue { name: String },
    /// Creates a user.
    AddUser { username: String, password: String },
    /// Deletes a user and its permissions.
    DeleteUser { username: String },
    /// Sets a user's password.
    ChangePassword { username: String, new_password: String },
    /// Checks a user's password.
    AuthenticateUser { username: String, password: String },
    /// Replaces a user's tags (administrator, monitoring, management, policymaker, impersonator).
    SetUserTags { username: String, tags: Vec<String> },
    /// Users: user tags
    ListUsers { columns: Vec<String> },
    /// Sets a user's configure, write and read patterns in a vhost.
    SetPermissions {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        username: String,
        conf: String,
        write: String,
        read: String,
    },
    /// Removes a user's permissions in a vhost.
    ClearPermissions {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        username: String,
    },
    /// Permissions in a vhost: user configure write read
    ListPermissions {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        columns: Vec<String>,
    },
    /// A user's permissions: vhost configure write read
    ListUserPermissions { username: String, columns: Vec<String> },
    /// Sets a user's topic permissions (routing-key patterns) on an exchange of a vhost.
    SetTopicPermissions {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        username: String,
        exchange: String,
        write: String,
        read: String,
    },
    /// Topic permissions in a vhost: user exchange write read
    ListTopicPermissions {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        columns: Vec<String>,
    },
    /// Virtual hosts: name description tags
    ListVhosts { columns: Vec<String> },
    /// Writes every definition as RabbitMQ's JSON definitions file ("-": standard output).
    ExportDefinitions { path: String },
    /// Imports a JSON definitions file (from RabbitMQ or Warren; "-": standard input).
    ImportDefinitions { path: String },
    /// Closes a client connection (by its list_connections name or peer) with 320 CONNECTION_FORCED.
    CloseConnection { connection: String, explanation: Option<String> },
    /// The broker's state: version, uptime, connections, queues, messages, log and disk.
    Status,
    /// Sets a policy: queue (or exchange) settings by name pattern.
    SetPolicy(PolicyArgs),
    /// Removes a policy.
    ClearPolicy(PolicyName),
    /// Policies: vhost name pattern apply-to definition priority
    ListPolicies(VhostColumns),
    /// Sets an operator policy (limits that users' policies cannot lift).
    SetOperatorPolicy(PolicyArgs),
    /// Removes an operator policy.
    ClearOperatorPolicy(PolicyName),
    /// Operator policies: vhost name pattern apply-to definition priority
    ListOperatorPolicies(VhostColumns),
}

#[derive(clap::Args, Debug)]
struct PolicyArgs {
    #[arg(short = 'p', long = "vhost", default_value = "/")]
    vhost: String,
    #[arg(long, default_value_t = 0)]
    priority: i64,
    #[arg(long = "apply-to", default_value = "all")]
    apply_to: String,
    name: String,
    pattern: String,
    /// The definition, a JSON object such as '{"max-length":100}'.
    definition: String,
}

#[derive(clap::Args, Debug)]
struct PolicyName {
    #[arg(short = 'p', long = "vhost", default_value = "/")]
    vhost: String,
    name: String,
}

#[derive(clap::Args, Debug)]
struct VhostColumns {
    #[arg(short = 'p', long = "vhost", default_value = "/")]
    vhost: String,
    columns: Vec<String>,
}

/// What `status` shows.
const STATUS_FIELDS: &[&str] = &[
    "product",
    "version",
    "pid",
    "uptime_seconds",
    "connections",
    "queues",
    "messages_ready",
    "messages_unacknowledged",
    "log_segments",
    "log_disk_bytes",
    "log_live_bytes",
    "disk_free_bytes",
    "disk_free_alarm",
];

/// What an action verb prints before it acts, and on success.
struct Action {
    info: String,
    success: Option<&'static str>,
}

struct Listing {
    command: &'static str,
    what: &'static str,
    defaults: &'static [&'static str],
}

/// Every column each listing knows, so a typo is refused even when the
/// listing is empty.
fn known_columns(command: &str) -> &'static [&'static str] {
    match command {
        "list_queues" => &[
            "name",
            "durable",
            "auto_delete",
            "exclusive",
            "messages_ready",
            "messages_unacknowledged",
            "messages",
            "message_bytes_ready",
            "consumers",
            "arguments",
            "policy",
            "operator_policy",
            "type",
        ],
        "list_exchanges" => &["name", "type", "durable", "auto_delete", "internal", "arguments"],
        "list_bindings" => {
            &["source_name", "source_kind", "destination_name", "destination_kind", "routing_key", "arguments"]
        }
        "list_connections" => &["name", "peer", "user", "vhost", "channels", "client", "timeout", "frame_max", "state"],
        "list_users" => &["user", "tags"],
        "list_permissions" => &["user", "configure", "write", "read"],
        "list_user_permissions" => &["vhost", "configure", "write", "read"],
        "list_topic_permissions" => &["user", "exchange", "write", "read"],
        "list_vhosts" => &["name", "description", "tags"],
        "status" => STATUS_FIELDS,
        "list_policies" | "list_operator_policies" => {
            &["vhost", "name", "pattern", "apply-to", "definition", "priority"]
        }
        "list_consumers" => &[
            "queue_name",
            "consumer_tag",
            "channel_pid",
            "ack_required",
            "exclusive",
            "prefetch_count",
            "active",
            "activity_status",
            "arguments",
        ],
        _ => &[],
    }
}

/// The request and output of the user, permission and vhost verbs.
fn access_verb(command: &Command) -> Option<(Request, Result<Listing, Action>, Vec<String>)> {
    let request = |verb: &str, args: Vec<&String>, vhost: Option<&String>| Request {
        command: verb.to_string(),
        name: None,
        args: args.into_iter().cloned().collect(),
        vhost: vhost.cloned(),
    };
    let action = |info: String, success: Option<&'static str>| Err(Action { info, success });
    let listing = |command: &'static str, what: &'static str, defaults: &'static [&'static str]| {
        Ok(Listing { command, what, defaults })
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
        Command::ListUsers { columns } => {
            (request("list_users", vec![], None), listing("list_users", "users", &["user", "tags"]), columns.clone())
        }
        Command::SetPermissions { vhost, username, conf, write, read } => (
            request("set_permissions", vec![username, conf, write, read], Some(vhost)),
            action(format!("Setting permissions for user \"{username}\" in vhost \"{vhost}\" ..."), None),
            vec![],
        ),
        Command::ClearPermissions { vhost, username } => (
            request("clear_permissions", vec![username], Some(vhost)),
            action(format!("Clearing permissions for user \"{username}\" in vhost \"{vhost}\" ..."), None),
            vec![],
        ),
        Command::ListPermissions { vhost, columns } => (
            request("list_permissions", vec![], Some(vhost)),
            listing("list_permissions", "permissions", &["user", "configure", "write", "read"]),
            columns.clone(),
        ),
        Command::ListUserPermissions { username, columns } => (
            request("list_user_permissions", vec![username], None),
            listing("list_user_permissions", "permissions", &["vhost", "configure", "write", "read"]),
            columns.clone(),
        ),
        Command::SetTopicPermissions { vhost, username, exchange, write, read } => (
            request("set_topic_permissions", vec![username, exchange, write, read], Some(vhost)),
            action(
                format!("Setting topic permissions on \"{exchange}\" for user \"{username}\" in vhost \"{vhost}\" ..."),
                None,
            ),
            vec![],
        ),
        Command::ListTopicPermissions { vhost, columns } => (
            request("list_topic_permissions", vec![], Some(vhost)),
            listing("list_topic_permissions", "topic permissions", &["user", "exchange", "write", "read"]),
            columns.clone(),
        ),
        Command::SetPolicy(p) | Command::SetOperatorPolicy(p) => {
            let verb = if matches!(command, Command::SetPolicy(_)) { "set_policy" } else { "set_operator_policy" };
            let priority = p.priority.to_string();
            (
                request(verb, vec![&p.name, &p.pattern, &p.definition, &priority, &p.apply_to], Some(&p.vhost)),
                action(
                    format!(
                        "Setting policy \"{}\" for pattern \"{}\" to \"{}\" with priority \"{}\" for vhost \"{}\" ...",
                        p.name, p.pattern, p.definition, p.priority, p.vhost
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
                request(verb, vec![&p.name], Some(&p.vhost)),
                action(format!("Clearing policy \"{}\" on vhost \"{}\" ...", p.name, p.vhost), None),
                vec![],
            )
        }
        Command::ListPolicies(v) | Command::ListOperatorPolicies(v) => {
            let verb =
                if matches!(command, Command::ListPolicies(_)) { "list_policies" } else { "list_operator_policies" };
            (
                request(verb, vec![], Some(&v.vhost)),
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
        Command::Status => (request("status", vec![], None), listing("status", "status", STATUS_FIELDS), vec![]),
        Command::ListVhosts { columns } => {
            (request("list_vhosts", vec![], None), listing("list_vhosts", "vhosts", &["name"]), columns.clone())
        }
        _ => return None,
    })
}

/// export_definitions / import_definitions.
fn definitions(args: &Args, export: bool, path: &str) -> ExitCode {
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| control_socket_path(args.data_dir.as_deref().unwrap_or("warren-data".as_ref())));
    let mut request = req(if export { "export_definitions" } else { "import_definitions" }, None);
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
    let response = match call(&socket, &request, Duration::from_secs(args.timeout)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: unable to reach the broker through {}: {e}", socket.display());
            return ExitCode::from(69);
        }
    };
    if !response.ok {
        eprintln!("Error:\n{}", response.error.unwrap_or_default());
        return ExitCode::from(65);
    }
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

fn main() -> ExitCode {
    let args = Args::parse();
    match &args.command {
        Command::ExportDefinitions { path } => return definitions(&args, true, path),
        Command::ImportDefinitions { path } => return definitions(&args, false, path),
        _ => {}
    }
    if let Some((request, output, columns)) = access_verb(&args.command) {
        return run_access_verb(&args, request, output, &columns);
    }
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| control_socket_path(args.data_dir.as_deref().unwrap_or("warren-data".as_ref())));
    let (request, listing, columns) = match &args.command {
        Command::ListQueues { columns } => (
            req("list_queues", None),
            Some(Listing { command: "list_queues", what: "queues", defaults: &["name", "messages"] }),
            columns,
        ),
        Command::ListExchanges { columns } => (
            req("list_exchanges", None),
            Some(Listing { command: "list_exchanges", what: "exchanges", defaults: &["name", "type"] }),
            columns,
        ),
        Command::ListBindings { columns } => (
            req("list_bindings", None),
            Some(Listing {
                command: "list_bindings",
                what: "bindings",
                defaults: &[
                    "source_name",
                    "source_kind",
                    "destination_name",
                    "destination_kind",
                    "routing_key",
                    "arguments",
                ],
            }),
            columns,
        ),
        Command::ListConnections { columns } => (
            req("list_connections", None),
            Some(Listing { command: "list_connections", what: "connections", defaults: &["user", "peer", "state"] }),
            columns,
        ),
        Command::ListConsumers { columns } => (
            req("list_consumers", None),
            Some(Listing {
                command: "list_consumers",
                what: "consumers",
                defaults: &[
                    "queue_name",
                    "channel_pid",
                    "consumer_tag",
                    "ack_required",
                    "prefetch_count",
                    "active",
                    "arguments",
                ],
            }),
            columns,
        ),
        Command::PurgeQueue { name } => (req("purge_queue", Some(name)), None, &Vec::new()),
        Command::DeleteQueue { name } => (req("delete_queue", Some(name)), None, &Vec::new()),
        _ => unreachable!("access verbs are answered above"),
    };
    let response = match call(&socket, &request, Duration::from_secs(args.timeout)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: unable to reach the broker through {}: {e}", socket.display());
            eprintln!(
                "Is warren running with --data-dir {}?",
                socket.parent().map(|p| p.display().to_string()).unwrap_or_default()
            );
            return ExitCode::from(69);
        }
    };
    if !response.ok {
        eprintln!("Error: {}", response.error.unwrap_or_default());
        return ExitCode::from(70);
    }
    match listing {
        Some(listing) => print_listing(&args, &listing, columns, &response),
        None => {
            let count = response.rows.first().and_then(|r| r.get("messages")).cloned().unwrap_or(Value::Null);
            if !args.quiet {
                let verb = if request.command == "purge_queue" { "Purging" } else { "Deleting" };
                println!("{verb} queue '{}' in vhost '/' ...", request.name.as_deref().unwrap_or(""));
            }
            if request.command == "delete_queue" {
                println!("Queue was successfully deleted with {count} ready messages");
            }
            ExitCode::SUCCESS
        }
    }
}

fn req(command: &str, name: Option<&String>) -> Request {
    Request { command: command.to_string(), name: name.cloned(), args: Vec::new(), vhost: None }
}

fn run_access_verb(args: &Args, request: Request, output: Result<Listing, Action>, columns: &[String]) -> ExitCode {
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| control_socket_path(args.data_dir.as_deref().unwrap_or("warren-data".as_ref())));
    if let Err(action) = &output
        && !args.quiet
    {
        println!("{}", action.info);
    }
    let response = match call(&socket, &request, Duration::from_secs(args.timeout)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: unable to reach the broker through {}: {e}", socket.display());
            return ExitCode::from(69);
        }
    };
    if !response.ok {
        eprintln!("Error:\n{}", response.error.unwrap_or_default());
        return ExitCode::from(if request.command == "authenticate_user" { 65 } else { 70 });
    }
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

fn call(socket: &std::path::Path, request: &Request, timeout: Duration) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn print_listing(args: &Args, listing: &Listing, columns: &[String], response: &Response) -> ExitCode {
    let columns: Vec<String> =
        if columns.is_empty() { listing.defaults.iter().map(|s| s.to_string()).collect() } else { columns.to_vec() };
    let known = known_columns(listing.command);
    if let Some(bad) = columns.iter().find(|c| !known.contains(&c.as_str())) {
        eprintln!("Error: invalid column '{bad}' for {}", listing.command);
        return ExitCode::from(64);
    }
    let pick = |row: &serde_json::Map<String, Value>| -> serde_json::Map<String, Value> {
        columns.iter().map(|c| (c.clone(), row.get(c.as_str()).cloned().unwrap_or(Value::Null))).collect()
    };
    if args.formatter == "json" {
        let rows: Vec<Value> = response.rows.iter().map(|r| Value::Object(pick(r))).collect();
        let out = if listing.command == "status" {
            rows.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(rows)
        };
        println!("{out}");
        return ExitCode::SUCCESS;
    }
    if listing.command == "status" {
        for row in &response.rows {
            for c in &columns {
                println!("{c}: {}", cell(row.get(c.as_str()).unwrap_or(&Value::Null)));
            }
        }
        return ExitCode::SUCCESS;
    }
    if !args.quiet {
        println!("Timeout: {}.0 seconds ...", args.timeout);
        println!("Listing {} for vhost / ...", listing.what);
    }
    if !args.no_table_headers {
        println!("{}", columns.join("\t"));
    }
    for row in &response.rows {
        let cells: Vec<String> = columns.iter().map(|c| cell(row.get(c.as_str()).unwrap_or(&Value::Null))).collect();
        println!("{}", cells.join("\t"));
    }
    ExitCode::SUCCESS
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
