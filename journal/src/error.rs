//! The journal's errors.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::format::FormatError;

/// An error from the journal: every variant names the file it concerns.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum JournalError {
    /// An operating-system call failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Another writer holds the directory's lock.
    #[error("{path} is locked by another writer: {holder}")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as the holder wrote it (`pid=… host=… since=…`).
        holder: String,
    },
    /// Bytes on disk that the format refuses.
    #[error("{path} at offset {offset}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Where in it.
        offset: u64,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
}

impl JournalError {
    /// A mapper from an I/O error to `Io` naming `path`, for `map_err`.
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io { path: path.to_owned(), source }
    }
}
