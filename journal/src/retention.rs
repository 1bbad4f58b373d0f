//! Retention: removing the segments that hold only records below a sequence
//! (`docs/journal-format.md`, section 7).

use std::path::{Path, PathBuf};

use crate::error::JournalError;
use crate::segment::{create_directory, list_segments, SegmentFile, ARCHIVE_DIRECTORY};
use crate::storage::Storage;
use crate::writer::Retention;

/// Deletes or archives every segment but the last whose successor starts at or below
/// `sequence` (so all its records are below it). `current` is the segment being written, which
/// may not have its name on disk yet (the background thread renames it after a roll). Returns
/// the files removed, oldest first.
pub(crate) fn retain_from(
    storage: &dyn Storage,
    directory: &Path,
    journal_directory: &Path,
    current: &SegmentFile,
    sequence: u64,
    retention: Retention,
) -> Result<Vec<PathBuf>, JournalError> {
    let mut segments = list_segments(journal_directory)?;
    if segments.last().is_none_or(|last| last.first_sequence < current.first_sequence) {
        segments.push(current.clone());
    }
    let archive = directory.join(ARCHIVE_DIRECTORY);
    let mut removed = Vec::new();
    for pair in segments.windows(2) {
        let (segment, next) = (&pair[0], &pair[1]);
        if next.first_sequence > sequence {
            break;
        }
        match retention {
            Retention::Delete => {
                std::fs::remove_file(&segment.path).map_err(JournalError::io(&segment.path))?
            }
            Retention::Archive => {
                create_directory(storage, &archive)?;
                let name = segment.path.file_name().expect("a segment path has a file name");
                storage
                    .rename(&segment.path, &archive.join(name))
                    .map_err(JournalError::io(&segment.path))?;
            }
        }
        removed.push(segment.path.clone());
    }
    if !removed.is_empty() {
        storage.sync_directory(journal_directory).map_err(JournalError::io(journal_directory))?;
        if retention == Retention::Archive {
            storage.sync_directory(&archive).map_err(JournalError::io(&archive))?;
        }
    }
    Ok(removed)
}
