//! [`Sequence`]: a 64-bit progress counter on its own cache line.

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, Ordering};

/// The progress of a producer or a consumer: the highest sequence it has published or processed.
///
/// Sequences start at 1; the value 0 means "nothing yet". A `Sequence` sits alone on its cache
/// line (`CachePadded`), because one thread writes it on every batch while others read it, and
/// sharing the line with anything else would make both sides pay for each other's writes.
pub struct Sequence {
    value: CachePadded<AtomicU64>,
}

impl Sequence {
    /// The value of a sequence that has seen nothing.
    pub const INITIAL: u64 = 0;

    /// A sequence at `value`.
    pub fn new(value: u64) -> Self {
        Self { value: CachePadded::new(AtomicU64::new(value)) }
    }

    /// The current value, with acquire ordering: every write made before the matching
    /// [`set`](Self::set) is visible after this returns.
    #[inline(always)]
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Acquire)
    }

    /// Publishes `value` with release ordering.
    #[inline(always)]
    pub fn set(&self, value: u64) {
        self.value.store(value, Ordering::Release);
    }

    /// Adds `delta` atomically and returns the previous value (multi-producer claims).
    #[inline(always)]
    pub(crate) fn fetch_add(&self, delta: u64) -> u64 {
        self.value.fetch_add(delta, Ordering::AcqRel)
    }

    /// Compare-and-swap (multi-producer `try_publish`).
    #[inline(always)]
    pub(crate) fn compare_exchange(&self, current: u64, new: u64) -> Result<u64, u64> {
        self.value.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
    }
}

impl Default for Sequence {
    fn default() -> Self {
        Self::new(Self::INITIAL)
    }
}

impl std::fmt::Debug for Sequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Sequence").field(&self.get()).finish()
    }
}

/// The minimum of `sequences`, or `default` when there are none.
#[inline]
pub(crate) fn minimum_sequence(sequences: &[crate::sync::Arc<Sequence>], default: u64) -> u64 {
    let mut minimum = default;
    for sequence in sequences {
        minimum = minimum.min(sequence.get());
    }
    minimum
}
