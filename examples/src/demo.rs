//! What the example binaries' demos share: their rows and marks, a fresh directory, a snapshot
//! on demand, and the crash: a child engine process on the demo's data, killed with SIGKILL at
//! a random moment while it publishes, after telling the parent over a pipe what it had
//! acknowledged.
//!
//! The child speaks two kinds of lines on its standard output: `ready LAST SNAPSHOT REPLAYED`
//! once its engine is open (the last sequence it recovered, the snapshot's sequence or 0, the
//! commands it replayed), then `ack N` about every 100 ms, N being the last sequence whose
//! events it has received.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _, Result};
use keel_engine::{
    replay_from, Bincode, Engine, RecoveryReport, ReplayFrom, ReplayTarget, SnapshotPolicy,
    StateMachine,
};

use clap::Args;

use crate::cli::{EngineOptions, Session, Tally};
use crate::driver::{drive, latency_basis, Pace};
use crate::format;
use crate::rng::SplitMix64;

/// A check's mark.
pub fn mark(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

/// A row of the demo's output: a label in a column, then the text.
pub fn row(label: &str, text: impl std::fmt::Display) {
    println!("  {label:<11}{text}");
}

/// `$TMPDIR/keel-NAME-demo-YYYYMMDDThhmmss-PID`.
pub fn default_directory(name: &str) -> PathBuf {
    let stamp: String = keel_journal::time::rfc3339(SystemTime::now())
        .chars()
        .filter(|character| !matches!(character, '-' | ':' | 'Z'))
        .collect();
    std::env::temp_dir().join(format!("keel-{name}-demo-{stamp}-{}", std::process::id()))
}

/// A snapshot the demo asked for.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    /// The sequence it covers.
    pub sequence: u64,
    /// The engine time of that sequence.
    pub timestamp_ns: u64,
    /// The file's size.
    pub bytes: u64,
    /// From the request to the file written.
    pub seconds: f64,
    /// How long the engine thread paused for the copy.
    pub pause_ns: u64,
}

/// Asks the engine for a snapshot and waits for it to be written.
pub fn take_snapshot<M: StateMachine>(engine: &Engine<M>, data: &Path) -> Result<Snapshot> {
    let before = engine.stats().snapshots;
    let started = Instant::now();
    engine.snapshot();
    let stats = loop {
        let stats = engine.stats();
        if stats.snapshots > before {
            break stats;
        }
        if let Some(error) = stats.snapshot_error {
            bail!("the snapshot failed: {error}");
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the snapshot was not written within two minutes");
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let seconds = started.elapsed().as_secs_f64();
    let store = keel_journal::SnapshotStore::open(data)?;
    let file = store
        .list()?
        .into_iter()
        .find(|file| file.sequence == stats.last_snapshot_sequence)
        .context("the snapshot just written")?;
    let header = keel_journal::snapshot::read_snapshot_header(&file.path)?;
    Ok(Snapshot {
        sequence: stats.last_snapshot_sequence,
        timestamp_ns: header.timestamp_ns,
        bytes: std::fs::metadata(&file.path)?.len(),
        seconds,
        pause_ns: stats.snapshot_pause_last_ns,
    })
}

/// What the child said when its engine was open.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ready {
    /// The last sequence it recovered.
    pub last_sequence: u64,
    /// The snapshot it loaded (its sequence), or 0.
    pub snapshot: u64,
    /// Commands it replayed.
    pub replayed: u64,
}

/// What a crash did.
#[derive(Clone, Copy, Debug)]
pub struct Crash {
    /// The child's process id.
    pub pid: u32,
    /// What it recovered when it opened.
    pub ready: Ready,
    /// How long it ran after it was ready.
    pub ran: Duration,
    /// The last sequence it acknowledged.
    pub acknowledged: u64,
}

/// Starts this program again with `arguments` (its hidden child subcommand), lets the child
/// publish for a while drawn from `seed` within `kill_after_ms`, and kills it with SIGKILL.
pub fn crash_child(arguments: &[String], kill_after_ms: (u64, u64), seed: u64) -> Result<Crash> {
    let executable = std::env::current_exe().context("finding this program")?;
    let mut child = std::process::Command::new(executable)
        .args(arguments)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .context("starting the child engine process")?;
    let pid = child.id();
    let result = watch_and_kill(&mut child, kill_after_ms, seed);
    // Whatever happened, the child does not outlive the demo.
    let _ = child.kill();
    let _ = child.wait();
    let (ready, ran, acknowledged) = result?;
    Ok(Crash { pid, ready, ran, acknowledged })
}

fn watch_and_kill(
    child: &mut Child,
    kill_after_ms: (u64, u64),
    seed: u64,
) -> Result<(Ready, Duration, u64)> {
    let stdout = child.stdout.take().context("the child's output")?;
    let acknowledged = Arc::new(AtomicU64::new(0));
    let (ready_sender, ready_receiver) = mpsc::channel();
    let reader = {
        let acknowledged = Arc::clone(&acknowledged);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut words = line.split_whitespace();
                match (words.next(), words.next().and_then(|word| word.parse::<u64>().ok())) {
                    (Some("ack"), Some(sequence)) => {
                        acknowledged.fetch_max(sequence, Ordering::AcqRel);
                    }
                    (Some("ready"), Some(last_sequence)) => {
                        let mut numbers = words.filter_map(|word| word.parse::<u64>().ok());
                        let snapshot = numbers.next().unwrap_or(0);
                        let replayed = numbers.next().unwrap_or(0);
                        acknowledged.fetch_max(last_sequence, Ordering::AcqRel);
                        let _ = ready_sender.send(Ready { last_sequence, snapshot, replayed });
                    }
                    _ => {}
                }
            }
        })
    };
    let ready = match ready_receiver.recv_timeout(Duration::from_secs(120)) {
        Ok(ready) => ready,
        Err(_) => {
            let status = child.try_wait().ok().flatten();
            bail!("the child engine never became ready (exit status: {status:?})");
        }
    };
    let started = Instant::now();
    let (low, high) = kill_after_ms;
    let delay = low + SplitMix64::new(seed).below(high - low + 1);
    std::thread::sleep(Duration::from_millis(delay));
    if let Some(status) = child.try_wait()? {
        bail!("the child engine stopped by itself before the kill: {status}");
    }
    child.kill().context("killing the child")?;
    let ran = started.elapsed();
    child.wait().context("waiting for the killed child")?;
    reader.join().map_err(|_| anyhow::anyhow!("the child's reader panicked"))?;
    Ok((ready, ran, acknowledged.load(Ordering::Acquire)))
}

/// The child's side: opens the engine on `data` with the default settings and snapshots every
/// `snapshot_every` commands, says `ready`, then publishes `next()` at `rate` until it is
/// killed, saying `ack N` about every 100 ms.
pub fn child<M: StateMachine>(
    args: &ChildArgs,
    initial: M,
    next: impl FnMut() -> M::Command,
) -> Result<()>
where
    M::Command: Clone,
{
    let snapshots =
        SnapshotPolicy { every_commands: Some(args.snapshot_every), every_interval: None, keep: 0 };
    let replication = args.replication.replication()?;
    let mut engine = args.engine.open_replicating(&args.data, initial, snapshots, replication)?;
    let rate = args.rate;
    let mut output = engine.take_output_poller().context("the output poller")?;
    let mut publisher = engine.sole_publisher().context("the engine's publisher")?;
    let report = engine.recovery().clone();
    let base = report.last_sequence;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "ready {base} {} {}",
        report.snapshot.as_ref().map_or(0, |(_, sequence)| *sequence),
        report.replayed
    )?;
    stdout.flush()?;
    drive(
        &mut publisher,
        &mut output,
        next,
        u64::MAX / 2,
        Pace { rate: Some(rate), warm_up: 0, progress_every: Some(Duration::from_millis(1)) },
        |_, _| {},
        |answered| {
            let _ = writeln!(stdout, "ack {}", base + answered);
            let _ = stdout.flush();
        },
    )?;
    Ok(())
}

/// Prints the snapshot's row.
pub fn show_snapshot(snapshot: &Snapshot) {
    row(
        "written",
        format!(
            "sequence {}: {} in {}, engine paused {} for the copy",
            format::count(snapshot.sequence),
            format::bytes(snapshot.bytes),
            format::seconds(snapshot.seconds),
            format::nanos(snapshot.pause_ns)
        ),
    );
}

/// The demo's third step: starts the child with `arguments`, kills it, prints what happened.
/// `unit` names the commands ("transfers", "commands").
pub fn crash(
    arguments: &[String],
    kill_after_ms: (u64, u64),
    seed: u64,
    rate: u64,
    unit: &str,
) -> Result<Crash> {
    let crash = crash_child(arguments, kill_after_ms, seed)?;
    row(
        "child",
        format!(
            "pid {} opened the data (snapshot of sequence {}, {} commands replayed), published at {}",
            crash.pid,
            format::count(crash.ready.snapshot),
            format::count(crash.ready.replayed),
            format::rate(rate as f64, unit)
        ),
    );
    row(
        "SIGKILL",
        format!(
            "after {}: {} {unit} acknowledged (their events received), the last at sequence {}",
            format::seconds(crash.ran.as_secs_f64()),
            format::count(crash.acknowledged - crash.ready.last_sequence),
            format::count(crash.acknowledged)
        ),
    );
    Ok(crash)
}

/// The demo's fourth step: opens the engine on `data` (recovering), prints what recovery did,
/// stops the engine; returns the report and the recovered state.
pub fn recover<M: StateMachine>(
    options: &EngineOptions,
    data: &Path,
    initial: M,
) -> Result<(RecoveryReport, M)> {
    let started = Instant::now();
    let engine = options.open(data, initial, SnapshotPolicy::default())?;
    let opened = started.elapsed();
    let report = engine.recovery().clone();
    let recovered = engine.shutdown().context("shutting the recovered engine down")?;
    if let Some(journal) = &report.journal {
        if let Some(truncation) = &journal.truncated {
            row(
                "journal",
                format!(
                    "torn tail at byte {} of {}: {} bytes cut ({})",
                    format::count(truncation.offset),
                    truncation.segment.display(),
                    format::count(truncation.bytes),
                    truncation.damage
                ),
            );
        } else {
            row("journal", "ended cleanly: the kill fell between batches");
        }
    }
    match &report.snapshot {
        Some((path, sequence)) => {
            row("snapshot", format!("sequence {} ({})", format::count(*sequence), path.display()))
        }
        None => row("snapshot", "none usable: replayed from the first record"),
    }
    for (path, reason) in &report.skipped_snapshots {
        row("skipped", format!("{}: {reason}", path.display()));
    }
    row(
        "replayed",
        format!(
            "{} commands in {} ({}); ready in {}",
            format::count(report.replayed),
            format::seconds(report.replay_seconds),
            format::rate(report.replayed as f64 / report.replay_seconds.max(1e-9), "commands"),
            format::seconds(opened.as_secs_f64())
        ),
    );
    Ok((report, recovered))
}

/// The two checks every demo makes after a crash: recovery reached the last acknowledged
/// sequence, and its state hash equals the one a replay of the whole journal from its first
/// record gives. Prints both rows; returns whether each passed.
pub fn check_recovery<M: StateMachine>(
    data: &Path,
    report: &RecoveryReport,
    recovered: &M,
    acknowledged: u64,
    initial: M,
) -> Result<(bool, bool)> {
    let kept = report.last_sequence >= acknowledged;
    row(
        "durable",
        format!(
            "{} recovered to sequence {} ≥ {}, the last acknowledged",
            mark(kept),
            format::count(report.last_sequence),
            format::count(acknowledged)
        ),
    );
    let started = Instant::now();
    let full = replay_from(data, Bincode, initial, ReplayFrom::Beginning, ReplayTarget::End)
        .context("replaying the whole journal")?;
    let replay_seconds = started.elapsed().as_secs_f64();
    let recovered_hash = recovered.state_hash();
    let same = full.state_hash == recovered_hash && full.last_sequence == report.last_sequence;
    row(
        "state",
        format!(
            "{} hash {recovered_hash:#018x} after recovery = {:#018x} after replaying all {} \
             commands from the first ({})",
            mark(same),
            full.state_hash,
            format::count(full.replayed),
            format::seconds(replay_seconds)
        ),
    );
    Ok((kept, same))
}

/// The demo's last lines: where the data is, and commands to look at it.
pub fn show_inspection(data: &Path, commands: &[String]) {
    println!("The data stays in {}. Look at it with:", data.display());
    for command in commands {
        println!("  {command}");
    }
}

/// The demo's first measurements: `count` commands at saturation (the throughput row), then
/// `latency_commands` at `latency_rate` offered (the latency rows, from intended send times).
/// `what` names the traffic in the throughput row ("transfers"), `unit` its rate's unit.
#[allow(clippy::too_many_arguments)]
pub fn measure<M, T>(
    session: &mut Session<M, T>,
    what: &str,
    unit: &str,
    count: u64,
    latency_rate: u64,
    latency_commands: u64,
    mut next: impl FnMut() -> M::Command,
) -> Result<()>
where
    M: StateMachine,
    M::Command: Clone,
    T: Tally<M::Event>,
{
    let load = session.drive_shown(
        "load",
        count,
        Pace { rate: None, warm_up: count / 10, ..Pace::default() },
        &mut next,
    )?;
    row(
        "throughput",
        format!(
            "{} {what} in {}: {}",
            format::count(load.commands),
            format::seconds(load.elapsed.as_secs_f64()),
            format::rate(load.rate(), unit)
        ),
    );
    let pace = Pace { rate: Some(latency_rate), warm_up: latency_commands / 10, ..Pace::default() };
    let latency = session.drive_shown("latency", latency_commands, pace, next)?;
    row("latency", format::percentiles(&latency.latency));
    row("", format!("({})", latency_basis(Some(latency_rate), unit)));
    Ok(())
}

/// The flags of a demo's hidden `child` subcommand: where, what and how fast to publish.
#[derive(Clone, Debug, Args)]
pub struct ChildArgs {
    /// The demo's data.
    #[arg(long)]
    pub data: PathBuf,
    /// The accounts the workload uses.
    #[arg(long)]
    pub accounts: u64,
    /// The workload's seed.
    #[arg(long)]
    pub seed: u64,
    /// The first id the workload gives out (above every id the demo used).
    #[arg(long)]
    pub first_id: u64,
    /// Commands per second offered.
    #[arg(long)]
    pub rate: u64,
    /// A snapshot every this many commands.
    #[arg(long)]
    pub snapshot_every: u64,
    /// The engine's settings (the defaults unless a crash test says otherwise).
    #[command(flatten)]
    pub engine: EngineOptions,
    /// Serving replicas (the crash test's `Replicated` tier).
    #[command(flatten)]
    pub replication: crate::cli::ReplicationArgs,
}

impl ChildArgs {
    /// The command line that starts the child with these flags.
    pub fn arguments(&self) -> Vec<String> {
        let mut arguments: Vec<String> = vec![
            "child".into(),
            "--data".into(),
            self.data.display().to_string(),
            "--accounts".into(),
            self.accounts.to_string(),
            "--seed".into(),
            self.seed.to_string(),
            "--first-id".into(),
            self.first_id.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "--snapshot-every".into(),
            self.snapshot_every.to_string(),
        ];
        arguments.extend(self.engine.arguments());
        let replication = &self.replication;
        if let Some(address) = replication.replicate {
            arguments.extend([
                "--replicate".into(),
                address.to_string(),
                "--quorum".into(),
                replication.quorum.to_string(),
                "--ack-timeout-ms".into(),
                replication.ack_timeout_ms.to_string(),
            ]);
            if let Some(rounds) = replication.ack_spin {
                arguments.extend(["--ack-spin".into(), rounds.to_string()]);
            }
            if let Some(file) = &replication.secret_file {
                arguments.extend(["--secret-file".into(), file.display().to_string()]);
            }
        }
        arguments
    }
}
