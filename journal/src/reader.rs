//! Readers: [`JournalReader`] reads the records a journal holds, from any sequence, and
//! [`Tailer`] follows a journal that a writer (in this process or another) is appending to,
//! yielding each record once its group commit is complete.
//!
//! Both hand out payloads as slices of the segment's mapping: nothing is copied. Every record
//! is checked (length bounds, then checksum, then sequence) before any of its fields is used.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::JournalError;
use crate::format::{
    check_record, record_view_unchecked, RecordCheck, RecordView, RECORD_SIZE_MAX,
    SEGMENT_HEADER_SIZE,
};
use crate::mmap::ReadableMap;
use crate::segment::{
    list_segments, read_header, segment_file_name, segment_index_for, SegmentFile,
    JOURNAL_DIRECTORY,
};

/// A position in a journal: the segment list, the mapped segment, the offset of the next
/// record and its sequence.
#[derive(Debug)]
struct Cursor {
    directory: PathBuf,
    journal_directory: PathBuf,
    /// The segments as last listed (listed again when the known ones are exhausted).
    segments: Vec<SegmentFile>,
    /// The mapped segment.
    current: Option<(SegmentFile, ReadableMap)>,
    journal_id: Option<[u8; 16]>,
    position: usize,
    next_sequence: u64,
}

impl Cursor {
    /// A cursor before the first record of `directory`'s journal, or before `sequence` if
    /// given. A sequence one past the last is allowed (a tailer waiting for the next record).
    fn open(directory: &Path, sequence: Option<u64>) -> Result<Self, JournalError> {
        let journal_directory = directory.join(JOURNAL_DIRECTORY);
        let segments = list_segments(&journal_directory)?;
        let first = segments.first().map(|first| first.first_sequence);
        let target = sequence.or(first).unwrap_or(1);
        let mut cursor = Self {
            directory: directory.to_owned(),
            journal_directory,
            segments,
            current: None,
            journal_id: None,
            position: SEGMENT_HEADER_SIZE,
            next_sequence: target,
        };
        if cursor.segments.is_empty() {
            return Ok(cursor);
        }
        let Some(index) = segment_index_for(&cursor.segments, target) else {
            return Err(cursor.not_found(target, target.saturating_sub(1)));
        };
        let first = cursor.segments[0].clone();
        let file = File::open(&first.path).map_err(JournalError::io(&first.path))?;
        cursor.journal_id = Some(read_header(&file, &first, None)?.journal_id);
        cursor.map_segment(cursor.segments[index].clone())?;
        cursor.next_sequence = cursor.segments[index].first_sequence;
        while cursor.next_sequence < target {
            match cursor.step(false)? {
                Step::Record(_) => {}
                Step::Idle => return Err(cursor.not_found(target, cursor.next_sequence - 1)),
            }
        }
        Ok(cursor)
    }

    fn not_found(&self, sequence: u64, last: u64) -> JournalError {
        JournalError::SequenceNotFound {
            path: self.directory.clone(),
            sequence,
            first: self.segments.first().map_or(1, |first| first.first_sequence),
            last,
        }
    }

    /// Maps `segment` and validates its header (the first one mapped sets the journal id that
    /// every other must have).
    fn map_segment(&mut self, segment: SegmentFile) -> Result<(), JournalError> {
        let file = File::open(&segment.path).map_err(JournalError::io(&segment.path))?;
        let header = read_header(&file, &segment, self.journal_id)?;
        self.journal_id = Some(header.journal_id);
        let map = ReadableMap::new(&file).map_err(JournalError::io(&segment.path))?;
        self.current = Some((segment, map));
        self.position = SEGMENT_HEADER_SIZE;
        Ok(())
    }

    /// Moves to the segment after the mapped one (the first, if none is mapped), if it exists
    /// yet; the directory is listed again when the known segments are exhausted. The next
    /// segment must start at `next_sequence`: anything else is corruption (row 10).
    fn advance_segment(&mut self) -> Result<bool, JournalError> {
        let after = self.current.as_ref().map(|(segment, _)| segment.first_sequence);
        let following = |segments: &[SegmentFile]| {
            segments
                .iter()
                .find(|segment| after.is_none_or(|after| segment.first_sequence > after))
                .cloned()
        };
        let mut next = following(&self.segments);
        if next.is_none() {
            self.segments = list_segments(&self.journal_directory)?;
            next = following(&self.segments);
        }
        let Some(next) = next else { return Ok(false) };
        if next.first_sequence != self.next_sequence {
            let detail = match &self.current {
                Some((current, _)) => format!(
                    "{} ends before sequence {}, but the next segment starts at {}: a segment \
                     is missing or extra",
                    current.path.display(),
                    self.next_sequence,
                    next.first_sequence
                ),
                None => format!(
                    "the journal's first segment starts at {}, not at {}",
                    next.first_sequence, self.next_sequence
                ),
            };
            return Err(JournalError::Corrupt {
                path: next.path.clone(),
                offset: 0,
                expected: self.next_sequence,
                found: Some(next.first_sequence),
                detail,
            });
        }
        self.map_segment(next)?;
        Ok(true)
    }

    /// Whether a segment after the mapped one exists (listing the directory again if none is
    /// known).
    fn later_segment_exists(&mut self) -> Result<bool, JournalError> {
        let Some(current) = self.current_first_sequence() else { return Ok(false) };
        let later = |segments: &[SegmentFile]| {
            segments.iter().any(|segment| segment.first_sequence > current)
        };
        if !later(&self.segments) {
            self.segments = list_segments(&self.journal_directory)?;
        }
        Ok(later(&self.segments))
    }

    fn current_path(&self) -> &Path {
        &self.current.as_ref().expect("a segment is mapped").0.path
    }

    fn current_first_sequence(&self) -> Option<u64> {
        self.current.as_ref().map(|(segment, _)| segment.first_sequence)
    }

    fn map(&self) -> &ReadableMap {
        &self.current.as_ref().expect("a segment is mapped").1
    }

    /// Finds the next record, moving across segments, and advances past it; returns its
    /// offset in the mapped segment. `Idle` at the end of the data. An incomplete record at the
    /// end of the last segment is `TornTail` (`tolerate_torn`: `Idle` instead, for a tailer).
    fn step(&mut self, tolerate_torn: bool) -> Result<Step, JournalError> {
        loop {
            let Some((_, map)) = &self.current else {
                if self.advance_segment()? {
                    continue;
                }
                return Ok(Step::Idle);
            };
            let bytes = map.bytes();
            let position = self.position;
            let published = position + 4 <= bytes.len() && map.load_length(position) != 0;
            let check = if published { check_record(&bytes[position..]) } else { RecordCheck::End };
            match check {
                RecordCheck::Record(record) if record.sequence == self.next_sequence => {
                    self.position += record.size_padded;
                    self.next_sequence += 1;
                    return Ok(Step::Record(position));
                }
                RecordCheck::Record(record) => {
                    return Err(JournalError::out_of_sequence(
                        self.current_path(),
                        position as u64,
                        self.next_sequence,
                        record.sequence,
                    ));
                }
                RecordCheck::End => {
                    if self.advance_segment()? {
                        continue;
                    }
                    return Ok(Step::Idle);
                }
                RecordCheck::Invalid(invalid) => {
                    let path = self.current_path().to_owned();
                    if self.later_segment_exists()? {
                        // Bad data with a later segment after it: row 8.
                        return Err(JournalError::Corrupt {
                            path,
                            offset: position as u64,
                            expected: self.next_sequence,
                            found: None,
                            detail: format!(
                                "{invalid:?}, in a segment that a later segment follows"
                            ),
                        });
                    }
                    if tolerate_torn {
                        return Ok(Step::Idle);
                    }
                    return Err(JournalError::TornTail {
                        path,
                        offset: position as u64,
                        expected: self.next_sequence,
                        detail: format!("{invalid:?}"),
                    });
                }
            }
        }
    }

    /// The record at `offset` of the mapped segment, which `step` checked.
    fn record_at(&self, offset: usize) -> RecordView<'_> {
        record_view_unchecked(&self.map().bytes()[offset..])
    }
}

/// What `Cursor::step` found.
enum Step {
    /// A valid record at this offset.
    Record(usize),
    /// No further record yet.
    Idle,
}

/// Reads the records of a journal in order, from its first record or from any sequence.
///
/// It reads what the journal holds: at the end it returns `None`, and an incomplete record at
/// the very end is an error ([`JournalError::TornTail`]) — open the journal for writing first
/// to truncate a torn tail, or use a [`Tailer`] to follow a journal being written. Damage
/// anywhere else is [`JournalError::Corrupt`].
#[derive(Debug)]
pub struct JournalReader {
    cursor: Cursor,
}

impl JournalReader {
    /// A reader from the journal's first record.
    pub fn open(directory: impl AsRef<Path>) -> Result<Self, JournalError> {
        Ok(Self { cursor: Cursor::open(directory.as_ref(), None)? })
    }

    /// A reader whose first record is `sequence` (which may be one past the last record).
    /// Finds the segment by a binary search over the file names, then scans it.
    pub fn open_at(directory: impl AsRef<Path>, sequence: u64) -> Result<Self, JournalError> {
        Ok(Self { cursor: Cursor::open(directory.as_ref(), Some(sequence))? })
    }

    /// The next record, its payload borrowed from the mapping, or `None` at the end.
    #[allow(clippy::should_implement_trait)] // A lending iterator: `Iterator` cannot lend.
    pub fn next(&mut self) -> Result<Option<RecordView<'_>>, JournalError> {
        match self.cursor.step(false)? {
            Step::Record(offset) => Ok(Some(self.cursor.record_at(offset))),
            Step::Idle => Ok(None),
        }
    }

    /// The sequence the next record will have.
    pub fn next_sequence(&self) -> u64 {
        self.cursor.next_sequence
    }
}

/// Follows a live journal: yields each record exactly once, in order, once the group commit it
/// belongs to is complete (its END_OF_BATCH record is written and valid), and `None` while
/// there is nothing new. Follows the writer across segment rolls.
///
/// In the `Fsync` tier a tailer can see a batch after its `pwrite` and before its
/// `fdatasync` returned: it reads what the writer wrote, not what the disk holds.
#[derive(Debug)]
pub struct Tailer {
    cursor: Cursor,
    /// Records before this offset are checked and their batch complete.
    committed_end: usize,
    /// How far records are checked, and the sequence there.
    scan_position: usize,
    scan_sequence: u64,
    /// The segment `scan_position` is in.
    scan_segment: Option<u64>,
}

impl Tailer {
    /// A tailer from `sequence`, which may be one past the last record (wait for the next).
    /// The journal may not exist yet: the tailer then waits for its first segment.
    pub fn open(directory: impl AsRef<Path>, sequence: u64) -> Result<Self, JournalError> {
        let cursor = Cursor::open(directory.as_ref(), Some(sequence))?;
        Ok(Self {
            committed_end: cursor.position,
            scan_position: cursor.position,
            scan_sequence: cursor.next_sequence,
            scan_segment: cursor.current_first_sequence(),
            cursor,
        })
    }

    /// The sequence of the next record to be yielded.
    pub fn next_sequence(&self) -> u64 {
        self.cursor.next_sequence
    }

    /// The next complete record, or `None` if there is none yet.
    pub fn poll(&mut self) -> Result<Option<RecordView<'_>>, JournalError> {
        loop {
            if self.cursor.current.is_none() && !self.cursor.advance_segment()? {
                return Ok(None);
            }
            if self.scan_segment != self.cursor.current_first_sequence() {
                self.reset_scan();
            }
            if self.cursor.position < self.committed_end {
                let offset = self.cursor.position;
                let record = self.cursor.record_at(offset);
                self.cursor.position += record.size_padded;
                self.cursor.next_sequence += 1;
                return Ok(Some(self.cursor.record_at(offset)));
            }
            self.scan_ahead()?;
            if self.cursor.position < self.committed_end {
                continue;
            }
            if !self.segment_finished() {
                return Ok(None);
            }
            // The writer may have rolled: it only does so with no room left for the largest
            // record, and only after publishing everything in this segment, so once the next
            // segment exists, a last look here decides.
            let next =
                self.cursor.journal_directory.join(segment_file_name(self.cursor.next_sequence));
            if !next.exists() {
                return Ok(None);
            }
            self.scan_ahead()?;
            if self.cursor.position < self.committed_end {
                continue;
            }
            if !self.cursor.advance_segment()? {
                return Ok(None);
            }
        }
    }

    fn reset_scan(&mut self) {
        self.scan_segment = self.cursor.current_first_sequence();
        self.scan_position = self.cursor.position;
        self.scan_sequence = self.cursor.next_sequence;
        self.committed_end = self.cursor.position;
    }

    /// Checks records after `scan_position` up to the next END_OF_BATCH record, which makes
    /// them yieldable. Stops at the end of what is written, or at an incomplete record (a
    /// write in flight), to look again at the next poll.
    fn scan_ahead(&mut self) -> Result<(), JournalError> {
        let map = self.cursor.map();
        let bytes = map.bytes();
        while self.scan_position + 4 <= bytes.len() && map.load_length(self.scan_position) != 0 {
            match check_record(&bytes[self.scan_position..]) {
                RecordCheck::Record(record) if record.sequence == self.scan_sequence => {
                    self.scan_position += record.size_padded;
                    self.scan_sequence += 1;
                    if record.is_end_of_batch() {
                        self.committed_end = self.scan_position;
                        return Ok(());
                    }
                }
                RecordCheck::Record(record) => {
                    return Err(JournalError::out_of_sequence(
                        self.cursor.current_path(),
                        self.scan_position as u64,
                        self.scan_sequence,
                        record.sequence,
                    ));
                }
                RecordCheck::End | RecordCheck::Invalid(_) => return Ok(()),
            }
        }
        Ok(())
    }

    /// Whether everything yielded so far ends this segment's data and the writer could have
    /// rolled: no checked record is pending and the room left is less than the largest record.
    fn segment_finished(&self) -> bool {
        let map = self.cursor.map();
        self.scan_position == self.cursor.position
            && map.bytes().len() - self.cursor.position < RECORD_SIZE_MAX
    }
}
