//! `warren`: the broker.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use warren::broker::Broker;
use warren::config::Config;
use warren::store::MemoryStore;

/// An AMQP 0-9-1 broker built around a write-ahead log.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML file with settings (flags given here take precedence).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0].
    #[arg(long)]
    bind: Option<IpAddr>,
    /// AMQP port [default: 5672]; 0 picks a free port (printed on startup).
    #[arg(long)]
    port: Option<u16>,
    /// Where the broker keeps its data and its control socket [default: ./warren-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("WARREN_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(bind) = args.bind {
        config.bind = bind;
    }
    if let Some(port) = args.port {
        config.port = port;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let config = Arc::new(config);
    let broker = Arc::new(Broker::new(Arc::new(MemoryStore)));

    let control = warren::admin::bind(&config.control_socket())
        .with_context(|| format!("cannot bind control socket {}", config.control_socket().display()))?;
    tokio::spawn(warren::admin::serve(control, broker.clone()));

    let listener = tokio::net::TcpListener::bind((config.bind, config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.bind, config.port))?;
    let addr = listener.local_addr()?;
    tracing::info!("Warren {} listening on {addr}, data in {}", env!("CARGO_PKG_VERSION"), config.data_dir.display());
    // Tests that start the broker with --port 0 read the port from this line.
    println!("listening on {addr}");

    tokio::select! {
        _ = warren::server::serve(listener, broker, config.clone()) => {}
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    let _ = std::fs::remove_file(config.control_socket());
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
