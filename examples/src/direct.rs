//! A state machine driven straight from a list of commands on the calling thread: no engine,
//! no journal, no rings. The state machine's own rate, for `keel-bench`'s `exchange machine`
//! case and for the `exchange_apply` and `ledger_apply` harnesses that profilers and cache
//! simulators run.

use std::time::{Duration, Instant};

use keel_engine::{Context, Output, StateMachine};

/// Applies `setup`, then `traffic`, to `machine` in order, numbered from 1 as the engine
/// numbers commands (each timestamp equal to its sequence), handing each command to the
/// machine's `prefetch` as far ahead as the engine does. Returns the time the traffic took
/// and the events it emitted; the setup is neither timed nor counted.
pub fn apply_in_order<M: StateMachine>(
    machine: &mut M,
    setup: &[M::Command],
    traffic: &[M::Command],
) -> (Duration, u64) {
    let mut output = Output::new();
    let mut sequence = 0;
    let mut apply = |machine: &mut M, commands: &[M::Command]| {
        let ahead = M::PREFETCH_AHEAD;
        for command in &commands[..(2 * ahead).min(commands.len())] {
            machine.prefetch_index(command);
        }
        for command in &commands[..ahead.min(commands.len())] {
            machine.prefetch(command);
        }
        let mut events = 0;
        for (index, command) in commands.iter().enumerate() {
            if ahead > 0 {
                if let Some(next) = commands.get(index + 2 * ahead) {
                    machine.prefetch_index(next);
                }
                if let Some(next) = commands.get(index + ahead) {
                    machine.prefetch(next);
                }
            }
            sequence += 1;
            output.clear();
            machine.apply(&Context { sequence, timestamp_ns: sequence }, command, &mut output);
            events += output.events().len() as u64;
        }
        events
    };
    apply(machine, setup);
    let started = Instant::now();
    let events = apply(machine, traffic);
    (started.elapsed(), events)
}
