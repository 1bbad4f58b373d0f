//! The poison-pill hunt on the exchange: command sequences applied with the invariants checked
//! after each: see `keel_examples::fuzzing::exchange_poison`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keel_examples::fuzzing::exchange_poison(data));
