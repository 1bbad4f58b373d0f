//! The pre-allocated slot storage. Every `unsafe` of the slot protocol lives here, behind two
//! functions whose contracts the sequencers and barriers uphold.

use crate::sync::UnsafeCell;

/// A power-of-two array of pre-allocated events, indexed by sequence.
pub(crate) struct RingBuffer<E> {
    /// Invariant: `slots.len()` is a power of two and `mask == slots.len() - 1`.
    slots: Box<[UnsafeCell<E>]>,
    mask: u64,
}

// SAFETY: the ring hands out `&E` to consumer threads and `&mut E` to the producer that claimed
// a slot; the sequencing protocol (see `read` and `write`) keeps those accesses apart in time.
// Sending events across threads needs `E: Send`; reading one from several consumers at once
// (A and B in parallel) needs `E: Sync`.
unsafe impl<E: Send + Sync> Sync for RingBuffer<E> {}
// SAFETY: owning the buffer owns the events; moving it moves them, which `E: Send` allows.
unsafe impl<E: Send> Send for RingBuffer<E> {}

impl<E> RingBuffer<E> {
    /// Allocates `capacity` events from `factory`. `capacity` must be a power of two; the
    /// caller (the builder) has validated it.
    pub(crate) fn new(capacity: usize, mut factory: impl FnMut() -> E) -> Self {
        assert!(capacity.is_power_of_two(), "capacity {capacity} is validated by the builder");
        let slots: Box<[UnsafeCell<E>]> =
            (0..capacity).map(|_| UnsafeCell::new(factory())).collect();
        Self { slots, mask: capacity as u64 - 1 }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    #[inline(always)]
    fn slot(&self, sequence: u64) -> &UnsafeCell<E> {
        // The mask keeps the index in bounds, so the bounds check below never fires; it is
        // kept (and is free after optimisation) rather than reaching for `get_unchecked`.
        &self.slots[(sequence & self.mask) as usize]
    }

    /// Calls `f` with a shared reference to the event at `sequence`.
    ///
    /// # Safety
    /// `sequence` must be published (the caller read a cursor or a dependency's sequence at or
    /// past it with acquire ordering), and the caller's own consumer sequence must still be
    /// below `sequence`, so that the producer's gating keeps it from claiming `sequence +
    /// capacity` until the caller is done.
    #[inline(always)]
    pub(crate) unsafe fn read<R>(&self, sequence: u64, f: impl FnOnce(&E) -> R) -> R {
        self.slot(sequence).with(|pointer| {
            // SAFETY: per this function's contract no producer writes this slot while the
            // caller reads it, and the write that published it happens-before this read.
            f(unsafe { &*pointer })
        })
    }

    /// Returns a shared reference to the event at `sequence`, for the poller's batch guard.
    ///
    /// # Safety
    /// As for [`read`](Self::read), for as long as the reference lives.
    #[inline(always)]
    pub(crate) unsafe fn get(&self, sequence: u64) -> &E {
        // SAFETY: forwarded to the caller; see this function's contract.
        self.slot(sequence).with(|pointer| unsafe { &*pointer })
    }

    /// Calls `f` with an exclusive reference to the event at `sequence`.
    ///
    /// # Safety
    /// The caller must have claimed `sequence` from the sequencer and not yet published it,
    /// and every gating consumer must have passed `sequence - capacity` (acquire ordering), so
    /// nobody else reads or writes the slot.
    #[inline(always)]
    pub(crate) unsafe fn write<R>(&self, sequence: u64, f: impl FnOnce(&mut E) -> R) -> R {
        self.slot(sequence).with_mut(|pointer| {
            // SAFETY: per this function's contract the claiming producer is the only thread
            // touching this slot until it publishes `sequence`.
            f(unsafe { &mut *pointer })
        })
    }
}
