//! `keel journal ...`: inspect, verify, dump and repair a journal.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use keel_journal::format::{
    Checkpoint, EpochChange, RecordView, SegmentHeader, KIND_CHECKPOINT, KIND_EPOCH,
    SEGMENT_HEADER_USED,
};
use keel_journal::segment::{hex, list_segments, JOURNAL_DIRECTORY};
use keel_journal::time::rfc3339_nanos;
use keel_journal::{
    verify_journal, JournalError, JournalReader, Repair, SegmentSummary, Verdict, Verification,
};
use serde_json::{json, Value};

use crate::{progress_bar, EXIT_CORRUPTION, EXIT_TORN_TAIL};

#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Show the segments (sequence and time ranges, sizes) and the verdict on the data.
    ///
    /// Reads every record and checks every batch's checksum, like `verify`; exits 0 whatever
    /// it finds, unless it cannot read the journal.
    #[command(
        after_help = "Example:\n  keel journal inspect ./data\n  keel journal inspect ./data --json | jq .segments"
    )]
    Inspect {
        /// The journal's directory (the one holding `journal/`).
        directory: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Where a journal stands, for replication: its id, first and last sequence, epoch, and
    /// the last checkpoint (its state hash), read without a lock beside a live writer.
    ///
    /// Compare a primary's and a replica's: the same id, and the replica's last sequence and
    /// checkpoint catching up with the primary's. Reads the last segment's records.
    #[command(
        after_help = "Example:\n  keel journal status ./primary\n  keel journal status ./replica --json"
    )]
    Status {
        /// The journal's directory (the one holding `journal/`).
        directory: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check the whole journal against the recovery table; exit 0 only when it is valid.
    ///
    /// Exit codes: 0 valid; 3 a torn tail (a write that was never acknowledged, which opening
    /// the journal for writing truncates); 4 corruption (opening refuses the journal; `repair`
    /// can cut it before the damage); 1 an error.
    #[command(after_help = "Example:\n  keel journal verify ./data && echo intact")]
    Verify {
        /// The journal's directory (the one holding `journal/`).
        directory: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print records: sequence, time, kind, version, size and the payload in hexadecimal.
    #[command(
        after_help = "Example:\n  keel journal dump ./data --from 1000 --count 5\n  keel journal dump ./data --json --payload-bytes 0"
    )]
    Dump {
        /// The journal's directory (the one holding `journal/`).
        directory: PathBuf,
        /// The first sequence to print (default: the journal's first).
        #[arg(long)]
        from: Option<u64>,
        /// How many records to print (default: all to the end).
        #[arg(long)]
        count: Option<u64>,
        /// Bytes of each payload to show, in hexadecimal (0: none; the rest is elided).
        #[arg(long, default_value_t = 32)]
        payload_bytes: usize,
        /// Print one JSON object per record instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Keep the records up to a sequence and drop the rest: the way past corruption.
    ///
    /// Prints what it will do, then asks (or takes `--yes`). Record SEQ and every record
    /// before it must be intact. What is dropped is not destroyed: later segments and
    /// snapshots of later sequences are moved to `dropped/` in the directory, and the zeroed
    /// bytes are copied there first. Takes the writer lock: stop the writer first.
    #[command(
        after_help = "Example:\n  keel journal repair ./data --truncate-after 41999 --dry-run\n  keel journal repair ./data --truncate-after 41999 --yes"
    )]
    Repair {
        /// The journal's directory (the one holding `journal/`).
        directory: PathBuf,
        /// The last sequence to keep.
        #[arg(long, value_name = "SEQ")]
        truncate_after: u64,
        /// Print the plan and change nothing (beyond what opening the journal would do).
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation (required when standard input is not a terminal).
        #[arg(long)]
        yes: bool,
    },
}

/// Runs a `keel journal` command; returns the exit code.
pub fn run(command: JournalCommand) -> Result<u8> {
    match command {
        JournalCommand::Inspect { directory, json } => {
            let verification = verify(&directory)?;
            if json {
                println!("{}", verification_json(&verification));
            } else {
                print_inspection(&verification);
            }
            Ok(0)
        }
        JournalCommand::Verify { directory, json } => {
            let verification = verify(&directory)?;
            if json {
                println!("{}", verification_json(&verification));
            } else {
                print_verdict(&verification);
            }
            Ok(exit_code(&verification.verdict))
        }
        JournalCommand::Status { directory, json } => status(&directory, json),
        JournalCommand::Dump { directory, from, count, payload_bytes, json } => {
            dump(&directory, from, count, payload_bytes, json)
        }
        JournalCommand::Repair { directory, truncate_after, dry_run, yes } => {
            repair(&directory, truncate_after, dry_run, yes)
        }
    }
}

/// Verifies the journal with a progress bar.
fn verify(directory: &Path) -> Result<Verification> {
    let bar = progress_bar("verifying");
    let verification = verify_journal(directory, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    Ok(verification?)
}

/// The exit code for a verdict.
fn exit_code(verdict: &Verdict) -> u8 {
    match verdict {
        Verdict::Valid => 0,
        Verdict::TornTail { .. } => EXIT_TORN_TAIL,
        Verdict::Corrupt(_) => EXIT_CORRUPTION,
    }
}

/// `first..=last` of the valid records, in words.
fn records_in_words(verification: &Verification) -> String {
    match (verification.first_sequence(), verification.last_sequence()) {
        (Some(first), Some(last)) => {
            format!("sequences {first}..={last} ({} records)", verification.records())
        }
        (Some(first), None) => format!("no record (the next is sequence {first})"),
        _ => "no segment".to_owned(),
    }
}

fn print_verdict(verification: &Verification) {
    let directory = verification.directory.display();
    let valid = records_in_words(verification);
    match &verification.verdict {
        Verdict::Valid => println!(
            "valid: {directory} holds {valid} in {} segment(s)",
            verification.segments.len()
        ),
        Verdict::TornTail { segment, tail } => {
            println!(
                "torn tail: {} at offset {}: {} ({} bytes)",
                segment.display(),
                tail.offset,
                tail.damage,
                tail.dirty_end - tail.offset
            );
            if let Some(dropped) = &tail.dropped {
                println!(
                    "  its headers name sequences {}..={}, never acknowledged (their batch is \
                     incomplete)",
                    dropped.start(),
                    dropped.end()
                );
            }
            println!("  before it, {valid} are valid; opening the journal for writing truncates the tail");
        }
        Verdict::Corrupt(error) => {
            println!("corruption: {error}");
            println!("  before it, {valid} are valid");
            if let Some(last) = verification.last_sequence() {
                println!(
                    "  `keel journal repair {directory} --truncate-after {last} --dry-run` shows \
                     how to keep them and drop the rest"
                );
            }
        }
    }
    for note in &verification.notes {
        println!("  note: {note}");
    }
}

fn print_inspection(verification: &Verification) {
    println!("journal {}", verification.directory.display());
    println!(
        "{:<30} {:>20} {:>20} {:>12} {:>12} {:>7}  {:<30}  {:<30}",
        "segment", "first", "last", "records", "bytes used", "used", "first time", "last time"
    );
    for segment in &verification.segments {
        let name = segment.path.file_name().unwrap_or_default().to_string_lossy();
        let (first_time, last_time) = segment
            .timestamps_ns
            .map_or((String::from("-"), String::from("-")), |(first, last)| {
                (rfc3339_nanos(first), rfc3339_nanos(last))
            });
        let last = if segment.records > 0 { segment.last_sequence.to_string() } else { "-".into() };
        println!(
            "{name:<30} {:>20} {last:>20} {:>12} {:>12} {:>6.1}%  {first_time:<30}  {last_time:<30}",
            segment.first_sequence,
            segment.records,
            segment.used,
            100.0 * segment.used as f64 / segment.size.max(1) as f64,
        );
    }
    print_verdict(verification);
}

/// The verification as one JSON object.
fn verification_json(verification: &Verification) -> Value {
    let damage = match &verification.verdict {
        Verdict::Valid => Value::Null,
        Verdict::TornTail { segment, tail } => json!({
            "segment": segment,
            "offset": tail.offset,
            "bytes": tail.dirty_end - tail.offset,
            "detail": tail.damage,
            "dropped_sequences": tail.dropped.as_ref().map(|range| [range.start(), range.end()]),
        }),
        Verdict::Corrupt(error) => error_json(error),
    };
    json!({
        "directory": verification.directory,
        "verdict": verification.verdict.label(),
        "first_sequence": verification.first_sequence(),
        "last_sequence": verification.last_sequence(),
        "records": verification.records(),
        "segments": verification.segments.iter().map(segment_json).collect::<Vec<_>>(),
        "damage": damage,
        "notes": verification.notes,
    })
}

fn segment_json(segment: &SegmentSummary) -> Value {
    json!({
        "path": segment.path,
        "first_sequence": segment.first_sequence,
        "last_sequence": (segment.records > 0).then_some(segment.last_sequence),
        "records": segment.records,
        "first_timestamp_ns": segment.timestamps_ns.map(|(first, _)| first),
        "last_timestamp_ns": segment.timestamps_ns.map(|(_, last)| last),
        "size": segment.size,
        "used": segment.used,
        "epoch": segment.epoch,
    })
}

/// Where a damage error points, as JSON.
fn error_json(error: &JournalError) -> Value {
    let (segment, offset, expected, found) = match error {
        JournalError::Corrupt { path, offset, expected, found, .. } => {
            (Some(path), Some(*offset), Some(*expected), *found)
        }
        JournalError::TornTail { path, offset, expected, .. } => {
            (Some(path), Some(*offset), Some(*expected), None)
        }
        JournalError::Format { path, offset, .. } => (Some(path), Some(*offset), None, None),
        _ => (None, None, None, None),
    };
    json!({
        "segment": segment,
        "offset": offset,
        "expected_sequence": expected,
        "found_sequence": found,
        "detail": error.to_string(),
    })
}

/// `keel journal status`.
fn status(directory: &Path, json: bool) -> Result<u8> {
    let segments = list_segments(&directory.join(JOURNAL_DIRECTORY))
        .with_context(|| format!("listing the segments of {}", directory.display()))?;
    let Some(last) = segments.last() else {
        bail!("{} holds no journal", directory.display());
    };
    let mut epoch = 0;
    let mut journal_id = [0u8; 16];
    for segment in &segments {
        let bytes = read_prefix(&segment.path, SEGMENT_HEADER_USED)?;
        let header = SegmentHeader::decode(&bytes)
            .with_context(|| format!("the header of {}", segment.path.display()))?;
        epoch = epoch.max(header.epoch);
        journal_id = header.journal_id;
    }
    // The last segment's records: the last sequence, epoch changes, the last checkpoint. A
    // torn tail (a writer mid-batch, or a crash) ends the walk: it is not data.
    let mut reader = JournalReader::open_at(directory, last.first_sequence)
        .with_context(|| format!("opening the journal in {}", directory.display()))?;
    let mut last_record = None;
    let mut checkpoint = None;
    loop {
        match reader.next() {
            Ok(Some(record)) => {
                if record.kind == KIND_EPOCH {
                    if let Ok(change) = EpochChange::decode(record.payload) {
                        epoch = epoch.max(change.epoch);
                    }
                }
                if record.kind == KIND_CHECKPOINT {
                    checkpoint = Checkpoint::decode(record.payload).ok();
                }
                last_record = Some((record.sequence, record.timestamp_ns));
            }
            Ok(None) | Err(JournalError::TornTail { .. }) => break,
            Err(error) => return Err(error.into()),
        }
    }
    let first = segments[0].first_sequence;
    let (last_sequence, last_timestamp_ns) = last_record.unwrap_or((last.first_sequence - 1, 0));
    let id = hex(&journal_id);
    if json {
        println!(
            "{}",
            json!({
                "directory": directory.display().to_string(),
                "journal_id": id,
                "epoch": epoch,
                "first_sequence": first,
                "last_sequence": last_sequence,
                "last_timestamp_ns": last_timestamp_ns,
                "segments": segments.len(),
                "last_checkpoint": checkpoint.map(|checkpoint| json!({
                    "sequence": checkpoint.sequence + 1,
                    "covers": checkpoint.sequence,
                    "state_hash": format!("{:#018x}", checkpoint.state_hash),
                })),
            })
        );
    } else {
        println!("journal      {}", directory.display());
        println!("  id         {id}");
        println!("  epoch      {epoch}");
        println!("  sequences  {first} ..= {last_sequence}");
        if last_timestamp_ns > 0 {
            println!("  last       {}", rfc3339_nanos(last_timestamp_ns));
        }
        println!("  segments   {}", segments.len());
        match checkpoint {
            Some(checkpoint) => println!(
                "  checkpoint at {}: state hash {:#018x} after {}",
                checkpoint.sequence + 1,
                checkpoint.state_hash,
                checkpoint.sequence
            ),
            None => println!("  checkpoint none in the last segment"),
        }
    }
    Ok(0)
}

/// The first `length` bytes of a file.
fn read_prefix(path: &Path, length: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = vec![0u8; length];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}

fn dump(
    directory: &Path,
    from: Option<u64>,
    count: Option<u64>,
    payload_bytes: usize,
    json: bool,
) -> Result<u8> {
    let mut reader = match from {
        Some(from) => JournalReader::open_at(directory, from),
        None => JournalReader::open(directory),
    }
    .with_context(|| format!("opening the journal in {}", directory.display()))?;
    let mut out = std::io::stdout().lock();
    let mut printed = 0;
    while count.is_none_or(|count| printed < count) {
        let batch = match reader.next_batch() {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(error) if error.is_damage() => {
                eprintln!("keel: {error}");
                let torn = matches!(error, JournalError::TornTail { .. });
                return Ok(if torn { EXIT_TORN_TAIL } else { EXIT_CORRUPTION });
            }
            Err(error) => return Err(error.into()),
        };
        for record in batch.iter() {
            if count.is_some_and(|count| printed >= count) {
                break;
            }
            // A reader opened inside a batch starts with the rest of it: not its start.
            let starts = batch.is_whole() && record.sequence == batch.first_sequence;
            let ends = record.sequence == batch.last_sequence;
            if writeln!(out, "{}", dump_line(&record, starts, ends, payload_bytes, json)).is_err() {
                // A closed pipe (`| head`) ends the dump quietly.
                return Ok(0);
            }
            printed += 1;
        }
    }
    Ok(0)
}

/// One record of `dump`: a line of text, or a JSON object.
fn dump_line(
    record: &RecordView<'_>,
    starts: bool,
    ends: bool,
    payload_bytes: usize,
    json: bool,
) -> String {
    let shown = &record.payload[..record.payload.len().min(payload_bytes)];
    let elided = record.payload.len() - shown.len();
    if json {
        return json!({
            "sequence": record.sequence,
            "timestamp_ns": record.timestamp_ns,
            "time": rfc3339_nanos(record.timestamp_ns),
            "kind": record.kind,
            "version": record.version,
            "payload_length": record.payload.len(),
            "start_of_batch": starts,
            "end_of_batch": ends,
            "payload_hex": hex(shown),
            "payload_elided": elided,
        })
        .to_string();
    }
    let batch = match (starts, ends) {
        (true, true) => "[batch]",
        (true, false) => "[batch ",
        (false, true) => " batch]",
        (false, false) => "       ",
    };
    let more = if elided > 0 { format!(" …+{elided}") } else { String::new() };
    format!(
        "{:>20}  {}  kind {:>5} v{:<3} {batch} {:>6} B  {}{more}  |{}|",
        record.sequence,
        rfc3339_nanos(record.timestamp_ns),
        record.kind,
        record.version,
        record.payload.len(),
        hex(shown),
        printable(shown)
    )
}

/// `bytes` with each byte that is not printable ASCII shown as `.`.
fn printable(bytes: &[u8]) -> String {
    let shown =
        |&byte: &u8| if byte.is_ascii_graphic() || byte == b' ' { byte as char } else { '.' };
    bytes.iter().map(shown).collect()
}

fn repair(directory: &Path, truncate_after: u64, dry_run: bool, yes: bool) -> Result<u8> {
    let repair = Repair::plan(directory, truncate_after)
        .with_context(|| format!("planning the repair of {}", directory.display()))?;
    let plan = repair.plan_ref();
    print!("{plan}");
    if dry_run || plan.is_empty() {
        return Ok(0);
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("refusing to repair without --yes: standard input is not a terminal");
        }
        print!("carry this out? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("nothing changed");
            return Ok(0);
        }
    }
    let done = repair.execute().context("repairing")?;
    println!(
        "repaired: the journal ends at sequence {}; what was dropped is in {}",
        done.truncate_after,
        done.dropped_directory.display()
    );
    Ok(0)
}
