//! Snapshot files: durable writes, loading the newest valid one, falling back past damaged or
//! refused ones with the reasons reported, and failed writes that leave nothing behind.

mod common;

use std::sync::Arc;

use keel_journal::format::CODEC_BINCODE2_SERDE;
use keel_journal::snapshot::{read_snapshot, read_snapshot_header};
use keel_journal::storage::{Fault, FaultyStorage, Operation};
use keel_journal::{JournalError, SnapshotMeta, SnapshotStore};

fn meta(sequence: u64) -> SnapshotMeta {
    SnapshotMeta {
        schema_version: 3,
        codec: CODEC_BINCODE2_SERDE,
        sequence,
        timestamp_ns: 1_700_000_000_000_000_000 + sequence,
        state_hash: sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    }
}

fn state(sequence: u64) -> Vec<u8> {
    (0..10_000 + sequence as usize).map(|index| (index ^ sequence as usize) as u8).collect()
}

/// The caller's decode: schema 3 only, and the "state" must hash as the header says.
fn decode(
    header: &keel_journal::format::SnapshotHeader,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    if header.schema_version != 3 {
        return Err(format!("unknown schema version {}", header.schema_version));
    }
    if payload != state(header.sequence).as_slice() {
        return Err("state hash mismatch".into());
    }
    Ok(payload.to_vec())
}

#[test]
fn the_newest_valid_snapshot_loads_and_damaged_ones_are_skipped_with_reasons() {
    let directory = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(directory.path()).unwrap();
    let mut files = Vec::new();
    for sequence in [100, 200, 300, 400] {
        files.push(store.write(&meta(sequence), &state(sequence)).unwrap());
    }
    let listed: Vec<u64> = store.list().unwrap().iter().map(|file| file.sequence).collect();
    assert_eq!(listed, vec![400, 300, 200, 100]);
    let loaded = store.load_newest(decode).unwrap();
    let (file, header, payload) = loaded.loaded.unwrap();
    assert_eq!(
        (file.sequence, header.state_hash, payload),
        (400, meta(400).state_hash, state(400))
    );
    assert!(loaded.skipped.is_empty());

    // 400: a flipped payload bit. 300: cut short. 200: a schema the application refuses.
    common::flip_bit(&files[3].path, 5_000, 2);
    let length = std::fs::metadata(&files[2].path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&files[2].path)
        .unwrap()
        .set_len(length - 10)
        .unwrap();
    store.write(&SnapshotMeta { schema_version: 4, ..meta(200) }, &state(200)).unwrap();
    let loaded = store.load_newest(decode).unwrap();
    assert_eq!(loaded.loaded.as_ref().map(|(file, _, _)| file.sequence), Some(100));
    let reasons: Vec<&str> = loaded.skipped.iter().map(|(_, reason)| reason.as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("checksum"), "{}", reasons[0]);
    assert!(reasons[1].contains("payload_length"), "{}", reasons[1]);
    assert!(reasons[2].contains("unknown schema version 4"), "{}", reasons[2]);
    assert_eq!(loaded.skipped[0].0, files[3].path);

    // A damaged header is named as such; with every snapshot bad, nothing loads.
    common::flip_bit(&files[0].path, 30, 0);
    let error = read_snapshot_header(&files[0].path).unwrap_err();
    assert!(error.to_string().contains("checksum"), "{error}");
    let loaded = store.load_newest(decode).unwrap();
    assert!(loaded.loaded.is_none());
    assert_eq!(loaded.skipped.len(), 4);
}

#[test]
fn a_failed_snapshot_write_leaves_no_file_under_either_name() {
    let directory = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new();
    let store = SnapshotStore::with_storage(directory.path(), Arc::new(storage.clone())).unwrap();
    store.write(&meta(1), &state(1)).unwrap();
    for operation in [Operation::Write, Operation::SyncData, Operation::Rename] {
        storage.inject(operation, 0, Fault::Fail { errno: 28 });
        let error = store.write(&meta(2), &state(2)).unwrap_err();
        assert!(matches!(error, JournalError::Io { .. }), "{operation:?}: {error}");
        let names: Vec<String> = std::fs::read_dir(store.directory())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![format!("{:020}.snapshot", 1)], "{operation:?}");
    }
    let (header, payload) = read_snapshot(&store.list().unwrap()[0].path).unwrap();
    assert_eq!((header.sequence, payload.to_vec()), (1, state(1)));
}

#[test]
fn a_streamed_snapshot_equals_one_written_whole_and_old_ones_can_be_pruned() {
    let directory = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(directory.path()).unwrap();
    let whole = store.write(&meta(10), &state(10)).unwrap();
    let whole_bytes = std::fs::read(&whole.path).unwrap();
    let streamed = store
        .write_streaming(&meta(10), |writer| {
            for chunk in state(10).chunks(777) {
                writer.write_all(chunk)?;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(std::fs::read(&streamed.path).unwrap(), whole_bytes);
    for sequence in [20, 30, 40] {
        store.write(&meta(sequence), &state(sequence)).unwrap();
    }
    let removed = store.remove_all_but_newest(2).unwrap();
    assert_eq!(removed.len(), 2);
    let left: Vec<u64> = store.list().unwrap().iter().map(|file| file.sequence).collect();
    assert_eq!(left, vec![40, 30]);
}

#[test]
fn the_oldest_valid_snapshot_loads_past_damaged_older_ones() {
    let directory = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(directory.path()).unwrap();
    for sequence in [100, 200, 300] {
        store.write(&meta(sequence), &state(sequence)).unwrap();
    }
    let oldest = store.list().unwrap().pop().unwrap();
    assert_eq!(oldest.sequence, 100);
    common::flip_bit(&oldest.path, 5_000, 2);
    let loaded = store.load_oldest(decode).unwrap();
    let (file, header, payload) = loaded.loaded.expect("the snapshot of 200");
    assert_eq!((file.sequence, header.sequence), (200, 200));
    assert_eq!(payload, state(200));
    assert_eq!(loaded.skipped.len(), 1);
    assert_eq!(loaded.skipped[0].0, oldest.path);
    assert!(loaded.skipped[0].1.contains("checksum"), "{:?}", loaded.skipped);
}

/// Two writers of one sequence's snapshot into one store at once (an engine, and a replica on
/// its host writing into the engine's store) both succeed, and the file is whole: they once
/// shared one temporary name, and the second to begin removed the file the first was writing.
/// Each writer here waits for the other to have begun before it writes its payload.
/// A payload is read through a mapping of the file: retention removing the file, and a new
/// snapshot of the same sequence written under its name, leave a payload already read as it
/// was checked.
#[test]
fn a_payload_read_stays_whole_when_its_file_is_removed_or_replaced() {
    let directory = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(directory.path()).unwrap();
    let first = store.write(&meta(7), &state(7)).unwrap();
    let (header, payload) = read_snapshot(&first.path).unwrap();
    store.write(&meta(8), &state(8)).unwrap();
    assert_eq!(store.remove_all_but_newest(1).unwrap(), vec![first.path.clone()]);
    assert!(!first.path.exists());
    assert_eq!((header.sequence, &payload[..]), (7, state(7).as_slice()));

    let (_, replaced) = read_snapshot(&store.list().unwrap()[0].path).unwrap();
    let mut other = meta(8);
    other.state_hash ^= 1;
    let rewritten = store.write(&other, &vec![0xA5; 3 * 4096]).unwrap();
    let (header, now) = read_snapshot(&rewritten.path).unwrap();
    assert_eq!((header.state_hash, &now[..]), (other.state_hash, vec![0xA5; 3 * 4096].as_slice()));
    assert_eq!(&replaced[..], state(8).as_slice(), "the payload read before the rewrite");
}

#[test]
fn two_writers_of_one_snapshot_at_once_both_write_it_whole() {
    let directory = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(directory.path()).unwrap();
    let both_begun = Arc::new(std::sync::Barrier::new(2));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (store, both_begun) = (store.clone(), Arc::clone(&both_begun));
            std::thread::spawn(move || {
                store.write_streaming(&meta(5), |writer| {
                    both_begun.wait();
                    writer.write_all(&state(5))
                })
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap().unwrap();
    }
    let (header, payload) = read_snapshot(&store.list().unwrap()[0].path).unwrap();
    assert_eq!((header.sequence, payload.to_vec()), (5, state(5)));
    let names: Vec<String> = std::fs::read_dir(store.directory())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![format!("{:020}.snapshot", 5)], "temporary files left behind");
}

/// A temporary file whose writer died (a crash while writing a snapshot) is removed; one of a
/// live process is not, nor anything else in the folder.
#[test]
fn leftovers_of_dead_writers_are_removed_and_nothing_else() {
    let directory = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(directory.path()).unwrap();
    store.write(&meta(7), &state(7)).unwrap();
    let name = format!("{:020}.snapshot", 7);
    // Linux's process ids stop below 2^22: this one never runs.
    let dead = store.directory().join(format!("{name}.4294967295-3.tmp"));
    let live = store.directory().join(format!("{name}.{}-9.tmp", std::process::id()));
    let other = store.directory().join("notes.tmp");
    for path in [&dead, &live, &other] {
        std::fs::write(path, b"partial").unwrap();
    }
    assert_eq!(store.remove_leftovers().unwrap(), vec![dead.clone()]);
    assert!(!dead.exists() && live.exists() && other.exists());
    assert_eq!(store.list().unwrap().len(), 1);
}
