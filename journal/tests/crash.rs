//! The real crash test: a child process appends to a journal and reports each acknowledged
//! sequence to the parent over a pipe; the parent kills it with SIGKILL at a random moment
//! (while it opens and recovers the journal, appends, commits or rolls a segment), reopens the
//! journal, and checks that every acknowledged record is there, in order, with its exact
//! payload and timestamp, and that `verify` never calls the result corruption. Then the next
//! child carries on in the same journal, so recovery after recovery is tested too. Both tiers:
//! `Fsync` and `PageCache` (a process crash keeps the page cache, which is what `PageCache`
//! promises to survive).
//!
//! ```text
//! cargo test -p keel-journal --release --test crash                          # 40 kills per tier
//! KEEL_CRASH_ITERATIONS=1000 cargo test -p keel-journal --release --test crash
//! KEEL_SEED=1234 cargo test -p keel-journal --release --test crash           # replay a run's timing
//! ```
//!
//! A test without the standard harness (`harness = false`): the same executable is the child
//! when `KEEL_CRASH_CHILD` names a directory.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{check_journal_from, options, payload, timestamp, Random};
use keel_journal::{verify_journal, Durability, JournalWriter};

const CHILD_DIRECTORY: &str = "KEEL_CRASH_CHILD";
const CHILD_TIER: &str = "KEEL_CRASH_TIER";
const CHILD_SEED: &str = "KEEL_CRASH_CHILD_SEED";
/// Kills per tier unless `KEEL_CRASH_ITERATIONS` says otherwise.
const DEFAULT_ITERATIONS: u64 = 40;
/// A new journal directory every so many kills, so the journal stays small enough to check in
/// full after every kill.
const KILLS_PER_JOURNAL: u64 = 10;

fn main() {
    if let Ok(directory) = std::env::var(CHILD_DIRECTORY) {
        let tier = std::env::var(CHILD_TIER).expect("the child's tier");
        let seed = std::env::var(CHILD_SEED).expect("the child's seed").parse().expect("a seed");
        child(Path::new(&directory), tier_named(&tier), seed);
        return;
    }
    let iterations = std::env::var("KEEL_CRASH_ITERATIONS")
        .map(|value| value.parse().expect("KEEL_CRASH_ITERATIONS is a number"))
        .unwrap_or(DEFAULT_ITERATIONS);
    let seed = std::env::var("KEEL_SEED")
        .map(|value| value.parse().expect("KEEL_SEED is a number"))
        .unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |since| since.as_nanos() as u64)
        });
    println!("crash test: {iterations} SIGKILLs per tier, KEEL_SEED={seed}");
    for tier in ["fsync", "page-cache"] {
        let started = Instant::now();
        let summary = campaign(tier, iterations, seed);
        println!(
            "  {tier}: {iterations} kills in {:.1} s; {} records recovered and checked, \
             {} kills before the first acknowledgement, {} torn tails, {} during a roll window",
            started.elapsed().as_secs_f64(),
            summary.recovered,
            summary.before_first_ack,
            summary.torn_tails,
            summary.mid_roll,
        );
    }
    println!("crash test: passed");
}

fn tier_named(name: &str) -> Durability {
    match name {
        "fsync" => Durability::Fsync,
        "page-cache" => Durability::PageCache,
        other => panic!("unknown tier {other}"),
    }
}

/// The child: appends batches of 1 to 200 records, commits each, and writes the committed
/// sequence (8 bytes, little-endian) to standard output once `commit` returned. It never
/// stops by itself: the parent kills it.
fn child(directory: &Path, durability: Durability, seed: u64) {
    let mut writer = JournalWriter::open(directory, options(durability)).expect("child: open");
    let mut random = Random::new(seed);
    let mut out = std::io::stdout().lock();
    loop {
        for _ in 0..1 + random.below(200) {
            let sequence = writer.next_sequence();
            writer.append(timestamp(sequence), 1, 1, &payload(sequence)).expect("child: append");
        }
        let committed = writer.commit().expect("child: commit");
        out.write_all(&committed.to_le_bytes()).expect("child: report");
        out.flush().expect("child: report");
    }
}

#[derive(Debug, Default)]
struct Summary {
    recovered: u64,
    before_first_ack: u64,
    torn_tails: u64,
    mid_roll: u64,
}

/// Kills a child `iterations` times in one tier and checks the journal after each kill.
fn campaign(tier: &str, iterations: u64, seed: u64) -> Summary {
    let mut random = Random::new(seed ^ tier.len() as u64);
    let mut summary = Summary::default();
    let mut directory = tempfile::tempdir().expect("temporary directory");
    // Every record up to here was checked after an earlier kill.
    let mut checked = 0;
    for iteration in 0..iterations {
        if iteration > 0 && iteration % KILLS_PER_JOURNAL == 0 {
            directory = tempfile::tempdir().expect("temporary directory");
            checked = 0;
        }
        let child_seed = random.next();
        // One kill in five within the child's first 5 ms, while it starts and opens (recovers)
        // the journal; the others up to 60 ms into its appends.
        let window = if random.below(5) == 0 { 5_000 } else { 60_000 };
        let delay = Duration::from_micros(random.below(window));
        let context = format!("{tier}, kill {iteration}, KEEL_SEED={seed}");
        let acked = run_and_kill(directory.path(), tier, child_seed, delay, &context);
        if acked == 0 {
            summary.before_first_ack += 1;
        }
        if !directory.path().join("journal").exists() {
            // Killed before it created the journal: nothing can have been acknowledged.
            assert_eq!(acked, 0, "{context}");
            continue;
        }
        let verification = verify_journal(directory.path(), &mut |_, _| {})
            .unwrap_or_else(|error| panic!("{context}: verify: {error}"));
        match verification.verdict.label() {
            "valid" => {}
            "torn tail" => summary.torn_tails += 1,
            _ => panic!("{context}: a crash left corruption: {:?}", verification.verdict),
        }
        if verification.notes.iter().any(|note| note.contains("not yet renamed")) {
            summary.mid_roll += 1;
        }
        let writer = JournalWriter::open(directory.path(), options(tier_named(tier)))
            .unwrap_or_else(|error| panic!("{context}: open after the kill: {error}"));
        let last = writer.open_report().last_sequence;
        assert!(
            last >= acked,
            "{context}: acknowledged up to {acked}, recovered only to {last}: {}",
            writer.open_report()
        );
        drop(writer);
        // Every record from the first unchecked one to the end, exactly.
        let end = check_journal_from(directory.path(), checked + 1);
        assert_eq!(end, last, "{context}: the reader and the writer disagree on the end");
        summary.recovered += end - checked;
        checked = end;
    }
    summary
}

/// Starts a child appending to `directory`, kills it with SIGKILL after `delay`, and returns
/// the highest sequence it acknowledged (0 if none).
fn run_and_kill(directory: &Path, tier: &str, seed: u64, delay: Duration, context: &str) -> u64 {
    let mut child = Command::new(std::env::current_exe().expect("this executable"))
        .env(CHILD_DIRECTORY, directory)
        .env(CHILD_TIER, tier)
        .env(CHILD_SEED, seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let mut acks = child.stdout.take().expect("the child's standard output");
    // Reads acknowledgements as they come, so the child never blocks on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut last = 0u64;
        let mut bytes = [0u8; 8];
        while acks.read_exact(&mut bytes).is_ok() {
            let acked = u64::from_le_bytes(bytes);
            assert!(acked >= last, "acknowledgements go forward");
            last = acked;
        }
        last
    });
    std::thread::sleep(delay);
    // `Child::kill` sends SIGKILL on Unix: no destructor, no flush, no unmap runs.
    let killed = child.kill();
    let status = child.wait().expect("wait for the child");
    let acked = reader.join().expect("the acknowledgement reader");
    if killed.is_err() || status.code().is_some() {
        // The child ended before the kill: only an error of its own does that.
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        panic!("{context}: the child exited by itself ({status}): {stderr}");
    }
    acked
}
