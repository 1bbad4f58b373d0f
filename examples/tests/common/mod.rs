//! What the examples' engine tests share: a state machine driven live through the engine, then
//! recovered from its newest snapshot and from the first record, with the events the replay
//! recomputes compared to the live ones.

use std::path::Path;
use std::sync::{Arc, Mutex};

use keel_engine::{Engine, SnapshotPolicy, StateMachine, Topology};

/// Events with their commands' sequences, collected by a subscriber or a replay sink.
type Collected<E> = Arc<Mutex<Vec<(u64, E)>>>;

/// Publishes `commands` (after each `pause_every`, sleeps 20 ms so that engine time passes),
/// then checks that recovery from the newest snapshot and from the first record both end in
/// the live state hash, and that the replay recomputes the live events, in order. Returns the
/// live final state and events.
pub fn live_equals_replay<M>(
    data: &Path,
    topology: Topology,
    initial: impl Fn() -> M,
    commands: impl IntoIterator<Item = M::Command>,
    snapshot_every: u64,
    pause_every: usize,
) -> (M, Vec<(u64, M::Event)>)
where
    M: StateMachine,
    M::Event: Clone + PartialEq + std::fmt::Debug,
{
    let live: Collected<M::Event> = Arc::default();
    let engine = {
        let live = Arc::clone(&live);
        Engine::builder(data)
            .topology(topology)
            .segment_size(4 << 20)
            .snapshots(SnapshotPolicy {
                every_commands: Some(snapshot_every),
                ..Default::default()
            })
            .subscriber("events", move |delivery: keel_engine::Delivery<'_, M::Event>| {
                if let Some(event) = delivery.event {
                    live.lock().unwrap().push((delivery.sequence, event.clone()));
                }
            })
            .open(initial())
            .expect("opens")
    };
    let mut publisher = engine.publisher();
    for (index, command) in commands.into_iter().enumerate() {
        publisher.publish(command).expect("published");
        if index % pause_every == pause_every - 1 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    drop(publisher);
    let final_state = engine.shutdown().expect("shuts down");
    let live = std::mem::take(&mut *live.lock().unwrap());
    let snapshots = std::fs::read_dir(data.join("snapshots")).expect("a snapshot folder").count();
    assert!(snapshots >= 1, "snapshots were taken");

    // Recovery from the newest snapshot.
    let engine = Engine::builder(data).topology(topology).open(initial()).expect("reopens");
    assert!(engine.recovery().snapshot.is_some());
    let recovered = engine.shutdown().expect("shuts down");
    assert_eq!(recovered.state_hash(), final_state.state_hash());

    // Recovery from the first record, with the events recomputed.
    let kept = data.with_extension("kept-snapshots");
    std::fs::rename(data.join("snapshots"), &kept).expect("moved");
    let replayed: Collected<M::Event> = Arc::default();
    let engine = {
        let replayed = Arc::clone(&replayed);
        Engine::builder(data)
            .topology(topology)
            .on_replay(move |context: &keel_engine::Context, events: &[M::Event]| {
                let mut replayed = replayed.lock().unwrap();
                replayed.extend(events.iter().map(|event| (context.sequence, event.clone())));
            })
            .open(initial())
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
    (final_state, live)
}
