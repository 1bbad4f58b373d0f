//! [`Publisher`]: how any thread hands commands to the engine.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use keel_ring::{MultiProducer, RingError};

use crate::codec::Codec;
use crate::config::AnyWait;
use crate::engine::Shared;
use crate::error::EngineError;
use crate::machine::StateMachine;
use crate::numbering::Numbering;

/// An input ring slot: the command, and its encoding for the journal, made by the publisher on
/// its own thread. Both are reused: the encoding's buffer is swapped with the publisher's, so
/// neither side allocates once the buffers have grown.
#[derive(Debug)]
pub(crate) struct InputSlot<C> {
    pub(crate) command: Option<C>,
    pub(crate) bytes: Vec<u8>,
    /// The pipelined topology's journaller stamps the slot here for the engine thread.
    pub(crate) timestamp_ns: AtomicU64,
}

impl<C> Default for InputSlot<C> {
    fn default() -> Self {
        Self { command: None, bytes: Vec::new(), timestamp_ns: AtomicU64::new(0) }
    }
}

/// Publishes commands to an engine. `Clone` it for each producing thread: each clone has its
/// own encoding buffer. The engine shuts down when the last publisher (and the engine's own)
/// is dropped.
pub struct Publisher<M: StateMachine, C: Codec> {
    pub(crate) producer: MultiProducer<InputSlot<M::Command>, AnyWait>,
    pub(crate) codec: C,
    pub(crate) shared: Arc<Shared>,
    /// Which journal sequence each ring sequence is: the journal's last sequence when the
    /// engine opened plus the ring sequence, and one more for each checkpoint between.
    pub(crate) numbering: Numbering,
    scratch: Vec<u8>,
    batch_scratch: Vec<Vec<u8>>,
}

impl<M: StateMachine, C: Codec> Publisher<M, C> {
    pub(crate) fn new(
        producer: MultiProducer<InputSlot<M::Command>, AnyWait>,
        codec: C,
        shared: Arc<Shared>,
        numbering: Numbering,
    ) -> Self {
        Self { producer, codec, shared, numbering, scratch: Vec::new(), batch_scratch: Vec::new() }
    }

    /// Publishes a command, waiting while the input ring is full; returns its sequence. The
    /// command is encoded first, on this thread: an encoding error is returned before anything
    /// is published.
    pub fn publish(&mut self, command: M::Command) -> Result<u64, EngineError> {
        self.publish_with(command, |_| {}, |producer, update| producer.publish(update))
    }

    /// Publishes, calling `claimed` with the command's sequence after its slot is claimed and
    /// before it is published (nothing downstream can have seen it yet).
    pub(crate) fn publish_then(
        &mut self,
        command: M::Command,
        claimed: impl FnOnce(u64),
    ) -> Result<u64, EngineError> {
        self.publish_with(command, claimed, |producer, update| producer.publish(update))
    }

    /// Like [`publish`](Self::publish), but fails with [`EngineError::Full`] at once when the
    /// ring has no free slot.
    pub fn try_publish(&mut self, command: M::Command) -> Result<u64, EngineError> {
        self.publish_with(command, |_| {}, |producer, update| producer.try_publish(update))
    }

    fn publish_with(
        &mut self,
        command: M::Command,
        claimed: impl FnOnce(u64),
        publish: impl FnOnce(
            &MultiProducer<InputSlot<M::Command>, AnyWait>,
            &mut dyn FnMut(&mut InputSlot<M::Command>, u64),
        ) -> Result<u64, RingError>,
    ) -> Result<u64, EngineError> {
        self.scratch.clear();
        self.codec.encode(&command, &mut self.scratch)?;
        let scratch = &mut self.scratch;
        let mut command = Some(command);
        let mut claimed = Some(claimed);
        let numbering = self.numbering;
        let sequence = publish(&self.producer, &mut |slot, sequence| {
            std::mem::swap(&mut slot.bytes, scratch);
            slot.command = command.take();
            if let Some(claimed) = claimed.take() {
                claimed(numbering.command(sequence));
            }
        })
        .map_err(|error| self.shared.ring_error(error))?;
        Ok(self.numbering.command(sequence))
    }

    /// Publishes several commands as consecutive sequences, made visible together; returns the
    /// last sequence. All are encoded before any is published. At most the ring's capacity.
    pub fn publish_batch(&mut self, commands: Vec<M::Command>) -> Result<u64, EngineError> {
        let count = commands.len();
        if count == 0 {
            return Err(EngineError::Configuration("an empty batch".into()));
        }
        while self.batch_scratch.len() < count {
            self.batch_scratch.push(Vec::new());
        }
        for (buffer, command) in self.batch_scratch.iter_mut().zip(&commands) {
            buffer.clear();
            self.codec.encode(command, buffer)?;
        }
        let mut commands = commands.into_iter();
        let mut buffers = self.batch_scratch.iter_mut();
        let last = self
            .producer
            .publish_batch(count, |slot, _| {
                std::mem::swap(&mut slot.bytes, buffers.next().expect("one buffer per command"));
                slot.command = commands.next();
            })
            .map_err(|error| self.shared.ring_error(error))?;
        Ok(self.numbering.command(last))
    }
}

impl<M: StateMachine, C: Codec> Clone for Publisher<M, C> {
    fn clone(&self) -> Self {
        let numbering = self.numbering;
        Self::new(self.producer.clone(), self.codec.clone(), Arc::clone(&self.shared), numbering)
    }
}

impl<M: StateMachine, C: Codec> std::fmt::Debug for Publisher<M, C> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Publisher").field("numbering", &self.numbering).finish()
    }
}
