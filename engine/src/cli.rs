//! A command line that an application embedding the engine mounts in its own binary, with its
//! own state machine: `replay`, `snapshot` and `verify` over a data directory.
//!
//! ```no_run
//! use clap::Parser;
//! # use keel_engine::{Context, Output, StateMachine};
//! # #[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
//! # struct Ledger;
//! # impl StateMachine for Ledger {
//! #     type Command = u64;
//! #     type Event = u64;
//! #     fn apply(&mut self, _: &Context, _: &u64, _: &mut Output<u64>) {}
//! #     fn state_hash(&self) -> u64 { 0 }
//! # }
//!
//! #[derive(Parser)]
//! enum Cli {
//!     /// The application's own commands go here.
//!     Serve,
//!     #[command(flatten)]
//!     Engine(keel_engine::cli::EngineCommand),
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     match Cli::parse() {
//!         Cli::Serve => std::process::ExitCode::SUCCESS,
//!         Cli::Engine(command) => keel_engine::cli::main(command, Ledger::default),
//!     }
//! }
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use keel_journal::snapshot::read_snapshot_header;
use keel_journal::time::{parse_rfc3339, rfc3339_nanos};
use keel_journal::{SnapshotStore, WriterLock};
use serde_json::json;

use crate::codec::{Bincode, Codec};
use crate::error::EngineError;
use crate::machine::StateMachine;
use crate::recovery::{replay_from, ReplayFrom, ReplayTarget, ReplayedState};
use crate::snapshots::write_snapshot;

/// The engine's subcommands, to flatten into an application's own.
#[derive(Debug, Subcommand)]
pub enum EngineCommand {
    /// Rebuild the state from the snapshots and the journal, up to a point, and print where
    /// it ended, its state hash, and how fast the replay ran. Read-only: it can run beside a
    /// live engine.
    #[command(
        after_help = "Examples:\n  replay --data ./data\n  replay --data ./data --to-time 2026-11-23T15:00:00Z --json"
    )]
    Replay {
        /// The engine's data directory.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Stop after this sequence.
        #[arg(long, value_name = "N", conflicts_with = "to_time")]
        to_seq: Option<u64>,
        /// Stop after the last command at or before this time (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        to_time: Option<String>,
        /// Which snapshot to start from.
        #[arg(long, value_enum, default_value_t = From::Newest)]
        from: From,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Take a snapshot now, from the journal (replaying it to its end). No engine may be
    /// running on the directory: a running one takes its own (`Engine::snapshot`).
    #[command(after_help = "Example:\n  snapshot --data ./data")]
    Snapshot {
        /// The engine's data directory.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replay the journal to its end from the beginning (when it still starts at sequence 1),
    /// from the oldest kept snapshot and from the newest, and check that every replay ends in
    /// the same state hash. Exits 1 when they differ.
    #[command(after_help = "Example:\n  verify --data ./data")]
    Verify {
        /// The engine's data directory.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The snapshot a replay starts from, on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum From {
    /// The newest usable snapshot.
    Newest,
    /// The oldest usable snapshot.
    Oldest,
    /// No snapshot: the whole journal.
    Beginning,
}

impl From {
    fn replay_from(self) -> ReplayFrom {
        match self {
            Self::Newest => ReplayFrom::NewestSnapshot,
            Self::Oldest => ReplayFrom::OldestSnapshot,
            Self::Beginning => ReplayFrom::Beginning,
        }
    }
}

/// Runs `command` with the default codec and prints the outcome; returns the process's exit
/// code (0 success, 1 failure, with the error on standard error).
pub fn main<M: StateMachine>(command: EngineCommand, initial: impl Fn() -> M) -> ExitCode {
    match run(command, Bincode, initial, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `command` with `codec`, writing the outcome to `out`.
pub fn run<M: StateMachine, C: Codec>(
    command: EngineCommand,
    codec: C,
    initial: impl Fn() -> M,
    out: &mut dyn Write,
) -> Result<(), EngineError> {
    match command {
        EngineCommand::Replay { data, to_seq, to_time, from, json } => {
            let target = match (to_seq, to_time) {
                (Some(sequence), _) => ReplayTarget::Sequence(sequence),
                (None, Some(time)) => ReplayTarget::Timestamp(
                    parse_rfc3339(&time).map_err(EngineError::Configuration)?,
                ),
                (None, None) => ReplayTarget::End,
            };
            let replayed = replay_from(&data, codec, initial(), from.replay_from(), target)?;
            print_replay(out, &replayed, json)
        }
        EngineCommand::Snapshot { data, json } => snapshot(&data, codec, initial(), json, out),
        EngineCommand::Verify { data, json } => verify(&data, codec, initial, json, out),
    }
}

/// A replay's outcome as one JSON object.
fn replay_json<M>(replayed: &ReplayedState<M>) -> serde_json::Value {
    json!({
        "last_sequence": replayed.last_sequence,
        "last_timestamp_ns": replayed.last_timestamp_ns,
        "time": rfc3339_nanos(replayed.last_timestamp_ns),
        "state_hash": format!("{:#018x}", replayed.state_hash),
        "records": replayed.replayed,
        "seconds": replayed.seconds,
        "records_per_second": rate(replayed),
        "snapshot": replayed.snapshot.as_ref().map(|(path, sequence)| json!({ "path": path, "sequence": sequence })),
        "skipped_snapshots": replayed.skipped_snapshots.iter().map(|(path, reason)| json!({ "path": path, "reason": reason })).collect::<Vec<_>>(),
    })
}

fn rate<M>(replayed: &ReplayedState<M>) -> f64 {
    if replayed.seconds > 0.0 {
        replayed.replayed as f64 / replayed.seconds
    } else {
        0.0
    }
}

fn print_replay<M>(
    out: &mut dyn Write,
    replayed: &ReplayedState<M>,
    json: bool,
) -> Result<(), EngineError> {
    if json {
        writeln!(out, "{}", replay_json(replayed)).map_err(output_error)?;
        return Ok(());
    }
    let start = match &replayed.snapshot {
        Some((path, sequence)) => {
            format!("the snapshot of sequence {sequence} ({})", path.display())
        }
        None => "the beginning".to_owned(),
    };
    writeln!(
        out,
        "replayed {} commands from {start} in {:.3} s ({:.0} commands/s)",
        replayed.replayed,
        replayed.seconds,
        rate(replayed)
    )
    .map_err(output_error)?;
    writeln!(
        out,
        "last sequence {} at {}; state hash {:#018x}",
        replayed.last_sequence,
        rfc3339_nanos(replayed.last_timestamp_ns),
        replayed.state_hash
    )
    .map_err(output_error)?;
    for (path, reason) in &replayed.skipped_snapshots {
        writeln!(out, "skipped {}: {reason}", path.display()).map_err(output_error)?;
    }
    Ok(())
}

/// A failed write of the command's output.
fn output_error(error: std::io::Error) -> EngineError {
    EngineError::Configuration(format!("could not write the output: {error}"))
}

/// Replays the journal to its end and writes the state as a snapshot, holding the writer lock
/// so that no engine appends meanwhile.
fn snapshot<M: StateMachine, C: Codec>(
    data: &Path,
    codec: C,
    initial: M,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), EngineError> {
    let _lock = WriterLock::acquire(data)?;
    let replayed =
        replay_from(data, codec.clone(), initial, ReplayFrom::NewestSnapshot, ReplayTarget::End)?;
    let store = SnapshotStore::open(data)?;
    let file = write_snapshot(
        &store,
        &[],
        &codec,
        &replayed.machine,
        replayed.last_sequence,
        replayed.last_timestamp_ns,
        0,
    )?;
    let bytes = read_snapshot_header(&file.path)?.payload_length;
    if json {
        let mut value = replay_json(&replayed);
        value["written"] = json!({ "path": file.path, "bytes": bytes });
        writeln!(out, "{value}").map_err(output_error)
    } else {
        print_replay(out, &replayed, false)?;
        writeln!(out, "wrote {} ({bytes} bytes of state)", file.path.display())
            .map_err(output_error)
    }
}

/// Replays from every starting point available and compares the state hashes at the end.
fn verify<M: StateMachine, C: Codec>(
    data: &Path,
    codec: C,
    initial: impl Fn() -> M,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), EngineError> {
    let mut runs = Vec::new();
    let starts_at_one =
        keel_journal::segment::list_segments(&data.join(keel_journal::segment::JOURNAL_DIRECTORY))?
            .first()
            .is_some_and(|segment| segment.first_sequence == 1);
    let mut starts = vec![
        ("newest snapshot", ReplayFrom::NewestSnapshot),
        ("oldest snapshot", ReplayFrom::OldestSnapshot),
    ];
    if starts_at_one {
        starts.push(("beginning", ReplayFrom::Beginning));
    }
    for (name, from) in starts {
        let replayed = replay_from(data, codec.clone(), initial(), from, ReplayTarget::End)?;
        runs.push((name, replayed));
    }
    let agree = runs.windows(2).all(|pair| {
        (pair[0].1.state_hash, pair[0].1.last_sequence)
            == (pair[1].1.state_hash, pair[1].1.last_sequence)
    });
    if json {
        let value = json!({
            "agree": agree,
            "replays": runs.iter().map(|(name, replayed)| {
                let mut value = replay_json(replayed);
                value["from"] = json!(name);
                value
            }).collect::<Vec<_>>(),
        });
        writeln!(out, "{value}").map_err(output_error)?;
    } else {
        for (name, replayed) in &runs {
            writeln!(
                out,
                "from the {name}: {} commands replayed; last sequence {}; state hash {:#018x}",
                replayed.replayed, replayed.last_sequence, replayed.state_hash
            )
            .map_err(output_error)?;
        }
        let verdict =
            if agree { "verified: every replay ends in the same state" } else { "MISMATCH" };
        writeln!(out, "{verdict}").map_err(output_error)?;
    }
    if agree {
        Ok(())
    } else {
        Err(EngineError::Recovery(
            "replays from different starting points end in different states: a snapshot does \
             not match the journal, or apply is not deterministic"
                .into(),
        ))
    }
}
