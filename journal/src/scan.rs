//! The recovery scan of one segment: the decision table of `docs/journal-format.md`,
//! section 6, as code. It only reads; `JournalWriter::open` applies its verdict (truncating a
//! torn tail) and `keel journal verify` reports it.

use std::ops::RangeInclusive;
use std::path::Path;

use crate::error::JournalError;
use crate::format::{
    check_batch, padded, read_u32, read_u64, record_size_padded, BatchCheck, BatchView,
    EpochChange, BATCH_HEADER_SIZE, GROUP_COMMIT_BYTES_MAX, KIND_EPOCH, RECORD_ALIGNMENT,
    RECORD_HEADER_SIZE, RECORD_SIZE_MAX, SEGMENT_HEADER_SIZE,
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
    /// The offset where the next batch should start: the truncation point.
    pub offset: u64,
    /// One past the last non-zero byte: `offset..dirty_end` is what truncation zeroes.
    pub dirty_end: u64,
    /// What is at `offset`, in words.
    pub damage: String,
    /// The sequences that the dropped batch names: its header's first sequence when that is
    /// the expected one, and one more for each record whose length keeps it in the dropped
    /// bytes (rows 4 and 5). Read without a checksum: the batch's never arrived or does not
    /// match.
    pub dropped: Option<RangeInclusive<u64>>,
}

/// The result of scanning one segment's records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    /// Valid records, in order.
    pub records: u64,
    /// The sequence of the last valid record (the segment's first sequence − 1 if none).
    pub last_sequence: u64,
    /// The timestamp of the first valid record (0 if none).
    pub first_timestamp_ns: u64,
    /// The timestamp of the last valid record (0 if none).
    pub last_timestamp_ns: u64,
    /// Where the last valid batch starts (the header's end if there is none).
    pub last_batch_offset: u64,
    /// Where the next batch would start.
    pub end_offset: u64,
    /// The highest epoch an epoch-change record in the segment names (0 if none).
    pub epoch: u64,
    /// How the data ends.
    pub end: SegmentEnd,
}

/// Scans the batches of the segment `bytes` (the whole file, header included), whose first
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
    let mut last_batch_offset = SEGMENT_HEADER_SIZE;
    let mut expected = first_sequence;
    let mut first_timestamp_ns = 0;
    let mut last_timestamp_ns = 0;
    let mut epoch = 0;
    let mut next_progress = PROGRESS_STEP;
    let damage = loop {
        if position >= next_progress {
            progress(position as u64);
            next_progress = position + PROGRESS_STEP;
        }
        match check_batch(&bytes[position..]) {
            BatchCheck::Batch(batch) if batch.first_sequence == expected => {
                // Row 1.
                if expected == first_sequence {
                    first_timestamp_ns = batch.timestamp_ns;
                }
                expected = batch.last_sequence + 1;
                last_timestamp_ns = batch.last_timestamp_ns;
                // A promotion's epoch must outlive the process even before a segment header
                // carries it: the writer's epoch is the highest of the headers and of these.
                for record in batch.iter().filter(|record| record.kind == KIND_EPOCH) {
                    if let Ok(change) = EpochChange::decode(record.payload) {
                        epoch = epoch.max(change.epoch);
                    }
                }
                last_batch_offset = position;
                position += batch.size();
            }
            BatchCheck::Batch(batch) => {
                // Row 7.
                return Err(JournalError::out_of_sequence(
                    path,
                    position as u64,
                    expected,
                    batch.first_sequence,
                ));
            }
            // The rest is decided by what follows `position`, found once below.
            BatchCheck::End => break None,
            BatchCheck::Invalid(invalid) => break Some(invalid.to_string()),
        }
    };
    progress(bytes.len() as u64);
    let dirty_end = last_non_zero(bytes, position).map_or(position, |last| last + 1);
    let scan = |end| SegmentScan {
        records: expected - first_sequence,
        last_sequence: expected - 1,
        first_timestamp_ns,
        last_timestamp_ns,
        last_batch_offset: last_batch_offset as u64,
        end_offset: position as u64,
        epoch,
        end,
    };
    let damage = match damage {
        Some(damage) => damage,
        // Rows 2 and 11.
        None if dirty_end == position => return Ok(scan(SegmentEnd::Clean)),
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
    if dirty_end - position > GROUP_COMMIT_BYTES_MAX {
        // Row 6, by distance.
        return Err(corrupt(format!(
            "{damage}; non-zero bytes run to offset {dirty_end}, more than one group commit \
             ({GROUP_COMMIT_BYTES_MAX} bytes) later, so the damaged data had been synced"
        )));
    }
    if let Some((offset, batch)) = valid_batch_after(bytes, position, dirty_end, expected) {
        // Row 6, by a later batch.
        return Err(corrupt(format!(
            "{damage}; a valid batch (sequences {} to {}) follows at offset {offset}, so the \
             damaged data had been synced",
            batch.first_sequence, batch.last_sequence
        )));
    }
    // Rows 3, 4 and 5.
    Ok(scan(SegmentEnd::Torn(TornTail {
        offset: position as u64,
        dirty_end: dirty_end as u64,
        damage,
        dropped: sequences_named(&bytes[position..dirty_end], expected),
    })))
}

/// How often a scan reports progress, in bytes.
const PROGRESS_STEP: usize = 16 << 20;

/// The first valid batch that starts on an 8-byte boundary in `from + 8 .. dirty_end`. Only
/// positions holding a plausible batch header (a length in bounds, a first sequence that could
/// follow `expected` within one group commit) are checked in full.
fn valid_batch_after(
    bytes: &[u8],
    from: usize,
    dirty_end: usize,
    expected: u64,
) -> Option<(usize, BatchView<'_>)> {
    // Every record takes at least an empty payload's padded size, so a group commit holds
    // fewer records than this.
    let reach = (GROUP_COMMIT_BYTES_MAX / record_size_padded(0)) as u64;
    let mut offset = from + RECORD_ALIGNMENT;
    while offset + BATCH_HEADER_SIZE <= dirty_end {
        let length = read_u32(bytes, offset) as usize;
        let first_sequence = read_u64(bytes, offset + 8);
        let plausible = (BATCH_HEADER_SIZE + RECORD_HEADER_SIZE..=GROUP_COMMIT_BYTES_MAX)
            .contains(&length)
            && first_sequence >= expected
            && first_sequence - expected <= reach;
        if plausible {
            if let BatchCheck::Batch(batch) = check_batch(&bytes[offset..]) {
                return Some((offset, batch));
            }
        }
        offset += RECORD_ALIGNMENT;
    }
    None
}

/// The sequences from `expected` that the batch header at the start of `bytes` and the
/// records after it name: the header must name `expected`, and each record whose length keeps
/// it inside `bytes` counts one; none if the header names another sequence or no record follows.
fn sequences_named(bytes: &[u8], expected: u64) -> Option<RangeInclusive<u64>> {
    if bytes.len() < BATCH_HEADER_SIZE || read_u64(bytes, 8) != expected {
        return None;
    }
    let mut offset = BATCH_HEADER_SIZE;
    let mut next = expected;
    while offset + RECORD_HEADER_SIZE <= bytes.len() {
        let length = read_u32(bytes, offset) as usize;
        let in_bounds = (RECORD_HEADER_SIZE..=RECORD_SIZE_MAX).contains(&length)
            && offset + length <= bytes.len();
        if !in_bounds {
            break;
        }
        next += 1;
        offset += padded(length);
    }
    (next > expected).then(|| expected..=next - 1)
}

/// The offset of the last non-zero byte at or after `from`, if any.
pub(crate) fn last_non_zero(bytes: &[u8], from: usize) -> Option<usize> {
    // A 256 MiB segment's zero tail is scanned at every open and every verification, so the
    // scan goes a cache line at a time: OR-folding a 64-byte block's words has no early exit
    // inside the block, which lets the compiler vectorize it; an eight-byte loop with an exit
    // per word does not vectorize.
    const BLOCK: usize = 64;
    let tail = &bytes[from..];
    let (blocks, remainder) = tail.as_chunks::<BLOCK>();
    if let Some(index) = remainder.iter().rposition(|&byte| byte != 0) {
        return Some(from + blocks.len() * BLOCK + index);
    }
    let block = blocks.iter().rposition(|block| {
        let (words, _) = block.as_chunks::<8>();
        words.iter().fold(0, |any, word| any | u64::from_le_bytes(*word)) != 0
    })?;
    let index = blocks[block].iter().rposition(|&byte| byte != 0)?;
    Some(from + block * BLOCK + index)
}

#[cfg(test)]
mod tests {
    use super::last_non_zero;

    #[test]
    fn last_non_zero_agrees_with_a_byte_by_byte_search() {
        // Every length across a few blocks, every position of a lone non-zero byte and of two,
        // and starts on both sides of a block's edges and of the byte: the block loop, the
        // remainder and the start offset all take part.
        for length in 0..200 {
            let mut bytes = vec![0u8; length];
            for from in 0..=length {
                assert_eq!(last_non_zero(&bytes, from), None, "all zero, {length} from {from}");
            }
            for first in 0..length {
                for second in [None, Some(first / 2), Some(length - 1)] {
                    bytes.fill(0);
                    bytes[first] = 0x80;
                    if let Some(second) = second {
                        bytes[second] = 1;
                    }
                    let starts = [0, 1, 7, 8, 63, 64, 65, first, first + 1, length];
                    for from in starts.into_iter().filter(|&from| from <= length) {
                        let expected = bytes[from..]
                            .iter()
                            .rposition(|&byte| byte != 0)
                            .map(|index| from + index);
                        assert_eq!(last_non_zero(&bytes, from), expected, "{length} from {from}");
                    }
                }
            }
        }
    }
}
