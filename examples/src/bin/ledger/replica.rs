//! `ledger replica`: a replica of a ledger service, over TCP (`serve --replicate ADDR`) or of a
//! journal on this host, until SIGINT or SIGTERM; then stopped, or promoted to be the next
//! primary.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{ArgGroup, Args, ValueEnum};
use keel_engine::{Durability, Replica, StateMachine};
use keel_examples::cli::{
    describe_recovery, log_to_stderr, replication_secret, service_snapshots, stop_on_signals,
};
use keel_examples::format;
use keel_examples::ledger::Ledger;
use serde_json::json;

/// What the replica's own journal survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReplicaTier {
    /// A process crash.
    PageCache,
    /// A power loss: each batch received is fdatasync'ed before it is acknowledged.
    Fsync,
}

#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("upstream").required(true).args(["primary", "follow"])),
    after_help = "Runs until SIGINT (Ctrl-C) or SIGTERM. The secret is the primary's: \
                  --secret-file FILE or KEEL_REPLICATION_SECRET.\n\nExamples:\n  \
                  ledger replica --primary 127.0.0.1:7400 --data ./replica\n  \
                  ledger replica --follow ./primary --data ./replica --snapshots-for-primary\n  \
                  ledger replica --primary 127.0.0.1:7400 --data ./replica --promote   \
                  (then: ledger serve --data ./replica)"
)]
pub struct ReplicaArgs {
    /// The primary's replication address (its `serve --replicate ADDR`).
    #[arg(long, value_name = "ADDR")]
    pub primary: Option<String>,
    /// Follow the journal in this data directory, on this host, instead.
    #[arg(long, value_name = "DIR")]
    pub follow: Option<PathBuf>,
    /// The replica's own data directory: its journal (a copy of the primary's) and snapshots.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// What the replica's journal survives; a record is acknowledged once it does.
    #[arg(long, value_enum, default_value_t = ReplicaTier::PageCache)]
    pub durability: ReplicaTier,
    /// Take a snapshot every N records (0: never).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub snapshot_every: u64,
    /// Give the primary every snapshot the replica takes, for its recovery (the primary then
    /// needs none of its own): written into its directory with --follow, sent over the
    /// network with --primary.
    #[arg(long)]
    pub snapshots_for_primary: bool,
    /// On SIGINT or SIGTERM, promote the replica: write the next epoch into its journal, so
    /// that `ledger serve --data DIR` continues as the new primary.
    #[arg(long)]
    pub promote: bool,
    /// A file holding the shared replication secret (else KEEL_REPLICATION_SECRET).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// Print the final report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn replica(args: ReplicaArgs) -> Result<()> {
    let stop = stop_on_signals()?;
    log_to_stderr();
    let (builder, upstream) = match (&args.primary, &args.follow) {
        (Some(address), _) => {
            let secret = replication_secret(args.secret_file.as_deref())?;
            let builder = Replica::remote(address.clone(), secret, &args.data);
            let builder =
                if args.snapshots_for_primary { builder.ship_snapshots() } else { builder };
            (builder, format!("tcp://{address}"))
        }
        (None, Some(directory)) => {
            let builder = Replica::builder(directory, &args.data);
            let builder =
                if args.snapshots_for_primary { builder.snapshots_for(directory) } else { builder };
            (builder, directory.display().to_string())
        }
        (None, None) => bail!("give --primary ADDR or --follow DIR"),
    };
    let durability = match args.durability {
        ReplicaTier::PageCache => Durability::PageCache,
        ReplicaTier::Fsync => Durability::Fsync,
    };
    let snapshots = service_snapshots(args.snapshot_every);
    let replica = builder
        .durability(durability)
        .snapshots(snapshots)
        .segment_size(keel_examples::cli::SEGMENT_SIZE)
        .open(Ledger::new())
        .with_context(|| format!("following {upstream}"))?;
    let recovery = replica.recovery().clone();
    println!("following {upstream}");
    println!("  data        {}", args.data.display());
    println!("  recovered   {}", describe_recovery(&recovery));
    std::io::stdout().flush().context("writing to standard output")?;

    // A line every few seconds while records arrive.
    let mut shown = recovery.last_sequence;
    let mut last_line = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(halt) = replica.halted() {
            bail!("the replica stopped: {halt}");
        }
        std::thread::sleep(Duration::from_millis(50));
        let stats = replica.stats();
        if stats.applied != shown && last_line.elapsed() >= Duration::from_secs(5) {
            println!(
                "  at {}     {} checkpoints matched",
                format::count(stats.applied),
                format::count(stats.checkpoints)
            );
            std::io::stdout().flush().context("writing to standard output")?;
            (shown, last_line) = (stats.applied, Instant::now());
        }
    }

    let stats = replica.stats();
    let (ledger, promotion) = if args.promote {
        let promotion = replica.promote().context("promoting the replica")?;
        (promotion.machine, Some((promotion.epoch, promotion.sequence)))
    } else {
        (replica.stop().context("stopping the replica")?, None)
    };
    if args.json {
        println!(
            "{}",
            json!({
                "applied": stats.applied,
                "durable": stats.durable,
                "checkpoints": stats.checkpoints,
                "last_checkpoint": stats.last_checkpoint,
                "snapshots": stats.snapshots,
                "state_hash": format!("{:#018x}", ledger.state_hash()),
                "promoted": promotion.map(|(epoch, sequence)| json!({
                    "epoch": epoch,
                    "sequence": sequence,
                })),
            })
        );
        return Ok(());
    }
    println!("stopped");
    println!(
        "  applied     sequence {}; {} checkpoints matched the primary's state",
        format::count(stats.applied),
        format::count(stats.checkpoints)
    );
    println!(
        "  state       {} accounts, {} transfer records, hash {:#018x}",
        format::count(ledger.accounts().len() as u64),
        format::count(ledger.transfer_count()),
        ledger.state_hash()
    );
    if let Some((epoch, sequence)) = promotion {
        println!("  promoted    epoch {epoch}, at sequence {}", format::count(sequence));
        println!("  next        ledger serve --data {}", args.data.display());
    }
    Ok(())
}
