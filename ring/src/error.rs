//! The ring's errors.

use std::fmt;

/// An error from building, publishing to or joining a ring.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingError {
    /// The capacity is zero, not a power of two, or above [`crate::CAPACITY_MAX`].
    InvalidCapacity {
        /// The capacity asked for.
        capacity: usize,
    },
    /// A batch of zero events, or of more events than the ring holds.
    InvalidBatch {
        /// The batch size asked for.
        size: usize,
        /// The ring's capacity.
        capacity: usize,
    },
    /// `try_publish`: the ring has no free slot for the whole batch right now.
    Full,
    /// The ring was halted (on request or because a handler panicked): nothing more is
    /// accepted or processed.
    Halted,
    /// A stage handed to a builder that did not create it.
    UnknownStage,
    /// `build` on a ring without a single consumer: nothing would ever free a slot.
    NoConsumers,
    /// An event processor's thread could not be started.
    SpawnFailed {
        /// The processor's name.
        processor: String,
        /// The operating system's reason.
        message: String,
    },
    /// An event handler panicked; its processor stopped and halted the ring.
    HandlerPanicked {
        /// The processor's name.
        processor: String,
        /// The panic's message, when it was a string.
        message: String,
    },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidCapacity { capacity } => write!(
                f,
                "ring capacity {capacity} is invalid: it must be a power of two between 1 and {}",
                crate::CAPACITY_MAX
            ),
            Self::InvalidBatch { size, capacity } => {
                write!(f, "batch of {size} events is invalid for a ring of {capacity} slots")
            }
            Self::Full => write!(f, "the ring is full"),
            Self::Halted => write!(f, "the ring is halted"),
            Self::UnknownStage => write!(f, "the stage belongs to another ring builder"),
            Self::NoConsumers => write!(f, "the ring has no consumer: add a processor or a poller"),
            Self::SpawnFailed { processor, message } => {
                write!(f, "cannot start event processor '{processor}': {message}")
            }
            Self::HandlerPanicked { processor, message } => {
                write!(f, "event handler of processor '{processor}' panicked: {message}")
            }
        }
    }
}

impl std::error::Error for RingError {}
