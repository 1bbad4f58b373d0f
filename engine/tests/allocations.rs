//! No heap allocation per command on the hot path: with a state machine that allocates
//! nothing, a million commands through publish, journal, apply and the output ring allocate
//! (almost) nothing, counted by a global allocator that counts every allocation of the
//! process, on every thread.

use std::alloc::System;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keel_engine::{Context, Durability, Engine, Output, StateMachine, Topology};
use serde::{Deserialize, Serialize};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

// Counts every allocation and reallocation of the process, on every thread.
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[derive(Clone, Default, Serialize, Deserialize)]
struct Sum {
    total: u64,
}

impl StateMachine for Sum {
    type Command = u64;
    type Event = u64;

    fn apply(&mut self, _: &Context, amount: &u64, output: &mut Output<u64>) {
        self.total = self.total.wrapping_add(*amount);
        output.emit(self.total);
    }

    fn state_hash(&self) -> u64 {
        self.total
    }
}

const WARM_UP: u64 = 100_000;
const MEASURED: u64 = 1_000_000;
/// Allocations allowed in the whole measured run, from whatever is not per command (a thread
/// parking for the first time, say). A per-command allocation would show a million.
const ALLOWED: u64 = 100;

fn allocations_per_million(durability: Durability, topology: Topology, subscriber: bool) -> u64 {
    let directory = tempfile::tempdir().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let mut builder = Engine::builder(directory.path())
        .durability(durability)
        .topology(topology)
        // Large enough that the run never rolls to a new segment.
        .segment_size(256 << 20)
        .ring_capacity(4096);
    if subscriber {
        let seen = Arc::clone(&seen);
        builder = builder.subscriber("count", move |delivery| {
            if delivery.event.is_some() {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let engine = builder.open(Sum::default()).unwrap();
    let mut publisher = engine.publisher();
    for amount in 0..WARM_UP {
        publisher.publish(amount).unwrap();
    }
    while engine.stats().applied < WARM_UP {
        std::thread::yield_now();
    }
    let region = Region::new(ALLOCATOR);
    for amount in 0..MEASURED {
        publisher.publish(amount).unwrap();
    }
    while engine.stats().applied < WARM_UP + MEASURED {
        std::thread::yield_now();
    }
    let change = region.change();
    let allocations = (change.allocations + change.reallocations) as u64;
    drop(publisher);
    engine.shutdown().unwrap();
    if subscriber {
        assert_eq!(seen.load(Ordering::Relaxed), WARM_UP + MEASURED);
    }
    allocations
}

#[test]
fn a_million_commands_allocate_nothing_per_command() {
    for (durability, topology, subscriber) in [
        (Durability::PageCache, Topology::Compact, false),
        (Durability::PageCache, Topology::Compact, true),
        (Durability::PageCache, Topology::Pipelined, true),
        (Durability::Memory, Topology::Compact, true),
    ] {
        let allocations = allocations_per_million(durability, topology, subscriber);
        assert!(
            allocations <= ALLOWED,
            "{durability:?} {topology:?} subscriber={subscriber}: {allocations} allocations \
             over {MEASURED} commands"
        );
    }
}
