//! The state every handle of one ring shares, the barrier consumers wait on, and
//! [`RingControl`], the type-erased handle to halt a ring.

use crossbeam_utils::CachePadded;

use crate::ring_buffer::RingBuffer;
use crate::sequence::{minimum_sequence, Sequence};
use crate::sequencer::Sequencer;
use crate::sync::{Arc, AtomicBool, Ordering};
use crate::wait::{Interrupt, WaitStrategy};

/// The lifecycle flags, written once each and read on every wait.
struct Lifecycle {
    /// Set by `halt`: every waiter returns `Halted`, and nothing more is published.
    halted: AtomicBool,
    /// Set when the last producer is dropped, after its last publish: consumers drain up to
    /// the cursor and then stop with `Closed`.
    closed: AtomicBool,
}

pub(crate) struct Shared<E, S, W> {
    pub(crate) buffer: RingBuffer<E>,
    pub(crate) sequencer: S,
    pub(crate) wait: W,
    lifecycle: CachePadded<Lifecycle>,
}

impl<E, S: Sequencer, W: WaitStrategy> Shared<E, S, W> {
    pub(crate) fn new(buffer: RingBuffer<E>, wait: W) -> Self {
        let sequencer = S::with_capacity(buffer.capacity());
        let lifecycle =
            Lifecycle { halted: AtomicBool::new(false), closed: AtomicBool::new(false) };
        Self { buffer, sequencer, wait, lifecycle: CachePadded::new(lifecycle) }
    }

    #[inline(always)]
    pub(crate) fn capacity(&self) -> u64 {
        self.buffer.capacity() as u64
    }

    #[inline(always)]
    pub(crate) fn is_halted(&self) -> bool {
        self.lifecycle.halted.load(Ordering::Acquire)
    }

    pub(crate) fn halt(&self) {
        self.lifecycle.halted.store(true, Ordering::SeqCst);
        self.wait.signal_all();
    }

    /// Called once, by the last producer to go, after its last publish.
    pub(crate) fn close(&self) {
        self.lifecycle.closed.store(true, Ordering::SeqCst);
        self.wait.signal_all();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lifecycle.closed.load(Ordering::Acquire)
    }

    /// Why a consumer waiting for `next` should stop waiting, if it should.
    #[inline]
    pub(crate) fn consumer_interrupt(&self, next: u64) -> Option<Interrupt> {
        if self.is_halted() {
            return Some(Interrupt::Halted);
        }
        // `closed` is stored after the last publish, so once it reads true the cursor is final.
        if self.is_closed() && self.sequencer.cursor() < next {
            return Some(Interrupt::Closed);
        }
        None
    }

    /// Why a producer waiting for free slots should stop waiting, if it should.
    #[inline]
    pub(crate) fn producer_interrupt(&self) -> Option<Interrupt> {
        self.is_halted().then_some(Interrupt::Halted)
    }
}

/// What a consumer waits on: the published sequences (the sequencer knows which are really
/// published), or, for a consumer that runs after others, the minimum of their sequences.
pub(crate) struct SequenceBarrier<E, S, W> {
    pub(crate) shared: Arc<Shared<E, S, W>>,
    /// Empty for a first-stage consumer. Otherwise the sequences of the stages this one runs
    /// after; each of them only ever passes published sequences.
    dependencies: Box<[Arc<Sequence>]>,
}

impl<E, S: Sequencer, W: WaitStrategy> SequenceBarrier<E, S, W> {
    pub(crate) fn new(shared: Arc<Shared<E, S, W>>, dependencies: Box<[Arc<Sequence>]>) -> Self {
        Self { shared, dependencies }
    }

    /// The highest sequence at or above `next - 1`, and at most `last`, that this barrier
    /// lets through now.
    #[inline(always)]
    pub(crate) fn available(&self, next: u64, last: u64) -> u64 {
        if self.dependencies.is_empty() {
            self.shared.sequencer.available(next, last)
        } else {
            minimum_sequence(&self.dependencies, u64::MAX).min(last)
        }
    }

    /// Waits, per the wait strategy, until `next` may be read; returns the highest sequence
    /// that may be read (a batch), at most `last`.
    #[inline]
    pub(crate) fn wait_for(&self, next: u64, last: u64) -> Result<u64, Interrupt> {
        self.shared.wait.wait_for(
            next,
            || self.available(next, last),
            || self.shared.consumer_interrupt(next),
        )
    }
}

/// The operations on a ring that do not depend on its event type: halting it and reading its
/// progress. Cheap to clone; any thread may hold one.
#[derive(Clone)]
pub struct RingControl {
    target: Arc<dyn ControlTarget>,
}

pub(crate) trait ControlTarget: Send + Sync {
    fn halt(&self);
    fn wake_all(&self);
    fn is_halted(&self) -> bool;
    fn is_closed(&self) -> bool;
    fn cursor(&self) -> u64;
    fn capacity(&self) -> usize;
}

impl<E, S, W> ControlTarget for Shared<E, S, W>
where
    E: Send + Sync,
    S: Sequencer,
    W: WaitStrategy,
{
    fn halt(&self) {
        Shared::halt(self);
    }
    fn wake_all(&self) {
        self.wait.signal_all();
    }
    fn is_halted(&self) -> bool {
        Shared::is_halted(self)
    }
    fn is_closed(&self) -> bool {
        Shared::is_closed(self)
    }
    fn cursor(&self) -> u64 {
        self.sequencer.cursor()
    }
    fn capacity(&self) -> usize {
        self.buffer.capacity()
    }
}

impl RingControl {
    pub(crate) fn new<E, S, W>(shared: &Arc<Shared<E, S, W>>) -> Self
    where
        E: Send + Sync + 'static,
        S: Sequencer,
        W: WaitStrategy,
    {
        let target: Arc<dyn ControlTarget> = shared.clone();
        Self { target }
    }

    /// Halts the ring: every waiting producer and consumer returns, processors stop after the
    /// event in hand, and every later publish fails with [`RingError::Halted`]. Events
    /// published but not yet processed stay unprocessed; each consumer's sequence says how far
    /// it got. Halting is final.
    ///
    /// [`RingError::Halted`]: crate::RingError::Halted
    pub fn halt(&self) {
        self.target.halt();
    }

    /// Wakes every thread waiting on the ring, so that it checks again what it waits for:
    /// a poller in [`EventPoller::wait_or`](crate::EventPoller::wait_or) calls its `wake`.
    pub fn wake_all(&self) {
        self.target.wake_all();
    }

    /// Whether the ring was halted.
    pub fn is_halted(&self) -> bool {
        self.target.is_halted()
    }

    /// Whether every producer is gone (consumers drain, then stop).
    pub fn is_closed(&self) -> bool {
        self.target.is_closed()
    }

    /// The highest sequence claimed by a producer.
    pub fn cursor(&self) -> u64 {
        self.target.cursor()
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.target.capacity()
    }
}

impl std::fmt::Debug for RingControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingControl")
            .field("cursor", &self.cursor())
            .field("capacity", &self.capacity())
            .field("halted", &self.is_halted())
            .field("closed", &self.is_closed())
            .finish()
    }
}
