//! The journal's corruption matrix through the engine's recovery: for the last two batches of
//! an engine's journal, a write cut short at every byte offset and one bit flipped in every
//! byte. `keel-journal`'s matrix (`journal/tests/corruption_matrix.rs`) ties `verify` to the
//! decision table case by case; this ties the engine to `verify`: where the journal is valid,
//! the engine recovers every record; where its tail is torn, it recovers what is before the
//! tear and reports the cut; where it is corrupt, it refuses to open with an error that says so
//! and changes nothing. In every case it recovers the state a replay of the surviving commands
//! gives, and nothing panics.

mod common;

use std::path::{Path, PathBuf};

use common::{commands, Bank};
use keel_engine::{Durability, Engine, EngineError, StateMachine};
use keel_journal::format::{check_batch, BatchCheck, SEGMENT_HEADER_SIZE};
use keel_journal::verify_journal;

/// Where each batch of a segment starts and ends.
fn batches_of(bytes: &[u8]) -> Vec<(u64, u64)> {
    let mut position = SEGMENT_HEADER_SIZE;
    let mut batches = Vec::new();
    while let BatchCheck::Batch(batch) = check_batch(&bytes[position..]) {
        batches.push((position as u64, (position + batch.size()) as u64));
        position += batch.size();
    }
    batches
}

fn segment_of(directory: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(directory.join("journal"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "segment"))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments.pop().unwrap()
}

/// The bank after the first `count` commands, each applied as the engine applied it.
fn expected_hash(workload: &[keel_engine::Context], commands: &[common::Command]) -> u64 {
    let mut bank = Bank::default();
    let mut output = keel_engine::Output::new();
    for (context, command) in workload.iter().zip(commands) {
        output.clear();
        bank.apply(context, command, &mut output);
    }
    bank.state_hash()
}

#[test]
fn every_cut_and_every_flipped_bit_recovers_as_verify_says() {
    // The template: four batches of four commands, each made durable on its own.
    let template = tempfile::tempdir().unwrap();
    let workload = commands(16, 3, 77);
    let engine = Engine::builder(template.path())
        .durability(Durability::Fsync)
        .segment_size(1 << 20)
        .open(Bank::default())
        .unwrap();
    let mut publisher = engine.publisher();
    for batch in workload.chunks(4) {
        let last = publisher.publish_batch(batch.to_vec()).unwrap();
        while engine.stats().applied < last {
            std::thread::yield_now();
        }
    }
    drop(publisher);
    engine.shutdown().unwrap();
    let contexts: Vec<keel_engine::Context> = common::records(template.path())
        .iter()
        .map(|record| keel_engine::Context {
            sequence: record.sequence,
            timestamp_ns: record.timestamp_ns,
        })
        .collect();
    let template_segment = segment_of(template.path());
    let template_bytes = std::fs::read(&template_segment).unwrap();
    let batches = batches_of(&template_bytes);
    assert_eq!(batches.len(), 4, "each batch was journaled on its own");
    let (from, to) = (batches[2].0, batches[3].1);

    let root = tempfile::tempdir().unwrap();
    let mut tally = std::collections::BTreeMap::<&str, u64>::new();
    for offset in from..to {
        for cut in [true, false] {
            let directory = root.path().join(format!("case-{offset}-{cut}"));
            std::fs::create_dir_all(directory.join("journal")).unwrap();
            let segment = directory.join("journal").join(template_segment.file_name().unwrap());
            let mut bytes = template_bytes.clone();
            if cut {
                bytes[offset as usize..to as usize].fill(0);
            } else {
                bytes[offset as usize] ^= 1 << (offset % 8);
            }
            std::fs::write(&segment, &bytes).unwrap();
            let what = format!("{} at byte {offset}", if cut { "a cut" } else { "a flipped bit" });

            let verification = verify_journal(&directory, &mut |_, _| {}).unwrap();
            let label = verification.verdict.label();
            let survivors = verification.last_sequence().unwrap_or(0);
            let opened = Engine::builder(&directory)
                .durability(Durability::Fsync)
                .segment_size(1 << 20)
                .open(Bank::default());
            match (label, opened) {
                ("valid" | "torn tail", Ok(engine)) => {
                    let recovery = engine.recovery().clone();
                    assert_eq!(recovery.last_sequence, survivors, "{what}");
                    let truncated = recovery.journal.as_ref().and_then(|j| j.truncated.as_ref());
                    assert_eq!(truncated.is_some(), label == "torn tail", "{what}");
                    let bank = engine.shutdown().unwrap();
                    let count = survivors as usize;
                    assert_eq!(
                        bank.state_hash(),
                        expected_hash(&contexts[..count], &workload[..count]),
                        "{what}: the state of the surviving commands"
                    );
                }
                ("corruption", Err(error)) => {
                    assert!(
                        matches!(&error, EngineError::Journal(source) if source.is_damage()),
                        "{what}: {error}"
                    );
                    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "{what}: changed");
                }
                (label, opened) => {
                    panic!("{what}: verify says {label}, the engine {:?}", opened.map(|_| ()))
                }
            }
            *tally.entry(label).or_default() += 1;
            std::fs::remove_dir_all(&directory).unwrap();
        }
    }
    println!("{} cases through the engine: {tally:?}", 2 * (to - from));
    assert_eq!(tally.len(), 3, "every outcome of the table is reached: {tally:?}");
}
