//! The on-disk format against `docs/journal-format.md`: the documented offsets, round trips,
//! every single-bit flip detected, and random bytes never mistaken for a record.

use keel_journal::format::*;
use proptest::prelude::*;

fn fields(sequence: u64) -> RecordFields {
    RecordFields {
        sequence,
        timestamp_ns: 1_763_000_000_123_456_789,
        kind: 0x0102,
        version: 3,
        flags: FLAG_END_OF_BATCH,
    }
}

fn encoded(sequence: u64, payload: &[u8]) -> Vec<u8> {
    let mut buffer = vec![0u8; record_size_padded(payload.len())];
    let written = encode_record(&mut buffer, &fields(sequence), payload).unwrap();
    assert_eq!(written, buffer.len());
    buffer
}

#[test]
fn record_fields_sit_at_the_documented_offsets() {
    let record = encoded(0x1122_3344_5566_7788, b"abc");
    assert_eq!(record.len(), 40, "32-byte header + 3 bytes, padded to 8");
    assert_eq!(&record[0..4], &35u32.to_le_bytes(), "length: header + payload, unpadded");
    assert_eq!(&record[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&record[16..24], &1_763_000_000_123_456_789u64.to_le_bytes());
    assert_eq!(&record[24..26], &0x0102u16.to_le_bytes());
    assert_eq!(&record[26..28], &3u16.to_le_bytes());
    assert_eq!(&record[28..32], &FLAG_END_OF_BATCH.to_le_bytes());
    assert_eq!(&record[32..35], b"abc");
    assert_eq!(&record[35..40], &[0; 5], "zero padding");
    // The checksum covers bytes 0..4 and 8..length, as documented.
    let mut covered = record[0..4].to_vec();
    covered.extend_from_slice(&record[8..35]);
    assert_eq!(&record[4..8], &crc32c::crc32c(&covered).to_le_bytes());
}

#[test]
fn records_round_trip_for_every_padding() {
    for payload_len in 0..=40usize {
        let payload: Vec<u8> = (0..payload_len as u8).map(|byte| byte.wrapping_mul(37)).collect();
        let record = encoded(9, &payload);
        assert_eq!(record.len() % RECORD_ALIGNMENT, 0);
        match check_record(&record) {
            RecordCheck::Record(view) => {
                assert_eq!(view.sequence, 9);
                assert_eq!(view.payload, &payload[..]);
                assert_eq!(view.size_padded, record.len());
                assert!(view.is_end_of_batch());
                assert_eq!((view.kind, view.version), (0x0102, 3));
            }
            other => panic!("payload {payload_len}: {other:?}"),
        }
    }
}

#[test]
fn every_single_bit_flip_in_a_record_is_detected() {
    for payload_len in [0usize, 1, 7, 8, 41] {
        let payload = vec![0xA5u8; payload_len];
        let record = encoded(42, &payload);
        // A following zeroed area, as in a segment, so a grown length still finds bytes.
        let mut segment = record.clone();
        segment.resize(record.len() + 64, 0);
        for bit in 0..record.len() * 8 {
            let mut damaged = segment.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            match check_record(&damaged) {
                // A flip that zeroes the length reads as "no record here"; recovery then finds
                // the non-zero bytes after it (format document, section 6, row 3).
                RecordCheck::End => assert!(bit < 32, "only a length bit can make a zero length"),
                RecordCheck::Invalid(_) => {}
                RecordCheck::Record(view) => {
                    panic!("payload {payload_len}, bit {bit}: damage accepted as {view:?}")
                }
            }
        }
    }
}

#[test]
fn zeros_are_the_end_and_short_garbage_is_not() {
    assert_eq!(check_record(&[0u8; 4096]), RecordCheck::End);
    assert_eq!(check_record(&[0u8; 7]), RecordCheck::End);
    assert_eq!(
        check_record(&[0, 0, 1, 0, 0]),
        RecordCheck::Invalid(InvalidRecord::Truncated { remaining: 5 })
    );
    let mut short_length = [0u8; 64];
    short_length[0] = 31;
    assert!(matches!(
        check_record(&short_length),
        RecordCheck::Invalid(InvalidRecord::LengthOutOfBounds { length: 31, .. })
    ));
    let record = encoded(1, &[7; 100]);
    assert!(
        matches!(
            check_record(&record[..record.len() - 8]),
            RecordCheck::Invalid(InvalidRecord::LengthOutOfBounds { .. })
        ),
        "a record cut short by the end of the segment"
    );
}

#[test]
fn encoding_refuses_what_the_format_forbids() {
    let mut buffer = vec![0u8; 1024];
    let refuse = |fields: RecordFields| encode_record(&mut vec![0u8; 1024], &fields, b"x");
    assert!(matches!(
        refuse(RecordFields { kind: 0, ..fields(1) }),
        Err(FormatError::InvalidField { field: "kind", .. })
    ));
    assert!(matches!(
        refuse(RecordFields { sequence: 0, ..fields(1) }),
        Err(FormatError::InvalidField { field: "sequence", .. })
    ));
    assert!(matches!(
        refuse(RecordFields { flags: 2, ..fields(1) }),
        Err(FormatError::InvalidField { field: "flags", .. })
    ));
    assert_eq!(
        encode_record(&mut buffer[..39], &fields(1), b"abc"),
        Err(FormatError::BufferTooSmall { needed: 40, available: 39 })
    );
    let huge = vec![0u8; RECORD_SIZE_MAX];
    assert_eq!(
        encode_record(&mut buffer, &fields(1), &huge),
        Err(FormatError::PayloadTooLarge { payload: RECORD_SIZE_MAX })
    );
}

fn segment_header() -> SegmentHeader {
    SegmentHeader {
        first_sequence: 4_194_305,
        segment_size: 256 << 20,
        journal_id: *b"0123456789abcdef",
        epoch: 2,
    }
}

#[test]
fn segment_headers_round_trip_at_the_documented_offsets() {
    let bytes = segment_header().encode();
    assert_eq!(&bytes[0..8], b"KEELSEG\0");
    assert_eq!(&bytes[8..12], &1u32.to_le_bytes());
    assert_eq!(&bytes[12..16], &4096u32.to_le_bytes());
    assert_eq!(&bytes[16..24], &4_194_305u64.to_le_bytes());
    assert_eq!(&bytes[24..32], &(256u64 << 20).to_le_bytes());
    assert_eq!(&bytes[32..48], b"0123456789abcdef");
    assert_eq!(&bytes[48..56], &2u64.to_le_bytes());
    assert_eq!(&bytes[56..60], &[0; 4]);
    assert_eq!(&bytes[60..64], &crc32c::crc32c(&bytes[0..60]).to_le_bytes());
    assert_eq!(SegmentHeader::decode(&bytes), Ok(segment_header()));
}

#[test]
fn every_single_bit_flip_in_a_segment_header_is_refused() {
    let bytes = segment_header().encode();
    for bit in 0..SEGMENT_HEADER_USED * 8 {
        let mut damaged = bytes;
        damaged[bit / 8] ^= 1 << (bit % 8);
        assert!(SegmentHeader::decode(&damaged).is_err(), "bit {bit}");
    }
}

#[test]
fn segment_headers_with_a_valid_checksum_are_still_validated() {
    // Re-sign a header whose fields break the rules: the checksum alone is not trust.
    let resign = |mut bytes: [u8; 64]| {
        let checksum = crc32c::crc32c(&bytes[0..60]);
        bytes[60..64].copy_from_slice(&checksum.to_le_bytes());
        bytes
    };
    let mut foreign = segment_header().encode();
    foreign[0..8].copy_from_slice(b"NOTKEEL!");
    assert!(matches!(SegmentHeader::decode(&resign(foreign)), Err(FormatError::BadMagic { .. })));
    let mut future = segment_header().encode();
    future[8..12].copy_from_slice(&2u32.to_le_bytes());
    assert!(matches!(
        SegmentHeader::decode(&resign(future)),
        Err(FormatError::UnsupportedVersion { found: 2, .. })
    ));
    for segment_size in [0u64, (1 << 20) - 4096, (1 << 20) + 1, (4 << 30) + 4096] {
        let header = SegmentHeader { segment_size, ..segment_header() };
        assert!(
            matches!(
                SegmentHeader::decode(&header.encode()),
                Err(FormatError::InvalidField { field: "segment_size", .. })
            ),
            "{segment_size}"
        );
    }
    let zero_first = SegmentHeader { first_sequence: 0, ..segment_header() };
    assert!(SegmentHeader::decode(&zero_first.encode()).is_err());
    assert!(matches!(SegmentHeader::decode(&[0u8; 63]), Err(FormatError::TooShort { .. })));
}

#[test]
fn snapshot_headers_round_trip_and_catch_damage() {
    let payload = b"the encoded state".to_vec();
    let header =
        SnapshotHeader::for_payload(5, CODEC_BINCODE2_SERDE, 4_000_000, 17, 0xDEAD_BEEF, &payload);
    let bytes = header.encode();
    assert_eq!(&bytes[0..8], b"KEELSNAP");
    assert_eq!(&bytes[16..20], &5u32.to_le_bytes());
    assert_eq!(&bytes[24..32], &4_000_000u64.to_le_bytes());
    assert_eq!(&bytes[48..56], &(payload.len() as u64).to_le_bytes());
    let decoded = SnapshotHeader::decode(&bytes).unwrap();
    assert_eq!(decoded, header);
    assert_eq!(decoded.verify_payload(&payload), Ok(()));
    for bit in 0..SNAPSHOT_HEADER_SIZE * 8 {
        let mut damaged = bytes;
        damaged[bit / 8] ^= 1 << (bit % 8);
        assert!(SnapshotHeader::decode(&damaged).is_err(), "header bit {bit}");
    }
    for bit in 0..payload.len() * 8 {
        let mut damaged = payload.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        assert!(decoded.verify_payload(&damaged).is_err(), "payload bit {bit}");
    }
    assert!(decoded.verify_payload(&payload[1..]).is_err(), "a truncated snapshot");
}

proptest! {
    /// Random bytes never panic the checker, and whatever it accepts really is a record: the
    /// same fields and payload encode to the same bytes.
    #[test]
    fn random_bytes_are_never_mistaken_for_a_record(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let RecordCheck::Record(view) = check_record(&bytes) {
            let fields = RecordFields {
                sequence: view.sequence,
                timestamp_ns: view.timestamp_ns,
                kind: view.kind,
                version: view.version,
                flags: view.flags,
            };
            let mut again = vec![0u8; view.size_padded];
            encode_record(&mut again, &fields, view.payload).unwrap();
            prop_assert_eq!(&again[..], &bytes[..view.size_padded]);
        }
        let _ = SegmentHeader::decode(&bytes);
        let _ = SnapshotHeader::decode(&bytes);
    }

    /// Any record survives encoding and checking, whatever its fields and payload.
    #[test]
    fn any_record_round_trips(
        sequence in 1u64..,
        timestamp_ns in any::<u64>(),
        kind in 1u16..,
        version in any::<u16>(),
        end_of_batch in any::<bool>(),
        payload in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let fields = RecordFields { sequence, timestamp_ns, kind, version, flags: if end_of_batch { FLAG_END_OF_BATCH } else { 0 } };
        let mut buffer = vec![0u8; record_size_padded(payload.len()) + 16];
        let written = encode_record(&mut buffer, &fields, &payload).unwrap();
        match check_record(&buffer) {
            RecordCheck::Record(view) => {
                prop_assert_eq!(view.payload, &payload[..]);
                prop_assert_eq!((view.sequence, view.timestamp_ns, view.kind, view.version, view.flags), (sequence, timestamp_ns, kind, version, fields.flags));
                prop_assert_eq!(view.size_padded, written);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
