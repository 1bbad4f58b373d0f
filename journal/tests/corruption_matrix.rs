//! The corruption matrix: for the last two batches of a journal, a write cut short at every
//! byte offset (zeros from there to the end of the data) and one bit flipped in every byte;
//! `verify`, the `keel journal verify` command (its exit code), `open` and a reader after it
//! give the outcome that the decision table of `docs/journal-format.md` (section 5) names, case
//! by case, and nothing panics. Snapshot files: every truncation and a flip of every byte is
//! refused with a clear error, and the store passes over such a file to the older snapshot.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use keel_journal::format::{check_batch, BatchCheck, SEGMENT_HEADER_SIZE};
use keel_journal::{verify_journal, Durability, JournalError, JournalWriter};

/// A committed batch of the template journal: where it starts and ends in the segment, its
/// last sequence.
#[derive(Clone, Copy, Debug)]
struct Batch {
    start: u64,
    end: u64,
    last: u64,
}

fn batches_of(segment: &Path) -> Vec<Batch> {
    let bytes = std::fs::read(segment).unwrap();
    let mut position = SEGMENT_HEADER_SIZE;
    let mut batches = Vec::new();
    while let BatchCheck::Batch(batch) = check_batch(&bytes[position..]) {
        let start = position as u64;
        position += batch.size();
        batches.push(Batch { start, end: position as u64, last: batch.last_sequence });
    }
    batches
}

/// What the decision table says a damaged journal is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Opens as it is, ending at this sequence (rows 1 and 2).
    Valid { last: u64 },
    /// A torn tail (rows 3 to 5): open cuts it at `at` and ends at `last`.
    Torn { at: u64, last: u64 },
    /// Damage followed by a valid batch: open refuses it (row 6).
    Corrupt,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Valid { .. } => "valid",
            Self::Torn { .. } => "torn tail",
            Self::Corrupt => "corruption",
        }
    }
}

/// The outcome for damage at `offset`: inside the last batch, its loss (a torn tail, or a
/// clean end when the cut falls exactly at its start); inside the batch before it, a cut drops
/// it too (everything after is zero), but a flipped bit there is synced data damaged with a
/// valid batch after it.
///
/// A cut's effect starts at the first byte it changes: zeros written over padding that was
/// zero already change nothing.
fn expected(batches: &[Batch], bytes: &[u8], offset: u64, cut: bool) -> Outcome {
    let [.., before, second, last] = batches else { panic!("at least three batches") };
    let offset = if cut {
        match (offset..last.end).find(|at| bytes[*at as usize] != 0) {
            Some(changed) => changed,
            None => return Outcome::Valid { last: last.last },
        }
    } else {
        offset
    };
    let damaged = if offset >= last.start { last } else { second };
    let kept = if offset >= last.start { second.last } else { before.last };
    if !cut && offset < last.start {
        return Outcome::Corrupt;
    }
    // A cut that leaves nothing of the damaged batch but zeros (its first changed byte the
    // first non-zero one of the batch) ends the data cleanly where the batch began.
    if cut && bytes[damaged.start as usize..offset as usize].iter().all(|&byte| byte == 0) {
        return Outcome::Valid { last: kept };
    }
    Outcome::Torn { at: damaged.start, last: kept }
}

/// A copy of the template's segment (its only file that matters) in a fresh directory.
fn copy_of(template: &Path, root: &Path, case: usize) -> (PathBuf, PathBuf) {
    let directory = root.join(format!("case-{case}"));
    std::fs::create_dir_all(directory.join("journal")).unwrap();
    let segment = directory.join("journal").join(template.file_name().unwrap());
    std::fs::copy(template, &segment).unwrap();
    (directory, segment)
}

#[test]
fn every_cut_and_every_flipped_bit_in_the_last_batches_gets_the_decision_tables_outcome() {
    let (template, last_sequence) = journal(4, 4);
    let template_segment = segment_paths(template.path()).pop().unwrap();
    let batches = batches_of(&template_segment);
    let template_bytes = std::fs::read(&template_segment).unwrap();
    assert_eq!(batches.len(), 4);
    assert_eq!(batches[3].last, last_sequence);
    let root = tempfile::tempdir().unwrap();
    let (from, to) = (batches[2].start, batches[3].end);
    let mut cases = 0;
    let mut tally = std::collections::BTreeMap::<&str, u64>::new();
    for offset in from..to {
        for cut in [true, false] {
            let (directory, segment) = copy_of(&template_segment, root.path(), cases);
            if cut {
                write_at(&segment, offset, &vec![0u8; (to - offset) as usize]);
            } else {
                flip_bit(&segment, offset, (offset % 8) as u8);
            }
            let what = format!("{} at byte {offset}", if cut { "a cut" } else { "a flipped bit" });
            let outcome = expected(&batches, &template_bytes, offset, cut);
            let verification = verify_journal(&directory, &mut |_, _| {})
                .unwrap_or_else(|error| panic!("{what}: verify failed to run: {error}"));
            assert_eq!(verification.verdict.label(), outcome.label(), "{what}: verify");
            // And the tool an operator runs: its exit code names the verdict.
            let status = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
                .args(["journal", "verify"])
                .arg(&directory)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("keel runs");
            let expected_code = match outcome {
                Outcome::Valid { .. } => 0,
                Outcome::Torn { .. } => 3,
                Outcome::Corrupt => 4,
            };
            assert_eq!(status.code(), Some(expected_code), "{what}: keel journal verify");
            let opened = JournalWriter::open(&directory, options(Durability::PageCache));
            match (outcome, opened) {
                (Outcome::Valid { last }, Ok(writer)) => {
                    let report = writer.open_report();
                    assert_eq!(report.truncated, None, "{what}");
                    assert_eq!(report.last_sequence, last, "{what}");
                }
                (Outcome::Torn { at, last }, Ok(writer)) => {
                    let report = writer.open_report();
                    let truncation = report.truncated.clone();
                    assert_eq!(truncation.map(|cut| cut.offset), Some(at), "{what}: {report}");
                    assert_eq!(report.last_sequence, last, "{what}");
                }
                (Outcome::Corrupt, Err(error)) => {
                    assert!(
                        matches!(error, JournalError::Corrupt { .. }) && error.is_damage(),
                        "{what}: {error}"
                    );
                    // Nothing was changed: the damage stays for an operator to look at.
                    assert_eq!(batches_of(&segment).len(), 2, "{what}");
                }
                (outcome, opened) => {
                    panic!("{what}: expected {outcome:?}, open gave {:?}", opened.map(|_| ()))
                }
            }
            if let Outcome::Valid { last } | Outcome::Torn { last, .. } = outcome {
                // What survives reads back exactly, and the next open finds a clean end.
                assert_eq!(check_journal(&directory, 1), last, "{what}");
                let verification = verify_journal(&directory, &mut |_, _| {}).unwrap();
                assert_eq!(verification.verdict.label(), "valid", "{what}: after open");
            }
            *tally.entry(outcome.label()).or_default() += 1;
            std::fs::remove_dir_all(&directory).unwrap();
            cases += 1;
        }
    }
    println!("{cases} cases: {tally:?}");
    assert_eq!(cases as u64, 2 * (to - from));
    assert!(tally.len() == 3, "every outcome of the table is reached: {tally:?}");
}

fn snapshot_meta(sequence: u64) -> keel_journal::SnapshotMeta {
    keel_journal::SnapshotMeta {
        schema_version: 1,
        codec: keel_journal::format::CODEC_BINCODE2_SERDE,
        sequence,
        timestamp_ns: timestamp(sequence),
        state_hash: sequence,
    }
}

fn snapshot_state(sequence: u64) -> Vec<u8> {
    (0..700u64).map(|index| (index * 7 + sequence) as u8).collect()
}

#[test]
fn every_truncation_and_every_flipped_byte_of_a_snapshot_is_refused_for_the_older_one() {
    use keel_journal::snapshot::read_snapshot;
    use keel_journal::SnapshotStore;

    let directory = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(directory.path()).unwrap();
    store.write(&snapshot_meta(10), &snapshot_state(10)).unwrap();
    let newest = store.write(&snapshot_meta(20), &snapshot_state(20)).unwrap();
    let original = std::fs::read(&newest.path).unwrap();
    // The application's own check: the state it finds must be the one the header names.
    let decode = |header: &keel_journal::format::SnapshotHeader, payload: &[u8]| {
        if payload == snapshot_state(header.sequence).as_slice() {
            Ok(header.sequence)
        } else {
            Err("not the state this header names".to_owned())
        }
    };
    let mut cases = 0;
    let damaged = original.len() as u64;
    for length in 0..damaged {
        std::fs::write(&newest.path, &original[..length as usize]).unwrap();
        let what = format!("the snapshot cut to {length} of {damaged} bytes");
        assert!(read_snapshot(&newest.path).is_err(), "{what}: read");
        let loaded = store.load_newest(decode).unwrap();
        assert_eq!(loaded.loaded.map(|(_, _, sequence)| sequence), Some(10), "{what}");
        assert_eq!(loaded.skipped.len(), 1, "{what}");
        assert!(!loaded.skipped[0].1.is_empty(), "{what}: a reason");
        cases += 1;
    }
    for offset in 0..original.len() {
        let mut bytes = original.clone();
        bytes[offset] ^= 1 << (offset % 8);
        std::fs::write(&newest.path, &bytes).unwrap();
        let what = format!("a bit flipped in byte {offset} of the snapshot");
        let loaded = store.load_newest(decode).unwrap();
        // Every byte is covered by a checksum: no flip leaves the damaged file loadable.
        match loaded.loaded {
            Some((file, ..)) if file.sequence == 20 => panic!("{what}: loaded as if intact"),
            Some((_, _, sequence)) => assert_eq!(sequence, 10, "{what}"),
            None => panic!("{what}: the older snapshot did not load"),
        }
        assert_eq!(loaded.skipped.len(), 1, "{what}");
        cases += 1;
    }
    std::fs::write(&newest.path, &original).unwrap();
    let loaded = store.load_newest(decode).unwrap();
    assert_eq!(loaded.loaded.map(|(_, _, sequence)| sequence), Some(20));
    println!("{cases} damaged snapshots, each refused for the older one");
}
