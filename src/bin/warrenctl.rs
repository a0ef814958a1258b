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
        ],
        "list_exchanges" => &["name", "type", "durable", "auto_delete", "internal", "arguments"],
        "list_bindings" => {
            &["source_name", "source_kind", "destination_name", "destination_kind", "routing_key", "arguments"]
        }
        "list_connections" => &["name", "peer", "user", "vhost", "channels", "client", "timeout", "frame_max", "state"],
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

fn main() -> ExitCode {
    let args = Args::parse();
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
    Request { command: command.to_string(), name: name.cloned() }
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
