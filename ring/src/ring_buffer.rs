//! The pre-allocated slot storage. Every `unsafe` of the slot protocol lives here, behind
//! functions whose contracts the sequencers and barriers uphold.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

use crate::sync::UnsafeCell;

/// Where the slot array starts: a multiple of 128 bytes, two cache lines (the adjacent-line
/// prefetcher fetches lines in pairs). A plain `Box<[E]>` starts wherever the allocator puts it
/// (seen here: 16, 32 or 48 bytes past a line for the same size), and then every other
/// 32-byte event straddles two cache lines and costs two line transfers between cores.
const SLOTS_ALIGNMENT: usize = 128;

/// A power-of-two array of pre-allocated events, indexed by sequence.
pub(crate) struct RingBuffer<E> {
    /// Invariant: points to `capacity` initialized slots, allocated with `layout` (or dangling
    /// when `layout` has size zero), owned by this buffer.
    slots: NonNull<UnsafeCell<E>>,
    layout: Layout,
    /// Invariant: a power of two, and `mask == capacity - 1`.
    capacity: usize,
    mask: u64,
}

// SAFETY: the ring hands out `&E` to consumer threads and `&mut E` to the producer that claimed
// a slot; the sequencing protocol (see `read` and `write`) keeps those accesses apart in time.
// Sending events across threads needs `E: Send`; reading one from several consumers at once
// (A and B in parallel) needs `E: Sync`.
unsafe impl<E: Send + Sync> Sync for RingBuffer<E> {}
// SAFETY: owning the buffer owns the events; moving it moves them, which `E: Send` allows.
unsafe impl<E: Send> Send for RingBuffer<E> {}

/// Drops the slots written so far and frees the allocation if the event factory panics.
struct PartialSlots<E> {
    slots: NonNull<UnsafeCell<E>>,
    layout: Layout,
    initialized: usize,
}

impl<E> Drop for PartialSlots<E> {
    fn drop(&mut self) {
        // SAFETY: exactly the first `initialized` slots were written, and the allocation was
        // made with `layout` (when it has a size).
        unsafe {
            std::ptr::slice_from_raw_parts_mut(self.slots.as_ptr(), self.initialized)
                .drop_in_place();
        }
        if self.layout.size() != 0 {
            // SAFETY: allocated in `RingBuffer::new` with this very layout, not freed since.
            unsafe { dealloc(self.slots.as_ptr().cast(), self.layout) };
        }
    }
}

impl<E> RingBuffer<E> {
    /// Allocates `capacity` events from `factory`. `capacity` must be a power of two; the
    /// caller (the builder) has validated it and bounded it by `CAPACITY_MAX`.
    pub(crate) fn new(capacity: usize, mut factory: impl FnMut() -> E) -> Self {
        assert!(capacity.is_power_of_two(), "capacity {capacity} is validated by the builder");
        let layout = Layout::array::<UnsafeCell<E>>(capacity)
            .and_then(|layout| layout.align_to(SLOTS_ALIGNMENT))
            .expect("a capacity bounded by CAPACITY_MAX fits a layout");
        let slots = if layout.size() == 0 {
            NonNull::dangling()
        } else {
            // SAFETY: the layout has a non-zero size.
            let pointer = unsafe { alloc(layout) }.cast::<UnsafeCell<E>>();
            NonNull::new(pointer).unwrap_or_else(|| handle_alloc_error(layout))
        };
        let mut partial = PartialSlots { slots, layout, initialized: 0 };
        for index in 0..capacity {
            let event = UnsafeCell::new(factory());
            // SAFETY: `index < capacity`, so the offset stays inside the allocation.
            let slot = unsafe { slots.as_ptr().add(index) };
            // SAFETY: `slot` is in bounds, aligned (the layout's alignment is at least the
            // slot type's), and not written yet, so nothing is overwritten without a drop.
            unsafe { slot.write(event) };
            partial.initialized = index + 1;
        }
        std::mem::forget(partial);
        Self { slots, layout, capacity, mask: capacity as u64 - 1 }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    #[inline(always)]
    fn slot(&self, sequence: u64) -> &UnsafeCell<E> {
        let index = (sequence & self.mask) as usize;
        // SAFETY: `index <= mask < capacity`, so the offset stays inside the allocation.
        let slot = unsafe { self.slots.as_ptr().add(index) };
        // SAFETY: all `capacity` slots are initialized and live as long as `self`; the
        // reference is shared, and mutation goes through the `UnsafeCell`.
        unsafe { &*slot }
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

    /// Calls `f` with an exclusive reference to each event of `first..=last`, in order: at most
    /// two contiguous runs of slots (the batch may wrap), walked by pointer.
    ///
    /// # Safety
    /// As for [`write`](Self::write), for every sequence of the range; and the range holds at
    /// most `capacity` sequences.
    #[inline(always)]
    pub(crate) unsafe fn write_range(&self, first: u64, last: u64, mut f: impl FnMut(&mut E, u64)) {
        debug_assert!(first <= last && last - first < self.capacity as u64);
        let mut sequence = first;
        while sequence <= last {
            let index = (sequence & self.mask) as usize;
            // The run ends at the batch's end or the array's, whichever comes first.
            let run = ((last - sequence + 1) as usize).min(self.capacity - index);
            // SAFETY: `index + run <= capacity`, so every offset below stays in the allocation.
            let start = unsafe { self.slots.as_ptr().add(index) };
            for offset in 0..run {
                // SAFETY: `offset < run`, inside the allocation (see above).
                let slot = unsafe { start.add(offset) };
                // SAFETY: an initialized slot that lives as long as `self`; mutation goes
                // through the cell.
                let slot = unsafe { &*slot };
                slot.with_mut(|pointer| {
                    // SAFETY: per this function's contract the claiming producer is the only
                    // thread touching these slots until it publishes them.
                    f(unsafe { &mut *pointer }, sequence + offset as u64)
                });
            }
            sequence += run as u64;
        }
    }

    /// The address of the first slot, for the alignment test.
    #[cfg(all(test, not(loom)))]
    fn base_address(&self) -> usize {
        self.slots.as_ptr() as usize
    }
}

impl<E> Drop for RingBuffer<E> {
    fn drop(&mut self) {
        // Dropping a `PartialSlots` covering every slot drops them and frees the allocation.
        drop(PartialSlots { slots: self.slots, layout: self.layout, initialized: self.capacity });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn slots_start_on_a_128_byte_boundary_whatever_the_heap_did_before() {
        let mut keep = Vec::new();
        for capacity in [1usize, 2, 64, 1024, 65536] {
            // Unaligned allocations in between shift where the allocator would put a plain box.
            keep.push(vec![0u8; 24]);
            let buffer = RingBuffer::new(capacity, || [0u64; 4]);
            assert_eq!(buffer.base_address() % SLOTS_ALIGNMENT, 0, "capacity {capacity}");
        }
    }

    #[test]
    fn every_event_is_dropped_once_with_the_buffer() {
        let token = Rc::new(());
        let buffer = RingBuffer::new(8, || token.clone());
        assert_eq!(Rc::strong_count(&token), 9);
        drop(buffer);
        assert_eq!(Rc::strong_count(&token), 1);
    }

    #[test]
    fn a_panicking_factory_drops_what_it_made_and_leaks_nothing() {
        let token = Rc::new(());
        let mut made = 0;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            RingBuffer::new(8, || {
                made += 1;
                assert!(made <= 5, "factory failure");
                token.clone()
            })
        }));
        assert!(result.is_err());
        assert_eq!(Rc::strong_count(&token), 1, "the five events made were dropped");
    }

    #[test]
    fn write_range_visits_each_sequence_once_in_order_across_the_wrap() {
        let buffer = RingBuffer::new(8, || 0u64);
        for (first, last) in [(1u64, 8u64), (6, 11), (8, 8), (13, 20)] {
            let mut visited = Vec::new();
            // SAFETY: single-threaded test; nothing else touches the slots.
            unsafe {
                buffer.write_range(first, last, |slot, sequence| {
                    *slot = sequence;
                    visited.push(sequence);
                })
            };
            assert!(visited.iter().copied().eq(first..=last));
            for sequence in first..=last {
                // SAFETY: as above.
                assert_eq!(unsafe { buffer.read(sequence, |value| *value) }, sequence);
            }
        }
    }

    #[test]
    fn zero_sized_events_need_no_allocation() {
        let buffer = RingBuffer::new(16, || ());
        // SAFETY: single-threaded test; nothing else touches the slots.
        unsafe { buffer.write(3, |_| ()) };
        // SAFETY: as above.
        unsafe { buffer.read(3, |_| ()) };
        assert_eq!(buffer.capacity(), 16);
    }
}
