//! `ledger serve`: the ledger as a network service (protocol: `docs/ledger-protocol.md`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use keel_engine::{Durability, StateMachine};
use keel_examples::cli::{describe_recovery, service_snapshots, stop_on_signals};
use keel_examples::format;
use keel_examples::ledger::server::{Limits, Server};
use keel_examples::ledger::wire::ErrorCode;
use keel_examples::ledger::Ledger;

use crate::options::{EngineOptions, ReplicationArgs};

#[derive(Debug, Args)]
#[command(
    after_help = "Stops cleanly on SIGINT (Ctrl-C) or SIGTERM: what is in flight is answered \
                  first.\n\nExamples:\n  ledger serve --data ./data --listen 127.0.0.1:7300\n  \
                  ledger load --connect 127.0.0.1:7300 --clients 4 --rate 100000 --duration 10\n  \
                  KEEL_REPLICATION_SECRET=s3cret ledger serve --data ./primary --replicate \
                  127.0.0.1:7400 --durability replicated"
)]
pub struct ServeArgs {
    /// The data directory: recovered if it holds a journal, started fresh if not.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// The address to listen on (port 0 picks a free one; the first line printed names it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7300")]
    pub listen: SocketAddr,
    /// Take a snapshot every N commands (0: never).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub snapshot_every: u64,
    /// Open connections at most.
    #[arg(long, value_name = "N", default_value_t = Limits::default().connections)]
    pub max_connections: usize,
    #[command(flatten)]
    pub engine: EngineOptions,
    #[command(flatten)]
    pub replication: ReplicationArgs,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    let stop = stop_on_signals()?;
    let snapshots = service_snapshots(args.snapshot_every);
    let replication = args.replication.replication()?;
    if args.engine.durability() == Durability::Replicated && replication.is_none() {
        bail!("--durability replicated needs --replicate ADDR: where replicas connect");
    }
    if replication.is_some() {
        // Replication speaks through `tracing`: a replica connecting, caught up, dropped.
        keel_examples::cli::log_to_stderr();
    }
    let mut engine =
        args.engine.open_replicating(&args.data, Ledger::new(), snapshots, replication)?;
    let server = Server::bind(
        args.listen,
        Limits { connections: args.max_connections, ..Limits::default() },
    )
    .with_context(|| format!("listening on {}", args.listen))?;
    // The first line names the address, so that a script (or a test) that asked for port 0
    // can read it.
    println!("listening on {}", server.local_address());
    let recovery = engine.recovery().clone();
    println!("  data        {}", args.data.display());
    println!("  engine      {}", args.engine.describe());
    if let Some(address) = engine.replication_address() {
        let waits = if args.engine.durability() == Durability::Replicated {
            format!("each command waits for {} of them", args.replication.quorum)
        } else {
            "none waited for".to_owned()
        };
        println!("  replicas    connect to {address}; {waits}");
    }
    println!("  recovered   {}", describe_recovery(&recovery));
    std::io::stdout().flush().context("writing to standard output")?;

    let mut output = engine.take_output_poller().context("the output poller")?;
    // One gateway thread publishes: the engine's sole publisher, whose claims take no atomic
    // read-modify-write.
    let mut publisher = engine.sole_publisher().context("the engine's publisher")?;
    let report = server.run(&mut publisher, &mut output, &stop).context("serving")?;
    drop(publisher);
    drop(output);
    let ledger = engine.shutdown();

    println!("stopped");
    println!(
        "  served      {} connections ({} refused), {} requests published, {} replies",
        format::count(report.connections),
        format::count(report.connections_refused),
        format::count(report.published),
        format::count(report.replies),
    );
    let errors: Vec<String> = ErrorCode::ALL
        .iter()
        .filter(|&&code| report.errors(code) > 0)
        .map(|&code| format!("{} {}", format::count(report.errors(code)), code.name()))
        .collect();
    println!(
        "  errors      {}",
        if errors.is_empty() { "none".to_owned() } else { errors.join(", ") }
    );
    if let Some(reason) = &report.engine_stopped {
        bail!("the engine stopped under the service: {reason}");
    }
    let ledger = ledger.context("shutting the engine down")?;
    println!(
        "  state       {} accounts, {} transfer records, hash {:#018x}",
        format::count(ledger.accounts().len() as u64),
        format::count(ledger.transfer_count()),
        ledger.state_hash()
    );
    Ok(())
}
