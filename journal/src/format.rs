//! The on-disk format of `docs/journal-format.md`, as code: segment headers, batches of
//! records and snapshot headers, all little-endian, each protected by a CRC32C that is verified
//! before any other field is trusted.
//!
//! Batch layout (section 3 of the format document):
//!
//! ```text
//!  batch header                                      record                          next record
//!  0        4        8                16         24  0        4        8      10      12
//!  +--------+--------+----------------+----------+   +--------+--------+------+-------+---------+-----+
//!  | length |checksum| first_sequence | timestamp| + | length | delta  | kind |version| payload | pad | + ...
//!  +--------+--------+----------------+----------+   +--------+--------+------+-------+---------+-----+
//!  a batch (one group commit) is its 24-byte header and one or more records, each record
//!  padded with zeros to 8 bytes; the header's length covers the header and the records (the
//!  last record's padding excluded) and is stored last, publishing the batch; its checksum is
//!  CRC32C(bytes 0..4 ++ bytes 8..length); a record's sequence is the batch's first sequence
//!  plus its place, and its timestamp the batch's timestamp plus its delta
//! ```

use std::fmt;

use thiserror::Error;

/// Bytes 0..8 of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"KEELSEG\0";
/// Bytes 0..8 of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"KEELSNAP";
/// The version of the segment format: any change to a segment's layout or its batches' bumps
/// it. Version 1 gave every record a 32-byte header; version 2 moved the sequence, the
/// timestamp and the checksum into a header per batch (`docs/journal-format.md`, section 3).
pub const SEGMENT_FORMAT_VERSION: u32 = 2;
/// The version of the snapshot file format.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// Bytes reserved for a segment's header: the first record starts on a page boundary.
pub const SEGMENT_HEADER_SIZE: usize = 4096;
/// Bytes of the segment header that carry fields (the rest of the page is zero).
pub const SEGMENT_HEADER_USED: usize = 64;
/// The smallest segment accepted.
pub const SEGMENT_SIZE_MIN: u64 = 1 << 20;
/// The largest segment accepted.
pub const SEGMENT_SIZE_MAX: u64 = 4 << 30;
/// Segment sizes are whole pages.
pub const SEGMENT_SIZE_GRANULARITY: u64 = 4096;

/// Bytes of a batch header.
pub const BATCH_HEADER_SIZE: usize = 24;
/// Bytes of a record header.
pub const RECORD_HEADER_SIZE: usize = 12;
/// Batches and records start on multiples of this.
pub const RECORD_ALIGNMENT: usize = 8;
/// The largest record (header and payload); larger payloads are refused by the writer. A
/// record never spans segments, so it must fit the smallest segment after its header.
pub const RECORD_SIZE_MAX: usize = 512 << 10;
/// The largest group commit the writer makes durable in one sync, and so the largest batch
/// (header included). Recovery relies on it to tell a torn tail from corruption (format
/// document, section 6, rows 5 and 6).
pub const GROUP_COMMIT_BYTES_MAX: usize = 64 << 20;
/// The largest distance of a record's timestamp from its batch's, in nanoseconds (about 4.3
/// seconds): the writer starts a new batch for a record further from it.
pub const TIMESTAMP_DELTA_MAX: u64 = u32::MAX as u64;

/// The largest record kind that belongs to the application.
pub const KIND_APPLICATION_MAX: u16 = 0x7FFF;
/// keel's checkpoint record: a state hash at a sequence.
pub const KIND_CHECKPOINT: u16 = 0x8001;
/// keel's epoch-change record (promotion of a replica).
pub const KIND_EPOCH: u16 = 0x8002;

/// The version of the checkpoint record's encoding ([`Checkpoint`]).
pub const CHECKPOINT_VERSION: u16 = 1;
/// Bytes of a checkpoint record's payload.
pub const CHECKPOINT_SIZE: usize = 16;
/// The version of the epoch-change record's encoding ([`EpochChange`]).
pub const EPOCH_VERSION: u16 = 1;

/// Bytes of a snapshot header.
pub const SNAPSHOT_HEADER_SIZE: usize = 64;
/// Snapshot codec: bincode 2 through serde.
pub const CODEC_BINCODE2_SERDE: u32 = 1;

// The relations the layout depends on, checked when the crate compiles.
const _: () = assert!(SEGMENT_HEADER_USED <= SEGMENT_HEADER_SIZE);
const _: () = assert!(SEGMENT_HEADER_SIZE.is_multiple_of(RECORD_ALIGNMENT));
const _: () = assert!(BATCH_HEADER_SIZE.is_multiple_of(RECORD_ALIGNMENT));
const _: () = assert!(RECORD_SIZE_MAX <= u32::MAX as usize, "length is a u32");
const _: () = assert!((RECORD_SIZE_MAX as u64) < SEGMENT_SIZE_MIN - SEGMENT_HEADER_SIZE as u64);
const _: () = assert!(RECORD_SIZE_MAX <= GROUP_COMMIT_BYTES_MAX, "a record fits a group commit");
const _: () = assert!(SEGMENT_SIZE_MIN.is_multiple_of(SEGMENT_SIZE_GRANULARITY));

/// Why bytes are not a valid header or record, or why a record cannot be encoded.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than the structure needs.
    #[error("{structure} needs {needed} bytes, found {found}")]
    TooShort {
        /// What was being decoded.
        structure: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        found: usize,
    },
    /// The stored checksum does not match the bytes.
    #[error("{structure} checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// What was being decoded.
        structure: &'static str,
        /// The checksum in the file.
        stored: u32,
        /// The checksum of the bytes as they are.
        computed: u32,
    },
    /// The magic bytes are not keel's (a foreign file).
    #[error("{structure} has magic {found:02x?}, expected {expected:02x?}")]
    BadMagic {
        /// What was being decoded.
        structure: &'static str,
        /// The magic found.
        found: [u8; 8],
        /// The magic expected.
        expected: [u8; 8],
    },
    /// A format version this build does not read.
    #[error("{structure} has format version {found}, this build reads version {expected}")]
    UnsupportedVersion {
        /// What was being decoded.
        structure: &'static str,
        /// The version found.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// A field has a value the format forbids.
    #[error("{structure} field {field} is {value}, which the format forbids ({rule})")]
    InvalidField {
        /// What was being decoded.
        structure: &'static str,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What the format requires.
        rule: &'static str,
    },
    /// A payload too large for one record.
    #[error("a payload of {payload} bytes makes a record larger than {RECORD_SIZE_MAX} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        payload: usize,
    },
    /// The destination buffer cannot hold the encoded record.
    #[error("the record needs {needed} bytes, the buffer has {available}")]
    BufferTooSmall {
        /// Bytes needed, padding included.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
}

/// The little-endian `u32` at `offset`.
#[inline]
pub(crate) fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(field)
}

/// The little-endian `u64` at `offset`.
#[inline]
pub(crate) fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(field)
}

fn read_array<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut field = [0u8; N];
    field.copy_from_slice(&bytes[offset..offset + N]);
    field
}

fn require_length(structure: &'static str, bytes: &[u8], needed: usize) -> Result<(), FormatError> {
    if bytes.len() < needed {
        return Err(FormatError::TooShort { structure, needed, found: bytes.len() });
    }
    Ok(())
}

/// Verifies the checksum stored at `stored_at` against CRC32C of `covered`.
fn verify(structure: &'static str, stored: u32, computed: u32) -> Result<(), FormatError> {
    if stored != computed {
        return Err(FormatError::ChecksumMismatch { structure, stored, computed });
    }
    Ok(())
}

/// The payload of a checkpoint record ([`KIND_CHECKPOINT`], version [`CHECKPOINT_VERSION`]):
/// the state machine's hash after every record before the checkpoint was applied (format
/// document, section 3). Every replay and every replica compares its own hash there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Checkpoint {
    /// The last sequence the hash covers: the record before the checkpoint.
    pub sequence: u64,
    /// The state hash after applying it.
    pub state_hash: u64,
}

impl Checkpoint {
    /// The payload: `sequence` then `state_hash`, little-endian.
    pub fn encode(&self) -> [u8; CHECKPOINT_SIZE] {
        let mut bytes = [0u8; CHECKPOINT_SIZE];
        bytes[0..8].copy_from_slice(&self.sequence.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.state_hash.to_le_bytes());
        bytes
    }

    /// Decodes a checkpoint record's payload, which must be exactly [`CHECKPOINT_SIZE`] bytes.
    pub fn decode(payload: &[u8]) -> Result<Self, FormatError> {
        const STRUCTURE: &str = "checkpoint";
        require_length(STRUCTURE, payload, CHECKPOINT_SIZE)?;
        if payload.len() != CHECKPOINT_SIZE {
            return Err(FormatError::InvalidField {
                structure: STRUCTURE,
                field: "length",
                value: payload.len() as u64,
                rule: "a checkpoint is 16 bytes",
            });
        }
        Ok(Self { sequence: read_u64(payload, 0), state_hash: read_u64(payload, 8) })
    }
}

/// The payload of an epoch-change record ([`KIND_EPOCH`], version [`EPOCH_VERSION`]): from
/// this record on, the journal is written by a primary of `epoch` (a replica promoted). Format
/// document, section 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EpochChange {
    /// The new epoch, above every earlier one.
    pub epoch: u64,
}

impl EpochChange {
    /// The payload: `epoch`, little-endian.
    pub fn encode(&self) -> [u8; 8] {
        self.epoch.to_le_bytes()
    }

    /// Decodes an epoch-change record's payload, which must be exactly 8 bytes.
    pub fn decode(payload: &[u8]) -> Result<Self, FormatError> {
        require_length("epoch change", payload, 8)?;
        if payload.len() != 8 {
            return Err(FormatError::InvalidField {
                structure: "epoch change",
                field: "length",
                value: payload.len() as u64,
                rule: "an epoch change is 8 bytes",
            });
        }
        Ok(Self { epoch: read_u64(payload, 0) })
    }
}

/// The header of a segment file (format document, section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The sequence of the segment's first record (≥ 1).
    pub first_sequence: u64,
    /// The file's size in bytes, header included.
    pub segment_size: u64,
    /// Random at journal creation; the same in every segment of one journal.
    pub journal_id: [u8; 16],
    /// The writer's epoch when it created the segment.
    pub epoch: u64,
}

impl SegmentHeader {
    const STRUCTURE: &'static str = "segment header";

    /// The header's 64 bytes of fields, checksum included.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_USED] {
        let mut bytes = [0u8; SEGMENT_HEADER_USED];
        bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
        bytes[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        bytes[12..16].copy_from_slice(&(SEGMENT_HEADER_SIZE as u32).to_le_bytes());
        bytes[16..24].copy_from_slice(&self.first_sequence.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.segment_size.to_le_bytes());
        bytes[32..48].copy_from_slice(&self.journal_id);
        bytes[48..56].copy_from_slice(&self.epoch.to_le_bytes());
        // Bytes 56..60 are reserved and zero.
        let checksum = crc32c::crc32c(&bytes[0..60]);
        bytes[60..64].copy_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// Decodes and validates a header: the checksum first, then magic, version, header size,
    /// sequence and segment size. (That `segment_size` equals the file's size and
    /// `first_sequence` the file's name is the caller's check: it knows the file.)
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let structure = Self::STRUCTURE;
        require_length(structure, bytes, SEGMENT_HEADER_USED)?;
        verify(structure, read_u32(bytes, 60), crc32c::crc32c(&bytes[0..60]))?;
        let magic: [u8; 8] = read_array(bytes, 0);
        if magic != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic { structure, found: magic, expected: SEGMENT_MAGIC });
        }
        let version = read_u32(bytes, 8);
        if version != SEGMENT_FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                structure,
                found: version,
                expected: SEGMENT_FORMAT_VERSION,
            });
        }
        let header_size = read_u32(bytes, 12);
        if header_size as usize != SEGMENT_HEADER_SIZE {
            return Err(FormatError::InvalidField {
                structure,
                field: "header_size",
                value: header_size.into(),
                rule: "must be 4096",
            });
        }
        let reserved = read_u32(bytes, 56);
        if reserved != 0 {
            return Err(FormatError::InvalidField {
                structure,
                field: "reserved",
                value: reserved.into(),
                rule: "must be 0",
            });
        }
        let header = Self {
            first_sequence: read_u64(bytes, 16),
            segment_size: read_u64(bytes, 24),
            journal_id: read_array(bytes, 32),
            epoch: read_u64(bytes, 48),
        };
        if header.first_sequence == 0 {
            return Err(FormatError::InvalidField {
                structure,
                field: "first_sequence",
                value: 0,
                rule: "sequences start at 1",
            });
        }
        validate_segment_size(header.segment_size)?;
        Ok(header)
    }
}

/// Checks a segment size against the format's bounds and granularity.
pub fn validate_segment_size(segment_size: u64) -> Result<(), FormatError> {
    if !(SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX).contains(&segment_size)
        || !segment_size.is_multiple_of(SEGMENT_SIZE_GRANULARITY)
    {
        return Err(FormatError::InvalidField {
            structure: SegmentHeader::STRUCTURE,
            field: "segment_size",
            value: segment_size,
            rule: "a multiple of 4096 from 1 MiB to 4 GiB",
        });
    }
    Ok(())
}

/// The fields of a record to encode. Its sequence and timestamp are stored once per batch (the
/// first record's) and by the record's place and its timestamp's delta from the batch's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordFields {
    /// The record's sequence.
    pub sequence: u64,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// What the payload is: `1..=0x7FFF` for the application, `0x8000..` for keel.
    pub kind: u16,
    /// The version of that kind's encoding.
    pub version: u16,
}

/// The bytes a record with `payload_len` bytes of payload occupies, padding included.
pub const fn record_size_padded(payload_len: usize) -> usize {
    padded(RECORD_HEADER_SIZE + payload_len)
}

/// The bytes a batch of records with these payload lengths occupies: its header and each
/// record with its padding.
pub fn batch_size(payload_lengths: impl IntoIterator<Item = usize>) -> usize {
    BATCH_HEADER_SIZE + payload_lengths.into_iter().map(record_size_padded).sum::<usize>()
}

/// Writes a batch (one group commit) of records at the start of `buffer`, sealed with its
/// length and checksum; returns the bytes it occupies. The sequences must be consecutive and
/// the timestamps non-decreasing, within [`TIMESTAMP_DELTA_MAX`] of the first. Refuses an
/// empty batch, kind 0, sequence 0, oversized payloads or batches, and short buffers.
pub fn encode_batch(
    buffer: &mut [u8],
    records: &[(RecordFields, &[u8])],
) -> Result<usize, FormatError> {
    let structure = "batch";
    let Some((first, _)) = records.first() else {
        return Err(FormatError::InvalidField {
            structure,
            field: "records",
            value: 0,
            rule: "a batch holds at least one record",
        });
    };
    let mut size = BATCH_HEADER_SIZE;
    let mut previous_ns = first.timestamp_ns;
    for (index, (fields, payload)) in records.iter().enumerate() {
        validate_record(fields, payload.len())?;
        if fields.sequence != first.sequence + index as u64 {
            return Err(FormatError::InvalidField {
                structure,
                field: "sequence",
                value: fields.sequence,
                rule: "the sequences of a batch are consecutive",
            });
        }
        if fields.timestamp_ns < previous_ns
            || fields.timestamp_ns - first.timestamp_ns > TIMESTAMP_DELTA_MAX
        {
            return Err(FormatError::InvalidField {
                structure,
                field: "timestamp_ns",
                value: fields.timestamp_ns,
                rule: "the timestamps of a batch do not decrease and lie within \
                       TIMESTAMP_DELTA_MAX of the first",
            });
        }
        previous_ns = fields.timestamp_ns;
        size += record_size_padded(payload.len());
    }
    if size > GROUP_COMMIT_BYTES_MAX {
        return Err(FormatError::InvalidField {
            structure,
            field: "size",
            value: size as u64,
            rule: "a batch holds at most GROUP_COMMIT_BYTES_MAX bytes",
        });
    }
    if buffer.len() < size {
        return Err(FormatError::BufferTooSmall { needed: size, available: buffer.len() });
    }
    write_batch_header(buffer, first.sequence, first.timestamp_ns);
    let mut offset = BATCH_HEADER_SIZE;
    let mut end = offset;
    for (fields, payload) in records {
        let delta = (fields.timestamp_ns - first.timestamp_ns) as u32;
        end = offset + RECORD_HEADER_SIZE + payload.len();
        offset += write_record(&mut buffer[offset..], delta, fields.kind, fields.version, payload);
    }
    let length = end as u32;
    seal_batch_in_buffer(buffer, length);
    Ok(size)
}

/// Writes one record as a batch of its own.
pub fn encode_record(
    buffer: &mut [u8],
    fields: &RecordFields,
    payload: &[u8],
) -> Result<usize, FormatError> {
    encode_batch(buffer, &[(*fields, payload)])
}

/// Checks the fields and the payload size of a record about to be written.
pub(crate) fn validate_record(
    fields: &RecordFields,
    payload_len: usize,
) -> Result<(), FormatError> {
    let structure = "record";
    if RECORD_HEADER_SIZE + payload_len > RECORD_SIZE_MAX {
        return Err(FormatError::PayloadTooLarge { payload: payload_len });
    }
    if fields.kind == 0 {
        return Err(FormatError::InvalidField {
            structure,
            field: "kind",
            value: 0,
            rule: "kind 0 is never written",
        });
    }
    if fields.sequence == 0 {
        return Err(FormatError::InvalidField {
            structure,
            field: "sequence",
            value: 0,
            rule: "sequences start at 1",
        });
    }
    Ok(())
}

/// Writes the header of a batch being opened at the start of `batch`: its first sequence and
/// its timestamp. Its length and its checksum (bytes 0..8) are left as they are, zero in a
/// segment beyond the writer's position: [`seal_batch`] writes the checksum, and the length is
/// stored last, by whoever publishes the batch (a reader of a live journal loads it
/// atomically, so nothing else may store to it).
pub(crate) fn write_batch_header(batch: &mut [u8], first_sequence: u64, timestamp_ns: u64) {
    batch[8..16].copy_from_slice(&first_sequence.to_le_bytes());
    batch[16..24].copy_from_slice(&timestamp_ns.to_le_bytes());
}

/// Writes a record at the start of `record` (header, payload, zero padding), its timestamp
/// `delta` nanoseconds after its batch's, and returns the bytes it occupies.
#[inline]
pub(crate) fn write_record(
    record: &mut [u8],
    delta: u32,
    kind: u16,
    version: u16,
    payload: &[u8],
) -> usize {
    let length = RECORD_HEADER_SIZE + payload.len();
    let padded = padded(length);
    let record = &mut record[..padded];
    // The padding (under 8 bytes) lies in the last word: zeroing that word first, before the
    // header and the payload overwrite what of it is theirs, is one store where a fill of the
    // padding's variable length would be a call to the C library's `memset`.
    record[padded - 8..].fill(0);
    record[0..4].copy_from_slice(&(length as u32).to_le_bytes());
    record[4..8].copy_from_slice(&delta.to_le_bytes());
    record[8..10].copy_from_slice(&kind.to_le_bytes());
    record[10..12].copy_from_slice(&version.to_le_bytes());
    record[RECORD_HEADER_SIZE..length].copy_from_slice(payload);
    padded
}

/// Seals the batch at the start of `batch` that will be `length` bytes long: stores its
/// checksum. Its length field is not read (a writer publishing through a mapping stores it
/// afterwards, with release ordering).
pub(crate) fn seal_batch(batch: &mut [u8], length: u32) {
    let checksum = batch_checksum(batch, length);
    batch[4..8].copy_from_slice(&checksum.to_le_bytes());
}

/// Seals the batch at the start of `batch` as [`seal_batch`] does and stores its length with
/// a plain write: for a batch in a buffer that no reader sees before it is complete.
pub(crate) fn seal_batch_in_buffer(batch: &mut [u8], length: u32) {
    seal_batch(batch, length);
    batch[0..4].copy_from_slice(&length.to_le_bytes());
}

/// The checksum of the batch at the start of `batch` whose length is `length`: CRC32C of
/// `length` (its bytes 0..4) and then of its bytes `8..length`.
fn batch_checksum(batch: &[u8], length: u32) -> u32 {
    let with_length = crc32c::crc32c(&length.to_le_bytes());
    crc32c::crc32c_append(with_length, &batch[8..length as usize])
}

/// A checked record, borrowing its payload from the bytes it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The record's sequence.
    pub sequence: u64,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// What the payload is.
    pub kind: u16,
    /// The version of that kind's encoding.
    pub version: u16,
    /// The payload, without padding.
    pub payload: &'a [u8],
    /// The bytes the record occupies, padding included: the offset of the next record.
    pub size_padded: usize,
}

impl RecordView<'_> {
    /// Its fields, as a writer takes them: to encode the record again (into a batch of
    /// another shape).
    pub fn fields(&self) -> RecordFields {
        RecordFields {
            sequence: self.sequence,
            timestamp_ns: self.timestamp_ns,
            kind: self.kind,
            version: self.version,
        }
    }
}

/// The record at the start of `bytes`, read without any check: only for a record inside a
/// batch that [`check_batch`] accepted, whose place gives it `sequence` and whose batch's
/// timestamp is `batch_timestamp_ns`.
#[inline]
pub(crate) fn record_view_unchecked(
    bytes: &[u8],
    sequence: u64,
    batch_timestamp_ns: u64,
) -> RecordView<'_> {
    let (header, rest) =
        bytes.split_first_chunk::<RECORD_HEADER_SIZE>().expect("a checked record has a header");
    let length = header_u32(header, 0) as usize;
    RecordView {
        sequence,
        timestamp_ns: batch_timestamp_ns + u64::from(header_u32(header, 4)),
        kind: u16::from_le_bytes([header[8], header[9]]),
        version: u16::from_le_bytes([header[10], header[11]]),
        payload: &rest[..length - RECORD_HEADER_SIZE],
        size_padded: padded(length),
    }
}

/// The little-endian `u32` at `offset` of a record header. Callers pass constant offsets, so
/// once inlined the bounds check is decided at compile time. (`array::from_fn` read the bytes
/// one at a time through a call the compiler did not inline.)
#[inline(always)]
fn header_u32(header: &[u8; RECORD_HEADER_SIZE], offset: usize) -> u32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&header[offset..offset + 4]);
    u32::from_le_bytes(field)
}

/// A batch whose checksum matched and whose records follow the format's rules, or the part of
/// one from one of its records to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchView<'a> {
    bytes: &'a [u8],
    /// Where the first record starts in `bytes`: after the header in a whole batch, 0 in a
    /// part of one.
    records_at: usize,
    /// The sequence of its first record.
    pub first_sequence: u64,
    /// The sequence of its last record.
    pub last_sequence: u64,
    /// The batch's timestamp, from which its records' deltas count.
    pub timestamp_ns: u64,
    /// The timestamp of its last record.
    pub last_timestamp_ns: u64,
}

impl<'a> BatchView<'a> {
    /// A view of records that a check of their batch accepted: `bytes` runs from the batch's
    /// header (`whole`) or one of its records to the batch's end, and `timestamp_ns` is the
    /// batch's.
    pub(crate) fn checked(
        bytes: &'a [u8],
        whole: bool,
        first_sequence: u64,
        last_sequence: u64,
        timestamp_ns: u64,
        last_timestamp_ns: u64,
    ) -> Self {
        let records_at = if whole { BATCH_HEADER_SIZE } else { 0 };
        Self { bytes, records_at, first_sequence, last_sequence, timestamp_ns, last_timestamp_ns }
    }

    /// The bytes the view occupies, padding included: from a whole batch's start, the offset
    /// of the next batch.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// Its bytes, padding included. Those of a whole batch ([`is_whole`](Self::is_whole)) are
    /// a group commit exactly as its writer sealed it: another journal may take them as they
    /// are ([`JournalWriter::append_batch`](crate::JournalWriter::append_batch)).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Whether it is a whole group commit, header and every record. A reader that starts
    /// inside a batch returns the rest of it as a view, which holds checked records but is not
    /// a batch on its own.
    pub fn is_whole(&self) -> bool {
        self.records_at != 0
    }

    /// How many records it holds.
    pub fn records(&self) -> u64 {
        self.last_sequence - self.first_sequence + 1
    }

    /// Its records, in order.
    pub fn iter(&self) -> BatchRecords<'a> {
        BatchRecords {
            bytes: &self.bytes[self.records_at..],
            sequence: self.first_sequence,
            timestamp_ns: self.timestamp_ns,
        }
    }
}

/// Checked batches kept as bytes, to be read again later without checking them again: a
/// replica keeps the batches it received (each checked as it arrived) until it has journaled
/// and acknowledged them, and decodes them after. Only a [`BatchView`] can be put in, so
/// every byte held was checked; the views it gives back are those batches as they were.
#[derive(Clone, Debug, Default)]
pub struct CheckedBatches {
    bytes: Vec<u8>,
    /// Each batch's end in `bytes`, and the view's fields.
    batches: Vec<(usize, bool, [u64; 4])>,
}

impl CheckedBatches {
    /// Keeps a copy of `batch`.
    pub fn push(&mut self, batch: &BatchView<'_>) {
        self.bytes.extend_from_slice(batch.as_bytes());
        let fields = [
            batch.first_sequence,
            batch.last_sequence,
            batch.timestamp_ns,
            batch.last_timestamp_ns,
        ];
        self.batches.push((self.bytes.len(), batch.is_whole(), fields));
    }

    /// Whether it holds no batch.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The batches, in the order they were pushed.
    pub fn iter(&self) -> impl Iterator<Item = BatchView<'_>> + '_ {
        let mut start = 0;
        self.batches.iter().map(move |&(end, whole, [first, last, timestamp, last_timestamp])| {
            let bytes = &self.bytes[start..end];
            start = end;
            BatchView::checked(bytes, whole, first, last, timestamp, last_timestamp)
        })
    }

    /// Drops every batch, keeping the memory for the next.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.batches.clear();
    }
}

/// The records of a checked batch.
#[derive(Clone, Debug)]
pub struct BatchRecords<'a> {
    bytes: &'a [u8],
    sequence: u64,
    timestamp_ns: u64,
}

impl<'a> BatchRecords<'a> {
    /// The next record, with the batch's bytes from its payload on: the payload, then what
    /// follows it in the batch (padding, later records). For a decoder that reads ahead of
    /// the bytes it decodes: the batch is checked, so every byte of it may be read.
    #[inline]
    pub fn next_with_rest(&mut self) -> Option<(RecordView<'a>, &'a [u8])> {
        let rest = self.bytes.get(RECORD_HEADER_SIZE..)?;
        self.next().map(|record| (record, rest))
    }
}

impl<'a> Iterator for BatchRecords<'a> {
    type Item = RecordView<'a>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() {
            return None;
        }
        let record = record_view_unchecked(self.bytes, self.sequence, self.timestamp_ns);
        self.bytes = &self.bytes[record.size_padded..];
        self.sequence += 1;
        Some(record)
    }
}

/// What a reader finds where a batch should start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchCheck<'a> {
    /// A complete batch whose checksum matches and whose records keep the format's rules.
    /// (That its first sequence is the one expected is the caller's to check.)
    Batch(BatchView<'a>),
    /// A length of zero and no batch begun: nothing was written here.
    End,
    /// Bytes that are not a complete, valid batch.
    Invalid(InvalidBatch),
}

/// Why bytes at a batch position are not a batch: what was found, and at which offset from
/// the batch's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidBatch {
    /// The offset where the check stopped, from the batch's start: 0 for the batch's header,
    /// a record's offset for a rule that record breaks.
    pub offset: usize,
    /// What is wrong there.
    pub reason: InvalidRecord,
}

/// Why bytes at a batch position are not a valid batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidRecord {
    /// Fewer bytes than a batch header remain (and they are not all zero).
    Truncated {
        /// Bytes remaining.
        remaining: usize,
    },
    /// The batch's length is below a header and one record, above `GROUP_COMMIT_BYTES_MAX`,
    /// or past the end.
    LengthOutOfBounds {
        /// The length field.
        length: u32,
        /// Bytes remaining.
        remaining: usize,
    },
    /// A batch header that names its first sequence, with a zero length: a batch still being
    /// written, or one whose length never reached the disk.
    Unfinished {
        /// The sequence the header names.
        first_sequence: u64,
    },
    /// The batch's checksum does not match.
    ChecksumMismatch {
        /// The checksum in the header.
        stored: u32,
        /// The checksum of the bytes as they are.
        computed: u32,
    },
    /// The checksum matches but the batch breaks a rule of the format (kind 0, sequence 0,
    /// records that do not fill it exactly, decreasing timestamps, non-zero padding): not
    /// something a writer of this format produced.
    Malformed {
        /// The rule broken.
        rule: &'static str,
    },
}

impl fmt::Display for InvalidBatch {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            InvalidRecord::Truncated { remaining } => {
                write!(formatter, "{remaining} non-zero bytes, too few for a batch header")?
            }
            InvalidRecord::LengthOutOfBounds { length, remaining } => write!(
                formatter,
                "a batch length of {length} bytes, out of bounds ({remaining} bytes remain)"
            )?,
            InvalidRecord::Unfinished { first_sequence } => write!(
                formatter,
                "an unfinished batch (its header names sequence {first_sequence}, and its \
                 length is zero)"
            )?,
            InvalidRecord::ChecksumMismatch { stored, computed } => write!(
                formatter,
                "a batch checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            )?,
            InvalidRecord::Malformed { rule } => {
                write!(formatter, "a batch with a valid checksum that breaks the format ({rule})")?
            }
        }
        if self.offset != 0 {
            write!(formatter, ", at the record {} bytes into the batch", self.offset)?;
        }
        Ok(())
    }
}

/// Checks the batch at the start of `bytes` (which run to the end of the segment), reading
/// its length directly. See [`check_batch_with`].
pub fn check_batch(bytes: &[u8]) -> BatchCheck<'_> {
    check_batch_with(bytes, |offset| read_u32(bytes, offset))
}

/// Checks the batch at the start of `bytes`: its length is only bounds checked, then its
/// checksum is verified over everything the length covers; only when that matches are its
/// other fields and its records trusted and the format's rules enforced. `length_at` loads
/// the length field (at offset 0): a reader of a live journal loads it with acquire ordering,
/// and looks at no other byte of a batch whose length is zero but its header's sequence.
pub fn check_batch_with(bytes: &[u8], length_at: impl Fn(usize) -> u32) -> BatchCheck<'_> {
    let invalid = |offset, reason| BatchCheck::Invalid(InvalidBatch { offset, reason });
    let remaining = bytes.len();
    if remaining < BATCH_HEADER_SIZE {
        if bytes.iter().any(|&byte| byte != 0) {
            return invalid(0, InvalidRecord::Truncated { remaining });
        }
        return BatchCheck::End;
    }
    let length = length_at(0);
    if length == 0 {
        let first_sequence = read_u64(bytes, 8);
        if first_sequence != 0 {
            return invalid(0, InvalidRecord::Unfinished { first_sequence });
        }
        return BatchCheck::End;
    }
    let end = length as usize;
    // The padding must fit too: a segment's length is a multiple of 8, so this only refuses
    // slices cut at an odd place, whose walk would otherwise step past their end.
    if !(BATCH_HEADER_SIZE + RECORD_HEADER_SIZE..=GROUP_COMMIT_BYTES_MAX).contains(&end)
        || padded(end) > remaining
    {
        return invalid(0, InvalidRecord::LengthOutOfBounds { length, remaining });
    }
    let stored = read_u32(bytes, 4);
    let computed = batch_checksum(bytes, length);
    if stored != computed {
        return invalid(0, InvalidRecord::ChecksumMismatch { stored, computed });
    }
    let malformed = |offset, rule| invalid(offset, InvalidRecord::Malformed { rule });
    let first_sequence = read_u64(bytes, 8);
    let timestamp_ns = read_u64(bytes, 16);
    if first_sequence == 0 {
        return malformed(0, "sequences start at 1");
    }
    let mut offset = BATCH_HEADER_SIZE;
    let mut records = 0u64;
    let mut delta = 0u32;
    while offset < end {
        let Some((header, _)) = bytes[offset..end].split_first_chunk::<RECORD_HEADER_SIZE>() else {
            return malformed(offset, "records fill their batch exactly");
        };
        let record_end = offset + header_u32(header, 0) as usize;
        let next = padded(record_end);
        let is_last = record_end == end;
        if record_end < offset + RECORD_HEADER_SIZE
            || record_end - offset > RECORD_SIZE_MAX
            || (!is_last && next + RECORD_HEADER_SIZE > end)
        {
            return malformed(offset, "records fill their batch exactly");
        }
        if !padding_is_zero(bytes, record_end, next) {
            return malformed(offset, "padding must be zero");
        }
        let record_delta = header_u32(header, 4);
        if record_delta < delta {
            return malformed(offset, "the timestamps of a batch do not decrease");
        }
        if header[8] == 0 && header[9] == 0 {
            return malformed(offset, "kind 0 is never written");
        }
        delta = record_delta;
        records += 1;
        offset = if is_last { end } else { next };
    }
    let (Some(last_sequence), Some(last_timestamp_ns)) =
        (first_sequence.checked_add(records - 1), timestamp_ns.checked_add(u64::from(delta)))
    else {
        return malformed(0, "sequences and timestamps fit 64 bits");
    };
    BatchCheck::Batch(BatchView {
        bytes: &bytes[..padded(end)],
        records_at: BATCH_HEADER_SIZE,
        first_sequence,
        last_sequence,
        timestamp_ns,
        last_timestamp_ns,
    })
}

/// A size with its padding.
#[inline]
pub(crate) const fn padded(length: usize) -> usize {
    (length + RECORD_ALIGNMENT - 1) & !(RECORD_ALIGNMENT - 1)
}

/// Whether the padding of a record ending at `end` and padded to `next` is zero. Records start
/// on 8-byte boundaries and are at least 12 bytes long, so the padding is the top
/// `next - end` bytes of the little-endian word that ends at `next`: one load and a shift
/// rather than a loop over bytes.
#[inline(always)]
fn padding_is_zero(bytes: &[u8], end: usize, next: usize) -> bool {
    let padding = next - end;
    padding == 0 || read_u64(bytes, next - 8) >> (8 * (8 - padding)) == 0
}

/// The header of a snapshot file (format document, section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The state machine's own schema version.
    pub schema_version: u32,
    /// How the payload is encoded (`CODEC_BINCODE2_SERDE`).
    pub codec: u32,
    /// The last sequence applied to the state (0: the initial state).
    pub sequence: u64,
    /// That record's timestamp.
    pub timestamp_ns: u64,
    /// The state machine's digest of the state.
    pub state_hash: u64,
    /// Bytes of encoded state after the header.
    pub payload_length: u64,
    /// CRC32C of the payload.
    pub payload_checksum: u32,
}

impl SnapshotHeader {
    const STRUCTURE: &'static str = "snapshot header";

    /// A header for `payload`, with its length and checksum filled in.
    pub fn for_payload(
        schema_version: u32,
        codec: u32,
        sequence: u64,
        timestamp_ns: u64,
        state_hash: u64,
        payload: &[u8],
    ) -> Self {
        Self {
            schema_version,
            codec,
            sequence,
            timestamp_ns,
            state_hash,
            payload_length: payload.len() as u64,
            payload_checksum: crc32c::crc32c(payload),
        }
    }

    /// The header's 64 bytes, checksum included.
    pub fn encode(&self) -> [u8; SNAPSHOT_HEADER_SIZE] {
        let mut bytes = [0u8; SNAPSHOT_HEADER_SIZE];
        bytes[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
        bytes[8..12].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        bytes[12..16].copy_from_slice(&(SNAPSHOT_HEADER_SIZE as u32).to_le_bytes());
        bytes[16..20].copy_from_slice(&self.schema_version.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.codec.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.sequence.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.timestamp_ns.to_le_bytes());
        bytes[40..48].copy_from_slice(&self.state_hash.to_le_bytes());
        bytes[48..56].copy_from_slice(&self.payload_length.to_le_bytes());
        bytes[56..60].copy_from_slice(&self.payload_checksum.to_le_bytes());
        let checksum = crc32c::crc32c(&bytes[0..60]);
        bytes[60..64].copy_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// Decodes and validates a header: the checksum first, then magic, version and header
    /// size. The payload's length and checksum are checked by [`verify_payload`].
    ///
    /// [`verify_payload`]: Self::verify_payload
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let structure = Self::STRUCTURE;
        require_length(structure, bytes, SNAPSHOT_HEADER_SIZE)?;
        verify(structure, read_u32(bytes, 60), crc32c::crc32c(&bytes[0..60]))?;
        let magic: [u8; 8] = read_array(bytes, 0);
        if magic != SNAPSHOT_MAGIC {
            return Err(FormatError::BadMagic {
                structure,
                found: magic,
                expected: SNAPSHOT_MAGIC,
            });
        }
        let version = read_u32(bytes, 8);
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                structure,
                found: version,
                expected: SNAPSHOT_FORMAT_VERSION,
            });
        }
        let header_size = read_u32(bytes, 12);
        if header_size as usize != SNAPSHOT_HEADER_SIZE {
            return Err(FormatError::InvalidField {
                structure,
                field: "header_size",
                value: header_size.into(),
                rule: "must be 64",
            });
        }
        Ok(Self {
            schema_version: read_u32(bytes, 16),
            codec: read_u32(bytes, 20),
            sequence: read_u64(bytes, 24),
            timestamp_ns: read_u64(bytes, 32),
            state_hash: read_u64(bytes, 40),
            payload_length: read_u64(bytes, 48),
            payload_checksum: read_u32(bytes, 56),
        })
    }

    /// Checks that `payload` (the file's bytes after the header) has the header's length and
    /// checksum.
    pub fn verify_payload(&self, payload: &[u8]) -> Result<(), FormatError> {
        let structure = "snapshot payload";
        if payload.len() as u64 != self.payload_length {
            return Err(FormatError::InvalidField {
                structure,
                field: "payload_length",
                value: self.payload_length,
                rule: "must equal the bytes after the header",
            });
        }
        self.verify_payload_checksum(crc32c::crc32c(payload))
    }

    /// Checks the payload's CRC32C, `computed` by a caller that streamed it, against the
    /// header's.
    pub fn verify_payload_checksum(&self, computed: u32) -> Result<(), FormatError> {
        verify("snapshot payload", self.payload_checksum, computed)
    }
}
