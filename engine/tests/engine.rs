//! The engine end to end: live, replayed, recovered from a snapshot; durability gating;
//! fail-stop; snapshot fallbacks; back-pressure.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{commands, records, Bank, Command, Event};
use keel_engine::{
    replay_to, Bincode, Delivery, Durability, Engine, EngineBuilder, EngineError, Halt, Publish,
    ReplayTarget, SnapshotPolicy, StateMachine, Topology,
};
use keel_journal::{JournalOptions, JournalReader, JournalWriter, SnapshotMeta, SnapshotStore};
use proptest::prelude::*;

type Seen = Arc<Mutex<Vec<(u64, Option<Event>, bool)>>>;
type Grouped = Vec<(u64, Vec<Event>)>;

fn builder(
    directory: &Path,
    durability: Durability,
    topology: Topology,
) -> EngineBuilder<Bank, Bincode> {
    Engine::builder(directory)
        .durability(durability)
        .topology(topology)
        .segment_size(1 << 20)
        .ring_capacity(1024)
}

/// A builder whose subscriber records every delivery.
fn recording(
    directory: &Path,
    durability: Durability,
    topology: Topology,
) -> (EngineBuilder<Bank, Bincode>, Seen) {
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);
    let builder =
        builder(directory, durability, topology).subscriber("recorder", move |delivery| {
            sink.lock().unwrap().push((delivery.sequence, delivery.event.cloned(), delivery.last));
        });
    (builder, seen)
}

/// The events of a delivery list, grouped per command: (sequence, events).
fn per_command(seen: &[(u64, Option<Event>, bool)]) -> Vec<(u64, Vec<Event>)> {
    let mut grouped: Vec<(u64, Vec<Event>)> = Vec::new();
    for (sequence, event, _) in seen {
        if grouped.last().is_none_or(|(last, _)| last != sequence) {
            grouped.push((*sequence, Vec::new()));
        }
        grouped.last_mut().unwrap().1.extend(event.clone());
    }
    grouped
}

/// Runs `commands` through a fresh engine; returns the final state and the events.
fn run(
    directory: &Path,
    durability: Durability,
    topology: Topology,
    commands: &[Command],
) -> (Bank, Grouped) {
    run_through(directory, durability, topology, commands, false)
}

/// [`run`], through the engine's [`SolePublisher`](keel_engine::SolePublisher) when `sole`.
fn run_through(
    directory: &Path,
    durability: Durability,
    topology: Topology,
    commands: &[Command],
    sole: bool,
) -> (Bank, Grouped) {
    fn publish_all(publisher: &mut impl Publish<Bank>, commands: &[Command]) {
        for (index, command) in commands.iter().enumerate() {
            let sequence = publisher.publish(command.clone()).unwrap();
            assert_eq!(sequence, index as u64 + 1);
        }
    }
    let (builder, seen) = recording(directory, durability, topology);
    let mut engine = builder.open(Bank::default()).unwrap();
    if sole {
        publish_all(&mut engine.sole_publisher().unwrap(), commands);
    } else {
        publish_all(&mut engine.publisher(), commands);
    }
    let bank = engine.shutdown().unwrap();
    let events = per_command(&seen.lock().unwrap());
    (bank, events)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Live, replayed from the journal, and recovered from a snapshot plus the journal: the
    /// same state hash and the same events, in both durable tiers.
    #[test]
    fn live_replay_and_recovery_agree(
        seed in any::<u64>(),
        count in 1usize..600,
        fsync in any::<bool>(),
        pipelined in any::<bool>(),
        sole in any::<bool>(),
    ) {
        let durability = if fsync { Durability::Fsync } else { Durability::PageCache };
        let topology = if pipelined { Topology::Pipelined } else { Topology::Compact };
        let commands = commands(count, 8, seed);
        let directory = tempfile::tempdir().unwrap();
        let (live, live_events) =
            run_through(directory.path(), durability, topology, &commands, sole);
        prop_assert_eq!(live_events.len(), count, "one delivery group per command");

        // Replay from the journal alone, recomputing the events.
        let replayed: Arc<Mutex<Grouped>> = Arc::default();
        let sink = Arc::clone(&replayed);
        let engine = builder(directory.path(), durability, topology)
            .on_replay(move |context, events| {
                sink.lock().unwrap().push((context.sequence, events.to_vec()))
            })
            .open(Bank::default())
            .unwrap();
        prop_assert_eq!(engine.recovery().replayed, count as u64);
        prop_assert_eq!(engine.recovery().state_hash, live.state_hash());
        let recovered = engine.shutdown().unwrap();
        prop_assert_eq!(&recovered, &live);
        prop_assert_eq!(&*replayed.lock().unwrap(), &live_events);

        // Read-only replay to the end, and to a point.
        let to_end = replay_to(directory.path(), Bincode, Bank::default(), ReplayTarget::End).unwrap();
        prop_assert_eq!(to_end.state_hash, live.state_hash());
        let half = count as u64 / 2;
        let at_half = replay_to(directory.path(), Bincode, Bank::default(), ReplayTarget::Sequence(half)).unwrap();
        prop_assert_eq!(at_half.last_sequence, half);
    }
}

fn recovery_from_a_snapshot_replays_only_what_follows_it(topology: Topology) {
    let directory = tempfile::tempdir().unwrap();
    let commands = commands(3_000, 16, 7);
    let engine =
        builder(directory.path(), Durability::PageCache, topology).open(Bank::default()).unwrap();
    let mut publisher = engine.publisher();
    for command in &commands[..2_000] {
        publisher.publish(command.clone()).unwrap();
    }
    wait_until("the first 2000 applied", || engine.stats().applied == 2_000);
    engine.snapshot();
    wait_until("the snapshot", || engine.stats().snapshots == 1);
    assert_eq!(engine.stats().last_snapshot_sequence, 2_000);
    for command in &commands[2_000..] {
        publisher.publish(command.clone()).unwrap();
    }
    drop(publisher);
    let live = engine.shutdown().unwrap();

    let progress = Arc::new(Mutex::new(Vec::new()));
    let reported = Arc::clone(&progress);
    let engine = builder(directory.path(), Durability::PageCache, topology)
        .on_replay_progress(move |replayed| reported.lock().unwrap().push(replayed))
        .open(Bank::default())
        .unwrap();
    let recovery = engine.recovery().clone();
    assert_eq!(recovery.snapshot.as_ref().map(|(_, sequence)| *sequence), Some(2_000));
    assert_eq!(recovery.replayed, 1_000);
    assert_eq!(
        progress.lock().unwrap().last(),
        Some(&1_000),
        "the progress callback ends at the total"
    );
    assert_eq!(engine.shutdown().unwrap(), live);

    // A state from before the snapshot comes from the journal; one after it, from both.
    let early =
        replay_to(directory.path(), Bincode, Bank::default(), ReplayTarget::Sequence(1_500))
            .unwrap();
    assert_eq!((early.snapshot, early.replayed), (None, 1_500));
    let late = replay_to(directory.path(), Bincode, Bank::default(), ReplayTarget::Sequence(2_500))
        .unwrap();
    assert_eq!((late.snapshot.map(|(_, sequence)| sequence), late.replayed), (Some(2_000), 500));
}

/// After the journal lost commands a snapshot covers (a power loss in the `PageCache` tier), new
/// commands take their sequences: that snapshot, whose state the journal can
/// reach again by sequence but no longer holds, must never be loaded for them.
fn a_snapshot_of_commands_the_journal_lost_is_never_loaded_again(topology: Topology) {
    let directory = tempfile::tempdir().unwrap();
    let engine =
        builder(directory.path(), Durability::PageCache, topology).open(Bank::default()).unwrap();
    let mut publisher = engine.publisher();
    for command in commands(120, 8, 21) {
        publisher.publish(command).unwrap();
    }
    wait_until("the first history applied", || engine.stats().applied == 120);
    engine.snapshot();
    wait_until("the snapshot", || engine.stats().last_snapshot_sequence == 120);
    drop(publisher);
    engine.shutdown().unwrap();

    // The journal loses everything after 50 and the snapshot at 120 stays, as a power loss
    // leaves them (the synced snapshot kept, the page cache's journal tail gone): a repair cuts
    // the journal (and moves the snapshot out), and the snapshot is put back.
    let snapshot = SnapshotStore::open(directory.path()).unwrap().list().unwrap()[0].clone();
    assert_eq!(snapshot.sequence, 120);
    let kept = std::fs::read(&snapshot.path).unwrap();
    builder(directory.path(), Durability::PageCache, topology)
        .stop_before(51)
        .open(Bank::default())
        .unwrap()
        .shutdown()
        .unwrap();
    std::fs::write(&snapshot.path, kept).unwrap();
    let engine =
        builder(directory.path(), Durability::PageCache, topology).open(Bank::default()).unwrap();
    let recovery = engine.recovery().clone();
    assert_eq!((recovery.snapshot.clone(), recovery.last_sequence), (None, 50));
    assert_eq!(recovery.skipped_snapshots.len(), 1, "{:?}", recovery.skipped_snapshots);
    let (path, reason) = &recovery.skipped_snapshots[0];
    assert_eq!(path, &snapshot.path);
    assert!(reason.contains("past the journal's end (50)") && reason.contains("moved to"));
    // Out of the store, kept under `dropped/` for whoever wants to look.
    assert!(SnapshotStore::open(directory.path()).unwrap().list().unwrap().is_empty());
    let kept = directory.path().join("dropped/snapshots-past-50").join(path.file_name().unwrap());
    assert!(kept.is_file(), "{reason}");
    let mut publisher = engine.publisher();
    for command in commands(100, 8, 22) {
        publisher.publish(command).unwrap();
    }
    drop(publisher);
    let live = engine.shutdown().unwrap();
    assert_eq!(live.last_sequence, 150);

    // The journal now reaches past 120 with other commands: recovery replays them all.
    let engine =
        builder(directory.path(), Durability::PageCache, topology).open(Bank::default()).unwrap();
    assert_eq!(engine.recovery().snapshot, None, "{:?}", engine.recovery());
    assert_eq!(engine.shutdown().unwrap(), live);
    let replayed =
        replay_to(directory.path(), Bincode, Bank::default(), ReplayTarget::End).unwrap();
    assert_eq!(replayed.machine, live);
}

fn snapshots_follow_the_policy_and_a_bad_one_is_skipped_for_an_older_one(topology: Topology) {
    let directory = tempfile::tempdir().unwrap();
    let commands = commands(5_000, 16, 11);
    let policy = SnapshotPolicy { every_commands: Some(1_000), every_interval: None, keep: 0 };
    let engine = builder(directory.path(), Durability::PageCache, topology)
        .snapshots(policy)
        .open(Bank::default())
        .unwrap();
    let mut publisher = engine.publisher();
    for command in &commands {
        publisher.publish(command.clone()).unwrap();
        // One at a time, so that the policy sees every thousand.
        let sequence = engine.stats().published;
        wait_until("applied", || engine.stats().applied == sequence);
        if sequence.is_multiple_of(1_000) {
            wait_until("snapshot", || engine.stats().last_snapshot_sequence == sequence);
        }
    }
    drop(publisher);
    let stats = engine.stats();
    assert_eq!(stats.snapshots, 5, "{stats:?}");
    assert!(stats.snapshot_pause_max_ns > 0);
    let live = engine.shutdown().unwrap();

    // The newest snapshot fails its checksum; one with an unknown schema is newer still.
    let store = SnapshotStore::open(directory.path()).unwrap();
    let newest = store.list().unwrap()[0].clone();
    assert_eq!(newest.sequence, 5_000);
    let mut bytes = std::fs::read(&newest.path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&newest.path, bytes).unwrap();
    let meta = SnapshotMeta {
        schema_version: 99,
        codec: 1,
        sequence: 5_000,
        timestamp_ns: 0,
        state_hash: 0,
    };
    let _ = std::fs::remove_file(&newest.path);
    store.write(&meta, b"a future schema").unwrap();

    let engine =
        builder(directory.path(), Durability::PageCache, topology).open(Bank::default()).unwrap();
    let recovery = engine.recovery().clone();
    assert_eq!(recovery.snapshot.as_ref().map(|(_, sequence)| *sequence), Some(4_000));
    assert_eq!(recovery.replayed, 1_000);
    assert_eq!(recovery.skipped_snapshots.len(), 1, "{:?}", recovery.skipped_snapshots);
    assert!(
        recovery.skipped_snapshots[0].1.contains("schema version 99"),
        "{:?}",
        recovery.skipped_snapshots
    );
    assert_eq!(engine.shutdown().unwrap(), live);
}

fn no_event_is_released_before_its_command_is_in_the_journal(topology: Topology) {
    for durability in [Durability::PageCache, Durability::Fsync] {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().to_owned();
        let checked = Arc::new(Mutex::new(0u64));
        let counter = Arc::clone(&checked);
        let engine = builder(directory.path(), durability, topology)
            .subscriber("gate", move |delivery: Delivery<'_, Event>| {
                if delivery.last && delivery.sequence % 50 == 1 {
                    // The journal (read through its own mapping) already holds the command.
                    let mut reader = JournalReader::open_at(&path, delivery.sequence).unwrap();
                    let record = reader.next().unwrap().expect("the command is journaled");
                    assert_eq!(record.sequence, delivery.sequence);
                    *counter.lock().unwrap() += 1;
                }
            })
            .open(Bank::default())
            .unwrap();
        let mut publisher = engine.publisher();
        for command in commands(1_000, 4, 3) {
            publisher.publish(command).unwrap();
        }
        drop(publisher);
        engine.shutdown().unwrap();
        assert_eq!(*checked.lock().unwrap(), 20);
    }
}

fn a_panic_in_apply_halts_the_engine_and_stop_before_gets_past_it(topology: Topology) {
    let directory = tempfile::tempdir().unwrap();
    let mut commands = commands(100, 4, 5);
    commands.insert(60, Command::Poison);
    let (halting, seen) = recording(directory.path(), Durability::PageCache, topology);
    let engine = halting.open(Bank::default()).unwrap();
    let mut publisher = engine.publisher();
    for command in &commands {
        // Publishing fails once the engine has stopped; it may accept a few before.
        if publisher.publish(command.clone()).is_err() {
            break;
        }
    }
    wait_until("the halt", || engine.halted().is_some());
    let refused = publisher.publish(Command::Open(99)).unwrap_err();
    assert!(
        matches!(refused, EngineError::Halted(Halt::ApplyPanicked { sequence: 61, .. })),
        "{refused}"
    );
    assert_eq!(engine.stats().applied, 60, "nothing after the poison is applied");
    drop(publisher);
    match engine.shutdown().unwrap_err() {
        EngineError::Halted(Halt::ApplyPanicked { sequence, message }) => {
            assert_eq!(sequence, 61);
            assert!(message.contains("poison at sequence 61"), "{message}");
        }
        other => panic!("expected the panic, got {other}"),
    }
    // Every command before the poison had its deliveries, the last marked; the poison's
    // event, emitted before it panicked, was never delivered.
    let seen = seen.lock().unwrap();
    let finished: Vec<u64> =
        seen.iter().filter(|(_, _, last)| *last).map(|(sequence, _, _)| *sequence).collect();
    assert_eq!(finished, (1..=60).collect::<Vec<u64>>());
    assert!(seen.iter().all(|(sequence, _, _)| *sequence <= 60));
    drop(seen);

    // Recovery replays to the same panic, deterministically.
    let error = builder(directory.path(), Durability::PageCache, topology)
        .open(Bank::default())
        .unwrap_err();
    assert!(
        matches!(error, EngineError::Halted(Halt::ApplyPanicked { sequence: 61, .. })),
        "{error}"
    );

    // Unless told to stop before it: the journal is cut after 60 and the engine goes on.
    let engine = builder(directory.path(), Durability::PageCache, topology)
        .stop_before(61)
        .open(Bank::default())
        .unwrap();
    let recovery = engine.recovery().clone();
    assert_eq!(recovery.last_sequence, 60);
    assert!(recovery.stopped_before.is_some());
    let mut publisher = engine.publisher();
    assert_eq!(publisher.publish(Command::Open(99)).unwrap(), 61);
    drop(publisher);
    let bank = engine.shutdown().unwrap();
    let expected =
        replay_to(directory.path(), Bincode, Bank::default(), ReplayTarget::Sequence(61)).unwrap();
    assert_eq!(bank, expected.machine);
    assert!(bank.accounts.contains_key(&99));
}

fn a_command_that_cannot_be_encoded_halts_the_engine_and_loses_nothing_before_it(
    topology: Topology,
) {
    let directory = tempfile::tempdir().unwrap();
    let mut commands = commands(100, 4, 6);
    commands.insert(70, Command::Unencodable(7));
    let engine =
        builder(directory.path(), Durability::PageCache, topology).open(Bank::default()).unwrap();
    let mut publisher = engine.publisher();
    for command in &commands {
        // Publishing fails once the engine has stopped; it may accept a few before.
        if publisher.publish(command.clone()).is_err() {
            break;
        }
    }
    wait_until("the halt", || engine.halted().is_some());
    let refused = publisher.publish(Command::Open(99)).unwrap_err();
    assert!(matches!(refused, EngineError::Halted(Halt::Encode { sequence: 71, .. })), "{refused}");
    assert!(engine.stats().applied <= 70, "nothing from the unencodable command on is applied");
    drop(publisher);
    match engine.shutdown().unwrap_err() {
        EngineError::Halted(Halt::Encode { sequence, message }) => {
            assert_eq!(sequence, 71);
            assert!(message.contains("this command refuses to be encoded"), "{message}");
        }
        other => panic!("expected the encoding failure, got {other}"),
    }

    // The journal holds exactly the 70 commands before it, every one durable; reopening
    // applies those the halt left unapplied, and numbering goes on from 71.
    let journaled = records(directory.path());
    assert_eq!(journaled.len(), 70);
    assert_eq!(journaled.last().map(|record| record.sequence), Some(70));
    let engine =
        builder(directory.path(), Durability::PageCache, topology).open(Bank::default()).unwrap();
    assert_eq!(engine.recovery().last_sequence, 70);
    let mut publisher = engine.publisher();
    assert_eq!(publisher.publish(Command::Open(99)).unwrap(), 71);
    drop(publisher);
    let mut bank = engine.shutdown().unwrap();
    assert_eq!(bank.accounts.remove(&99), Some(0));
    let mut expected = Bank::default();
    let mut output = keel_engine::Output::new();
    for (sequence, command) in (1..).zip(&commands[..70]) {
        let context = keel_engine::Context { sequence, timestamp_ns: 0 };
        output.clear();
        expected.apply(&context, command, &mut output);
    }
    assert_eq!(bank.accounts, expected.accounts);
}

fn the_sole_publisher_is_only_had_alone_and_publishes_like_any_other(topology: Topology) {
    let directory = tempfile::tempdir().unwrap();
    let commands = commands(300, 4, 8);
    let mut engine = builder(directory.path(), Durability::PageCache, topology)
        .responses()
        .open(Bank::default())
        .unwrap();
    let mut publisher = engine.publisher();
    for command in &commands[..100] {
        publisher.publish(command.clone()).unwrap();
    }
    // Refused while another publisher, or a requester, exists; the engine's own is kept.
    let refused = engine.sole_publisher().unwrap_err();
    assert!(refused.to_string().contains("every other publisher"), "{refused}");
    drop(publisher);
    let requester = engine.requester().unwrap();
    assert!(engine.sole_publisher().is_err());
    drop(requester);
    let mut sole = engine.sole_publisher().unwrap();
    assert!(engine.sole_publisher().is_err(), "only once");
    assert!(engine.requester().is_err());
    let taken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.publisher()));
    assert!(taken.is_err(), "publisher() after sole_publisher() panics");

    // Numbering goes on from the other publisher's; single, try and batch publishes.
    assert_eq!(sole.publish(commands[100].clone()).unwrap(), 101);
    assert_eq!(sole.try_publish(commands[101].clone()).unwrap(), 102);
    assert_eq!(sole.publish_batch(commands[102..200].to_vec()).unwrap(), 200);
    for command in &commands[200..] {
        sole.publish(command.clone()).unwrap();
    }
    wait_until("applied", || engine.stats().applied == 300);
    assert_eq!(engine.stats().published, 300);
    drop(sole);
    let live = engine.shutdown().unwrap();
    let (expected, _) =
        run(tempfile::tempdir().unwrap().path(), Durability::Memory, topology, &commands);
    assert_eq!(live.accounts, expected.accounts);
    let replayed =
        replay_to(directory.path(), Bincode, Bank::default(), ReplayTarget::End).unwrap();
    assert_eq!(replayed.state_hash, live.state_hash());
}

fn the_memory_tier_encodes_nothing_so_any_command_is_applied(topology: Topology) {
    let directory = tempfile::tempdir().unwrap();
    let engine =
        builder(directory.path(), Durability::Memory, topology).open(Bank::default()).unwrap();
    let mut publisher = engine.publisher();
    for command in [Command::Open(1), Command::Unencodable(3), Command::Deposit(1, 5)] {
        publisher.publish(command).unwrap();
    }
    drop(publisher);
    let bank = engine.shutdown().unwrap();
    assert_eq!((bank.last_sequence, bank.accounts.get(&1)), (3, Some(&5)));
}

fn the_memory_tier_writes_nothing(topology: Topology) {
    let directory = tempfile::tempdir().unwrap();
    let (live, events) = run(directory.path(), Durability::Memory, topology, &commands(500, 8, 2));
    assert_eq!(events.len(), 500);
    assert!(live.last_sequence == 500);
    assert_eq!(std::fs::read_dir(directory.path()).unwrap().count(), 0);
}

fn try_publish_reports_a_full_ring_and_batches_take_consecutive_sequences(topology: Topology) {
    let directory = tempfile::tempdir().unwrap();
    let (release, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    // A subscriber that blocks until released, behind an output ring of one slot: the engine
    // stops at the second command's events, and the input ring fills up.
    let engine = builder(directory.path(), Durability::PageCache, topology)
        .ring_capacity(4)
        .output_capacity(1)
        .subscriber("slow", move |_| gate.lock().unwrap().recv().unwrap())
        .open(Bank::default())
        .unwrap();
    let mut publisher = engine.publisher();
    let mut accepted = 0;
    let full = loop {
        match publisher.try_publish(Command::Open(accepted)) {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted < 100, "the ring never filled");
    };
    assert!(matches!(full, EngineError::Full), "{full}");
    for _ in 0..accepted {
        release.send(()).unwrap();
    }
    let last =
        publisher.publish_batch(vec![Command::Open(500), Command::Open(501), Command::Open(502)]);
    for _ in 0..3 {
        release.send(()).unwrap();
    }
    assert_eq!(last.unwrap(), u64::from(accepted) + 3);
    drop(publisher);
    let bank = engine.shutdown().unwrap();
    assert_eq!(bank.accounts.len(), accepted as usize + 3);
}

fn a_command_may_emit_more_events_than_the_output_ring_holds(topology: Topology) {
    let directory = tempfile::tempdir().unwrap();
    let (builder, seen) = recording(directory.path(), Durability::PageCache, topology);
    let engine = builder.output_capacity(4).open(Bank::default()).unwrap();
    let mut publisher = engine.publisher();
    publisher.publish(Command::Echo(10)).unwrap();
    publisher.publish(Command::Echo(0)).unwrap();
    drop(publisher);
    engine.shutdown().unwrap();
    let seen = seen.lock().unwrap();
    let flags: Vec<(u64, bool, bool)> =
        seen.iter().map(|(sequence, event, last)| (*sequence, event.is_some(), *last)).collect();
    let mut expected: Vec<(u64, bool, bool)> = (0..10).map(|index| (1, true, index == 9)).collect();
    expected.push((2, false, true));
    assert_eq!(flags, expected);
}

fn requesters_get_the_events_of_their_own_commands(topology: Topology) {
    let directory = tempfile::tempdir().unwrap();
    let engine = builder(directory.path(), Durability::PageCache, topology)
        .responses()
        .open(Bank::default())
        .unwrap();
    let mut requester = engine.requester().unwrap();
    for account in 0..4 {
        let (_, events) = requester.call(Command::Open(account)).unwrap();
        assert_eq!(events, [Event::Opened(account)]);
    }
    let callers: Vec<_> = (0..4u32)
        .map(|account| {
            let mut requester = requester.clone();
            std::thread::spawn(move || {
                for deposit in 1..=300i64 {
                    let (_, events) = requester.call(Command::Deposit(account, 1)).unwrap();
                    // Each caller deposits into its own account: its balance is its count.
                    assert_eq!(events, [Event::Balance(account, deposit)]);
                }
            })
        })
        .collect();
    for caller in callers {
        caller.join().unwrap();
    }
    let (sequence, events) = requester.call(Command::Echo(0)).unwrap();
    assert_eq!((sequence, events), (4 + 1_200 + 1, vec![]));

    // A caller waiting when the engine stops gets the reason.
    let error = requester.call(Command::Poison).unwrap_err();
    assert!(matches!(error, EngineError::Halted(Halt::ApplyPanicked { .. })), "{error}");
    drop(requester);
    assert!(engine.shutdown().is_err());

    let plain = builder(tempfile::tempdir().unwrap().path(), Durability::Memory, topology)
        .open(Bank::default())
        .unwrap();
    assert!(matches!(plain.requester().unwrap_err(), EngineError::Configuration(_)));
}

fn a_full_disk_stops_the_engine_and_loses_nothing_applied(topology: Topology) {
    use keel_journal::storage::{Fault, FaultyStorage, Operation};
    let directory = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new();
    let (faulty, seen) = recording(directory.path(), Durability::Fsync, topology);
    let engine = faulty.journal_storage(Arc::new(storage.clone())).open(Bank::default()).unwrap();
    let mut publisher = engine.publisher();
    for command in commands(200, 4, 9) {
        publisher.publish(command).unwrap();
    }
    wait_until("200 applied", || engine.stats().applied == 200);
    storage.inject_on(Operation::Write, ".segment", 0, Fault::Fail { errno: 28 });
    let mut refused = None;
    for command in commands(400, 4, 10).into_iter().skip(200) {
        if let Err(error) = publisher.publish(command) {
            refused = Some(error);
            break;
        }
    }
    wait_until("the halt", || engine.halted().is_some());
    let refused = refused.unwrap_or_else(|| publisher.publish(Command::Open(77)).unwrap_err());
    assert!(matches!(refused, EngineError::Halted(Halt::Journal { .. })), "{refused}");
    let applied = engine.stats().applied;
    assert_eq!(applied, 200, "nothing after the failed write is applied");
    drop(publisher);
    let live = match engine.shutdown() {
        Err(EngineError::Halted(Halt::Journal { sequence, message })) => {
            assert_eq!(sequence, 201);
            assert!(message.contains("os error 28"), "{message}");
            seen.lock().unwrap().len()
        }
        other => panic!("expected the journal's failure, got {other:?}"),
    };
    assert!(live >= 200);
    // Reopened on a healthy disk: every applied command is there, nothing else.
    let engine =
        builder(directory.path(), Durability::Fsync, topology).open(Bank::default()).unwrap();
    assert_eq!(engine.recovery().last_sequence, 200);
    engine.shutdown().unwrap();
}

fn an_output_poller_sees_every_delivery_on_its_owners_thread(topology: Topology) {
    let directory = tempfile::tempdir().unwrap();
    let mut engine = builder(directory.path(), Durability::PageCache, topology)
        .output_poller()
        .open(Bank::default())
        .unwrap();
    let mut poller = engine.take_output_poller().expect("one poller");
    assert!(engine.take_output_poller().is_none());
    let mut publisher = engine.publisher();
    let mut seen = Vec::new();
    for command in commands(300, 4, 17) {
        publisher.publish(command).unwrap();
        // The owner interleaves publishing and polling, as a gateway thread does.
        poller.poll(64, |delivery| seen.push((delivery.sequence, delivery.last))).unwrap();
    }
    drop(publisher);
    let engine_thread = std::thread::spawn(move || engine.shutdown().unwrap());
    loop {
        match poller.poll(64, |delivery| seen.push((delivery.sequence, delivery.last))) {
            Ok(_) => std::thread::yield_now(),
            Err(EngineError::Closed) => break,
            Err(other) => panic!("{other}"),
        }
    }
    engine_thread.join().unwrap();
    let ends: Vec<u64> =
        seen.iter().filter(|(_, last)| *last).map(|(sequence, _)| *sequence).collect();
    assert_eq!(ends, (1..=300).collect::<Vec<u64>>());
}

fn a_clock_set_on_the_builder_stamps_every_command(topology: Topology) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let directory = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(100));
    let clock = Arc::clone(&now);
    let engine = builder(directory.path(), Durability::PageCache, topology)
        .clock(move || clock.load(Ordering::SeqCst))
        .open(Bank::default())
        .unwrap();
    let mut publisher = engine.publisher();
    // The clock goes back to 50 for the third command: the engine keeps 100.
    for (index, reading) in [100, 100, 50, 200].into_iter().enumerate() {
        now.store(reading, Ordering::SeqCst);
        publisher.publish(Command::Open(index as u32)).unwrap();
        wait_until("applied", || engine.stats().applied == index as u64 + 1);
    }
    drop(publisher);
    let bank = engine.shutdown().unwrap();
    assert_eq!(bank.last_timestamp_ns, 200);
    let stamps: Vec<u64> =
        common::records(directory.path()).iter().map(|record| record.timestamp_ns).collect();
    assert_eq!(stamps, [100, 100, 100, 200]);
}

/// The engine hands each command to the machine's `prefetch_index`, then to its `prefetch`,
/// before applying it, up to twice `PREFETCH_AHEAD` and `PREFETCH_AHEAD` commands ahead, in
/// both durable tiers and in the `Memory` tier; so does a replay, which reaches the same state.
fn every_command_is_hinted_before_it_is_applied(topology: Topology) {
    use common::Hinted;
    for durability in [Durability::PageCache, Durability::Memory] {
        let directory = tempfile::tempdir().unwrap();
        let machine = Hinted::default();
        let hints = Arc::clone(&machine.hints);
        let engine = Engine::builder(directory.path())
            .durability(durability)
            .topology(topology)
            .segment_size(1 << 20)
            .ring_capacity(1024)
            .open(machine)
            .unwrap();
        let mut publisher = engine.publisher();
        // Batches larger than the distance, published whole, so that the engine finds
        // commands ahead of the one it applies.
        for batch in commands(2_000, 16, 41).chunks(50) {
            publisher.publish_batch(batch.to_vec()).unwrap();
        }
        drop(publisher);
        let live = engine.shutdown().unwrap();
        let hints = hints.lock().unwrap();
        assert_eq!(hints.hinted_first, 2_000, "{durability:?}: {hints:?}");
        assert_eq!(hints.not_hinted, 0, "{durability:?}: {hints:?}");
        assert_eq!(hints.not_indexed, 0, "{durability:?}: {hints:?}");
        assert_eq!(hints.farthest, Hinted::PREFETCH_AHEAD + 1, "{durability:?}: {hints:?}");
        assert_eq!(
            hints.farthest_indexed,
            2 * Hinted::PREFETCH_AHEAD + 1,
            "{durability:?}: {hints:?}"
        );
        if durability != Durability::Memory {
            let machine = Hinted::default();
            let replay_hints = Arc::clone(&machine.hints);
            let replayed =
                replay_to(directory.path(), Bincode, machine, ReplayTarget::End).unwrap();
            assert_eq!(replayed.machine, live);
            let replay_hints = replay_hints.lock().unwrap();
            assert_eq!(
                (replay_hints.hinted_first, replay_hints.not_hinted, replay_hints.not_indexed),
                (2_000, 0, 0),
                "replay: {replay_hints:?}"
            );
            assert!(replay_hints.farthest > 1, "replay: {replay_hints:?}");
            assert!(
                replay_hints.farthest_indexed > replay_hints.farthest,
                "replay: {replay_hints:?}"
            );
        }
    }
}

/// A replay that decodes records ahead for the machine's hints still halts at a record that
/// does not decode only when its turn comes, after every record before it, and not at all
/// when it stops before it.
#[test]
fn a_hinted_replay_halts_at_an_undecodable_record_in_its_turn() {
    use common::Hinted;
    let directory = tempfile::tempdir().unwrap();
    let mut writer =
        JournalWriter::open(directory.path(), JournalOptions::new().segment_size(1 << 20)).unwrap();
    let mut bytes = Vec::new();
    for (index, command) in commands(20, 4, 7).iter().enumerate() {
        bytes.clear();
        if index == 10 {
            // No variant of the command enum has this tag.
            bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
        } else {
            keel_engine::Codec::encode(&Bincode, command, &mut bytes).unwrap();
        }
        writer.append(index as u64 + 1, 1, 1, &bytes).unwrap();
    }
    writer.commit().unwrap();
    drop(writer);

    let machine = Hinted::default();
    let hints = Arc::clone(&machine.hints);
    match replay_to(directory.path(), Bincode, machine, ReplayTarget::End) {
        Err(EngineError::Halted(Halt::Decode { sequence: 11, .. })) => {}
        other => panic!("expected a decode error at 11, got {other:?}"),
    }
    assert_eq!(hints.lock().unwrap().hinted_first, 10, "every command before it applied");

    let machine = Hinted::default();
    let hints = Arc::clone(&machine.hints);
    let to_ten = replay_to(directory.path(), Bincode, machine, ReplayTarget::Sequence(10)).unwrap();
    assert_eq!(to_ten.last_sequence, 10);
    assert_eq!(hints.lock().unwrap().hinted_first, 10);
}

/// Every test above, in both topologies.
macro_rules! in_both_topologies {
    ($($name:ident),* $(,)?) => {
        mod compact {
            $(#[test] fn $name() { super::$name(keel_engine::Topology::Compact) })*
        }
        mod pipelined {
            $(#[test] fn $name() { super::$name(keel_engine::Topology::Pipelined) })*
        }
    };
}

in_both_topologies!(
    every_command_is_hinted_before_it_is_applied,
    a_clock_set_on_the_builder_stamps_every_command,
    an_output_poller_sees_every_delivery_on_its_owners_thread,
    a_full_disk_stops_the_engine_and_loses_nothing_applied,
    recovery_from_a_snapshot_replays_only_what_follows_it,
    a_snapshot_of_commands_the_journal_lost_is_never_loaded_again,
    snapshots_follow_the_policy_and_a_bad_one_is_skipped_for_an_older_one,
    no_event_is_released_before_its_command_is_in_the_journal,
    a_panic_in_apply_halts_the_engine_and_stop_before_gets_past_it,
    a_command_that_cannot_be_encoded_halts_the_engine_and_loses_nothing_before_it,
    the_memory_tier_encodes_nothing_so_any_command_is_applied,
    the_sole_publisher_is_only_had_alone_and_publishes_like_any_other,
    the_memory_tier_writes_nothing,
    try_publish_reports_a_full_ring_and_batches_take_consecutive_sequences,
    a_command_may_emit_more_events_than_the_output_ring_holds,
    requesters_get_the_events_of_their_own_commands
);

/// A bank that counts the snapshot copies it made into an earlier copy.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Reusing(Bank);

static REUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl StateMachine for Reusing {
    type Command = Command;
    type Event = Event;

    fn apply(
        &mut self,
        context: &keel_engine::Context,
        command: &Command,
        output: &mut keel_engine::Output<Event>,
    ) {
        self.0.apply(context, command, output);
    }

    fn state_hash(&self) -> u64 {
        self.0.state_hash()
    }

    fn copy_for_snapshot(&self, previous: &mut Option<Self>) -> Self {
        match previous.take() {
            Some(mut copy) => {
                REUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                copy.clone_from(self);
                copy
            }
            None => self.clone(),
        }
    }
}

#[test]
fn snapshots_reuse_the_previous_copy_when_the_machine_asks() {
    let directory = tempfile::tempdir().unwrap();
    let engine =
        Engine::builder(directory.path()).segment_size(1 << 20).open(Reusing::default()).unwrap();
    let mut publisher = engine.publisher();
    for (round, command) in commands(300, 4, 23).into_iter().enumerate() {
        publisher.publish(command).unwrap();
        if round % 100 == 99 {
            let sequence = round as u64 + 1;
            wait_until("applied", || engine.stats().applied == sequence);
            engine.snapshot();
            wait_until("snapshot", || engine.stats().last_snapshot_sequence == sequence);
            // Give the snapshot thread time to hand its copy back.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    drop(publisher);
    let live = engine.shutdown().unwrap();
    assert_eq!(
        REUSED.load(std::sync::atomic::Ordering::Relaxed),
        2,
        "the second and third snapshots"
    );
    let engine =
        Engine::builder(directory.path()).segment_size(1 << 20).open(Reusing::default()).unwrap();
    assert_eq!(engine.recovery().snapshot.as_ref().map(|(_, sequence)| *sequence), Some(300));
    assert_eq!(engine.shutdown().unwrap(), live);
}

/// Balances in a copy-on-write vector: `(account, delta)` commands.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct CowBalances {
    balances: keel_engine::CowVec<i64>,
}

impl StateMachine for CowBalances {
    type Command = (u32, i64);
    type Event = ();

    fn apply(
        &mut self,
        _: &keel_engine::Context,
        &(account, delta): &(u32, i64),
        _: &mut keel_engine::Output<()>,
    ) {
        let index = account as usize % self.balances.len();
        let balance = self.balances.get_mut(index).expect("an index modulo the length");
        *balance = balance.wrapping_add(delta);
    }

    fn state_hash(&self) -> u64 {
        self.balances.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &balance| {
            (hash ^ balance as u64).wrapping_mul(0x0100_0000_01b3)
        })
    }
}

/// A snapshot of a state held in a `CowVec` shares its chunks with the state the engine goes on
/// writing; the snapshot written must still be the state at its sequence, not one with later
/// writes in it. The commands after the snapshot are published without waiting for it, and they
/// write into every chunk.
#[test]
fn a_copy_on_write_state_snapshots_the_state_at_its_sequence_while_writes_go_on() {
    let directory = tempfile::tempdir().unwrap();
    let initial = CowBalances { balances: keel_engine::CowVec::from_elem(0, 100_000) };
    let command = |index: u64| ((index * 7_919 % 100_000) as u32, index as i64);
    let engine =
        Engine::builder(directory.path()).segment_size(1 << 20).open(initial.clone()).unwrap();
    let mut publisher = engine.publisher();
    for index in 1..=2_000 {
        publisher.publish(command(index)).unwrap();
    }
    wait_until("applied", || engine.stats().applied == 2_000);
    engine.snapshot();
    for index in 2_001..=60_000 {
        publisher.publish(command(index)).unwrap();
    }
    drop(publisher);
    // The engine takes it between two batches, wherever the stream then is.
    wait_until("snapshot", || engine.stats().snapshots == 1);
    let taken = engine.stats().last_snapshot_sequence;
    let live = engine.shutdown().unwrap();
    assert!((2_000..=60_000).contains(&taken), "the snapshot at {taken}");

    let mut expected = initial.clone();
    let mut output = keel_engine::Output::new();
    for index in 1..=taken {
        let context = keel_engine::Context { sequence: index, timestamp_ns: 0 };
        expected.apply(&context, &command(index), &mut output);
    }
    let at_snapshot =
        replay_to(directory.path(), Bincode, initial.clone(), ReplayTarget::Sequence(taken))
            .unwrap();
    assert_eq!(at_snapshot.snapshot.map(|(_, sequence)| sequence), Some(taken));
    assert_eq!(at_snapshot.replayed, 0, "the state came from the snapshot alone");
    assert_eq!(at_snapshot.state_hash, expected.state_hash());
    let engine = Engine::builder(directory.path()).segment_size(1 << 20).open(initial).unwrap();
    assert_eq!(engine.recovery().replayed, 60_000 - taken);
    assert_eq!(engine.shutdown().unwrap(), live);
}

/// A replay longer than what its reading thread checks ahead (runs of up to 8 Ki records, a
/// few runs ahead) and crossing segments: every point's state is the one applying the
/// journaled commands directly gives, the replayed events come in order, and damage that the
/// reading thread meets ahead of a replay's target does not stop the replay short of it.
#[test]
fn a_replay_read_ahead_on_another_thread_gives_every_point_and_stops_at_damage() {
    let directory = tempfile::tempdir().unwrap();
    let workload = commands(120_000, 64, 21);
    let (live, live_events) =
        run(directory.path(), Durability::PageCache, Topology::Compact, &workload);
    let records = records(directory.path());
    let segments = keel_journal::segment::list_segments(&directory.path().join("journal")).unwrap();
    assert!(segments.len() >= 3, "{} segments", segments.len());
    // The state after each command, applied directly with the journaled contexts.
    let mut bank = Bank::default();
    let mut output = keel_engine::Output::new();
    let mut hashes = vec![bank.state_hash()];
    for (record, command) in records.iter().zip(&workload) {
        let context =
            keel_engine::Context { sequence: record.sequence, timestamp_ns: record.timestamp_ns };
        output.clear();
        bank.apply(&context, command, &mut output);
        hashes.push(bank.state_hash());
    }
    assert_eq!(bank, live);
    let at = |target| replay_to(directory.path(), Bincode, Bank::default(), target);
    for point in [1, 8_191, 8_192, 8_193, 40_000, 119_999, 120_000] {
        let replayed = at(ReplayTarget::Sequence(point)).unwrap();
        assert_eq!(replayed.last_sequence, point);
        assert_eq!(replayed.state_hash, hashes[point as usize], "at {point}");
    }
    let replayed: Arc<Mutex<Grouped>> = Arc::default();
    let sink = Arc::clone(&replayed);
    let engine = builder(directory.path(), Durability::PageCache, Topology::Compact)
        .on_replay(move |context, events| {
            sink.lock().unwrap().push((context.sequence, events.to_vec()))
        })
        .open(Bank::default())
        .unwrap();
    assert_eq!(engine.recovery().replayed, 120_000);
    assert_eq!(engine.shutdown().unwrap(), live);
    assert!(*replayed.lock().unwrap() == live_events, "the replayed events differ");

    // A bit flipped in the middle of the second segment, a segment that others follow.
    let second = &segments[1];
    let damaged_sequence = second.first_sequence + 1_000;
    let bytes = std::fs::read(&second.path).unwrap();
    let mut offset = keel_journal::format::SEGMENT_HEADER_SIZE;
    let damaged_batch = loop {
        let keel_journal::format::BatchCheck::Batch(batch) =
            keel_journal::format::check_batch(&bytes[offset..])
        else {
            panic!("the second segment ends before sequence {damaged_sequence}");
        };
        if batch.last_sequence >= damaged_sequence {
            break batch.first_sequence;
        }
        offset += batch.size();
    };
    let mut file = std::fs::OpenOptions::new().write(true).open(&second.path).unwrap();
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(offset as u64 + 20)).unwrap();
    file.write_all(&[bytes[offset + 20] ^ 0x04]).unwrap();
    drop(file);
    match at(ReplayTarget::End) {
        Err(EngineError::Journal(error)) => assert!(error.is_damage(), "{error}"),
        other => panic!("expected the damage, got {:?}", other.map(|state| state.last_sequence)),
    }
    let before = damaged_batch - 1;
    let replayed = at(ReplayTarget::Sequence(before)).unwrap();
    assert_eq!(replayed.last_sequence, before);
    assert_eq!(replayed.state_hash, hashes[before as usize]);
}
