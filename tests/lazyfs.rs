//! The log's files on LazyFS, the FUSE file system of the power-cut runs
//! (`../shared/power-loss/`): it keeps unsynced writes in a cache of its
//! own, and binds each name to a file in that cache. A lookup of a name
//! racing a rename of it leaves the old name bound to the renamed file, so
//! the next file created under that name shares the renamed file's pages.
//! Warren used to look the spare segment's names up from the compactor
//! thread while the spare maker renamed them: the next spare's zeros then
//! reached a live segment (storage-format.md, "The spare file").
//!
//! This test makes segments the way the writer does (from spares, then
//! written and synced) while another thread asks for the spare's size as
//! the compactor does, then checks that every segment holds what was
//! written to it, before and after LazyFS drops its cache. It needs LazyFS
//! (`../shared/power-loss/build-lazyfs.sh`; `LAZYFS_DIR`, default
//! `/opt/lazyfs`) and root for FUSE; without them it says SKIPPED and passes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use warren::store::io::{FileIo, LogIo};

const CAPACITY: u32 = 64 * 1024;
const SEGMENTS: u64 = 1500;

/// A LazyFS mount, unmounted when dropped.
struct LazyFs {
    process: Child,
    mount: PathBuf,
    fifo: PathBuf,
    /// LazyFS's own output, where it says when its cache was cleared.
    output: PathBuf,
    _dir: tempfile::TempDir,
}

impl LazyFs {
    /// Mounts LazyFS, or says why not.
    fn mount() -> Result<LazyFs, String> {
        let lazyfs_dir = PathBuf::from(std::env::var("LAZYFS_DIR").unwrap_or_else(|_| "/opt/lazyfs".into()));
        let binary = lazyfs_dir.join("lazyfs");
        if !binary.is_file() {
            return Err(format!("no LazyFS at {} (../shared/power-loss/build-lazyfs.sh builds it)", binary.display()));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("LazyFS needs root for FUSE".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (root, mount, fifo) = (dir.path().join("root"), dir.path().join("mnt"), dir.path().join("faults.fifo"));
        for d in [&root, &mount] {
            std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        }
        let made = Command::new("mkfifo").arg(&fifo).status().map_err(|e| format!("mkfifo: {e}"))?;
        if !made.success() {
            return Err("mkfifo failed".into());
        }
        let config = dir.path().join("lazyfs.toml");
        std::fs::write(
            &config,
            format!(
                "[faults]\nfifo_path=\"{}\"\n[cache]\napply_eviction=false\n[cache.simple]\ncustom_size=\"1gb\"\nblocks_per_page=1\n[filesystem]\nlog_all_operations={}\nlogfile=\"\"\n",
                fifo.display(),
                std::env::var_os("WARREN_LAZYFS_LOG").is_some()
            ),
        )
        .map_err(|e| e.to_string())?;
        let output = dir.path().join("lazyfs.log");
        let log = std::fs::File::create(&output).map_err(|e| e.to_string())?;
        let log_too = log.try_clone().map_err(|e| e.to_string())?;
        let process = Command::new(&binary)
            .arg(&mount)
            .arg("--config-path")
            .arg(&config)
            .args(["-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", root.display()))
            .arg("-f")
            .args(std::env::var("WARREN_LAZYFS_DEBUG").ok().map(|_| "-d"))
            .env("LD_LIBRARY_PATH", &lazyfs_dir)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_too))
            .spawn()
            .map_err(|e| format!("cannot run LazyFS: {e}"))?;
        let lazyfs = LazyFs { process, mount, fifo, output, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lazyfs.is_mounted() {
            if Instant::now() > deadline {
                return Err("LazyFS did not mount within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(lazyfs)
    }

    fn is_mounted(&self) -> bool {
        Command::new("mountpoint").arg("-q").arg(&self.mount).status().is_ok_and(|s| s.success())
    }

    /// Drops every write LazyFS holds that was never synced: a power cut.
    fn clear_cache(&self) {
        let cleared = || std::fs::read_to_string(&self.output).map_or(0, |s| s.matches("cache is cleared").count());
        let before = cleared();
        std::fs::write(&self.fifo, "lazyfs::clear-cache\n").expect("write to LazyFS's fault fifo");
        let deadline = Instant::now() + Duration::from_secs(10);
        while cleared() == before {
            assert!(Instant::now() < deadline, "LazyFS did not clear its cache within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.mount).status();
        let _ = self.process.kill();
        let _ = self.process.wait();
        // WARREN_LAZYFS_LOG=FILE keeps what LazyFS said (a build of it that
        // logs every operation tells who wrote what).
        if let Some(keep) = std::env::var_os("WARREN_LAZYFS_LOG") {
            let _ = std::fs::copy(&self.output, keep);
        }
    }
}

/// What segment `n` holds from offset 64: its number, over and over.
fn content(n: u64, len: usize) -> Vec<u8> {
    n.to_le_bytes().iter().copied().cycle().take(len).collect()
}

fn wrong_segments(io: &FileIo, written: &[(u64, usize)]) -> Vec<u64> {
    written
        .iter()
        .filter(|(base, len)| {
            let n = base / CAPACITY as u64;
            io.read_at(*base, 64, *len).map_or(true, |bytes| bytes[..] != content(n, *len)[..])
        })
        .map(|(base, _)| *base / CAPACITY as u64)
        .collect()
}

#[test]
fn segments_made_from_spares_keep_their_own_bytes_on_lazyfs() {
    let lazyfs = match LazyFs::mount() {
        Ok(l) => l,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let log = lazyfs.path().join("log");
    let io = Arc::new(FileIo::new(&log).expect("log directory on LazyFS"));
    let stop = Arc::new(AtomicBool::new(false));
    // As the compactor does after every round: how much do the spares take?
    let asker = {
        let (io, stop) = (io.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut asked = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::hint::black_box(io.spare_bytes());
                asked += 1;
            }
            asked
        })
    };
    let mut written = Vec::new();
    for n in 0..SEGMENTS {
        let base = n * CAPACITY as u64;
        io.create(base, CAPACITY).expect("create a segment");
        // Two passes, each synced, as the writer makes them.
        let len = 3000 + (n as usize * 37) % 20_000;
        let data = content(n, len);
        let half = len / 2;
        io.write_at(base, 64, &data[..half]).expect("write");
        io.sync(base).expect("sync");
        io.write_at(base, 64 + half as u64, &data[half..]).expect("write");
        io.sync(base).expect("sync");
        written.push((base, len));
    }
    stop.store(true, Ordering::Relaxed);
    let asked = asker.join().expect("the asking thread");
    assert!(asked > SEGMENTS, "the spare's size was asked for while segments were made ({asked} times)");
    let wrong = wrong_segments(&io, &written);
    assert!(wrong.is_empty(), "segments holding other bytes than were written to them: {wrong:?}");
    drop(io);
    lazyfs.clear_cache();
    let io = FileIo::new(&log).expect("reopen after the cut");
    let wrong = wrong_segments(&io, &written);
    assert!(wrong.is_empty(), "after a power cut, synced segments hold other bytes: {wrong:?}");
}
