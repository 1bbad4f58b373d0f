//! Readers: [`JournalReader`] reads the records a journal holds, from any sequence, and
//! [`Tailer`] follows a journal that a writer (in this process or another) is appending to,
//! yielding each record once its group commit is complete.
//!
//! Both hand out payloads as slices of the segment's mapping: nothing is copied. Every batch
//! is checked (length bounds, then its checksum, then its records' fields and sequences) before
//! any of its records is handed out.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::JournalError;
use crate::format::{
    check_batch_with, padded, read_u32, record_view_unchecked, BatchCheck, BatchView, InvalidBatch,
    RecordView, BATCH_HEADER_SIZE, RECORD_SIZE_MAX, SEGMENT_HEADER_SIZE,
};
use crate::mmap::ReadableMap;
use crate::segment::{
    list_segments, read_header, segment_index_for, SegmentFile, JOURNAL_DIRECTORY,
};

/// A position in a journal: the segment list, the mapped segment, the offset of the next
/// record and its sequence.
#[derive(Debug)]
struct Cursor {
    directory: PathBuf,
    journal_directory: PathBuf,
    /// The segments as last listed (listed again when the known ones are exhausted).
    segments: Vec<SegmentFile>,
    /// The mapped segment (shared with the [`BatchRun`]s that hold its batches).
    current: Option<(SegmentFile, Arc<ReadableMap>)>,
    journal_id: Option<[u8; 16]>,
    /// The offset of the next record in the mapped segment.
    position: usize,
    /// The start of the checked batch that `position` is in (or of the last one checked).
    batch_start: usize,
    /// The end of that batch (`position` itself between batches).
    batch_end: usize,
    /// That batch's timestamp, from which its records' deltas count.
    batch_timestamp_ns: u64,
    /// The sequence and timestamp of that batch's last record.
    batch_last: (u64, u64),
    next_sequence: u64,
    /// Following a live journal: an unfinished batch at the end is waited for, not an error.
    tailing: bool,
}

impl Cursor {
    /// A cursor before the first record of `directory`'s journal, or before `sequence` if
    /// given. A sequence one past the last is allowed (a tailer waiting for the next record).
    fn open(directory: &Path, sequence: Option<u64>, tailing: bool) -> Result<Self, JournalError> {
        let journal_directory = directory.join(JOURNAL_DIRECTORY);
        let segments = list_segments(&journal_directory)?;
        // A directory without a journal reads as an empty one (a fresh engine's, or one that
        // only ever ran in memory). But one that holds segments itself is a journal folder
        // given in place of its data directory: read as empty, it would hide every record.
        if segments.is_empty() && !list_segments(directory)?.is_empty() {
            return Err(JournalError::Io {
                path: directory.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "this is a journal's `{JOURNAL_DIRECTORY}` folder: give the data \
                         directory that holds it"
                    ),
                ),
            });
        }
        let first = segments.first().map(|first| first.first_sequence);
        let target = sequence.or(first).unwrap_or(1);
        let mut cursor = Self {
            directory: directory.to_owned(),
            journal_directory,
            segments,
            current: None,
            journal_id: None,
            position: SEGMENT_HEADER_SIZE,
            batch_start: SEGMENT_HEADER_SIZE,
            batch_end: SEGMENT_HEADER_SIZE,
            batch_timestamp_ns: 0,
            batch_last: (0, 0),
            next_sequence: target,
            tailing,
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
            match cursor.step()? {
                Step::Record(..) => {}
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
        self.current = Some((segment, Arc::new(map)));
        self.position = SEGMENT_HEADER_SIZE;
        self.batch_start = SEGMENT_HEADER_SIZE;
        self.batch_end = SEGMENT_HEADER_SIZE;
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
        let Some(mut next) = next else { return Ok(false) };
        // A listing taken while the writer's background thread renames segments into place
        // can miss one: `readdir` is not atomic against `rename`s in the same directory, and a
        // listing slow enough to span two rolls has been seen to return the later segment
        // without the earlier (a replica under CI's load halted so). A fresh listing, once the
        // renames are done, has both; a segment really missing stays missing.
        for attempt in 1..=3 {
            if next.first_sequence == self.next_sequence {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(attempt));
            self.segments = list_segments(&self.journal_directory)?;
            match following(&self.segments) {
                Some(listed) => next = listed,
                None => return Ok(false),
            }
        }
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
    fn later_segment_listed(&mut self) -> Result<bool, JournalError> {
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
        self.shared_map()
    }

    fn shared_map(&self) -> &Arc<ReadableMap> {
        &self.current.as_ref().expect("a segment is mapped").1
    }

    /// Finds the next record, moving across segments, and advances past it; returns its
    /// offset in the mapped segment and its sequence. `Idle` at the end of the data. An
    /// unfinished or damaged batch at the end of the last segment is `TornTail` (while
    /// tailing: `Idle`, to look again).
    fn step(&mut self) -> Result<Step, JournalError> {
        if self.position == self.batch_end && !self.next_batch()? {
            return Ok(Step::Idle);
        }
        let offset = self.position;
        let sequence = self.next_sequence;
        self.position += padded(read_u32(self.map().bytes(), offset) as usize);
        self.next_sequence += 1;
        Ok(Step::Record(offset, sequence))
    }

    /// The checked records from `position` to the end of their batch (moving to the next batch
    /// first if `position` is at the end of one), and advances past them.
    fn step_batch(&mut self) -> Result<Option<RunBatch>, JournalError> {
        if self.position == self.batch_end && !self.next_batch()? {
            return Ok(None);
        }
        // From the batch's header when no record of it was taken yet: a whole batch.
        let whole = self.position == self.batch_start + BATCH_HEADER_SIZE;
        let start = if whole { self.batch_start } else { self.position };
        let batch = RunBatch {
            map: 0,
            start,
            end: self.batch_end,
            whole,
            first_sequence: self.next_sequence,
            last_sequence: self.batch_last.0,
            timestamp_ns: self.batch_timestamp_ns,
            last_timestamp_ns: self.batch_last.1,
        };
        self.position = self.batch_end;
        self.next_sequence = self.batch_last.0 + 1;
        Ok(Some(batch))
    }

    /// [`step_batch`](Self::step_batch)'s records as a view of the mapping.
    fn next_batch_view(&mut self) -> Result<Option<BatchView<'_>>, JournalError> {
        let Some(batch) = self.step_batch()? else {
            return Ok(None);
        };
        Ok(Some(batch.view(self.map().bytes())))
    }

    /// Checks the next batch, moving across segments, and makes it the current one; `false`
    /// at the end of the data.
    fn next_batch(&mut self) -> Result<bool, JournalError> {
        loop {
            if self.current.is_none() {
                if self.advance_segment()? {
                    continue;
                }
                return Ok(false);
            }
            // A writer rolls only after publishing everything in this segment, so a look here
            // taken after a later segment was seen decides what the segment holds. Only such a
            // look may call damage damage: a look taken before the listing can have found the
            // writer mid-batch, just before it finished the batch and rolled.
            let mut found = self.check_here();
            let mut rolled = false;
            if matches!(found, Found::End | Found::Invalid(_)) && self.later_segment_exists()? {
                found = self.check_here();
                rolled = true;
            }
            match found {
                Found::Batch { first_sequence, size, timestamp_ns, last }
                    if first_sequence == self.next_sequence =>
                {
                    self.batch_start = self.position;
                    self.batch_end = self.position + size;
                    self.batch_timestamp_ns = timestamp_ns;
                    self.batch_last = last;
                    self.position += BATCH_HEADER_SIZE;
                    return Ok(true);
                }
                Found::Batch { first_sequence, .. } => {
                    return Err(JournalError::out_of_sequence(
                        self.current_path(),
                        self.position as u64,
                        self.next_sequence,
                        first_sequence,
                    ));
                }
                // The end of what this segment holds only once a later segment was seen before
                // the look: until then the writer may still append here.
                Found::End if rolled && self.advance_segment()? => continue,
                Found::End => return Ok(false),
                Found::Invalid(invalid) => {
                    let path = self.current_path().to_owned();
                    if rolled {
                        // Bad data with a later segment after it: row 8.
                        return Err(JournalError::Corrupt {
                            path,
                            offset: self.position as u64,
                            expected: self.next_sequence,
                            found: None,
                            detail: format!("{invalid}, in a segment that a later segment follows"),
                        });
                    }
                    if self.tailing {
                        return Ok(false);
                    }
                    return Err(JournalError::TornTail {
                        path,
                        offset: self.position as u64,
                        expected: self.next_sequence,
                        detail: invalid.to_string(),
                    });
                }
            }
        }
    }

    /// Checks the batch at `position`, loading every length with acquire ordering: a writer
    /// may be appending to this segment.
    fn check_here(&self) -> Found {
        let map = self.map();
        let base = self.position;
        match check_batch_with(&map.bytes()[base..], |offset| map.load_length(base + offset)) {
            BatchCheck::Batch(batch) => Found::Batch {
                first_sequence: batch.first_sequence,
                size: batch.size(),
                timestamp_ns: batch.timestamp_ns,
                last: (batch.last_sequence, batch.last_timestamp_ns),
            },
            BatchCheck::End => Found::End,
            BatchCheck::Invalid(invalid) => Found::Invalid(invalid),
        }
    }

    /// Whether a segment after the mapped one can exist: listing the directory costs a system
    /// call, so a tailer only looks when the writer could have rolled, that is when less room
    /// than the largest record is left (a tailer does not diagnose damage in the middle of a
    /// segment; a reader does).
    fn later_segment_exists(&mut self) -> Result<bool, JournalError> {
        let room = self.map().bytes().len() - self.position;
        if self.tailing && room >= RECORD_SIZE_MAX {
            return Ok(false);
        }
        self.later_segment_listed()
    }

    /// The record `sequence` at `offset` of the mapped segment, which `step` checked.
    fn record_at(&self, offset: usize, sequence: u64) -> RecordView<'_> {
        record_view_unchecked(&self.map().bytes()[offset..], sequence, self.batch_timestamp_ns)
    }
}

/// What `Cursor::check_here` found.
enum Found {
    Batch { first_sequence: u64, size: usize, timestamp_ns: u64, last: (u64, u64) },
    End,
    Invalid(InvalidBatch),
}

/// What `Cursor::step` found.
enum Step {
    /// A valid record at this offset, and its sequence.
    Record(usize, u64),
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
        Ok(Self { cursor: Cursor::open(directory.as_ref(), None, false)? })
    }

    /// A reader whose first record is `sequence` (which may be one past the last record).
    /// Finds the segment by a binary search over the file names, then scans it.
    pub fn open_at(directory: impl AsRef<Path>, sequence: u64) -> Result<Self, JournalError> {
        Ok(Self { cursor: Cursor::open(directory.as_ref(), Some(sequence), false)? })
    }

    /// The next record, its payload borrowed from the mapping, or `None` at the end.
    #[allow(clippy::should_implement_trait)] // A lending iterator: `Iterator` cannot lend.
    pub fn next(&mut self) -> Result<Option<RecordView<'_>>, JournalError> {
        match self.cursor.step()? {
            Step::Record(offset, sequence) => Ok(Some(self.cursor.record_at(offset, sequence))),
            Step::Idle => Ok(None),
        }
    }

    /// The records from the next one to the end of its batch (a whole group commit, unless
    /// the reader started or stopped inside one), or `None` at the end. The fastest way to
    /// replay: each batch's checksum is verified once, and its records are iterated without
    /// further checks.
    pub fn next_batch(&mut self) -> Result<Option<BatchView<'_>>, JournalError> {
        self.cursor.next_batch_view()
    }

    /// Fills `run` with the next checked batches, as [`next_batch`](Self::next_batch) would
    /// return them, until it holds at least `records` records or `batches` batches, or the
    /// journal's end. A run owns what it holds (the segments' mappings are shared), so it can
    /// be read on another thread while this reader checks the next: replay's read-ahead.
    ///
    /// At the end `run` is left empty. On an error `run` holds the batches before it, all
    /// checked: they come first, and the error after them.
    pub fn next_run(
        &mut self,
        run: &mut BatchRun,
        records: u64,
        batches: usize,
    ) -> Result<(), JournalError> {
        run.clear();
        let mut held = 0;
        while held < records && run.batches.len() < batches {
            let Some(batch) = self.cursor.step_batch()? else {
                break;
            };
            let map = self.cursor.shared_map();
            if !run.maps.last().is_some_and(|last| Arc::ptr_eq(last, map)) {
                run.maps.push(Arc::clone(map));
            }
            run.batches.push(RunBatch { map: run.maps.len() - 1, ..batch });
            held += batch.last_sequence - batch.first_sequence + 1;
        }
        Ok(())
    }

    /// The sequence the next record will have.
    pub fn next_sequence(&self) -> u64 {
        self.cursor.next_sequence
    }

    /// The journal's id, once a segment was read (`None` for a directory without one).
    pub fn journal_id(&self) -> Option<[u8; 16]> {
        self.cursor.journal_id
    }
}

/// Consecutive checked batches that [`JournalReader::next_run`] read, owned: `Send`, so one
/// thread can check the journal ahead while another applies what it already checked. The
/// memory is kept across fills, so a run handed back and forth allocates nothing once grown.
#[derive(Debug, Default)]
pub struct BatchRun {
    /// The mappings the batches lie in: one, or more where a run crosses into later segments.
    maps: Vec<Arc<ReadableMap>>,
    batches: Vec<RunBatch>,
}

/// Where a batch (or the rest of one) lies: a mapping of the run, a byte range in it, whether
/// the range starts at the batch's header, the sequences of its first and last records, the
/// batch's timestamp and its last record's.
#[derive(Clone, Copy, Debug)]
struct RunBatch {
    map: usize,
    start: usize,
    end: usize,
    whole: bool,
    first_sequence: u64,
    last_sequence: u64,
    timestamp_ns: u64,
    last_timestamp_ns: u64,
}

impl RunBatch {
    /// Its view, in the bytes of its mapping.
    fn view(self, bytes: &[u8]) -> BatchView<'_> {
        BatchView::checked(
            &bytes[self.start..self.end],
            self.whole,
            self.first_sequence,
            self.last_sequence,
            self.timestamp_ns,
            self.last_timestamp_ns,
        )
    }
}

impl BatchRun {
    /// An empty run.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether it holds no batch (the journal's end, after a fill).
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// How many records it holds.
    pub fn records(&self) -> u64 {
        self.batches.iter().map(|batch| batch.last_sequence - batch.first_sequence + 1).sum()
    }

    /// Its batches, in order.
    pub fn batches(&self) -> impl Iterator<Item = BatchView<'_>> {
        self.batches.iter().map(|batch| batch.view(self.maps[batch.map].bytes()))
    }

    /// Lets go of the batches (and of the mappings, once no other run or reader holds them).
    pub fn clear(&mut self) {
        self.maps.clear();
        self.batches.clear();
    }
}

/// Follows a live journal: yields each record exactly once, in order, once the group commit it
/// belongs to is complete (the batch's length is published and its checksum matches), and
/// `None` while there is nothing new. Follows the writer across segment rolls.
///
/// In the `Fsync` tier a tailer can see a batch after its `pwrite` and before its
/// `fdatasync` returned: it reads what the writer wrote, not what the disk holds.
#[derive(Debug)]
pub struct Tailer {
    cursor: Cursor,
}

impl Tailer {
    /// A tailer from `sequence`, which may be one past the last record (wait for the next).
    /// The journal may not exist yet: the tailer then waits for its first segment.
    pub fn open(directory: impl AsRef<Path>, sequence: u64) -> Result<Self, JournalError> {
        Ok(Self { cursor: Cursor::open(directory.as_ref(), Some(sequence), true)? })
    }

    /// The sequence of the next record to be yielded.
    pub fn next_sequence(&self) -> u64 {
        self.cursor.next_sequence
    }

    /// The journal's id, once its first segment was read (`None` while it has none).
    pub fn journal_id(&self) -> Option<[u8; 16]> {
        self.cursor.journal_id
    }

    /// The next complete record, or `None` if there is none yet.
    pub fn poll(&mut self) -> Result<Option<RecordView<'_>>, JournalError> {
        match self.cursor.step()? {
            Step::Record(offset, sequence) => Ok(Some(self.cursor.record_at(offset, sequence))),
            Step::Idle => Ok(None),
        }
    }

    /// The records from the next one to the end of its batch, once that batch is complete, or
    /// `None` if there is none yet: a whole group commit ([`BatchView::is_whole`]) unless
    /// the tailer started inside one. Mixes with [`poll`](Self::poll): each record is yielded
    /// once either way.
    pub fn poll_batch(&mut self) -> Result<Option<BatchView<'_>>, JournalError> {
        self.cursor.next_batch_view()
    }
}
