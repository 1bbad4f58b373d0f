//! The bytes a replication peer sends, through the frame reader and the message decoders of
//! both sides: see `keel_engine::fuzzing::replication_stream` for what is checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keel_engine::fuzzing::replication_stream(data));
