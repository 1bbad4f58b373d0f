//! The load campaign: `ledger serve` under concurrent clients at a fixed offered rate for a
//! bounded time, with malformed requests and misbehaving connections mixed in, in two phases:
//!
//! 1. **mixed**: the payments workload with 2 % of requests malformed and misbehaving
//!    connections (oversized frames, cut frames, silent closes) beside the clients;
//! 2. **malformed only**: every request malformed and more misbehaving connections: nothing
//!    reaches the engine, so the server's memory must stay flat.
//!
//! Each phase is a `ledger load` process that checks every request was answered, every
//! malformed one as `malformed`, every misbehaving connection as it must be. This harness
//! samples the server's anonymous resident memory (`RssAnon`: the heap, not the journal's
//! mapped pages) every 50 ms, then stops the server and checks that the journal holds exactly
//! the valid requests. It prints one table.
//!
//! `cargo test -p keel-examples --profile ci --test load_campaign` (8 s per phase, in CI);
//! `KEEL_LOAD_SECONDS=300` for the long mode; `KEEL_LOAD_RATE` and `KEEL_LOAD_CLIENTS` change the
//! offered load; `KEEL_SEED` the workload.

mod service;

use std::path::Path;
use std::process::Command as Process;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel_engine::{Bincode, Codec};
use keel_examples::format;
use keel_examples::ledger::Command;
use keel_examples::rng::seed_from_environment;
use keel_examples::system::anonymous_resident_bytes;
use keel_journal::JournalReader;
use serde_json::Value;
use service::Service;

/// How far the heap may move while only malformed requests and misbehaving connections arrive:
/// allocator noise, not a leak (a leaked 64 KiB buffer per misbehaving connection would be
/// tens of MiB here).
const FLAT_ALLOWANCE: u64 = 4 << 20;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// One phase's load: its JSON report.
fn load(address: &str, seed: u64, seconds: u64, arguments: &[&str]) -> Value {
    let (rate, clients) = (setting("KEEL_LOAD_RATE", 10_000), setting("KEEL_LOAD_CLIENTS", 8));
    let output = Process::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["load", "--connect", address, "--json"])
        .args(["--rate", &rate.to_string(), "--clients", &clients.to_string()])
        .args(["--duration", &seconds.to_string(), "--seed", &seed.to_string()])
        .args(arguments)
        .output()
        .expect("ledger load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ledger load {arguments:?} failed (KEEL_SEED={seed}): {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).expect("one JSON object")
}

/// Memory samples of one phase.
struct Memory {
    start: u64,
    end: u64,
    max: u64,
}

fn memory(samples: &[(Duration, u64)], from: Duration, to: Duration) -> Memory {
    let within: Vec<u64> =
        samples.iter().filter(|(at, _)| *at >= from && *at <= to).map(|(_, rss)| *rss).collect();
    assert!(within.len() >= 2, "the memory was sampled during the phase");
    Memory {
        start: within[0],
        end: *within.last().expect("samples"),
        max: *within.iter().max().expect("samples"),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn u64_of(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} in {report}"))
}

fn main() {
    let seconds = setting("KEEL_LOAD_SECONDS", 8);
    let seed = seed_from_environment();
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let data = scratch.path().join("data");
    let service = Service::start(&data);
    let address = service.address.to_string();
    let pid = service.pid();

    let started = Instant::now();
    let sampling = AtomicBool::new(true);
    let (phases, samples) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Acquire) {
                if let Some(rss) = anonymous_resident_bytes(pid) {
                    samples.push((started.elapsed(), rss));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        let mut phases = Vec::new();
        for (name, arguments) in [
            ("mixed", ["--malformed", "0.02", "--bad-connections", "20", "--accounts", "10000"]),
            (
                "malformed only",
                ["--malformed", "1", "--bad-connections", "50", "--accounts", "1000"],
            ),
        ] {
            let begun = started.elapsed();
            let report = load(&address, seed, seconds, &arguments);
            // The load's setup (accounts and fundings) comes before its traffic: the phase's
            // memory is read over the traffic, the last `seconds` of the phase.
            let ended = started.elapsed();
            let traffic = ended.saturating_sub(Duration::from_secs(seconds)).max(begun);
            phases.push((name, report, traffic, ended));
            std::thread::sleep(Duration::from_millis(200));
        }
        sampling.store(false, Ordering::Release);
        (phases, sampler.join().expect("the sampler"))
    });
    let summary = service.stop();

    // The journal holds exactly the valid requests: each phase's setup and its traffic less the
    // malformed requests, every record a ledger command.
    let journaled = journaled_commands(&data);
    let valid: u64 = phases
        .iter()
        .map(|(_, report, _, _)| {
            u64_of(report, "/setup/commands") + u64_of(report, "/requests")
                - u64_of(report, "/malformed_sent")
        })
        .sum();
    assert_eq!(journaled, valid, "the journal holds exactly the valid requests (KEEL_SEED={seed})");
    assert!(summary.contains(&format!("{} requests published", format::count(valid))), "{summary}");

    println!("load campaign: ledger serve, {seconds} s per phase, KEEL_SEED={seed}");
    println!(
        "{:<15} {:>9} {:>10} {:>13} {:>9} {:>9} {:>9} {:>9} {:>10} {:>13} {:>22}",
        "phase",
        "requests",
        "malformed",
        "bad conns",
        "answered",
        "p50",
        "p99",
        "max",
        "errors",
        "heap start",
        "heap end (max)"
    );
    let mut flat = None;
    for (name, report, from, to) in &phases {
        let heap = memory(&samples, *from, *to);
        let errors: u64 = report["errors"]
            .as_object()
            .expect("errors by code")
            .values()
            .map(|count| count.as_u64().expect("a count"))
            .sum();
        let bad = ["oversized", "truncated", "silent"]
            .map(|how| u64_of(report, &format!("/bad_connections/{how}")))
            .map(|count| count.to_string())
            .join("/");
        let latency = |percentile: &str| {
            let nanoseconds =
                report["latency"][format!("{percentile}_ns")].as_f64().expect("a percentile");
            format!("{:.2} ms", nanoseconds / 1e6)
        };
        println!(
            "{:<15} {:>9} {:>10} {:>13} {:>7.0}/s {:>9} {:>9} {:>9} {:>10} {:>13} {:>22}",
            name,
            u64_of(report, "/requests"),
            u64_of(report, "/malformed_sent"),
            bad,
            report["answered_per_second"].as_f64().expect("a rate"),
            latency("p50"),
            latency("p99"),
            latency("max"),
            errors,
            mib(heap.start),
            format!("{} ({})", mib(heap.end), mib(heap.max)),
        );
        if *name == "malformed only" {
            flat = Some(heap);
        }
    }
    println!(
        "journal: {} records, exactly the valid requests; bad connections are oversized/cut/silent",
        format::count(journaled)
    );
    let flat = flat.expect("the malformed-only phase");
    assert!(
        flat.max <= flat.start + FLAT_ALLOWANCE,
        "the heap grew from {} to {} while only malformed requests arrived (KEEL_SEED={seed})",
        mib(flat.start),
        mib(flat.max)
    );
}

/// The number of records in the journal, each checked to be a ledger command.
fn journaled_commands(data: &Path) -> u64 {
    let mut reader = JournalReader::open(data).expect("the journal");
    let mut count = 0;
    while let Some(record) = reader.next().expect("a valid journal") {
        Bincode.decode::<Command>(record.payload).expect("a ledger command");
        count += 1;
    }
    count
}
