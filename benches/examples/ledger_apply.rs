//! The ledger's workload applied straight to a `Ledger` on this thread, for a profiler or a
//! cache simulator, as `exchange_apply` does for the exchange: no engine, no journal, no rings.
//! Time varies from run to run on a VM; what the code does does not, and a cache simulator
//! counts it:
//!
//! ```text
//! cargo build --release -p keel-benches --example ledger_apply
//! valgrind --tool=cachegrind --cache-sim=yes --LL=2097152,16,64 \
//!     target/release/examples/ledger_apply 1000000 1000 transfers
//! ```
//!
//! The arguments: the number of commands (1 000 000 by default), of customer accounts (1 000,
//! as `ledger run --accounts 1000`), the mix (`transfers`, the default, or `payments`), and how
//! often to ask for the state hash, as checkpoints do (every that many commands; 0, the
//! default, never).
//! The seed is `ledger run --seed 1`'s. Prints the rate and the final state hash, so that two
//! builds can be checked to have done the same thing.

use keel_engine::StateMachine;
use keel_examples::direct::apply_in_order;
use keel_examples::ledger::workload::{Mix, Workload};
use keel_examples::ledger::{Command, Ledger};

/// `ledger run`'s default number of currencies.
const CODES: u32 = 4;

fn main() {
    let mut arguments = std::env::args().skip(1);
    let commands: u64 = arguments.next().map_or(1_000_000, |n| n.parse().expect("commands"));
    let accounts: u64 = arguments.next().map_or(1_000, |n| n.parse().expect("accounts"));
    let mix = match arguments.next().as_deref() {
        None | Some("transfers") => Mix::TRANSFERS,
        Some("payments") => Mix::PAYMENTS,
        Some(other) => panic!("unknown mix {other:?}: transfers or payments"),
    };
    let hash_every: u64 = arguments.next().map_or(0, |n| n.parse().expect("hash every"));
    let mut workload = Workload::new(1, accounts, CODES, mix, 1);
    let setup = workload.setup();
    let traffic: Vec<Command> = (0..commands).map(|_| workload.next_command()).collect();
    let mut ledger = Ledger::with_capacity(
        (accounts + u64::from(CODES)) as usize,
        (accounts + commands) as usize,
    );
    let (elapsed, events) = apply_in_order(&mut ledger, &setup, &traffic, hash_every);
    let seconds = elapsed.as_secs_f64();
    if let Err(broken) = ledger.check_conservation() {
        panic!("the ledger broke conservation: {broken}");
    }
    println!(
        "{commands} commands, {events} events in {seconds:.3} s: {:.2} M commands/s; state hash \
         {:#018x}",
        commands as f64 / seconds / 1e6,
        ledger.state_hash(),
    );
}
