//! A journaled payload decoded as an exchange command, as recovery does: see
//! `keel_examples::fuzzing::exchange_commands` for what is checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keel_examples::fuzzing::exchange_commands(data));
