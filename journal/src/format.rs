//! The on-disk format of `docs/journal-format.md`, as code: segment headers, records and
//! snapshot headers, all little-endian, each protected by a CRC32C that is verified before any
//! other field is trusted.
//!
//! Record layout (section 3 of the format document):
//!
//! ```text
//!  0        4        8                16               24     26      28       32
//!  +--------+--------+----------------+----------------+------+-------+--------+---------+-----+
//!  | length |checksum|    sequence    |   timestamp    | kind |version| flags  | payload | pad |
//!  +--------+--------+----------------+----------------+------+-------+--------+---------+-----+
//!  checksum = CRC32C(bytes 0..4 ++ bytes 8..length); the record is padded with zeros to 8 bytes
//! ```

use thiserror::Error;

/// Bytes 0..8 of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"KEELSEG\0";
/// Bytes 0..8 of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"KEELSNAP";
/// The version of this format; any change to the layout bumps it.
pub const FORMAT_VERSION: u32 = 1;

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

/// Bytes of a record header.
pub const RECORD_HEADER_SIZE: usize = 32;
/// Records start on multiples of this.
pub const RECORD_ALIGNMENT: usize = 8;
/// The largest record (header and payload); larger payloads are refused by the writer. A
/// record never spans segments, so it must fit the smallest segment after its header.
pub const RECORD_SIZE_MAX: usize = 512 << 10;
/// The largest group commit the writer makes durable in one sync. Recovery relies on it to
/// tell a torn tail from corruption (format document, section 6, rows 5 and 6).
pub const GROUP_COMMIT_BYTES_MAX: usize = 64 << 20;

/// Record flag: the last record of a group commit.
pub const FLAG_END_OF_BATCH: u32 = 1;
/// The flags this version defines; a record with any other bit set is invalid.
pub const FLAGS_KNOWN: u32 = FLAG_END_OF_BATCH;

/// The largest record kind that belongs to the application.
pub const KIND_APPLICATION_MAX: u16 = 0x7FFF;
/// keel's checkpoint record: a state hash at a sequence.
pub const KIND_CHECKPOINT: u16 = 0x8001;
/// keel's epoch-change record (promotion of a replica).
pub const KIND_EPOCH: u16 = 0x8002;

/// Bytes of a snapshot header.
pub const SNAPSHOT_HEADER_SIZE: usize = 64;
/// Snapshot codec: bincode 2 through serde.
pub const CODEC_BINCODE2_SERDE: u32 = 1;

// The relations the layout depends on, checked when the crate compiles.
const _: () = assert!(SEGMENT_HEADER_USED <= SEGMENT_HEADER_SIZE);
const _: () = assert!(SEGMENT_HEADER_SIZE.is_multiple_of(RECORD_ALIGNMENT));
const _: () = assert!(RECORD_HEADER_SIZE.is_multiple_of(RECORD_ALIGNMENT));
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
    #[error("{structure} has format version {found}, this build reads version {FORMAT_VERSION}")]
    UnsupportedVersion {
        /// What was being decoded.
        structure: &'static str,
        /// The version found.
        found: u32,
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

fn read_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(field)
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
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
        bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
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
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion { structure, found: version });
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

/// The header fields of a record to encode.
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
    /// `FLAG_END_OF_BATCH` or 0.
    pub flags: u32,
}

/// The bytes a record with `payload_len` bytes of payload occupies, padding included.
pub const fn record_size_padded(payload_len: usize) -> usize {
    let unpadded = RECORD_HEADER_SIZE + payload_len;
    unpadded.div_ceil(RECORD_ALIGNMENT) * RECORD_ALIGNMENT
}

/// Writes a record (header, payload, zero padding) at the start of `buffer`; returns the bytes
/// it occupies. Refuses kind 0, unknown flags, oversized payloads and short buffers.
pub fn encode_record(
    buffer: &mut [u8],
    fields: &RecordFields,
    payload: &[u8],
) -> Result<usize, FormatError> {
    validate_record(fields, payload.len())?;
    let length = RECORD_HEADER_SIZE + payload.len();
    let padded = record_size_padded(payload.len());
    if buffer.len() < padded {
        return Err(FormatError::BufferTooSmall { needed: padded, available: buffer.len() });
    }
    let record = &mut buffer[..padded];
    write_record_fields(record, fields);
    record[RECORD_HEADER_SIZE..length].copy_from_slice(payload);
    record[length..padded].fill(0);
    let checksum = record_checksum_for_length(record, length as u32);
    record[4..8].copy_from_slice(&checksum.to_le_bytes());
    record[0..4].copy_from_slice(&(length as u32).to_le_bytes());
    Ok(padded)
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
    if fields.flags & !FLAGS_KNOWN != 0 {
        return Err(FormatError::InvalidField {
            structure,
            field: "flags",
            value: fields.flags.into(),
            rule: "only END_OF_BATCH is defined",
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

/// Writes bytes `8..32` of a record header (sequence, timestamp, kind, version, flags) and
/// zeroes `length` and `checksum`, which are written last: a record is sealed by its checksum
/// and published by its length.
pub(crate) fn write_record_fields(record: &mut [u8], fields: &RecordFields) {
    record[0..8].fill(0);
    record[8..16].copy_from_slice(&fields.sequence.to_le_bytes());
    record[16..24].copy_from_slice(&fields.timestamp_ns.to_le_bytes());
    record[24..26].copy_from_slice(&fields.kind.to_le_bytes());
    record[26..28].copy_from_slice(&fields.version.to_le_bytes());
    record[28..32].copy_from_slice(&fields.flags.to_le_bytes());
}

/// The checksum of a record of `length` bytes: CRC32C of `length` (as it will be stored)
/// followed by bytes `8..length`. It does not read bytes `0..8`, so a writer can compute it
/// before it publishes the length.
pub(crate) fn record_checksum_for_length(record: &[u8], length: u32) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&length.to_le_bytes()), &record[8..length as usize])
}

/// CRC32C of bytes `0..4` followed by bytes `8..length` of a record.
fn record_checksum(record: &[u8], length: usize) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&record[0..4]), &record[8..length])
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
    /// The record's flags.
    pub flags: u32,
    /// The payload, without padding.
    pub payload: &'a [u8],
    /// The bytes the record occupies, padding included: the offset of the next record.
    pub size_padded: usize,
}

impl RecordView<'_> {
    /// Whether this record ends a group commit.
    pub fn is_end_of_batch(&self) -> bool {
        self.flags & FLAG_END_OF_BATCH != 0
    }
}

/// The fields of the record at the start of `bytes`, read without any check: only for a
/// record that [`check_record`] accepted before (a reader that validated a whole batch ahead).
pub(crate) fn record_view_unchecked(bytes: &[u8]) -> RecordView<'_> {
    let length = read_u32(bytes, 0) as usize;
    RecordView {
        sequence: read_u64(bytes, 8),
        timestamp_ns: read_u64(bytes, 16),
        kind: read_u16(bytes, 24),
        version: read_u16(bytes, 26),
        flags: read_u32(bytes, 28),
        payload: &bytes[RECORD_HEADER_SIZE..length],
        size_padded: length.div_ceil(RECORD_ALIGNMENT) * RECORD_ALIGNMENT,
    }
}

/// What a reader finds where a record should start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordCheck<'a> {
    /// A record whose checksum matches. (Its sequence is the caller's to check.)
    Record(RecordView<'a>),
    /// A length of zero: no record was written here.
    End,
    /// Bytes that are not a record.
    Invalid(InvalidRecord),
}

/// Why bytes at a record position are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidRecord {
    /// Fewer bytes than a record header remain (and they are not all zero).
    Truncated {
        /// Bytes remaining.
        remaining: usize,
    },
    /// The length field is below the header size, above `RECORD_SIZE_MAX`, or past the end.
    LengthOutOfBounds {
        /// The length field.
        length: u32,
        /// Bytes remaining.
        remaining: usize,
    },
    /// The checksum does not match.
    ChecksumMismatch {
        /// The checksum in the record.
        stored: u32,
        /// The checksum of the bytes as they are.
        computed: u32,
    },
    /// The checksum matches but the record breaks a rule of the format (kind 0, unknown
    /// flags, sequence 0, non-zero padding): not something this writer produced.
    Malformed {
        /// The rule broken.
        rule: &'static str,
    },
}

/// Checks the record at the start of `bytes` (which run to the end of the segment): the
/// length's bounds first, then the checksum over everything else, and only then the fields.
pub fn check_record(bytes: &[u8]) -> RecordCheck<'_> {
    if bytes.len() < RECORD_HEADER_SIZE {
        if bytes.iter().all(|&byte| byte == 0) {
            return RecordCheck::End;
        }
        return RecordCheck::Invalid(InvalidRecord::Truncated { remaining: bytes.len() });
    }
    let length = read_u32(bytes, 0);
    if length == 0 {
        return RecordCheck::End;
    }
    let length_usize = length as usize;
    if !(RECORD_HEADER_SIZE..=RECORD_SIZE_MAX).contains(&length_usize) || length_usize > bytes.len()
    {
        return RecordCheck::Invalid(InvalidRecord::LengthOutOfBounds {
            length,
            remaining: bytes.len(),
        });
    }
    let stored = read_u32(bytes, 4);
    let computed = record_checksum(bytes, length_usize);
    if stored != computed {
        return RecordCheck::Invalid(InvalidRecord::ChecksumMismatch { stored, computed });
    }
    // The checksum holds: the fields can be read. The padding is outside the checksum, so it
    // is checked to be zero here (a writer always zeroes it).
    let size_padded = length_usize.div_ceil(RECORD_ALIGNMENT) * RECORD_ALIGNMENT;
    let padding = &bytes[length_usize..size_padded.min(bytes.len())];
    let malformed = |rule| RecordCheck::Invalid(InvalidRecord::Malformed { rule });
    if padding.iter().any(|&byte| byte != 0) {
        return malformed("padding must be zero");
    }
    let view = record_view_unchecked(bytes);
    if view.sequence == 0 {
        return malformed("sequences start at 1");
    }
    if view.kind == 0 {
        return malformed("kind 0 is never written");
    }
    if view.flags & !FLAGS_KNOWN != 0 {
        return malformed("only END_OF_BATCH is defined");
    }
    RecordCheck::Record(view)
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
        bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
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
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion { structure, found: version });
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
        verify(structure, self.payload_checksum, crc32c::crc32c(payload))
    }
}
