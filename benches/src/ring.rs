//! Ring scenarios, named by topology as the LMAX performance tests are. Each measures keel and
//! its peers on the same 32-byte event; each run checks the consumer's count and sum, so a
//! system that drops or repeats an event fails the run instead of posting a figure.

use std::hint::spin_loop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hdrhistogram::Histogram;
use keel_ring::{BusySpin, Interrupt, RingBuilder, WaitStrategy};

use crate::report::Latency;

/// The benchmark's event: 32 bytes, of which the consumer sums `value`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Event {
    pub value: u64,
    pub producer: u64,
    pub a: u64,
    pub b: u64,
}

const _: () = assert!(std::mem::size_of::<Event>() == 32, "the scenarios specify 32-byte events");

/// Slots in every ring and channel of the throughput scenarios.
pub const CAPACITY: usize = 64 * 1024;
/// Events per batch in the batch-publish variants.
pub const BATCH: usize = 64;

/// What a throughput run produced, for checking.
pub struct Outcome {
    pub elapsed: Duration,
    pub events: u64,
    pub sum: u64,
}

impl Outcome {
    pub fn ops_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// The sum of `1..=count`, what every consumer of a one-producer run must arrive at.
pub fn sum_to(count: u64) -> u64 {
    count * (count + 1) / 2
}

fn event(value: u64, producer: u64) -> Event {
    Event { value, producer, a: value ^ producer, b: value.wrapping_mul(31) }
}

/// A consumer's running total, published once per batch so the measuring thread can read it
/// after the consumer stops. Every system's consumer does the same.
#[derive(Default)]
struct Totals {
    count: AtomicU64,
    sum: AtomicU64,
}

impl Totals {
    /// The run's outcome, once the consumer has stopped (its last stores are visible through
    /// the join or the drop that stopped it).
    fn outcome(&self, elapsed: Duration) -> Outcome {
        Outcome {
            elapsed,
            events: self.count.load(Ordering::Relaxed),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// The handler every system's consumer runs: add, and export the totals at the end of a batch.
/// Generic over the sequence type: keel's is `u64`, the disruptor crate's `i64`.
fn summing_handler<S>(totals: Arc<Totals>) -> impl FnMut(&Event, S, bool) + Send + 'static {
    let (mut count, mut sum) = (0u64, 0u64);
    move |event: &Event, _sequence: S, end_of_batch| {
        count += 1;
        sum = sum.wrapping_add(event.value);
        if end_of_batch {
            totals.count.store(count, Ordering::Relaxed);
            totals.sum.store(sum, Ordering::Relaxed);
        }
    }
}

/// Where the two threads of a two-thread scenario run. On a 2-vCPU virtual machine an
/// unpinned pair sometimes shares one CPU for a while, which turns a cross-core figure into a
/// same-core one (seen here: one-to-one single publish jumping from ~80 to ~420 M/s within a
/// run). Pinning the producer to CPU 0 and the consumer to CPU 1, for every system alike, keeps
/// the figures about one thing.
#[derive(Clone, Copy, Debug)]
pub struct Pinning {
    pub producer: Option<usize>,
    pub consumer: Option<usize>,
}

impl Pinning {
    pub const NONE: Self = Self { producer: None, consumer: None };
    pub const CROSS_CORE: Self = Self { producer: Some(0), consumer: Some(1) };
}

/// Pins the calling thread to `core`, if one is given.
pub fn pin_current(core: Option<usize>) {
    if let Some(id) = core {
        // Pinning can fail on a machine with fewer CPUs; the figure is then unpinned, which the
        // probe printed beside it makes visible.
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id });
    }
}

/// Runs `body` on a fresh thread, which `body` pins once its set-up is done, so a pin never
/// leaks into the threads of later, unpinned scenarios. (Pinning only after set-up matters:
/// the disruptor crate refuses to pin a consumer to a CPU outside the building thread's own
/// affinity mask.)
pub fn isolated<T: Send>(body: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope.spawn(body).join().expect("the benchmark thread does not panic")
    })
}

/// A keel handler that pins its processor's thread before the first event.
struct Pinned<H> {
    core: Option<usize>,
    handler: H,
}

impl<E, H: keel_ring::EventHandler<E>> keel_ring::EventHandler<E> for Pinned<H> {
    #[inline(always)]
    fn on_event(&mut self, event: &E, sequence: u64, end_of_batch: bool) {
        self.handler.on_event(event, sequence, end_of_batch);
    }

    fn on_start(&mut self) {
        pin_current(self.core);
    }
}

/// The disruptor crate's builder pins a consumer with `pin_at_core`.
macro_rules! disruptor_pin {
    ($builder:expr, $core:expr) => {
        match $core {
            Some(core) => $builder.pin_at_core(core),
            None => $builder,
        }
    };
}

// ---------------------------------------------------------------------------------------------
// One-to-one.

/// One producer, one consumer: the ring's raw throughput.
///
/// ```text
///   +----+    +-----+    +----------+
///   | P1 |--->| ring|--->| consumer |   (sums `value`)
///   +----+    +-----+    +----------+
/// ```
pub fn one_to_one_keel<W: WaitStrategy>(
    wait: W,
    events: u64,
    batch: bool,
    pinning: Pinning,
) -> Result<Outcome> {
    isolated(|| one_to_one_keel_pinned(wait, events, batch, pinning))
}

fn one_to_one_keel_pinned<W: WaitStrategy>(
    wait: W,
    events: u64,
    batch: bool,
    pinning: Pinning,
) -> Result<Outcome> {
    let totals = Arc::new(Totals::default());
    let mut builder = RingBuilder::single_producer(CAPACITY, Event::default, wait)?;
    let handler = Pinned { core: pinning.consumer, handler: summing_handler(totals.clone()) };
    let (_, consumer) = builder.processor("sum", &[], handler)?;
    let mut producer = builder.build()?;
    pin_current(pinning.producer);
    let started = Instant::now();
    if batch {
        let mut value = 0u64;
        while value < events {
            let size = (events - value).min(BATCH as u64) as usize;
            producer.publish_batch(size, |slot, _| {
                value += 1;
                *slot = event(value, 0);
            })?;
        }
    } else {
        for value in 1..=events {
            producer.publish(|slot, _| *slot = event(value, 0))?;
        }
    }
    drop(producer);
    consumer.join().map(drop)?;
    let elapsed = started.elapsed();
    Ok(totals.outcome(elapsed))
}

pub fn one_to_one_disruptor(events: u64, batch: bool, pinning: Pinning) -> Result<Outcome> {
    isolated(|| one_to_one_disruptor_pinned(events, batch, pinning))
}

fn one_to_one_disruptor_pinned(events: u64, batch: bool, pinning: Pinning) -> Result<Outcome> {
    use disruptor::{ProcessorSettings as _, Producer as _};
    let totals = Arc::new(Totals::default());
    let builder = disruptor::build_single_producer(CAPACITY, Event::default, disruptor::BusySpin);
    let mut producer = disruptor_pin!(builder, pinning.consumer)
        .handle_events_with(summing_handler(totals.clone()))
        .build();
    pin_current(pinning.producer);
    let started = Instant::now();
    if batch {
        let mut value = 0u64;
        while value < events {
            let size = (events - value).min(BATCH as u64) as usize;
            producer.batch_publish(size, |slots| {
                for slot in slots {
                    value += 1;
                    *slot = event(value, 0);
                }
            });
        }
    } else {
        for value in 1..=events {
            producer.publish(|slot| *slot = event(value, 0));
        }
    }
    // Dropping the producer drains and joins the consumer.
    drop(producer);
    let elapsed = started.elapsed();
    Ok(totals.outcome(elapsed))
}

pub fn one_to_one_rtrb(events: u64, batch: bool, pinning: Pinning) -> Result<Outcome> {
    isolated(|| one_to_one_rtrb_pinned(events, batch, pinning))
}

fn one_to_one_rtrb_pinned(events: u64, batch: bool, pinning: Pinning) -> Result<Outcome> {
    let (mut producer, mut consumer) = rtrb::RingBuffer::<Event>::new(CAPACITY);
    let reader = std::thread::spawn(move || {
        pin_current(pinning.consumer);
        let (mut count, mut sum) = (0u64, 0u64);
        while count < events {
            let available = consumer.slots();
            if available == 0 {
                spin_loop();
                continue;
            }
            let chunk = consumer.read_chunk(available).expect("slots() were available");
            let (first, second) = chunk.as_slices();
            for item in first.iter().chain(second) {
                sum = sum.wrapping_add(item.value);
            }
            count += available as u64;
            chunk.commit_all();
        }
        (count, sum)
    });
    pin_current(pinning.producer);
    let started = Instant::now();
    if batch {
        let mut value = 0u64;
        while value < events {
            let size = (events - value).min(BATCH as u64) as usize;
            let chunk = loop {
                match producer.write_chunk_uninit(size) {
                    Ok(chunk) => break chunk,
                    Err(_) => spin_loop(),
                }
            };
            let base = value;
            let written =
                chunk.fill_from_iter((1..=size as u64).map(|offset| event(base + offset, 0)));
            value += written as u64;
        }
    } else {
        for value in 1..=events {
            let mut item = event(value, 0);
            loop {
                match producer.push(item) {
                    Ok(()) => break,
                    Err(rtrb::PushError::Full(back)) => {
                        item = back;
                        spin_loop();
                    }
                }
            }
        }
    }
    let (count, sum) = reader.join().map_err(|_| anyhow::anyhow!("rtrb reader panicked"))?;
    Ok(Outcome { elapsed: started.elapsed(), events: count, sum })
}

pub fn one_to_one_crossbeam(events: u64, pinning: Pinning) -> Result<Outcome> {
    isolated(|| one_to_one_crossbeam_pinned(events, pinning))
}

fn one_to_one_crossbeam_pinned(events: u64, pinning: Pinning) -> Result<Outcome> {
    let (sender, receiver) = crossbeam_channel::bounded::<Event>(CAPACITY);
    let reader = std::thread::spawn(move || {
        pin_current(pinning.consumer);
        let (mut count, mut sum) = (0u64, 0u64);
        for item in receiver.iter() {
            count += 1;
            sum = sum.wrapping_add(item.value);
        }
        (count, sum)
    });
    pin_current(pinning.producer);
    let started = Instant::now();
    for value in 1..=events {
        sender.send(event(value, 0)).context("crossbeam receiver gone")?;
    }
    drop(sender);
    let (count, sum) = reader.join().map_err(|_| anyhow::anyhow!("crossbeam reader panicked"))?;
    Ok(Outcome { elapsed: started.elapsed(), events: count, sum })
}

// ---------------------------------------------------------------------------------------------
// Two-to-one.

/// Two producers, one consumer: the multi-producer sequencer under contention. Three threads
/// on this machine's two cores, so busy-spinning is the wrong strategy; keel yields.
///
/// ```text
///   +----+
///   | P1 |---+    +------+    +----------+
///   +----+   +--->| ring |--->| consumer |
///   +----+   |    +------+    +----------+
///   | P2 |---+
///   +----+
/// ```
pub fn two_to_one_keel<W: WaitStrategy>(wait: W, events: u64) -> Result<Outcome> {
    let totals = Arc::new(Totals::default());
    let mut builder = RingBuilder::multi_producer(CAPACITY, Event::default, wait)?;
    let (_, consumer) = builder.processor("sum", &[], summing_handler(totals.clone()))?;
    let producer = builder.build()?;
    let per_producer = events / 2;
    let started = Instant::now();
    let threads: Vec<_> = (0..2u64)
        .map(|id| {
            let producer = producer.clone();
            std::thread::spawn(move || -> Result<()> {
                for value in 1..=per_producer {
                    producer.publish(|slot, _| *slot = event(value, id))?;
                }
                Ok(())
            })
        })
        .collect();
    drop(producer);
    for thread in threads {
        thread.join().map_err(|_| anyhow::anyhow!("producer panicked"))??;
    }
    consumer.join().map(drop)?;
    Ok(totals.outcome(started.elapsed()))
}

pub fn two_to_one_disruptor(events: u64) -> Result<Outcome> {
    use disruptor::Producer as _;
    let totals = Arc::new(Totals::default());
    let producer = disruptor::build_multi_producer(CAPACITY, Event::default, disruptor::BusySpin)
        .handle_events_with(summing_handler(totals.clone()))
        .build();
    let per_producer = events / 2;
    let started = Instant::now();
    let threads: Vec<_> = (0..2u64)
        .map(|id| {
            let mut producer = producer.clone();
            std::thread::spawn(move || {
                for value in 1..=per_producer {
                    producer.publish(|slot| *slot = event(value, id));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| anyhow::anyhow!("producer panicked"))?;
    }
    drop(producer);
    Ok(totals.outcome(started.elapsed()))
}

pub fn two_to_one_crossbeam(events: u64) -> Result<Outcome> {
    let (sender, receiver) = crossbeam_channel::bounded::<Event>(CAPACITY);
    let reader = std::thread::spawn(move || {
        let (mut count, mut sum) = (0u64, 0u64);
        for item in receiver.iter() {
            count += 1;
            sum = sum.wrapping_add(item.value);
        }
        (count, sum)
    });
    let per_producer = events / 2;
    let started = Instant::now();
    let threads: Vec<_> = (0..2u64)
        .map(|id| {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for value in 1..=per_producer {
                    sender.send(event(value, id)).expect("the receiver outlives the producers");
                }
            })
        })
        .collect();
    drop(sender);
    for thread in threads {
        thread.join().map_err(|_| anyhow::anyhow!("producer panicked"))?;
    }
    let (count, sum) = reader.join().map_err(|_| anyhow::anyhow!("crossbeam reader panicked"))?;
    Ok(Outcome { elapsed: started.elapsed(), events: count, sum })
}

// ---------------------------------------------------------------------------------------------
// One-to-diamond.

/// One producer, two consumers in parallel, a third after both: the journaller ‖ replicator →
/// processor shape of the engine. Four threads on two cores.
///
/// ```text
///                 +----+
///            +--->| A  |---+
///   +----+   |    +----+   |    +---+
///   | P1 |---+             +--->| C |
///   +----+   |    +----+   |    +---+
///            +--->| B  |---+
///                 +----+
/// ```
/// A and B sum `value`; C sums `value` too and is the one whose totals are checked.
pub fn diamond_keel<W: WaitStrategy>(wait: W, events: u64) -> Result<Outcome> {
    let totals = Arc::new(Totals::default());
    let mut builder = RingBuilder::single_producer(CAPACITY, Event::default, wait)?;
    let (a, handle_a) = builder.processor("a", &[], summing_handler(Arc::default()))?;
    let (b, handle_b) = builder.processor("b", &[], summing_handler(Arc::default()))?;
    let (_, handle_c) = builder.processor("c", &[a, b], summing_handler(totals.clone()))?;
    let mut producer = builder.build()?;
    let started = Instant::now();
    for value in 1..=events {
        producer.publish(|slot, _| *slot = event(value, 0))?;
    }
    drop(producer);
    handle_a.join().map(drop)?;
    handle_b.join().map(drop)?;
    handle_c.join().map(drop)?;
    Ok(totals.outcome(started.elapsed()))
}

pub fn diamond_disruptor(events: u64) -> Result<Outcome> {
    use disruptor::Producer as _;
    let totals = Arc::new(Totals::default());
    let mut producer = disruptor::build_single_producer(
        CAPACITY,
        Event::default,
        disruptor::BusySpinWithSpinLoopHint,
    )
    .handle_events_with(summing_handler(Arc::default()))
    .handle_events_with(summing_handler(Arc::default()))
    .and_then()
    .handle_events_with(summing_handler(totals.clone()))
    .build();
    let started = Instant::now();
    for value in 1..=events {
        producer.publish(|slot| *slot = event(value, 0));
    }
    drop(producer);
    Ok(totals.outcome(started.elapsed()))
}

// ---------------------------------------------------------------------------------------------
// Ping-pong.

/// Round-trip latency: the pinger publishes one event and waits for the ponger's echo on a
/// second ring before it sends the next. One event in flight; both sides busy-spin.
///
/// ```text
///   +--------+  ping ring  +--------+
///   |        |------------>|        |
///   | pinger |             | ponger |
///   |        |<------------|        |
///   +--------+  pong ring  +--------+
/// ```
/// Each round trip is timed with `Instant` on the pinger and recorded into an HdrHistogram;
/// the first `warmup` are discarded. Every pinger polls its pong ring in a bare loop (no
/// spin hint), and every ponger waits with its system's busy-spin, so the systems differ only
/// in their own code.
pub struct PingPong {
    pub warmup: u64,
    pub samples: u64,
}

/// Ring size for ping-pong: small, as only one event is ever in flight.
const PING_CAPACITY: usize = 1024;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

pub fn ping_pong_keel(settings: &PingPong, pinning: Pinning) -> Result<(Outcome, Latency)> {
    isolated(|| ping_pong_keel_pinned(settings, pinning))
}

fn ping_pong_keel_pinned(settings: &PingPong, pinning: Pinning) -> Result<(Outcome, Latency)> {
    let mut pong_builder = RingBuilder::single_producer(PING_CAPACITY, Event::default, BusySpin)?;
    let (_, mut pong_poller) = pong_builder.poller(&[])?;
    let mut pong = pong_builder.build()?;
    let mut ping_builder = RingBuilder::single_producer(PING_CAPACITY, Event::default, BusySpin)?;
    let echo = move |event: &Event, _, _| {
        // The ponger only fails if the pinger halted the ring, which it never does.
        let _ = pong.publish(|slot, _| *slot = *event);
    };
    let (_, ponger) =
        ping_builder.processor("ponger", &[], Pinned { core: pinning.consumer, handler: echo })?;
    let mut ping = ping_builder.build()?;
    let mut histogram = new_histogram();
    let total = settings.warmup + settings.samples;
    let (mut sum, mut count) = (0u64, 0u64);
    pin_current(pinning.producer);
    let started = Instant::now();
    let mut measured_from = started;
    for value in 1..=total {
        if value == settings.warmup + 1 {
            measured_from = Instant::now();
        }
        let sent = Instant::now();
        ping.publish(|slot, _| *slot = event(value, 0))?;
        loop {
            match pong_poller.poll_each(1, |echo, _, _| sum = sum.wrapping_add(echo.value)) {
                Ok(0) => {}
                Ok(_) => break,
                Err(Interrupt::Closed | Interrupt::Halted) => {
                    anyhow::bail!("the pong ring stopped")
                }
            }
        }
        let round_trip = sent.elapsed().as_nanos() as u64;
        if value > settings.warmup {
            histogram.record(round_trip.max(1))?;
            count += 1;
        }
    }
    let elapsed = measured_from.elapsed();
    drop(ping);
    ponger.join().map(drop)?;
    ensure!(sum == sum_to(total), "keel ping-pong echoed a wrong value");
    Ok((Outcome { elapsed, events: count, sum }, Latency::from_histogram(&histogram)))
}

pub fn ping_pong_disruptor(settings: &PingPong, pinning: Pinning) -> Result<(Outcome, Latency)> {
    isolated(|| ping_pong_disruptor_pinned(settings, pinning))
}

fn ping_pong_disruptor_pinned(settings: &PingPong, pinning: Pinning) -> Result<(Outcome, Latency)> {
    use disruptor::{ProcessorSettings as _, Producer as _};
    let (mut pong_poller, pong_builder) =
        disruptor::build_single_producer(PING_CAPACITY, Event::default, disruptor::BusySpin)
            .new_event_poller();
    let mut pong = pong_builder.build();
    let ping_builder =
        disruptor::build_single_producer(PING_CAPACITY, Event::default, disruptor::BusySpin);
    let mut ping = disruptor_pin!(ping_builder, pinning.consumer)
        .handle_events_with(move |event: &Event, _, _| pong.publish(|slot| *slot = *event))
        .build();
    let mut histogram = new_histogram();
    let total = settings.warmup + settings.samples;
    let (mut sum, mut count) = (0u64, 0u64);
    pin_current(pinning.producer);
    let mut measured_from = Instant::now();
    for value in 1..=total {
        if value == settings.warmup + 1 {
            measured_from = Instant::now();
        }
        let sent = Instant::now();
        ping.publish(|slot| *slot = event(value, 0));
        loop {
            match pong_poller.poll() {
                Ok(mut events) => {
                    for echo in &mut events {
                        sum = sum.wrapping_add(echo.value);
                    }
                    break;
                }
                Err(disruptor::Polling::NoEvents) => {}
                Err(disruptor::Polling::Shutdown) => anyhow::bail!("the pong ring stopped"),
            }
        }
        let round_trip = sent.elapsed().as_nanos() as u64;
        if value > settings.warmup {
            histogram.record(round_trip.max(1))?;
            count += 1;
        }
    }
    let elapsed = measured_from.elapsed();
    drop(ping);
    ensure!(sum == sum_to(total), "disruptor ping-pong echoed a wrong value");
    Ok((Outcome { elapsed, events: count, sum }, Latency::from_histogram(&histogram)))
}

pub fn ping_pong_rtrb(settings: &PingPong, pinning: Pinning) -> Result<(Outcome, Latency)> {
    isolated(|| ping_pong_rtrb_pinned(settings, pinning))
}

fn ping_pong_rtrb_pinned(settings: &PingPong, pinning: Pinning) -> Result<(Outcome, Latency)> {
    let (mut ping, mut ping_rx) = rtrb::RingBuffer::<Event>::new(PING_CAPACITY);
    let (mut pong_tx, mut pong) = rtrb::RingBuffer::<Event>::new(PING_CAPACITY);
    let total = settings.warmup + settings.samples;
    let ponger = std::thread::spawn(move || {
        pin_current(pinning.consumer);
        let mut echoed = 0u64;
        while echoed < total {
            match ping_rx.pop() {
                Ok(item) => {
                    while pong_tx.push(item).is_err() {
                        spin_loop();
                    }
                    echoed += 1;
                }
                Err(_) => spin_loop(),
            }
        }
    });
    let mut histogram = new_histogram();
    let (mut sum, mut count) = (0u64, 0u64);
    pin_current(pinning.producer);
    let mut measured_from = Instant::now();
    for value in 1..=total {
        if value == settings.warmup + 1 {
            measured_from = Instant::now();
        }
        let sent = Instant::now();
        ping.push(event(value, 0))
            .map_err(|_| anyhow::anyhow!("ping ring full with one in flight"))?;
        let echo = loop {
            if let Ok(echo) = pong.pop() {
                break echo;
            }
        };
        sum = sum.wrapping_add(echo.value);
        let round_trip = sent.elapsed().as_nanos() as u64;
        if value > settings.warmup {
            histogram.record(round_trip.max(1))?;
            count += 1;
        }
    }
    let elapsed = measured_from.elapsed();
    ponger.join().map_err(|_| anyhow::anyhow!("rtrb ponger panicked"))?;
    ensure!(sum == sum_to(total), "rtrb ping-pong echoed a wrong value");
    Ok((Outcome { elapsed, events: count, sum }, Latency::from_histogram(&histogram)))
}
