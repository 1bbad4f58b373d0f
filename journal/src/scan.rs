//! The recovery scan of one segment: the decision table of `docs/journal-format.md`,
//! section 6, as code. It only reads; `JournalWriter::open` applies its verdict (truncating a
//! torn tail) and `keel journal verify` reports it.

use std::ops::RangeInclusive;
use std::path::Path;

use crate::error::JournalError;
use crate::format::{
    check_record, InvalidRecord, RecordCheck, GROUP_COMMIT_BYTES_MAX, RECORD_ALIGNMENT,
    SEGMENT_HEADER_SIZE,
};

/// How a segment's data ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentEnd {
    /// Rows 2 and 11: a zero length, then only zeros.
    Clean,
    /// Rows 3 to 5: the data ends in a torn write (never acknowledged) that opening the
    /// journal for writing truncates.
    Torn(TornTail),
}

/// A torn tail: what is there, and what truncating it drops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The offset where the next record should start: the truncation point.
    pub offset: u64,
    /// One past the last non-zero byte: `offset..dirty_end` is what truncation zeroes.
    pub dirty_end: u64,
    /// What is at `offset`, in words.
    pub damage: String,
    /// The sequences of records with valid checksums after `offset` that truncation drops
    /// (row 5: pages of the last group commit that reached the disk out of order).
    pub dropped: Option<RangeInclusive<u64>>,
}

/// The result of scanning one segment's records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    /// Valid records, in order.
    pub records: u64,
    /// The sequence of the last valid record (the segment's first sequence − 1 if none).
    pub last_sequence: u64,
    /// The timestamp of the last valid record (0 if none).
    pub last_timestamp_ns: u64,
    /// Where the next record would start.
    pub end_offset: u64,
    /// Whether the last valid record is flagged END_OF_BATCH.
    pub ends_batch: bool,
    /// How the data ends.
    pub end: SegmentEnd,
}

/// Scans the records of the segment `bytes` (the whole file, header included), whose first
/// record must be `first_sequence`. `is_last` says whether a later segment exists: damage in a
/// segment that is not the last is corruption (row 8), whatever it looks like. `progress` is
/// called with the offset scanned so far, now and then.
pub fn scan_segment(
    path: &Path,
    bytes: &[u8],
    first_sequence: u64,
    is_last: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<SegmentScan, JournalError> {
    let mut position = SEGMENT_HEADER_SIZE;
    let mut expected = first_sequence;
    let mut last_timestamp_ns = 0;
    let mut ends_batch = false;
    let mut next_progress = PROGRESS_STEP;
    let damage = loop {
        if position >= next_progress {
            progress(position as u64);
            next_progress = position + PROGRESS_STEP;
        }
        match check_record(&bytes[position..]) {
            RecordCheck::Record(record) if record.sequence == expected => {
                // Row 1.
                expected += 1;
                last_timestamp_ns = record.timestamp_ns;
                ends_batch = record.is_end_of_batch();
                position += record.size_padded;
            }
            RecordCheck::Record(record) => {
                // Row 7.
                return Err(JournalError::out_of_sequence(
                    path,
                    position as u64,
                    expected,
                    record.sequence,
                ));
            }
            // The rest is decided by what follows `position`, found once below.
            RecordCheck::End => break None,
            RecordCheck::Invalid(invalid) => break Some(describe(&invalid)),
        }
    };
    progress(bytes.len() as u64);
    let dirty_end = last_non_zero(bytes, position).map_or(position, |last| last + 1);
    let damage = match damage {
        Some(damage) => damage,
        None if dirty_end == position => {
            // Rows 2 and 11.
            return Ok(SegmentScan {
                records: expected - first_sequence,
                last_sequence: expected - 1,
                last_timestamp_ns,
                end_offset: position as u64,
                ends_batch,
                end: SegmentEnd::Clean,
            });
        }
        None => format!("a zero length followed by non-zero bytes up to offset {dirty_end}"),
    };
    let corrupt = |detail: String| JournalError::Corrupt {
        path: path.to_owned(),
        offset: position as u64,
        expected,
        found: None,
        detail,
    };
    if !is_last {
        // Row 8.
        return Err(corrupt(format!("{damage}, in a segment that a later segment follows")));
    }
    let survivors = valid_records_after(bytes, position, dirty_end);
    let beyond_group_commit =
        survivors.iter().find(|survivor| survivor.offset - position > GROUP_COMMIT_BYTES_MAX);
    if let Some(survivor) = beyond_group_commit {
        // Row 6, by distance.
        return Err(corrupt(format!(
            "{damage}; a record with a valid checksum (sequence {}) lies at offset {}, more than \
             one group commit ({GROUP_COMMIT_BYTES_MAX} bytes) later, so the damaged data had \
             been synced",
            survivor.sequence, survivor.offset
        )));
    }
    let first_end_of_batch = survivors.iter().find(|survivor| survivor.end_of_batch);
    if let Some(end_of_batch) = first_end_of_batch {
        if let Some(after) = survivors.iter().find(|survivor| survivor.offset > end_of_batch.offset)
        {
            // Row 6, by a later batch.
            return Err(corrupt(format!(
                "{damage}; the batch ending with sequence {} (offset {}) and a later record \
                 (sequence {}, offset {}) have valid checksums, so the damaged data had been \
                 synced",
                end_of_batch.sequence, end_of_batch.offset, after.sequence, after.offset
            )));
        }
    }
    // Rows 3, 4 and 5.
    let sequences = || survivors.iter().map(|survivor| survivor.sequence);
    let dropped = sequences().min().zip(sequences().max()).map(|(low, high)| low..=high);
    Ok(SegmentScan {
        records: expected - first_sequence,
        last_sequence: expected - 1,
        last_timestamp_ns,
        end_offset: position as u64,
        ends_batch,
        end: SegmentEnd::Torn(TornTail {
            offset: position as u64,
            dirty_end: dirty_end as u64,
            damage,
            dropped,
        }),
    })
}

/// How often a scan reports progress, in bytes.
const PROGRESS_STEP: usize = 16 << 20;

/// A record with a valid checksum found after the point of damage.
#[derive(Clone, Copy, Debug)]
struct Survivor {
    offset: usize,
    sequence: u64,
    end_of_batch: bool,
}

/// Every record with a valid checksum that starts on an 8-byte boundary in
/// `from + 8 .. dirty_end`.
fn valid_records_after(bytes: &[u8], from: usize, dirty_end: usize) -> Vec<Survivor> {
    let mut survivors = Vec::new();
    let mut offset = from + RECORD_ALIGNMENT;
    while offset < dirty_end {
        match check_record(&bytes[offset..]) {
            RecordCheck::Record(record) => {
                survivors.push(Survivor {
                    offset,
                    sequence: record.sequence,
                    end_of_batch: record.is_end_of_batch(),
                });
                offset += record.size_padded;
            }
            RecordCheck::End | RecordCheck::Invalid(_) => offset += RECORD_ALIGNMENT,
        }
    }
    survivors
}

/// The offset of the last non-zero byte at or after `from`, if any.
fn last_non_zero(bytes: &[u8], from: usize) -> Option<usize> {
    // Compare eight bytes at a time: a 256 MiB segment's zero tail is scanned at every open.
    let tail = &bytes[from..];
    let (chunks, remainder) = tail.as_chunks::<8>();
    if let Some(index) = remainder.iter().rposition(|&byte| byte != 0) {
        return Some(from + chunks.len() * 8 + index);
    }
    let chunk = chunks.iter().rposition(|chunk| u64::from_le_bytes(*chunk) != 0)?;
    let index = chunks[chunk].iter().rposition(|&byte| byte != 0)?;
    Some(from + chunk * 8 + index)
}

/// A record's damage, in words.
fn describe(invalid: &InvalidRecord) -> String {
    match invalid {
        InvalidRecord::Truncated { remaining } => {
            format!("{remaining} non-zero bytes, too few for a record header")
        }
        InvalidRecord::LengthOutOfBounds { length, remaining } => {
            format!("a length of {length} bytes, out of bounds ({remaining} bytes remain)")
        }
        InvalidRecord::ChecksumMismatch { stored, computed } => {
            format!("a checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
        }
        InvalidRecord::Malformed { rule } => {
            format!("a record with a valid checksum that breaks the format ({rule})")
        }
    }
}
