//! Snapshot files (`docs/journal-format.md`, section 4): written whole under a temporary name,
//! synced, renamed, the directory synced; loaded newest first, falling back past any file that
//! fails a check, with the reason reported.

use std::fs::File;
use std::io::{self, BufWriter, ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::JournalError;
use crate::format::{FormatError, SnapshotHeader, SNAPSHOT_HEADER_SIZE};
use crate::mmap::SnapshotMap;
use crate::repair::{free_dropped_folder, DROPPED_DIRECTORY};
use crate::segment::{
    create_directory, parse_sequence_name, remove_if_present, SNAPSHOT_DIRECTORY,
};
use crate::storage::{FileStorage, Storage};

/// What a snapshot is of: everything in its header but the payload's length and checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The state machine's own schema version.
    pub schema_version: u32,
    /// How the payload is encoded.
    pub codec: u32,
    /// The last sequence applied to the state.
    pub sequence: u64,
    /// That record's timestamp.
    pub timestamp_ns: u64,
    /// The state's digest.
    pub state_hash: u64,
}

/// A snapshot file, as its name describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    /// The sequence it covers, from its name.
    pub sequence: u64,
    /// Its path.
    pub path: PathBuf,
}

/// The newest snapshot that passed every check, and the ones skipped on the way.
#[derive(Debug)]
pub struct LoadedSnapshot<T> {
    /// The file, its header and the caller's decoded state; `None` if no snapshot passed.
    pub loaded: Option<(SnapshotFile, SnapshotHeader, T)>,
    /// Newer snapshots that failed a check, newest first, each with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// How a snapshot's temporary file ends: `<snapshot name>.<pid>-<number>.tmp`.
const TEMPORARY_SUFFIX: &str = ".tmp";

/// Numbers this process's temporary snapshot files.
static TEMPORARY_NUMBER: AtomicU64 = AtomicU64::new(0);

/// The process that writes the temporary snapshot file `name`, if that is what it is.
fn temporary_writer(name: &str) -> Option<u32> {
    let rest = name.strip_suffix(TEMPORARY_SUFFIX)?;
    let (snapshot, writer) = rest.rsplit_once('.')?;
    parse_sequence_name(snapshot, ".snapshot")?;
    writer.split_once('-')?.0.parse().ok()
}

/// The file name of the snapshot covering `sequence`.
pub fn snapshot_file_name(sequence: u64) -> String {
    format!("{sequence:020}.snapshot")
}

/// The snapshots of a journal directory (its `snapshots/` subdirectory).
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    directory: PathBuf,
    storage: Arc<dyn Storage>,
}

impl SnapshotStore {
    /// The snapshot store of the journal in `directory`, created if missing.
    pub fn open(directory: impl AsRef<Path>) -> Result<Self, JournalError> {
        Self::with_storage(directory, Arc::new(FileStorage))
    }

    /// As [`open`](Self::open), with the given file operations (a test's fault injection).
    pub fn with_storage(
        directory: impl AsRef<Path>,
        storage: Arc<dyn Storage>,
    ) -> Result<Self, JournalError> {
        let directory = directory.as_ref().join(SNAPSHOT_DIRECTORY);
        create_directory(&*storage, &directory)?;
        Ok(Self { directory, storage })
    }

    /// The `snapshots/` directory.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Writes a snapshot of `payload`, durably, and returns its file.
    pub fn write(&self, meta: &SnapshotMeta, payload: &[u8]) -> Result<SnapshotFile, JournalError> {
        self.write_streaming(meta, |writer| writer.write_all(payload))
    }

    /// Writes a snapshot whose payload `write` streams (so a large state need not be encoded
    /// into memory first): the payload after a placeholder header, then the header with the
    /// payload's length and checksum, then `fdatasync`, rename and directory `fsync`. On any
    /// error the temporary file is removed and no snapshot exists under the final name.
    pub fn write_streaming(
        &self,
        meta: &SnapshotMeta,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<SnapshotFile, JournalError> {
        let name = snapshot_file_name(meta.sequence);
        let path = self.directory.join(&name);
        // A name of this writer's own: two writers of one sequence (an engine, and a replica
        // on its host writing into its store) once shared `{name}.tmp`, and one removed or
        // renamed the file the other was writing.
        let writer = TEMPORARY_NUMBER.fetch_add(1, Ordering::Relaxed);
        let temporary = self
            .directory
            .join(format!("{name}.{}-{writer}{TEMPORARY_SUFFIX}", std::process::id()));
        let result = self.write_temporary(meta, &temporary, write).and_then(|()| {
            self.storage.rename(&temporary, &path).map_err(JournalError::io(&temporary))?;
            self.storage.sync_directory(&self.directory).map_err(JournalError::io(&self.directory))
        });
        if let Err(error) = result {
            let _ = std::fs::remove_file(&temporary);
            return Err(error);
        }
        Ok(SnapshotFile { sequence: meta.sequence, path })
    }

    fn write_temporary(
        &self,
        meta: &SnapshotMeta,
        temporary: &Path,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), JournalError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(temporary)
            .map_err(JournalError::io(temporary))?;
        let mut payload = BufWriter::with_capacity(
            1 << 20,
            PayloadWriter {
                storage: &*self.storage,
                file: &file,
                path: temporary,
                offset: SNAPSHOT_HEADER_SIZE as u64,
                checksum: 0,
            },
        );
        write(&mut payload).map_err(JournalError::io(temporary))?;
        let payload = payload
            .into_inner()
            .map_err(|error| JournalError::io(temporary)(error.into_error()))?;
        let header = SnapshotHeader {
            schema_version: meta.schema_version,
            codec: meta.codec,
            sequence: meta.sequence,
            timestamp_ns: meta.timestamp_ns,
            state_hash: meta.state_hash,
            payload_length: payload.offset - SNAPSHOT_HEADER_SIZE as u64,
            payload_checksum: payload.checksum,
        };
        self.storage
            .write_at(&file, temporary, 0, &header.encode())
            .map_err(JournalError::io(temporary))?;
        self.storage.sync_data(&file, temporary).map_err(JournalError::io(temporary))
    }

    /// The files of the store's folder with a name that `parse` takes, with what it makes of
    /// the name (none if the folder does not exist).
    fn files<T>(
        &self,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Vec<(T, PathBuf)>, JournalError> {
        let entries = match std::fs::read_dir(&self.directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(JournalError::io(&self.directory)(error)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(JournalError::io(&self.directory))?;
            if let Some(parsed) = entry.file_name().to_str().and_then(&parse) {
                files.push((parsed, entry.path()));
            }
        }
        Ok(files)
    }

    /// The snapshots, newest (highest sequence) first. Temporary files are not listed.
    pub fn list(&self) -> Result<Vec<SnapshotFile>, JournalError> {
        let mut snapshots: Vec<SnapshotFile> = self
            .files(|name| parse_sequence_name(name, ".snapshot"))?
            .into_iter()
            .map(|(sequence, path)| SnapshotFile { sequence, path })
            .collect();
        snapshots.sort_by_key(|snapshot| std::cmp::Reverse(snapshot.sequence));
        Ok(snapshots)
    }

    /// Loads the newest snapshot that passes every check: the file's header checksum, magic,
    /// version, length and payload checksum, then `decode` (the caller's: schema version,
    /// decoding, state hash), which returns the state or why it refuses it. Each refused file
    /// is skipped, with the reason, for the next older one. An I/O error listing the directory
    /// is an error; an unreadable file is skipped like a damaged one.
    pub fn load_newest<T>(
        &self,
        decode: impl FnMut(&SnapshotHeader, &[u8]) -> Result<T, String>,
    ) -> Result<LoadedSnapshot<T>, JournalError> {
        load_first(self.list()?, decode)
    }

    /// Like [`load_newest`](Self::load_newest), but from the oldest snapshot forwards: the
    /// oldest that passes every check, with the older ones skipped and their reasons.
    pub fn load_oldest<T>(
        &self,
        decode: impl FnMut(&SnapshotHeader, &[u8]) -> Result<T, String>,
    ) -> Result<LoadedSnapshot<T>, JournalError> {
        let mut snapshots = self.list()?;
        snapshots.reverse();
        load_first(snapshots, decode)
    }

    /// Removes the temporary files of snapshots whose writing process is gone (a crash while
    /// writing one leaves its file); returns them. Another live process's file is in use and
    /// stays. Where processes cannot be looked up (no `/proc`), it removes nothing. A writer in
    /// another PID namespace (a container sharing the directory) looks gone from here: its
    /// snapshot in progress then fails at its rename, and its next one is written.
    pub fn remove_leftovers(&self) -> Result<Vec<PathBuf>, JournalError> {
        if !Path::new("/proc/self").exists() {
            return Ok(Vec::new());
        }
        let mut removed = Vec::new();
        for (writer, path) in self.files(temporary_writer)? {
            if writer != std::process::id() && !Path::new(&format!("/proc/{writer}")).exists() {
                remove_if_present(&path)?;
                removed.push(path);
            }
        }
        Ok(removed)
    }

    /// Moves every snapshot past `last`, the last sequence of the journal beside it, out of
    /// the store into a new folder under the data directory's `dropped/`; returns each one
    /// moved and where it went. Such a snapshot covers commands the journal lost (its page
    /// cache's tail, in a power loss): once new commands take those sequences the journal
    /// reaches it again, and loading it then would put the lost commands' state under the new
    /// ones. The writer that opens the journal sets it aside first, so that never happens; the
    /// file is kept for whoever wants to look at what was lost.
    pub fn set_aside_after(&self, last: u64) -> Result<Vec<(SnapshotFile, PathBuf)>, JournalError> {
        let past: Vec<SnapshotFile> =
            self.list()?.into_iter().filter(|snapshot| snapshot.sequence > last).collect();
        if past.is_empty() {
            return Ok(Vec::new());
        }
        let data = self.directory.parent().unwrap_or(&self.directory);
        let dropped = data.join(DROPPED_DIRECTORY);
        let folder = free_dropped_folder(data, &format!("snapshots-past-{last}"));
        // Each creation syncs the directory that holds it.
        create_directory(&*self.storage, &dropped)?;
        create_directory(&*self.storage, &folder)?;
        let sync = |directory: &Path| {
            self.storage.sync_directory(directory).map_err(JournalError::io(directory))
        };
        let mut moved = Vec::with_capacity(past.len());
        for snapshot in past {
            let to = folder.join(snapshot.path.file_name().unwrap_or_default());
            self.storage.rename(&snapshot.path, &to).map_err(JournalError::io(&snapshot.path))?;
            moved.push((snapshot, to));
        }
        sync(&folder)?;
        sync(&self.directory)?;
        Ok(moved)
    }

    /// Removes every snapshot but the newest `keep`; returns the files removed.
    pub fn remove_all_but_newest(&self, keep: usize) -> Result<Vec<PathBuf>, JournalError> {
        let mut removed = Vec::new();
        for snapshot in self.list()?.into_iter().skip(keep) {
            remove_if_present(&snapshot.path)?;
            removed.push(snapshot.path);
        }
        if !removed.is_empty() {
            self.storage
                .sync_directory(&self.directory)
                .map_err(JournalError::io(&self.directory))?;
        }
        Ok(removed)
    }
}

/// The first of `snapshots`, in their order, that passes every check: the file's (header,
/// length, payload checksum, the sequence its name gives), then `decode`'s. Each file refused
/// is skipped with the reason; an unreadable file is skipped like a damaged one.
fn load_first<T>(
    snapshots: Vec<SnapshotFile>,
    mut decode: impl FnMut(&SnapshotHeader, &[u8]) -> Result<T, String>,
) -> Result<LoadedSnapshot<T>, JournalError> {
    let mut skipped = Vec::new();
    for snapshot in snapshots {
        let outcome = read_snapshot(&snapshot.path).map_err(|error| error.to_string()).and_then(
            |(header, payload)| {
                if header.sequence != snapshot.sequence {
                    return Err(format!(
                        "its header covers sequence {}, its name says {}",
                        header.sequence, snapshot.sequence
                    ));
                }
                decode(&header, &payload).map(|state| (header, state))
            },
        );
        match outcome {
            Ok((header, state)) => {
                return Ok(LoadedSnapshot { loaded: Some((snapshot, header, state)), skipped });
            }
            Err(reason) => skipped.push((snapshot.path, reason)),
        }
    }
    Ok(LoadedSnapshot { loaded: None, skipped })
}

/// Reads and checks a whole snapshot file: header checksum, magic, version, the file's length,
/// payload checksum. Returns the header and the payload, which is read through a mapping of the
/// file rather than copied.
pub fn read_snapshot(path: &Path) -> Result<(SnapshotHeader, SnapshotPayload), JournalError> {
    let file = File::open(path).map_err(JournalError::io(path))?;
    let map = SnapshotMap::new(&file).map_err(JournalError::io(path))?;
    let bytes = map.bytes();
    let header = SnapshotHeader::decode(bytes).map_err(JournalError::format(path, 0))?;
    check_snapshot_length(path, &header, bytes.len() as u64)?;
    header
        .verify_payload(&bytes[SNAPSHOT_HEADER_SIZE..])
        .map_err(JournalError::format(path, SNAPSHOT_HEADER_SIZE as u64))?;
    Ok((header, SnapshotPayload { map }))
}

/// A checked snapshot's payload, as [`read_snapshot`] returns it: the bytes after the file's
/// header, in a read-only mapping of the file that lasts as long as this value.
pub struct SnapshotPayload {
    map: SnapshotMap,
}

impl std::ops::Deref for SnapshotPayload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map.bytes()[SNAPSHOT_HEADER_SIZE..]
    }
}

impl std::fmt::Debug for SnapshotPayload {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "SnapshotPayload({} bytes)", self.len())
    }
}

/// Reads and checks only a snapshot's header.
pub fn read_snapshot_header(path: &Path) -> Result<SnapshotHeader, JournalError> {
    let file = File::open(path).map_err(JournalError::io(path))?;
    let mut bytes = [0u8; SNAPSHOT_HEADER_SIZE];
    file.read_exact_at(&mut bytes, 0).map_err(JournalError::io(path))?;
    SnapshotHeader::decode(&bytes).map_err(JournalError::format(path, 0))
}

/// Checks a snapshot file as loading does (header, length, payload checksum) without holding
/// its payload in memory: it is read a chunk at a time, for `keel snapshot inspect` on a large
/// file. Returns the header.
pub fn check_snapshot(path: &Path) -> Result<SnapshotHeader, JournalError> {
    const CHUNK: usize = 1 << 20;
    let header = read_snapshot_header(path)?;
    let file = File::open(path).map_err(JournalError::io(path))?;
    let length = file.metadata().map_err(JournalError::io(path))?.len();
    check_snapshot_length(path, &header, length)?;
    let mut buffer = vec![0u8; CHUNK];
    let mut checksum = 0;
    let mut offset = SNAPSHOT_HEADER_SIZE as u64;
    while offset < length {
        let chunk = &mut buffer[..(length - offset).min(CHUNK as u64) as usize];
        file.read_exact_at(chunk, offset).map_err(JournalError::io(path))?;
        checksum = crc32c::crc32c_append(checksum, chunk);
        offset += chunk.len() as u64;
    }
    header
        .verify_payload_checksum(checksum)
        .map_err(JournalError::format(path, SNAPSHOT_HEADER_SIZE as u64))?;
    Ok(header)
}

/// Checks that a snapshot file of `length` bytes is as long as its `header` says.
fn check_snapshot_length(
    path: &Path,
    header: &SnapshotHeader,
    length: u64,
) -> Result<(), JournalError> {
    if length == SNAPSHOT_HEADER_SIZE as u64 + header.payload_length {
        return Ok(());
    }
    Err(JournalError::Format {
        path: path.to_owned(),
        offset: 0,
        source: FormatError::InvalidField {
            structure: "snapshot header",
            field: "payload_length",
            value: header.payload_length,
            rule: "64 + payload_length must be the file's length",
        },
    })
}

/// Writes the payload through the storage layer at increasing offsets, computing its CRC32C.
struct PayloadWriter<'a> {
    storage: &'a dyn Storage,
    file: &'a File,
    path: &'a Path,
    offset: u64,
    checksum: u32,
}

impl Write for PayloadWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.storage.write_at(self.file, self.path, self.offset, bytes)?;
        self.checksum = crc32c::crc32c_append(self.checksum, bytes);
        self.offset += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
