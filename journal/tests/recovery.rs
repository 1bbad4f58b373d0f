//! Opening damaged journals: the recovery decision table of `docs/journal-format.md`
//! (section 6), row by row; the last write torn at every byte offset; simulated power losses;
//! a full disk and failing syncs through the storage fault layer.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use keel_journal::format::{
    encode_record, BatchView, RecordFields, SegmentHeader, BATCH_HEADER_SIZE,
    GROUP_COMMIT_BYTES_MAX, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE,
};
use keel_journal::scan::{scan_segment, SegmentEnd};
use keel_journal::storage::{Fault, FaultyStorage, Operation, PageFate, PowerLoss};
use keel_journal::{
    verify_journal, BatchRun, Durability, JournalError, JournalReader, JournalWriter,
};

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

fn open(directory: &Path) -> Result<JournalWriter, JournalError> {
    JournalWriter::open(directory, options(Durability::PageCache))
}

/// Reads the whole journal and returns the error that stops the reader; fails the test if
/// the reader reaches the end without one.
fn first_read_error(directory: &Path) -> JournalError {
    let mut reader = JournalReader::open(directory).unwrap();
    loop {
        match reader.next() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the reader reached the end without finding the damage"),
            Err(error) => return error,
        }
    }
}

/// Checks that `keel journal verify`'s reading of the journal (`verify_journal`) gives the
/// verdict the decision table names, before `open` changes anything.
fn assert_verdict(directory: &Path, expected: &str) {
    let verification = verify_journal(directory, &mut |_, _| {}).unwrap();
    assert_eq!(verification.verdict.label(), expected, "{:?}", verification.verdict);
}

fn last_segment(directory: &Path) -> PathBuf {
    segment_paths(directory).pop().unwrap()
}

#[test]
fn row_2_a_clean_end_opens_without_a_report() {
    let (directory, last) = journal(5, 10);
    assert_verdict(directory.path(), "valid");
    let writer = open(directory.path()).unwrap();
    let report = writer.open_report();
    assert_eq!((report.last_sequence, report.truncated.clone()), (last, None));
    assert!(report.removed.iter().all(|(path, _)| path.ends_with("spare")), "{report}");
}

#[test]
fn row_3_zeros_then_garbage_is_a_torn_tail_truncated() {
    let (directory, last) = journal(5, 10);
    let segment = last_segment(directory.path());
    let end = records_in(&segment).last().map(|record| record.offset + record.length).unwrap();
    let end = end.next_multiple_of(8);
    write_at(&segment, end + 100, b"torn bytes of a write cut short");
    assert_verdict(directory.path(), "torn tail");
    let writer = open(directory.path()).unwrap();
    let truncation = writer.open_report().truncated.clone().expect("a truncation");
    assert_eq!(truncation.segment, segment);
    assert_eq!(truncation.offset, end);
    assert_eq!(truncation.bytes, 100 + 31);
    assert_eq!(truncation.dropped, None);
    assert_eq!(writer.open_report().last_sequence, last);
    drop(writer);
    // The truncation is durable: the next open finds a clean end.
    assert_verdict(directory.path(), "valid");
    let writer = open(directory.path()).unwrap();
    assert_eq!(writer.open_report().truncated, None);
}

#[test]
fn row_4_a_damaged_last_batch_is_a_torn_tail_truncated_whole() {
    let (directory, last) = journal(5, 10);
    let segment = last_segment(directory.path());
    let records = records_in(&segment);
    let batch_start = records[records.len() - 10];
    // One bit of the last record's payload: the batch's checksum fails, so none of its ten
    // records is trusted.
    flip_bit(&segment, records.last().unwrap().payload_byte(8), 3);
    assert_verdict(directory.path(), "torn tail");
    let writer = open(directory.path()).unwrap();
    let truncation = writer.open_report().truncated.clone().expect("a truncation");
    assert_eq!(truncation.offset, batch_start.batch);
    assert!(truncation.damage.contains("checksum"), "{}", truncation.damage);
    assert_eq!(truncation.dropped, Some(last - 9..=last), "the headers name what is dropped");
    assert_eq!(writer.open_report().last_sequence, last - 10);
    assert_eq!(writer.next_sequence(), last - 9);
}

#[test]
fn row_5_an_unfinished_last_batch_is_dropped_and_named() {
    let (directory, last) = journal(5, 10);
    let segment = last_segment(directory.path());
    let records = records_in(&segment);
    // The batch's length and checksum and its last three records never reached the disk: a
    // crash in the middle of writing the batch, before it was sealed.
    let lost = records[records.len() - 3];
    let end = records.last().map(|record| record.offset + record.length).unwrap();
    write_at(&segment, lost.offset, &vec![0u8; (end - lost.offset) as usize]);
    write_at(&segment, lost.batch, &[0u8; 8]);
    assert_verdict(directory.path(), "torn tail");
    let writer = open(directory.path()).unwrap();
    let truncation = writer.open_report().truncated.clone().expect("a truncation");
    assert_eq!(truncation.offset, records[records.len() - 10].batch);
    let unfinished = format!("unfinished batch (its header names sequence {}", last - 9);
    assert!(truncation.damage.contains(&unfinished), "{}", truncation.damage);
    assert_eq!(truncation.dropped, Some(last - 9..=last - 3));
    assert_eq!(writer.open_report().last_sequence, last - 10);
}

#[test]
fn row_6_damage_followed_by_a_later_batch_is_corruption() {
    let (directory, _) = journal(5, 10);
    let segment = last_segment(directory.path());
    let records = records_in(&segment);
    // A record of the third batch; the fourth and fifth batches follow it.
    let batch_start = records[20];
    flip_bit(&segment, records[24].payload_byte(1), 7);
    assert_verdict(directory.path(), "corruption");
    let error = open(directory.path()).unwrap_err();
    match &error {
        JournalError::Corrupt { path, offset, expected, found: None, .. } => {
            let named = (path, *offset, *expected);
            assert_eq!(named, (&segment, batch_start.batch, batch_start.sequence));
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    let message = error.to_string();
    assert!(message.contains(&segment.display().to_string()), "{message}");
    // Nothing was truncated: the damage is still there for an operator to look at.
    assert_eq!(records_in(&segment).len(), 20);
    assert!(error.is_damage());
}

#[test]
fn row_6_a_valid_batch_after_the_damage_or_bytes_beyond_one_group_commit_are_corruption() {
    // In memory: a segment with a damaged first batch and a valid one 65 MiB later.
    let size = SEGMENT_HEADER_SIZE + GROUP_COMMIT_BYTES_MAX + (2 << 20);
    let mut bytes = vec![0u8; size];
    let fields = RecordFields { sequence: 1, timestamp_ns: 1, kind: 1, version: 1 };
    encode_record(&mut bytes[SEGMENT_HEADER_SIZE..], &fields, b"first").unwrap();
    bytes[SEGMENT_HEADER_SIZE + 8] ^= 1;
    let far = SEGMENT_HEADER_SIZE + GROUP_COMMIT_BYTES_MAX + (1 << 20);
    let fields = RecordFields { sequence: 9_000, ..fields };
    encode_record(&mut bytes[far..], &fields, b"far").unwrap();
    let scan = |bytes: &[u8]| scan_segment(Path::new("test.segment"), bytes, 1, true, &mut |_| {});
    let error = scan(&bytes).unwrap_err();
    assert!(error.to_string().contains("more than one group commit"), "{error}");
    // Within one group commit, a valid batch after the damage is corruption too.
    let near = SEGMENT_HEADER_SIZE + 4096;
    bytes[far..far + 64].fill(0);
    encode_record(&mut bytes[near..], &fields, b"near").unwrap();
    let error = scan(&bytes).unwrap_err();
    assert!(error.to_string().contains("a valid batch (sequences 9000 to 9000)"), "{error}");
    // Bytes within reach that are no batch are what a torn write leaves: truncated.
    bytes[near + 20] ^= 1;
    match scan(&bytes).unwrap().end {
        SegmentEnd::Torn(torn) => {
            assert_eq!((torn.offset, torn.dirty_end), (4096, near as u64 + 40));
            assert_eq!(torn.dropped, None, "the damaged header names another sequence");
        }
        other => panic!("expected a torn tail, got {other:?}"),
    }
}

#[test]
fn row_7_a_valid_record_out_of_sequence_is_corruption() {
    let (directory, last) = journal(5, 10);
    let segment = last_segment(directory.path());
    let end = records_in(&segment).last().map(|record| record.offset + record.length).unwrap();
    let end = end.next_multiple_of(8);
    let mut record = vec![0u8; 64];
    let fields =
        RecordFields { sequence: last + 2, timestamp_ns: timestamp(last + 2), kind: 1, version: 1 };
    let size = encode_record(&mut record, &fields, b"skips one").unwrap();
    write_at(&segment, end, &record[..size]);
    assert_verdict(directory.path(), "corruption");
    match open(directory.path()).unwrap_err() {
        JournalError::Corrupt { offset, expected, found, .. } => {
            assert_eq!((offset, expected, found), (end, last + 1, Some(last + 2)));
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

/// A journal of several segments (1 MiB each).
fn multi_segment_journal() -> (tempfile::TempDir, u64, Vec<PathBuf>) {
    let (directory, last) = journal(160, 157);
    let segments = segment_paths(directory.path());
    assert!(segments.len() >= 4);
    (directory, last, segments)
}

#[test]
fn row_8_damage_in_a_segment_that_is_not_the_last_is_corruption_to_a_reader() {
    let (directory, _, segments) = multi_segment_journal();
    // Batches hold 157 records: record 100 of the segment lies in its first whole batch.
    let records = records_in(&segments[1]);
    let batch_start = *records.iter().find(|record| (record.sequence - 1) % 157 == 0).unwrap();
    let victim = records.iter().position(|record| record.sequence == batch_start.sequence + 100);
    flip_bit(&segments[1], records[victim.unwrap()].payload_byte(18), 1);
    assert_verdict(directory.path(), "corruption");
    let error = first_read_error(directory.path());
    match error {
        JournalError::Corrupt { path, offset, expected, .. } => {
            assert_eq!(
                (path, offset, expected),
                (segments[1].clone(), batch_start.batch, batch_start.sequence)
            );
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

/// The sequences and payloads of the records in `batches`.
fn contents<'a>(batches: impl Iterator<Item = BatchView<'a>>) -> Vec<(u64, Vec<u8>)> {
    batches
        .flat_map(|batch| {
            batch
                .iter()
                .map(|record| (record.sequence, record.payload.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn runs_hold_what_batches_hold_across_segments_and_stop_on_damage_after_the_batches_before_it() {
    fn sendable<T: Send + 'static>(_: &T) {}
    let (directory, last, segments) = multi_segment_journal();
    let mut reader = JournalReader::open(directory.path()).unwrap();
    let mut batches = Vec::new();
    while let Some(batch) = reader.next_batch().unwrap() {
        batches.extend(contents(std::iter::once(batch)));
    }
    assert_eq!(batches.len() as u64, last);
    // Runs of at most 3 batches (or 400 records) read the same records, in the same order, and
    // some run carries batches of two segments.
    let starts: Vec<u64> = segment_paths(directory.path())
        .iter()
        .map(|path| path.file_stem().unwrap().to_str().unwrap().parse().unwrap())
        .collect();
    let mut reader = JournalReader::open_at(directory.path(), 1).unwrap();
    let (mut runs, mut crossing) = (Vec::new(), 0);
    let mut run = BatchRun::new();
    loop {
        reader.next_run(&mut run, 400, 3).unwrap();
        if run.is_empty() {
            break;
        }
        sendable(&run);
        let held = contents(run.batches());
        assert_eq!(held.len() as u64, run.records());
        assert!(run.batches().count() <= 3 && run.records() < 400 + 157, "{}", run.records());
        let (first, last) = (held[0].0, held.last().unwrap().0);
        crossing += starts.iter().filter(|&&start| first < start && start <= last).count();
        runs.extend(held);
    }
    // (Compared as a whole, not printed: the records are many.)
    assert!(runs == batches, "runs read other records than batches");
    assert!(crossing > 0, "no run crossed into a later segment");
    // Each record with the rest of its batch: its payload, then every byte to the batch's end.
    let mut reader = JournalReader::open(directory.path()).unwrap();
    let batch = reader.next_batch().unwrap().unwrap();
    let (mut records, mut remaining) = (batch.iter(), batch.size() - BATCH_HEADER_SIZE);
    while let Some((record, rest)) = records.next_with_rest() {
        assert_eq!(&rest[..record.payload.len()], record.payload);
        assert_eq!(rest.len(), remaining - RECORD_HEADER_SIZE, "record {}", record.sequence);
        remaining -= record.size_padded;
    }
    assert_eq!(remaining, 0);
    // A reader started inside a batch gives the rest of it first, as `next_batch` does.
    let mut reader = JournalReader::open_at(directory.path(), 100).unwrap();
    reader.next_run(&mut run, 1, 1).unwrap();
    assert_eq!(contents(run.batches()), batches[99..157]);

    // Damage in the second segment: the run that meets it holds every batch before it, then
    // the error is the one a record-by-record reading meets.
    let records = records_in(&segments[1]);
    let damaged = *records.iter().find(|record| (record.sequence - 1) % 157 == 0).unwrap();
    flip_bit(&segments[1], damaged.payload_byte(8), 3);
    let expected = first_read_error(directory.path()).to_string();
    let mut reader = JournalReader::open(directory.path()).unwrap();
    let mut read = Vec::new();
    let error = loop {
        match reader.next_run(&mut run, 1_000, 8) {
            Ok(()) => {
                assert!(!run.is_empty(), "the reader reached the end without the damage");
                read.extend(contents(run.batches()));
            }
            Err(error) => {
                read.extend(contents(run.batches()));
                break error;
            }
        }
    };
    assert_eq!(error.to_string(), expected);
    assert_eq!(read.len() as u64, damaged.sequence - 1);
    assert!(read == batches[..read.len()], "the records before the damage differ");
}

#[test]
fn row_8_the_segment_before_an_empty_last_one_is_checked_by_open() {
    let (directory, last, segments) = multi_segment_journal();
    let last_path = segments.last().unwrap();
    // A crash right after a roll: the last segment holds a header and no record (row 11).
    let mut header = [0u8; 64];
    std::fs::File::open(last_path)
        .map(|file| {
            use std::os::unix::fs::FileExt;
            file.read_exact_at(&mut header, 0).unwrap()
        })
        .unwrap();
    let header = SegmentHeader::decode(&header).unwrap();
    let empty = directory.path().join("journal").join(format!("{:020}.segment", last + 1));
    let mut bytes = vec![0u8; header.segment_size as usize];
    bytes[..64].copy_from_slice(&SegmentHeader { first_sequence: last + 1, ..header }.encode());
    std::fs::write(&empty, &bytes).unwrap();
    assert_verdict(directory.path(), "valid");
    let writer = open(directory.path()).unwrap();
    assert_eq!(writer.open_report().last_sequence, last, "row 11: a clean end");
    assert_eq!(writer.next_sequence(), last + 1);
    drop(writer);
    // Damage at the end of the segment before it is corruption: a later segment exists.
    let records = records_in(last_path);
    let batch_start =
        *records.iter().rev().find(|record| (record.sequence - 1) % 157 == 0).unwrap();
    flip_bit(last_path, records.last().unwrap().payload_byte(8), 2);
    assert_verdict(directory.path(), "corruption");
    match open(directory.path()).unwrap_err() {
        JournalError::Corrupt { path, offset, .. } => {
            assert_eq!((&path, offset), (last_path, batch_start.batch));
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[test]
fn row_9_a_damaged_segment_header_is_named() {
    let (directory, _, segments) = multi_segment_journal();
    flip_bit(&segments[1], 20, 4);
    assert_verdict(directory.path(), "corruption");
    match open(directory.path()).unwrap_err() {
        JournalError::Format { path, offset: 0, source } => {
            assert_eq!(path, segments[1]);
            assert!(source.to_string().contains("checksum"), "{source}");
        }
        other => panic!("expected Format, got {other}"),
    }
    // The last segment's header damaged while records follow it: corruption, not a torn roll.
    let (directory, _, segments) = multi_segment_journal();
    flip_bit(segments.last().unwrap(), 20, 4);
    assert_verdict(directory.path(), "corruption");
    assert!(matches!(open(directory.path()).unwrap_err(), JournalError::Corrupt { .. }));
}

#[test]
fn row_10_a_missing_segment_is_corruption_to_a_reader() {
    let (directory, _, segments) = multi_segment_journal();
    std::fs::remove_file(&segments[2]).unwrap();
    assert_verdict(directory.path(), "corruption");
    let error = first_read_error(directory.path());
    match error {
        JournalError::Corrupt { path, found, .. } => {
            assert_eq!(path, segments[3]);
            assert!(found.is_some());
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[test]
fn a_torn_roll_and_an_unrenamed_segment_are_recovered() {
    let (directory, last, segments) = multi_segment_journal();
    let journal_directory = directory.path().join("journal");
    let last_path = segments.last().unwrap().clone();
    // The last segment's rename had not reached the disk: it is still called `spare`.
    std::fs::rename(&last_path, journal_directory.join("spare")).unwrap();
    assert_verdict(directory.path(), "valid");
    let writer = open(directory.path()).unwrap();
    let report = writer.open_report().clone();
    assert_eq!(report.renamed, Some((journal_directory.join("spare"), last_path.clone())));
    assert_eq!(report.last_sequence, last);
    drop(writer);

    // A roll torn before its first commit: a segment whose header is garbage, no record.
    let torn = journal_directory.join(format!("{:020}.segment", last + 1));
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..40].copy_from_slice(&[0xA5; 40]);
    std::fs::write(&torn, &bytes).unwrap();
    assert_verdict(directory.path(), "torn tail");
    let writer = open(directory.path()).unwrap();
    let report = writer.open_report().clone();
    assert!(report.removed.iter().any(|(path, _)| path == &torn), "{report}");
    assert_eq!(report.last_sequence, last);
    assert!(!torn.exists());
}

/// Writes `acked` committed batches through a fault-injecting storage in the `Fsync` tier and
/// returns the writer, the storage and the last acknowledged sequence.
fn faulty_writer(directory: &Path) -> (JournalWriter, FaultyStorage, u64) {
    let storage = FaultyStorage::new();
    let mut writer =
        JournalWriter::open(directory, options_with(Durability::Fsync, Arc::new(storage.clone())))
            .unwrap();
    let acked = append_batches(&mut writer, 5, 3);
    (writer, storage, acked)
}

#[test]
fn the_last_write_torn_at_every_byte_offset_loses_no_acknowledged_record() {
    // The batch that will be torn: a header and four records.
    let batch: Vec<u64> = (16..=19).collect();
    let sizes: Vec<u64> = batch
        .iter()
        .map(|&sequence| (RECORD_HEADER_SIZE + payload(sequence).len()) as u64)
        .collect();
    let records: u64 = sizes.iter().map(|size| size.next_multiple_of(8)).sum();
    let total = BATCH_HEADER_SIZE as u64 + records;
    for kept in 0..=total as usize {
        let directory = tempfile::tempdir().unwrap();
        let (mut writer, storage, acked) = faulty_writer(directory.path());
        assert_eq!(acked, 15);
        for &sequence in &batch {
            writer.append(timestamp(sequence), 1, 1, &payload(sequence)).unwrap();
        }
        storage.inject_on(Operation::Write, ".segment", 0, Fault::Tear { bytes: kept });
        let error = writer.commit().unwrap_err();
        assert!(matches!(error, JournalError::Io { .. }), "{error}");
        // Fail-stop: nothing more is accepted.
        let refused = writer.append(timestamp(20), 1, 1, b"after").unwrap_err();
        assert!(matches!(refused, JournalError::Failed { .. }), "{refused}");
        drop(writer);

        let verdict = verify_journal(directory.path(), &mut |_, _| {}).unwrap().verdict;
        assert_ne!(verdict.label(), "corruption", "kept {kept}: {verdict:?}");
        let writer = open(directory.path()).unwrap();
        // The batch is kept whole when every byte of it was written (the last record's
        // padding is zeros either way), else dropped whole.
        let last_padding = sizes.last().unwrap().next_multiple_of(8) - sizes.last().unwrap();
        let written = total - last_padding;
        let whole = if kept as u64 >= written { batch.len() as u64 } else { 0 };
        let report = writer.open_report().clone();
        assert_eq!(report.last_sequence, acked + whole, "kept {kept}: {report}");
        let torn_bytes = kept > 0 && (kept as u64) < written;
        assert_eq!(report.truncated.is_some(), torn_bytes, "kept {kept}: {report}");
        drop(writer);
        assert_eq!(check_journal(directory.path(), 1), acked + whole);
    }
}

/// The power goes out after a sync failed (the writer is dropped): each page no sync covered is
/// kept, reverted or cut short, as the seed decides. What is left must never read as
/// corruption. Returns what the power loss did.
fn lose_power(storage: &FaultyStorage, directory: &Path, seed: u64) -> PowerLoss {
    let mut random = Random::new(seed);
    let loss = storage
        .power_loss(|_, _| match random.below(3) {
            0 => PageFate::Keep,
            1 => PageFate::Revert,
            _ => PageFate::Cut { keep: random.below(4096) as usize },
        })
        .unwrap();
    let verdict = verify_journal(directory, &mut |_, _| {}).unwrap().verdict;
    assert_ne!(verdict.label(), "corruption", "seed {seed}: {verdict:?}");
    loss
}

#[test]
fn a_power_loss_during_a_batch_loses_no_acknowledged_record() {
    let mut survivors_dropped = 0;
    for seed in 0..60 {
        let directory = tempfile::tempdir().unwrap();
        let (mut writer, storage, acked) = faulty_writer(directory.path());
        // A batch of about 15 pages whose sync fails: the power went out during it.
        let first = writer.next_sequence();
        for sequence in first..first + 400 {
            writer.append(timestamp(sequence), 1, 1, &payload(sequence)).unwrap();
        }
        storage.inject_on(Operation::SyncData, ".segment", 0, Fault::Fail { errno: EIO });
        assert!(writer.commit().is_err());
        drop(writer);
        let loss = lose_power(&storage, directory.path(), seed);
        assert!(loss.pages_kept + loss.pages_reverted + loss.pages_cut > 0);
        let writer = open(directory.path()).unwrap_or_else(|error| panic!("seed {seed}: {error}"));
        let last = writer.open_report().last_sequence;
        // The unacknowledged batch is all there or not at all: never a part of it.
        assert!(last == acked || last == acked + 400, "seed {seed}: {}", writer.open_report());
        let truncated = writer.open_report().truncated.as_ref();
        survivors_dropped += usize::from(truncated.is_some_and(|torn| torn.dropped.is_some()));
        drop(writer);
        assert_eq!(check_journal(directory.path(), 1), last, "seed {seed}");
    }
    // Rows 4 and 5 were exercised: the first page of the batch survived, others did not, and
    // the records its headers name were reported dropped.
    assert!(survivors_dropped > 10, "{survivors_dropped} of 60");
}

/// A replica journals the batches its primary sealed, many of them between two of its own
/// commits when it catches up, and may mix in records appended one by one. In the `Fsync` tier
/// a commit is one batch whatever was appended (each copied batch is synced before the next
/// one is written): if one commit held several, a power loss during its sync could keep a later
/// batch and tear an earlier one, which reads as corruption (format document, section 6, row
/// 6), and the journal would be refused though it lost nothing acknowledged. Here the power
/// goes out at one of the first ten syncs of such a copy, as the seed says.
#[test]
fn a_power_loss_while_batches_are_copied_loses_no_acknowledged_record() {
    // The primary's journal: the same first 15 records as the faulty writer's, then batches of
    // a few records each.
    let source = tempfile::tempdir().unwrap();
    let mut primary = open(source.path()).unwrap();
    let acked = append_batches(&mut primary, 5, 3);
    append_batches(&mut primary, 60, 7);
    drop(primary);
    let mut torn = 0;
    for seed in 0..40 {
        let directory = tempfile::tempdir().unwrap();
        let (mut writer, storage, start) = faulty_writer(directory.path());
        assert_eq!(start, acked);
        storage.inject_on(Operation::SyncData, ".segment", seed % 10, Fault::Fail { errno: EIO });
        let mut reader = JournalReader::open_at(source.path(), acked + 1).unwrap();
        let mut index = 0;
        // What was durable before the operation that failed.
        let mut durable = writer.durable_sequence();
        loop {
            durable = writer.durable_sequence().max(durable);
            let Some(batch) = reader.next_batch().unwrap() else {
                assert!(writer.commit().is_err(), "seed {seed}: a sync failed");
                break;
            };
            // Every fourth batch record by record, the others copied whole.
            let appended = if index % 4 == 1 {
                batch.iter().try_for_each(|record| {
                    let (time, kind, version) = (record.timestamp_ns, record.kind, record.version);
                    writer.append(time, kind, version, record.payload).map(drop)
                })
            } else {
                writer.append_batch(&batch).map(drop)
            };
            if appended.is_err() {
                break;
            }
            index += 1;
        }
        // The commit that failed held the records after `durable`, up to the last appended.
        let pending = writer.next_sequence() - 1;
        drop(writer);
        lose_power(&storage, directory.path(), seed);
        let writer = open(directory.path()).unwrap_or_else(|error| panic!("seed {seed}: {error}"));
        let last = writer.open_report().last_sequence;
        // The commit that failed is all there or not at all.
        assert!(last == durable || last == pending, "seed {seed}: {}", writer.open_report());
        torn += usize::from(writer.open_report().truncated.is_some());
        drop(writer);
        assert_eq!(check_journal(directory.path(), 1), last, "seed {seed}");
    }
    assert!(torn >= 3, "{torn} of 40 tore the commit that failed");
}

/// A batch whose `fdatasync` failed is in the file, so the next open reads it back: that open
/// (in the `Fsync` tier) must make it durable before anyone replays it, or a power loss after
/// the reopen takes away records a replayed state (or its snapshot) already holds. Found by the
/// deterministic simulation.
#[test]
fn an_open_in_the_fsync_tier_makes_what_it_recovered_durable() {
    let directory = tempfile::tempdir().unwrap();
    let (mut writer, storage, acked) = faulty_writer(directory.path());
    let first = writer.next_sequence();
    for sequence in first..first + 40 {
        writer.append(timestamp(sequence), 1, 1, &payload(sequence)).unwrap();
    }
    storage.inject_on(Operation::SyncData, ".segment", 0, Fault::Fail { errno: EIO });
    assert!(writer.commit().is_err());
    drop(writer);
    // The process restarts; the page cache still holds the batch.
    let options = options_with(Durability::Fsync, Arc::new(storage.clone()));
    let writer = JournalWriter::open(directory.path(), options).unwrap();
    assert_eq!(writer.open_report().last_sequence, acked + 40);
    drop(writer);
    // The power goes: every page no sync covered is lost. The batch the open read stays.
    storage.power_loss(|_, _| PageFate::Revert).unwrap();
    assert_eq!(check_journal(directory.path(), 1), acked + 40);
}

/// "fsyncgate": after a failed writeback Linux marks the pages clean though the disk never got
/// them, so the batch whose `fdatasync` failed reads back whole, the next open replays it, and
/// no later sync writes it. The open in the `Fsync` tier writes the last batch again before it
/// syncs; without that, a power loss after more acknowledged batches leaves a hole in the
/// middle of the journal (corruption: everything acknowledged after it becomes unreadable).
#[test]
fn a_batch_whose_failed_sync_marked_it_clean_is_made_durable_by_the_next_open() {
    for in_new_segment in [false, true] {
        let directory = tempfile::tempdir().unwrap();
        let (mut writer, storage, _) = faulty_writer(directory.path());
        if in_new_segment {
            // Append without committing until the writer rolls (it commits what the full
            // segment holds first): the failing batch is then the first of the new segment,
            // whose header goes to the disk with it. Its name appears once the background
            // thread renamed it, which the failing sync must follow.
            while segment_paths(directory.path()).len() == 1 {
                let sequence = writer.next_sequence();
                writer.append(timestamp(sequence), 1, 1, &payload(sequence)).unwrap();
            }
        }
        let first = writer.next_sequence();
        for sequence in first..first + 40 {
            writer.append(timestamp(sequence), 1, 1, &payload(sequence)).unwrap();
        }
        storage.inject_on(Operation::SyncData, ".segment", 0, Fault::FailClean { errno: EIO });
        assert!(writer.commit().is_err());
        drop(writer);
        // The process restarts; the page cache still holds the batch, marked clean.
        let options = || options_with(Durability::Fsync, Arc::new(storage.clone()));
        let mut writer = JournalWriter::open(directory.path(), options()).unwrap();
        let recovered = writer.open_report().last_sequence;
        assert_eq!(recovered, first + 39, "the failed batch reads back whole");
        let acknowledged = append_batches(&mut writer, 3, 5);
        assert_eq!(acknowledged, recovered + 15);
        drop(writer);
        // Every page no sync wrote is lost, the clean ones included.
        storage.power_loss(|_, _| PageFate::Revert).unwrap();
        let verdict = verify_journal(directory.path(), &mut |_, _| {}).unwrap().verdict;
        assert_eq!(verdict.label(), "valid", "in a new segment: {in_new_segment}: {verdict:?}");
        assert_eq!(check_journal(directory.path(), 1), acknowledged);
    }
}

#[test]
fn a_full_disk_on_append_stops_the_writer_and_keeps_every_acknowledged_record() {
    let directory = tempfile::tempdir().unwrap();
    let (mut writer, storage, acked) = faulty_writer(directory.path());
    writer.append(timestamp(16), 1, 1, &payload(16)).unwrap();
    storage.inject_on(Operation::Write, ".segment", 0, Fault::Fail { errno: ENOSPC });
    let error = writer.commit().unwrap_err();
    match &error {
        JournalError::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(ENOSPC)),
        other => panic!("expected Io, got {other}"),
    }
    assert!(error.to_string().contains(".segment"), "the error names the file: {error}");
    let refused = writer.commit().unwrap_err();
    assert!(refused.to_string().contains("must be reopened"), "{refused}");
    drop(writer);
    let writer = open(directory.path()).unwrap();
    assert_eq!(writer.open_report().last_sequence, acked);
    assert_eq!(writer.open_report().truncated, None);
}

#[test]
fn a_failed_sync_stops_the_writer() {
    let directory = tempfile::tempdir().unwrap();
    let (mut writer, storage, acked) = faulty_writer(directory.path());
    writer.append(timestamp(16), 1, 1, &payload(16)).unwrap();
    storage.inject_on(Operation::SyncData, ".segment", 0, Fault::Fail { errno: EIO });
    assert!(writer.commit().is_err());
    assert!(matches!(writer.append(timestamp(17), 1, 1, b"x"), Err(JournalError::Failed { .. })));
    drop(writer);
    // The record was written, not synced: after a process crash it is there; it was never
    // acknowledged, so either way is correct.
    assert!(check_journal(directory.path(), 1) >= acked);
}

/// Appends and commits one record at a time until the writer returns an error; returns the
/// last acknowledged sequence and the error. Fails the test if no error comes within 30 s.
fn commit_until_error(writer: &mut JournalWriter) -> (u64, JournalError) {
    let mut acknowledged = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "the fault was never reported");
        let sequence = writer.next_sequence();
        let appended = writer.append(timestamp(sequence), 1, 1, &payload(sequence));
        match appended.and_then(|_| writer.commit()) {
            Ok(durable) => acknowledged = durable,
            Err(error) => return (acknowledged, error),
        }
    }
}

#[test]
fn a_full_disk_when_allocating_the_next_segment_fails_the_roll_cleanly() {
    let directory = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new();
    // The first segment is allocated by `open` (one write of 1 MiB of zeros); the next
    // allocation, the background thread's, fails for space, and so does the writer's retry at
    // the roll.
    storage.inject_on(Operation::Write, "spare.tmp", 1, Fault::Fail { errno: ENOSPC });
    storage.inject_on(Operation::Write, "spare.tmp", 0, Fault::Fail { errno: ENOSPC });
    let mut writer = JournalWriter::open(
        directory.path(),
        options_with(Durability::Fsync, Arc::new(storage.clone())),
    )
    .unwrap();
    let (acknowledged, error) = commit_until_error(&mut writer);
    assert!(acknowledged > 1000, "the first segment filled up first");
    match &error {
        JournalError::Io { path, source } => {
            assert_eq!(source.raw_os_error(), Some(ENOSPC));
            assert!(path.ends_with("spare.tmp"), "{}", path.display());
        }
        other => panic!("expected Io, got {other}"),
    }
    drop(writer);
    assert!(!directory.path().join("journal/spare.tmp").exists(), "no half-allocated file");
    let writer = open(directory.path()).unwrap();
    assert!(writer.open_report().last_sequence >= acknowledged);
    drop(writer);
    assert!(check_journal(directory.path(), 1) >= acknowledged);
}

#[test]
fn a_failed_rename_at_a_roll_stops_the_writer_and_open_finishes_it() {
    let directory = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new();
    let mut writer = JournalWriter::open(
        directory.path(),
        options_with(Durability::PageCache, Arc::new(storage.clone())),
    )
    .unwrap();
    // Once the journal is open, only a roll renames a file to a segment's name.
    storage.inject_on(Operation::Rename, ".segment", 0, Fault::Fail { errno: EIO });
    // The rename fails on the background thread; the next commit, or at the latest the next
    // roll, reports it.
    let (acknowledged, error) = commit_until_error(&mut writer);
    match &error {
        JournalError::Io { path, source } => {
            assert_eq!(source.raw_os_error(), Some(EIO));
            assert!(path.ends_with("spare"), "{}", path.display());
        }
        other => panic!("expected Io, got {other}"),
    }
    assert!(matches!(writer.commit(), Err(JournalError::Failed { .. })));
    drop(writer);
    // The acknowledged records of the new segment are in the file still called `spare`.
    let writer = open(directory.path()).unwrap();
    let report = writer.open_report().clone();
    assert!(report.renamed.is_some(), "{report}");
    assert!(report.last_sequence >= acknowledged, "{report}");
    drop(writer);
    assert!(check_journal(directory.path(), 1) >= acknowledged);
}

#[test]
fn an_epoch_record_outlives_the_writer_and_new_segments_carry_it() {
    use keel_journal::format::{EpochChange, EPOCH_VERSION, KIND_EPOCH};
    use keel_journal::JournalOptions;

    let directory = tempfile::tempdir().unwrap();
    let options = || JournalOptions::new().segment_size(1 << 20);
    let mut writer = JournalWriter::open(directory.path(), options()).unwrap();
    assert_eq!(writer.epoch(), 0);
    writer.append(1, 1, 1, b"before").unwrap();
    writer.append(1, KIND_EPOCH, EPOCH_VERSION, &EpochChange { epoch: 3 }.encode()).unwrap();
    writer.commit().unwrap();
    assert_eq!(writer.epoch(), 3);
    // Read beside the writer, before any segment header carries it, the journal's epoch is
    // the record's.
    assert_eq!(keel_journal::journal_epoch(directory.path()).unwrap(), 3);
    // A malformed epoch record is refused and changes nothing.
    assert!(writer.append(1, KIND_EPOCH, EPOCH_VERSION, &[1, 2, 3]).is_err());
    drop(writer);

    // Reopened, even asked for an older epoch, the writer keeps the record's: no segment header
    // carries it yet, the record does.
    let mut writer = JournalWriter::open(directory.path(), options().epoch(1)).unwrap();
    assert_eq!(writer.epoch(), 3);
    // Rolled over, the next segment's header carries it.
    let payload = vec![7u8; 200 << 10];
    for _ in 0..8 {
        writer.append(2, 1, 1, &payload).unwrap();
        writer.commit().unwrap();
    }
    drop(writer);
    let segments = keel_journal::segment::list_segments(&directory.path().join("journal")).unwrap();
    assert!(segments.len() >= 2);
    let last = std::fs::read(&segments.last().unwrap().path).unwrap();
    assert_eq!(SegmentHeader::decode(&last).unwrap().epoch, 3);
}

/// `journal_epoch` reads beside a writer that keeps appending: what it sees of a batch still
/// being written is the end of the data, never damage (recovery's scan, which it used before,
/// took a batch whose first length was still zero, with bytes being written after it, for
/// corruption).
#[test]
fn the_epoch_is_read_beside_a_writer_appending_without_seeing_damage() {
    use keel_journal::format::{EpochChange, EPOCH_VERSION, KIND_EPOCH};
    use keel_journal::JournalOptions;
    use std::sync::atomic::{AtomicBool, Ordering};

    let directory = tempfile::tempdir().unwrap();
    let mut writer =
        JournalWriter::open(directory.path(), JournalOptions::new().segment_size(1 << 20)).unwrap();
    writer.append(1, KIND_EPOCH, EPOCH_VERSION, &EpochChange { epoch: 2 }.encode()).unwrap();
    writer.commit().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let appending = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut batches = 0u64;
            while !done.load(Ordering::Acquire) || batches < 500 {
                for size in 0..=(batches % 40) as usize {
                    writer.append(batches + 1, 1, 1, &vec![size as u8 | 1; 24 + size]).unwrap();
                }
                writer.commit().unwrap();
                batches += 1;
                // A service's pace rather than a loop's: a tailer opened near the live end of a
                // writer rolling a segment every millisecond can still trip over the roll (see
                // `journal_epoch`); that is a separate, open finding.
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
            batches
        })
    };
    let mut reads = 0;
    while reads < 3_000 || !appending.is_finished() {
        assert_eq!(keel_journal::journal_epoch(directory.path()).unwrap(), 2);
        reads += 1;
        if reads == 3_000 {
            done.store(true, Ordering::Release);
        }
    }
    assert!(appending.join().unwrap() >= 500);
}
