//! [`Replica`]: the same input, the same state. A replica follows another engine's journal, on
//! the same host (its files, from the primary's process or another) or over TCP (the primary's
//! replication listener, `docs/replication-protocol.md`); journals every record it receives in a
//! journal of its own (the same journal: it takes the primary's id), applies each command with
//! the primary's sequence and timestamp once it is durable, compares its state's hash at every
//! checkpoint, and keeps snapshots of its own (and can give them to its primary). It can be
//! promoted to be the next primary.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_journal::format::{BatchView, CheckedBatches, EpochChange, EPOCH_VERSION, KIND_EPOCH};
use keel_journal::segment::{hex, list_segments, JOURNAL_DIRECTORY};
use keel_journal::storage::Storage;
use keel_journal::{
    journal_epoch, Durability as JournalDurability, JournalError, JournalOptions, JournalReader,
    JournalWriter, SnapshotStore, Tailer,
};

use crate::codec::{Bincode, Codec};
use crate::config::{Durability, SnapshotPolicy, Wait};
use crate::engine::{journal_failed, recover_journal, RecoveryReport, Shared};
use crate::error::{EngineError, Halt};
use crate::machine::{Context, Lookahead, Output, StateMachine};
use crate::recovery::{apply_record, decode_fields, load_snapshot, Decoded, Start};
use crate::snapshots::{write_snapshot, Ship, Snapshots};
use crate::stats::{Counters, Stats};
use crate::wire::{
    self, expect, mac, nonce, receive_snapshot, send_snapshot, verify_mac, write_frame, Challenge,
    Fields, FrameReader, Hello, Kind, Purpose, WireError, HANDSHAKE_TIMEOUT, PRIMARY_PROOF,
    PROTOCOL_VERSION, REPLICA_PROOF,
};

/// Records at most that a replica takes from the followed journal before it makes them
/// durable and applies them: a bound on the work between two looks at `stop`.
const RECEIVE_MAX: usize = 4096;

type EventSink<E> = Box<dyn FnMut(&Context, &[E]) + Send>;
/// A replica's recovered state, its journal, what recovery did, and where its input comes from.
type Opened<M> = (M, JournalWriter, RecoveryReport, Source, u64);

/// How long a connected replica waits for a frame before it looks at its stop flag again.
const READ_TIMEOUT: Duration = Duration::from_millis(50);
/// A primary heard nothing from for this long is taken for gone, and reconnected to.
const SILENCE: Duration = Duration::from_secs(2);
/// The longest wait between two attempts to reconnect.
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// What a replica follows.
#[derive(Clone)]
enum Upstream {
    /// The journal in a directory on this host.
    Directory(PathBuf),
    /// A primary's replication listener.
    Remote { address: String, secret: Vec<u8> },
}

impl Upstream {
    fn describe(&self) -> String {
        match self {
            Self::Directory(directory) => directory.display().to_string(),
            Self::Remote { address, .. } => format!("tcp://{address}"),
        }
    }
}

/// Where a replica's records come from.
enum Source {
    Tail(Tailer),
    Stream(Box<Stream>),
}

/// Configures and opens a [`Replica`].
pub struct ReplicaBuilder<M: StateMachine, C: Codec = Bincode> {
    primary: Upstream,
    directory: PathBuf,
    codec: C,
    durability: Durability,
    wait: Wait,
    segment_size: u64,
    snapshots: SnapshotPolicy,
    snapshots_for: Option<PathBuf>,
    ship_snapshots: bool,
    events: Option<EventSink<M::Event>>,
    storage: Option<Arc<dyn Storage>>,
}

impl<M: StateMachine, C: Codec> std::fmt::Debug for ReplicaBuilder<M, C> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ReplicaBuilder")
            .field("primary", &self.primary.describe())
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
    /// signal to wait on across processes, so `Blocking` is `Sleeping`. Same host only: over
    /// TCP the replica waits in its reads, which the operating system wakes.
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

    /// Also writes every snapshot the replica takes into the data directory `primary` (the
    /// primary's, on this host), where the primary's recovery finds it: the primary need take
    /// none of its own, and never pauses to copy its state. A snapshot is a replica's state at
    /// a sequence the primary's journal holds, checked against the checkpoints on the way, and
    /// recovery checks its hash when it loads it.
    pub fn snapshots_for(mut self, primary: impl AsRef<Path>) -> Self {
        self.snapshots_for = Some(primary.as_ref().to_owned());
        self
    }

    /// Over TCP: also sends every snapshot the replica takes to the primary, which keeps it in
    /// its snapshot folder for its recovery (on a connection of its own, from the snapshot
    /// thread, so the stream of records does not wait for it). The primary then need take none
    /// of its own. It refuses a snapshot past its journal's end; its recovery checks the state
    /// hash when it loads one.
    pub fn ship_snapshots(mut self) -> Self {
        self.ship_snapshots = true;
        self
    }

    /// Receives the events of every command the replica applies, with its context (the
    /// sequence and the primary's journaled timestamp), on the replica's thread: a read model
    /// kept beside the replica's state.
    pub fn on_events(mut self, sink: impl FnMut(&Context, &[M::Event]) + Send + 'static) -> Self {
        self.events = Some(Box::new(sink));
        self
    }

    /// The file operations under the replica's own journal writer: the real file system
    /// unless a test injects faults (`keel_journal::storage::FaultyStorage`), as
    /// [`EngineBuilder::journal_storage`](crate::EngineBuilder::journal_storage).
    pub fn journal_storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
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
            snapshots_for: self.snapshots_for,
            ship_snapshots: self.ship_snapshots,
            events: self.events,
            storage: self.storage,
        }
    }

    /// Recovers the replica's own state (its newest snapshot and journal; when it has no
    /// journal and the primary's no longer starts at 1, it is seeded from the primary's newest
    /// snapshot), then starts following the primary's journal from the next sequence on a
    /// thread of its own (`keel-replica`).
    pub fn open(mut self, initial: M) -> Result<Replica<M, C>, EngineError> {
        let tier = match self.durability {
            Durability::Memory | Durability::Replicated => {
                return Err(EngineError::Configuration(
                    "a replica keeps a journal of its own, in the PageCache or Fsync tier".into(),
                ))
            }
            Durability::PageCache => JournalDurability::PageCache,
            Durability::Fsync => JournalDurability::Fsync,
        };
        let shared = Arc::new(Shared::default());
        let mut options = JournalOptions::new().durability(tier).segment_size(self.segment_size);
        if let Some(storage) = &self.storage {
            options = options.storage(Arc::clone(storage));
        }
        let (machine, journal, report, source, primary_epoch) = match &self.primary {
            Upstream::Directory(primary) => {
                let primary = primary.clone();
                self.open_local(&primary, initial, options)?
            }
            Upstream::Remote { address, secret } => {
                let (address, secret) = (address.clone(), secret.clone());
                self.open_remote(address, secret, initial, options)?
            }
        };
        let last = report.last_sequence;
        for counter in [&shared.counters.journaled, &shared.counters.durable] {
            Counters::set(counter, last);
        }
        Counters::set(&shared.counters.applied, last);
        let shipped = match (&self.primary, self.ship_snapshots) {
            (Upstream::Remote { address, secret }, true) => {
                let (address, secret) = (address.clone(), secret.clone());
                let (journal_id, epoch) =
                    (journal.journal_id(), journal.epoch().max(primary_epoch));
                let ship: Ship = Box::new(move |file: &Path| {
                    ship_snapshot(&address, &secret, journal_id, epoch, file)
                        .map_err(|error| error.to_string())
                });
                Some(ship)
            }
            _ => None,
        };
        let snapshots = Snapshots::start(
            &self.directory,
            self.snapshots_for.as_deref().as_slice(),
            self.codec.clone(),
            Arc::clone(&shared),
            self.snapshots,
            last,
            shipped,
        )?;
        let stopping = Arc::new(AtomicBool::new(false));
        let follower = Follower {
            machine,
            codec: self.codec.clone(),
            journal,
            source,
            shared: Arc::clone(&shared),
            stopping: Arc::clone(&stopping),
            snapshots,
            output: Output::new(),
            events: self.events.take(),
            received: Vec::with_capacity(RECEIVE_MAX),
            unread: CheckedBatches::default(),
            last_timestamp_ns: report.journal.as_ref().map_or(0, |opened| opened.last_timestamp_ns),
            wait: self.wait,
            primary_epoch,
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
            codec: self.codec,
            directory: self.directory.clone(),
        })
    }

    /// Recovers the replica's state and positions a tailer on the primary's journal after it.
    fn open_local(
        &mut self,
        primary: &Path,
        initial: M,
        options: JournalOptions,
    ) -> Result<Opened<M>, EngineError> {
        if same_directory(primary, &self.directory) {
            return Err(EngineError::Configuration(format!(
                "the replica's directory {} is its primary's",
                self.directory.display()
            )));
        }
        let reader = JournalReader::open(primary)?;
        let journal_id = reader.journal_id().ok_or_else(|| {
            EngineError::Recovery(format!(
                "{} holds no journal to follow yet: open the primary first",
                primary.display()
            ))
        })?;
        let primary_first = reader.next_sequence();
        drop(reader);
        let epoch = journal_epoch(primary)?;

        // A new journal starts at the primary's epoch.
        let mut options = options.journal_id(journal_id).epoch(epoch);
        let initial = if !self.has_journal()? && primary_first > 1 {
            let (machine, sequence) = self.seed(primary, initial, primary_first)?;
            options = options.first_sequence(sequence + 1);
            machine
        } else {
            initial
        };
        let (machine, journal, report) = self.recover(initial, options)?;
        let last = report.last_sequence;
        if last + 1 < primary_first {
            return Err(EngineError::Recovery(format!(
                "this replica holds up to sequence {last}, and the primary's journal now starts \
                 at {primary_first}: the records between are gone from it. Start the replica \
                 afresh in an empty directory, to be seeded from the primary's snapshot"
            )));
        }
        let tailer = Tailer::open(primary, last + 1).map_err(|error| match error {
            JournalError::SequenceNotFound { last: primary_last, .. } => {
                EngineError::Recovery(format!(
                    "this replica holds up to sequence {last}, past the end of the primary's \
                     journal ({primary_last}): it holds records the primary does not (the \
                     primary lost them, or was restored from a copy)"
                ))
            }
            other => other.into(),
        })?;
        Ok((machine, journal, report, Source::Tail(tailer), epoch))
    }

    /// Connects to the primary (the handshake proves the secret both ways and checks the
    /// journal and epoch), receives its snapshot if the replica has no journal and the
    /// primary's no longer starts at 1, and recovers the replica's state.
    fn open_remote(
        &mut self,
        address: String,
        secret: Vec<u8>,
        initial: M,
        options: JournalOptions,
    ) -> Result<Opened<M>, EngineError> {
        let refused = |error: WireError| {
            EngineError::Recovery(format!("replication from {address}: {error}"))
        };
        if self.has_journal()? {
            let (machine, journal, report) = self.recover(initial, options)?;
            let next = report.last_sequence + 1;
            let journal_id = journal.journal_id();
            let stream = match connect(
                &address,
                &secret,
                Some(journal_id),
                journal.epoch(),
                next,
                Purpose::Follow,
            ) {
                Ok(connection) if connection.start != next || connection.snapshot => {
                    return Err(refused(WireError::malformed(format!(
                        "the primary starts the stream at {}, this replica needs {next}",
                        connection.start
                    ))));
                }
                Ok(connection) => {
                    Stream::new(address.clone(), secret, Some(connection), journal_id)
                }
                // A replica that holds a journal starts without its primary, and connects when
                // it can: it can be stopped, or promoted, meanwhile. A refusal is final; an
                // unreachable primary, a connection closed or a frame damaged on the way (the
                // simulation's network found this one) are not.
                Err(error @ (WireError::Io(_) | WireError::Closed | WireError::Malformed(_))) => {
                    tracing::warn!(primary = %address, "the primary is unreachable, for now: {error}");
                    let mut stream = Stream::new(address.clone(), secret, None, journal_id);
                    stream.epoch = journal.epoch();
                    stream
                }
                Err(error) => return Err(refused(error)),
            };
            let epoch = stream.epoch;
            return Ok((machine, journal, report, Source::Stream(Box::new(stream)), epoch));
        }
        let mut connection =
            connect(&address, &secret, None, 0, 1, Purpose::Follow).map_err(refused)?;
        if connection.snapshot {
            let store = SnapshotStore::open(&self.directory)?;
            let (stream, reader) = (&mut connection.stream, &mut connection.reader);
            let header = receive_snapshot(stream, reader, &store, |header| {
                if header.sequence + 1 == connection.start {
                    Ok(())
                } else {
                    Err(format!(
                        "a snapshot of sequence {} for a stream from {}",
                        header.sequence, connection.start
                    ))
                }
            })
            .map_err(refused)?;
            tracing::info!(sequence = header.sequence, "seeded from the primary's snapshot");
        }
        let journal_id = connection.journal_id;
        let epoch = connection.epoch;
        let options = options.journal_id(journal_id).first_sequence(connection.start).epoch(epoch);
        let (machine, journal, report) = self.recover(initial, options)?;
        if report.last_sequence + 1 != connection.start {
            return Err(EngineError::Recovery(format!(
                "the replica recovered up to {}, the primary streams from {}",
                report.last_sequence, connection.start
            )));
        }
        let stream = Stream::new(address, secret, Some(connection), journal_id);
        Ok((machine, journal, report, Source::Stream(Box::new(stream)), epoch))
    }

    fn has_journal(&self) -> Result<bool, EngineError> {
        Ok(!list_segments(&self.directory.join(JOURNAL_DIRECTORY))?.is_empty())
    }

    fn recover(
        &mut self,
        initial: M,
        options: JournalOptions,
    ) -> Result<(M, JournalWriter, RecoveryReport), EngineError> {
        recover_journal(&self.directory, &self.codec, initial, options, None, &mut |_| {})
    }

    /// Writes the primary's newest snapshot that its journal continues from into the replica's
    /// own snapshot folder; returns that state and its sequence.
    fn seed(
        &self,
        primary: &Path,
        initial: M,
        primary_first: u64,
    ) -> Result<(M, u64), EngineError> {
        let start = load_snapshot(primary, &self.codec, initial, false, |sequence, _| {
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
        write_snapshot(&store, &[], &self.codec, &machine, sequence, timestamp_ns, 0)?;
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
    thread: Option<JoinHandle<Stopped<M>>>,
    shared: Arc<Shared>,
    stopping: Arc<AtomicBool>,
    recovery: RecoveryReport,
    codec: C,
    directory: PathBuf,
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
        Self::with_upstream(Upstream::Directory(primary.as_ref().to_owned()), directory)
    }

    /// Connects to the primary at `address` (`host:port`) and follows it over TCP; the
    /// `secret` is the primary's [`Replication`](crate::Replication) secret.
    pub fn connect(
        address: impl Into<String>,
        secret: impl Into<Vec<u8>>,
        directory: impl AsRef<Path>,
        initial: M,
    ) -> Result<Self, EngineError> {
        Self::remote(address, secret, directory).open(initial)
    }

    /// A builder for a replica of the primary at `address`, over TCP.
    pub fn remote(
        address: impl Into<String>,
        secret: impl Into<Vec<u8>>,
        directory: impl AsRef<Path>,
    ) -> ReplicaBuilder<M, Bincode> {
        let upstream = Upstream::Remote { address: address.into(), secret: secret.into() };
        Self::with_upstream(upstream, directory)
    }

    fn with_upstream(
        upstream: Upstream,
        directory: impl AsRef<Path>,
    ) -> ReplicaBuilder<M, Bincode> {
        ReplicaBuilder {
            primary: upstream,
            directory: directory.as_ref().to_owned(),
            codec: Bincode,
            durability: Durability::PageCache,
            wait: Wait::Sleeping,
            segment_size: keel_journal::DEFAULT_SEGMENT_SIZE,
            snapshots: SnapshotPolicy::default(),
            snapshots_for: None,
            ship_snapshots: false,
            events: None,
            storage: None,
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
        self.join().map(|stopped| stopped.machine)
    }

    /// Turns the replica into the next primary: stops following, and writes an epoch-change
    /// record (an epoch above both its own and its primary's) into its journal, durably. Open
    /// an [`Engine`](crate::Engine) on its directory next: it recovers this state and goes on
    /// numbering after the epoch record, and its segments carry the new epoch. A replica of
    /// the new primary receives the record and takes the epoch too; the old primary, should it
    /// come back, is refused by such a replica and, once one proves it the newer epoch, fenced
    /// (it applies nothing more).
    ///
    /// Promotion is an explicit call, by an operator or a coordinator that knows the old
    /// primary is gone: keel elects no one. Everything the old primary applied in the
    /// `Replicated` tier, this replica (if in the quorum) held durably; what it applied in
    /// another tier may not have reached the replica (`docs/ARCHITECTURE.md`).
    pub fn promote(mut self) -> Result<Promotion<M>, EngineError> {
        let Stopped { machine, mut journal, primary_epoch } = self.join()?;
        // A snapshot of the state now, so that the engine opened next loads it instead of
        // replaying the whole journal.
        let store = SnapshotStore::open(&self.directory)?;
        let applied = journal.next_sequence() - 1;
        let timestamp_ns = journal.last_timestamp_ns();
        write_snapshot(&store, &[], &self.codec, &machine, applied, timestamp_ns, 0)?;
        let epoch = journal.epoch().max(primary_epoch) + 1;
        let change = EpochChange { epoch };
        let sequence = journal.append(
            journal.last_timestamp_ns(),
            KIND_EPOCH,
            EPOCH_VERSION,
            &change.encode(),
        )?;
        journal.commit()?;
        tracing::info!(epoch, sequence, "replica promoted");
        Ok(Promotion { machine, epoch, sequence })
    }

    fn join(&mut self) -> Result<Stopped<M>, EngineError> {
        self.stopping.store(true, Ordering::Release);
        let thread = self.thread.take().expect("joined once");
        let stopped = thread.join().map_err(|panic| EngineError::Spawn {
            thread: "replica".into(),
            message: format!(
                "the replica thread panicked: {}",
                crate::recovery::panic_message(panic.as_ref())
            ),
        })?;
        match self.shared.halted() {
            None | Some(Halt::Requested) => Ok(stopped),
            Some(halt) => Err(EngineError::Halted(halt)),
        }
    }
}

/// What [`Replica::promote`] did.
#[derive(Debug)]
pub struct Promotion<M> {
    /// The replica's state, at the epoch record.
    pub machine: M,
    /// The new primary's epoch.
    pub epoch: u64,
    /// The epoch-change record's sequence: the new primary's commands follow it.
    pub sequence: u64,
}

/// What the replica's thread hands back when it stops.
struct Stopped<M> {
    machine: M,
    journal: JournalWriter,
    /// The epoch of the primary it followed.
    primary_epoch: u64,
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
    source: Source,
    shared: Arc<Shared>,
    stopping: Arc<AtomicBool>,
    snapshots: Snapshots<M>,
    output: Output<M::Event>,
    events: Option<EventSink<M::Event>>,
    /// The records received and journaled, decoded, waiting to be made durable and applied.
    received: Vec<(Context, Decoded<M::Command>)>,
    /// From the primary's stream: the batches received and journaled, as they came, to be
    /// decoded once they are acknowledged.
    unread: CheckedBatches,
    last_timestamp_ns: u64,
    wait: Wait,
    /// Same host: the epoch of the primary's journal when the replica opened (records that
    /// change it arrive through the replica's journal, whose epoch follows them).
    primary_epoch: u64,
}

impl<M: StateMachine, C: Codec> Follower<M, C> {
    fn run(mut self) -> Stopped<M> {
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
        let primary_epoch = match &self.source {
            Source::Tail(_) => self.primary_epoch,
            Source::Stream(stream) => stream.epoch,
        };
        Stopped { machine: self.machine, journal: self.journal, primary_epoch }
    }

    /// Receives what the followed journal holds (up to [`RECEIVE_MAX`] records), journals it,
    /// makes it durable (and acknowledges it, over TCP, before decoding it), then applies it.
    /// A record that cannot be read stops the replica after those before it are applied; a
    /// record that cannot be decoded is journaled (the replica's journal is a copy of the
    /// primary's) and stops it there.
    fn step(&mut self) -> Result<usize, Halt> {
        if let Source::Stream(stream) = &mut self.source {
            stream.reconnect(self.journal.next_sequence())?;
        }
        let journal = &mut self.journal;
        let failure = match &mut self.source {
            Source::Tail(tailer) => {
                // Nothing waits for this replica: each batch is decoded as it is journaled.
                let (codec, received) = (&self.codec, &mut self.received);
                let mut take = |batch: &BatchView<'_>| {
                    journal_batch(journal, batch)?;
                    decode_batch::<M, C>(codec, received, batch)
                };
                let mut taken = 0;
                loop {
                    if taken >= RECEIVE_MAX {
                        break None;
                    }
                    match tailer.poll_batch() {
                        Ok(Some(batch)) => {
                            taken += batch.records() as usize;
                            if let Err(halt) = take(&batch) {
                                break Some(halt);
                            }
                        }
                        // Nothing more for now: stop looking.
                        Ok(None) => break None,
                        Err(error) => {
                            let sequence = tailer.next_sequence();
                            break Some(Halt::Primary { sequence, message: error.to_string() });
                        }
                    }
                }
            }
            Source::Stream(stream) => {
                let unread = &mut self.unread;
                let mut keep = |batch: &BatchView<'_>| {
                    journal_batch(journal, batch)?;
                    unread.push(batch);
                    Ok(())
                };
                stream.receive(&mut keep).err()
            }
        };
        if self.journal.next_sequence() - 1 > self.journal.durable_sequence() {
            let counters = &self.shared.counters;
            Counters::set(&counters.journaled, self.journal.next_sequence() - 1);
            let durable =
                self.journal.commit().map_err(|error| journal_failed(&self.journal, error))?;
            Counters::set(&counters.durable, durable);
        }
        if let Source::Stream(stream) = &mut self.source {
            stream.acknowledge(self.journal.durable_sequence());
        }
        // The stream's batches are decoded only now: the primary, which waits for the
        // acknowledgement before it applies them, need not wait for their decoding too. They
        // were checked whole as they arrived, and are not checked again.
        let decoded = self
            .unread
            .iter()
            .try_for_each(|batch| decode_batch::<M, C>(&self.codec, &mut self.received, &batch));
        self.unread.clear();
        let failure = decoded.err().or(failure);
        let received = self.received.len();
        // Decoded before any is applied, so the machine's hints can run ahead of `apply` as
        // they do on the primary.
        let mut batch = std::mem::take(&mut self.received);
        let commands = || {
            batch.iter().filter_map(|(_, decoded)| match decoded {
                Decoded::Command(command) => Some(command),
                _ => None,
            })
        };
        let mut ahead = Lookahead::start(&self.machine, commands);
        for (context, decoded) in &batch {
            if let Decoded::Command(_) = decoded {
                ahead.step(&self.machine);
            }
            self.output.clear();
            apply_record(&mut self.machine, context, decoded, &mut self.output)?;
            match decoded {
                Decoded::Command(_) => {
                    if let Some(events) = self.events.as_mut() {
                        events(context, self.output.events());
                    }
                }
                Decoded::Checkpoint(_) => self.shared.counters.count_checkpoint(context.sequence),
                Decoded::Other => {}
            }
            self.last_timestamp_ns = context.timestamp_ns;
            Counters::set(&self.shared.counters.applied, context.sequence);
        }
        batch.clear();
        self.received = batch;
        match failure {
            Some(halt) => Err(halt),
            None => Ok(received),
        }
    }

    /// Waits a little while the followed journal has nothing new, per the wait strategy.
    fn idle(&self, idle: &mut u32) {
        if let Source::Stream(_) = self.source {
            // Its reads wait, with a timeout.
            return;
        }
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

/// Journals a received batch (it must start at the next sequence): a whole one as its primary
/// sealed it, without encoding or checksumming its records again.
fn journal_batch(journal: &mut JournalWriter, batch: &BatchView<'_>) -> Result<(), Halt> {
    let expected = journal.next_sequence();
    if batch.first_sequence != expected {
        return Err(Halt::Primary {
            sequence: expected,
            message: format!(
                "the primary sent sequence {} where {expected} was due",
                batch.first_sequence
            ),
        });
    }
    journal.append_batch(batch).map_err(|error| journal_failed(journal, error))?;
    Ok(())
}

/// Decodes a received batch's records onto `received`, for applying. A record that cannot be
/// decoded stops the replica there, after the records before it are applied; the batch stays
/// journaled, as the primary's journal holds it.
fn decode_batch<M: StateMachine, C: Codec>(
    codec: &C,
    received: &mut Vec<(Context, Decoded<M::Command>)>,
    batch: &BatchView<'_>,
) -> Result<(), Halt> {
    // The batch is checked whole, so each record's decoder may read on past its payload to
    // the batch's end.
    let mut records = batch.iter();
    while let Some((record, readable)) = records.next_with_rest() {
        let sequence = record.sequence;
        let (kind, version, payload) = (record.kind, record.version, record.payload);
        let decoded = decode_fields::<M, C>(codec, sequence, kind, version, payload, readable)?;
        received.push((Context { sequence, timestamp_ns: record.timestamp_ns }, decoded));
    }
    Ok(())
}

/// A replica's connection to its primary, and how to get it back.
struct Stream {
    address: String,
    secret: Vec<u8>,
    journal_id: [u8; 16],
    /// The primary's epoch: a primary of an older one is refused.
    epoch: u64,
    connection: Option<(TcpStream, FrameReader)>,
    /// When the primary was last heard from.
    heard: Instant,
    /// The last sequence acknowledged, and whether a heartbeat asks for an acknowledgement.
    acknowledged: u64,
    heartbeat: bool,
    scratch: Vec<u8>,
    retry_at: Instant,
    backoff: Duration,
}

impl Stream {
    /// A stream over `connection`, or one that connects when it can.
    fn new(
        address: String,
        secret: Vec<u8>,
        connection: Option<Connection>,
        journal_id: [u8; 16],
    ) -> Self {
        let epoch = connection.as_ref().map_or(0, |connection| connection.epoch);
        let connection = connection.map(|connection| {
            let _ = connection.stream.set_read_timeout(Some(READ_TIMEOUT));
            (connection.stream, connection.reader)
        });
        Self {
            address,
            secret,
            journal_id,
            epoch,
            connection,
            heard: Instant::now(),
            acknowledged: 0,
            // The first step acknowledges what the replica holds, so that the primary counts
            // it towards the quorum at once rather than at its first heartbeat.
            heartbeat: true,
            scratch: Vec::new(),
            retry_at: Instant::now(),
            backoff: Duration::from_millis(20),
        }
    }

    /// Hands each journal batch received to `take`: what arrived by the end of the read
    /// timeout, then whatever whole frames arrived with it. A broken, silent or misbehaving
    /// connection is dropped (and reconnected to later); a refusal stops the replica.
    fn receive(
        &mut self,
        take: &mut impl FnMut(&BatchView<'_>) -> Result<(), Halt>,
    ) -> Result<usize, Halt> {
        let Some((connection, reader)) = self.connection.as_mut() else {
            return Ok(0);
        };
        let mut taken = 0;
        let mut first = true;
        let mut broken = None;
        while taken < RECEIVE_MAX {
            let frame = if first { reader.next(connection) } else { reader.buffered() };
            first = false;
            match frame {
                Ok(None) => break,
                Ok(Some((Kind::Records, body))) => {
                    self.heard = Instant::now();
                    for batch in wire::batches(body) {
                        match batch {
                            Ok(batch) => {
                                take(&batch)?;
                                taken += batch.records() as usize;
                            }
                            Err(error) => {
                                broken = Some(error.to_string());
                                break;
                            }
                        }
                    }
                }
                Ok(Some((Kind::Heartbeat, _))) => {
                    self.heard = Instant::now();
                    self.heartbeat = true;
                }
                Ok(Some((Kind::Refused, body))) => {
                    return Err(Halt::Primary {
                        sequence: self.acknowledged + 1,
                        message: format!("the primary refused: {}", String::from_utf8_lossy(body)),
                    });
                }
                Ok(Some((kind, _))) => broken = Some(format!("a primary does not send {kind:?}")),
                Err(error) => broken = Some(error.to_string()),
            }
            if broken.is_some() {
                break;
            }
        }
        if broken.is_none() && self.heard.elapsed() >= SILENCE {
            broken = Some(format!("nothing from the primary for {SILENCE:?}"));
        }
        if let Some(reason) = broken {
            self.disconnect(&reason);
        }
        Ok(taken)
    }

    /// Tells the primary the replica holds `durable`, when that is news or a heartbeat asked.
    fn acknowledge(&mut self, durable: u64) {
        if durable <= self.acknowledged && !self.heartbeat {
            return;
        }
        let Some((connection, _)) = self.connection.as_mut() else { return };
        match write_frame(connection, Kind::Ack, &durable.to_le_bytes(), &mut self.scratch) {
            Ok(()) => {
                self.acknowledged = durable;
                self.heartbeat = false;
            }
            Err(error) => self.disconnect(&error.to_string()),
        }
    }

    fn disconnect(&mut self, reason: &str) {
        if let Some((connection, _)) = self.connection.take() {
            tracing::warn!(primary = %self.address, "replication connection lost: {reason}");
            let _ = connection.shutdown(std::net::Shutdown::Both);
            self.retry_at = Instant::now();
        }
    }

    /// When disconnected, tries to connect again (backing off up to a second between tries),
    /// asking for `next`. A primary that refuses this replica stops it.
    fn reconnect(&mut self, next: u64) -> Result<(), Halt> {
        if self.connection.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        if now < self.retry_at {
            std::thread::sleep((self.retry_at - now).min(READ_TIMEOUT));
            return Ok(());
        }
        match connect(
            &self.address,
            &self.secret,
            Some(self.journal_id),
            self.epoch,
            next,
            Purpose::Follow,
        ) {
            Ok(connection) if connection.start == next && !connection.snapshot => {
                tracing::info!(primary = %self.address, from = next, "replication reconnected");
                let _ = connection.stream.set_read_timeout(Some(READ_TIMEOUT));
                self.epoch = connection.epoch;
                self.connection = Some((connection.stream, connection.reader));
                self.heard = Instant::now();
                self.acknowledged = next - 1;
                self.heartbeat = true;
                self.backoff = Duration::from_millis(20);
                Ok(())
            }
            Ok(connection) => Err(Halt::Primary {
                sequence: next,
                message: format!(
                    "the primary streams from {} (a snapshot: {}), this replica needs {next}",
                    connection.start, connection.snapshot
                ),
            }),
            Err(WireError::Refused(reason)) => {
                Err(Halt::Primary { sequence: next, message: format!("refused: {reason}") })
            }
            Err(error) => {
                tracing::debug!(primary = %self.address, "reconnecting: {error}");
                self.retry_at = now + self.backoff;
                self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
                Ok(())
            }
        }
    }
}

/// A connection through the handshake.
struct Connection {
    stream: TcpStream,
    reader: FrameReader,
    journal_id: [u8; 16],
    epoch: u64,
    /// The sequence the stream starts at.
    start: u64,
    /// Whether a snapshot comes first.
    snapshot: bool,
}

/// Connects to a primary and goes through the handshake, replica side: each side proves the
/// secret; the primary must be of `journal_id` (when the replica has a journal) and of an
/// epoch at least `epoch`.
fn connect(
    address: &str,
    secret: &[u8],
    journal_id: Option<[u8; 16]>,
    epoch: u64,
    next: u64,
    purpose: Purpose,
) -> Result<Connection, WireError> {
    let target = address.to_socket_addrs()?.next().ok_or_else(|| {
        WireError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{address} resolves to no address"),
        ))
    })?;
    let mut stream = TcpStream::connect_timeout(&target, HANDSHAKE_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut reader = FrameReader::default();
    let mut scratch = Vec::new();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        journal_id: journal_id.unwrap_or([0; 16]),
        epoch,
        next_sequence: next,
        purpose,
        nonce: nonce()?,
    };
    write_frame(&mut stream, Kind::Hello, &hello.encode(), &mut scratch)?;
    let challenge = Challenge::decode(expect(&mut reader, &mut stream, Kind::Challenge)?)?;
    let refuse = |stream: &mut TcpStream, reason: String| {
        let _ = write_frame(stream, Kind::Refused, reason.as_bytes(), &mut Vec::new());
        WireError::Refused(reason)
    };
    if challenge.version != PROTOCOL_VERSION {
        let reason = format!("the primary speaks protocol version {}", challenge.version);
        return Err(refuse(&mut stream, reason));
    }
    let proven = verify_mac(
        secret,
        &[
            PRIMARY_PROOF,
            &hello.nonce,
            &challenge.nonce,
            &challenge.journal_id,
            &challenge.epoch.to_le_bytes(),
        ],
        &challenge.mac,
    );
    if !proven {
        return Err(refuse(&mut stream, "the primary did not prove the shared secret".into()));
    }
    if let Some(journal_id) = journal_id.filter(|&id| id != challenge.journal_id) {
        let reason = format!(
            "the primary's journal is {}, this replica's is {}",
            hex(&challenge.journal_id),
            hex(&journal_id)
        );
        return Err(refuse(&mut stream, reason));
    }
    let proof = mac(secret, &[REPLICA_PROOF, &challenge.nonce, &hello.nonce, &hello.claims()]);
    write_frame(&mut stream, Kind::Auth, &proof, &mut scratch)?;
    // Checked after the replica proved itself, so that the primary believes the replica's
    // newer epoch and learns it is fenced.
    if challenge.epoch < epoch {
        let reason = format!(
            "the primary's epoch {} is older than this replica's {epoch}: it was replaced",
            challenge.epoch
        );
        return Err(refuse(&mut stream, reason));
    }
    if purpose == Purpose::Snapshot {
        // What follows is the snapshot; the primary answers after it.
        return Ok(Connection {
            stream,
            reader,
            journal_id: challenge.journal_id,
            epoch: challenge.epoch,
            start: 0,
            snapshot: false,
        });
    }
    let mut accepted =
        Fields::exact(expect(&mut reader, &mut stream, Kind::Accepted)?, 9, "accept")?;
    let start = accepted.u64()?;
    let snapshot = accepted.array::<1>()?[0] == 1;
    Ok(Connection {
        stream,
        reader,
        journal_id: challenge.journal_id,
        epoch: challenge.epoch,
        start,
        snapshot,
    })
}

/// Sends the snapshot file at `file` to the primary at `address`, on a connection of its own.
fn ship_snapshot(
    address: &str,
    secret: &[u8],
    journal_id: [u8; 16],
    epoch: u64,
    file: &Path,
) -> Result<(), WireError> {
    let mut connection = connect(address, secret, Some(journal_id), epoch, 0, Purpose::Snapshot)?;
    let header = send_snapshot(&mut connection.stream, file, &mut Vec::new())?;
    expect(&mut connection.reader, &mut connection.stream, Kind::Accepted)?;
    tracing::info!(primary = %address, sequence = header.sequence, "snapshot shipped to the primary");
    Ok(())
}
