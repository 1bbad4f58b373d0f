//! Recovery and replay: the newest valid snapshot, then every later journaled command through
//! the state machine, checked and in order.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::Instant;

use keel_journal::format::{
    Checkpoint, RecordView, SnapshotHeader, CHECKPOINT_VERSION, KIND_APPLICATION_MAX,
    KIND_CHECKPOINT,
};
use keel_journal::{BatchRun, JournalError, JournalReader, SnapshotStore};

use crate::codec::Codec;
use crate::error::{EngineError, Halt};
use crate::machine::{Context, Output, StateMachine};

/// The journal record kind of a command.
pub(crate) const KIND_COMMAND: u16 = 1;

/// A snapshot that recovery skipped, and why.
pub type Skipped = (PathBuf, String);

/// The state a replay starts from.
pub(crate) struct Start<M> {
    pub(crate) machine: M,
    /// The snapshot's file and sequence, when one was loaded.
    pub(crate) snapshot: Option<(PathBuf, u64)>,
    pub(crate) sequence: u64,
    pub(crate) timestamp_ns: u64,
    pub(crate) skipped: Vec<Skipped>,
}

/// Loads the newest snapshot (the oldest when `oldest_first`) that passes every check and that
/// `usable(sequence, timestamp)` accepts: its file's checksums, this machine's schema version,
/// the codec, decoding, and its state hash. Falls back to `initial` (sequence 0). Every
/// snapshot passed over is reported.
pub(crate) fn load_snapshot<M: StateMachine, C: Codec>(
    directory: &Path,
    codec: &C,
    initial: M,
    oldest_first: bool,
    usable: impl Fn(u64, u64) -> Result<(), String>,
) -> Result<Start<M>, EngineError> {
    let store = SnapshotStore::open(directory)?;
    let check = |header: &SnapshotHeader, payload: &[u8]| {
        usable(header.sequence, header.timestamp_ns)?;
        if header.schema_version != M::SCHEMA_VERSION {
            return Err(format!(
                "schema version {} is not this build's ({})",
                header.schema_version,
                M::SCHEMA_VERSION
            ));
        }
        if header.codec != C::ID {
            return Err(format!("codec {} is not this engine's ({})", header.codec, C::ID));
        }
        let machine: M = codec.decode(payload).map_err(|error| error.to_string())?;
        let hash = machine.state_hash();
        if hash != header.state_hash {
            return Err(format!(
                "the decoded state hashes to {hash:#018x}, the header says {:#018x}",
                header.state_hash
            ));
        }
        Ok(machine)
    };
    let loaded = if oldest_first { store.load_oldest(check)? } else { store.load_newest(check)? };
    Ok(match loaded.loaded {
        Some((file, header, machine)) => Start {
            machine,
            snapshot: Some((file.path, header.sequence)),
            sequence: header.sequence,
            timestamp_ns: header.timestamp_ns,
            skipped: loaded.skipped,
        },
        None => Start {
            machine: initial,
            snapshot: None,
            sequence: 0,
            timestamp_ns: 0,
            skipped: loaded.skipped,
        },
    })
}

/// Where a replay sends each command's events, with its context.
pub(crate) type EventSink<'a, E> = &'a mut dyn FnMut(&Context, &[E]);

/// How far a replay went.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Replayed {
    pub(crate) records: u64,
    pub(crate) last_sequence: u64,
    pub(crate) last_timestamp_ns: u64,
    pub(crate) seconds: f64,
}

/// How many records a run of checked batches holds at most, and how many batches: enough that
/// handing a run between the threads costs nothing measurable, little enough that the reading
/// thread is never far ahead.
const RUN_RECORDS: u64 = 8 * 1024;
const RUN_BATCHES: usize = 1024;

/// How many checked runs the reading thread may have waiting.
const RUNS_AHEAD: usize = 4;

/// What the reading thread hands over: a run of checked batches, and whether reading stopped
/// after it on an error (an empty run with `Ok` is the journal's end).
type CheckedRun = (BatchRun, Result<(), JournalError>);

/// Applies the journal's commands from `start.sequence + 1` to `target`, or to the end of
/// what the journal holds. Past a sequence target nothing is looked at, so damage there does
/// not stop a replay to a point before it. Each record's checksum is verified (by batch)
/// before it is decoded; the sequence is gap-free by the reader's checks. Events go to `sink`,
/// when there is one, with their command's sequence. `progress` is called every 1 M records.
///
/// A second thread reads and checks the journal a few runs of batches ahead, while this one
/// decodes and applies: the checks are a third of a replay's time (ARCHITECTURE.md, "Replay
/// checks the journal on a thread of its own"). What this thread applies, and any error, come
/// in the journal's order, exactly as a reading on one thread gives them.
pub(crate) fn replay<M: StateMachine, C: Codec>(
    directory: &Path,
    codec: &C,
    machine: &mut M,
    start: (u64, u64),
    target: ReplayTarget,
    mut sink: Option<EventSink<'_, M::Event>>,
    progress: &mut dyn FnMut(u64),
) -> Result<Replayed, EngineError> {
    let began = Instant::now();
    let (mut last_sequence, mut last_timestamp_ns) = start;
    let mut records = 0;
    let until = match target {
        ReplayTarget::Sequence(last) => last,
        ReplayTarget::Timestamp(_) | ReplayTarget::End => u64::MAX,
    };
    if last_sequence >= until {
        return Ok(Replayed { records, last_sequence, last_timestamp_ns, seconds: 0.0 });
    }
    let reader = JournalReader::open_at(directory, last_sequence + 1)?;
    let mut output = Output::new();
    std::thread::scope(|scope| -> Result<(), EngineError> {
        let (checked, runs) = mpsc::sync_channel::<CheckedRun>(RUNS_AHEAD);
        let (recycle, recycled) = mpsc::channel::<BatchRun>();
        let reading = std::thread::Builder::new()
            .name("keel-replay-read".into())
            .spawn_scoped(scope, move || read_ahead(reader, &checked, &recycled))
            .map_err(|error| EngineError::Spawn {
                thread: "replay's reading".into(),
                message: error.to_string(),
            })?;
        // After each record applied: its events to the sink, the counts; whether to stop.
        let mut applied_one = |context: &Context, command: bool, output: &Output<M::Event>| {
            // Without a sink the events are dropped here: no call per command.
            if let (true, Some(sink)) = (command, sink.as_mut()) {
                sink(context, output.events());
            }
            last_sequence = context.sequence;
            last_timestamp_ns = context.timestamp_ns;
            records += 1;
            if records % (1 << 20) == 0 {
                progress(records);
            }
            context.sequence == until
        };
        // Records decoded ahead of `apply`, for a machine that asks for hints, and how many
        // of them from the front have been handed to `prefetch` (all of them to
        // `prefetch_index`, as they were decoded).
        let mut ahead = VecDeque::with_capacity(2 * M::PREFETCH_AHEAD + 1);
        let mut fetched = 0;
        let applied = 'runs: loop {
            // The reading thread only hangs up after sending its last run: a closed channel
            // here is its panic, which the join below passes on.
            let Ok((run, outcome)) = runs.recv() else { break Ok(()) };
            for batch in run.batches() {
                let mut batch = batch.iter();
                if M::PREFETCH_AHEAD > 0 {
                    // Each record is decoded `2 × PREFETCH_AHEAD` records before it is
                    // applied, and a command handed to the machine's hints then and
                    // `PREFETCH_AHEAD` records before, as the live engine does. A record that
                    // does not decode halts the replay when its turn comes, after the records
                    // before it.
                    loop {
                        while ahead.len() <= 2 * M::PREFETCH_AHEAD {
                            let Some((record, from_payload)) = batch.next_with_rest() else {
                                break;
                            };
                            let decoded = decode_fields::<M, C>(
                                codec,
                                record.sequence,
                                record.kind,
                                record.version,
                                record.payload,
                                from_payload,
                            );
                            if let Ok(Decoded::Command(command)) = &decoded {
                                machine.prefetch_index(command);
                            }
                            let context = Context {
                                sequence: record.sequence,
                                timestamp_ns: record.timestamp_ns,
                            };
                            ahead.push_back((context, decoded));
                        }
                        while fetched < ahead.len().min(M::PREFETCH_AHEAD + 1) {
                            if let Ok(Decoded::Command(command)) = &ahead[fetched].1 {
                                machine.prefetch(command);
                            }
                            fetched += 1;
                        }
                        let Some((context, decoded)) = ahead.pop_front() else { break };
                        fetched -= 1;
                        if !target.admits(context.sequence, context.timestamp_ns) {
                            break 'runs Ok(());
                        }
                        output.clear();
                        let replayed = decoded.and_then(|decoded| {
                            apply_record(machine, &context, &decoded, &mut output)
                                .map(|()| matches!(decoded, Decoded::Command(_)))
                        });
                        match replayed {
                            Ok(command) if applied_one(&context, command, &output) => {
                                break 'runs Ok(())
                            }
                            Ok(_) => {}
                            Err(halt) => break 'runs Err(EngineError::Halted(halt)),
                        }
                    }
                    continue;
                }
                while let Some((record, from_payload)) = batch.next_with_rest() {
                    if !target.admits(record.sequence, record.timestamp_ns) {
                        break 'runs Ok(());
                    }
                    let context =
                        Context { sequence: record.sequence, timestamp_ns: record.timestamp_ns };
                    output.clear();
                    let replayed =
                        replay_record(codec, machine, &context, &record, from_payload, &mut output);
                    match replayed {
                        Ok(command) if applied_one(&context, command, &output) => {
                            break 'runs Ok(())
                        }
                        Ok(_) => {}
                        Err(halt) => break 'runs Err(EngineError::Halted(halt)),
                    }
                }
            }
            match outcome {
                // An unacknowledged write at the end, which opening the journal for writing
                // truncates: not data. (Recovery opens the writer first, so it never sees one.)
                Err(JournalError::TornTail { .. }) => break Ok(()),
                Err(error) => break Err(error.into()),
                Ok(()) if run.is_empty() => break Ok(()),
                // Handed back for the reading thread to fill again; it may have stopped.
                Ok(()) => drop(recycle.send(run)),
            }
        };
        // Hanging up stops a reading thread that is still ahead (a replay to a point, or one
        // that halted).
        drop(runs);
        drop(recycle);
        if let Err(panic) = reading.join() {
            std::panic::resume_unwind(panic);
        }
        applied
    })?;
    progress(records);
    let seconds = began.elapsed().as_secs_f64();
    Ok(Replayed { records, last_sequence, last_timestamp_ns, seconds })
}

/// Decodes and applies one record of a replay; whether it was a command (whose events are in
/// `output`). A command of this build's version, nearly every record, takes a path of its own
/// straight from the codec to `apply`: passed through [`Decoded`] and the `Result`s around it,
/// the command was copied through the stack in pieces whose reload waited on the stores (a
/// store-forwarding stall, most of a replay's time with a small command, by `perf annotate`).
/// `from_payload` is the batch from the record's payload on, for the codec to read ahead in.
#[inline]
fn replay_record<M: StateMachine, C: Codec>(
    codec: &C,
    machine: &mut M,
    context: &Context,
    record: &RecordView<'_>,
    from_payload: &[u8],
    output: &mut Output<M::Event>,
) -> Result<bool, Halt> {
    if record.kind == KIND_COMMAND && record.version == M::COMMAND_VERSION {
        let decoded = codec.decode_prefix::<M::Command>(from_payload, record.payload.len());
        return match decoded {
            Ok(command) => apply_guarded(machine, context, &command, output).map(|()| true),
            Err(error) => {
                Err(Halt::Decode { sequence: record.sequence, message: error.to_string() })
            }
        };
    }
    let decoded = decode_record::<M, C>(codec, record)?;
    apply_record(machine, context, &decoded, output)?;
    Ok(matches!(decoded, Decoded::Command(_)))
}

/// The reading thread of [`replay`]: fills runs of checked batches (reusing those handed back)
/// and sends them in order, until the journal's end, an error, or the applying side hangs up.
fn read_ahead(
    mut reader: JournalReader,
    checked: &SyncSender<CheckedRun>,
    recycled: &Receiver<BatchRun>,
) {
    loop {
        let mut run = recycled.try_recv().unwrap_or_default();
        let outcome = reader.next_run(&mut run, RUN_RECORDS, RUN_BATCHES);
        let last = outcome.is_err() || run.is_empty();
        if checked.send((run, outcome)).is_err() || last {
            return;
        }
    }
}

/// A journal record decoded: what applying it means.
#[derive(Debug)]
pub(crate) enum Decoded<C> {
    /// An application command.
    Command(C),
    /// A checkpoint to compare the state's hash with.
    Checkpoint(Checkpoint),
    /// A record of keel's own that carries nothing to apply or check (an epoch change).
    Other,
}

/// Decodes a record: a command (upcast when older), a checkpoint, or another of keel's kinds.
/// A kind of the application's range that is not this engine's command is an error.
pub(crate) fn decode_record<M: StateMachine, C: Codec>(
    codec: &C,
    record: &RecordView<'_>,
) -> Result<Decoded<M::Command>, Halt> {
    let payload = record.payload;
    decode_fields::<M, C>(codec, record.sequence, record.kind, record.version, payload, payload)
}

/// [`decode_record`] of a record's fields, however they were received. `readable` starts with
/// the payload and may run on past it (bytes the codec may read ahead in, never decode).
pub(crate) fn decode_fields<M: StateMachine, C: Codec>(
    codec: &C,
    sequence: u64,
    kind: u16,
    version: u16,
    payload: &[u8],
    readable: &[u8],
) -> Result<Decoded<M::Command>, Halt> {
    // A command of this build's version, nearly every record, goes straight from the codec:
    // through `decode_command`'s `Result` and the maps around it the command was copied
    // through the stack in pieces (the stall that `replay_record` avoids too).
    if kind == KIND_COMMAND && version == M::COMMAND_VERSION {
        return match codec.decode_prefix::<M::Command>(readable, payload.len()) {
            Ok(command) => Ok(Decoded::Command(command)),
            Err(error) => Err(Halt::Decode { sequence, message: error.to_string() }),
        };
    }
    let invalid = |message: String| Halt::Decode { sequence, message };
    let record = (sequence, version, payload);
    match kind {
        KIND_COMMAND => {
            decode_command::<M, C>(codec, version, payload).map(Decoded::Command).map_err(invalid)
        }
        KIND_CHECKPOINT => {
            let (sequence, version, payload) = record;
            if version != CHECKPOINT_VERSION {
                return Err(invalid(format!(
                    "checkpoint records of version {version} cannot be read: this build reads \
                     version {CHECKPOINT_VERSION}"
                )));
            }
            let checkpoint =
                Checkpoint::decode(payload).map_err(|error| invalid(error.to_string()))?;
            if checkpoint.sequence + 1 != sequence {
                return Err(invalid(format!(
                    "a checkpoint covers the sequence before it, this one says {}",
                    checkpoint.sequence
                )));
            }
            Ok(Decoded::Checkpoint(checkpoint))
        }
        kind if kind <= KIND_APPLICATION_MAX => {
            Err(invalid(format!("record kind {kind} is not a command of this engine")))
        }
        _ => Ok(Decoded::Other),
    }
}

/// Applies a decoded record: a command through `apply` (its events left in `output`), a
/// checkpoint compared with the state's hash, which must be the one after the record before
/// it.
pub(crate) fn apply_record<M: StateMachine>(
    machine: &mut M,
    context: &Context,
    record: &Decoded<M::Command>,
    output: &mut Output<M::Event>,
) -> Result<(), Halt> {
    match record {
        Decoded::Command(command) => apply_guarded(machine, context, command, output),
        Decoded::Checkpoint(checkpoint) => {
            let computed = machine.state_hash();
            if computed == checkpoint.state_hash {
                Ok(())
            } else {
                Err(Halt::Diverged {
                    checkpoint: context.sequence,
                    covered: checkpoint.sequence,
                    recorded: checkpoint.state_hash,
                    computed,
                })
            }
        }
        Decoded::Other => Ok(()),
    }
}

/// Decodes a journaled command of `version` as recovery and replicas do: directly when it is
/// this build's [`StateMachine::COMMAND_VERSION`], through the machine's
/// [`upcast`](StateMachine::upcast) otherwise. For tools that read a journal's records
/// themselves (an investigation, an export); an error says why the bytes are not a command.
pub fn decode_command<M: StateMachine, C: Codec>(
    codec: &C,
    version: u16,
    bytes: &[u8],
) -> Result<M::Command, String> {
    if version == M::COMMAND_VERSION {
        codec.decode(bytes).map_err(|error| error.to_string())
    } else {
        M::upcast(codec, version, bytes).map_err(|error| error.to_string())
    }
}

/// Applies one command, turning a panic into the fail-stop halt that names its sequence.
#[inline]
pub(crate) fn apply_guarded<M: StateMachine>(
    machine: &mut M,
    context: &Context,
    command: &M::Command,
    output: &mut Output<M::Event>,
) -> Result<(), Halt> {
    catch_unwind(AssertUnwindSafe(|| machine.apply(context, command, output))).map_err(|panic| {
        Halt::ApplyPanicked { sequence: context.sequence, message: panic_message(panic.as_ref()) }
    })
}

/// A panic's payload as text.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Where [`replay_to`] stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplayTarget {
    /// After this sequence.
    Sequence(u64),
    /// After the last command whose timestamp is at or before this time (nanoseconds since
    /// the Unix epoch).
    Timestamp(u64),
    /// To the end of the journal.
    End,
}

impl ReplayTarget {
    /// Whether a command of this sequence and timestamp is at or before the target.
    fn admits(self, sequence: u64, timestamp_ns: u64) -> bool {
        match self {
            Self::Sequence(last) => sequence <= last,
            Self::Timestamp(last) => timestamp_ns <= last,
            Self::End => true,
        }
    }
}

/// The state of a replay that stopped at a point, for queries.
#[derive(Debug)]
pub struct ReplayedState<M> {
    /// The state after the last command applied.
    pub machine: M,
    /// The last command applied (the snapshot's sequence, or 0, if none was).
    pub last_sequence: u64,
    /// Its timestamp.
    pub last_timestamp_ns: u64,
    /// The snapshot the replay started from, with its sequence.
    pub snapshot: Option<(PathBuf, u64)>,
    /// Snapshots passed over, with the reason.
    pub skipped_snapshots: Vec<Skipped>,
    /// Commands replayed after the snapshot.
    pub replayed: u64,
    /// Seconds the replay took.
    pub seconds: f64,
    /// The state's hash.
    pub state_hash: u64,
}

/// Which snapshot a replay starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReplayFrom {
    /// The newest usable snapshot at or before the target (the fastest).
    #[default]
    NewestSnapshot,
    /// The oldest usable snapshot: the longest replay the kept files allow.
    OldestSnapshot,
    /// No snapshot: every command from the journal's first (which must be sequence 1).
    Beginning,
}

/// Rebuilds the state of the journal in `directory` at `target`, read-only (no lock is taken
/// and nothing is written, so it can run beside a live engine): the newest snapshot at or
/// before the target, then the commands after it up to the target. "What was the balance at
/// 15:00 yesterday?" is `replay_to(dir, Bank::default(), ReplayTarget::Timestamp(..))` and a
/// query of the returned state.
pub fn replay_to<M: StateMachine, C: Codec>(
    directory: impl AsRef<Path>,
    codec: C,
    initial: M,
    target: ReplayTarget,
) -> Result<ReplayedState<M>, EngineError> {
    replay_from(directory, codec, initial, ReplayFrom::NewestSnapshot, target)
}

/// [`replay_to`], starting from the snapshot `from` chooses: replaying the same journal from
/// different snapshots and comparing the hashes checks the snapshots and the determinism of
/// `apply` at once.
pub fn replay_from<M: StateMachine, C: Codec>(
    directory: impl AsRef<Path>,
    codec: C,
    initial: M,
    from: ReplayFrom,
    target: ReplayTarget,
) -> Result<ReplayedState<M>, EngineError> {
    let directory = directory.as_ref();
    let before_target = |sequence, timestamp| {
        if target.admits(sequence, timestamp) {
            Ok(())
        } else {
            Err("it is past the replay's target".to_owned())
        }
    };
    let start = match from {
        ReplayFrom::NewestSnapshot => {
            load_snapshot(directory, &codec, initial, false, before_target)?
        }
        ReplayFrom::OldestSnapshot => {
            load_snapshot(directory, &codec, initial, true, before_target)?
        }
        ReplayFrom::Beginning => Start {
            machine: initial,
            snapshot: None,
            sequence: 0,
            timestamp_ns: 0,
            skipped: Vec::new(),
        },
    };
    let Start { mut machine, snapshot, sequence, timestamp_ns, skipped } = start;
    let replayed = replay(
        directory,
        &codec,
        &mut machine,
        (sequence, timestamp_ns),
        target,
        None,
        &mut |_| {},
    )?;
    if let ReplayTarget::Sequence(last) = target {
        if replayed.last_sequence < last {
            return Err(EngineError::Recovery(format!(
                "the journal ends at sequence {}, before the target {last}",
                replayed.last_sequence
            )));
        }
    }
    let state_hash = machine.state_hash();
    Ok(ReplayedState {
        machine,
        last_sequence: replayed.last_sequence,
        last_timestamp_ns: replayed.last_timestamp_ns,
        snapshot,
        skipped_snapshots: skipped,
        replayed: replayed.records,
        seconds: replayed.seconds,
        state_hash,
    })
}
