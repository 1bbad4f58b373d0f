//! Same-host replicas: a replica that tails a live primary's journal reaches the primary's state
//! and holds a copy of its journal; it catches up after a stop; it is seeded from the
//! primary's snapshot when the primary's journal was retired; it halts at the first checkpoint
//! after a divergence; it refuses a directory that is not its primary's journal's.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{batches, commands, records, Bank, Command, Skewed};
use keel_engine::{
    Durability, Engine, EngineError, Halt, Replica, SnapshotPolicy, StateMachine, Topology,
};
use keel_journal::format::KIND_CHECKPOINT;
use keel_journal::{JournalOptions, JournalReader, JournalWriter, Retention};

const PATIENCE: Duration = Duration::from_secs(60);

fn primary(directory: &Path, topology: Topology, every: u64) -> Engine<Bank> {
    Engine::builder(directory)
        .topology(topology)
        .segment_size(1 << 20)
        .ring_capacity(256)
        .checkpoints(every)
        .open(Bank::default())
        .unwrap()
}

/// Publishes `commands` in batches of 1 to 40; returns the last sequence.
fn publish(engine: &Engine<Bank>, commands: &[Command]) -> u64 {
    let mut publisher = engine.publisher();
    let mut last = 0;
    for (index, chunk) in commands.chunks(40).enumerate() {
        last = if index % 3 == 0 {
            chunk.iter().map(|command| publisher.publish(command.clone()).unwrap()).last().unwrap()
        } else {
            publisher.publish_batch(chunk.to_vec()).unwrap()
        };
    }
    last
}

#[test]
fn a_replica_following_a_live_primary_reaches_its_state_and_copies_its_journal() {
    for (topology, tier) in
        [(Topology::Compact, Durability::PageCache), (Topology::Pipelined, Durability::Fsync)]
    {
        let primary_directory = tempfile::tempdir().unwrap();
        let replica_directory = tempfile::tempdir().unwrap();
        let engine = primary(primary_directory.path(), topology, 50);
        let input = commands(6_000, 40, 11);
        // Some commands before the replica starts, the rest while it follows.
        publish(&engine, &input[..1_000]);
        let replica = Replica::builder(primary_directory.path(), replica_directory.path())
            .durability(tier)
            .segment_size(1 << 20)
            .wait(keel_engine::Wait::Yielding)
            .open(Bank::default())
            .unwrap();
        publish(&engine, &input[1_000..]);
        let primary_state = engine.shutdown().unwrap();
        // The journal's end, a checkpoint after the last command included.
        let primary_records = records(primary_directory.path());
        let last = primary_records.last().unwrap().sequence;
        assert!(replica.wait_for(last, PATIENCE).unwrap(), "the replica reached {last}");
        let stats = replica.stats();
        let replica_state = replica.stop().unwrap();

        assert_eq!(replica_state, primary_state, "{topology:?} {tier:?}");
        assert_eq!(replica_state.state_hash(), primary_state.state_hash());
        let checkpoints =
            primary_records.iter().filter(|record| record.kind == KIND_CHECKPOINT).count() as u64;
        assert!(checkpoints >= 100, "{checkpoints} checkpoints");
        assert_eq!(stats.checkpoints, checkpoints, "every checkpoint was compared");
        assert_eq!((stats.applied, stats.durable), (last, last));
        assert_eq!(records(replica_directory.path()), primary_records, "the same journal");
    }
}

#[test]
fn a_stopped_replica_catches_up_with_nothing_missing_or_doubled() {
    let primary_directory = tempfile::tempdir().unwrap();
    let replica_directory = tempfile::tempdir().unwrap();
    let engine = primary(primary_directory.path(), Topology::Compact, 64);
    let input = commands(5_000, 30, 4);
    let follow = || {
        Replica::builder(primary_directory.path(), replica_directory.path())
            .segment_size(1 << 20)
            .open(Bank::default())
            .unwrap()
    };

    let replica = follow();
    let middle = publish(&engine, &input[..2_000]);
    assert!(replica.wait_for(middle, PATIENCE).unwrap());
    replica.snapshot();
    // The snapshot is written by the replica's snapshot thread, which `stop` waits for.
    while replica.stats().snapshots == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(replica.stop().unwrap());
    // The primary goes on without it.
    publish(&engine, &input[2_000..3_500]);

    let replica = follow();
    let recovery = replica.recovery().clone();
    assert_eq!(recovery.last_sequence, middle, "the replica recovered what it held");
    assert_eq!(recovery.snapshot.as_ref().map(|(_, sequence)| *sequence), Some(middle));
    assert_eq!(recovery.replayed, 0);
    publish(&engine, &input[3_500..]);
    let primary_state = engine.shutdown().unwrap();
    let last = records(primary_directory.path()).last().unwrap().sequence;
    assert!(replica.wait_for(last, PATIENCE).unwrap());
    assert_eq!(replica.stop().unwrap(), primary_state);
    assert_eq!(records(replica_directory.path()), records(primary_directory.path()));
}

#[test]
fn a_replica_of_a_retired_journal_starts_from_the_primarys_snapshot() {
    let primary_directory = tempfile::tempdir().unwrap();
    let replica_directory = tempfile::tempdir().unwrap();
    let input = commands(80_000, 50, 8);
    // Enough commands for several 1 MiB segments, a snapshot near the end, then retention.
    let engine = primary(primary_directory.path(), Topology::Compact, 1_000);
    publish(&engine, &input[..60_000]);
    engine.snapshot();
    while engine.stats().snapshots == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let snapshot_at = engine.stats().last_snapshot_sequence;
    publish(&engine, &input[60_000..61_000]);
    engine.shutdown().unwrap();
    let mut writer =
        JournalWriter::open(primary_directory.path(), JournalOptions::new().segment_size(1 << 20))
            .unwrap();
    let removed = writer.retain_from(snapshot_at + 1, Retention::Delete).unwrap();
    assert!(!removed.is_empty(), "segments before the snapshot were retired");
    drop(writer);
    let first = JournalReader::open(primary_directory.path()).unwrap().next_sequence();
    assert!(first > 1 && first <= snapshot_at + 1, "the journal starts at {first}");

    let engine = primary(primary_directory.path(), Topology::Compact, 1_000);
    let replica = Replica::builder(primary_directory.path(), replica_directory.path())
        .segment_size(1 << 20)
        .open(Bank::default())
        .unwrap();
    assert_eq!(
        replica.recovery().snapshot.as_ref().map(|(_, sequence)| *sequence),
        Some(snapshot_at),
        "seeded from the primary's snapshot"
    );
    publish(&engine, &input[61_000..]);
    let primary_state = engine.shutdown().unwrap();
    let primary_records = records(primary_directory.path());
    assert!(replica.wait_for(primary_records.last().unwrap().sequence, PATIENCE).unwrap());
    assert_eq!(replica.stop().unwrap(), primary_state);
    // The replica's journal starts right after the snapshot it was seeded from, and holds
    // the primary's records from there.
    let replica_records = records(replica_directory.path());
    assert_eq!(replica_records[0].sequence, snapshot_at + 1);
    let from =
        primary_records.iter().position(|record| record.sequence == snapshot_at + 1).unwrap();
    assert_eq!(replica_records, primary_records[from..]);
}

#[test]
fn a_replica_halts_at_the_first_checkpoint_after_it_diverges() {
    let primary_directory = tempfile::tempdir().unwrap();
    let replica_directory = tempfile::tempdir().unwrap();
    let engine = Engine::builder(primary_directory.path())
        .segment_size(1 << 20)
        .checkpoints(100)
        .open(Skewed::default())
        .unwrap();
    let replica = Replica::builder(primary_directory.path(), replica_directory.path())
        .segment_size(1 << 20)
        .open(Skewed::at(450))
        .unwrap();
    let mut publisher = engine.publisher();
    for command in commands(1_000, 20, 2) {
        publisher.publish(command).unwrap();
    }
    drop(publisher);
    engine.shutdown().unwrap();
    // Checkpoints sit at multiples of 101; the first after 450 is 505.
    match replica.wait_for(u64::MAX, PATIENCE) {
        Err(EngineError::Halted(Halt::Diverged { checkpoint: 505, covered: 504, .. })) => {}
        other => panic!("expected a divergence at 505, got {other:?}"),
    }
    assert_eq!(replica.stats().applied, 504, "applied up to the checkpoint it failed");
    assert!(matches!(replica.stop(), Err(EngineError::Halted(Halt::Diverged { .. }))));
}

#[test]
fn a_replica_refuses_another_journal_and_a_journal_ahead_of_its_primary() {
    let primary_directory = tempfile::tempdir().unwrap();
    let other_directory = tempfile::tempdir().unwrap();
    // No journal to follow yet.
    match Replica::follow(primary_directory.path(), other_directory.path(), Bank::default()) {
        Err(EngineError::Recovery(message)) => assert!(message.contains("no journal"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let engine = primary(primary_directory.path(), Topology::Compact, 10);
    publish(&engine, &commands(50, 5, 1));
    // Its own directory.
    assert!(matches!(
        Replica::follow(primary_directory.path(), primary_directory.path(), Bank::default()),
        Err(EngineError::Configuration(_))
    ));
    // A directory holding another journal.
    let other = Engine::builder(other_directory.path())
        .segment_size(1 << 20)
        .open(Bank::default())
        .unwrap();
    publish(&other, &commands(5, 5, 1));
    other.shutdown().unwrap();
    match Replica::follow(primary_directory.path(), other_directory.path(), Bank::default()) {
        Err(EngineError::Journal(error)) => {
            assert!(error.to_string().contains("holds journal"), "{error}")
        }
        other => panic!("expected a foreign journal, got {other:?}"),
    }
    // A replica that holds more than its primary (the primary's journal was cut back).
    let replica_directory = tempfile::tempdir().unwrap();
    let replica = Replica::builder(primary_directory.path(), replica_directory.path())
        .segment_size(1 << 20)
        .open(Bank::default())
        .unwrap();
    let last = publish(&engine, &commands(60, 5, 2));
    assert!(replica.wait_for(last, PATIENCE).unwrap());
    replica.stop().unwrap();
    engine.shutdown().unwrap();
    keel_journal::Repair::plan(primary_directory.path(), 20).unwrap().execute().unwrap();
    match Replica::builder(primary_directory.path(), replica_directory.path())
        .segment_size(1 << 20)
        .open(Bank::default())
    {
        Err(EngineError::Recovery(message)) => {
            assert!(message.contains("past the end of the primary's journal"), "{message}")
        }
        other => panic!("expected a replica ahead of its primary, got {other:?}"),
    }
}

#[test]
fn a_replica_in_the_memory_tier_is_refused() {
    let primary_directory = tempfile::tempdir().unwrap();
    let replica_directory = tempfile::tempdir().unwrap();
    let engine = primary(primary_directory.path(), Topology::Compact, 10);
    engine.shutdown().unwrap();
    let refused = Replica::builder(primary_directory.path(), replica_directory.path())
        .durability(Durability::Memory)
        .open(Bank::default());
    assert!(matches!(refused, Err(EngineError::Configuration(_))));
}

#[test]
fn a_replica_takes_the_snapshots_its_primarys_recovery_uses() {
    let primary_directory = tempfile::tempdir().unwrap();
    let replica_directory = tempfile::tempdir().unwrap();
    // The primary takes no snapshot of its own.
    let engine = primary(primary_directory.path(), Topology::Compact, 100);
    let replica = Replica::builder(primary_directory.path(), replica_directory.path())
        .segment_size(1 << 20)
        .snapshots(SnapshotPolicy { every_commands: Some(1_000), ..SnapshotPolicy::default() })
        .snapshots_for(primary_directory.path())
        .open(Bank::default())
        .unwrap();
    let last = publish(&engine, &commands(5_000, 30, 6));
    assert!(replica.wait_for(last, PATIENCE).unwrap());
    while replica.stats().last_snapshot_sequence < 4_000 {
        std::thread::sleep(Duration::from_millis(1));
    }
    replica.stop().unwrap();
    // The newest snapshot the replica wrote into the primary's folder, read once it stopped:
    // one in progress when the loop above ended may have finished since.
    let taken = keel_journal::SnapshotStore::open(primary_directory.path())
        .unwrap()
        .list()
        .unwrap()
        .iter()
        .map(|file| file.sequence)
        .max();
    assert!(taken >= Some(4_000), "the replica's snapshots: {taken:?}");
    assert_eq!(engine.stats().snapshots, 0, "the primary serialized nothing");
    let state = engine.shutdown().unwrap();

    let reopened = primary(primary_directory.path(), Topology::Compact, 100);
    let snapshot = reopened.recovery().snapshot.as_ref().map(|(_, sequence)| *sequence);
    assert_eq!(snapshot, taken, "recovery loaded the replica's newest snapshot");
    assert!(reopened.recovery().replayed < 1_100);
    assert_eq!(reopened.shutdown().unwrap(), state);
}

/// A replica in the `Fsync` tier that catches up on a backlog has many of its primary's batches
/// at hand before it commits, and each sync must still be one batch: a power loss during a sync
/// whose commit held two could keep the later batch and tear the earlier, which recovery would
/// read as corruption rather than a torn tail (`docs/journal-format.md`, section 5). Its journal
/// holds the primary's batches byte for byte.
#[test]
fn an_fsync_replica_catching_up_syncs_one_batch_at_a_time() {
    use std::sync::Arc;

    use keel_journal::storage::{FaultyStorage, Operation};

    let primary_directory = tempfile::tempdir().unwrap();
    let replica_directory = tempfile::tempdir().unwrap();
    let engine = primary(primary_directory.path(), Topology::Compact, 0);
    // Forty commands at a time, each applied before the next are published: one journal batch
    // (or more) each, whatever the threads' timing.
    let mut publisher = engine.publisher();
    let mut last = 0;
    for chunk in commands(4_000, 40, 12).chunks(40) {
        last = publisher.publish_batch(chunk.to_vec()).unwrap();
        while engine.stats().applied < last {
            std::thread::yield_now();
        }
    }
    drop(publisher);
    engine.shutdown().unwrap();
    let storage = FaultyStorage::new();
    let replica = Replica::builder(primary_directory.path(), replica_directory.path())
        .durability(Durability::Fsync)
        .segment_size(1 << 20)
        .journal_storage(Arc::new(storage.clone()))
        .open(Bank::default())
        .unwrap();
    assert!(replica.wait_for(last, PATIENCE).unwrap(), "the replica reached {last}");
    replica.stop().unwrap();
    let held = batches(replica_directory.path());
    assert!(held.len() >= 100, "{} batches", held.len());
    assert!(held == batches(primary_directory.path()), "the primary's batches, byte for byte");
    let syncs = storage.count(Operation::SyncData) as usize;
    assert!(held.len() <= syncs, "{} batches in the replica's journal, {syncs} syncs", held.len());
}
