//! The exchange through the engine, in both topologies: the events a replay recomputes equal
//! the live ones, and recovery from a snapshot or from the first record ends in the live state.

mod common;

use keel_engine::Topology;
use keel_examples::exchange::workload::{Mix, Workload};
use keel_examples::exchange::{Event, Exchange};

fn check(topology: Topology) {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let data = scratch.path().join("data");
    let mut workload = Workload::new(5, 200, 3, Mix::REALISTIC, 1);
    let setup = workload.setup();
    let commands = setup.into_iter().chain((0..100_000).map(|_| workload.next_command()));
    let (state, live) =
        common::live_equals_replay(&data, topology, Exchange::new, commands, 30_000, usize::MAX);
    assert!(live.iter().any(|(_, event)| matches!(event, Event::Traded { .. })), "trades");
    state.check_invariants().expect("the invariants hold");
}

#[test]
fn compact_replays_the_live_events_and_state() {
    check(Topology::Compact);
}

#[test]
fn pipelined_replays_the_live_events_and_state() {
    check(Topology::Pipelined);
}
