//! Recovery of the ledger example: time to ready after a journal of 10 M and 100 M commands
//! (a tenth of that with `--quick`), with a snapshot near the end and without one; and the
//! snapshot itself: the time to write it, its size, and the engine thread's pause for it.
//!
//! Each journal is written once (the ledger workload at saturation, `PageCache` tier, compact
//! topology) with one snapshot taken on demand at 95% of the commands; then each run opens the
//! engine on it twice: as it is (the snapshot loaded, the last 5% replayed) and with the
//! snapshot moved aside (every command replayed). Both must arrive at the hash the writing
//! engine had when it stopped. The journal is in the page cache when it is replayed, as it is
//! when a service restarts on the same host: the figure is keel's, not the disk's.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context as _, Result};
use keel_engine::{SnapshotPolicy, StateMachine};
use keel_examples::cli::EngineOptions;
use keel_examples::demo::take_snapshot;
use keel_examples::driver::{drive, Pace};
use keel_examples::ledger::workload::{Mix, Workload};
use keel_examples::ledger::{Command, Ledger};

use crate::apps::{ACCOUNTS, CODES, SEED};
use crate::report::Measurement;
use crate::scratch::Scratch;

/// A written journal: where, how many commands, the final state's hash.
struct Written {
    scratch: Scratch,
    commands: u64,
    hash: u64,
}

/// Runs the recovery scenario: for each journal size, the snapshot's figures once and `runs`
/// recoveries with and without it. `print` shows each measurement as it is taken.
pub fn run(
    root: &Path,
    scale: u64,
    runs: usize,
    print: &mut dyn FnMut(&Measurement) -> Result<()>,
) -> Result<Vec<Measurement>> {
    let mut measurements = Vec::new();
    for commands in [10_000_000 / scale, 100_000_000 / scale] {
        let size = format!("{}M", commands / 1_000_000);
        let (written, snapshot) = write(root, commands)?;
        let mut details = std::collections::BTreeMap::new();
        details.insert("snapshot_bytes", snapshot.bytes as f64);
        details.insert("snapshot_write_s", snapshot.seconds);
        details.insert("snapshot_pause_ns", snapshot.pause_ns as f64);
        let measurement = Measurement {
            scenario: "recovery-snapshot",
            system: "keel",
            variant: format!("{size} ledger, bytes/s written"),
            run: 1,
            events: snapshot.bytes,
            ops_per_sec: snapshot.bytes as f64 / snapshot.seconds.max(1e-9),
            latency: None,
            probe_ns: 0.0,
            details,
        };
        print(&measurement)?;
        measurements.push(measurement);
        for run in 0..runs {
            for with_snapshot in [true, false] {
                let measurement = recover(&written, with_snapshot, &size, run + 1)?;
                print(&measurement)?;
                measurements.push(measurement);
            }
        }
    }
    Ok(measurements)
}

/// Writes a journal of the ledger's setup and `commands` transfers, with a snapshot after
/// 95% of them.
fn write(root: &Path, commands: u64) -> Result<(Written, keel_examples::demo::Snapshot)> {
    let scratch = Scratch::new(root, "ledger-recovery")?;
    let mut workload = Workload::new(SEED, ACCOUNTS, CODES, Mix::PAYMENTS, 1);
    let setup = workload.setup();
    let mut engine = EngineOptions::default().open(
        &scratch.0,
        initial(setup.len() as u64 + commands),
        SnapshotPolicy::default(),
    )?;
    let mut output = engine.take_output_poller().context("the output poller")?;
    let mut publisher = engine.publisher();
    let mut setup = setup.into_iter();
    let count = setup.len() as u64;
    let mut drive_some = |count: u64, next: &mut dyn FnMut() -> Command| {
        drive(&mut publisher, &mut output, next, count, Pace::default(), |_, _| {}, |_| {})
    };
    drive_some(count, &mut || setup.next().expect("one setup command per count"))?;
    let before = commands - commands / 20;
    drive_some(before, &mut || workload.next_command())?;
    let snapshot = take_snapshot(&engine, &scratch.0)?;
    drive_some(commands - before, &mut || workload.next_command())?;
    drop(publisher);
    drop(output);
    let ledger = engine.shutdown().context("shutting the writing engine down")?;
    let hash = ledger.state_hash();
    let commands = count + commands;
    Ok((Written { scratch, commands, hash }, snapshot))
}

/// An empty ledger with room for `commands`, as `ledger run` makes it.
fn initial(commands: u64) -> Ledger {
    Ledger::with_capacity((ACCOUNTS + u64::from(CODES)) as usize, commands as usize)
}

/// Opens the engine on the written journal, with its snapshot or with it moved aside, and
/// measures the time to ready and the replay's rate.
fn recover(written: &Written, with_snapshot: bool, size: &str, run: usize) -> Result<Measurement> {
    let data = &written.scratch.0;
    let aside = data.with_extension("aside");
    let store = keel_journal::SnapshotStore::open(data)?;
    let files = store.list()?;
    ensure!(!files.is_empty(), "the recovery journal has no snapshot");
    if !with_snapshot {
        std::fs::create_dir_all(&aside)?;
        for file in &files {
            std::fs::rename(&file.path, aside.join(file.path.file_name().context("a file")?))?;
        }
    }
    let started = Instant::now();
    let opened =
        EngineOptions::default().open(data, initial(written.commands), SnapshotPolicy::default());
    let ready = started.elapsed().as_secs_f64();
    if !with_snapshot {
        for file in &files {
            std::fs::rename(aside.join(file.path.file_name().context("a file")?), &file.path)?;
        }
        std::fs::remove_dir(&aside)?;
    }
    let engine = opened?;
    let report = engine.recovery().clone();
    let ledger = engine.shutdown().context("shutting the recovered engine down")?;
    ensure!(
        report.last_sequence == written.commands && ledger.state_hash() == written.hash,
        "recovery reached sequence {} with hash {:016x}; the journal holds {} commands with \
         hash {:016x}",
        report.last_sequence,
        ledger.state_hash(),
        written.commands,
        written.hash
    );
    ensure!(
        report.snapshot.is_some() == with_snapshot,
        "recovery {} a snapshot",
        if with_snapshot { "did not load" } else { "loaded" }
    );
    let mut details = std::collections::BTreeMap::new();
    details.insert("ready_s", ready);
    details.insert("replay_s", report.replay_seconds);
    let variant = if with_snapshot {
        format!("{size} ledger, snapshot at 95%")
    } else {
        format!("{size} ledger, no snapshot")
    };
    Ok(Measurement {
        scenario: "recovery",
        system: "keel",
        variant,
        run,
        events: report.replayed,
        ops_per_sec: report.replayed as f64 / report.replay_seconds.max(1e-9),
        latency: None,
        probe_ns: 0.0,
        details,
    })
}
