//! `ledger demo`: load a ledger, measure it, snapshot it, crash a child engine process on the
//! same data with SIGKILL, recover, and check that nothing acknowledged was lost and that the
//! recovered state is the one a full replay of the journal gives.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use keel_engine::SnapshotPolicy;
use keel_examples::demo::{
    check_recovery, crash, default_directory, mark, measure, recover, row, show_inspection,
    show_snapshot, take_snapshot, ChildArgs,
};
use keel_examples::format;
use keel_examples::ledger::workload::{Mix, Workload};
use keel_examples::ledger::Ledger;
use keel_examples::rng::seed_from_environment;
use keel_examples::system;

use crate::options::{ensure_fresh, EngineOptions, Session};
use crate::run::setup_accounts;

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

pub fn demo(args: DemoArgs) -> Result<()> {
    let plan = Plan::new(&args);
    let data = args.data.clone().unwrap_or_else(|| default_directory("ledger"));
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
    measure(
        &mut session,
        "transfers",
        "transfers",
        plan.transfers,
        plan.latency_rate,
        plan.latency_commands,
        || workload.next_command(),
    )?;
    let [done, refused] = session.tally.lines();
    row("outcomes", done);
    row("", refused);
    println!();

    // 2. Snapshot.
    println!("2. snapshot");
    let snapshot = take_snapshot(session.engine(), &data)?;
    show_snapshot(&snapshot);
    let (before_crash, _) = session.shutdown()?;
    let first_child_id = workload.next_transfer_id();
    println!();

    // 3. A child engine process on the same data, killed mid-stream.
    println!("3. crash");
    let child = ChildArgs {
        data: data.clone(),
        accounts: plan.accounts,
        seed: seed.wrapping_add(1),
        first_id: first_child_id,
        rate: plan.child_rate,
        snapshot_every: plan.child_snapshot_every,
        engine: Default::default(),
        replication: Default::default(),
    };
    let crash = crash(&child.arguments(), plan.kill_after_ms, seed, plan.child_rate, "transfers")?;
    println!();

    // 4. Recovery.
    println!("4. recovery");
    let (report, recovered) = recover(&options, &data, initial())?;
    println!();

    // 5. Checks.
    println!("5. checks");
    let (kept, same) =
        check_recovery(&data, &report, &recovered, crash.acknowledged, Ledger::new())?;
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

    let account = Workload::customer(42);
    let shown = data.display();
    show_inspection(
        &data,
        &[
            format!("cargo run --release --bin keel -- journal inspect {shown}"),
            format!("cargo run --release --bin ledger -- balance --data {shown} --account {account}"),
            format!(
                "cargo run --release --bin ledger -- balance --data {shown} --account {account} --at {}",
                keel_journal::time::rfc3339_nanos(snapshot.timestamp_ns)
            ),
            format!(
                "cargo run --release --bin ledger -- replay --data {shown} --to-seq {}",
                snapshot.sequence
            ),
            format!("cargo run --release --bin ledger -- verify --data {shown}"),
        ],
    );
    if !(kept && same && conserved.is_ok() && grew) {
        bail!("a check failed (marked ✗ above)");
    }
    Ok(())
}

/// The demo's child: publishes the workload at a fixed rate until it is killed
/// (`keel_examples::demo::child`).
pub fn child(args: ChildArgs) -> Result<()> {
    let mut workload = Workload::new(args.seed, args.accounts, CODES, Mix::PAYMENTS, args.first_id);
    keel_examples::demo::child(&args, Ledger::new(), || workload.next_command())
}
