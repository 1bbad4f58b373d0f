//! The reusable command line, mounted in an application's parser as an application would.

mod common;

use std::path::Path;

use clap::Parser;
use common::{commands, Bank};
use keel_engine::cli::{run, EngineCommand};
use keel_engine::{Bincode, Durability, Engine, StateMachine};
use keel_journal::time::rfc3339_nanos;
use serde_json::Value;

#[derive(Debug, Parser)]
enum Cli {
    /// An application command of its own.
    Serve,
    #[command(flatten)]
    Engine(EngineCommand),
}

/// Parses `arguments` as the application's binary would and runs the engine's command.
fn keel(arguments: &[&str]) -> Result<String, keel_engine::EngineError> {
    let mut all = vec!["bank"];
    all.extend_from_slice(arguments);
    let Cli::Engine(command) = Cli::try_parse_from(all).expect("arguments parse") else {
        panic!("not an engine command");
    };
    let mut out = Vec::new();
    run(command, Bincode, Bank::default, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

/// A bank of 3000 commands with a snapshot after 1000 and after 2000; returns the final state
/// and the timestamp of command 1500.
fn bank(directory: &Path) -> (Bank, u64) {
    let engine = Engine::builder(directory)
        .durability(Durability::PageCache)
        .segment_size(1 << 20)
        .open(Bank::default())
        .unwrap();
    let mut publisher = engine.publisher();
    for (index, command) in commands(3_000, 8, 13).into_iter().enumerate() {
        publisher.publish(command).unwrap();
        if index == 999 || index == 1_999 {
            let target = index as u64 + 1;
            while engine.stats().applied < target {
                std::thread::yield_now();
            }
            engine.snapshot();
            while engine.stats().last_snapshot_sequence < target {
                std::thread::yield_now();
            }
        }
        // Spread the timestamps, so that "at a time" means something.
        if index % 100 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    drop(publisher);
    let bank = engine.shutdown().unwrap();
    let at = keel_engine::replay_to(
        directory,
        Bincode,
        Bank::default(),
        keel_engine::ReplayTarget::Sequence(1_500),
    )
    .unwrap()
    .last_timestamp_ns;
    (bank, at)
}

#[test]
fn replay_verify_and_snapshot_from_the_command_line() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().to_str().unwrap();
    let (bank, at_1500) = bank(directory.path());

    let text = keel(&["replay", "--data", data]).unwrap();
    assert!(text.contains("replayed 1000 commands from the snapshot of sequence 2000"), "{text}");
    assert!(text.contains(&format!("state hash {:#018x}", bank.state_hash())), "{text}");

    let json: Value = serde_json::from_str(
        keel(&["replay", "--data", data, "--to-seq", "1500", "--json"]).unwrap().trim(),
    )
    .unwrap();
    assert_eq!(json["last_sequence"], 1_500);
    assert_eq!(json["snapshot"]["sequence"], 1_000);
    assert_eq!(json["records"], 500);

    // At a time: the last command at or before it.
    let time = rfc3339_nanos(at_1500);
    let json: Value = serde_json::from_str(
        keel(&["replay", "--data", data, "--to-time", &time, "--json"]).unwrap().trim(),
    )
    .unwrap();
    let last = json["last_sequence"].as_u64().unwrap();
    assert!(last >= 1_500, "{json}");
    assert_eq!(json["last_timestamp_ns"], at_1500, "commands of one batch share a timestamp");

    let json: Value = serde_json::from_str(
        keel(&["replay", "--data", data, "--from", "beginning", "--json"]).unwrap().trim(),
    )
    .unwrap();
    assert_eq!((json["records"].as_u64(), json["snapshot"].is_null()), (Some(3_000), true));

    let text = keel(&["verify", "--data", data]).unwrap();
    assert!(text.contains("from the beginning: 3000 commands replayed"), "{text}");
    assert!(text.contains("from the oldest snapshot: 2000 commands replayed"), "{text}");
    assert!(text.ends_with("verified: every replay ends in the same state\n"), "{text}");

    let text = keel(&["snapshot", "--data", data]).unwrap();
    assert!(text.contains("wrote "), "{text}");
    let json: Value =
        serde_json::from_str(keel(&["replay", "--data", data, "--json"]).unwrap().trim()).unwrap();
    assert_eq!(
        (json["snapshot"]["sequence"].as_u64(), json["records"].as_u64()),
        (Some(3_000), Some(0))
    );

    // A snapshot that disagrees with the journal is caught by verify.
    let store = keel_journal::SnapshotStore::open(directory.path()).unwrap();
    let mut wrong = bank.clone();
    wrong.accounts.insert(999, 1);
    let mut payload = Vec::new();
    keel_engine::Codec::encode(&Bincode, &wrong, &mut payload).unwrap();
    let meta = keel_journal::SnapshotMeta {
        schema_version: 1,
        codec: 1,
        sequence: 3_000,
        timestamp_ns: json["last_timestamp_ns"].as_u64().unwrap(),
        state_hash: wrong.state_hash(),
    };
    std::fs::remove_file(&store.list().unwrap()[0].path).unwrap();
    store.write(&meta, &payload).unwrap();
    let error = keel(&["verify", "--data", data]).unwrap_err();
    assert!(error.to_string().contains("different states"), "{error}");
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().to_str().unwrap();
    bank(directory.path());
    let error = keel(&["replay", "--data", data, "--to-time", "yesterday"]).unwrap_err();
    assert!(error.to_string().contains("not an RFC 3339 time"), "{error}");
    let error = keel(&["replay", "--data", data, "--to-seq", "99999"]).unwrap_err();
    assert!(error.to_string().contains("before the target 99999"), "{error}");
    assert!(Cli::try_parse_from([
        "bank",
        "replay",
        "--data",
        data,
        "--to-seq",
        "1",
        "--to-time",
        "x"
    ])
    .is_err());
    // No engine may run while the command line takes a snapshot.
    let engine =
        Engine::builder(directory.path()).segment_size(1 << 20).open(Bank::default()).unwrap();
    let error = keel(&["snapshot", "--data", data]).unwrap_err();
    assert!(error.to_string().contains("locked"), "{error}");
    engine.shutdown().unwrap();
}
