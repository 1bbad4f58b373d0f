//! `ledger serve --replicate` and `ledger replica` as processes: a replica killed with SIGKILL
//! under load is restarted and catches up; in the replicated tier every request the service
//! answered is in the replica; the replica's journal is the primary's, and its state hash the
//! primary's. Then the replica is promoted and serves as the next primary.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command as Process, Stdio};
use std::time::Duration;

use keel_journal::JournalReader;

const SECRET: &str = "a secret shared by the primary and its replicas";

/// A ledger service in the replicated tier, on free ports, spinning only a few rounds for each
/// acknowledgement (the setting for replicas on the primary's host).
const SERVE_REPLICATED: [&str; 13] = [
    "serve",
    "--listen",
    "127.0.0.1:0",
    "--replicate",
    "127.0.0.1:0",
    "--durability",
    "replicated",
    "--ack-timeout-ms",
    "300",
    "--ack-spin",
    "4",
    "--checkpoint-every",
    "500",
];

/// A child process that a failed test must not leave running.
struct Running {
    child: Child,
    stdout: BufReader<ChildStdout>,
    done: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Running {
    fn start(arguments: &[&str], data: &Path) -> Self {
        let mut child = Process::new(env!("CARGO_BIN_EXE_ledger"))
            .args(arguments)
            .arg("--data")
            .arg(data)
            .env("KEEL_REPLICATION_SECRET", SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ledger starts");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Self { child, stdout, done: false }
    }

    /// The next line of standard output.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("a line");
        assert!(!line.is_empty(), "the process ended early");
        line
    }

    /// The address on the line that starts (after spaces) with `prefix`, skipping lines before.
    fn address_after(&mut self, prefix: &str) -> SocketAddr {
        loop {
            let line = self.line();
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                let address = rest.split(|c: char| c == ';' || c.is_whitespace()).next();
                return address.unwrap().parse().expect("an address");
            }
        }
    }

    fn signal(&self, signal: &str) {
        let status = Process::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// SIGTERM, then the rest of the output once it exited successfully.
    fn stop(mut self) -> String {
        self.done = true;
        self.signal("-TERM");
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("the output");
        let status = self.child.wait().expect("it exits");
        assert!(status.success(), "ledger failed: {status}\n{rest}");
        rest
    }

    /// SIGKILL: no clean-up of any kind.
    fn kill(mut self) {
        self.done = true;
        self.signal("-KILL");
        let _ = self.child.wait();
    }
}

fn records(directory: &Path) -> Vec<(u64, u64, u16, Vec<u8>)> {
    let mut reader = JournalReader::open(directory).unwrap();
    let mut records = Vec::new();
    while let Some(record) = reader.next().unwrap() {
        records.push((record.sequence, record.timestamp_ns, record.kind, record.payload.to_vec()));
    }
    records
}

/// The `hash 0x...` in a summary.
fn hash(summary: &str) -> String {
    let at = summary.find("hash 0x").unwrap_or_else(|| panic!("a state hash in {summary}"));
    summary[at + 5..at + 23].to_owned()
}

#[test]
fn a_killed_replica_catches_up_and_a_promoted_one_serves_on() {
    let scratch = tempfile::tempdir().unwrap();
    let (primary_data, replica_data) =
        (scratch.path().join("primary"), scratch.path().join("replica"));
    let mut service = Running::start(&SERVE_REPLICATED, &primary_data);
    let clients = service.address_after("listening on ");
    let replication = service.address_after("replicas    connect to ");
    let primary = replication.to_string();
    let follow = ["replica", "--primary", primary.as_str()];
    let mut replica = Running::start(&follow, &replica_data);
    assert!(replica.line().starts_with("following tcp://"));

    // Load, and the replica killed in the middle of it, then restarted.
    let load = Process::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["load", "--connect", &clients.to_string()])
        .args(["--clients", "2", "--rate", "4000", "--duration", "1.5", "--accounts", "100"])
        .args(["--seed", "11", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ledger load runs");
    std::thread::sleep(Duration::from_millis(600));
    replica.kill();
    std::thread::sleep(Duration::from_millis(300));
    let mut replica = Running::start(&follow, &replica_data);
    assert!(replica.line().starts_with("following tcp://"));
    let output = load.wait_with_output().expect("ledger load ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(report["requests"], 6_000, "{report}");
    assert_eq!(report["answered"], 6_000, "every request answered: {report}");
    assert_eq!(report["errors"], serde_json::json!({}));

    // The service stops (its last commands acknowledged by the replica), then the replica.
    let served = service.stop();
    let followed = replica.stop();
    assert_eq!(hash(&followed), hash(&served), "{served}\n{followed}");
    // The restarted replica compared the service's checkpoints as they came.
    let matched = followed
        .lines()
        .find_map(|line| {
            line.split("; ").nth(1)?.strip_suffix(" checkpoints matched the primary's state")
        })
        .unwrap_or_else(|| panic!("a checkpoint count in {followed}"));
    let digits: String = matched.chars().filter(char::is_ascii_digit).collect();
    assert!(digits.parse::<u64>().unwrap() > 0, "{followed}");
    assert_eq!(records(&replica_data), records(&primary_data), "the same journal");

    // The replica is promoted, and serves on as the next primary.
    let mut promoted =
        Running::start(&["replica", "--primary", &primary, "--promote"], &replica_data);
    assert!(promoted.line().starts_with("following tcp://"));
    // Its primary is gone: it reconnects in vain until told to stop.
    let summary = promoted.stop();
    assert!(summary.contains("promoted    epoch 1"), "{summary}");
    let mut successor = Running::start(&["serve", "--listen", "127.0.0.1:0"], &replica_data);
    successor.address_after("listening on ");
    let reopened = successor.stop();
    assert_eq!(hash(&reopened), hash(&served), "{reopened}");
}

/// Every transfer id in a journal's commands.
fn transfer_ids(data: &Path) -> std::collections::BTreeSet<u64> {
    use keel_engine::{Bincode, Codec};
    use keel_examples::ledger::Command;
    let mut reader = JournalReader::open(data).unwrap();
    let mut ids = std::collections::BTreeSet::new();
    while let Some(record) = reader.next().unwrap() {
        // Commands only: checkpoints and the promotion's epoch record are keel's.
        if record.kind != 1 {
            continue;
        }
        if let Command::Transfer { id, .. } = Bincode.decode::<Command>(record.payload).unwrap() {
            ids.insert(id);
        }
    }
    ids
}

#[test]
fn a_primary_killed_in_the_replicated_tier_loses_no_answered_transfer_to_the_promoted_replica() {
    use keel_examples::ledger::client::Client;
    use keel_examples::ledger::wire::Response;
    use keel_examples::ledger::{Command, Event};

    let scratch = tempfile::tempdir().unwrap();
    let (primary_data, replica_data) =
        (scratch.path().join("primary"), scratch.path().join("replica"));
    let mut service = Running::start(&SERVE_REPLICATED, &primary_data);
    let clients = service.address_after("listening on ");
    let primary = service.address_after("replicas    connect to ").to_string();
    let mut replica = Running::start(&["replica", "--primary", &primary], &replica_data);
    assert!(replica.line().starts_with("following tcp://"));

    // A client pays one unit at a time and notes every transfer the service answered.
    let sender = std::thread::spawn(move || {
        let mut client = Client::connect(clients).unwrap();
        for (request, id) in [(1u64, 1u64), (2, 2)] {
            client.call(request, &Command::CreateAccount { id, code: 1, flags: 0 }).unwrap();
        }
        let mut answered = Vec::new();
        for id in 1_000.. {
            let command = Command::Transfer { id, debit: 1, credit: 2, amount: 1, code: 1 };
            match client.call(id, &command) {
                Ok(Response::Reply { event: Event::Transferred { id, .. }, .. }) => {
                    answered.push(id)
                }
                Ok(other) => panic!("transfer {id}: {other:?}"),
                // The service is gone.
                Err(_) => return answered,
            }
        }
        unreachable!()
    });
    std::thread::sleep(Duration::from_millis(800));
    service.kill();
    let answered = sender.join().unwrap();
    assert!(answered.len() > 50, "only {} transfers answered", answered.len());

    // The replica is restarted to be promoted (its primary is gone: it opens from its own
    // journal), then serves as the next primary.
    drop(replica.stop());
    let mut promoted =
        Running::start(&["replica", "--primary", &primary, "--promote"], &replica_data);
    assert!(promoted.line().starts_with("following tcp://"));
    let summary = promoted.stop();
    assert!(summary.contains("promoted    epoch 1"), "{summary}");
    let held = transfer_ids(&replica_data);
    let lost: Vec<u64> = answered.iter().copied().filter(|id| !held.contains(id)).collect();
    assert!(lost.is_empty(), "answered but not in the promoted replica: {lost:?}");
    let verify = Process::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["verify", "--data"])
        .arg(&replica_data)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}
