//! The on-disk format against `docs/journal-format.md`: the documented offsets, round trips,
//! every single-bit flip detected, and random bytes never mistaken for a batch.

use keel_journal::format::*;
use proptest::prelude::*;

const TIMESTAMP_NS: u64 = 1_763_000_000_123_456_789;

fn fields(sequence: u64) -> RecordFields {
    RecordFields { sequence, timestamp_ns: TIMESTAMP_NS, kind: 0x0102, version: 3 }
}

/// The bytes a batch of records with these payload lengths occupies.
fn batch_size(payload_lengths: impl IntoIterator<Item = usize>) -> usize {
    BATCH_HEADER_SIZE + payload_lengths.into_iter().map(record_size_padded).sum::<usize>()
}

fn encoded(sequence: u64, payload: &[u8]) -> Vec<u8> {
    let mut buffer = vec![0u8; batch_size([payload.len()])];
    let written = encode_record(&mut buffer, &fields(sequence), payload).unwrap();
    assert_eq!(written, buffer.len());
    buffer
}

/// The payload of record `index` of [`encoded_batch`].
fn payload(index: usize) -> Vec<u8> {
    vec![index as u8 ^ 0x5A; (index * 7) % 45]
}

/// A batch of `count` records with payloads of assorted lengths, from sequence `first`, the
/// timestamps 0, 1, 2, … nanoseconds after the first's.
fn encoded_batch(first: u64, count: u64) -> Vec<u8> {
    let payloads: Vec<Vec<u8>> = (0..count as usize).map(payload).collect();
    let records: Vec<(RecordFields, &[u8])> = payloads
        .iter()
        .enumerate()
        .map(|(index, payload)| {
            let timestamp_ns = TIMESTAMP_NS + index as u64;
            (RecordFields { timestamp_ns, ..fields(first + index as u64) }, &payload[..])
        })
        .collect();
    let mut buffer = vec![0u8; batch_size(payloads.iter().map(Vec::len))];
    let written = encode_batch(&mut buffer, &records).unwrap();
    assert_eq!(written, buffer.len());
    buffer
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

/// The bytes with the batch at their start sealed again (its checksum computed anew over
/// its length field as it is): a batch that breaks a rule under a valid checksum.
fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
    let length = read_u32(&bytes, 0) as usize;
    let mut covered = bytes[0..4].to_vec();
    covered.extend_from_slice(&bytes[8..length]);
    let checksum = crc32c::crc32c(&covered);
    bytes[4..8].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

#[test]
fn batch_and_record_fields_sit_at_the_documented_offsets() {
    let batch = encoded(0x1122_3344_5566_7788, b"abc");
    assert_eq!(batch.len(), 24 + 16, "24-byte batch header, 12-byte record header + 3, padded");
    assert_eq!(&batch[0..4], &39u32.to_le_bytes(), "length: header + record, last padding out");
    assert_eq!(&batch[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&batch[16..24], &TIMESTAMP_NS.to_le_bytes());
    assert_eq!(&batch[24..28], &15u32.to_le_bytes(), "the record's length, unpadded");
    assert_eq!(&batch[28..32], &0u32.to_le_bytes(), "the first record's delta");
    assert_eq!(&batch[32..34], &0x0102u16.to_le_bytes());
    assert_eq!(&batch[34..36], &3u16.to_le_bytes());
    assert_eq!(&batch[36..39], b"abc");
    assert_eq!(batch[39], 0, "zero padding");
    // The checksum covers bytes 0..4 and 8..length, as documented.
    let mut covered = batch[0..4].to_vec();
    covered.extend_from_slice(&batch[8..39]);
    assert_eq!(&batch[4..8], &crc32c::crc32c(&covered).to_le_bytes());
    // Later records carry the distance of their timestamps from the batch's.
    let three = encoded_batch(10, 3);
    let third = BATCH_HEADER_SIZE + record_size_padded(0) + record_size_padded(7);
    assert_eq!(read_u32(&three, third + 4), 2, "the third record's delta");
    let length = read_u32(&three, 0) as usize;
    assert_eq!(length, third + RECORD_HEADER_SIZE + 14);
    assert_eq!(three.len(), length.next_multiple_of(8));
}

#[test]
fn every_payload_length_is_copied_whole_and_padded_with_zeros_over_old_bytes() {
    // The writer zeros a record's last word before the header and payload go in; every
    // length around the word boundaries, into a buffer whose old bytes are not zero (a reused
    // staging buffer), must come out as the payload followed by zero padding.
    let start = BATCH_HEADER_SIZE + RECORD_HEADER_SIZE;
    for length in 0..=41usize {
        let payload: Vec<u8> = (0..length).map(|index| 0xA0 ^ index as u8).collect();
        let mut buffer = vec![0xEEu8; batch_size([length])];
        encode_record(&mut buffer, &fields(7), &payload).unwrap();
        assert_eq!(&buffer[start..start + length], &payload[..], "payload of {length} bytes");
        assert!(buffer[start + length..].iter().all(|&byte| byte == 0), "padding after {length}");
        assert_eq!(buffer, encoded(7, &payload), "the same bytes as into a zeroed buffer");
    }
}

#[test]
fn batches_round_trip_for_every_padding_and_size() {
    for count in [1u64, 2, 3, 17, 100] {
        let batch = encoded_batch(9, count);
        assert_eq!(batch.len() % RECORD_ALIGNMENT, 0);
        let mut segment = batch.clone();
        segment.resize(batch.len() + 4096, 0);
        match check_batch(&segment) {
            BatchCheck::Batch(view) => {
                assert_eq!((view.first_sequence, view.last_sequence), (9, 8 + count));
                assert_eq!((view.size(), view.records()), (batch.len(), count));
                assert_eq!(view.timestamp_ns, TIMESTAMP_NS);
                assert_eq!(view.last_timestamp_ns, TIMESTAMP_NS + count - 1);
                assert!(view.is_whole());
                for (index, record) in view.iter().enumerate() {
                    assert_eq!(record.sequence, 9 + index as u64);
                    assert_eq!(record.timestamp_ns, TIMESTAMP_NS + index as u64);
                    assert_eq!(record.payload, &payload(index)[..]);
                    assert_eq!((record.kind, record.version), (0x0102, 3));
                }
                assert_eq!(view.iter().count() as u64, count);
            }
            other => panic!("{count} records: {other:?}"),
        }
        assert_eq!(check_batch(&segment[batch.len()..]), BatchCheck::End);
    }
}

#[test]
fn every_single_bit_flip_in_a_batch_is_detected() {
    for count in [1u64, 4] {
        let batch = encoded_batch(42, count);
        // A following zeroed area, as in a segment, so a grown length still finds bytes.
        let mut segment = batch.clone();
        segment.resize(batch.len() + 64, 0);
        for bit in 0..batch.len() * 8 {
            let mut damaged = segment.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            match check_batch(&damaged) {
                BatchCheck::Invalid(_) => {}
                // A flip can only make a batch unreadable, never "nothing here": a batch
                // header whose length is zero but whose sequence is not is an unfinished one.
                other => panic!("{count} records, bit {bit}: damage read as {other:?}"),
            }
        }
    }
}

#[test]
fn a_batch_without_its_length_is_unfinished_and_the_rules_hold_under_a_valid_checksum() {
    let batch = encoded_batch(5, 3);
    let mut unsealed = batch.clone();
    unsealed[0..8].fill(0);
    unsealed.resize(4096, 0);
    assert_eq!(
        check_batch(&unsealed),
        BatchCheck::Invalid(InvalidBatch {
            offset: 0,
            reason: InvalidRecord::Unfinished { first_sequence: 5 }
        })
    );
    // Re-seal batches that break a rule: the checksum alone is not trust.
    let edited = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = batch.clone();
        edit(&mut bytes);
        let mut bytes = resealed(bytes);
        bytes.resize(bytes.len() + 64, 0);
        bytes
    };
    let malformed = |bytes: &[u8]| match check_batch(bytes) {
        BatchCheck::Invalid(InvalidBatch { reason: InvalidRecord::Malformed { rule }, offset }) => {
            (offset, rule)
        }
        other => panic!("expected a malformed batch, got {other:?}"),
    };
    assert_eq!(edited(&|_| {}), {
        let mut ok = batch.clone();
        ok.resize(batch.len() + 64, 0);
        ok
    });
    let second = BATCH_HEADER_SIZE + record_size_padded(0);
    let zero_first = edited(&|bytes| bytes[8..16].fill(0));
    assert_eq!(malformed(&zero_first), (0, "sequences start at 1"));
    let kind_zero = edited(&|bytes| bytes[second + 8..second + 10].fill(0));
    assert_eq!(malformed(&kind_zero), (second, "kind 0 is never written"));
    let back_in_time = edited(&|bytes| bytes[second + 4..second + 8].fill(0xFF));
    assert_eq!(malformed(&back_in_time).1, "the timestamps of a batch do not decrease");
    let padding = edited(&|bytes| bytes[second + RECORD_HEADER_SIZE + 7] = 1);
    assert_eq!(malformed(&padding), (second, "padding must be zero"));
    // Record lengths that do not tile the batch: one running past its end, one below a record
    // header; then a batch length that ends inside a record.
    for (record_length, rule_at) in [(1000u32, second), (4, second)] {
        let bad = edited(&|bytes| {
            bytes[second..second + 4].copy_from_slice(&record_length.to_le_bytes())
        });
        assert_eq!(
            malformed(&bad),
            (rule_at, "records fill their batch exactly"),
            "{record_length}"
        );
    }
    let shorter = edited(&|bytes| {
        let length = read_u32(bytes, 0) - 8;
        bytes[0..4].copy_from_slice(&length.to_le_bytes());
    });
    assert_eq!(malformed(&shorter).1, "records fill their batch exactly");
}

#[test]
fn zeros_are_the_end_and_short_garbage_is_not() {
    assert_eq!(check_batch(&[0u8; 4096]), BatchCheck::End);
    assert_eq!(check_batch(&[0u8; 7]), BatchCheck::End);
    assert_eq!(
        check_batch(&[0, 0, 1, 0, 0]),
        BatchCheck::Invalid(InvalidBatch {
            offset: 0,
            reason: InvalidRecord::Truncated { remaining: 5 }
        })
    );
    let mut short_length = [0u8; 64];
    short_length[0] = 35;
    assert!(matches!(
        check_batch(&short_length),
        BatchCheck::Invalid(InvalidBatch {
            reason: InvalidRecord::LengthOutOfBounds { length: 35, .. },
            ..
        })
    ));
    let record = encoded(1, &[7; 100]);
    assert!(
        matches!(
            check_batch(&record[..record.len() - 8]),
            BatchCheck::Invalid(InvalidBatch {
                reason: InvalidRecord::LengthOutOfBounds { .. },
                ..
            })
        ),
        "a batch cut short by the end of the segment"
    );
    // A slice that ends inside the batch's padding: a batch of 24 + 12 + 13 = 49 bytes, padded
    // to 56.
    let mut buffer = vec![0u8; 256];
    encode_batch(&mut buffer, &[(fields(1), &[1u8; 13][..])]).unwrap();
    assert_eq!(
        check_batch(&buffer[..50]),
        BatchCheck::Invalid(InvalidBatch {
            offset: 0,
            reason: InvalidRecord::LengthOutOfBounds { length: 49, remaining: 50 }
        })
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
        encode_batch(&mut buffer, &[(fields(1), b"a"), (fields(3), b"b")]),
        Err(FormatError::InvalidField { field: "sequence", .. })
    ));
    let earlier = RecordFields { timestamp_ns: TIMESTAMP_NS - 1, ..fields(2) };
    assert!(matches!(
        encode_batch(&mut buffer, &[(fields(1), b"a"), (earlier, b"b")]),
        Err(FormatError::InvalidField { field: "timestamp_ns", .. })
    ));
    let too_late =
        RecordFields { timestamp_ns: TIMESTAMP_NS + TIMESTAMP_DELTA_MAX + 1, ..fields(2) };
    assert!(matches!(
        encode_batch(&mut buffer, &[(fields(1), b"a"), (too_late, b"b")]),
        Err(FormatError::InvalidField { field: "timestamp_ns", .. })
    ));
    assert!(matches!(
        encode_batch(&mut buffer, &[]),
        Err(FormatError::InvalidField { field: "records", .. })
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
    assert_eq!(&bytes[8..12], &2u32.to_le_bytes(), "format version 2");
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
    for version in [1u32, 3] {
        future[8..12].copy_from_slice(&version.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&resign(future)),
            Err(FormatError::UnsupportedVersion {
                structure: "segment header",
                found: version,
                expected: 2
            }),
            "version 1 (a record header each) and any later one are refused"
        );
    }
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
    /// Random bytes never panic the checker, and whatever it accepts really is a batch: the
    /// same fields and payloads encode to the same bytes.
    #[test]
    fn random_bytes_are_never_mistaken_for_a_batch(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let BatchCheck::Batch(view) = check_batch(&bytes) {
            let records: Vec<(RecordFields, &[u8])> =
                view.iter().map(|record| (record.fields(), record.payload)).collect();
            let mut again = vec![0u8; view.size()];
            encode_batch(&mut again, &records).unwrap();
            prop_assert_eq!(&again[..], &bytes[..view.size()]);
        }
        let _ = SegmentHeader::decode(&bytes);
        let _ = SnapshotHeader::decode(&bytes);
    }

    /// Any batch survives encoding and checking, whatever its fields and payloads.
    #[test]
    fn any_batch_round_trips(
        first in 1u64..u64::MAX / 2,
        timestamp_ns in any::<u64>(),
        kind in 1u16..,
        version in any::<u16>(),
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..20),
    ) {
        let records: Vec<(RecordFields, &[u8])> = payloads
            .iter()
            .enumerate()
            .map(|(index, payload)| {
                (RecordFields { sequence: first + index as u64, timestamp_ns, kind, version }, &payload[..])
            })
            .collect();
        let size = batch_size(payloads.iter().map(Vec::len));
        let mut buffer = vec![0u8; size + 16];
        let written = encode_batch(&mut buffer, &records).unwrap();
        prop_assert_eq!(written, size);
        match check_batch(&buffer) {
            BatchCheck::Batch(view) => {
                prop_assert_eq!(view.size(), written);
                prop_assert_eq!(view.iter().count(), payloads.len());
                for (record, (fields, payload)) in view.iter().zip(&records) {
                    prop_assert_eq!(record.payload, *payload);
                    prop_assert_eq!((record.sequence, record.timestamp_ns, record.kind, record.version), (fields.sequence, timestamp_ns, kind, version));
                }
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

#[test]
fn every_padding_byte_of_every_padding_length_must_be_zero() {
    for payload_len in 1..=8usize {
        let record = encoded(1, &vec![0xAB; payload_len]);
        let end = BATCH_HEADER_SIZE + RECORD_HEADER_SIZE + payload_len;
        assert!(matches!(check_batch(&record), BatchCheck::Batch(_)), "payload {payload_len}");
        for position in end..record.len() {
            let mut damaged = record.clone();
            damaged[position] = 0x80;
            // The padding of a batch's last record is not under its checksum: the rule alone
            // catches it.
            match check_batch(&damaged) {
                BatchCheck::Invalid(InvalidBatch {
                    reason: InvalidRecord::Malformed { rule },
                    ..
                }) => assert_eq!(rule, "padding must be zero"),
                other => panic!("payload {payload_len}, byte {position}: {other:?}"),
            }
        }
    }
}

#[test]
fn checked_batches_give_back_the_batches_pushed_byte_for_byte_and_empty_when_cleared() {
    let mut kept = CheckedBatches::default();
    assert!(kept.is_empty());
    for round in 0..2u64 {
        let encoded: Vec<Vec<u8>> = [(1, 1), (2, 5), (7, 16)]
            .iter()
            .map(|&(first, count)| encoded_batch(first + round * 100, count))
            .collect();
        for bytes in &encoded {
            let BatchCheck::Batch(batch) = check_batch(bytes) else { panic!("a valid batch") };
            kept.push(&batch);
        }
        assert!(!kept.is_empty());
        let views: Vec<BatchView<'_>> = kept.iter().collect();
        assert_eq!(views.len(), encoded.len(), "round {round}: one view a batch");
        for (view, bytes) in views.iter().zip(&encoded) {
            let BatchCheck::Batch(batch) = check_batch(bytes) else { unreachable!() };
            assert_eq!(view.as_bytes(), &bytes[..]);
            assert_eq!(
                (view.first_sequence, view.last_sequence, view.last_timestamp_ns),
                (batch.first_sequence, batch.last_sequence, batch.last_timestamp_ns)
            );
            let sequences: Vec<u64> = view.iter().map(|record| record.sequence).collect();
            let expected: Vec<u64> = (batch.first_sequence..=batch.last_sequence).collect();
            assert_eq!(sequences, expected);
        }
        kept.clear();
        assert!(kept.is_empty());
        assert_eq!(kept.iter().count(), 0);
    }
}
