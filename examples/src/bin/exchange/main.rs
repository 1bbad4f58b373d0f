//! `exchange`: an exchange's matching engine on keel. With no arguments it runs the demo.

mod demo;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keel_engine::cli::EngineCommand;
use keel_examples::exchange::Exchange;

#[derive(Debug, Parser)]
#[command(
    name = "exchange",
    version,
    about = "An exchange on keel: limit and market orders, cancels and amends, price-time \
             matching, a trades and book feed, recovery.",
    after_help = "With no subcommand, runs `demo`.\n\nExamples:\n  exchange\n  exchange run --data ./data --accounts 10000 --orders 5000000\n  exchange book --data ./data --symbol 3 --at 2026-11-23T15:00:00Z\n  exchange verify --data ./data"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The tour: load, snapshot, a crash, recovery, and the checks that nothing was lost.
    Demo(demo::DemoArgs),
    /// Load a fresh data directory with accounts and orders; print throughput, latency,
    /// outcomes and memory.
    Run(run::RunArgs),
    /// A symbol's order book now, or at a past moment, replayed from the journal.
    #[command(
        after_help = "Examples:\n  exchange book --data ./data --symbol 3\n  exchange book --data ./data --symbol 3 --at 2026-11-23T15:00:00Z --depth 5 --json"
    )]
    Book(run::BookArgs),
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
        None => Cli::parse_from(["exchange", "demo"]).command.expect("demo was given"),
    };
    let outcome = match command {
        Command::Demo(args) => demo::demo(args),
        Command::Run(args) => run::run(args),
        Command::Book(args) => run::book(args),
        Command::Engine(command) => return keel_engine::cli::main(command, Exchange::new),
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
