//! The file operations under the journal writer, behind a small trait so that tests can inject
//! faults: a write cut short at any byte, an `ENOSPC` or `EIO` on any call, a power loss that
//! drops or keeps each unsynced page at random.
//!
//! The writer calls [`Storage`] for every operation whose failure or partial effect matters:
//! allocating a segment, `pwrite`, `fdatasync`, `rename` and the directory `fsync`. Writes
//! through the `PageCache` tier's mapping are plain stores and cannot fail (the file is
//! pre-allocated); a process crash cuts them at the end only, which tests reproduce by cutting
//! files directly.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// Zeros written per call when allocating a file or zeroing a range.
const ZEROS_CHUNK: usize = 1 << 20;

/// The file-system operations of the journal writer.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// Writes all of `bytes` at `offset` of `file` (`pwrite`). On error, any prefix of the
    /// bytes may have been written.
    fn write_at(&self, file: &File, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()>;

    /// Makes the file's written bytes durable (`fdatasync`).
    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()>;

    /// Makes the directory's entries (creations, renames, removals) durable (`fsync`).
    fn sync_directory(&self, directory: &Path) -> io::Result<()>;

    /// Renames a file within a directory (atomic on POSIX file systems).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Creates `path` (which must not exist) and allocates `size` bytes of zeros to it by
    /// writing them, so the blocks exist and later writes into them cannot fail for space.
    /// The file is not yet synced.
    fn create_allocated(&self, path: &Path, size: u64) -> io::Result<File> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        write_zeros(self, &file, path, 0, size)?;
        Ok(file)
    }

    /// Creates `path` (which must not exist) with `size` bytes reserved to it: the blocks are
    /// allocated (so later writes into them cannot fail for space) and read as zeros, but
    /// need not be written. The default writes the zeros, as
    /// [`create_allocated`](Self::create_allocated); the real file system calls `fallocate`.
    fn create_reserved(&self, path: &Path, size: u64) -> io::Result<File> {
        self.create_allocated(path, size)
    }
}

/// Writes zeros over `from..to` of `file` through `storage`, a chunk at a time: allocating a
/// file, and zeroing a torn tail.
pub(crate) fn write_zeros<S: Storage + ?Sized>(
    storage: &S,
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
) -> io::Result<()> {
    let zeros = vec![0u8; (ZEROS_CHUNK as u64).min(to.saturating_sub(from)) as usize];
    let mut offset = from;
    while offset < to {
        let length = (to - offset).min(ZEROS_CHUNK as u64) as usize;
        storage.write_at(file, path, offset, &zeros[..length])?;
        offset += length as u64;
    }
    Ok(())
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileStorage;

impl Storage for FileStorage {
    fn write_at(&self, file: &File, _path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        file.write_all_at(bytes, offset)
    }

    fn sync_data(&self, file: &File, _path: &Path) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_directory(&self, directory: &Path) -> io::Result<()> {
        File::open(directory)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn create_reserved(&self, path: &Path, size: u64) -> io::Result<File> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size) {
            Ok(()) => Ok(file),
            // A file system without `fallocate`: the zeros are written instead.
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {
                write_zeros(self, &file, path, 0, size)?;
                Ok(file)
            }
            Err(errno) => Err(errno.into()),
        }
    }
}

/// One storage operation, as [`FaultyStorage`] counts and matches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// [`Storage::write_at`].
    Write,
    /// [`Storage::sync_data`].
    SyncData,
    /// [`Storage::sync_directory`].
    SyncDirectory,
    /// [`Storage::rename`].
    Rename,
}

/// A fault to inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails with this error (`libc`'s number, e.g. 28 for `ENOSPC`, 5 for
    /// `EIO`) and has no effect.
    Fail {
        /// The `errno` to return.
        errno: i32,
    },
    /// A write stores only its first `bytes` bytes and then fails with `EIO`: a torn write.
    Tear {
        /// How many bytes reach the file.
        bytes: usize,
    },
    /// A `sync_data` fails with this error, and the file's unsynced writes are marked clean
    /// without reaching the disk, as Linux does after a failed writeback ("fsyncgate"): they
    /// read back as written, no later sync writes them, and a power loss reverts them, unless
    /// they are written again and that write is synced. (On other operations: as `Fail`.)
    FailClean {
        /// The `errno` to return.
        errno: i32,
    },
}

/// A rule: the `skip`-th next operation of a kind (0: the very next) gets the fault.
#[derive(Clone, Debug)]
struct Rule {
    operation: Operation,
    skip: u64,
    fault: Fault,
    /// Only writes to files whose name contains this (e.g. `.segment`), if set.
    path_contains: Option<String>,
}

/// A write not yet covered by a successful `sync_data` of its file: what a power loss may
/// undo, page by page.
#[derive(Clone, Debug)]
struct UnsyncedWrite {
    path: PathBuf,
    offset: u64,
    /// The bytes the write replaced.
    before: Vec<u8>,
    /// Marked clean by a failed sync ([`Fault::FailClean`]): no sync writes it, and a power
    /// loss always reverts it, except where a later write that was synced covers it.
    clean: bool,
}

impl UnsyncedWrite {
    fn end(&self) -> u64 {
        self.offset + self.before.len() as u64
    }

    /// What is left of this write outside `start..end`: none, one or two pieces.
    fn without(self, start: u64, end: u64) -> Vec<UnsyncedWrite> {
        if end <= self.offset || start >= self.end() {
            return vec![self];
        }
        let mut pieces = Vec::new();
        if start > self.offset {
            let keep = (start - self.offset) as usize;
            pieces.push(UnsyncedWrite { before: self.before[..keep].to_vec(), ..self.clone() });
        }
        if end < self.end() {
            let skip = (end - self.offset) as usize;
            pieces.push(UnsyncedWrite {
                offset: end,
                before: self.before[skip..].to_vec(),
                ..self
            });
        }
        pieces
    }
}

#[derive(Debug, Default)]
struct FaultState {
    rules: VecDeque<Rule>,
    unsynced: Vec<UnsyncedWrite>,
    counts: [u64; 4],
}

/// A [`Storage`] over the real file system that injects faults on request and remembers every
/// write that no sync has covered yet, so that a test can simulate a power loss.
///
/// It is part of the public API so that applications embedding keel can run the same fault
/// tests against their own recovery code.
#[derive(Clone, Debug, Default)]
pub struct FaultyStorage {
    state: Arc<Mutex<FaultState>>,
}

impl FaultyStorage {
    /// A storage with no faults planned.
    pub fn new() -> Self {
        Self::default()
    }

    /// Plans `fault` for the `skip`-th next operation of kind `operation` (0: the next one).
    pub fn inject(&self, operation: Operation, skip: u64, fault: Fault) {
        self.state.lock().rules.push_back(Rule { operation, skip, fault, path_contains: None });
    }

    /// As [`inject`](Self::inject), counting only operations on files whose path contains
    /// `path_contains`.
    pub fn inject_on(&self, operation: Operation, path_contains: &str, skip: u64, fault: Fault) {
        self.state.lock().rules.push_back(Rule {
            operation,
            skip,
            fault,
            path_contains: Some(path_contains.to_owned()),
        });
    }

    /// Drops every planned fault.
    pub fn clear(&self) {
        self.state.lock().rules.clear();
    }

    /// How many operations of a kind were attempted so far.
    pub fn count(&self, operation: Operation) -> u64 {
        self.state.lock().counts[operation as usize]
    }

    /// Simulates a power loss: each 4 KiB page of every write that no successful sync covered
    /// is kept or reverted to its bytes before the write, as `keep_page` decides (called with
    /// the file and the page's offset); a kept page may also be cut, keeping only a prefix, when
    /// `keep_page` returns a length below 4096. Writes a failed sync marked clean
    /// ([`Fault::FailClean`]) are reverted without asking: they never reached the disk. The
    /// state machine of the disk described in `docs/journal-format.md` section 5: unsynced
    /// bytes may be absent, present or partly present, in any order. Call it after the writer
    /// is dropped.
    pub fn power_loss(
        &self,
        mut keep_page: impl FnMut(&Path, u64) -> PageFate,
    ) -> io::Result<PowerLoss> {
        let unsynced = std::mem::take(&mut self.state.lock().unsynced);
        let mut outcome = PowerLoss::default();
        // Undo the newest writes first, so that a page written twice goes back to its oldest
        // unsynced state when reverted.
        for write in unsynced.iter().rev() {
            let file = OpenOptions::new().write(true).open(&write.path)?;
            for (index, page) in write.before.chunks(PAGE).enumerate() {
                let offset = write.offset + (index * PAGE) as u64;
                let fate =
                    if write.clean { PageFate::Revert } else { keep_page(&write.path, offset) };
                match fate {
                    PageFate::Keep => outcome.pages_kept += 1,
                    PageFate::Revert => {
                        file.write_all_at(page, offset)?;
                        outcome.pages_reverted += 1;
                    }
                    PageFate::Cut { keep } => {
                        let keep = keep.min(page.len());
                        file.write_all_at(&page[keep..], offset + keep as u64)?;
                        outcome.pages_cut += 1;
                    }
                }
            }
        }
        Ok(outcome)
    }

    /// Takes the fault planned for this operation, if any, and counts the operation.
    fn take_fault(&self, operation: Operation, path: &Path) -> Option<Fault> {
        let mut state = self.state.lock();
        state.counts[operation as usize] += 1;
        let path = path.to_string_lossy();
        let position = state.rules.iter().position(|rule| {
            rule.operation == operation
                && rule.path_contains.as_deref().is_none_or(|part| path.contains(part))
        })?;
        let rule = &mut state.rules[position];
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        state.rules.remove(position).map(|rule| rule.fault)
    }

    fn remember_write(&self, file: &File, path: &Path, offset: u64, length: usize) {
        let mut before = vec![0u8; length];
        // Bytes past the end of the file read as nothing; the file is allocated before it is
        // written, so this only happens for a file being allocated, whose old content is
        // zeros anyway.
        let mut read = 0;
        while read < length {
            match file.read_at(&mut before[read..], offset + read as u64) {
                Ok(0) | Err(_) => break,
                Ok(count) => read += count,
            }
        }
        let write = UnsyncedWrite { path: path.to_owned(), offset, before, clean: false };
        self.state.lock().unsynced.push(write);
    }
}

/// The page size of the power-loss simulation.
const PAGE: usize = 4096;

/// What a simulated power loss does to one unsynced page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageFate {
    /// The page reached the disk.
    Keep,
    /// The page did not reach the disk: it reads as before the write.
    Revert,
    /// Only the first `keep` bytes of the page reached the disk.
    Cut {
        /// Bytes kept.
        keep: usize,
    },
}

/// What a simulated power loss did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerLoss {
    /// Unsynced pages left as written.
    pub pages_kept: u64,
    /// Unsynced pages reverted.
    pub pages_reverted: u64,
    /// Unsynced pages cut short.
    pub pages_cut: u64,
}

fn injected(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

impl Fault {
    /// The error an operation other than a write returns for this fault (a tear is an `EIO`).
    fn into_error(self) -> io::Error {
        match self {
            Self::Fail { errno } | Self::FailClean { errno } => injected(errno),
            Self::Tear { .. } => injected(EIO),
        }
    }
}

/// `EIO`.
const EIO: i32 = 5;

impl Storage for FaultyStorage {
    fn write_at(&self, file: &File, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
        match self.take_fault(Operation::Write, path) {
            Some(Fault::Fail { errno } | Fault::FailClean { errno }) => Err(injected(errno)),
            Some(Fault::Tear { bytes: kept }) => {
                let kept = kept.min(bytes.len());
                self.remember_write(file, path, offset, kept);
                file.write_all_at(&bytes[..kept], offset)?;
                Err(injected(EIO))
            }
            None => {
                self.remember_write(file, path, offset, bytes.len());
                file.write_all_at(bytes, offset)
            }
        }
    }

    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        if let Some(fault) = self.take_fault(Operation::SyncData, path) {
            if let Fault::FailClean { .. } = fault {
                for write in &mut self.state.lock().unsynced {
                    write.clean |= write.path == path;
                }
            }
            return Err(fault.into_error());
        }
        file.sync_data()?;
        let mut state = self.state.lock();
        // The file's dirty writes reach the disk, and where they cover bytes that a failed sync
        // marked clean, the disk now holds those bytes too.
        let (synced, others): (Vec<_>, Vec<_>) = std::mem::take(&mut state.unsynced)
            .into_iter()
            .partition(|write| write.path == path && !write.clean);
        state.unsynced = others;
        for write in synced {
            let (start, end) = (write.offset, write.end());
            state.unsynced =
                std::mem::take(&mut state.unsynced)
                    .into_iter()
                    .flat_map(|other| {
                        if other.path == path {
                            other.without(start, end)
                        } else {
                            vec![other]
                        }
                    })
                    .collect();
        }
        Ok(())
    }

    fn sync_directory(&self, directory: &Path) -> io::Result<()> {
        if let Some(fault) = self.take_fault(Operation::SyncDirectory, directory) {
            return Err(fault.into_error());
        }
        FileStorage.sync_directory(directory)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        // A rename is matched against "FROM -> TO", so a rule can pick renames by either name.
        let names = format!("{} -> {}", from.display(), to.display());
        if let Some(fault) = self.take_fault(Operation::Rename, Path::new(&names)) {
            return Err(fault.into_error());
        }
        std::fs::rename(from, to)?;
        // Unsynced writes follow the file to its new name.
        for write in &mut self.state.lock().unsynced {
            if write.path == from {
                write.path = to.to_owned();
            }
        }
        Ok(())
    }
}
