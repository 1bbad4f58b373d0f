//! The crash campaign: the ledger under load in a child process (the `ledger` binary's hidden
//! `child` subcommand), killed with SIGKILL at a random moment, again and again, in the
//! `PageCache`, `Fsync` and `Replicated` tiers. Segments are 1 MiB and a snapshot is written
//! every 20 000 commands, so kills land during appends, segment rolls, snapshot writes, and the
//! start-up and replay of the next child after the previous kill. After each kill:
//!
//! - the journal holds every command the child acknowledged (it received the command's events),
//!   each exactly as the child's seeded workload generated it;
//! - recovery (`open`) reaches at least the last acknowledged sequence;
//! - the recovered state hash equals a replay of the whole journal from its first record, so no
//!   snapshot that was cut short (or is otherwise wrong) was loaded;
//! - money is conserved in every currency;
//! - in the `Replicated` tier, the replica (a `ledger replica` process that outlives the
//!   primary's kills) holds every acknowledged command, byte for byte the primary's.
//!
//! A harness-less test: `cargo test -p keel-examples --profile ci --test crash_campaign` runs 50
//! kills per tier (CI); `KEEL_CRASH_ITERATIONS=1000` is the long mode; `KEEL_CRASH_TIERS=fsync`
//! (comma-separated: page-cache, fsync, replicated) picks tiers; every random choice comes from
//! the printed `KEEL_SEED`, which a failing run is repeated with.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use keel_engine::StateMachine as _;
use keel_engine::{replay_from, Bincode, Codec, ReplayFrom, ReplayTarget, SnapshotPolicy};
use keel_examples::cli::{DurabilityArg, EngineOptions};
use keel_examples::driver::{drive, Pace};
use keel_examples::ledger::workload::{Mix, Workload};
use keel_examples::ledger::{Command, Ledger};
use keel_examples::rng::SplitMix64;
use keel_journal::{JournalReader, Tailer};

const ACCOUNTS: u64 = 1_000;
const CODES: u32 = 4;
const SEGMENT_SIZE: u64 = 1 << 20;
const SNAPSHOT_EVERY: u64 = 20_000;
const RATE: u64 = 200_000;
/// Kills in one data directory before a fresh one: bounds the journal, and so the time each
/// check's full replay takes.
const KILLS_PER_DIRECTORY: usize = 10;
/// Transfer ids each child may use: far more than a child publishes before it is killed.
const IDS_PER_CHILD: u64 = 100_000_000;
const SECRET: &str = "the crash campaign's replication secret";

#[derive(Clone, Copy)]
struct Tier {
    name: &'static str,
    durability: DurabilityArg,
    /// Kills are drawn from 0 to this many milliseconds after the child starts.
    kill_within_ms: u64,
}

const TIERS: [Tier; 3] = [
    Tier { name: "page-cache", durability: DurabilityArg::PageCache, kill_within_ms: 400 },
    Tier { name: "fsync", durability: DurabilityArg::Fsync, kill_within_ms: 400 },
    // The primary waits for its replica to reconnect (backing off up to a second) before it
    // applies anything, so its kills are drawn from a longer window.
    Tier { name: "replicated", durability: DurabilityArg::Replicated, kill_within_ms: 1_000 },
];

/// What one tier's campaign saw.
#[derive(Debug, Default)]
struct Tally {
    kills: u64,
    /// Kills before the child said it was ready: during its start-up and recovery.
    before_ready: u64,
    /// Commands acknowledged by the children and then found in the journal as generated.
    acknowledged: u64,
    /// Recoveries that cut a torn tail.
    torn_tails: u64,
    /// Recoveries that started from a snapshot.
    from_snapshot: u64,
    /// Snapshot files recovery passed over (cut short by a kill, say), with their reasons.
    snapshots_skipped: u64,
    /// Segments in the data directories when they were left.
    segments: u64,
    /// Commands the replica was checked to hold.
    replicated: u64,
}

fn main() {
    let iterations: usize = std::env::var("KEEL_CRASH_ITERATIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(50);
    let seed: u64 =
        std::env::var("KEEL_SEED").ok().and_then(|value| value.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
        });
    let chosen = std::env::var("KEEL_CRASH_TIERS").unwrap_or_default();
    println!("crash campaign: {iterations} kills per tier, KEEL_SEED={seed}");
    let mut failed = false;
    for (index, tier) in TIERS.iter().enumerate() {
        if !chosen.is_empty() && !chosen.split(',').any(|name| name == tier.name) {
            continue;
        }
        let started = Instant::now();
        let mut rng = SplitMix64::new(seed.wrapping_add(index as u64));
        match campaign(*tier, iterations, &mut rng) {
            Ok(tally) => println!(
                "{:<10} {} kills ({} during start-up or recovery) in {:.1} s: {} acknowledged \
                 commands all recovered, 0 divergent state hashes; {} torn tails cut, {} \
                 recoveries from a snapshot, {} snapshot files passed over, {} segments{}",
                tier.name,
                tally.kills,
                tally.before_ready,
                started.elapsed().as_secs_f64(),
                tally.acknowledged,
                tally.torn_tails,
                tally.from_snapshot,
                tally.snapshots_skipped,
                tally.segments,
                if tally.replicated > 0 {
                    format!("; the replica held all {} acknowledged", tally.replicated)
                } else {
                    String::new()
                }
            ),
            Err(error) => {
                failed = true;
                eprintln!("{}: FAILED (KEEL_SEED={seed}): {error:#}", tier.name);
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}

/// A process that a failed check must not leave running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The directory a run of kills works in, and what is known of it.
struct Directory {
    data: PathBuf,
    /// The replica, in the `Replicated` tier.
    replica: Option<Replica>,
    /// The last sequence known durable: the setup's, then each check's recovered end.
    durable: u64,
}

fn campaign(tier: Tier, iterations: usize, rng: &mut SplitMix64) -> Result<Tally> {
    let root = tempfile::tempdir()?;
    let address = free_address()?;
    let mut tally = Tally::default();
    let mut directory: Option<Directory> = None;
    for iteration in 0..iterations {
        if iteration % KILLS_PER_DIRECTORY == 0 {
            if let Some(done) = directory.take() {
                tally.segments += segments(&done.data)?;
            }
            directory = Some(prepare(root.path(), iteration, tier)?);
        }
        let current = directory.as_mut().expect("prepared above");
        let child_seed = rng.next_u64();
        let first_id = (iteration as u64 + 1) * IDS_PER_CHILD;
        let delay = Duration::from_millis(rng.below(tier.kill_within_ms + 1));
        let replica = current.replica.as_mut();
        let killed = kill_child(&current.data, tier, address, replica, child_seed, first_id, delay)
            .with_context(|| format!("kill {iteration}"))?;
        tally.kills += 1;
        let from = match killed.ready {
            Some(ready) => ready,
            None => {
                tally.before_ready += 1;
                current.durable
            }
        };
        let acknowledged = killed.acknowledged.max(current.durable);
        let child_acknowledged = Some(killed.acknowledged).filter(|_| killed.ready.is_some());
        check(current, &mut tally, from, acknowledged, child_acknowledged, child_seed, first_id)
            .with_context(|| {
                format!(
                    "after kill {iteration} ({} ms after the start; the child had recovered to \
                     {from:?} and acknowledged sequence {acknowledged})",
                    delay.as_millis()
                )
            })?;
    }
    if let Some(done) = directory {
        tally.segments += segments(&done.data)?;
    }
    Ok(tally)
}

/// A new data directory with the workload's accounts set up and funded (and, in the
/// `Replicated` tier, a replica process following it).
fn prepare(root: &Path, iteration: usize, tier: Tier) -> Result<Directory> {
    let data = root.join(format!("data-{iteration}"));
    let options = engine_options(DurabilityArg::PageCache);
    let mut engine = options.open(&data, Ledger::new(), SnapshotPolicy::default())?;
    let mut output = engine.take_output_poller().context("the output poller")?;
    let mut publisher = engine.publisher();
    let mut setup = Workload::new(0, ACCOUNTS, CODES, Mix::PAYMENTS, 1).setup().into_iter();
    let count = setup.len() as u64;
    let next = || setup.next().expect("one setup command per count");
    drive(&mut publisher, &mut output, next, count, Pace::default(), |_, _| {}, |_| {})?;
    drop(publisher);
    drop(output);
    engine.shutdown()?;
    let replica = matches!(tier.durability, DurabilityArg::Replicated)
        .then(|| Replica { data: root.join(format!("replica-{iteration}")), process: None });
    Ok(Directory { data, replica, durable: count })
}

fn engine_options(durability: DurabilityArg) -> EngineOptions {
    EngineOptions { durability, segment_size: SEGMENT_SIZE, ..EngineOptions::default() }
}

/// The `Replicated` tier's replica: a `ledger replica` process following the primary's
/// address. It is started once a primary listens (a replica without a journal gives up when its
/// first connection is refused) and then outlives the primary's kills, reconnecting.
struct Replica {
    data: PathBuf,
    process: Option<Running>,
}

impl Replica {
    /// Starts the replica unless it is running.
    fn ensure_running(&mut self, primary: std::net::SocketAddr) -> Result<()> {
        if let Some(running) = &mut self.process {
            if running.0.try_wait()?.is_none() {
                return Ok(());
            }
        }
        let process = Process::new(env!("CARGO_BIN_EXE_ledger"))
            .args(["replica", "--primary", &primary.to_string(), "--data"])
            .arg(&self.data)
            .env("KEEL_REPLICATION_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the replica")?;
        self.process = Some(Running(process));
        Ok(())
    }
}

/// A loopback address with a port that was free a moment ago: the primary's replication
/// listener, the same across its restarts so that the replica finds it again.
fn free_address() -> Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// What the child said before it was killed.
struct Killed {
    /// The sequence it recovered to, once it was ready.
    ready: Option<u64>,
    /// The last sequence whose events it received.
    acknowledged: u64,
}

/// Starts a child publishing the workload of `child_seed` from transfer id `first_id`, and
/// kills it with SIGKILL `delay` after starting it.
fn kill_child(
    data: &Path,
    tier: Tier,
    address: std::net::SocketAddr,
    mut replica: Option<&mut Replica>,
    child_seed: u64,
    first_id: u64,
    delay: Duration,
) -> Result<Killed> {
    let mut arguments: Vec<String> = vec![
        "child".into(),
        "--data".into(),
        data.display().to_string(),
        "--accounts".into(),
        ACCOUNTS.to_string(),
        "--seed".into(),
        child_seed.to_string(),
        "--first-id".into(),
        first_id.to_string(),
        "--rate".into(),
        RATE.to_string(),
        "--snapshot-every".into(),
        SNAPSHOT_EVERY.to_string(),
    ];
    arguments.extend(engine_options(tier.durability).arguments());
    if matches!(tier.durability, DurabilityArg::Replicated) {
        arguments.extend([
            "--replicate".into(),
            address.to_string(),
            "--quorum".into(),
            "1".into(),
        ]);
    }
    let started = Instant::now();
    let mut child = Process::new(env!("CARGO_BIN_EXE_ledger"))
        .args(&arguments)
        .env("KEEL_REPLICATION_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the child")?;
    let stdout = child.stdout.take().context("the child's output")?;
    let mut child = Running(child);
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut killed = Killed { ready: None, acknowledged: 0 };
    let read = |line: String, killed: &mut Killed| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next().and_then(|word| word.parse::<u64>().ok())) {
            (Some("ready"), Some(sequence)) => killed.ready = Some(sequence),
            (Some("ack"), Some(sequence)) => {
                killed.acknowledged = killed.acknowledged.max(sequence)
            }
            _ => {}
        }
    };
    // Until the kill: a primary that said it is ready listens, so its replica can start.
    while let Some(left) = delay.checked_sub(started.elapsed()) {
        match received.recv_timeout(left) {
            Ok(line) => {
                read(line, &mut killed);
                if killed.ready.is_some() {
                    if let Some(replica) = replica.as_deref_mut() {
                        replica.ensure_running(address)?;
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.0.wait()?;
                bail!("the child stopped by itself before the kill: {status}");
            }
        }
    }
    child.0.kill().context("killing the child")?;
    child.0.wait()?;
    reader.join().map_err(|_| anyhow::anyhow!("the child's reader panicked"))?;
    for line in received.try_iter() {
        read(line, &mut killed);
    }
    Ok(killed)
}

/// The checks after a kill (the module's list), then `directory.durable` moves to the
/// recovered end.
fn check(
    directory: &mut Directory,
    tally: &mut Tally,
    from: u64,
    acknowledged: u64,
    child_acknowledged: Option<u64>,
    child_seed: u64,
    first_id: u64,
) -> Result<()> {
    let data = &directory.data;
    // Recovery first, as the next child will do it: a kill in the middle of a batch leaves a
    // torn tail, which `open` cuts (and which a reader before it stops at, as damage).
    let engine = engine_options(DurabilityArg::PageCache).open(
        data,
        Ledger::new(),
        SnapshotPolicy::default(),
    )?;
    let report = engine.recovery().clone();
    let recovered = engine.shutdown()?;
    ensure!(
        report.last_sequence >= acknowledged,
        "recovery reached {}, before the acknowledged {acknowledged}",
        report.last_sequence
    );
    tally.torn_tails +=
        u64::from(report.journal.as_ref().is_some_and(|journal| journal.truncated.is_some()));
    // The journal as recovery left it: its commands after `from` are the child's workload's.
    let mut expected = Workload::new(child_seed, ACCOUNTS, CODES, Mix::PAYMENTS, first_id);
    let mut reader = JournalReader::open(data)?;
    let mut last = 0;
    while let Some(record) = reader.next()? {
        last = record.sequence;
        if record.sequence > from && record.kind == 1 {
            let command: Command = Bincode.decode(record.payload)?;
            let generated = expected.next_command();
            ensure!(
                command == generated,
                "sequence {} holds {command:?}, not the child's {generated:?}",
                record.sequence
            );
        }
    }
    ensure!(
        last >= acknowledged,
        "the journal ends at {last}, before the acknowledged {acknowledged}"
    );
    tally.acknowledged += acknowledged.saturating_sub(from);

    // In the replicated tier the replica holds each command the child acknowledged: it
    // acknowledged it before the primary applied it. (What the setup acknowledged in the
    // `PageCache` tier, before the replica existed, it may not hold yet.)
    let replicated_ack = child_acknowledged.filter(|sequence| *sequence > from);
    if let (Some(replica), Some(acknowledged)) = (&directory.replica, replicated_ack) {
        let primary = records(data, acknowledged)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let held = loop {
            let held = records(&replica.data, acknowledged)?;
            if held.len() as u64 >= acknowledged || Instant::now() > deadline {
                break held;
            }
            // Only possible if the replica had not acknowledged: a failure, after the wait.
            std::thread::sleep(Duration::from_millis(10));
        };
        ensure!(
            held.len() as u64 >= acknowledged && held[..] == primary[..held.len()],
            "the replica holds {} records up to the acknowledged {acknowledged}, or differs",
            held.len()
        );
        tally.replicated += acknowledged - from;
    }

    let full = replay_from(data, Bincode, Ledger::new(), ReplayFrom::Beginning, ReplayTarget::End)?;
    ensure!(
        full.state_hash == recovered.state_hash() && full.last_sequence == report.last_sequence,
        "recovery's state hash {:#x} at {} differs from the full replay's {:#x} at {} (snapshot \
         {:?})",
        recovered.state_hash(),
        report.last_sequence,
        full.state_hash,
        full.last_sequence,
        report.snapshot
    );
    if let Err(broken) = recovered.check_conservation() {
        bail!("money is not conserved after recovery: {broken}");
    }
    tally.from_snapshot += u64::from(report.snapshot.is_some());
    tally.snapshots_skipped += report.skipped_snapshots.len() as u64;
    directory.durable = report.last_sequence;
    Ok(())
}

/// The journal's records up to `last`: (sequence, kind, payload). Read with a tailer, which
/// stops at a batch not yet committed: the replica's process is writing its journal.
fn records(directory: &Path, last: u64) -> Result<Vec<(u64, u16, Vec<u8>)>> {
    let mut tailer = Tailer::open(directory, 1)?;
    let mut records = Vec::new();
    while let Some(record) = tailer.poll()? {
        if record.sequence > last {
            break;
        }
        records.push((record.sequence, record.kind, record.payload.to_vec()));
    }
    Ok(records)
}

fn segments(data: &Path) -> Result<u64> {
    let journal = data.join(keel_journal::segment::JOURNAL_DIRECTORY);
    Ok(keel_journal::segment::list_segments(&journal)?.len() as u64)
}
