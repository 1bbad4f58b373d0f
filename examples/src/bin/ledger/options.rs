//! What the subcommands share: the engine's settings on the command line, opening the
//! engine, tallying events, the progress line.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
use keel_engine::{
    Bincode, Durability, Engine, OutputPoller, Publisher, SnapshotPolicy, Topology, Wait,
};
use keel_examples::driver::{drive, Driven, Pace};
use keel_examples::format;
use keel_examples::ledger::{Command, Event, Ledger, Reject};

/// Journal segments of 64 MiB: a run of millions of transfers rolls a few times.
pub const SEGMENT_SIZE: u64 = 64 << 20;

/// Input and output rings of 64 Ki slots.
pub const RING_CAPACITY: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// Nothing is written (nothing survives).
    Memory,
    /// Survives a process crash.
    PageCache,
    /// Survives a power loss: every batch fdatasync'ed.
    Fsync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TopologyArg {
    /// Journal then apply on one engine thread: two threads with the gateway.
    Compact,
    /// A journaller thread beside the engine thread: three threads.
    Pipelined,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WaitArg {
    BusySpin,
    Yielding,
    Sleeping,
    Blocking,
}

/// The engine's settings.
#[derive(Clone, Copy, Debug, Args)]
pub struct EngineOptions {
    /// What a command survives once applied.
    #[arg(long, value_enum, default_value_t = DurabilityArg::PageCache)]
    pub durability: DurabilityArg,
    /// How the engine's work is laid out on threads.
    #[arg(long, value_enum, default_value_t = TopologyArg::Compact)]
    pub topology: TopologyArg,
    /// How idle threads wait.
    #[arg(long, value_enum, default_value_t = WaitArg::Yielding)]
    pub wait: WaitArg,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            durability: DurabilityArg::PageCache,
            topology: TopologyArg::Compact,
            wait: WaitArg::Yielding,
        }
    }
}

impl EngineOptions {
    pub fn durability(&self) -> Durability {
        match self.durability {
            DurabilityArg::Memory => Durability::Memory,
            DurabilityArg::PageCache => Durability::PageCache,
            DurabilityArg::Fsync => Durability::Fsync,
        }
    }

    pub fn topology(&self) -> Topology {
        match self.topology {
            TopologyArg::Compact => Topology::Compact,
            TopologyArg::Pipelined => Topology::Pipelined,
        }
    }

    pub fn wait(&self) -> Wait {
        match self.wait {
            WaitArg::BusySpin => Wait::BusySpin,
            WaitArg::Yielding => Wait::Yielding,
            WaitArg::Sleeping => Wait::Sleeping,
            WaitArg::Blocking => Wait::Blocking,
        }
    }

    /// "PageCache tier, compact topology, yielding wait".
    pub fn describe(&self) -> String {
        format!(
            "{:?} tier, {} topology, {} wait",
            self.durability(),
            self.topology.to_possible_value().expect("named").get_name(),
            self.wait.to_possible_value().expect("named").get_name()
        )
    }

    /// Opens (recovering) the engine on `data` with one output poller.
    pub fn open(
        &self,
        data: &Path,
        initial: Ledger,
        snapshots: SnapshotPolicy,
    ) -> Result<Engine<Ledger>> {
        Engine::builder(data)
            .durability(self.durability())
            .topology(self.topology())
            .wait(self.wait())
            .ring_capacity(RING_CAPACITY)
            .output_capacity(RING_CAPACITY)
            .segment_size(SEGMENT_SIZE)
            .snapshots(snapshots)
            .output_poller()
            .open(initial)
            .with_context(|| format!("opening the engine on {}", data.display()))
    }
}

/// An open engine with the gateway's ends: its publisher and its output poller.
pub struct Session {
    engine: Engine<Ledger>,
    output: OutputPoller<Event>,
    publisher: Publisher<Ledger, Bincode>,
    /// The events seen so far.
    pub tally: Tally,
}

impl Session {
    /// Opens (recovering) the engine on `data`.
    pub fn open(
        options: &EngineOptions,
        data: &Path,
        initial: Ledger,
        snapshots: SnapshotPolicy,
    ) -> Result<Self> {
        let mut engine = options.open(data, initial, snapshots)?;
        let output = engine.take_output_poller().context("the output poller")?;
        let publisher = engine.publisher();
        Ok(Self { engine, output, publisher, tally: Tally::default() })
    }

    pub fn engine(&self) -> &Engine<Ledger> {
        &self.engine
    }

    /// Publishes `count` commands from `next`, tallying their events; `progress` is called
    /// about every 100 ms with the count answered.
    pub fn drive(
        &mut self,
        count: u64,
        pace: Pace,
        next: impl FnMut() -> Command,
        progress: impl FnMut(u64),
    ) -> Result<Driven> {
        let tally = &mut self.tally;
        drive(
            &mut self.publisher,
            &mut self.output,
            next,
            count,
            pace,
            |_, event| tally.add(event),
            progress,
        )
    }

    /// [`drive`](Self::drive) with a progress line named `label`.
    pub fn drive_shown(
        &mut self,
        label: &'static str,
        count: u64,
        pace: Pace,
        next: impl FnMut() -> Command,
    ) -> Result<Driven> {
        let progress = Progress::new(label, count);
        let driven = self.drive(count, pace, next, |done| progress.update(done));
        progress.finish();
        driven
    }

    /// Waits for everything published to be applied, stops the engine, returns the state.
    pub fn shutdown(self) -> Result<(Ledger, Tally)> {
        let Self { engine, output, publisher, tally } = self;
        drop(publisher);
        drop(output);
        let ledger = engine.shutdown().context("shutting the engine down")?;
        Ok((ledger, tally))
    }
}

/// Fails unless `data` is absent or an empty directory: `run` and `demo` write a new
/// journal, and would collide with an old one's ids.
pub fn ensure_fresh(data: &Path) -> Result<()> {
    match std::fs::read_dir(data) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty: this writes a new journal, so give it a new directory \
                     (or remove that one)",
                    data.display()
                );
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("reading {}", data.display())),
    }
}

/// Counts of the events seen, by kind and by rejection reason.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub accounts: u64,
    pub transferred: u64,
    pub reserved: u64,
    pub posted: u64,
    pub voided: u64,
    pub expired: u64,
    pub retries: u64,
    pub rejected: u64,
    pub reasons: [u64; Reject::ALL.len()],
}

impl Tally {
    #[inline]
    pub fn add(&mut self, event: &Event) {
        match event {
            Event::AccountCreated { .. } => self.accounts += 1,
            Event::Transferred { .. } => self.transferred += 1,
            Event::Reserved { .. } => self.reserved += 1,
            Event::Posted { .. } => self.posted += 1,
            Event::Voided { .. } => self.voided += 1,
            Event::Expired { .. } => self.expired += 1,
            Event::AccountExists { .. } | Event::TransferExists { .. } => self.retries += 1,
            Event::AccountRejected { reason, .. } | Event::TransferRejected { reason, .. } => {
                self.rejected += 1;
                self.reasons[*reason as usize] += 1;
            }
        }
    }

    /// Adds another tally's counts.
    pub fn merge(&mut self, other: &Tally) {
        self.accounts += other.accounts;
        self.transferred += other.transferred;
        self.reserved += other.reserved;
        self.posted += other.posted;
        self.voided += other.voided;
        self.expired += other.expired;
        self.retries += other.retries;
        self.rejected += other.rejected;
        for (sum, count) in self.reasons.iter_mut().zip(other.reasons) {
            *sum += count;
        }
    }

    /// The rejection reasons seen, most frequent first.
    pub fn reasons(&self) -> Vec<(Reject, u64)> {
        let mut reasons: Vec<(Reject, u64)> = Reject::ALL
            .iter()
            .map(|&reason| (reason, self.reasons[reason as usize]))
            .filter(|&(_, count)| count > 0)
            .collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        reasons
    }

    /// Two lines: what was done, and what was refused.
    pub fn lines(&self) -> [String; 2] {
        let done = format!(
            "{} transferred · {} reserved · {} posted · {} voided · {} expired · {} retries answered",
            format::count(self.transferred),
            format::count(self.reserved),
            format::count(self.posted),
            format::count(self.voided),
            format::count(self.expired),
            format::count(self.retries),
        );
        let reasons = self
            .reasons()
            .iter()
            .map(|(reason, count)| format!("{} {reason}", format::count(*count)))
            .collect::<Vec<_>>()
            .join(", ");
        let refused = if self.rejected == 0 {
            "none rejected".to_owned()
        } else {
            format!("{} rejected: {reasons}", format::count(self.rejected))
        };
        [done, refused]
    }

    pub fn json(&self) -> serde_json::Value {
        let reasons: serde_json::Map<String, serde_json::Value> = self
            .reasons()
            .into_iter()
            .map(|(reason, count)| (reason.name().to_owned(), count.into()))
            .collect();
        serde_json::json!({
            "accounts_created": self.accounts,
            "transferred": self.transferred,
            "reserved": self.reserved,
            "posted": self.posted,
            "voided": self.voided,
            "expired": self.expired,
            "retries_answered": self.retries,
            "rejected": self.rejected,
            "rejections": reasons,
        })
    }
}

/// A progress line on standard error, redrawn in place; only when it is a terminal.
pub struct Progress {
    label: &'static str,
    total: u64,
    started: Instant,
    visible: bool,
}

impl Progress {
    pub fn new(label: &'static str, total: u64) -> Self {
        Self { label, total, started: Instant::now(), visible: std::io::stderr().is_terminal() }
    }

    pub fn update(&self, done: u64) {
        if !self.visible {
            return;
        }
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r  {:<12} {} / {}  ({:.0}%)  {}   ",
            self.label,
            format::count(done),
            format::count(self.total),
            100.0 * done as f64 / self.total.max(1) as f64,
            format::rate(done as f64 / elapsed, "commands"),
        );
        let _ = stderr.flush();
    }

    /// Clears the line.
    pub fn finish(&self) {
        if self.visible {
            let _ = write!(std::io::stderr().lock(), "\r{:80}\r", "");
        }
    }
}

/// The bytes the journal's segment files take on disk.
pub fn journal_bytes(data: &Path) -> u64 {
    let directory = data.join(keel_journal::segment::JOURNAL_DIRECTORY);
    keel_journal::segment::list_segments(&directory)
        .map(|segments| {
            segments
                .iter()
                .filter_map(|segment| std::fs::metadata(&segment.path).ok())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0)
}
