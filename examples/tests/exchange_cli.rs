//! The `exchange` binary as a user runs it: the demo in its short mode, with its output
//! checked, then the commands it suggests, and `run`.

use std::process::{Command, Output};

fn exchange(arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_exchange"))
        .args(arguments)
        .output()
        .expect("the exchange binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_quick_demo_crashes_a_child_recovers_and_every_check_passes() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let data = scratch.path().join("demo");
    let data = data.to_str().expect("a UTF-8 path");
    let output = exchange(&["demo", "--quick", "--data", data]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "the demo failed:\n{}", text(&output));
    for expected in [
        "1. load",
        "throughput",
        "latency",
        "trades",
        "2. snapshot",
        "3. crash",
        "SIGKILL",
        "4. recovery",
        "5. checks",
        "cargo run --release --bin exchange -- book --data",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    assert_eq!(stdout.matches('✓').count(), 3, "three checks passed:\n{stdout}");
    assert!(!stdout.contains('✗'), "a check failed:\n{stdout}");
    assert!(!stdout.contains("Debug") && !stdout.contains("{ "), "debug output:\n{stdout}");

    let output = exchange(&["verify", "--data", data]);
    assert!(output.status.success(), "{}", text(&output));

    let output = exchange(&["book", "--data", data, "--symbol", "1", "--depth", "3", "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    let book: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(book["symbol"], 1);
    let (bids, asks) = (book["bids"].as_array().unwrap(), book["asks"].as_array().unwrap());
    assert!(!bids.is_empty() && bids.len() <= 3 && !asks.is_empty() && asks.len() <= 3);
    let best_bid = bids[0]["price"].as_u64().unwrap();
    let best_ask = asks[0]["price"].as_u64().unwrap();
    assert!(best_bid < best_ask, "the book is not crossed: {book}");
    assert!(bids.windows(2).all(|pair| pair[0]["price"].as_u64() > pair[1]["price"].as_u64()));

    let output = exchange(&["book", "--data", data, "--symbol", "99"]);
    assert!(!output.status.success());
    assert!(text(&output).contains("no symbol 99"), "{}", text(&output));

    let output =
        exchange(&["book", "--data", data, "--symbol", "1", "--at", "2001-01-01T00:00:00Z"]);
    assert!(!output.status.success(), "no symbol existed then");
}

#[test]
fn run_reports_json_and_refuses_a_used_directory() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let data = scratch.path().join("run");
    let data = data.to_str().expect("a UTF-8 path");
    let arguments =
        ["run", "--data", data, "--accounts", "500", "--orders", "50000", "--seed", "3", "--json"];
    let output = exchange(&arguments);
    assert!(output.status.success(), "{}", text(&output));
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(report["orders"]["count"], 50_000);
    assert_eq!(report["invariants"], "hold");
    assert!(report["outcomes"]["trades"].as_u64().unwrap() > 1_000, "{report}");
    assert!(report["peak_resident_bytes"].as_u64().is_some());

    let output = exchange(&arguments);
    assert!(!output.status.success());
    assert!(text(&output).contains("is not empty"), "{}", text(&output));
}
