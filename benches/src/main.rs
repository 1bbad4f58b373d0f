//! `keel-bench`: keel's benchmark harness.
//!
//! ```text
//! cargo run --release --bin keel-bench                    # the suite: every scenario, short
//! cargo run --release --bin keel-bench -- ring            # every ring scenario, 5 runs each
//! cargo run --release --bin keel-bench -- ping-pong --runs 9
//! cargo run --release --bin keel-bench -- ring --json     # one JSON object per line
//! cargo run --release --bin keel-bench -- ring --quick    # a short smoke run
//! cargo run --release --bin keel-bench -- journal          # the journal: tiers, ceilings, rolls
//! cargo run --release --bin keel-bench -- engine           # the engine: saturation, open-loop latency
//! cargo run --release --bin keel-bench -- ledger           # the ledger against SQLite and no journal
//! cargo run --release --bin keel-bench -- ab BEFORE AFTER -- ARGS  # two builds, alternated (ab.rs)
//! ```
//!
//! Every scenario runs keel and its peers interleaved, run by run (the order rotates each run),
//! with the machine's bare inter-core round trip measured before each run; the summary gives
//! the median, minimum and maximum across runs, and keel's ratio to each peer's median.

mod ab;
mod apps;
mod engine;
mod journal;
mod machine;
mod plots;
mod recovery;
mod report;
mod ring;
mod save;
mod scratch;

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context as _, Result};
use clap::Parser;
use keel_ring::{Blocking, BusySpin, Sleeping, Yielding};

use crate::engine::Replicas;
use crate::machine::{inter_core_round_trip_ns, Machine};
use crate::report::{figure, summarize, table, Latency, Measurement, Summary};
use crate::ring::{sum_to, Outcome, PingPong, Pinning};

/// keel's benchmarks: keel against its peers in the same run.
#[derive(Debug, Parser)]
#[command(
    name = "keel-bench",
    after_help = "Examples:\n  keel-bench                      # the suite: every scenario, short, one table\n  keel-bench ledger               # one scenario in full\n  keel-bench one-to-one two-to-one --runs 9\n  keel-bench ring --json > results.jsonl\n  keel-bench ab OLD NEW -- ARGS    # two builds of a program, alternated (keel-bench ab --help)"
)]
struct Arguments {
    /// Scenarios to run, in full; none runs the suite (every scenario at the `--quick` size,
    /// three runs each, about a minute and a half on two cores). `ring` is `one-to-one`, `two-to-one`, `one-to-diamond` and `ping-pong`;
    /// `journal` (append per tier, ceilings, verified read, rolls); `engine` (every topology
    /// and tier at saturation and at fixed offered rates, with the bare ring and the
    /// disruptor crate as ceilings); `ledger` (the ledger example in each tier against a
    /// no-journal ceiling and a SQLite event store); `exchange` (the exchange example);
    /// `recovery` (time to ready after ledger journals, with and without a snapshot);
    /// `replica` (the `Replicated` tier with one replica over loopback TCP, and its lag).
    scenarios: Vec<String>,
    /// Runs per system and scenario (at least 1; 5 or more for a figure worth quoting).
    /// Default: 5, or 3 with `--quick` and in the suite.
    #[arg(long)]
    runs: Option<usize>,
    /// A short run: a tenth of the events (and of the recovery journals' size).
    #[arg(long)]
    quick: bool,
    /// Print one JSON object per line (each run, then each summary) instead of the table.
    #[arg(long)]
    json: bool,
    /// Only these systems in the ring scenarios (comma-separated: keel, disruptor, rtrb,
    /// crossbeam); all by default.
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Only the cases of the engine, ledger, exchange and replica scenarios whose name (as the
    /// table prints it: scenario, system and variant, e.g. `engine-recovery`) contains this
    /// text; all by default. For a quick look at one figure: its peers and ceilings are left
    /// out unless the text names them too.
    #[arg(long)]
    only: Option<String>,
    /// Leave the two-thread scenarios (one-to-one, ping-pong) unpinned. By default their
    /// producer runs on CPU 0 and their consumer on CPU 1, for every system alike.
    #[arg(long)]
    no_pin: bool,
    /// Where the journal, engine, ledger, exchange, recovery and replica scenarios write their
    /// data (default: the system's temporary directory). The figures are the file system's
    /// and the disk's under it.
    #[arg(long)]
    journal_dir: Option<std::path::PathBuf>,
    /// Where each invocation's results go: a folder named by date, commit and scenarios, with
    /// every run and summary as JSON lines, the table, one `.hgrm` file per latency
    /// histogram and the plots as SVG.
    #[arg(long, default_value = "bench-results")]
    out: std::path::PathBuf,
    /// Write no results folder.
    #[arg(long)]
    no_save: bool,
}

/// One system's variant of one scenario.
struct Case {
    system: &'static str,
    variant: &'static str,
    /// The count and sum every correct run must report.
    expected: (u64, u64),
    run: Box<dyn Fn() -> Result<(Outcome, Option<Latency>)>>,
}

fn throughput(
    system: &'static str,
    variant: &'static str,
    expected: (u64, u64),
    run: impl Fn() -> Result<Outcome> + 'static,
) -> Case {
    Case { system, variant, expected, run: Box::new(move || Ok((run()?, None))) }
}

fn latency(
    system: &'static str,
    variant: &'static str,
    expected: (u64, u64),
    run: impl Fn() -> Result<(Outcome, Latency)> + 'static,
) -> Case {
    Case {
        system,
        variant,
        expected,
        run: Box::new(move || run().map(|(outcome, latency)| (outcome, Some(latency)))),
    }
}

/// The cases of `scenario`, sized by `scale` (1 for the full run, 10 for `--quick`).
fn cases(scenario: &str, scale: u64, pin: Pinning) -> Result<Vec<Case>> {
    let one = (ring::BATCH as u64) * 781_250 / scale; // 50 M, a multiple of the batch.
    let one_batch = one * 4;
    let two = 20_000_000 / scale;
    let diamond = 20_000_000 / scale;
    let ping = PingPong { warmup: 100_000 / scale, samples: 1_000_000 / scale };
    let single = (one, sum_to(one));
    let batch = (one_batch, sum_to(one_batch));
    let two_expected = (two, 2 * sum_to(two / 2));
    let ping_expected = (ping.samples, sum_to(ping.warmup + ping.samples));
    let ping = std::rc::Rc::new(ping);
    Ok(match scenario {
        "one-to-one" => vec![
            throughput("keel", "busy-spin single", single, move || {
                ring::one_to_one_keel(BusySpin, one, false, pin)
            }),
            throughput("disruptor", "busy-spin single", single, move || {
                ring::one_to_one_disruptor(one, false, pin)
            }),
            throughput("rtrb", "spin single", single, move || {
                ring::one_to_one_rtrb(one, false, pin)
            }),
            throughput("crossbeam", "bounded single", single, move || {
                ring::one_to_one_crossbeam(one, pin)
            }),
            throughput("keel", "busy-spin batch-64", batch, move || {
                ring::one_to_one_keel(BusySpin, one_batch, true, pin)
            }),
            throughput("disruptor", "busy-spin batch-64", batch, move || {
                ring::one_to_one_disruptor(one_batch, true, pin)
            }),
            throughput("rtrb", "spin batch-64", batch, move || {
                ring::one_to_one_rtrb(one_batch, true, pin)
            }),
            throughput("keel", "yielding single", single, move || {
                ring::one_to_one_keel(Yielding::default(), one, false, pin)
            }),
        ],
        "two-to-one" => vec![
            throughput("keel", "yielding", two_expected, move || {
                ring::two_to_one_keel(Yielding::default(), two)
            }),
            throughput("keel", "blocking", two_expected, move || {
                ring::two_to_one_keel(Blocking::new(), two)
            }),
            throughput("keel", "sleeping", two_expected, move || {
                ring::two_to_one_keel(Sleeping::default(), two)
            }),
            throughput("crossbeam", "bounded", two_expected, move || {
                ring::two_to_one_crossbeam(two)
            }),
            throughput("disruptor", "busy-spin", two_expected, move || {
                ring::two_to_one_disruptor(two)
            }),
        ],
        "one-to-diamond" => vec![
            throughput("keel", "yielding", (diamond, sum_to(diamond)), move || {
                ring::diamond_keel(Yielding::default(), diamond)
            }),
            throughput("disruptor", "busy-spin+hint", (diamond, sum_to(diamond)), move || {
                ring::diamond_disruptor(diamond)
            }),
        ],
        "ping-pong" => {
            let (first, second, third) = (ping.clone(), ping.clone(), ping);
            vec![
                latency("keel", "busy-spin", ping_expected, move || {
                    ring::ping_pong_keel(&first, pin)
                }),
                latency("disruptor", "busy-spin", ping_expected, move || {
                    ring::ping_pong_disruptor(&second, pin)
                }),
                latency("rtrb", "spin", ping_expected, move || ring::ping_pong_rtrb(&third, pin)),
            ]
        }
        other => unreachable!("`expand` admits only the ring scenarios, not '{other}'"),
    })
}

/// One journal case: its scenario, system ("keel" or "ceiling"), variant and how to run it.
type JournalCase =
    (&'static str, &'static str, String, Box<dyn Fn() -> Result<journal::JournalOutcome>>);

/// Records for a case that syncs every batch of `batch` (the `Fsync` tier and its raw
/// ceiling, which must write the same amount): a few hundred syncs at most, each ≈ 0.15 ms.
fn synced_records(batch: u64, scale: u64) -> u64 {
    match batch {
        1 => 2_000 / scale,
        64 => 64 * 400 / scale,
        _ => 4096 * 150 / scale,
    }
}

/// The journal cases, sized by `scale` (1 for the full run, 10 for `--quick`), writing under
/// `root`.
fn journal_cases(root: &std::path::Path, scale: u64) -> Vec<JournalCase> {
    let mut cases: Vec<JournalCase> = Vec::new();
    let root = root.to_owned();
    for (durability, tier) in [
        (keel_journal::Durability::PageCache, "page-cache"),
        (keel_journal::Durability::Fsync, "fsync"),
    ] {
        for payload in [32usize, 64, 256] {
            for batch in [1u64, 64, 4096] {
                let records = match durability {
                    keel_journal::Durability::PageCache => 2_000_000 / scale,
                    keel_journal::Durability::Fsync => synced_records(batch, scale),
                };
                let root = root.clone();
                cases.push((
                    "journal-append",
                    "keel",
                    format!("{tier} {payload}B batch-{batch}"),
                    Box::new(move || journal::append(&root, durability, payload, batch, records)),
                ));
            }
        }
    }
    cases.push((
        "journal-append",
        "ceiling",
        "memcpy 96B".into(),
        Box::new(|| Ok(journal::memcpy_ceiling())),
    ));
    for batch in [1u64, 64, 4096] {
        let records = synced_records(batch, scale);
        let root = root.clone();
        cases.push((
            "journal-append",
            "ceiling",
            format!("pwrite+fdatasync 96B batch-{batch}"),
            Box::new(move || journal::pwrite_fdatasync_ceiling(&root, batch, records)),
        ));
    }
    for (name, per_record) in
        [("crc32c per record 96B", true), ("crc32c per batch 4096x96B", false)]
    {
        cases.push((
            "journal-read",
            "ceiling",
            name.into(),
            Box::new(move || Ok(journal::checksum_ceiling(per_record))),
        ));
    }
    for (name, by_batch) in [("verified 64B by batch", true), ("verified 64B by record", false)] {
        let read_root = root.clone();
        cases.push((
            "journal-read",
            "keel",
            name.into(),
            Box::new(move || journal::verified_read(&read_root, 4_000_000 / scale, by_batch)),
        ));
    }
    cases.push((
        "journal-roll",
        "keel",
        "page-cache 64B batch-64 1MiB segments".into(),
        Box::new(move || journal::roll(&root, 200 / scale)),
    ));
    cases
}

/// Runs the journal benchmark: its measurements, and the bandwidth and roll figures as notes.
fn run_journal(arguments: &Arguments, runs: usize, scale: u64) -> Result<Results> {
    let root = arguments.journal_dir.clone().unwrap_or_else(std::env::temp_dir);
    let cases = journal_cases(&root, scale);
    let mut results = Results::default();
    let mut gigabytes: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut roll_worst: Vec<f64> = Vec::new();
    for run in 0..runs {
        if !arguments.json {
            println!("journal run {}/{runs} (under {})", run + 1, root.display());
        }
        for (scenario, system, variant, case) in &cases {
            let outcome = case()?;
            let measurement = Measurement {
                scenario,
                system,
                variant: variant.clone(),
                run: run + 1,
                events: outcome.records,
                ops_per_sec: outcome.records_per_sec(),
                latency: outcome.latency.clone(),
                probe_ns: 0.0,
                details: Default::default(),
            };
            gigabytes
                .entry(format!("{scenario} {system} {variant}"))
                .or_default()
                .push(outcome.gigabytes_per_sec());
            if let Some(worst) = outcome.roll_worst_ns {
                roll_worst.push(worst as f64);
            }
            if arguments.json {
                let mut line = serde_json::to_value(&measurement)?;
                line["gb_per_sec"] = serde_json::json!(outcome.gigabytes_per_sec());
                if let Some(worst) = outcome.roll_worst_ns {
                    line["roll_worst_ns"] = serde_json::json!(worst);
                }
                println!("{line}");
            } else {
                let roll = outcome
                    .roll_worst_ns
                    .map(|worst| format!("  worst roll append {worst} ns"))
                    .unwrap_or_default();
                println!(
                    "  {:<15} {:<8} {:<40} {:>8.2} M/s {:>6.2} GB/s{roll}",
                    scenario,
                    system,
                    variant,
                    outcome.records_per_sec() / 1e6,
                    outcome.gigabytes_per_sec()
                );
            }
            results.measurements.push(measurement);
        }
    }
    for (name, values) in &gigabytes {
        let spread = report::Spread::of(values);
        results.notes.push(format!(
            "{name:<70} GB/s median {:.2} (min {:.2}, max {:.2})",
            spread.median, spread.min, spread.max
        ));
    }
    if !roll_worst.is_empty() {
        let spread = report::Spread::of(&roll_worst);
        results.notes.push(format!(
            "journal: worst append across a roll: median {:.0} ns (min {:.0}, max {:.0})",
            spread.median, spread.min, spread.max
        ));
    }
    Ok(results)
}

/// One engine case: scenario, system, variant, the sum its state must reach, how to run it.
type EngineCase = (&'static str, &'static str, String, u64, Box<dyn Fn() -> Result<CaseRun>>);

/// What one run of an engine case measured: its outcome, its latency (at a fixed rate), and
/// figures that are neither (a replica's lag in sequences), by name.
struct CaseRun {
    outcome: ring::Outcome,
    latency: Option<Latency>,
    details: BTreeMap<&'static str, f64>,
}

impl From<(ring::Outcome, Option<Latency>)> for CaseRun {
    fn from((outcome, latency): (ring::Outcome, Option<Latency>)) -> Self {
        Self { outcome, latency, details: BTreeMap::new() }
    }
}

/// An engine case's run from a closure that measures an outcome and maybe a latency.
fn case(
    run: impl Fn() -> Result<(ring::Outcome, Option<Latency>)> + 'static,
) -> Box<dyn Fn() -> Result<CaseRun>> {
    Box::new(move || run().map(CaseRun::from))
}

/// The engine cases, sized by `scale` (1 for the full run, 10 for `--quick`).
fn engine_cases(root: &std::path::Path, scale: u64) -> Vec<EngineCase> {
    use keel_engine::{Durability, Topology};
    let mut cases: Vec<EngineCase> = Vec::new();
    let commands = 5_000_000 / scale;
    let expected = engine::expected_sum(commands);
    let tiers = [
        (Durability::Memory, "memory"),
        (Durability::PageCache, "page-cache"),
        (Durability::Fsync, "fsync"),
    ];
    let topologies = [(Topology::Compact, "compact"), (Topology::Pipelined, "pipelined")];
    for (topology, topology_name) in topologies {
        for (durability, tier) in tiers {
            let root = root.to_owned();
            cases.push((
                "engine-saturation",
                "keel",
                format!("{topology_name} {tier} yielding"),
                expected,
                case(move || {
                    let outcome = engine::saturation(
                        &root,
                        topology,
                        durability,
                        Replicas::None,
                        true,
                        0,
                        commands,
                    )?;
                    Ok((outcome, None))
                }),
            ));
        }
    }
    // The same through a shared (cloneable) publisher, whose claims are atomic adds: what
    // the sole publisher saves.
    for (durability, tier) in &tiers[..2] {
        let (durability, root) = (*durability, root.to_owned());
        cases.push((
            "engine-saturation",
            "keel",
            format!("compact {tier} yielding, shared publisher"),
            expected,
            case(move || {
                let outcome = engine::saturation(
                    &root,
                    Topology::Compact,
                    durability,
                    Replicas::None,
                    false,
                    0,
                    commands,
                )?;
                Ok((outcome, None))
            }),
        ));
    }
    // Divergence detection's price: a checkpoint (the state's hash, a record of its own)
    // every 1 000 commands. The bench's state hashes in a microsecond or so, so what is
    // measured is the engine's side: the compact topology splits its batches at each
    // checkpoint, and the pipelined journaller takes at most the commands up to the next one.
    for (topology, topology_name) in topologies {
        let root = root.to_owned();
        cases.push((
            "engine-saturation",
            "keel",
            format!("{topology_name} page-cache yielding, checkpoints every 1 000"),
            expected,
            case(move || {
                let outcome = engine::saturation(
                    &root,
                    topology,
                    Durability::PageCache,
                    Replicas::None,
                    true,
                    1_000,
                    commands,
                )?;
                Ok((outcome, None))
            }),
        ));
    }
    cases.push((
        "engine-saturation",
        "keel-ring",
        "no journal, yielding".into(),
        expected,
        case(move || Ok((engine::bare_ring(commands)?, None))),
    ));
    cases.push((
        "engine-saturation",
        "disruptor",
        "no journal, busy-spin+hint".into(),
        expected,
        case(move || Ok((engine::disruptor(commands)?, None))),
    ));
    let replayed = 10_000_000 / scale;
    let recovery_root = root.to_owned();
    cases.push((
        "engine-recovery",
        "keel",
        "replay, page-cache, no snapshot".into(),
        engine::expected_sum(replayed),
        case(move || Ok((engine::recovery(&recovery_root, replayed)?, None))),
    ));
    let snapshot_root = root.to_owned();
    cases.push((
        "engine-snapshot",
        "keel",
        "pause for 1M entries (copy reused)".into(),
        engine::expected_sum(1_000),
        case(move || {
            let (outcome, pause) = engine::snapshot_pause(&snapshot_root, vec![0u64; 1_000_000])?;
            Ok((outcome, Some(pause)))
        }),
    ));
    let snapshot_root = root.to_owned();
    cases.push((
        "engine-snapshot",
        "keel",
        "pause for 1M entries in a CowVec (chunks shared)".into(),
        engine::expected_sum(1_000),
        case(move || {
            let values = keel_engine::CowVec::from_elem(0u64, 1_000_000);
            let (outcome, pause) = engine::snapshot_pause(&snapshot_root, values)?;
            Ok((outcome, Some(pause)))
        }),
    ));
    cases.push((
        "engine-snapshot",
        "machine",
        "clone_from of 1M entries, no engine".into(),
        0,
        case(|| {
            let (outcome, copies) = engine::copy_floor(1_000_000, 20)?;
            Ok((outcome, Some(copies)))
        }),
    ));
    cases.push((
        "engine-snapshot",
        "machine",
        "CowVec of 1M entries: a write to each chunk after a clone".into(),
        0,
        case(|| {
            let (outcome, writes) = engine::copy_on_write_floor(1_000_000, 20)?;
            Ok((outcome, Some(writes)))
        }),
    ));
    let writes = 20_000_000 / scale;
    let written = writes * (writes + 1) / 2;
    cases.push((
        "engine-snapshot",
        "machine",
        "random writes to a Vec of 1M entries".into(),
        written,
        case(move || Ok((engine::write_cost(vec![0u64; 1_000_000], writes)?, None))),
    ));
    cases.push((
        "engine-snapshot",
        "machine",
        "random writes to a CowVec of 1M entries".into(),
        written,
        case(move || {
            let values = keel_engine::CowVec::from_elem(0u64, 1_000_000);
            Ok((engine::write_cost(values, writes)?, None))
        }),
    ));
    cases.push((
        "engine-journal",
        "machine",
        "first touch of fresh memory, M pages/s".into(),
        0,
        case(|| {
            let (outcome, rewritten) = engine::first_touch(1 << 30)?;
            let gigabytes = (1u64 << 30) as f64 / 1e9;
            // The rewrite's rate has no column of its own: said on stderr, beside the table
            // (stdout may be JSON lines).
            eprintln!(
                "  engine-journal     machine    first touch {:.0} MB/s; the same bytes rewritten {:.0} MB/s",
                gigabytes * 1e3 / outcome.elapsed.as_secs_f64(),
                gigabytes * 1e3 / rewritten.as_secs_f64()
            );
            Ok((outcome, None))
        }),
    ));
    let hiccup_duration = std::time::Duration::from_secs_f64(1.0 / scale as f64);
    cases.push((
        "engine-latency",
        "machine",
        "stalls of 2 spinning threads, per 1 us".into(),
        0,
        case(move || {
            let (outcome, stalls) = engine::hiccups(hiccup_duration)?;
            Ok((outcome, Some(stalls)))
        }),
    ));
    for (rate, seconds) in [(100_000u64, 2.0), (1_000_000, 1.0), (5_000_000, 0.4)] {
        let duration = std::time::Duration::from_secs_f64(seconds / scale as f64);
        for (topology, topology_name) in topologies {
            for (durability, tier) in [tiers[1], tiers[2]] {
                let offered = engine::Offered {
                    topology,
                    durability,
                    replicas: Replicas::None,
                    rate,
                    duration,
                };
                let variant = format!("{topology_name} {tier} {}/s", human(rate));
                cases.push(open_loop_case("engine-latency", variant, root, offered, false));
            }
        }
    }
    cases
}

/// An open-loop case: the run's latency, or with `lag` its replica's lag.
fn open_loop_case(
    scenario: &'static str,
    variant: String,
    root: &std::path::Path,
    offered: engine::Offered,
    lag: bool,
) -> EngineCase {
    let root = root.to_owned();
    let expected = engine::expected_sum(offered.commands());
    let run = move || {
        let run = engine::open_loop(&root, offered)?;
        if !lag {
            return Ok(CaseRun::from((run.outcome, Some(run.latency))));
        }
        let lag = run.lag.context("a replicated run measures the lag")?;
        let details = lag.sequence_details()?;
        Ok(CaseRun {
            outcome: run.outcome,
            latency: Some(Latency::from_histogram(&lag.time)),
            details,
        })
    };
    (scenario, "keel", variant, expected, Box::new(run))
}

/// The few rounds of spinning for acknowledgements of the `Replicated` tier's second setting
/// in the replica scenario (`Replication::ack_spin`), against the engine's default.
const ACK_SPIN_FEW: u32 = 4;

/// The replication cases, sized by `scale`: the compact topology in the `PageCache`, `Fsync`
/// and `Replicated` tiers (one replica over loopback TCP, in this process; the last twice, with
/// the engine's default spin for acknowledgements and with [`ACK_SPIN_FEW`] rounds), at
/// saturation and at fixed offered rates; the replica's lag at 1 M/s, replicated and
/// asynchronous; all of it for the engine's trivial machine and for the ledger; and a replica
/// catching up.
fn replica_cases(root: &std::path::Path, scale: u64) -> Vec<EngineCase> {
    use keel_engine::{Durability, Topology};
    let mut cases: Vec<EngineCase> = Vec::new();
    let commands = 5_000_000 / scale;
    // The `Replicated` tier twice: spinning for acknowledgements as long as the engine does by
    // default, and only a few rounds, the setting for replicas that share the engine's cores
    // (`Replication::ack_spin`): the trade between them is this table's to show.
    let few_spins = Replicas::One { ack_spin: Some(ACK_SPIN_FEW) };
    let tiers = [
        (Durability::PageCache, Replicas::None, "page-cache".to_owned()),
        (Durability::Fsync, Replicas::None, "fsync".to_owned()),
        (Durability::Replicated, Replicas::ONE, "replicated, 1 replica".to_owned()),
        (Durability::Replicated, few_spins, format!("replicated, 1 replica, spin {ACK_SPIN_FEW}")),
    ];
    for (durability, replicas, tier) in tiers.clone() {
        let root = root.to_owned();
        cases.push((
            "replica-saturation",
            "keel",
            format!("compact {tier}"),
            engine::expected_sum(commands),
            case(move || {
                let outcome = engine::saturation(
                    &root,
                    Topology::Compact,
                    durability,
                    replicas,
                    true,
                    0,
                    commands,
                )?;
                Ok((outcome, None))
            }),
        ));
    }
    for (rate, seconds) in [(100_000u64, 2.0), (1_000_000, 1.0)] {
        let duration = std::time::Duration::from_secs_f64(seconds / scale as f64);
        for (durability, replicas, tier) in &tiers {
            let (topology, durability, replicas) = (Topology::Compact, *durability, *replicas);
            let offered = engine::Offered { topology, durability, replicas, rate, duration };
            let variant = format!("compact {tier} {}/s", human(rate));
            cases.push(open_loop_case("replica-latency", variant, root, offered, false));
        }
    }
    let duration = std::time::Duration::from_secs_f64(1.0 / scale as f64);
    for (durability, replicas, tier) in [
        (Durability::Replicated, Replicas::ONE, "replicated".to_owned()),
        (Durability::Replicated, few_spins, format!("replicated, spin {ACK_SPIN_FEW}")),
        (Durability::PageCache, Replicas::ONE, "asynchronous, page-cache".to_owned()),
    ] {
        let topology = Topology::Compact;
        let rate = 1_000_000;
        let offered = engine::Offered { topology, durability, replicas, rate, duration };
        let variant = format!("journaled to applied, {tier} 1M/s");
        cases.push(open_loop_case("replica-lag", variant, root, offered, true));
    }
    cases.extend(replica_ledger_cases(root, scale));
    let caught_up = 10_000_000 / scale;
    let catch_up_root = root.to_owned();
    cases.push((
        "replica-catch-up",
        "keel",
        "same host, page-cache, from the start".into(),
        engine::expected_sum(caught_up),
        case(move || Ok((engine::replica_catch_up(&catch_up_root, caught_up)?, None))),
    ));
    cases
}

/// The replication cases on the ledger (the workload issue 6 names), sized by `scale`: the
/// compact topology in the `PageCache`, `Fsync` and `Replicated` tiers (one replica over
/// loopback TCP, in this process), at saturation and at fixed offered rates, on the commands of
/// the `ledger` scenario; and the replica's lag at 1 M/s, replicated and asynchronous.
fn replica_ledger_cases(root: &std::path::Path, scale: u64) -> Vec<EngineCase> {
    use apps::System;
    use keel_examples::cli::{DurabilityArg, TopologyArg};
    let compact = TopologyArg::Compact;
    let replicated = DurabilityArg::Replicated;
    let tiers: [(String, System); 4] = [
        ("compact page-cache".into(), System::Keel(DurabilityArg::PageCache, compact)),
        ("compact fsync".into(), System::Keel(DurabilityArg::Fsync, compact)),
        ("compact replicated, 1 replica".into(), System::Followed(replicated, None)),
        (
            format!("compact replicated, 1 replica, spin {ACK_SPIN_FEW}"),
            System::Followed(replicated, Some(ACK_SPIN_FEW)),
        ),
    ];
    let mut cases: Vec<EngineCase> = Vec::new();
    let commands = 2_000_000 / scale;
    for (variant, which) in tiers.clone() {
        let root = root.to_owned();
        let load = apps::Load { commands, rate: None };
        cases.push((
            "replica-ledger",
            "keel",
            variant,
            commands,
            case(move || apps::ledger(&root, which, load)),
        ));
    }
    for (rate, seconds) in [(100_000u64, 2.0), (1_000_000, 1.0)] {
        let commands = (rate as f64 * seconds / scale as f64) as u64;
        for (variant, which) in tiers.clone() {
            let root = root.to_owned();
            let load = apps::Load { commands, rate: Some(rate) };
            cases.push((
                "replica-ledger-latency",
                "keel",
                format!("{variant} {}/s", human(rate)),
                commands,
                case(move || apps::ledger(&root, which, load)),
            ));
        }
    }
    let commands = 1_000_000 / scale;
    for (followed, tier) in [
        ((replicated, None), "replicated".to_owned()),
        ((replicated, Some(ACK_SPIN_FEW)), format!("replicated, spin {ACK_SPIN_FEW}")),
        ((DurabilityArg::PageCache, None), "asynchronous, page-cache".to_owned()),
    ] {
        let root = root.to_owned();
        let load = apps::Load { commands, rate: Some(1_000_000) };
        cases.push((
            "replica-ledger-lag",
            "keel",
            format!("journaled to applied, {tier} 1M/s"),
            commands,
            Box::new(move || {
                let (outcome, lag) = apps::ledger_lag(&root, followed, load)?;
                let details = lag.sequence_details()?;
                let latency = Some(Latency::from_histogram(&lag.time));
                Ok(CaseRun { outcome, latency, details })
            }),
        ));
    }
    cases
}

/// The ledger cases, sized by `scale`: keel in each tier (compact topology, yielding waits; and
/// `Fsync` pipelined, which overlaps the sync with `apply`),
/// the no-journal ceiling and the SQLite event store, at saturation and at fixed offered rates,
/// all on the same commands (`apps`).
fn ledger_cases(root: &std::path::Path, scale: u64) -> Vec<EngineCase> {
    use apps::System;
    use keel_examples::cli::{DurabilityArg, TopologyArg};
    let compact = TopologyArg::Compact;
    let systems: [(&'static str, &'static str, System); 7] = [
        ("keel", "compact memory", System::Keel(DurabilityArg::Memory, compact)),
        ("keel", "compact page-cache", System::Keel(DurabilityArg::PageCache, compact)),
        ("keel", "compact fsync", System::Keel(DurabilityArg::Fsync, compact)),
        ("keel", "pipelined fsync", System::Keel(DurabilityArg::Fsync, TopologyArg::Pipelined)),
        ("no-journal", "channel + 1 thread", System::NoJournal),
        ("sqlite", "WAL synchronous=FULL", System::Sqlite { full: true }),
        ("sqlite", "WAL synchronous=NORMAL", System::Sqlite { full: false }),
    ];
    let mut cases: Vec<EngineCase> = Vec::new();
    let commands = 2_000_000 / scale;
    for (system, variant, which) in systems {
        let root = root.to_owned();
        let load = apps::Load { commands, rate: None };
        cases.push((
            "ledger",
            system,
            variant.to_owned(),
            commands,
            case(move || apps::ledger(&root, which, load)),
        ));
    }
    for (rate, seconds) in [(100_000u64, 2.0), (1_000_000, 1.0)] {
        let commands = (rate as f64 * seconds / scale as f64) as u64;
        for (system, variant, which) in systems {
            // SQLite in the FULL tier does not keep up with a million a second here, and an
            // open-loop run past saturation only measures its queue growing.
            if rate > 100_000 && matches!(which, System::Sqlite { .. }) {
                continue;
            }
            let root = root.to_owned();
            let load = apps::Load { commands, rate: Some(rate) };
            cases.push((
                "ledger-latency",
                system,
                format!("{variant} {}/s", human(rate)),
                commands,
                case(move || apps::ledger(&root, which, load)),
            ));
        }
    }
    cases
}

/// The exchange cases, sized by `scale`: keel's `PageCache` tier at saturation and at fixed
/// offered rates, and the state machine alone.
fn exchange_cases(root: &std::path::Path, scale: u64) -> Vec<EngineCase> {
    let mut cases: Vec<EngineCase> = Vec::new();
    let commands = 2_000_000 / scale;
    let saturation_root = root.to_owned();
    cases.push((
        "exchange",
        "keel",
        "compact page-cache".into(),
        commands,
        case(move || apps::exchange(&saturation_root, apps::Load { commands, rate: None })),
    ));
    cases.push((
        "exchange",
        "machine",
        "apply on one thread, no engine".into(),
        commands,
        case(move || apps::exchange_machine(commands)),
    ));
    for (rate, seconds) in [(100_000u64, 2.0), (1_000_000, 1.0)] {
        let commands = (rate as f64 * seconds / scale as f64) as u64;
        let root = root.to_owned();
        cases.push((
            "exchange-latency",
            "keel",
            format!("compact page-cache {}/s", human(rate)),
            commands,
            case(move || apps::exchange(&root, apps::Load { commands, rate: Some(rate) })),
        ));
    }
    cases
}

/// A rate in words: `100K`, `1M`.
fn human(rate: u64) -> String {
    if rate >= 1_000_000 {
        format!("{}M", rate / 1_000_000)
    } else {
        format!("{}K", rate / 1_000)
    }
}

/// Runs `cases` `runs` times, the order rotating each run, with the inter-core probe before
/// each run; checks each outcome's sum; prints a line per case (or a JSON object).
fn run_cases(
    label: &str,
    cases: &[EngineCase],
    arguments: &Arguments,
    runs: usize,
) -> Result<Vec<Measurement>> {
    let cases: Vec<&EngineCase> = cases
        .iter()
        .filter(|(scenario, system, variant, _, _)| {
            arguments
                .only
                .as_ref()
                .is_none_or(|only| format!("{scenario} {system} {variant}").contains(only.as_str()))
        })
        .collect();
    if cases.is_empty() {
        println!("{label}: no case matches --only");
        return Ok(Vec::new());
    }
    let mut measurements = Vec::new();
    for run in 0..runs {
        let probe_ns = inter_core_round_trip_ns(Pinning::NONE);
        if !arguments.json {
            println!("{label} run {}/{runs}: inter-core round trip {probe_ns:.0} ns", run + 1);
        }
        for index in 0..cases.len() {
            let (scenario, system, variant, expected, case) = cases[(index + run) % cases.len()];
            let CaseRun { outcome, latency, details } = case()?;
            ensure!(
                outcome.sum == *expected,
                "{scenario} {system} {variant}: the state sums to {}, expected {expected}",
                outcome.sum
            );
            let mut measurement =
                measured((scenario, system, variant.clone()), run, &outcome, latency, probe_ns);
            measurement.details = details;
            print_measurement(arguments, &measurement)?;
            measurements.push(measurement);
        }
    }
    Ok(measurements)
}

/// The measurement of run `run` (from 0) of the case named `(scenario, system, variant)`.
fn measured(
    (scenario, system, variant): (&'static str, &'static str, String),
    run: usize,
    outcome: &ring::Outcome,
    latency: Option<Latency>,
    probe_ns: f64,
) -> Measurement {
    Measurement {
        scenario,
        system,
        variant,
        run: run + 1,
        events: outcome.events,
        ops_per_sec: outcome.ops_per_sec(),
        latency,
        probe_ns,
        details: Default::default(),
    }
}

/// One run's line (or JSON object), as it finishes.
fn print_measurement(arguments: &Arguments, measurement: &Measurement) -> Result<()> {
    if arguments.json {
        println!("{}", serde_json::to_string(measurement)?);
        return Ok(());
    }
    let latency = measurement
        .latency
        .as_ref()
        .map(|l| {
            format!("  p50 {} p99 {} p99.99 {} max {} ns", l.p50_ns, l.p99_ns, l.p9999_ns, l.max_ns)
        })
        .unwrap_or_default();
    let details: String = measurement
        .details
        .iter()
        .map(|(name, value)| format!("  {name} {}", figure(*value)))
        .collect();
    println!(
        "  {:<18} {:<10} {:<44} {:>8.2} M/s{latency}{details}",
        measurement.scenario,
        measurement.system,
        measurement.variant,
        measurement.ops_per_sec / 1e6
    );
    Ok(())
}

/// The ring scenarios, in the order `ring` runs them.
const RING_SCENARIOS: [&str; 4] = ["one-to-one", "two-to-one", "one-to-diamond", "ping-pong"];

/// Every other scenario, in the order the suite runs them.
const SCENARIOS: [&str; 6] = ["journal", "engine", "ledger", "exchange", "recovery", "replica"];

/// The scenarios named on the command line, with `ring` expanded; an unknown name is an error.
/// None named is the suite: every scenario.
fn expand(scenarios: &[String]) -> Result<Vec<&'static str>> {
    if scenarios.is_empty() {
        return Ok(RING_SCENARIOS.iter().chain(SCENARIOS.iter()).copied().collect());
    }
    let mut expanded = Vec::new();
    for scenario in scenarios {
        if scenario == "ring" {
            expanded.extend(RING_SCENARIOS);
        } else if let Some(known) =
            RING_SCENARIOS.iter().chain(SCENARIOS.iter()).find(|known| **known == scenario)
        {
            expanded.push(*known);
        } else {
            bail!(
                "unknown scenario '{scenario}': try ring, {}, {}",
                RING_SCENARIOS.join(", "),
                SCENARIOS.join(", ")
            );
        }
    }
    Ok(expanded)
}

/// What the scenarios of one invocation measured.
#[derive(Default)]
struct Results {
    measurements: Vec<Measurement>,
    /// Figures that are not a throughput or a latency (bandwidth, the worst roll).
    notes: Vec<String>,
}

/// Runs one ring scenario `runs` times, keel and its peers interleaved.
fn run_ring(
    name: &'static str,
    arguments: &Arguments,
    runs: usize,
    scale: u64,
) -> Result<Vec<Measurement>> {
    let pinning = if arguments.no_pin { Pinning::NONE } else { Pinning::CROSS_CORE };
    let mut measurements = Vec::new();
    let mut cases = cases(name, scale, pinning)?;
    if !arguments.systems.is_empty() {
        cases.retain(|case| arguments.systems.iter().any(|system| system == case.system));
    }
    for run in 0..runs {
        let probe_ns = inter_core_round_trip_ns(pinning);
        if !arguments.json {
            println!("{name} run {}/{runs}: inter-core round trip {probe_ns:.0} ns", run + 1);
        }
        // Rotate the order each run, so no system always runs first (or right after the
        // most expensive one).
        for index in 0..cases.len() {
            let case = &cases[(index + run) % cases.len()];
            let (outcome, latency) = (case.run)()?;
            ensure!(
                (outcome.events, outcome.sum) == case.expected,
                "{name} {} {}: consumer saw {} events summing to {}, expected {:?}",
                case.system,
                case.variant,
                outcome.events,
                outcome.sum,
                case.expected
            );
            let measurement = measured(
                (name, case.system, case.variant.to_owned()),
                run,
                &outcome,
                latency,
                probe_ns,
            );
            print_measurement(arguments, &measurement)?;
            measurements.push(measurement);
        }
    }
    Ok(measurements)
}

/// Runs one scenario: `runs` runs of each of its cases.
fn run_scenario(
    name: &'static str,
    arguments: &Arguments,
    runs: usize,
    scale: u64,
) -> Result<Results> {
    let root = arguments.journal_dir.clone().unwrap_or_else(std::env::temp_dir);
    let measurements = match name {
        "journal" => return run_journal(arguments, runs, scale),
        "engine" => run_cases(name, &engine_cases(&root, scale), arguments, runs)?,
        "replica" => run_cases(name, &replica_cases(&root, scale), arguments, runs)?,
        "ledger" => run_cases(name, &ledger_cases(&root, scale), arguments, runs)?,
        "exchange" => run_cases(name, &exchange_cases(&root, scale), arguments, runs)?,
        "recovery" => recovery::run(&root, scale, runs, &mut |m| print_measurement(arguments, m))?,
        ring => run_ring(ring, arguments, runs, scale)?,
    };
    Ok(Results { measurements, notes: Vec::new() })
}

fn main() -> Result<()> {
    // `ab` compares two builds of another program; its arguments are its own, not scenarios.
    if std::env::args_os().nth(1).is_some_and(|first| first == "ab") {
        let arguments = std::iter::once("keel-bench ab".into()).chain(std::env::args_os().skip(2));
        return ab::main(ab::Arguments::parse_from(arguments));
    }
    let arguments = Arguments::parse();
    let suite = arguments.scenarios.is_empty();
    // The suite is every scenario at the quick size: a few minutes in all.
    let quick = arguments.quick || suite;
    let scale = if quick { 10 } else { 1 };
    let runs = arguments.runs.unwrap_or(if quick { 3 } else { 5 });
    ensure!(runs >= 1, "--runs must be at least 1");
    let scenarios = expand(&arguments.scenarios)?;
    let started = std::time::Instant::now();
    let machine = Machine::read();
    if arguments.json {
        println!("{}", serde_json::json!({ "kind": "machine", "machine": &machine }));
    } else {
        println!("{}", machine.describe());
    }
    let mut results = Results::default();
    for name in &scenarios {
        let scenario = run_scenario(name, &arguments, runs, scale)?;
        results.measurements.extend(scenario.measurements);
        results.notes.extend(scenario.notes);
    }
    let summaries = summarize(&results.measurements);
    let ratios = ratios(&summaries, &results.measurements);
    let elapsed = started.elapsed().as_secs_f64();
    let mut text = format!("{}\n{} runs each, {elapsed:.0} s in all\n\n", machine.describe(), runs);
    text += &table(&summaries);
    let ratio_text = ratio_lines(&ratios);
    if !ratio_text.is_empty() {
        text += "\n";
        text += &ratio_text;
    }
    if !results.notes.is_empty() {
        text += "\n";
        for note in &results.notes {
            text += note;
            text += "\n";
        }
    }
    if arguments.json {
        for summary in &summaries {
            println!("{}", serde_json::to_string(summary)?);
        }
        for ratio in &ratios {
            println!("{}", serde_json::to_string(ratio)?);
        }
    } else {
        println!();
        print!("{text}");
    }
    if !arguments.no_save {
        let label = if suite { "suite".to_owned() } else { arguments.scenarios.join("+") };
        let saved = save::write(
            &arguments.out,
            &label,
            &machine,
            &text,
            &results.measurements,
            &summaries,
            &ratios,
        )?;
        if !arguments.json {
            println!();
            println!("results, .hgrm files and plots: {}", saved.display());
        }
    }
    Ok(())
}

/// keel against one peer in one scenario: the median, minimum and maximum of the per-run
/// ratios. Both systems of a run share its CPU placement (the probe), so a run-by-run ratio
/// survives the placement changing between runs, which a ratio of medians does not.
#[derive(Debug, serde::Serialize)]
struct Ratio {
    kind: &'static str,
    scenario: &'static str,
    keel_variant: String,
    peer: &'static str,
    peer_variant: String,
    runs: usize,
    /// keel's ops/s over the peer's; above 1 is keel faster.
    throughput: report::Spread,
    /// keel's p50 over the peer's; below 1 is keel faster.
    #[serde(skip_serializing_if = "Option::is_none")]
    p50: Option<report::Spread>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99: Option<report::Spread>,
}

/// Whether keel's variant and a peer's are compared: in the ring scenarios when they share the
/// publish mode ("single", "batch-64", the variant's second word); elsewhere when they share
/// the offered rate ("100K/s", the last word, or none at saturation).
fn comparable(scenario: &str, keel: &str, peer: &str) -> bool {
    fn mode(variant: &str) -> &str {
        variant.split(' ').nth(1).unwrap_or("")
    }
    fn rate(variant: &str) -> &str {
        variant.rsplit(' ').next().filter(|word| word.ends_with("/s")).unwrap_or("")
    }
    if RING_SCENARIOS.contains(&scenario) {
        mode(keel) == mode(peer)
    } else {
        rate(keel) == rate(peer)
    }
}

/// keel's tiers compared within one run, where an issue's target is such a ratio: the
/// scenario, the variant and the variant it is divided by (issue 6: the `Replicated` tier with
/// one replica at half the `PageCache` tier's throughput or more).
const TIER_RATIOS: [(&str, &str, &str); 4] = [
    ("replica-saturation", "compact replicated, 1 replica", "compact page-cache"),
    ("replica-saturation", "compact replicated, 1 replica, spin 4", "compact page-cache"),
    ("replica-ledger", "compact replicated, 1 replica", "compact page-cache"),
    ("replica-ledger", "compact replicated, 1 replica, spin 4", "compact page-cache"),
];

fn ratios(summaries: &[Summary], measurements: &[Measurement]) -> Vec<Ratio> {
    let mut ratios = Vec::new();
    for keel in summaries.iter().filter(|summary| summary.system == "keel") {
        // A ceiling of the journal and the machine's own stalls are not peers.
        for peer in summaries.iter().filter(|summary| {
            !matches!(summary.system, "keel" | "ceiling" | "machine")
                && summary.scenario == keel.scenario
                && comparable(keel.scenario, &keel.variant, &summary.variant)
        }) {
            ratios.extend(ratio(measurements, keel, peer));
        }
    }
    for (scenario, variant, baseline) in TIER_RATIOS {
        let find = |variant: &str| {
            summaries.iter().find(|summary| {
                summary.system == "keel"
                    && summary.scenario == scenario
                    && summary.variant == variant
            })
        };
        if let (Some(tier), Some(baseline)) = (find(variant), find(baseline)) {
            ratios.extend(ratio(measurements, tier, baseline));
        }
    }
    ratios
}

/// The per-run ratios of `keel`'s runs over `peer`'s in the same runs, if they share any.
fn ratio(measurements: &[Measurement], keel: &Summary, peer: &Summary) -> Option<Ratio> {
    let runs_of = |summary: &Summary| -> Vec<&Measurement> {
        measurements
            .iter()
            .filter(|m| {
                m.system == summary.system
                    && m.scenario == summary.scenario
                    && m.variant == summary.variant
            })
            .collect()
    };
    let peer_runs = runs_of(peer);
    let pairs: Vec<(&Measurement, &Measurement)> = runs_of(keel)
        .iter()
        .filter_map(|k| peer_runs.iter().find(|p| p.run == k.run).map(|p| (*k, *p)))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let spread = |ratio: &dyn Fn(&Measurement, &Measurement) -> Option<f64>| {
        let values: Option<Vec<f64>> = pairs.iter().map(|(k, p)| ratio(k, p)).collect();
        values.map(|values| report::Spread::of(&values))
    };
    let latency_ratio = |field: fn(&Latency) -> u64| {
        move |k: &Measurement, p: &Measurement| {
            Some(field(k.latency.as_ref()?) as f64 / field(p.latency.as_ref()?) as f64)
        }
    };
    Some(Ratio {
        kind: "ratio",
        scenario: keel.scenario,
        keel_variant: keel.variant.clone(),
        peer: peer.system,
        peer_variant: peer.variant.clone(),
        runs: pairs.len(),
        throughput: spread(&|k, p| Some(k.ops_per_sec / p.ops_per_sec))
            .expect("every run has a throughput"),
        p50: spread(&latency_ratio(|latency| latency.p50_ns)),
        p99: spread(&latency_ratio(|latency| latency.p99_ns)),
    })
}

fn ratio_lines(ratios: &[Ratio]) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    if ratios.is_empty() {
        return text;
    }
    let _ = writeln!(
        text,
        "keel / peer (or keel's tier / another of its tiers), median [min..max] of the per-run \
         ratios (same run, same placement):"
    );
    for ratio in ratios {
        let mut line = format!(
            "  {:<15} keel {:<20} vs {:<10} {:<20} throughput {:.2}x [{:.2}..{:.2}]",
            ratio.scenario,
            ratio.keel_variant,
            ratio.peer,
            ratio.peer_variant,
            ratio.throughput.median,
            ratio.throughput.min,
            ratio.throughput.max
        );
        if let (Some(p50), Some(p99)) = (ratio.p50, ratio.p99) {
            line +=
                &format!("  p50 {:.2}x  p99 {:.2}x (below 1: keel faster)", p50.median, p99.median);
        }
        let _ = writeln!(text, "{line}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_scenario_named_is_every_scenario_and_an_unknown_one_is_an_error() {
        let all = expand(&[]).unwrap();
        for scenario in [
            "one-to-one",
            "ping-pong",
            "journal",
            "engine",
            "ledger",
            "exchange",
            "recovery",
            "replica",
        ] {
            assert!(all.contains(&scenario), "{scenario}");
        }
        assert_eq!(expand(&["ring".to_owned()]).unwrap(), RING_SCENARIOS);
        let error = expand(&["ledgr".to_owned()]).unwrap_err().to_string();
        assert!(error.contains("ledgr") && error.contains("ledger"), "{error}");
    }

    #[test]
    fn the_replicated_tier_is_divided_by_the_page_cache_tier_of_the_same_runs() {
        // Every tier ratio names cases that exist, so that renaming one cannot drop it.
        let cases = replica_cases(std::path::Path::new("/nonexistent"), 10);
        for (scenario, variant, baseline) in TIER_RATIOS {
            for variant in [variant, baseline] {
                assert!(
                    cases.iter().any(|case| case.0 == scenario && case.2 == variant),
                    "{scenario} has no variant {variant}"
                );
            }
        }
        let run = |variant: &str, run: usize, ops_per_sec: f64| Measurement {
            scenario: "replica-ledger",
            system: "keel",
            variant: variant.into(),
            run,
            events: 1,
            ops_per_sec,
            latency: None,
            probe_ns: 100.0,
            details: Default::default(),
        };
        let (replicated, page_cache) = ("compact replicated, 1 replica", "compact page-cache");
        // Per run: 0.5, 0.25 and 1.0; the median of the ratios, not the ratio of the medians.
        let measurements = [
            run(replicated, 1, 2.0),
            run(page_cache, 1, 4.0),
            run(replicated, 2, 1.0),
            run(page_cache, 2, 4.0),
            run(replicated, 3, 3.0),
            run(page_cache, 3, 3.0),
            run("compact fsync", 1, 1.0),
        ];
        let ratios = ratios(&summarize(&measurements), &measurements);
        assert_eq!(ratios.len(), 1, "{ratios:?}");
        let ratio = &ratios[0];
        assert_eq!(
            (ratio.keel_variant.as_str(), ratio.peer_variant.as_str()),
            (replicated, page_cache)
        );
        assert_eq!(ratio.runs, 3);
        let throughput = ratio.throughput;
        assert_eq!((throughput.median, throughput.min, throughput.max), (0.5, 0.25, 1.0));
        assert!(ratio_lines(&ratios).contains("throughput 0.50x [0.25..1.00]"));
    }

    #[test]
    fn keel_is_compared_with_a_peer_on_the_same_publish_mode_or_offered_rate() {
        assert!(comparable("one-to-one", "busy-spin batch-64", "spin batch-64"));
        assert!(!comparable("one-to-one", "busy-spin batch-64", "busy-spin single"));
        assert!(comparable("ledger", "compact fsync", "WAL synchronous=FULL"));
        assert!(comparable("ledger-latency", "compact fsync 100K/s", "channel + 1 thread 100K/s"));
        assert!(!comparable("ledger-latency", "compact fsync 1M/s", "channel + 1 thread 100K/s"));
    }
}
