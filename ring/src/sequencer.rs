//! Sequencers: how producers claim sequences and how consumers learn which are published.
//!
//! Both keep a *cursor*, the highest sequence claimed. With one producer, claimed and
//! published are the same moment, so the cursor is all a consumer needs. With several, a
//! sequence can be claimed long before it is published, so each slot also carries the sequence
//! last published into it, and consumers scan those marks (and leave the cursor, the line the
//! producers' atomic adds contend for, alone).

use crossbeam_utils::CachePadded;

use crate::sequence::Sequence;
use crate::sync::{AtomicU64, Ordering};

mod sealed {
    pub trait Sealed {}
}

/// The consumer-facing side of a sequencer. Sealed: the ring's safety rests on its contract.
pub trait Sequencer: sealed::Sealed + Send + Sync + 'static {
    #[doc(hidden)]
    fn with_capacity(capacity: usize) -> Self;

    /// The highest sequence claimed by any producer (0 before the first).
    fn cursor(&self) -> u64;

    /// The highest `s` at or above `next - 1`, and at most `last`, such that every sequence in
    /// `next ..= s` is published, for a consumer that has read everything before `next` and
    /// that the producers' gating waits for (directly, or through a consumer behind it): with
    /// acquire ordering, so the events up to `s` are visible. `last` is the most the consumer
    /// will take (`u64::MAX` for everything): nothing past it is looked at.
    fn available(&self, next: u64, last: u64) -> u64;
}

/// The sequencer of a ring with exactly one producer: no atomic read-modify-write anywhere on
/// the publishing path, just a release store of the cursor per publish or batch.
pub struct SingleProducerSequencer {
    /// Invariant: every sequence at or below the cursor is published.
    pub(crate) cursor: Sequence,
}

impl sealed::Sealed for SingleProducerSequencer {}

impl Sequencer for SingleProducerSequencer {
    fn with_capacity(_capacity: usize) -> Self {
        Self { cursor: Sequence::default() }
    }

    #[inline(always)]
    fn cursor(&self) -> u64 {
        self.cursor.get()
    }

    #[inline(always)]
    fn available(&self, _next: u64, last: u64) -> u64 {
        self.cursor.get().min(last)
    }
}

impl std::fmt::Debug for SingleProducerSequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleProducerSequencer").field("cursor", &self.cursor.get()).finish()
    }
}

/// The sequencer of a ring with any number of producers: a claim is one atomic add on the
/// cursor, and publishing marks each slot with its sequence.
pub struct MultiProducerSequencer {
    /// The highest sequence claimed. Claimed is not published: see `published`.
    pub(crate) cursor: Sequence,
    /// For each slot, the sequence last published into it (0 before the first). A full 64-bit
    /// sequence rather than LMAX's 32-bit lap counter, so a mark can never be mistaken for one
    /// from another lap however long the ring runs.
    published: Box<[AtomicU64]>,
    mask: u64,
    /// A cached copy of the minimum gating sequence, shared by all producers. It may be stale
    /// (lower than the truth), never higher: producers reload it only when it says "full".
    /// Updated with release and read with acquire, so a producer that trusts another's copy
    /// also inherits its happens-before edge with the consumers' reads of the slots.
    pub(crate) gating_cache: CachePadded<AtomicU64>,
}

impl sealed::Sealed for MultiProducerSequencer {}

impl MultiProducerSequencer {
    /// Marks `sequence` published (release: the slot's contents are visible with the mark).
    #[inline(always)]
    pub(crate) fn mark_published(&self, sequence: u64) {
        self.published[(sequence & self.mask) as usize].store(sequence, Ordering::Release);
    }

    #[inline(always)]
    fn is_published(&self, sequence: u64) -> bool {
        self.published[(sequence & self.mask) as usize].load(Ordering::Acquire) == sequence
    }
}

impl Sequencer for MultiProducerSequencer {
    fn with_capacity(capacity: usize) -> Self {
        let published: Box<[AtomicU64]> = (0..capacity).map(|_| AtomicU64::new(0)).collect();
        Self {
            cursor: Sequence::default(),
            published,
            mask: capacity as u64 - 1,
            gating_cache: CachePadded::new(AtomicU64::new(0)),
        }
    }

    #[inline(always)]
    fn cursor(&self) -> u64 {
        self.cursor.get()
    }

    /// Scans the marks from `next`, without reading the cursor. The cursor's line is where
    /// every claim does its atomic add; a consumer that read it on every poll pulled the line
    /// away from the producers, and each claim then waited a cross-core transfer for it (on a
    /// two-vCPU VM, most of a single producer's time at saturation). The marks need no cursor:
    /// a slot's mark is the sequence last published into it, and no producer can publish
    /// `next + capacity` or later before this consumer passes `next` (a claim may run ahead,
    /// but its producer waits for room before it writes the slot), so the slot of any `s` in
    /// `next ..= next + mask` holds `s` exactly when `s` is published, and an older sequence
    /// otherwise.
    ///
    /// The scan stops at `last`, the most the consumer will take. A consumer that takes a few
    /// events at a time from a full ring otherwise read every slot's mark on each poll: the
    /// whole ring's marks for each few events. The engine's pipelined journaller, which takes
    /// no more than the commands up to the next checkpoint, ran at half its speed for it.
    #[inline]
    fn available(&self, next: u64, last: u64) -> u64 {
        let last = last.min(next + self.mask);
        let mut sequence = next;
        while sequence <= last {
            if !self.is_published(sequence) {
                return sequence - 1;
            }
            sequence += 1;
        }
        last
    }
}

impl std::fmt::Debug for MultiProducerSequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiProducerSequencer")
            .field("cursor", &self.cursor.get())
            .field("capacity", &self.published.len())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn published_through(sequencer: &MultiProducerSequencer, sequences: &[u64]) {
        for &sequence in sequences {
            sequencer.mark_published(sequence);
        }
    }

    #[test]
    fn a_multi_producer_scan_stops_at_the_most_the_consumer_takes() {
        let sequencer = MultiProducerSequencer::with_capacity(16);
        published_through(&sequencer, &(1..=10).collect::<Vec<_>>());
        assert_eq!(sequencer.available(1, u64::MAX), 10);
        assert_eq!(sequencer.available(1, 4), 4);
        assert_eq!(sequencer.available(5, 7), 7);
        assert_eq!(sequencer.available(5, 5), 5);
        // Nothing past the published ones, however much is wanted.
        assert_eq!(sequencer.available(11, 20), 10);
        assert_eq!(sequencer.available(9, 20), 10);
    }

    #[test]
    fn a_multi_producer_scan_stops_at_the_first_unpublished_sequence_before_the_limit() {
        let sequencer = MultiProducerSequencer::with_capacity(16);
        published_through(&sequencer, &[1, 2, 3, 5, 6]);
        assert_eq!(sequencer.available(1, 10), 3);
        assert_eq!(sequencer.available(1, 2), 2);
        assert_eq!(sequencer.available(4, 10), 3);
        // A mark a lap behind is not the sequence of this lap.
        published_through(&sequencer, &[4, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        assert_eq!(sequencer.available(1, u64::MAX), 16);
        assert_eq!(sequencer.available(17, u64::MAX), 16);
        published_through(&sequencer, &[17]);
        assert_eq!(sequencer.available(17, u64::MAX), 17);
        assert_eq!(sequencer.available(17, 17), 17);
    }

    #[test]
    fn a_single_producer_cursor_is_capped_at_the_most_the_consumer_takes() {
        let sequencer = SingleProducerSequencer::with_capacity(16);
        sequencer.cursor.set(10);
        assert_eq!(sequencer.available(1, u64::MAX), 10);
        assert_eq!(sequencer.available(1, 4), 4);
        assert_eq!(sequencer.available(11, 20), 10);
    }
}
