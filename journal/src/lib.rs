//! `keel-journal`: the only durable artefacts of keel, a segmented append-only journal of the
//! input and snapshot files.
//!
//! The byte layout and the recovery rules are specified in `docs/journal-format.md`; this
//! crate implements exactly that:
//!
//! - [`format`]: encoding and checksum-first decoding of segment headers, records and snapshot
//!   headers;
//! - [`JournalWriter`]: the single writer (a [`WriterLock`]), appending batches and making each
//!   durable in one call per its [`Durability`] tier, rolling to segments a background thread
//!   allocates; opening it recovers the tail per the decision table ([`scan`]) and reports
//!   what it truncated ([`OpenReport`]);
//! - [`JournalReader`] (from any sequence) and [`Tailer`] (following a live journal), handing
//!   out payloads as slices of the mapping;
//! - [`SnapshotStore`]: snapshot files written atomically, loaded newest valid first;
//! - [`storage`]: the file operations under the writer, and [`storage::FaultyStorage`], which
//!   injects faults for tests.
//!
//! ```
//! use keel_journal::format::{check_batch, encode_batch, BatchCheck, RecordFields};
//!
//! let mut segment = vec![0u8; 4096];
//! let fields = |sequence| RecordFields { sequence, timestamp_ns: 1_700_000_000_000_000_000, kind: 7, version: 1 };
//! let written = encode_batch(&mut segment, &[(fields(1), b"open 42"), (fields(2), b"deposit 100")])?;
//! match check_batch(&segment) {
//!     BatchCheck::Batch(batch) => {
//!         let payloads: Vec<&[u8]> = batch.iter().map(|record| record.payload).collect();
//!         assert_eq!(payloads, [&b"open 42"[..], &b"deposit 100"[..]]);
//!         assert_eq!((batch.first_sequence, batch.last_sequence, batch.size()), (1, 2, written));
//!     }
//!     other => panic!("expected a batch, got {other:?}"),
//! }
//! // One flipped bit anywhere and the whole batch is refused, before any field is trusted.
//! segment[20] ^= 0x10;
//! assert!(matches!(check_batch(&segment), BatchCheck::Invalid(_)));
//! # Ok::<(), keel_journal::format::FormatError>(())
//! ```

// `unsafe` is denied everywhere but the `mmap` module, which maps segment files.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod error;
pub mod format;
pub mod lock;
mod mmap;
mod reader;
mod repair;
mod retention;
pub mod scan;
pub mod segment;
pub mod snapshot;
pub mod storage;
pub mod time;
mod verify;
mod writer;

pub use error::JournalError;
pub use lock::WriterLock;
pub use reader::{BatchRun, JournalReader, Tailer};
pub use repair::{Repair, RepairPlan, DROPPED_DIRECTORY};
pub use snapshot::{LoadedSnapshot, SnapshotFile, SnapshotMeta, SnapshotStore};
pub use verify::{verify_journal, SegmentSummary, Verdict, Verification};
pub use writer::{
    journal_epoch, Durability, JournalOptions, JournalWriter, OpenReport, Retention, Truncation,
    DEFAULT_SEGMENT_SIZE,
};
