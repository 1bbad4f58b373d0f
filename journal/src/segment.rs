//! Segment files: names, listing, header validation, and the spare segment that a background
//! thread allocates and pre-faults so that a roll costs the writer no page fault, no file
//! growth and no `fsync`.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::JournalError;
use crate::format::{
    check_batch, BatchCheck, SegmentHeader, SEGMENT_HEADER_SIZE, SEGMENT_HEADER_USED,
};
use crate::mmap::{ReadableMap, WritableMap};
use crate::storage::Storage;

/// The journal's subdirectory of segment files.
pub const JOURNAL_DIRECTORY: &str = "journal";
/// The subdirectory of snapshot files.
pub const SNAPSHOT_DIRECTORY: &str = "snapshots";
/// The subdirectory that retention moves segments to, when asked to archive.
pub const ARCHIVE_DIRECTORY: &str = "archive";
/// A segment file's extension.
pub const SEGMENT_EXTENSION: &str = "segment";
/// The pre-allocated next segment, zero-filled, waiting for a roll.
pub(crate) const SPARE_NAME: &str = "spare";
/// The spare while it is being allocated; never read, removed on open.
pub(crate) const SPARE_TEMPORARY_NAME: &str = "spare.tmp";

/// The file name of the segment whose first record is `first_sequence`: 20 digits, so that
/// lexical order is numeric order.
pub fn segment_file_name(first_sequence: u64) -> String {
    format!("{first_sequence:020}.{SEGMENT_EXTENSION}")
}

/// The first sequence named by a segment file name, or `None` if the name is not exactly 20
/// digits and `.segment`.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    parse_sequence_name(name, ".segment")
}

/// The sequence named by `name` if it is exactly 20 digits followed by `suffix`: the naming
/// of segment and snapshot files alike.
pub(crate) fn parse_sequence_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A segment file of a journal, as its name describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    /// The sequence of its first record, from its name.
    pub first_sequence: u64,
    /// Its path.
    pub path: PathBuf,
}

/// The segment files of `journal_directory` (the `journal/` subdirectory), in sequence order.
/// A file whose name ends in `.segment` but is not a segment name is an error: it is either
/// damage or someone else's file, and either way the journal cannot be trusted to be whole.
pub fn list_segments(journal_directory: &Path) -> Result<Vec<SegmentFile>, JournalError> {
    let entries = match std::fs::read_dir(journal_directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(JournalError::io(journal_directory)(error)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(JournalError::io(journal_directory))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.ends_with(".segment") {
            continue;
        }
        let path = entry.path();
        match parse_segment_file_name(name) {
            Some(first_sequence) => segments.push(SegmentFile { first_sequence, path }),
            None => {
                return Err(JournalError::Corrupt {
                    path,
                    offset: 0,
                    expected: 0,
                    found: None,
                    detail: "a file named like a segment whose name is not 20 digits".into(),
                })
            }
        }
    }
    segments.sort_by_key(|segment| segment.first_sequence);
    Ok(segments)
}

/// The index in `segments` of the segment that holds `sequence`: the last one whose first
/// sequence is at most `sequence` (a binary search over the names).
pub(crate) fn segment_index_for(segments: &[SegmentFile], sequence: u64) -> Option<usize> {
    segments.partition_point(|segment| segment.first_sequence <= sequence).checked_sub(1)
}

/// Reads and validates the header of the segment `file` at `path`: checksum, magic, version,
/// header size, then that its size is the file's, that its first sequence is the one its name
/// gives, and (when given) that it belongs to the journal `journal_id`. Row 9 of the recovery
/// table.
pub(crate) fn read_header(
    file: &File,
    segment: &SegmentFile,
    journal_id: Option<[u8; 16]>,
) -> Result<SegmentHeader, JournalError> {
    let path = &segment.path;
    let length = file.metadata().map_err(JournalError::io(path))?.len();
    let mut bytes = [0u8; SEGMENT_HEADER_USED];
    file.read_exact_at(&mut bytes, 0).map_err(JournalError::io(path))?;
    let header = SegmentHeader::decode(&bytes).map_err(JournalError::format(path, 0))?;
    let mismatch = |field: &str, value: String, wanted: String| JournalError::Corrupt {
        path: path.clone(),
        offset: 0,
        expected: segment.first_sequence,
        found: None,
        detail: format!("segment header field {field} is {value}, but {wanted}"),
    };
    if header.segment_size != length {
        return Err(mismatch(
            "segment_size",
            header.segment_size.to_string(),
            format!("the file holds {length} bytes"),
        ));
    }
    if header.first_sequence != segment.first_sequence {
        return Err(mismatch(
            "first_sequence",
            header.first_sequence.to_string(),
            "the file name says otherwise".into(),
        ));
    }
    if let Some(journal_id) = journal_id {
        if header.journal_id != journal_id {
            return Err(mismatch(
                "journal_id",
                hex(&header.journal_id),
                format!("the journal's first segment has {}", hex(&journal_id)),
            ));
        }
    }
    Ok(header)
}

/// What a `spare` file is, read without changing anything (format document, section 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SpareState {
    /// There is no `spare`.
    Absent,
    /// Its header is zero: a spare never used.
    Unused,
    /// It holds a valid header: a rolled segment whose rename to `target` had not reached the
    /// disk before a crash (or, with a live writer, has not happened yet).
    Rolled {
        /// The name it is to have.
        target: PathBuf,
        /// The sequence of its first record.
        first_sequence: u64,
    },
    /// Its header is damaged and no record follows: a roll cut before its first commit.
    TornRoll,
}

/// What a roll torn before its first commit returned is, in words.
pub(crate) const TORN_ROLL: &str =
    "a segment header torn by a crash during a roll, with no record after it";

/// Reads the `spare` of `journal_directory` and says what it is. A valid header naming a
/// segment that exists, or a damaged header in front of a valid batch, is corruption.
pub(crate) fn classify_spare(journal_directory: &Path) -> Result<SpareState, JournalError> {
    let path = journal_directory.join(SPARE_NAME);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(SpareState::Absent),
        Err(error) => return Err(JournalError::io(&path)(error)),
    };
    let map = ReadableMap::new(&file).map_err(JournalError::io(&path))?;
    let bytes = map.bytes();
    let header_bytes = &bytes[..SEGMENT_HEADER_USED.min(bytes.len())];
    if header_bytes.iter().all(|&byte| byte == 0) {
        return Ok(SpareState::Unused);
    }
    match SegmentHeader::decode(header_bytes) {
        Ok(header) if header.segment_size == bytes.len() as u64 => {
            let target = journal_directory.join(segment_file_name(header.first_sequence));
            if target.exists() {
                return Err(JournalError::Corrupt {
                    path,
                    offset: 0,
                    expected: header.first_sequence,
                    found: None,
                    detail: format!(
                        "the spare holds the header of a segment that exists as {}",
                        target.display()
                    ),
                });
            }
            Ok(SpareState::Rolled { target, first_sequence: header.first_sequence })
        }
        _ => {
            check_torn_roll(&path, bytes)?;
            Ok(SpareState::TornRoll)
        }
    }
}

/// Checks that the segment `bytes` at `path`, whose header is damaged, holds no record: then
/// it is a roll that a crash cut before the first commit into it returned (the header is
/// synced with the first batch, so nothing in it was acknowledged). A valid batch after the
/// damaged header is corruption (row 9).
pub(crate) fn check_torn_roll(path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let first_batch = bytes.get(SEGMENT_HEADER_SIZE..).unwrap_or(&[]);
    if let BatchCheck::Batch(batch) = check_batch(first_batch) {
        return Err(JournalError::Corrupt {
            path: path.to_owned(),
            offset: 0,
            expected: batch.first_sequence,
            found: None,
            detail: "the segment header is damaged but a valid batch follows it".into(),
        });
    }
    Ok(())
}

/// Row 10: `segment` does not start right after `previous`, whose last record is
/// `previous_last`.
pub(crate) fn missing_segment(
    previous: &Path,
    previous_last: u64,
    segment: &SegmentFile,
) -> JournalError {
    JournalError::Corrupt {
        path: segment.path.clone(),
        offset: 0,
        expected: previous_last + 1,
        found: Some(segment.first_sequence),
        detail: format!(
            "{} ends at sequence {previous_last}, but this segment starts at {}: a segment is \
             missing or extra",
            previous.display(),
            segment.first_sequence
        ),
    }
}

/// The `journal/` subdirectory of `directory`, which must exist: a tool that only reads or
/// repairs a journal never creates one.
pub(crate) fn existing_journal_directory(directory: &Path) -> Result<PathBuf, JournalError> {
    let journal_directory = directory.join(JOURNAL_DIRECTORY);
    if journal_directory.is_dir() {
        return Ok(journal_directory);
    }
    Err(JournalError::Io {
        path: journal_directory,
        source: std::io::Error::new(ErrorKind::NotFound, "no journal here"),
    })
}

/// `bytes` as lowercase hexadecimal: how journal ids are shown.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Creates `directory` if needed and makes its entry durable in its parent.
pub(crate) fn create_directory(
    storage: &dyn Storage,
    directory: &Path,
) -> Result<(), JournalError> {
    if directory.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(directory).map_err(JournalError::io(directory))?;
    if let Some(parent) = directory.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        storage.sync_directory(parent).map_err(JournalError::io(parent))?;
    }
    Ok(())
}

/// A pre-allocated, zero-filled segment file under the name `spare`, durable (file and
/// directory synced), and, for the `PageCache` tier, mapped and pre-faulted.
#[derive(Debug)]
pub(crate) struct Spare {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) map: Option<WritableMap>,
}

/// Allocates a spare segment of `size` bytes in `journal_directory` under a temporary name
/// (reserved with `fallocate` when it is to be mapped, written as zeros when not), synced,
/// renamed to `spare`, the directory synced; then mapped and pre-faulted when `map` is set.
pub(crate) fn prepare_spare(
    storage: &dyn Storage,
    journal_directory: &Path,
    size: u64,
    map: bool,
) -> Result<Spare, JournalError> {
    let temporary = journal_directory.join(SPARE_TEMPORARY_NAME);
    let path = journal_directory.join(SPARE_NAME);
    remove_if_present(&temporary)?;
    // A mapped spare's pages are faulted in, zero-filled, by the pre-fault below, on this
    // thread: writing the zeros first as well would double that work and send a segment of
    // zeros to the disk. An unmapped spare (the `Fsync` tier) is written as zeros, so that
    // the writer's `fdatasync`s flush data only, with no extents to convert.
    let allocated = if map {
        storage.create_reserved(&temporary, size)
    } else {
        storage.create_allocated(&temporary, size)
    };
    let file = match allocated {
        Ok(file) => file,
        Err(error) => {
            // Leave no half-allocated file behind to hold the space the disk lacks.
            let _ = std::fs::remove_file(&temporary);
            return Err(JournalError::io(&temporary)(error));
        }
    };
    storage.sync_data(&file, &temporary).map_err(JournalError::io(&temporary))?;
    storage.rename(&temporary, &path).map_err(JournalError::io(&temporary))?;
    storage.sync_directory(journal_directory).map_err(JournalError::io(journal_directory))?;
    let map = if map {
        let mut map = WritableMap::new(&file).map_err(JournalError::io(&path))?;
        map.prefault();
        Some(map)
    } else {
        None
    };
    Ok(Spare { file, path, map })
}

/// Removes `path` if it exists.
pub(crate) fn remove_if_present(path: &Path) -> Result<(), JournalError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(error) => Err(JournalError::io(path)(error)),
    }
}

/// Opens a segment file for reading and writing.
pub(crate) fn open_read_write(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new().read(true).write(true).open(path).map_err(JournalError::io(path))
}

/// The writer's next request, looked for every millisecond rather than waited for: a send
/// that wakes a sleeping thread costs the writer a system call, and on a machine with two
/// cores the woken thread can preempt the writer, at the roll, where latency is measured.
/// `None` once the writer is gone.
fn next_request(requests: &Receiver<Request>) -> Option<Request> {
    loop {
        match requests.try_recv() {
            Ok(request) => return Some(request),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => std::thread::sleep(REQUEST_POLL_INTERVAL),
        }
    }
}

/// How often the preparer thread looks for a request.
const REQUEST_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// What the writer asks of the preparer thread.
enum Request {
    /// The writer just continued in the spare, whose header it wrote: rename the spare to
    /// `segment` and make the rename durable (together some tens of microseconds, which the
    /// writer does not wait for), close and unmap the previous segment (a large `munmap` can
    /// take milliseconds) and allocate the next spare.
    Rolled { retired: (File, Option<WritableMap>), spare: PathBuf, segment: PathBuf },
}

/// The background thread that keeps one spare segment ready for the writer.
#[derive(Debug)]
pub(crate) struct Preparer {
    requests: Option<Sender<Request>>,
    spares: Receiver<Result<Spare, JournalError>>,
    /// A spare received by [`is_ready`](Self::is_ready) before the writer needed it.
    received: Option<Result<Spare, JournalError>>,
    /// A failed rename: the writer must stop, and no spare may be created while a segment in
    /// use still has the spare's name.
    failures: Receiver<JournalError>,
    thread: Option<JoinHandle<()>>,
    storage: Arc<dyn Storage>,
    journal_directory: PathBuf,
    size: u64,
    map: bool,
}

impl Preparer {
    /// Starts the thread, which prepares the first spare at once.
    pub(crate) fn start(
        storage: Arc<dyn Storage>,
        journal_directory: PathBuf,
        size: u64,
        map: bool,
    ) -> Result<Self, JournalError> {
        let (request_sender, request_receiver) = mpsc::channel::<Request>();
        let (spare_sender, spare_receiver) = mpsc::channel();
        let (failure_sender, failure_receiver) = mpsc::channel();
        let thread_storage = Arc::clone(&storage);
        let thread_directory = journal_directory.clone();
        let thread = std::thread::Builder::new()
            .name("keel-journal-spare".into())
            .spawn(move || {
                let prepare = || prepare_spare(&*thread_storage, &thread_directory, size, map);
                if spare_sender.send(prepare()).is_err() {
                    return;
                }
                while let Some(Request::Rolled { retired, spare, segment }) =
                    next_request(&request_receiver)
                {
                    if let Err(error) = thread_storage.rename(&spare, &segment) {
                        let _ = failure_sender.send(JournalError::io(&spare)(error));
                        return;
                    }
                    drop(retired);
                    let spare = thread_storage
                        .sync_directory(&thread_directory)
                        .map_err(JournalError::io(&thread_directory))
                        .and_then(|()| prepare());
                    if spare_sender.send(spare).is_err() {
                        return;
                    }
                }
            })
            .map_err(JournalError::io(&journal_directory))?;
        Ok(Self {
            requests: Some(request_sender),
            spares: spare_receiver,
            received: None,
            failures: failure_receiver,
            thread: Some(thread),
            storage,
            journal_directory,
            size,
            map,
        })
    }

    /// The next spare, waiting for it if the thread is still preparing it. If the thread
    /// failed (a full disk, say), one more attempt is made here, in case space was freed since;
    /// its error is the writer's.
    pub(crate) fn take(&mut self) -> Result<Spare, JournalError> {
        self.check()?;
        let received = match self.received.take() {
            Some(received) => Ok(received),
            None => self.spares.recv(),
        };
        match received {
            Ok(Ok(spare)) => Ok(spare),
            Ok(Err(_)) => {
                prepare_spare(&*self.storage, &self.journal_directory, self.size, self.map)
            }
            Err(_) => {
                // The thread has exited. If a rename failed, the segment in use may still be
                // called `spare`, and preparing a new spare would take its name: report the
                // failure (sent before the thread exited) instead.
                self.check()?;
                prepare_spare(&*self.storage, &self.journal_directory, self.size, self.map)
            }
        }
    }

    /// Whether the next spare is prepared (or its preparation failed), without waiting.
    pub(crate) fn is_ready(&mut self) -> bool {
        if self.received.is_none() {
            self.received = self.spares.try_recv().ok();
        }
        self.received.is_some()
    }

    /// The error of the thread's last rename, if it failed (the spare then keeps its name,
    /// which `open` recovers from).
    pub(crate) fn check(&mut self) -> Result<(), JournalError> {
        match self.failures.try_recv() {
            Ok(error) => Err(error),
            Err(_) => Ok(()),
        }
    }

    /// Tells the thread a roll happened: it renames the spare, now in use, to `segment`, and
    /// closes and unmaps the previous segment. If the thread has exited, renames here.
    pub(crate) fn rolled(
        &mut self,
        retired: (File, Option<WritableMap>),
        spare: PathBuf,
        segment: PathBuf,
    ) -> Result<(), JournalError> {
        let request = Request::Rolled { retired, spare, segment };
        let Some(requests) = &self.requests else { return Ok(()) };
        match requests.send(request) {
            Ok(()) => Ok(()),
            Err(mpsc::SendError(Request::Rolled { spare, segment, .. })) => {
                self.storage.rename(&spare, &segment).map_err(JournalError::io(&spare))
            }
        }
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            // The thread finishes the spare it is allocating, if any, and exits; a panic in it
            // has already been reported on stderr and leaves nothing to clean up.
            let _ = thread.join();
        }
    }
}
