//! `keel snapshot ...`: inspect snapshot files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use keel_journal::format::{SnapshotHeader, CODEC_BINCODE2_SERDE};
use keel_journal::snapshot::check_snapshot;
use keel_journal::time::rfc3339_nanos;
use keel_journal::SnapshotStore;
use serde_json::json;

use crate::EXIT_CORRUPTION;

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Show a snapshot's header and check it as recovery would (header checksum, magic,
    /// version, length, payload checksum).
    ///
    /// PATH is a snapshot file, or a directory: a journal's directory or its `snapshots/`,
    /// whose snapshots are all shown, newest first. Exits 4 when a snapshot fails a check
    /// (recovery would skip it for an older one).
    #[command(
        after_help = "Example:\n  keel snapshot inspect ./data\n  keel snapshot inspect ./data/snapshots/00000000000004000000.snapshot --json"
    )]
    Inspect {
        /// A snapshot file, or a directory holding snapshots.
        path: PathBuf,
        /// Print one JSON object per snapshot instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `keel snapshot` command; returns the exit code.
pub fn run(command: SnapshotCommand) -> Result<u8> {
    let SnapshotCommand::Inspect { path, json } = command;
    let files = snapshot_files(&path)?;
    if files.is_empty() && !json {
        println!("no snapshot in {}", path.display());
    }
    let mut code = 0;
    for file in files {
        let outcome = check(&file);
        if outcome.is_err() {
            code = EXIT_CORRUPTION;
        }
        if json {
            println!("{}", snapshot_json(&file, &outcome));
        } else {
            print_snapshot(&file, &outcome);
        }
    }
    Ok(code)
}

/// The snapshot files `path` names: itself if a file, else those of the directory (a
/// journal's directory, or its `snapshots/`), newest first.
fn snapshot_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    // `SnapshotStore::open` takes the journal's directory and looks in its `snapshots/`.
    let journal_directory = if path.join("snapshots").is_dir() {
        path
    } else if path.file_name().is_some_and(|name| name == "snapshots") {
        path.parent().unwrap_or(path)
    } else {
        bail!("{} holds no snapshots/ directory and is not one", path.display());
    };
    let store = SnapshotStore::open(journal_directory)
        .with_context(|| format!("opening the snapshots of {}", path.display()))?;
    Ok(store.list()?.into_iter().map(|snapshot| snapshot.path).collect())
}

/// Checks the snapshot at `path` as recovery does, including that its header covers the
/// sequence its name gives.
fn check(path: &Path) -> Result<SnapshotHeader, String> {
    let header = check_snapshot(path).map_err(|error| error.to_string())?;
    let named = path
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_suffix(".snapshot"))
        .and_then(|digits| digits.parse::<u64>().ok());
    match named {
        Some(sequence) if sequence != header.sequence => {
            Err(format!("its header covers sequence {}, its name says {sequence}", header.sequence))
        }
        _ => Ok(header),
    }
}

fn print_snapshot(path: &Path, outcome: &Result<SnapshotHeader, String>) {
    println!("{}", path.display());
    match outcome {
        Ok(header) => {
            println!("  valid: header and payload checksums match");
            println!("  sequence        {}", header.sequence);
            println!(
                "  timestamp       {} ({} ns)",
                rfc3339_nanos(header.timestamp_ns),
                header.timestamp_ns
            );
            println!("  state hash      {:#018x}", header.state_hash);
            println!("  schema version  {}", header.schema_version);
            println!("  codec           {}", codec_name(header.codec));
            println!(
                "  payload         {} bytes, CRC32C {:#010x}",
                header.payload_length, header.payload_checksum
            );
        }
        Err(error) => println!("  INVALID: {error} (recovery skips it for an older snapshot)"),
    }
}

fn snapshot_json(path: &Path, outcome: &Result<SnapshotHeader, String>) -> serde_json::Value {
    match outcome {
        Ok(header) => json!({
            "path": path,
            "valid": true,
            "sequence": header.sequence,
            "timestamp_ns": header.timestamp_ns,
            "time": rfc3339_nanos(header.timestamp_ns),
            "state_hash": format!("{:#018x}", header.state_hash),
            "schema_version": header.schema_version,
            "codec": header.codec,
            "payload_length": header.payload_length,
            "payload_checksum": header.payload_checksum,
        }),
        Err(error) => json!({ "path": path, "valid": false, "error": error.to_string() }),
    }
}

fn codec_name(codec: u32) -> String {
    match codec {
        CODEC_BINCODE2_SERDE => "1 (bincode 2, serde)".to_owned(),
        other => format!("{other} (unknown)"),
    }
}
