//! `ledger run` and `ledger balance`.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
use keel_engine::{Bincode, ReplayTarget, SnapshotPolicy, StateMachine};
use keel_examples::driver::{latency_basis, Driven, Pace};
use keel_examples::format;
use keel_examples::ledger::workload::{Mix, Workload};
use keel_examples::ledger::Ledger;
use keel_examples::rng::seed_from_environment;
use keel_examples::system;
use keel_journal::time::{parse_rfc3339, rfc3339_nanos};
use serde_json::json;

use crate::options::{ensure_fresh, journal_bytes, EngineOptions, Session, Tally};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MixArg {
    /// Transfers with some two-phase ones, retries and mistakes.
    Payments,
    /// Plain transfers only.
    Transfers,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  ledger run --data ./data --accounts 100000 --transfers 5000000\n  ledger run --data ./data --accounts 1000000 --transfers 1000000 --rate 1000000 --json"
)]
pub struct RunArgs {
    /// A new (absent or empty) data directory.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Customer accounts.
    #[arg(long, default_value_t = 100_000)]
    pub accounts: u64,
    /// Transfers after the setup.
    #[arg(long, default_value_t = 5_000_000)]
    pub transfers: u64,
    /// Offered transfers per second, scheduled in advance (latency from the intended send
    /// time); without it, as fast as the engine takes them.
    #[arg(long, value_name = "R")]
    pub rate: Option<u64>,
    /// Currencies the accounts are spread over.
    #[arg(long, default_value_t = 4)]
    pub codes: u32,
    /// The traffic's make-up.
    #[arg(long, value_enum, default_value_t = MixArg::Payments)]
    pub mix: MixArg,
    /// The workload's seed (default: `KEEL_SEED`, or the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub engine: EngineOptions,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What a load of the ledger measured.
pub struct Load {
    pub setup: Driven,
    pub traffic: Driven,
    pub tally: Tally,
    pub ledger: Ledger,
}

impl RunArgs {
    pub fn workload(&self, seed: u64) -> Result<Workload> {
        let mix = match self.mix {
            MixArg::Payments => Mix::PAYMENTS,
            MixArg::Transfers => Mix::TRANSFERS,
        };
        if self.codes == 0 || self.accounts < u64::from(self.codes) {
            bail!("--codes must be at least 1 and --accounts at least --codes");
        }
        Ok(Workload::new(seed, self.accounts, self.codes, mix, 1))
    }

    /// An empty ledger with room for the run, so that nothing grows during it.
    pub fn initial(&self) -> Ledger {
        Ledger::with_capacity(
            (self.accounts + u64::from(self.codes)) as usize,
            (self.accounts + self.transfers) as usize,
        )
    }
}

/// Sets up the accounts and drives the transfers through a fresh engine on `args.data`, then
/// shuts it down.
pub fn load(args: &RunArgs, seed: u64) -> Result<Load> {
    let mut workload = args.workload(seed)?;
    let mut session =
        Session::open(&args.engine, &args.data, args.initial(), SnapshotPolicy::default())?;
    let setup = setup_accounts(&mut session, &mut workload)?;
    let traffic = session.drive_shown(
        "transfers",
        args.transfers,
        Pace { rate: args.rate, warm_up: args.transfers / 10, ..Pace::default() },
        || workload.next_command(),
    )?;
    let (ledger, tally) = session.shutdown()?;
    Ok(Load { setup, traffic, tally, ledger })
}

/// Publishes the workload's setup: the accounts and their funding.
pub fn setup_accounts(session: &mut Session, workload: &mut Workload) -> Result<Driven> {
    let setup = workload.setup();
    let count = setup.len() as u64;
    let mut setup = setup.into_iter();
    session.drive_shown("setup", count, Pace::default(), || {
        setup.next().expect("one command per count")
    })
}

pub fn run(args: RunArgs) -> Result<()> {
    ensure_fresh(&args.data)?;
    let seed = args.seed.unwrap_or_else(seed_from_environment);
    let Load { setup, traffic, tally, ledger } = load(&args, seed)?;
    let totals = ledger.check_conservation();
    let memory = ledger.memory();
    let accounts = ledger.accounts().len() as u64;
    let per_account = memory.accounts_bytes as f64 / accounts.max(1) as f64;
    let peak = system::peak_resident_bytes();
    let journal = journal_bytes(&args.data);
    let hash = ledger.state_hash();
    if args.json {
        let value = json!({
            "data": args.data,
            "machine": system::machine(),
            "seed": seed,
            "engine": {
                "durability": format!("{:?}", args.engine.durability()),
                "topology": format!("{:?}", args.engine.topology()),
                "wait": format!("{:?}", args.engine.wait()),
            },
            "accounts": accounts,
            "setup": { "commands": setup.commands, "seconds": setup.elapsed.as_secs_f64() },
            "transfers": {
                "count": traffic.commands,
                "seconds": traffic.elapsed.as_secs_f64(),
                "per_second": traffic.rate(),
                "offered_per_second": args.rate,
                "latency": format::percentiles_json(&traffic.latency),
                "latency_basis": latency_basis(args.rate, "transfers"),
            },
            "outcomes": tally.json(),
            "state": {
                "hash": format!("{hash:#018x}"),
                "transfer_records": ledger.transfer_count(),
                "pending": ledger.pending_count(),
                "accounts_bytes": memory.accounts_bytes,
                "bytes_per_account": per_account,
                "transfers_bytes": memory.transfers_bytes,
            },
            "peak_resident_bytes": peak,
            "journal_bytes": journal,
            "conservation": match &totals {
                Ok(_) => "holds",
                Err(error) => error.as_str(),
            },
        });
        println!("{value}");
    } else {
        let [done, refused] = tally.lines();
        println!(
            "ledger run: {} accounts in {} codes, {} transfers ({:?} mix, seed {seed})",
            format::count(args.accounts),
            args.codes,
            format::count(args.transfers),
            args.mix,
        );
        println!("  engine       {}, {} machine", args.engine.describe(), system::machine());
        println!(
            "  setup        {} commands in {}",
            format::count(setup.commands),
            format::seconds(setup.elapsed.as_secs_f64())
        );
        println!(
            "  transfers    {} in {}: {}",
            format::count(traffic.commands),
            format::seconds(traffic.elapsed.as_secs_f64()),
            format::rate(traffic.rate(), "transfers")
        );
        println!("  latency      {}", format::percentiles(&traffic.latency));
        println!("               ({})", latency_basis(args.rate, "transfers"));
        println!("  outcomes     {done}");
        println!("               {refused}");
        println!(
            "  state        {} accounts ({} each), {} transfer records ({}), hash {hash:#018x}",
            format::count(accounts),
            format::bytes(per_account as u64),
            format::count(ledger.transfer_count()),
            format::bytes(memory.transfers_bytes),
        );
        if let Some(peak) = peak {
            println!("  memory       {} peak resident", format::bytes(peak));
        }
        match &totals {
            Ok(totals) => println!(
                "  invariant    in each of {} codes, debits = credits: holds",
                totals.len()
            ),
            Err(error) => println!("  invariant    BROKEN: {error}"),
        }
        println!("  data         {} (journal {})", args.data.display(), format::bytes(journal));
    }
    match totals {
        Ok(_) => Ok(()),
        Err(error) => bail!("the conservation invariant does not hold: {error}"),
    }
}

#[derive(Debug, Args)]
pub struct BalanceArgs {
    /// The ledger's data directory.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// The account.
    #[arg(long, value_name = "ID")]
    pub account: u64,
    /// The moment (RFC 3339): the state after the last command at or before it.
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn balance(args: BalanceArgs) -> Result<()> {
    let target = match &args.at {
        Some(time) => ReplayTarget::Timestamp(
            parse_rfc3339(time).map_err(anyhow::Error::msg).context("--at")?,
        ),
        None => ReplayTarget::End,
    };
    let replayed = keel_engine::replay_to(&args.data, Bincode, Ledger::new(), target)
        .with_context(|| format!("replaying {}", args.data.display()))?;
    let Some(account) = replayed.machine.account(args.account) else {
        bail!(
            "no account {} at sequence {} ({})",
            args.account,
            replayed.last_sequence,
            rfc3339_nanos(replayed.last_timestamp_ns)
        );
    };
    if args.json {
        println!(
            "{}",
            json!({
                "account": account.id,
                "code": account.code,
                "flags": account.flags,
                "balance": account.balance().to_string(),
                "available": account.available().map(|available| available.to_string()),
                "debits_posted": account.debits_posted,
                "credits_posted": account.credits_posted,
                "debits_pending": account.debits_pending,
                "credits_pending": account.credits_pending,
                "sequence": replayed.last_sequence,
                "time": rfc3339_nanos(replayed.last_timestamp_ns),
            })
        );
    } else {
        println!(
            "account {} (code {}) at sequence {} ({}):",
            account.id,
            account.code,
            format::count(replayed.last_sequence),
            rfc3339_nanos(replayed.last_timestamp_ns)
        );
        println!("  balance      {}", account.balance());
        if let Some(available) = account.available() {
            println!("  available    {available}");
        }
        println!(
            "  posted       {} debits, {} credits",
            account.debits_posted, account.credits_posted
        );
        println!(
            "  pending      {} debits, {} credits",
            account.debits_pending, account.credits_pending
        );
    }
    Ok(())
}
