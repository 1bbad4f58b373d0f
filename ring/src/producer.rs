//! Producers: [`SingleProducer`] (one thread, no atomic read-modify-write),
//! [`MultiProducer`] (`Clone`, claims by atomic add), and [`SoleProducer`] (a multi-producer
//! ring's last handle, claiming as a single producer does).
//!
//! Each offers `publish` (waits while the ring is full, per the wait strategy), `try_publish`
//! ([`RingError::Full`] instead of waiting), and the same two for batches, whose slots are
//! written one by one and made visible together. Dropping the last producer *closes* the ring:
//! consumers process everything published and then stop.

use crate::error::RingError;
use crate::sequence::{minimum_sequence, Sequence};
use crate::sequencer::{MultiProducerSequencer, SingleProducerSequencer};
use crate::shared::{RingControl, Shared};
use crate::sync::{Arc, AtomicUsize, Ordering};
use crate::wait::{Interrupt, WaitStrategy};

/// Whether a claim may wait for free slots.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Claim {
    Wait,
    Try,
}

fn validate_batch(size: usize, capacity: u64) -> Result<u64, RingError> {
    if size == 0 || size as u64 > capacity {
        return Err(RingError::InvalidBatch { size, capacity: capacity as usize });
    }
    Ok(size as u64)
}

/// Waits until every gating sequence reaches `needed`; returns their minimum.
fn wait_for_gating<E, S, W: WaitStrategy>(
    shared: &Shared<E, S, W>,
    gating: &[Arc<Sequence>],
    needed: u64,
) -> Result<u64, RingError>
where
    S: crate::sequencer::Sequencer,
{
    shared
        .wait
        .wait_for_capacity(
            needed,
            || minimum_sequence(gating, u64::MAX),
            || shared.producer_interrupt(),
        )
        .map_err(|interrupt| match interrupt {
            Interrupt::Halted | Interrupt::Closed => RingError::Halted,
        })
}

/// The slow path of a claim by a producer that is alone on its ring (a [`SingleProducer`], a
/// [`SoleProducer`]), when `last` would pass its claim limit: reads the gating consumers, waits
/// for them if `mode` allows, and returns the new limit (their minimum plus the capacity).
#[cold]
#[inline(never)]
fn lone_claim_limit<E, S, W: WaitStrategy>(
    shared: &Shared<E, S, W>,
    gating: &[Arc<Sequence>],
    last: u64,
    mode: Claim,
) -> Result<u64, RingError>
where
    S: crate::sequencer::Sequencer,
{
    let capacity = shared.capacity();
    // Slot `last` last held `last - capacity`: every gating consumer must be past it.
    let needed = last - capacity;
    let mut minimum = minimum_sequence(gating, u64::MAX);
    if minimum < needed {
        if mode == Claim::Try {
            return Err(RingError::Full);
        }
        minimum = wait_for_gating(shared, gating, needed)?;
    }
    Ok(minimum + capacity)
}

/// The producer of a single-producer ring. Not `Clone`: a second producer would break the
/// sequencer's one assumption. Move it to the publishing thread.
pub struct SingleProducer<E, W: WaitStrategy> {
    shared: Arc<Shared<E, SingleProducerSequencer, W>>,
    /// The consumers whose progress frees slots: the stages nothing else runs after.
    gating: Box<[Arc<Sequence>]>,
    /// The last sequence published (this producer is the only writer of the cursor).
    published: u64,
    /// The highest sequence that may be claimed without looking at the consumers again: the
    /// gating minimum last read plus the capacity. Stale is fine (the consumers only move
    /// forward), so the gating sequences are read only when a claim would pass this.
    claim_limit: u64,
}

impl<E: Send + Sync + 'static, W: WaitStrategy> SingleProducer<E, W> {
    pub(crate) fn new(
        shared: Arc<Shared<E, SingleProducerSequencer, W>>,
        gating: Box<[Arc<Sequence>]>,
    ) -> Self {
        let claim_limit = shared.capacity();
        Self { shared, gating, published: 0, claim_limit }
    }

    /// Claims `size` sequences after the last published one; returns the last of them.
    #[inline(always)]
    fn claim(&mut self, size: u64, mode: Claim) -> Result<u64, RingError> {
        // One load of the cursor's own line, which this producer writes anyway.
        if self.shared.is_halted() {
            return Err(RingError::Halted);
        }
        let last = self.published + size;
        if last > self.claim_limit {
            self.claim_limit = lone_claim_limit(&self.shared, &self.gating, last, mode)?;
        }
        Ok(last)
    }

    #[inline(always)]
    fn commit(&mut self, last: u64) {
        self.shared.sequencer.cursor.set(last);
        self.shared.wait.signal();
        self.published = last;
    }

    /// Publishes one event, waiting while the ring is full. `update` fills the pre-allocated
    /// event in place and is told its sequence. Returns the sequence.
    #[inline]
    pub fn publish(&mut self, update: impl FnOnce(&mut E, u64)) -> Result<u64, RingError> {
        self.publish_one(Claim::Wait, update)
    }

    /// Publishes one event, or fails with [`RingError::Full`] at once if there is no free slot.
    #[inline]
    pub fn try_publish(&mut self, update: impl FnOnce(&mut E, u64)) -> Result<u64, RingError> {
        self.publish_one(Claim::Try, update)
    }

    /// Publishes `size` events, calling `update` for each in sequence order, and makes them
    /// visible together. Waits while the ring is full. Returns the last sequence.
    #[inline]
    pub fn publish_batch(
        &mut self,
        size: usize,
        update: impl FnMut(&mut E, u64),
    ) -> Result<u64, RingError> {
        self.publish_many(Claim::Wait, size, update)
    }

    /// Like [`publish_batch`](Self::publish_batch), but fails with [`RingError::Full`] at once
    /// unless the whole batch fits now.
    #[inline]
    pub fn try_publish_batch(
        &mut self,
        size: usize,
        update: impl FnMut(&mut E, u64),
    ) -> Result<u64, RingError> {
        self.publish_many(Claim::Try, size, update)
    }

    #[inline(always)]
    fn publish_one(
        &mut self,
        mode: Claim,
        update: impl FnOnce(&mut E, u64),
    ) -> Result<u64, RingError> {
        let sequence = self.claim(1, mode)?;
        // SAFETY: `claim` returned `sequence` to this, the only producer, and established that
        // every gating consumer passed `sequence - capacity`; it is not published yet.
        unsafe { self.shared.buffer.write(sequence, |event| update(event, sequence)) };
        self.commit(sequence);
        Ok(sequence)
    }

    #[inline(always)]
    fn publish_many(
        &mut self,
        mode: Claim,
        size: usize,
        update: impl FnMut(&mut E, u64),
    ) -> Result<u64, RingError> {
        let size = validate_batch(size, self.shared.capacity())?;
        let last = self.claim(size, mode)?;
        // SAFETY: `claim` returned `last - size + 1 ..= last` (at most `capacity` sequences,
        // checked by `validate_batch`) to this, the only producer, with every gating consumer
        // past `last - capacity`; none of them is published yet.
        unsafe { self.shared.buffer.write_range(last - size + 1, last, update) };
        self.commit(last);
        Ok(last)
    }

    /// The last sequence this producer published.
    pub fn last_published(&self) -> u64 {
        self.published
    }

    /// A handle to halt the ring or read its progress.
    pub fn control(&self) -> RingControl {
        RingControl::new(&self.shared)
    }
}

impl<E, W: WaitStrategy> Drop for SingleProducer<E, W> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl<E, W: WaitStrategy> std::fmt::Debug for SingleProducer<E, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleProducer")
            .field("published", &self.published)
            .field("capacity", &self.shared.capacity())
            .finish()
    }
}

/// What the clones of one [`MultiProducer`] share.
struct MultiProducerShared {
    gating: Box<[Arc<Sequence>]>,
    /// Live producer handles; the ring closes when it drops to zero.
    producers: AtomicUsize,
}

/// A producer of a multi-producer ring. Clone it for each publishing thread. Each claim is one
/// atomic add on the cursor; events of one producer keep their order, and the ring's order
/// among producers is the order of their claims.
pub struct MultiProducer<E, W: WaitStrategy> {
    shared: Arc<Shared<E, MultiProducerSequencer, W>>,
    producers: Arc<MultiProducerShared>,
}

/// Halts the ring if a producer's `update` panics between claim and publish: the claimed
/// sequences would otherwise stay unpublished for ever and every consumer would stall at them.
struct HaltUnlessPublished<'a, E, W: WaitStrategy> {
    shared: &'a Shared<E, MultiProducerSequencer, W>,
}

impl<E, W: WaitStrategy> Drop for HaltUnlessPublished<'_, E, W> {
    fn drop(&mut self) {
        self.shared.halt();
    }
}

impl<E: Send + Sync + 'static, W: WaitStrategy> MultiProducer<E, W> {
    pub(crate) fn new(
        shared: Arc<Shared<E, MultiProducerSequencer, W>>,
        gating: Box<[Arc<Sequence>]>,
    ) -> Self {
        let producers = Arc::new(MultiProducerShared { gating, producers: AtomicUsize::new(1) });
        Self { shared, producers }
    }

    /// Claims `size` sequences; returns the last of them.
    #[inline(always)]
    fn claim(&self, size: u64, mode: Claim) -> Result<u64, RingError> {
        let shared = &*self.shared;
        if shared.is_halted() {
            return Err(RingError::Halted);
        }
        let sequencer = &shared.sequencer;
        let capacity = shared.capacity();
        match mode {
            Claim::Wait => {
                // Claim first, then wait for room: the add never fails, and claims are ordered.
                let last = sequencer.cursor.fetch_add(size) + size;
                let needed = last.saturating_sub(capacity);
                if needed > sequencer.gating_cache.load(Ordering::Acquire) {
                    let minimum = wait_for_gating(shared, &self.producers.gating, needed)?;
                    sequencer.gating_cache.fetch_max(minimum, Ordering::AcqRel);
                }
                Ok(last)
            }
            Claim::Try => loop {
                // A claim that may fail must not take sequences it cannot fill: compare-and-swap.
                let current = sequencer.cursor.get();
                let last = current + size;
                let needed = last.saturating_sub(capacity);
                if needed > sequencer.gating_cache.load(Ordering::Acquire) {
                    let minimum = minimum_sequence(&self.producers.gating, u64::MAX);
                    if minimum < needed {
                        return Err(RingError::Full);
                    }
                    sequencer.gating_cache.fetch_max(minimum, Ordering::AcqRel);
                }
                if sequencer.cursor.compare_exchange(current, last).is_ok() {
                    return Ok(last);
                }
            },
        }
    }

    #[inline(always)]
    fn fill(&self, first: u64, last: u64, update: impl FnMut(&mut E, u64)) {
        let guard = HaltUnlessPublished { shared: &self.shared };
        // SAFETY: the claim gave `first..=last` (at most `capacity` sequences) to this producer
        // alone (the atomic add or compare-and-swap on the cursor, or, for the `SoleProducer`
        // that owns this handle, the only handle, its plain claim), and every gating consumer
        // is past `last - capacity`; no sequence of the range is marked published yet.
        unsafe { self.shared.buffer.write_range(first, last, update) };
        std::mem::forget(guard);
        // Last to first, so that a batch is published whole: a consumer's scan stops at the
        // first unmarked slot, and `first` is marked after every other slot of the batch (each
        // mark a release store, so the consumer that sees `first` sees the rest). Marked first
        // to last, a consumer that scanned between two marks took part of a batch, and what
        // the engine journaled as one write, or a replica received as one frame, depended on
        // the threads' timing: the deterministic simulation found that as two traces of one
        // seed (a replica's sync fault kept one part of a batch in one run, all of it in the
        // next).
        for sequence in (first..=last).rev() {
            self.shared.sequencer.mark_published(sequence);
        }
        self.shared.wait.signal();
    }

    /// Publishes one event, waiting while the ring is full. Returns its sequence.
    #[inline]
    pub fn publish(&self, update: impl FnOnce(&mut E, u64)) -> Result<u64, RingError> {
        self.publish_one(Claim::Wait, update)
    }

    /// Publishes one event, or fails with [`RingError::Full`] at once if there is no free slot.
    #[inline]
    pub fn try_publish(&self, update: impl FnOnce(&mut E, u64)) -> Result<u64, RingError> {
        self.publish_one(Claim::Try, update)
    }

    /// Publishes `size` consecutive events, waiting while the ring is full. Returns the last
    /// sequence. Consumers see the batch whole: none of its events before all of them.
    #[inline]
    pub fn publish_batch(
        &self,
        size: usize,
        update: impl FnMut(&mut E, u64),
    ) -> Result<u64, RingError> {
        self.publish_many(Claim::Wait, size, update)
    }

    /// Like [`publish_batch`](Self::publish_batch), but fails with [`RingError::Full`] at once
    /// unless the whole batch fits now.
    #[inline]
    pub fn try_publish_batch(
        &self,
        size: usize,
        update: impl FnMut(&mut E, u64),
    ) -> Result<u64, RingError> {
        self.publish_many(Claim::Try, size, update)
    }

    #[inline(always)]
    fn publish_one(&self, mode: Claim, update: impl FnOnce(&mut E, u64)) -> Result<u64, RingError> {
        let sequence = self.claim(1, mode)?;
        let mut update = Some(update);
        self.fill(sequence, sequence, |event, sequence| {
            if let Some(update) = update.take() {
                update(event, sequence);
            }
        });
        Ok(sequence)
    }

    #[inline(always)]
    fn publish_many(
        &self,
        mode: Claim,
        size: usize,
        update: impl FnMut(&mut E, u64),
    ) -> Result<u64, RingError> {
        let size = validate_batch(size, self.shared.capacity())?;
        let last = self.claim(size, mode)?;
        self.fill(last - size + 1, last, update);
        Ok(last)
    }

    /// A handle to halt the ring or read its progress.
    pub fn control(&self) -> RingControl {
        RingControl::new(&self.shared)
    }

    /// Turns this producer into the ring's [`SoleProducer`], whose claims take no atomic
    /// read-modify-write, if it is the only producer handle left; otherwise gives it back.
    /// Consuming it and returning a type that cannot be cloned is what keeps it the only one.
    pub fn into_sole(self) -> Result<SoleProducer<E, W>, Self> {
        // Acquire: pairs with the release of the other handles' drops, so that every claim
        // and publish they made happens before this producer's first claim.
        if self.producers.producers.load(Ordering::Acquire) != 1 {
            return Err(self);
        }
        // No claim is in flight: every other handle published what it claimed (or halted the
        // ring) before it was dropped, and this one is being consumed.
        let published = self.shared.sequencer.cursor.get();
        let claim_limit = minimum_sequence(&self.producers.gating, u64::MAX)
            .saturating_add(self.shared.capacity());
        Ok(SoleProducer { handle: self, published, claim_limit })
    }
}

/// The only producer of a multi-producer ring, made by [`MultiProducer::into_sole`]. It claims
/// with plain loads and stores, as a [`SingleProducer`] does, and publishes through the slots'
/// marks, which is what a multi-producer ring's consumers read. For a ring built for several
/// producers that at times has just one (the engine's input when one gateway thread publishes):
/// what it saves is the locked add of every claim, a full barrier that waits for the previous
/// slot's stores to reach the cache. Not `Clone`; dropping it closes the ring.
pub struct SoleProducer<E, W: WaitStrategy> {
    /// The multi-producer handle it was made from, the only one: it owns the ring's count of
    /// producers, so dropping it closes the ring as dropping that handle would have.
    handle: MultiProducer<E, W>,
    /// The last sequence claimed, which is the last published once a publish returns.
    published: u64,
    /// As in [`SingleProducer`]: the highest sequence that may be claimed without reading
    /// the gating sequences again.
    claim_limit: u64,
}

impl<E: Send + Sync + 'static, W: WaitStrategy> SoleProducer<E, W> {
    /// Claims `size` sequences after the last one; returns the last of them.
    #[inline(always)]
    fn claim(&mut self, size: u64, mode: Claim) -> Result<u64, RingError> {
        if self.handle.shared.is_halted() {
            return Err(RingError::Halted);
        }
        let last = self.published + size;
        if last > self.claim_limit {
            let gating = &self.handle.producers.gating;
            self.claim_limit = lone_claim_limit(&self.handle.shared, gating, last, mode)?;
        }
        // The cursor is the highest sequence claimed, read by `RingControl` and by consumers
        // only once the ring is closed: a plain release store on a line no consumer polls.
        self.handle.shared.sequencer.cursor.set(last);
        self.published = last;
        Ok(last)
    }

    /// Publishes one event, waiting while the ring is full. Returns its sequence.
    #[inline]
    pub fn publish(&mut self, update: impl FnOnce(&mut E, u64)) -> Result<u64, RingError> {
        self.publish_one(Claim::Wait, update)
    }

    /// Publishes one event, or fails with [`RingError::Full`] at once if there is no free slot.
    #[inline]
    pub fn try_publish(&mut self, update: impl FnOnce(&mut E, u64)) -> Result<u64, RingError> {
        self.publish_one(Claim::Try, update)
    }

    /// Publishes `size` consecutive events, waiting while the ring is full. Returns the last
    /// sequence. Consumers see the batch whole: none of its events before all of them.
    #[inline]
    pub fn publish_batch(
        &mut self,
        size: usize,
        update: impl FnMut(&mut E, u64),
    ) -> Result<u64, RingError> {
        self.publish_many(Claim::Wait, size, update)
    }

    /// Like [`publish_batch`](Self::publish_batch), but fails with [`RingError::Full`] at once
    /// unless the whole batch fits now.
    #[inline]
    pub fn try_publish_batch(
        &mut self,
        size: usize,
        update: impl FnMut(&mut E, u64),
    ) -> Result<u64, RingError> {
        self.publish_many(Claim::Try, size, update)
    }

    #[inline(always)]
    fn publish_one(
        &mut self,
        mode: Claim,
        update: impl FnOnce(&mut E, u64),
    ) -> Result<u64, RingError> {
        let sequence = self.claim(1, mode)?;
        let mut update = Some(update);
        // The claim gave `sequence` to this producer alone (no other handle exists) with every
        // gating consumer past `sequence - capacity`: what `fill` requires.
        self.handle.fill(sequence, sequence, |event, sequence| {
            if let Some(update) = update.take() {
                update(event, sequence);
            }
        });
        Ok(sequence)
    }

    #[inline(always)]
    fn publish_many(
        &mut self,
        mode: Claim,
        size: usize,
        update: impl FnMut(&mut E, u64),
    ) -> Result<u64, RingError> {
        let size = validate_batch(size, self.handle.shared.capacity())?;
        let last = self.claim(size, mode)?;
        self.handle.fill(last - size + 1, last, update);
        Ok(last)
    }

    /// The last sequence this producer published.
    pub fn last_published(&self) -> u64 {
        self.published
    }

    /// A handle to halt the ring or read its progress.
    pub fn control(&self) -> RingControl {
        self.handle.control()
    }
}

impl<E, W: WaitStrategy> std::fmt::Debug for SoleProducer<E, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoleProducer")
            .field("published", &self.published)
            .field("capacity", &self.handle.shared.capacity())
            .finish()
    }
}

impl<E, W: WaitStrategy> Clone for MultiProducer<E, W> {
    fn clone(&self) -> Self {
        self.producers.producers.fetch_add(1, Ordering::Relaxed);
        Self { shared: self.shared.clone(), producers: self.producers.clone() }
    }
}

impl<E, W: WaitStrategy> Drop for MultiProducer<E, W> {
    fn drop(&mut self) {
        // AcqRel: the last one out must see every other producer's publishes before closing.
        if self.producers.producers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.close();
        }
    }
}

impl<E, W: WaitStrategy> std::fmt::Debug for MultiProducer<E, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiProducer")
            .field("cursor", &self.shared.sequencer.cursor.get())
            .field("producers", &self.producers.producers.load(Ordering::Relaxed))
            .finish()
    }
}
