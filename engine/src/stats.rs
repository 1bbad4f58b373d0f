//! Counters the engine keeps as it runs, read as a plain [`Stats`] value.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// What the engine has done, read at one moment (each field is read on its own, so they may
/// be a few commands apart from each other).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// The last sequence handed to a publisher.
    pub published: u64,
    /// The last sequence written to the journal.
    pub journaled: u64,
    /// The last sequence durable per the tier.
    pub durable: u64,
    /// The last sequence applied to the state.
    pub applied: u64,
    /// Batches the engine thread took from the input ring.
    pub batches: u64,
    /// The largest of those batches.
    pub largest_batch: u64,
    /// Input slots in use (published and not yet applied) when last looked at.
    pub ring_occupancy: u64,
    /// Snapshots written.
    pub snapshots: u64,
    /// The sequence of the last snapshot written.
    pub last_snapshot_sequence: u64,
    /// How long the engine thread paused for the last snapshot (the copy of the state), in
    /// nanoseconds.
    pub snapshot_pause_last_ns: u64,
    /// The longest such pause.
    pub snapshot_pause_max_ns: u64,
    /// Checkpoint records written (an engine) or whose hash was matched (a replica).
    pub checkpoints: u64,
    /// The sequence of the last of them.
    pub last_checkpoint: u64,
    /// The last snapshot failure, if the last attempt failed. Snapshots are not the journal:
    /// a failed one stops nothing.
    pub snapshot_error: Option<String>,
}

/// The engine's live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) journaled: AtomicU64,
    pub(crate) durable: AtomicU64,
    pub(crate) applied: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) largest_batch: AtomicU64,
    pub(crate) snapshots: AtomicU64,
    pub(crate) last_snapshot_sequence: AtomicU64,
    pub(crate) snapshot_pause_last_ns: AtomicU64,
    pub(crate) snapshot_pause_max_ns: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) last_checkpoint: AtomicU64,
    pub(crate) snapshot_error: Mutex<Option<String>>,
}

impl Counters {
    /// Stores `value` for others to read; only the engine thread writes these.
    #[inline]
    pub(crate) fn set(counter: &AtomicU64, value: u64) {
        counter.store(value, Ordering::Relaxed);
    }

    /// Counts a batch taken from the input ring.
    pub(crate) fn count_batch(&self, size: u64) {
        Self::set(&self.batches, self.batches.load(Ordering::Relaxed) + 1);
        if size > self.largest_batch.load(Ordering::Relaxed) {
            Self::set(&self.largest_batch, size);
        }
    }

    /// Counts a checkpoint written or matched at `sequence`.
    pub(crate) fn count_checkpoint(&self, sequence: u64) {
        Self::set(&self.checkpoints, self.checkpoints.load(Ordering::Relaxed) + 1);
        Self::set(&self.last_checkpoint, sequence);
    }

    pub(crate) fn read(&self, published: u64) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        // Acquire, and first: the snapshot's sequence and pause, stored before the count,
        // are then at least as new as the count.
        let snapshots = self.snapshots.load(Ordering::Acquire);
        let applied = load(&self.applied);
        Stats {
            published,
            journaled: load(&self.journaled),
            durable: load(&self.durable),
            applied,
            batches: load(&self.batches),
            largest_batch: load(&self.largest_batch),
            ring_occupancy: published.saturating_sub(applied),
            snapshots,
            last_snapshot_sequence: load(&self.last_snapshot_sequence),
            snapshot_pause_last_ns: load(&self.snapshot_pause_last_ns),
            snapshot_pause_max_ns: load(&self.snapshot_pause_max_ns),
            checkpoints: load(&self.checkpoints),
            last_checkpoint: load(&self.last_checkpoint),
            snapshot_error: self.snapshot_error.lock().clone(),
        }
    }
}

#[cfg(feature = "metrics")]
impl Stats {
    /// Records these figures through the `metrics` facade: counters `keel_published`,
    /// `keel_journaled`, `keel_durable`, `keel_applied`, `keel_batches`, `keel_snapshots`,
    /// `keel_checkpoints`, and
    /// gauges `keel_largest_batch`, `keel_ring_occupancy`, `keel_last_snapshot_sequence`,
    /// `keel_snapshot_pause_last_seconds`, `keel_snapshot_pause_max_seconds`,
    /// `keel_snapshot_failing` (1 while the last snapshot failed).
    pub fn record_metrics(&self) {
        metrics::counter!("keel_published").absolute(self.published);
        metrics::counter!("keel_journaled").absolute(self.journaled);
        metrics::counter!("keel_durable").absolute(self.durable);
        metrics::counter!("keel_applied").absolute(self.applied);
        metrics::counter!("keel_batches").absolute(self.batches);
        metrics::counter!("keel_snapshots").absolute(self.snapshots);
        metrics::counter!("keel_checkpoints").absolute(self.checkpoints);
        metrics::gauge!("keel_largest_batch").set(self.largest_batch as f64);
        metrics::gauge!("keel_ring_occupancy").set(self.ring_occupancy as f64);
        metrics::gauge!("keel_last_snapshot_sequence").set(self.last_snapshot_sequence as f64);
        metrics::gauge!("keel_snapshot_pause_last_seconds")
            .set(self.snapshot_pause_last_ns as f64 / 1e9);
        metrics::gauge!("keel_snapshot_pause_max_seconds")
            .set(self.snapshot_pause_max_ns as f64 / 1e9);
        metrics::gauge!("keel_snapshot_failing").set(if self.snapshot_error.is_some() {
            1.0
        } else {
            0.0
        });
    }
}
