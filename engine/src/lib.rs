//! `keel-engine`: one thread applies commands, in a single total order, to state it holds in
//! memory; every command is journaled and durable per the configured tier before it is
//! applied; snapshots are written from a copy of the state on another thread; recovery loads
//! the newest valid snapshot and replays the journal after it.
//!
//! ```
//! use keel_engine::{Context, Durability, Engine, Output, StateMachine};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Default, Serialize, Deserialize)]
//! struct Counter { total: u64 }
//!
//! impl StateMachine for Counter {
//!     type Command = u64;
//!     type Event = u64;
//!     fn apply(&mut self, _: &Context, amount: &u64, output: &mut Output<u64>) {
//!         self.total += amount;
//!         output.emit(self.total);
//!     }
//!     fn state_hash(&self) -> u64 { self.total }
//! }
//!
//! let directory = tempfile::tempdir()?;
//! let engine = Engine::builder(directory.path())
//!     .durability(Durability::Fsync)
//!     .segment_size(1 << 20)
//!     .open(Counter::default())?;
//! let mut publisher = engine.publisher();
//! for amount in 1..=100 {
//!     publisher.publish(amount)?;
//! }
//! drop(publisher);
//! assert_eq!(engine.shutdown()?.total, 5050);
//!
//! // Reopening recovers the same state from the journal.
//! let engine = Engine::builder(directory.path()).segment_size(1 << 20).open(Counter::default())?;
//! assert_eq!(engine.recovery().replayed, 100);
//! assert_eq!(engine.shutdown()?.total, 5050);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "cli")]
pub mod cli;
mod codec;
mod config;
mod cow;
mod engine;
mod error;
mod machine;
mod numbering;
mod publisher;
mod recovery;
mod replica;
mod replicator;
mod responses;
mod snapshots;
mod stats;
mod wire;

/// The fuzz targets' entry points (`engine/fuzz/`); not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use codec::{Bincode, Codec, CodecError};
pub use config::{Durability, SnapshotPolicy, Topology, Wait};
pub use cow::{CowVec, CowVecIter};
pub use engine::{Delivery, Engine, EngineBuilder, OutputPoller, RecoveryReport};
pub use error::{EngineError, Halt};
pub use keel_ring::prefetch;
pub use machine::{Context, Lookahead, Output, StateMachine};
pub use publisher::{Publish, Publisher, SolePublisher};
pub use recovery::{
    decode_command, replay_from, replay_to, ReplayFrom, ReplayTarget, ReplayedState,
};
pub use replica::{Promotion, Replica, ReplicaBuilder};
pub use replicator::{Replication, ReplicationStatus};
pub use responses::Requester;
pub use stats::Stats;

/// The README's examples (embedding the engine, and the ring on its own), compiled and run as
/// doc tests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;
