//! Replication over TCP on loopback: a remote replica reaches the primary's state and journal;
//! the `Replicated` tier applies only what a replica holds durably, waits when no replica
//! does, and drops a replica that stops acknowledging; a fault proxy that delays, freezes,
//! cuts and corrupts the stream causes no divergence and no crash; a wrong secret and another
//! journal are refused.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{batches, commands, records, Bank, Command};
use keel_engine::{
    replay_to, Bincode, Context, Durability, Engine, EngineError, Halt, Output, ReplayTarget,
    Replica, Replication, StateMachine, Wait,
};
use keel_journal::format::KIND_CHECKPOINT;

const SECRET: &[u8] = b"correct horse battery staple";
const PATIENCE: Duration = Duration::from_secs(60);
/// The record kind keel-engine journals a command under (crate-private there as `KIND_COMMAND`).
const KIND_COMMAND: u16 = 1;

fn primary(directory: &Path, durability: Durability, replication: Replication) -> Engine<Bank> {
    primary_waiting(directory, durability, replication, Wait::default())
}

fn primary_waiting(
    directory: &Path,
    durability: Durability,
    replication: Replication,
    wait: Wait,
) -> Engine<Bank> {
    Engine::builder(directory)
        .durability(durability)
        .wait(wait)
        .segment_size(1 << 20)
        .ring_capacity(256)
        .checkpoints(100)
        .replicate(replication)
        .open(Bank::default())
        .unwrap()
}

fn replica(address: SocketAddr, directory: &Path) -> Replica<Bank> {
    replica_of(address, directory, Bank::default())
}

fn replica_of<M: StateMachine>(address: SocketAddr, directory: &Path, machine: M) -> Replica<M> {
    Replica::remote(address.to_string(), SECRET, directory)
        .segment_size(1 << 20)
        .open(machine)
        .unwrap()
}

/// Publishes `commands` in batches of up to 20; returns the last sequence.
fn publish(engine: &Engine<Bank>, commands: &[Command]) -> u64 {
    let mut publisher = engine.publisher();
    commands
        .chunks(20)
        .map(|chunk| publisher.publish_batch(chunk.to_vec()).unwrap())
        .last()
        .unwrap()
}

/// Waits for the primary to apply everything published and the replica to hold all of it (the
/// primary must be running: the replica gets it from the primary), stops both, and checks that
/// the replica holds the same records and reaches the same state.
fn assert_caught_up(
    engine: Engine<Bank>,
    replica: Replica<Bank>,
    replica_directory: &Path,
    primary_directory: &Path,
) {
    let deadline = Instant::now() + PATIENCE;
    while engine.stats().applied < engine.stats().published {
        assert!(Instant::now() < deadline, "the primary applied {:?}", engine.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    let last = engine.stats().journaled;
    assert!(replica.wait_for(last, PATIENCE).unwrap(), "the replica reached {last}");
    let primary_state = engine.shutdown().unwrap();
    let primary_records = records(primary_directory);
    // The checkpoints this replica received since it opened.
    let since = replica.recovery().last_sequence;
    let checkpoints = primary_records
        .iter()
        .filter(|record| record.sequence > since && record.kind == KIND_CHECKPOINT)
        .count();
    let stats = replica.stats();
    assert_eq!(stats.checkpoints, checkpoints as u64, "every checkpoint was compared");
    let state = replica.stop().unwrap();
    assert_eq!(state, primary_state);
    assert_eq!(state.state_hash(), primary_state.state_hash());
    assert_eq!(records(replica_directory), primary_records, "the same journal");
}

#[test]
fn a_remote_replica_reaches_the_primarys_state_and_journal() {
    let primary_directory = tempfile::tempdir().unwrap();
    let replica_directory = tempfile::tempdir().unwrap();
    let engine = primary(primary_directory.path(), Durability::PageCache, Replication::new(SECRET));
    let address = engine.replication_address().unwrap();
    assert!(address.ip().is_loopback(), "loopback unless told otherwise");
    let input = commands(8_000, 40, 21);
    // Some before the replica connects (it catches up from the journal), the rest live.
    publish(&engine, &input[..3_000]);
    let delivered: Delivered = Arc::default();
    let sink = Arc::clone(&delivered);
    let follower = Replica::remote(address.to_string(), SECRET, replica_directory.path())
        .segment_size(1 << 20)
        .on_events(move |context, events| sink.lock().unwrap().push((*context, events.to_vec())))
        .open(Bank::default())
        .unwrap();
    publish(&engine, &input[3_000..]);
    let status = engine.replication_status().unwrap();
    assert_eq!(status.replicas.len(), 1, "{status:?}");
    assert_caught_up(engine, follower, replica_directory.path(), primary_directory.path());
    // The stream started at a batch's start and no batch exceeded a frame: the replica's
    // journal holds the primary's group commits byte for byte, not only its records.
    assert_eq!(batches(replica_directory.path()), batches(primary_directory.path()));

    // The replica's read model was handed every command once, in order, with the context the
    // primary journaled (caught up and live alike), and the events a replay of the primary's
    // journal recomputes.
    let delivered = std::mem::take(&mut *delivered.lock().unwrap());
    let journaled: Vec<Context> = records(primary_directory.path())
        .iter()
        .filter(|record| record.kind == KIND_COMMAND)
        .map(|record| Context { sequence: record.sequence, timestamp_ns: record.timestamp_ns })
        .collect();
    assert_eq!(journaled.len(), input.len());
    let contexts: Vec<Context> = delivered.iter().map(|(context, _)| *context).collect();
    assert!(contexts == journaled, "the replica's sink saw other contexts than the journal's");
    let replayed: Delivered = Arc::default();
    let sink = Arc::clone(&replayed);
    Engine::builder(primary_directory.path())
        .segment_size(1 << 20)
        .on_replay(move |context, events| sink.lock().unwrap().push((*context, events.to_vec())))
        .open(Bank::default())
        .unwrap()
        .shutdown()
        .unwrap();
    assert!(*replayed.lock().unwrap() == delivered, "the replay's sink saw other events");
}

/// What an event sink was handed: each command's context and events.
type Delivered = Arc<Mutex<Vec<(Context, Vec<common::Event>)>>>;

#[test]
fn the_replicated_tier_applies_only_what_a_replica_holds_and_waits_without_one() {
    applies_only_what_a_replica_holds(Replication::new(SECRET));
}

/// An engine that sleeps at once when it waits for acknowledgements, spinning no round, is
/// woken by each one and applies only what the replica holds.
#[test]
fn a_primary_that_does_not_spin_for_acknowledgements_applies_what_a_replica_holds() {
    applies_only_what_a_replica_holds(Replication::new(SECRET).ack_spin(0));
}

fn applies_only_what_a_replica_holds(replication: Replication) {
    let primary_directory = tempfile::tempdir().unwrap();
    let replica_directory = tempfile::tempdir().unwrap();
    let replication = replication.quorum(1).ack_timeout(Duration::from_millis(500));
    let engine = primary(primary_directory.path(), Durability::Replicated, replication);
    let address = engine.replication_address().unwrap();
    let input = commands(3_000, 20, 5);

    // No replica: a command is journaled but not applied.
    let mut publisher = engine.publisher();
    let first = publisher.publish(input[0].clone()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let stats = engine.stats();
    assert_eq!((stats.journaled, stats.applied), (first, 0), "{stats:?}");

    // A replica connects and catches up: it joins the quorum and the engine goes on. Every
    // command the engine applies, the replica held durably before.
    let follower = Arc::new(replica(address, replica_directory.path()));
    assert!(follower.wait_for(first, PATIENCE).unwrap());
    let last = publish(&engine, &input[1..]);
    let deadline = Instant::now() + PATIENCE;
    while engine.stats().applied < last {
        assert!(Instant::now() < deadline, "the engine applied {:?}", engine.stats());
        let (applied, held) = (engine.stats().applied, follower.stats().durable);
        assert!(held >= applied, "applied {applied} before the replica held it ({held})");
        std::thread::sleep(Duration::from_micros(200));
    }
    drop(publisher);
    let follower = Arc::into_inner(follower).unwrap();
    assert_caught_up(engine, follower, replica_directory.path(), primary_directory.path());
}

/// The test bank, whose hash also covers the sequence and timestamp of every command applied
/// (the bank's covers only the last): a command applied with another command's timestamp, or
/// twice, or out of order, changes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Stamped {
    bank: Bank,
    contexts: u64,
}

impl StateMachine for Stamped {
    type Command = Command;
    type Event = common::Event;

    fn apply(&mut self, context: &Context, command: &Command, output: &mut Output<common::Event>) {
        for value in [context.sequence, context.timestamp_ns] {
            self.contexts = (self.contexts ^ value).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.bank.apply(context, command, output);
    }

    fn state_hash(&self) -> u64 {
        self.bank.state_hash() ^ self.contexts.rotate_left(17)
    }
}

/// In the `Replicated` tier the compact engine journals (and streams) new input while it waits
/// for the replica to acknowledge what it journaled before, and applies what the replica
/// holds: every command is still applied once, in order, with the timestamp it was journaled
/// with; each checkpoint (where the window stops until everything before it is applied)
/// carries the hash of the state at its position; and every command's events are delivered
/// once, in order.
#[test]
fn the_replicated_tier_journals_ahead_and_applies_in_order_with_the_journaled_timestamps() {
    let primary_directory = tempfile::tempdir().unwrap();
    let replica_directory = tempfile::tempdir().unwrap();
    // Each clock reading is new, so each journaled run has a timestamp of its own.
    let ticks = Arc::new(AtomicU64::new(1));
    let clock = {
        let ticks = Arc::clone(&ticks);
        move || ticks.fetch_add(1, Ordering::Relaxed) * 1_000
    };
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&delivered);
    let engine = Engine::builder(primary_directory.path())
        .durability(Durability::Replicated)
        .segment_size(1 << 20)
        .ring_capacity(256)
        .checkpoints(250)
        .clock(clock)
        .subscriber("recorder", move |delivery| {
            if delivery.last {
                sink.lock().unwrap().push(delivery.sequence);
            }
        })
        .replicate(Replication::new(SECRET))
        .open(Stamped::default())
        .unwrap();
    let address = engine.replication_address().unwrap();
    let follower = Replica::remote(address.to_string(), SECRET, replica_directory.path())
        .segment_size(1 << 20)
        .open(Stamped::default())
        .unwrap();
    let input = commands(6_000, 30, 33);
    let publishers: Vec<_> = input
        .chunks(3_000)
        .map(|half| {
            let mut publisher = engine.publisher();
            let half = half.to_vec();
            std::thread::spawn(move || {
                for (index, chunk) in half.chunks(17).enumerate() {
                    if index % 2 == 0 {
                        publisher.publish_batch(chunk.to_vec()).unwrap();
                    } else {
                        chunk.iter().for_each(|command| drop(publisher.publish(command.clone())));
                    }
                }
            })
        })
        .collect();
    // A primary whose replica halted (on a checkpoint that differs, say) applies nothing more,
    // and its publishers wait for room for ever: the wait is bounded here, with the reason.
    let deadline = Instant::now() + PATIENCE;
    while !publishers.iter().all(|publisher| publisher.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "the publishers are stuck: the primary {:?}, the replica {:?} ({:?})",
            engine.stats(),
            follower.stats(),
            follower.halted()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    publishers.into_iter().for_each(|publisher| publisher.join().unwrap());
    while engine.stats().applied < engine.stats().published {
        assert!(Instant::now() < deadline, "the primary applied {:?}", engine.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    let journaled = engine.stats().journaled;
    assert!(follower.wait_for(journaled, PATIENCE).unwrap());
    let live = engine.shutdown().unwrap();
    let replicated = follower.stop().unwrap();
    assert_eq!(replicated, live, "the replica applied the same commands with the same contexts");
    // Replay applies each command with the timestamp in its record, and halts at a checkpoint
    // whose hash differs from its own.
    let replayed =
        replay_to(primary_directory.path(), Bincode, Stamped::default(), ReplayTarget::End)
            .unwrap();
    assert_eq!(replayed.machine, live, "live, each command had its journaled timestamp");
    let records = records(primary_directory.path());
    let commands: Vec<u64> = records
        .iter()
        .filter(|record| record.kind == KIND_COMMAND)
        .map(|record| record.sequence)
        .collect();
    assert_eq!(commands.len(), input.len());
    // One after every 250 commands but the last, which the next command would bring.
    assert_eq!(records.iter().filter(|record| record.kind == KIND_CHECKPOINT).count(), 23);
    assert_eq!(*delivered.lock().unwrap(), commands, "each command's events, once, in order");
}

/// In the `Replicated` tier the engine applies what the quorum holds, a window at a time, and
/// hands each command to the machine's `prefetch` before applying it there too; so does the
/// replica, which reaches the same state.
#[test]
fn the_replicated_tier_hints_every_command_before_applying_it() {
    let primary_directory = tempfile::tempdir().unwrap();
    let replica_directory = tempfile::tempdir().unwrap();
    let machine = common::Hinted::default();
    let hints = Arc::clone(&machine.hints);
    let engine = Engine::builder(primary_directory.path())
        .durability(Durability::Replicated)
        .segment_size(1 << 20)
        .ring_capacity(256)
        .checkpoints(100)
        .replicate(Replication::new(SECRET))
        .open(machine)
        .unwrap();
    let address = engine.replication_address().unwrap();
    let replica_machine = common::Hinted::default();
    let replica_hints = Arc::clone(&replica_machine.hints);
    let follower = Replica::remote(address.to_string(), SECRET, replica_directory.path())
        .segment_size(1 << 20)
        .open(replica_machine)
        .unwrap();
    let mut publisher = engine.publisher();
    for batch in commands(3_000, 20, 43).chunks(50) {
        publisher.publish_batch(batch.to_vec()).unwrap();
    }
    drop(publisher);
    let deadline = Instant::now() + PATIENCE;
    while engine.stats().applied < 3_000 {
        assert!(Instant::now() < deadline, "the primary applied {:?}", engine.stats());
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(follower.wait_for(engine.stats().journaled, PATIENCE).unwrap());
    let live = engine.shutdown().unwrap();
    let replicated = follower.stop().unwrap();
    assert_eq!(replicated, live);
    let hints = hints.lock().unwrap();
    assert_eq!(
        (hints.hinted_first, hints.not_hinted, hints.not_indexed),
        (3_000, 0, 0),
        "{hints:?}"
    );
    let hints = replica_hints.lock().unwrap();
    assert_eq!(
        (hints.hinted_first, hints.not_hinted, hints.not_indexed),
        (3_000, 0, 0),
        "replica: {hints:?}"
    );
}

/// What the fault proxy does to the bytes it forwards.
const PASS: u8 = 0;
const FREEZE: u8 = 1;
const CORRUPT: u8 = 2;
const DELAY: u8 = 3;

/// A TCP proxy on loopback between a replica and its primary, whose behaviour the test sets:
/// forward, freeze (hold everything, keep the connection), corrupt (flip a bit in the next
/// chunk), delay (sleep before each chunk); `cut` closes every connection it carries.
struct FaultProxy {
    address: SocketAddr,
    mode: Arc<AtomicU8>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let proxy = Self {
            address,
            mode: Arc::new(AtomicU8::new(PASS)),
            connections: Arc::default(),
            accepted: Arc::default(),
            stop: Arc::default(),
        };
        let (mode, connections, accepted, stop) = (
            Arc::clone(&proxy.mode),
            Arc::clone(&proxy.connections),
            Arc::clone(&proxy.accepted),
            Arc::clone(&proxy.stop),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(target) else { continue };
                accepted.fetch_add(1, Ordering::Relaxed);
                connections
                    .lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (from, to) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let mode = Arc::clone(&mode);
                    std::thread::spawn(move || forward(from, to, &mode));
                }
            }
        });
        proxy
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
    }

    fn cut(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

fn forward(mut from: TcpStream, mut to: TcpStream, mode: &AtomicU8) {
    let mut buffer = vec![0u8; 16 << 10];
    let mut flips = 0usize;
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        loop {
            match mode.load(Ordering::Relaxed) {
                FREEZE => std::thread::sleep(Duration::from_millis(5)),
                CORRUPT => {
                    flips += 1;
                    buffer[flips * 7919 % read] ^= 1 << (flips % 8);
                    mode.store(PASS, Ordering::Relaxed);
                    break;
                }
                DELAY => {
                    std::thread::sleep(Duration::from_millis(3));
                    break;
                }
                _ => break,
            }
        }
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[test]
fn a_replica_behind_a_faulty_link_reconnects_and_never_diverges() {
    let primary_directory = tempfile::tempdir().unwrap();
    let replica_directory = tempfile::tempdir().unwrap();
    let engine = primary(primary_directory.path(), Durability::PageCache, Replication::new(SECRET));
    let proxy = FaultProxy::start(engine.replication_address().unwrap());
    let follower = replica(proxy.address, replica_directory.path());
    let input = commands(20_000, 50, 17);
    let faults = [CORRUPT, DELAY, PASS, CORRUPT, FREEZE, PASS, DELAY, CORRUPT, PASS];
    for (round, chunk) in input.chunks(2_000).enumerate() {
        publish(&engine, chunk);
        match faults[round % faults.len()] {
            FREEZE => {
                proxy.set(FREEZE);
                std::thread::sleep(Duration::from_millis(100));
                proxy.set(PASS);
            }
            fault => proxy.set(fault),
        }
        if round % 3 == 2 {
            proxy.cut();
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(follower.halted().is_none(), "{:?}", follower.halted());
    }
    proxy.set(PASS);
    assert!(proxy.accepted.load(Ordering::Relaxed) >= 4, "the replica reconnected");
    assert_caught_up(engine, follower, replica_directory.path(), primary_directory.path());
}

#[test]
fn a_replica_that_stops_acknowledging_is_dropped_from_the_quorum() {
    dropped_from_the_quorum(Wait::default());
}

/// A primary whose engine thread busy-spins for input (and spins before it sleeps for
/// acknowledgements) notices the timeout, drops the replica and applies nothing unacknowledged,
/// as a yielding one does.
#[test]
fn a_busy_spinning_primary_drops_a_replica_that_stops_acknowledging() {
    dropped_from_the_quorum(Wait::BusySpin);
}

fn dropped_from_the_quorum(wait: Wait) {
    let primary_directory = tempfile::tempdir().unwrap();
    let replica_directory = tempfile::tempdir().unwrap();
    let replication = Replication::new(SECRET).ack_timeout(Duration::from_millis(200));
    let engine =
        primary_waiting(primary_directory.path(), Durability::Replicated, replication, wait);
    let proxy = FaultProxy::start(engine.replication_address().unwrap());
    let follower = replica(proxy.address, replica_directory.path());
    let input = commands(600, 10, 3);
    let first = publish(&engine, &input[..200]);
    let deadline = Instant::now() + PATIENCE;
    while engine.stats().applied < first {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    // The link freezes: acknowledgements stop; after the timeout the replica is dropped, and
    // nothing more is applied.
    proxy.set(FREEZE);
    let frozen = publish(&engine, &input[200..400]);
    std::thread::sleep(Duration::from_millis(600));
    let status = engine.replication_status().unwrap();
    assert!(status.dropped >= 1, "{status:?}");
    assert!(engine.stats().applied < frozen, "nothing unacknowledged is applied");
    // The link heals: the replica reconnects, catches up, and the engine goes on.
    proxy.set(PASS);
    proxy.cut();
    let last = publish(&engine, &input[400..]);
    while engine.stats().applied < last {
        assert!(Instant::now() < deadline, "{:?}", engine.replication_status());
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_caught_up(engine, follower, replica_directory.path(), primary_directory.path());
}

#[test]
fn a_wrong_secret_and_another_journal_are_refused() {
    let primary_directory = tempfile::tempdir().unwrap();
    let engine = primary(primary_directory.path(), Durability::PageCache, Replication::new(SECRET));
    let address = engine.replication_address().unwrap();
    publish(&engine, &commands(100, 5, 1));

    let directory = tempfile::tempdir().unwrap();
    match Replica::remote(address.to_string(), "not the secret", directory.path())
        .open(Bank::default())
    {
        Err(EngineError::Recovery(message)) => assert!(message.contains("secret"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Another journal in the replica's directory.
    let other = Engine::builder(directory.path()).segment_size(1 << 20).open(Bank::default());
    other.unwrap().shutdown().unwrap();
    match Replica::remote(address.to_string(), SECRET, directory.path()).open(Bank::default()) {
        Err(EngineError::Recovery(message)) => assert!(message.contains("journal"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let deadline = Instant::now() + PATIENCE;
    while engine.replication_status().unwrap().refused < 2 {
        assert!(Instant::now() < deadline, "{:?}", engine.replication_status());
        std::thread::sleep(Duration::from_millis(1));
    }
    // Garbage instead of a handshake closes that connection and nothing else.
    let mut garbage = TcpStream::connect(address).unwrap();
    garbage.write_all(&[0xAB; 4096]).unwrap();
    let mut end = Vec::new();
    let _ = garbage.read_to_end(&mut end);
    assert!(engine.halted().is_none());
    // Connections that never say a word hold a bounded number of threads: past 32, the
    // listener refuses at once.
    let before = engine.replication_status().unwrap().refused;
    let idle: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(address).unwrap()).collect();
    while engine.replication_status().unwrap().refused < before + 8 {
        assert!(Instant::now() < deadline, "{:?}", engine.replication_status());
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(idle);
    let replica_directory = tempfile::tempdir().unwrap();
    let follower = replica(address, replica_directory.path());
    assert_caught_up(engine, follower, replica_directory.path(), primary_directory.path());
}

#[test]
fn the_replicated_tier_is_refused_without_replication_and_memory_with_it() {
    let directory = tempfile::tempdir().unwrap();
    let refused =
        Engine::builder(directory.path()).durability(Durability::Replicated).open(Bank::default());
    assert!(matches!(refused, Err(EngineError::Configuration(_))));
    let refused = Engine::builder(directory.path())
        .durability(Durability::Memory)
        .replicate(Replication::new(SECRET))
        .open(Bank::default());
    assert!(matches!(refused, Err(EngineError::Configuration(_))));
    let refused = Engine::builder(directory.path())
        .replicate(Replication::new(Vec::new()))
        .open(Bank::default());
    assert!(matches!(refused, Err(EngineError::Configuration(_))));
}

#[test]
fn a_promoted_replica_holds_every_acknowledged_command_and_fences_the_old_primary() {
    let old_directory = tempfile::tempdir().unwrap();
    let promoted_directory = tempfile::tempdir().unwrap();
    let replication = || Replication::new(SECRET).ack_timeout(Duration::from_millis(500));
    let acknowledged = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = Arc::clone(&acknowledged);
    let old = Engine::builder(old_directory.path())
        .durability(Durability::Replicated)
        .segment_size(1 << 20)
        .ring_capacity(256)
        .checkpoints(100)
        .replicate(replication())
        .subscriber("acknowledged", move |delivery| {
            seen.fetch_max(delivery.sequence, Ordering::Relaxed);
        })
        .open(Bank::default())
        .unwrap();
    let follower = replica(old.replication_address().unwrap(), promoted_directory.path());
    let input = commands(6_000, 30, 77);
    let mut publisher = old.publisher();
    for command in &input[..4_000] {
        publisher.publish(command.clone()).unwrap();
    }
    drop(publisher);
    // The primary dies with commands in flight: what it applied, a replica acknowledged.
    old.halt().unwrap();
    let acknowledged = acknowledged.load(Ordering::Relaxed);
    assert!(acknowledged > 0);

    let promotion = follower.promote().unwrap();
    assert_eq!(promotion.epoch, 1);
    assert!(promotion.sequence > acknowledged);
    let at = ReplayTarget::Sequence(acknowledged);
    let before = replay_to(old_directory.path(), Bincode, Bank::default(), at).unwrap();
    let after = replay_to(promoted_directory.path(), Bincode, Bank::default(), at).unwrap();
    assert_eq!(after.machine, before.machine, "every acknowledged command survived");
    let old_records = records(old_directory.path());
    let new_records = records(promoted_directory.path());
    let held = new_records.iter().take_while(|record| record.sequence <= acknowledged).count();
    assert_eq!(new_records[..held], old_records[..held]);

    // The new primary goes on after the epoch record, at the new epoch.
    let primary = Engine::builder(promoted_directory.path())
        .durability(Durability::Replicated)
        .segment_size(1 << 20)
        .ring_capacity(256)
        .checkpoints(100)
        .replicate(replication())
        .open(Bank::default())
        .unwrap();
    assert_eq!(primary.recovery().last_sequence, promotion.sequence);
    let snapshot = primary.recovery().snapshot.as_ref().map(|(_, sequence)| *sequence);
    assert_eq!(snapshot, Some(promotion.sequence - 1), "promotion leaves a snapshot");
    assert_eq!(primary.recovery().replayed, 1, "the epoch record only");
    assert_eq!(primary.recovery().state_hash, promotion.machine.state_hash());
    let second_directory = tempfile::tempdir().unwrap();
    let second = replica(primary.replication_address().unwrap(), second_directory.path());
    let last = publish(&primary, &input[4_000..]);
    assert!(last > promotion.sequence);
    assert!(second.wait_for(last, PATIENCE).unwrap());
    second.stop().unwrap();

    // The old primary comes back. The new primary's replica refuses it, and proves the newer
    // epoch to it: it is fenced, and applies nothing more.
    let revenant = Engine::builder(old_directory.path())
        .segment_size(1 << 20)
        .replicate(Replication::new(SECRET))
        .open(Bank::default())
        .unwrap();
    let address = revenant.replication_address().unwrap();
    match Replica::remote(address.to_string(), SECRET, second_directory.path())
        .open(Bank::default())
    {
        Err(EngineError::Recovery(message)) => assert!(message.contains("epoch"), "{message}"),
        other => panic!("expected the stale primary to be refused, got {other:?}"),
    }
    revenant.publisher().publish(input[0].clone()).unwrap();
    match revenant.shutdown() {
        Err(EngineError::Halted(Halt::Fenced { epoch: 1 })) => {}
        other => panic!("expected the old primary to be fenced, got {other:?}"),
    }
    primary.shutdown().unwrap();
}

#[test]
fn a_replica_with_a_journal_starts_while_its_primary_is_down_and_catches_up_when_it_returns() {
    let primary_directory = tempfile::tempdir().unwrap();
    let replica_directory = tempfile::tempdir().unwrap();
    let listen: SocketAddr = {
        // A port that is free now, to listen on again after a restart.
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let replication = || Replication::new(SECRET).listen(listen);
    let input = commands(3_000, 20, 8);
    let engine = primary(primary_directory.path(), Durability::PageCache, replication());
    let follower = replica(listen, replica_directory.path());
    let first = publish(&engine, &input[..1_000]);
    assert!(follower.wait_for(first, PATIENCE).unwrap());
    follower.stop().unwrap();
    engine.shutdown().unwrap();

    // The primary is down: the replica opens anyway, from its own journal.
    let follower = replica(listen, replica_directory.path());
    assert_eq!(follower.recovery().last_sequence, first);
    std::thread::sleep(Duration::from_millis(100));
    assert!(follower.halted().is_none());
    follower.stop().unwrap();

    // Something answers on the primary's address with a damaged frame (a bit flipped on the
    // way, as the simulation's network does): not a refusal, so the replica still opens and
    // waits for its primary. Found by the simulation: the open failed.
    let impostor = TcpListener::bind(listen).unwrap();
    let answering = std::thread::spawn(move || {
        let (mut stream, _) = impostor.accept().unwrap();
        // A frame of 4 bytes whose checksum does not match them.
        stream.write_all(&[4, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9, 9]).unwrap();
        let _ = stream.shutdown(Shutdown::Both);
    });
    let follower = replica(listen, replica_directory.path());
    answering.join().unwrap();
    assert_eq!(follower.recovery().last_sequence, first);
    assert!(follower.halted().is_none());
    // The primary returns; the replica connects and follows.
    let engine = primary(primary_directory.path(), Durability::PageCache, replication());
    publish(&engine, &input[1_000..]);
    assert_caught_up(engine, follower, replica_directory.path(), primary_directory.path());
}

#[test]
fn a_remote_replica_ships_its_snapshots_to_the_primary_for_its_recovery() {
    let primary_directory = tempfile::tempdir().unwrap();
    let replica_directory = tempfile::tempdir().unwrap();
    // The primary takes no snapshot of its own.
    let engine = primary(primary_directory.path(), Durability::PageCache, Replication::new(SECRET));
    let follower = Replica::remote(
        engine.replication_address().unwrap().to_string(),
        SECRET,
        replica_directory.path(),
    )
    .segment_size(1 << 20)
    .snapshots(keel_engine::SnapshotPolicy {
        every_commands: Some(1_000),
        ..keel_engine::SnapshotPolicy::default()
    })
    .ship_snapshots()
    .open(Bank::default())
    .unwrap();
    publish(&engine, &commands(5_000, 30, 12));
    let store = keel_journal::SnapshotStore::open(primary_directory.path()).unwrap();
    let deadline = Instant::now() + PATIENCE;
    let shipped = loop {
        let newest = store.list().unwrap().first().map(|file| file.sequence);
        if let Some(sequence) = newest.filter(|&sequence| sequence >= 4_000) {
            break sequence;
        }
        assert!(Instant::now() < deadline, "{:?}", follower.stats());
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(follower.stats().snapshot_error, None);
    assert_eq!(engine.stats().snapshots, 0, "the primary serialized nothing");
    follower.stop().unwrap();
    let state = engine.shutdown().unwrap();

    let reopened =
        primary(primary_directory.path(), Durability::PageCache, Replication::new(SECRET));
    let loaded = reopened.recovery().snapshot.as_ref().map(|(_, sequence)| *sequence);
    assert!(loaded >= Some(shipped), "recovery loaded {loaded:?}, shipped {shipped}");
    assert_eq!(reopened.shutdown().unwrap(), state);
}

/// A replica's machine that knows only the first two of the bank's commands (`Open` and
/// `Deposit` encode alike in both), so that any later one reaches it undecodable.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Narrow {
    balances: std::collections::BTreeMap<u32, i64>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum NarrowCommand {
    Open(u32),
    Deposit(u32, i64),
}

impl StateMachine for Narrow {
    type Command = NarrowCommand;
    type Event = ();

    fn apply(&mut self, _: &Context, command: &NarrowCommand, _: &mut Output<()>) {
        match *command {
            NarrowCommand::Open(account) => {
                self.balances.insert(account, 0);
            }
            NarrowCommand::Deposit(account, amount) => {
                *self.balances.entry(account).or_default() += amount;
            }
        }
    }

    fn state_hash(&self) -> u64 {
        self.balances.iter().fold(0, |hash, (&account, &balance)| {
            (hash.rotate_left(7) ^ u64::from(account)).wrapping_mul(31) ^ balance as u64
        })
    }
}

#[test]
fn a_streamed_record_the_replica_cannot_decode_stops_it_after_those_before_and_stays_journaled() {
    let primary_directory = tempfile::tempdir().unwrap();
    let replica_directory = tempfile::tempdir().unwrap();
    let engine = primary(primary_directory.path(), Durability::PageCache, Replication::new(SECRET));
    let address = engine.replication_address().unwrap();
    let follower = replica_of(address, replica_directory.path(), Narrow::default());
    // One batch: what the replica can read, then a command it cannot, then more it could.
    let mut publisher = engine.publisher();
    let batch = vec![
        Command::Open(1),
        Command::Deposit(1, 5),
        Command::Deposit(1, 7),
        Command::Echo(1),
        Command::Deposit(1, 11),
    ];
    let last = publisher.publish_batch(batch).unwrap();
    let undecodable = last - 1;
    // The replica never applies `last`: waiting for it ends with the reason it stopped.
    match follower.wait_for(last, PATIENCE) {
        Err(EngineError::Halted(Halt::Decode { sequence, .. })) => {
            assert_eq!(sequence, undecodable)
        }
        other => panic!("expected a decode error at {undecodable}, got {other:?}"),
    }
    assert_eq!(follower.stats().applied, undecodable - 1, "those before it are applied");
    drop(publisher);
    engine.shutdown().unwrap();
    match follower.stop() {
        Err(EngineError::Halted(Halt::Decode { sequence, .. })) => {
            assert_eq!(sequence, undecodable)
        }
        other => panic!("expected the decode error again, got {other:?}"),
    }
    // The replica's journal holds the record it could not read, as the primary's does.
    let held: Vec<u64> = records(replica_directory.path())
        .iter()
        .filter(|record| record.kind == KIND_COMMAND)
        .map(|record| record.sequence)
        .collect();
    assert!(held.contains(&undecodable), "{held:?}");
}
