//! [`Publisher`]: how any thread hands commands to the engine.

use std::marker::PhantomData;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use keel_ring::{MultiProducer, RingError};

use crate::codec::Codec;
use crate::config::AnyWait;
use crate::engine::Shared;
use crate::error::EngineError;
use crate::machine::StateMachine;
use crate::numbering::Numbering;

/// An input ring slot: the command, moved in by its publisher and applied by the engine thread
/// without decoding. The thread that journals it (the engine thread, or the pipelined
/// topology's journaller) encodes it, into a buffer of its own.
#[derive(Debug)]
pub(crate) struct InputSlot<C> {
    pub(crate) command: Option<C>,
    /// The pipelined topology's journaller stamps the slot here for the engine thread.
    pub(crate) timestamp_ns: AtomicU64,
}

impl<C> Default for InputSlot<C> {
    fn default() -> Self {
        Self { command: None, timestamp_ns: AtomicU64::new(0) }
    }
}

/// Publishes commands to an engine. `Clone` it for each producing thread. The engine shuts
/// down when the last publisher (and the engine's own) is dropped.
///
/// A command is moved into its ring slot as it is; the thread that journals it encodes it. A
/// command the engine's codec cannot encode therefore halts the engine
/// ([`Halt::Encode`](crate::Halt::Encode)) rather than failing its `publish`: `#[derive(Serialize)]`
/// types always encode with bincode, so that takes a hand-written `Serialize` that fails, or a
/// serde attribute bincode does not support (`docs/ARCHITECTURE.md`, "The thread that journals a
/// command encodes it").
pub struct Publisher<M: StateMachine, C: Codec> {
    pub(crate) producer: MultiProducer<InputSlot<M::Command>, AnyWait>,
    pub(crate) shared: Arc<Shared>,
    /// Which journal sequence each ring sequence is: the journal's last sequence when the
    /// engine opened plus the ring sequence, and one more for each checkpoint between.
    pub(crate) numbering: Numbering,
    codec: PhantomData<fn() -> C>,
}

impl<M: StateMachine, C: Codec> Publisher<M, C> {
    pub(crate) fn new(
        producer: MultiProducer<InputSlot<M::Command>, AnyWait>,
        shared: Arc<Shared>,
        numbering: Numbering,
    ) -> Self {
        Self { producer, shared, numbering, codec: PhantomData }
    }

    /// Publishes a command, waiting while the input ring is full; returns its sequence.
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
        let mut command = Some(command);
        let mut claimed = Some(claimed);
        let numbering = self.numbering;
        let sequence = publish(&self.producer, &mut |slot, sequence| {
            slot.command = command.take();
            if let Some(claimed) = claimed.take() {
                claimed(numbering.command(sequence));
            }
        })
        .map_err(|error| self.shared.ring_error(error))?;
        Ok(self.numbering.command(sequence))
    }

    /// Publishes several commands as consecutive sequences, made visible together; returns the
    /// last sequence. At most the ring's capacity.
    pub fn publish_batch(&mut self, commands: Vec<M::Command>) -> Result<u64, EngineError> {
        let count = commands.len();
        if count == 0 {
            return Err(EngineError::Configuration("an empty batch".into()));
        }
        let mut commands = commands.into_iter();
        let last = self
            .producer
            .publish_batch(count, |slot, _| slot.command = commands.next())
            .map_err(|error| self.shared.ring_error(error))?;
        Ok(self.numbering.command(last))
    }
}

impl<M: StateMachine, C: Codec> Clone for Publisher<M, C> {
    fn clone(&self) -> Self {
        Self::new(self.producer.clone(), Arc::clone(&self.shared), self.numbering)
    }
}

impl<M: StateMachine, C: Codec> std::fmt::Debug for Publisher<M, C> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Publisher").field("numbering", &self.numbering).finish()
    }
}
