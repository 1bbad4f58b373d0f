//! The engine end to end: a trivial state machine (add to a slot of a `Vec`), every topology in
//! every tier, at saturation and at fixed offered rates (open loop); and in the same run the
//! ceilings without a journal: keel's bare ring feeding the same state machine, and the
//! disruptor crate's equivalent graph.
//!
//! Waits are `Yielding` everywhere: on two cores the producer, the engine thread and the
//! journaller (pipelined) can be more threads than cores. The latency runs receive the events
//! on the sending thread (an output poller, the gateway shape), so the compact topology runs
//! on two threads; the pipelined one needs three, one more than this machine's cores.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context as _, Result};
use hdrhistogram::Histogram;
use keel_engine::{
    Context, CowVec, Durability, Engine, EngineBuilder, EngineError, Output, Publish, Replica,
    Replication, StateMachine, Topology, Wait,
};
use serde::{Deserialize, Serialize};

use crate::report::Latency;
use crate::ring::{isolated, Outcome};
use crate::scratch::Scratch;

/// Slots of the state machine's `Vec`.
const SLOTS: usize = 1024;

/// The benchmark's state machine: adds each command's amount to one slot of its values (a
/// `Vec`, or a [`CowVec`] for the snapshot case that compares them), and emits a timed
/// command's send time (for the latency runs; a replica's lag is taken from its `Context`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Slots<V: Values = Vec<u64>> {
    values: V,
}

impl Default for Slots {
    fn default() -> Self {
        Self { values: vec![0; SLOTS] }
    }
}

/// Where [`Slots`] keeps its values, and how it copies them for a snapshot.
pub trait Values: Clone + Serialize + serde::de::DeserializeOwned + Send + 'static {
    /// The slot for `index` (modulo the length).
    fn slot(&mut self, index: usize) -> &mut u64;
    /// The sum of the values.
    fn sum(&self) -> u64;
    /// A copy for a snapshot, given the previous snapshot's copy (handed back by the engine).
    fn copy_for_snapshot(&self, previous: Option<Self>) -> Self;
}

impl Values for Vec<u64> {
    #[inline]
    fn slot(&mut self, index: usize) -> &mut u64 {
        let length = self.len();
        &mut self[index % length]
    }

    fn sum(&self) -> u64 {
        self.iter().fold(0u64, |sum, value| sum.wrapping_add(*value))
    }

    /// Copies into the previous snapshot's `Vec`, already mapped, rather than a fresh one.
    fn copy_for_snapshot(&self, previous: Option<Self>) -> Self {
        match previous {
            Some(mut copy) => {
                copy.clone_from(self);
                copy
            }
            None => self.clone(),
        }
    }
}

impl Values for CowVec<u64> {
    #[inline]
    fn slot(&mut self, index: usize) -> &mut u64 {
        let length = self.len();
        self.get_mut(index % length).expect("an index modulo the length")
    }

    fn sum(&self) -> u64 {
        self.iter().fold(0u64, |sum, value| sum.wrapping_add(*value))
    }

    /// Shares every chunk: the writes after it copy the chunks they change.
    fn copy_for_snapshot(&self, _previous: Option<Self>) -> Self {
        self.clone()
    }
}

/// A command: which slot, how much, and when it was meant to be sent (ns from the run's start;
/// 0 at saturation).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Add {
    slot: u32,
    amount: u64,
    sent_ns: u64,
}

/// A timed command's event: when it was meant to be sent (ns from the run's start).
#[derive(Clone, Copy, Debug)]
pub struct Applied {
    sent_ns: u64,
}

impl<V: Values> StateMachine for Slots<V> {
    type Command = Add;
    type Event = Applied;

    #[inline]
    fn apply(&mut self, _: &Context, add: &Add, output: &mut Output<Applied>) {
        let slot = self.values.slot(add.slot as usize);
        *slot = slot.wrapping_add(add.amount);
        if add.sent_ns != 0 {
            output.emit(Applied { sent_ns: add.sent_ns });
        }
    }

    fn state_hash(&self) -> u64 {
        self.sum()
    }

    fn copy_for_snapshot(&self, previous: &mut Option<Self>) -> Self {
        let values = self.values.copy_for_snapshot(previous.take().map(|copy| copy.values));
        Self { values }
    }
}

impl<V: Values> Slots<V> {
    fn sum(&self) -> u64 {
        self.values.sum()
    }
}

fn add(value: u64) -> Add {
    Add { slot: (value % SLOTS as u64) as u32, amount: value, sent_ns: 0 }
}

/// Journal segments of 64 MiB: a run of millions of commands rolls a few times, with the
/// next segment allocated in the background meanwhile, as in production.
const SEGMENT_SIZE: u64 = 64 << 20;

/// The replication secret of the runs with a replica.
pub const SECRET: &[u8] = b"keel-bench";

/// Whether a run's engine serves one replica over loopback TCP (in this process), and how it
/// waits for the replica's acknowledgements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicas {
    None,
    /// One replica; `ack_spin`: the engine's rounds of spinning for an acknowledgement
    /// ([`Replication::ack_spin`]), or its default.
    One {
        ack_spin: Option<u32>,
    },
}

impl Replicas {
    /// One replica, the engine waiting for acknowledgements in its default way.
    pub const ONE: Self = Self::One { ack_spin: None };

    fn any(self) -> bool {
        self != Self::None
    }

    /// The replication of an engine with these replicas.
    pub fn replication(self) -> Option<Replication> {
        match self {
            Self::None => None,
            Self::One { ack_spin: None } => Some(Replication::new(SECRET)),
            Self::One { ack_spin: Some(rounds) } => Some(Replication::new(SECRET).ack_spin(rounds)),
        }
    }
}

/// An engine on `directory` in `durability`, serving `replicas`, with a checkpoint after
/// every `checkpoint_every` commands (0: none).
fn builder(
    directory: &std::path::Path,
    topology: Topology,
    durability: Durability,
    replicas: Replicas,
    checkpoint_every: u64,
) -> EngineBuilder<Slots> {
    let builder = Engine::builder(directory)
        .checkpoints(checkpoint_every)
        .durability(durability)
        .topology(topology)
        .wait(Wait::Yielding)
        .ring_capacity(64 * 1024)
        .output_capacity(64 * 1024)
        .segment_size(SEGMENT_SIZE);
    match replicas.replication() {
        Some(replication) => builder.replicate(replication),
        None => builder,
    }
}

/// A replica over loopback TCP, in this process, of the engine serving replicas at `address`;
/// it records, for each command after `warm_up`, its lag: from the primary journaling it (the
/// command's timestamp) to the replica applying it (both clocks are this host's). The gateway
/// also samples its lag in sequences ([`sample`](Self::sample)).
pub struct Follower<M: StateMachine> {
    replica: Replica<M>,
    lag: Arc<Mutex<Histogram<u64>>>,
    sequences: Histogram<u64>,
    _scratch: Scratch,
}

/// A replica's lag over a run: per command, nanoseconds from the primary journaling it to the
/// replica applying it; and in samples taken by the gateway, how many sequences the replica's
/// last applied was behind the primary's last journaled.
pub struct Lag {
    pub time: Histogram<u64>,
    pub sequences: Histogram<u64>,
}

impl Lag {
    /// The lag in sequences, as a case's figures: its median, 99th percentile and maximum.
    pub fn sequence_details(&self) -> Result<BTreeMap<&'static str, f64>> {
        ensure!(!self.sequences.is_empty(), "the replica's lag in sequences was never sampled");
        let at = |quantile| self.sequences.value_at_quantile(quantile) as f64;
        Ok([
            ("lag_seq_p50", at(0.5)),
            ("lag_seq_p99", at(0.99)),
            ("lag_seq_max", self.sequences.max() as f64),
        ]
        .into_iter()
        .collect())
    }
}

impl<M: StateMachine> Follower<M> {
    pub fn attach(
        root: &std::path::Path,
        address: std::net::SocketAddr,
        warm_up: u64,
        initial: M,
    ) -> Result<Self> {
        let scratch = Scratch::new(root, "replica")?;
        let lag = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?));
        let record = Arc::clone(&lag);
        let replica = Replica::remote(address.to_string(), SECRET, &scratch.0)
            .segment_size(SEGMENT_SIZE)
            .on_events(move |context: &Context, _: &[M::Event]| {
                if context.sequence <= warm_up {
                    return;
                }
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |since| since.as_nanos() as u64);
                let mut lag = record.lock().expect("the lag histogram");
                let _ = lag.record(now.saturating_sub(context.timestamp_ns).max(1));
            })
            .open(initial)?;
        Ok(Self { replica, lag, sequences: Histogram::new(3)?, _scratch: scratch })
    }

    /// Records how far the replica is behind the primary, whose journal is at `journaled`.
    pub fn sample(&mut self, journaled: u64) {
        let behind = journaled.saturating_sub(self.replica.stats().applied);
        let _ = self.sequences.record(behind);
    }

    /// Waits for the replica to apply `sequence`, stops it, and returns its state and lag.
    fn finish(self, sequence: u64) -> Result<(M, Lag)> {
        ensure!(
            self.replica.wait_for(sequence, Duration::from_secs(60))?,
            "the replica never reached {sequence}"
        );
        let state = self.replica.stop()?;
        let time = self.lag.lock().expect("the lag histogram").clone();
        Ok((state, Lag { time, sequences: self.sequences }))
    }
}

/// Shuts `engine` down once its replica, when it has one, holds everything the engine
/// journaled, and checks that the replica reached the engine's state. Returns the engine's
/// final state and the replica's lag. Every publisher must be gone, and every command answered.
pub fn shut_down<M: StateMachine>(
    engine: Engine<M>,
    follower: Option<Follower<M>>,
) -> Result<(M, Option<Lag>)> {
    // The replica is streamed by the running engine: it catches up before the engine stops.
    let followed = match follower {
        Some(follower) => Some(follower.finish(engine.stats().journaled)?),
        None => None,
    };
    let state = engine.shutdown().context("shutting the engine down")?;
    let Some((replica, lag)) = followed else { return Ok((state, None)) };
    let (primary_hash, replica_hash) = (state.state_hash(), replica.state_hash());
    ensure!(
        primary_hash == replica_hash,
        "the replica's state hash {replica_hash:#018x} is not the primary's {primary_hash:#018x}"
    );
    Ok((state, Some(lag)))
}

/// Publishes `commands` commands one at a time as fast as the engine takes them; the time is
/// from the first publish to the last command applied. `replicas`: with a replica over
/// loopback TCP (in the `Replicated` tier, every command waits for its acknowledgement).
/// `sole`: through the engine's [`SolePublisher`](keel_engine::SolePublisher), as an
/// application with one publishing thread does; otherwise through a shared `Publisher`.
/// `checkpoint_every`: a checkpoint record (the state's hash) after every so many commands, 0
/// for none.
pub fn saturation(
    root: &std::path::Path,
    topology: Topology,
    durability: Durability,
    replicas: Replicas,
    sole: bool,
    checkpoint_every: u64,
    commands: u64,
) -> Result<Outcome> {
    /// Publishes, waits for the last command to be applied, and returns the time; the
    /// publisher is dropped after, by the caller.
    fn measure(
        engine: &Engine<Slots>,
        publisher: &mut impl Publish<Slots>,
        commands: u64,
    ) -> Result<Duration> {
        let started = Instant::now();
        for value in 1..=commands {
            publisher.publish(add(value))?;
        }
        while engine.stats().applied < commands {
            std::thread::yield_now();
        }
        Ok(started.elapsed())
    }
    let scratch = Scratch::new(root, "saturation")?;
    isolated(|| {
        let mut engine = builder(&scratch.0, topology, durability, replicas, checkpoint_every)
            .open(Slots::default())?;
        let follower = follow(root, &engine, replicas, commands)?;
        let elapsed = if sole {
            let mut publisher = engine.sole_publisher()?;
            measure(&engine, &mut publisher, commands)?
        } else {
            measure(&engine, &mut engine.publisher(), commands)?
        };
        let (state, _) = shut_down(engine, follower)?;
        Ok(Outcome { elapsed, events: commands, sum: state.sum() })
    })
}

/// A replica of `engine` when it has `replicas`, its lag recorded after `warm_up`.
fn follow(
    root: &std::path::Path,
    engine: &Engine<Slots>,
    replicas: Replicas,
    warm_up: u64,
) -> Result<Option<Follower<Slots>>> {
    if !replicas.any() {
        return Ok(None);
    }
    let address = engine.replication_address().context("the engine replicates")?;
    Ok(Some(Follower::attach(root, address, warm_up, Slots::default())?))
}

/// The same commands through keel's bare ring into the same state machine: no journal, no
/// engine; the ceiling the engine's overhead is measured against.
pub fn bare_ring(commands: u64) -> Result<Outcome> {
    isolated(|| {
        let sum = Arc::new(AtomicU64::new(0));
        let total = Arc::clone(&sum);
        let mut builder = keel_ring::RingBuilder::single_producer(
            64 * 1024,
            || add(0),
            keel_ring::Yielding::default(),
        )?;
        let mut machine = Slots::<Vec<u64>>::default();
        let mut output = Output::new();
        let (_, processor) =
            builder.processor("apply", &[], move |command: &Add, sequence, end| {
                let context = Context { sequence, timestamp_ns: 0 };
                output.clear();
                machine.apply(&context, command, &mut output);
                if end {
                    total.store(machine.sum(), Ordering::Release);
                }
            })?;
        let mut producer = builder.build()?;
        let started = Instant::now();
        for value in 1..=commands {
            producer.publish(|slot, _| *slot = add(value))?;
        }
        drop(producer);
        drop(processor.join()?);
        Ok(Outcome {
            elapsed: started.elapsed(),
            events: commands,
            sum: sum.load(Ordering::Acquire),
        })
    })
}

/// The disruptor crate's equivalent graph (one producer, one processor applying the same state
/// machine), without a journal.
pub fn disruptor(commands: u64) -> Result<Outcome> {
    use disruptor::Producer as _;
    isolated(|| {
        let sum = Arc::new(AtomicU64::new(0));
        let total = Arc::clone(&sum);
        let mut machine = Slots::<Vec<u64>>::default();
        let mut output = Output::new();
        let mut producer = disruptor::build_single_producer(
            64 * 1024,
            || add(0),
            disruptor::BusySpinWithSpinLoopHint,
        )
        .handle_events_with(move |command: &Add, sequence: i64, end: bool| {
            let context = Context { sequence: sequence as u64 + 1, timestamp_ns: 0 };
            output.clear();
            machine.apply(&context, command, &mut output);
            if end {
                total.store(machine.sum(), Ordering::Release);
            }
        })
        .build();
        let started = Instant::now();
        for value in 1..=commands {
            producer.publish(|slot| *slot = add(value));
        }
        drop(producer);
        Ok(Outcome {
            elapsed: started.elapsed(),
            events: commands,
            sum: sum.load(Ordering::Acquire),
        })
    })
}

/// The sum every run of `commands` must reach.
pub fn expected_sum(commands: u64) -> u64 {
    (1..=commands).fold(0u64, |sum, value| sum.wrapping_add(value))
}

/// Commands between two samples of a replica's lag in sequences (a millisecond at 1 M/s).
const LAG_SAMPLE_EVERY: u64 = 1024;

/// An open-loop run's shape: the engine's topology and tier, whether a replica follows it over
/// loopback TCP (in this process), and the offered rate for how long.
#[derive(Clone, Copy, Debug)]
pub struct Offered {
    pub topology: Topology,
    pub durability: Durability,
    pub replicas: Replicas,
    /// Commands per second.
    pub rate: u64,
    pub duration: Duration,
}

impl Offered {
    /// The commands the run sends.
    pub fn commands(&self) -> u64 {
        (self.rate as f64 * self.duration.as_secs_f64()) as u64
    }
}

/// Open loop at `offered.rate` commands per second for its duration: each command's send time
/// is fixed in advance (the i-th at `i / rate`), and its latency runs from that intended time
/// to the moment its event is received, so a stall delays every command behind it in the
/// figures too (coordinated omission corrected). The sender is a gateway thread: it publishes
/// and, between sends, polls the engine's output (an output poller), so the run takes two
/// threads in the compact topology, which is what two cores hold. The first tenth of the run is
/// warm-up and is not recorded. Returns the outcome, the percentiles and the histogram, and
/// with a replica the replica's lag.
pub fn open_loop(root: &std::path::Path, offered: Offered) -> Result<OpenLoop> {
    let Offered { topology, durability, replicas, rate, .. } = offered;
    let scratch = Scratch::new(root, "latency")?;
    let commands = offered.commands();
    let warm_up = commands / 10;
    isolated(|| {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
        let mut engine = builder(&scratch.0, topology, durability, replicas, 0)
            .output_poller()
            .open(Slots::default())?;
        let mut follower = follow(root, &engine, replicas, warm_up)?;
        let mut output = engine.take_output_poller().context("the output poller")?;
        // One gateway thread publishes: the engine's sole publisher.
        let mut publisher = engine.sole_publisher()?;
        let epoch = Instant::now();
        let mut received = 0u64;
        // Receives what is there; returns how many events came.
        let mut receive = |histogram: &mut Histogram<u64>| -> Result<u64> {
            let mut events = 0;
            output.poll(4096, |delivery| {
                let Some(&Applied { sent_ns, .. }) = delivery.event else { return };
                events += 1;
                if delivery.sequence > warm_up {
                    let now = epoch.elapsed().as_nanos() as u64;
                    let _ = histogram.record(now.saturating_sub(sent_ns).max(1));
                }
            })?;
            Ok(events)
        };
        let interval_ns = 1e9 / rate as f64;
        // Send times start a little after the epoch, never at 0 (0 means "not timed").
        let start_ns = 1_000;
        for index in 0..commands {
            let intended = start_ns + (index as f64 * interval_ns) as u64;
            while (epoch.elapsed().as_nanos() as u64) < intended {
                received += receive(&mut histogram)?;
            }
            let add =
                Add { slot: (index % SLOTS as u64) as u32, amount: index + 1, sent_ns: intended };
            // Never wait in `publish` while holding undelivered events: with the input ring
            // full and the output ring full, the engine and this thread would wait for each
            // other. A gateway that also reads the output publishes with `try_publish`.
            loop {
                match publisher.try_publish(add) {
                    Ok(_) => break,
                    Err(keel_engine::EngineError::Full) => received += receive(&mut histogram)?,
                    Err(error) => return Err(error.into()),
                }
            }
            if let Some(follower) = follower.as_mut().filter(|_| index >= warm_up) {
                if index % LAG_SAMPLE_EVERY == 0 {
                    follower.sample(engine.stats().journaled);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while received < commands {
            ensure!(Instant::now() < deadline, "the events of the latency run never all arrived");
            received += receive(&mut histogram)?;
        }
        let elapsed = epoch.elapsed();
        drop(publisher);
        let (state, lag) = shut_down(engine, follower)?;
        ensure!(
            histogram.len() == commands - warm_up,
            "recorded {} of {} latencies",
            histogram.len(),
            commands - warm_up
        );
        let outcome = Outcome { elapsed, events: commands, sum: state.sum() };
        let latency = Latency::from_histogram(&histogram);
        Ok(OpenLoop { outcome, latency, histogram, lag })
    })
    .context("open-loop latency run")
}

/// What an open-loop run measured.
pub struct OpenLoop {
    pub outcome: Outcome,
    /// The percentiles of `histogram`.
    pub latency: Latency,
    /// Each command's latency, from its intended send time to its event's arrival.
    #[allow(dead_code)] // Kept for the `.hgrm` files of issue 7.
    pub histogram: Histogram<u64>,
    /// The replica's lag, when the run had one.
    pub lag: Option<Lag>,
}

/// The engine of the journals that are replayed (recovery) or followed (a replica's catch-up):
/// `PageCache`, `Yielding` waits, a 64 Ki input ring, on `directory`.
fn replayable_engine(directory: &std::path::Path) -> Result<Engine<Slots>, EngineError> {
    Engine::builder(directory)
        .durability(Durability::PageCache)
        .wait(Wait::Yielding)
        .ring_capacity(64 * 1024)
        .segment_size(SEGMENT_SIZE)
        .open(Slots::default())
}

/// Journals `commands` commands (`add(1..=commands)`) in `directory` and stops the engine.
fn journal_adds(directory: &std::path::Path, commands: u64) -> Result<()> {
    let engine = replayable_engine(directory)?;
    let mut publisher = engine.publisher();
    for value in 1..=commands {
        publisher.publish(add(value))?;
    }
    drop(publisher);
    engine.shutdown()?;
    Ok(())
}

/// Recovery: an engine journals `commands` commands and stops; the time to open it again is
/// the snapshot-less replay of all of them, checksums verified (the outcome's rate is the
/// replay's: commands replayed per second of replay).
pub fn recovery(root: &std::path::Path, commands: u64) -> Result<Outcome> {
    let scratch = Scratch::new(root, "recovery")?;
    isolated(|| {
        journal_adds(&scratch.0, commands)?;
        let engine = replayable_engine(&scratch.0)?;
        let recovery = engine.recovery().clone();
        ensure!(recovery.replayed == commands, "replayed {} of {commands}", recovery.replayed);
        let state = engine.shutdown()?;
        let elapsed = Duration::from_secs_f64(recovery.replay_seconds);
        Ok(Outcome { elapsed, events: commands, sum: state.sum() })
    })
}

/// A replica catching up: a primary journals `commands` commands and stops, then a replica on
/// the same host follows its journal from the start (its own journal in the `PageCache` tier,
/// `Yielding` waits). The time is from opening the replica to its applying the last command:
/// the rate at which a replica reads, journals, decodes and applies, with no primary running
/// beside it (what bounds a replica's lag at high rates, and its catch-up after a restart).
pub fn replica_catch_up(root: &std::path::Path, commands: u64) -> Result<Outcome> {
    let primary = Scratch::new(root, "catch-up-primary")?;
    let own = Scratch::new(root, "catch-up-replica")?;
    isolated(|| {
        journal_adds(&primary.0, commands)?;
        let began = Instant::now();
        let replica = Replica::builder(&primary.0, &own.0)
            .wait(Wait::Yielding)
            .segment_size(SEGMENT_SIZE)
            .open(Slots::default())?;
        ensure!(
            replica.wait_for(commands, Duration::from_secs(120))?,
            "the replica never caught up to {commands}"
        );
        let elapsed = began.elapsed();
        let state = replica.stop()?;
        Ok(Outcome { elapsed, events: commands, sum: state.sum() })
    })
}

/// The engine thread's pause for a snapshot of a state of small entries, `values` (a `Vec` of
/// `u64`s, or a `CowVec` of them): the time its copy takes. Returns the pause and the sum for
/// the check.
pub fn snapshot_pause<V: Values>(root: &std::path::Path, values: V) -> Result<(Outcome, Latency)> {
    let scratch = Scratch::new(root, "snapshot")?;
    isolated(|| {
        let engine = Engine::builder(&scratch.0)
            .durability(Durability::PageCache)
            .wait(Wait::Yielding)
            .segment_size(SEGMENT_SIZE)
            .open(Slots { values })?;
        let mut publisher = engine.publisher();
        for value in 1..=1_000 {
            publisher.publish(add(value))?;
        }
        while engine.stats().applied < 1_000 {
            std::thread::yield_now();
        }
        // The first snapshot copies into fresh memory; the second into the first's copy,
        // handed back: the steady state, which is what is reported.
        for taken in 1..=2 {
            engine.snapshot();
            let deadline = Instant::now() + Duration::from_secs(60);
            while engine.stats().snapshots < taken {
                ensure!(Instant::now() < deadline, "the snapshot was never written");
                ensure!(
                    engine.stats().snapshot_error.is_none(),
                    "{:?}",
                    engine.stats().snapshot_error
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            if taken == 1 {
                // Let the snapshot thread hand the copy back.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let pause = engine.stats().snapshot_pause_last_ns;
        drop(publisher);
        let state = engine.shutdown()?;
        let mut histogram = Histogram::<u64>::new(3)?;
        histogram.record(pause.max(1))?;
        let latency = Latency::from_histogram(&histogram);
        Ok((
            Outcome { elapsed: Duration::from_nanos(pause.max(1)), events: 1, sum: state.sum() },
            latency,
        ))
    })
}

/// The machine's floor under the snapshot pause: the copy that [`Slots::copy_for_snapshot`]
/// makes, a `clone_from` of `entries` `u64`s into an earlier copy of the same length, timed
/// `copies` times without the engine around it. The engine's pause cannot be shorter than
/// this machine copies the state; what it adds is its own.
pub fn copy_floor(entries: usize, copies: usize) -> Result<(Outcome, Latency)> {
    isolated(|| {
        let state: Vec<u64> = (0..entries as u64).collect();
        let mut copy = state.clone();
        let mut histogram = Histogram::<u64>::new(3)?;
        let started = Instant::now();
        for _ in 0..copies {
            let began = Instant::now();
            copy.clone_from(&state);
            histogram.record((began.elapsed().as_nanos() as u64).max(1))?;
            ensure!(copy == state, "the copy differs");
        }
        let outcome = Outcome { elapsed: started.elapsed(), events: copies as u64, sum: 0 };
        Ok((outcome, Latency::from_histogram(&histogram)))
    })
}

/// Where a [`CowVec`]'s snapshot puts the copy it does not make: `rounds` times, a clone of
/// `entries` `u64`s (kept, as the snapshot thread keeps its copy while it writes), then one
/// write to each of its chunks, each of which copies its chunk. Each round's time is what the
/// first writes after a snapshot pay in all, spread over the commands that make them, set
/// against [`copy_floor`]'s whole copy.
pub fn copy_on_write_floor(entries: usize, rounds: usize) -> Result<(Outcome, Latency)> {
    isolated(|| {
        let mut state = CowVec::from_elem(0u64, entries);
        let mut histogram = Histogram::<u64>::new(3)?;
        let started = Instant::now();
        for round in 0..rounds {
            let snapshot = state.clone();
            let chunks = state.shared_chunks();
            let began = Instant::now();
            let mut index = 0;
            while index < entries {
                *state.get_mut(index).expect("in bounds") += 1;
                index += 4096;
            }
            histogram.record((began.elapsed().as_nanos() as u64).max(1))?;
            ensure!(state.shared_chunks() == 0, "{chunks} chunks shared, some not copied");
            // Each round adds 1 to one element of every chunk: the snapshot holds the rounds
            // before this one.
            let written = entries.div_ceil(4096) as u64;
            let sum = |values: &CowVec<u64>| values.iter().sum::<u64>();
            ensure!(sum(&snapshot) == round as u64 * written, "a snapshot changed");
            ensure!(sum(&state) == (round as u64 + 1) * written, "a write was lost");
        }
        let outcome = Outcome { elapsed: started.elapsed(), events: rounds as u64, sum: 0 };
        Ok((outcome, Latency::from_histogram(&histogram)))
    })
}

/// What a write costs in `values` (a `Vec` of `u64`s, or a `CowVec` whose chunks are its own,
/// so that no write copies): `writes` additions at indices from a seeded xorshift, as
/// [`Slots`] makes them. The `CowVec`'s extra is its check that the chunk is not shared.
pub fn write_cost<V: Values>(mut values: V, writes: u64) -> Result<Outcome> {
    isolated(|| {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let started = Instant::now();
        for amount in 1..=writes {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let slot = values.slot(state as usize);
            *slot = slot.wrapping_add(amount);
        }
        let elapsed = started.elapsed();
        Ok(Outcome { elapsed, events: writes, sum: values.sum() })
    })
}

/// The machine's rate for memory the process touches for the first time: `bytes` of fresh
/// anonymous memory, one byte written in each page (each write a page fault in which the kernel
/// finds a page and zeroes it). What every new page of a journal segment costs whoever touches
/// it first (the spare segment's thread), beside the machine's rate for writing memory that is
/// already there (the same bytes written again). Returns the first touch's outcome (pages) and,
/// as a second figure, the rewrite's time.
pub fn first_touch(bytes: usize) -> Result<(Outcome, Duration)> {
    const PAGE: usize = 4096;
    isolated(|| {
        let mut memory = memmap2::MmapMut::map_anon(bytes)?;
        let began = Instant::now();
        for page in memory.chunks_mut(PAGE) {
            page[0] = 1;
        }
        let touched = began.elapsed();
        let began = Instant::now();
        memory.fill(2);
        let rewritten = began.elapsed();
        let pages = memory.len().div_ceil(PAGE) as u64;
        ensure!(memory.iter().step_by(PAGE).all(|&byte| byte == 2), "the rewrite was lost");
        Ok((Outcome { elapsed: touched, events: pages, sum: 0 }, rewritten))
    })
}

/// The machine's own stalls, measured as the latency runs would see them: two threads spin on
/// two vCPUs (as the compact topology's gateway and engine thread do), and one of them reads
/// the clock in a loop for `duration` against a schedule of one "command" due every
/// microsecond, recording for each how late the loop got to it: the open-loop latency of doing
/// nothing at 1 M/s. A 3 ms stall counts 3 000 late samples, as in the latency runs. What the
/// engine's tail cannot go below on this machine.
pub fn hiccups(duration: Duration) -> Result<(Outcome, Latency)> {
    isolated(|| {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sibling_stop = Arc::clone(&stop);
        let sibling = std::thread::spawn(move || {
            while !sibling_stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
        let started = Instant::now();
        let end = duration.as_nanos() as u64;
        let mut due = 1_000u64;
        let mut samples = 0u64;
        while due <= end {
            let now = started.elapsed().as_nanos() as u64;
            while due <= now && due <= end {
                histogram.record((now - due).max(1))?;
                samples += 1;
                due += 1_000;
            }
        }
        stop.store(true, Ordering::Relaxed);
        sibling.join().map_err(|_| anyhow::anyhow!("the spinning sibling panicked"))?;
        let outcome = Outcome { elapsed: started.elapsed(), events: samples, sum: 0 };
        Ok((outcome, Latency::from_histogram(&histogram)))
    })
}
