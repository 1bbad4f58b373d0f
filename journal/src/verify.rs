//! A read-only check of a whole journal against the decision table of
//! `docs/journal-format.md`, section 6: every segment header, every batch's checksum and rules,
//! the sequences across segments. `JournalWriter::open` scans only the tail; this reads
//! everything, and changes nothing (it takes no lock, so it can look at a live journal, whose
//! last batch may then be in flight).

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::JournalError;
use crate::mmap::ReadableMap;
use crate::scan::{scan_segment, SegmentEnd, TornTail};
use crate::segment::{
    check_torn_roll, classify_spare, existing_journal_directory, list_segments, missing_segment,
    read_header, SegmentFile, SpareState, SPARE_NAME, SPARE_TEMPORARY_NAME, TORN_ROLL,
};

/// What one segment holds, as far as it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    /// The segment file.
    pub path: PathBuf,
    /// The sequence of its first record, from its header.
    pub first_sequence: u64,
    /// Valid records in it.
    pub records: u64,
    /// The sequence of its last valid record (`first_sequence - 1` if none).
    pub last_sequence: u64,
    /// The timestamps of its first and last valid records, if it holds any (not given for a
    /// segment whose scan stopped at corruption).
    pub timestamps_ns: Option<(u64, u64)>,
    /// The file's size.
    pub size: u64,
    /// The bytes from the start of the file to the end of its last valid batch.
    pub used: u64,
    /// The epoch of the writer that created it.
    pub epoch: u64,
}

/// The verdict on a journal, per the decision table.
#[derive(Debug)]
pub enum Verdict {
    /// Rows 1, 2 and 11 only: every byte is accounted for.
    Valid,
    /// Rows 3 to 5 (or a roll torn before its first commit): the end of the journal is a
    /// write that was never acknowledged, which opening it for writing truncates.
    TornTail {
        /// The segment file.
        segment: PathBuf,
        /// What is there and what truncating it drops.
        tail: TornTail,
    },
    /// Rows 6 to 10: damage that opening the journal refuses. The error names the file, the
    /// offset and the sequence; `keel journal repair` can truncate before it.
    Corrupt(JournalError),
}

impl Verdict {
    /// A word for the verdict: `valid`, `torn tail` or `corruption`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::TornTail { .. } => "torn tail",
            Self::Corrupt(_) => "corruption",
        }
    }
}

/// The result of [`verify_journal`].
#[derive(Debug)]
pub struct Verification {
    /// The journal's directory (the one holding `journal/`).
    pub directory: PathBuf,
    /// The segments read, in order, up to the one holding corruption (its records before the
    /// damage); a segment after it is not read.
    pub segments: Vec<SegmentSummary>,
    /// Things found that are not damage, such as a spare left by a crash, in words.
    pub notes: Vec<String>,
    /// The verdict.
    pub verdict: Verdict,
}

impl Verification {
    /// The first sequence the journal holds (its first segment's), if it has a segment.
    pub fn first_sequence(&self) -> Option<u64> {
        self.segments.first().map(|segment| segment.first_sequence)
    }

    /// The last valid sequence read, if any record was.
    pub fn last_sequence(&self) -> Option<u64> {
        let last = self.segments.iter().rev().find(|segment| segment.records > 0)?;
        Some(last.last_sequence)
    }

    /// Valid records read.
    pub fn records(&self) -> u64 {
        self.segments.iter().map(|segment| segment.records).sum()
    }
}

/// Reads the whole journal in `directory` and judges it by the decision table, changing
/// nothing. `progress` is called now and then with the bytes read so far and the bytes to read
/// in all. An `Err` is an I/O error (or no journal there); damage is a [`Verdict`].
pub fn verify_journal(
    directory: impl AsRef<Path>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Verification, JournalError> {
    let directory = directory.as_ref().to_owned();
    let journal_directory = existing_journal_directory(&directory)?;
    let mut verification = Verification {
        directory,
        segments: Vec::new(),
        notes: Vec::new(),
        verdict: Verdict::Valid,
    };
    match survey(&journal_directory, &mut verification.notes) {
        Ok(Survey { segments, torn_roll }) => {
            verification.verdict = match verify_segments(&segments, &mut verification, progress) {
                Ok(None) => torn_roll
                    .map_or(Verdict::Valid, |(segment, tail)| Verdict::TornTail { segment, tail }),
                Ok(Some((segment, tail))) => Verdict::TornTail { segment, tail },
                Err(error) if error.is_damage() => Verdict::Corrupt(error),
                Err(error) => return Err(error),
            };
        }
        Err(error) if error.is_damage() => verification.verdict = Verdict::Corrupt(error),
        Err(error) => return Err(error),
    }
    Ok(verification)
}

/// The segments to read, and a roll torn before its first commit, if one was found.
struct Survey {
    segments: Vec<SegmentFile>,
    torn_roll: Option<(PathBuf, TornTail)>,
}

/// Lists the segments as `open` would see them once it had dealt with the spare: a rolled
/// spare counts as the segment it is to become; an unused spare is noted; a torn roll (the
/// spare's or the last segment's) is left out and reported as a torn tail.
fn survey(journal_directory: &Path, notes: &mut Vec<String>) -> Result<Survey, JournalError> {
    if journal_directory.join(SPARE_TEMPORARY_NAME).exists() {
        notes.push(format!(
            "{SPARE_TEMPORARY_NAME}: a spare allocation cut short (open removes it)"
        ));
    }
    let spare = journal_directory.join(SPARE_NAME);
    let mut segments = list_segments(journal_directory)?;
    let mut torn_roll = None;
    match classify_spare(journal_directory)? {
        SpareState::Absent => {}
        SpareState::Unused => notes.push(format!("{SPARE_NAME}: a spare segment, not yet used")),
        SpareState::Rolled { target, first_sequence } => {
            notes.push(format!(
                "{SPARE_NAME}: the segment of sequence {first_sequence} onwards, not yet renamed \
                 to {} (a writer does that within milliseconds of a roll; after a crash, open \
                 does)",
                target.display()
            ));
            segments.push(SegmentFile { first_sequence, path: spare.clone() });
            segments.sort_by_key(|segment| segment.first_sequence);
        }
        SpareState::TornRoll => torn_roll = Some(torn_roll_tail(&spare)?),
    }
    if let Some(last) = segments.last() {
        let file = File::open(&last.path).map_err(JournalError::io(&last.path))?;
        if read_header(&file, last, None).is_err() {
            let map = ReadableMap::new(&file).map_err(JournalError::io(&last.path))?;
            check_torn_roll(&last.path, map.bytes())?;
            torn_roll = Some(torn_roll_tail(&last.path)?);
            segments.pop();
        }
    }
    Ok(Survey { segments, torn_roll })
}

/// A roll torn before its first commit, described as the torn tail it is: opening the journal
/// removes the whole file.
fn torn_roll_tail(path: &Path) -> Result<(PathBuf, TornTail), JournalError> {
    let size = std::fs::metadata(path).map_err(JournalError::io(path))?.len();
    let tail = TornTail { offset: 0, dirty_end: size, damage: TORN_ROLL.into(), dropped: None };
    Ok((path.to_owned(), tail))
}

/// Validates every header, scans every segment and checks that each starts where the one
/// before ended (rows 1 to 11). Returns the torn tail of the last segment, if it has one.
fn verify_segments(
    segments: &[SegmentFile],
    verification: &mut Verification,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Option<(PathBuf, TornTail)>, JournalError> {
    let mut sizes = Vec::with_capacity(segments.len());
    for segment in segments {
        sizes
            .push(std::fs::metadata(&segment.path).map_err(JournalError::io(&segment.path))?.len());
    }
    let total: u64 = sizes.iter().sum();
    let mut done = 0;
    let mut journal_id = None;
    let mut expected = None;
    for (index, (segment, size)) in segments.iter().zip(sizes).enumerate() {
        let file = File::open(&segment.path).map_err(JournalError::io(&segment.path))?;
        // Row 9.
        let header = read_header(&file, segment, journal_id)?;
        journal_id = Some(header.journal_id);
        if let Some(expected) = expected.filter(|&expected| expected != segment.first_sequence) {
            // Row 10.
            return Err(missing_segment(&segments[index - 1].path, expected - 1, segment));
        }
        let map = ReadableMap::new(&file).map_err(JournalError::io(&segment.path))?;
        let is_last = index + 1 == segments.len();
        let scanned = scan_segment(
            &segment.path,
            map.bytes(),
            segment.first_sequence,
            is_last,
            &mut |offset| progress(done + offset, total),
        );
        let scan = match scanned {
            Ok(scan) => scan,
            Err(error) => {
                // The records before the damage are valid: say how far they go.
                if let JournalError::Corrupt { offset, expected, .. } = &error {
                    verification.segments.push(SegmentSummary {
                        path: segment.path.clone(),
                        first_sequence: segment.first_sequence,
                        records: expected - segment.first_sequence,
                        last_sequence: expected - 1,
                        timestamps_ns: None,
                        size,
                        used: *offset,
                        epoch: header.epoch,
                    });
                }
                return Err(error);
            }
        };
        done += size;
        verification.segments.push(SegmentSummary {
            path: segment.path.clone(),
            first_sequence: segment.first_sequence,
            records: scan.records,
            last_sequence: scan.last_sequence,
            timestamps_ns: (scan.records > 0)
                .then_some((scan.first_timestamp_ns, scan.last_timestamp_ns)),
            size,
            used: scan.end_offset,
            epoch: header.epoch,
        });
        expected = Some(scan.last_sequence + 1);
        if let SegmentEnd::Torn(tail) = scan.end {
            return Ok(Some((segment.path.clone(), tail)));
        }
    }
    Ok(None)
}
