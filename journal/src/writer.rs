//! The journal writer: one per directory (a lock), appending records in batches and making
//! each batch durable in one call (group commit), per its durability tier.

use std::fmt;
use std::fs::File;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::JournalError;
use crate::format::{
    read_u32, record_size_padded, seal_batch, seal_batch_in_buffer, validate_record,
    validate_segment_size, write_batch_header, write_record, BatchView, EpochChange, RecordFields,
    SegmentHeader, BATCH_HEADER_SIZE, GROUP_COMMIT_BYTES_MAX, KIND_EPOCH, RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE, SEGMENT_HEADER_USED, TIMESTAMP_DELTA_MAX,
};
use crate::lock::WriterLock;
use crate::mmap::{prefetch, ReadableMap, WritableMap};
use crate::scan::{scan_segment, SegmentEnd, SegmentScan};
use crate::segment::{
    check_torn_roll, classify_spare, create_directory, hex, list_segments, missing_segment,
    open_read_write, parse_segment_file_name, prepare_spare, read_header, remove_if_present,
    segment_file_name, Preparer, SegmentFile, Spare, SpareState, JOURNAL_DIRECTORY,
    SNAPSHOT_DIRECTORY, SPARE_NAME, SPARE_TEMPORARY_NAME, TORN_ROLL,
};
use crate::storage::{write_zeros, FileStorage, Storage};

/// What an acknowledged append survives (`docs/journal-format.md`, section 5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Records are written into the mapped segment; `commit` makes no system call. Survives a
    /// process crash, not a power loss or a kernel crash.
    #[default]
    PageCache,
    /// Each commit writes the batch with `pwrite` and waits for `fdatasync`. Survives a power
    /// loss once `commit` returned.
    Fsync,
}

/// How far ahead of the record it writes the `PageCache` tier asks for a cache line of the
/// mapped segment: a few dozen small records. A page ahead (4096) measured slower than this
/// (BENCHMARKS.md, "the write prefetch").
const WRITE_PREFETCH_DISTANCE: usize = 1024;

/// The default segment size: 256 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 256 << 20;

/// How to open a journal for writing.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    segment_size: u64,
    durability: Durability,
    first_sequence: u64,
    epoch: u64,
    journal_id: Option<[u8; 16]>,
    storage: Arc<dyn Storage>,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            segment_size: DEFAULT_SEGMENT_SIZE,
            durability: Durability::default(),
            first_sequence: 1,
            epoch: 0,
            journal_id: None,
            storage: Arc::new(FileStorage),
        }
    }
}

impl JournalOptions {
    /// The defaults: 256 MiB segments, `PageCache`, a new journal starting at sequence 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// The size of new segment files: a multiple of 4 096 bytes from 1 MiB to 4 GiB. Existing
    /// segments keep the size they were created with.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// The durability tier.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The sequence of the first record of a journal created by this open (a replica that
    /// starts from a snapshot starts its journal after it). Ignored when the journal exists.
    pub fn first_sequence(mut self, sequence: u64) -> Self {
        self.first_sequence = sequence;
        self
    }

    /// The writer's epoch, stored in the header of each segment it creates; an existing
    /// journal whose segments carry a higher one keeps that.
    pub fn epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }

    /// The journal's id: a journal created by this open takes it (a replica's journal is the
    /// same journal as its primary's, and says so), and an existing journal must already have
    /// it, or `open` fails with [`JournalError::ForeignJournal`]. By default a new journal gets
    /// a random id and an existing one is opened whatever its id.
    pub fn journal_id(mut self, id: [u8; 16]) -> Self {
        self.journal_id = Some(id);
        self
    }

    /// The file operations to use: the real file system unless a test injects faults.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = storage;
        self
    }
}

/// What `JournalWriter::open` found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The journal directory.
    pub directory: PathBuf,
    /// Whether the journal was created by this open.
    pub created: bool,
    /// The first sequence the journal holds (the first segment's first sequence).
    pub first_sequence: u64,
    /// The last record's sequence (`first_sequence - 1` when there is none).
    pub last_sequence: u64,
    /// The last record's timestamp (0 when there is none).
    pub last_timestamp_ns: u64,
    /// Segment files.
    pub segments: usize,
    /// A torn tail that was truncated (rows 3 to 5 of the recovery table).
    pub truncated: Option<Truncation>,
    /// A rolled segment whose new name had not reached the disk before a crash, renamed now:
    /// `(from, to)`.
    pub renamed: Option<(PathBuf, PathBuf)>,
    /// Files removed, each with the reason: a stale spare, or a segment whose header a crash
    /// tore during a roll before any record in it was synced.
    pub removed: Vec<(PathBuf, String)>,
}

/// A torn tail truncated by `open`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// The segment file.
    pub segment: PathBuf,
    /// Where the valid data ends.
    pub offset: u64,
    /// Bytes zeroed.
    pub bytes: u64,
    /// What was there.
    pub damage: String,
    /// Sequences of checksum-valid records dropped with it (never acknowledged).
    pub dropped: Option<RangeInclusive<u64>>,
}

impl fmt::Display for OpenReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.created { "created" } else { "opened" };
        write!(formatter, "{verb} journal {}: ", self.directory.display())?;
        if self.last_sequence >= self.first_sequence {
            write!(formatter, "sequences {}..={}", self.first_sequence, self.last_sequence)?;
        } else {
            write!(formatter, "empty, next sequence {}", self.first_sequence)?;
        }
        write!(formatter, " in {} segment(s)", self.segments)?;
        if let Some(truncation) = &self.truncated {
            write!(
                formatter,
                "; torn tail truncated in {} at offset {} ({} bytes: {})",
                truncation.segment.display(),
                truncation.offset,
                truncation.bytes,
                truncation.damage
            )?;
            if let Some(dropped) = &truncation.dropped {
                write!(
                    formatter,
                    ", dropping unacknowledged sequences {}..={}",
                    dropped.start(),
                    dropped.end()
                )?;
            }
        }
        if let Some((from, to)) = &self.renamed {
            write!(formatter, "; renamed {} to {}", from.display(), to.display())?;
        }
        for (path, reason) in &self.removed {
            write!(formatter, "; removed {} ({reason})", path.display())?;
        }
        Ok(())
    }
}

/// The segment being appended to.
#[derive(Debug)]
struct ActiveSegment {
    path: PathBuf,
    file: File,
    size: usize,
    /// The `PageCache` tier's mapping.
    map: Option<WritableMap>,
}

/// The single writer of a journal directory.
///
/// ```
/// use keel_journal::{Durability, JournalOptions, JournalReader, JournalWriter};
///
/// let directory = tempfile::tempdir()?;
/// let options = JournalOptions::new().segment_size(1 << 20).durability(Durability::Fsync);
/// let mut writer = JournalWriter::open(directory.path(), options)?;
/// let first = writer.append(1_700_000_000_000_000_000, 1, 1, b"deposit 100")?;
/// writer.append(1_700_000_000_000_000_001, 1, 1, b"withdraw 30")?;
/// assert_eq!(writer.commit()?, first + 1, "both are durable: one pwrite, one fdatasync");
/// drop(writer);
///
/// let mut reader = JournalReader::open(directory.path())?;
/// let record = reader.next()?.expect("a record");
/// assert_eq!((record.sequence, record.payload), (1, &b"deposit 100"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct JournalWriter {
    directory: PathBuf,
    journal_directory: PathBuf,
    storage: Arc<dyn Storage>,
    durability: Durability,
    segment_size: u64,
    epoch: u64,
    journal_id: [u8; 16],
    segment: ActiveSegment,
    /// Where the next record starts in the segment.
    position: usize,
    next_sequence: u64,
    last_timestamp_ns: u64,
    durable_sequence: u64,
    /// Bytes appended since the last commit (bounded by `GROUP_COMMIT_BYTES_MAX`).
    pending_bytes: usize,
    /// Bytes of the open batch, its header and its records with their padding: the records
    /// appended one by one since the last batch was sealed (by a commit, or before a sealed
    /// batch was copied in after them). 0: none.
    open_bytes: usize,
    /// The open batch's length field once sealed: `open_bytes` less the last record's padding.
    open_length: usize,
    /// The open batch's timestamp, from which its records' deltas count.
    open_timestamp_ns: u64,
    /// `Fsync`: the one batch of the next commit (a copied one, or the open one), written
    /// with one `pwrite` at `staged_offset`.
    staging: Vec<u8>,
    staged_offset: u64,
    preparer: Preparer,
    /// Set by the first I/O error: the writer refuses everything after it.
    failure: Option<String>,
    report: OpenReport,
    _lock: WriterLock,
}

impl JournalWriter {
    /// Opens the journal in `directory` for writing, creating it if it holds none, and
    /// recovers its tail per the decision table of `docs/journal-format.md` (section 6): a torn
    /// tail is truncated and reported ([`open_report`](Self::open_report)); corruption is an
    /// error naming the file, the offset and the sequence. A second writer is refused.
    pub fn open(
        directory: impl AsRef<Path>,
        options: JournalOptions,
    ) -> Result<Self, JournalError> {
        let directory = directory.as_ref().to_owned();
        validate_segment_size(options.segment_size).map_err(|source| JournalError::Format {
            path: directory.clone(),
            offset: 0,
            source,
        })?;
        if options.first_sequence == 0 {
            return Err(JournalError::SequenceNotFound {
                path: directory,
                sequence: 0,
                first: 1,
                last: 0,
            });
        }
        let storage = Arc::clone(&options.storage);
        create_directory(&*storage, &directory)?;
        let lock = WriterLock::acquire(&directory)?;
        let journal_directory = directory.join(JOURNAL_DIRECTORY);
        create_directory(&*storage, &journal_directory)?;
        create_directory(&*storage, &directory.join(SNAPSHOT_DIRECTORY))?;

        let mut report = OpenReport { directory: directory.clone(), ..OpenReport::default() };
        recover_spare(&*storage, &journal_directory, &mut report)?;
        let mut segments = list_segments(&journal_directory)?;
        remove_torn_last_segment(&mut segments, &mut report)?;
        let mapped = options.durability == Durability::PageCache;

        let recovered = if segments.is_empty() {
            report.created = true;
            create_first_segment(&*storage, &journal_directory, &options)?
        } else {
            // Checked before recovery changes anything: a foreign journal is left as it is.
            if let Some(expected) = options.journal_id {
                let first = &segments[0];
                let file = File::open(&first.path).map_err(JournalError::io(&first.path))?;
                let found = read_header(&file, first, None)?.journal_id;
                if found != expected {
                    return Err(JournalError::ForeignJournal {
                        path: directory,
                        expected: hex(&expected),
                        found: hex(&found),
                    });
                }
            }
            let recovered = recover_tail(&*storage, &segments, &mut report)?;
            if options.durability == Durability::Fsync {
                rewrite_last_batch(&*storage, &recovered)?;
                make_durable(&*storage, &journal_directory, &segments)?;
            }
            recovered
        };
        let Recovered {
            segment,
            journal_id,
            epoch,
            first_sequence,
            position,
            last_sequence,
            last_timestamp_ns,
            ..
        } = recovered;
        let file = open_read_write(&segment.path)?;
        let size = file.metadata().map_err(JournalError::io(&segment.path))?.len() as usize;
        let map = if mapped {
            let mut map = WritableMap::new(&file).map_err(JournalError::io(&segment.path))?;
            map.prefault();
            Some(map)
        } else {
            None
        };
        report.first_sequence = first_sequence;
        report.last_sequence = last_sequence;
        report.last_timestamp_ns = last_timestamp_ns;
        report.segments = segments.len().max(1);
        let preparer = Preparer::start(
            Arc::clone(&storage),
            journal_directory.clone(),
            options.segment_size,
            mapped,
        )?;
        Ok(Self {
            directory,
            journal_directory,
            storage,
            durability: options.durability,
            segment_size: options.segment_size,
            // Epochs never go back: a writer opened with an older one keeps the journal's.
            epoch: epoch.max(options.epoch),
            journal_id,
            segment: ActiveSegment { path: segment.path, file, size, map },
            position,
            next_sequence: last_sequence + 1,
            last_timestamp_ns,
            durable_sequence: last_sequence,
            pending_bytes: 0,
            open_bytes: 0,
            open_length: 0,
            open_timestamp_ns: 0,
            staging: Vec::new(),
            staged_offset: position as u64,
            preparer,
            failure: None,
            report,
            _lock: lock,
        })
    }

    /// What opening found and did.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The journal directory.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// The durability tier.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The journal's id, the same in every segment header.
    pub fn journal_id(&self) -> [u8; 16] {
        self.journal_id
    }

    /// The writer's epoch: the highest in the journal's segment headers, or the one it was
    /// opened with if that is higher. New segments carry it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The sequence the next append gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// The last sequence made durable by a commit (or found at open).
    pub fn durable_sequence(&self) -> u64 {
        self.durable_sequence
    }

    /// The last record's timestamp.
    pub fn last_timestamp_ns(&self) -> u64 {
        self.last_timestamp_ns
    }

    /// Appends a record and returns its sequence. It is durable once a later
    /// [`commit`](Self::commit) returns. `timestamp_ns` must not be below the previous
    /// record's; `kind` is the application's (`1..=0x7FFF`) or keel's; the payload must fit a
    /// record (`RECORD_SIZE_MAX`). Those refusals leave the writer usable; an I/O error stops
    /// it (see [`JournalError::Failed`]).
    pub fn append(
        &mut self,
        timestamp_ns: u64,
        kind: u16,
        version: u16,
        payload: &[u8],
    ) -> Result<u64, JournalError> {
        self.check_usable()?;
        let sequence = self.next_sequence;
        let fields = RecordFields { sequence, timestamp_ns, kind, version };
        validate_record(&fields, payload.len())
            .map_err(JournalError::format(&self.segment.path, self.position as u64))?;
        let epoch = if kind == KIND_EPOCH {
            let change = EpochChange::decode(payload)
                .map_err(JournalError::format(&self.segment.path, self.position as u64))?;
            Some(change.epoch)
        } else {
            None
        };
        if timestamp_ns < self.last_timestamp_ns {
            return Err(JournalError::TimestampRegression {
                sequence,
                timestamp_ns,
                previous_ns: self.last_timestamp_ns,
            });
        }
        let padded = record_size_padded(payload.len());
        if self.open_bytes != 0 && timestamp_ns - self.open_timestamp_ns > TIMESTAMP_DELTA_MAX {
            // Its timestamp's delta would not fit its record header, so it starts a batch of
            // its own; and the open one is committed rather than only sealed, so that a batch
            // stays a group commit, which recovery's torn-tail rule relies on (format
            // document, section 5).
            self.commit()?;
        }
        let needed = |open_bytes| padded + if open_bytes == 0 { BATCH_HEADER_SIZE } else { 0 };
        if self.pending_bytes + needed(self.open_bytes) > GROUP_COMMIT_BYTES_MAX {
            // A group commit is bounded, so that recovery can tell the last batch's torn
            // pages from damage to synced data (format document, section 5).
            self.commit()?;
        }
        if self.durability == Durability::Fsync && self.open_bytes == 0 && self.pending_bytes != 0 {
            // A copied batch waits for its sync, and in this tier a commit is one batch
            // ([`append_batch`](Self::append_batch)).
            self.commit()?;
        }
        if self.position + needed(self.open_bytes) > self.segment.size {
            self.roll()?;
        }
        if self.open_bytes == 0 {
            self.open_batch(sequence, timestamp_ns);
        }
        let delta = (timestamp_ns - self.open_timestamp_ns) as u32;
        match self.durability {
            Durability::PageCache => self.append_mapped(delta, &fields, payload, padded),
            Durability::Fsync => self.append_staged(delta, &fields, payload, padded),
        }
        self.open_length = self.open_bytes + RECORD_HEADER_SIZE + payload.len();
        self.position += padded;
        self.pending_bytes += padded;
        self.open_bytes += padded;
        self.next_sequence += 1;
        self.last_timestamp_ns = timestamp_ns;
        if let Some(epoch) = epoch {
            // Segments created from now on carry it.
            self.epoch = self.epoch.max(epoch);
        }
        Ok(sequence)
    }

    /// Opens a batch at the position, whose first record is `sequence` at `timestamp_ns`:
    /// writes its header but for the length and the checksum, which stay zero until it is
    /// sealed (a reader finds nothing there before).
    fn open_batch(&mut self, sequence: u64, timestamp_ns: u64) {
        match self.durability {
            Durability::PageCache => {
                let offset = self.position;
                let map = self.segment.map.as_mut().expect("the PageCache tier maps its segment");
                write_batch_header(&mut map.bytes_mut()[offset..], sequence, timestamp_ns);
            }
            Durability::Fsync => {
                let start = self.staging.len();
                self.staging.resize(start + BATCH_HEADER_SIZE, 0);
                write_batch_header(&mut self.staging[start..], sequence, timestamp_ns);
            }
        }
        self.open_timestamp_ns = timestamp_ns;
        self.open_bytes = BATCH_HEADER_SIZE;
        self.position += BATCH_HEADER_SIZE;
        self.pending_bytes += BATCH_HEADER_SIZE;
    }

    fn append_mapped(&mut self, delta: u32, fields: &RecordFields, payload: &[u8], padded: usize) {
        let offset = self.position;
        let map = self.segment.map.as_mut().expect("the PageCache tier maps its segment");
        let bytes = map.bytes_mut();
        // The segment's pages were zeroed by the kernel long before this write reaches them,
        // so each new cache line (and each new page's translation) is a miss the store
        // waits for; asking for the line a few dozen records ahead overlaps those misses
        // with the work on the records between.
        prefetch(bytes, offset + WRITE_PREFETCH_DISTANCE);
        let record = &mut bytes[offset..offset + padded];
        write_record(record, delta, fields.kind, fields.version, payload);
    }

    /// Appends the records of a checked batch (one that
    /// [`check_batch`](crate::format::check_batch) accepted, or a reader returned), which must
    /// start at the next sequence, and returns the last one's sequence. They are durable, as
    /// appended records are, once a later [`commit`](Self::commit) returns.
    ///
    /// A whole batch is copied as it is, checksum and all: a replica keeps its primary's group
    /// commits byte for byte, without encoding and checksumming every record again. In the
    /// `PageCache` tier the open batch (if any) is sealed first, and the batch joins the
    /// commit. In the `Fsync` tier a commit is one batch, so that a power loss can damage only
    /// the last batch (format document, section 5): whatever the commit holds is committed
    /// first, and the batch is the next commit's (records appended after it commit it first
    /// too). Part of a batch (from a reader that started inside one), or a batch too large for
    /// this journal's segments, is appended record by record.
    /// A timestamp below the previous one, or an epoch-change record that does not decode, is
    /// refused before anything is written, and the writer stays usable.
    pub fn append_batch(&mut self, batch: &BatchView<'_>) -> Result<u64, JournalError> {
        self.check_usable()?;
        if batch.first_sequence != self.next_sequence {
            return Err(JournalError::NotNext {
                path: self.directory.clone(),
                expected: self.next_sequence,
                found: batch.first_sequence,
            });
        }
        let mut previous_ns = self.last_timestamp_ns;
        let mut epoch = self.epoch;
        for record in batch.iter() {
            if record.timestamp_ns < previous_ns {
                return Err(JournalError::TimestampRegression {
                    sequence: record.sequence,
                    timestamp_ns: record.timestamp_ns,
                    previous_ns,
                });
            }
            previous_ns = record.timestamp_ns;
            if record.kind == KIND_EPOCH {
                let change = EpochChange::decode(record.payload)
                    .map_err(JournalError::format(&self.segment.path, self.position as u64))?;
                epoch = epoch.max(change.epoch);
            }
        }
        let bytes = batch.as_bytes();
        let room = self.segment.size - SEGMENT_HEADER_SIZE;
        if !batch.is_whole() || bytes.len() > room {
            for record in batch.iter() {
                self.append(record.timestamp_ns, record.kind, record.version, record.payload)?;
            }
            return Ok(self.next_sequence - 1);
        }
        let fsync_commit_holds_some =
            self.durability == Durability::Fsync && self.pending_bytes != 0;
        if self.pending_bytes + bytes.len() > GROUP_COMMIT_BYTES_MAX || fsync_commit_holds_some {
            self.commit()?;
        }
        if self.position + bytes.len() > self.segment.size {
            self.roll()?;
        } else {
            self.seal_open_batch();
        }
        match self.durability {
            Durability::PageCache => self.copy_mapped(bytes),
            Durability::Fsync => self.staging.extend_from_slice(bytes),
        }
        self.position += bytes.len();
        self.pending_bytes += bytes.len();
        self.next_sequence = batch.last_sequence + 1;
        self.last_timestamp_ns = batch.last_timestamp_ns;
        // Segments created from now on carry it.
        self.epoch = epoch;
        Ok(batch.last_sequence)
    }

    /// Copies a sealed batch into the mapping at the writer's position: every byte but its
    /// length, which is stored last and publishes the whole batch at once (a reader stops at
    /// a zero length, and the bytes beyond the position are zero).
    fn copy_mapped(&mut self, bytes: &[u8]) {
        let offset = self.position;
        let map = self.segment.map.as_mut().expect("the PageCache tier maps its segment");
        map.bytes_mut()[offset + 4..offset + bytes.len()].copy_from_slice(&bytes[4..]);
        map.publish_length(offset, read_u32(bytes, 0));
    }

    /// Seals the open batch, if there is one, without making it durable: stores its checksum,
    /// then its length, which publishes it in the `PageCache` tier. What follows it starts a
    /// batch of its own.
    fn seal_open_batch(&mut self) {
        if self.open_bytes == 0 {
            return;
        }
        let length = self.open_length as u32;
        match self.durability {
            Durability::PageCache => {
                let start = self.position - self.open_bytes;
                let map = self.segment.map.as_mut().expect("the PageCache tier maps its segment");
                seal_batch(&mut map.bytes_mut()[start..start + self.open_length], length);
                map.publish_length(start, length);
            }
            Durability::Fsync => {
                let start = self.staging.len() - self.open_bytes;
                seal_batch_in_buffer(&mut self.staging[start..], length);
            }
        }
        self.open_bytes = 0;
    }

    fn append_staged(&mut self, delta: u32, fields: &RecordFields, payload: &[u8], padded: usize) {
        let start = self.staging.len();
        self.staging.resize(start + padded, 0);
        write_record(&mut self.staging[start..], delta, fields.kind, fields.version, payload);
    }

    /// Whether the next segment is allocated and pre-faulted, so that a roll now would not
    /// wait for it. The background thread prepares it after every roll; a writer appending
    /// faster than the disk can allocate segments waits at the roll.
    pub fn next_segment_ready(&mut self) -> bool {
        self.preparer.is_ready()
    }

    /// Makes every appended record durable per the tier, sealing the batch (its checksum and
    /// its length in its header), and returns the last durable sequence. `PageCache`: seals
    /// and so publishes the batch (no system call). `Fsync`: one `pwrite` of the batch and one
    /// `fdatasync`.
    pub fn commit(&mut self) -> Result<u64, JournalError> {
        self.check_usable()?;
        if let Err(error) = self.preparer.check() {
            return Err(self.fail(error));
        }
        if self.next_sequence - 1 == self.durable_sequence {
            return Ok(self.durable_sequence);
        }
        self.seal_open_batch();
        if self.durability == Durability::Fsync {
            if let Err(error) = self.write_staged() {
                return Err(self.fail(error));
            }
        }
        self.durable_sequence = self.next_sequence - 1;
        self.pending_bytes = 0;
        Ok(self.durable_sequence)
    }

    /// Writes the staged batch, sealed, and waits for it to reach the disk.
    fn write_staged(&mut self) -> Result<(), JournalError> {
        let path = &self.segment.path;
        self.storage
            .write_at(&self.segment.file, path, self.staged_offset, &self.staging)
            .map_err(JournalError::io(path))?;
        self.storage.sync_data(&self.segment.file, path).map_err(JournalError::io(path))?;
        self.staged_offset += self.staging.len() as u64;
        self.staging.clear();
        Ok(())
    }

    /// Continues in the spare segment: the records appended to the current segment are
    /// committed first, so that a segment that is not the last always ends durably with a
    /// sealed batch (recovery treats damage in it as corruption, row 8). Then the spare
    /// gets its header and its name; the background thread makes the rename durable and
    /// prepares the next spare.
    fn roll(&mut self) -> Result<(), JournalError> {
        self.commit()?;
        let spare = match self.preparer.take() {
            Ok(spare) => spare,
            Err(error) => return Err(self.fail(error)),
        };
        let header = SegmentHeader {
            first_sequence: self.next_sequence,
            segment_size: self.segment_size,
            journal_id: self.journal_id,
            epoch: self.epoch,
        }
        .encode();
        let path = self.journal_directory.join(segment_file_name(self.next_sequence));
        if let Err(error) = self.install(spare, &header, &path) {
            return Err(self.fail(error));
        }
        self.position = SEGMENT_HEADER_SIZE;
        self.staged_offset = SEGMENT_HEADER_SIZE as u64;
        Ok(())
    }

    fn install(
        &mut self,
        mut spare: Spare,
        header: &[u8; SEGMENT_HEADER_USED],
        path: &Path,
    ) -> Result<(), JournalError> {
        match &mut spare.map {
            Some(map) => map.bytes_mut()[..SEGMENT_HEADER_USED].copy_from_slice(header),
            // Written before the rename (not synced: the next commit's `fdatasync` covers it),
            // so that a tailer never finds the segment under its name without a header.
            None => self
                .storage
                .write_at(&spare.file, &spare.path, 0, header)
                .map_err(JournalError::io(&spare.path))?,
        }
        let size = self.segment_size as usize;
        let retired = std::mem::replace(
            &mut self.segment,
            ActiveSegment { path: path.to_owned(), file: spare.file, size, map: spare.map },
        );
        // The rename runs on the preparer's thread: the writer goes on appending to the file
        // while it is still called `spare` (format document, section 1: `open` finishes such a
        // rename), and a reader finds the segment once it has its name.
        self.preparer.rolled((retired.file, retired.map), spare.path, path.to_owned())
    }

    /// Deletes, or moves to `archive/`, every segment whose records all lie below `sequence`
    /// (the next segment starts at or below it). The segment being written is never touched.
    /// Returns the files removed. Keeping a snapshot and every record after it is the
    /// caller's rule: pass the oldest kept snapshot's sequence + 1 at most.
    pub fn retain_from(
        &mut self,
        sequence: u64,
        retention: Retention,
    ) -> Result<Vec<PathBuf>, JournalError> {
        self.check_usable()?;
        let name = self.segment.path.file_name().and_then(|name| name.to_str());
        let current = SegmentFile {
            first_sequence: name.and_then(parse_segment_file_name).expect("a segment's name"),
            path: self.segment.path.clone(),
        };
        crate::retention::retain_from(
            &*self.storage,
            &self.directory,
            &self.journal_directory,
            &current,
            sequence,
            retention,
        )
    }

    fn check_usable(&self) -> Result<(), JournalError> {
        match &self.failure {
            None => Ok(()),
            Some(cause) => {
                Err(JournalError::Failed { path: self.directory.clone(), cause: cause.clone() })
            }
        }
    }

    /// Records the first I/O error: the writer stops.
    fn fail(&mut self, error: JournalError) -> JournalError {
        self.failure = Some(error.to_string());
        error
    }
}

/// What retention does with segments it no longer needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Retention {
    /// Delete them.
    Delete,
    /// Move them to `archive/` in the journal directory.
    Archive,
}

/// The state of the journal's end, found by `open`.
struct Recovered {
    segment: SegmentFile,
    journal_id: [u8; 16],
    /// The highest epoch in the segments' headers.
    epoch: u64,
    first_sequence: u64,
    /// Where the last segment's last batch starts (the header's end if it holds none).
    last_batch_offset: usize,
    position: usize,
    last_sequence: u64,
    last_timestamp_ns: u64,
}

/// Writes the last segment's header and its last batch again, for [`make_durable`] to sync.
/// They may be the bytes of an `fdatasync` that failed, and after a failed writeback Linux
/// marks the pages clean though the disk never got them ("fsyncgate"): they read back as
/// written, recovery replays them, and no later `fdatasync` writes them, so a power loss would
/// take them from under a state built on them, and leave a hole before every batch appended
/// since. Writing them again dirties the pages: the sync then puts them on the disk or fails,
/// loudly. Nothing earlier can be in that state: the writer stops at its first failed sync, so
/// every batch before the last was synced, and a batch is at most one group commit (the header
/// of a new segment is synced by its first batch's commit).
fn rewrite_last_batch(storage: &dyn Storage, recovered: &Recovered) -> Result<(), JournalError> {
    use std::os::unix::fs::FileExt;
    let path = &recovered.segment.path;
    let file = open_read_write(path)?;
    for range in [0..SEGMENT_HEADER_SIZE, recovered.last_batch_offset..recovered.position] {
        if range.is_empty() {
            continue;
        }
        let mut bytes = vec![0u8; range.len()];
        file.read_exact_at(&mut bytes, range.start as u64).map_err(JournalError::io(path))?;
        storage
            .write_at(&file, path, range.start as u64, &bytes)
            .map_err(JournalError::io(path))?;
    }
    Ok(())
}

/// Syncs every segment of a journal being opened in the `Fsync` tier, and its directory.
/// What recovery read may be only in the page cache: written by a process that died before
/// its `fdatasync`, or whose `fdatasync` failed. Its records are about to be replayed, and
/// nothing is applied before it is durable in the tier, replay included: a state (or a
/// snapshot of it) built on records a power loss then takes away would be ahead of its own
/// journal. Found by the deterministic simulation (`examples/tests/simulation.rs`). A segment
/// with nothing unsynced costs one system call.
fn make_durable(
    storage: &dyn Storage,
    journal_directory: &Path,
    segments: &[SegmentFile],
) -> Result<(), JournalError> {
    for segment in segments {
        let file = File::open(&segment.path).map_err(JournalError::io(&segment.path))?;
        storage.sync_data(&file, &segment.path).map_err(JournalError::io(&segment.path))?;
    }
    storage.sync_directory(journal_directory).map_err(JournalError::io(journal_directory))
}

/// Deals with the spare files a crash can leave behind (format document, section 1), as
/// [`classify_spare`] reads them: the temporary one is removed; an unused spare is removed (a
/// new one is prepared); a rolled segment whose rename had not reached the disk is renamed
/// now; a roll torn before anything in it was synced is removed.
pub(crate) fn recover_spare(
    storage: &dyn Storage,
    journal_directory: &Path,
    report: &mut OpenReport,
) -> Result<(), JournalError> {
    remove_if_present(&journal_directory.join(SPARE_TEMPORARY_NAME))?;
    let path = journal_directory.join(SPARE_NAME);
    match classify_spare(journal_directory)? {
        SpareState::Absent => {}
        SpareState::Unused => {
            remove_if_present(&path)?;
            report.removed.push((path, "a spare segment never used".into()));
        }
        SpareState::Rolled { target, .. } => {
            storage.rename(&path, &target).map_err(JournalError::io(&path))?;
            storage
                .sync_directory(journal_directory)
                .map_err(JournalError::io(journal_directory))?;
            report.renamed = Some((path, target));
        }
        SpareState::TornRoll => remove_torn_roll(&path, report)?,
    }
    Ok(())
}

/// Removes a segment file whose header a crash tore during a roll, with no record after it
/// ([`check_torn_roll`] said so).
fn remove_torn_roll(path: &Path, report: &mut OpenReport) -> Result<(), JournalError> {
    remove_if_present(path)?;
    // The removal need not be durable: were it lost, the next open would remove it again.
    report.removed.push((path.to_owned(), TORN_ROLL.into()));
    Ok(())
}

/// Removes the last segment when its header does not validate and no record follows it.
pub(crate) fn remove_torn_last_segment(
    segments: &mut Vec<SegmentFile>,
    report: &mut OpenReport,
) -> Result<(), JournalError> {
    let Some(last) = segments.last() else { return Ok(()) };
    let file = File::open(&last.path).map_err(JournalError::io(&last.path))?;
    if read_header(&file, last, None).is_ok() {
        return Ok(());
    }
    let map = ReadableMap::new(&file).map_err(JournalError::io(&last.path))?;
    check_torn_roll(&last.path, map.bytes())?;
    let path = last.path.clone();
    remove_torn_roll(&path, report)?;
    segments.pop();
    Ok(())
}

/// Creates the first segment of a new journal, synchronously and durably.
fn create_first_segment(
    storage: &dyn Storage,
    journal_directory: &Path,
    options: &JournalOptions,
) -> Result<Recovered, JournalError> {
    let spare = prepare_spare(storage, journal_directory, options.segment_size, false)?;
    let journal_id = options.journal_id.unwrap_or_else(new_journal_id);
    let header = SegmentHeader {
        first_sequence: options.first_sequence,
        segment_size: options.segment_size,
        journal_id,
        epoch: options.epoch,
    }
    .encode();
    storage
        .write_at(&spare.file, &spare.path, 0, &header)
        .map_err(JournalError::io(&spare.path))?;
    storage.sync_data(&spare.file, &spare.path).map_err(JournalError::io(&spare.path))?;
    let path = journal_directory.join(segment_file_name(options.first_sequence));
    storage.rename(&spare.path, &path).map_err(JournalError::io(&spare.path))?;
    storage.sync_directory(journal_directory).map_err(JournalError::io(journal_directory))?;
    Ok(Recovered {
        segment: SegmentFile { first_sequence: options.first_sequence, path },
        journal_id,
        epoch: options.epoch,
        first_sequence: options.first_sequence,
        last_batch_offset: SEGMENT_HEADER_SIZE,
        position: SEGMENT_HEADER_SIZE,
        last_sequence: options.first_sequence - 1,
        last_timestamp_ns: 0,
    })
}

/// Validates every segment header (rows 9 and 10 as far as names tell), scans the last
/// segment (and the one before when the last is empty, row 11), and truncates a torn tail.
fn recover_tail(
    storage: &dyn Storage,
    segments: &[SegmentFile],
    report: &mut OpenReport,
) -> Result<Recovered, JournalError> {
    let first_file = File::open(&segments[0].path).map_err(JournalError::io(&segments[0].path))?;
    let first_header = read_header(&first_file, &segments[0], None)?;
    let journal_id = first_header.journal_id;
    let mut epoch = first_header.epoch;
    for segment in &segments[1..] {
        let file = File::open(&segment.path).map_err(JournalError::io(&segment.path))?;
        epoch = epoch.max(read_header(&file, segment, Some(journal_id))?.epoch);
    }
    let last = segments.last().expect("segments is not empty");
    let scan = scan_file(last, true)?;
    epoch = epoch.max(scan.epoch);
    let (last_sequence, last_timestamp_ns) = if scan.records == 0 && segments.len() > 1 {
        let previous = &segments[segments.len() - 2];
        let previous_scan = scan_file(previous, false)?;
        if previous_scan.last_sequence + 1 != last.first_sequence {
            return Err(missing_segment(&previous.path, previous_scan.last_sequence, last));
        }
        epoch = epoch.max(previous_scan.epoch);
        (previous_scan.last_sequence, previous_scan.last_timestamp_ns)
    } else {
        (scan.last_sequence, scan.last_timestamp_ns)
    };
    if let SegmentEnd::Torn(torn) = &scan.end {
        let file = open_read_write(&last.path)?;
        zero_range(storage, &file, &last.path, torn.offset, torn.dirty_end)?;
        report.truncated = Some(Truncation {
            segment: last.path.clone(),
            offset: torn.offset,
            bytes: torn.dirty_end - torn.offset,
            damage: torn.damage.clone(),
            dropped: torn.dropped.clone(),
        });
    }
    Ok(Recovered {
        segment: last.clone(),
        journal_id,
        epoch,
        first_sequence: segments[0].first_sequence,
        last_batch_offset: scan.last_batch_offset as usize,
        position: scan.end_offset as usize,
        last_sequence,
        last_timestamp_ns,
    })
}

/// The epoch of the journal in `directory` as a writer opening it would take it, read without
/// the lock (beside a live writer): the highest of its segments' headers and of the epoch
/// changes in its last segment (a promotion's epoch is in a record before any header carries
/// it). 0 for a directory without a journal.
///
/// The last segment is read with the reader a tailer uses, which stops at the first batch not
/// yet committed, and not with recovery's scan: beside a live writer the scan can see a batch
/// whose first length is still zero while the bytes after it are being written, which after a
/// crash means damage and beside a writer means nothing.
pub fn journal_epoch(directory: impl AsRef<Path>) -> Result<u64, JournalError> {
    let directory = directory.as_ref();
    let segments = list_segments(&directory.join(JOURNAL_DIRECTORY))?;
    let Some(last) = segments.last() else { return Ok(0) };
    let mut epoch = 0;
    for segment in &segments {
        let file = File::open(&segment.path).map_err(JournalError::io(&segment.path))?;
        epoch = epoch.max(read_header(&file, segment, None)?.epoch);
    }
    Ok(epoch.max(epoch_records(directory, last.first_sequence)?))
}

/// The highest epoch named by an epoch-change record from `first` to the last committed batch.
fn epoch_records(directory: &Path, first: u64) -> Result<u64, JournalError> {
    let mut epoch = 0;
    let mut tailer = crate::Tailer::open(directory, first)?;
    while let Some(record) = tailer.poll()? {
        if record.kind == KIND_EPOCH {
            if let Ok(change) = EpochChange::decode(record.payload) {
                epoch = epoch.max(change.epoch);
            }
        }
    }
    Ok(epoch)
}

/// Maps a segment and scans its records.
fn scan_file(segment: &SegmentFile, is_last: bool) -> Result<SegmentScan, JournalError> {
    let file = File::open(&segment.path).map_err(JournalError::io(&segment.path))?;
    let map = ReadableMap::new(&file).map_err(JournalError::io(&segment.path))?;
    scan_segment(&segment.path, map.bytes(), segment.first_sequence, is_last, &mut |_| {})
}

/// Writes zeros over `from..to` of `file` and syncs it: the truncation of a torn tail.
fn zero_range(
    storage: &dyn Storage,
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
) -> Result<(), JournalError> {
    write_zeros(storage, file, path, from, to).map_err(JournalError::io(path))?;
    storage.sync_data(file, path).map_err(JournalError::io(path))
}

/// A journal id: 16 bytes from the standard library's randomly keyed hasher, over the time and
/// the process id. It tells journals apart; it is not a secret.
fn new_journal_id() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos())
        .unwrap_or(0);
    let mut id = [0u8; 16];
    for (index, half) in id.chunks_mut(8).enumerate() {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        hasher.write_usize(index);
        half.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    id
}
