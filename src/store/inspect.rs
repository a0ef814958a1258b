//! Read-only inspection of a log directory: the helpers behind `warren-dump`.
//!
//! Nothing here decodes bytes itself: segment headers and records go through
//! [`super::format`], and the live/dead accounting is the broker's own replay
//! ([`super::recovery::recover`]) run over `ReadOnlyIo`, a [`LogIo`] that
//! reads segment files with `std::fs::read` and never opens anything for
//! writing. So the inspector is safe on the data directory of a running
//! broker, and what it calls live is exactly what a restart would rebuild.
//!
//! A running broker may be in the middle of a write to its newest segment,
//! so the end of that segment is judged as recovery judges it: a bad record
//! with no valid record anywhere after it is a torn tail (the end of written
//! data), not damage. A read that races with a write can also see a newer
//! page before an older one; the newest segment is therefore read again
//! (a few times) when it looks damaged, and only damage that stays is reported.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;

use super::format::*;
use super::io::LogIo;
use super::log::type_name;
use super::recovery::{Recovered, recover};
pub use super::verify::*;

/// File name suffix of a segment set aside by `--skip-damaged-segments`.
pub const SET_ASIDE_SUFFIX: &str = ".wal.damaged";

/// How often the newest segment is read again when it looks damaged, to
/// rule out a read racing with the broker's write.
const NEWEST_READ_ATTEMPTS: usize = 4;

/// Every record type code, in order; names come from [`type_name`].
pub const RECORD_TYPES: [u8; 15] = [
    TYPE_EXCHANGE_DECLARE,
    TYPE_EXCHANGE_DELETE,
    TYPE_QUEUE_DECLARE,
    TYPE_QUEUE_DELETE,
    TYPE_BINDING_ADD,
    TYPE_BINDING_REMOVE,
    TYPE_MESSAGE,
    TYPE_ACK,
    TYPE_DELIVERED,
    TYPE_ID_WATERMARK,
    TYPE_GROUP,
    TYPE_PARAMETER,
    TYPE_PARAMETER_DELETE,
    TYPE_RAFT_ENTRY,
    TYPE_RAFT_STATE,
];

/// The type code of a record type name (`message`, `ack`, `queue.declare`…).
pub fn type_code(name: &str) -> Option<u8> {
    RECORD_TYPES.iter().copied().find(|code| type_name(*code) == name)
}

/// Why a directory cannot be inspected.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}: no such file or directory")]
    Missing(PathBuf),
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "{0} is not a Warren data directory: it has no log/ directory and no segment files (NNNNNNNNNNNNNNNNNNNN.wal)"
    )]
    NotWarren(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// One segment file of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    /// The base position its name gives.
    pub base: u64,
    pub path: PathBuf,
}

impl SegmentFile {
    pub fn name(&self) -> String {
        segment_file_name(self.base)
    }
}

/// The segment files of a log directory, in log order, plus the segments
/// set aside as damaged (which are no part of the log any more).
#[derive(Debug, Clone)]
pub struct LogFiles {
    pub dir: PathBuf,
    pub segments: Vec<SegmentFile>,
    pub set_aside: Vec<SegmentFile>,
}

/// Finds the log of a data directory (`<data-dir>/log`); a log directory
/// given directly is accepted too. Only lists the directory.
pub fn find_log(data_dir: &Path) -> Result<LogFiles, OpenError> {
    let meta = match std::fs::metadata(data_dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(OpenError::Missing(data_dir.to_path_buf())),
        Err(source) => return Err(OpenError::Io { path: data_dir.to_path_buf(), source }),
    };
    if !meta.is_dir() {
        return Err(OpenError::NotADirectory(data_dir.to_path_buf()));
    }
    let log_dir = crate::config::log_dir(data_dir);
    if log_dir.is_dir() {
        return list_log(&log_dir);
    }
    let files = list_log(data_dir)?;
    if files.segments.is_empty() && files.set_aside.is_empty() {
        return Err(OpenError::NotWarren(data_dir.to_path_buf()));
    }
    Ok(files)
}

/// Lists the segment files of a log directory.
pub fn list_log(dir: &Path) -> Result<LogFiles, OpenError> {
    let io_error = |source| OpenError::Io { path: dir.to_path_buf(), source };
    let mut segments = Vec::new();
    let mut set_aside = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = parse_segment_file_name(name) {
            segments.push(SegmentFile { base, path: entry.path() });
        } else if let Some(base) =
            name.strip_suffix(SET_ASIDE_SUFFIX).and_then(|digits| parse_segment_file_name(&format!("{digits}.wal")))
        {
            set_aside.push(SegmentFile { base, path: entry.path() });
        }
    }
    segments.sort_by_key(|s| s.base);
    set_aside.sort_by_key(|s| s.base);
    Ok(LogFiles { dir: dir.to_path_buf(), segments, set_aside })
}

/// Reads a whole segment file, read-only. `None` when it no longer exists
/// (a running broker deletes reclaimed segments).
pub fn read_segment(path: &Path) -> io::Result<Option<Bytes>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(Bytes::from(bytes))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A log opened for inspection. Reads only; the newest segment is read once
/// and kept, so every pass over the log sees the same bytes even while a
/// broker appends to it.
pub struct Inspector {
    pub files: LogFiles,
    newest: Mutex<Option<Bytes>>,
}

/// One segment as a pass over the log met it.
pub enum SegmentRead {
    Scanned(SegmentScan),
    /// Listed, then gone: a running broker reclaimed it meanwhile.
    Vanished,
    Unreadable(io::Error),
}

impl Inspector {
    pub fn open(data_dir: &Path) -> Result<Inspector, OpenError> {
        Ok(Inspector { files: find_log(data_dir)?, newest: Mutex::new(None) })
    }

    pub fn segments(&self) -> &[SegmentFile] {
        &self.files.segments
    }

    pub fn is_newest(&self, index: usize) -> bool {
        index + 1 == self.files.segments.len()
    }

    /// The bytes of segment `index`; `None` when it vanished since listing.
    pub fn bytes(&self, index: usize) -> io::Result<Option<Bytes>> {
        let file = &self.files.segments[index];
        if !self.is_newest(index) {
            return read_segment(&file.path);
        }
        let mut cached = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bytes) = &*cached {
            return Ok(Some(bytes.clone()));
        }
        let mut bytes = None;
        for attempt in 0..NEWEST_READ_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
            bytes = read_segment(&file.path)?;
            match &bytes {
                Some(b) if scan_segment(file.base, b, true).is_damaged() => continue,
                _ => break,
            }
        }
        if let Some(b) = &bytes {
            *cached = Some(b.clone());
        }
        Ok(bytes)
    }

    /// Reads and scans segment `index` (without the checks across segments).
    pub fn scan(&self, index: usize) -> SegmentRead {
        match self.bytes(index) {
            Ok(Some(bytes)) => {
                SegmentRead::Scanned(scan_segment(self.files.segments[index].base, &bytes, self.is_newest(index)))
            }
            Ok(None) => SegmentRead::Vanished,
            Err(e) => SegmentRead::Unreadable(e),
        }
    }

    /// Scans every segment in log order, with the checks across segments,
    /// handing each to `visit` (with its index).
    pub fn scan_all(&self, mut visit: impl FnMut(usize, &SegmentFile, SegmentRead)) {
        let mut checker = LogChecker::default();
        for (index, file) in self.files.segments.iter().enumerate() {
            let mut read = self.scan(index);
            if let SegmentRead::Scanned(scan) = &mut read {
                checker.check(scan, &self.files.set_aside);
                self.explain_damaged_end(index, scan);
            }
            visit(index, file, read);
        }
    }

    /// Damage at the very end of a sealed segment when no later segment
    /// holds a record looks like a crash while the broker switched segments:
    /// the new segment's file became durable, the old one's last write did
    /// not. Recovery does not count that as a torn tail (it only looks at the
    /// newest segment), so it stays damage; the finding says what it most
    /// likely is.
    fn explain_damaged_end(&self, index: usize, scan: &mut SegmentScan) {
        let Some(finding) = scan.findings.iter_mut().find(|f| f.severity == Severity::Damage && f.at_end) else {
            return;
        };
        if self.is_newest(index) || finding.offset <= SEGMENT_HEADER_LEN {
            return;
        }
        let later_empty = (index + 1..self.files.segments.len())
            .all(|j| matches!(self.scan(j), SegmentRead::Scanned(s) if s.entries.is_empty()));
        if later_empty {
            finding.what.push_str(
                "; no later segment holds a record, so this is most likely a write cut short by a crash while the broker \
                 opened a new segment (a torn tail, never confirmed), which recovery does not recognise as one",
            );
        }
    }

    /// Replays the log with the broker's own recovery, without writing.
    pub fn replay(&self) -> Replay {
        let io = ReadOnlyIo { inspector: self, set_aside: Mutex::new(Vec::new()) };
        match recover(&io, true) {
            Ok(recovered) => {
                let skipped = io.set_aside.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().collect();
                Replay::new(recovered, skipped)
            }
            Err(error) => Replay { error: Some(error), ..Replay::default() },
        }
    }
}

/// A [`LogIo`] that reads through an [`Inspector`] and writes nothing:
/// recovery's cut of a torn tail, its removal of a half-created newest
/// segment and its setting aside of a damaged one are only noted.
struct ReadOnlyIo<'a> {
    inspector: &'a Inspector,
    set_aside: Mutex<Vec<u64>>,
}

fn read_only_error() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "the log inspector does not write")
}

impl LogIo for ReadOnlyIo<'_> {
    fn list(&self) -> io::Result<Vec<u64>> {
        Ok(self.inspector.files.segments.iter().map(|s| s.base).collect())
    }

    fn create(&self, _base: u64, _capacity: u32) -> io::Result<()> {
        Err(read_only_error())
    }

    fn write_at(&self, _base: u64, _offset: u64, _data: &[u8]) -> io::Result<()> {
        // Only recovery's zeroing of a torn tail comes here; it has already
        // scanned the segment, so leaving the bytes alone changes nothing.
        Ok(())
    }

    fn sync(&self, _base: u64) -> io::Result<()> {
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        Ok(())
    }

    fn read_at(&self, base: u64, offset: u64, len: usize) -> io::Result<Bytes> {
        let all = self.read_all(base)?;
        let start = offset as usize;
        if start + len > all.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the segment"));
        }
        Ok(all.slice(start..start + len))
    }

    fn read_all(&self, base: u64) -> io::Result<Bytes> {
        let index = self
            .inspector
            .files
            .segments
            .iter()
            .position(|s| s.base == base)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no segment {base}")))?;
        // A segment reclaimed since listing reads as empty: recovery then
        // skips it, as it held nothing live.
        Ok(self.inspector.bytes(index)?.unwrap_or_default())
    }

    fn remove(&self, _base: u64) -> io::Result<()> {
        Ok(())
    }

    fn set_aside(&self, base: u64) -> io::Result<PathBuf> {
        self.set_aside.lock().unwrap_or_else(|e| e.into_inner()).push(base);
        Ok(PathBuf::from(format!("{}.damaged", self.describe(base))))
    }

    fn describe(&self, base: u64) -> String {
        self.inspector
            .files
            .segments
            .iter()
            .find(|s| s.base == base)
            .map_or_else(|| segment_file_name(base), |s| s.path.display().to_string())
    }
}

/// What replaying the log leaves: the broker's [`Recovered`] state, and which
/// message records are live (the record a live message was last read from).
#[derive(Debug, Default)]
pub struct Replay {
    pub recovered: Recovered,
    /// (segment base, record offset) of every live message.
    live: HashSet<(u64, u32)>,
    /// Segments recovery did not replay because they are damaged.
    pub skipped: HashSet<u64>,
    /// Recovery could not run at all.
    pub error: Option<String>,
}

impl Replay {
    fn new(recovered: Recovered, skipped: HashSet<u64>) -> Replay {
        let live = recovered.messages.values().map(|m| (m.base, m.offset)).collect();
        Replay { recovered, live, skipped, error: None }
    }

    /// Whether the replay covered segment `base`.
    pub fn replayed(&self, base: u64) -> bool {
        self.error.is_none() && !self.skipped.contains(&base)
    }

    /// Whether the message record at `offset` of segment `base` is where a
    /// message still held by some durable queue lives; `None` when the
    /// segment was not replayed.
    pub fn is_live(&self, base: u64, offset: usize) -> Option<bool> {
        self.replayed(base).then(|| self.live.contains(&(base, offset as u32)))
    }

    /// Live messages per segment base.
    pub fn live_per_segment(&self) -> HashMap<u64, u64> {
        let mut out = HashMap::new();
        for (base, _) in &self.live {
            *out.entry(*base).or_default() += 1;
        }
        out
    }

    /// Durable queue ids and names after replay.
    pub fn queue_names(&self) -> HashMap<u32, String> {
        self.recovered
            .definitions
            .queues
            .iter()
            .filter_map(|(id, r)| match r {
                Record::QueueDeclare { name, .. } => Some((*id, name.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Per-segment figures for a summary.
#[derive(Debug, Clone)]
pub struct SegmentSummary {
    pub base: u64,
    pub size: usize,
    pub capacity: Option<u32>,
    /// Offset just past the last valid record.
    pub used: usize,
    pub first_offset: Option<usize>,
    pub last_offset: Option<usize>,
    pub records: u64,
    /// Record count per type code.
    pub by_type: BTreeMap<u8, u64>,
    /// Message records (live + dead).
    pub messages: u64,
    /// Message records still holding a live message; `None` when the
    /// segment was not replayed (damaged).
    pub live: Option<u64>,
}

impl SegmentSummary {
    pub fn new(scan: &SegmentScan, replay: &Replay) -> SegmentSummary {
        let mut by_type = BTreeMap::new();
        let mut messages = 0;
        let mut live = 0;
        for e in &scan.entries {
            *by_type.entry(e.record.type_code()).or_default() += 1;
            if matches!(e.record, Record::Message(_)) {
                messages += 1;
                if replay.is_live(scan.base, e.offset) == Some(true) {
                    live += 1;
                }
            }
        }
        SegmentSummary {
            base: scan.base,
            size: scan.size,
            capacity: scan.header.map(|h| h.capacity),
            used: scan.end,
            first_offset: scan.entries.first().map(|e| e.offset),
            last_offset: scan.entries.last().map(|e| e.offset),
            records: scan.entries.len() as u64,
            by_type,
            messages,
            live: replay.replayed(scan.base).then_some(live),
        }
    }

    pub fn dead(&self) -> Option<u64> {
        self.live.map(|live| self.messages - live)
    }

    /// No live message in it: compaction may delete it once it is sealed.
    pub fn reclaimable(&self) -> Option<bool> {
        self.live.map(|live| live == 0)
    }

    pub fn first_position(&self) -> Option<u64> {
        self.first_offset.map(|o| self.base + o as u64)
    }

    pub fn last_position(&self) -> Option<u64> {
        self.last_offset.map(|o| self.base + o as u64)
    }
}
