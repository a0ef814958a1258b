//! `warren`: the broker.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use warren::broker::Broker;
use warren::config::{Config, log_dir};
use warren::store::io::FileIo;
use warren::store::{FsyncPolicy, LogOptions, LogStore};

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
    /// Where the broker keeps its log and its control socket [default: ./warren-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// When to fdatasync the log: batch (default), <N>ms, or never.
    #[arg(long)]
    fsync: Option<String>,
    /// Log segment size in bytes [default: 67108864].
    #[arg(long)]
    segment_size: Option<u32>,
    /// Start even if a sealed log segment is damaged: it is renamed *.damaged and its records are lost.
    #[arg(long)]
    skip_damaged_segments: bool,
    /// Never compact the log (keeps every segment; for inspecting a log as written).
    #[arg(long)]
    no_compaction: bool,
    /// Free disk space below which publishers are blocked: bytes or e.g. 2GB, 500MiB; 0 turns the alarm off [default: 2 segments + 50MB].
    #[arg(long)]
    disk_free_limit: Option<warren::config::Size>,
    /// Resident memory above which publishers are blocked: a fraction of the memory available (e.g. 0.4) or bytes (e.g. 512MiB) [default: 0.4].
    #[arg(long)]
    memory_high_watermark: Option<warren::broker::memory::Watermark>,
    /// Fraction of the memory high watermark above which queues page messages out to the log; 0 pages always [default: 0.5].
    #[arg(long)]
    memory_paging_ratio: Option<f64>,
    /// Milliseconds a delivery may stay unacknowledged before its channel is closed; 0 turns it off [default: 1800000].
    #[arg(long)]
    consumer_timeout: Option<u64>,
    /// Threads serving connections [default: 1]; the log writer has its own.
    #[arg(long)]
    threads: Option<usize>,
    /// Connections accepted at most [default: 0, no limit].
    #[arg(long)]
    connection_max: Option<usize>,
    /// Port of the management HTTP API [default: 15672]; 0 turns it off.
    #[arg(long)]
    management_port: Option<u16>,
    /// Port of the Prometheus metrics endpoint [default: 15692]; 0 turns it off.
    #[arg(long)]
    prometheus_port: Option<u16>,
    /// Port of the amqps (AMQP over TLS) listener [default: 5671]; on when a certificate and key are given.
    #[arg(long)]
    tls_port: Option<u16>,
    /// The server's certificate chain (PEM) for TLS.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The server's private key (PEM) for TLS.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM): client certificates are verified against them (verify_peer).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// This node's name, as its peers list it [default: warren@HOST].
    #[arg(long)]
    node_name: Option<String>,
    /// Port of node-to-node traffic; 0 runs a single node [default: 0].
    #[arg(long)]
    cluster_port: Option<u16>,
    /// The cluster's nodes, NAME@HOST:PORT,NAME@HOST:PORT,... (this node may be listed).
    #[arg(long)]
    cluster_peers: Option<String>,
    /// The file with the secret every node of the cluster shares [default: ~/.warren.cookie, made on first use].
    #[arg(long)]
    cluster_cookie_file: Option<PathBuf>,
}

/// The log filter unless WARREN_LOG says otherwise: openraft's own info
/// lines (every snapshot and purge of every group, several a second under
/// load) only at warn and above; Warren says what an operator needs.
const DEFAULT_LOG: &str = "info,openraft=warn";

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("WARREN_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)))
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
    if let Some(fsync) = args.fsync {
        config.fsync = fsync;
    }
    if let Some(size) = args.segment_size {
        config.segment_size = size;
    }
    config.skip_damaged_segments |= args.skip_damaged_segments;
    config.compaction &= !args.no_compaction;
    if let Some(limit) = args.disk_free_limit {
        config.disk_free_limit = Some(limit);
    }
    if let Some(timeout) = args.consumer_timeout {
        config.consumer_timeout = timeout;
    }
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    if let Some(watermark) = args.memory_high_watermark {
        config.memory_high_watermark = watermark;
    }
    if let Some(ratio) = args.memory_paging_ratio {
        config.memory_high_watermark_paging_ratio = ratio;
    }
    if let Some(max) = args.connection_max {
        config.connection_max = max;
    }
    if let Some(port) = args.management_port {
        config.management_port = port;
    }
    if let Some(port) = args.prometheus_port {
        config.prometheus_port = port;
    }
    if let Some(port) = args.tls_port {
        config.tls.port = port;
    }
    config.tls.cert = args.tls_cert.or(config.tls.cert);
    config.tls.key = args.tls_key.or(config.tls.key);
    config.tls.ca = args.tls_ca.or(config.tls.ca);
    config.cluster.node_name = args.node_name.or(config.cluster.node_name);
    if let Some(port) = args.cluster_port {
        config.cluster.port = port;
    }
    if let Some(list) = &args.cluster_peers {
        config.cluster.peers = vec![list.clone()];
    }
    config.cluster.cookie_file = args.cluster_cookie_file.or(config.cluster.cookie_file);
    // Every peer is checked before anything starts.
    let peers = warren::cluster::node::parse_peers(&config.cluster.peers.join(",")).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(name) = &config.cluster.node_name {
        warren::metrics::set_node_name(name);
    }
    // A broken TLS setup stops the start, before anything else.
    let tls = warren::tls::server_config(&config.tls).map_err(|e| anyhow::anyhow!(e))?;
    warren::metrics::mark_start();
    let fsync: FsyncPolicy = config.fsync.parse().map_err(|e: String| anyhow::anyhow!(e))?;

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    // One broker per data directory: a second one would corrupt the log.
    let lock_path = config.data_dir.join("LOCK");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        anyhow::bail!("another warren is running on data directory {}", config.data_dir.display());
    }

    let io = FileIo::new(&log_dir(&config.data_dir)).context("cannot open the log directory")?;
    let options = LogOptions {
        segment_size: config.segment_size,
        fsync,
        skip_damaged: config.skip_damaged_segments,
        compaction: config.compaction,
        disk_free_limit: config.disk_free_limit_bytes(),
    };
    let (store, recovered) = LogStore::open(Arc::new(io), options).map_err(|e| anyhow::anyhow!(e))?;
    let broker = Arc::new(Broker::new(store.clone()));
    broker.set_consumer_timeout((config.consumer_timeout > 0).then_some(config.consumer_timeout));
    broker.set_connection_max((config.connection_max > 0).then_some(config.connection_max));
    let watermark = broker
        .start_memory_monitor(config.memory_high_watermark, config.memory_high_watermark_paging_ratio)
        .context("cannot start the memory monitor")?;
    tracing::info!("memory high watermark: {watermark} bytes ({:?})", config.memory_high_watermark);
    broker.restore(&recovered).map_err(|e| anyhow::anyhow!("cannot restore the vhosts: {e}"))?;
    let seed: Vec<(String, String)> = config.users.iter().map(|u| (u.name.clone(), u.password.clone())).collect();
    let loopback: Vec<String> = config.users.iter().filter(|u| u.loopback_only).map(|u| u.name.clone()).collect();
    broker
        .access()
        .load(&recovered.definitions.parameters, &seed, loopback)
        .map_err(|e| anyhow::anyhow!("cannot restore users and permissions: {e}"))?;
    if let Some(path) = &config.load_definitions {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read load_definitions file {}", path.display()))?;
        let report = warren::definitions::import(&broker, &text)
            .map_err(|e| anyhow::anyhow!("cannot import {}: {e}", path.display()))?;
        tracing::info!("imported definitions from {}: {report:?}", path.display());
    }
    let identity = match config.cluster.port {
        0 => None,
        _ => {
            let name = warren::metrics::node_name();
            let parameters = &recovered.definitions.parameters;
            Some(warren::cluster::node::identity(&store, parameters, &name).map_err(|e| anyhow::anyhow!(e))?)
        }
    };
    drop(recovered);

    // A node of a cluster waits for the metadata group from the control
    // socket's thread (Broker::change_blocking): that needs a runtime with
    // worker threads to hand its other tasks to.
    let runtime = if config.threads <= 1 && identity.is_none() {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(config.threads.max(2)).enable_all().build()?
    };
    let reporting = broker.clone();
    let result = runtime.block_on(serve(config, broker, tls, identity.map(|i| (i, peers))));
    // What the message path spent under broker-wide locks (benches/regress.sh reads this line).
    tracing::info!("lock holds since the start: {}", reporting.lock_report());
    // Everything appended is written and synced before the process exits.
    store.shutdown();
    drop(lock);
    result
}

async fn serve(
    config: Config,
    broker: Arc<Broker>,
    tls: Option<Arc<rustls::ServerConfig>>,
    cluster: Option<(warren::cluster::node::Identity, Vec<warren::cluster::node::Peer>)>,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let cluster = match cluster {
        None => None,
        Some((identity, peers)) => {
            let port = config.cluster.port;
            let store = broker.store().clone();
            let cookie = warren::cluster::auth::Cookie::load_or_create(&config.cluster.cookie_path())
                .map_err(|e| anyhow::anyhow!(e))?;
            let addr = (config.bind, port).into();
            let node = warren::cluster::node::ClusterNode::start(identity, addr, peers, store, Arc::new(cookie))
                .await
                .with_context(|| format!("cannot listen on {}:{port} for the cluster (--cluster-port)", config.bind))?;
            let queues = warren::cluster::quorum::QueueGroups::new(node.clone(), &broker);
            let metadata = warren::cluster::metadata::MetadataGroup::start(node.clone(), &broker, queues.clone())
                .await
                .context("cannot start this node's member of the metadata group")?;
            queues.start().await;
            let addr = node.transport.local_addr();
            tracing::info!(
                "node {} (Raft id {}) cluster port listening on {addr}",
                node.identity.name,
                node.identity.id
            );
            println!("cluster port listening on {addr}");
            Some((node, metadata, queues))
        }
    };
    let control = warren::admin::bind(&config.control_socket())
        .with_context(|| format!("cannot bind control socket {}", config.control_socket().display()))?;
    let cluster_admin: Option<Arc<dyn warren::admin::ClusterAdmin>> =
        cluster.as_ref().map(|(_, _, queues)| Arc::new(warren::cluster::operator::Admin(queues.clone())) as _);
    tokio::spawn(warren::admin::serve(control, broker.clone(), cluster_admin));

    let listener = tokio::net::TcpListener::bind((config.bind, config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.bind, config.port))?;
    let addr = listener.local_addr()?;
    let mut listeners = warren::management::Listeners { amqp: Some(addr), ..Default::default() };
    let http_bind = config.management_bind.unwrap_or(config.bind);
    let management = match config.management_port {
        0 => None,
        port => Some(bind_http(http_bind, port, "management API", "--management-port").await?),
    };
    let prometheus = match config.prometheus_port {
        0 => None,
        port => Some(bind_http(http_bind, port, "Prometheus endpoint", "--prometheus-port").await?),
    };
    listeners.management = management.as_ref().and_then(|l| l.local_addr().ok());
    listeners.prometheus = prometheus.as_ref().and_then(|l| l.local_addr().ok());
    let api = warren::management::Api {
        broker: broker.clone(),
        listeners: Arc::new(listeners),
        cluster: cluster.as_ref().map(|(node, _, _)| node.clone()),
        metadata: cluster.as_ref().map(|(_, metadata, _)| metadata.clone()),
        queues: cluster.as_ref().map(|(_, _, queues)| queues.clone()),
    };
    let management_tls = tls.clone().filter(|_| config.tls.management);
    let prometheus_tls = tls.clone().filter(|_| config.tls.prometheus);
    if let Some(listener) = management {
        let api = api.clone();
        tokio::spawn(async move {
            if let Err(e) = warren::management::serve(listener, api, management_tls).await {
                tracing::error!("the management API stopped: {e}");
            }
        });
    }
    if let Some(listener) = prometheus {
        tokio::spawn(async move {
            if let Err(e) = warren::management::serve_prometheus(listener, api, prometheus_tls).await {
                tracing::error!("the Prometheus endpoint stopped: {e}");
            }
        });
    }
    if let Some(tls) = &tls {
        let listener = tokio::net::TcpListener::bind((config.bind, config.tls.port)).await.with_context(|| {
            format!(
                "cannot listen on {}:{} for amqps (choose another port with --tls-port)",
                config.bind, config.tls.port
            )
        })?;
        let addr = listener.local_addr()?;
        tracing::info!("amqps (AMQP over TLS) listening on {addr}");
        println!("amqps listening on {addr}");
        tokio::spawn(warren::server::serve_tls(listener, tls.clone(), broker.clone(), config.clone()));
    }
    tracing::info!("Warren {} listening on {addr}, data in {}", env!("CARGO_PKG_VERSION"), config.data_dir.display());
    // Tests that start the broker with --port 0 read the port from this line.
    println!("listening on {addr}");

    tokio::select! {
        _ = warren::server::serve(listener, broker.clone(), config.clone()) => {}
        _ = shutdown_signal() => {
            // The listener is gone with the serve future: no new connections.
            tracing::info!("shutting down: waiting for in-flight confirms, then closing every connection");
            tokio::spawn(async {
                shutdown_signal().await;
                tracing::warn!("second signal: exiting at once");
                std::process::exit(130);
            });
            drain(&broker).await;
        }
    }
    if let Some((node, metadata, queues)) = &cluster {
        // Leadership is handed over before the port closes.
        queues.shutdown().await;
        metadata.shutdown().await;
        node.shutdown();
    }
    let _ = std::fs::remove_file(config.control_socket());
    Ok(())
}

/// The graceful part of a shutdown: what was appended becomes durable (so
/// connections send the confirms it earned), then every client is told
/// with 320 CONNECTION_FORCED, as RabbitMQ does, and given a moment to go.
/// Each wait is bounded.
async fn drain(broker: &Broker) {
    const BOUND: std::time::Duration = std::time::Duration::from_secs(5);
    let store = broker.store();
    let target = store.appended_position();
    let mut durability = store.durability();
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let now = *durability.borrow_and_update();
        if now.position >= target || now.failed {
            break;
        }
        match tokio::time::timeout_at(deadline, durability.changed()).await {
            Ok(Ok(())) => continue,
            _ => {
                tracing::warn!("shutdown: the log did not catch up within {BOUND:?}; closing anyway");
                break;
            }
        }
    }
    let closing = broker.close_all_connections("broker forced connection closure with reason 'shutdown'");
    let deadline = tokio::time::Instant::now() + BOUND;
    while !broker.list_connections().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tracing::info!("shutdown: {closing} connection(s) closed; syncing the log");
}

/// Binds an HTTP listener and prints its address (tests read it); a port
/// in use stops the start, as it does RabbitMQ's.
async fn bind_http(ip: IpAddr, port: u16, what: &str, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind((ip, port)).await.with_context(|| {
        format!("cannot listen on {ip}:{port} for the {what} (choose another port with {flag}, 0 for none)")
    })?;
    let addr = listener.local_addr()?;
    tracing::info!("{what} listening on http://{addr}/");
    println!("{what} listening on {addr}");
    Ok(listener)
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
