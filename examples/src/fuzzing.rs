//! Entry points for the fuzz targets of `examples/fuzz/` and for the proptests that stand in
//! for them in CI (`tests/fuzz_inputs.rs`). Each takes arbitrary bytes and panics when a
//! property breaks; a panic inside `apply` is a poison pill (a command that would halt the
//! engine and halt it again on every replay). Not part of the examples' API.

use keel_engine::{decode_command, Bincode, Codec, Context, Output, StateMachine};

use crate::exchange::{self, Exchange, OrderKind, Side};
use crate::ledger::wire::{self, Frame, Response};
use crate::ledger::{self, Ledger};

/// Bytes as a client of `ledger serve` sends them: frame after frame, each split from the
/// stream and decoded as the gateway does, and also as a response, as the client does.
/// Checks: nothing panics; a request that decodes encodes back to the very bytes of its frame
/// (every field is fixed width); a refused body names the request id exactly when it holds
/// one; a response that decodes encodes back to its frame (error messages that are UTF-8).
pub fn ledger_protocol(data: &[u8]) {
    let mut rest = data;
    let mut encoded = Vec::new();
    loop {
        let (body, consumed) = match wire::split_frame(rest) {
            Frame::Complete { body, consumed } => (body, consumed),
            Frame::Incomplete => {
                assert!(
                    rest.len() < wire::LENGTH_BYTES + wire::MAX_BODY_BYTES,
                    "a buffer holding a largest frame is not incomplete"
                );
                return;
            }
            Frame::Oversized { length } => {
                assert!(length as usize > wire::MAX_BODY_BYTES);
                return;
            }
        };
        let frame = &rest[..consumed];
        assert_eq!(consumed, wire::LENGTH_BYTES + body.len());
        match wire::decode_request(body) {
            Ok((request_id, command)) => {
                encoded.clear();
                wire::encode_request(request_id, &command, &mut encoded);
                assert_eq!(encoded, frame, "{command:?} re-encodes differently");
            }
            Err(error) => {
                let request_id = body.first_chunk::<8>().map(|id| u64::from_le_bytes(*id));
                assert_eq!(error.request_id, request_id, "{error}");
                assert!(!error.reason.is_empty());
            }
        }
        match wire::decode_response(body) {
            Ok(Response::Reply { request_id, sequence, event }) => {
                encoded.clear();
                wire::encode_reply(request_id, sequence, &event, &mut encoded);
                assert_eq!(encoded, frame, "{event:?} re-encodes differently");
            }
            Ok(Response::Error { request_id, code, message }) => {
                if std::str::from_utf8(&body[12..]).is_ok() {
                    encoded.clear();
                    wire::encode_error(request_id, code, &message, &mut encoded);
                    assert_eq!(encoded, frame, "an error re-encodes differently");
                }
            }
            Err(error) => assert!(!error.reason.is_empty()),
        }
        rest = &rest[consumed..];
    }
}

/// A journaled record's payload decoded as a ledger command, the way recovery and replicas
/// decode it (the first byte chooses this build's command version or an older one).
pub fn ledger_commands(data: &[u8]) {
    commands::<Ledger>(data);
}

/// As [`ledger_commands`], for the exchange.
pub fn exchange_commands(data: &[u8]) {
    commands::<Exchange>(data);
}

/// Decodes; whatever decodes must encode to bytes that decode to the same command, and the
/// codec must refuse what it does not read whole.
fn commands<M>(data: &[u8])
where
    M: StateMachine,
    M::Command: PartialEq + std::fmt::Debug,
{
    let Some((&choice, payload)) = data.split_first() else { return };
    let version = if choice & 1 == 0 { M::COMMAND_VERSION } else { u16::from(choice >> 1) };
    let Ok(command) = decode_command::<M, _>(&Bincode, version, payload) else { return };
    let mut encoded = Vec::new();
    Bincode.encode(&command, &mut encoded).expect("a decoded command encodes");
    let again: M::Command = Bincode.decode(&encoded).expect("an encoded command decodes");
    assert_eq!(again, command, "a command changed through its encoding");
    if version == M::COMMAND_VERSION {
        // The codec reads the whole payload: a byte more is refused.
        let mut longer = payload.to_vec();
        longer.push(0);
        assert!(Bincode.decode::<M::Command>(&longer).is_err(), "trailing bytes were accepted");
    }
}

/// The poison-pill hunt on the ledger: the bytes become a sequence of commands over a handful
/// of accounts and transfers, with amounts, timeouts and clock jumps at the edges of their
/// types, applied in order. Checks after every command: `apply` did not panic; it emitted
/// exactly one reply, to that command's id, after any expiries; money is conserved per code.
/// Halfway, the state goes through a snapshot's encoding and both copies go on: their events
/// and state hashes must stay equal (a snapshot changes nothing).
pub fn ledger_poison(data: &[u8]) {
    let commands = timed(data, ledger_command);
    run_twice(Ledger::new(), &commands, |ledger, command, events| {
        let replies: Vec<_> = events.iter().filter_map(ledger::Event::reply_to).collect();
        assert_eq!(replies, [command.id()], "{command:?} gave {events:?}");
        assert!(events.last().and_then(ledger::Event::reply_to).is_some(), "{events:?}");
        if let Err(error) = ledger.check_conservation() {
            panic!("after {command:?}: {error}");
        }
    });
}

/// The poison-pill hunt on the exchange: symbols, deposits, withdrawals and orders of every
/// kind over a few accounts, prices and sizes at the edges of their types. Checks after every
/// command: `apply` did not panic, emitted at least one event, and the exchange's invariants
/// hold (the book never stays crossed, holds match resting orders, assets are conserved);
/// with the snapshot halfway as for the ledger.
pub fn exchange_poison(data: &[u8]) {
    let commands = timed(data, exchange_command);
    run_twice(Exchange::new(), &commands, |exchange, command, events| {
        assert!(!events.is_empty(), "{command:?} gave no event");
        if let Err(error) = exchange.check_invariants() {
            panic!("after {command:?}: {error}");
        }
    });
}

/// The bytes read as a sequence of commands, `next` reading each, every one followed by how far
/// the clock moves before it.
fn timed<C>(data: &[u8], mut next: impl FnMut(&mut Input) -> Option<C>) -> Vec<(u64, C)> {
    let mut input = Input::new(data);
    let mut commands = Vec::new();
    while let Some(command) = next(&mut input) {
        let delay = input.delay();
        commands.push((delay, command));
    }
    commands
}

/// Applies `commands` (each after its clock advance) to `initial`, checking each step with
/// `check`; from the middle on, also to a copy that went through the codec as a snapshot does,
/// whose events and state hash must match the original's at every step.
fn run_twice<M>(
    initial: M,
    commands: &[(u64, M::Command)],
    mut check: impl FnMut(&M, &M::Command, &[M::Event]),
) where
    M: StateMachine,
    M::Event: PartialEq + std::fmt::Debug,
{
    let mut machine = initial;
    let mut copy: Option<M> = None;
    let mut output = Output::new();
    let mut copy_output = Output::new();
    let mut now = 1_000_000_000u64;
    for (index, (delay, command)) in commands.iter().enumerate() {
        if index == commands.len() / 2 {
            let mut snapshot = Vec::new();
            Bincode.encode(&machine, &mut snapshot).expect("a state encodes");
            let restored: M = Bincode.decode(&snapshot).expect("a state decodes");
            assert_eq!(restored.state_hash(), machine.state_hash(), "a snapshot changed the hash");
            copy = Some(restored);
        }
        now = now.saturating_add(*delay);
        let context = Context { sequence: index as u64 + 1, timestamp_ns: now };
        output.clear();
        machine.apply(&context, command, &mut output);
        check(&machine, command, output.events());
        if let Some(copy) = copy.as_mut() {
            copy_output.clear();
            copy.apply(&context, command, &mut copy_output);
            assert_eq!(copy_output.events(), output.events(), "the snapshot's copy diverged");
            assert_eq!(copy.state_hash(), machine.state_hash(), "the snapshot's copy diverged");
        }
    }
}

/// The fuzzer's bytes, read as small choices; reading past the end reads nothing.
struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(first)
    }

    /// A byte, 0 once the input is used up (so that a command begun is always finished).
    fn small(&mut self) -> u8 {
        self.byte().unwrap_or(0)
    }

    /// One of a few ids, 0 (reserved) and the type's largest among them.
    fn id(&mut self) -> u64 {
        match self.small() % 10 {
            8 => 0,
            9 => u64::MAX,
            small => u64::from(small) + 1,
        }
    }

    /// An amount: small ones, and the values around the edges of `u64` and `i64`.
    fn amount(&mut self) -> u64 {
        const EDGES: [u64; 8] = [
            0,
            1,
            u64::MAX,
            u64::MAX - 1,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX / 2,
            1 << 32,
        ];
        let choice = self.small();
        match choice % 4 {
            0 => EDGES[usize::from(choice >> 2) % EDGES.len()],
            _ => u64::from(choice >> 2),
        }
    }

    /// How far the clock moves before a command: often not at all, sometimes a lot.
    fn delay(&mut self) -> u64 {
        match self.small() % 8 {
            0..=3 => 0,
            4 => 1,
            5 => 1_000,
            6 => 1_000_000_000,
            _ => u64::MAX / 4,
        }
    }

    /// A code: two real ones, 0 (reserved) and the largest.
    fn code(&mut self) -> u32 {
        [1, 2, 0, u32::MAX][usize::from(self.small() % 4)]
    }
}

fn ledger_command(input: &mut Input) -> Option<ledger::Command> {
    let choice = input.byte()?;
    Some(match choice % 5 {
        0 => ledger::Command::CreateAccount {
            id: input.id(),
            code: input.code(),
            flags: u16::from(input.small()),
        },
        1 => ledger::Command::Transfer {
            id: input.id().wrapping_add(100),
            debit: input.id(),
            credit: input.id(),
            amount: input.amount(),
            code: input.code(),
        },
        2 => ledger::Command::Pending {
            id: input.id().wrapping_add(200),
            debit: input.id(),
            credit: input.id(),
            amount: input.amount(),
            code: input.code(),
            timeout_ns: input.amount(),
        },
        3 => ledger::Command::Post {
            id: input.id().wrapping_add(300),
            pending_id: input.id().wrapping_add(200),
            amount: input.amount(),
        },
        _ => ledger::Command::Void {
            id: input.id().wrapping_add(300),
            pending_id: input.id().wrapping_add(200),
        },
    })
}

fn exchange_command(input: &mut Input) -> Option<exchange::Command> {
    let choice = input.byte()?;
    let asset = |input: &mut Input| u32::from(input.small() % 4);
    let symbol = |input: &mut Input| u32::from(input.small() % 4);
    let account = |input: &mut Input| u64::from(input.small() % 4);
    Some(match choice % 6 {
        0 => exchange::Command::AddSymbol {
            symbol: symbol(input),
            base: asset(input),
            quote: asset(input),
        },
        1 => exchange::Command::Deposit {
            account: account(input),
            asset: asset(input),
            amount: input.amount(),
        },
        2 => exchange::Command::Withdraw {
            account: account(input),
            asset: asset(input),
            amount: input.amount(),
        },
        3 => exchange::Command::Place {
            order_id: input.id(),
            account: account(input),
            symbol: symbol(input),
            side: if input.small() & 1 == 0 { Side::Buy } else { Side::Sell },
            kind: match input.small() % 4 {
                0 => OrderKind::GoodTillCancelled,
                1 => OrderKind::ImmediateOrCancel,
                2 => OrderKind::FillOrKill,
                _ => OrderKind::Market,
            },
            price: input.amount(),
            quantity: input.amount(),
        },
        4 => exchange::Command::Cancel { order_id: input.id(), account: account(input) },
        _ => exchange::Command::Amend {
            order_id: input.id(),
            account: account(input),
            price: input.amount(),
            quantity: input.amount(),
        },
    })
}

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets of `examples/fuzz/`, by name, with their entry points.
pub const TARGETS: [(&str, Target); 5] = [
    ("ledger_protocol", ledger_protocol),
    ("ledger_commands", ledger_commands),
    ("exchange_commands", exchange_commands),
    ("ledger_poison", ledger_poison),
    ("exchange_poison", exchange_poison),
];

/// The seed corpus of the target named `target` (one of [`TARGETS`]): valid inputs that
/// reach deep into it, for the fuzzer to mutate.
pub fn seeds(target: &str) -> Vec<(&'static str, Vec<u8>)> {
    match target {
        "ledger_protocol" => {
            let mut requests = Vec::new();
            for (request_id, (_, command)) in ledger_examples().into_iter().enumerate() {
                wire::encode_request(request_id as u64 + 1, &command, &mut requests);
            }
            let mut responses = Vec::new();
            let replies = [
                ledger::Event::AccountCreated { id: 1 },
                ledger::Event::Transferred { id: 10, amount: 5 },
                ledger::Event::TransferRejected {
                    id: 11,
                    reason: ledger::Reject::InsufficientFunds,
                },
                ledger::Event::Reserved { id: 12, amount: 7, expires_at_ns: 99 },
            ];
            for (sequence, event) in replies.iter().enumerate() {
                wire::encode_reply(sequence as u64 + 1, sequence as u64 + 1, event, &mut responses);
            }
            wire::encode_error(
                9,
                wire::ErrorCode::Malformed,
                "unknown request kind 7",
                &mut responses,
            );
            vec![("requests", requests), ("responses", responses)]
        }
        "ledger_commands" => encoded(ledger_examples()),
        "exchange_commands" => encoded(exchange_examples()),
        // Two accounts of code 1; a transfer between them; a pending transfer that a post
        // completes; one that expires after a clock jump; a retry of the first transfer.
        "ledger_poison" => vec![(
            "accounts-transfers-pending",
            vec![
                0, 0, 0, 0, 0, //  create 1, code 1
                0, 1, 0, 0, 0, //  create 2, code 1
                1, 0, 0, 1, 21, 0, 0, //  transfer 101: 1 → 2, 5, code 1
                2, 0, 1, 0, 21, 0, 5, 0, //  pending 201: 2 → 1, 5, timeout 1
                3, 0, 0, 1, 0, //  post 301 of 201, all
                2, 1, 0, 1, 9, 0, 21, 6, //  pending 202, timeout 5, then a second passes
                1, 0, 0, 1, 21, 0, 0, //  transfer 101 again
            ],
        )],
        // A symbol, two funded accounts, a resting sell, a buy that crosses it, an amend and a
        // cancel.
        "exchange_poison" => vec![(
            "symbol-orders-trade",
            vec![
                0, 1, 1, 2, 0, //  symbol 1: asset 1 against asset 2
                1, 1, 1, 201, 0, //  deposit account 1, asset 1, 50
                1, 2, 2, 201, 0, //  deposit account 2, asset 2, 50
                3, 0, 1, 1, 1, 0, 9, 21,
                0, //  order 1: account 1 sells 5 at 2, good till cancelled
                3, 1, 2, 1, 0, 0, 13, 9, 0, //  order 2: account 2 buys 2 at 3
                5, 0, 1, 13, 9, 0, //  amend order 1 to 2 at 3
                4, 0, 1, 0, //  cancel order 1
            ],
        )],
        other => panic!("no fuzz target {other}"),
    }
}

/// One seed per command: the choice byte of this build's version, then the command.
fn encoded<T: serde::Serialize>(commands: Vec<(&'static str, T)>) -> Vec<(&'static str, Vec<u8>)> {
    commands
        .into_iter()
        .map(|(name, command)| {
            let mut bytes = vec![0];
            Bincode.encode(&command, &mut bytes).expect("a command encodes");
            (name, bytes)
        })
        .collect()
}

fn ledger_examples() -> Vec<(&'static str, ledger::Command)> {
    vec![
        ("create-account", ledger::Command::CreateAccount { id: 7, code: 840, flags: 1 }),
        (
            "transfer",
            ledger::Command::Transfer { id: 1, debit: 7, credit: 8, amount: 100, code: 840 },
        ),
        (
            "pending",
            ledger::Command::Pending {
                id: 2,
                debit: 7,
                credit: 8,
                amount: u64::MAX,
                code: 840,
                timeout_ns: 1_000,
            },
        ),
        ("post", ledger::Command::Post { id: 3, pending_id: 2, amount: 0 }),
        ("void", ledger::Command::Void { id: 4, pending_id: 2 }),
    ]
}

fn exchange_examples() -> Vec<(&'static str, exchange::Command)> {
    vec![
        ("add-symbol", exchange::Command::AddSymbol { symbol: 1, base: 1, quote: 2 }),
        ("deposit", exchange::Command::Deposit { account: 1, asset: 2, amount: 1_000 }),
        ("withdraw", exchange::Command::Withdraw { account: 1, asset: 2, amount: 10 }),
        (
            "place",
            exchange::Command::Place {
                order_id: 1,
                account: 1,
                symbol: 1,
                side: Side::Buy,
                kind: OrderKind::GoodTillCancelled,
                price: 10,
                quantity: 5,
            },
        ),
        ("cancel", exchange::Command::Cancel { order_id: 1, account: 1 }),
        ("amend", exchange::Command::Amend { order_id: 1, account: 1, price: 11, quantity: 4 }),
    ]
}
