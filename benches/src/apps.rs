//! The examples' workloads end to end: the ledger and the exchange on keel, and for the ledger
//! what a user would pick instead, driven by the same gateway loop on the same commands.
//!
//! - **keel**: the ledger (or exchange) state machine in an engine opened with the settings
//!   `ledger run` uses, fed by `keel_examples::driver`'s gateway loop (publisher in, output
//!   poller out, on the sending thread): the compact topology is two threads in all, the
//!   pipelined one three (its journaller syncs while the engine thread applies). Followed,
//!   the engine also serves a replica over loopback TCP in this process (`ledger serve
//!   --replicate` and `ledger replica` in one), which journals and applies every command
//!   again: in the `Replicated` tier each command waits for its acknowledgement.
//! - **no journal** (the ceiling of "no durability"): the same loop sends each command through
//!   a bounded `crossbeam-channel` to one thread that owns a `Ledger`, applies every command
//!   it finds waiting and sends the batch's events back through a second channel. Two threads,
//!   no journal, no locks: what keel costs over nothing.
//! - **SQLite event store** (the small, familiar choice): the same thread first appends the
//!   batch's commands to an append-only `events` table (sequence, timestamp, the command's
//!   bincode bytes, the codec keel journals with) in one transaction, WAL mode,
//!   `synchronous=FULL` or `NORMAL`, then applies them: journal before apply, as keel does,
//!   with a batch per transaction (group commit), as keel's engine thread does.
//!
//! Every run checks what it arrived at: every command answered, the ledger's conservation
//! invariant (or the exchange's invariants), and the count the expected sum names.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _, Result};
use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use keel_engine::{Bincode, Codec, Context, Delivery, Output, SnapshotPolicy, StateMachine};
use keel_examples::cli::{DurabilityArg, EngineOptions, TopologyArg, RING_CAPACITY};
use keel_examples::driver::{drive_gateway, Driven, Gateway, Keel, Pace};
use keel_examples::exchange::{self, Exchange};
use keel_examples::ledger::{self, Ledger};

use crate::engine::{self, Follower, Lag, Replicas};
use crate::report::Latency;
use crate::ring::Outcome;
use crate::scratch::Scratch;

/// The workload's seed: every system gets the same commands.
pub const SEED: u64 = 0x6b65_656c;

/// The ledger workload: customer accounts and currencies (`ledger run`'s defaults).
pub const ACCOUNTS: u64 = 100_000;
pub const CODES: u32 = 4;

/// The exchange workload: accounts and symbols (`exchange run`'s defaults).
const TRADERS: u64 = 10_000;
const SYMBOLS: u32 = 16;

/// Which system runs the ledger.
#[derive(Clone, Copy, Debug)]
pub enum System {
    /// keel, in this tier and topology, yielding waits.
    Keel(DurabilityArg, TopologyArg),
    /// keel in this tier, compact topology, yielding waits, with one replica over loopback
    /// TCP in this process (required by the `Replicated` tier, asynchronous in the others),
    /// and this many rounds of spinning for its acknowledgements (the engine's default when
    /// `None`).
    Followed(DurabilityArg, Option<u32>),
    /// One thread applying commands from a channel, no journal.
    NoJournal,
    /// One thread appending to a SQLite event store, then applying; `full` is
    /// `synchronous=FULL` (else `NORMAL`).
    Sqlite { full: bool },
}

/// How a run is driven: at saturation, or at a fixed rate with latency from intended send
/// times.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub commands: u64,
    pub rate: Option<u64>,
}

impl Load {
    fn pace(self) -> Pace {
        Pace { rate: self.rate, warm_up: self.commands / 10, ..Pace::default() }
    }
}

/// What a run reports: its throughput outcome (the sum is the commands answered) and, at a
/// fixed rate, its latency.
fn outcome(driven: &Driven, rate: Option<u64>) -> (Outcome, Option<Latency>) {
    let outcome =
        Outcome { elapsed: driven.elapsed, events: driven.commands, sum: driven.commands };
    (outcome, rate.map(|_| Latency::from_histogram(&driven.latency)))
}

/// Runs the ledger workload's setup and then `load.commands` of its traffic on `system`.
pub fn ledger(root: &Path, system: System, load: Load) -> Result<(Outcome, Option<Latency>)> {
    let (driven, _) = ledger_followed(root, system, load)?;
    Ok(outcome(&driven, load.rate))
}

/// [`ledger`] with a replica, whose lag is reported instead of the latency: from the primary
/// journaling each command after the warm-up to the replica applying it, and in sequences.
pub fn ledger_lag(
    root: &Path,
    (durability, ack_spin): (DurabilityArg, Option<u32>),
    load: Load,
) -> Result<(Outcome, Lag)> {
    let (driven, lag) = ledger_followed(root, System::Followed(durability, ack_spin), load)?;
    let lag = lag.context("a followed run measures its replica's lag")?;
    let timed = load.commands - load.pace().warm_up;
    let recorded = lag.time.len();
    ensure!(recorded == timed, "the replica's lag of {recorded} commands, not {timed}");
    Ok((outcome(&driven, None).0, lag))
}

/// The ledger run of [`ledger`], and the replica's lag when `system` has one.
fn ledger_followed(root: &Path, system: System, load: Load) -> Result<(Driven, Option<Lag>)> {
    let mut workload =
        ledger::workload::Workload::new(SEED, ACCOUNTS, CODES, ledger::workload::Mix::PAYMENTS, 1);
    let setup = workload.setup();
    let initial = || {
        Ledger::with_capacity(
            (ACCOUNTS + u64::from(CODES)) as usize,
            (ACCOUNTS + load.commands) as usize,
        )
    };
    let scratch = Scratch::new(root, "ledger")?;
    let (driven, ledger, lag) =
        run_system(&scratch.0, system, initial, setup, || workload.next_command(), load)?;
    if let Err(broken) = ledger.check_conservation() {
        bail!("the ledger on {system:?} broke conservation: {broken}");
    }
    Ok((driven, lag))
}

/// Runs the exchange workload's setup and then `load.commands` of its traffic on keel in the
/// `PageCache` tier.
pub fn exchange(root: &Path, load: Load) -> Result<(Outcome, Option<Latency>)> {
    let mut workload = exchange_workload();
    let setup = workload.setup();
    let scratch = Scratch::new(root, "exchange")?;
    let system = System::Keel(DurabilityArg::PageCache, TopologyArg::Compact);
    let initial = || Exchange::with_capacity(TRADERS as usize, 1 << 20);
    let (driven, exchange, _) =
        run_system(&scratch.0, system, initial, setup, || workload.next_command(), load)?;
    if let Err(broken) = exchange.check_invariants() {
        bail!("the exchange broke an invariant: {broken}");
    }
    Ok(outcome(&driven, load.rate))
}

/// The exchange workload applied straight to an `Exchange` on this thread, the commands made
/// beforehand: no engine, no journal, no rings, no gateway. The state machine's own ceiling,
/// beside what keel makes of it.
pub fn exchange_machine(commands: u64) -> Result<(Outcome, Option<Latency>)> {
    let applied =
        exchange::workload::apply_directly(exchange_workload(), TRADERS as usize, commands, 0);
    if let Err(broken) = applied.exchange.check_invariants() {
        bail!("the exchange broke an invariant: {broken}");
    }
    // Every command answers with at least one event: a run that made fewer did not apply them.
    if applied.events < commands {
        bail!("{commands} commands made only {} events", applied.events);
    }
    Ok((Outcome { elapsed: applied.elapsed, events: commands, sum: commands }, None))
}

/// The exchange workload of every exchange case (and of `examples/exchange_apply.rs`).
fn exchange_workload() -> exchange::workload::Workload {
    exchange::workload::Workload::new(SEED, TRADERS, SYMBOLS, exchange::workload::Mix::REALISTIC, 1)
}

/// Drives `setup` (unmeasured) and then `load.commands` from `next` through `system`, whose
/// state starts as `initial` makes it (a replica's too); returns what the traffic measured,
/// the final state, and the replica's lag when `system` has one (checked to have reached the
/// primary's state).
fn run_system<M>(
    data: &Path,
    system: System,
    initial: impl Fn() -> M,
    setup: Vec<M::Command>,
    next: impl FnMut() -> M::Command,
    load: Load,
) -> Result<(Driven, M, Option<Lag>)>
where
    M: StateMachine,
    M::Command: Clone,
    M::Event: Clone,
{
    let store = match system {
        System::Keel(durability, topology) => {
            let settings = (durability, topology, Replicas::None);
            return run_keel(data, settings, initial, setup, next, load);
        }
        System::Followed(durability, ack_spin) => {
            let settings = (durability, TopologyArg::Compact, Replicas::One { ack_spin });
            return run_keel(data, settings, initial, setup, next, load);
        }
        System::NoJournal => None,
        System::Sqlite { full } => Some(EventStore::open(&data.join("events.db"), full)?),
    };
    let (commands, worker_commands) = crossbeam_channel::bounded(RING_CAPACITY);
    let (worker_replies, replies) = crossbeam_channel::bounded(RING_CAPACITY / 64);
    let state = initial();
    let worker = std::thread::Builder::new()
        .name("bench-peer".into())
        .spawn(move || peer_worker(state, store, worker_commands, worker_replies))?;
    let mut gateway = Channels { commands, replies, next: 1, pending: Vec::new() };
    let driven = drive(&mut gateway, setup, next, load);
    drop(gateway);
    let state = worker.join().map_err(|_| anyhow::anyhow!("the peer's thread panicked"))?;
    Ok((driven?, state?, None))
}

/// [`run_system`] on keel in this tier and topology, followed (with `replicas`) by a
/// replica over loopback TCP in this process.
fn run_keel<M>(
    data: &Path,
    (durability, topology, replicas): (DurabilityArg, TopologyArg, Replicas),
    initial: impl Fn() -> M,
    setup: Vec<M::Command>,
    next: impl FnMut() -> M::Command,
    load: Load,
) -> Result<(Driven, M, Option<Lag>)>
where
    M: StateMachine,
    M::Command: Clone,
    M::Event: Clone,
{
    let options = EngineOptions { durability, topology, ..EngineOptions::default() };
    let replication = replicas.replication();
    let mut engine =
        options.open_replicating(data, initial(), SnapshotPolicy::default(), replication)?;
    let mut follower = match engine.replication_address() {
        Some(address) => {
            // The lag is recorded after the setup and the traffic's warm-up, at a fixed rate
            // only: at saturation a clock read per command on the replica's thread would slow
            // the run it measures.
            let warm_up = match load.rate {
                Some(_) => setup.len() as u64 + load.pace().warm_up,
                None => u64::MAX,
            };
            let root = data.parent().context("the run's directory has a parent")?;
            Some(Follower::attach(root, address, warm_up, initial())?)
        }
        None => None,
    };
    let mut output = engine.take_output_poller().context("the output poller")?;
    // One gateway thread publishes: the engine's sole publisher, as `ledger run` uses.
    let mut publisher = engine.sole_publisher()?;
    let mut gateway = Keel { publisher: &mut publisher, output: &mut output };
    let mut pace = load.pace();
    let warm_up = pace.warm_up;
    if follower.is_some() && load.rate.is_some() {
        // The replica's lag in sequences, sampled about every millisecond after the warm-up.
        pace.progress_every = Some(std::time::Duration::from_millis(1));
    }
    let sample = |answered: u64| {
        if let Some(follower) = follower.as_mut().filter(|_| answered >= warm_up) {
            follower.sample(engine.stats().journaled);
        }
    };
    let driven = drive_paced(&mut gateway, setup, next, load.commands, pace, sample)?;
    drop(publisher);
    drop(output);
    let (state, lag) = engine::shut_down(engine, follower)?;
    Ok((driven, state, lag))
}

/// The setup as fast as it goes, then the measured traffic.
fn drive<G: Gateway>(
    gateway: &mut G,
    setup: Vec<G::Command>,
    next: impl FnMut() -> G::Command,
    load: Load,
) -> Result<Driven> {
    drive_paced(gateway, setup, next, load.commands, load.pace(), |_| {})
}

/// [`drive`] with the traffic's pace given, and `progress` called as it says with the commands
/// of the traffic answered so far.
fn drive_paced<G: Gateway>(
    gateway: &mut G,
    setup: Vec<G::Command>,
    next: impl FnMut() -> G::Command,
    commands: u64,
    pace: Pace,
    progress: impl FnMut(u64),
) -> Result<Driven> {
    let count = setup.len() as u64;
    let mut setup = setup.into_iter();
    let next_setup = || setup.next().expect("one setup command per count");
    drive_gateway(gateway, next_setup, count, Pace::default(), |_, _| {}, |_| {})?;
    drive_gateway(gateway, next, commands, pace, |_, _| {}, progress)
}

/// One command's deliveries as the peer thread sends them back: its sequence, an event (none
/// for a command that emitted nothing), and whether it is the command's last.
type Reply<E> = (u64, Option<E>, bool);

/// The gateway's ends of a peer's two channels.
struct Channels<C, E> {
    commands: Sender<C>,
    replies: Receiver<Vec<Reply<E>>>,
    /// The next command's sequence: the peer numbers commands in the order it receives them,
    /// which is the order they were sent.
    next: u64,
    /// A batch of replies not yet handed out in full.
    pending: Vec<Reply<E>>,
}

impl<C: Clone, E> Gateway for Channels<C, E> {
    type Command = C;
    type Event = E;

    fn try_send(&mut self, command: &C) -> Result<Option<u64>> {
        match self.commands.try_send(command.clone()) {
            Ok(()) => {
                self.next += 1;
                Ok(Some(self.next - 1))
            }
            Err(TrySendError::Full(_)) => Ok(None),
            Err(TrySendError::Disconnected(_)) => bail!("the peer's thread stopped"),
        }
    }

    fn receive(&mut self, mut on_delivery: impl FnMut(Delivery<'_, E>)) -> Result<usize> {
        let mut delivered = 0;
        while delivered < 4096 {
            if self.pending.is_empty() {
                match self.replies.try_recv() {
                    Ok(batch) => self.pending = batch,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => bail!("the peer's thread stopped"),
                }
            }
            for (sequence, event, last) in &self.pending {
                on_delivery(Delivery { sequence: *sequence, event: event.as_ref(), last: *last });
            }
            delivered += self.pending.len();
            self.pending.clear();
        }
        Ok(delivered)
    }
}

/// The peer's thread: takes every command waiting (at least one), journals the batch in the
/// event store when there is one, applies each command, sends the batch's events back; until
/// the gateway hangs up. Returns the final state.
fn peer_worker<M: StateMachine>(
    mut state: M,
    mut store: Option<EventStore>,
    commands: Receiver<M::Command>,
    replies: Sender<Vec<Reply<M::Event>>>,
) -> Result<M>
where
    M::Event: Clone,
{
    let mut batch = Vec::new();
    let mut output = Output::new();
    let mut sequence = 0u64;
    let mut timestamp_ns = 0u64;
    while let Ok(first) = commands.recv() {
        batch.clear();
        batch.push(first);
        while let Ok(command) = commands.try_recv() {
            batch.push(command);
        }
        // The sequencing side's clock, non-decreasing, as keel's engine assigns it.
        timestamp_ns = timestamp_ns.max(
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos() as u64),
        );
        if let Some(store) = &mut store {
            store.append(sequence + 1, timestamp_ns, &batch)?;
        }
        let mut reply = Vec::with_capacity(batch.len());
        for command in &batch {
            sequence += 1;
            output.clear();
            state.apply(&Context { sequence, timestamp_ns }, command, &mut output);
            let events = output.events();
            if events.is_empty() {
                reply.push((sequence, None, true));
            }
            for (index, event) in events.iter().enumerate() {
                reply.push((sequence, Some(event.clone()), index + 1 == events.len()));
            }
        }
        if replies.send(reply).is_err() {
            break;
        }
    }
    Ok(state)
}

/// An append-only event store on SQLite: one table, one transaction per batch.
struct EventStore {
    connection: rusqlite::Connection,
    buffer: Vec<u8>,
}

impl EventStore {
    fn open(path: &Path, full: bool) -> Result<Self> {
        let connection = rusqlite::Connection::open(path)
            .with_context(|| format!("opening SQLite on {}", path.display()))?;
        let synchronous = if full { "FULL" } else { "NORMAL" };
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", synchronous)?;
        connection.execute_batch(
            "CREATE TABLE events (
                 sequence INTEGER PRIMARY KEY,
                 timestamp INTEGER NOT NULL,
                 command BLOB NOT NULL
             )",
        )?;
        let mode: String = connection.pragma_query_value(None, "journal_mode", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!("SQLite refused WAL mode on {} (it is in {mode} mode)", path.display());
        }
        Ok(Self { connection, buffer: Vec::new() })
    }

    /// Appends `batch`, numbered from `first`, in one transaction.
    fn append<C: serde::Serialize>(
        &mut self,
        first: u64,
        timestamp_ns: u64,
        batch: &[C],
    ) -> Result<()> {
        let transaction = self.connection.transaction()?;
        {
            let mut insert =
                transaction.prepare_cached("INSERT INTO events VALUES (?1, ?2, ?3)")?;
            for (offset, command) in batch.iter().enumerate() {
                self.buffer.clear();
                Bincode.encode(command, &mut self.buffer)?;
                let sequence = (first + offset as u64) as i64;
                insert.execute(rusqlite::params![sequence, timestamp_ns as i64, &self.buffer])?;
            }
        }
        transaction.commit().context("committing a batch to SQLite")
    }
}
