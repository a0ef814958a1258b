//! `warrenctl`: rabbitmqctl-style administration of a running Warren broker.
//!
//! It reaches the broker through the control socket in the broker's data
//! directory (see `warren::admin`), so it needs `--data-dir` (or
//! `WARREN_DATA_DIR`) to name the same directory the broker was started
//! with; or, with `--url`, through the management HTTP API (`http`).

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
    /// Reach the broker through its management HTTP API at this URL (e.g.
    /// http://host:15672) instead of the data directory's control socket.
    #[arg(long, env = "WARREN_URL", global = true)]
    url: Option<String>,
    /// User for --url.
    #[arg(long = "username", id = "http_username", env = "WARREN_USERNAME", global = true, default_value = "guest")]
    http_username: String,
    /// Password for --url.
    #[arg(
        long = "password",
        id = "http_password",
        env = "WARREN_PASSWORD",
        global = true,
        default_value = "guest",
        hide_default_value = true
    )]
    http_password: String,
    /// The virtual host a verb acts on or lists, as rabbitmqctl's -p.
    #[arg(short = 'p', long = "vhost", global = true, default_value = "/")]
    vhost: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
enum Command {
    /// Queues of the vhost: name messages_ready messages_unacknowledged messages consumers durable auto_delete exclusive arguments message_bytes_ready
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
    SetPermissions { username: String, conf: String, write: String, read: String },
    /// Removes a user's permissions in a vhost.
    ClearPermissions { username: String },
    /// Permissions in a vhost: user configure write read
    ListPermissions { columns: Vec<String> },
    /// A user's permissions: vhost configure write read
    ListUserPermissions { username: String, columns: Vec<String> },
    /// Sets a user's topic permissions (routing-key patterns) on an exchange of a vhost.
    SetTopicPermissions { username: String, exchange: String, write: String, read: String },
    /// Topic permissions in a vhost: user exchange write read
    ListTopicPermissions { columns: Vec<String> },
    /// Virtual hosts: name description tags default_queue_type tracing cluster_state
    ListVhosts { columns: Vec<String> },
    /// Creates a virtual host with its predeclared exchanges.
    AddVhost {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Comma-separated tags.
        #[arg(long)]
        tags: Option<String>,
        /// classic or quorum: the type of durable queues declared without x-queue-type.
        #[arg(long = "default-queue-type")]
        default_queue_type: Option<String>,
    },
    /// Deletes a virtual host and everything in it.
    DeleteVhost { name: String },
    /// Changes the memory high watermark until the next start: a fraction (0.4) of the memory available, or `absolute <bytes or size>`.
    SetVmMemoryHighWatermark { value: String, absolute: Option<String> },
    /// Sets the limits of the vhost given by -p: '{"max-connections": N, "max-queues": N}'.
    SetVhostLimits { definition: String },
    /// Removes the limits of the vhost given by -p.
    ClearVhostLimits,
    /// Sets a user's limits (merged into its others): '{"max-connections": N, "max-channels": N}'.
    SetUserLimits { username: String, definition: String },
    /// Removes one of a user's limits (max-connections, max-channels) or all.
    ClearUserLimits { username: String, limit: String },
    /// Users' limits: user limits (one user with --user, every user otherwise).
    ListUserLimits {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        global: bool,
    },
    /// The limits of the vhost given by -p (or of every vhost with --global).
    ListVhostLimits {
        #[arg(long)]
        global: bool,
    },
    /// Writes every definition as RabbitMQ's JSON definitions file ("-": standard output).
    ExportDefinitions { path: String },
    /// Imports a JSON definitions file (from RabbitMQ or Warren; "-": standard input).
    ImportDefinitions { path: String },
    /// Closes a client connection (by its list_connections name or peer) with 320 CONNECTION_FORCED.
    CloseConnection { connection: String, explanation: Option<String> },
    /// The broker's state: version, uptime, connections, queues, messages, log and disk.
    Status,
    /// Each member of a quorum queue with its Raft figures, as rabbitmq-queues quorum_status.
    QuorumStatus { queue: String },
    /// Fails (exit 69) if stopping this node would leave a quorum queue without a majority of its members online.
    CheckIfNodeIsQuorumCritical,
    /// Adds a member of a quorum queue on NODE (rabbitmq-queues add_member); waits up to --timeout for it to catch up.
    AddMember { queue: String, node: String },
    /// Removes a quorum queue's member on NODE (rabbitmq-queues delete_member).
    DeleteMember { queue: String, node: String },
    /// Adds a member on NODE to every quorum queue (all) or to those with an even number of members (even).
    Grow {
        node: String,
        #[arg(value_parser = ["all", "even"])]
        strategy: String,
        #[arg(long, default_value = ".*")]
        vhost_pattern: String,
        #[arg(long, default_value = ".*")]
        queue_pattern: String,
        /// Only the queues where it failed.
        #[arg(long)]
        errors_only: bool,
    },
    /// Removes NODE's member from every quorum queue it is not the last member of.
    Shrink {
        node: String,
        /// Only the queues where it failed.
        #[arg(long)]
        errors_only: bool,
    },
    /// Spreads quorum queue leaders evenly over the running nodes.
    Rebalance {
        #[arg(value_parser = ["all", "quorum", "classic"])]
        queue_type: String,
        #[arg(long, default_value = ".*")]
        vhost_pattern: String,
        #[arg(long, default_value = ".*")]
        queue_pattern: String,
    },
    /// Sets a policy: queue (or exchange) settings by name pattern.
    SetPolicy(PolicyArgs),
    /// Removes a policy.
    ClearPolicy(PolicyName),
    /// Policies: vhost name pattern apply-to definition priority
    ListPolicies(Columns),
    /// Sets an operator policy (limits that users' policies cannot lift).
    SetOperatorPolicy(PolicyArgs),
    /// Removes an operator policy.
    ClearOperatorPolicy(PolicyName),
    /// Operator policies: vhost name pattern apply-to definition priority
    ListOperatorPolicies(Columns),
}

#[derive(clap::Args, Debug)]
struct PolicyArgs {
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
    name: String,
}

#[derive(clap::Args, Debug)]
struct Columns {
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
    "memory_resident_bytes",
    "memory_high_watermark_bytes",
    "memory_alarm",
    "memory_paging",
    "log_spilled_messages",
];

/// The columns of quorum_status, named as rabbitmq-queues names them.
const QUORUM_STATUS_COLUMNS: &[&str] = warren::cluster::member_status::COLUMNS;

/// What an action verb prints before it acts, and on success.
struct Action {
    info: String,
    success: Option<&'static str>,
}

struct Listing {
    command: &'static str,
    what: &'static str,
    defaults: &'static [&'static str],
    /// Lists what is in the vhost of -p (the header line says which).
    per_vhost: bool,
}

/// Every column each listing knows, so a typo is refused even when the
/// listing is empty.
fn known_columns(command: &str) -> &'static [&'static str] {
    match command {
        "list_queues" => &[
            "name",
            "vhost",
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
            "first_offset",
            "last_offset",
            "disk_bytes",
        ],
        "list_exchanges" => &["name", "vhost", "type", "durable", "auto_delete", "internal", "arguments"],
        "list_bindings" => {
            &["source_name", "source_kind", "destination_name", "destination_kind", "routing_key", "arguments", "vhost"]
        }
        "list_connections" => &["name", "peer", "user", "vhost", "channels", "client", "timeout", "frame_max", "state"],
        "list_users" => &["user", "tags"],
        "list_permissions" => &["user", "configure", "write", "read"],
        "list_user_permissions" => &["vhost", "configure", "write", "read"],
        "list_topic_permissions" => &["user", "exchange", "write", "read"],
        "list_vhosts" => &["name", "description", "tags", "default_queue_type", "tracing", "cluster_state"],
        "list_vhost_limits" => &["vhost", "limits"],
        "list_user_limits" => &["user", "limits"],
        "status" => STATUS_FIELDS,
        "quorum_status" => QUORUM_STATUS_COLUMNS,
        "grow" | "shrink" => queues::MEMBER_CHANGE_COLUMNS,
        "rebalance" => queues::REBALANCE_COLUMNS,
        "list_policies" | "list_operator_policies" => {
            &["vhost", "name", "pattern", "apply-to", "definition", "priority"]
        }
        "list_consumers" => &[
            "vhost",
            "queue_name",
            "consumer_tag",
            "channel_pid",
            "ack_required",
            "exclusive",
            "prefetch_count",
            "active",
            "activity_status",
            "arguments",
            "offset",
        ],
        _ => &[],
    }
}

mod http;
mod queues;
mod verbs;

use verbs::{access_verb, definitions, run_access_verb};

fn main() -> ExitCode {
    let args = Args::parse();
    match &args.command {
        Command::ExportDefinitions { path } => return definitions(&args, true, path),
        Command::ImportDefinitions { path } => return definitions(&args, false, path),
        _ => {}
    }
    if let Some((request, output, columns)) =
        access_verb(&args.command, &args.vhost).or_else(|| queues::queue_verb(&args))
    {
        return run_access_verb(&args, request, output, &columns);
    }
    let (request, listing, columns) = match &args.command {
        Command::ListQueues { columns } => (
            req(&args, "list_queues", None),
            Some(Listing { command: "list_queues", what: "queues", defaults: &["name", "messages"], per_vhost: true }),
            columns,
        ),
        Command::ListExchanges { columns } => (
            req(&args, "list_exchanges", None),
            Some(Listing {
                command: "list_exchanges",
                what: "exchanges",
                defaults: &["name", "type"],
                per_vhost: true,
            }),
            columns,
        ),
        Command::ListBindings { columns } => (
            req(&args, "list_bindings", None),
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
                per_vhost: true,
            }),
            columns,
        ),
        Command::ListConnections { columns } => (
            req(&args, "list_connections", None),
            Some(Listing {
                command: "list_connections",
                what: "connections",
                defaults: &["user", "peer", "state"],
                per_vhost: false,
            }),
            columns,
        ),
        Command::ListConsumers { columns } => (
            req(&args, "list_consumers", None),
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
                per_vhost: true,
            }),
            columns,
        ),
        Command::PurgeQueue { name } => (req(&args, "purge_queue", Some(name)), None, &Vec::new()),
        Command::DeleteQueue { name } => (req(&args, "delete_queue", Some(name)), None, &Vec::new()),
        _ => unreachable!("access verbs are answered above"),
    };
    let response = match exchange(&args, &request, 70) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match listing {
        Some(listing) => print_listing(&args, &listing, columns, &response),
        None => {
            let count = response.rows.first().and_then(|r| r.get("messages")).cloned().unwrap_or(Value::Null);
            if !args.quiet {
                let verb = if request.command == "purge_queue" { "Purging" } else { "Deleting" };
                println!("{verb} queue '{}' in vhost '{}' ...", request.name.as_deref().unwrap_or(""), args.vhost);
            }
            if request.command == "delete_queue" {
                println!("Queue was successfully deleted with {count} ready messages");
            }
            ExitCode::SUCCESS
        }
    }
}

fn req(args: &Args, command: &str, name: Option<&String>) -> Request {
    Request { command: command.to_string(), name: name.cloned(), args: Vec::new(), vhost: Some(args.vhost.clone()) }
}

/// The control socket: --socket, else the one in the data directory.
fn socket_path(args: &Args) -> PathBuf {
    args.socket
        .clone()
        .unwrap_or_else(|| control_socket_path(args.data_dir.as_deref().unwrap_or("warren-data".as_ref())))
}

/// Sends a request; an unreachable broker or a refusal is printed and
/// becomes the exit code (`refused` for a refusal).
fn exchange(args: &Args, request: &Request, refused: u8) -> Result<Response, ExitCode> {
    if let Some(url) = &args.url {
        let target = http::Target {
            url: url.clone(),
            username: args.http_username.clone(),
            password: args.http_password.clone(),
        };
        let response = match target.call(request) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("Error: unable to reach the broker's management API: {e}");
                return Err(ExitCode::from(69));
            }
        };
        if !response.ok {
            eprintln!("Error:\n{}", response.error.unwrap_or_default());
            return Err(ExitCode::from(refused));
        }
        return Ok(response);
    }
    let socket = socket_path(args);
    let response = match call(&socket, request, Duration::from_secs(args.timeout)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: unable to reach the broker through {}: {e}", socket.display());
            eprintln!(
                "Is warren running with --data-dir {}?",
                socket.parent().map(|p| p.display().to_string()).unwrap_or_default()
            );
            return Err(ExitCode::from(69));
        }
    };
    if !response.ok {
        eprintln!("Error:\n{}", response.error.unwrap_or_default());
        return Err(ExitCode::from(refused));
    }
    Ok(response)
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
        if listing.per_vhost {
            println!("Listing {} for vhost {} ...", listing.what, args.vhost);
        } else {
            println!("Listing {} ...", listing.what);
        }
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
