//! A journal whose one segment holds arbitrary bytes after a valid header, opened for writing
//! (recovery) and verified: neither panics, and they agree. `verify` says valid → `open`
//! truncates nothing; torn tail → `open` truncates it; corruption → `open` refuses with a
//! damage error. After a successful open, a reader reads exactly the records `open` reported,
//! and `verify` calls the journal valid.

#![no_main]

use std::path::Path;

use keel_journal::format::{SegmentHeader, SEGMENT_HEADER_SIZE};
use keel_journal::segment::segment_file_name;
use keel_journal::{verify_journal, JournalOptions, JournalReader, JournalWriter, Verdict};
use libfuzzer_sys::fuzz_target;

const SEGMENT_SIZE: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    // tmpfs where there is one: every open allocates and syncs a spare segment.
    let base = Path::new("/dev/shm");
    let directory = if base.is_dir() { tempfile::tempdir_in(base) } else { tempfile::tempdir() }
        .expect("a temporary directory");
    let journal = directory.path().join("journal");
    std::fs::create_dir_all(&journal).expect("journal directory");
    let header = SegmentHeader {
        first_sequence: 1,
        segment_size: SEGMENT_SIZE,
        journal_id: [7; 16],
        epoch: 0,
    };
    // The header and the input, then a hole to the segment's size: a segment's unwritten tail
    // reads as zeros either way, and a hole spares writing a mebibyte of zeros every run.
    let data = &data[..data.len().min(SEGMENT_SIZE as usize - SEGMENT_HEADER_SIZE)];
    let mut segment = header.encode().to_vec();
    segment.resize(SEGMENT_HEADER_SIZE, 0);
    segment.extend_from_slice(data);
    let path = journal.join(segment_file_name(1));
    std::fs::write(&path, &segment).expect("write the segment");
    let file = std::fs::OpenOptions::new().write(true).open(&path).expect("the segment");
    file.set_len(SEGMENT_SIZE).expect("the segment's size");
    drop(file);

    let verification = verify_journal(directory.path(), &mut |_, _| {}).expect("verify");
    let options = JournalOptions::new().segment_size(SEGMENT_SIZE);
    let opened = JournalWriter::open(directory.path(), options);
    let writer = match (&verification.verdict, opened) {
        (Verdict::Corrupt(_), Err(error)) => {
            assert!(error.is_damage(), "{error}");
            return;
        }
        (Verdict::Valid, Ok(writer)) => {
            assert_eq!(writer.open_report().truncated, None);
            writer
        }
        (Verdict::TornTail { .. }, Ok(writer)) => {
            assert!(writer.open_report().truncated.is_some());
            writer
        }
        (verdict, opened) => panic!("verify says {verdict:?}, open says {opened:?}"),
    };
    let last = writer.open_report().last_sequence;
    assert_eq!(verification.last_sequence().unwrap_or(0), last);
    drop(writer);
    let mut reader = JournalReader::open(directory.path()).expect("a reader");
    let mut read = 0;
    while let Some(record) = reader.next().expect("every record reads") {
        read += 1;
        assert_eq!(record.sequence, read);
    }
    assert_eq!(read, last);
    let verdict = verify_journal(directory.path(), &mut |_, _| {}).expect("verify").verdict;
    assert!(matches!(verdict, Verdict::Valid), "{verdict:?}");
});
