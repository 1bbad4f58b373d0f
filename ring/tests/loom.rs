//! Model checks of the sequencers and the barrier with `loom`: every interleaving (up to the
//! preemption bound) of producers and consumers, with every slot access tracked, so a missing
//! release/acquire pair shows up as a data race or a wrong value.
//!
//! Run: `LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg loom" cargo test -p keel-ring --release --test loom`

#![cfg(loom)]

use keel_ring::{Blocking, BusySpin, EventPoller, Interrupt, RingBuilder, Sequencer, WaitStrategy};
use loom::thread;

/// Drains `poller` until the ring closes, through the tracked per-event path; returns what it
/// saw as (sequence, value) pairs.
fn drain<S: Sequencer, W: WaitStrategy>(poller: &mut EventPoller<u64, S, W>) -> Vec<(u64, u64)> {
    drain_polls(poller).concat()
}

/// Like `drain`, but what each poll took apart from the others.
fn drain_polls<S: Sequencer, W: WaitStrategy>(
    poller: &mut EventPoller<u64, S, W>,
) -> Vec<Vec<(u64, u64)>> {
    let mut polls = Vec::new();
    loop {
        let mut taken = Vec::new();
        match poller.poll_each(8, |value, sequence, _| taken.push((sequence, *value))) {
            Ok(0) => thread::yield_now(),
            Ok(_) => polls.push(taken),
            Err(Interrupt::Closed) => return polls,
            Err(Interrupt::Halted) => panic!("nobody halts in this model"),
        }
    }
}

/// Like `drain`, but sleeping in the wait strategy instead of spinning: models with several
/// waiting threads stay small enough to explore when nobody spins.
fn drain_waiting<S: Sequencer, W: WaitStrategy>(
    poller: &mut EventPoller<u64, S, W>,
) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    loop {
        match poller.wait_each(8, |value, sequence, _| seen.push((sequence, *value))) {
            Ok(_) => {}
            Err(Interrupt::Closed) => return seen,
            Err(Interrupt::Halted) => panic!("nobody halts in this model"),
        }
    }
}

/// One producer wraps a two-slot ring while one consumer reads: the producer's gating and the
/// consumer's cursor read must order every slot reuse.
#[test]
fn single_producer_wraps_without_racing_the_consumer() {
    loom::model(|| {
        let mut builder = RingBuilder::single_producer(2, || 0u64, BusySpin).unwrap();
        let (_, mut poller) = builder.poller(&[]).unwrap();
        let mut producer = builder.build().unwrap();
        let consumer = thread::spawn(move || drain(&mut poller));
        producer.publish(|slot, sequence| *slot = sequence * 10).unwrap();
        producer.publish_batch(2, |slot, sequence| *slot = sequence * 10).unwrap();
        drop(producer);
        let seen = consumer.join().unwrap();
        assert_eq!(seen, vec![(1, 10), (2, 20), (3, 30)]);
    });
}

/// Two producers claim concurrently; the consumer must never read a claimed but unpublished
/// slot, and must see each producer's event exactly once.
#[test]
fn multi_producer_consumer_sees_only_published_slots() {
    loom::model(|| {
        let mut builder = RingBuilder::multi_producer(2, || 0u64, BusySpin).unwrap();
        let (_, mut poller) = builder.poller(&[]).unwrap();
        let producer = builder.build().unwrap();
        let other = producer.clone();
        let second = thread::spawn(move || {
            other.publish(|slot, _| *slot = 200).unwrap();
        });
        let consumer = thread::spawn(move || drain(&mut poller));
        producer.publish(|slot, _| *slot = 100).unwrap();
        drop(producer);
        second.join().unwrap();
        let seen = consumer.join().unwrap();
        let mut values: Vec<u64> = seen.iter().map(|&(_, value)| value).collect();
        assert_eq!(seen.iter().map(|&(sequence, _)| sequence).collect::<Vec<_>>(), vec![1, 2]);
        values.sort_unstable();
        assert_eq!(values, vec![100, 200]);
    });
}

/// A batch from a multi-producer handle is published whole: a consumer's poll takes none of
/// it or all of it, never the part marked before the rest (the engine journals what one poll
/// takes as one write, so a split batch made a journal's shape depend on the threads' timing).
#[test]
fn multi_producer_batch_is_seen_whole() {
    loom::model(|| {
        let mut builder = RingBuilder::multi_producer(4, || 0u64, BusySpin).unwrap();
        let (_, mut poller) = builder.poller(&[]).unwrap();
        let producer = builder.build().unwrap();
        let consumer = thread::spawn(move || drain_polls(&mut poller));
        producer.publish_batch(3, |slot, sequence| *slot = sequence * 10).unwrap();
        drop(producer);
        assert_eq!(consumer.join().unwrap(), vec![vec![(1, 10), (2, 20), (3, 30)]]);
    });
}

/// Multi-producer wrap: a claim beyond the ring waits for the consumer, through the shared
/// gating cache that another producer may have filled. (Threads sleep in the blocking strategy
/// rather than spin, which keeps the model finite; the fast paths still run on atomics alone.)
/// With two signallers and sleepers on both sides, this model also found a lost wake-up in an
/// earlier `Blocking` that let a signaller take a sleeper's announcement before it slept.
#[test]
fn multi_producer_wraps_through_the_shared_gating_cache() {
    loom::model(|| {
        let mut builder = RingBuilder::multi_producer(1, || 0u64, Blocking::new()).unwrap();
        let (_, mut poller) = builder.poller(&[]).unwrap();
        let producer = builder.build().unwrap();
        let other = producer.clone();
        let second = thread::spawn(move || {
            other.publish(|slot, sequence| *slot = sequence).unwrap();
        });
        let consumer = thread::spawn(move || drain_waiting(&mut poller));
        producer.publish(|slot, sequence| *slot = sequence).unwrap();
        drop(producer);
        second.join().unwrap();
        assert_eq!(consumer.join().unwrap(), vec![(1, 1), (2, 2)]);
    });
}

/// A sole producer made after another handle published and was dropped (on another thread):
/// its claims take no atomic add, so what orders its slot writes after the consumer's reads of
/// the slot's previous lap is the gating sequence alone, and what orders the other handle's
/// publish before its own is the count of handles. One slot, so the second publish must wait.
#[test]
fn sole_producer_wraps_after_another_handle_left() {
    loom::model(|| {
        let mut builder = RingBuilder::multi_producer(1, || 0u64, Blocking::new()).unwrap();
        let (_, mut poller) = builder.poller(&[]).unwrap();
        let producer = builder.build().unwrap();
        let other = producer.clone();
        let consumer = thread::spawn(move || drain_waiting(&mut poller));
        thread::spawn(move || {
            other.publish(|slot, sequence| *slot = sequence * 10).unwrap();
        })
        .join()
        .unwrap();
        let mut sole = producer.into_sole().unwrap();
        sole.publish(|slot, sequence| *slot = sequence * 10).unwrap();
        drop(sole);
        assert_eq!(consumer.join().unwrap(), vec![(1, 10), (2, 20)]);
    });
}

/// A ‖ B → C: C must not read a slot before both A and B are past it.
#[test]
fn barrier_orders_a_dependent_consumer_after_both_dependencies() {
    loom::model(|| {
        // Two slots, so the producer never waits, and so its thread can be A once it has
        // published: three threads explore in seconds where four took minutes of CI, and what
        // is checked (C reads a slot only after the producer published it and both A and B,
        // whichever is behind, are past it) needs A and B to race each other and C, not the
        // producer. (One slot would make the producer wait for C, hence for A: a deadlock
        // with A on its thread.) The consumers sleep rather than spin, for the same reason.
        let mut builder = RingBuilder::single_producer(2, || 0u64, Blocking::new()).unwrap();
        let (a, mut poller_a) = builder.poller(&[]).unwrap();
        let (b, mut poller_b) = builder.poller(&[]).unwrap();
        let (_, mut poller_c) = builder.poller(&[a, b]).unwrap();
        let mut producer = builder.build().unwrap();
        let thread_b = thread::spawn(move || drain_waiting(&mut poller_b));
        let thread_c = thread::spawn(move || drain_waiting(&mut poller_c));
        producer.publish(|slot, _| *slot = 7).unwrap();
        producer.publish(|slot, _| *slot = 8).unwrap();
        drop(producer);
        assert_eq!(drain_waiting(&mut poller_a), vec![(1, 7), (2, 8)]);
        for thread in [thread_b, thread_c] {
            assert_eq!(thread.join().unwrap(), vec![(1, 7), (2, 8)]);
        }
    });
}

/// The blocking strategy's announce-then-recheck protocol: a consumer that decides to sleep
/// just as the producer publishes must still be woken (loom reports a deadlock otherwise).
#[test]
fn blocking_strategy_loses_no_wake_up() {
    loom::model(|| {
        let mut builder = RingBuilder::single_producer(1, || 0u64, Blocking::new()).unwrap();
        let (_, mut poller) = builder.poller(&[]).unwrap();
        let mut producer = builder.build().unwrap();
        let consumer = thread::spawn(move || {
            let mut values = Vec::new();
            while let Ok(batch) = poller.wait(4) {
                values.extend(batch.iter().map(|(_, value)| *value));
            }
            values
        });
        producer.publish(|slot, _| *slot = 1).unwrap();
        producer.publish(|slot, _| *slot = 2).unwrap();
        drop(producer);
        assert_eq!(consumer.join().unwrap(), vec![1, 2]);
    });
}
