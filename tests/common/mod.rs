//! Test harness: starts the real `warren` binary on a port chosen at run
//! time, in a scratch data directory, and stops it with SIGKILL on drop.
#![allow(dead_code)]

pub mod amqp;
pub mod cluster;
pub mod http;
pub mod proxy;
pub mod quorum;
pub mod raw;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub struct Broker {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The management API and Prometheus endpoint, when started with them
    /// ([`Broker::start_with_http`]).
    pub management: Option<SocketAddr>,
    pub prometheus: Option<SocketAddr>,
    /// The amqps listener, when started with a TLS certificate.
    pub tls: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Keeps the scratch directory alive for the broker's lifetime.
    _scratch: Option<tempfile::TempDir>,
}

impl Broker {
    /// A broker on 127.0.0.1 with a free port and a fresh data directory.
    pub fn start() -> Broker {
        let scratch = tempfile::tempdir().expect("scratch dir");
        let dir = scratch.path().join("data");
        let mut broker = Broker::start_in(&dir, &[]);
        broker._scratch = Some(scratch);
        broker
    }

    /// A broker with its management API and Prometheus endpoint on free
    /// ports picked at run time (tried again if another process took one
    /// in between).
    pub fn start_with_http() -> Broker {
        let scratch = tempfile::tempdir().expect("scratch dir");
        let dir = scratch.path().join("data");
        let mut broker = Broker::start_in_with_http(&dir, &[]);
        broker._scratch = Some(scratch);
        broker
    }

    /// As [`Broker::start_with_http`], on an existing data directory.
    pub fn start_in_with_http(data_dir: &Path, extra: &[&str]) -> Broker {
        for attempt in 0..5 {
            let (management, prometheus) = (free_port().to_string(), free_port().to_string());
            let mut args = vec!["--management-port", &management, "--prometheus-port", &prometheus];
            args.extend_from_slice(extra);
            match Broker::try_start_in(data_dir, &args) {
                Ok(broker) => return broker,
                Err(log) if attempt < 4 && log.contains("cannot listen") => continue,
                Err(log) => panic!("warren exited before listening; its log:\n{log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// A broker on an existing data directory (for restarts), with extra
    /// flags; no management API or Prometheus endpoint unless asked for.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Broker {
        let mut args = vec!["--management-port", "0", "--prometheus-port", "0"];
        args.extend_from_slice(extra);
        Broker::try_start_in(data_dir, &args)
            .unwrap_or_else(|log| panic!("warren exited before listening; its log:\n{log}"))
    }

    /// Starts warren; Err(its log) if it exits before listening.
    fn try_start_in(data_dir: &Path, extra: &[&str]) -> Result<Broker, String> {
        let log_path = data_dir.with_extension("log");
        std::fs::create_dir_all(data_dir).expect("data dir");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["--bind", "127.0.0.1", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("WARREN_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start warren");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut management, mut prometheus, mut tls) = (None, None, None);
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        break addr.trim().parse().expect("address");
                    } else if let Some(addr) = line.strip_prefix("management API listening on ") {
                        management = Some(addr.trim().parse().expect("address"));
                    } else if let Some(addr) = line.strip_prefix("Prometheus endpoint listening on ") {
                        prometheus = Some(addr.trim().parse().expect("address"));
                    } else if let Some(addr) = line.strip_prefix("amqps listening on ") {
                        tls = Some(addr.trim().parse().expect("address"));
                    }
                }
                _ => {
                    let _ = child.wait();
                    return Err(std::fs::read_to_string(&log_path).unwrap_or_default());
                }
            }
        };
        // Keep draining stdout so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Broker {
            child: Some(child),
            addr,
            management,
            prometheus,
            tls,
            data_dir: data_dir.to_path_buf(),
            _scratch: None,
        })
    }

    /// The management API's base URL.
    pub fn management_url(&self) -> String {
        format!("http://{}/api", self.management.expect("started with start_with_http"))
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// The broker's log so far (tests print it when they fail).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_sigterm(child.id());
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The broker process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The exit status once the process has ended (it is then reaped).
    pub fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Runs warrenctl against this broker.
    pub fn warrenctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_warrenctl"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .output()
            .expect("run warrenctl")
    }
}

/// The segment files of a data directory's log, in log order.
pub fn segment_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join("log"))
        .expect("log directory")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    files
}

/// A port free now on 127.0.0.1 (the OS picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// `count` different ports free now on 127.0.0.1, below the kernel's
/// range for outgoing connections, for listeners that must get the same
/// port again after a restart (a node's cluster port, which its peers
/// know): a port of that range may meanwhile be taken as the local end of
/// some connection (another node's to a third), and stay taken for good.
/// Where that range starts too low, the OS picks them.
pub fn free_listen_ports(count: usize) -> Vec<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let mut ports: Vec<u16> = Vec::with_capacity(count);
    let mut tries = 0;
    while ports.len() < count {
        let port = if low > 10_000 && tries < 10_000 {
            tries += 1;
            fastrand::u16(10_000..low)
        } else {
            free_port()
        };
        if !ports.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    ports
}

/// Sends SIGTERM through the `kill` command, so the harness needs no libc.
fn send_sigterm(pid: u32) {
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Prints the end of each broker's log (`<data dir>.log`) if the test
/// fails: a cluster test's nodes are several processes, and their logs
/// say why they disagree.
pub struct LogsOnFailure(pub Vec<std::path::PathBuf>);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for dir in &self.0 {
                let log = std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(80).collect();
                eprintln!("---- {} ----", dir.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}
