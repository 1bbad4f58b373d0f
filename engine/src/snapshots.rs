//! Snapshots: when they are due, the copy of the state the engine thread makes, and the
//! thread that encodes and writes it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use keel_journal::snapshot::read_snapshot;
use keel_journal::{JournalError, SnapshotFile, SnapshotMeta, SnapshotStore};

use crate::codec::{Codec, CodecError};
use crate::config::SnapshotPolicy;
use crate::engine::Shared;
use crate::error::EngineError;
use crate::machine::StateMachine;
use crate::stats::Counters;

/// Where a snapshot written goes next, on the snapshot thread (a replica ships it to its
/// primary): called with the file; an error is reported as the snapshot's.
pub(crate) type Ship = Box<dyn Fn(&Path) -> Result<(), String> + Send>;

/// The snapshot policy, the last snapshot taken, and the thread that writes them (none in the
/// `Memory` tier).
pub(crate) struct Snapshots<M> {
    snapshotter: Option<Snapshotter<M>>,
    policy: SnapshotPolicy,
    /// The sequence and time of the last snapshot taken (or of the start).
    last: (u64, Instant),
}

impl<M: StateMachine> Snapshots<M> {
    /// No snapshots: requests are forgotten.
    pub(crate) fn none() -> Self {
        Self { snapshotter: None, policy: SnapshotPolicy::default(), last: (0, Instant::now()) }
    }

    /// Snapshots into `directory`, and a copy of each into every one of `copies`, per
    /// `policy`, counting from `sequence`, the state's now.
    pub(crate) fn start<C: Codec>(
        directory: &Path,
        copies: &[&Path],
        codec: C,
        shared: Arc<Shared>,
        policy: SnapshotPolicy,
        sequence: u64,
        shipped: Option<Ship>,
    ) -> Result<Self, EngineError> {
        let snapshotter =
            Snapshotter::start(directory, copies, codec, shared, policy.keep, shipped)?;
        Ok(Self { snapshotter: Some(snapshotter), policy, last: (sequence, Instant::now()) })
    }

    /// Whether a snapshot request should wake the engine thread: once no snapshot is being
    /// written (the one being written finishes first), so a waiting request does not spin it.
    pub(crate) fn wanted(&self, shared: &Arc<Shared>) -> impl FnMut() -> bool + use<M> {
        let shared = Arc::clone(shared);
        let writing = self.snapshotter.as_ref().map(|snapshotter| Arc::clone(&snapshotter.busy));
        move || {
            shared.snapshot_requested.load(Ordering::Acquire)
                && !writing.as_ref().is_some_and(|busy| busy.load(Ordering::Acquire))
        }
    }

    /// Takes a snapshot of `machine`, the state after `applied`, when one is asked for or due
    /// and none is being written: this thread pauses for the copy only.
    pub(crate) fn take_if_due(
        &mut self,
        machine: &M,
        applied: u64,
        timestamp_ns: u64,
        shared: &Shared,
    ) {
        let Some(snapshotter) = self.snapshotter.as_ref() else {
            shared.snapshot_requested.store(false, Ordering::Relaxed);
            return;
        };
        let (last_sequence, last_time) = self.last;
        let requested = shared.snapshot_requested.load(Ordering::Acquire);
        let due = requested
            || self.policy.every_commands.is_some_and(|every| applied - last_sequence >= every)
            || self
                .policy
                .every_interval
                .is_some_and(|every| applied > last_sequence && last_time.elapsed() >= every);
        if !due || snapshotter.busy() {
            return;
        }
        shared.snapshot_requested.store(false, Ordering::Release);
        let mut previous = snapshotter.recycled();
        let began = Instant::now();
        let copy = machine.copy_for_snapshot(&mut previous);
        let pause = began.elapsed().as_nanos() as u64;
        let counters = &shared.counters;
        Counters::set(&counters.snapshot_pause_last_ns, pause);
        if pause > counters.snapshot_pause_max_ns.load(Ordering::Relaxed) {
            Counters::set(&counters.snapshot_pause_max_ns, pause);
        }
        snapshotter.take(copy, previous, applied, timestamp_ns);
        self.last = (applied, Instant::now());
    }

    /// Waits for the snapshot being written, then stops the thread.
    pub(crate) fn finish(&mut self) {
        if let Some(snapshotter) = self.snapshotter.take() {
            snapshotter.finish();
        }
    }
}

/// A copy of the state to write as a snapshot, an earlier copy to free, the sequence and the
/// timestamp.
type SnapshotRequest<M> = (M, Option<M>, u64, u64);

/// The background thread that encodes and writes snapshots from copies of the state, and
/// hands each copy back for the next snapshot to reuse.
struct Snapshotter<M> {
    requests: Option<SyncSender<SnapshotRequest<M>>>,
    returned: Receiver<M>,
    busy: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<M: StateMachine> Snapshotter<M> {
    fn start<C: Codec>(
        directory: &Path,
        copies: &[&Path],
        codec: C,
        shared: Arc<Shared>,
        keep: usize,
        shipped: Option<Ship>,
    ) -> Result<Self, EngineError> {
        let store = SnapshotStore::open(directory)?;
        let copies = copies.iter().map(SnapshotStore::open).collect::<Result<Vec<_>, _>>()?;
        let (requests, received): (SyncSender<SnapshotRequest<M>>, Receiver<SnapshotRequest<M>>) =
            mpsc::sync_channel(1);
        let (give_back, returned) = mpsc::sync_channel(1);
        let busy = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&busy);
        let thread = std::thread::Builder::new()
            .name("keel-snapshot".into())
            .spawn(move || {
                for (machine, unused, sequence, timestamp_ns) in received {
                    drop(unused);
                    let outcome = write_snapshot(
                        &store,
                        &copies,
                        &codec,
                        &machine,
                        sequence,
                        timestamp_ns,
                        keep,
                    )
                    .and_then(|file| match &shipped {
                        Some(ship) => ship(&file.path).map_err(|message| {
                            EngineError::Recovery(format!("shipping it: {message}"))
                        }),
                        None => Ok(()),
                    });
                    let counters = &shared.counters;
                    match outcome {
                        Ok(()) => {
                            // The sequence first, and the count released after it: a reader
                            // that sees the count go up sees this snapshot's sequence.
                            Counters::set(&counters.last_snapshot_sequence, sequence);
                            *counters.snapshot_error.lock() = None;
                            counters.snapshots.store(
                                counters.snapshots.load(Ordering::Relaxed) + 1,
                                Ordering::Release,
                            );
                        }
                        Err(error) => {
                            *counters.snapshot_error.lock() =
                                Some(format!("snapshot at {sequence}: {error}"))
                        }
                    }
                    // Handed back for the next snapshot's copy; freed here if one is waiting.
                    let _ = give_back.try_send(machine);
                    done.store(false, Ordering::Release);
                }
            })
            .map_err(|error| EngineError::Spawn {
                thread: "snapshot".into(),
                message: error.to_string(),
            })?;
        Ok(Self { requests: Some(requests), returned, busy, thread: Some(thread) })
    }

    fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// The copy of an earlier snapshot, written and handed back, if there is one.
    fn recycled(&self) -> Option<M> {
        self.returned.try_recv().ok()
    }

    fn take(&self, machine: M, unused: Option<M>, sequence: u64, timestamp_ns: u64) {
        self.busy.store(true, Ordering::Release);
        if let Some(requests) = &self.requests {
            match requests.try_send((machine, unused, sequence, timestamp_ns)) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.busy.store(false, Ordering::Release);
                }
            }
        }
    }

    /// Waits for the snapshot being written, then stops the thread.
    fn finish(mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes a snapshot of `machine` at `sequence` into `store` and then into each of `copies`,
/// and keeps the newest `keep` of each (all when 0); returns the file written into `store`. The
/// encoding streams into that file, so that the state is never held encoded in memory as well;
/// the copies get that file's payload.
pub(crate) fn write_snapshot<M: StateMachine, C: Codec>(
    store: &SnapshotStore,
    copies: &[SnapshotStore],
    codec: &C,
    machine: &M,
    sequence: u64,
    timestamp_ns: u64,
    keep: usize,
) -> Result<SnapshotFile, EngineError> {
    let meta = SnapshotMeta {
        schema_version: M::SCHEMA_VERSION,
        codec: C::ID,
        sequence,
        timestamp_ns,
        state_hash: machine.state_hash(),
    };
    let written = store
        .write_streaming(&meta, |writer| codec.encode_to(machine, writer))
        .map_err(codec_or_journal)?;
    if !copies.is_empty() {
        // Read back before any pruning: a newer snapshot in `store` could otherwise take it.
        let (_, payload) = read_snapshot(&written.path)?;
        for copy in copies {
            copy.write(&meta, &payload)?;
        }
    }
    for pruned in std::iter::once(store).chain(copies) {
        prune(pruned, keep)?;
    }
    Ok(written)
}

/// Removes all but the newest `keep` snapshots of `store` (none when 0).
fn prune(store: &SnapshotStore, keep: usize) -> Result<(), EngineError> {
    if keep > 0 {
        store.remove_all_but_newest(keep)?;
    }
    Ok(())
}

/// A codec's failure comes out of a streamed snapshot's write as the I/O error that carried it
/// (`Codec::encode_to`): it is reported as the codec's again, not as the file's.
fn codec_or_journal(error: JournalError) -> EngineError {
    if let JournalError::Io { source, .. } = &error {
        if let Some(codec) = source.get_ref().and_then(|inner| inner.downcast_ref::<CodecError>()) {
            return EngineError::Codec(codec.clone());
        }
    }
    EngineError::Journal(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Bincode;
    use crate::machine::{Context, Output};
    use keel_journal::snapshot::snapshot_file_name;
    use serde::{Deserialize, Serialize, Serializer};

    /// A state of `values`, whose encoding fails when `refuse` is set (a sequence of unknown
    /// length, which bincode refuses) after the values are written.
    #[derive(Clone, Debug, Default, PartialEq, Deserialize)]
    struct Values {
        values: Vec<u64>,
        #[serde(skip)]
        refuse: bool,
    }

    impl Serialize for Values {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{SerializeSeq, SerializeStruct};
            if self.refuse {
                let mut sequence = serializer.serialize_seq(None)?;
                sequence.serialize_element(&self.values)?;
                return sequence.end();
            }
            let mut state = serializer.serialize_struct("Values", 1)?;
            state.serialize_field("values", &self.values)?;
            state.end()
        }
    }

    impl StateMachine for Values {
        type Command = u64;
        type Event = ();

        fn apply(&mut self, _: &Context, command: &u64, _: &mut Output<()>) {
            self.values.push(*command);
        }

        fn state_hash(&self) -> u64 {
            self.values.iter().fold(0, |hash, value| hash.rotate_left(7) ^ value)
        }
    }

    fn files(store: &SnapshotStore) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(store.directory())
            .map(|entries| {
                entries.map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn a_snapshot_streamed_into_its_file_and_copied_loads_as_the_state() {
        let directory = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(directory.path().join("own")).unwrap();
        let copies = [SnapshotStore::open(directory.path().join("copy")).unwrap()];
        // Larger than the codec's stream buffer, so that it is written in several writes.
        let state =
            Values { values: (0..200_000).map(|value| value * 977).collect(), refuse: false };
        let file = write_snapshot(&store, &copies, &Bincode, &state, 42, 7, 0).unwrap();
        assert_eq!(file.sequence, 42);
        for written in [&store, &copies[0]] {
            let path = written.directory().join(snapshot_file_name(42));
            let (header, payload) = read_snapshot(&path).unwrap();
            assert_eq!((header.sequence, header.state_hash), (42, state.state_hash()));
            let loaded: Values = Bincode.decode(&payload).unwrap();
            assert_eq!(loaded, state, "{}", path.display());
        }
    }

    #[test]
    fn a_state_that_cannot_be_encoded_is_the_codecs_error_and_leaves_no_file() {
        let directory = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(directory.path().join("own")).unwrap();
        let copies = [SnapshotStore::open(directory.path().join("copy")).unwrap()];
        let state = Values { values: vec![3; 100_000], refuse: true };
        let error = write_snapshot(&store, &copies, &Bincode, &state, 42, 7, 0).unwrap_err();
        let EngineError::Codec(codec) = &error else {
            panic!("expected the codec's error, got {error:?}");
        };
        assert!(codec.to_string().starts_with("bincode encoding failed"), "{codec}");
        assert_eq!(files(&store), Vec::<String>::new(), "no snapshot and no temporary file");
        assert_eq!(files(&copies[0]), Vec::<String>::new());
    }
}
