//! [`Replica`]: the same input, the same state. A replica follows another engine's journal on
//! the same host (in the primary's process or another), journals every record it receives in a
//! journal of its own (the same journal: it takes the primary's id), applies each command with
//! the primary's sequence and timestamp, compares its state's hash at every checkpoint, and
//! keeps snapshots of its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_journal::segment::{list_segments, JOURNAL_DIRECTORY};
use keel_journal::{
    Durability as JournalDurability, JournalError, JournalOptions, JournalReader, JournalWriter,
    SnapshotStore, Tailer,
};

use crate::codec::{Bincode, Codec};
use crate::config::{Durability, SnapshotPolicy, Wait};
use crate::engine::{journal_failed, recover_journal, RecoveryReport, Shared};
use crate::error::{EngineError, Halt};
use crate::machine::{Context, Output, StateMachine};
use crate::recovery::{apply_record, decode_record, load_snapshot, Decoded, Start};
use crate::snapshots::{write_snapshot, Snapshots};
use crate::stats::{Counters, Stats};

/// Records at most that a replica takes from the followed journal before it makes them
/// durable and applies them: a bound on the work between two looks at `stop`.
const RECEIVE_MAX: usize = 4096;

type EventSink<E> = Box<dyn FnMut(u64, &[E]) + Send>;

/// Configures and opens a [`Replica`].
pub struct ReplicaBuilder<M: StateMachine, C: Codec = Bincode> {
    primary: PathBuf,
    directory: PathBuf,
    codec: C,
    durability: Durability,
    wait: Wait,
    segment_size: u64,
    snapshots: SnapshotPolicy,
    events: Option<EventSink<M::Event>>,
}

impl<M: StateMachine, C: Codec> std::fmt::Debug for ReplicaBuilder<M, C> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ReplicaBuilder")
            .field("primary", &self.primary)
            .field("directory", &self.directory)
            .field("durability", &self.durability)
            .field("wait", &self.wait)
            .field("snapshots", &self.snapshots)
            .finish()
    }
}

impl<M: StateMachine, C: Codec> ReplicaBuilder<M, C> {
    /// The tier of the replica's own journal: a record is applied once it is durable there.
    /// `PageCache` (the default) or `Fsync`; a replica always keeps a journal.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How the replica waits while the followed journal has nothing new: `BusySpin` polls
    /// without pause (a core of its own), `Yielding` yields between polls, `Sleeping` (the
    /// default) and `Blocking` sleep 100 µs once a few hundred polls found nothing. There is no
    /// signal to wait on across processes, so `Blocking` is `Sleeping`.
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// The size of the replica's new journal segments.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// When the replica takes snapshots of its own (besides [`Replica::snapshot`]).
    pub fn snapshots(mut self, policy: SnapshotPolicy) -> Self {
        self.snapshots = policy;
        self
    }

    /// Receives the events of every command the replica applies, with its sequence, on the
    /// replica's thread: a read model kept beside the replica's state.
    pub fn on_events(mut self, sink: impl FnMut(u64, &[M::Event]) + Send + 'static) -> Self {
        self.events = Some(Box::new(sink));
        self
    }

    /// Another codec (the primary's).
    pub fn codec<D: Codec>(self, codec: D) -> ReplicaBuilder<M, D> {
        ReplicaBuilder {
            primary: self.primary,
            directory: self.directory,
            codec,
            durability: self.durability,
            wait: self.wait,
            segment_size: self.segment_size,
            snapshots: self.snapshots,
            events: None,
        }
    }

    /// Recovers the replica's own state (its newest snapshot and journal; when it has no
    /// journal and the primary's no longer starts at 1, it is seeded from the primary's newest
    /// snapshot), then starts following the primary's journal from the next sequence on a
    /// thread of its own (`keel-replica`).
    pub fn open(mut self, initial: M) -> Result<Replica<M, C>, EngineError> {
        let tier = match self.durability {
            Durability::Memory => {
                return Err(EngineError::Configuration(
                    "a replica keeps a journal of its own: PageCache or Fsync".into(),
                ))
            }
            Durability::PageCache => JournalDurability::PageCache,
            Durability::Fsync => JournalDurability::Fsync,
        };
        if same_directory(&self.primary, &self.directory) {
            return Err(EngineError::Configuration(format!(
                "the replica's directory {} is its primary's",
                self.directory.display()
            )));
        }
        let primary = JournalReader::open(&self.primary)?;
        let journal_id = primary.journal_id().ok_or_else(|| {
            EngineError::Recovery(format!(
                "{} holds no journal to follow yet: open the primary first",
                self.primary.display()
            ))
        })?;
        let primary_first = primary.next_sequence();
        drop(primary);

        let mut options = JournalOptions::new()
            .durability(tier)
            .segment_size(self.segment_size)
            .journal_id(journal_id);
        let has_journal = !list_segments(&self.directory.join(JOURNAL_DIRECTORY))?.is_empty();
        let initial = if !has_journal && primary_first > 1 {
            let (machine, sequence) = self.seed(initial, primary_first)?;
            options = options.first_sequence(sequence + 1);
            machine
        } else {
            initial
        };
        let shared = Arc::new(Shared::default());
        let sink = &mut |_: u64, _: &[M::Event]| {};
        let (machine, journal, report) =
            recover_journal(&self.directory, &self.codec, initial, options, sink, &mut |_| {})?;
        let last = report.last_sequence;
        if last + 1 < primary_first {
            return Err(EngineError::Recovery(format!(
                "this replica holds up to sequence {last}, and the primary's journal now starts \
                 at {primary_first}: the records between are gone from it. Start the replica \
                 afresh in an empty directory, to be seeded from the primary's snapshot"
            )));
        }
        let tailer = Tailer::open(&self.primary, last + 1).map_err(|error| match error {
            JournalError::SequenceNotFound { last: primary_last, .. } => {
                EngineError::Recovery(format!(
                    "this replica holds up to sequence {last}, past the end of the primary's \
                     journal ({primary_last}): it holds records the primary does not (the \
                     primary lost them, or was restored from a copy)"
                ))
            }
            other => other.into(),
        })?;
        for counter in [&shared.counters.journaled, &shared.counters.durable] {
            Counters::set(counter, last);
        }
        Counters::set(&shared.counters.applied, last);
        let snapshots = Snapshots::start(
            &self.directory,
            self.codec.clone(),
            Arc::clone(&shared),
            self.snapshots,
            last,
        )?;
        let stopping = Arc::new(AtomicBool::new(false));
        let follower = Follower {
            machine,
            codec: self.codec,
            journal,
            tailer,
            shared: Arc::clone(&shared),
            stopping: Arc::clone(&stopping),
            snapshots,
            output: Output::new(),
            events: self.events.take(),
            received: Vec::with_capacity(RECEIVE_MAX),
            last_timestamp_ns: report.journal.as_ref().map_or(0, |opened| opened.last_timestamp_ns),
            wait: self.wait,
        };
        let thread = std::thread::Builder::new()
            .name("keel-replica".into())
            .spawn(move || follower.run())
            .map_err(|error| EngineError::Spawn {
                thread: "replica".into(),
                message: error.to_string(),
            })?;
        Ok(Replica {
            thread: Some(thread),
            shared,
            stopping,
            recovery: report,
            _codec: std::marker::PhantomData,
        })
    }

    /// Writes the primary's newest snapshot that its journal continues from into the replica's
    /// own snapshot folder; returns that state and its sequence.
    fn seed(&self, initial: M, primary_first: u64) -> Result<(M, u64), EngineError> {
        let start = load_snapshot(&self.primary, &self.codec, initial, false, |sequence, _| {
            if sequence + 1 >= primary_first {
                Ok(())
            } else {
                Err(format!(
                    "the primary's journal no longer holds the commands after it (it starts at \
                     {primary_first})"
                ))
            }
        })?;
        let Start { machine, snapshot, sequence, timestamp_ns, .. } = start;
        if snapshot.is_none() {
            return Err(EngineError::Recovery(format!(
                "the primary's journal starts at sequence {primary_first} and none of its \
                 snapshots covers the commands before it: the replica has nothing to start from"
            )));
        }
        let store = SnapshotStore::open(&self.directory)?;
        write_snapshot(&store, &self.codec, &machine, sequence, timestamp_ns, &mut Vec::new(), 0)?;
        Ok((machine, sequence))
    }
}

/// Whether two paths name the same directory (both existing), or are the same path.
fn same_directory(first: &Path, second: &Path) -> bool {
    match (first.canonicalize(), second.canonicalize()) {
        (Ok(first), Ok(second)) => first == second,
        _ => first == second,
    }
}

/// A replica following a primary's journal. Stop it with [`stop`](Self::stop), which returns
/// its state; dropping it stops it too.
pub struct Replica<M: StateMachine, C: Codec = Bincode> {
    thread: Option<JoinHandle<M>>,
    shared: Arc<Shared>,
    stopping: Arc<AtomicBool>,
    recovery: RecoveryReport,
    _codec: std::marker::PhantomData<C>,
}

impl<M: StateMachine> Replica<M, Bincode> {
    /// Follows the journal in `primary` with a journal and snapshots of its own in
    /// `directory`, with the defaults (`PageCache`, `Sleeping`, no automatic snapshots).
    pub fn follow(
        primary: impl AsRef<Path>,
        directory: impl AsRef<Path>,
        initial: M,
    ) -> Result<Self, EngineError> {
        Self::builder(primary, directory).open(initial)
    }

    /// A builder for a replica of the journal in `primary`, keeping its own in `directory`.
    pub fn builder(
        primary: impl AsRef<Path>,
        directory: impl AsRef<Path>,
    ) -> ReplicaBuilder<M, Bincode> {
        ReplicaBuilder {
            primary: primary.as_ref().to_owned(),
            directory: directory.as_ref().to_owned(),
            codec: Bincode,
            durability: Durability::PageCache,
            wait: Wait::Sleeping,
            segment_size: keel_journal::DEFAULT_SEGMENT_SIZE,
            snapshots: SnapshotPolicy::default(),
            events: None,
        }
    }
}

impl<M: StateMachine, C: Codec> Replica<M, C> {
    /// What recovering the replica's own state found and did.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The replica's counters: `published` and `journaled` are the last sequence received,
    /// `durable` and `applied` its progress, `checkpoints` the checkpoints whose hash matched.
    pub fn stats(&self) -> Stats {
        let received = self.shared.counters.journaled.load(Ordering::Relaxed);
        self.shared.counters.read(received)
    }

    /// Why the replica stopped, if it did.
    pub fn halted(&self) -> Option<Halt> {
        self.shared.halted()
    }

    /// Asks for a snapshot of the replica's state at the next record boundary.
    pub fn snapshot(&self) {
        self.shared.snapshot_requested.store(true, Ordering::Release);
    }

    /// Waits until the replica has applied `sequence`: `Ok(true)`, or `Ok(false)` after
    /// `timeout`. Fails once the replica has stopped on a failure.
    pub fn wait_for(&self, sequence: u64, timeout: Duration) -> Result<bool, EngineError> {
        let began = Instant::now();
        loop {
            if self.shared.counters.applied.load(Ordering::Relaxed) >= sequence {
                return Ok(true);
            }
            if let Some(halt) = self.shared.halted() {
                return Err(EngineError::Halted(halt));
            }
            if began.elapsed() >= timeout {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Stops following (after the records being applied), and returns the state. Fails with
    /// the reason if the replica had stopped on a failure.
    pub fn stop(mut self) -> Result<M, EngineError> {
        self.join()
    }

    fn join(&mut self) -> Result<M, EngineError> {
        self.stopping.store(true, Ordering::Release);
        let thread = self.thread.take().expect("joined once");
        let machine = thread.join().map_err(|panic| EngineError::Spawn {
            thread: "replica".into(),
            message: format!(
                "the replica thread panicked: {}",
                crate::recovery::panic_message(panic.as_ref())
            ),
        })?;
        match self.shared.halted() {
            None | Some(Halt::Requested) => Ok(machine),
            Some(halt) => Err(EngineError::Halted(halt)),
        }
    }
}

impl<M: StateMachine, C: Codec> Drop for Replica<M, C> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
        }
    }
}

impl<M: StateMachine, C: Codec> std::fmt::Debug for Replica<M, C> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Replica").field("stats", &self.stats()).finish()
    }
}

/// The replica thread's state.
struct Follower<M: StateMachine, C: Codec> {
    machine: M,
    codec: C,
    journal: JournalWriter,
    tailer: Tailer,
    shared: Arc<Shared>,
    stopping: Arc<AtomicBool>,
    snapshots: Snapshots<M>,
    output: Output<M::Event>,
    events: Option<EventSink<M::Event>>,
    /// The records received and journaled, decoded, waiting to be made durable and applied.
    received: Vec<(Context, Decoded<M::Command>)>,
    last_timestamp_ns: u64,
    wait: Wait,
}

impl<M: StateMachine, C: Codec> Follower<M, C> {
    fn run(mut self) -> M {
        let mut idle = 0u32;
        while !self.stopping.load(Ordering::Acquire) {
            match self.step() {
                Ok(0) => self.idle(&mut idle),
                Ok(_) => idle = 0,
                Err(halt) => {
                    self.shared.stop(halt);
                    break;
                }
            }
            let applied = self.shared.counters.applied.load(Ordering::Relaxed);
            self.snapshots.take_if_due(
                &self.machine,
                applied,
                self.last_timestamp_ns,
                &self.shared,
            );
        }
        self.snapshots.finish();
        self.machine
    }

    /// Receives what the followed journal holds (up to [`RECEIVE_MAX`] records), journals it,
    /// makes it durable, then applies it. A record that cannot be read stops the replica after
    /// those before it are applied; a record that cannot be decoded is journaled (the
    /// replica's journal is a copy of the primary's) and stops it there.
    fn step(&mut self) -> Result<usize, Halt> {
        let mut failure = None;
        while self.received.len() < RECEIVE_MAX {
            let record = match self.tailer.poll() {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(error) => {
                    let sequence = self.tailer.next_sequence();
                    failure = Some(Halt::Primary { sequence, message: error.to_string() });
                    break;
                }
            };
            let appended = self
                .journal
                .append(record.timestamp_ns, record.kind, record.version, record.payload)
                .map_err(|error| journal_failed(&self.journal, error))?;
            debug_assert_eq!(appended, record.sequence, "the tailer starts after the journal");
            let context = Context { sequence: record.sequence, timestamp_ns: record.timestamp_ns };
            match decode_record::<M, C>(&self.codec, &record) {
                Ok(decoded) => self.received.push((context, decoded)),
                Err(halt) => {
                    failure = Some(halt);
                    break;
                }
            }
        }
        let received = self.received.len();
        if self.journal.next_sequence() - 1 > self.journal.durable_sequence() {
            let counters = &self.shared.counters;
            Counters::set(&counters.journaled, self.journal.next_sequence() - 1);
            let durable =
                self.journal.commit().map_err(|error| journal_failed(&self.journal, error))?;
            Counters::set(&counters.durable, durable);
        }
        for (context, decoded) in self.received.drain(..) {
            self.output.clear();
            apply_record(&mut self.machine, &context, &decoded, &mut self.output)?;
            match decoded {
                Decoded::Command(_) => {
                    if let Some(events) = self.events.as_mut() {
                        events(context.sequence, self.output.events());
                    }
                }
                Decoded::Checkpoint(_) => self.shared.counters.count_checkpoint(context.sequence),
                Decoded::Other => {}
            }
            self.last_timestamp_ns = context.timestamp_ns;
            Counters::set(&self.shared.counters.applied, context.sequence);
        }
        match failure {
            Some(halt) => Err(halt),
            None => Ok(received),
        }
    }

    /// Waits a little while the followed journal has nothing new, per the wait strategy.
    fn idle(&self, idle: &mut u32) {
        *idle = idle.saturating_add(1);
        match self.wait {
            Wait::BusySpin => std::hint::spin_loop(),
            Wait::Yielding => std::thread::yield_now(),
            Wait::Sleeping | Wait::Blocking => {
                if *idle < 100 {
                    std::hint::spin_loop();
                } else if *idle < 300 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }
    }
}
