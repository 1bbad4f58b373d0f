//! A journaled payload decoded as a ledger command, as recovery does: see
//! `keel_examples::fuzzing::ledger_commands` for what is checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keel_examples::fuzzing::ledger_commands(data));
