//! Random bytes where records or snapshots should be: the scan, `open`, the readers and the
//! snapshot loader never panic, and never accept bytes they should not.

mod common;

use std::path::Path;

use keel_journal::format::{encode_record, RecordFields, SEGMENT_HEADER_SIZE};
use keel_journal::scan::scan_segment;
use keel_journal::snapshot::read_snapshot;
use keel_journal::{Durability, JournalError, JournalReader, JournalWriter};
use proptest::prelude::*;

/// A segment body: some valid records, then arbitrary bytes at an arbitrary offset.
fn segment_with_noise(records: usize, noise_at: usize, noise: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; 1 << 16];
    let mut position = SEGMENT_HEADER_SIZE;
    for sequence in 1..=records as u64 {
        let fields = RecordFields { sequence, timestamp_ns: sequence, kind: 1, version: 1 };
        position +=
            encode_record(&mut bytes[position..], &fields, &common::payload(sequence)).unwrap();
    }
    let start = (SEGMENT_HEADER_SIZE + noise_at).min(bytes.len() - noise.len());
    bytes[start..start + noise.len()].copy_from_slice(noise);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_scan_never_panics_and_keeps_the_valid_prefix(
        records in 0usize..40,
        noise_at in 0usize..20_000,
        noise in proptest::collection::vec(any::<u8>(), 1..2_000),
        is_last in any::<bool>(),
    ) {
        let bytes = segment_with_noise(records, noise_at, &noise);
        match scan_segment(Path::new("noise.segment"), &bytes, 1, is_last, &mut |_| {}) {
            // Whatever it accepts is a gap-free run from sequence 1.
            Ok(scan) => prop_assert_eq!(scan.last_sequence, scan.records),
            Err(error) => prop_assert!(error.is_damage(), "{}", error),
        }
    }

    #[test]
    fn a_random_snapshot_file_is_refused_cleanly(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("00000000000000000001.snapshot");
        std::fs::write(&path, &bytes).unwrap();
        let error = read_snapshot(&path).unwrap_err();
        prop_assert!(error.is_damage(), "{}", error);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn open_on_a_noisy_tail_recovers_or_names_the_damage(
        batches in 1usize..6,
        noise_at in 0usize..6_000,
        noise in proptest::collection::vec(any::<u8>(), 1..600),
    ) {
        let directory = tempfile::tempdir().unwrap();
        let options = || common::options(Durability::PageCache);
        let mut writer = JournalWriter::open(directory.path(), options()).unwrap();
        let acked = common::append_batches(&mut writer, batches, 5);
        drop(writer);
        let segment = common::segment_paths(directory.path()).pop().unwrap();
        let clean = std::fs::read(&segment).unwrap();
        let data_end = scan_segment(&segment, &clean, 1, true, &mut |_| {}).unwrap().end_offset;
        common::write_at(&segment, (SEGMENT_HEADER_SIZE + noise_at) as u64, &noise);
        match JournalWriter::open(directory.path(), options()) {
            Ok(writer) => {
                let last = writer.open_report().last_sequence;
                drop(writer);
                // Recovery is idempotent, and what it kept reads back whole.
                let again = JournalWriter::open(directory.path(), options()).unwrap();
                prop_assert_eq!(again.open_report().last_sequence, last);
                prop_assert!(again.open_report().truncated.is_none());
                drop(again);
                let mut reader = JournalReader::open(directory.path()).unwrap();
                let mut count = 0;
                while let Some(record) = reader.next().unwrap() {
                    count += 1;
                    prop_assert_eq!(record.sequence, count);
                }
                prop_assert_eq!(count, last);
                // Noise that reached no acknowledged record loses none.
                if (SEGMENT_HEADER_SIZE + noise_at) as u64 >= data_end {
                    prop_assert_eq!(last, acked);
                }
            }
            Err(error) => prop_assert!(
                matches!(error, JournalError::Corrupt { .. }),
                "{}", error
            ),
        }
    }
}
