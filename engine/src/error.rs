//! The engine's errors.

use keel_journal::JournalError;

use crate::codec::CodecError;

/// Why the engine stopped: the first failure, kept for every later caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Halt {
    /// `apply` panicked on a command: fail-stop. Reopening replays to the same panic unless
    /// the builder is told to `stop_before` this sequence.
    #[error("the state machine panicked applying sequence {sequence}: {message}")]
    ApplyPanicked {
        /// The command's sequence.
        sequence: u64,
        /// The panic's message.
        message: String,
    },
    /// The journal failed (a full disk, an I/O error): everything applied before is durable
    /// per the tier; nothing after was applied.
    #[error("the journal failed at sequence {sequence}: {message}")]
    Journal {
        /// The first sequence that could not be made durable.
        sequence: u64,
        /// The journal's error.
        message: String,
    },
    /// A published command could not be encoded for the journal: neither it nor anything
    /// after it was journaled or applied; the commands journaled before it are durable, and
    /// the ones of them not yet applied are applied when the engine is reopened.
    #[error("sequence {sequence} could not be encoded for the journal: {message}")]
    Encode {
        /// The sequence the command was given.
        sequence: u64,
        /// The codec's error.
        message: String,
    },
    /// A journaled command could not be decoded on replay.
    #[error("sequence {sequence} could not be decoded: {message}")]
    Decode {
        /// The record's sequence.
        sequence: u64,
        /// Why.
        message: String,
    },
    /// A subscriber panicked, which stopped the output ring: events could no longer be
    /// delivered, so nothing more is applied.
    #[error("a subscriber failed at sequence {sequence}: {message}")]
    Subscriber {
        /// The command whose events could not be delivered.
        sequence: u64,
        /// The output ring's error.
        message: String,
    },
    /// The state at a checkpoint record does not hash to what the journal's writer recorded
    /// there: `apply` is not deterministic, the state's code changed, or a snapshot is wrong.
    /// Named by the first checkpoint that differs.
    #[error(
        "the state diverged at the checkpoint of sequence {checkpoint}: after sequence \
         {covered} the journal records hash {recorded:#018x}, this state hashes to \
         {computed:#018x}"
    )]
    Diverged {
        /// The checkpoint record's sequence.
        checkpoint: u64,
        /// The last sequence its hash covers.
        covered: u64,
        /// The hash in the journal.
        recorded: u64,
        /// This state's hash.
        computed: u64,
    },
    /// A replica could not read the journal it follows: its primary's is damaged, or no
    /// longer holds the records the replica needs.
    #[error("the followed journal failed at sequence {sequence}: {message}")]
    Primary {
        /// The sequence the replica was waiting for.
        sequence: u64,
        /// What went wrong.
        message: String,
    },
    /// The `Replicated` tier could not get an input acknowledged by enough replicas before
    /// the engine was asked to stop: the input is in the primary's journal, not applied.
    #[error("sequence {sequence} was not replicated: {message}")]
    Replication {
        /// The first sequence not acknowledged by the quorum.
        sequence: u64,
        /// Why.
        message: String,
    },
    /// A replica told this primary of a newer primary's epoch: this one was replaced, and
    /// applies nothing more.
    #[error("this primary is fenced: a replica follows a newer primary, of epoch {epoch}")]
    Fenced {
        /// The newer epoch.
        epoch: u64,
    },
    /// Halted on request.
    #[error("halted on request")]
    Requested,
}

/// An error from the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The journal or the snapshot files.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A command or a state could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The engine stopped (see [`Halt`]); nothing more is accepted.
    #[error("the engine stopped: {0}")]
    Halted(Halt),
    /// `try_publish`: the input ring is full right now.
    #[error("the input ring is full")]
    Full,
    /// The engine was shut down: every publisher was dropped or `shutdown` was called.
    #[error("the engine is shut down")]
    Closed,
    /// The journal does not hold what recovery needs.
    #[error("{0}")]
    Recovery(String),
    /// A setting that cannot work.
    #[error("invalid configuration: {0}")]
    Configuration(String),
    /// A thread could not be started.
    #[error("could not start the {thread} thread: {message}")]
    Spawn {
        /// Which thread.
        thread: String,
        /// The operating system's reason.
        message: String,
    },
}
