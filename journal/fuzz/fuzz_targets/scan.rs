//! The recovery scan of one segment on arbitrary bytes: it never panics, it calls every
//! failure damage, and its verdict is consistent: truncating a torn tail where it says gives a
//! segment that scans clean with the same records, and a segment that is not the last is never
//! called torn.

#![no_main]

use std::path::Path;

use keel_journal::format::SEGMENT_HEADER_SIZE;
use keel_journal::scan::{scan_segment, SegmentEnd};
use libfuzzer_sys::fuzz_target;

/// The data region of the smallest segment (1 MiB, less its header).
const DATA_MAX: usize = (1 << 20) - SEGMENT_HEADER_SIZE;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(DATA_MAX)];
    let mut segment = vec![0u8; SEGMENT_HEADER_SIZE + data.len()];
    segment[SEGMENT_HEADER_SIZE..].copy_from_slice(data);
    let path = Path::new("fuzz.segment");
    for is_last in [true, false] {
        let scan = match scan_segment(path, &segment, 1, is_last, &mut |_| {}) {
            Ok(scan) => scan,
            Err(error) => {
                assert!(error.is_damage(), "{error}");
                continue;
            }
        };
        assert_eq!(scan.records, scan.last_sequence, "sequences start at 1");
        assert!(scan.end_offset as usize <= segment.len());
        match scan.end {
            SegmentEnd::Clean => {
                assert!(segment[scan.end_offset as usize..].iter().all(|&byte| byte == 0));
            }
            SegmentEnd::Torn(tail) => {
                assert!(is_last, "damage in a segment that is not the last is corruption");
                assert_eq!(tail.offset, scan.end_offset);
                let mut truncated = segment.clone();
                truncated[tail.offset as usize..tail.dirty_end as usize].fill(0);
                let again = scan_segment(path, &truncated, 1, true, &mut |_| {})
                    .expect("a truncated torn tail scans clean");
                assert_eq!(again.end, SegmentEnd::Clean);
                assert_eq!(again.records, scan.records);
            }
        }
    }
});
