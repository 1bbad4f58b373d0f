//! The `ledger` binary as a user runs it: the demo in its short mode, with its output checked,
//! then the inspection commands it suggests, and `run`.

use std::path::Path;
use std::process::{Command, Output};

fn ledger(arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ledger"))
        .args(arguments)
        .output()
        .expect("the ledger binary runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

#[test]
fn the_quick_demo_crashes_a_child_recovers_and_every_check_passes() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let data = scratch.path().join("demo");
    let output = ledger(&["demo", "--quick", "--data", path(&data)]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    for expected in [
        "1. load",
        "throughput",
        "latency",
        "p99.99",
        "2. snapshot",
        "3. crash",
        "SIGKILL",
        "4. recovery",
        "5. checks",
        "cargo run --release --bin ledger -- verify --data",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    assert_eq!(stdout.matches('✓').count(), 4, "four checks passed:\n{stdout}");
    assert!(!stdout.contains('✗'), "a check failed:\n{stdout}");
    assert!(!stdout.contains("Debug") && !stdout.contains("{ "), "debug output:\n{stdout}");

    // The commands the demo suggests work on what it left.
    let output = ledger(&["verify", "--data", path(&data)]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("verified: every replay ends in the same state"), "{stdout}");

    let output = ledger(&["balance", "--data", path(&data), "--account", "1042", "--json"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    let balance: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(balance["account"], 1042);
    let credits = balance["credits_posted"].as_u64().expect("a number");
    assert!(credits >= 1_000_000, "the account was funded: {balance}");

    let output = ledger(&[
        "balance",
        "--data",
        path(&data),
        "--account",
        "1042",
        "--at",
        "2001-01-01T00:00:00Z",
    ]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(stderr.contains("no account 1042 at sequence 0"), "{stderr}");

    let output = ledger(&["replay", "--data", path(&data), "--to-seq", "1000", "--json"]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    let replay: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(replay["last_sequence"], 1000);
}

#[test]
fn run_reports_its_figures_as_json_and_refuses_a_used_directory() {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let data = scratch.path().join("run");
    let arguments =
        ["run", "--data", path(&data), "--accounts", "2000", "--transfers", "50000", "--json"];
    let output = ledger(&arguments);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(report["transfers"]["count"], 50_000);
    assert_eq!(report["conservation"], "holds");
    assert_eq!(report["accounts"], 2_004);
    assert!(report["transfers"]["per_second"].as_f64().expect("a rate") > 0.0);
    assert!(report["transfers"]["latency"]["p99_ns"].as_u64().expect("a latency") > 0);
    assert!(report["peak_resident_bytes"].as_u64().expect("Linux says") > 0);
    let outcomes = &report["outcomes"];
    assert_eq!(outcomes["accounts_created"], 2_004);
    assert!(outcomes["rejected"].as_u64().expect("a count") > 0, "the mix has mistakes");

    let output = ledger(&arguments);
    let (_, stderr) = text(&output);
    assert!(!output.status.success());
    assert!(stderr.contains("is not empty"), "{stderr}");

    let output = ledger(&["run", "--data", path(&scratch.path().join("x")), "--codes", "0"]);
    assert!(!output.status.success());
}
