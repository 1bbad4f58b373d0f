//! What the ledger's subcommands share: an open engine with the gateway's ends, and the tally
//! of its events. The engine's settings and the progress line are `keel_examples::cli`'s.

use std::path::Path;

use anyhow::{Context as _, Result};
use keel_engine::{Bincode, Engine, OutputPoller, Publisher, SnapshotPolicy};
use keel_examples::driver::{drive, Driven, Pace};
use keel_examples::format;
use keel_examples::ledger::{Command, Event, Ledger, Reject};

pub use keel_examples::cli::{ensure_fresh, journal_bytes, EngineOptions, Progress};

/// An open engine with the gateway's ends: its publisher and its output poller.
pub struct Session {
    engine: Engine<Ledger>,
    output: OutputPoller<Event>,
    publisher: Publisher<Ledger, Bincode>,
    /// The events seen so far.
    pub tally: Tally,
}

impl Session {
    /// Opens (recovering) the engine on `data`.
    pub fn open(
        options: &EngineOptions,
        data: &Path,
        initial: Ledger,
        snapshots: SnapshotPolicy,
    ) -> Result<Self> {
        let mut engine = options.open(data, initial, snapshots)?;
        let output = engine.take_output_poller().context("the output poller")?;
        let publisher = engine.publisher();
        Ok(Self { engine, output, publisher, tally: Tally::default() })
    }

    pub fn engine(&self) -> &Engine<Ledger> {
        &self.engine
    }

    /// Publishes `count` commands from `next`, tallying their events; `progress` is called
    /// about every 100 ms with the count answered.
    pub fn drive(
        &mut self,
        count: u64,
        pace: Pace,
        next: impl FnMut() -> Command,
        progress: impl FnMut(u64),
    ) -> Result<Driven> {
        let tally = &mut self.tally;
        drive(
            &mut self.publisher,
            &mut self.output,
            next,
            count,
            pace,
            |_, event| tally.add(event),
            progress,
        )
    }

    /// [`drive`](Self::drive) with a progress line named `label`.
    pub fn drive_shown(
        &mut self,
        label: &'static str,
        count: u64,
        pace: Pace,
        next: impl FnMut() -> Command,
    ) -> Result<Driven> {
        let progress = Progress::new(label, count);
        let driven = self.drive(count, pace, next, |done| progress.update(done));
        progress.finish();
        driven
    }

    /// Waits for everything published to be applied, stops the engine, returns the state.
    pub fn shutdown(self) -> Result<(Ledger, Tally)> {
        let Self { engine, output, publisher, tally } = self;
        drop(publisher);
        drop(output);
        let ledger = engine.shutdown().context("shutting the engine down")?;
        Ok((ledger, tally))
    }
}

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

impl Tally {
    #[inline]
    pub fn add(&mut self, event: &Event) {
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
