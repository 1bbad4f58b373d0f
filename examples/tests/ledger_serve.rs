//! `ledger serve` as clients meet it: valid, malformed, truncated and oversized requests mixed
//! on several connections; the journal afterwards holds exactly the valid ones. Then `ledger
//! load` against it, and the service over a disk that fills up.

use std::path::Path;
use std::process::Command as Process;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_engine::{Bincode, Codec, Durability, Engine, Topology};
use keel_examples::format::count;
use keel_examples::ledger::client::Client;
use keel_examples::ledger::server::{Limits, Server};
use keel_examples::ledger::wire::{self, ErrorCode, Response};
use keel_examples::ledger::{flags, Command, Event, Ledger, Reject};
use keel_journal::JournalReader;
use service::Service;

mod service;

fn transfer(id: u64, debit: u64, credit: u64, amount: u64) -> Command {
    Command::Transfer { id, debit, credit, amount, code: 1 }
}

fn expect_reply(response: Option<Response>, request_id: u64) -> (u64, Event) {
    match response {
        Some(Response::Reply { request_id: answered, sequence, event }) => {
            assert_eq!(answered, request_id);
            (sequence, event)
        }
        other => panic!("expected the reply to {request_id}, got {other:?}"),
    }
}

fn expect_error(response: Option<Response>, request_id: u64, code: ErrorCode) -> String {
    match response {
        Some(Response::Error { request_id: answered, code: got, message }) => {
            assert_eq!((answered, got), (request_id, code), "{message}");
            message
        }
        other => panic!("expected a {code:?} error for {request_id}, got {other:?}"),
    }
}

/// Every command in the journal, in order.
fn journaled(data: &Path) -> Vec<Command> {
    let mut reader = JournalReader::open(data).expect("the journal");
    let mut commands = Vec::new();
    while let Some(record) = reader.next().expect("a valid journal") {
        commands.push(Bincode.decode::<Command>(record.payload).expect("a ledger command"));
    }
    commands
}

fn sorted(mut commands: Vec<Command>) -> Vec<Command> {
    commands.sort_by_key(|command| format!("{command:?}"));
    commands
}

#[test]
fn valid_requests_are_answered_bad_ones_refused_and_only_the_valid_are_journaled() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let service = Service::start(&data);
    let mut valid = Vec::new();

    // One connection, one call at a time.
    let mut client = Client::connect(service.address).unwrap();
    let opening = [
        Command::CreateAccount { id: 1, code: 1, flags: 0 },
        Command::CreateAccount { id: 2, code: 1, flags: 0 },
        Command::CreateAccount { id: 3, code: 1, flags: flags::DEBITS_MUST_NOT_EXCEED_CREDITS },
    ];
    let mut last_sequence = 0;
    for (index, command) in opening.iter().enumerate() {
        let (sequence, event) =
            expect_reply(Some(client.call(10 + index as u64, command).unwrap()), 10 + index as u64);
        assert_eq!(event, Event::AccountCreated { id: command.id() });
        assert!(sequence > last_sequence);
        last_sequence = sequence;
        valid.push(*command);
    }
    let (_, event) = expect_reply(Some(client.call(20, &transfer(100, 1, 2, 50)).unwrap()), 20);
    assert_eq!(event, Event::Transferred { id: 100, amount: 50 });
    let (_, event) = expect_reply(Some(client.call(21, &transfer(101, 3, 1, 10)).unwrap()), 21);
    assert_eq!(event, Event::TransferRejected { id: 101, reason: Reject::InsufficientFunds });
    valid.extend([transfer(100, 1, 2, 50), transfer(101, 3, 1, 10)]);

    // Malformed bodies are refused with their request id, and the connection stays usable.
    let mut unknown_kind = vec![0; 4];
    unknown_kind.extend_from_slice(&7u64.to_le_bytes());
    unknown_kind.push(99);
    unknown_kind.extend_from_slice(&[0; 20]);
    let body_length = (unknown_kind.len() - 4) as u32;
    unknown_kind[..4].copy_from_slice(&body_length.to_le_bytes());
    client.send_raw(&unknown_kind).unwrap();
    let message = expect_error(client.receive().unwrap(), 7, ErrorCode::Malformed);
    assert!(message.contains("unknown request kind 99"), "{message}");

    let mut too_long = Vec::new();
    wire::encode_request(8, &transfer(102, 1, 2, 1), &mut too_long);
    too_long.push(0);
    let body_length = (too_long.len() - 4) as u32;
    too_long[..4].copy_from_slice(&body_length.to_le_bytes());
    client.send_raw(&too_long).unwrap();
    expect_error(client.receive().unwrap(), 8, ErrorCode::Malformed);

    client.send_raw(&[3, 0, 0, 0, 1, 2, 3]).unwrap();
    expect_error(client.receive().unwrap(), 0, ErrorCode::Malformed);
    let (_, event) = expect_reply(Some(client.call(22, &transfer(103, 2, 1, 5)).unwrap()), 22);
    assert_eq!(event, Event::Transferred { id: 103, amount: 5 });
    valid.push(transfer(103, 2, 1, 5));

    // An oversized prefix is answered, then the connection is closed cleanly: the reply is
    // readable even though bytes the server never read followed it.
    let mut oversized = Client::connect(service.address).unwrap();
    let mut junk = (1u32 << 20).to_le_bytes().to_vec();
    junk.extend(std::iter::repeat_n(0xAB, 100_000));
    oversized.send_raw(&junk).unwrap();
    let message = expect_error(oversized.receive().unwrap(), 0, ErrorCode::Oversized);
    assert!(message.contains("1048576"), "{message}");
    assert_eq!(oversized.receive().unwrap(), None, "closed after the error");

    // A connection that ends inside a frame is told so, with the request id it got that far.
    let mut truncated = Client::connect(service.address).unwrap();
    let mut frame = Vec::new();
    wire::encode_request(55, &transfer(104, 1, 2, 1), &mut frame);
    truncated.send_raw(&frame[..20]).unwrap();
    truncated.finish_sending().unwrap();
    expect_error(truncated.receive().unwrap(), 55, ErrorCode::Truncated);
    assert_eq!(truncated.receive().unwrap(), None);

    // Several connections at once, each pipelining valid and malformed requests.
    let threads: Vec<_> = (0..4u64)
        .map(|connection| {
            let address = service.address;
            std::thread::spawn(move || {
                let mut client = Client::connect(address).unwrap();
                let mut sent = Vec::new();
                for index in 0..300u64 {
                    let request_id = connection * 1_000 + index;
                    if index % 7 == 3 {
                        let mut bad = Vec::new();
                        wire::encode_request(request_id, &transfer(1, 1, 2, 1), &mut bad);
                        bad[12] = 0; // The kind byte: 0 is no kind.
                        client.send_raw(&bad).unwrap();
                        sent.push((request_id, None));
                    } else {
                        let id = 10_000 + request_id;
                        let command = transfer(id, 1 + index % 2, 2 - index % 2, 1 + index);
                        client.send(request_id, &command).unwrap();
                        sent.push((request_id, Some(command)));
                    }
                }
                // Errors are sent at once, replies after the engine applied the command: the
                // responses are matched by request id, as the protocol says.
                let mut responses = std::collections::HashMap::new();
                for _ in &sent {
                    let response = client.receive().unwrap().expect("a response");
                    assert!(responses.insert(response.request_id(), response).is_none());
                }
                let mut last_sequence = 0;
                for (request_id, command) in &sent {
                    let response = responses.remove(request_id);
                    match command {
                        Some(Command::Transfer { id, amount, .. }) => {
                            let (sequence, event) = expect_reply(response, *request_id);
                            assert_eq!(event, Event::Transferred { id: *id, amount: *amount });
                            // One connection's requests are published in the order sent.
                            assert!(sequence > last_sequence);
                            last_sequence = sequence;
                        }
                        _ => {
                            expect_error(response, *request_id, ErrorCode::Malformed);
                        }
                    }
                }
                client.finish_sending().unwrap();
                assert_eq!(client.receive().unwrap(), None);
                sent.into_iter().filter_map(|(_, command)| command).collect::<Vec<_>>()
            })
        })
        .collect();
    for thread in threads {
        valid.extend(thread.join().expect("a client thread"));
    }
    drop(client);

    let summary = service.stop();
    assert!(summary.contains("stopped"), "{summary}");
    let published = valid.len() as u64;
    assert!(summary.contains(&format!("{} requests published", count(published))), "{summary}");
    assert!(summary.contains("errors      175 malformed, 1 oversized, 1 truncated"), "{summary}");

    // The journal holds exactly the valid requests: per connection in order, so compared as
    // multisets across connections.
    let journal = journaled(&data);
    assert_eq!(journal.len(), valid.len(), "the journal holds as many commands as were valid");
    assert!(sorted(journal) == sorted(valid), "the journal holds the valid commands");
}

/// More requests than the per-connection bound, sent at once and followed by the end of the
/// client's input: the server reads them as its bounds allow, and answers every one before it
/// closes (none is taken for a cut frame).
#[test]
fn a_client_that_pipelines_past_the_bounds_and_half_closes_gets_every_answer() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let service = Service::start(&data);
    let mut client = Client::connect(service.address).unwrap();
    for id in [1, 2] {
        let command = Command::CreateAccount { id, code: 1, flags: 0 };
        expect_reply(Some(client.call(id, &command).unwrap()), id);
    }
    let count = 3 * Limits::default().in_flight_per_connection as u64;
    let sender = {
        let mut stream = client.stream().try_clone().unwrap();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            for request_id in 0..count {
                wire::encode_request(request_id, &transfer(100 + request_id, 1, 2, 1), &mut bytes);
            }
            std::io::Write::write_all(&mut stream, &bytes).unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    for request_id in 0..count {
        let (_, event) = expect_reply(client.receive().unwrap(), request_id);
        assert_eq!(event, Event::Transferred { id: 100 + request_id, amount: 1 });
    }
    assert_eq!(client.receive().unwrap(), None, "closed after the last answer");
    sender.join().unwrap();
    let summary = service.stop();
    assert!(summary.contains("errors      none"), "{summary}");
}

#[test]
fn load_drives_the_service_and_every_request_is_answered() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let service = Service::start(&data);
    let output = Process::new(env!("CARGO_BIN_EXE_ledger"))
        .args(["load", "--connect", &service.address.to_string()])
        .args(["--clients", "2", "--rate", "20000", "--duration", "0.5", "--accounts", "200"])
        .args(["--seed", "7", "--json"])
        .output()
        .expect("ledger load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(report["requests"], 10_000);
    assert_eq!(report["answered"], 10_000);
    assert_eq!(report["errors"], serde_json::json!({}));
    assert_eq!(report["latency"]["count"], 10_000);
    let outcomes = &report["outcomes"];
    assert!(outcomes["transferred"].as_u64().unwrap() > 8_000, "{outcomes}");
    assert!(outcomes["rejected"].as_u64().unwrap() > 0, "the mix has mistakes: {outcomes}");

    let summary = service.stop();
    let setup = report["setup"]["commands"].as_u64().unwrap();
    assert_eq!(setup, 4 + 2 * 200);
    assert!(
        summary.contains(&format!("{} requests published", count(10_000 + setup))),
        "{summary}"
    );
    assert_eq!(journaled(&data).len() as u64, 10_000 + setup);
}

/// The disk fills under the service: requests in flight are answered `unavailable`, the
/// gateway returns, and everything acknowledged with a reply is in the recovered state.
#[test]
fn a_full_disk_under_the_service_answers_unavailable_and_loses_nothing_acknowledged() {
    use keel_journal::storage::{Fault, FaultyStorage, Operation};
    for topology in [Topology::Compact, Topology::Pipelined] {
        let scratch = tempfile::tempdir().unwrap();
        let storage = FaultyStorage::new();
        let builder = || {
            Engine::builder(scratch.path())
                .durability(Durability::Fsync)
                .topology(topology)
                .segment_size(1 << 20)
        };
        let mut engine = builder()
            .journal_storage(Arc::new(storage.clone()))
            .output_poller()
            .open(Ledger::new())
            .unwrap();
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), Limits::default()).unwrap();
        let address = server.local_address();
        let mut publisher = engine.publisher();
        let mut output = engine.take_output_poller().unwrap();
        let stop = AtomicBool::new(false);
        let report = std::thread::scope(|scope| {
            let gateway = scope.spawn(|| server.run(&mut publisher, &mut output, &stop));
            let mut client = Client::connect(address).unwrap();
            for id in [1, 2] {
                let command = Command::CreateAccount { id, code: 1, flags: 0 };
                expect_reply(Some(client.call(id, &command).unwrap()), id);
            }
            let mut acknowledged = 0;
            for id in 100..200 {
                let (sequence, _) =
                    expect_reply(Some(client.call(id, &transfer(id, 1, 2, 1)).unwrap()), id);
                acknowledged = sequence;
            }
            storage.inject_on(Operation::Write, ".segment", 0, Fault::Fail { errno: 28 });
            let mut unavailable = 0;
            for id in 200..300 {
                client.send(id, &transfer(id, 1, 2, 1)).unwrap();
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while let Some(response) = client.receive().unwrap() {
                match response {
                    Response::Reply { sequence, .. } => acknowledged = acknowledged.max(sequence),
                    Response::Error { code: ErrorCode::Unavailable, message, .. } => {
                        assert!(message.contains("retry"), "{message}");
                        unavailable += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
                assert!(Instant::now() < deadline);
            }
            assert!(unavailable > 0, "the failed write was answered unavailable");
            drop(client);
            let report = gateway.join().unwrap().unwrap();
            (report, acknowledged)
        });
        let (report, acknowledged) = report;
        let reason = report.engine_stopped.expect("the gateway saw the engine stop");
        assert!(reason.contains("os error 28"), "{reason}");
        drop((publisher, output));
        assert!(engine.shutdown().is_err());

        let recovered = builder().open(Ledger::new()).unwrap();
        assert!(
            recovered.recovery().last_sequence >= acknowledged,
            "{topology:?}: recovered to {}, acknowledged {acknowledged}",
            recovered.recovery().last_sequence
        );
        let ledger = recovered.shutdown().unwrap();
        ledger.check_conservation().unwrap();
        assert_eq!(ledger.transfer_count(), acknowledged - 2);
    }
}
