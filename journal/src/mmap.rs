//! The memory mappings of segment and snapshot files, and a prefetch hint for reading them: the
//! only `unsafe` code of the journal.
//!
//! Three facts make the mappings sound to use as keel uses them, and every `unsafe` block below
//! but the prefetch hint's (which reads nothing) relies on one of them:
//!
//! 1. **Segment files never change size while mapped.** They are pre-allocated to their full
//!    size before anyone maps them, and nothing in keel truncates or extends a segment file
//!    afterwards (recovery zeroes bytes, it never shortens a file). So no access within the
//!    mapping's length can fault with `SIGBUS` for lack of a page.
//! 2. **Bytes that a reader hands out are never written again.** A writer publishes a record by
//!    storing its `length` last, with release ordering, after every other byte of it; readers
//!    load the length with acquire ordering and read a record only when it is non-zero, and
//!    then only the record's own bytes. The bytes past the published end may be changing under
//!    a reader's mapping (the writer's mapping or `pwrite` in another thread or process), and
//!    readers never form a reference to them that outlives the check of one record.
//! 3. **A snapshot file never changes once it has its name.** It is written whole under a
//!    temporary name, synced and renamed; nothing in keel writes, truncates or extends it
//!    afterwards. Removing or renaming it (retention, setting it aside) leaves a mapping of it
//!    intact: the mapping holds the file, not its name.
//!
//! An operator's `repair`, which zeroes valid records, takes the writer lock but cannot stop
//! readers in other processes; it is documented as an offline operation.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use memmap2::{Mmap, MmapMut, MmapOptions};

/// A page, for pre-faulting by touch when `MADV_POPULATE_WRITE` is not available.
const PAGE_SIZE: usize = 4096;

/// Asks the processor to start loading the cache line of `bytes` at `offset` (nothing when out
/// of bounds), without waiting for it. The `PageCache` writer asks for the line some records
/// ahead of the one it writes, whose page the kernel zeroed long before, so that the miss
/// overlaps the work on the records between. A hint reads nothing as far as the program is
/// concerned, so it may name bytes of a mapping that another thread is reading or writing, and
/// it never faults.
#[inline(always)]
pub(crate) fn prefetch(bytes: &[u8], offset: usize) {
    #[cfg(target_arch = "x86_64")]
    if offset < bytes.len() {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 processor has. The pointer is
        // in bounds of `bytes` (checked), and a prefetch neither reads nor writes memory in the
        // language's sense, so it races with no writer.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().wrapping_add(offset).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, offset);
}

/// A writable shared mapping of a whole segment file: the `PageCache` tier writes records
/// into it.
#[derive(Debug)]
pub(crate) struct WritableMap {
    map: MmapMut,
}

impl WritableMap {
    /// Maps all of `file` (which must be pre-allocated to its final size) for writing.
    pub(crate) fn new(file: &File) -> io::Result<Self> {
        // SAFETY: fact 1 of the module comment: the file is pre-allocated and is never
        // truncated while mapped, so the mapping stays backed by the file's pages. The only
        // writer of a segment is the journal writer that holds the directory's lock.
        let map = unsafe { MmapOptions::new().map_mut(file)? };
        Ok(Self { map })
    }

    /// Faults every page of the mapping in, writable, so that appends never take a page fault:
    /// `MADV_POPULATE_WRITE` where the kernel has it (Linux 5.14), else a store to each page.
    /// The file reads as zeros (written or reserved), so storing a zero changes no byte.
    pub(crate) fn prefault(&mut self) {
        #[cfg(target_os = "linux")]
        if self.map.advise(memmap2::Advice::PopulateWrite).is_ok() {
            return;
        }
        for page in self.map.chunks_mut(PAGE_SIZE) {
            page[0] = 0;
        }
    }

    /// The mapped bytes, to write unpublished records into.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// Publishes the record at `offset` by storing its `length` with release ordering: every
    /// byte written before (the record's header fields, checksum and payload) is visible to a
    /// reader that loads this length with acquire ordering and sees it non-zero.
    pub(crate) fn publish_length(&mut self, offset: usize, length: u32) {
        assert!(offset.is_multiple_of(8) && offset + 4 <= self.map.len(), "record offset");
        let pointer = self.map.as_mut_ptr().wrapping_add(offset).cast::<u32>();
        // SAFETY: `pointer` is in bounds (asserted) and 4-byte aligned: the mapping is
        // page-aligned and `offset` a multiple of 8. `&mut self` guarantees no Rust reference
        // into the mapping is alive in this process while the atomic exists; readers in other
        // mappings only access these bytes atomically (fact 2).
        let length_field = unsafe { AtomicU32::from_ptr(pointer) };
        length_field.store(length, Ordering::Release);
    }
}

/// A read-only mapping of a whole snapshot file, its pages read in when it is made: loading
/// reads every byte (the checksum, then the decoding), so nothing is gained by faulting them in
/// one at a time. Reading the file into the heap instead cost a copy of every byte and, for a
/// payload of hundreds of megabytes, as many fresh pages, each zeroed by a page fault and
/// unmapped again after the decoding: a fifth of the load of a ledger's 562 MB snapshot
/// (BENCHMARKS.md, "snapshots are loaded from a mapping").
#[derive(Debug)]
pub(crate) struct SnapshotMap {
    map: Mmap,
}

impl SnapshotMap {
    /// Maps all of `file` for reading (an empty file gives no bytes).
    pub(crate) fn new(file: &File) -> io::Result<Self> {
        // SAFETY: fact 3: a snapshot file keeps its size and its bytes while mapped, so every
        // byte of the mapping stays backed by the file and no one writes it.
        let map = unsafe { MmapOptions::new().populate().map(file)? };
        Ok(Self { map })
    }

    /// The file's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }
}

/// A read-only shared mapping of a whole segment file, for readers, tailers and recovery.
#[derive(Debug)]
pub(crate) struct ReadableMap {
    map: Mmap,
}

impl ReadableMap {
    /// Maps all of `file` for reading.
    pub(crate) fn new(file: &File) -> io::Result<Self> {
        // SAFETY: fact 1: the file keeps its size while mapped. Bytes past the published end
        // may change under the mapping; readers only look at them through `load_length` and
        // the checksum of one record at a time (fact 2).
        let map = unsafe { Mmap::map(file)? };
        Ok(Self { map })
    }

    /// The mapped bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The length field of the record at `offset`, loaded with acquire ordering (the pair of
    /// [`WritableMap::publish_length`]).
    pub(crate) fn load_length(&self, offset: usize) -> u32 {
        assert!(offset.is_multiple_of(8) && offset + 4 <= self.map.len(), "record offset");
        let pointer = self.map.as_ptr().wrapping_add(offset).cast::<u32>().cast_mut();
        // SAFETY: in bounds and 4-byte aligned (asserted; the mapping is page-aligned). The
        // atomic is only loaded from, and the writer only stores to these bytes atomically.
        let length_field = unsafe { AtomicU32::from_ptr(pointer) };
        length_field.load(Ordering::Acquire)
    }
}
