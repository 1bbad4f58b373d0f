//! The engine's settings: durability tier, topology, wait strategy, snapshot policy.

use std::time::Duration;

use keel_ring::{Blocking, BusySpin, Interrupt, Sleeping, WaitStrategy, Yielding};

/// When a command may be applied, and so what an applied command survives
/// (`../shared/DESIGN.md`, section 6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Applied once it is in the ring; nothing is written. Benchmarks only: nothing survives.
    Memory,
    /// Applied once its record is written into the mapped journal segment: survives a process
    /// crash, not a power loss.
    #[default]
    PageCache,
    /// Applied once its batch is written and `fdatasync`ed (one sync per batch): survives a
    /// power loss.
    Fsync,
    /// Applied once its record is in the mapped journal segment (as `PageCache`) and a quorum
    /// of replicas acknowledged holding it durably in their own journals: survives the loss
    /// of this machine. Needs [`EngineBuilder::replicate`](crate::EngineBuilder::replicate).
    Replicated,
}

/// How the work is laid out on threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Topology {
    /// One engine thread takes every available input, journals the whole batch, makes it
    /// durable, then applies it: with one producer, two threads in all, which is what a
    /// two-core machine can run.
    #[default]
    Compact,
    /// A journaller thread journals each batch and makes it durable while the engine thread
    /// applies the batch before it: the LMAX shape, three threads with one producer. Needs a
    /// core per busy thread, or a wait strategy that yields.
    Pipelined,
}

/// How engine threads wait for work, and producers for room (see `keel_ring`'s strategies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Wait {
    /// Spin: lowest latency, a core per waiting thread. Only with a core for every thread.
    BusySpin,
    /// Spin a little, then yield: low latency, and safe with more threads than cores. A
    /// publisher facing a full input ring (or the engine a full output ring) parks after a few
    /// yields, for 50 µs at a time, leaving its core to the threads it waits for.
    #[default]
    Yielding,
    /// Spin, yield, then park for a while: for mostly idle engines.
    Sleeping,
    /// A condition variable: no CPU while idle, a wake-up's cost per wait.
    Blocking,
}

/// When snapshots are taken. Several conditions may be set; any one triggers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotPolicy {
    /// After this many commands since the last snapshot.
    pub every_commands: Option<u64>,
    /// After this much time since the last snapshot (checked when commands arrive: an idle
    /// engine's state does not change).
    pub every_interval: Option<Duration>,
    /// How many snapshot files to keep (the newest); 0 keeps all.
    pub keep: usize,
}

/// A [`WaitStrategy`] chosen at run time.
// One lives in each ring, so the size of its largest variant (the blocking strategy's lock and
// condition variable, on their own cache line) costs nothing worth an indirection on waits.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum AnyWait {
    BusySpin(BusySpin),
    Yielding(Yielding),
    Sleeping(Sleeping),
    Blocking(Blocking),
}

impl From<Wait> for AnyWait {
    fn from(wait: Wait) -> Self {
        match wait {
            Wait::BusySpin => Self::BusySpin(BusySpin),
            Wait::Yielding => Self::Yielding(Yielding::default()),
            Wait::Sleeping => Self::Sleeping(Sleeping::default()),
            Wait::Blocking => Self::Blocking(Blocking::new()),
        }
    }
}

/// Calls the same method of whichever strategy `any` holds, bound to `$wait`.
macro_rules! each_wait {
    ($any:expr, $wait:ident => $call:expr) => {
        match $any {
            AnyWait::BusySpin($wait) => $call,
            AnyWait::Yielding($wait) => $call,
            AnyWait::Sleeping($wait) => $call,
            AnyWait::Blocking($wait) => $call,
        }
    };
}

impl WaitStrategy for AnyWait {
    #[inline]
    fn wait_for(
        &self,
        sequence: u64,
        available: impl FnMut() -> u64,
        interrupt: impl FnMut() -> Option<Interrupt>,
    ) -> Result<u64, Interrupt> {
        each_wait!(self, wait => wait.wait_for(sequence, available, interrupt))
    }

    #[inline]
    fn wait_for_capacity(
        &self,
        sequence: u64,
        available: impl FnMut() -> u64,
        interrupt: impl FnMut() -> Option<Interrupt>,
    ) -> Result<u64, Interrupt> {
        each_wait!(self, wait => wait.wait_for_capacity(sequence, available, interrupt))
    }

    #[inline]
    fn signal(&self) {
        each_wait!(self, wait => wait.signal())
    }

    fn signal_all(&self) {
        each_wait!(self, wait => wait.signal_all())
    }
}
