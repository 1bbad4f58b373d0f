//! The engine killed with SIGKILL mid-run: a child process runs an engine, publishes commands
//! as fast as it can and reports each command whose events it received (acknowledged) over a
//! pipe; the parent kills it at a random moment, reopens the engine, and checks that recovery
//! reaches a gap-free prefix holding every acknowledged command, applied exactly once; then the
//! next child carries on in the same directory. Snapshots are taken every few thousand
//! commands, so kills land during snapshot writes too, and recovery must never load a partial
//! one. Every tier that survives a process crash, in both topologies.
//!
//! ```text
//! cargo test -p keel-engine --release --test crash                       # 25 kills per configuration
//! KEEL_CRASH_ITERATIONS=500 cargo test -p keel-engine --release --test crash
//! KEEL_SEED=1234 cargo test -p keel-engine --release --test crash        # replay a run's timing
//! ```

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_engine::{
    Context, Durability, Engine, EngineBuilder, Output, SnapshotPolicy, StateMachine, Topology,
};
use serde::{Deserialize, Serialize};

const CHILD: &str = "KEEL_ENGINE_CRASH_CHILD";
const DEFAULT_ITERATIONS: u64 = 25;

/// Sums its commands; command `s` is always `amount(s)`, so the state after `n` commands is
/// known without running anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Sum {
    total: u64,
    applied: u64,
}

impl StateMachine for Sum {
    type Command = u64;
    type Event = u64;

    fn apply(&mut self, context: &Context, amount: &u64, output: &mut Output<u64>) {
        assert_eq!(context.sequence, self.applied + 1, "gap-free, exactly once");
        assert_eq!(*amount, amount_of(context.sequence), "the command of its sequence");
        self.applied += 1;
        self.total = self.total.wrapping_add(*amount);
        output.emit(self.total);
    }

    fn state_hash(&self) -> u64 {
        self.total ^ self.applied.rotate_left(32)
    }
}

fn amount_of(sequence: u64) -> u64 {
    sequence.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40
}

fn expected_after(count: u64) -> Sum {
    let total = (1..=count).fold(0u64, |total, sequence| total.wrapping_add(amount_of(sequence)));
    Sum { total, applied: count }
}

fn configure(directory: &Path, durability: Durability, topology: Topology) -> EngineBuilder<Sum> {
    Engine::builder(directory)
        .durability(durability)
        .topology(topology)
        .segment_size(1 << 20)
        .ring_capacity(1024)
        .snapshots(SnapshotPolicy { every_commands: Some(20_000), every_interval: None, keep: 3 })
}

fn configuration(name: &str) -> (Durability, Topology) {
    let (durability, topology) = name.split_once('/').expect("tier/topology");
    let durability = match durability {
        "page-cache" => Durability::PageCache,
        "fsync" => Durability::Fsync,
        other => panic!("unknown tier {other}"),
    };
    let topology = match topology {
        "compact" => Topology::Compact,
        "pipelined" => Topology::Pipelined,
        other => panic!("unknown topology {other}"),
    };
    (durability, topology)
}

fn main() {
    if let Ok(child) = std::env::var(CHILD) {
        let (directory, name) = child.split_once('|').expect("directory|configuration");
        run_child(Path::new(directory), name);
        return;
    }
    let iterations = std::env::var("KEEL_CRASH_ITERATIONS")
        .map(|value| value.parse().expect("KEEL_CRASH_ITERATIONS is a number"))
        .unwrap_or(DEFAULT_ITERATIONS);
    let seed: u64 = std::env::var("KEEL_SEED")
        .map(|value| value.parse().expect("KEEL_SEED is a number"))
        .unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |since| since.as_nanos() as u64)
        });
    println!("engine crash test: {iterations} SIGKILLs per configuration, KEEL_SEED={seed}");
    for name in ["page-cache/compact", "page-cache/pipelined", "fsync/compact", "fsync/pipelined"] {
        let started = Instant::now();
        let (acknowledged, recovered, snapshots) = campaign(name, iterations, seed);
        println!(
            "  {name}: {iterations} kills in {:.1} s; {acknowledged} commands acknowledged, \
             {recovered} recovered; {snapshots} recoveries started from a snapshot",
            started.elapsed().as_secs_f64()
        );
    }
    println!("engine crash test: passed");
}

/// The child: recovers, then publishes the commands after the recovered ones, reporting each
/// command whose event it received. Never stops by itself.
fn run_child(directory: &Path, name: &str) {
    let (durability, topology) = configuration(name);
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let report = Arc::clone(&out);
    let engine = configure(directory, durability, topology)
        .subscriber("acknowledge", move |delivery| {
            if delivery.last {
                let mut out = report.lock().unwrap();
                out.write_all(&delivery.sequence.to_le_bytes()).unwrap();
                out.flush().unwrap();
            }
        })
        .open(Sum::default())
        .expect("child: open");
    let mut publisher = engine.publisher();
    let mut sequence = engine.recovery().last_sequence;
    loop {
        sequence += 1;
        let published = publisher.publish(amount_of(sequence)).expect("child: publish");
        assert_eq!(published, sequence);
    }
}

/// A small deterministic generator (xorshift64*).
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }
}

fn campaign(name: &str, iterations: u64, seed: u64) -> (u64, u64, u64) {
    let (durability, topology) = configuration(name);
    let mut random = Random((seed ^ name.len() as u64 ^ name.as_bytes()[0] as u64) | 1);
    let directory = tempfile::tempdir().unwrap();
    let (mut acknowledged, mut from_snapshot) = (0, 0);
    let mut last = 0;
    for iteration in 0..iterations {
        let context = format!("{name}, kill {iteration}, KEEL_SEED={seed}");
        let delay =
            Duration::from_micros(random.below(if iteration % 4 == 0 { 5_000 } else { 80_000 }));
        let acked = run_and_kill(directory.path(), name, delay, &context);
        acknowledged = acknowledged.max(acked);
        let engine = configure(directory.path(), durability, topology)
            .open(Sum::default())
            .unwrap_or_else(|error| panic!("{context}: recovery failed: {error}"));
        let recovery = engine.recovery().clone();
        assert!(
            recovery.last_sequence >= acked,
            "{context}: {acked} acknowledged, recovered to {}",
            recovery.last_sequence
        );
        assert!(recovery.last_sequence >= last, "{context}: a recovered command was lost later");
        last = recovery.last_sequence;
        if recovery.snapshot.is_some() {
            from_snapshot += 1;
        }
        let state = engine.shutdown().unwrap_or_else(|error| panic!("{context}: {error}"));
        assert_eq!(state, expected_after(last), "{context}: the recovered state");
    }
    (acknowledged, last, from_snapshot)
}

/// Starts a child, kills it with SIGKILL after `delay`; returns the highest sequence it
/// acknowledged (0 if none).
fn run_and_kill(directory: &Path, name: &str, delay: Duration, context: &str) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, format!("{}|{name}", directory.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acks = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut last, mut bytes) = (0u64, [0u8; 8]);
        while acks.read_exact(&mut bytes).is_ok() {
            last = last.max(u64::from_le_bytes(bytes));
        }
        last
    });
    std::thread::sleep(delay);
    let killed = child.kill();
    let status = child.wait().unwrap();
    let acked = reader.join().unwrap();
    if killed.is_err() || status.code().is_some() {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        panic!("{context}: the child exited by itself ({status}): {stderr}");
    }
    acked
}
