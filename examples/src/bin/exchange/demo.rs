//! `exchange demo`: load an exchange, measure it, snapshot it, crash a child engine process on
//! the same data with SIGKILL, recover, and check that nothing acknowledged was lost, that the
//! recovered state is the one a full replay of the journal gives, and that the invariants hold.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use keel_engine::SnapshotPolicy;
use keel_examples::cli::{ensure_fresh, EngineOptions};
use keel_examples::demo::{
    check_recovery, crash, default_directory, mark, measure, recover, row, show_inspection,
    show_snapshot, take_snapshot, ChildArgs,
};
use keel_examples::exchange::workload::{Mix, Workload};
use keel_examples::exchange::Exchange;
use keel_examples::format;
use keel_examples::rng::seed_from_environment;
use keel_examples::system;

use crate::run::{setup, Session};

/// Symbols in the demo.
const SYMBOLS: u32 = 8;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  exchange demo\n  exchange demo --quick --data /tmp/exchange-demo"
)]
pub struct DemoArgs {
    /// A new (absent or empty) directory for the data; by default a fresh one under the
    /// system's temporary directory.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Trading accounts.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: u64,
    /// Orders, cancels and amends in the load.
    #[arg(long, default_value_t = 5_000_000)]
    pub orders: u64,
    /// A short run (2 K accounts, 200 K orders), for a quick look and for CI.
    #[arg(long)]
    pub quick: bool,
    /// The workload's seed (default: `KEEL_SEED`, or the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// The demo's sizes.
struct Plan {
    accounts: u64,
    orders: u64,
    latency_rate: u64,
    latency_commands: u64,
    child_rate: u64,
    kill_after_ms: (u64, u64),
    child_snapshot_every: u64,
}

impl Plan {
    fn new(args: &DemoArgs) -> Self {
        if args.quick {
            Self {
                accounts: 2_000,
                orders: 200_000,
                latency_rate: 100_000,
                latency_commands: 50_000,
                child_rate: 200_000,
                kill_after_ms: (150, 400),
                child_snapshot_every: 40_000,
            }
        } else {
            Self {
                accounts: args.accounts,
                orders: args.orders,
                // Half the engine's capacity on the project's machine: an open-loop figure
                // above capacity measures the queue, not the engine.
                latency_rate: 500_000,
                latency_commands: 1_000_000,
                child_rate: 2_000_000,
                kill_after_ms: (600, 1_500),
                child_snapshot_every: 1_000_000,
            }
        }
    }
}

pub fn demo(args: DemoArgs) -> Result<()> {
    let plan = Plan::new(&args);
    let data = args.data.clone().unwrap_or_else(|| default_directory("exchange"));
    ensure_fresh(&data)?;
    let seed = args.seed.unwrap_or_else(seed_from_environment);
    let options = EngineOptions::default();
    println!("keel exchange demo");
    row("data", data.display());
    row("machine", system::machine());
    row("engine", format!("{}: a gateway thread and the engine thread", options.describe()));
    row("workload", format!("seed {seed} (KEEL_SEED={seed} repeats it)"));
    println!();

    // 1. Load.
    let mut workload = Workload::new(seed, plan.accounts, SYMBOLS, Mix::REALISTIC, 1);
    let initial = Exchange::with_capacity(plan.accounts as usize, 1 << 20);
    let mut session = Session::open(&options, &data, initial, SnapshotPolicy::default())?;
    let setup = setup(&mut session, &workload)?;
    println!("1. load");
    row(
        "setup",
        format!(
            "{SYMBOLS} symbols, {} accounts funded: {} commands in {}",
            format::count(plan.accounts),
            format::count(setup.commands),
            format::seconds(setup.elapsed.as_secs_f64())
        ),
    );
    measure(
        &mut session,
        "orders, cancels and amends",
        "commands",
        plan.orders,
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
    let first_child_id = workload.next_order_id();
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
    let crash = crash(&child.arguments(), plan.kill_after_ms, seed, plan.child_rate, "commands")?;
    println!();

    // 4. Recovery.
    println!("4. recovery");
    let (report, recovered) = recover(&options, &data, Exchange::new())?;
    println!();

    // 5. Checks.
    println!("5. checks");
    let (kept, same) =
        check_recovery(&data, &report, &recovered, crash.acknowledged, Exchange::new())?;
    let invariants = recovered.check_invariants();
    match &invariants {
        Ok(()) => row(
            "books",
            format!(
                "{} no book crossed, every asset conserved, holds match their orders ({} resting \
                 before the crash, {} after)",
                mark(true),
                format::count(before_crash.resting_count() as u64),
                format::count(recovered.resting_count() as u64)
            ),
        ),
        Err(error) => row("books", format!("{} {error}", mark(false))),
    }
    println!();

    let shown = data.display();
    show_inspection(
        &data,
        &[
            format!("cargo run --release --bin keel -- journal inspect {shown}"),
            format!("cargo run --release --bin exchange -- book --data {shown} --symbol 1"),
            format!(
                "cargo run --release --bin exchange -- book --data {shown} --symbol 1 --at {}",
                keel_journal::time::rfc3339_nanos(snapshot.timestamp_ns)
            ),
            format!("cargo run --release --bin exchange -- verify --data {shown}"),
        ],
    );
    if !(kept && same && invariants.is_ok()) {
        bail!("a check failed (marked ✗ above)");
    }
    Ok(())
}

/// The demo's child: publishes the workload at a fixed rate until it is killed
/// (`keel_examples::demo::child`).
pub fn child(args: ChildArgs) -> Result<()> {
    let mut workload =
        Workload::new(args.seed, args.accounts, SYMBOLS, Mix::REALISTIC, args.first_id);
    keel_examples::demo::child(&args, Exchange::new(), || workload.next_command())
}
