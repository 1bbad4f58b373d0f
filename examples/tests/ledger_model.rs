//! The ledger against a reference model written the dumb way (`BTreeMap`s, scans, every rule
//! spelled out again from its documentation), on random command sequences: identical events,
//! event for event, and identical accounts and transfer records after every command.
//!
//! The sequences are built to hit every rule: eight account ids (0 among them), codes
//! 0 to 2, every flag combination, transfer ids from a small range (so that ids collide,
//! arrive out of order and are retried), zero and near-overflow amounts, timeouts that expire
//! between commands and ones that overflow. Each case's seed is printed on failure;
//! `KEEL_SEED=N` runs that case alone, and `KEEL_CASES=N` runs more.

use std::collections::{BTreeMap, BTreeSet};

use keel_engine::{Context, Output, StateMachine};
use keel_examples::ledger::workload::{Mix, Workload};
use keel_examples::ledger::{flags, Account, Command, Event, Ledger, Outcome, Reject};
use keel_examples::rng::SplitMix64;

mod kept_hash;

/// What the model remembers of a transfer id.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    Done,
    Pending { expires_at: u64 },
    Posted,
    Voided,
    Expired,
    Rejected(Reject),
}

#[derive(Default)]
struct Model {
    accounts: BTreeMap<u64, Account>,
    transfers: BTreeMap<u64, (Command, Fate)>,
}

impl Model {
    fn apply(&mut self, now: u64, command: Command) -> Vec<Event> {
        let mut events = Vec::new();
        // Expiries first: every pending transfer whose time has come, by (time, id).
        let mut due: Vec<(u64, u64)> = self
            .transfers
            .iter()
            .filter_map(|(&id, &(_, fate))| match fate {
                Fate::Pending { expires_at } if expires_at != 0 && expires_at <= now => {
                    Some((expires_at, id))
                }
                _ => None,
            })
            .collect();
        due.sort();
        for (_, id) in due {
            let (request, _) = self.transfers[&id];
            let Command::Pending { debit, credit, amount, .. } = request else { unreachable!() };
            self.accounts.get_mut(&debit).unwrap().debits_pending -= amount;
            self.accounts.get_mut(&credit).unwrap().credits_pending -= amount;
            self.transfers.get_mut(&id).unwrap().1 = Fate::Expired;
            events.push(Event::Expired { pending_id: id, amount });
        }
        events.push(self.reply(now, command));
        events
    }

    fn reply(&mut self, now: u64, command: Command) -> Event {
        match command {
            Command::CreateAccount { id, code, flags } => {
                let reject = |reason| Event::AccountRejected { id, reason };
                if id == 0 {
                    reject(Reject::ZeroId)
                } else if code == 0 {
                    reject(Reject::ZeroCode)
                } else if flags > 3 {
                    reject(Reject::UnknownFlags)
                } else if flags == 3 {
                    reject(Reject::ConflictingFlags)
                } else if let Some(existing) = self.accounts.get(&id) {
                    if existing.code == code && existing.flags == flags {
                        Event::AccountExists { id }
                    } else {
                        reject(Reject::AccountExistsWithDifferentFields)
                    }
                } else {
                    self.accounts.insert(id, Account::new(id, code, flags));
                    Event::AccountCreated { id }
                }
            }
            Command::Transfer { id, debit, credit, amount, code }
            | Command::Pending { id, debit, credit, amount, code, .. } => {
                let reject = |reason| Event::TransferRejected { id, reason };
                if id == 0 {
                    return reject(Reject::ZeroId);
                }
                if code == 0 {
                    return reject(Reject::ZeroCode);
                }
                if debit == credit {
                    return reject(Reject::SameAccount);
                }
                if amount == 0 {
                    return reject(Reject::ZeroAmount);
                }
                if let Some(answer) = self.retry(id, command) {
                    return answer;
                }
                let fate = self.decide(now, command);
                self.transfers.insert(id, (command, fate));
                match (fate, command) {
                    (Fate::Rejected(reason), _) => reject(reason),
                    (Fate::Pending { expires_at }, _) => {
                        Event::Reserved { id, amount, expires_at_ns: expires_at }
                    }
                    _ => Event::Transferred { id, amount },
                }
            }
            Command::Post { id, pending_id, .. } | Command::Void { id, pending_id } => {
                if id == 0 {
                    return Event::TransferRejected { id, reason: Reject::ZeroId };
                }
                if let Some(answer) = self.retry(id, command) {
                    return answer;
                }
                let (fate, event) = match self.resolve(command, pending_id) {
                    Ok(event) => (Fate::Done, event),
                    Err(reason) => (Fate::Rejected(reason), Event::TransferRejected { id, reason }),
                };
                self.transfers.insert(id, (command, fate));
                event
            }
        }
    }

    fn retry(&self, id: u64, command: Command) -> Option<Event> {
        let &(original, fate) = self.transfers.get(&id)?;
        Some(if original == command {
            let original = match fate {
                Fate::Rejected(reason) => Outcome::Rejected(reason),
                _ => Outcome::Accepted,
            };
            Event::TransferExists { id, original }
        } else {
            Event::TransferRejected { id, reason: Reject::ExistsWithDifferentFields }
        })
    }

    fn decide(&mut self, now: u64, command: Command) -> Fate {
        let (debit, credit, amount, code, timeout) = match command {
            Command::Transfer { debit, credit, amount, code, .. } => {
                (debit, credit, amount, code, None)
            }
            Command::Pending { debit, credit, amount, code, timeout_ns, .. } => {
                (debit, credit, amount, code, Some(timeout_ns))
            }
            _ => unreachable!(),
        };
        let Some(&d) = self.accounts.get(&debit) else {
            return Fate::Rejected(Reject::UnknownDebitAccount);
        };
        let Some(&c) = self.accounts.get(&credit) else {
            return Fate::Rejected(Reject::UnknownCreditAccount);
        };
        if d.code != code || c.code != code {
            return Fate::Rejected(Reject::CodeMismatch);
        }
        let debits = u128::from(d.debits_pending) + u128::from(d.debits_posted) + amount as u128;
        let credits = u128::from(c.credits_pending) + u128::from(c.credits_posted) + amount as u128;
        if debits > u128::from(u64::MAX) || credits > u128::from(u64::MAX) {
            return Fate::Rejected(Reject::Overflow);
        }
        let expires_at = match timeout {
            Some(timeout) if timeout > 0 => {
                if u128::from(now) + u128::from(timeout) > u128::from(u64::MAX) {
                    return Fate::Rejected(Reject::Overflow);
                }
                now + timeout
            }
            _ => 0,
        };
        if d.flags == flags::DEBITS_MUST_NOT_EXCEED_CREDITS && debits > u128::from(d.credits_posted)
        {
            return Fate::Rejected(Reject::InsufficientFunds);
        }
        if c.flags == flags::CREDITS_MUST_NOT_EXCEED_DEBITS && credits > u128::from(c.debits_posted)
        {
            return Fate::Rejected(Reject::CreditsExceedDebits);
        }
        if timeout.is_some() {
            self.accounts.get_mut(&debit).unwrap().debits_pending += amount;
            self.accounts.get_mut(&credit).unwrap().credits_pending += amount;
            Fate::Pending { expires_at }
        } else {
            self.accounts.get_mut(&debit).unwrap().debits_posted += amount;
            self.accounts.get_mut(&credit).unwrap().credits_posted += amount;
            Fate::Done
        }
    }

    fn resolve(&mut self, command: Command, pending_id: u64) -> Result<Event, Reject> {
        let Some(&(pending, fate)) = self.transfers.get(&pending_id) else {
            return Err(Reject::PendingNotFound);
        };
        let Command::Pending { debit, credit, amount: held, .. } = pending else {
            return Err(match fate {
                Fate::Rejected(_) => Reject::PendingNotFound,
                _ => Reject::NotPending,
            });
        };
        match fate {
            Fate::Pending { .. } => {}
            Fate::Posted => return Err(Reject::PendingAlreadyPosted),
            Fate::Voided => return Err(Reject::PendingAlreadyVoided),
            Fate::Expired => return Err(Reject::PendingExpired),
            Fate::Rejected(_) => return Err(Reject::PendingNotFound),
            Fate::Done => unreachable!("a pending transfer is never plainly done"),
        }
        let (posted, event, fate) = match command {
            Command::Post { id, amount, .. } => {
                let posted = if amount == 0 { held } else { amount };
                if posted > held {
                    return Err(Reject::AmountExceedsPending);
                }
                (posted, Event::Posted { id, pending_id, amount: posted }, Fate::Posted)
            }
            Command::Void { id, .. } => {
                (0, Event::Voided { id, pending_id, amount: held }, Fate::Voided)
            }
            _ => unreachable!(),
        };
        let d = self.accounts.get_mut(&debit).unwrap();
        d.debits_pending -= held;
        d.debits_posted += posted;
        let c = self.accounts.get_mut(&credit).unwrap();
        c.credits_pending -= held;
        c.credits_posted += posted;
        self.transfers.get_mut(&pending_id).unwrap().1 = fate;
        Ok(event)
    }
}

/// A random command over a small world.
fn random_command(rng: &mut SplitMix64, history: &[Command]) -> Command {
    let account = |rng: &mut SplitMix64| rng.below(8);
    let code = |rng: &mut SplitMix64| match rng.below(20) {
        0 => 0,
        1..=14 => 1,
        _ => 2,
    };
    let transfer_id = |rng: &mut SplitMix64| rng.below(300);
    // Posts and voids mostly name a pending transfer asked for earlier.
    let pending_id = |rng: &mut SplitMix64| {
        let earlier: Vec<u64> = history
            .iter()
            .rev()
            .take(50)
            .filter_map(|command| match command {
                Command::Pending { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        if earlier.is_empty() || rng.chance(300) {
            transfer_id(rng)
        } else {
            earlier[rng.below(earlier.len() as u64) as usize]
        }
    };
    let amount = |rng: &mut SplitMix64| match rng.below(20) {
        0 => 0,
        1 => u64::MAX - rng.below(1000),
        2 => 1 << 62,
        _ => 1 + rng.below(100),
    };
    match rng.below(100) {
        0..=9 => Command::CreateAccount {
            id: account(rng),
            code: code(rng),
            flags: [0, 0, 1, 1, 2, 3, 4][rng.below(7) as usize],
        },
        10..=49 => Command::Transfer {
            id: transfer_id(rng),
            debit: account(rng),
            credit: account(rng),
            amount: amount(rng),
            code: code(rng),
        },
        50..=69 => Command::Pending {
            id: transfer_id(rng),
            debit: account(rng),
            credit: account(rng),
            amount: amount(rng),
            code: code(rng),
            timeout_ns: match rng.below(4) {
                0 => 0,
                1 => u64::MAX - rng.below(10),
                _ => 1 + rng.below(60),
            },
        },
        70..=79 => Command::Post {
            id: transfer_id(rng),
            pending_id: pending_id(rng),
            amount: if rng.chance(400) { 0 } else { amount(rng) },
        },
        80..=87 => Command::Void { id: transfer_id(rng), pending_id: pending_id(rng) },
        _ if !history.is_empty() => history[rng.below(history.len() as u64) as usize],
        _ => Command::CreateAccount { id: 1, code: 1, flags: 0 },
    }
}

/// Runs `commands` through the ledger and the model side by side, checking everything after
/// each; every so often the ledger is replaced by its snapshot's decoding. Returns the
/// rejections seen.
fn check_case(seed: u64, commands: impl IntoIterator<Item = (u64, Command)>) -> BTreeSet<Reject> {
    let mut reasons = BTreeSet::new();
    let mut ledger = Ledger::new();
    let mut model = Model::default();
    let mut output = Output::new();
    let mut rng = SplitMix64::new(seed ^ 0xdead_beef);
    for (sequence, (now, command)) in (1..).zip(commands) {
        output.clear();
        ledger.apply(&Context { sequence, timestamp_ns: now }, &command, &mut output);
        let expected = model.apply(now, command);
        assert_eq!(
            output.events(),
            &expected[..],
            "seed {seed}: the events of command {sequence} ({command:?}) differ"
        );
        reasons.extend(expected.iter().filter_map(Event::rejection));
        let mut accounts: Vec<Account> = ledger.accounts().to_vec();
        accounts.sort_by_key(|account| account.id);
        assert!(
            accounts.iter().eq(model.accounts.values()),
            "seed {seed}: the accounts differ after command {sequence} ({command:?})"
        );
        assert_eq!(ledger.transfer_count(), model.transfers.len() as u64, "seed {seed}");
        ledger.check_conservation().unwrap_or_else(|error| panic!("seed {seed}: {error}"));
        kept_hash::check_kept_hash(&mut ledger, &mut rng, || {
            format!("seed {seed}, after command {sequence} ({command:?})")
        });
    }
    for (&id, &(_, fate)) in &model.transfers {
        let record = ledger.transfer(id).unwrap_or_else(|| panic!("seed {seed}: transfer {id}"));
        let status = match fate {
            Fate::Done => keel_examples::ledger::Status::Done,
            Fate::Pending { .. } => keel_examples::ledger::Status::Pending,
            Fate::Posted => keel_examples::ledger::Status::Posted,
            Fate::Voided => keel_examples::ledger::Status::Voided,
            Fate::Expired => keel_examples::ledger::Status::Expired,
            Fate::Rejected(reason) => keel_examples::ledger::Status::Rejected(reason),
        };
        assert_eq!(record.status, status, "seed {seed}: the status of transfer {id}");
    }
    reasons
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("KEEL_SEED") {
        return vec![seed.parse().expect("KEEL_SEED is a number")];
    }
    let cases: u64 = std::env::var("KEEL_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(200);
    let base = keel_examples::rng::seed_from_environment();
    println!("seeds {base} + 0..{cases} (KEEL_SEED=N repeats one)");
    (0..cases).map(|case| base.wrapping_add(case)).collect()
}

#[test]
fn the_ledger_matches_the_reference_model_on_random_commands() {
    let mut reasons_seen = BTreeSet::new();
    for seed in seeds() {
        let mut rng = SplitMix64::new(seed);
        let mut history = Vec::new();
        let mut now = 1_000;
        let mut commands = Vec::new();
        for _ in 0..1_500 {
            let command = random_command(&mut rng, &history);
            history.push(command);
            now += rng.below(8);
            commands.push((now, command));
        }
        reasons_seen.extend(check_case(seed, commands));
    }
    if std::env::var("KEEL_SEED").is_err() {
        let missing: Vec<_> =
            Reject::ALL.iter().filter(|reason| !reasons_seen.contains(reason)).collect();
        assert!(missing.is_empty(), "the random cases never produced {missing:?}");
    }
}

#[test]
fn the_ledger_matches_the_reference_model_on_the_payments_workload() {
    for seed in seeds().into_iter().take(5) {
        let mut workload = Workload::new(seed, 200, 3, Mix::PAYMENTS, 1);
        let setup = workload.setup();
        let mut now = 1_000_000_000;
        let mut rng = SplitMix64::new(seed);
        let traffic: Vec<(u64, Command)> = setup
            .into_iter()
            .chain(std::iter::repeat_with(|| workload.next_command()).take(20_000))
            .map(|command| {
                // About 20 µs between commands: the workload's 1–100 ms timeouts expire.
                now += rng.below(40_000);
                (now, command)
            })
            .collect();
        check_case(seed, traffic);
    }
}
