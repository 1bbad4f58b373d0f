//! The `keel` tool, run as a user runs it: its output, its JSON and its exit codes.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use keel_journal::{Durability, JournalWriter, SnapshotMeta, SnapshotStore};
use serde_json::Value;

/// Runs `keel` with `arguments`, standard input closed (not a terminal).
fn keel(arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .expect("run keel")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("an exit code")
}

/// A journal of `batches` batches of 10 records.
fn journal(batches: usize) -> (tempfile::TempDir, String, u64) {
    let directory = tempfile::tempdir().unwrap();
    let mut writer = JournalWriter::open(directory.path(), options(Durability::PageCache)).unwrap();
    let last = append_batches(&mut writer, batches, 10);
    drop(writer);
    let path = directory.path().to_str().unwrap().to_owned();
    (directory, path, last)
}

/// The record holding `sequence` in the journal's last segment, and its path.
fn locate(directory: &Path, sequence: u64) -> (std::path::PathBuf, Located) {
    let segment = segment_paths(directory).pop().unwrap();
    let record = record_in(&segment, sequence);
    (segment, record)
}

#[test]
fn verify_exits_0_3_or_4_for_valid_torn_and_corrupt_journals() {
    let (directory, path, last) = journal(5);
    let valid = keel(&["journal", "verify", &path]);
    assert_eq!(code(&valid), 0, "{valid:?}");
    assert!(stdout(&valid).starts_with(&format!("valid: {path} holds sequences 1..={last}")));

    // The last batch's checksum fails: a torn tail.
    let (segment, record) = locate(directory.path(), last);
    flip_bit(&segment, record.payload_byte(4), 0);
    let torn = keel(&["journal", "verify", &path]);
    assert_eq!(code(&torn), 3, "{torn:?}");
    let text = stdout(&torn);
    assert!(text.starts_with("torn tail: ") && text.contains(&format!("{}", last - 9)), "{text}");

    // Damage with a valid batch after it: corruption, named by file and offset.
    flip_bit(&segment, record.payload_byte(4), 0);
    let (_, damaged) = locate(directory.path(), 15);
    flip_bit(&segment, damaged.payload_byte(8), 5);
    let corrupt = keel(&["journal", "verify", &path]);
    assert_eq!(code(&corrupt), 4, "{corrupt:?}");
    let text = stdout(&corrupt);
    assert!(text.starts_with("corruption: ") && text.contains(segment.to_str().unwrap()), "{text}");
    assert!(text.contains("--truncate-after 10"), "the repair that keeps the intact part: {text}");

    let json: Value = serde_json::from_str(&stdout(&keel(&["journal", "verify", &path, "--json"])))
        .expect("one JSON object");
    assert_eq!(json["verdict"], "corruption");
    assert_eq!(json["last_sequence"], 10);
    assert_eq!(json["damage"]["segment"], segment.to_str().unwrap());
    assert_eq!(json["damage"]["expected_sequence"], 11);
}

#[test]
fn inspect_shows_each_segment_and_its_ranges() {
    let directory = tempfile::tempdir().unwrap();
    let mut writer = JournalWriter::open(directory.path(), options(Durability::PageCache)).unwrap();
    let last = append_batches(&mut writer, 50, 157);
    drop(writer);
    let path = directory.path().to_str().unwrap();
    let segments = segment_paths(directory.path());
    assert!(segments.len() >= 2);
    let output = keel(&["journal", "inspect", path]);
    assert_eq!(code(&output), 0, "{output:?}");
    let text = stdout(&output);
    for segment in &segments {
        assert!(text.contains(segment.file_name().unwrap().to_str().unwrap()), "{text}");
    }
    assert!(text.contains("2023-11-14T22:13:20.000001000Z"), "the first record's time: {text}");

    let json: Value =
        serde_json::from_str(&stdout(&keel(&["journal", "inspect", path, "--json"]))).unwrap();
    let listed = json["segments"].as_array().unwrap();
    assert_eq!(listed.len(), segments.len());
    assert_eq!(listed[0]["first_sequence"], 1);
    assert_eq!(listed[0]["first_timestamp_ns"], timestamp(1));
    let next_first = listed[1]["first_sequence"].as_u64().unwrap();
    assert_eq!(listed[0]["last_sequence"].as_u64().unwrap() + 1, next_first);
    assert_eq!(json["last_sequence"], last);
    assert_eq!(json["records"], last);
    assert_eq!(json["verdict"], "valid");
}

#[test]
fn dump_prints_the_records_asked_for() {
    let (_directory, path, _) = journal(3);
    let output = keel(&["journal", "dump", &path, "--from", "5", "--count", "3"]);
    assert_eq!(code(&output), 0, "{output:?}");
    let text = stdout(&output);
    let sequences: Vec<&str> =
        text.lines().map(|line| line.split_whitespace().next().unwrap()).collect();
    assert_eq!(sequences, ["5", "6", "7"]);

    let output = keel(&["journal", "dump", &path, "--from", "12", "--count", "1", "--json"]);
    let record: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    let expected = payload(12);
    let hex: String = expected.iter().take(32).map(|byte| format!("{byte:02x}")).collect();
    assert_eq!(record["sequence"], 12);
    assert_eq!(record["payload_length"], expected.len());
    assert_eq!(record["payload_hex"], hex);
    assert_eq!(record["payload_elided"], expected.len().saturating_sub(32));
    assert_eq!(record["timestamp_ns"], timestamp(12));

    let missing = keel(&["journal", "dump", &path, "--from", "40"]);
    assert_eq!(code(&missing), 1);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not in the journal"));
}

#[test]
fn repair_shows_its_plan_and_asks_before_changing_anything() {
    let (directory, path, last) = journal(5);
    let (segment, damaged) = locate(directory.path(), 25);
    flip_bit(&segment, damaged.payload_byte(8), 1);
    assert_eq!(code(&keel(&["journal", "verify", &path])), 4);

    let dry = keel(&["journal", "repair", &path, "--truncate-after", "20", "--dry-run"]);
    assert_eq!(code(&dry), 0, "{dry:?}");
    assert!(stdout(&dry).contains("keep sequences 1..=20"), "{}", stdout(&dry));
    assert_eq!(code(&keel(&["journal", "verify", &path])), 4, "a dry run changes nothing");

    let unasked = keel(&["journal", "repair", &path, "--truncate-after", "20"]);
    assert_eq!(code(&unasked), 1);
    assert!(String::from_utf8_lossy(&unasked.stderr).contains("without --yes"));
    assert_eq!(code(&keel(&["journal", "verify", &path])), 4);

    let refused = keel(&["journal", "repair", &path, "--truncate-after", "25", "--yes"]);
    assert_eq!(code(&refused), 1, "record 25 is in the damaged batch");

    let done = keel(&["journal", "repair", &path, "--truncate-after", "20", "--yes"]);
    assert_eq!(code(&done), 0, "{done:?}");
    assert!(stdout(&done).contains("repaired: the journal ends at sequence 20"));
    assert_eq!(code(&keel(&["journal", "verify", &path])), 0);
    assert!(last > 20);
}

#[test]
fn snapshot_inspect_checks_every_snapshot() {
    let (directory, path, _) = journal(1);
    let store = SnapshotStore::open(directory.path()).unwrap();
    for sequence in [5, 10] {
        let meta = SnapshotMeta {
            schema_version: 3,
            codec: 1,
            sequence,
            timestamp_ns: timestamp(sequence),
            state_hash: 0xABCD,
        };
        store.write(&meta, &vec![sequence as u8; 1000]).unwrap();
    }
    let output = keel(&["snapshot", "inspect", &path]);
    assert_eq!(code(&output), 0, "{output:?}");
    let text = stdout(&output);
    assert!(
        text.find("00000000000000000010").unwrap() < text.find("00000000000000000005").unwrap()
    );
    assert!(text.contains("schema version  3") && text.contains("0x000000000000abcd"), "{text}");

    let newest = store.list().unwrap()[0].path.clone();
    flip_bit(&newest, 500, 3);
    let output = keel(&["snapshot", "inspect", newest.to_str().unwrap(), "--json"]);
    assert_eq!(code(&output), 4);
    let json: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(json["valid"], false);
    assert!(json["error"].as_str().unwrap().contains("checksum"), "{json}");
}

#[test]
fn every_command_explains_itself_with_an_example() {
    for command in [
        &["journal", "inspect"][..],
        &["journal", "verify"],
        &["journal", "dump"],
        &["journal", "repair"],
        &["snapshot", "inspect"],
    ] {
        let mut arguments = command.to_vec();
        arguments.push("--help");
        let output = keel(&arguments);
        assert_eq!(code(&output), 0, "{command:?}");
        assert!(stdout(&output).contains("Example"), "{command:?}: {}", stdout(&output));
    }
    assert_eq!(code(&keel(&["journal", "verify"])), 2, "a usage error");
}

#[test]
fn status_shows_the_id_the_epoch_the_last_sequence_and_the_last_checkpoint() {
    use keel_journal::format::{
        Checkpoint, EpochChange, EPOCH_VERSION, KIND_CHECKPOINT, KIND_EPOCH,
    };

    let directory = tempfile::tempdir().unwrap();
    let mut writer = JournalWriter::open(directory.path(), options(Durability::PageCache)).unwrap();
    let id: String = writer.journal_id().iter().map(|byte| format!("{byte:02x}")).collect();
    writer.append(5, 1, 1, b"a").unwrap();
    let checkpoint = Checkpoint { sequence: 1, state_hash: 0xfeed };
    writer.append(5, KIND_CHECKPOINT, 1, &checkpoint.encode()).unwrap();
    writer.append(6, KIND_EPOCH, EPOCH_VERSION, &EpochChange { epoch: 2 }.encode()).unwrap();
    writer.append(7, 1, 1, b"b").unwrap();
    writer.commit().unwrap();
    // A writer holds the journal: status reads beside it.
    let path = directory.path().to_str().unwrap();
    let output = keel(&["journal", "status", path, "--json"]);
    assert_eq!(code(&output), 0, "{output:?}");
    let status: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(status["journal_id"], id.as_str());
    assert_eq!(status["epoch"], 2);
    assert_eq!(
        (status["first_sequence"].as_u64(), status["last_sequence"].as_u64()),
        (Some(1), Some(4))
    );
    assert_eq!(status["last_checkpoint"]["sequence"], 2);
    assert_eq!(status["last_checkpoint"]["state_hash"], "0x000000000000feed");
    let text = stdout(&keel(&["journal", "status", path]));
    assert!(text.contains("epoch      2") && text.contains("1 ..= 4"), "{text}");
    drop(writer);
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(code(&keel(&["journal", "status", empty.path().to_str().unwrap()])), 1);
}
