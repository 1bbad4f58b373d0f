//! Wait strategies: what a consumer does while the sequence it needs is not yet available, and
//! what a producer does while the ring is full. One type per behaviour, as in the LMAX
//! Disruptor.
//!
//! | strategy | waits by | latency | CPU while idle | use when |
//! |---|---|---|---|---|
//! | [`BusySpin`] | spinning on the sequence | lowest | one core, always | a core per busy thread |
//! | [`Yielding`] | spinning a bounded number of times, then `yield_now` (a producer facing a full ring parks after a few yields) | low | one core, but yields | threads ≥ cores, latency matters |
//! | [`Sleeping`] | spin, then yield, then park with a timeout | timeout-bound | near zero | background consumers |
//! | [`Blocking`] | a condition variable | wake-up cost | zero | idle most of the time |
//!
//! On a 2-core machine, more busy-spinning threads than cores starve the very thread being
//! waited for; choose [`Yielding`] or [`Blocking`] there.

use std::time::Duration;

use crate::sync::{fence, spin_loop, yield_now, AtomicU64, Condvar, Mutex, Ordering};
use crossbeam_utils::CachePadded;

/// Why a wait ended without the sequence becoming available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// The ring was halted: every waiter returns, nothing more will be processed.
    Halted,
    /// Every producer is gone and the waiter has processed everything they published.
    Closed,
}

/// How a thread waits for a sequence.
///
/// `wait_for` returns as soon as `available()` is at least `sequence`, giving back the value it
/// read (which may be higher: that is a batch), or as soon as `interrupt()` returns a reason.
/// `signal` is called by whoever advances a sequence others may wait for; strategies that never
/// sleep make it a no-op, so the hot path pays nothing.
pub trait WaitStrategy: Send + Sync + 'static {
    /// Waits until `available() >= sequence` or `interrupt()` says to stop.
    fn wait_for(
        &self,
        sequence: u64,
        available: impl FnMut() -> u64,
        interrupt: impl FnMut() -> Option<Interrupt>,
    ) -> Result<u64, Interrupt>;

    /// Waits, as a producer facing a full ring, until `available()` (the slowest gating
    /// consumer) is at least `sequence`. By default the same wait as a consumer's.
    ///
    /// A full ring means the consumers are the bottleneck and have a whole ring of work
    /// queued, so a strategy may wait here more cheaply than it waits for input: waking a
    /// little late costs nothing while the queue lasts, and the core it gives up may be the
    /// one the consumers are short of.
    #[inline]
    fn wait_for_capacity(
        &self,
        sequence: u64,
        available: impl FnMut() -> u64,
        interrupt: impl FnMut() -> Option<Interrupt>,
    ) -> Result<u64, Interrupt> {
        self.wait_for(sequence, available, interrupt)
    }

    /// Wakes waiters after a sequence advanced, if this strategy puts them to sleep.
    fn signal(&self);

    /// Wakes every waiter unconditionally (halt, close).
    fn signal_all(&self);
}

/// The loop every non-locking strategy runs: check, check for an interrupt, then `idle(tries)`
/// with the number of idle calls so far (saturating), until the sequence is available.
#[inline(always)]
fn check_until(
    sequence: u64,
    mut available: impl FnMut() -> u64,
    mut interrupt: impl FnMut() -> Option<Interrupt>,
    mut idle: impl FnMut(u32),
) -> Result<u64, Interrupt> {
    let mut tries = 0u32;
    loop {
        let value = available();
        if value >= sequence {
            return Ok(value);
        }
        if let Some(reason) = interrupt() {
            return Err(reason);
        }
        idle(tries);
        tries = tries.saturating_add(1);
    }
}

/// Spins on the sequence without ever giving up the core: the lowest latency, and a whole core
/// burnt per waiting thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct BusySpin;

impl WaitStrategy for BusySpin {
    #[inline(always)]
    fn wait_for(
        &self,
        sequence: u64,
        available: impl FnMut() -> u64,
        interrupt: impl FnMut() -> Option<Interrupt>,
    ) -> Result<u64, Interrupt> {
        // The hint matters even here: a reader hammering the cursor's line without it delays
        // the producer's next store to that line (measured: ping-pong p50 10-20% slower
        // without it). LMAX's busy-spin strategy calls `onSpinWait` for the same reason.
        check_until(sequence, available, interrupt, |_| spin_loop())
    }

    #[inline(always)]
    fn signal(&self) {}

    fn signal_all(&self) {}
}

/// Spins `spin_tries` times, then calls `yield_now` between checks: nearly busy-spin latency
/// when the other side is running, and it lets the other side run when both share a core.
///
/// A producer facing a full ring yields [`FULL_YIELD_TRIES`](Self::FULL_YIELD_TRIES) times
/// and then parks for [`FULL_PARK`](Self::FULL_PARK) at a time, as the LMAX Disruptor's
/// sequencers park a producer whatever the strategy. A thread that only yields still looks
/// busy to the scheduler, which then leaves the engine's helper threads (the journal's
/// segment preparer, a replica) queued behind the very thread being waited for, while the
/// producer's own core spins in `sched_yield`.
#[derive(Clone, Copy, Debug)]
pub struct Yielding {
    spin_tries: u32,
}

impl Yielding {
    /// Spins this many times before the first yield.
    pub const SPIN_TRIES_DEFAULT: u32 = 100;
    /// Yields of a producer facing a full ring before it parks.
    pub const FULL_YIELD_TRIES: u32 = 16;
    /// How long a producer facing a full ring parks at a time: short beside the time a ring
    /// of any useful size takes to drain, and long enough for another thread to run.
    pub const FULL_PARK: Duration = Duration::from_micros(50);

    /// A yielding strategy that spins `spin_tries` times first.
    pub fn new(spin_tries: u32) -> Self {
        Self { spin_tries }
    }
}

impl Default for Yielding {
    fn default() -> Self {
        Self::new(Self::SPIN_TRIES_DEFAULT)
    }
}

impl WaitStrategy for Yielding {
    #[inline]
    fn wait_for(
        &self,
        sequence: u64,
        available: impl FnMut() -> u64,
        interrupt: impl FnMut() -> Option<Interrupt>,
    ) -> Result<u64, Interrupt> {
        check_until(sequence, available, interrupt, |tries| {
            if tries < self.spin_tries {
                spin_loop();
            } else {
                yield_now();
            }
        })
    }

    #[inline]
    fn wait_for_capacity(
        &self,
        sequence: u64,
        available: impl FnMut() -> u64,
        interrupt: impl FnMut() -> Option<Interrupt>,
    ) -> Result<u64, Interrupt> {
        // The sleeping strategy's ladder (spin, yield, park), with this strategy's spins.
        Sleeping::new(self.spin_tries, Self::FULL_YIELD_TRIES, Self::FULL_PARK)
            .wait_for(sequence, available, interrupt)
    }

    #[inline(always)]
    fn signal(&self) {}

    fn signal_all(&self) {}
}

/// Spins, then yields, then parks for `park` at a time: near-zero CPU when idle, at the price
/// of up to `park` (plus the scheduler's slack) of added latency. Nobody needs to wake it.
#[derive(Clone, Copy, Debug)]
pub struct Sleeping {
    spin_tries: u32,
    yield_tries: u32,
    park: Duration,
}

impl Sleeping {
    /// The default spins before yielding.
    pub const SPIN_TRIES_DEFAULT: u32 = 100;
    /// The default yields before parking.
    pub const YIELD_TRIES_DEFAULT: u32 = 100;
    /// The default park timeout.
    pub const PARK_DEFAULT: Duration = Duration::from_micros(100);

    /// A sleeping strategy with the given phases.
    pub fn new(spin_tries: u32, yield_tries: u32, park: Duration) -> Self {
        Self { spin_tries, yield_tries, park }
    }
}

impl Default for Sleeping {
    fn default() -> Self {
        Self::new(Self::SPIN_TRIES_DEFAULT, Self::YIELD_TRIES_DEFAULT, Self::PARK_DEFAULT)
    }
}

impl WaitStrategy for Sleeping {
    #[inline]
    fn wait_for(
        &self,
        sequence: u64,
        available: impl FnMut() -> u64,
        interrupt: impl FnMut() -> Option<Interrupt>,
    ) -> Result<u64, Interrupt> {
        check_until(sequence, available, interrupt, |tries| {
            if tries < self.spin_tries {
                spin_loop();
            } else if tries < self.spin_tries.saturating_add(self.yield_tries) {
                yield_now();
            } else {
                crate::sync::park_timeout(self.park);
            }
        })
    }

    #[inline(always)]
    fn signal(&self) {}

    fn signal_all(&self) {}
}

/// Sleeps on a condition variable until signalled. Those who advance a sequence pay for a
/// lock and a notify only when somebody is actually going to sleep: otherwise `signal` is one
/// fence and one load.
pub struct Blocking {
    /// An epoch (high bits) and a count of sleep announcements made in that epoch (low
    /// [`SLEEPERS_BITS`] bits). A sleeper announces itself by adding 1 and remembers the epoch.
    /// The signaller that finds a non-zero count starts a new epoch with a count of zero and
    /// wakes everyone, so the publishes that follow (while the woken threads get back on a CPU)
    /// see zero and pay nothing. A sleeper whose announcement was taken by such a signaller
    /// before it fell asleep sees the epoch change under the lock and announces itself again
    /// instead of sleeping: otherwise a later signaller, for the sequence it really waits on,
    /// would find no announcement and never wake it (loom found exactly that lost wake-up).
    state: CachePadded<AtomicU64>,
    mutex: Mutex<()>,
    condvar: Condvar,
}

/// Bits of [`Blocking`]'s state that count announcements: up to 65 535 threads asleep at
/// once; the 48-bit epoch above them does not wrap in the life of a process.
const SLEEPERS_BITS: u32 = 16;
const SLEEPERS_MASK: u64 = (1 << SLEEPERS_BITS) - 1;

impl Blocking {
    /// A blocking strategy with nobody waiting.
    pub fn new() -> Self {
        Self {
            state: CachePadded::new(AtomicU64::new(0)),
            mutex: Mutex::new(()),
            condvar: Condvar::new(),
        }
    }

    /// Starts a new epoch if anybody announced sleep in this one; returns whether it did.
    fn claim_sleepers(&self) -> bool {
        self.state
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |state| {
                (state & SLEEPERS_MASK != 0)
                    .then_some(((state >> SLEEPERS_BITS) + 1) << SLEEPERS_BITS)
            })
            .is_ok()
    }
}

impl Default for Blocking {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Blocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.load(Ordering::Relaxed);
        f.debug_struct("Blocking")
            .field("epoch", &(state >> SLEEPERS_BITS))
            .field("sleepers", &(state & SLEEPERS_MASK))
            .finish()
    }
}

impl WaitStrategy for Blocking {
    fn wait_for(
        &self,
        sequence: u64,
        mut available: impl FnMut() -> u64,
        mut interrupt: impl FnMut() -> Option<Interrupt>,
    ) -> Result<u64, Interrupt> {
        loop {
            let value = available();
            if value >= sequence {
                return Ok(value);
            }
            if let Some(reason) = interrupt() {
                return Err(reason);
            }
            // Announce before the re-check. This pairs with the fence in `signal`: either the
            // signaller sees the announcement and notifies under the lock, or the re-check
            // below sees its new sequence. (Store-load ordering on both sides needs SeqCst.)
            let before = self.state.fetch_add(1, Ordering::SeqCst);
            debug_assert!(before & SLEEPERS_MASK < SLEEPERS_MASK, "too many sleepers");
            let epoch = before >> SLEEPERS_BITS;
            fence(Ordering::SeqCst);
            let mut guard = self.mutex.lock();
            let value = available();
            if value >= sequence {
                // The announcement is left standing (a signaller may have taken it already,
                // so it cannot be withdrawn safely); the next signaller pays one spare notify.
                return Ok(value);
            }
            if let Some(reason) = interrupt() {
                return Err(reason);
            }
            if self.state.load(Ordering::SeqCst) >> SLEEPERS_BITS != epoch {
                // A signaller took our announcement and notified before we slept: announce
                // again rather than sleep unannounced.
                continue;
            }
            // Any signaller that takes our announcement from here on must then take the lock
            // we hold to notify, so it cannot notify before we are waiting.
            self.condvar.wait(&mut guard);
        }
    }

    #[inline]
    fn signal(&self) {
        // See `wait_for`: the fence orders our sequence store before the load of the state.
        fence(Ordering::SeqCst);
        if self.state.load(Ordering::SeqCst) & SLEEPERS_MASK != 0 && self.claim_sleepers() {
            let _guard = self.mutex.lock();
            self.condvar.notify_all();
        }
    }

    fn signal_all(&self) {
        self.claim_sleepers();
        let _guard = self.mutex.lock();
        self.condvar.notify_all();
    }
}
