//! Crash recovery end to end: the real `warren-crashtest` driver SIGKILLs the
//! real `warren` under confirmed publishing and acking, restarts it, and
//! checks that every confirmed, unacked message came back intact.
//!
//! And a cluster's: the real `warren-clustertest` kills and pauses the
//! leader of a quorum queue of three real nodes under load, then checks
//! that no confirmed message was lost.
//!
//! The long run is opt-in: `cargo test --test crash -- --ignored`.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs the driver against the `warren` next to it in the workspace's
/// target directory (`cargo test` from the workspace root builds both),
/// killing it if it outlives `limit`. Returns its exit status and stdout +
/// stderr.
fn crashtest(args: &[&str], limit: Duration) -> (ExitStatus, String) {
    run_driver(env!("CARGO_BIN_EXE_warren-crashtest"), args, limit)
}

/// As [`crashtest`], for the cluster driver.
fn clustertest(args: &[&str], limit: Duration) -> (ExitStatus, String) {
    run_driver(env!("CARGO_BIN_EXE_warren-clustertest"), args, limit)
}

fn run_driver(driver: &str, args: &[&str], limit: Duration) -> (ExitStatus, String) {
    let driver = std::path::Path::new(driver);
    let warren = driver.with_file_name("warren");
    assert!(
        warren.exists(),
        "{} is missing: run `cargo test` from the workspace root (it builds the broker too)",
        warren.display()
    );
    let mut child = Command::new(driver)
        .arg("--warren")
        .arg(&warren)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", driver.display()));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ]
    .into_iter()
    .map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    })
    .collect();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for warren-crashtest") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let output: String = readers.into_iter().map(|r| r.join().unwrap_or_default()).collect();
            panic!("{} did not finish within {limit:?}; its output:\n{output}", driver.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = readers.into_iter().map(|r| r.join().unwrap_or_default()).collect();
    (status, output)
}

/// One `cycle N/M ok: key=value ...` line.
struct Cycle {
    ok: bool,
    fields: HashMap<String, u64>,
}

impl Cycle {
    fn get(&self, name: &str) -> u64 {
        *self.fields.get(name).unwrap_or_else(|| panic!("no {name}= in a cycle line"))
    }
}

fn cycles(output: &str) -> Vec<Cycle> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cycle ")?;
            let (head, fields) = rest.split_once(": ")?;
            let ok = head.ends_with(" ok");
            let fields = fields
                .split_whitespace()
                .filter_map(|f| f.split_once('='))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect();
            Some(Cycle { ok, fields })
        })
        .collect()
}

/// The driver passed `n` cycles, checked real traffic in them, and found
/// nothing lost or corrupt.
fn assert_clean_run(n: usize, status: ExitStatus, output: &str) {
    assert!(status.success(), "warren-crashtest failed ({status}):\n{output}");
    assert!(output.lines().any(|l| l == format!("{n} passed, 0 failed")), "no '{n} passed, 0 failed' line:\n{output}");
    let cycles = cycles(output);
    assert_eq!(cycles.len(), n, "expected {n} cycle lines:\n{output}");
    for (i, c) in cycles.iter().enumerate() {
        assert!(c.ok, "cycle {} failed:\n{output}", i + 1);
        assert_eq!((c.get("lost"), c.get("corrupt")), (0, 0), "cycle {}:\n{output}", i + 1);
    }
    let sum = |name: &str| cycles.iter().map(|c| c.get(name)).sum::<u64>();
    // A run that published nothing, or whose confirms never arrived, proves
    // nothing: it must not pass.
    assert!(sum("confirmed") > 0, "no message was confirmed in {n} cycles:\n{output}");
    assert!(sum("expected") > 0, "no confirmed message had to survive in {n} cycles:\n{output}");
    assert!(sum("acked") > 0, "the consumer acked nothing in {n} cycles:\n{output}");
    let busy = cycles.iter().filter(|c| c.get("expected") > 0).count();
    assert!(busy * 2 >= n, "only {busy} of {n} cycles had confirmed messages to check:\n{output}");
}

#[test]
fn twenty_kills_lose_no_confirmed_message() {
    let (status, output) =
        crashtest(&["--cycles", "20", "--seed", "20250917", "--max-run-ms", "1000"], Duration::from_secs(900));
    assert_clean_run(20, status, &output);
}

#[test]
#[ignore = "long: about six minutes in a debug build; run with --ignored"]
fn two_hundred_kills_lose_no_confirmed_message() {
    let (status, output) = crashtest(&["--cycles", "200", "--seed", "7"], Duration::from_secs(3600));
    assert_clean_run(200, status, &output);
}

/// The cluster driver: three nodes, the quorum queue's leader killed three
/// times and paused once, and one partition of each shape, under confirmed
/// publishers and acking consumers on random nodes; every confirmed
/// message is delivered, nothing unexpected, no confirm from a minority.
#[test]
fn a_cluster_whose_leader_is_killed_paused_and_cut_off_loses_no_confirmed_message() {
    let args = ["--kills", "3", "--pauses", "1", "--partitions", "1", "--seed", "21"];
    let (status, output) = clustertest(&args, Duration::from_secs(600));
    assert!(status.success(), "warren-clustertest failed ({status}):\n{output}");
    let summary = output.lines().find(|l| l.starts_with("sent ")).unwrap_or_else(|| panic!("no summary:\n{output}"));
    let figure = |name: &str| -> u64 {
        let at = summary.find(&format!("{name} ")).unwrap_or_else(|| panic!("no {name} in {summary}"));
        let digits: String = summary[at + name.len() + 1..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap_or_else(|_| panic!("{name} in {summary}"))
    };
    assert_eq!((figure("lost"), figure("unexpected")), (0, 0), "{output}");
    assert!(
        figure("confirmed") > 0 && figure("delivered") >= figure("confirmed"),
        "real traffic was checked: {summary}"
    );
    assert_eq!(output.lines().filter(|l| l.starts_with("fault ")).count(), 7, "seven faults made:\n{output}");
    for shape in ["node isolated", "leader isolated", "bridge"] {
        assert!(output.lines().any(|l| l.contains(&format!(": {shape} ("))), "no {shape} partition:\n{output}");
    }
    assert!(output.contains("confirms from a node without a majority: 0"), "{output}");
    assert!(output.lines().any(|l| l == "PASS"), "{output}");
}

#[test]
fn a_broker_that_cannot_start_is_reported_with_its_log() {
    let dir = tempfile::tempdir().expect("scratch dir");
    // A file where warren wants its log directory: warren refuses to start.
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("log"), b"a file where warren wants its log directory").expect("blocker");
    let (status, output) =
        crashtest(&["--cycles", "1", "--data-dir", data.to_str().expect("utf-8 path")], Duration::from_secs(120));
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("exited before listening"), "{output}");
    assert!(output.contains("last lines of warren's log"), "{output}");
    assert!(output.contains("warren-crashtest: start"), "the log tail is quoted:\n{output}");
}
