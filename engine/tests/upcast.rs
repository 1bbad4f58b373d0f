//! A journal written by an older build (the test bank's first command encoding, committed as a
//! fixture) replays in a newer build whose commands changed, through its upcast hook; and a
//! record of a version the build cannot read stops the replay with an error naming it.

mod common;

use std::path::Path;

use common::Bank;
use keel_engine::{
    replay_to, Bincode, Codec, CodecError, Context, Durability, Engine, EngineError, Halt, Output,
    ReplayTarget, StateMachine,
};
use serde::{Deserialize, Serialize};

/// The fixture: `journal/00000000000000000001.segment` of an engine that applied
/// `common::commands(200, 6, 21)` with `Bank` (command version 1), and the state hash it
/// reached. Regenerate with `cargo test -p keel-engine --test upcast -- --ignored`.
const FIXTURE: &str = "tests/fixtures/bank-v1";
const FIXTURE_COMMANDS: u64 = 200;
const FIXTURE_STATE_HASH: u64 = 0x8917_f987_a476_cd74;

/// The bank of a later build: deposits carry a memo, and transfers name their fields anew.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct BankV2(Bank);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum CommandV2 {
    Open { account: u32 },
    Deposit { account: u32, amount: i64, memo: String },
    Move { debit: u32, credit: u32, amount: i64 },
}

impl StateMachine for BankV2 {
    type Command = CommandV2;
    type Event = common::Event;
    const COMMAND_VERSION: u16 = 2;

    fn apply(
        &mut self,
        context: &Context,
        command: &CommandV2,
        output: &mut Output<common::Event>,
    ) {
        // The same business rules, through the first build's logic.
        let old = match command {
            CommandV2::Open { account } => common::Command::Open(*account),
            CommandV2::Deposit { account, amount, .. } => {
                common::Command::Deposit(*account, *amount)
            }
            CommandV2::Move { debit, credit, amount } => {
                common::Command::Transfer { from: *debit, to: *credit, amount: *amount }
            }
        };
        self.0.apply(context, &old, output);
    }

    fn state_hash(&self) -> u64 {
        self.0.state_hash()
    }

    fn upcast<C: Codec>(codec: &C, version: u16, bytes: &[u8]) -> Result<CommandV2, CodecError> {
        if version != 1 {
            return Err(CodecError::new(format!("no upcast from command version {version}")));
        }
        Ok(match codec.decode::<common::Command>(bytes)? {
            common::Command::Open(account) => CommandV2::Open { account },
            common::Command::Deposit(account, amount) => {
                CommandV2::Deposit { account, amount, memo: String::new() }
            }
            common::Command::Transfer { from, to, amount } => {
                CommandV2::Move { debit: from, credit: to, amount }
            }
            other => return Err(CodecError::new(format!("{other:?} has no successor"))),
        })
    }
}

/// A copy of the fixture in a fresh directory (opening an engine writes to its directory).
fn fixture_copy() -> tempfile::TempDir {
    let directory = tempfile::tempdir().unwrap();
    let journal = directory.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE).join("journal");
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), journal.join(entry.file_name())).unwrap();
    }
    directory
}

#[test]
fn a_journal_of_the_first_command_version_replays_through_the_upcast() {
    let directory = fixture_copy();
    // The first build reads its own journal as it always did.
    let v1 = replay_to(directory.path(), Bincode, Bank::default(), ReplayTarget::End).unwrap();
    assert_eq!((v1.last_sequence, v1.state_hash), (FIXTURE_COMMANDS, FIXTURE_STATE_HASH));
    // The second build upcasts every record and reaches the same state.
    let engine = Engine::builder(directory.path())
        .durability(Durability::PageCache)
        .segment_size(1 << 20)
        .open(BankV2::default())
        .unwrap();
    assert_eq!(engine.recovery().replayed, FIXTURE_COMMANDS);
    assert_eq!(engine.recovery().state_hash, FIXTURE_STATE_HASH);
    // It goes on writing version 2, and a replay reads both versions.
    let mut publisher = engine.publisher();
    let memo = "written by the second build".to_owned();
    publisher.publish(CommandV2::Deposit { account: 1, amount: 5, memo }).unwrap();
    drop(publisher);
    let live = engine.shutdown().unwrap();
    let replayed =
        replay_to(directory.path(), Bincode, BankV2::default(), ReplayTarget::End).unwrap();
    assert_eq!(replayed.machine, live);

    // The first build cannot read version 2, and says where.
    let error =
        replay_to(directory.path(), Bincode, Bank::default(), ReplayTarget::End).unwrap_err();
    match error {
        EngineError::Halted(Halt::Decode { sequence, message }) => {
            assert_eq!(sequence, FIXTURE_COMMANDS + 1);
            assert!(message.contains("version 2"), "{message}");
        }
        other => panic!("expected a decode error, got {other}"),
    }
}

#[test]
#[ignore = "writes the fixture; run by hand when the fixture must be remade"]
fn write_the_fixture() {
    let directory = tempfile::tempdir().unwrap();
    let engine = Engine::builder(directory.path())
        .durability(Durability::Fsync)
        .segment_size(1 << 20)
        .open(Bank::default())
        .unwrap();
    let mut publisher = engine.publisher();
    for command in common::commands(FIXTURE_COMMANDS as usize, 6, 21) {
        publisher.publish(command).unwrap();
    }
    drop(publisher);
    let bank = engine.shutdown().unwrap();
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE).join("journal");
    std::fs::create_dir_all(&target).unwrap();
    let segment = "00000000000000000001.segment";
    std::fs::copy(directory.path().join("journal").join(segment), target.join(segment)).unwrap();
    println!("FIXTURE_STATE_HASH = {:#018x}", bank.state_hash());
}
