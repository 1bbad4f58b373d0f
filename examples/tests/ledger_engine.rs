//! The ledger through the engine, in both topologies: the events a replay recomputes equal
//! the live ones, expiries included (they depend on the journaled timestamps), and recovery
//! from a snapshot or from the first record ends in the live state.

mod common;

use keel_engine::Topology;
use keel_examples::ledger::workload::{Mix, Workload};
use keel_examples::ledger::{Event, Ledger};

fn check(topology: Topology) {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let data = scratch.path().join("data");
    let mut workload = Workload::new(11, 500, 3, Mix::PAYMENTS, 1);
    let setup = workload.setup();
    let commands = setup.into_iter().chain((0..100_000).map(|_| workload.next_command()));
    // Engine time passes every 10 000 commands, so that pending transfers expire between them.
    let (state, live) =
        common::live_equals_replay(&data, topology, Ledger::new, commands, 40_000, 10_000);
    assert!(live.iter().any(|(_, event)| matches!(event, Event::Expired { .. })), "expiries");
    state.check_conservation().expect("conserved");
}

#[test]
fn compact_replays_the_live_events_and_state() {
    check(Topology::Compact);
}

#[test]
fn pipelined_replays_the_live_events_and_state() {
    check(Topology::Pipelined);
}
