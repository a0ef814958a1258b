//! Starting the real `warren` binary and killing it with SIGKILL.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a start (including recovery of the log) may take.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines of warren's log quoted in an error.
const TAIL_LINES: usize = 30;

/// How to run warren; the same for every start.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub warren: PathBuf,
    pub data_dir: PathBuf,
    /// warren's stderr, appended to across restarts.
    pub log: PathBuf,
    pub fsync: String,
    pub segment_size: u32,
    /// More arguments (a cluster node's name, port and peers).
    pub extra_args: Vec<String>,
    /// The management API's port (0: none).
    pub management_port: u16,
}

/// A running warren; killed with SIGKILL when dropped.
pub struct Broker {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The management API's address.
    pub management: Option<SocketAddr>,
    /// From spawning the process to its `listening on` line (recovery included).
    pub start_time: Duration,
}

impl Broker {
    /// Starts warren and waits for the `listening on ADDR` line on its stdout.
    /// `label` goes into the log before warren's own lines.
    pub fn start(config: &BrokerConfig, label: &str) -> anyhow::Result<Broker> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.log)
            .with_context(|| format!("cannot open warren's log file {}", config.log.display()))?;
        writeln!(log, "===== warren-crashtest: {label} =====")?;
        let mut command = Command::new(&config.warren);
        command
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--management-port",
                &config.management_port.to_string(),
                "--prometheus-port",
                "0",
                "--data-dir",
            ])
            .arg(&config.data_dir)
            .args(["--fsync", &config.fsync, "--segment-size", &config.segment_size.to_string()])
            .args(&config.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if std::env::var_os("WARREN_LOG").is_none() {
            command.env("WARREN_LOG", "info");
        }
        // Keep a start-up error short (no captured backtrace in anyhow's
        // report) so it is still in the tail quoted on failure; panics keep
        // whatever RUST_BACKTRACE asks for.
        if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
            command.env("RUST_LIB_BACKTRACE", "0");
        }
        let started = Instant::now();
        let mut child = command.spawn().with_context(|| format!("cannot run {}", config.warren.display()))?;
        let stdout = child.stdout.take().context("warren's stdout")?;

        // A thread reads stdout for the whole life of the process, so warren
        // never blocks on a full pipe; the first `listening on` is reported.
        // The management API's line comes before it.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut management = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("management API listening on ") {
                    management = addr.trim().parse::<SocketAddr>().ok();
                }
                if let Some(addr) = line.strip_prefix("listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send((addr.trim().to_string(), management));
                }
            }
        });

        let (addr, management) = match rx.recv_timeout(START_TIMEOUT) {
            Ok(found) => found,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed: the process is gone or about to be.
                let status = wait_briefly(&mut child);
                bail!(
                    "warren ({}) exited before listening{}\n{}",
                    config.warren.display(),
                    status.map(|s| format!(" ({s})")).unwrap_or_default(),
                    tail_for_error(&config.log)
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "warren did not print 'listening on' within {}s; killed it\n{}",
                    START_TIMEOUT.as_secs(),
                    tail_for_error(&config.log)
                );
            }
        };
        let start_time = started.elapsed();
        let addr: SocketAddr = match addr.parse() {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("warren printed an unparsable address {addr:?}: {e}");
            }
        };
        Ok(Broker { child: Some(child), addr, management, start_time })
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to the process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("warren is not running")?;
        let status = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// SIGKILL, then reap. Fails if warren had already exited by itself
    /// (which is a crash of its own, not the one the driver injects).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        if let Ok(Some(status)) = child.try_wait() {
            bail!("warren exited by itself before the driver killed it ({status})");
        }
        child.kill().context("cannot SIGKILL warren")?;
        child.wait().context("cannot reap warren")?;
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_briefly(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                return child.wait().ok();
            }
        }
    }
}

/// The last `lines` lines of a file (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The end of warren's log, framed for an error message.
pub fn tail_for_error(log: &Path) -> String {
    format!("last lines of warren's log {}:\n{}", log.display(), tail(log, TAIL_LINES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("warren-crashtest-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        std::fs::write(&path, (1..=50).map(|i| format!("line {i}\n")).collect::<String>()).unwrap();
        assert_eq!(tail(&path, 2), "line 49\nline 50");
        assert_eq!(tail(&path, 100).lines().count(), 50);
        assert_eq!(tail(&dir.join("missing"), 5), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broker_that_cannot_start_is_reported_with_its_log() {
        let dir = std::env::temp_dir().join(format!("warren-crashtest-nostart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // `false` exits at once without printing anything.
        let config = BrokerConfig {
            warren: PathBuf::from("false"),
            data_dir: dir.join("data"),
            log: dir.join("warren.log"),
            fsync: "batch".into(),
            segment_size: 1 << 20,
            extra_args: Vec::new(),
            management_port: 0,
        };
        let err = Broker::start(&config, "test start").err().expect("must fail").to_string();
        assert!(err.contains("exited before listening"), "{err}");
        assert!(err.contains("warren-crashtest: test start"), "the log tail is quoted: {err}");

        let config = BrokerConfig { warren: dir.join("no-such-binary"), ..config };
        let err = format!("{:#}", Broker::start(&config, "again").err().expect("must fail"));
        assert!(err.contains("cannot run"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
