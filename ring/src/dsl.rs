//! Wiring: [`RingBuilder`] declares the consumers and their dependencies, then builds the
//! producer. Kept apart from the core types, as the LMAX Disruptor keeps its `dsl` package.
//!
//! ```
//! use keel_ring::{RingBuilder, Yielding};
//!
//! // A ‖ B → C: the engine's journaller and replicator in parallel, the processor after both.
//! let mut builder = RingBuilder::single_producer(1024, || 0u64, Yielding::default())?;
//! let (a, journaller) = builder.processor("journaller", &[], |_: &u64, _, _| {})?;
//! let (b, replicator) = builder.processor("replicator", &[], |_: &u64, _, _| {})?;
//! let mut sum = 0u64;
//! let (_c, processor) = builder.processor("processor", &[a, b], move |value: &u64, _, end_of_batch| {
//!     sum += value;
//!     if end_of_batch { /* flush */ }
//! })?;
//! let mut producer = builder.build()?;
//! for value in 1..=100 {
//!     producer.publish(|slot, _sequence| *slot = value)?;
//! }
//! drop(producer); // Closes the ring: the processors drain it and stop.
//! journaller.join()?;
//! replicator.join()?;
//! processor.join()?;
//! # Ok::<(), keel_ring::RingError>(())
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::RingError;
use crate::poller::EventPoller;
use crate::processor::{run_batch_processor, EventHandler, ProcessorHandle};
use crate::producer::{MultiProducer, SingleProducer};
use crate::ring_buffer::RingBuffer;
use crate::sequence::Sequence;
use crate::sequencer::{MultiProducerSequencer, Sequencer, SingleProducerSequencer};
use crate::shared::{RingControl, SequenceBarrier, Shared};
use crate::sync::Arc;
use crate::wait::WaitStrategy;

/// The largest capacity a ring accepts: 2^30 slots. A bound, so a typo cannot ask for the
/// whole machine's memory.
pub const CAPACITY_MAX: usize = 1 << 30;

/// Gives every builder a distinct id, so a [`Stage`] cannot be used with the wrong one.
static BUILDER_ID_NEXT: AtomicU64 = AtomicU64::new(1);

/// A consumer declared on a builder, to name as a dependency of later consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage {
    builder: u64,
    index: usize,
}

/// What declaring a stage produces: its public name, the barrier it waits on, its sequence.
struct NewStage<E, S, W> {
    stage: Stage,
    barrier: SequenceBarrier<E, S, W>,
    sequence: Arc<Sequence>,
}

struct StageEntry {
    sequence: Arc<Sequence>,
    /// Whether a later stage runs after this one. Stages without dependents gate the producer.
    has_dependents: bool,
}

/// Declares a ring's consumers and builds its producer.
///
/// Processors start as soon as they are declared and wait for events; `build` computes which
/// consumers gate the producer (those no other consumer runs after) and returns the producer.
/// Dropping a builder without building closes the ring, so started processors stop.
pub struct RingBuilder<E, S: Sequencer, W: WaitStrategy> {
    shared: Arc<Shared<E, S, W>>,
    id: u64,
    stages: Vec<StageEntry>,
    built: bool,
}

impl<E: Send + Sync + 'static, W: WaitStrategy> RingBuilder<E, SingleProducerSequencer, W> {
    /// A ring for one publishing thread, of `capacity` events made by `factory`.
    pub fn single_producer(
        capacity: usize,
        factory: impl FnMut() -> E,
        wait_strategy: W,
    ) -> Result<Self, RingError> {
        Self::new(capacity, factory, wait_strategy)
    }

    /// Finishes the wiring; returns the producer.
    pub fn build(mut self) -> Result<SingleProducer<E, W>, RingError> {
        let gating = self.gating()?;
        Ok(SingleProducer::new(self.shared.clone(), gating))
    }
}

impl<E: Send + Sync + 'static, W: WaitStrategy> RingBuilder<E, MultiProducerSequencer, W> {
    /// A ring for any number of publishing threads, of `capacity` events made by `factory`.
    pub fn multi_producer(
        capacity: usize,
        factory: impl FnMut() -> E,
        wait_strategy: W,
    ) -> Result<Self, RingError> {
        Self::new(capacity, factory, wait_strategy)
    }

    /// Finishes the wiring; returns the first producer (clone it for more).
    pub fn build(mut self) -> Result<MultiProducer<E, W>, RingError> {
        let gating = self.gating()?;
        Ok(MultiProducer::new(self.shared.clone(), gating))
    }
}

impl<E: Send + Sync + 'static, S: Sequencer, W: WaitStrategy> RingBuilder<E, S, W> {
    fn new(
        capacity: usize,
        factory: impl FnMut() -> E,
        wait_strategy: W,
    ) -> Result<Self, RingError> {
        if !capacity.is_power_of_two() || capacity > CAPACITY_MAX {
            return Err(RingError::InvalidCapacity { capacity });
        }
        let shared = Arc::new(Shared::new(RingBuffer::new(capacity, factory), wait_strategy));
        let id = BUILDER_ID_NEXT.fetch_add(1, Ordering::Relaxed);
        Ok(Self { shared, id, stages: Vec::new(), built: false })
    }

    /// Declares a consumer that runs after `after` (all of them), or on the producer's cursor
    /// when `after` is empty; returns its sequence holders.
    fn add_stage(&mut self, after: &[Stage]) -> Result<NewStage<E, S, W>, RingError> {
        let mut dependencies = Vec::with_capacity(after.len());
        for stage in after {
            if stage.builder != self.id || stage.index >= self.stages.len() {
                return Err(RingError::UnknownStage);
            }
            dependencies.push(self.stages[stage.index].sequence.clone());
        }
        for stage in after {
            self.stages[stage.index].has_dependents = true;
        }
        let sequence = Arc::new(Sequence::default());
        let stage = Stage { builder: self.id, index: self.stages.len() };
        self.stages.push(StageEntry { sequence: sequence.clone(), has_dependents: false });
        let barrier = SequenceBarrier::new(self.shared.clone(), dependencies.into_boxed_slice());
        Ok(NewStage { stage, barrier, sequence })
    }

    /// Starts an event processor on its own thread, named `keel-{name}`, that calls `handler`
    /// for every event after the stages in `after` have processed it.
    pub fn processor<H: EventHandler<E>>(
        &mut self,
        name: &str,
        after: &[Stage],
        handler: H,
    ) -> Result<(Stage, ProcessorHandle<H>), RingError> {
        let NewStage { stage, barrier, sequence } = self.add_stage(after)?;
        let thread = std::thread::Builder::new()
            .name(format!("keel-{name}"))
            .spawn(move || run_batch_processor(barrier, sequence, handler))
            .map_err(|error| RingError::SpawnFailed {
                processor: name.to_owned(),
                message: error.to_string(),
            })?;
        Ok((stage, ProcessorHandle::new(name.to_owned(), thread)))
    }

    /// Declares a consumer polled on its owner's thread, after the stages in `after`.
    pub fn poller(&mut self, after: &[Stage]) -> Result<(Stage, EventPoller<E, S, W>), RingError> {
        let NewStage { stage, barrier, sequence } = self.add_stage(after)?;
        Ok((stage, EventPoller::new(barrier, sequence)))
    }

    /// A handle to halt the ring or read its progress.
    pub fn control(&self) -> RingControl {
        RingControl::new(&self.shared)
    }

    /// The sequences of the stages nothing runs after: they alone gate the producer, since every
    /// other stage is at or ahead of some stage that runs after it.
    fn gating(&mut self) -> Result<Box<[Arc<Sequence>]>, RingError> {
        let gating: Box<[Arc<Sequence>]> = self
            .stages
            .iter()
            .filter(|stage| !stage.has_dependents)
            .map(|stage| stage.sequence.clone())
            .collect();
        if gating.is_empty() {
            return Err(RingError::NoConsumers);
        }
        self.built = true;
        Ok(gating)
    }
}

impl<E, S: Sequencer, W: WaitStrategy> Drop for RingBuilder<E, S, W> {
    fn drop(&mut self) {
        if !self.built {
            self.shared.close();
        }
    }
}

impl<E, S: Sequencer, W: WaitStrategy> std::fmt::Debug for RingBuilder<E, S, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingBuilder")
            .field("capacity", &self.shared.capacity())
            .field("stages", &self.stages.len())
            .finish()
    }
}
