//! Event processors: a thread that waits on a barrier and hands each available batch to an
//! [`EventHandler`], then advances its own [`Sequence`] once per batch.

use std::thread::JoinHandle;

use crate::error::RingError;
use crate::sequence::Sequence;
use crate::sequencer::Sequencer;
use crate::shared::{SequenceBarrier, Shared};
use crate::sync::Arc;
use crate::wait::WaitStrategy;

/// The code an event processor runs for each event.
///
/// `end_of_batch` is true on the last event currently available, so a handler can do per-batch
/// work once (flush a journal, send a network packet). The batch may end earlier than the ring's
/// content if a producer publishes while it runs: that is fine, a new batch follows.
pub trait EventHandler<E>: Send + 'static {
    /// Handles the event at `sequence`.
    fn on_event(&mut self, event: &E, sequence: u64, end_of_batch: bool);

    /// Called before the first event of each batch with the batch's size.
    fn on_batch_start(&mut self, batch_size: u64) {
        let _ = batch_size;
    }

    /// Called once on the processor's thread before the first event.
    fn on_start(&mut self) {}

    /// Called once on the processor's thread after the last event, when the ring closes or
    /// halts (but not when the handler itself panicked).
    fn on_shutdown(&mut self) {}
}

impl<E, F> EventHandler<E> for F
where
    F: FnMut(&E, u64, bool) + Send + 'static,
{
    #[inline(always)]
    fn on_event(&mut self, event: &E, sequence: u64, end_of_batch: bool) {
        self(event, sequence, end_of_batch)
    }
}

/// Halts the ring when the processor's thread unwinds, so that producers waiting on a full ring
/// and consumers downstream of this one return an error instead of waiting for ever.
struct HaltOnPanic<'a, E, S: Sequencer, W: WaitStrategy> {
    shared: &'a Shared<E, S, W>,
}

impl<E, S: Sequencer, W: WaitStrategy> Drop for HaltOnPanic<'_, E, S, W> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.halt();
        }
    }
}

/// Runs `handler` on the current thread until the ring closes (after the last published event)
/// or halts. Returns the handler.
pub(crate) fn run_batch_processor<E, S, W, H>(
    barrier: SequenceBarrier<E, S, W>,
    sequence: Arc<Sequence>,
    mut handler: H,
) -> H
where
    S: Sequencer,
    W: WaitStrategy,
    H: EventHandler<E>,
{
    let shared = &*barrier.shared;
    let _halt_on_panic = HaltOnPanic { shared };
    handler.on_start();
    let mut next = sequence.get() + 1;
    while let Ok(available) = barrier.wait_for(next, u64::MAX) {
        handler.on_batch_start(available - next + 1);
        for current in next..=available {
            // SAFETY: the barrier returned `available` (acquire ordering on the cursor, the
            // publish marks, or the dependencies' sequences), so `next..=available` is
            // published; this processor's sequence is still `next - 1`, so the producer cannot
            // claim any of these slots again until it is advanced below.
            unsafe {
                shared.buffer.read(current, |event| {
                    handler.on_event(event, current, current == available);
                })
            };
        }
        sequence.set(available);
        shared.wait.signal();
        next = available + 1;
    }
    handler.on_shutdown();
    handler
}

/// The running processor. [`join`](Self::join) waits for it to stop and returns its handler,
/// or the handler's panic as [`RingError::HandlerPanicked`]. Dropping the handle detaches the
/// thread.
pub struct ProcessorHandle<H> {
    name: String,
    thread: JoinHandle<H>,
}

impl<H> ProcessorHandle<H> {
    pub(crate) fn new(name: String, thread: JoinHandle<H>) -> Self {
        Self { name, thread }
    }

    /// The processor's name (also its thread's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the processor's thread has finished.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the processor to stop; returns its handler.
    pub fn join(self) -> Result<H, RingError> {
        self.thread.join().map_err(|payload| RingError::HandlerPanicked {
            processor: self.name,
            message: panic_message(payload.as_ref()),
        })
    }
}

impl<H> std::fmt::Debug for ProcessorHandle<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorHandle")
            .field("name", &self.name)
            .field("finished", &self.thread.is_finished())
            .finish()
    }
}

/// The text of a panic payload, when it has one.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
