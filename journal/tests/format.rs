//! The on-disk format against `docs/journal-format.md`: the documented offsets, round trips,
//! every single-bit flip detected, and random bytes never mistaken for a batch.

use keel_journal::format::*;
use proptest::prelude::*;

fn fields(sequence: u64) -> RecordFields {
    RecordFields { sequence, timestamp_ns: 1_763_000_000_123_456_789, kind: 0x0102, version: 3 }
}

fn encoded(sequence: u64, payload: &[u8]) -> Vec<u8> {
    let mut buffer = vec![0u8; record_size_padded(payload.len())];
    let written = encode_record(&mut buffer, &fields(sequence), payload).unwrap();
    assert_eq!(written, buffer.len());
    buffer
}

/// A batch of `count` records with payloads of assorted lengths, from sequence `first`.
fn encoded_batch(first: u64, count: u64) -> Vec<u8> {
    let payloads: Vec<Vec<u8>> =
        (0..count).map(|index| vec![index as u8 ^ 0x5A; (index as usize * 7) % 45]).collect();
    let records: Vec<(RecordFields, &[u8])> = payloads
        .iter()
        .enumerate()
        .map(|(index, payload)| (fields(first + index as u64), &payload[..]))
        .collect();
    let mut buffer = vec![0u8; payloads.iter().map(|p| record_size_padded(p.len())).sum()];
    let written = encode_batch(&mut buffer, &records).unwrap();
    assert_eq!(written, buffer.len());
    buffer
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
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
    let flags = FLAG_START_OF_BATCH | FLAG_END_OF_BATCH;
    assert_eq!(&record[28..32], &flags.to_le_bytes(), "a batch of one record");
    assert_eq!(&record[32..35], b"abc");
    assert_eq!(&record[35..40], &[0; 5], "zero padding");
    // A batch of one: the checksum covers bytes 0..4 and 8..length, as documented.
    let mut covered = record[0..4].to_vec();
    covered.extend_from_slice(&record[8..35]);
    assert_eq!(&record[4..8], &crc32c::crc32c(&covered).to_le_bytes());
}

#[test]
fn every_payload_length_is_copied_whole_and_padded_with_zeros_over_old_bytes() {
    // The writer zeros a record's last word before the header and payload go in; every
    // length around the word boundaries, into a buffer whose old bytes are not zero (a reused
    // staging buffer), must come out as the payload followed by zero padding.
    for length in 0..=41usize {
        let payload: Vec<u8> = (0..length).map(|index| 0xA0 ^ index as u8).collect();
        let mut buffer = vec![0xEEu8; record_size_padded(length)];
        encode_record(&mut buffer, &fields(7), &payload).unwrap();
        assert_eq!(&buffer[32..32 + length], &payload[..], "payload of {length} bytes");
        assert!(buffer[32 + length..].iter().all(|&byte| byte == 0), "padding after {length}");
        assert_eq!(buffer, encoded(7, &payload), "the same bytes as into a zeroed buffer");
    }
}

#[test]
fn a_batch_checksum_covers_every_byte_before_its_last_record() {
    let batch = encoded_batch(10, 3);
    let second = record_size_padded(0);
    let last = second + record_size_padded(7);
    assert_eq!(read_u32(&batch, 28), FLAG_START_OF_BATCH, "the first record starts the batch");
    assert_eq!(read_u32(&batch, 4), 0, "only the last record carries the checksum");
    assert_eq!(read_u32(&batch, second + 28), 0);
    assert_eq!(read_u32(&batch, second + 4), 0);
    assert_eq!(read_u32(&batch, last + 28), FLAG_END_OF_BATCH);
    let length = read_u32(&batch, last) as usize;
    let mut covered = batch[..last + 4].to_vec();
    covered.extend_from_slice(&batch[last + 8..last + length]);
    assert_eq!(read_u32(&batch, last + 4), crc32c::crc32c(&covered));
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
                for (index, record) in view.iter().enumerate() {
                    assert_eq!(record.sequence, 9 + index as u64);
                    assert_eq!(record.payload, &vec![index as u8 ^ 0x5A; (index * 7) % 45][..]);
                    assert_eq!((record.kind, record.version), (0x0102, 3));
                    assert_eq!(record.is_start_of_batch(), index == 0);
                    assert_eq!(record.is_end_of_batch(), index as u64 == count - 1);
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
                // A flip that zeroes the first length reads as "nothing here"; recovery then
                // finds the non-zero bytes after it (format document, section 6, row 3).
                BatchCheck::End => assert!(bit < 32, "only a length bit can make a zero length"),
                BatchCheck::Invalid(_) => {}
                BatchCheck::Batch(view) => {
                    panic!("{count} records, bit {bit}: damage accepted as {view:?}")
                }
            }
        }
    }
}

#[test]
fn a_batch_without_its_end_is_unfinished_and_the_rules_hold_under_a_valid_checksum() {
    let batch = encoded_batch(5, 3);
    let last = record_size_padded(0) + record_size_padded(7);
    let mut segment = batch[..last].to_vec();
    segment.resize(4096, 0);
    assert_eq!(
        check_batch(&segment),
        BatchCheck::Invalid(InvalidBatch {
            offset: last,
            reason: InvalidRecord::Unfinished { records: 2 }
        })
    );
    // Re-seal batches that break a rule: the checksum alone is not trust.
    let resealed = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = batch.clone();
        edit(&mut bytes);
        let length = read_u32(&bytes, last) as usize;
        let mut covered = bytes[..last + 4].to_vec();
        covered.extend_from_slice(&bytes[last + 8..last + length]);
        let checksum = crc32c::crc32c(&covered);
        bytes[last + 4..last + 8].copy_from_slice(&checksum.to_le_bytes());
        bytes.resize(bytes.len() + 64, 0);
        bytes
    };
    let malformed = |bytes: &[u8]| match check_batch(bytes) {
        BatchCheck::Invalid(InvalidBatch { reason: InvalidRecord::Malformed { rule }, .. }) => rule,
        other => panic!("expected a malformed batch, got {other:?}"),
    };
    let second = record_size_padded(0);
    assert_eq!(resealed(&|_| {}), {
        let mut ok = batch.clone();
        ok.resize(batch.len() + 64, 0);
        ok
    });
    let gap = resealed(&|bytes| bytes[second + 8] += 1);
    assert_eq!(malformed(&gap), "the sequences of a batch are consecutive");
    let kind_zero = resealed(&|bytes| bytes[second + 24..second + 26].fill(0));
    assert_eq!(malformed(&kind_zero), "kind 0 is never written");
    let unknown_flag = resealed(&|bytes| bytes[second + 29] = 1);
    assert_eq!(malformed(&unknown_flag), "only START_OF_BATCH and END_OF_BATCH are defined");
    let no_start = resealed(&|bytes| bytes[28] = 0);
    assert_eq!(
        malformed(&no_start),
        "START_OF_BATCH flags the first record of a batch, and only it"
    );
    let stray_checksum = resealed(&|bytes| bytes[second + 4] = 1);
    assert_eq!(malformed(&stray_checksum), "only a batch's last record carries a checksum");
    let padding = resealed(&|bytes| bytes[second + 32 + 7] = 1);
    assert_eq!(malformed(&padding), "padding must be zero");
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
    short_length[0] = 31;
    assert!(matches!(
        check_batch(&short_length),
        BatchCheck::Invalid(InvalidBatch {
            reason: InvalidRecord::LengthOutOfBounds { length: 31, .. },
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
        "a record cut short by the end of the segment"
    );
    // A slice that ends inside the padding of a record that is not the last of its batch
    // (found by the `scan` fuzz target: the walk stepped past the slice's end and read out of
    // bounds). The first record is 32 + 13 = 45 bytes, padded to 48.
    let mut buffer = vec![0u8; 256];
    let records = [(fields(1), &[1u8; 13][..]), (fields(2), &[2u8; 5][..])];
    encode_batch(&mut buffer, &records).unwrap();
    assert_eq!(
        check_batch(&buffer[..46]),
        BatchCheck::Invalid(InvalidBatch {
            offset: 0,
            reason: InvalidRecord::LengthOutOfBounds { length: 45, remaining: 46 }
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
        let size: usize = payloads.iter().map(|payload| record_size_padded(payload.len())).sum();
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
        let end = 32 + payload_len;
        assert!(matches!(check_batch(&record), BatchCheck::Batch(_)), "payload {payload_len}");
        for position in end..record.len() {
            let mut damaged = record.clone();
            damaged[position] = 0x80;
            // The padding is not under the checksum of a batch's last record: the rule alone
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
