//! Helpers shared by the journal's integration tests.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use keel_journal::storage::Storage;
use keel_journal::{Durability, JournalOptions, JournalReader, JournalWriter};

/// The smallest segment the format allows, so that tests roll often.
pub const SEGMENT: u64 = 1 << 20;

/// A deterministic payload for `sequence`: 1 to 300 bytes, content derived from the sequence,
/// so that a record read back can be checked byte for byte.
pub fn payload(sequence: u64) -> Vec<u8> {
    let length = (sequence.wrapping_mul(2_654_435_761) % 300 + 1) as usize;
    (0..length)
        .map(|index| (sequence as usize).wrapping_mul(31).wrapping_add(index) as u8)
        .collect()
}

/// The timestamp tests give `sequence`: increasing, derived from it.
pub fn timestamp(sequence: u64) -> u64 {
    1_700_000_000_000_000_000 + sequence * 1_000
}

pub fn options(durability: Durability) -> JournalOptions {
    JournalOptions::new().segment_size(SEGMENT).durability(durability)
}

pub fn options_with(durability: Durability, storage: Arc<dyn Storage>) -> JournalOptions {
    options(durability).storage(storage)
}

/// A journal of `batches` committed batches of `batch` records in the `PageCache` tier, closed;
/// returns its directory and its last sequence.
pub fn journal(batches: usize, batch: usize) -> (tempfile::TempDir, u64) {
    let directory = tempfile::tempdir().expect("temporary directory");
    let mut writer =
        JournalWriter::open(directory.path(), options(Durability::PageCache)).expect("open");
    let last = append_batches(&mut writer, batches, batch);
    drop(writer);
    (directory, last)
}

/// Appends the records `writer.next_sequence()..` in `batches` batches of `batch` records,
/// committing each; returns the last committed sequence.
pub fn append_batches(writer: &mut JournalWriter, batches: usize, batch: usize) -> u64 {
    let mut committed = writer.durable_sequence();
    for _ in 0..batches {
        for _ in 0..batch {
            let sequence = writer.next_sequence();
            let appended =
                writer.append(timestamp(sequence), 1, 1, &payload(sequence)).expect("append");
            assert_eq!(appended, sequence);
        }
        committed = writer.commit().expect("commit");
    }
    committed
}

/// Reads the whole journal and checks every record: sequences from `first`, gap-free, with
/// their exact payload and timestamp. Returns the last sequence.
pub fn check_journal(directory: &Path, first: u64) -> u64 {
    check_records(JournalReader::open(directory).expect("open reader"), first)
}

/// Reads the journal from sequence `from` (which may be the next to be written) to its end and
/// checks every record as [`check_journal`] does. Returns the last sequence (`from - 1` if
/// there is none from `from`).
pub fn check_journal_from(directory: &Path, from: u64) -> u64 {
    check_records(JournalReader::open_at(directory, from).expect("open reader"), from)
}

fn check_records(mut reader: JournalReader, first: u64) -> u64 {
    let mut expected = first;
    while let Some(record) = reader.next().expect("read") {
        assert_eq!(record.sequence, expected);
        assert_eq!(record.timestamp_ns, timestamp(expected), "timestamp of {expected}");
        assert_eq!(record.payload, &payload(expected)[..], "payload of {expected}");
        assert_eq!((record.kind, record.version), (1, 1));
        expected += 1;
    }
    expected - 1
}

/// Copies a directory tree (a journal), so that one written journal can be damaged many ways.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// The segment files of a journal directory, in order.
pub fn segment_paths(directory: &Path) -> Vec<std::path::PathBuf> {
    keel_journal::segment::list_segments(&directory.join("journal"))
        .expect("list")
        .into_iter()
        .map(|segment| segment.path)
        .collect()
}

/// Flips one bit of a file.
pub fn flip_bit(path: &Path, offset: u64, bit: u8) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).expect("read byte");
    byte[0] ^= 1 << bit;
    file.write_all_at(&byte, offset).expect("write byte");
}

/// Writes `bytes` at `offset` of a file.
pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).expect("open");
    file.write_all_at(bytes, offset).expect("write");
}

/// A small deterministic generator (xorshift64*), so that "random" tests replay exactly.
#[derive(Debug, Clone)]
pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// A record found in a segment file.
#[derive(Clone, Copy, Debug)]
pub struct Located {
    /// Where its header starts in the file.
    pub offset: u64,
    /// Its header and payload, without padding.
    pub length: u64,
    pub sequence: u64,
    /// Where the header of its batch starts.
    pub batch: u64,
}

impl Located {
    /// The offset of byte `index` of its payload.
    pub fn payload_byte(&self, index: u64) -> u64 {
        self.offset + keel_journal::format::RECORD_HEADER_SIZE as u64 + index
    }
}

/// The records of a segment file's valid batches, in order.
pub fn records_in(path: &Path) -> Vec<Located> {
    use keel_journal::format::{check_batch, BatchCheck, BATCH_HEADER_SIZE, SEGMENT_HEADER_SIZE};
    let bytes = std::fs::read(path).unwrap();
    let mut position = SEGMENT_HEADER_SIZE;
    let mut records = Vec::new();
    while let BatchCheck::Batch(batch) = check_batch(&bytes[position..]) {
        let mut offset = position + BATCH_HEADER_SIZE;
        for record in batch.iter() {
            records.push(Located {
                offset: offset as u64,
                length: (keel_journal::format::RECORD_HEADER_SIZE + record.payload.len()) as u64,
                sequence: record.sequence,
                batch: position as u64,
            });
            offset += record.size_padded;
        }
        position += batch.size();
    }
    records
}

/// The record holding `sequence` in a segment file.
pub fn record_in(path: &Path, sequence: u64) -> Located {
    let records = records_in(path);
    let found = records.iter().find(|record| record.sequence == sequence);
    *found.unwrap_or_else(|| panic!("sequence {sequence} is not in {}", path.display()))
}
