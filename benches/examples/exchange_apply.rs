//! The exchange's workload applied straight to an `Exchange` on this thread, for a profiler or
//! a cache simulator: `keel-bench exchange`'s `exchange machine` case, alone. Time varies from
//! run to run on a VM; what the code does does not, and a cache simulator counts it:
//!
//! ```text
//! cargo build --release -p keel-benches --example exchange_apply
//! valgrind --tool=cachegrind --cache-sim=yes --LL=2097152,16,64 \
//!     target/release/examples/exchange_apply 1000000
//! ```
//!
//! (`--LL` makes the simulated last level a 2 MiB cache, the core's L2 on the machine of
//! `BENCHMARKS.md`, instead of the shared L3 the VM reports.) The arguments: the number of
//! commands, 1 000 000 by default, and how often to ask for the state hash, as checkpoints do
//! (every that many commands; 0, the default, never). Prints the rate and the final state hash,
//! so that two builds can be checked to have done the same thing.

use keel_examples::exchange::workload::{apply_directly, Mix, Workload};

/// `keel-bench exchange`'s seed, accounts and symbols (`benches/src/apps.rs`).
const SEED: u64 = 0x6b65_656c;
const TRADERS: u64 = 10_000;
const SYMBOLS: u32 = 16;

fn main() {
    let mut arguments = std::env::args().skip(1);
    let commands: u64 = arguments.next().map_or(1_000_000, |n| n.parse().expect("commands"));
    let hash_every: u64 = arguments.next().map_or(0, |n| n.parse().expect("hash every"));
    let workload = Workload::new(SEED, TRADERS, SYMBOLS, Mix::REALISTIC, 1);
    let applied = apply_directly(workload, TRADERS as usize, commands, hash_every);
    if let Err(broken) = applied.exchange.check_invariants() {
        panic!("the exchange broke an invariant: {broken}");
    }
    let seconds = applied.elapsed.as_secs_f64();
    println!(
        "{commands} commands, {} events in {seconds:.3} s: {:.2} M commands/s; state hash {:#018x}",
        applied.events,
        commands as f64 / seconds / 1e6,
        keel_engine::StateMachine::state_hash(&applied.exchange),
    );
}
