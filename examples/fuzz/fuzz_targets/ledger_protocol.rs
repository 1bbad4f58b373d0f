//! The bytes a client of `ledger serve` sends, split into frames and decoded as requests and as
//! responses: see `keel_examples::fuzzing::ledger_protocol` for what is checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keel_examples::fuzzing::ledger_protocol(data));
