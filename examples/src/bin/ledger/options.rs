//! What the ledger's subcommands share: an open engine with the gateway's ends, and the tally
//! of its events. The engine's settings and the progress line are `keel_examples::cli`'s.

use keel_examples::format;
use keel_examples::ledger::{Event, Ledger, Reject};

pub use keel_examples::cli::{ensure_fresh, journal_bytes, EngineOptions, ReplicationArgs};

/// The ledger's engine with the gateway's ends and its tally.
pub type Session = keel_examples::cli::Session<Ledger, Tally>;

/// Counts of the events seen, by kind and by rejection reason.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub accounts: u64,
    pub transferred: u64,
    pub reserved: u64,
    pub posted: u64,
    pub voided: u64,
    pub expired: u64,
    pub retries: u64,
    pub rejected: u64,
    pub reasons: [u64; Reject::ALL.len()],
}

impl keel_examples::cli::Tally<Event> for Tally {
    #[inline]
    fn add(&mut self, event: &Event) {
        match event {
            Event::AccountCreated { .. } => self.accounts += 1,
            Event::Transferred { .. } => self.transferred += 1,
            Event::Reserved { .. } => self.reserved += 1,
            Event::Posted { .. } => self.posted += 1,
            Event::Voided { .. } => self.voided += 1,
            Event::Expired { .. } => self.expired += 1,
            Event::AccountExists { .. } | Event::TransferExists { .. } => self.retries += 1,
            Event::AccountRejected { reason, .. } | Event::TransferRejected { reason, .. } => {
                self.rejected += 1;
                self.reasons[*reason as usize] += 1;
            }
        }
    }
}

impl Tally {
    /// Adds another tally's counts.
    pub fn merge(&mut self, other: &Tally) {
        self.accounts += other.accounts;
        self.transferred += other.transferred;
        self.reserved += other.reserved;
        self.posted += other.posted;
        self.voided += other.voided;
        self.expired += other.expired;
        self.retries += other.retries;
        self.rejected += other.rejected;
        for (sum, count) in self.reasons.iter_mut().zip(other.reasons) {
            *sum += count;
        }
    }

    /// The rejection reasons seen, most frequent first.
    pub fn reasons(&self) -> Vec<(Reject, u64)> {
        let mut reasons: Vec<(Reject, u64)> = Reject::ALL
            .iter()
            .map(|&reason| (reason, self.reasons[reason as usize]))
            .filter(|&(_, count)| count > 0)
            .collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        reasons
    }

    /// Two lines: what was done, and what was refused.
    pub fn lines(&self) -> [String; 2] {
        let done = format!(
            "{} transferred · {} reserved · {} posted · {} voided · {} expired · {} retries answered",
            format::count(self.transferred),
            format::count(self.reserved),
            format::count(self.posted),
            format::count(self.voided),
            format::count(self.expired),
            format::count(self.retries),
        );
        let reasons = self
            .reasons()
            .iter()
            .map(|(reason, count)| format!("{} {reason}", format::count(*count)))
            .collect::<Vec<_>>()
            .join(", ");
        let refused = if self.rejected == 0 {
            "none rejected".to_owned()
        } else {
            format!("{} rejected: {reasons}", format::count(self.rejected))
        };
        [done, refused]
    }

    pub fn json(&self) -> serde_json::Value {
        let reasons: serde_json::Map<String, serde_json::Value> = self
            .reasons()
            .into_iter()
            .map(|(reason, count)| (reason.name().to_owned(), count.into()))
            .collect();
        serde_json::json!({
            "accounts_created": self.accounts,
            "transferred": self.transferred,
            "reserved": self.reserved,
            "posted": self.posted,
            "voided": self.voided,
            "expired": self.expired,
            "retries_answered": self.retries,
            "rejected": self.rejected,
            "rejections": reasons,
        })
    }
}
