//! The contract between the engine and the application: a [`StateMachine`] applies commands in
//! sequence order to state it holds in memory, and emits events.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{Codec, CodecError};

/// The application's business logic and state.
///
/// `apply` is called on one thread, in sequence order, once per command: live after the
/// command is durable in the configured tier, and again on every replay of the journal. So it
/// must be **deterministic**: no clock (use [`Context::timestamp_ns`]), no randomness, no I/O,
/// no iteration over a randomly seeded `HashMap` in anything that reaches an event or the
/// state hash. A business rejection is an event, never a panic; validate fully before
/// mutating, since there is no rollback. A panic is fail-stop: the engine halts at that
/// sequence and reports it.
///
/// The state is `Clone` (a snapshot is taken from a copy, so the engine pauses only for the
/// copy) and serde-serializable with [`SCHEMA_VERSION`](Self::SCHEMA_VERSION).
pub trait StateMachine: Clone + Serialize + DeserializeOwned + Send + 'static {
    /// An input: journaled (encoded by the engine's codec), replayed.
    type Command: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// An output: not journaled; replay recomputes it.
    type Event: Send + Sync + 'static;

    /// The version of the state's encoding in snapshots. A snapshot of another version is
    /// skipped at recovery (falling back to an older one, or to replay from the start).
    const SCHEMA_VERSION: u32 = 1;

    /// The version of [`Command`](Self::Command)'s encoding, stored with every journaled
    /// command. Records of an older version go through [`upcast`](Self::upcast).
    const COMMAND_VERSION: u16 = 1;

    /// Applies one command.
    fn apply(
        &mut self,
        context: &Context,
        command: &Self::Command,
        output: &mut Output<Self::Event>,
    );

    /// How many commands ahead of the one it applies the engine hands a command to
    /// [`prefetch`](Self::prefetch) (and twice as many to
    /// [`prefetch_index`](Self::prefetch_index)). 0, the default, calls neither. A few
    /// commands (4 to 16) are enough to cover a load from memory when `apply` takes tens of
    /// nanoseconds.
    const PREFETCH_AHEAD: usize = 0;

    /// Warms the memory that applying `command` will read, while the commands before it are
    /// applied: look up where its records are and call [`prefetch`](crate::prefetch) on them,
    /// and the cache misses of several commands overlap instead of following one another.
    /// A ledger whose accounts do not fit in the cache spends most of `apply` waiting for its
    /// two accounts' lines; this is where that wait goes. Called with every command,
    /// [`PREFETCH_AHEAD`](Self::PREFETCH_AHEAD) commands before its `apply` (fewer at the
    /// start of a batch), by the engine, by a replay and by a replica. It must not change the
    /// state (the `&self` says so; do not get around it with interior mutability): only
    /// `apply` does, so a hint cannot change a result.
    fn prefetch(&self, command: &Self::Command) {
        let _ = command;
    }

    /// The first of two hints, [`PREFETCH_AHEAD`](Self::PREFETCH_AHEAD) commands before
    /// [`prefetch`](Self::prefetch) gets the same command: warm what finding its records reads
    /// (the index entries that give their places), so that `prefetch` reads them from the
    /// cache instead of waiting for memory before it can ask for the records. A hint that must
    /// load an index entry to know where a record is stalls on that load: measured, half of
    /// the ledger's `prefetch` over 100 000 accounts. Same rules as `prefetch`; the default
    /// does nothing.
    fn prefetch_index(&self, command: &Self::Command) {
        let _ = command;
    }

    /// A deterministic digest of the whole state: equal states, equal hashes, on every
    /// machine. Recovery, replicas and tests compare it at the same sequence.
    ///
    /// With [`checkpoints`](crate::EngineBuilder::checkpoints) on, it runs on the engine thread
    /// every `N` commands, and the engine waits for it. A state that only grows (a history of
    /// transfers, say) need not be walked each time: a wrapping sum of its items' hashes can be
    /// kept as items come and change, and does not depend on the order they are summed in. The
    /// ledger example keeps one (`docs/ARCHITECTURE.md`, "The ledger's state hash is kept, not
    /// walked"). A state changed in place at random can keep one lazily: mark what changed,
    /// and re-hash only that when asked, as the exchange example does (`docs/ARCHITECTURE.md`,
    /// "The exchange's state hash is kept by marks, brought up to date when asked").
    fn state_hash(&self) -> u64;

    /// Makes the copy of the state that a snapshot is written from: the engine thread pauses
    /// for exactly this (the encoding and the file are another thread's). The default clones.
    /// A large state can reuse `previous`, the copy an earlier snapshot was written from, which
    /// the engine hands back once that snapshot is written: take it and `clone_from` into it,
    /// so that a `Vec` is copied into memory already mapped instead of faulting in fresh pages
    /// (`#[derive(Clone)]` does not do this by itself). Left in place, `previous` is freed off
    /// the engine thread.
    fn copy_for_snapshot(&self, previous: &mut Option<Self>) -> Self {
        let _ = previous;
        self.clone()
    }

    /// Decodes a command journaled with an older `version` of the command encoding (for
    /// instance by decoding the old type with `codec` and converting it). The default knows
    /// no older version.
    fn upcast<C: Codec>(
        codec: &C,
        version: u16,
        bytes: &[u8],
    ) -> Result<Self::Command, CodecError> {
        let _ = (codec, bytes);
        Err(CodecError::new(format!(
            "commands of version {version} cannot be read: this build writes version {} and \
             has no upcast from {version}",
            Self::COMMAND_VERSION
        )))
    }
}

/// What `apply` knows about the command besides the command itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Context {
    /// The command's sequence: from 1, gap-free, the same live and on replay.
    pub sequence: u64,
    /// Nanoseconds since the Unix epoch, assigned once when the command was sequenced and
    /// journaled; non-decreasing in sequence order. The state machine's only clock.
    pub timestamp_ns: u64,
}

/// Where `apply` puts its events. Empty when `apply` begins; its buffer is reused, so emitting
/// allocates nothing once it has grown to the largest batch's events.
///
/// The engine keeps the events of a whole input batch in one `Output`, each command's after
/// the ones before it, and publishes them from there: moving each command's events to a
/// buffer of their own copied every event once more (through the stack, in pieces that the
/// next load could not forward from: most of the engine loop's own time under the exchange).
/// `apply` sees only its own command's events.
#[derive(Debug)]
pub struct Output<E> {
    events: Vec<E>,
    /// Where the current command's events begin; the ones before belong to earlier commands
    /// of the batch.
    start: usize,
}

impl<E> Default for Output<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> Output<E> {
    /// An empty output: the engine makes its own; this one is for calling `apply` directly,
    /// in a state machine's unit tests or a benchmark's baseline.
    pub fn new() -> Self {
        Self { events: Vec::new(), start: 0 }
    }

    /// Emits an event.
    #[inline]
    pub fn emit(&mut self, event: E) {
        self.events.push(event);
    }

    /// The events emitted so far for this command.
    pub fn events(&self) -> &[E] {
        &self.events[self.start..]
    }

    /// Forgets the events emitted so far for this command (the engine does this before each
    /// command).
    pub fn clear(&mut self) {
        self.events.truncate(self.start);
    }

    /// Begins the next command, keeping the earlier commands' events for
    /// [`drain_all`](Self::drain_all).
    #[inline]
    pub(crate) fn begin(&mut self) {
        self.start = self.events.len();
    }

    /// Every event held, the earlier commands' and this one's, oldest first; the output is
    /// empty after.
    pub(crate) fn drain_all(&mut self) -> std::vec::Drain<'_, E> {
        self.start = 0;
        self.events.drain(..)
    }

    /// How many events this command emitted.
    pub(crate) fn len(&self) -> usize {
        self.events.len() - self.start
    }

    /// How many events are held, the earlier commands' and this one's.
    pub(crate) fn held(&self) -> usize {
        self.events.len()
    }
}

/// Hands the commands of a run to the machine's hints: each to
/// [`StateMachine::prefetch_index`] `2 × PREFETCH_AHEAD` commands before it is applied, and to
/// [`StateMachine::prefetch`] [`StateMachine::PREFETCH_AHEAD`] commands before (the first
/// commands of a run sooner, at its start). With the default of 0 it compiles to nothing.
///
/// Every loop of the engine that applies commands hints through it. It is public for code that
/// applies commands to a state machine outside the engine (a benchmark of `apply` alone, a
/// tool), so that it hints exactly as the engine does:
///
/// ```
/// # use keel_engine::{Context, Lookahead, Output, StateMachine};
/// fn apply_all<M: StateMachine>(machine: &mut M, commands: &[M::Command]) {
///     let mut output = Output::new();
///     let mut ahead = Lookahead::start(machine, || commands.iter());
///     for (index, command) in commands.iter().enumerate() {
///         ahead.step(machine);
///         let sequence = index as u64 + 1;
///         output.clear();
///         machine.apply(&Context { sequence, timestamp_ns: sequence }, command, &mut output);
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Lookahead<I> {
    /// The next command for `prefetch_index`.
    indexed: I,
    /// The next command for `prefetch`.
    fetched: I,
}

impl<'a, C: 'a, I: Iterator<Item = &'a C>> Lookahead<I> {
    /// Hints the run's first commands; `commands` makes an iterator over the run from its
    /// first command (each hint walks its own).
    #[inline]
    pub fn start<M: StateMachine<Command = C>>(machine: &M, commands: impl Fn() -> I) -> Self {
        let mut indexed = commands();
        let mut fetched = commands();
        if M::PREFETCH_AHEAD > 0 {
            for command in indexed.by_ref().take(2 * M::PREFETCH_AHEAD) {
                machine.prefetch_index(command);
            }
            for command in fetched.by_ref().take(M::PREFETCH_AHEAD) {
                machine.prefetch(command);
            }
        }
        Self { indexed, fetched }
    }

    /// Before each command's apply: hints the ones `PREFETCH_AHEAD` and twice that after it.
    #[inline]
    pub fn step<M: StateMachine<Command = C>>(&mut self, machine: &M) {
        if M::PREFETCH_AHEAD > 0 {
            if let Some(command) = self.indexed.next() {
                machine.prefetch_index(command);
            }
            if let Some(command) = self.fetched.next() {
                machine.prefetch(command);
            }
        }
    }
}
