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
//! A new segment is normally a spare file that a background thread already
//! filled with zeros and synced: overwriting blocks that exist makes each
//! `fdatasync` a pure data flush, a third cheaper on ext4 than writing into a
//! sparse file, whose every new block is a metadata change the sync must
//! journal. Without a ready spare the segment is created sparse. [`SimDisk`]
//! remembers, per file, what was written and what was made durable by a sync.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use super::format::{parse_segment_file_name, segment_file_name};

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

/// Keeps one zero-filled, synced file ready to become the next segment.
struct SpareMaker {
    dir: PathBuf,
    /// Held while the ready spare is renamed, by either side.
    lock: Mutex<bool>,
}

const SPARE_READY: &str = "spare.ready";
const SPARE_PARTIAL: &str = "spare.partial";

impl SpareMaker {
    /// Takes the ready spare as `target` if it has the right size.
    fn take(&self, capacity: u32, target: &Path) -> bool {
        let _guard = self.lock.lock();
        let ready = self.dir.join(SPARE_READY);
        match std::fs::metadata(&ready) {
            Ok(m) if m.len() == capacity as u64 => std::fs::rename(&ready, target).is_ok(),
            _ => false,
        }
    }

    /// Starts preparing a spare of `capacity` bytes unless one of that size
    /// is ready or one is being made. A ready spare of another size (left by
    /// a run with another segment size) is replaced.
    fn prepare(self: &Arc<Self>, capacity: u32) {
        {
            let mut busy = self.lock.lock();
            if *busy {
                return;
            }
            let ready = self.dir.join(SPARE_READY);
            match std::fs::metadata(&ready) {
                Ok(m) if m.len() == capacity as u64 => return,
                Ok(_) => {
                    let _ = std::fs::remove_file(&ready);
                }
                Err(_) => {}
            }
            *busy = true;
        }
        let maker = self.clone();
        let spawned = std::thread::Builder::new().name("warren-spare-segment".into()).spawn(move || {
            if let Err(e) = maker.fill(capacity) {
                // A half-made spare only takes space the log may need.
                let _ = std::fs::remove_file(maker.dir.join(SPARE_PARTIAL));
                tracing::warn!("could not prepare a spare log segment (new segments will be sparse): {e}");
            }
            *maker.lock.lock() = false;
        });
        if spawned.is_err() {
            *self.lock.lock() = false;
        }
    }

    fn fill(&self, capacity: u32) -> io::Result<()> {
        let partial = self.dir.join(SPARE_PARTIAL);
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&partial)?;
        let zeros = vec![0u8; 1 << 20];
        let mut written = 0u64;
        while written < capacity as u64 {
            let n = (capacity as u64 - written).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], written)?;
            written += n as u64;
        }
        file.sync_data()?;
        let _guard_rename = self.lock.lock();
        std::fs::rename(&partial, self.dir.join(SPARE_READY))
    }
}

impl FileIo {
    pub fn new(dir: &Path) -> io::Result<FileIo> {
        std::fs::create_dir_all(dir)?;
        // A half-made spare from a crash is useless; a ready one is reused.
        let _ = std::fs::remove_file(dir.join(SPARE_PARTIAL));
        Ok(FileIo {
            dir: dir.to_path_buf(),
            files: Mutex::new(OpenFiles::default()),
            spare: Arc::new(SpareMaker { dir: dir.to_path_buf(), lock: Mutex::new(false) }),
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
        [SPARE_READY, SPARE_PARTIAL]
            .iter()
            .filter_map(|name| std::fs::metadata(self.dir.join(name)).ok())
            .map(|m| m.len())
            .sum()
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

#[derive(Debug, Clone, Default)]
struct SimFile {
    /// What the running process sees.
    current: Vec<u8>,
    /// What a sync made durable.
    durable: Vec<u8>,
    /// Whether the file's creation survived a directory sync.
    entry_durable: bool,
}

/// A simulated disk: it keeps, per file, the bytes written and the bytes a
/// sync made durable, and builds the image a power cut would leave.
#[derive(Default)]
pub struct SimDisk {
    files: Mutex<BTreeMap<u64, SimFile>>,
    /// Files removed since the last directory sync: a power cut may bring
    /// them back (with their durable bytes).
    removed: Mutex<BTreeMap<u64, SimFile>>,
    /// When set, every sync fails (to test the fsync-failure path).
    pub fail_syncs: AtomicBool,
    /// When set, writes and creations fail as on a full disk (ENOSPC).
    pub disk_full: AtomicBool,
    /// When set, the next write panics (to test the writer's supervision).
    pub panic_on_write: AtomicBool,
    /// Segments whose reads fail with EIO, as on a bad sector.
    pub unreadable: Mutex<HashSet<u64>>,
}

/// Disk sectors: a power cut tears at most the last unsynced one written.
pub const SECTOR: usize = 512;
/// Pages the kernel writes back independently of each other.
pub const PAGE: usize = 4096;

/// The image of the disk after a power cut: segment contents by base.
pub type DiskImage = BTreeMap<u64, Vec<u8>>;

impl SimDisk {
    pub fn new() -> Arc<SimDisk> {
        Arc::new(SimDisk::default())
    }

    /// A disk holding exactly `image`, every byte and file durable.
    pub fn from_image(image: &DiskImage) -> Arc<SimDisk> {
        let disk = SimDisk::default();
        {
            let mut files = disk.files.lock();
            for (base, bytes) in image {
                files.insert(*base, SimFile { current: bytes.clone(), durable: bytes.clone(), entry_durable: true });
            }
        }
        Arc::new(disk)
    }

    /// The files a power cut would leave if the disk wrote unsynced data in
    /// order, given a seed for the torn sector: files whose creation was
    /// never made durable by a directory sync are gone; each surviving file
    /// holds its synced bytes, plus, for the first sector that differs from
    /// the synced state, a prefix of the new bytes of random length (a torn
    /// write). Everything later is lost.
    pub fn power_cut_image(&self, seed: u64) -> DiskImage {
        let mut rng = fastrand::Rng::with_seed(seed);
        let files = self.files.lock();
        let mut image = BTreeMap::new();
        for (base, f) in files.iter() {
            if !f.entry_durable {
                continue;
            }
            let mut bytes = f.durable.clone();
            if let Some(first_diff) = (0..f.current.len()).find(|&i| f.current.get(i) != f.durable.get(i)) {
                let sector_start = first_diff / SECTOR * SECTOR;
                let sector_end = (sector_start + SECTOR).min(f.current.len());
                let torn_end = rng.usize(first_diff..=sector_end);
                if bytes.len() < torn_end {
                    bytes.resize(torn_end, 0);
                }
                bytes[first_diff..torn_end].copy_from_slice(&f.current[first_diff..torn_end]);
            }
            image.insert(*base, bytes);
        }
        image
    }

    /// The files a power cut would leave when the kernel writes unsynced
    /// pages back in any order: every 4 KiB page that differs from its
    /// synced state independently reached the disk whole, not at all, or
    /// in part (some of its sectors, one of them torn at a random byte). A
    /// file created since the last directory sync may or may not exist; a
    /// file removed since then may come back with its synced bytes.
    pub fn power_cut_image_any_order(&self, seed: u64) -> DiskImage {
        let mut rng = fastrand::Rng::with_seed(seed);
        let files = self.files.lock();
        let mut image = BTreeMap::new();
        for (base, f) in files.iter() {
            if !f.entry_durable && rng.bool() {
                continue;
            }
            let mut bytes = f.durable.clone();
            if bytes.len() < f.current.len() {
                bytes.resize(f.current.len(), 0);
            }
            for page_start in (0..f.current.len()).step_by(PAGE) {
                let page_end = (page_start + PAGE).min(f.current.len());
                let new = &f.current[page_start..page_end];
                if f.durable.get(page_start..page_end) == Some(new) {
                    continue;
                }
                match rng.u8(0..10) {
                    0..4 => bytes[page_start..page_end].copy_from_slice(new),
                    4..8 => {}
                    _ => {
                        let torn = rng.usize(page_start..page_end) / SECTOR * SECTOR;
                        for sector in (page_start..page_end).step_by(SECTOR) {
                            let end = (sector + SECTOR).min(page_end);
                            if sector == torn {
                                let cut = rng.usize(sector..=end);
                                bytes[sector..cut].copy_from_slice(&f.current[sector..cut]);
                            } else if rng.bool() {
                                bytes[sector..end].copy_from_slice(&f.current[sector..end]);
                            }
                        }
                    }
                }
            }
            image.insert(*base, bytes);
        }
        for (base, f) in self.removed.lock().iter() {
            if f.entry_durable && rng.bool() {
                image.insert(*base, f.durable.clone());
            }
        }
        image
    }

    /// The bytes a synced file holds now (for tests that damage them).
    pub fn durable_bytes(&self, base: u64) -> Option<Vec<u8>> {
        self.files.lock().get(&base).map(|f| f.durable.clone())
    }

    /// Writes an image as segment files into `dir`, to recover from with [`FileIo`].
    pub fn write_image(image: &DiskImage, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (base, bytes) in image {
            std::fs::write(dir.join(segment_file_name(*base)), bytes)?;
        }
        Ok(())
    }

    fn check_space(&self) -> io::Result<()> {
        if self.disk_full.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "simulated full disk (ENOSPC)"));
        }
        Ok(())
    }
}

fn not_found(base: u64) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no simulated segment {base}"))
}

impl LogIo for SimDisk {
    fn list(&self) -> io::Result<Vec<u64>> {
        Ok(self.files.lock().keys().copied().collect())
    }

    fn create(&self, base: u64, capacity: u32) -> io::Result<()> {
        self.check_space()?;
        let mut files = self.files.lock();
        if files.contains_key(&base) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "segment exists"));
        }
        let zeros = vec![0u8; capacity as usize];
        files.insert(base, SimFile { current: zeros.clone(), durable: zeros, entry_durable: false });
        Ok(())
    }

    fn write_at(&self, base: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.panic_on_write.swap(false, Ordering::Relaxed) {
            panic!("simulated bug in the write path");
        }
        self.check_space()?;
        let mut files = self.files.lock();
        let f = files.get_mut(&base).ok_or_else(|| not_found(base))?;
        let end = offset as usize + data.len();
        if f.current.len() < end {
            f.current.resize(end, 0);
        }
        f.current[offset as usize..end].copy_from_slice(data);
        Ok(())
    }

    fn sync(&self, base: u64) -> io::Result<()> {
        if self.fail_syncs.load(Ordering::Relaxed) {
            return Err(io::Error::other("simulated fdatasync failure (EIO)"));
        }
        let mut files = self.files.lock();
        let f = files.get_mut(&base).ok_or_else(|| not_found(base))?;
        f.durable = f.current.clone();
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        if self.fail_syncs.load(Ordering::Relaxed) {
            return Err(io::Error::other("simulated fsync failure (EIO)"));
        }
        for f in self.files.lock().values_mut() {
            f.entry_durable = true;
        }
        self.removed.lock().clear();
        Ok(())
    }

    fn read_all(&self, base: u64) -> io::Result<Bytes> {
        if self.unreadable.lock().contains(&base) {
            return Err(io::Error::other("simulated read error (EIO)"));
        }
        let files = self.files.lock();
        Ok(Bytes::copy_from_slice(&files.get(&base).ok_or_else(|| not_found(base))?.current))
    }

    fn read_at(&self, base: u64, offset: u64, len: usize) -> io::Result<Bytes> {
        if self.unreadable.lock().contains(&base) {
            return Err(io::Error::other("simulated read error (EIO)"));
        }
        let files = self.files.lock();
        let current = &files.get(&base).ok_or_else(|| not_found(base))?.current;
        let start = offset as usize;
        current
            .get(start..start + len)
            .map(Bytes::copy_from_slice)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the segment"))
    }

    fn remove(&self, base: u64) -> io::Result<()> {
        let f = self.files.lock().remove(&base).ok_or_else(|| not_found(base))?;
        self.removed.lock().insert(base, f);
        Ok(())
    }

    fn set_aside(&self, base: u64) -> io::Result<PathBuf> {
        self.files.lock().remove(&base).ok_or_else(|| not_found(base))?;
        Ok(PathBuf::from(format!("sim:{base}.damaged")))
    }

    fn describe(&self, base: u64) -> String {
        format!("sim:{}", segment_file_name(base))
    }
}
