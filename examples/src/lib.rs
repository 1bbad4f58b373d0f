//! Applications embedding keel, written the way its users write theirs: the state machine is
//! a plain library module, the binary mounts the engine's command line beside its own
//! subcommands.
//!
//! - [`ledger`]: double-entry accounts and transfers, idempotent by transfer id, with
//!   two-phase transfers that expire in engine time; the `ledger` binary.
//! - [`driver`]: the gateway loop the binaries share: publish a stream of commands, read
//!   the events back, measure throughput and latency.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod demo;
pub mod direct;
pub mod driver;
pub mod exchange;
pub mod format;
/// The fuzz targets' entry points (`examples/fuzz/`); not part of the examples' API.
#[doc(hidden)]
pub mod fuzzing;
pub mod hash;
pub mod ledger;
pub mod rng;
pub mod system;
