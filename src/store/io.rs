//! File I/O of the log behind a small trait, so that tests can run the log
//! on a simulated disk and build the image a power cut would leave.
//!
//! Segments are addressed by their base position. [`FileIo`] is the real
//! thing: one file per segment, created at its full capacity, written with
//! `pwrite`, made durable with `fdatasync`, and read back with `pread`.
//! Nothing is memory-mapped: a bad sector or a file truncated behind
//! Warren's back must be an I/O error that names the segment, not a SIGBUS
//! that kills the broker. Replay reads each segment with one large read
//! into a reused buffer; that costs more than the mapping it replaced did
//! (BENCHMARKS.md: 0.54 s instead of 0.37 s for 500,000 messages with a warm
//! page cache), the price of an I/O error that can be handled.
//!
//! A segment file is opened once and its handle kept until the segment is
//! removed; a removed segment is never opened again, so a reader racing with
//! compaction gets NotFound (and looks the message up again) instead of
//! re-opening a deleted file whose space would then never be freed.
//!
//! A new segment is normally the spare file that [`super::spare`] keeps
//! filled with zeros and synced; without a ready spare the segment is
//! created sparse. [`SimDisk`] (in [`super::sim_disk`]) remembers, per
//! file, what was written and what was made durable by a sync.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::format::{parse_segment_file_name, segment_file_name};
pub use super::sim_disk::{DiskImage, PAGE, SECTOR, SimDisk};
use super::spare::SpareMaker;

pub trait LogIo: Send + Sync {
    /// Bases of the segment files present, in log order.
    fn list(&self) -> io::Result<Vec<u64>>;
    /// Creates a zero-filled segment file of `capacity` bytes.
    fn create(&self, base: u64, capacity: u32) -> io::Result<()>;
    fn write_at(&self, base: u64, offset: u64, data: &[u8]) -> io::Result<()>;
    /// fdatasync of one segment.
    fn sync(&self, base: u64) -> io::Result<()>;
    /// fsync of the directory, after segment files were created or removed.
    fn sync_dir(&self) -> io::Result<()>;
    /// The whole segment file.
    fn read_all(&self, base: u64) -> io::Result<Bytes>;
    /// `len` bytes at `offset`; an error (UnexpectedEof) when the file is shorter.
    fn read_at(&self, base: u64, offset: u64, len: usize) -> io::Result<Bytes>;
    /// The whole segment file into `buf` (replaced), so that replay can
    /// reuse one buffer for many segments instead of faulting in fresh
    /// memory for each.
    fn read_all_into(&self, base: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let bytes = self.read_all(base)?;
        buf.clear();
        buf.extend_from_slice(&bytes);
        Ok(())
    }
    fn remove(&self, base: u64) -> io::Result<()>;
    /// Renames a damaged segment out of the log so start-up can go on without it.
    fn set_aside(&self, base: u64) -> io::Result<PathBuf>;
    /// Where segment `base` lives, for messages.
    fn describe(&self, base: u64) -> String;
    /// Bytes free for the log on its file system, when known.
    fn free_space(&self) -> Option<u64> {
        None
    }
    /// Bytes the spare segment file occupies (0 when there is none).
    fn spare_bytes(&self) -> u64 {
        0
    }
}

/// Whether an I/O error means the file system is out of space (or quota):
/// a condition that passes, unlike a failed fdatasync.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

#[derive(Default)]
struct OpenFiles {
    open: HashMap<u64, Arc<File>>,
    /// Removed segments: never opened again.
    removed: HashSet<u64>,
}

/// Segments as files in one directory.
pub struct FileIo {
    dir: PathBuf,
    files: Mutex<OpenFiles>,
    spare: Arc<SpareMaker>,
}

impl FileIo {
    pub fn new(dir: &Path) -> io::Result<FileIo> {
        std::fs::create_dir_all(dir)?;
        Ok(FileIo {
            dir: dir.to_path_buf(),
            files: Mutex::new(OpenFiles::default()),
            spare: Arc::new(SpareMaker::open(dir)),
        })
    }

    pub fn path(&self, base: u64) -> PathBuf {
        self.dir.join(segment_file_name(base))
    }

    fn segment(&self, base: u64) -> io::Result<Arc<File>> {
        let mut files = self.files.lock();
        if let Some(file) = files.open.get(&base) {
            return Ok(file.clone());
        }
        if files.removed.contains(&base) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("segment {base} was removed")));
        }
        let file = Arc::new(OpenOptions::new().read(true).write(true).open(self.path(base))?);
        files.open.insert(base, file.clone());
        Ok(file)
    }
}

/// Reads exactly `len` bytes at `offset`, or fails naming a short file.
fn pread_exact(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    pread_exact_into(file, offset, &mut buf)?;
    Ok(buf)
}

/// Fills `buf` from `offset`, or fails naming a short file.
fn pread_exact_into(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let len = buf.len();
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file ends at {} bytes, before offset {}", offset + done as u64, offset + len as u64),
                ));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl LogIo for FileIo {
    fn list(&self) -> io::Result<Vec<u64>> {
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(base) = entry.file_name().to_str().and_then(parse_segment_file_name) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        Ok(bases)
    }

    fn create(&self, base: u64, capacity: u32) -> io::Result<()> {
        let path = self.path(base);
        if path.exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
        }
        let file = if self.spare.take(capacity, &path) {
            OpenOptions::new().read(true).write(true).open(&path)?
        } else {
            let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
            if let Err(e) = file.set_len(capacity as u64) {
                // Leave nothing behind, so that a retry starts clean.
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
            file
        };
        self.files.lock().open.insert(base, Arc::new(file));
        self.spare.prepare(capacity);
        Ok(())
    }

    fn write_at(&self, base: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        self.segment(base)?.write_all_at(data, offset)
    }

    fn sync(&self, base: u64) -> io::Result<()> {
        self.segment(base)?.sync_data()
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn read_all(&self, base: u64) -> io::Result<Bytes> {
        let file = self.segment(base)?;
        let len = file.metadata()?.len();
        let len = usize::try_from(len).map_err(|_| io::Error::other("segment file too large"))?;
        Ok(Bytes::from(pread_exact(&file, 0, len)?))
    }

    fn read_at(&self, base: u64, offset: u64, len: usize) -> io::Result<Bytes> {
        let file = self.segment(base)?;
        Ok(Bytes::from(pread_exact(&file, offset, len)?))
    }

    fn read_all_into(&self, base: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let file = self.segment(base)?;
        let len = usize::try_from(file.metadata()?.len()).map_err(|_| io::Error::other("segment file too large"))?;
        // Growing zeroes only the new part: a buffer reused for segments of
        // one size is not written twice.
        buf.resize(len, 0);
        pread_exact_into(&file, 0, buf)
    }

    fn remove(&self, base: u64) -> io::Result<()> {
        {
            let mut files = self.files.lock();
            files.open.remove(&base);
            files.removed.insert(base);
        }
        std::fs::remove_file(self.path(base))
    }

    fn set_aside(&self, base: u64) -> io::Result<PathBuf> {
        {
            let mut files = self.files.lock();
            files.open.remove(&base);
            files.removed.insert(base);
        }
        let target = self.dir.join(format!("{}.damaged", segment_file_name(base)));
        std::fs::rename(self.path(base), &target)?;
        Ok(target)
    }

    fn describe(&self, base: u64) -> String {
        self.path(base).display().to_string()
    }

    fn free_space(&self) -> Option<u64> {
        free_bytes(&self.dir)
    }

    fn spare_bytes(&self) -> u64 {
        self.spare.bytes()
    }
}

/// Bytes available to an unprivileged writer on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to
    // writable memory of the right type; statvfs fills it or fails.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}
