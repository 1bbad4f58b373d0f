//! Multi-threaded stress tests: every handler sees every event exactly once, in sequence
//! order, with each producer's events in the order it published them; for one and several
//! producers, every wait strategy, and the A ‖ B → C graph.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{within, Event};
use keel_ring::{
    Blocking, BusySpin, EventHandler, RingBuilder, Sleeping, Stage, WaitStrategy, Yielding,
};

const CAPACITY: usize = 64;
const PRODUCERS: u64 = 3;

/// Checks the stream one handler sees; `seen` exports its progress to dependent handlers.
struct Checker {
    sequence_last: u64,
    counter_last: Vec<u64>,
    sum: u64,
    events: u64,
    /// Events still to come of the `publish_batch` in hand.
    owed: u64,
    batches: u64,
    batch_events: u64,
    end_of_batch_seen: u64,
    seen: Arc<AtomicU64>,
    /// Sequences the stages this one runs after have exported: each must already be past the
    /// event in hand.
    upstream: Vec<Arc<AtomicU64>>,
    started: bool,
    shut_down: bool,
}

impl Checker {
    fn new(producers: u64, upstream: Vec<Arc<AtomicU64>>) -> Self {
        Self {
            sequence_last: 0,
            counter_last: vec![0; producers as usize],
            sum: 0,
            events: 0,
            owed: 0,
            batches: 0,
            batch_events: 0,
            end_of_batch_seen: 0,
            seen: Arc::new(AtomicU64::new(0)),
            upstream,
            started: false,
            shut_down: false,
        }
    }
}

impl EventHandler<Event> for Checker {
    fn on_event(&mut self, event: &Event, sequence: u64, end_of_batch: bool) {
        assert_eq!(sequence, self.sequence_last + 1, "sequences arrive once each, in order");
        self.sequence_last = sequence;
        let last = &mut self.counter_last[event.producer as usize];
        assert_eq!(event.counter, *last + 1, "producer {}'s order is kept", event.producer);
        *last = event.counter;
        assert_eq!(event.value, event.producer * 1_000_000_007 + event.counter, "payload intact");
        for upstream in &self.upstream {
            assert!(upstream.load(Ordering::Acquire) >= sequence, "a dependency is ahead of us");
        }
        self.sum = self.sum.wrapping_add(event.value);
        self.events += 1;
        self.owed = event.rest;
        if end_of_batch {
            self.end_of_batch_seen += 1;
            // A handler behind other handlers sees what they have passed, which may end inside
            // a producer's batch; one on the producers sees each batch whole.
            if self.upstream.is_empty() {
                assert_eq!(self.owed, 0, "a batch publish is seen whole");
            }
        }
        self.seen.store(sequence, Ordering::Release);
    }

    fn on_batch_start(&mut self, batch_size: u64) {
        assert!(batch_size >= 1 && batch_size <= CAPACITY as u64);
        assert_eq!(self.batch_events, self.events, "the previous batch was as long as announced");
        self.batches += 1;
        self.batch_events += batch_size;
    }

    fn on_start(&mut self) {
        self.started = true;
    }

    fn on_shutdown(&mut self) {
        self.shut_down = true;
    }
}

fn expected_sum(producers: u64, per_producer: u64) -> u64 {
    let mut sum = 0u64;
    for producer in 0..producers {
        for counter in 1..=per_producer {
            sum = sum.wrapping_add(producer * 1_000_000_007 + counter);
        }
    }
    sum
}

fn assert_complete(checker: &Checker, producers: u64, per_producer: u64) {
    assert!(checker.started && checker.shut_down);
    assert_eq!(checker.events, producers * per_producer);
    assert_eq!(checker.sequence_last, producers * per_producer);
    assert!(checker.counter_last.iter().all(|&last| last == per_producer));
    assert_eq!(checker.sum, expected_sum(producers, per_producer));
    assert_eq!(checker.batch_events, checker.events, "batch sizes add up to the events");
    assert_eq!(checker.end_of_batch_seen, checker.batches, "one end_of_batch per batch");
}

/// Fills an event; `rest` is how many events of the same `publish_batch` follow it.
fn fill(event: &mut Event, producer: u64, counter: u64, rest: u64) {
    *event = Event { producer, counter, value: producer * 1_000_000_007 + counter, rest };
}

/// One producer, one handler; single and batch publish interleaved.
fn one_to_one<W: WaitStrategy>(wait: W, per_producer: u64) {
    let mut builder = RingBuilder::single_producer(CAPACITY, Event::default, wait).unwrap();
    let (_, processor) = builder.processor("check", &[], Checker::new(1, vec![])).unwrap();
    let mut producer = builder.build().unwrap();
    let mut counter = 0;
    while counter < per_producer {
        if counter % 3 == 0 {
            let size = (per_producer - counter).min(17) as usize;
            let mut rest = size as u64;
            producer
                .publish_batch(size, |event, _| {
                    counter += 1;
                    rest -= 1;
                    fill(event, 0, counter, rest);
                })
                .unwrap();
        } else {
            counter += 1;
            producer.publish(|event, _| fill(event, 0, counter, 0)).unwrap();
        }
    }
    drop(producer);
    assert_complete(&processor.join().unwrap(), 1, per_producer);
}

/// A multi-producer ring's sole producer, one handler: the consumer reads the slots' marks,
/// the producer claims without an atomic add. Another handle publishes first and is dropped.
fn sole_to_one<W: WaitStrategy>(wait: W, per_producer: u64) {
    let mut builder = RingBuilder::multi_producer(CAPACITY, Event::default, wait).unwrap();
    let (_, processor) = builder.processor("check", &[], Checker::new(1, vec![])).unwrap();
    let producer = builder.build().unwrap();
    let mut counter = 0;
    let other = producer.clone();
    std::thread::spawn(move || {
        for counter in 1..=10 {
            other.publish(|event, _| fill(event, 0, counter, 0)).unwrap();
        }
    })
    .join()
    .unwrap();
    counter += 10;
    let mut producer = producer.into_sole().unwrap();
    while counter < per_producer {
        if counter % 3 == 0 {
            let size = (per_producer - counter).min(17) as usize;
            let mut rest = size as u64;
            producer
                .publish_batch(size, |event, _| {
                    counter += 1;
                    rest -= 1;
                    fill(event, 0, counter, rest);
                })
                .unwrap();
        } else {
            counter += 1;
            producer.publish(|event, _| fill(event, 0, counter, 0)).unwrap();
        }
    }
    drop(producer);
    assert_complete(&processor.join().unwrap(), 1, per_producer);
}

/// Several producers, one handler.
fn many_to_one<W: WaitStrategy>(wait: W, per_producer: u64) {
    let mut builder = RingBuilder::multi_producer(CAPACITY, Event::default, wait).unwrap();
    let (_, processor) = builder.processor("check", &[], Checker::new(PRODUCERS, vec![])).unwrap();
    let producer = builder.build().unwrap();
    let threads: Vec<_> = (0..PRODUCERS)
        .map(|id| {
            let producer = producer.clone();
            std::thread::spawn(move || {
                let mut counter = 0;
                while counter < per_producer {
                    if id == 0 && counter % 5 == 0 {
                        let size = (per_producer - counter).min(9) as usize;
                        let mut rest = size as u64;
                        producer
                            .publish_batch(size, |event, _| {
                                counter += 1;
                                rest -= 1;
                                fill(event, id, counter, rest);
                            })
                            .unwrap();
                    } else {
                        counter += 1;
                        producer.publish(|event, _| fill(event, id, counter, 0)).unwrap();
                    }
                }
            })
        })
        .collect();
    drop(producer);
    for thread in threads {
        thread.join().unwrap();
    }
    assert_complete(&processor.join().unwrap(), PRODUCERS, per_producer);
}

/// A ‖ B → C behind one producer or several: C must see each event only after A and B.
fn diamond<W: WaitStrategy>(wait: W, multi: bool, per_producer: u64) {
    fn wire<S: keel_ring::Sequencer, W: WaitStrategy>(
        builder: &mut RingBuilder<Event, S, W>,
        producers: u64,
    ) -> Vec<keel_ring::ProcessorHandle<Checker>> {
        let a = Checker::new(producers, vec![]);
        let b = Checker::new(producers, vec![]);
        let c = Checker::new(producers, vec![a.seen.clone(), b.seen.clone()]);
        let (stage_a, a) = builder.processor("a", &[], a).unwrap();
        let (stage_b, b) = builder.processor("b", &[], b).unwrap();
        let after: [Stage; 2] = [stage_a, stage_b];
        let (_, c) = builder.processor("c", &after, c).unwrap();
        vec![a, b, c]
    }
    let producers = if multi { 2 } else { 1 };
    let processors = if multi {
        let mut builder = RingBuilder::multi_producer(CAPACITY, Event::default, wait).unwrap();
        let processors = wire(&mut builder, producers);
        let producer = builder.build().unwrap();
        let threads: Vec<_> = (0..producers)
            .map(|id| {
                let producer = producer.clone();
                std::thread::spawn(move || {
                    for counter in 1..=per_producer {
                        producer.publish(|event, _| fill(event, id, counter, 0)).unwrap();
                    }
                })
            })
            .collect();
        drop(producer);
        threads.into_iter().for_each(|thread| thread.join().unwrap());
        processors
    } else {
        let mut builder = RingBuilder::single_producer(CAPACITY, Event::default, wait).unwrap();
        let processors = wire(&mut builder, producers);
        let mut producer = builder.build().unwrap();
        for counter in 1..=per_producer {
            producer.publish(|event, _| fill(event, 0, counter, 0)).unwrap();
        }
        processors
    };
    for processor in processors {
        assert_complete(&processor.join().unwrap(), producers, per_producer);
    }
}

/// Busy-spinning threads outnumber the cores in these tests, so they get fewer events: the
/// point is the interleavings, and a preempted spinner makes everyone wait a time slice.
const EVENTS_SPIN: u64 = 20_000;
const EVENTS: u64 = 200_000;
const LIMIT: Duration = Duration::from_secs(120);

macro_rules! strategy_tests {
    ($module:ident, $wait:expr, $events:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn one_to_one_sees_every_event_once_in_order() {
                within(LIMIT, || one_to_one($wait, $events));
            }

            #[test]
            fn sole_to_one_sees_every_event_once_in_order() {
                within(LIMIT, || sole_to_one($wait, $events));
            }

            #[test]
            fn many_to_one_keeps_each_producers_order() {
                within(LIMIT, || many_to_one($wait, $events / PRODUCERS));
            }

            #[test]
            fn diamond_single_producer_runs_c_after_a_and_b() {
                within(LIMIT, || diamond($wait, false, $events));
            }

            #[test]
            fn diamond_multi_producer_runs_c_after_a_and_b() {
                within(LIMIT, || diamond($wait, true, $events / 2));
            }
        }
    };
}

strategy_tests!(busy_spin, BusySpin, EVENTS_SPIN);
strategy_tests!(yielding, Yielding::default(), EVENTS);
strategy_tests!(sleeping, Sleeping::new(10, 10, Duration::from_micros(20)), EVENTS / 4);
strategy_tests!(blocking, Blocking::new(), EVENTS / 4);
