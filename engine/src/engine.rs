//! The engine: its builder, its handle, and the thread that journals and applies.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use keel_journal::format::{Checkpoint, CHECKPOINT_VERSION, KIND_CHECKPOINT};
use keel_journal::storage::Storage;
use keel_journal::{
    Durability as JournalDurability, JournalOptions, JournalWriter, OpenReport, Repair, RepairPlan,
    SnapshotStore,
};
use keel_ring::{
    EventPoller, Interrupt, MultiProducerSequencer, ProcessorHandle, RingBuilder, RingControl,
    RingError, SingleProducer, SingleProducerSequencer,
};
use parking_lot::Mutex;

use crate::codec::{Bincode, Codec, CodecError};
use crate::config::{AnyWait, Durability, SnapshotPolicy, Topology, Wait};
use crate::error::{EngineError, Halt};
use crate::machine::{Context, Lookahead, Output, StateMachine};
use crate::numbering::Numbering;
use crate::publisher::{InputSlot, Publisher, SolePublisher};
use crate::recovery::{
    apply_guarded, load_snapshot, panic_message, replay, EventSink, ReplayTarget, Skipped, Start,
    KIND_COMMAND,
};
use crate::replicator::{AckWait, Replication, ReplicationStatus, Replicator};
use crate::responses::{Requester, Router, RouterHandler};
use crate::snapshots::Snapshots;
use crate::stats::{Counters, Stats};

/// An event as a subscriber sees it.
#[derive(Debug)]
pub struct Delivery<'a, E> {
    /// The sequence of the command that emitted it.
    pub sequence: u64,
    /// The event; `None` on the marker that ends a command which emitted no event.
    pub event: Option<&'a E>,
    /// Whether this is the last delivery for its command.
    pub last: bool,
}

/// An output ring slot.
#[derive(Debug)]
pub(crate) struct OutputSlot<E> {
    pub(crate) sequence: u64,
    pub(crate) event: Option<E>,
    pub(crate) last: bool,
}

impl<E> Default for OutputSlot<E> {
    fn default() -> Self {
        Self { sequence: 0, event: None, last: false }
    }
}

type Subscriber<E> = Box<dyn FnMut(Delivery<'_, E>) + Send>;
type OutputRing<E> = RingBuilder<OutputSlot<E>, SingleProducerSequencer, AnyWait>;
/// Starts the response router on the output ring; returns what joins it.
type RouterInstaller<E> =
    Box<dyn FnOnce(&mut OutputRing<E>) -> Result<Box<dyn FnOnce() + Send>, RingError> + Send>;
/// The router callers register with, and how to start it.
type RouterSetup<E> = (Arc<Router<E>>, RouterInstaller<E>);
type DeliverFn<E> = Box<dyn FnMut(&OutputSlot<E>, u64, bool) + Send>;
type ReplaySink<E> = Box<dyn FnMut(&Context, &[E]) + Send>;

/// A subscriber polled by its owner: see [`EngineBuilder::output_poller`].
pub struct OutputPoller<E> {
    poller: EventPoller<OutputSlot<E>, SingleProducerSequencer, AnyWait>,
    shared: Arc<Shared>,
}

impl<E: Send + Sync + 'static> OutputPoller<E> {
    /// Hands every delivery available now (at most `limit`) to `handler`, without waiting;
    /// returns how many. `Err(Closed)` once the engine has stopped and everything was
    /// delivered (`Halted` with the reason if it stopped on a failure).
    pub fn poll(
        &mut self,
        limit: usize,
        mut handler: impl FnMut(Delivery<'_, E>),
    ) -> Result<usize, EngineError> {
        let delivered = self.poller.poll_each(limit, |slot, _, _| {
            handler(Delivery {
                sequence: slot.sequence,
                event: slot.event.as_ref(),
                last: slot.last,
            })
        });
        delivered.map_err(|_| match self.shared.halted() {
            Some(halt) if halt != Halt::Requested => EngineError::Halted(halt),
            _ => EngineError::Closed,
        })
    }
}

impl<E> std::fmt::Debug for OutputPoller<E> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("OutputPoller").finish_non_exhaustive()
    }
}

/// What recovery found and did when the engine opened.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// What opening the journal did (a torn tail truncated, a spare renamed); `None` in the
    /// `Memory` tier.
    pub journal: Option<OpenReport>,
    /// The truncation that `stop_before` asked for, if it cut anything.
    pub stopped_before: Option<RepairPlan>,
    /// The snapshot loaded, with its sequence.
    pub snapshot: Option<(PathBuf, u64)>,
    /// Newer snapshots passed over, each with the reason.
    pub skipped_snapshots: Vec<Skipped>,
    /// Commands replayed after the snapshot.
    pub replayed: u64,
    /// Seconds the replay took.
    pub replay_seconds: f64,
    /// The last sequence the engine holds: new commands continue after it.
    pub last_sequence: u64,
    /// The state's hash after recovery.
    pub state_hash: u64,
}

/// What the engine thread and the handles share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The first failure: the engine stopped.
    halt: Mutex<Option<Halt>>,
    pub(crate) counters: Counters,
    pub(crate) snapshot_requested: AtomicBool,
    /// Set by the pipelined journaller before it releases a batch it could not make durable.
    journal_failed: AtomicBool,
    /// The pipelined topology's hand-over of a checkpoint: the sequence the engine thread
    /// applied last before a checkpoint position, and the state's hash after it.
    checkpoint: Mutex<(u64, u64)>,
}

impl Shared {
    /// Records the first failure; later ones are consequences.
    pub(crate) fn stop(&self, halt: Halt) {
        let mut first = self.halt.lock();
        if first.is_none() {
            *first = Some(halt);
        }
    }

    pub(crate) fn halted(&self) -> Option<Halt> {
        self.halt.lock().clone()
    }

    /// The engine's error for a ring's.
    pub(crate) fn ring_error(&self, error: RingError) -> EngineError {
        match error {
            RingError::Full => EngineError::Full,
            RingError::Halted => match self.halted() {
                Some(halt) => EngineError::Halted(halt),
                None => EngineError::Closed,
            },
            RingError::InvalidBatch { size, capacity } => EngineError::Configuration(format!(
                "a batch of {size} commands does not fit a ring of {capacity}"
            )),
            other => EngineError::Configuration(other.to_string()),
        }
    }
}

/// Configures and opens an [`Engine`].
pub struct EngineBuilder<M: StateMachine, C: Codec = Bincode> {
    directory: PathBuf,
    codec: C,
    durability: Durability,
    topology: Topology,
    wait: Wait,
    ring_capacity: usize,
    output_capacity: usize,
    segment_size: u64,
    snapshots: SnapshotPolicy,
    checkpoint_every: Option<u64>,
    replication: Option<Replication>,
    stop_before: Option<u64>,
    subscribers: Vec<(String, Subscriber<M::Event>)>,
    output_pollers: usize,
    storage: Option<Arc<dyn Storage>>,
    clock: Clock,
    replay_sink: Option<ReplaySink<M::Event>>,
    progress: Option<Box<dyn FnMut(u64) + Send>>,
    router: Option<RouterSetup<M::Event>>,
}

impl<M: StateMachine, C: Codec> std::fmt::Debug for EngineBuilder<M, C> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EngineBuilder")
            .field("directory", &self.directory)
            .field("durability", &self.durability)
            .field("topology", &self.topology)
            .field("wait", &self.wait)
            .field("ring_capacity", &self.ring_capacity)
            .field("snapshots", &self.snapshots)
            .field("checkpoint_every", &self.checkpoint_every)
            .field("replication", &self.replication)
            .field("stop_before", &self.stop_before)
            .field("subscribers", &self.subscribers.len())
            .finish()
    }
}

impl<M: StateMachine> Engine<M, Bincode> {
    /// A builder for an engine keeping its journal and snapshots in `directory`, with the
    /// defaults: `PageCache` tier, `Compact` topology, `Yielding` waits, a ring of 65 536
    /// commands, 256 MiB segments, no automatic snapshots, bincode.
    pub fn builder(directory: impl AsRef<Path>) -> EngineBuilder<M, Bincode> {
        EngineBuilder {
            directory: directory.as_ref().to_owned(),
            codec: Bincode,
            durability: Durability::default(),
            topology: Topology::default(),
            wait: Wait::default(),
            ring_capacity: 1 << 16,
            output_capacity: 1 << 16,
            segment_size: keel_journal::DEFAULT_SEGMENT_SIZE,
            snapshots: SnapshotPolicy::default(),
            checkpoint_every: None,
            replication: None,
            stop_before: None,
            subscribers: Vec::new(),
            output_pollers: 0,
            storage: None,
            clock: Arc::new(wall_clock_ns),
            replay_sink: None,
            progress: None,
            router: None,
        }
    }
}

impl<M: StateMachine, C: Codec> EngineBuilder<M, C> {
    /// The durability tier.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The topology.
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology = topology;
        self
    }

    /// How the engine's threads wait for work and producers for room.
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// The input ring's capacity in commands (a power of two); also the largest batch.
    pub fn ring_capacity(mut self, capacity: usize) -> Self {
        self.ring_capacity = capacity;
        self
    }

    /// The output ring's capacity in events (a power of two).
    pub fn output_capacity(mut self, capacity: usize) -> Self {
        self.output_capacity = capacity;
        self
    }

    /// The size of new journal segments.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// The file operations under the journal writer: the real file system unless a test
    /// injects faults (`keel_journal::storage::FaultyStorage`).
    pub fn journal_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Where command timestamps come from, in nanoseconds since the Unix epoch: the wall clock
    /// unless set. A deterministic simulation or a test sets its own, so that the timestamps
    /// `apply` sees (and so expiries and the state hash) are a function of its inputs. Read once
    /// per batch on the sequencing side; the engine keeps timestamps non-decreasing whatever it
    /// returns, across restarts too.
    pub fn clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// When to take snapshots (besides [`Engine::snapshot`]).
    pub fn snapshots(mut self, policy: SnapshotPolicy) -> Self {
        self.snapshots = policy;
        self
    }

    /// Writes a checkpoint record into the journal after every `commands` commands: the state
    /// hash at that sequence, which every replay of the journal and every replica compares with
    /// its own, halting with [`Halt::Diverged`] at the first that differs. So non-determinism
    /// in `apply` is caught by the next checkpoint after it, by replay alone. The checkpoints
    /// take journal sequences (every `commands + 1`-th), so with them a command's sequence
    /// skips the checkpoints'. Computing the hash pauses the engine thread for as long as
    /// [`StateMachine::state_hash`] takes; keep it cheap (its documentation says how a growing
    /// state can) or the interval long. Off by default, and in the `Memory` tier, which has no
    /// journal.
    pub fn checkpoints(mut self, commands: u64) -> Self {
        self.checkpoint_every = Some(commands).filter(|&commands| commands > 0);
        self
    }

    /// Serves replicas over TCP ([`Replica::remote`](crate::Replica::remote)): each is
    /// streamed the journal from where it stands, live. In the `Replicated` tier the engine
    /// applies an input only once the quorum of replicas acknowledged it; in the others
    /// replication runs beside the engine and waits for no one.
    pub fn replicate(mut self, replication: Replication) -> Self {
        self.replication = Some(replication);
        self
    }

    /// Recovery stops before `sequence`: the journal is truncated after `sequence - 1` (what
    /// is cut goes to `dropped/`, see `keel journal repair`) before it is replayed. The way
    /// past a command whose `apply` panics on every replay.
    pub fn stop_before(mut self, sequence: u64) -> Self {
        self.stop_before = Some(sequence);
        self
    }

    /// Adds a subscriber: `handler` sees every event, in order, on a thread of its own
    /// (`keel-{name}`), after the command that emitted it was applied. Each command's events
    /// end with a delivery flagged `last` (a command without events has one delivery, with no
    /// event).
    pub fn subscriber(
        mut self,
        name: &str,
        handler: impl FnMut(Delivery<'_, M::Event>) + Send + 'static,
    ) -> Self {
        self.subscribers.push((name.to_owned(), Box::new(handler)));
        self
    }

    /// Adds a subscriber that the application polls on a thread of its own choosing (take it
    /// with [`Engine::take_output_poller`]): a gateway thread that publishes requests and
    /// reads the events between them needs no thread more. An output poller that is not
    /// polled stops the engine once the output ring is full.
    pub fn output_poller(mut self) -> Self {
        self.output_pollers += 1;
        self
    }

    /// Enables [`Engine::requester`]: callers that publish a command and wait for its events.
    /// A router thread (`keel-responses`) reads the output ring and hands each waited-for
    /// command's events to its caller.
    pub fn responses(mut self) -> Self
    where
        M::Event: Clone,
    {
        let router = Arc::new(Router::new());
        let handler = RouterHandler { router: Arc::clone(&router) };
        let install: RouterInstaller<M::Event> = Box::new(move |ring| {
            let (_, processor) = ring.processor("responses", &[], handler)?;
            Ok(Box::new(move || {
                let _ = processor.join();
            }))
        });
        self.router = Some((router, install));
        self
    }

    /// Receives the events that recovery's replay recomputes, with their command's context
    /// (its sequence and journaled timestamp, as `apply` saw them), so that projections can
    /// rebuild (by default they are discarded).
    pub fn on_replay(mut self, sink: impl FnMut(&Context, &[M::Event]) + Send + 'static) -> Self {
        self.replay_sink = Some(Box::new(sink));
        self
    }

    /// Called during recovery with the number of commands replayed so far.
    pub fn on_replay_progress(mut self, progress: impl FnMut(u64) + Send + 'static) -> Self {
        self.progress = Some(Box::new(progress));
        self
    }

    /// Another codec for commands and snapshots.
    pub fn codec<D: Codec>(self, codec: D) -> EngineBuilder<M, D> {
        EngineBuilder {
            directory: self.directory,
            codec,
            durability: self.durability,
            topology: self.topology,
            wait: self.wait,
            ring_capacity: self.ring_capacity,
            output_capacity: self.output_capacity,
            segment_size: self.segment_size,
            snapshots: self.snapshots,
            checkpoint_every: self.checkpoint_every,
            replication: self.replication,
            stop_before: self.stop_before,
            subscribers: self.subscribers,
            output_pollers: self.output_pollers,
            storage: self.storage,
            clock: self.clock,
            replay_sink: self.replay_sink,
            progress: self.progress,
            router: self.router,
        }
    }

    /// Opens the engine: recovers the state from the directory's newest valid snapshot and the
    /// journal after it (or starts from `initial` when there is none), then starts the engine
    /// thread. In the `Memory` tier nothing is read or written.
    pub fn open(mut self, initial: M) -> Result<Engine<M, C>, EngineError> {
        if !self.ring_capacity.is_power_of_two() || !self.output_capacity.is_power_of_two() {
            return Err(EngineError::Configuration(format!(
                "ring capacities must be powers of two (input {}, output {})",
                self.ring_capacity, self.output_capacity
            )));
        }
        match (&self.replication, self.durability) {
            (None, Durability::Replicated) => {
                return Err(EngineError::Configuration(
                    "the Replicated tier needs replicate(..): whom to replicate to".into(),
                ))
            }
            (Some(replication), Durability::Replicated) if replication.quorum == 0 => {
                return Err(EngineError::Configuration(
                    "the Replicated tier needs a quorum of at least one replica".into(),
                ))
            }
            (Some(_), Durability::Memory) => {
                return Err(EngineError::Configuration(
                    "the Memory tier has no journal to replicate".into(),
                ))
            }
            _ => {}
        }
        let shared = Arc::new(Shared::default());
        let (machine, journal, report) = self.recover(initial)?;
        let base = report.last_sequence;
        let numbering = Numbering::new(
            base,
            self.checkpoint_every.filter(|_| self.durability != Durability::Memory),
        );
        // Timestamps never decrease, across restarts too, whatever the wall clock does.
        let last_timestamp_ns = journal.as_ref().map_or(0, JournalWriter::last_timestamp_ns);
        Counters::set(&shared.counters.applied, base);
        let replicator = match (&self.replication, journal.as_ref()) {
            (Some(replication), Some(journal)) => Some(Arc::new(Replicator::start(
                &self.directory,
                journal.journal_id(),
                journal.epoch(),
                base,
                self.snapshots.keep,
                replication,
            )?)),
            _ => None,
        };
        // The tier the engine waits for: replicas' acknowledgements, or none.
        let replicated = replicator
            .as_ref()
            .filter(|_| self.durability == Durability::Replicated)
            .map(Arc::clone);
        Counters::set(&shared.counters.durable, base);
        Counters::set(&shared.counters.journaled, base);

        // The output ring and its subscribers, when there are any.
        let mut subscribers = Vec::new();
        let mut joiners: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
        let (router, install_router) = match self.router.take() {
            Some((router, install)) => (Some(router), Some(install)),
            None => (None, None),
        };
        let mut output_pollers = Vec::new();
        let events = if self.subscribers.is_empty()
            && install_router.is_none()
            && self.output_pollers == 0
        {
            None
        } else {
            let mut ring = RingBuilder::single_producer(
                self.output_capacity,
                OutputSlot::default,
                AnyWait::from(self.wait),
            )
            .map_err(|error| shared.ring_error(error))?;
            for (name, mut handler) in self.subscribers.drain(..) {
                let deliver: DeliverFn<M::Event> =
                    Box::new(move |slot: &OutputSlot<M::Event>, _: u64, _: bool| {
                        handler(Delivery {
                            sequence: slot.sequence,
                            event: slot.event.as_ref(),
                            last: slot.last,
                        })
                    });
                let (_, processor) = ring
                    .processor(&name, &[], deliver)
                    .map_err(|error| spawn_error(&name, error))?;
                subscribers.push(processor);
            }
            for _ in 0..self.output_pollers {
                let (_, poller) = ring.poller(&[]).map_err(|error| shared.ring_error(error))?;
                output_pollers.push(OutputPoller { poller, shared: Arc::clone(&shared) });
            }
            if let Some(install) = install_router {
                joiners.push(install(&mut ring).map_err(|error| spawn_error("responses", error))?);
            }
            Some(ring.build().map_err(|error| shared.ring_error(error))?)
        };

        let mut input = RingBuilder::multi_producer(
            self.ring_capacity,
            InputSlot::default,
            AnyWait::from(self.wait),
        )
        .map_err(|error| shared.ring_error(error))?;
        let ring_error = |error| shared.ring_error(error);
        let (poller, journaller) = match self.topology {
            Topology::Compact => (input.poller(&[]).map_err(ring_error)?.1, None),
            Topology::Pipelined => {
                let (journalled, journaller) = input.poller(&[]).map_err(ring_error)?;
                let (_, poller) = input.poller(&[journalled]).map_err(ring_error)?;
                (poller, Some(journaller))
            }
        };
        let input_control = input.control();
        let processor_control = input.control();
        let producer = input.build().map_err(|error| shared.ring_error(error))?;

        let snapshots = match self.durability {
            Durability::Memory => Snapshots::none(),
            _ => Snapshots::start(
                &self.directory,
                &[],
                self.codec.clone(),
                Arc::clone(&shared),
                self.snapshots,
                base,
                None,
            )?,
        };
        let topology = self.topology;
        // Pipelined: the journal belongs to the journaller's thread.
        let (journal, journaller_journal) = match topology {
            Topology::Compact => (journal, None),
            Topology::Pipelined => (None, journal),
        };
        if let Some(journaller) = journaller {
            let encoder = CommandEncoder::new(self.codec.clone());
            let shared = Arc::clone(&shared);
            let limit = self.ring_capacity;
            let clock = Arc::clone(&self.clock);
            let replication =
                Replicating { replicator: replicator.clone(), replicated: replicated.clone() };
            let thread = std::thread::Builder::new()
                .name("keel-journaller".into())
                .spawn(move || {
                    run_journaller::<M, C>(
                        journaller,
                        journaller_journal.map(|journal| (journal, encoder)),
                        &shared,
                        Stamps { clock, last_timestamp_ns },
                        limit,
                        numbering,
                        &replication,
                    )
                })
                .map_err(|error| EngineError::Spawn {
                    thread: "journaller".into(),
                    message: error.to_string(),
                })?;
            joiners.push(Box::new(move || {
                let _ = thread.join();
            }));
        }
        let output_capacity =
            events.as_ref().map_or(usize::MAX, |events| events.control().capacity());
        let replicating = match topology {
            Topology::Compact => Replicating { replicator: replicator.clone(), replicated },
            // The journaller replicates.
            Topology::Pipelined => Replicating { replicator: None, replicated: None },
        };
        let processor = Processor {
            machine,
            journal,
            encoder: CommandEncoder::new(self.codec.clone()),
            replicating,
            in_flight: VecDeque::with_capacity(64),
            input_control: processor_control,
            numbering,
            stamps: Stamps { clock: Arc::clone(&self.clock), last_timestamp_ns },
            output: Output::new(),
            events,
            shared: Arc::clone(&shared),
            snapshots,
            batch_limit: self.ring_capacity,
            output_capacity,
            batch_commands: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("keel-engine".into())
            .spawn(move || match topology {
                Topology::Compact => processor.run_compact(poller),
                Topology::Pipelined => processor.run_pipelined(poller),
            })
            .map_err(|error| EngineError::Spawn {
                thread: "engine".into(),
                message: error.to_string(),
            })?;
        let publisher = Publisher::new(producer, Arc::clone(&shared), numbering);
        Ok(Engine {
            publisher: Some(publisher),
            thread: Some(thread),
            subscribers,
            joiners,
            output_pollers,
            router,
            input_control,
            shared,
            recovery: report,
            replicator,
            numbering,
        })
    }

    /// Recovery: `stop_before`'s truncation, the journal's own recovery (a torn tail), the
    /// newest usable snapshot, and the replay of the commands after it.
    fn recover(
        &mut self,
        initial: M,
    ) -> Result<(M, Option<JournalWriter>, RecoveryReport), EngineError> {
        let tier = match self.durability {
            Durability::Memory => {
                let state_hash = initial.state_hash();
                return Ok((
                    initial,
                    None,
                    RecoveryReport { state_hash, ..RecoveryReport::default() },
                ));
            }
            // The replicas make the input durable beyond this machine; locally it is in the
            // page cache, which a process crash does not lose.
            Durability::PageCache | Durability::Replicated => JournalDurability::PageCache,
            Durability::Fsync => JournalDurability::Fsync,
        };
        let stopped_before = match self.stop_before {
            Some(sequence) => stop_before(&self.directory, sequence)?,
            None => None,
        };
        let mut options = JournalOptions::new().durability(tier).segment_size(self.segment_size);
        if let Some(storage) = &self.storage {
            options = options.storage(Arc::clone(storage));
        }
        let sink = self
            .replay_sink
            .as_deref_mut()
            .map(|sink| sink as &mut dyn FnMut(&Context, &[M::Event]));
        let mut no_progress = |_| {};
        let progress: &mut dyn FnMut(u64) = match self.progress.as_mut() {
            Some(progress) => progress,
            None => &mut no_progress,
        };
        let (machine, writer, recovered) =
            recover_journal(&self.directory, &self.codec, initial, options, sink, progress)?;
        Ok((machine, Some(writer), RecoveryReport { stopped_before, ..recovered }))
    }
}

/// Opens the journal in `directory` for writing (which recovers its tail), loads the newest
/// snapshot the journal can continue from, and replays every command after it: the recovery
/// of an engine and of a replica.
pub(crate) fn recover_journal<M: StateMachine, C: Codec>(
    directory: &Path,
    codec: &C,
    initial: M,
    options: JournalOptions,
    sink: Option<EventSink<'_, M::Event>>,
    progress: &mut dyn FnMut(u64),
) -> Result<(M, JournalWriter, RecoveryReport), EngineError> {
    let writer = JournalWriter::open(directory, options)?;
    let opened = writer.open_report().clone();
    let (first, last) = (opened.first_sequence, opened.last_sequence);
    // A snapshot past the journal's end covers commands the journal lost. The commands that
    // come next take their sequences, and once the journal reaches it again nothing but this
    // would tell the snapshot from one of theirs: it is moved out of the store now, and said.
    let store = SnapshotStore::open(directory)?;
    for leftover in store.remove_leftovers()? {
        tracing::info!(file = %leftover.display(), "removed a snapshot its writer never finished");
    }
    let set_aside: Vec<Skipped> = store
        .set_aside_after(last)?
        .into_iter()
        .map(|(snapshot, to)| {
            let reason = format!(
                "it covers sequence {}, past the journal's end ({last}): the journal lost \
                 the records it covers (unsynced when the power went); moved to {}",
                snapshot.sequence,
                to.display()
            );
            (snapshot.path, reason)
        })
        .collect();
    for (path, reason) in &set_aside {
        tracing::warn!(snapshot = %path.display(), "snapshot set aside: {reason}");
    }
    // Past the end is checked again, for a snapshot that a replica on this host wrote into the
    // store since (`ReplicaBuilder::snapshots_for`).
    let start = load_snapshot(directory, codec, initial, false, |sequence, _| {
        if sequence > last {
            Err(format!(
                "it covers sequence {sequence}, past the journal's end ({last}): the journal \
                 lost records it had (a power loss in the PageCache tier, or a repair)"
            ))
        } else if sequence + 1 < first {
            Err(format!("the journal no longer holds the commands after it (it starts at {first})"))
        } else {
            Ok(())
        }
    })?;
    let Start { mut machine, snapshot, sequence, timestamp_ns, skipped } = start;
    let skipped: Vec<Skipped> = set_aside.into_iter().chain(skipped).collect();
    if snapshot.is_none() && first > 1 {
        return Err(EngineError::Recovery(format!(
            "the journal starts at sequence {first} and no usable snapshot covers the commands \
             before it{}",
            skipped_in_words(&skipped)
        )));
    }
    let replayed = replay(
        directory,
        codec,
        &mut machine,
        (sequence, timestamp_ns),
        ReplayTarget::End,
        sink,
        progress,
    )?;
    if replayed.last_sequence != last {
        return Err(EngineError::Recovery(format!(
            "replay ended at sequence {} but the journal's last record is {last}",
            replayed.last_sequence
        )));
    }
    let report = RecoveryReport {
        journal: Some(opened),
        stopped_before: None,
        snapshot,
        skipped_snapshots: skipped,
        replayed: replayed.records,
        replay_seconds: replayed.seconds,
        last_sequence: last,
        state_hash: machine.state_hash(),
    };
    Ok((machine, writer, report))
}

/// Truncates the journal after `sequence - 1` if it holds `sequence`; returns what was cut.
fn stop_before(directory: &Path, sequence: u64) -> Result<Option<RepairPlan>, EngineError> {
    if sequence == 0 {
        return Err(EngineError::Configuration("stop_before(0): sequences start at 1".into()));
    }
    if !directory.join(keel_journal::segment::JOURNAL_DIRECTORY).is_dir() {
        return Ok(None);
    }
    match Repair::plan(directory, sequence - 1) {
        Ok(repair) if repair.plan_ref().is_empty() => Ok(None),
        Ok(repair) => Ok(Some(repair.execute()?)),
        // The journal ends before `sequence`: nothing to cut.
        Err(keel_journal::JournalError::SequenceNotFound { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

fn skipped_in_words(skipped: &[Skipped]) -> String {
    skipped.iter().map(|(path, reason)| format!("; skipped {}: {reason}", path.display())).collect()
}

fn spawn_error(name: &str, error: RingError) -> EngineError {
    EngineError::Spawn { thread: name.to_owned(), message: error.to_string() }
}

/// A running engine. Publish through [`publisher`](Self::publisher)s; stop with
/// [`shutdown`](Self::shutdown) (after every publisher is dropped: the engine drains what was
/// published, then stops) or [`halt`](Self::halt).
pub struct Engine<M: StateMachine, C: Codec = Bincode> {
    publisher: Option<Publisher<M, C>>,
    thread: Option<JoinHandle<M>>,
    subscribers: Vec<ProcessorHandle<DeliverFn<M::Event>>>,
    /// Join the response router.
    joiners: Vec<Box<dyn FnOnce() + Send>>,
    output_pollers: Vec<OutputPoller<M::Event>>,
    router: Option<Arc<Router<M::Event>>>,
    input_control: RingControl,
    shared: Arc<Shared>,
    recovery: RecoveryReport,
    replicator: Option<Arc<Replicator>>,
    /// Which journal sequence each ring sequence is (for the published count).
    numbering: Numbering,
}

impl<M: StateMachine, C: Codec> Engine<M, C> {
    /// A publisher (clone it for each producing thread).
    ///
    /// # Panics
    /// After [`sole_publisher`](Self::sole_publisher) took the engine's own.
    pub fn publisher(&self) -> Publisher<M, C> {
        self.publisher
            .as_ref()
            .expect("the engine's publisher was taken by sole_publisher()")
            .clone()
    }

    /// The engine's only publisher, for an application that publishes from one thread: its
    /// claims on the input ring take no atomic read-modify-write ([`SolePublisher`]). It takes
    /// the engine's own publisher, so it is refused while any other [`Publisher`] or
    /// [`Requester`] exists, and afterwards [`publisher`](Self::publisher) panics and
    /// [`requester`](Self::requester) fails. Dropping it closes the input: drop it before
    /// [`shutdown`](Self::shutdown), as every other publisher.
    pub fn sole_publisher(&mut self) -> Result<SolePublisher<M, C>, EngineError> {
        let publisher = self.publisher.take().ok_or_else(|| {
            EngineError::Configuration("the engine's publisher was already taken".into())
        })?;
        publisher.into_sole().map_err(|publisher| {
            self.publisher = Some(publisher);
            EngineError::Configuration(
                "sole_publisher() needs every other publisher and requester dropped".into(),
            )
        })
    }

    /// A publisher that waits for its commands' events; the builder must have enabled
    /// [`responses`](EngineBuilder::responses).
    pub fn requester(&self) -> Result<Requester<M, C>, EngineError>
    where
        M::Event: Clone,
    {
        let router = self.router.as_ref().ok_or_else(|| {
            EngineError::Configuration("requester() needs the builder's responses()".into())
        })?;
        let publisher = self.publisher.as_ref().ok_or_else(|| {
            EngineError::Configuration(
                "the engine's publisher was taken by sole_publisher()".into(),
            )
        })?;
        Ok(Requester::new(publisher.clone(), Arc::clone(router), Arc::clone(&self.shared)))
    }

    /// An output poller declared with [`EngineBuilder::output_poller`], once each.
    pub fn take_output_poller(&mut self) -> Option<OutputPoller<M::Event>> {
        self.output_pollers.pop()
    }

    /// What recovery found and did.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The engine's counters now.
    pub fn stats(&self) -> Stats {
        let published = self.numbering.command(self.input_control.cursor());
        self.shared.counters.read(published)
    }

    /// Why the engine stopped, if it did.
    pub fn halted(&self) -> Option<Halt> {
        self.shared.halted()
    }

    /// The address replicas connect to, when the engine replicates.
    pub fn replication_address(&self) -> Option<std::net::SocketAddr> {
        self.replicator.as_ref().map(|replicator| replicator.address())
    }

    /// The replicas as the engine sees them now, when it replicates.
    pub fn replication_status(&self) -> Option<ReplicationStatus> {
        self.replicator.as_ref().map(|replicator| replicator.status())
    }

    /// Asks for a snapshot now: the engine thread copies the state at the next command
    /// boundary (at once if it is idle) and a background thread writes it.
    pub fn snapshot(&self) {
        self.shared.snapshot_requested.store(true, Ordering::Release);
        self.input_control.wake_all();
    }

    /// Stops accepting input and waits for the engine to apply everything published, then for
    /// the subscribers to see every event; returns the final state. Every other publisher must
    /// have been dropped, or this waits for them. Returns the failure if the engine had
    /// stopped on one.
    pub fn shutdown(mut self) -> Result<M, EngineError> {
        self.publisher = None;
        self.join()
    }

    /// Stops at once: commands published but not yet applied stay unapplied (they are in the
    /// journal if they were journaled, and recovery applies them).
    pub fn halt(mut self) -> Result<M, EngineError> {
        self.shared.stop(Halt::Requested);
        self.input_control.halt();
        self.publisher = None;
        self.join()
    }

    fn join(&mut self) -> Result<M, EngineError> {
        let thread = self.thread.take().expect("joined once");
        let machine = thread.join();
        for subscriber in self.subscribers.drain(..) {
            // A panicking subscriber already halted the output ring, and so the engine.
            let _ = subscriber.join();
        }
        for join in self.joiners.drain(..) {
            join();
        }
        if let Some(replicator) = self.replicator.take() {
            replicator.stop();
        }
        let machine = machine.map_err(|panic| EngineError::Spawn {
            thread: "engine".into(),
            message: format!("the engine thread panicked: {}", panic_message(panic.as_ref())),
        })?;
        match self.shared.halted() {
            None | Some(Halt::Requested) => Ok(machine),
            Some(halt) => Err(EngineError::Halted(halt)),
        }
    }
}

impl<M: StateMachine, C: Codec> Drop for Engine<M, C> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Dropped without shutdown: stop at once rather than wait for publishers that may
            // never be dropped.
            self.shared.stop(Halt::Requested);
            self.input_control.halt();
            self.publisher = None;
            let _ = self.join();
        }
    }
}

impl<M: StateMachine, C: Codec> std::fmt::Debug for Engine<M, C> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Engine").field("stats", &self.stats()).finish()
    }
}

/// The engine thread's state.
struct Processor<M: StateMachine, C: Codec> {
    machine: M,
    journal: Option<JournalWriter>,
    /// Compact: encodes what this thread journals.
    encoder: CommandEncoder<C>,
    /// Compact: the replication of what this thread journals.
    replicating: Replicating,
    /// Compact, `Replicated` tier: the runs journaled and not yet all applied, each as its
    /// last ring sequence and the timestamp it was journaled with, oldest first.
    in_flight: VecDeque<(u64, u64)>,
    /// The input ring's state, to tell a shutdown from a wait for replicas.
    input_control: RingControl,
    /// Which journal sequence each ring sequence is.
    numbering: Numbering,
    stamps: Stamps,
    output: Output<M::Event>,
    events: Option<SingleProducer<OutputSlot<M::Event>, AnyWait>>,
    shared: Arc<Shared>,
    snapshots: Snapshots<M>,
    batch_limit: usize,
    /// The output ring's capacity, read once: asking the producer for it on every command
    /// cloned its control handle, an atomic increment and decrement of a shared count that
    /// took a third of the engine's per-command overhead under the exchange.
    output_capacity: usize,
    /// The commands applied and not yet published, each with its sequence and how many of
    /// the events held in `output` are its (they follow one another there in sequence
    /// order). Published together at the end of the input batch, or once
    /// [`EVENTS_PER_PUBLISH`] deliveries wait: one claim and one cursor store for many
    /// commands, not one per command.
    batch_commands: Vec<(u64, usize)>,
}

/// The command a published input slot holds.
fn command_of<C>(slot: &InputSlot<C>) -> &C {
    slot.command.as_ref().expect("a published slot holds a command")
}

/// Deliveries (commands and their events) at most that wait to be published together.
const EVENTS_PER_PUBLISH: usize = 256;

type InputPoller<M> =
    EventPoller<InputSlot<<M as StateMachine>::Command>, MultiProducerSequencer, AnyWait>;
type InputBatch<'a, M> =
    keel_ring::Batch<'a, InputSlot<<M as StateMachine>::Command>, MultiProducerSequencer, AnyWait>;

impl<M: StateMachine, C: Codec> Processor<M, C> {
    /// The compact topology: take every available command, journal the batch, make it durable,
    /// apply it, publish its events; between batches, take a snapshot when one is due.
    fn run_compact(mut self, mut poller: InputPoller<M>) -> M {
        let mut snapshot_wanted = self.snapshots.wanted(&self.shared);
        loop {
            let mut batch = match poller.wait_or(self.batch_limit, &mut snapshot_wanted) {
                Ok(Some(batch)) => batch,
                Ok(None) => {
                    self.snapshot_if_due();
                    continue;
                }
                Err(Interrupt::Closed | Interrupt::Halted) => break,
            };
            let outcome = match self.replicating.replicated.clone() {
                Some(replicated) => self.journal_ahead_and_apply(&mut batch, &replicated),
                None => {
                    self.shared.counters.count_batch(batch.len() as u64);
                    // One clock read per batch: the timestamp of every command in it.
                    let timestamp_ns = self.stamps.next();
                    self.journal_and_apply(&batch, timestamp_ns)
                }
            };
            // The events of every command applied, the batch's last before a failure included.
            let outcome = self.publish_events().and(outcome);
            drop(batch);
            if let Err(halt) = outcome {
                self.shared.stop(halt);
                poller.control().halt();
                break;
            }
            self.snapshot_if_due();
        }
        self.finish();
        self.machine
    }

    /// The compact topology's batch: journaled and made durable, then applied, a run of
    /// consecutive sequences at a time. Before a run that follows a checkpoint position, the
    /// checkpoint is written with the state's hash now, when every command before it is
    /// applied.
    fn journal_and_apply(
        &mut self,
        batch: &InputBatch<'_, M>,
        timestamp_ns: u64,
    ) -> Result<(), Halt> {
        for (offset, first, count) in self.numbering.runs(batch.first_sequence(), batch.len()) {
            let slots = || batch.iter().skip(offset).take(count).map(|(_, slot)| slot);
            if let Some(journal) = self.journal.as_mut() {
                if journal.next_sequence() < first {
                    debug_assert!(
                        self.numbering.is_checkpoint(journal.next_sequence())
                            && journal.next_sequence() + 1 == first
                    );
                    checkpoint_now(journal, &self.shared, &self.machine, timestamp_ns)?;
                }
                journal_batch::<M, C>(
                    journal,
                    &self.shared,
                    &mut self.encoder,
                    slots(),
                    timestamp_ns,
                )?;
                self.replicating.committed(journal, &self.shared, &self.input_control)?;
            }
            // Durable per the tier: now, and only now, apply.
            let mut ahead = Lookahead::start(&self.machine, || slots().map(command_of));
            for (sequence, slot) in (first..).zip(slots()) {
                ahead.step(&self.machine);
                self.apply(&Context { sequence, timestamp_ns }, command_of(slot))?;
            }
        }
        Ok(())
    }

    /// The compact topology in the `Replicated` tier. Waiting for the replicas after each batch
    /// would leave this thread idle for a round trip (the sender's, the replica's journaling
    /// of the whole batch, the acknowledgement's) with the batch's slots held, so that the
    /// gateway could not publish either: the stages took turns. Instead the batch is a window
    /// that slides along the ring: what arrives is journaled (and streamed) while what the
    /// quorum holds is applied, and applied slots are released at once. The window is finished
    /// (everything in it applied) after `batch_limit` commands, so that snapshots between
    /// batches still get their turn.
    fn journal_ahead_and_apply(
        &mut self,
        batch: &mut InputBatch<'_, M>,
        replicated: &Replicator,
    ) -> Result<(), Halt> {
        let mut applied = batch.first_sequence() - 1;
        let mut journaled = applied;
        let extend_until = applied + self.batch_limit as u64;
        self.in_flight.clear();
        let mut waiting: Option<AckWait> = None;
        loop {
            let mut progressed = false;
            if journaled < batch.last_sequence() {
                let through = self.journal_window(batch, journaled, applied)?;
                if through > journaled {
                    journaled = through;
                    progressed = true;
                }
            }
            let held = replicated.replicated()?;
            let through = self.apply_held(batch, applied, journaled, held)?;
            if through > applied {
                applied = through;
                progressed = true;
                // The wait for acknowledgements starts again: for the next unheld command.
                waiting = None;
                self.publish_events()?;
            }
            let extended = applied < extend_until && batch.extend(self.batch_limit) > 0;
            if applied == batch.last_sequence() {
                if !extended {
                    return Ok(());
                }
                batch.release_through(applied);
                continue;
            }
            if applied >= batch.first_sequence() {
                batch.release_through(applied);
            }
            // New input journaled and streamed does not start the wait again: at a moderate
            // rate a command arrives every few microseconds, and a wait begun afresh at each
            // would spin for ever, holding a core that the replicas' threads need to answer.
            if progressed || extended {
                continue;
            }
            // Everything held is journaled and streamed, and nothing more is acknowledged.
            let first_unheld = self.numbering.command(applied + 1);
            let (shared, input) = (&self.shared, &self.input_control);
            waiting.get_or_insert_with(AckWait::new).wait(
                replicated,
                first_unheld,
                &mut |overdue| give_up_waiting(shared, input, first_unheld, overdue),
            )?;
        }
    }

    /// `Replicated` tier: journals (with one timestamp) and commits the window's commands
    /// after ring sequence `journaled`, tells the replicas' senders, and returns the last ring
    /// sequence journaled. It stops at a checkpoint position until every command before it is
    /// applied, for the checkpoint carries the state's hash there.
    fn journal_window(
        &mut self,
        batch: &InputBatch<'_, M>,
        journaled: u64,
        applied: u64,
    ) -> Result<u64, Halt> {
        let journal = self.journal.as_mut().expect("the Replicated tier journals");
        let timestamp_ns = self.stamps.next();
        let from = journaled + 1;
        let mut through = journaled;
        for (offset, first, count) in
            self.numbering.runs(from, (batch.last_sequence() - journaled) as usize)
        {
            if journal.next_sequence() < first {
                if applied < through {
                    break;
                }
                checkpoint_now(journal, &self.shared, &self.machine, timestamp_ns)?;
            }
            let start = from + offset as u64;
            let slots = (start..start + count as u64).map(|sequence| batch.get(sequence));
            journal_batch::<M, C>(journal, &self.shared, &mut self.encoder, slots, timestamp_ns)?;
            through = start + count as u64 - 1;
        }
        if through > journaled {
            self.shared.counters.count_batch(through - journaled);
            self.in_flight.push_back((through, timestamp_ns));
            self.replicating.committed_only(journal)?;
        }
        Ok(through)
    }

    /// `Replicated` tier: applies the window's commands after ring sequence `applied`, up to
    /// `journaled`, whose journal sequences the quorum holds (up to `held`); returns the last
    /// ring sequence applied.
    fn apply_held(
        &mut self,
        batch: &InputBatch<'_, M>,
        applied: u64,
        journaled: u64,
        held: u64,
    ) -> Result<u64, Halt> {
        let mut through = applied;
        for (offset, first, count) in
            self.numbering.runs(applied + 1, (journaled - applied) as usize)
        {
            if first > held {
                break;
            }
            let held_here = ((held - first + 1).min(count as u64)) as usize;
            let start = applied + 1 + offset as u64;
            let ring_end = start + held_here as u64;
            let mut ahead = Lookahead::start(&self.machine, || {
                (start..ring_end).map(|ring| command_of(batch.get(ring)))
            });
            for (index, sequence) in (first..first + held_here as u64).enumerate() {
                let ring = start + index as u64;
                while self.in_flight.front().is_some_and(|&(last, _)| last < ring) {
                    self.in_flight.pop_front();
                }
                let timestamp_ns = self.in_flight.front().expect("a journaled run").1;
                ahead.step(&self.machine);
                self.apply(&Context { sequence, timestamp_ns }, command_of(batch.get(ring)))?;
                through = ring;
            }
            if held_here < count {
                break;
            }
        }
        Ok(through)
    }

    /// The pipelined topology: the journaller thread journals each batch and makes it
    /// durable; this thread applies what it has passed, with the timestamps it assigned, and
    /// hands it the state's hash wherever a checkpoint follows.
    fn run_pipelined(mut self, mut poller: InputPoller<M>) -> M {
        let mut snapshot_wanted = self.snapshots.wanted(&self.shared);
        self.hand_over_checkpoint(self.numbering.command(0));
        loop {
            let batch = match poller.wait_or(self.batch_limit, &mut snapshot_wanted) {
                Ok(Some(batch)) => batch,
                Ok(None) => {
                    self.snapshot_if_due();
                    continue;
                }
                Err(Interrupt::Closed | Interrupt::Halted) => break,
            };
            // The journaller records a failure before it releases the batch it failed on: a
            // batch passed to this thread after a failure may not be durable.
            if self.shared.journal_failed.load(Ordering::Acquire) {
                break;
            }
            let mut outcome = Ok(());
            'runs: for (offset, first, count) in
                self.numbering.runs(batch.first_sequence(), batch.len())
            {
                let slots = || batch.iter().skip(offset).take(count).map(|(_, slot)| slot);
                let mut ahead = Lookahead::start(&self.machine, || slots().map(command_of));
                for (sequence, slot) in (first..).zip(slots()) {
                    let timestamp_ns = slot.timestamp_ns.load(Ordering::Relaxed);
                    self.stamps.last_timestamp_ns = timestamp_ns;
                    ahead.step(&self.machine);
                    outcome = self.apply(&Context { sequence, timestamp_ns }, command_of(slot));
                    if outcome.is_err() {
                        break 'runs;
                    }
                }
                self.hand_over_checkpoint(first + count as u64 - 1);
            }
            let outcome = self.publish_events().and(outcome);
            drop(batch);
            if let Err(halt) = outcome {
                self.shared.stop(halt);
                poller.control().halt();
                break;
            }
            self.snapshot_if_due();
        }
        self.finish();
        self.machine
    }

    /// Pipelined: when a checkpoint follows `applied`, the last sequence applied, hands the
    /// journaller the state's hash for it.
    fn hand_over_checkpoint(&self, applied: u64) {
        if self.numbering.is_checkpoint(applied + 1) {
            *self.shared.checkpoint.lock() = (applied, self.machine.state_hash());
        }
    }

    /// Applies one command; its events wait for [`publish_events`](Self::publish_events).
    fn apply(&mut self, context: &Context, command: &M::Command) -> Result<(), Halt> {
        if self.events.is_none() {
            // Nobody reads the events: nothing is kept from one command to the next.
            self.output.drain_all();
        }
        self.output.begin();
        if let Err(halt) = apply_guarded(&mut self.machine, context, command, &mut self.output) {
            // The failed command's events are never published; the earlier commands' are.
            self.output.clear();
            return Err(halt);
        }
        Counters::set(&self.shared.counters.applied, context.sequence);
        if self.events.is_some() {
            self.batch_commands.push((context.sequence, self.output.len()));
            // Published at the end of the input batch, or sooner once this many are waiting,
            // so that the waiting events stay in the core's cache between being emitted and
            // being copied into the ring.
            if self.batch_commands.len() + self.output.held() >= EVENTS_PER_PUBLISH {
                self.publish_events()?;
            }
        }
        Ok(())
    }

    /// Publishes the events of the commands applied since the last call, in order, each
    /// command's last delivery marked (a command without events gets one empty delivery): as
    /// one batch on the output ring, or in chunks of its capacity when there are more.
    fn publish_events(&mut self) -> Result<(), Halt> {
        let Some(events) = self.events.as_mut() else {
            return Ok(());
        };
        let Some(&(last_sequence, _)) = self.batch_commands.last() else {
            return Ok(());
        };
        let deliveries: usize = self.batch_commands.iter().map(|&(_, count)| count.max(1)).sum();
        let mut commands = self.batch_commands.iter();
        let mut drained = self.output.drain_all();
        // The command being delivered: its sequence and its deliveries still to come.
        let mut current = (0, 0);
        let mut left = deliveries;
        while left > 0 {
            let size = left.min(self.output_capacity);
            events
                .publish_batch(size, |slot, _| {
                    if current.1 == 0 {
                        let &(sequence, count) = commands.next().expect("one entry per command");
                        current = (sequence, count.max(1));
                        slot.event = if count == 0 { None } else { drained.next() };
                    } else {
                        slot.event = drained.next();
                    }
                    slot.sequence = current.0;
                    current.1 -= 1;
                    slot.last = current.1 == 0;
                })
                .map_err(|error| Halt::Subscriber {
                    sequence: last_sequence,
                    message: error.to_string(),
                })?;
            left -= size;
        }
        drop(drained);
        self.batch_commands.clear();
        Ok(())
    }

    /// Takes a snapshot when one is asked for or due and none is being written.
    fn snapshot_if_due(&mut self) {
        let applied = self.shared.counters.applied.load(Ordering::Relaxed);
        let timestamp_ns = self.stamps.last_timestamp_ns;
        self.snapshots.take_if_due(&self.machine, applied, timestamp_ns, &self.shared);
    }

    /// Closes the output ring (subscribers drain it) and the snapshot thread.
    fn finish(&mut self) {
        self.events = None;
        self.snapshots.finish();
    }
}

/// Encodes commands for the journal, on the thread that journals them, into one buffer that
/// every command reuses: it stays in that core's cache, and nothing is allocated once it has
/// grown to the longest encoding.
struct CommandEncoder<C: Codec> {
    codec: C,
    buffer: Vec<u8>,
}

impl<C: Codec> CommandEncoder<C> {
    fn new(codec: C) -> Self {
        Self { codec, buffer: Vec::with_capacity(256) }
    }

    /// The encoding of `command`, valid until the next call.
    #[inline]
    fn encode<T: serde::Serialize>(&mut self, command: &T) -> Result<&[u8], CodecError> {
        self.buffer.clear();
        self.codec.encode(command, &mut self.buffer)?;
        Ok(&self.buffer)
    }
}

/// Encodes a batch's commands, appends them to the journal, and makes them durable per the
/// tier. A command that cannot be encoded ends the batch: the commands before it are still
/// made durable, and the failure names it.
fn journal_batch<'a, M: StateMachine, C: Codec>(
    journal: &mut JournalWriter,
    shared: &Shared,
    encoder: &mut CommandEncoder<C>,
    slots: impl Iterator<Item = &'a InputSlot<M::Command>>,
    timestamp_ns: u64,
) -> Result<(), Halt>
where
    M::Command: 'a,
{
    let mut unencodable = None;
    for slot in slots {
        let command = slot.command.as_ref().expect("a published slot holds a command");
        let bytes = match encoder.encode(command) {
            Ok(bytes) => bytes,
            Err(error) => {
                let sequence = journal.next_sequence();
                unencodable = Some(Halt::Encode { sequence, message: error.to_string() });
                break;
            }
        };
        journal
            .append(timestamp_ns, KIND_COMMAND, M::COMMAND_VERSION, bytes)
            .map_err(|error| journal_failed(journal, error))?;
    }
    commit(journal, shared)?;
    unencodable.map_or(Ok(()), Err)
}

/// Makes what was appended durable per the tier, and counts it.
fn commit(journal: &mut JournalWriter, shared: &Shared) -> Result<(), Halt> {
    Counters::set(&shared.counters.journaled, journal.next_sequence() - 1);
    let durable = journal.commit().map_err(|error| journal_failed(journal, error))?;
    Counters::set(&shared.counters.durable, durable);
    Ok(())
}

/// Appends a checkpoint record (made durable by the next commit), and counts it.
fn append_checkpoint(
    journal: &mut JournalWriter,
    shared: &Shared,
    checkpoint: Checkpoint,
    timestamp_ns: u64,
) -> Result<(), Halt> {
    let sequence = journal
        .append(timestamp_ns, KIND_CHECKPOINT, CHECKPOINT_VERSION, &checkpoint.encode())
        .map_err(|error| journal_failed(journal, error))?;
    shared.counters.count_checkpoint(sequence);
    Ok(())
}

/// Compact: appends the checkpoint that comes before the next command, with the hash of
/// `machine` now, when every command journaled before it is applied.
fn checkpoint_now<M: StateMachine>(
    journal: &mut JournalWriter,
    shared: &Shared,
    machine: &M,
    timestamp_ns: u64,
) -> Result<(), Halt> {
    let checkpoint =
        Checkpoint { sequence: journal.next_sequence() - 1, state_hash: machine.state_hash() };
    append_checkpoint(journal, shared, checkpoint, timestamp_ns)
}

/// The halt for a journal error: at the first sequence not made durable.
pub(crate) fn journal_failed(journal: &JournalWriter, error: keel_journal::JournalError) -> Halt {
    Halt::Journal { sequence: journal.durable_sequence() + 1, message: error.to_string() }
}

/// The pipelined topology's journaller: stamps each batch with one clock read, journals it,
/// makes it durable, and only then releases it to the engine thread. In the `Memory` tier it
/// only stamps. A batch never runs past a checkpoint position: at one, the journaller waits
/// for the engine thread to apply what it released and hand over the state's hash, and
/// writes the checkpoint before it takes more input. `journal`: the journal and the encoder of
/// the commands that go into it, in the tiers that journal.
fn run_journaller<M: StateMachine, C: Codec>(
    mut poller: InputPoller<M>,
    mut journal: Option<(JournalWriter, CommandEncoder<C>)>,
    shared: &Shared,
    mut stamps: Stamps,
    limit: usize,
    numbering: Numbering,
    replicating: &Replicating,
) {
    let control = poller.control();
    loop {
        let mut limit = limit;
        if let Some((journal, _)) = journal.as_mut() {
            let next = journal.next_sequence();
            if numbering.is_checkpoint(next) {
                let Some(state_hash) = checkpoint_handed_over(shared, next - 1) else {
                    break;
                };
                let checkpoint = Checkpoint { sequence: next - 1, state_hash };
                let written =
                    append_checkpoint(journal, shared, checkpoint, stamps.last_timestamp_ns)
                        .and_then(|()| commit(journal, shared))
                        .and_then(|()| replicating.committed(journal, shared, &control));
                if let Err(halt) = written {
                    shared.journal_failed.store(true, Ordering::Release);
                    shared.stop(halt);
                    control.halt();
                    break;
                }
            }
            limit = limit.min(numbering.commands_from(journal.next_sequence()) as usize);
        }
        let Ok(batch) = poller.wait(limit) else { break };
        shared.counters.count_batch(batch.len() as u64);
        let timestamp_ns = stamps.next();
        for (_, slot) in batch.iter() {
            // Read by the engine thread after this batch is released (the release of this
            // stage's sequence orders it).
            slot.timestamp_ns.store(timestamp_ns, Ordering::Relaxed);
        }
        let outcome = match journal.as_mut() {
            Some((journal, encoder)) => journal_batch::<M, C>(
                journal,
                shared,
                encoder,
                batch.iter().map(|(_, slot)| slot),
                timestamp_ns,
            )
            .and_then(|()| replicating.committed(journal, shared, &control)),
            None => Ok(()),
        };
        if let Err(halt) = outcome {
            // Recorded before the batch is released, so the engine thread never applies it.
            shared.journal_failed.store(true, Ordering::Release);
            shared.stop(halt);
            control.halt();
            drop(batch);
            break;
        }
        drop(batch);
    }
}

/// The replication of what a thread journals: the replicator to tell of each commit, and in
/// the `Replicated` tier the same replicator to wait for.
struct Replicating {
    replicator: Option<Arc<Replicator>>,
    replicated: Option<Arc<Replicator>>,
}

impl Replicating {
    /// Tells the replicas' senders that the journal holds everything appended; in the
    /// `Replicated` tier, then waits for the quorum to acknowledge it. A shutdown that cannot
    /// get the acknowledgements within the timeout stops the engine with what is not
    /// replicated unapplied.
    fn committed(
        &self,
        journal: &JournalWriter,
        shared: &Shared,
        input: &RingControl,
    ) -> Result<(), Halt> {
        self.committed_only(journal)?;
        let Some(replicated) = self.replicated.as_ref() else { return Ok(()) };
        let sequence = journal.next_sequence() - 1;
        replicated
            .wait_replicated(sequence, |overdue| give_up_waiting(shared, input, sequence, overdue))
    }

    /// Tells the replicas' senders that the journal holds everything appended, without
    /// waiting for acknowledgements.
    fn committed_only(&self, journal: &JournalWriter) -> Result<(), Halt> {
        match self.replicator.as_ref() {
            Some(replicator) => replicator.committed(journal.next_sequence() - 1),
            None => Ok(()),
        }
    }
}

/// Why a wait for the replicas to acknowledge `sequence` ends without them: the engine halted,
/// or it is shutting down and the acknowledgement is overdue.
fn give_up_waiting(
    shared: &Shared,
    input: &RingControl,
    sequence: u64,
    overdue: bool,
) -> Option<Halt> {
    if let Some(halt) = shared.halted() {
        return Some(halt);
    }
    (overdue && input.is_closed()).then(|| Halt::Replication {
        sequence,
        message: "the engine is shutting down and the quorum of replicas did not acknowledge it \
                  in time"
            .into(),
    })
}

/// Waits for the engine thread to hand over the state's hash after `sequence`; `None` if the
/// engine stopped first. The engine thread applies `sequence` soon after the journaller
/// releases it, once per checkpoint interval, so yielding costs nothing worth a wake-up.
fn checkpoint_handed_over(shared: &Shared, sequence: u64) -> Option<u64> {
    loop {
        let (covered, state_hash) = *shared.checkpoint.lock();
        if covered == sequence {
            return Some(state_hash);
        }
        if shared.halted().is_some() {
            return None;
        }
        std::thread::yield_now();
    }
}

/// A source of timestamps: nanoseconds since the Unix epoch.
type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Stamps batches: the clock's reading, never below the last stamp.
struct Stamps {
    clock: Clock,
    last_timestamp_ns: u64,
}

impl Stamps {
    /// The next batch's timestamp.
    fn next(&mut self) -> u64 {
        self.last_timestamp_ns = (self.clock)().max(self.last_timestamp_ns);
        self.last_timestamp_ns
    }
}

/// The wall clock in nanoseconds since the Unix epoch (0 before it).
fn wall_clock_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos() as u64)
}
