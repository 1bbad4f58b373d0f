//! The ledger's rules, one scenario at a time: every rejection reason, idempotency, two-phase
//! transfers and their expiry in engine time, conservation.

use keel_engine::{Context, Output, StateMachine};
use keel_examples::ledger::workload::{Mix, Workload};
use keel_examples::ledger::{flags, Command, Event, Ledger, Outcome, Reject, Status};

/// A ledger applied to directly, with a clock the test moves.
struct Harness {
    ledger: Ledger,
    sequence: u64,
    now: u64,
    output: Output<Event>,
}

const LIMITED: u16 = flags::DEBITS_MUST_NOT_EXCEED_CREDITS;

impl Harness {
    /// Accounts 1 (issuer, no limit) and 2, 3 (customers who cannot overdraw) in code 1,
    /// 4 (credits may not exceed debits) in code 1, 9 in code 2; account 2 holds 100.
    fn new() -> Self {
        let mut harness =
            Self { ledger: Ledger::new(), sequence: 0, now: 1_000, output: Output::new() };
        for (id, code, flags) in [(1, 1, 0), (2, 1, LIMITED), (3, 1, LIMITED), (9, 2, 0)] {
            harness.ok(Command::CreateAccount { id, code, flags });
        }
        harness.ok(Command::CreateAccount {
            id: 4,
            code: 1,
            flags: flags::CREDITS_MUST_NOT_EXCEED_DEBITS,
        });
        harness.ok(transfer(100, 1, 2, 100));
        harness
    }

    fn run(&mut self, command: Command) -> Vec<Event> {
        self.sequence += 1;
        self.output.clear();
        let context = Context { sequence: self.sequence, timestamp_ns: self.now };
        self.ledger.apply(&context, &command, &mut self.output);
        self.ledger.check_conservation().expect("conservation holds after every command");
        self.output.events().to_vec()
    }

    /// Runs a command that must not be rejected; returns its reply.
    fn ok(&mut self, command: Command) -> Event {
        let events = self.run(command);
        let reply = *events.last().expect("a reply");
        assert_eq!(reply.rejection(), None, "{command:?} was rejected: {events:?}");
        reply
    }

    fn rejected(&mut self, command: Command) -> Reject {
        let events = self.run(command);
        events.last().and_then(Event::rejection).unwrap_or_else(|| {
            panic!("{command:?} was not rejected: {events:?}");
        })
    }

    fn balance(&self, id: u64) -> i128 {
        self.ledger.account(id).expect("the account exists").balance()
    }
}

fn transfer(id: u64, debit: u64, credit: u64, amount: u64) -> Command {
    Command::Transfer { id, debit, credit, amount, code: 1 }
}

fn pending(id: u64, debit: u64, credit: u64, amount: u64, timeout_ns: u64) -> Command {
    Command::Pending { id, debit, credit, amount, code: 1, timeout_ns }
}

#[test]
fn every_rejection_reason_is_given_changes_nothing_and_reserves_the_id_only_when_it_should() {
    let account = |id, code, flags| Command::CreateAccount { id, code, flags };
    // (setup, the command, the reason).
    let cases: Vec<(Vec<Command>, Command, Reject)> = vec![
        (vec![], account(0, 1, 0), Reject::ZeroId),
        (vec![], transfer(0, 1, 2, 5), Reject::ZeroId),
        (vec![], account(7, 0, 0), Reject::ZeroCode),
        (
            vec![],
            Command::Transfer { id: 10, debit: 1, credit: 2, amount: 5, code: 0 },
            Reject::ZeroCode,
        ),
        (vec![], account(7, 1, 1 << 5), Reject::UnknownFlags),
        (vec![], account(7, 1, flags::KNOWN), Reject::ConflictingFlags),
        (vec![], account(2, 1, 0), Reject::AccountExistsWithDifferentFields),
        (vec![], account(2, 2, LIMITED), Reject::AccountExistsWithDifferentFields),
        (vec![], transfer(10, 2, 2, 5), Reject::SameAccount),
        (vec![], transfer(10, 1, 2, 0), Reject::ZeroAmount),
        (vec![], transfer(100, 1, 2, 99), Reject::ExistsWithDifferentFields),
        (vec![], transfer(10, 77, 2, 5), Reject::UnknownDebitAccount),
        (vec![], transfer(10, 1, 77, 5), Reject::UnknownCreditAccount),
        (vec![], transfer(10, 1, 9, 5), Reject::CodeMismatch),
        (
            vec![],
            Command::Transfer { id: 10, debit: 1, credit: 9, amount: 5, code: 2 },
            Reject::CodeMismatch,
        ),
        (vec![], transfer(10, 1, 2, u64::MAX), Reject::Overflow),
        (vec![], pending(10, 1, 2, 5, u64::MAX), Reject::Overflow),
        (vec![], transfer(10, 2, 3, 101), Reject::InsufficientFunds),
        (vec![pending(10, 2, 3, 60, 0)], transfer(11, 2, 3, 41), Reject::InsufficientFunds),
        (vec![], transfer(10, 1, 4, 1), Reject::CreditsExceedDebits),
        (vec![], Command::Post { id: 10, pending_id: 55, amount: 0 }, Reject::PendingNotFound),
        (
            vec![transfer(11, 2, 3, 500)],
            Command::Post { id: 10, pending_id: 11, amount: 0 },
            Reject::PendingNotFound,
        ),
        (vec![], Command::Void { id: 10, pending_id: 100 }, Reject::NotPending),
        (
            vec![pending(11, 2, 3, 5, 0), Command::Post { id: 12, pending_id: 11, amount: 0 }],
            Command::Post { id: 10, pending_id: 11, amount: 0 },
            Reject::PendingAlreadyPosted,
        ),
        (
            vec![pending(11, 2, 3, 5, 0), Command::Void { id: 12, pending_id: 11 }],
            Command::Void { id: 10, pending_id: 11 },
            Reject::PendingAlreadyVoided,
        ),
        (
            vec![pending(11, 2, 3, 5, 1)],
            Command::Post { id: 10, pending_id: 11, amount: 0 },
            Reject::PendingExpired,
        ),
        (
            vec![pending(11, 2, 3, 5, 0)],
            Command::Post { id: 10, pending_id: 11, amount: 6 },
            Reject::AmountExceedsPending,
        ),
    ];
    let mut reasons = std::collections::BTreeSet::new();
    for (setup, command, reason) in cases {
        let mut harness = Harness::new();
        for command in setup {
            harness.run(command);
            harness.now += 10;
        }
        let before = harness.ledger.state_hash();
        let taken = harness.ledger.transfer_count();
        assert_eq!(harness.rejected(command), reason, "{command:?}");
        reasons.insert(reason);
        let reserved = harness.ledger.transfer_count() - taken;
        let is_transfer = !matches!(command, Command::CreateAccount { .. });
        assert_eq!(reserved == 1, is_transfer && reason.reserves_id(), "{command:?}");
        if reserved == 0 {
            assert_eq!(harness.ledger.state_hash(), before, "{command:?} changed the state");
        }
        if reserved == 1 {
            // A retry gets the original answer, even after the state changed.
            harness.ok(transfer(200, 1, 2, 1_000));
            let retry = harness.run(command);
            assert_eq!(
                retry.last(),
                Some(&Event::TransferExists {
                    id: command.id(),
                    original: Outcome::Rejected(reason)
                })
            );
        }
    }
    let missing: Vec<_> = Reject::ALL.iter().filter(|reason| !reasons.contains(reason)).collect();
    assert!(missing.is_empty(), "no scenario for {missing:?}");
}

#[test]
fn a_retried_transfer_gets_the_original_outcome_and_moves_money_once() {
    let mut harness = Harness::new();
    assert_eq!(harness.ok(transfer(10, 2, 3, 30)), Event::Transferred { id: 10, amount: 30 });
    for _ in 0..3 {
        assert_eq!(
            harness.run(transfer(10, 2, 3, 30)),
            [Event::TransferExists { id: 10, original: Outcome::Accepted }]
        );
    }
    assert_eq!((harness.balance(2), harness.balance(3)), (70, 30));
    assert_eq!(harness.rejected(transfer(10, 2, 3, 31)), Reject::ExistsWithDifferentFields);
    // A command that was invalid in itself does not take its id: the corrected one may.
    assert_eq!(harness.rejected(transfer(11, 2, 3, 0)), Reject::ZeroAmount);
    assert_eq!(harness.ok(transfer(11, 2, 3, 5)), Event::Transferred { id: 11, amount: 5 });
    // Ids need not ascend: one below the highest is found, and taken, all the same.
    assert_eq!(harness.ok(transfer(7, 2, 3, 5)), Event::Transferred { id: 7, amount: 5 });
    assert_eq!(harness.run(transfer(7, 2, 3, 5)).len(), 1);
    assert_eq!((harness.balance(2), harness.balance(3)), (60, 40));
    // An identical account is answered as existing.
    assert_eq!(
        harness.run(Command::CreateAccount { id: 2, code: 1, flags: LIMITED }),
        [Event::AccountExists { id: 2 }]
    );
}

#[test]
fn a_pending_transfer_holds_its_amount_until_posted_voided_or_expired() {
    let mut harness = Harness::new();
    let held = |harness: &Harness| harness.ledger.account(2).unwrap().available();
    assert_eq!(
        harness.ok(pending(10, 2, 3, 40, 0)),
        Event::Reserved { id: 10, amount: 40, expires_at_ns: 0 }
    );
    assert_eq!(held(&harness), Some(60));
    assert_eq!(harness.balance(2), 100, "pending is not posted");
    assert_eq!(harness.rejected(transfer(11, 2, 3, 61)), Reject::InsufficientFunds);
    // A partial post: 25 posted, 15 released.
    assert_eq!(
        harness.ok(Command::Post { id: 12, pending_id: 10, amount: 25 }),
        Event::Posted { id: 12, pending_id: 10, amount: 25 }
    );
    assert_eq!((harness.balance(2), harness.balance(3), held(&harness)), (75, 25, Some(75)));
    assert_eq!(harness.ledger.transfer(10).unwrap().status, Status::Posted);

    // A void releases everything.
    harness.ok(pending(13, 2, 3, 50, 0));
    assert_eq!(
        harness.ok(Command::Void { id: 14, pending_id: 13 }),
        Event::Voided { id: 14, pending_id: 13, amount: 50 }
    );
    assert_eq!(held(&harness), Some(75));
    assert_eq!(harness.ledger.pending_count(), 0);
}

#[test]
fn pending_transfers_expire_in_engine_time_at_the_first_command_at_or_after_their_time() {
    let mut harness = Harness::new();
    harness.now = 10_000;
    assert_eq!(
        harness.ok(pending(10, 2, 3, 40, 500)),
        Event::Reserved { id: 10, amount: 40, expires_at_ns: 10_500 }
    );
    harness.ok(pending(11, 2, 3, 10, 200));
    harness.ok(pending(12, 2, 3, 10, 300));
    // Posted before its time: it must not expire later.
    harness.ok(Command::Post { id: 13, pending_id: 12, amount: 0 });
    harness.now = 10_499;
    let events = harness.run(transfer(14, 1, 3, 1));
    assert_eq!(
        events,
        [Event::Expired { pending_id: 11, amount: 10 }, Event::Transferred { id: 14, amount: 1 }],
        "expiries come first, only the due ones, and never a resolved one"
    );
    harness.now = 10_500;
    let events = harness.run(Command::Post { id: 15, pending_id: 10, amount: 0 });
    assert_eq!(
        events,
        [
            Event::Expired { pending_id: 10, amount: 40 },
            Event::TransferRejected { id: 15, reason: Reject::PendingExpired }
        ],
        "a transfer expires at its time exactly"
    );
    assert_eq!(harness.ledger.account(2).unwrap().available(), Some(90));
    assert_eq!(harness.ledger.pending_count(), 0);
}

#[test]
fn conservation_holds_over_the_payments_workload_and_snapshots_keep_the_state() {
    let mut workload = Workload::new(7, 1_000, 4, Mix::PAYMENTS, 1);
    let mut harness = Harness { ledger: Ledger::new(), sequence: 0, now: 1, output: Output::new() };
    let mut rejected = 0;
    for command in workload.setup() {
        harness.ok(command);
    }
    for _ in 0..200_000 {
        harness.now += 1_000;
        let events = harness.run(workload.next_command());
        rejected += events.iter().filter(|event| event.rejection().is_some()).count();
    }
    let totals = harness.ledger.check_conservation().expect("conserved");
    assert_eq!(totals.len(), 4);
    assert!(rejected > 1_000 && rejected < 20_000, "{rejected} rejections");
    let config = bincode::config::standard();
    let copy = harness.ledger.copy_for_snapshot(&mut None);
    let bytes = bincode::serde::encode_to_vec(&copy, config).expect("encodes");
    let (decoded, _): (Ledger, _) = bincode::serde::decode_from_slice(&bytes, config).expect("ok");
    assert_eq!(decoded.state_hash(), harness.ledger.state_hash());
    assert_eq!(decoded.account(1_500), harness.ledger.account(1_500));
}
