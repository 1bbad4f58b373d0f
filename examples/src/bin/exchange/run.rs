//! `exchange run` and `exchange book`, and the tally of events both the run and the demo
//! print.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use keel_engine::StateMachine;
use keel_engine::{Bincode, ReplayTarget, SnapshotPolicy};
use keel_examples::cli::{ensure_fresh, journal_bytes, EngineOptions};
use keel_examples::driver::{latency_basis, Driven, Pace};
use keel_examples::exchange::workload::{Mix, Workload};
use keel_examples::exchange::{CancelReason, Event, Exchange, Reject};
use keel_examples::format;
use keel_examples::rng::seed_from_environment;
use keel_examples::system;
use keel_journal::time::{parse_rfc3339, rfc3339_nanos};
use serde_json::json;

/// Counts of the events seen.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub accepted: u64,
    pub trades: u64,
    /// Base units traded.
    pub volume: u64,
    pub rested: u64,
    pub amended: u64,
    /// By reason: requested, unfilled, fill-or-kill, insufficient funds.
    pub cancelled: [u64; 4],
    pub rejected: u64,
    pub reasons: [u64; Reject::ALL.len()],
    pub levels: u64,
}

impl keel_examples::cli::Tally<Event> for Tally {
    #[inline]
    fn add(&mut self, event: &Event) {
        match *event {
            Event::Accepted { .. } => self.accepted += 1,
            Event::Traded { quantity, .. } => {
                self.trades += 1;
                self.volume += quantity;
            }
            Event::Rested { .. } => self.rested += 1,
            Event::Amended { .. } => self.amended += 1,
            Event::Cancelled { reason, .. } => {
                let index = match reason {
                    CancelReason::Requested => 0,
                    CancelReason::Unfilled => 1,
                    CancelReason::FillOrKill => 2,
                    CancelReason::InsufficientFunds => 3,
                };
                self.cancelled[index] += 1;
            }
            Event::Rejected { reason, .. } => {
                self.rejected += 1;
                self.reasons[reason as usize] += 1;
            }
            Event::BookLevel { .. } => self.levels += 1,
            Event::SymbolAdded { .. } | Event::Deposited { .. } | Event::Withdrawn { .. } => {}
        }
    }
}

impl Tally {
    /// Two lines: what was done, and what was refused.
    pub fn lines(&self) -> [String; 2] {
        let done = format!(
            "{} accepted · {} trades ({} units) · {} rested · {} amended · {} cancelled, {} \
             unfilled, {} killed · {} book-level updates",
            format::count(self.accepted),
            format::count(self.trades),
            format::count(self.volume),
            format::count(self.rested),
            format::count(self.amended),
            format::count(self.cancelled[0]),
            format::count(self.cancelled[1] + self.cancelled[3]),
            format::count(self.cancelled[2]),
            format::count(self.levels),
        );
        let reasons: Vec<String> = Reject::ALL
            .iter()
            .filter(|&&reason| self.reasons[reason as usize] > 0)
            .map(|&reason| {
                format!("{} {}", format::count(self.reasons[reason as usize]), reason.name())
            })
            .collect();
        let refused = if self.rejected == 0 {
            "none rejected".to_owned()
        } else {
            format!("{} rejected: {}", format::count(self.rejected), reasons.join(", "))
        };
        [done, refused]
    }

    pub fn json(&self) -> serde_json::Value {
        let reasons: serde_json::Map<String, serde_json::Value> = Reject::ALL
            .iter()
            .filter(|&&reason| self.reasons[reason as usize] > 0)
            .map(|&reason| (reason.name().to_owned(), self.reasons[reason as usize].into()))
            .collect();
        json!({
            "accepted": self.accepted,
            "trades": self.trades,
            "volume": self.volume,
            "rested": self.rested,
            "amended": self.amended,
            "cancelled": self.cancelled[0],
            "unfilled": self.cancelled[1],
            "killed": self.cancelled[2],
            "stopped_by_funds": self.cancelled[3],
            "book_level_updates": self.levels,
            "rejected": self.rejected,
            "rejections": reasons,
        })
    }
}

/// The exchange's engine with the gateway's ends and its tally.
pub type Session = keel_examples::cli::Session<Exchange, Tally>;

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  exchange run --data ./data --accounts 10000 --orders 5000000\n  exchange run --data ./data --orders 1000000 --rate 1000000 --json"
)]
pub struct RunArgs {
    /// A new (absent or empty) data directory.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Trading accounts, each funded with every asset.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: u64,
    /// Orders, cancels and amends after the setup.
    #[arg(long, default_value_t = 5_000_000)]
    pub orders: u64,
    /// Symbols traded (each against the one quote asset).
    #[arg(long, default_value_t = 8)]
    pub symbols: u32,
    /// Offered commands per second, scheduled in advance (latency from the intended send
    /// time); without it, as fast as the engine takes them.
    #[arg(long, value_name = "R")]
    pub rate: Option<u64>,
    /// The workload's seed (default: `KEEL_SEED`, or the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub engine: EngineOptions,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Publishes the workload's setup: the symbols and the deposits.
pub fn setup(session: &mut Session, workload: &Workload) -> Result<Driven> {
    let setup = workload.setup();
    let count = setup.len() as u64;
    let mut setup = setup.into_iter();
    session.drive_shown("setup", count, Pace::default(), || {
        setup.next().expect("one command per count")
    })
}

pub fn run(args: RunArgs) -> Result<()> {
    ensure_fresh(&args.data)?;
    if args.accounts == 0 || args.symbols == 0 {
        bail!("--accounts and --symbols must be at least 1");
    }
    let seed = args.seed.unwrap_or_else(seed_from_environment);
    let mut workload = Workload::new(seed, args.accounts, args.symbols, Mix::REALISTIC, 1);
    let initial = Exchange::with_capacity(args.accounts as usize, 1 << 20);
    let mut session = Session::open(&args.engine, &args.data, initial, SnapshotPolicy::default())?;
    let setup = setup(&mut session, &workload)?;
    let traffic = session.drive_shown(
        "orders",
        args.orders,
        Pace { rate: args.rate, warm_up: args.orders / 10, ..Pace::default() },
        || workload.next_command(),
    )?;
    let (exchange, tally) = session.shutdown()?;
    let invariants = exchange.check_invariants();
    let peak = system::peak_resident_bytes();
    let journal = journal_bytes(&args.data);
    let hash = exchange.state_hash();
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
            "accounts": args.accounts,
            "symbols": args.symbols,
            "setup": { "commands": setup.commands, "seconds": setup.elapsed.as_secs_f64() },
            "orders": {
                "count": traffic.commands,
                "seconds": traffic.elapsed.as_secs_f64(),
                "per_second": traffic.rate(),
                "offered_per_second": args.rate,
                "latency": format::percentiles_json(&traffic.latency),
                "latency_basis": latency_basis(args.rate, "commands"),
            },
            "outcomes": tally.json(),
            "state": {
                "hash": format!("{hash:#018x}"),
                "resting_orders": exchange.resting_count(),
            },
            "peak_resident_bytes": peak,
            "journal_bytes": journal,
            "invariants": match &invariants {
                Ok(()) => "hold",
                Err(error) => error.as_str(),
            },
        });
        println!("{value}");
    } else {
        println!(
            "exchange run: {} accounts, {} symbols, {} orders (realistic mix, seed {seed})",
            format::count(args.accounts),
            args.symbols,
            format::count(args.orders),
        );
        println!("  engine       {}, {} machine", args.engine.describe(), system::machine());
        println!(
            "  setup        {} commands in {}",
            format::count(setup.commands),
            format::seconds(setup.elapsed.as_secs_f64())
        );
        println!(
            "  orders       {} in {}: {}",
            format::count(traffic.commands),
            format::seconds(traffic.elapsed.as_secs_f64()),
            format::rate(traffic.rate(), "orders")
        );
        println!("  latency      {}", format::percentiles(&traffic.latency));
        println!("               ({})", latency_basis(args.rate, "commands"));
        let [done, refused] = tally.lines();
        println!("  outcomes     {done}");
        println!("               {refused}");
        println!(
            "  state        {} orders resting, hash {hash:#018x}",
            format::count(exchange.resting_count() as u64)
        );
        if let Some(peak) = peak {
            println!("  memory       {} peak resident", format::bytes(peak));
        }
        match &invariants {
            Ok(()) => {
                println!("  invariants   no book crossed, every asset conserved, holds match: hold")
            }
            Err(error) => println!("  invariants   BROKEN: {error}"),
        }
        println!("  data         {} (journal {})", args.data.display(), format::bytes(journal));
    }
    invariants.map_err(|error| anyhow::anyhow!("an invariant does not hold: {error}"))
}

#[derive(Debug, Args)]
pub struct BookArgs {
    /// The exchange's data directory.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// The symbol.
    #[arg(long, value_name = "ID")]
    pub symbol: u32,
    /// The moment (RFC 3339): the book after the last command at or before it.
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
    /// Price levels shown per side.
    #[arg(long, default_value_t = 10)]
    pub depth: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn book(args: BookArgs) -> Result<()> {
    let target = match &args.at {
        Some(time) => ReplayTarget::Timestamp(
            parse_rfc3339(time).map_err(anyhow::Error::msg).context("--at")?,
        ),
        None => ReplayTarget::End,
    };
    let replayed = keel_engine::replay_to(&args.data, Bincode, Exchange::new(), target)
        .with_context(|| format!("replaying {}", args.data.display()))?;
    let exchange = &replayed.machine;
    let (Some(symbol), Some((bids, asks))) =
        (exchange.symbol(args.symbol).copied(), exchange.depth(args.symbol))
    else {
        bail!(
            "no symbol {} at sequence {} ({})",
            args.symbol,
            replayed.last_sequence,
            rfc3339_nanos(replayed.last_timestamp_ns)
        );
    };
    let bids: Vec<_> = bids.into_iter().take(args.depth).collect();
    let asks: Vec<_> = asks.into_iter().take(args.depth).collect();
    if args.json {
        let levels = |levels: &[keel_examples::exchange::Level]| -> Vec<serde_json::Value> {
            levels
                .iter()
                .map(|level| {
                    json!({ "price": level.price, "quantity": level.quantity, "orders": level.orders })
                })
                .collect()
        };
        println!(
            "{}",
            json!({
                "symbol": symbol.id,
                "base": symbol.base,
                "quote": symbol.quote,
                "sequence": replayed.last_sequence,
                "time": rfc3339_nanos(replayed.last_timestamp_ns),
                "bids": levels(&bids),
                "asks": levels(&asks),
            })
        );
        return Ok(());
    }
    println!(
        "symbol {} (asset {} in asset {}) at sequence {} ({}):",
        symbol.id,
        symbol.base,
        symbol.quote,
        format::count(replayed.last_sequence),
        rfc3339_nanos(replayed.last_timestamp_ns)
    );
    println!(
        "  {:>12} {:>14} {:>7}   {:<12} {:>14} {:>7}",
        "bid", "quantity", "orders", "ask", "quantity", "orders"
    );
    for index in 0..bids.len().max(asks.len()) {
        let side = |level: Option<&keel_examples::exchange::Level>| match level {
            Some(level) => {
                (level.price.to_string(), format::count(level.quantity), level.orders.to_string())
            }
            None => (String::new(), String::new(), String::new()),
        };
        let (bid, bid_quantity, bid_orders) = side(bids.get(index));
        let (ask, ask_quantity, ask_orders) = side(asks.get(index));
        println!(
            "  {bid:>12} {bid_quantity:>14} {bid_orders:>7}   {ask:<12} {ask_quantity:>14} {ask_orders:>7}"
        );
    }
    if bids.is_empty() && asks.is_empty() {
        println!("  (empty)");
    }
    Ok(())
}
