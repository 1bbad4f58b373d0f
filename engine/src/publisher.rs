//! [`Publisher`]: how any thread hands commands to the engine.

use std::marker::PhantomData;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use keel_ring::{MultiProducer, RingError, SoleProducer};

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
/// ([`Halt::Encode`](crate::Halt::Encode)) rather than failing its `publish`. With bincode,
/// `#[derive(Serialize)]` types always encode, so that takes a hand-written `Serialize` that
/// fails, or a serde attribute bincode does not support (`docs/ARCHITECTURE.md`, "The thread
/// that journals a command encodes it").
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

    /// This publisher as the engine's [`SolePublisher`], if no other publisher is left.
    pub(crate) fn into_sole(self) -> Result<SolePublisher<M, C>, Self> {
        let Self { producer, shared, numbering, codec } = self;
        match producer.into_sole() {
            Ok(producer) => Ok(SolePublisher { producer, shared, numbering, codec }),
            Err(producer) => Err(Self { producer, shared, numbering, codec }),
        }
    }
}

/// The engine's only publisher, from [`Engine::sole_publisher`](crate::Engine::sole_publisher),
/// for an application that publishes from one thread (a gateway, a replayer, a benchmark's
/// driver): the engine's input ring is built for any number of producers, and a claim there is
/// an atomic add, a full barrier that waits for the previous command's stores to reach the
/// cache; with one producer known to be the only one, a claim is a plain store. Not `Clone`.
/// Dropping it closes the input, as dropping the last [`Publisher`] does.
pub struct SolePublisher<M: StateMachine, C: Codec> {
    producer: SoleProducer<InputSlot<M::Command>, AnyWait>,
    shared: Arc<Shared>,
    numbering: Numbering,
    codec: PhantomData<fn() -> C>,
}

// `publish` and `try_publish` repeat their few lines on purpose: folded into one function that
// chose the ring's call by a `match`, the compact `Memory` tier at saturation ran at half the
// rate (0.53×, six runs against six): the command no longer went straight into its slot.
impl<M: StateMachine, C: Codec> SolePublisher<M, C> {
    /// Publishes a command, waiting while the input ring is full; returns its sequence.
    #[inline]
    pub fn publish(&mut self, command: M::Command) -> Result<u64, EngineError> {
        let mut command = Some(command);
        let sequence = self
            .producer
            .publish(|slot, _| slot.command = command.take())
            .map_err(|error| self.shared.ring_error(error))?;
        Ok(self.numbering.command(sequence))
    }

    /// Like [`publish`](Self::publish), but fails with [`EngineError::Full`] at once when the
    /// ring has no free slot.
    #[inline]
    pub fn try_publish(&mut self, command: M::Command) -> Result<u64, EngineError> {
        let mut command = Some(command);
        let sequence = self
            .producer
            .try_publish(|slot, _| slot.command = command.take())
            .map_err(|error| self.shared.ring_error(error))?;
        Ok(self.numbering.command(sequence))
    }

    /// Publishes several commands as consecutive sequences, made visible together; returns the
    /// last sequence. At most the ring's capacity.
    pub fn publish_batch(&mut self, commands: Vec<M::Command>) -> Result<u64, EngineError> {
        if commands.is_empty() {
            return Err(EngineError::Configuration("an empty batch".into()));
        }
        let count = commands.len();
        let mut commands = commands.into_iter();
        let last = self
            .producer
            .publish_batch(count, |slot, _| slot.command = commands.next())
            .map_err(|error| self.shared.ring_error(error))?;
        Ok(self.numbering.command(last))
    }
}

impl<M: StateMachine, C: Codec> std::fmt::Debug for SolePublisher<M, C> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("SolePublisher").field("numbering", &self.numbering).finish()
    }
}

/// What [`Publisher`] and [`SolePublisher`] both do, for code that publishes through either.
pub trait Publish<M: StateMachine> {
    /// Publishes a command, waiting while the input ring is full; returns its sequence.
    fn publish(&mut self, command: M::Command) -> Result<u64, EngineError>;

    /// Publishes a command, or fails with [`EngineError::Full`] at once when the ring is full.
    fn try_publish(&mut self, command: M::Command) -> Result<u64, EngineError>;

    /// Publishes several commands as consecutive sequences; returns the last sequence.
    fn publish_batch(&mut self, commands: Vec<M::Command>) -> Result<u64, EngineError>;
}

impl<M: StateMachine, C: Codec> Publish<M> for Publisher<M, C> {
    #[inline]
    fn publish(&mut self, command: M::Command) -> Result<u64, EngineError> {
        Publisher::publish(self, command)
    }

    #[inline]
    fn try_publish(&mut self, command: M::Command) -> Result<u64, EngineError> {
        Publisher::try_publish(self, command)
    }

    fn publish_batch(&mut self, commands: Vec<M::Command>) -> Result<u64, EngineError> {
        Publisher::publish_batch(self, commands)
    }
}

impl<M: StateMachine, C: Codec> Publish<M> for SolePublisher<M, C> {
    #[inline]
    fn publish(&mut self, command: M::Command) -> Result<u64, EngineError> {
        SolePublisher::publish(self, command)
    }

    #[inline]
    fn try_publish(&mut self, command: M::Command) -> Result<u64, EngineError> {
        SolePublisher::try_publish(self, command)
    }

    fn publish_batch(&mut self, commands: Vec<M::Command>) -> Result<u64, EngineError> {
        SolePublisher::publish_batch(self, commands)
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
