//! The fuzz targets of `engine/fuzz/` as proptests, so that CI runs their checks on every
//! change without a fuzzing toolchain: random bytes, and the seed corpus with bytes flipped,
//! cut and inserted.

use std::path::PathBuf;

use keel_engine::fuzzing::{check_seed, mutate, replication_seeds, replication_stream};
use proptest::prelude::*;

/// A seed damaged as a fuzzer's simplest mutations damage one.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let count = seeds.len();
    (0..count, prop::collection::vec(any::<u8>(), 0..64))
        .prop_map(move |(seed, choices)| mutate(&seeds[seed], &choices))
}

fn seeds() -> Vec<Vec<u8>> {
    replication_seeds().into_iter().map(|(_, bytes)| bytes).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    #[test]
    fn replication_frames_of_random_bytes(data in prop::collection::vec(any::<u8>(), 0..2_048)) {
        replication_stream(&data);
    }

    #[test]
    fn replication_frames_of_damaged_streams(data in mutated(seeds())) {
        replication_stream(&data);
    }
}

/// The seeds pass, and the corpus committed for the fuzz target is the seeds of this build
/// (`KEEL_WRITE_CORPUS=1` writes it again after the protocol changed).
#[test]
fn the_seed_corpus_is_current() {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/replication_frames");
    for (name, bytes) in replication_seeds() {
        replication_stream(&bytes);
        check_seed(&corpus, name, &bytes);
    }
}
