//! The fuzz targets of `examples/fuzz/` as proptests, so that CI runs their checks on every
//! change without a fuzzing toolchain: random bytes, and each target's seed corpus with bytes
//! flipped, cut and inserted. The committed corpus is checked to be the seeds of this build.

use std::path::PathBuf;

use keel_engine::fuzzing::{check_seed, mutate};
use keel_examples::fuzzing::{seeds, TARGETS};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// A seed damaged as a fuzzer's simplest mutations damage one.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let count = seeds.len();
    (0..count, prop::collection::vec(any::<u8>(), 0..64))
        .prop_map(move |(seed, choices)| mutate(&seeds[seed], &choices))
}

#[test]
fn every_target_on_random_and_damaged_inputs() {
    for (name, target) in TARGETS {
        let seeds: Vec<Vec<u8>> = seeds(name).into_iter().map(|(_, bytes)| bytes).collect();
        let mut runner = TestRunner::new(Config { cases: 3_000, ..Config::default() });
        runner
            .run(&prop::collection::vec(any::<u8>(), 0..512), |data| {
                target(&data);
                Ok(())
            })
            .unwrap_or_else(|failure| panic!("{name}, random bytes: {failure}"));
        runner
            .run(&mutated(seeds), |data| {
                target(&data);
                Ok(())
            })
            .unwrap_or_else(|failure| panic!("{name}, a damaged seed: {failure}"));
    }
}

/// The seeds pass, and the corpus committed for each fuzz target is its seeds in this build
/// (`KEEL_WRITE_CORPUS=1` writes them again after a format changed).
#[test]
fn the_seed_corpus_is_current() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, target) in TARGETS {
        let corpus = fuzz.join(name);
        for (seed, bytes) in seeds(name) {
            target(&bytes);
            check_seed(&corpus, seed, &bytes);
        }
    }
}
