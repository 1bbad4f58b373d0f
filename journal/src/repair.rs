//! `repair`: the operator's explicit way past corruption that `open` refuses (rows 6 to 8 of
//! the decision table in `docs/journal-format.md`): keep the records up to a sequence, drop
//! everything after it. It is planned first (nothing but what `open` itself would do is
//! changed), shown, then carried out; what it drops is moved or copied to `dropped/`, so
//! nothing is destroyed.

use std::fmt;
use std::fs::File;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use crate::error::JournalError;
use crate::format::{
    check_batch, padded, seal_batch_in_buffer, BatchCheck, BatchView, BATCH_HEADER_SIZE,
    GROUP_COMMIT_BYTES_MAX, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE,
};
use crate::lock::WriterLock;
use crate::mmap::ReadableMap;
use crate::scan::{last_non_zero, scan_segment};
use crate::segment::{
    existing_journal_directory, list_segments, missing_segment, open_read_write, read_header,
    SegmentFile, JOURNAL_DIRECTORY, SNAPSHOT_DIRECTORY,
};
use crate::snapshot::SnapshotStore;
use crate::storage::{write_zeros, FileStorage, Storage};
use crate::writer::{recover_spare, remove_torn_last_segment, OpenReport};

/// The folder, in the journal's directory, that a repair moves what it drops to.
pub const DROPPED_DIRECTORY: &str = "dropped";

/// What a repair will do (or did): keep the records up to `truncate_after`, drop the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairPlan {
    /// The journal's directory.
    pub directory: PathBuf,
    /// The last sequence kept.
    pub truncate_after: u64,
    /// The journal's first sequence: `first_sequence..=truncate_after` is kept.
    pub first_sequence: u64,
    /// What the planning already did, as `open` would have: a rolled spare renamed, a stale
    /// spare removed. No record is changed by it.
    pub recovered: Vec<String>,
    /// The segment that ends at `truncate_after` after the repair.
    pub segment: PathBuf,
    /// When `truncate_after` is not the last record of its batch: the offset of its record,
    /// which becomes the end of the batch (a new length and checksum in the batch's header,
    /// over the records kept).
    pub reseal: Option<u64>,
    /// The bytes of `segment` that are zeroed: from the end of record `truncate_after` to the
    /// last non-zero byte. Empty when nothing follows it.
    pub zeroed: RangeInclusive<u64>,
    /// The records with valid checksums that are dropped, as far as they run consecutively
    /// from `truncate_after + 1` (the segments after `segment` included).
    pub dropped_records: Option<RangeInclusive<u64>>,
    /// The first damage after `truncate_after`, in words, if any was found.
    pub damage: Option<String>,
    /// The segments after `segment`, moved whole to the dropped folder.
    pub later_segments: Vec<PathBuf>,
    /// Snapshots of a sequence above `truncate_after`, which no longer match the journal,
    /// moved to the dropped folder.
    pub later_snapshots: Vec<PathBuf>,
    /// Where the dropped files go: `dropped/after-<SEQ>-<unix seconds>/` in the directory.
    /// The zeroed bytes are copied there first, as `<segment name>.from-<offset>`.
    pub dropped_directory: PathBuf,
}

impl RepairPlan {
    /// Whether the repair changes nothing: the journal already ends at `truncate_after`.
    pub fn is_empty(&self) -> bool {
        self.reseal.is_none()
            && self.zeroed.is_empty()
            && self.later_segments.is_empty()
            && self.later_snapshots.is_empty()
    }
}

impl fmt::Display for RepairPlan {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.recovered {
            writeln!(formatter, "done, as open would: {line}")?;
        }
        writeln!(
            formatter,
            "keep sequences {}..={} (the journal ends at {} in {})",
            self.first_sequence,
            self.truncate_after,
            self.truncate_after,
            self.segment.display()
        )?;
        if self.is_empty() {
            return writeln!(
                formatter,
                "nothing follows sequence {}: nothing to drop",
                self.truncate_after
            );
        }
        if let Some(offset) = self.reseal {
            writeln!(
                formatter,
                "end its batch at record {} (offset {offset}), with a new length and checksum",
                self.truncate_after
            )?;
        }
        match &self.dropped_records {
            Some(records) => writeln!(
                formatter,
                "drop {} record(s) with valid checksums: sequences {}..={}",
                records.end() - records.start() + 1,
                records.start(),
                records.end()
            )?,
            None => writeln!(formatter, "drop no record with a valid checksum")?,
        }
        if let Some(damage) = &self.damage {
            writeln!(formatter, "drop the damage found after them: {damage}")?;
        }
        if !self.zeroed.is_empty() {
            writeln!(
                formatter,
                "zero {} bytes of {} from offset {}, after copying them to {}",
                self.zeroed.end() - self.zeroed.start() + 1,
                self.segment.display(),
                self.zeroed.start(),
                self.dropped_directory.display()
            )?;
        }
        for path in self.later_segments.iter().chain(&self.later_snapshots) {
            writeln!(formatter, "move {} to {}", path.display(), self.dropped_directory.display())?;
        }
        Ok(())
    }
}

/// A planned repair, holding the writer lock from the plan to its execution.
#[derive(Debug)]
pub struct Repair {
    plan: RepairPlan,
    /// The offset of the batch that holds `truncate_after`, when it is resealed.
    batch_start: u64,
    /// That batch's length once it ends at record `truncate_after`, when it is resealed.
    reseal_length: u32,
    _lock: WriterLock,
}

impl Repair {
    /// Plans the truncation of the journal in `directory` after sequence `truncate_after`:
    /// takes the writer lock, deals with a spare as `open` does, and reads every record up to
    /// `truncate_after` (each batch's checksum and rules, the segment headers, the sequence
    /// across segments). Refuses when any of them is damaged (the intact data ends before
    /// `truncate_after`, so the error says where) or when the journal does not reach it.
    pub fn plan(directory: impl AsRef<Path>, truncate_after: u64) -> Result<Self, JournalError> {
        let directory = directory.as_ref().to_owned();
        let journal_directory = existing_journal_directory(&directory)?;
        let lock = WriterLock::acquire(&directory)?;
        let mut report = OpenReport::default();
        recover_spare(&FileStorage, &journal_directory, &mut report)?;
        let mut segments = list_segments(&journal_directory)?;
        remove_torn_last_segment(&mut segments, &mut report)?;
        let mut recovered: Vec<String> = report
            .removed
            .iter()
            .map(|(path, reason)| format!("removed {} ({reason})", path.display()))
            .collect();
        if let Some((from, to)) = &report.renamed {
            recovered.push(format!("renamed {} to {}", from.display(), to.display()));
        }
        let Some(first) = segments.first() else {
            return Err(JournalError::SequenceNotFound {
                path: journal_directory,
                sequence: truncate_after,
                first: 1,
                last: 0,
            });
        };
        let first_sequence = first.first_sequence;
        let last_sequence_before = first_sequence - 1;
        if truncate_after < last_sequence_before {
            return Err(JournalError::SequenceNotFound {
                path: journal_directory,
                sequence: truncate_after,
                first: first_sequence,
                last: last_sequence_before,
            });
        }
        // The segment that keeps `truncate_after`: the last one starting at or before it, or
        // the first (emptied) when nothing is kept.
        let kept = segments
            .partition_point(|segment| segment.first_sequence <= truncate_after)
            .saturating_sub(1);
        let checked = check_kept_segments(&segments[..kept])?;
        let segment = &segments[kept];
        let file = File::open(&segment.path).map_err(JournalError::io(&segment.path))?;
        read_header(&file, segment, checked.map(|(id, _)| id))?;
        if let Some((_, expected)) = checked.filter(|&(_, next)| next != segment.first_sequence) {
            return Err(missing_segment(&segments[kept - 1].path, expected - 1, segment));
        }
        let map = ReadableMap::new(&file).map_err(JournalError::io(&segment.path))?;
        let saved = saved_batch_headers(&directory, &segment.path, truncate_after)?;
        let (bytes, first) = (map.bytes(), segment.first_sequence);
        let cut = find_cut(&segment.path, bytes, first, truncate_after, &saved)?;
        let later = &segments[kept + 1..];
        let dropped = dropped_after(map.bytes(), &cut, truncate_after, later);
        let dirty_end = last_non_zero(map.bytes(), cut.offset as usize)
            .map_or(cut.offset, |last| last as u64 + 1);
        let snapshots = SnapshotStore::open(&directory)?;
        let later_snapshots = snapshots
            .list()?
            .into_iter()
            .filter(|snapshot| snapshot.sequence > truncate_after)
            .map(|snapshot| snapshot.path)
            .collect();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let dropped_directory =
            free_dropped_folder(&directory, &format!("after-{truncate_after}-{stamp}"));
        #[allow(clippy::reversed_empty_ranges)]
        let zeroed = if dirty_end > cut.offset { cut.offset..=dirty_end - 1 } else { 1..=0 };
        let plan = RepairPlan {
            directory,
            truncate_after,
            first_sequence,
            recovered,
            segment: segment.path.clone(),
            reseal: cut.reseal.map(|(offset, _)| offset),
            zeroed,
            dropped_records: dropped.records,
            damage: dropped.damage,
            later_segments: later.iter().map(|segment| segment.path.clone()).collect(),
            later_snapshots,
            dropped_directory,
        };
        Ok(Self {
            plan,
            batch_start: cut.batch_start,
            reseal_length: cut.reseal.map_or(0, |(_, length)| length),
            _lock: lock,
        })
    }

    /// What the repair will do.
    pub fn plan_ref(&self) -> &RepairPlan {
        &self.plan
    }

    /// Carries the plan out, in an order that leaves a journal `open` accepts, or one that
    /// the same repair finishes, if it is cut short: the zeroed bytes are copied out first;
    /// then later snapshots move out (recovery must never load a state the journal no longer
    /// explains), then later segments, the last first; then the record `truncate_after` is
    /// resealed, and the bytes after it zeroed. Every step is synced before the next.
    pub fn execute(self) -> Result<RepairPlan, JournalError> {
        let plan = self.plan;
        if plan.is_empty() {
            return Ok(plan);
        }
        let storage = FileStorage;
        let dropped = &plan.dropped_directory;
        std::fs::create_dir_all(dropped).map_err(JournalError::io(dropped))?;
        sync_directory(&plan.directory)?;
        sync_directory(&plan.directory.join(DROPPED_DIRECTORY))?;
        let file = open_read_write(&plan.segment)?;
        if !plan.zeroed.is_empty() {
            copy_range(&file, &plan.segment, &plan.zeroed, dropped)?;
        }
        if plan.reseal.is_some() {
            // The header about to be rewritten, kept where a repair run again finds it: no
            // write is assumed atomic, and a crash in the middle of this one leaves a header
            // that is neither, over records that only the old one's checksum vouches for.
            let header = self.batch_start..=self.batch_start + 7;
            copy_range(&file, &plan.segment, &header, dropped)?;
        }
        move_files(&plan.later_snapshots, dropped, &plan.directory.join(SNAPSHOT_DIRECTORY))?;
        move_files(&plan.later_segments, dropped, &plan.directory.join(JOURNAL_DIRECTORY))?;
        if plan.reseal.is_some() {
            let path = &plan.segment;
            let length = self.reseal_length;
            let mut batch = vec![0u8; length as usize];
            read_exact_at(&file, path, &mut batch, self.batch_start)?;
            seal_batch_in_buffer(&mut batch, length);
            let header = &batch[..8];
            storage
                .write_at(&file, path, self.batch_start, header)
                .map_err(JournalError::io(path))?;
            storage.sync_data(&file, path).map_err(JournalError::io(path))?;
        }
        if !plan.zeroed.is_empty() {
            let path = &plan.segment;
            write_zeros(&storage, &file, path, *plan.zeroed.start(), plan.zeroed.end() + 1)
                .map_err(JournalError::io(path))?;
            storage.sync_data(&file, path).map_err(JournalError::io(path))?;
        }
        Ok(plan)
    }
}

/// Checks the segments before the kept one: headers, every batch, and that each starts where
/// the one before ended. Returns the journal's id (the first segment's) and the sequence the
/// next segment must start at, if there was a segment.
fn check_kept_segments(segments: &[SegmentFile]) -> Result<Option<([u8; 16], u64)>, JournalError> {
    let mut checked: Option<([u8; 16], u64)> = None;
    for (index, segment) in segments.iter().enumerate() {
        let file = File::open(&segment.path).map_err(JournalError::io(&segment.path))?;
        let header = read_header(&file, segment, checked.map(|(id, _)| id))?;
        if let Some((_, expected)) = checked.filter(|&(_, next)| next != segment.first_sequence) {
            return Err(missing_segment(&segments[index - 1].path, expected - 1, segment));
        }
        let map = ReadableMap::new(&file).map_err(JournalError::io(&segment.path))?;
        let scan =
            scan_segment(&segment.path, map.bytes(), segment.first_sequence, false, &mut |_| {})?;
        checked = Some((header.journal_id, scan.last_sequence + 1));
    }
    Ok(checked)
}

/// Where the kept records of a segment end.
#[derive(Debug)]
struct Cut {
    /// The offset after the last kept record: everything from here is dropped.
    offset: u64,
    /// The offset of the batch holding the last kept record.
    batch_start: u64,
    /// The end of that batch as it is before the repair.
    batch_end: u64,
    /// The last kept record's offset, and the length of its batch ending there, when it is
    /// not the last of its batch.
    reseal: Option<(u64, u32)>,
    /// The last sequence of that batch as it is before the repair.
    batch_last: u64,
}

/// Walks the batches of the segment `bytes` from its first record to the one holding
/// `truncate_after`, checking each; fails when one before it is damaged or out of sequence,
/// or the segment ends before it. `saved` are batch headers an earlier repair of the same
/// sequence saved before it resealed their batch: a damaged batch is also checked with each
/// saved at its offset.
fn find_cut(
    path: &Path,
    bytes: &[u8],
    first_sequence: u64,
    truncate_after: u64,
    saved: &[(u64, [u8; 8])],
) -> Result<Cut, JournalError> {
    let mut position = SEGMENT_HEADER_SIZE;
    let mut expected = first_sequence;
    loop {
        if expected > truncate_after {
            let offset = position as u64;
            return Ok(Cut {
                offset,
                batch_start: offset,
                batch_end: offset,
                reseal: None,
                batch_last: expected - 1,
            });
        }
        let damage = match check_batch(&bytes[position..]) {
            BatchCheck::Batch(batch) if batch.first_sequence == expected => {
                if batch.last_sequence > truncate_after {
                    return Ok(cut_inside(&batch, position, truncate_after));
                }
                expected = batch.last_sequence + 1;
                position += batch.size();
                continue;
            }
            BatchCheck::Batch(batch) => {
                return Err(JournalError::out_of_sequence(
                    path,
                    position as u64,
                    expected,
                    batch.first_sequence,
                ))
            }
            BatchCheck::End if last_non_zero(bytes, position).is_none() => {
                return Err(JournalError::SequenceNotFound {
                    path: path.to_owned(),
                    sequence: truncate_after,
                    first: first_sequence,
                    last: expected - 1,
                })
            }
            BatchCheck::End => "a zero length followed by non-zero bytes".to_owned(),
            BatchCheck::Invalid(invalid) => invalid.to_string(),
        };
        // A repair cut short while it rewrote this batch's header may have left part of the
        // new one: the batch as it was, with the header the repair saved first, holds
        // `truncate_after` whole.
        let end = bytes.len().min(position + GROUP_COMMIT_BYTES_MAX);
        for (_, header) in saved.iter().filter(|(offset, _)| *offset == position as u64) {
            let mut original = bytes[position..end].to_vec();
            original[..8].copy_from_slice(header);
            if let BatchCheck::Batch(batch) = check_batch(&original) {
                if batch.first_sequence == expected && batch.last_sequence > truncate_after {
                    return Ok(cut_inside(&batch, position, truncate_after));
                }
            }
        }
        return Err(JournalError::Corrupt {
            path: path.to_owned(),
            offset: position as u64,
            expected,
            found: None,
            detail: format!(
                "{damage}: the intact records end at sequence {}, before {truncate_after}; \
                 repair can only keep intact records",
                expected - 1
            ),
        });
    }
}

/// The cut inside the valid `batch` at `position`, after its record `truncate_after`.
fn cut_inside(batch: &BatchView<'_>, position: usize, truncate_after: u64) -> Cut {
    let mut offset = position + BATCH_HEADER_SIZE;
    for record in batch.iter() {
        if record.sequence == truncate_after {
            let end = offset + RECORD_HEADER_SIZE + record.payload.len();
            return Cut {
                offset: padded(end) as u64,
                batch_start: position as u64,
                batch_end: (position + batch.size()) as u64,
                reseal: Some((offset as u64, (end - position) as u32)),
                batch_last: batch.last_sequence,
            };
        }
        offset += record.size_padded;
    }
    unreachable!("a valid batch holds each sequence from its first to its last")
}

/// What a repair drops, for its report.
struct Dropped {
    records: Option<RangeInclusive<u64>>,
    damage: Option<String>,
}

/// The valid records after the cut, consecutively, in the kept segment and then the later
/// ones, and the first damage that ends them.
fn dropped_after(bytes: &[u8], cut: &Cut, truncate_after: u64, later: &[SegmentFile]) -> Dropped {
    // The rest of a resealed batch is dropped whole: the walk goes on after its end.
    let mut expected = cut.batch_last + 1;
    let mut position = cut.batch_end as usize;
    let mut damage = None;
    loop {
        match check_batch(&bytes[position..]) {
            BatchCheck::Batch(batch) if batch.first_sequence == expected => {
                expected = batch.last_sequence + 1;
                position += batch.size();
            }
            BatchCheck::Batch(batch) => {
                damage = Some(format!(
                    "at offset {position}, a batch of sequences {}..={} where {expected} should be",
                    batch.first_sequence, batch.last_sequence
                ));
                break;
            }
            BatchCheck::End => {
                if last_non_zero(bytes, position).is_some() {
                    damage = Some(format!("at offset {position}: non-zero bytes after the end"));
                }
                break;
            }
            BatchCheck::Invalid(invalid) => {
                damage = Some(format!("at offset {position}: {invalid}"));
                break;
            }
        }
    }
    if damage.is_none() {
        for segment in later {
            let scan = File::open(&segment.path)
                .map_err(|error| error.to_string())
                .and_then(|file| ReadableMap::new(&file).map_err(|error| error.to_string()))
                .and_then(|map| {
                    scan_segment(
                        &segment.path,
                        map.bytes(),
                        segment.first_sequence,
                        false,
                        &mut |_| {},
                    )
                    .map_err(|error| error.to_string())
                });
            match scan {
                Ok(scan) if segment.first_sequence == expected => expected = scan.last_sequence + 1,
                Ok(_) => {
                    damage = Some(format!(
                        "{} does not start at sequence {expected}",
                        segment.path.display()
                    ));
                    break;
                }
                Err(error) => {
                    damage = Some(error);
                    break;
                }
            }
        }
    }
    let first = truncate_after + 1;
    Dropped { records: (expected > first).then(|| first..=expected - 1), damage }
}

/// `fsync` of a directory, through the real file system.
fn sync_directory(directory: &Path) -> Result<(), JournalError> {
    FileStorage.sync_directory(directory).map_err(JournalError::io(directory))
}

/// The batch headers that earlier repairs after `truncate_after` saved from the segment at
/// `path` before they rewrote them (`dropped/after-<SEQ>-*/<segment name>.from-<offset>`, 8
/// bytes), with their offsets.
fn saved_batch_headers(
    directory: &Path,
    path: &Path,
    truncate_after: u64,
) -> Result<Vec<(u64, [u8; 8])>, JournalError> {
    let dropped = directory.join(DROPPED_DIRECTORY);
    let folders = match std::fs::read_dir(&dropped) {
        Ok(folders) => folders,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(JournalError::io(&dropped)(error)),
    };
    let segment = path.file_name().map(|name| name.to_string_lossy()).unwrap_or_default();
    let folder_prefix = format!("after-{truncate_after}-");
    let file_prefix = format!("{segment}.from-");
    let mut saved = Vec::new();
    for folder in folders {
        let folder = folder.map_err(JournalError::io(&dropped))?.path();
        let name = folder.file_name().map(|name| name.to_string_lossy()).unwrap_or_default();
        if !name.starts_with(&folder_prefix) {
            continue;
        }
        for file in std::fs::read_dir(&folder).map_err(JournalError::io(&folder))? {
            let file = file.map_err(JournalError::io(&folder))?.path();
            let name = file.file_name().map(|name| name.to_string_lossy()).unwrap_or_default();
            let Some(offset) = name.strip_prefix(&file_prefix).and_then(|at| at.parse().ok())
            else {
                continue;
            };
            // The copies of zeroed ranges share the name's pattern; a header is 8 bytes.
            let length = std::fs::metadata(&file).map_err(JournalError::io(&file))?.len();
            if length != 8 {
                continue;
            }
            let bytes = std::fs::read(&file).map_err(JournalError::io(&file))?;
            if let Ok(header) = <[u8; 8]>::try_from(bytes.as_slice()) {
                saved.push((offset, header));
            }
        }
    }
    Ok(saved)
}

/// Reads `buffer.len()` bytes of `file` at `offset`.
fn read_exact_at(
    file: &File,
    path: &Path,
    buffer: &mut [u8],
    offset: u64,
) -> Result<(), JournalError> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buffer, offset).map_err(JournalError::io(path))
}

/// Copies `range` of the segment `file` at `path` to `<segment name>.from-<offset>` in
/// `dropped`, synced, a chunk at a time.
fn copy_range(
    file: &File,
    path: &Path,
    range: &RangeInclusive<u64>,
    dropped: &Path,
) -> Result<(), JournalError> {
    const CHUNK: u64 = 1 << 20;
    let name = path.file_name().map(|name| name.to_string_lossy()).unwrap_or_default();
    let target = dropped.join(format!("{name}.from-{}", range.start()));
    let copy = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)
        .map_err(JournalError::io(&target))?;
    let mut buffer = vec![0u8; CHUNK as usize];
    let mut offset = *range.start();
    let end = range.end() + 1;
    while offset < end {
        let length = (end - offset).min(CHUNK) as usize;
        read_exact_at(file, path, &mut buffer[..length], offset)?;
        FileStorage
            .write_at(&copy, &target, offset - range.start(), &buffer[..length])
            .map_err(JournalError::io(&target))?;
        offset += length as u64;
    }
    FileStorage.sync_data(&copy, &target).map_err(JournalError::io(&target))?;
    sync_directory(dropped)
}

/// A folder under `directory`'s `dropped/` named `name`, or `name-2`, `name-3`, … when that
/// exists: files moved out of the journal or the snapshot store go there, never over others.
pub(crate) fn free_dropped_folder(directory: &Path, name: &str) -> PathBuf {
    (1..)
        .map(|attempt| {
            let suffix = if attempt == 1 { String::new() } else { format!("-{attempt}") };
            directory.join(DROPPED_DIRECTORY).join(format!("{name}{suffix}"))
        })
        .find(|candidate| !candidate.exists())
        .expect("some name is free")
}

/// Moves `files`, the last first, from `directory` into `dropped`, syncing both directories
/// after each: a repair cut short leaves a prefix of the segments, never a gap.
fn move_files(files: &[PathBuf], dropped: &Path, directory: &Path) -> Result<(), JournalError> {
    for path in files.iter().rev() {
        let name = path.file_name().unwrap_or_default();
        FileStorage.rename(path, &dropped.join(name)).map_err(JournalError::io(path))?;
        sync_directory(dropped)?;
        sync_directory(directory)?;
    }
    Ok(())
}
