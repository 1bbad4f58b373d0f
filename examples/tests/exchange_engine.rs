//! The exchange through the engine, in both topologies: the events a replay recomputes equal
//! the live ones, and recovery from a snapshot or from the first record ends in the live state.

use std::sync::{Arc, Mutex};

use keel_engine::{Engine, SnapshotPolicy, StateMachine, Topology};
use keel_examples::exchange::workload::{Mix, Workload};
use keel_examples::exchange::{Event, Exchange};

type Events = Arc<Mutex<Vec<(u64, Event)>>>;

fn check(topology: Topology) {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let data = scratch.path();
    let live: Events = Arc::default();
    let engine = {
        let live = Arc::clone(&live);
        Engine::builder(data)
            .topology(topology)
            .segment_size(4 << 20)
            .snapshots(SnapshotPolicy { every_commands: Some(30_000), ..Default::default() })
            .subscriber("events", move |delivery| {
                if let Some(event) = delivery.event {
                    live.lock().unwrap().push((delivery.sequence, *event));
                }
            })
            .open(Exchange::new())
            .expect("opens")
    };
    let mut workload = Workload::new(5, 200, 3, Mix::REALISTIC, 1);
    let mut publisher = engine.publisher();
    for command in workload.setup() {
        publisher.publish(command).expect("published");
    }
    for _ in 0..100_000 {
        publisher.publish(workload.next_command()).expect("published");
    }
    drop(publisher);
    let final_state = engine.shutdown().expect("shuts down");
    let live = std::mem::take(&mut *live.lock().unwrap());
    let snapshots = std::fs::read_dir(data.join("snapshots")).expect("a snapshot folder").count();
    assert!(snapshots >= 1, "snapshots were taken");
    assert!(live.iter().any(|(_, event)| matches!(event, Event::Traded { .. })), "trades");
    final_state.check_invariants().expect("the invariants hold");

    // Recovery from the newest snapshot.
    let engine = Engine::builder(data).topology(topology).open(Exchange::new()).expect("reopens");
    assert!(engine.recovery().snapshot.is_some());
    let recovered = engine.shutdown().expect("shuts down");
    assert_eq!(recovered.state_hash(), final_state.state_hash());
    recovered.check_invariants().expect("the recovered invariants hold");

    // Recovery from the first record, with the events recomputed.
    std::fs::rename(data.join("snapshots"), scratch.path().join("kept")).expect("moved");
    let replayed: Events = Arc::default();
    let engine = {
        let replayed = Arc::clone(&replayed);
        Engine::builder(data)
            .topology(topology)
            .on_replay(move |sequence, events| {
                let mut replayed = replayed.lock().unwrap();
                replayed.extend(events.iter().map(|event| (sequence, *event)));
            })
            .open(Exchange::new())
            .expect("reopens")
    };
    assert!(engine.recovery().snapshot.is_none());
    let recovered = engine.shutdown().expect("shuts down");
    assert_eq!(recovered.state_hash(), final_state.state_hash());
    let replayed = std::mem::take(&mut *replayed.lock().unwrap());
    assert_eq!(replayed.len(), live.len());
    if let Some(index) = (0..live.len()).find(|&index| live[index] != replayed[index]) {
        panic!("event {index} differs: live {:?}, replayed {:?}", live[index], replayed[index]);
    }
}

#[test]
fn compact_replays_the_live_events_and_state() {
    check(Topology::Compact);
}

#[test]
fn pipelined_replays_the_live_events_and_state() {
    check(Topology::Pipelined);
}
