//! [`EventPoller`]: a consumer that runs on the caller's own thread, for those who must
//! interleave consuming with other work (the engine's compact topology journals a whole batch,
//! makes it durable and only then applies it, two passes over the same slots).

use crate::sequence::Sequence;
use crate::sequencer::Sequencer;
use crate::shared::{RingControl, SequenceBarrier};
use crate::sync::Arc;
use crate::wait::{Interrupt, WaitStrategy};

/// A consumer polled by its owner. Its sequence gates producers like any processor's; a
/// [`Batch`] holds slots until it is dropped, and dropping it advances the sequence.
///
/// Dropping a poller that has not drained a closed ring halts the ring: its slots would
/// otherwise never be released, and every producer would wait for ever.
pub struct EventPoller<E, S: Sequencer, W: WaitStrategy> {
    barrier: SequenceBarrier<E, S, W>,
    sequence: Arc<Sequence>,
    /// The next sequence to hand out; always `sequence.get() + 1` between batches.
    next: u64,
}

impl<E: Send + Sync + 'static, S: Sequencer, W: WaitStrategy> EventPoller<E, S, W> {
    pub(crate) fn new(barrier: SequenceBarrier<E, S, W>, sequence: Arc<Sequence>) -> Self {
        let next = sequence.get() + 1;
        Self { barrier, sequence, next }
    }

    /// The events available now, at most `limit` of them, without waiting. `Ok(None)` when
    /// there are none; `Err(Closed)` once the ring is closed and drained, `Err(Halted)` once it
    /// is halted.
    pub fn poll(&mut self, limit: usize) -> Result<Option<Batch<'_, E, S, W>>, Interrupt> {
        assert!(limit > 0, "a poll limit of zero would never make progress");
        if self.barrier.shared.is_halted() {
            return Err(Interrupt::Halted);
        }
        let available = self.barrier.available(self.next, self.last_wanted(limit));
        if available < self.next {
            if let Some(interrupt) = self.barrier.shared.consumer_interrupt(self.next) {
                return Err(interrupt);
            }
            return Ok(None);
        }
        Ok(Some(self.batch(available, limit)))
    }

    /// Waits, per the ring's wait strategy, for at least one event; returns at most `limit`.
    pub fn wait(&mut self, limit: usize) -> Result<Batch<'_, E, S, W>, Interrupt> {
        assert!(limit > 0, "a poll limit of zero would never make progress");
        let available = self.barrier.wait_for(self.next, self.last_wanted(limit))?;
        Ok(self.batch(available, limit))
    }

    /// The last sequence of a batch of `limit` events from `next`: the barrier looks no
    /// further.
    fn last_wanted(&self, limit: usize) -> u64 {
        self.next.saturating_add(limit as u64 - 1)
    }

    fn batch(&mut self, available: u64, limit: usize) -> Batch<'_, E, S, W> {
        let first = self.next;
        let last = available.min(self.last_wanted(limit));
        Batch { poller: self, first, last }
    }

    /// Waits like [`wait`](Self::wait), but also returns `Ok(None)` as soon as `wake()` returns
    /// true: the owner's way to do other work (a snapshot on request, say) while no event
    /// comes. `wake` is called between checks of the ring; a waiter asleep in the
    /// [`Blocking`](crate::Blocking) strategy calls it again only once woken, by an event or
    /// by [`RingControl::wake_all`].
    pub fn wait_or(
        &mut self,
        limit: usize,
        mut wake: impl FnMut() -> bool,
    ) -> Result<Option<Batch<'_, E, S, W>>, Interrupt> {
        assert!(limit > 0, "a poll limit of zero would never make progress");
        let next = self.next;
        let last = self.last_wanted(limit);
        let mut woken = false;
        let barrier = &self.barrier;
        let waited = barrier.shared.wait.wait_for(
            next,
            || barrier.available(next, last),
            || {
                let interrupt = barrier.shared.consumer_interrupt(next);
                if interrupt.is_none() && wake() {
                    woken = true;
                    // Ends the wait; told apart from a real interrupt by `woken`.
                    return Some(Interrupt::Halted);
                }
                interrupt
            },
        );
        match waited {
            Ok(available) => Ok(Some(self.batch(available, limit))),
            Err(_) if woken => Ok(None),
            Err(interrupt) => Err(interrupt),
        }
    }

    /// Calls `handler(event, sequence, end_of_batch)` for each event available now (at most
    /// `limit`), then releases them. Returns how many it handled.
    pub fn poll_each(
        &mut self,
        limit: usize,
        mut handler: impl FnMut(&E, u64, bool),
    ) -> Result<usize, Interrupt> {
        match self.poll(limit)? {
            Some(batch) => Ok(batch.handle_each(&mut handler)),
            None => Ok(0),
        }
    }

    /// Waits, per the ring's wait strategy, for at least one event; then calls
    /// `handler(event, sequence, end_of_batch)` for each available one (at most `limit`) and
    /// releases them. Returns how many it handled.
    pub fn wait_each(
        &mut self,
        limit: usize,
        mut handler: impl FnMut(&E, u64, bool),
    ) -> Result<usize, Interrupt> {
        Ok(self.wait(limit)?.handle_each(&mut handler))
    }

    /// The last sequence this poller released.
    pub fn sequence(&self) -> u64 {
        self.sequence.get()
    }

    /// A handle to halt the ring or read its progress.
    pub fn control(&self) -> RingControl {
        RingControl::new(&self.barrier.shared)
    }
}

// Without the bounds of the public methods: a batch's `Drop`, which has none, calls it.
impl<E, S: Sequencer, W: WaitStrategy> EventPoller<E, S, W> {
    /// Releases every event up to `sequence` to the producers and later stages; the next
    /// batch starts after it.
    fn release_through(&mut self, sequence: u64) {
        self.sequence.set(sequence);
        self.next = sequence + 1;
        self.barrier.shared.wait.signal();
    }
}

impl<E, S: Sequencer, W: WaitStrategy> Drop for EventPoller<E, S, W> {
    fn drop(&mut self) {
        let shared = &self.barrier.shared;
        let drained = shared.is_closed() && self.sequence.get() >= shared.sequencer.cursor();
        if !drained {
            shared.halt();
        }
    }
}

impl<E, S: Sequencer, W: WaitStrategy> std::fmt::Debug for EventPoller<E, S, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPoller").field("sequence", &self.sequence.get()).finish()
    }
}

/// Published events `first..=last` held by a poller. They can be read any number of times;
/// dropping the batch releases them to the producers.
pub struct Batch<'a, E, S: Sequencer, W: WaitStrategy> {
    poller: &'a mut EventPoller<E, S, W>,
    first: u64,
    last: u64,
}

impl<E, S: Sequencer, W: WaitStrategy> Batch<'_, E, S, W> {
    /// The first sequence of the batch.
    pub fn first_sequence(&self) -> u64 {
        self.first
    }

    /// The last sequence of the batch.
    pub fn last_sequence(&self) -> u64 {
        self.last
    }

    /// The number of events (at least one).
    #[allow(clippy::len_without_is_empty)] // A batch is never empty.
    pub fn len(&self) -> usize {
        (self.last - self.first + 1) as usize
    }

    /// The event at `sequence`, which must lie in the batch.
    pub fn get(&self, sequence: u64) -> &E {
        assert!(
            (self.first..=self.last).contains(&sequence),
            "sequence {sequence} is outside the batch {}..={}",
            self.first,
            self.last
        );
        self.get_in_batch(sequence)
    }

    /// The event at `sequence`, known by the caller to lie in `first..=last`.
    fn get_in_batch(&self, sequence: u64) -> &E {
        debug_assert!((self.first..=self.last).contains(&sequence));
        // SAFETY: `sequence` is published (the barrier returned at least `last`) and this
        // poller's sequence is below `first` until the batch is dropped, which the borrow of
        // `self` outlives; so the producer cannot claim the slot again meanwhile.
        unsafe { self.poller.barrier.shared.buffer.get(sequence) }
    }

    /// Calls `handler(event, sequence, end_of_batch)` for each event through the slots' cells
    /// (which loom tracks, unlike the references `get` hands out), then releases the batch.
    /// Returns how many events it handled.
    fn handle_each(self, handler: &mut impl FnMut(&E, u64, bool)) -> usize {
        let (first, last) = (self.first, self.last);
        let buffer = &self.poller.barrier.shared.buffer;
        for current in first..=last {
            // SAFETY: the batch covers published sequences this poller has not released, so
            // no producer writes them until `self` is dropped below.
            unsafe { buffer.read(current, |event| handler(event, current, current == last)) };
        }
        self.len()
    }

    /// Takes into the batch the events published after it, without waiting, so that it holds
    /// at most `limit` in all; returns how many it took. With
    /// [`release_through`](Self::release_through), a batch becomes a window that a consumer
    /// slides along the ring: the engine's compact topology journals what arrives while it
    /// waits for replicas to acknowledge what it journaled before.
    pub fn extend(&mut self, limit: usize) -> usize {
        let next = self.last + 1;
        let limit_last = self.first + limit.max(1) as u64 - 1;
        if limit_last < next {
            return 0;
        }
        let available = self.poller.barrier.available(next, limit_last);
        if available < next {
            return 0;
        }
        let last = available.min(limit_last);
        let taken = (last - self.last) as usize;
        self.last = last;
        taken
    }

    /// Releases the events up to `sequence` to the producers and keeps the later ones:
    /// `sequence` must lie in `first_sequence()..last_sequence()`, for a batch is never empty
    /// (drop it to release everything).
    pub fn release_through(&mut self, sequence: u64) {
        assert!(
            (self.first..self.last).contains(&sequence),
            "release through {sequence} of the batch {}..={}: it must keep an event",
            self.first,
            self.last
        );
        self.poller.release_through(sequence);
        self.first = sequence + 1;
    }

    /// The events with their sequences, in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, &E)> + '_ {
        (self.first..=self.last).map(move |sequence| (sequence, self.get_in_batch(sequence)))
    }
}

impl<E, S: Sequencer, W: WaitStrategy> Drop for Batch<'_, E, S, W> {
    fn drop(&mut self) {
        self.poller.release_through(self.last);
    }
}

impl<E, S: Sequencer, W: WaitStrategy> std::fmt::Debug for Batch<'_, E, S, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("first", &self.first).field("last", &self.last).finish()
    }
}
