//! File I/O of the log behind a small trait, so that tests can run the log
//! on a simulated disk and build the image a power cut would leave.
//!
//! Segments are addressed by their base position. [`FileIo`] is the real
//! thing: one file per segment, created at its full capacity, written with
//! `pwrite`, made durable with `fdatasync`, and read through a shared
//! read-only `mmap` handed out as `Bytes` (so message bodies read back are
//! slices of the mapping, not copies).
//!
//! A new segment is normally a spare file that a background thread already
//! filled with zeros and synced: overwriting blocks that exist makes each
//! `fdatasync` a pure data flush, a third cheaper on ext4 than writing into a
//! sparse file, whose every new block is a metadata change the sync must
//! journal. Without a ready spare the segment is created sparse. [`SimDisk`] remembers, per file, what
//! was written and what was made durable by a sync.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// The whole segment as bytes; for the real disk a live view of the file.
    fn bytes(&self, base: u64) -> io::Result<Bytes>;
    fn remove(&self, base: u64) -> io::Result<()>;
    /// Renames a damaged segment out of the log so start-up can go on without it.
    fn set_aside(&self, base: u64) -> io::Result<PathBuf>;
    /// Where segment `base` lives, for messages.
    fn describe(&self, base: u64) -> String;
}

struct OpenSegment {
    file: File,
    map: Bytes,
}

/// Segments as files in one directory.
pub struct FileIo {
    dir: PathBuf,
    open: Mutex<HashMap<u64, Arc<OpenSegment>>>,
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

    /// Starts preparing a spare of `capacity` bytes unless one is ready or
    /// being made.
    fn prepare(self: &Arc<Self>, capacity: u32) {
        {
            let mut busy = self.lock.lock();
            if *busy || self.dir.join(SPARE_READY).exists() {
                return;
            }
            *busy = true;
        }
        let maker = self.clone();
        let spawned = std::thread::Builder::new().name("warren-spare-segment".into()).spawn(move || {
            if let Err(e) = maker.fill(capacity) {
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
            open: Mutex::new(HashMap::new()),
            spare: Arc::new(SpareMaker { dir: dir.to_path_buf(), lock: Mutex::new(false) }),
        })
    }

    pub fn path(&self, base: u64) -> PathBuf {
        self.dir.join(segment_file_name(base))
    }

    fn segment(&self, base: u64) -> io::Result<Arc<OpenSegment>> {
        if let Some(seg) = self.open.lock().get(&base) {
            return Ok(seg.clone());
        }
        let file = OpenOptions::new().read(true).write(true).open(self.path(base))?;
        let seg = Arc::new(OpenSegment { map: map_file(&file)?, file });
        self.open.lock().insert(base, seg.clone());
        Ok(seg)
    }
}

fn map_file(file: &File) -> io::Result<Bytes> {
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the mapping is read-only and shared. Warren is the only writer
    // of its segment files and only appends beyond what readers look at
    // (readers only read records the writer has finished writing), so the
    // bytes a reader sees never change under it. A segment is only removed
    // once nothing live refers to it; on Linux an unlinked file stays mapped.
    let map = unsafe { memmap2::Mmap::map(file)? };
    Ok(Bytes::from_owner(map))
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
            file.set_len(capacity as u64)?;
            file
        };
        let seg = Arc::new(OpenSegment { map: map_file(&file)?, file });
        self.open.lock().insert(base, seg);
        self.spare.prepare(capacity);
        Ok(())
    }

    fn write_at(&self, base: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        self.segment(base)?.file.write_all_at(data, offset)
    }

    fn sync(&self, base: u64) -> io::Result<()> {
        self.segment(base)?.file.sync_data()
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn bytes(&self, base: u64) -> io::Result<Bytes> {
        Ok(self.segment(base)?.map.clone())
    }

    fn remove(&self, base: u64) -> io::Result<()> {
        self.open.lock().remove(&base);
        std::fs::remove_file(self.path(base))
    }

    fn set_aside(&self, base: u64) -> io::Result<PathBuf> {
        self.open.lock().remove(&base);
        let target = self.dir.join(format!("{}.damaged", segment_file_name(base)));
        std::fs::rename(self.path(base), &target)?;
        Ok(target)
    }

    fn describe(&self, base: u64) -> String {
        self.path(base).display().to_string()
    }
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
    /// When set, every sync fails (to test the fsync-failure path).
    pub fail_syncs: std::sync::atomic::AtomicBool,
}

/// Disk sectors: a power cut tears at most the last unsynced one written.
pub const SECTOR: usize = 512;

impl SimDisk {
    pub fn new() -> Arc<SimDisk> {
        Arc::new(SimDisk::default())
    }

    /// The files a power cut would leave, given a seed for the torn sector:
    /// files whose creation was never made durable by a directory sync are
    /// gone; each surviving file holds its synced bytes, plus, for the first
    /// sector that differs from the synced state, a prefix of the new bytes
    /// of random length (a torn write). Everything later is lost.
    pub fn power_cut_image(&self, seed: u64) -> BTreeMap<u64, Vec<u8>> {
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

    /// Writes an image as segment files into `dir`, to recover from with [`FileIo`].
    pub fn write_image(image: &BTreeMap<u64, Vec<u8>>, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (base, bytes) in image {
            std::fs::write(dir.join(segment_file_name(*base)), bytes)?;
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
        let mut files = self.files.lock();
        if files.contains_key(&base) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "segment exists"));
        }
        let zeros = vec![0u8; capacity as usize];
        files.insert(base, SimFile { current: zeros.clone(), durable: zeros, entry_durable: false });
        Ok(())
    }

    fn write_at(&self, base: u64, offset: u64, data: &[u8]) -> io::Result<()> {
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
        if self.fail_syncs.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::Error::other("simulated fdatasync failure (EIO)"));
        }
        let mut files = self.files.lock();
        let f = files.get_mut(&base).ok_or_else(|| not_found(base))?;
        f.durable = f.current.clone();
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        if self.fail_syncs.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::Error::other("simulated fsync failure (EIO)"));
        }
        for f in self.files.lock().values_mut() {
            f.entry_durable = true;
        }
        Ok(())
    }

    fn bytes(&self, base: u64) -> io::Result<Bytes> {
        let files = self.files.lock();
        Ok(Bytes::copy_from_slice(&files.get(&base).ok_or_else(|| not_found(base))?.current))
    }

    fn remove(&self, base: u64) -> io::Result<()> {
        self.files.lock().remove(&base).map(|_| ()).ok_or_else(|| not_found(base))
    }

    fn set_aside(&self, base: u64) -> io::Result<PathBuf> {
        self.remove(base)?;
        Ok(PathBuf::from(format!("sim:{base}.damaged")))
    }

    fn describe(&self, base: u64) -> String {
        format!("sim:{}", segment_file_name(base))
    }
}
