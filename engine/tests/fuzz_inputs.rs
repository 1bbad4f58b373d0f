//! The fuzz targets of `engine/fuzz/` as proptests, so that CI runs their checks on every
//! change without a fuzzing toolchain: random bytes, and the seed corpus with bytes flipped,
//! cut and inserted.

use std::path::PathBuf;

use keel_engine::fuzzing::{replication_seeds, replication_stream};
use proptest::prelude::*;

/// A seed changed the way a fuzzer's simplest mutations change it.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let count = seeds.len();
    (
        0..count,
        prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 0..4),
        prop::option::of(any::<prop::sample::Index>()),
        prop::option::of((any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..16))),
    )
        .prop_map(move |(seed, flips, cut, insert)| {
            let mut bytes = seeds[seed].clone();
            for (at, mask) in flips {
                let at = at.index(bytes.len());
                bytes[at] ^= mask;
            }
            if let Some((at, inserted)) = insert {
                let at = at.index(bytes.len());
                bytes.splice(at..at, inserted);
            }
            if let Some(at) = cut {
                bytes.truncate(at.index(bytes.len()));
            }
            bytes
        })
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
        let path = corpus.join(format!("seed-{name}"));
        if std::env::var_os("KEEL_WRITE_CORPUS").is_some() {
            std::fs::create_dir_all(&corpus).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_else(|error| {
            panic!("{}: {error} (KEEL_WRITE_CORPUS=1 writes it)", path.display())
        });
        assert_eq!(committed, bytes, "{} is stale: KEEL_WRITE_CORPUS=1 writes it", path.display());
    }
}
