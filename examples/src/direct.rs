//! A state machine driven straight from a list of commands on the calling thread: no engine,
//! no journal, no rings. The state machine's own rate, for `keel-bench`'s `exchange machine`
//! case and for the `exchange_apply` and `ledger_apply` harnesses that profilers and cache
//! simulators run.

use std::time::{Duration, Instant};

use keel_engine::{Context, Lookahead, Output, StateMachine};

/// Applies `setup`, then `traffic`, to `machine` in order, numbered from 1 as the engine
/// numbers commands (each timestamp equal to its sequence), handing each command to the
/// machine's hints as the engine does (through its [`Lookahead`]). With `hash_every` above 0,
/// asks for the state hash after every command whose sequence is a multiple of it, as the
/// engine's checkpoints do. Returns the time the traffic took and the events it emitted; the
/// setup is neither timed nor counted.
pub fn apply_in_order<M: StateMachine>(
    machine: &mut M,
    setup: &[M::Command],
    traffic: &[M::Command],
    hash_every: u64,
) -> (Duration, u64) {
    let mut output = Output::new();
    let mut sequence = 0;
    let mut apply = |machine: &mut M, commands: &[M::Command]| {
        let mut ahead = Lookahead::start(machine, || commands.iter());
        let mut events = 0;
        for command in commands {
            ahead.step(machine);
            sequence += 1;
            output.clear();
            machine.apply(&Context { sequence, timestamp_ns: sequence }, command, &mut output);
            events += output.events().len() as u64;
            if hash_every != 0 && sequence % hash_every == 0 {
                std::hint::black_box(machine.state_hash());
            }
        }
        events
    };
    apply(machine, setup);
    let started = Instant::now();
    let events = apply(machine, traffic);
    (started.elapsed(), events)
}
