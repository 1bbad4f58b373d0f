//! Shutdown, halt, back-pressure and bad input: nothing hangs, nothing published is lost or
//! processed twice, and every misuse gets an error.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{within, Event};
use keel_ring::{
    Blocking, BusySpin, Interrupt, RingBuilder, RingError, Sleeping, WaitStrategy, Yielding,
    CAPACITY_MAX,
};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn capacity_must_be_a_power_of_two_within_bounds() {
    for capacity in [0, 3, 6, 1000, CAPACITY_MAX + 1, CAPACITY_MAX * 2] {
        let error = RingBuilder::single_producer(capacity, || 0u8, BusySpin).unwrap_err();
        assert_eq!(error, RingError::InvalidCapacity { capacity });
        assert!(error.to_string().contains("power of two"));
        let error = RingBuilder::multi_producer(capacity, || 0u8, BusySpin).unwrap_err();
        assert_eq!(error, RingError::InvalidCapacity { capacity });
    }
    for capacity in [1, 2, 1024] {
        assert!(RingBuilder::single_producer(capacity, || 0u8, BusySpin).is_ok());
    }
}

#[test]
fn batches_must_fit_the_ring() {
    let mut builder = RingBuilder::single_producer(8, || 0u64, BusySpin).unwrap();
    let (_, _poller) = builder.poller(&[]).unwrap();
    let mut producer = builder.build().unwrap();
    for size in [0, 9] {
        let expected = RingError::InvalidBatch { size, capacity: 8 };
        assert_eq!(producer.publish_batch(size, |_, _| {}), Err(expected.clone()));
        assert_eq!(producer.try_publish_batch(size, |_, _| {}), Err(expected));
    }
    assert_eq!(producer.publish_batch(8, |slot, sequence| *slot = sequence), Ok(8));
}

#[test]
fn building_needs_a_consumer_and_stages_from_the_same_builder() {
    let builder = RingBuilder::single_producer(8, || 0u64, BusySpin).unwrap();
    assert_eq!(builder.build().unwrap_err(), RingError::NoConsumers);

    let mut first = RingBuilder::single_producer(8, || 0u64, BusySpin).unwrap();
    let mut second = RingBuilder::single_producer(8, || 0u64, BusySpin).unwrap();
    let (stage, _poller) = first.poller(&[]).unwrap();
    assert_eq!(second.poller(&[stage]).unwrap_err(), RingError::UnknownStage);
}

#[test]
fn try_publish_reports_full_and_succeeds_once_a_slot_is_freed() {
    let mut builder = RingBuilder::single_producer(4, || 0u64, BusySpin).unwrap();
    let (_, mut poller) = builder.poller(&[]).unwrap();
    let mut producer = builder.build().unwrap();
    for expected in 1..=4 {
        assert_eq!(producer.try_publish(|slot, sequence| *slot = sequence * 10), Ok(expected));
    }
    assert_eq!(producer.try_publish(|_, _| {}), Err(RingError::Full));
    assert_eq!(producer.try_publish_batch(1, |_, _| {}), Err(RingError::Full));
    // Releasing one slot admits exactly one more event.
    assert_eq!(poller.poll_each(1, |value, sequence, _| assert_eq!(*value, sequence * 10)), Ok(1));
    assert_eq!(producer.try_publish(|slot, sequence| *slot = sequence * 10), Ok(5));
    assert_eq!(producer.try_publish(|_, _| {}), Err(RingError::Full));
    assert_eq!(producer.try_publish_batch(2, |_, _| {}), Err(RingError::Full));
}

#[test]
fn multi_producer_try_publish_reports_full_without_claiming() {
    let mut builder = RingBuilder::multi_producer(4, || 0u64, BusySpin).unwrap();
    let (_, mut poller) = builder.poller(&[]).unwrap();
    let producer = builder.build().unwrap();
    let other = producer.clone();
    assert_eq!(producer.try_publish_batch(3, |slot, sequence| *slot = sequence), Ok(3));
    assert_eq!(other.try_publish(|slot, sequence| *slot = sequence), Ok(4));
    assert_eq!(other.try_publish(|_, _| {}), Err(RingError::Full));
    assert_eq!(producer.try_publish_batch(2, |_, _| {}), Err(RingError::Full));
    // A failed try leaves no hole: the consumer sees 1..=4 and then the next publish is 5.
    let mut seen = Vec::new();
    assert_eq!(poller.poll_each(8, |value, sequence, _| seen.push((sequence, *value))), Ok(4));
    assert_eq!(seen, vec![(1, 1), (2, 2), (3, 3), (4, 4)]);
    assert_eq!(producer.try_publish(|slot, sequence| *slot = sequence), Ok(5));
    assert_eq!(poller.poll_each(8, |value, _, _| assert_eq!(*value, 5)), Ok(1));
}

#[test]
fn a_sole_producer_is_only_made_from_the_last_handle_and_goes_on_from_its_cursor() {
    let mut builder = RingBuilder::multi_producer(4, || 0u64, BusySpin).unwrap();
    let (_, mut poller) = builder.poller(&[]).unwrap();
    let producer = builder.build().unwrap();
    let other = producer.clone();
    assert_eq!(other.publish_batch(2, |slot, sequence| *slot = sequence * 10), Ok(2));
    // Another handle exists: refused, and the handle comes back intact.
    let producer = producer.into_sole().unwrap_err();
    assert_eq!(producer.publish(|slot, sequence| *slot = sequence * 10), Ok(3));
    drop(other);
    let mut sole = producer.into_sole().unwrap();
    assert_eq!(sole.try_publish(|slot, sequence| *slot = sequence * 10), Ok(4));
    // The ring is full: a try fails without claiming, a batch larger than the room too.
    assert_eq!(sole.try_publish(|_, _| {}), Err(RingError::Full));
    assert_eq!(poller.poll_each(2, |value, sequence, _| assert_eq!(*value, sequence * 10)), Ok(2));
    assert_eq!(sole.try_publish_batch(3, |_, _| {}), Err(RingError::Full));
    assert_eq!(sole.try_publish_batch(2, |slot, sequence| *slot = sequence * 10), Ok(6));
    assert_eq!(sole.last_published(), 6);
    assert_eq!(sole.control().cursor(), 6);
    let mut seen = Vec::new();
    assert_eq!(poller.poll_each(8, |value, sequence, _| seen.push((sequence, *value))), Ok(4));
    assert_eq!(seen, vec![(3, 30), (4, 40), (5, 50), (6, 60)]);
    // Dropping it closes the ring, as dropping the last handle would.
    drop(sole);
    assert_eq!(poller.poll_each(8, |_, _, _| {}), Err(Interrupt::Closed));
}

#[test]
fn a_panicking_sole_producer_update_halts_instead_of_stalling_consumers() {
    within(LIMIT, || {
        let mut builder = RingBuilder::multi_producer(8, || 0u64, Yielding::default()).unwrap();
        let (_, processor) = builder.processor("sum", &[], |_: &u64, _, _| {}).unwrap();
        let sole = builder.build().unwrap().into_sole().unwrap();
        let control = sole.control();
        let result = std::thread::spawn(move || {
            let mut sole = sole;
            sole.publish(|_, _| panic!("update failed")).unwrap();
        })
        .join();
        assert!(result.is_err());
        assert!(control.is_halted());
        processor.join().map(drop).unwrap();
    });
}

#[test]
fn poller_batches_hold_slots_until_dropped_and_honour_the_limit() {
    let mut builder = RingBuilder::single_producer(8, || 0u64, Yielding::default()).unwrap();
    let (_, mut poller) = builder.poller(&[]).unwrap();
    let mut producer = builder.build().unwrap();
    assert!(matches!(poller.poll(4), Ok(None)));
    producer.publish_batch(8, |slot, sequence| *slot = sequence).unwrap();
    {
        let batch = poller.wait(5).unwrap();
        assert_eq!((batch.first_sequence(), batch.last_sequence(), batch.len()), (1, 5, 5));
        // Two passes over the same slots (journal, then apply), as the compact engine does.
        let first_pass: u64 = batch.iter().map(|(_, value)| *value).sum();
        let second_pass: u64 = batch.iter().map(|(sequence, value)| sequence * *value).sum();
        assert_eq!((first_pass, second_pass), (15, 55));
        // The slots are still held: the ring is full until the batch is dropped.
        assert_eq!(producer.try_publish(|_, _| {}), Err(RingError::Full));
    }
    assert_eq!(poller.sequence(), 5);
    assert_eq!(producer.try_publish_batch(5, |slot, sequence| *slot = sequence), Ok(13));
    let batch = poller.poll(100).unwrap().unwrap();
    assert_eq!((batch.first_sequence(), batch.last_sequence()), (6, 13));
    assert_eq!(*batch.get(13), 13);
}

#[test]
fn a_poller_batch_slides_along_the_ring_by_extending_and_releasing() {
    let mut builder = RingBuilder::multi_producer(8, || 0u64, Yielding::default()).unwrap();
    let (stage, mut poller) = builder.poller(&[]).unwrap();
    let (_, mut downstream) = builder.poller(&[stage]).unwrap();
    let producer = builder.build().unwrap();
    producer.publish_batch(3, |slot, sequence| *slot = sequence * 10).unwrap();
    let mut batch = poller.poll(8).unwrap().unwrap();
    assert_eq!((batch.first_sequence(), batch.last_sequence()), (1, 3));
    // Nothing new: nothing taken.
    assert_eq!(batch.extend(8), 0);
    // The producers are gated by the last stage: 5 more fill the ring.
    producer.publish_batch(5, |slot, sequence| *slot = sequence * 10).unwrap();
    assert_eq!(producer.try_publish(|_, _| {}), Err(RingError::Full));
    // The limit counts the whole batch.
    assert_eq!(batch.extend(6), 3);
    assert_eq!((batch.first_sequence(), batch.last_sequence()), (1, 6));
    assert_eq!(batch.iter().map(|(_, value)| *value).collect::<Vec<_>>(), [10, 20, 30, 40, 50, 60]);
    // Releasing a prefix frees its slots for the producers and hands it downstream, in order.
    batch.release_through(4);
    assert_eq!((batch.first_sequence(), batch.last_sequence(), batch.len()), (5, 6, 2));
    assert_eq!(*batch.get(6), 60);
    assert_eq!(downstream.poll_each(8, |_, _, _| {}), Ok(4));
    assert_eq!(batch.extend(8), 2);
    assert_eq!((batch.first_sequence(), batch.last_sequence()), (5, 8));
    assert_eq!(producer.try_publish_batch(2, |slot, sequence| *slot = sequence * 10), Ok(10));
    assert_eq!(batch.extend(8), 2);
    assert_eq!(*batch.get(10), 100);
    drop(batch);
    assert_eq!(poller.sequence(), 10);
    assert_eq!(
        downstream.poll_each(8, |value, sequence, _| assert_eq!(*value, sequence * 10)),
        Ok(6)
    );
}

#[test]
#[should_panic(expected = "it must keep an event")]
fn a_poller_batch_cannot_release_all_it_holds() {
    let mut builder = RingBuilder::single_producer(8, || 0u64, BusySpin).unwrap();
    let (_, mut poller) = builder.poller(&[]).unwrap();
    let mut producer = builder.build().unwrap();
    producer.publish_batch(2, |slot, sequence| *slot = sequence).unwrap();
    let mut batch = poller.poll(8).unwrap().unwrap();
    batch.release_through(2);
}

#[test]
fn closing_drains_then_stops_every_poller() {
    let mut builder = RingBuilder::multi_producer(8, || 0u64, BusySpin).unwrap();
    let (first, mut upstream) = builder.poller(&[]).unwrap();
    let (_, mut downstream) = builder.poller(&[first]).unwrap();
    let producer = builder.build().unwrap();
    producer.publish_batch(3, |slot, sequence| *slot = sequence).unwrap();
    drop(producer);
    // Downstream sees nothing before upstream releases it, then all of it, then `Closed`.
    assert!(matches!(downstream.poll(8), Ok(None)));
    assert_eq!(upstream.poll_each(8, |_, _, _| {}), Ok(3));
    assert!(matches!(upstream.poll(8), Err(Interrupt::Closed)));
    assert_eq!(downstream.poll_each(8, |_, _, _| {}), Ok(3));
    assert!(matches!(downstream.wait(8), Err(Interrupt::Closed)));
    let control = downstream.control();
    drop((upstream, downstream));
    assert!(!control.is_halted(), "dropping drained pollers of a closed ring is no failure");
}

fn a_waiting_poller_is_woken_by_request<W: WaitStrategy>(wait: W) {
    within(LIMIT, move || {
        let mut builder = RingBuilder::multi_producer(8, || 0u64, wait).unwrap();
        let (_, mut poller) = builder.poller(&[]).unwrap();
        let producer = builder.build().unwrap();
        let control = poller.control();
        let requested = Arc::new(AtomicBool::new(false));
        let waker = {
            let requested = Arc::clone(&requested);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                requested.store(true, Ordering::Release);
                control.wake_all();
            })
        };
        // Nothing is published: only the request ends the wait.
        assert!(poller.wait_or(8, || requested.load(Ordering::Acquire)).unwrap().is_none());
        waker.join().unwrap();
        // An event ends it too, with the event, whatever `wake` says afterwards.
        producer.publish(|slot, sequence| *slot = sequence * 10).unwrap();
        let batch = poller.wait_or(8, || false).unwrap().expect("the event");
        assert_eq!((batch.first_sequence(), *batch.get(1)), (1, 10));
        drop(batch);
        drop(producer);
        assert!(matches!(poller.wait_or(8, || false), Err(Interrupt::Closed)));
    });
}

#[test]
fn wait_or_returns_when_woken_for_every_strategy() {
    a_waiting_poller_is_woken_by_request(Blocking::new());
    a_waiting_poller_is_woken_by_request(Yielding::default());
    a_waiting_poller_is_woken_by_request(Sleeping::default());
    a_waiting_poller_is_woken_by_request(BusySpin);
}

#[test]
fn dropping_a_poller_that_still_holds_work_halts_the_ring() {
    let mut builder = RingBuilder::single_producer(2, || 0u64, BusySpin).unwrap();
    let (_, poller) = builder.poller(&[]).unwrap();
    let mut producer = builder.build().unwrap();
    producer.publish_batch(2, |_, _| {}).unwrap();
    drop(poller);
    // Without the halt this publish would wait for ever for a consumer that no longer exists.
    assert_eq!(producer.publish(|_, _| {}), Err(RingError::Halted));
}

#[test]
fn dropping_an_unbuilt_builder_stops_its_processors() {
    within(LIMIT, || {
        let mut builder = RingBuilder::single_producer(8, || 0u64, Blocking::new()).unwrap();
        let (_, processor) = builder.processor("idle", &[], |_: &u64, _, _| {}).unwrap();
        drop(builder);
        processor.join().map(drop).unwrap();
    });
}

/// Records the sequences it handles; optionally holds its thread inside the first event until
/// told to go on.
struct Recorder {
    processed: Vec<u64>,
    hold: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
}

impl keel_ring::EventHandler<Event> for Recorder {
    fn on_event(&mut self, _: &Event, sequence: u64, _: bool) {
        if let Some((entered, gate)) = self.hold.take() {
            entered.send(()).unwrap();
            // Returns when the sender is dropped.
            let _ = gate.recv();
        }
        self.processed.push(sequence);
    }
}

/// Producers blocked on a full ring and consumers blocked on an empty one all return on halt;
/// every sequence a handler processed was processed once, in order, and was published.
fn halt_wakes_everyone<W: WaitStrategy>(wait: W) {
    const CAPACITY: usize = 16;
    let mut builder = RingBuilder::multi_producer(CAPACITY, Event::default, wait).unwrap();
    // `gate` holds the first handler inside its first event, so the ring fills up behind it.
    let (gate_sender, gate) = mpsc::channel::<()>();
    let (entered_sender, entered) = mpsc::channel::<()>();
    let held = Recorder { processed: Vec::new(), hold: Some((entered_sender, gate)) };
    let (held, held_processor) = builder.processor("held", &[], held).unwrap();
    // `idle` runs after `held` and so waits on an empty barrier the whole time.
    let idle = Recorder { processed: Vec::new(), hold: None };
    let (_, idle_processor) = builder.processor("idle", &[held], idle).unwrap();
    let producer = builder.build().unwrap();
    let control = producer.control();
    let published = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..3)
        .map(|_| {
            let producer = producer.clone();
            let published = published.clone();
            std::thread::spawn(move || {
                let mut count = 0u64;
                loop {
                    match producer.publish(|_, _| {}) {
                        Ok(_) => count += 1,
                        Err(error) => {
                            assert_eq!(error, RingError::Halted);
                            published.fetch_add(count, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    entered.recv().unwrap();
    // Wait until the ring is full and the producers are all waiting for room.
    while control.cursor() < CAPACITY as u64 + 3 {
        std::thread::sleep(Duration::from_millis(1));
    }
    control.halt();
    for thread in producers {
        thread.join().unwrap();
    }
    drop(gate_sender);
    let held = held_processor.join().unwrap().processed;
    let idle = idle_processor.join().unwrap().processed;
    let published = published.load(Ordering::Relaxed);
    assert!(published >= CAPACITY as u64, "the ring was full before the halt");
    for processed in [&held, &idle] {
        assert!(processed.iter().copied().eq(1..=processed.len() as u64), "once each, in order");
        assert!(processed.len() as u64 <= published, "nothing unpublished was processed");
    }
    assert!(!held.is_empty(), "the held handler finished the event it was inside");
    drop(producer);
}

/// Consumers waiting on an empty ring stop when the last producer goes, having processed
/// everything.
fn close_wakes_waiting_consumers<W: WaitStrategy>(wait: W) {
    let mut builder = RingBuilder::single_producer(16, || 0u64, wait).unwrap();
    let (a, first) = builder.processor("first", &[], |_: &u64, _, _| {}).unwrap();
    let mut count = 0u64;
    let (_, second) = builder
        .processor("second", &[a], move |value: &u64, _, _| {
            count += 1;
            assert_eq!(*value, count);
        })
        .unwrap();
    let mut producer = builder.build().unwrap();
    producer.publish_batch(5, |slot, sequence| *slot = sequence).unwrap();
    std::thread::sleep(Duration::from_millis(20)); // Let both settle into waiting.
    drop(producer);
    first.join().map(drop).unwrap();
    second.join().map(drop).unwrap();
}

macro_rules! shutdown_tests {
    ($module:ident, $wait:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn halt_wakes_waiting_producers_and_consumers() {
                within(LIMIT, || halt_wakes_everyone($wait));
            }

            #[test]
            fn close_wakes_waiting_consumers_after_draining() {
                within(LIMIT, || close_wakes_waiting_consumers($wait));
            }
        }
    };
}

shutdown_tests!(busy_spin, BusySpin);
shutdown_tests!(yielding, Yielding::default());
shutdown_tests!(sleeping, Sleeping::default());
shutdown_tests!(blocking, Blocking::new());

#[test]
fn publishing_after_halt_is_an_error() {
    let mut builder = RingBuilder::multi_producer(8, || 0u64, BusySpin).unwrap();
    let (_, _poller) = builder.poller(&[]).unwrap();
    let producer = builder.build().unwrap();
    assert_eq!(producer.publish(|_, _| {}), Ok(1));
    producer.control().halt();
    assert_eq!(producer.publish(|_, _| {}), Err(RingError::Halted));
    assert_eq!(producer.try_publish(|_, _| {}), Err(RingError::Halted));
    assert_eq!(producer.publish_batch(2, |_, _| {}), Err(RingError::Halted));
    assert_eq!(producer.try_publish_batch(2, |_, _| {}), Err(RingError::Halted));
}

#[test]
fn a_panicking_handler_reaches_its_joiner_and_frees_waiting_producers() {
    within(LIMIT, || {
        let mut builder = RingBuilder::single_producer(4, || 0u64, Blocking::new()).unwrap();
        let shutdown_called = Arc::new(AtomicBool::new(false));
        let (first, poisoned) = builder
            .processor("poisoned", &[], |value: &u64, _, _| {
                assert_ne!(*value, 3, "poison pill");
            })
            .unwrap();
        let downstream_shutdown = shutdown_called.clone();
        struct Downstream(Arc<AtomicBool>);
        impl keel_ring::EventHandler<u64> for Downstream {
            fn on_event(&mut self, _: &u64, _: u64, _: bool) {}
            fn on_shutdown(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let (_, downstream) =
            builder.processor("downstream", &[first], Downstream(downstream_shutdown)).unwrap();
        let mut producer = builder.build().unwrap();
        // The ring holds 4: publishing 10 must block once the poisoned processor dies at 3,
        // and the halt it causes must turn that wait into an error.
        let mut outcome = Ok(0);
        for value in 1..=10u64 {
            outcome = producer.publish(|slot, _| *slot = value);
            if outcome.is_err() {
                break;
            }
        }
        assert_eq!(outcome, Err(RingError::Halted));
        match poisoned.join().map(|_| ()) {
            Err(RingError::HandlerPanicked { processor, message }) => {
                assert_eq!(processor, "poisoned");
                assert!(message.contains("poison pill"), "{message}");
            }
            other => panic!("expected the handler's panic, got {other:?}"),
        }
        downstream.join().unwrap();
        assert!(shutdown_called.load(Ordering::Acquire), "healthy processors shut down cleanly");
    });
}

#[test]
fn a_panicking_multi_producer_update_halts_instead_of_stalling_consumers() {
    within(LIMIT, || {
        let mut builder = RingBuilder::multi_producer(8, || 0u64, Yielding::default()).unwrap();
        let (_, processor) = builder.processor("sum", &[], |_: &u64, _, _| {}).unwrap();
        let producer = builder.build().unwrap();
        let control = producer.control();
        let other = producer.clone();
        let result = std::thread::spawn(move || {
            other.publish(|_, _| panic!("update failed")).unwrap();
        })
        .join();
        assert!(result.is_err());
        // Sequence 1 was claimed and never filled; without the halt the processor would wait
        // at it for ever.
        assert!(control.is_halted());
        assert_eq!(producer.publish(|_, _| {}), Err(RingError::Halted));
        processor.join().map(drop).unwrap();
    });
}

/// How often `wait` polls `available` in `span`, the sequence becoming available only then.
fn polls_while_unavailable(
    span: Duration,
    wait: impl FnOnce(&mut dyn FnMut() -> u64) -> Result<u64, Interrupt>,
) -> u64 {
    let started = std::time::Instant::now();
    let mut polls = 0u64;
    let mut available = || {
        polls += 1;
        if started.elapsed() >= span {
            1
        } else {
            0
        }
    };
    assert_eq!(wait(&mut available), Ok(1));
    polls
}

#[test]
fn a_yielding_producer_facing_a_full_ring_parks() {
    let span = Duration::from_millis(20);
    let wait = Yielding::default();
    // Parked 50 µs at a time after 100 spins and 16 yields, a producer polls at most about
    // 520 times in 20 ms. Were it to keep yielding, an idle machine would let it poll tens of
    // thousands of times (a busy one fewer, so the bound cannot fail spuriously).
    let producer =
        polls_while_unavailable(span, |available| wait.wait_for_capacity(1, available, || None));
    assert!(producer < 1_000, "{producer} polls in {span:?}: the producer did not park");
}

#[test]
fn a_producer_parked_on_a_full_ring_publishes_once_the_consumer_frees_a_slot() {
    within(LIMIT, || {
        let mut builder = RingBuilder::single_producer(4, || 0u64, Yielding::default()).unwrap();
        let (_, mut poller) = builder.poller(&[]).unwrap();
        let mut producer = builder.build().unwrap();
        producer.publish_batch(4, |slot, sequence| *slot = sequence).unwrap();
        let (sender, receiver) = mpsc::channel();
        let publishing = std::thread::spawn(move || {
            let published = producer.publish(|slot, sequence| *slot = sequence);
            sender.send(published).unwrap();
        });
        // Long enough for the producer to be parked, not merely spinning.
        assert!(receiver.recv_timeout(Duration::from_millis(20)).is_err(), "the ring was full");
        assert_eq!(poller.poll_each(1, |value, sequence, _| assert_eq!(*value, sequence)), Ok(1));
        assert_eq!(receiver.recv_timeout(LIMIT), Ok(Ok(5)));
        publishing.join().unwrap();
    });
}
