//! A double-entry ledger: accounts in a currency (their `code`), transfers that debit one
//! account and credit another by the same integer amount, idempotent by transfer id, and
//! two-phase transfers (pending, then post or void, or expiry after a timeout in engine time).
//! The model is TigerBeetle's, held in memory behind keel's engine.
//!
//! Every outcome is an [`Event`]; a rejected command changes nothing but, when the rejection
//! depended on the state, reserves its transfer id with the rejection, so that a retry gets
//! the original answer (see [`Reject::reserves_id`]).
//!
//! The invariant: within each code, the debits of all accounts equal their credits, posted
//! and pending alike; so the balances (credits minus debits) of each code sum to zero.
//! [`Ledger::check_conservation`] checks it.

pub mod client;
mod expiries;
pub mod server;
mod transfers;
pub mod wire;
pub mod workload;

use std::collections::BTreeMap;

use keel_engine::{Context, Output, StateMachine};
use serde::{Deserialize, Serialize};

use crate::hash::{hash_words, Digest, IdIndex, MarkedVec};
use expiries::Expiries;
use transfers::Transfers;
pub use transfers::{Kind, Status, TransferRecord};

/// Account flags.
pub mod flags {
    /// The account's debits (pending and posted) may never exceed its posted credits: a
    /// customer account that cannot go overdrawn.
    pub const DEBITS_MUST_NOT_EXCEED_CREDITS: u16 = 1 << 0;
    /// The account's credits (pending and posted) may never exceed its posted debits.
    pub const CREDITS_MUST_NOT_EXCEED_DEBITS: u16 = 1 << 1;
    /// Every flag this version knows.
    pub const KNOWN: u16 = DEBITS_MUST_NOT_EXCEED_CREDITS | CREDITS_MUST_NOT_EXCEED_DEBITS;
}

/// An input of the ledger, journaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Command {
    /// Opens an account. Ids are chosen by the client; 0 is reserved.
    CreateAccount {
        /// The account's id.
        id: u64,
        /// The currency or ledger the account keeps (not 0); transfers move money only
        /// between accounts of one code.
        code: u32,
        /// [`flags`].
        flags: u16,
    },
    /// Moves `amount` from `debit` to `credit` at once.
    Transfer {
        /// The transfer's id, chosen by the client (not 0): the idempotency key.
        id: u64,
        /// The account debited.
        debit: u64,
        /// The account credited.
        credit: u64,
        /// The amount, in the code's smallest unit (not 0).
        amount: u64,
        /// The code of both accounts.
        code: u32,
    },
    /// Reserves `amount`: it counts against both accounts' limits as pending until a
    /// [`Post`](Command::Post), a [`Void`](Command::Void), or the timeout.
    Pending {
        /// The transfer's id (not 0).
        id: u64,
        /// The account debited.
        debit: u64,
        /// The account credited.
        credit: u64,
        /// The amount reserved (not 0).
        amount: u64,
        /// The code of both accounts.
        code: u32,
        /// Nanoseconds of engine time after which the reservation expires by itself; 0 never.
        timeout_ns: u64,
    },
    /// Completes a pending transfer: `amount` of it is posted (0: all of it), the rest
    /// released.
    Post {
        /// This command's own transfer id (not 0).
        id: u64,
        /// The pending transfer.
        pending_id: u64,
        /// The amount to post, at most the pending amount; 0 posts all of it.
        amount: u64,
    },
    /// Cancels a pending transfer: its whole amount is released.
    Void {
        /// This command's own transfer id (not 0).
        id: u64,
        /// The pending transfer.
        pending_id: u64,
    },
}

impl Command {
    /// The id the command is about: the account's, or the transfer's own.
    pub fn id(&self) -> u64 {
        match *self {
            Self::CreateAccount { id, .. }
            | Self::Transfer { id, .. }
            | Self::Pending { id, .. }
            | Self::Post { id, .. }
            | Self::Void { id, .. } => id,
        }
    }
}

/// Why a command was rejected. The variants' order is the order in which they are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum Reject {
    /// The id is 0, which is reserved.
    ZeroId,
    /// The code is 0, which is reserved.
    ZeroCode,
    /// An account flag this version does not know.
    UnknownFlags,
    /// An account cannot limit both its debits and its credits.
    ConflictingFlags,
    /// An account with this id exists, with another code or flags.
    AccountExistsWithDifferentFields,
    /// The debit and credit accounts are the same.
    SameAccount,
    /// The amount is 0.
    ZeroAmount,
    /// A transfer with this id exists, with other fields.
    ExistsWithDifferentFields,
    /// No account has the debit account's id.
    UnknownDebitAccount,
    /// No account has the credit account's id.
    UnknownCreditAccount,
    /// An account's code differs from the transfer's.
    CodeMismatch,
    /// A total would not fit in 64 bits (or the expiry time would not).
    Overflow,
    /// The debit account may not have more debits than credits, and would.
    InsufficientFunds,
    /// The credit account may not have more credits than debits, and would.
    CreditsExceedDebits,
    /// No pending transfer with that id was accepted.
    PendingNotFound,
    /// The transfer named is not a pending one.
    NotPending,
    /// The pending transfer was already posted.
    PendingAlreadyPosted,
    /// The pending transfer was already voided.
    PendingAlreadyVoided,
    /// The pending transfer expired.
    PendingExpired,
    /// The amount to post exceeds the pending amount.
    AmountExceedsPending,
}

impl Reject {
    /// Every reason, in checking order.
    pub const ALL: [Reject; 20] = [
        Self::ZeroId,
        Self::ZeroCode,
        Self::UnknownFlags,
        Self::ConflictingFlags,
        Self::AccountExistsWithDifferentFields,
        Self::SameAccount,
        Self::ZeroAmount,
        Self::ExistsWithDifferentFields,
        Self::UnknownDebitAccount,
        Self::UnknownCreditAccount,
        Self::CodeMismatch,
        Self::Overflow,
        Self::InsufficientFunds,
        Self::CreditsExceedDebits,
        Self::PendingNotFound,
        Self::NotPending,
        Self::PendingAlreadyPosted,
        Self::PendingAlreadyVoided,
        Self::PendingExpired,
        Self::AmountExceedsPending,
    ];

    /// Whether a transfer rejected for this reason keeps its id, so that a retry gets this
    /// rejection again instead of being evaluated anew. Rejections that looked only at the
    /// command itself (a zero field, the same account twice) do not: the command was invalid,
    /// not refused, and a corrected one may use the id. Rejections that depended on the
    /// state (funds, accounts, the pending transfer) do: otherwise a retry could succeed
    /// later, after the client was told it failed. An attempt on a taken id does not take it
    /// again. This is TigerBeetle's rule.
    pub fn reserves_id(self) -> bool {
        !matches!(
            self,
            Self::ZeroId
                | Self::ZeroCode
                | Self::SameAccount
                | Self::ZeroAmount
                | Self::ExistsWithDifferentFields
        )
    }

    /// The reason as a short snake_case name, for output and the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::ZeroId => "zero_id",
            Self::ZeroCode => "zero_code",
            Self::UnknownFlags => "unknown_flags",
            Self::ConflictingFlags => "conflicting_flags",
            Self::AccountExistsWithDifferentFields => "account_exists_with_different_fields",
            Self::SameAccount => "same_account",
            Self::ZeroAmount => "zero_amount",
            Self::ExistsWithDifferentFields => "exists_with_different_fields",
            Self::UnknownDebitAccount => "unknown_debit_account",
            Self::UnknownCreditAccount => "unknown_credit_account",
            Self::CodeMismatch => "code_mismatch",
            Self::Overflow => "overflow",
            Self::InsufficientFunds => "insufficient_funds",
            Self::CreditsExceedDebits => "credits_exceed_debits",
            Self::PendingNotFound => "pending_not_found",
            Self::NotPending => "not_pending",
            Self::PendingAlreadyPosted => "pending_already_posted",
            Self::PendingAlreadyVoided => "pending_already_voided",
            Self::PendingExpired => "pending_expired",
            Self::AmountExceedsPending => "amount_exceeds_pending",
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

/// What a transfer command originally came to, as a retry is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// It was accepted (and may since have been posted, voided or expired, if pending).
    Accepted,
    /// It was rejected.
    Rejected(Reject),
}

/// An output of the ledger. Every command has exactly one reply event, after any expiries
/// that its timestamp triggered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Event {
    /// The account was opened.
    AccountCreated {
        /// Its id.
        id: u64,
    },
    /// An account with this id and these fields exists already: nothing changed.
    AccountExists {
        /// Its id.
        id: u64,
    },
    /// The account was not opened.
    AccountRejected {
        /// The id asked for.
        id: u64,
        /// Why.
        reason: Reject,
    },
    /// A transfer moved `amount`.
    Transferred {
        /// The transfer's id.
        id: u64,
        /// The amount.
        amount: u64,
    },
    /// A pending transfer reserved `amount`.
    Reserved {
        /// The transfer's id.
        id: u64,
        /// The amount reserved.
        amount: u64,
        /// When it expires (engine time, nanoseconds since the Unix epoch); 0 never.
        expires_at_ns: u64,
    },
    /// A pending transfer was posted.
    Posted {
        /// The post's own id.
        id: u64,
        /// The pending transfer.
        pending_id: u64,
        /// The amount posted; the rest of the pending amount was released.
        amount: u64,
    },
    /// A pending transfer was voided.
    Voided {
        /// The void's own id.
        id: u64,
        /// The pending transfer.
        pending_id: u64,
        /// The amount released.
        amount: u64,
    },
    /// A pending transfer's timeout passed: its amount was released. Not a reply: emitted
    /// by the first command whose timestamp is at or after the expiry time.
    Expired {
        /// The pending transfer.
        pending_id: u64,
        /// The amount released.
        amount: u64,
    },
    /// A retry of a transfer already decided, with the same fields: nothing changed.
    TransferExists {
        /// The transfer's id.
        id: u64,
        /// What the original came to.
        original: Outcome,
    },
    /// The transfer was not made.
    TransferRejected {
        /// The transfer's id.
        id: u64,
        /// Why.
        reason: Reject,
    },
}

impl Event {
    /// The id of the command this event answers, or `None` for an [`Expired`](Event::Expired),
    /// which answers nobody.
    pub fn reply_to(&self) -> Option<u64> {
        match *self {
            Self::AccountCreated { id }
            | Self::AccountExists { id }
            | Self::AccountRejected { id, .. }
            | Self::Transferred { id, .. }
            | Self::Reserved { id, .. }
            | Self::Posted { id, .. }
            | Self::Voided { id, .. }
            | Self::TransferExists { id, .. }
            | Self::TransferRejected { id, .. } => Some(id),
            Self::Expired { .. } => None,
        }
    }

    /// The rejection, if this event is one.
    pub fn rejection(&self) -> Option<Reject> {
        match *self {
            Self::AccountRejected { reason, .. } | Self::TransferRejected { reason, .. } => {
                Some(reason)
            }
            _ => None,
        }
    }
}

/// An account and its four totals. The balance is credits minus debits (posted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Account {
    /// Its id.
    pub id: u64,
    /// Reserved by pending transfers debiting it.
    pub debits_pending: u64,
    /// Debited by posted transfers.
    pub debits_posted: u64,
    /// Reserved by pending transfers crediting it.
    pub credits_pending: u64,
    /// Credited by posted transfers.
    pub credits_posted: u64,
    /// Its code.
    pub code: u32,
    /// Its [`flags`].
    pub flags: u16,
}

impl Account {
    /// A new account with zero totals.
    pub fn new(id: u64, code: u32, flags: u16) -> Self {
        Self {
            id,
            debits_pending: 0,
            debits_posted: 0,
            credits_pending: 0,
            credits_posted: 0,
            code,
            flags,
        }
    }

    /// Posted credits minus posted debits.
    pub fn balance(&self) -> i128 {
        i128::from(self.credits_posted) - i128::from(self.debits_posted)
    }

    /// What may still be debited under `DEBITS_MUST_NOT_EXCEED_CREDITS` (posted credits minus
    /// all debits, pending included), or `None` when the account has no such limit.
    pub fn available(&self) -> Option<i128> {
        (self.flags & flags::DEBITS_MUST_NOT_EXCEED_CREDITS != 0).then(|| {
            i128::from(self.credits_posted)
                - i128::from(self.debits_posted)
                - i128::from(self.debits_pending)
        })
    }
}

/// Per-code sums over all accounts, for the conservation invariant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Accounts of the code.
    pub accounts: u64,
    /// Sum of pending debits.
    pub debits_pending: u128,
    /// Sum of posted debits.
    pub debits_posted: u128,
    /// Sum of pending credits.
    pub credits_pending: u128,
    /// Sum of posted credits.
    pub credits_posted: u128,
}

/// What the ledger's state occupies in memory, by the capacity of its structures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// The accounts and their id index.
    pub accounts_bytes: u64,
    /// The transfers (history, id index, expiry schedule).
    pub transfers_bytes: u64,
}

/// Accounts from which [`Ledger::prefetch`](StateMachine::prefetch) asks for their lines
/// ahead: 16 Ki accounts are 768 KiB, about what stays in a core's second-level cache beside
/// the history's appends.
const PREFETCHED_ACCOUNTS: usize = 1 << 14;

/// The ledger's state.
///
/// Accounts live in a `Vec` in creation order with an id → slot index beside it (hashed
/// deterministically, never iterated). Transfers live in fixed-size chunks shared by
/// reference counting, so that the copy a snapshot is written from takes the chunks' handles
/// rather than the history ([`StateMachine::copy_for_snapshot`]): the engine pauses for the
/// accounts only. Ids that arrive in ascending order (the recommended time-based ids) cost no
/// index at all: they are found by binary search.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "LedgerData")]
pub struct Ledger {
    /// Marks an account when it changes, for the state hash's kept sum of them.
    accounts: MarkedVec<Account>,
    /// Rebuilt from `accounts`: not part of the snapshot, and empty in a snapshot's copy.
    #[serde(skip)]
    index: IdIndex,
    transfers: Transfers,
    /// Pending transfers with a timeout, by (expiry time, id), with the sum of their hashes
    /// kept. A pending transfer posted or voided before its time stays here until then and is
    /// passed over.
    expiries: Expiries,
}

/// The ledger as a snapshot holds it.
#[derive(Deserialize)]
struct LedgerData {
    accounts: Vec<Account>,
    transfers: Transfers,
    expiries: Expiries,
}

impl From<LedgerData> for Ledger {
    fn from(data: LedgerData) -> Self {
        let mut index = IdIndex::new();
        index.reserve(data.accounts.len());
        for (slot, account) in data.accounts.iter().enumerate() {
            index.insert(account.id, slot as u32);
        }
        Self {
            accounts: data.accounts.into(),
            index,
            transfers: data.transfers,
            expiries: data.expiries,
        }
    }
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty ledger with room for `accounts` accounts and `transfers` transfers, so that
    /// no structure grows (and pauses the engine for the copy) below those numbers.
    pub fn with_capacity(accounts: usize, transfers: usize) -> Self {
        let mut index = IdIndex::new();
        index.reserve(accounts);
        Self {
            accounts: MarkedVec::with_capacity(accounts),
            index,
            transfers: Transfers::with_capacity(transfers),
            expiries: Expiries::default(),
        }
    }

    /// The account with `id`.
    pub fn account(&self, id: u64) -> Option<&Account> {
        let slot = self.index.get(id)?;
        self.accounts.get(slot as usize)
    }

    /// Every account, in creation order.
    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    /// The transfer with `id`, as it was asked for and what became of it.
    pub fn transfer(&self, id: u64) -> Option<&TransferRecord> {
        self.transfers.get(id)
    }

    /// How many transfer ids are taken.
    pub fn transfer_count(&self) -> u64 {
        self.transfers.len() as u64
    }

    /// Pending transfers not yet posted, voided or expired.
    pub fn pending_count(&self) -> u64 {
        self.transfers.pending_count()
    }

    /// The sums over all accounts of each code.
    pub fn totals(&self) -> BTreeMap<u32, Totals> {
        let mut totals = BTreeMap::<u32, Totals>::new();
        for account in self.accounts.iter() {
            let entry = totals.entry(account.code).or_default();
            entry.accounts += 1;
            entry.debits_pending += u128::from(account.debits_pending);
            entry.debits_posted += u128::from(account.debits_posted);
            entry.credits_pending += u128::from(account.credits_pending);
            entry.credits_posted += u128::from(account.credits_posted);
        }
        totals
    }

    /// Checks the invariant: within each code, debits equal credits, posted and pending; and
    /// no account breaks its own limit.
    pub fn check_conservation(&self) -> Result<BTreeMap<u32, Totals>, String> {
        let totals = self.totals();
        for (code, sums) in &totals {
            if sums.debits_posted != sums.credits_posted
                || sums.debits_pending != sums.credits_pending
            {
                return Err(format!(
                    "code {code}: posted debits {} vs credits {}, pending debits {} vs credits {}",
                    sums.debits_posted,
                    sums.credits_posted,
                    sums.debits_pending,
                    sums.credits_pending
                ));
            }
        }
        for account in self.accounts.iter() {
            let debits = u128::from(account.debits_pending) + u128::from(account.debits_posted);
            let credits = u128::from(account.credits_pending) + u128::from(account.credits_posted);
            if account.flags & flags::DEBITS_MUST_NOT_EXCEED_CREDITS != 0
                && debits > u128::from(account.credits_posted)
            {
                return Err(format!("account {} has more debits than credits", account.id));
            }
            if account.flags & flags::CREDITS_MUST_NOT_EXCEED_DEBITS != 0
                && credits > u128::from(account.debits_posted)
            {
                return Err(format!("account {} has more credits than debits", account.id));
            }
        }
        Ok(totals)
    }

    /// The memory the state's structures hold, from their capacities (what the allocator was
    /// asked for, not what the pages touched).
    pub fn memory(&self) -> MemoryUse {
        let index = self.index.bytes();
        let accounts =
            self.accounts.capacity() * std::mem::size_of::<Account>() + self.accounts.hash_bytes();
        MemoryUse {
            accounts_bytes: (index + accounts) as u64,
            transfers_bytes: self.transfers.memory() as u64
                + (self.expiries.len() * std::mem::size_of::<(u64, u64)>()) as u64,
        }
    }

    fn slot(&self, id: u64) -> Option<usize> {
        self.index.get(id).map(|slot| slot as usize)
    }

    /// The ids of the two accounts a transfer (plain or pending) names, when there are enough
    /// accounts for the hints to pay (see `prefetch`); `None` otherwise.
    #[inline]
    fn hinted_accounts(&self, command: &Command) -> Option<[u64; 2]> {
        if self.accounts.len() < PREFETCHED_ACCOUNTS {
            return None;
        }
        match *command {
            Command::Transfer { debit, credit, .. } | Command::Pending { debit, credit, .. } => {
                Some([debit, credit])
            }
            _ => None,
        }
    }

    #[inline]
    fn prefetch_account(&self, id: u64) {
        if let Some(account) = self.slot(id).and_then(|slot| self.accounts.get(slot)) {
            keel_engine::prefetch(account);
        }
    }

    fn create_account(&mut self, id: u64, code: u32, account_flags: u16) -> Event {
        let reject = |reason| Event::AccountRejected { id, reason };
        if id == 0 {
            return reject(Reject::ZeroId);
        }
        if code == 0 {
            return reject(Reject::ZeroCode);
        }
        if account_flags & !flags::KNOWN != 0 {
            return reject(Reject::UnknownFlags);
        }
        if account_flags & flags::KNOWN == flags::KNOWN {
            return reject(Reject::ConflictingFlags);
        }
        if let Some(existing) = self.account(id) {
            return if existing.code == code && existing.flags == account_flags {
                Event::AccountExists { id }
            } else {
                reject(Reject::AccountExistsWithDifferentFields)
            };
        }
        self.index.insert(id, self.accounts.len() as u32);
        self.accounts.push(Account::new(id, code, account_flags));
        Event::AccountCreated { id }
    }

    /// A transfer or a pending transfer: checks in the order of [`Reject`], then applies.
    fn create_transfer(&mut self, request: TransferRecord, now: u64) -> Event {
        let id = request.id;
        let rejected = |reason| Event::TransferRejected { id, reason };
        if let Some(reason) = request.invalid() {
            return rejected(reason);
        }
        if let Some(existing) = self.transfers.get(id) {
            return existing.answer_retry(&request);
        }
        let outcome = self.try_transfer(&request, now);
        let (status, event) = match outcome {
            Ok(event) => {
                let status =
                    if request.kind == Kind::Pending { Status::Pending } else { Status::Done };
                (status, event)
            }
            Err(reason) => (Status::Rejected(reason), rejected(reason)),
        };
        self.transfers.push(TransferRecord { status, ..request });
        event
    }

    fn try_transfer(&mut self, request: &TransferRecord, now: u64) -> Result<Event, Reject> {
        let debit = self.slot(request.debit).ok_or(Reject::UnknownDebitAccount)?;
        let credit = self.slot(request.credit).ok_or(Reject::UnknownCreditAccount)?;
        let (debit_account, credit_account) = (&self.accounts[debit], &self.accounts[credit]);
        if debit_account.code != request.code || credit_account.code != request.code {
            return Err(Reject::CodeMismatch);
        }
        let amount = request.amount;
        let debits = debit_account
            .debits_pending
            .checked_add(debit_account.debits_posted)
            .and_then(|total| total.checked_add(amount))
            .ok_or(Reject::Overflow)?;
        let credits = credit_account
            .credits_pending
            .checked_add(credit_account.credits_posted)
            .and_then(|total| total.checked_add(amount))
            .ok_or(Reject::Overflow)?;
        let pending = request.kind == Kind::Pending;
        let expires_at_ns = match (pending, request.extra) {
            (true, timeout) if timeout > 0 => now.checked_add(timeout).ok_or(Reject::Overflow)?,
            _ => 0,
        };
        if debit_account.flags & flags::DEBITS_MUST_NOT_EXCEED_CREDITS != 0
            && debits > debit_account.credits_posted
        {
            return Err(Reject::InsufficientFunds);
        }
        if credit_account.flags & flags::CREDITS_MUST_NOT_EXCEED_DEBITS != 0
            && credits > credit_account.debits_posted
        {
            return Err(Reject::CreditsExceedDebits);
        }
        // Every check passed: nothing below can fail, so nothing needs rolling back.
        if pending {
            self.accounts[debit].debits_pending += amount;
            self.accounts[credit].credits_pending += amount;
            if expires_at_ns > 0 {
                self.expiries.insert(expires_at_ns, request.id);
            }
            Ok(Event::Reserved { id: request.id, amount, expires_at_ns })
        } else {
            self.accounts[debit].debits_posted += amount;
            self.accounts[credit].credits_posted += amount;
            Ok(Event::Transferred { id: request.id, amount })
        }
    }

    /// A post or a void of a pending transfer.
    fn resolve_pending(&mut self, request: TransferRecord) -> Event {
        let id = request.id;
        if let Some(reason) = request.invalid() {
            return Event::TransferRejected { id, reason };
        }
        if let Some(existing) = self.transfers.get(id) {
            return existing.answer_retry(&request);
        }
        let (status, event) = match self.try_resolve(&request) {
            Ok(event) => (Status::Done, event),
            Err(reason) => (Status::Rejected(reason), Event::TransferRejected { id, reason }),
        };
        self.transfers.push(TransferRecord { status, ..request });
        event
    }

    fn try_resolve(&mut self, request: &TransferRecord) -> Result<Event, Reject> {
        let pending_id = request.extra;
        let pending = self.transfers.get(pending_id).ok_or(Reject::PendingNotFound)?;
        match (pending.kind, pending.status) {
            (_, Status::Rejected(_)) => return Err(Reject::PendingNotFound),
            (Kind::Pending, Status::Pending) => {}
            (Kind::Pending, Status::Posted) => return Err(Reject::PendingAlreadyPosted),
            (Kind::Pending, Status::Voided) => return Err(Reject::PendingAlreadyVoided),
            (Kind::Pending, Status::Expired) => return Err(Reject::PendingExpired),
            _ => return Err(Reject::NotPending),
        }
        let held = pending.amount;
        let posted = match request.kind {
            Kind::Post if request.amount == 0 => held,
            Kind::Post if request.amount > held => return Err(Reject::AmountExceedsPending),
            Kind::Post => request.amount,
            _ => 0,
        };
        let (debit, credit) = (pending.debit, pending.credit);
        self.release(debit, credit, held, posted);
        if request.kind == Kind::Post {
            self.transfers.set_status(pending_id, Status::Posted);
            Ok(Event::Posted { id: request.id, pending_id, amount: posted })
        } else {
            self.transfers.set_status(pending_id, Status::Voided);
            Ok(Event::Voided { id: request.id, pending_id, amount: held })
        }
    }

    /// Takes `held` out of the two accounts' pending totals and posts `posted` of it. The
    /// pending amount was counted in the totals' overflow and limit checks when it was
    /// reserved, and `posted <= held`, so this cannot overflow or break a limit.
    fn release(&mut self, debit: u64, credit: u64, held: u64, posted: u64) {
        let debit = self.slot(debit).expect("a pending transfer's accounts exist");
        let credit = self.slot(credit).expect("a pending transfer's accounts exist");
        let account = &mut self.accounts[debit];
        account.debits_pending -= held;
        account.debits_posted += posted;
        let account = &mut self.accounts[credit];
        account.credits_pending -= held;
        account.credits_posted += posted;
    }

    /// Expires every pending transfer whose time is at or before `now`, in (time, id) order.
    fn expire(&mut self, now: u64, output: &mut Output<Event>) {
        while let Some((expires_at_ns, pending_id)) = self.expiries.first() {
            if expires_at_ns > now {
                break;
            }
            self.expiries.pop_first();
            let record = self.transfers.get(pending_id).expect("a scheduled transfer exists");
            if record.status != Status::Pending {
                continue;
            }
            let (debit, credit, amount) = (record.debit, record.credit, record.amount);
            self.release(debit, credit, amount, 0);
            self.transfers.set_status(pending_id, Status::Expired);
            output.emit(Event::Expired { pending_id, amount });
        }
    }
}

impl StateMachine for Ledger {
    type Command = Command;
    type Event = Event;

    /// Version 1: the accounts in creation order, the transfers as one flat sequence of
    /// records in id order (the in-memory chunks are not part of the format), the expiry
    /// schedule. Version 2: the same encoding, with the state hash of [`Self::state_hash`]
    /// as it is now (the history as a sum of its records' hashes) in the snapshot's header; a
    /// version 1 snapshot's header carries the hash that walked the history in order, which
    /// this build would not match, so it is skipped for its version, which says why.
    /// Version 3: the same encoding again, the accounts' part of the hash a sum of one hash
    /// per account with its slot (kept, not walked), so a version 2 snapshot is skipped the
    /// same way. Version 4: the same encoding, the expiry schedule's part of the hash a sum of
    /// one hash per entry (kept, not walked).
    const SCHEMA_VERSION: u32 = 4;

    /// An account is a random one among many: `apply` waits for memory twice a transfer
    /// unless the lines are asked for early. Eight commands cover a load from memory.
    const PREFETCH_AHEAD: usize = 8;

    /// A transfer's two accounts, when there are too many of them to stay in the core's
    /// cache (with a few thousand accounts the hints are work for nothing: about a tenth of
    /// `apply`). A post or a void finds its pending transfer by bisection, which is most of
    /// the cost of looking for it, so it is not looked for twice.
    fn prefetch(&self, command: &Command) {
        for id in self.hinted_accounts(command).into_iter().flatten() {
            self.prefetch_account(id);
        }
    }

    /// The index entries of the same accounts.
    fn prefetch_index(&self, command: &Command) {
        for id in self.hinted_accounts(command).into_iter().flatten() {
            self.index.prefetch(id);
        }
    }

    fn apply(&mut self, context: &Context, command: &Command, output: &mut Output<Event>) {
        let now = context.timestamp_ns;
        if self.expiries.first().is_some_and(|(expires_at_ns, _)| expires_at_ns <= now) {
            self.expire(now, output);
        }
        let event = match *command {
            Command::CreateAccount { id, code, flags } => self.create_account(id, code, flags),
            Command::Transfer { id, debit, credit, amount, code } => self.create_transfer(
                TransferRecord::request(Kind::Single, id, debit, credit, amount, code, 0),
                now,
            ),
            Command::Pending { id, debit, credit, amount, code, timeout_ns } => self
                .create_transfer(
                    TransferRecord::request(
                        Kind::Pending,
                        id,
                        debit,
                        credit,
                        amount,
                        code,
                        timeout_ns,
                    ),
                    now,
                ),
            Command::Post { id, pending_id, amount } => self.resolve_pending(
                TransferRecord::request(Kind::Post, id, 0, 0, amount, 0, pending_id),
            ),
            Command::Void { id, pending_id } => self.resolve_pending(TransferRecord::request(
                Kind::Void,
                id,
                0,
                0,
                0,
                0,
                pending_id,
            )),
        };
        output.emit(event);
    }

    /// The accounts by the sum of their hashes that they keep (each account's hash has its
    /// slot in it, so the sum sees their order as a walk would), bringing up to date only the
    /// accounts changed since the last hash; the history and the expiry schedule by the sums
    /// they keep. A checkpoint then costs the accounts and the records that changed since the
    /// previous one, neither a walk of the accounts, nor of every transfer, nor of every
    /// pending timeout.
    fn state_hash(&self) -> u64 {
        let mut digest = Digest::new();
        let accounts = self.accounts.sum(|slot, account| {
            hash_words(&[
                slot as u64,
                account.id,
                account.debits_pending,
                account.debits_posted,
                account.credits_pending,
                account.credits_posted,
                (u64::from(account.code) << 16) | u64::from(account.flags),
            ])
        });
        digest.words(&[self.accounts.len() as u64, accounts]);
        self.transfers.digest(&mut digest);
        digest.words(&self.expiries.digest());
        digest.finish()
    }

    /// The copy shares the transfers' chunks (a chunk is copied later, on the engine thread,
    /// only if a pending transfer in it changes status before the snapshot is written) and
    /// copies the accounts into the previous copy's allocation. The id index is left empty:
    /// the copy is only encoded and hashed, and the snapshot rebuilds the index when loaded.
    fn copy_for_snapshot(&self, previous: &mut Option<Self>) -> Self {
        let mut accounts = previous.take().map(|copy| copy.accounts).unwrap_or_default();
        accounts.clone_from(&self.accounts);
        Self {
            accounts,
            index: IdIndex::new(),
            transfers: self.transfers.clone(),
            expiries: self.expiries.clone(),
        }
    }
}
