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
    /// Damage that is not a torn tail: a bad record followed by data that proves it was once
    /// written whole, a record out of sequence, a missing or extra segment. Nothing is skipped
    /// or truncated; `keel journal repair` can truncate here on an operator's request.
    #[error(
        "{path} at offset {offset}: corruption where sequence {expected} should be{}: {detail}",
        found.map(|found| format!(" (found sequence {found})")).unwrap_or_default()
    )]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// The sequence that should be there.
        expected: u64,
        /// The sequence found there, when a record with a valid checksum holds another one.
        found: Option<u64>,
        /// What is wrong, in words.
        detail: String,
    },
    /// A reader reached bytes at the end of the journal that are not a complete record: a torn
    /// tail that opening the journal for writing would truncate, or a write in flight (follow a
    /// live journal with a `Tailer`, which waits for complete records).
    #[error("{path} at offset {offset}: no complete record where sequence {expected} should be ({detail})")]
    TornTail {
        /// The segment file.
        path: PathBuf,
        /// Where the incomplete record starts.
        offset: u64,
        /// The sequence that should be there.
        expected: u64,
        /// What was found.
        detail: String,
    },
    /// A sequence that is not in the journal.
    #[error("sequence {sequence} is not in the journal at {path}, which holds {first}..={last}")]
    SequenceNotFound {
        /// The journal directory.
        path: PathBuf,
        /// The sequence asked for.
        sequence: u64,
        /// The first sequence the journal holds.
        first: u64,
        /// The last sequence it holds (`first - 1` when empty).
        last: u64,
    },
    /// Records appended whose first sequence is not the next one: a journal holds every
    /// sequence once, in order.
    #[error("{path}: records from sequence {found} appended where sequence {expected} is next")]
    NotNext {
        /// The journal directory.
        path: PathBuf,
        /// The sequence the next record must have.
        expected: u64,
        /// The first sequence of the records offered.
        found: u64,
    },
    /// A timestamp lower than the previous record's: timestamps must not decrease.
    #[error("timestamp {timestamp_ns} of sequence {sequence} is below the previous record's ({previous_ns})")]
    TimestampRegression {
        /// The sequence the record would have had.
        sequence: u64,
        /// Its timestamp.
        timestamp_ns: u64,
        /// The previous record's timestamp.
        previous_ns: u64,
    },
    /// The writer failed earlier (an I/O error on append, flush or segment roll) and refuses
    /// to append until the journal is reopened: everything acknowledged before is intact.
    #[error(
        "the journal writer of {path} stopped after an earlier error and must be reopened: {cause}"
    )]
    Failed {
        /// The journal directory.
        path: PathBuf,
        /// The error that stopped it.
        cause: String,
    },
    /// The journal in the directory is not the one asked for: another journal's id.
    #[error("{path} holds journal {found}, not journal {expected}")]
    ForeignJournal {
        /// The journal directory.
        path: PathBuf,
        /// The id asked for, in hexadecimal.
        expected: String,
        /// The id found, in hexadecimal.
        found: String,
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

    /// A mapper from a format error to `Format` naming `path` and `offset`, for `map_err`.
    pub(crate) fn format(path: &Path, offset: u64) -> impl FnOnce(FormatError) -> Self + '_ {
        move |source| Self::Format { path: path.to_owned(), offset, source }
    }

    /// Row 7 of the recovery table: a record whose checksum holds but whose sequence is not
    /// the next one.
    pub(crate) fn out_of_sequence(path: &Path, offset: u64, expected: u64, found: u64) -> Self {
        Self::Corrupt {
            path: path.to_owned(),
            offset,
            expected,
            found: Some(found),
            detail: "a record with a valid checksum holds another sequence (a gap, a repeat, \
                     or a record of another journal)"
                .into(),
        }
    }

    /// Whether the error is about damaged data (as opposed to the environment: I/O, locks,
    /// arguments). `keel journal verify` exits with a distinct code for these.
    pub fn is_damage(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::TornTail { .. } | Self::Format { .. })
    }
}
