//! The single-writer lock: `DIR/LOCK`, held with `flock` (through `File::try_lock`) for as long
//! as a writer is open, and holding the text `pid=… host=… since=…` so that a refused second
//! writer is told who holds it. The kernel releases the lock when the holder's process dies,
//! so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::JournalError;

/// The lock file's name inside a journal directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// The longest holder text read back for an error message; a larger file is cut, so a damaged
/// lock file cannot make an error message unbounded.
const HOLDER_TEXT_MAX: u64 = 512;

/// Proof that this process is the directory's only writer. Dropping it releases the lock.
#[derive(Debug)]
pub struct WriterLock {
    /// Kept open: closing the file releases the lock.
    _file: File,
    path: PathBuf,
}

impl WriterLock {
    /// Takes the writer lock of `directory` (created if missing), or fails with
    /// [`JournalError::Locked`] naming the holder.
    pub fn acquire(directory: &Path) -> Result<Self, JournalError> {
        std::fs::create_dir_all(directory).map_err(JournalError::io(directory))?;
        let path = directory.join(LOCK_FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(JournalError::io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(JournalError::Locked { holder: read_holder(&mut file), path });
            }
            Err(TryLockError::Error(error)) => return Err(JournalError::io(&path)(error)),
        }
        let holder = format!(
            "pid={} host={} since={}\n",
            std::process::id(),
            host_name(),
            crate::time::rfc3339(SystemTime::now())
        );
        file.set_len(0).map_err(JournalError::io(&path))?;
        file.seek(SeekFrom::Start(0)).map_err(JournalError::io(&path))?;
        file.write_all(holder.as_bytes()).map_err(JournalError::io(&path))?;
        file.sync_data().map_err(JournalError::io(&path))?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The holder's text, for the error message; best effort, as the holder may be rewriting it.
fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let read = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.take(HOLDER_TEXT_MAX).read_to_string(&mut text));
    match read {
        Ok(_) if !text.trim().is_empty() => text.trim().to_owned(),
        _ => "an unknown process (the lock file names no holder)".to_owned(),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
