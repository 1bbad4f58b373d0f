//! The stats through the `metrics` facade.

mod common;

use common::{commands, Bank};
use keel_engine::Engine;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[test]
fn stats_are_recorded_through_the_metrics_facade() {
    let directory = tempfile::tempdir().unwrap();
    let engine =
        Engine::builder(directory.path()).segment_size(1 << 20).open(Bank::default()).unwrap();
    let mut publisher = engine.publisher();
    for command in commands(500, 4, 31) {
        publisher.publish(command).unwrap();
    }
    while engine.stats().applied < 500 {
        std::thread::yield_now();
    }
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || engine.stats().record_metrics());
    let recorded: Vec<(String, DebugValue)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key.key().name().to_owned(), value))
        .collect();
    let value = |name: &str| recorded.iter().find(|(key, _)| key == name).map(|(_, value)| value);
    assert_eq!(value("keel_applied"), Some(&DebugValue::Counter(500)));
    assert_eq!(value("keel_durable"), Some(&DebugValue::Counter(500)));
    assert!(matches!(value("keel_snapshot_failing"), Some(DebugValue::Gauge(_))));
    assert_eq!(value("keel_checkpoints"), Some(&DebugValue::Counter(0)));
    assert_eq!(recorded.len(), 13, "{recorded:?}");
    drop(publisher);
    engine.shutdown().unwrap();
}
