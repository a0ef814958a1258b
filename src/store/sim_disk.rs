//! A simulated disk for power-cut tests: it keeps, per file, the bytes
//! written and the bytes a sync made durable, and builds the images a power
//! cut could leave (unsynced data written back in order with the first
//! sector torn, or unsynced 4 KiB pages in any order, each whole, missing or
//! torn). Files created or removed since the last directory sync may or may
//! not survive a cut.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;

use super::format::segment_file_name;
use super::io::LogIo;

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
    /// Held by [`SimDisk::hold_syncs`]: syncs wait for it, so that a test
    /// can cut the power while a writer pass is written and not yet synced.
    sync_gate: Mutex<()>,
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

    /// Holds every file sync until the guard is dropped.
    pub fn hold_syncs(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.sync_gate.lock()
    }

    /// Whether any file holds bytes no sync made durable.
    pub fn has_unsynced(&self) -> bool {
        self.files.lock().values().any(|f| f.current != f.durable)
    }

    /// The bytes a synced file holds now (for tests that damage them).
    pub fn durable_bytes(&self, base: u64) -> Option<Vec<u8>> {
        self.files.lock().get(&base).map(|f| f.durable.clone())
    }

    /// Changes bytes of a file behind the log's back, both what the running
    /// process reads and what the medium holds: a fault, for tests.
    pub fn overwrite(&self, base: u64, offset: usize, bytes: &[u8]) -> io::Result<()> {
        let mut files = self.files.lock();
        let f = files.get_mut(&base).ok_or_else(|| not_found(base))?;
        let end = offset + bytes.len();
        if f.current.len() < end || f.durable.len() < end {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "overwrite past the end of the file"));
        }
        f.current[offset..end].copy_from_slice(bytes);
        f.durable[offset..end].copy_from_slice(bytes);
        Ok(())
    }

    /// Writes an image as segment files into `dir`, to recover from with [`super::io::FileIo`].
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
        drop(self.sync_gate.lock());
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
