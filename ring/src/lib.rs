//! `keel-ring`: the ring buffer of keel, in the shape of the LMAX Disruptor.
//!
//! A ring of pre-allocated events, a [`Sequencer`] that hands out 64-bit sequences to one
//! ([`SingleProducer`]) or many ([`MultiProducer`]) producers, consumers that wait on a
//! barrier — the producer's cursor, or the sequences of the consumers they run after — with a
//! [`WaitStrategy`], and [`EventHandler`]s that see `end_of_batch`. Consumers form a graph: A and
//! B in parallel, C after both, as the engine's journaller, replicator and processor do.
//!
//! ```
//! use keel_ring::{BusySpin, RingBuilder, RingError};
//!
//! #[derive(Default)]
//! struct Order { id: u64, price: u64 }
//!
//! let mut builder = RingBuilder::single_producer(64, Order::default, BusySpin)?;
//! let mut total = 0u64;
//! let (_stage, processor) = builder.processor("sum", &[], move |order: &Order, _seq, end_of_batch| {
//!     total += order.price;
//!     if end_of_batch && order.id == 10 {
//!         assert_eq!(total, 550);
//!     }
//! })?;
//! let mut producer = builder.build()?;
//! for id in 1..=10 {
//!     producer.publish(|order, _sequence| *order = Order { id, price: id * 10 })?;
//! }
//!
//! // A batch larger than the ring is refused, not truncated.
//! assert!(matches!(producer.publish_batch(65, |_, _| {}), Err(RingError::InvalidBatch { .. })));
//!
//! // Halting stops everything; publishing afterwards is an error.
//! producer.control().halt();
//! assert_eq!(producer.publish(|_, _| {}), Err(RingError::Halted));
//! processor.join()?;
//! # Ok::<(), RingError>(())
//! ```
//!
//! ## Lifecycle
//! - Dropping the last producer *closes* the ring: consumers process every published event
//!   and stop; [`ProcessorHandle::join`] returns each handler.
//! - [`RingControl::halt`] stops it at once: every waiter returns, later publishes fail with
//!   [`RingError::Halted`]. A handler that panics halts the ring too, and the panic comes back
//!   from `join` as [`RingError::HandlerPanicked`].
//!
//! ## Memory ordering, in one paragraph
//! A producer writes a slot, then publishes with a release store (the cursor, or the slot's
//! publish mark with several producers). A consumer reads the cursor or mark with acquire,
//! reads the slots, then advances its own sequence with release. A producer reads the gating
//! sequences with acquire before it writes a slot again. Every slot access is therefore ordered
//! by a release/acquire pair; `loom` checks it (`RUSTFLAGS="--cfg loom" cargo test -p
//! keel-ring --release --test loom`).

#![warn(missing_docs)]

mod dsl;
mod error;
mod hint;
mod poller;
mod processor;
mod producer;
mod ring_buffer;
mod sequence;
mod sequencer;
mod shared;
mod sync;
mod wait;

pub use dsl::{RingBuilder, Stage, CAPACITY_MAX};
pub use error::RingError;
pub use hint::prefetch;
pub use poller::{Batch, EventPoller};
pub use processor::{EventHandler, ProcessorHandle};
pub use producer::{MultiProducer, SingleProducer, SoleProducer};
pub use sequence::Sequence;
pub use sequencer::{MultiProducerSequencer, Sequencer, SingleProducerSequencer};
pub use shared::RingControl;
pub use wait::{Blocking, BusySpin, Interrupt, Sleeping, WaitStrategy, Yielding};
