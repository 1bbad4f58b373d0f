//! The ledger's state costs at most 128 bytes per account with a million accounts, measured
//! by counting what the allocator hands out while they are created, and by the ledger's own
//! account of its capacities.

use keel_engine::{Context, Output, StateMachine};
use keel_examples::ledger::{flags, Command, Ledger};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static ALLOCATOR: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const ACCOUNTS: u64 = 1_000_000;

#[test]
fn a_million_accounts_cost_at_most_128_bytes_each() {
    let region = Region::new(ALLOCATOR);
    let mut ledger = Ledger::new();
    let mut output = Output::new();
    for index in 0..ACCOUNTS {
        output.clear();
        let command = Command::CreateAccount {
            // Ids a client would choose: not dense, not in order.
            id: (index + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            code: 1 + (index % 3) as u32,
            flags: flags::DEBITS_MUST_NOT_EXCEED_CREDITS,
        };
        let context = Context { sequence: index + 1, timestamp_ns: index };
        ledger.apply(&context, &command, &mut output);
    }
    let change = region.change();
    assert_eq!(ledger.accounts().len() as u64, ACCOUNTS);
    // What is held now: everything allocated minus everything freed (the growth's old
    // buffers, the output's events). A reallocation counts its growth as allocated.
    let held = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
    let per_account = held as f64 / ACCOUNTS as f64;
    let by_capacity = ledger.memory().accounts_bytes as f64 / ACCOUNTS as f64;
    println!("{per_account:.1} bytes per account allocated, {by_capacity:.1} by capacity");
    assert!(per_account <= 128.0, "{per_account:.1} bytes per account");
    assert!(
        (by_capacity - per_account).abs() < 0.1 * per_account,
        "the ledger's own account ({by_capacity:.1}) disagrees with the allocator \
         ({per_account:.1})"
    );
    drop(ledger);
}
