//! `Repair`: truncating a journal after a sequence on an operator's request: inside a batch
//! (resealed), at batch and segment boundaries, past corruption, and cut short and run again.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use keel_journal::{
    verify_journal, Durability, JournalError, JournalWriter, Repair, SnapshotMeta, SnapshotStore,
};

fn open(directory: &Path) -> Result<JournalWriter, JournalError> {
    JournalWriter::open(directory, options(Durability::PageCache))
}

fn verdict(directory: &Path) -> &'static str {
    verify_journal(directory, &mut |_, _| {}).unwrap().verdict.label()
}

/// The offset of the record holding `sequence` in a segment file.
fn offset_of(segment: &Path, sequence: u64) -> u64 {
    record_in(segment, sequence).offset
}

/// Checks that the journal is valid and ends at `last` with every record intact, and that a
/// writer goes on after it.
fn assert_ends_at(directory: &Path, last: u64) {
    assert_eq!(verdict(directory), "valid");
    let mut writer = open(directory).unwrap();
    assert_eq!(writer.open_report().last_sequence, last, "{}", writer.open_report());
    assert_eq!(writer.open_report().truncated, None);
    let appended = append_batches(&mut writer, 2, 3);
    assert_eq!(appended, last + 6);
    drop(writer);
    assert_eq!(check_journal(directory, 1), last + 6);
}

#[test]
fn a_repair_inside_a_batch_reseals_its_last_kept_record() {
    let (directory, last) = journal(5, 10);
    let repair = Repair::plan(directory.path(), 23).unwrap();
    let plan = repair.plan_ref().clone();
    let segment = segment_paths(directory.path()).pop().unwrap();
    assert_eq!(plan.segment, segment);
    assert_eq!(plan.reseal, Some(offset_of(&segment, 23)));
    assert_eq!(plan.dropped_records, Some(24..=last));
    assert_eq!(plan.damage, None);
    assert!(plan.later_segments.is_empty());
    let text = plan.to_string();
    let resealed = text.contains("end its batch at record 23");
    assert!(resealed && text.contains("sequences 24..=50"), "{text}");
    let done = repair.execute().unwrap();
    // The zeroed bytes were copied out first, and the header of the batch resealed.
    let mut copies: Vec<PathBuf> = std::fs::read_dir(&done.dropped_directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    copies.sort_by_key(|path| std::fs::metadata(path).unwrap().len());
    assert_eq!(copies.len(), 2, "{copies:?}");
    assert_eq!(std::fs::metadata(&copies[0]).unwrap().len(), 8, "the batch's header");
    let copied = std::fs::metadata(&copies[1]).unwrap().len();
    assert_eq!(copied, done.zeroed.end() - done.zeroed.start() + 1);
    assert_ends_at(directory.path(), 23);
}

#[test]
fn a_repair_at_a_batch_end_or_at_the_end_changes_only_what_follows() {
    let (directory, last) = journal(5, 10);
    let plan = Repair::plan(directory.path(), last).unwrap().plan_ref().clone();
    assert!(plan.is_empty(), "{plan}");
    assert!(plan.to_string().contains("nothing to drop"));
    let repair = Repair::plan(directory.path(), 30).unwrap();
    assert_eq!(repair.plan_ref().reseal, None, "30 ends the third batch");
    repair.execute().unwrap();
    assert_ends_at(directory.path(), 30);
}

#[test]
fn a_repair_can_empty_the_journal_but_not_reach_past_its_end() {
    let (directory, last) = journal(5, 10);
    match Repair::plan(directory.path(), last + 1).unwrap_err() {
        JournalError::SequenceNotFound { sequence, first, last: end, .. } => {
            assert_eq!((sequence, first, end), (last + 1, 1, last));
        }
        other => panic!("expected SequenceNotFound, got {other}"),
    }
    Repair::plan(directory.path(), 0).unwrap().execute().unwrap();
    assert_ends_at(directory.path(), 0);
}

#[test]
fn a_repair_gets_past_corruption_and_refuses_to_keep_damaged_records() {
    let (directory, _) = journal(5, 10);
    let segment = segment_paths(directory.path()).pop().unwrap();
    // Damage in the third batch (sequences 21..=30), followed by two valid batches: row 6.
    flip_bit(&segment, record_in(&segment, 25).payload_byte(8), 2);
    assert!(matches!(open(directory.path()).unwrap_err(), JournalError::Corrupt { .. }));
    assert_eq!(verdict(directory.path()), "corruption");
    // Record 25 cannot be kept: its batch's checksum fails.
    let refused = Repair::plan(directory.path(), 25).unwrap_err();
    let message = refused.to_string();
    assert!(message.contains("the intact records end at sequence 20"), "{message}");
    // Keeping up to 20 drops the damage and the two valid batches after it, and says so.
    let repair = Repair::plan(directory.path(), 20).unwrap();
    let plan = repair.plan_ref();
    assert_eq!(plan.dropped_records, None, "the batch after 20 is the damaged one");
    assert!(plan.damage.as_deref().unwrap_or_default().contains("checksum"), "{plan}");
    repair.execute().unwrap();
    assert_ends_at(directory.path(), 20);
}

#[test]
fn a_repair_moves_later_segments_and_snapshots_out_of_the_journal() {
    let (directory, last) = journal(160, 157);
    let segments = segment_paths(directory.path());
    assert!(segments.len() >= 4, "{segments:?}");
    let store = SnapshotStore::open(directory.path()).unwrap();
    let meta = |sequence| SnapshotMeta {
        schema_version: 1,
        codec: 1,
        sequence,
        timestamp_ns: timestamp(sequence),
        state_hash: sequence,
    };
    store.write(&meta(1_000), b"state at 1000").unwrap();
    store.write(&meta(last), b"state at the end").unwrap();
    // A sequence inside the second segment.
    let second = keel_journal::segment::parse_segment_file_name(
        segments[1].file_name().unwrap().to_str().unwrap(),
    )
    .unwrap();
    let keep = second + 500;
    let repair = Repair::plan(directory.path(), keep).unwrap();
    let plan = repair.plan_ref().clone();
    assert_eq!(plan.segment, segments[1]);
    assert_eq!(plan.later_segments, segments[2..].to_vec());
    assert_eq!(plan.later_snapshots.len(), 1);
    assert_eq!(plan.dropped_records, Some(keep + 1..=last), "{plan}");
    let done = repair.execute().unwrap();
    assert_eq!(segment_paths(directory.path()), segments[..2].to_vec());
    for moved in done.later_segments.iter().chain(&done.later_snapshots) {
        assert!(!moved.exists());
        assert!(done.dropped_directory.join(moved.file_name().unwrap()).exists());
    }
    let left: Vec<u64> = store.list().unwrap().iter().map(|snapshot| snapshot.sequence).collect();
    assert_eq!(left, [1_000]);
    assert_ends_at(directory.path(), keep);
}

#[test]
fn a_repair_cut_short_is_finished_by_running_it_again() {
    let (original, _) = journal(5, 10);
    let segment_name = segment_paths(original.path()).pop().unwrap();
    let segment_name = segment_name.file_name().unwrap().to_owned();
    // The result of a repair that ran to its end.
    let finished = tempfile::tempdir().unwrap();
    copy_tree(original.path(), finished.path());
    let plan = Repair::plan(finished.path(), 23).unwrap().execute().unwrap();
    assert!(plan.reseal.is_some());
    let finished_segment = finished.path().join("journal").join(&segment_name);
    let finished_bytes = std::fs::read(&finished_segment).unwrap();
    // The repair saved the batch's header before it rewrote it.
    let batch = record_in(&finished_segment, 23).batch;
    let name = format!("{}.from-{batch}", segment_name.to_string_lossy());
    let original_bytes = std::fs::read(segment_paths(original.path()).pop().unwrap()).unwrap();
    let saved = std::fs::read(plan.dropped_directory.join(&name)).unwrap();
    assert_eq!(saved, original_bytes[batch as usize..batch as usize + 8]);
    // Cut short after writing all of the new header (length and checksum), or only its
    // length, or only its checksum, or a middle part of it; with none, some or more of the
    // zeroing done after it: a second run ends in the same bytes.
    let header = &finished_bytes[batch as usize..batch as usize + 8];
    let zeroed = *plan.zeroed.start();
    for ((from, to), zeroed_before_the_cut) in
        [((0, 8), 0), ((0, 8), 100), ((0, 4), 0), ((4, 8), 0), ((2, 6), 0)]
    {
        let cut_short = tempfile::tempdir().unwrap();
        copy_tree(original.path(), cut_short.path());
        let dropped = cut_short.path().join("dropped").join("after-23-1");
        std::fs::create_dir_all(&dropped).unwrap();
        std::fs::write(dropped.join(&name), &saved).unwrap();
        let segment = cut_short.path().join("journal").join(&segment_name);
        write_at(&segment, batch + from, &header[from as usize..to as usize]);
        write_at(&segment, zeroed, &vec![0u8; zeroed_before_the_cut]);
        Repair::plan(cut_short.path(), 23).unwrap().execute().unwrap();
        let what = format!("cut short at {from}..{to} with {zeroed_before_the_cut} bytes zeroed");
        assert!(std::fs::read(&segment).unwrap() == finished_bytes, "{what}");
        assert_ends_at(cut_short.path(), 23);
    }
    // Without the saved header, a torn one leaves records that nothing vouches for: refused.
    let torn = tempfile::tempdir().unwrap();
    copy_tree(original.path(), torn.path());
    let segment = torn.path().join("journal").join(&segment_name);
    write_at(&segment, batch, &header[..4]);
    let refused = Repair::plan(torn.path(), 23).unwrap_err();
    assert!(refused.to_string().contains("repair can only keep intact records"), "{refused}");
}

#[test]
fn a_repair_is_refused_while_a_writer_holds_the_journal() {
    let (directory, _) = journal(2, 10);
    let _writer = open(directory.path()).unwrap();
    assert!(matches!(Repair::plan(directory.path(), 5).unwrap_err(), JournalError::Locked { .. }));
}
