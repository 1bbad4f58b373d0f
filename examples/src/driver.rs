//! The gateway loop: one thread publishes a stream of commands into an engine and reads the
//! events back from an output poller between publishes, the shape of a service's gateway
//! thread. With the compact topology that is two threads in all, which two cores hold.
//!
//! Latency runs from a command's send time to the arrival of its last event. At a fixed
//! offered rate (`rate`), the send times are scheduled in advance (the i-th at `i / rate`)
//! and latency runs from that intended time, so a stall delays every command behind it in
//! the figures too: coordinated omission is corrected. At saturation a command waits for the
//! ones ahead of it, so the figures include that queueing; there one command in
//! [`SATURATION_SAMPLE`] is timed, to keep the clock reads off the path being measured.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use hdrhistogram::Histogram;
use keel_engine::{Delivery, EngineError, OutputPoller, Publish, StateMachine};

/// At saturation, one command in this many is timed.
pub const SATURATION_SAMPLE: u64 = 64;

/// Commands in flight (published, last event not yet read) at most: the send-time table's
/// size. The loop reads events before it publishes more.
const WINDOW: u64 = 1 << 17;

/// Spin-loop hints between two offers to a full system when no event came back in between.
const FULL_BACKOFF_SPINS: u32 = 16;

/// Offers in a row to a full system, with no event back, after which the loop yields its core
/// between offers instead of spinning: the system is behind, and on a machine with fewer cores
/// than busy threads (a replica's, a journaller's) the core is what it is behind for.
const FULL_OFFERS_BEFORE_YIELDING: u32 = 64;

/// Yields after which the loop sleeps between offers to a full system instead, for
/// [`FULL_SLEEP`] at a time, as the engine's own producers do (`keel_ring::Yielding`). A thread
/// that only yields still counts as busy, so the scheduler leaves the engine's helper threads
/// (the journal's segment preparer above all) queued on the engine's core. Measured in
/// `docs/ARCHITECTURE.md`.
const FULL_YIELDS_BEFORE_SLEEPING: u32 = 16;

/// One sleep between offers to a full system: the system has a ring of commands queued, which
/// takes far longer than this to work through.
const FULL_SLEEP: Duration = Duration::from_micros(50);
const MASK: u64 = WINDOW - 1;

/// How a stream is driven.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pace {
    /// Commands per second, scheduled in advance; `None` publishes as fast as the engine
    /// takes them.
    pub rate: Option<u64>,
    /// Commands at the start whose latency is not recorded.
    pub warm_up: u64,
    /// How often `progress` is called; `None` is every 100 ms. A crash test's child reports
    /// what it has acknowledged every millisecond, so that a kill leaves little unreported.
    pub progress_every: Option<Duration>,
}

/// What a driven stream measured.
#[derive(Debug)]
pub struct Driven {
    /// Commands published (each answered).
    pub commands: u64,
    /// From the first send to the last event read.
    pub elapsed: Duration,
    /// Latency in nanoseconds, of every command after the warm-up at a fixed rate, of a
    /// sample at saturation.
    pub latency: Histogram<u64>,
    /// The last sequence published.
    pub last_sequence: u64,
}

impl Driven {
    /// Commands per second.
    pub fn rate(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How a run's latency figures were measured, in words: "at 1.00 M transfers/s offered, open
/// loop", or at saturation with the sampling said.
pub fn latency_basis(rate: Option<u64>, unit: &str) -> String {
    match rate {
        Some(rate) => {
            format!("at {} offered, open loop", crate::format::rate(rate as f64, unit))
        }
        None => format!(
            "at saturation: 1 in {SATURATION_SAMPLE} timed, queueing behind the others included"
        ),
    }
}

/// Where a gateway sends commands and reads their events back: keel's publisher and output
/// poller, or (in the benchmarks) another system doing the same job, so that every system is
/// driven by the same loop and measured the same way.
pub trait Gateway {
    /// What is sent.
    type Command;
    /// What comes back.
    type Event;

    /// Offers one command without waiting: its sequence when it was taken, `None` when the
    /// system is full (the caller reads events and offers it again).
    fn try_send(&mut self, command: &Self::Command) -> Result<Option<u64>>;

    /// Hands every event there is (up to a few thousand) to `on_delivery`; returns how many.
    fn receive(&mut self, on_delivery: impl FnMut(Delivery<'_, Self::Event>)) -> Result<usize>;
}

/// keel's gateway ends: a publisher (the engine's sole one, or a shared one) and an output
/// poller.
#[derive(Debug)]
pub struct Keel<'a, M: StateMachine, P: Publish<M>> {
    /// Where commands go.
    pub publisher: &'a mut P,
    /// Where their events come from.
    pub output: &'a mut OutputPoller<M::Event>,
}

impl<M: StateMachine, P: Publish<M>> Gateway for Keel<'_, M, P>
where
    M::Command: Clone,
{
    type Command = M::Command;
    type Event = M::Event;

    fn try_send(&mut self, command: &M::Command) -> Result<Option<u64>> {
        match self.publisher.try_publish(command.clone()) {
            Ok(sequence) => Ok(Some(sequence)),
            Err(EngineError::Full) => Ok(None),
            Err(error) => Err(error).context("publishing"),
        }
    }

    fn receive(&mut self, on_delivery: impl FnMut(Delivery<'_, M::Event>)) -> Result<usize> {
        self.output.poll(4096, on_delivery).context("reading the engine's events")
    }
}

/// Publishes `count` commands from `commands`, reading every event; `on_event` sees each event
/// with its command's sequence, `progress` is called about every 100 ms (or as often as
/// `pace.progress_every` says) with the commands answered so far.
pub fn drive<M: StateMachine, P: Publish<M>>(
    publisher: &mut P,
    output: &mut OutputPoller<M::Event>,
    commands: impl FnMut() -> M::Command,
    count: u64,
    pace: Pace,
    on_event: impl FnMut(u64, &M::Event),
    progress: impl FnMut(u64),
) -> Result<Driven>
where
    M::Command: Clone,
{
    drive_gateway(&mut Keel { publisher, output }, commands, count, pace, on_event, progress)
}

/// [`drive`] through any [`Gateway`].
pub fn drive_gateway<G: Gateway>(
    gateway: &mut G,
    mut commands: impl FnMut() -> G::Command,
    count: u64,
    pace: Pace,
    mut on_event: impl FnMut(u64, &G::Event),
    mut progress: impl FnMut(u64),
) -> Result<Driven> {
    let mut books = Books {
        latency: Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3)?,
        sent: vec![0u64; WINDOW as usize],
        answered: 0,
        epoch: Instant::now(),
    };
    let progress_ns = pace.progress_every.map_or(100_000_000, |every| every.as_nanos() as u64);
    let mut last_progress = 0u64;
    let mut last_sequence = 0;
    let mut receive = |books: &mut Books, gateway: &mut G| books.receive(gateway, &mut on_event);

    let interval_ns = pace.rate.map(|rate| 1e9 / rate.max(1) as f64);
    for index in 0..count {
        let intended = match interval_ns {
            Some(interval) => {
                let intended = 1_000 + (index as f64 * interval) as u64;
                while books.now_ns() < intended {
                    receive(&mut books, gateway)?;
                }
                Some(intended)
            }
            None => None,
        };
        while index - books.answered >= WINDOW {
            receive(&mut books, gateway)?;
        }
        let command = commands();
        let timed = index >= pace.warm_up && (intended.is_some() || index % SATURATION_SAMPLE == 0);
        // Never wait in the gateway while holding unread events: with both directions full
        // the system and this thread would wait for each other.
        let mut refused = 0u32;
        let sequence = loop {
            match gateway.try_send(&command)? {
                Some(sequence) => break sequence,
                None => {
                    if receive(&mut books, gateway)? {
                        refused = 0;
                    } else if refused < FULL_OFFERS_BEFORE_YIELDING {
                        refused += 1;
                        for _ in 0..FULL_BACKOFF_SPINS {
                            std::hint::spin_loop();
                        }
                    } else if refused < FULL_OFFERS_BEFORE_YIELDING + FULL_YIELDS_BEFORE_SLEEPING {
                        refused += 1;
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(FULL_SLEEP);
                    }
                }
            }
        };
        if timed {
            books.sent[(sequence & MASK) as usize] = intended.unwrap_or_else(|| books.now_ns());
        }
        last_sequence = sequence;
        if index % 16 == 15 {
            receive(&mut books, gateway)?;
        }
        if (index % 4_096 == 0 || progress_ns < 100_000_000)
            && books.now_ns() - last_progress > progress_ns
        {
            last_progress = books.now_ns();
            progress(books.answered);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while books.answered < count {
        if !receive(&mut books, gateway)? {
            if Instant::now() > deadline {
                bail!("{} of {count} commands were answered within two minutes", books.answered);
            }
            std::thread::yield_now();
        }
        if books.now_ns() - last_progress > progress_ns {
            last_progress = books.now_ns();
            progress(books.answered);
        }
    }
    progress(books.answered);
    Ok(Driven {
        commands: count,
        elapsed: books.epoch.elapsed(),
        latency: books.latency,
        last_sequence,
    })
}

/// Nanoseconds since `epoch`, plus one, so that a send time is never 0 ("untimed").
fn nanos_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64 + 1
}

/// The loop's bookkeeping: send times by sequence, the histogram, the count answered.
struct Books {
    latency: Histogram<u64>,
    /// Send times (nanoseconds from `epoch`, plus one so that 0 means untimed), by sequence
    /// modulo the window.
    sent: Vec<u64>,
    answered: u64,
    epoch: Instant,
}

impl Books {
    fn now_ns(&self) -> u64 {
        nanos_since(self.epoch)
    }

    /// Reads the events there are; returns whether there were any.
    fn receive<G: Gateway>(
        &mut self,
        gateway: &mut G,
        on_event: &mut impl FnMut(u64, &G::Event),
    ) -> Result<bool> {
        let read = gateway.receive(|delivery| {
            if let Some(event) = delivery.event {
                on_event(delivery.sequence, event);
            }
            if delivery.last {
                self.answered += 1;
                let slot = &mut self.sent[(delivery.sequence & MASK) as usize];
                if *slot != 0 {
                    let sent = std::mem::take(slot);
                    let _ =
                        self.latency.record(nanos_since(self.epoch).saturating_sub(sent).max(1));
                }
            }
        })?;
        Ok(read > 0)
    }
}
