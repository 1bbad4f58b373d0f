//! What the example binaries share on their command lines: the engine's settings, opening the
//! engine with them, a fresh data directory, the progress line.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
use keel_engine::{
    Bincode, Durability, Engine, OutputPoller, RecoveryReport, Replication, SnapshotPolicy,
    SolePublisher, StateMachine, Topology, Wait,
};

use crate::driver::{drive, Driven, Pace};
use crate::format;

/// Journal segments of 64 MiB: a run of millions of transfers rolls a few times.
pub const SEGMENT_SIZE: u64 = 64 << 20;

/// Input and output rings of 64 Ki slots.
pub const RING_CAPACITY: usize = 64 * 1024;

/// The durability tier on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// Nothing is written (nothing survives).
    Memory,
    /// Survives a process crash.
    PageCache,
    /// Survives a power loss: every batch fdatasync'ed.
    Fsync,
    /// Survives the loss of this machine: applied once a quorum of replicas holds it (needs
    /// `--replicate`).
    Replicated,
}

/// The topology on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TopologyArg {
    /// Journal then apply on one engine thread: two threads with the gateway.
    Compact,
    /// A journaller thread beside the engine thread: three threads.
    Pipelined,
}

/// How idle threads wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WaitArg {
    /// Spin without pause: the lowest latency, a whole core per waiting thread.
    BusySpin,
    /// Spin a little, then yield the core.
    Yielding,
    /// Spin, yield, then sleep briefly.
    Sleeping,
    /// Sleep on a condition variable until woken.
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
    /// Write a checkpoint into the journal every N commands (0: none): the state's hash, which
    /// every replay and every replica compares with its own. Computing it pauses the engine
    /// thread for as long as hashing the state takes (the ledger's walks its whole history).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub checkpoint_every: u64,
    /// Bytes per journal segment (crash tests make them small, so that kills land in rolls).
    #[arg(long, value_name = "BYTES", default_value_t = SEGMENT_SIZE, hide = true)]
    pub segment_size: u64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            durability: DurabilityArg::PageCache,
            topology: TopologyArg::Compact,
            wait: WaitArg::Yielding,
            checkpoint_every: 0,
            segment_size: SEGMENT_SIZE,
        }
    }
}

impl EngineOptions {
    /// The engine's tier.
    pub fn durability(&self) -> Durability {
        match self.durability {
            DurabilityArg::Memory => Durability::Memory,
            DurabilityArg::PageCache => Durability::PageCache,
            DurabilityArg::Fsync => Durability::Fsync,
            DurabilityArg::Replicated => Durability::Replicated,
        }
    }

    /// The engine's topology.
    pub fn topology(&self) -> Topology {
        match self.topology {
            TopologyArg::Compact => Topology::Compact,
            TopologyArg::Pipelined => Topology::Pipelined,
        }
    }

    /// The engine's wait strategy.
    pub fn wait(&self) -> Wait {
        match self.wait {
            WaitArg::BusySpin => Wait::BusySpin,
            WaitArg::Yielding => Wait::Yielding,
            WaitArg::Sleeping => Wait::Sleeping,
            WaitArg::Blocking => Wait::Blocking,
        }
    }

    /// The flags that give these settings on a command line.
    pub fn arguments(&self) -> Vec<String> {
        let name = |value: Option<clap::builder::PossibleValue>| {
            value.expect("every setting has a name").get_name().to_owned()
        };
        vec![
            "--durability".into(),
            name(self.durability.to_possible_value()),
            "--topology".into(),
            name(self.topology.to_possible_value()),
            "--wait".into(),
            name(self.wait.to_possible_value()),
            "--checkpoint-every".into(),
            self.checkpoint_every.to_string(),
            "--segment-size".into(),
            self.segment_size.to_string(),
        ]
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
    pub fn open<M: StateMachine>(
        &self,
        data: &Path,
        initial: M,
        snapshots: SnapshotPolicy,
    ) -> Result<Engine<M>> {
        self.open_replicating(data, initial, snapshots, None)
    }

    /// [`open`](Self::open), serving replicas when `replication` says so.
    pub fn open_replicating<M: StateMachine>(
        &self,
        data: &Path,
        initial: M,
        snapshots: SnapshotPolicy,
        replication: Option<Replication>,
    ) -> Result<Engine<M>> {
        let builder = Engine::builder(data);
        let builder = match replication {
            Some(replication) => builder.replicate(replication),
            None => builder,
        };
        builder
            .durability(self.durability())
            .topology(self.topology())
            .wait(self.wait())
            .ring_capacity(RING_CAPACITY)
            .output_capacity(RING_CAPACITY)
            .segment_size(self.segment_size)
            .snapshots(snapshots)
            .checkpoints(self.checkpoint_every)
            .output_poller()
            .open(initial)
            .with_context(|| format!("opening the engine on {}", data.display()))
    }
}

/// Serving replicas, on the command line.
#[derive(Clone, Debug, Default, Args)]
pub struct ReplicationArgs {
    /// Serve replicas on this address: they connect with `replica --primary ADDR` and are
    /// streamed the journal from where they stand.
    #[arg(long, value_name = "ADDR")]
    pub replicate: Option<SocketAddr>,
    /// The replicated tier: replicas that must hold each command before it is applied.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub quorum: usize,
    /// The replicated tier: milliseconds a replica may take to acknowledge before it is
    /// dropped from the quorum.
    #[arg(long, value_name = "MS", default_value_t = 1_000)]
    pub ack_timeout_ms: u64,
    /// The replicated tier: rounds the engine spins for an acknowledgement before it sleeps
    /// until one comes (the engine's default, 256, when not given). A few (4) answer sooner at
    /// moderate rates when the replicas share the primary's cores.
    #[arg(long, value_name = "ROUNDS")]
    pub ack_spin: Option<u32>,
    /// A file holding the shared replication secret (by default the environment variable
    /// KEEL_REPLICATION_SECRET). Never on the command line, where `ps` would show it.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
}

impl ReplicationArgs {
    /// The engine's replication, if asked for.
    pub fn replication(&self) -> Result<Option<Replication>> {
        let Some(address) = self.replicate else { return Ok(None) };
        let replication = Replication::new(replication_secret(self.secret_file.as_deref())?)
            .listen(address)
            .quorum(self.quorum)
            .ack_timeout(std::time::Duration::from_millis(self.ack_timeout_ms));
        Ok(Some(match self.ack_spin {
            Some(rounds) => replication.ack_spin(rounds),
            None => replication,
        }))
    }
}

/// The replication secret: the file's contents without a final line break, or the
/// environment variable `KEEL_REPLICATION_SECRET`.
pub fn replication_secret(file: Option<&Path>) -> Result<Vec<u8>> {
    let mut secret = match file {
        Some(file) => std::fs::read(file)
            .with_context(|| format!("reading the replication secret from {}", file.display()))?,
        None => std::env::var_os("KEEL_REPLICATION_SECRET")
            .map(|secret| secret.into_encoded_bytes())
            .context(
                "no replication secret: give --secret-file FILE or set KEEL_REPLICATION_SECRET",
            )?,
    };
    while secret.last().is_some_and(|byte| matches!(byte, b'\n' | b'\r')) {
        secret.pop();
    }
    if secret.is_empty() {
        bail!("the replication secret is empty");
    }
    Ok(secret)
}

/// A flag that SIGINT and SIGTERM raise: how the long-running commands (`serve`, `replica`)
/// learn to stop cleanly.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the signal handler")?;
    }
    Ok(stop)
}

/// The snapshots of a long-running service: every `every` commands (0: none), the newest three
/// kept.
pub fn service_snapshots(every: u64) -> SnapshotPolicy {
    SnapshotPolicy { every_commands: (every > 0).then_some(every), every_interval: None, keep: 3 }
}

/// What recovery did, in words: "sequence 1,204: 1,204 records replayed in 12 ms after the
/// snapshot at 1,000".
pub fn describe_recovery(recovery: &RecoveryReport) -> String {
    format!(
        "sequence {}: {} records replayed in {}{}",
        format::count(recovery.last_sequence),
        format::count(recovery.replayed),
        format::seconds(recovery.replay_seconds),
        match &recovery.snapshot {
            Some((_, sequence)) => format!(" after the snapshot at {}", format::count(*sequence)),
            None => String::new(),
        }
    )
}

/// Sends the engine's `tracing` events (replicas connecting, caught up, dropped) to standard
/// error, from `INFO` up, for the commands that run as services.
pub fn log_to_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .try_init();
}

/// What a run counts of its engine's events.
pub trait Tally<E>: Default {
    /// Counts one event.
    fn add(&mut self, event: &E);
}

/// An open engine with the gateway's ends (its publisher and its output poller) and the tally
/// of the events read so far: what a binary's `run` and `demo` drive.
pub struct Session<M: StateMachine, T> {
    engine: Engine<M>,
    output: OutputPoller<M::Event>,
    /// The engine's sole publisher: one thread publishes.
    publisher: SolePublisher<M, Bincode>,
    /// The events seen so far.
    pub tally: T,
}

impl<M: StateMachine, T> std::fmt::Debug for Session<M, T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Session").field("publisher", &self.publisher).finish()
    }
}

impl<M: StateMachine, T: Tally<M::Event>> Session<M, T>
where
    M::Command: Clone,
{
    /// Opens (recovering) the engine on `data`.
    pub fn open(
        options: &EngineOptions,
        data: &Path,
        initial: M,
        snapshots: SnapshotPolicy,
    ) -> Result<Self> {
        let mut engine = options.open(data, initial, snapshots)?;
        let output = engine.take_output_poller().context("the output poller")?;
        let publisher = engine.sole_publisher().context("the engine's publisher")?;
        Ok(Self { engine, output, publisher, tally: T::default() })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine<M> {
        &self.engine
    }

    /// Publishes `count` commands from `next`, tallying their events; `progress` is called
    /// about every 100 ms with the count answered.
    pub fn drive(
        &mut self,
        count: u64,
        pace: Pace,
        next: impl FnMut() -> M::Command,
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
        next: impl FnMut() -> M::Command,
    ) -> Result<Driven> {
        let progress = Progress::new(label, count);
        let driven = self.drive(count, pace, next, |done| progress.update(done));
        progress.finish();
        driven
    }

    /// Waits for everything published to be applied, stops the engine, returns the state and
    /// the tally.
    pub fn shutdown(self) -> Result<(M, T)> {
        let Self { engine, output, publisher, tally } = self;
        drop(publisher);
        drop(output);
        let state = engine.shutdown().context("shutting the engine down")?;
        Ok((state, tally))
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

/// A progress line on standard error, redrawn in place; only when it is a terminal.
#[derive(Debug)]
pub struct Progress {
    label: &'static str,
    total: u64,
    started: Instant,
    visible: bool,
}

impl Progress {
    /// A progress line for `total` commands.
    pub fn new(label: &'static str, total: u64) -> Self {
        Self { label, total, started: Instant::now(), visible: std::io::stderr().is_terminal() }
    }

    /// Redraws the line with `done` commands answered.
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        replication: ReplicationArgs,
    }

    /// The replication the flags ask for, as its `Debug` shows it (its fields are the
    /// engine's).
    fn replication(flags: &[&str]) -> String {
        let directory = tempfile::tempdir().unwrap();
        let secret = directory.path().join("secret");
        std::fs::write(&secret, "a secret\n").unwrap();
        let secret = secret.display().to_string();
        let arguments = ["serve", "--replicate", "127.0.0.1:0", "--secret-file", &secret];
        let command = Command::try_parse_from(arguments.iter().chain(flags)).unwrap();
        format!("{:?}", command.replication.replication().unwrap().unwrap())
    }

    #[test]
    fn the_replication_flags_reach_the_engines_replication() {
        let default = replication(&[]);
        assert!(default.contains("quorum: 1,") && default.contains("ack_spin: 256"), "{default}");
        let set = replication(&["--quorum", "2", "--ack-timeout-ms", "300", "--ack-spin", "4"]);
        assert!(set.contains("quorum: 2,"), "{set}");
        assert!(set.contains("ack_timeout: 300ms") && set.contains("ack_spin: 4"), "{set}");
        assert!(!set.contains("a secret"), "the secret is never shown: {set}");
    }
}
