//! Checkpoint records: where they sit, what they hold, and replay and recovery halting at the
//! first one whose hash the replayed state does not match.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{commands, records, Bank, Command, Record, Skewed};
use keel_engine::{
    replay_from, replay_to, Bincode, Durability, Engine, EngineError, Halt, ReplayFrom,
    ReplayTarget, StateMachine, Topology,
};
use keel_journal::format::{Checkpoint, KIND_CHECKPOINT};
use keel_journal::{JournalOptions, JournalWriter};

/// Publishes `commands` one by one and in batches of varied sizes; returns the sequences the
/// publisher returned for each.
fn publish_mixed(engine: &Engine<Bank>, commands: &[Command]) -> Vec<u64> {
    let mut publisher = engine.publisher();
    let mut sequences = Vec::new();
    let mut rest = commands;
    let mut size = 1;
    while !rest.is_empty() {
        let (now, later) = rest.split_at(size.min(rest.len()));
        if now.len() == 1 {
            sequences.push(publisher.publish(now[0].clone()).unwrap());
        } else {
            let last = publisher.publish_batch(now.to_vec()).unwrap();
            // A batch's sequences are consecutive but for the checkpoints between them: the
            // test recovers each from the journal below, and checks the last here.
            sequences.push(last);
        }
        rest = later;
        size = size % 13 + 1;
    }
    sequences
}

/// An engine on `directory` writing a checkpoint every `every` commands, and the sequences of
/// the commands whose events it has delivered, in delivery order.
fn open_recording(
    directory: &Path,
    topology: Topology,
    durability: Durability,
    ring_capacity: usize,
    every: u64,
) -> (Engine<Bank>, Arc<Mutex<Vec<u64>>>) {
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let engine = Engine::builder(directory)
        .durability(durability)
        .topology(topology)
        .segment_size(1 << 20)
        .ring_capacity(ring_capacity)
        .checkpoints(every)
        .subscriber("sequences", move |delivery| {
            if delivery.last {
                sink.lock().unwrap().push(delivery.sequence);
            }
        })
        .open(Bank::default())
        .unwrap();
    (engine, seen)
}

/// Checks that every (`every` + 1)-th of the journal's `records` is a checkpoint and every
/// other one a command, and that each checkpoint holds the hash of the state replayed to the
/// command before it; returns the commands' sequences.
fn check_checkpoints(directory: &Path, records: &[Record], every: u64, case: &str) -> Vec<u64> {
    for Record { sequence, kind, payload, .. } in records {
        let (sequence, kind) = (*sequence, *kind);
        let expected = if sequence.is_multiple_of(every + 1) { KIND_CHECKPOINT } else { 1 };
        assert_eq!(kind, expected, "sequence {sequence}, {case}");
        if kind == KIND_CHECKPOINT {
            let checkpoint = Checkpoint::decode(payload).unwrap();
            assert_eq!(checkpoint.sequence, sequence - 1);
            let replayed = replay_to(
                directory,
                Bincode,
                Bank::default(),
                ReplayTarget::Sequence(sequence - 1),
            )
            .unwrap();
            assert_eq!(checkpoint.state_hash, replayed.state_hash, "at {sequence}, {case}");
        }
    }
    records
        .iter()
        .filter(|record| record.kind != KIND_CHECKPOINT)
        .map(|record| record.sequence)
        .collect()
}

/// The state hash of the whole journal in `directory`, replayed from its first record.
fn replayed_hash(directory: &Path) -> u64 {
    replay_from(directory, Bincode, Bank::default(), ReplayFrom::Beginning, ReplayTarget::End)
        .unwrap()
        .state_hash
}

#[test]
fn checkpoints_sit_every_n_commands_and_hold_the_state_hash_there() {
    for (topology, durability) in [
        (Topology::Compact, Durability::PageCache),
        (Topology::Compact, Durability::Fsync),
        (Topology::Pipelined, Durability::PageCache),
        (Topology::Pipelined, Durability::Fsync),
    ] {
        let directory = tempfile::tempdir().unwrap();
        let every = 7;
        let (engine, seen) = open_recording(directory.path(), topology, durability, 64, every);
        let input = commands(500, 20, 3);
        let returned = publish_mixed(&engine, &input);
        engine.shutdown().unwrap();

        let case = format!("{topology:?} {durability:?}");
        let records = records(directory.path());
        let commands = check_checkpoints(directory.path(), &records, every, &case);
        assert_eq!(commands.len(), input.len(), "{case}");
        // The publisher's sequences and the events' are the journal's.
        assert!(returned.iter().all(|sequence| commands.binary_search(sequence).is_ok()));
        assert_eq!(returned.last(), commands.last());
        assert_eq!(*seen.lock().unwrap(), commands, "{case}");
    }
}

#[test]
fn large_batches_with_checkpoints_inside_are_journaled_and_applied_in_order() {
    // The compact engine takes a whole published batch at once, and journals and applies it
    // as runs of consecutive sequences that end at each checkpoint. Batches of 10 000
    // published at once, with a checkpoint every 5 000 commands, hold runs of thousands, cut
    // anywhere in the batch; the test above uses a ring of 64 slots.
    let directory = tempfile::tempdir().unwrap();
    let every = 5_000;
    let (engine, seen) =
        open_recording(directory.path(), Topology::Compact, Durability::PageCache, 1 << 14, every);
    let input = commands(30_000, 50, 11);
    let mut publisher = engine.publisher();
    for batch in input.chunks(10_000) {
        publisher.publish_batch(batch.to_vec()).unwrap();
    }
    drop(publisher);
    while seen.lock().unwrap().len() < input.len() {
        std::thread::yield_now();
    }
    let largest_batch = engine.stats().largest_batch;
    let live_hash = engine.shutdown().unwrap().state_hash();
    assert!(largest_batch > every, "no batch, the largest {largest_batch}, held a checkpoint");

    let records = records(directory.path());
    for pair in records.windows(2) {
        assert_eq!(pair[1].sequence, pair[0].sequence + 1, "the journal is gap-free");
    }
    let commands = check_checkpoints(directory.path(), &records, every, "large batches");
    assert_eq!(commands.len(), input.len());
    assert_eq!(*seen.lock().unwrap(), commands, "events in the journal's order");
    assert_eq!(replayed_hash(directory.path()), live_hash);
}

#[test]
fn numbering_continues_across_restarts_and_interval_changes() {
    let directory = tempfile::tempdir().unwrap();
    let open = |every: Option<u64>| {
        let builder = Engine::builder(directory.path()).segment_size(1 << 20);
        match every {
            Some(every) => builder.checkpoints(every),
            None => builder,
        }
        .open(Bank::default())
        .unwrap()
    };
    let input = commands(90, 10, 9);
    let mut expected_hash = 0;
    // 30 commands with checkpoints every 4, then every 6, then none.
    for (round, every) in [Some(4), Some(6), None].into_iter().enumerate() {
        let engine = open(every);
        let mut publisher = engine.publisher();
        for command in &input[round * 30..(round + 1) * 30] {
            publisher.publish(command.clone()).unwrap();
        }
        drop(publisher);
        expected_hash = engine.shutdown().unwrap().state_hash();
    }
    let records = records(directory.path());
    let checkpoints = records.iter().filter(|record| record.kind == KIND_CHECKPOINT).count();
    assert_eq!(records.len() - checkpoints, 90);
    // 30 commands at one checkpoint per 4 take 7 checkpoints; at one per 6, about 5 more.
    assert!(checkpoints >= 11, "{checkpoints} checkpoints");
    for pair in records.windows(2) {
        assert_eq!(pair[1].sequence, pair[0].sequence + 1, "the journal is gap-free");
    }
    assert_eq!(replayed_hash(directory.path()), expected_hash);
}

#[test]
fn the_memory_tier_writes_no_checkpoints_and_numbers_every_command() {
    let directory = tempfile::tempdir().unwrap();
    let engine = Engine::builder(directory.path())
        .durability(Durability::Memory)
        .checkpoints(2)
        .open(Bank::default())
        .unwrap();
    let mut publisher = engine.publisher();
    for (index, command) in commands(10, 3, 1).into_iter().enumerate() {
        assert_eq!(publisher.publish(command).unwrap(), index as u64 + 1);
    }
}

#[test]
fn replay_and_recovery_halt_at_the_first_checkpoint_after_a_divergence() {
    let directory = tempfile::tempdir().unwrap();
    let every = 10;
    let builder = || Engine::builder(directory.path()).segment_size(1 << 20).checkpoints(every);
    let engine = builder().open(Skewed::default()).unwrap();
    let mut publisher = engine.publisher();
    for command in commands(100, 10, 5) {
        publisher.publish(command).unwrap();
    }
    drop(publisher);
    engine.shutdown().unwrap();

    // Determinism holds: replay and recovery pass every checkpoint.
    replay_to(directory.path(), Bincode, Skewed::default(), ReplayTarget::End).unwrap();

    // A copy that differs at sequence 25: the checkpoint at 33 (after 32) is the first after
    // it, and the one named.
    let replayed = replay_to(directory.path(), Bincode, Skewed::at(25), ReplayTarget::End);
    let expected = Halt::Diverged { checkpoint: 33, covered: 32, recorded: 0, computed: 0 };
    match replayed {
        Err(EngineError::Halted(Halt::Diverged { checkpoint, covered, recorded, computed })) => {
            assert_eq!((checkpoint, covered), (33, 32), "expected {expected:?}");
            assert_ne!(recorded, computed);
        }
        other => panic!("expected a divergence at 33, got {other:?}"),
    }
    // A replay that stops before that checkpoint does not know yet.
    replay_to(directory.path(), Bincode, Skewed::at(25), ReplayTarget::Sequence(32)).unwrap();
    // Recovery finds it too, and does not open.
    match builder().open(Skewed::at(25)) {
        Err(EngineError::Halted(Halt::Diverged { checkpoint: 33, .. })) => {}
        other => panic!("expected recovery to halt at 33, got {other:?}"),
    }
    builder().open(Skewed::default()).unwrap().shutdown().unwrap();
}

#[test]
fn a_malformed_checkpoint_record_is_a_decode_error_naming_it() {
    let directory = tempfile::tempdir().unwrap();
    let mut writer =
        JournalWriter::open(directory.path(), JournalOptions::new().segment_size(1 << 20)).unwrap();
    let mut command = Vec::new();
    keel_engine::Codec::encode(&Bincode, &Command::Open(1), &mut command).unwrap();
    writer.append(1, 1, 1, &command).unwrap();
    writer.append(1, KIND_CHECKPOINT, 1, &[0; 8]).unwrap();
    writer.commit().unwrap();
    drop(writer);
    match replay_to(directory.path(), Bincode, Bank::default(), ReplayTarget::End) {
        Err(EngineError::Halted(Halt::Decode { sequence: 2, message })) => {
            assert!(message.contains("checkpoint"), "{message}");
        }
        other => panic!("expected a decode error at 2, got {other:?}"),
    }
}
