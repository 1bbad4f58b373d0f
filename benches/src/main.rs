//! `keel-bench`: keel's benchmark harness.
//!
//! ```text
//! cargo run --release --bin keel-bench -- ring            # every ring scenario, 5 runs each
//! cargo run --release --bin keel-bench -- ping-pong --runs 9
//! cargo run --release --bin keel-bench -- ring --json     # one JSON object per line
//! cargo run --release --bin keel-bench -- ring --quick    # a short smoke run
//! ```
//!
//! Every scenario runs keel and its peers interleaved, run by run (the order rotates each run),
//! with the machine's bare inter-core round trip measured before each run; the summary gives
//! the median, minimum and maximum across runs, and keel's ratio to each peer's median.

mod machine;
mod report;
mod ring;

use anyhow::{bail, ensure, Result};
use clap::Parser;
use keel_ring::{Blocking, BusySpin};

use crate::machine::{inter_core_round_trip_ns, Machine};
use crate::report::{print_table, summarize, Latency, Measurement, Summary};
use crate::ring::{sum_to, Outcome, PingPong, Pinning};

/// keel's benchmarks: keel against its peers in the same run.
#[derive(Debug, Parser)]
#[command(
    name = "keel-bench",
    after_help = "Examples:\n  keel-bench ring\n  keel-bench one-to-one two-to-one --runs 9\n  keel-bench ring --json > results.jsonl"
)]
struct Arguments {
    /// Scenarios to run: `ring` (all of the below), `one-to-one`, `two-to-one`,
    /// `one-to-diamond`, `ping-pong`.
    #[arg(default_values_t = vec!["ring".to_owned()])]
    scenarios: Vec<String>,
    /// Runs per system and scenario (at least 1; 5 or more for a figure worth quoting).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// A short run: a tenth of the events and 3 runs unless `--runs` says otherwise.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object per line (each run, then each summary) instead of the table.
    #[arg(long)]
    json: bool,
    /// Leave the two-thread scenarios (one-to-one, ping-pong) unpinned. By default their
    /// producer runs on CPU 0 and their consumer on CPU 1, for every system alike.
    #[arg(long)]
    no_pin: bool,
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
            throughput("keel", "busy-spin single", single, move || ring::one_to_one_keel(BusySpin, one, false, pin)),
            throughput("disruptor", "busy-spin single", single, move || ring::one_to_one_disruptor(one, false, pin)),
            throughput("rtrb", "spin single", single, move || ring::one_to_one_rtrb(one, false, pin)),
            throughput("crossbeam", "bounded single", single, move || ring::one_to_one_crossbeam(one, pin)),
            throughput("keel", "busy-spin batch-64", batch, move || ring::one_to_one_keel(BusySpin, one_batch, true, pin)),
            throughput("disruptor", "busy-spin batch-64", batch, move || ring::one_to_one_disruptor(one_batch, true, pin)),
            throughput("rtrb", "spin batch-64", batch, move || ring::one_to_one_rtrb(one_batch, true, pin)),
            throughput("keel", "yielding single", single, move || ring::one_to_one_keel(ring::yielding(), one, false, pin)),
        ],
        "two-to-one" => vec![
            throughput("keel", "yielding", two_expected, move || ring::two_to_one_keel(ring::yielding(), two)),
            throughput("keel", "blocking", two_expected, move || ring::two_to_one_keel(Blocking::new(), two)),
            throughput("crossbeam", "bounded", two_expected, move || ring::two_to_one_crossbeam(two)),
            throughput("disruptor", "busy-spin", two_expected, move || ring::two_to_one_disruptor(two)),
        ],
        "one-to-diamond" => vec![
            throughput("keel", "yielding", (diamond, sum_to(diamond)), move || ring::diamond_keel(ring::yielding(), diamond)),
            throughput("disruptor", "busy-spin+hint", (diamond, sum_to(diamond)), move || ring::diamond_disruptor(diamond)),
        ],
        "ping-pong" => {
            let (first, second, third) = (ping.clone(), ping.clone(), ping);
            vec![
                latency("keel", "busy-spin", ping_expected, move || ring::ping_pong_keel(&first, pin)),
                latency("disruptor", "busy-spin", ping_expected, move || ring::ping_pong_disruptor(&second, pin)),
                latency("rtrb", "spin", ping_expected, move || ring::ping_pong_rtrb(&third, pin)),
            ]
        }
        other => bail!("unknown scenario '{other}': try ring, one-to-one, two-to-one, one-to-diamond, ping-pong"),
    })
}

fn expand(scenarios: &[String]) -> Vec<String> {
    let mut expanded = Vec::new();
    for scenario in scenarios {
        if scenario == "ring" {
            expanded.extend(
                ["one-to-one", "two-to-one", "one-to-diamond", "ping-pong"].map(str::to_owned),
            );
        } else {
            expanded.push(scenario.clone());
        }
    }
    expanded
}

fn scenario_name(scenario: &str) -> &'static str {
    match scenario {
        "one-to-one" => "one-to-one",
        "two-to-one" => "two-to-one",
        "one-to-diamond" => "one-to-diamond",
        _ => "ping-pong",
    }
}

fn main() -> Result<()> {
    let arguments = Arguments::parse();
    let scale = if arguments.quick { 10 } else { 1 };
    let runs = if arguments.quick && arguments.runs == 5 { 3 } else { arguments.runs };
    ensure!(runs >= 1, "--runs must be at least 1");
    let machine = Machine::read();
    if arguments.json {
        println!("{}", serde_json::json!({ "kind": "machine", "machine": &machine }));
    } else {
        println!(
            "machine: {} | {} cores | kernel {} | commit {}",
            machine.cpu_model, machine.cores, machine.kernel, machine.commit
        );
    }
    let pinning = if arguments.no_pin { Pinning::NONE } else { Pinning::CROSS_CORE };
    let mut measurements = Vec::new();
    for scenario in expand(&arguments.scenarios) {
        let cases = cases(&scenario, scale, pinning)?;
        let name = scenario_name(&scenario);
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
                let measurement = Measurement {
                    scenario: name,
                    system: case.system,
                    variant: case.variant.to_owned(),
                    run: run + 1,
                    events: outcome.events,
                    ops_per_sec: outcome.ops_per_sec(),
                    latency,
                    probe_ns,
                };
                if arguments.json {
                    println!("{}", serde_json::to_string(&measurement)?);
                } else {
                    let latency = latency
                        .map(|l| format!("  p50 {} p99 {} max {} ns", l.p50_ns, l.p99_ns, l.max_ns))
                        .unwrap_or_default();
                    println!(
                        "  {:<10} {:<20} {:>8.1} M/s{latency}",
                        case.system,
                        case.variant,
                        measurement.ops_per_sec / 1e6
                    );
                }
                measurements.push(measurement);
            }
        }
    }
    let summaries = summarize(&measurements);
    if arguments.json {
        for summary in &summaries {
            println!("{}", serde_json::to_string(summary)?);
        }
    } else {
        print_table(&summaries);
        print_ratios(&summaries);
    }
    Ok(())
}

/// keel's median against each peer's median in the same scenario and publish mode.
fn print_ratios(summaries: &[Summary]) {
    println!();
    println!("keel / peer, medians of the same run:");
    for keel in summaries.iter().filter(|summary| summary.system == "keel") {
        let mode = keel.variant.split(' ').nth(1).unwrap_or("");
        for peer in summaries.iter().filter(|summary| {
            summary.system != "keel"
                && summary.scenario == keel.scenario
                && summary.variant.split(' ').nth(1).unwrap_or("") == mode
        }) {
            let mut line = format!(
                "  {:<15} keel {:<20} vs {:<10} {:<20} throughput {:.2}x",
                keel.scenario,
                keel.variant,
                peer.system,
                peer.variant,
                keel.ops_per_sec / peer.ops_per_sec
            );
            if let (Some(keel_p50), Some(peer_p50), Some(keel_p99), Some(peer_p99)) =
                (keel.p50_ns, peer.p50_ns, keel.p99_ns, peer.p99_ns)
            {
                line += &format!(
                    "  p50 {:.2}x  p99 {:.2}x (lower is better)",
                    keel_p50 / peer_p50,
                    keel_p99 / peer_p99
                );
            }
            println!("{line}");
        }
    }
}
