//! `ledger demo`: load a ledger, measure it, snapshot it, crash a child engine process on the
//! same data with SIGKILL, recover, and check that nothing acknowledged was lost and that the
//! recovered state is the one a full replay of the journal gives.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use keel_engine::{
    replay_from, Bincode, Engine, ReplayFrom, ReplayTarget, SnapshotPolicy, StateMachine,
};
use keel_examples::driver::Pace;
use keel_examples::format;
use keel_examples::ledger::workload::{Mix, Workload};
use keel_examples::ledger::Ledger;
use keel_examples::rng::{seed_from_environment, SplitMix64};
use keel_examples::system;

use crate::options::{ensure_fresh, EngineOptions, Session};
use crate::run::{latency_basis, setup_accounts};

/// Currencies in the demo.
const CODES: u32 = 4;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  ledger demo\n  ledger demo --quick --data /tmp/ledger-demo")]
pub struct DemoArgs {
    /// A new (absent or empty) directory for the data; by default a fresh one under the
    /// system's temporary directory.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Customer accounts.
    #[arg(long, default_value_t = 100_000)]
    pub accounts: u64,
    /// Transfers in the load.
    #[arg(long, default_value_t = 5_000_000)]
    pub transfers: u64,
    /// A short run (10 K accounts, 200 K transfers), for a quick look and for CI.
    #[arg(long)]
    pub quick: bool,
    /// The workload's seed (default: `KEEL_SEED`, or the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// The demo's sizes.
struct Plan {
    accounts: u64,
    transfers: u64,
    /// The open-loop latency run: offered rate and commands.
    latency_rate: u64,
    latency_commands: u64,
    /// The child's offered rate, and how long it runs before the kill (a range).
    child_rate: u64,
    kill_after_ms: (u64, u64),
    child_snapshot_every: u64,
}

impl Plan {
    fn new(args: &DemoArgs) -> Self {
        if args.quick {
            Self {
                accounts: 10_000,
                transfers: 200_000,
                latency_rate: 100_000,
                latency_commands: 50_000,
                child_rate: 200_000,
                kill_after_ms: (150, 400),
                child_snapshot_every: 40_000,
            }
        } else {
            Self {
                accounts: args.accounts,
                transfers: args.transfers,
                latency_rate: 1_000_000,
                latency_commands: 2_000_000,
                child_rate: 2_000_000,
                kill_after_ms: (600, 1_500),
                child_snapshot_every: 1_000_000,
            }
        }
    }
}

/// A check's mark.
fn mark(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

fn row(label: &str, text: impl std::fmt::Display) {
    println!("  {label:<11}{text}");
}

pub fn demo(args: DemoArgs) -> Result<()> {
    let plan = Plan::new(&args);
    let data = args.data.clone().unwrap_or_else(default_directory);
    ensure_fresh(&data)?;
    let seed = args.seed.unwrap_or_else(seed_from_environment);
    let options = EngineOptions::default();
    let initial = || {
        Ledger::with_capacity(
            (plan.accounts + u64::from(CODES)) as usize,
            (plan.accounts + plan.transfers + plan.latency_commands) as usize * 2,
        )
    };
    println!("keel ledger demo");
    row("data", data.display());
    row("machine", system::machine());
    row("engine", format!("{}: a gateway thread and the engine thread", options.describe()));
    row("workload", format!("seed {seed} (KEEL_SEED={seed} repeats it)"));
    println!();

    // 1. Load.
    let mut workload = Workload::new(seed, plan.accounts, CODES, Mix::PAYMENTS, 1);
    let mut session = Session::open(&options, &data, initial(), SnapshotPolicy::default())?;
    let setup = setup_accounts(&mut session, &mut workload)?;
    println!("1. load");
    row(
        "setup",
        format!(
            "{} accounts in {CODES} currencies, funded: {} commands in {}",
            format::count(plan.accounts + u64::from(CODES)),
            format::count(setup.commands),
            format::seconds(setup.elapsed.as_secs_f64())
        ),
    );
    let load = session.drive_shown(
        "transfers",
        plan.transfers,
        Pace { rate: None, warm_up: plan.transfers / 10 },
        || workload.next_command(),
    )?;
    row(
        "throughput",
        format!(
            "{} transfers in {}: {}",
            format::count(load.commands),
            format::seconds(load.elapsed.as_secs_f64()),
            format::rate(load.rate(), "transfers")
        ),
    );
    let latency = session.drive_shown(
        "latency",
        plan.latency_commands,
        Pace { rate: Some(plan.latency_rate), warm_up: plan.latency_commands / 10 },
        || workload.next_command(),
    )?;
    row("latency", format::percentiles(&latency.latency));
    row("", format!("({})", latency_basis(Some(plan.latency_rate))));
    let [done, refused] = session.tally.lines();
    row("outcomes", done);
    row("", refused);
    println!();

    // 2. Snapshot.
    println!("2. snapshot");
    let snapshot = take_snapshot(session.engine(), &data)?;
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
    let (before_crash, _) = session.shutdown()?;
    let first_child_id = workload.next_transfer_id();
    println!();

    // 3. A child engine process on the same data, killed mid-stream.
    println!("3. crash");
    let crash = crash_child(&data, &plan, seed, first_child_id)?;
    row(
        "child",
        format!(
            "pid {} opened the data (snapshot of sequence {}, {} commands replayed), published at {}",
            crash.pid,
            format::count(crash.ready.snapshot),
            format::count(crash.ready.replayed),
            format::rate(plan.child_rate as f64, "transfers")
        ),
    );
    row(
        "SIGKILL",
        format!(
            "after {}: {} transfers acknowledged (their events received), the last at sequence {}",
            format::seconds(crash.ran.as_secs_f64()),
            format::count(crash.acknowledged - crash.ready.last_sequence),
            format::count(crash.acknowledged)
        ),
    );
    println!();

    // 4. Recovery.
    println!("4. recovery");
    let started = Instant::now();
    let engine = options.open(&data, initial(), SnapshotPolicy::default())?;
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
    println!();

    // 5. Checks.
    println!("5. checks");
    let kept = report.last_sequence >= crash.acknowledged;
    row(
        "durable",
        format!(
            "{} recovered to sequence {} ≥ {}, the last acknowledged",
            mark(kept),
            format::count(report.last_sequence),
            format::count(crash.acknowledged)
        ),
    );
    let started = Instant::now();
    let full = replay_from(&data, Bincode, Ledger::new(), ReplayFrom::Beginning, ReplayTarget::End)
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
    let conserved = recovered.check_conservation();
    match &conserved {
        Ok(totals) => row(
            "money",
            format!(
                "{} in each of {} currencies, debits = credits ({} units moved in all)",
                mark(true),
                totals.len(),
                format::count(totals.values().map(|sums| sums.credits_posted).sum::<u128>() as u64)
            ),
        ),
        Err(error) => row("money", format!("{} {error}", mark(false))),
    }
    let grew = recovered.transfer_count() > before_crash.transfer_count();
    row(
        "history",
        format!(
            "{} {} transfer records before the crash, {} after recovery",
            mark(grew),
            format::count(before_crash.transfer_count()),
            format::count(recovered.transfer_count())
        ),
    );
    println!();

    println!("The data stays in {}. Look at it with:", data.display());
    let data = data.display();
    let account = Workload::customer(42);
    for command in [
        format!("cargo run --release --bin keel -- journal inspect {data}"),
        format!("cargo run --release --bin ledger -- balance --data {data} --account {account}"),
        format!(
            "cargo run --release --bin ledger -- balance --data {data} --account {account} --at {}",
            keel_journal::time::rfc3339_nanos(snapshot.timestamp_ns)
        ),
        format!(
            "cargo run --release --bin ledger -- replay --data {data} --to-seq {}",
            snapshot.sequence
        ),
        format!("cargo run --release --bin ledger -- verify --data {data}"),
    ] {
        println!("  {command}");
    }
    if !(kept && same && conserved.is_ok() && grew) {
        bail!("a check failed (marked ✗ above)");
    }
    Ok(())
}

/// `$TMPDIR/keel-ledger-demo-YYYYMMDDThhmmss-PID`.
fn default_directory() -> PathBuf {
    let stamp: String = keel_journal::time::rfc3339(SystemTime::now())
        .chars()
        .filter(|character| !matches!(character, '-' | ':' | 'Z'))
        .collect();
    std::env::temp_dir().join(format!("keel-ledger-demo-{stamp}-{}", std::process::id()))
}

struct Snapshot {
    sequence: u64,
    timestamp_ns: u64,
    bytes: u64,
    seconds: f64,
    pause_ns: u64,
}

/// Asks the engine for a snapshot and waits for it to be written.
fn take_snapshot(engine: &Engine<Ledger>, data: &Path) -> Result<Snapshot> {
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
struct Ready {
    last_sequence: u64,
    snapshot: u64,
    replayed: u64,
}

struct Crash {
    pid: u32,
    ready: Ready,
    ran: Duration,
    acknowledged: u64,
}

/// Starts `ledger child` on `data`, lets it publish for a random while, and kills it.
fn crash_child(data: &Path, plan: &Plan, seed: u64, first_id: u64) -> Result<Crash> {
    let executable = std::env::current_exe().context("finding this program")?;
    let mut child = std::process::Command::new(executable)
        .args(["child", "--data"])
        .arg(data)
        .args([
            "--accounts",
            &plan.accounts.to_string(),
            "--seed",
            &seed.wrapping_add(1).to_string(),
            "--first-id",
            &first_id.to_string(),
            "--rate",
            &plan.child_rate.to_string(),
            "--snapshot-every",
            &plan.child_snapshot_every.to_string(),
        ])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .context("starting the child engine process")?;
    let pid = child.id();
    let result = watch_and_kill(&mut child, plan, seed);
    // Whatever happened, the child does not outlive the demo.
    let _ = child.kill();
    let _ = child.wait();
    let (ready, ran, acknowledged) = result?;
    Ok(Crash { pid, ready, ran, acknowledged })
}

fn watch_and_kill(child: &mut Child, plan: &Plan, seed: u64) -> Result<(Ready, Duration, u64)> {
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
    let (low, high) = plan.kill_after_ms;
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

#[derive(Debug, Args)]
pub struct ChildArgs {
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    accounts: u64,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    first_id: u64,
    #[arg(long)]
    rate: u64,
    #[arg(long)]
    snapshot_every: u64,
}

/// The demo's child: opens the engine on the demo's data, says so, then publishes the
/// workload at a fixed rate until it is killed, printing the last acknowledged sequence
/// (every command up to it has had its events received) about every 100 ms.
pub fn child(args: ChildArgs) -> Result<()> {
    let options = EngineOptions::default();
    let snapshots =
        SnapshotPolicy { every_commands: Some(args.snapshot_every), every_interval: None, keep: 0 };
    let mut session = Session::open(&options, &args.data, Ledger::new(), snapshots)?;
    let report = session.engine().recovery().clone();
    let base = report.last_sequence;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "ready {base} {} {}",
        report.snapshot.as_ref().map_or(0, |(_, sequence)| *sequence),
        report.replayed
    )?;
    stdout.flush()?;
    let mut workload = Workload::new(args.seed, args.accounts, CODES, Mix::PAYMENTS, args.first_id);
    session.drive(
        u64::MAX / 2,
        Pace { rate: Some(args.rate), warm_up: 0 },
        || workload.next_command(),
        |answered| {
            let _ = writeln!(stdout, "ack {}", base + answered);
            let _ = stdout.flush();
        },
    )?;
    Ok(())
}
