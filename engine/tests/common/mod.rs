//! A small bank, the state machine of the engine's tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use keel_engine::{Context, Output, StateMachine};
use keel_journal::JournalReader;
use serde::{Deserialize, Serialize};

/// Accounts with balances; rejections are events. `Poison` panics, for the fail-stop tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bank {
    pub accounts: BTreeMap<u32, i64>,
    /// The last command's sequence and timestamp, so that the state hash proves `apply` saw
    /// the same context live and on replay.
    pub last_sequence: u64,
    pub last_timestamp_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Open(u32),
    Deposit(u32, i64),
    Transfer {
        from: u32,
        to: u32,
        amount: i64,
    },
    /// Emits `n` events and changes nothing else.
    Echo(u32),
    Poison,
    /// Refuses to be encoded (its field's serialization fails), for the tests of a command the
    /// journal cannot take; applied (in the `Memory` tier, which encodes nothing), it changes
    /// nothing.
    Unencodable(#[serde(serialize_with = "refuse")] u32),
}

fn refuse<S: serde::Serializer>(_: &u32, _: S) -> Result<S::Ok, S::Error> {
    Err(serde::ser::Error::custom("this command refuses to be encoded"))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Opened(u32),
    Balance(u32, i64),
    Rejected(&'static str),
}

impl StateMachine for Bank {
    type Command = Command;
    type Event = Event;

    fn apply(&mut self, context: &Context, command: &Command, output: &mut Output<Event>) {
        assert!(context.sequence > self.last_sequence, "sequences go forward");
        assert!(context.timestamp_ns >= self.last_timestamp_ns, "timestamps never decrease");
        // The engine holds a batch's events in one output: `apply` must still see only its own.
        assert!(output.events().is_empty(), "each command begins with no events");
        self.last_sequence = context.sequence;
        self.last_timestamp_ns = context.timestamp_ns;
        match *command {
            Command::Open(id) => {
                if self.accounts.contains_key(&id) {
                    return output.emit(Event::Rejected("exists"));
                }
                self.accounts.insert(id, 0);
                output.emit(Event::Opened(id));
            }
            Command::Deposit(id, amount) => match self.accounts.get_mut(&id) {
                Some(balance) if amount > 0 => {
                    *balance += amount;
                    output.emit(Event::Balance(id, *balance));
                }
                Some(_) => output.emit(Event::Rejected("amount")),
                None => output.emit(Event::Rejected("unknown account")),
            },
            Command::Transfer { from, to, amount } => {
                let valid = from != to
                    && amount > 0
                    && self.accounts.contains_key(&to)
                    && self.accounts.get(&from).is_some_and(|balance| *balance >= amount);
                // A provisional event, taken back: `clear` forgets only this command's events.
                // Were it to forget the batch's earlier ones too, the event-stream tests would
                // see them missing live and present on replay.
                output.emit(Event::Rejected("provisional"));
                output.clear();
                if !valid {
                    return output.emit(Event::Rejected("transfer"));
                }
                *self.accounts.get_mut(&from).expect("checked") -= amount;
                *self.accounts.get_mut(&to).expect("checked") += amount;
                output.emit(Event::Balance(from, self.accounts[&from]));
                output.emit(Event::Balance(to, self.accounts[&to]));
            }
            Command::Echo(count) => (0..count).for_each(|index| output.emit(Event::Opened(index))),
            Command::Poison => {
                // Emitted before the panic: a halted command's events are never delivered.
                output.emit(Event::Rejected("poisoned"));
                panic!("poison at sequence {}", context.sequence)
            }
            Command::Unencodable(_) => {}
        }
    }

    fn state_hash(&self) -> u64 {
        // FNV-1a over the accounts in key order and the last context: deterministic.
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let mut mix = |value: u64| {
            for byte in value.to_le_bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for (id, balance) in &self.accounts {
            mix(u64::from(*id));
            mix(*balance as u64);
        }
        mix(self.last_sequence);
        mix(self.last_timestamp_ns);
        hash
    }
}

/// A deterministic mix of commands over `accounts` accounts, most of them valid.
pub fn commands(count: usize, accounts: u32, seed: u64) -> Vec<Command> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut commands: Vec<Command> = (0..accounts).map(Command::Open).collect();
    while commands.len() < count {
        let account = (next() % u64::from(accounts + 1)) as u32;
        let other = (next() % u64::from(accounts)) as u32;
        let amount = (next() % 1_000) as i64;
        commands.push(match next() % 3 {
            0 => Command::Deposit(account, amount),
            _ => Command::Transfer { from: account, to: other, amount },
        });
    }
    commands.truncate(count);
    commands
}

/// A journal record as the tests compare them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub sequence: u64,
    pub timestamp_ns: u64,
    pub kind: u16,
    pub version: u16,
    pub payload: Vec<u8>,
}

/// The bytes of each batch of the journal in `directory`, every one whole.
pub fn batches(directory: &Path) -> Vec<Vec<u8>> {
    let mut reader = JournalReader::open(directory).unwrap();
    let mut batches = Vec::new();
    while let Some(batch) = reader.next_batch().unwrap() {
        assert!(batch.is_whole());
        batches.push(batch.as_bytes().to_vec());
    }
    batches
}

/// Every record of the journal in `directory`.
pub fn records(directory: &Path) -> Vec<Record> {
    let mut reader = JournalReader::open(directory).unwrap();
    let mut records = Vec::new();
    while let Some(record) = reader.next().unwrap() {
        records.push(Record {
            sequence: record.sequence,
            timestamp_ns: record.timestamp_ns,
            kind: record.kind,
            version: record.version,
            payload: record.payload.to_vec(),
        });
    }
    records
}

/// The bank, with a non-determinism that a test switches on in one copy: at the command of
/// sequence `skew_at` it counts one more in `skew`, which the state hash covers. `skew_at` is
/// not part of the state (nor of snapshots), like a clock read inside `apply`: the copy given
/// `skew_at` diverges from the others there.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Skewed {
    pub bank: Bank,
    pub skew: u64,
    #[serde(skip)]
    pub skew_at: u64,
}

impl Skewed {
    /// A state that diverges at `sequence`.
    pub fn at(sequence: u64) -> Self {
        Self { skew_at: sequence, ..Self::default() }
    }
}

impl StateMachine for Skewed {
    type Command = Command;
    type Event = Event;

    fn apply(&mut self, context: &Context, command: &Command, output: &mut Output<Event>) {
        if context.sequence == self.skew_at {
            self.skew += 1;
        }
        self.bank.apply(context, command, output);
    }

    fn state_hash(&self) -> u64 {
        self.bank.state_hash() ^ self.skew.rotate_left(29)
    }
}

/// The bank, with a record of the engine's [`StateMachine::prefetch_index`] and
/// [`StateMachine::prefetch`] calls: whether each command was handed to `prefetch_index`, then
/// to `prefetch`, then to `apply`, and how far ahead. The record is shared with every copy and
/// is not part of the state (nor of its hash, nor of snapshots).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Hinted {
    pub bank: Bank,
    #[serde(skip)]
    pub hints: std::sync::Arc<std::sync::Mutex<Hints>>,
}

/// What [`Hinted`] saw.
#[derive(Debug, Default)]
pub struct Hints {
    /// Commands handed to `prefetch_index` and not to `prefetch` yet, in that order.
    indexed: std::collections::VecDeque<Command>,
    /// Commands handed to `prefetch` without `prefetch_index` before.
    pub not_indexed: u64,
    /// Commands hinted and not applied yet, in the order they were hinted.
    waiting: std::collections::VecDeque<Command>,
    /// Commands applied after their hint.
    pub hinted_first: u64,
    /// Commands applied without a hint waiting for them.
    pub not_hinted: u64,
    /// The most commands hinted and not applied, the one being applied included.
    pub farthest: usize,
    /// The most commands handed to `prefetch_index` and not applied, the one being applied
    /// included.
    pub farthest_indexed: usize,
}

impl PartialEq for Hinted {
    fn eq(&self, other: &Self) -> bool {
        self.bank == other.bank
    }
}

impl StateMachine for Hinted {
    type Command = Command;
    type Event = Event;

    const PREFETCH_AHEAD: usize = 5;

    fn prefetch_index(&self, command: &Command) {
        self.hints.lock().unwrap().indexed.push_back(command.clone());
    }

    fn prefetch(&self, command: &Command) {
        let mut hints = self.hints.lock().unwrap();
        if hints.indexed.front() == Some(command) {
            hints.indexed.pop_front();
        } else {
            hints.indexed.clear();
            hints.not_indexed += 1;
        }
        hints.waiting.push_back(command.clone());
    }

    fn apply(&mut self, context: &Context, command: &Command, output: &mut Output<Event>) {
        {
            let mut hints = self.hints.lock().unwrap();
            hints.farthest = hints.farthest.max(hints.waiting.len());
            hints.farthest_indexed =
                hints.farthest_indexed.max(hints.waiting.len() + hints.indexed.len());
            if hints.waiting.front() == Some(command) {
                hints.waiting.pop_front();
                hints.hinted_first += 1;
            } else {
                hints.waiting.clear();
                hints.not_hinted += 1;
            }
        }
        self.bank.apply(context, command, output);
    }

    fn state_hash(&self) -> u64 {
        self.bank.state_hash()
    }
}
