//! `ledger`: a double-entry ledger service on keel. With no arguments it runs the demo.

mod demo;
mod load;
mod options;
mod replica;
mod run;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel_engine::cli::EngineCommand;
use keel_examples::ledger::Ledger;

#[derive(Debug, Parser)]
#[command(
    name = "ledger",
    version,
    about = "A double-entry ledger on keel: accounts, transfers, two-phase transfers, recovery.",
    after_help = "With no subcommand, runs `demo`.\n\nExamples:\n  ledger\n  ledger run --data ./data --accounts 100000 --transfers 5000000\n  ledger balance --data ./data --account 1042 --at 2026-11-23T15:00:00Z\n  ledger verify --data ./data\n  ledger serve --data ./data --listen 127.0.0.1:7300\n  ledger load --connect 127.0.0.1:7300 --clients 4 --rate 100000 --duration 10\n  ledger replica --primary 127.0.0.1:7400 --data ./replica"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The tour: load, snapshot, a crash, recovery, and the checks that nothing was lost.
    Demo(demo::DemoArgs),
    /// Load a fresh data directory with accounts and transfers; print throughput, latency,
    /// outcomes and memory.
    Run(run::RunArgs),
    /// An account's balance now, or at a past moment, replayed from the journal.
    #[command(
        after_help = "Examples:\n  ledger balance --data ./data --account 1042\n  ledger balance --data ./data --account 1042 --at 2026-11-23T15:00:00Z --json"
    )]
    Balance(run::BalanceArgs),
    /// Serve the ledger over TCP: length-prefixed binary requests, each answered with its
    /// command's reply (docs/ledger-protocol.md).
    Serve(serve::ServeArgs),
    /// Drive a `ledger serve` at a fixed offered rate; print throughput and latency.
    Load(load::LoadArgs),
    /// Follow a primary (`serve --replicate`, or a journal on this host) as a replica, until
    /// SIGINT or SIGTERM; then stop, or promote it to be the next primary.
    Replica(replica::ReplicaArgs),
    #[command(flatten)]
    Engine(EngineCommand),
    /// The demo's child engine process (not for people).
    #[command(hide = true)]
    Child(keel_examples::demo::ChildArgs),
}

fn main() -> ExitCode {
    let command = match Cli::parse().command {
        Some(command) => command,
        // No subcommand: the demo, with its defaults.
        None => Cli::parse_from(["ledger", "demo"]).command.expect("demo was given"),
    };
    let outcome = match command {
        Command::Demo(args) => demo::demo(args),
        Command::Run(args) => run::run(args),
        Command::Balance(args) => run::balance(args),
        Command::Serve(args) => serve::serve(args),
        Command::Load(args) => load::load(args),
        Command::Replica(args) => replica::replica(args),
        Command::Engine(command) => return keel_engine::cli::main(command, Ledger::new),
        Command::Child(args) => demo::child(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
