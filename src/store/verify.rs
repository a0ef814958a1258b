//! Judging a segment as read: every record, and at each spot that is not
//! one a finding (torn tail, damage, or a warning about something the broker
//! never writes), plus the checks across segments (positions, id order).
//! `warren-dump --verify` and its summary are built on this; the verdict on
//! a bad spot comes from [`super::walk`], as for recovery.

use bytes::Bytes;

use super::format::*;
use super::inspect::SegmentFile;
use super::log::type_name;
use super::walk::walk_segment;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// The end of written data in the newest segment: a write cut short by a
    /// crash (recovery zeroes it; it was never confirmed), or one still in
    /// progress in a running broker.
    TornTail,
    /// Damage: recovery refuses to start (or, with
    /// `--skip-damaged-segments`, sets the segment aside).
    Damage,
    /// Not what the broker writes, but recovery accepts it.
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::TornTail => "torn tail",
            Severity::Damage => "damaged",
            Severity::Warning => "warning",
        }
    }
}

/// Something wrong (or worth knowing) at one byte offset of a segment.
#[derive(Debug, Clone)]
pub struct Finding {
    pub offset: usize,
    pub severity: Severity,
    /// What the decoder said about the bytes there, when it was a record that failed.
    pub error: Option<FormatError>,
    pub what: String,
    /// Nothing valid follows it in its segment: the segment's data ends here.
    pub at_end: bool,
}

impl Finding {
    /// The checksum status of the record at the finding's offset: `BAD` when
    /// the CRC did not match, `ok` when it matched but the payload did not
    /// decode, `n/a` when the framing itself is broken (or no record is involved).
    pub fn crc_status(&self) -> &'static str {
        match &self.error {
            Some(FormatError::Checksum { .. }) => "BAD",
            Some(FormatError::LengthPastEnd { .. } | FormatError::LengthTooSmall(_) | FormatError::BadHeader(_))
            | None => "n/a",
            Some(_) => "ok",
        }
    }
}

/// A valid record and where it is.
#[derive(Debug, Clone)]
pub struct Entry {
    pub offset: usize,
    /// Framed length (prefix included).
    pub len: usize,
    pub flags: u8,
    pub record: Record,
}

/// What one segment holds, as read.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    /// Base from the file name.
    pub base: u64,
    /// Bytes in the file.
    pub size: usize,
    pub header: Option<SegmentHeader>,
    /// Valid records in file order (after a damaged spot, those found by
    /// scanning forward for the next valid record).
    pub entries: Vec<Entry>,
    pub findings: Vec<Finding>,
    /// Offset just past the last valid record (the header's end when none).
    pub end: usize,
}

impl SegmentScan {
    pub fn worst(&self) -> Option<Severity> {
        let has = |s| self.findings.iter().any(|f| f.severity == s);
        [Severity::Damage, Severity::TornTail, Severity::Warning].into_iter().find(|s| has(*s))
    }

    pub fn is_damaged(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Damage)
    }

    pub fn torn_tail(&self) -> Option<&Finding> {
        self.findings.iter().find(|f| f.severity == Severity::TornTail)
    }
}

/// The first offset in `from..` (up to the last non-zero byte) where a valid
/// record starts: how recovery decides whether a bad spot is a torn tail.
pub fn next_valid_record(bytes: &Bytes, from: usize) -> Option<usize> {
    let end = end_of_nonzero(bytes, from);
    (from..end).find(|at| matches!(read_record_at(bytes, *at), Scanned::Record { .. }))
}

/// Reads every record of one segment through [`read_record_at`] and judges
/// what is not a record as recovery does. `newest` is whether this is the
/// newest segment of the log (the only one that may end in a torn tail).
pub fn scan_segment(base: u64, bytes: &Bytes, newest: bool) -> SegmentScan {
    let mut scan = SegmentScan {
        base,
        size: bytes.len(),
        header: None,
        entries: Vec::new(),
        findings: Vec::new(),
        end: SEGMENT_HEADER_LEN_V1.min(bytes.len()),
    };
    // Format 2 judges a bad spot by the commit groups after it (see
    // `walk`); format 1 by whether any valid record follows.
    let verdict = walk_segment(bytes).ok().and_then(|w| w.bad).map(|b| (b.offset, b.synced));
    match SegmentHeader::decode(bytes) {
        Ok(header) => {
            if header.base != base {
                scan.findings.push(Finding {
                    offset: 0,
                    severity: Severity::Damage,
                    error: None,
                    at_end: false,
                    what: format!("the header names base {} but the file name says {base}", header.base),
                });
            }
            if header.capacity as usize != bytes.len() {
                scan.findings.push(Finding::warning_at_start(format!(
                    "the file is {} bytes but the header gives a capacity of {}",
                    bytes.len(),
                    header.capacity
                )));
            }
            scan.header = Some(header);
        }
        Err(error) => {
            let records_follow = next_valid_record(bytes, SEGMENT_HEADER_LEN_V1).is_some();
            if newest && !records_follow {
                // The broker creates a segment file, then writes its header:
                // this one was being created, or never became durable.
                scan.findings.push(Finding {
                    offset: 0,
                    severity: Severity::TornTail,
                    what: format!(
                        "{error}; no record follows, so the segment was still being created (or never made durable); recovery removes it"
                    ),
                    error: Some(error),
                    at_end: true,
                });
                return scan;
            }
            let what = if newest {
                format!(
                    "{error}, yet valid records follow it; recovery would delete this newest segment and the records in it"
                )
            } else {
                error.to_string()
            };
            scan.findings.push(Finding {
                offset: 0,
                severity: Severity::Damage,
                error: Some(error),
                what,
                at_end: false,
            });
            if !records_follow {
                return scan;
            }
        }
    }

    let mut offset = scan.header.map_or(SEGMENT_HEADER_LEN_V1, |h| h.len());
    scan.end = offset.min(bytes.len());
    let mut first_bad = true;
    loop {
        let (at, error, what) = match read_record_at(bytes, offset) {
            Scanned::Record { offset: at, len, flags, record } => {
                scan.entries.push(Entry { offset: at, len, flags, record });
                offset = at + len;
                scan.end = offset;
                continue;
            }
            Scanned::End { offset: at } if is_zero_tail(bytes, at) => break,
            Scanned::End { offset: at } => {
                (at, None, "a zero record length (end of records) followed by non-zero bytes".to_string())
            }
            Scanned::Bad { offset: at, error } => {
                let what = error.to_string();
                (at, Some(error), what)
            }
        };
        // As recovery does: is there evidence after it that it was durable?
        let next = next_valid_record(bytes, at + 1);
        let torn = newest
            && match (first_bad, verdict) {
                (true, Some((_, synced))) => !synced,
                _ => next.is_none(),
            };
        first_bad = false;
        match next {
            _ if torn => {
                let cut = end_of_nonzero(bytes, at) - at;
                scan.findings.push(Finding {
                    offset: at,
                    severity: Severity::TornTail,
                    what: format!(
                        "{what}; no valid record follows, so this is the end of written data ({cut} bytes a restart would zero)"
                    ),
                    error,
                    at_end: true,
                });
                break;
            }
            None => {
                let junk = end_of_nonzero(bytes, at) - at;
                scan.findings.push(Finding {
                    offset: at,
                    severity: Severity::Damage,
                    what: format!("{what}; no valid record follows in this sealed segment ({junk} bytes unreadable)"),
                    error,
                    at_end: true,
                });
                break;
            }
            Some(next) => {
                scan.findings.push(Finding {
                    offset: at,
                    severity: Severity::Damage,
                    what: format!("{what}; the next valid record is at offset {next}"),
                    error,
                    at_end: false,
                });
                offset = next;
            }
        }
    }
    check_structure(&mut scan);
    scan
}

/// What the broker always writes but the decoder does not require: these
/// are warnings (recovery accepts them).
fn check_structure(scan: &mut SegmentScan) {
    let mut warnings = Vec::new();
    match scan.entries.iter().find(|e| !matches!(e.record, Record::Group { .. })) {
        Some(Entry { flags, record: Record::IdWatermark { .. }, .. }) if flags & FLAG_SNAPSHOT != 0 => {}
        Some(first) => warnings.push((
            first.offset,
            "the segment does not start with an id-watermark record flagged SNAPSHOT".to_string(),
        )),
        None => {}
    }
    let mut in_snapshot = true;
    for e in scan.entries.iter().filter(|e| !matches!(e.record, Record::Group { .. })) {
        let definition = matches!(
            e.record,
            Record::ExchangeDeclare { .. }
                | Record::QueueDeclare { .. }
                | Record::BindingAdd(_)
                | Record::Parameter { .. }
                | Record::IdWatermark { .. }
                | Record::RaftEntry { .. }
                | Record::RaftState { .. }
        );
        let unknown = e.flags & !(FLAG_SNAPSHOT | FLAG_RELOCATED | FLAG_WIDE | FLAG_TIMED | FLAG_VHOST | FLAG_STREAM);
        if unknown != 0 {
            warnings.push((e.offset, format!("unknown flag bits {unknown:#04x}")));
        }
        if e.flags & FLAG_SNAPSHOT != 0 && (!definition || !in_snapshot) {
            warnings.push((
                e.offset,
                format!(
                    "SNAPSHOT flag on a {} record outside the snapshot at the start of the segment",
                    type_name(e.record.type_code())
                ),
            ));
        }
        if e.flags & FLAG_SNAPSHOT == 0 {
            in_snapshot = false;
        }
        if e.flags & FLAG_RELOCATED != 0 && !matches!(e.record, Record::Message(_)) {
            warnings.push((
                e.offset,
                format!("RELOCATED flag on a {} record (only messages are relocated)", type_name(e.record.type_code())),
            ));
        }
    }
    for (offset, what) in warnings {
        scan.findings.push(Finding { offset, severity: Severity::Warning, error: None, what, at_end: false });
    }
    scan.findings.sort_by_key(|f| f.offset);
}

/// Checks that need the segments before: positions continue where the
/// previous segment's capacity ends, and message ids grow in publish order.
#[derive(Debug, Default)]
pub struct LogChecker {
    /// End position (base + capacity) of the previous segment.
    previous_end: Option<u64>,
    last_message_id: Option<u64>,
}

impl Finding {
    /// A warning about the segment as a whole (offset 0, not at its end).
    fn warning_at_start(what: String) -> Finding {
        Finding { offset: 0, severity: Severity::Warning, error: None, at_end: false, what }
    }
}

impl LogChecker {
    pub fn check(&mut self, scan: &mut SegmentScan, set_aside: &[SegmentFile]) {
        if let Some(expected) = self.previous_end {
            if scan.base < expected {
                scan.findings.push(Finding::warning_at_start(format!(
                    "base {} overlaps the previous segment, which ends at position {expected}",
                    scan.base
                )));
            } else if scan.base > expected {
                let missing: Vec<String> = set_aside
                    .iter()
                    .filter(|s| (expected..scan.base).contains(&s.base))
                    .map(|s| s.path.file_name().unwrap_or_default().to_string_lossy().into_owned())
                    .collect();
                // Compaction deletes segments anywhere in the log, so a gap
                // alone is normal; one that a damaged segment left is not.
                if !missing.is_empty() {
                    scan.findings.push(Finding::warning_at_start(format!(
                        "log positions {expected}..{} are missing (set aside as damaged: {})",
                        scan.base,
                        missing.join(", ")
                    )));
                }
            }
        }
        if let Some(h) = scan.header {
            self.previous_end = Some(h.base + h.capacity as u64);
        }
        let mut warnings = Vec::new();
        for e in &scan.entries {
            if let Record::Message(m) = &e.record
                && e.flags & FLAG_RELOCATED == 0
            {
                if let Some(last) = self.last_message_id
                    && m.id <= last
                {
                    warnings
                        .push((e.offset, format!("message id {} is not above the previous message's {last}", m.id)));
                }
                self.last_message_id = Some(self.last_message_id.map_or(m.id, |l| l.max(m.id)));
            }
        }
        for (offset, what) in warnings {
            scan.findings.push(Finding { offset, severity: Severity::Warning, error: None, what, at_end: false });
        }
        scan.findings.sort_by_key(|f| f.offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::inspect::{RECORD_TYPES, type_code};

    fn segment(records: &[(Record, u8)], capacity: u32) -> Vec<u8> {
        // Format 1 (no commit groups): its rules for torn tails still apply.
        let mut out = SegmentHeader { version: 1, base: 0, capacity, nonce: 0 }.encode();
        for (r, flags) in records {
            r.encode(*flags, &mut out);
        }
        out.resize(capacity as usize, 0);
        out
    }

    fn sample() -> Vec<u8> {
        segment(
            &[
                (Record::IdWatermark { next_message_id: 1, next_queue_id: 1 }, FLAG_SNAPSHOT),
                (Record::QueueDelete { queue: 1 }, 0),
                (Record::QueueDelete { queue: 2 }, 0),
            ],
            4096,
        )
    }

    #[test]
    fn a_clean_segment_has_no_findings() {
        let bytes = Bytes::from(sample());
        let scan = scan_segment(0, &bytes, false);
        assert_eq!(scan.entries.len(), 3);
        assert!(scan.findings.is_empty(), "{:?}", scan.findings);
    }

    #[test]
    fn a_bad_last_record_is_a_torn_tail_only_in_the_newest_segment() {
        let mut raw = sample();
        let last = scan_segment(0, &Bytes::from(raw.clone()), false).entries[2].offset;
        raw[last + 9] ^= 0xff;
        let bytes = Bytes::from(raw);
        let newest = scan_segment(0, &bytes, true);
        assert_eq!(newest.worst(), Some(Severity::TornTail));
        assert_eq!(newest.torn_tail().unwrap().offset, last);
        let sealed = scan_segment(0, &bytes, false);
        assert_eq!(sealed.worst(), Some(Severity::Damage));
        assert_eq!(sealed.findings[0].offset, last);
    }

    #[test]
    fn damage_before_a_valid_record_is_damage_even_in_the_newest_segment() {
        let mut raw = sample();
        let middle = scan_segment(0, &Bytes::from(raw.clone()), false).entries[1].offset;
        raw[middle + 9] ^= 0xff;
        let scan = scan_segment(0, &Bytes::from(raw), true);
        assert_eq!(scan.worst(), Some(Severity::Damage));
        assert_eq!(scan.findings[0].offset, middle);
        assert_eq!(scan.findings[0].crc_status(), "BAD");
        assert_eq!(scan.entries.len(), 2, "scanning goes on after the damaged record");
    }

    #[test]
    fn type_names_round_trip() {
        for code in RECORD_TYPES {
            assert_eq!(type_code(type_name(code)), Some(code));
        }
        assert_eq!(type_code("nope"), None);
    }
}
