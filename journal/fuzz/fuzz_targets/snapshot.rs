//! A snapshot file of arbitrary bytes: reading it whole, checking it in chunks and loading the
//! newest snapshot never panic and agree with each other.

#![no_main]

use keel_journal::snapshot::{check_snapshot, read_snapshot, snapshot_file_name};
use keel_journal::SnapshotStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = std::path::Path::new("/dev/shm");
    let directory = if base.is_dir() { tempfile::tempdir_in(base) } else { tempfile::tempdir() }
        .expect("a temporary directory");
    let store = SnapshotStore::open(directory.path()).expect("a snapshot store");
    let path = store.directory().join(snapshot_file_name(5));
    std::fs::create_dir_all(store.directory()).expect("snapshot directory");
    std::fs::write(&path, data).expect("write the snapshot");

    let whole = read_snapshot(&path);
    let streamed = check_snapshot(&path);
    match (&whole, &streamed) {
        (Ok((header, payload)), Ok(checked)) => {
            assert_eq!(header, checked);
            assert_eq!(payload.len() as u64, header.payload_length);
        }
        (Err(_), Err(_)) => {}
        _ => panic!("read_snapshot says {whole:?}, check_snapshot says {streamed:?}"),
    }
    let loaded = store
        .load_newest(|_, payload| Ok::<usize, String>(payload.len()))
        .expect("listing the snapshots");
    let loadable = whole.as_ref().is_ok_and(|(header, _)| header.sequence == 5);
    assert_eq!(loaded.loaded.is_some(), loadable);
    assert_eq!(loaded.skipped.len(), usize::from(!loadable));
});
