//! `keel`: look into, check and repair keel's journals and snapshots.
//!
//! ```text
//! cargo run --release --bin keel -- journal inspect DATA
//! cargo run --release --bin keel -- journal verify DATA --json
//! cargo run --release --bin keel -- journal dump DATA --from 1000 --count 10
//! cargo run --release --bin keel -- journal repair DATA --truncate-after 41999 --dry-run
//! cargo run --release --bin keel -- snapshot inspect DATA
//! ```
//!
//! Exit codes: 0 success (for `verify`: the journal is valid); 1 an error (I/O, no journal, a
//! refused request); 2 a usage error; 3 a torn tail (rows 3–5 of the recovery table: opening
//! the journal for writing truncates it, and nothing acknowledged is lost); 4 corruption
//! (rows 6–10: opening refuses the journal until it is repaired).

mod journal;
mod snapshot;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// Exit code: an error that is not damage (I/O, arguments, a refused request).
const EXIT_ERROR: u8 = 1;
/// Exit code: the journal ends in a torn tail, which opening it truncates.
const EXIT_TORN_TAIL: u8 = 3;
/// Exit code: corruption, which opening refuses.
const EXIT_CORRUPTION: u8 = 4;

/// Look into, check and repair keel's journals and snapshots.
#[derive(Debug, Parser)]
#[command(
    name = "keel",
    version,
    after_help = "Exit codes: 0 success (verify: valid); 1 error; 2 usage; 3 torn tail; \
                  4 corruption.\n\nExamples:\n  keel journal verify ./data\n  \
                  keel journal dump ./data --from 1000 --count 5\n  \
                  keel snapshot inspect ./data"
)]
struct Arguments {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A journal: its segments, records, damage.
    #[command(subcommand)]
    Journal(journal::JournalCommand),
    /// Snapshot files.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    let outcome = match arguments.command {
        Command::Journal(command) => journal::run(command),
        Command::Snapshot(command) => snapshot::run(command),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("keel: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// A progress bar over `total` bytes on standard error, hidden when standard error is not a
/// terminal (so logs and pipes get no control characters).
fn progress_bar(message: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .expect("the template is valid")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message);
    bar
}
