//! The journal benchmark: append throughput per tier, payload and batch size, with the
//! machine's memcpy bandwidth and raw `pwrite` + `fdatasync` rate measured in the same run as
//! ceilings; verified sequential read; the worst append across segment rolls.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use hdrhistogram::Histogram;
use keel_journal::format::{record_size_padded, BATCH_HEADER_SIZE};
use keel_journal::{Durability, JournalOptions, JournalReader, JournalWriter};

use crate::report::Latency;
use crate::scratch::Scratch;

/// One journal case's result: records per second and the bytes each record occupies.
pub struct JournalOutcome {
    pub records: u64,
    pub elapsed: Duration,
    pub bytes_per_record: u64,
    pub latency: Option<Latency>,
    /// The slowest append that rolled to a new segment.
    pub roll_worst_ns: Option<u64>,
}

impl JournalOutcome {
    pub fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    pub fn gigabytes_per_sec(&self) -> f64 {
        self.records_per_sec() * self.bytes_per_record as f64 / 1e9
    }
}

/// Waits until the writer's background thread has the next segment ready, so that its
/// allocation (writing the segment's zeros) does not share the measured interval.
fn wait_for_next_segment(writer: &mut JournalWriter) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !writer.next_segment_ready() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The segment size for a throughput case of `records` records of `padded` bytes in batches of
/// `batch`: one segment holds the whole case, so the figure is the append path's (rolls are
/// measured by `roll`).
fn segment_for(records: u64, padded: u64, batch: u64) -> u64 {
    let headers = records.div_ceil(batch) * BATCH_HEADER_SIZE as u64;
    (records * padded + headers + 8192).next_multiple_of(4096).max(1 << 20)
}

/// Appends `records` records of `payload` bytes in batches of `batch`, committing each.
pub fn append(
    root: &Path,
    durability: Durability,
    payload: usize,
    batch: u64,
    records: u64,
) -> Result<JournalOutcome> {
    let scratch = Scratch::new(root, "append")?;
    let padded = record_size_padded(payload) as u64;
    let options = JournalOptions::new()
        .durability(durability)
        .segment_size(segment_for(records, padded, batch));
    let mut writer = JournalWriter::open(&scratch.0, options)?;
    wait_for_next_segment(&mut writer);
    let bytes = vec![0x5Au8; payload];
    let start = Instant::now();
    let mut timestamp = 1_700_000_000_000_000_000u64;
    let mut appended = 0;
    while appended < records {
        let count = batch.min(records - appended);
        for _ in 0..count {
            timestamp += 1;
            writer.append(timestamp, 1, 1, &bytes)?;
        }
        writer.commit()?;
        appended += count;
    }
    let elapsed = start.elapsed();
    ensure!(writer.durable_sequence() == records, "every record is durable");
    Ok(JournalOutcome {
        records,
        elapsed,
        bytes_per_record: padded,
        latency: None,
        roll_worst_ns: None,
    })
}

/// Writes a journal of `records` 64-byte records in batches of 4096, then reads it back with
/// checksums verified: a batch at a time (`JournalReader::next_batch`, the replay path) or a
/// record at a time (`JournalReader::next`).
pub fn verified_read(root: &Path, records: u64, by_batch: bool) -> Result<JournalOutcome> {
    let scratch = Scratch::new(root, "read")?;
    let options = JournalOptions::new().segment_size(segment_for(records, 96, 4096));
    let mut writer = JournalWriter::open(&scratch.0, options)?;
    let bytes = [0x5Au8; 64];
    for sequence in 1..=records {
        writer.append(sequence, 1, 1, &bytes)?;
        if sequence % 4096 == 0 {
            writer.commit()?;
        }
    }
    writer.commit()?;
    drop(writer);
    let start = Instant::now();
    let mut reader = JournalReader::open(&scratch.0)?;
    let mut read = 0u64;
    let mut payload_bytes = 0u64;
    if by_batch {
        while let Some(batch) = reader.next_batch()? {
            for record in batch.iter() {
                read += 1;
                payload_bytes += record.payload.len() as u64;
            }
        }
    } else {
        while let Some(record) = reader.next()? {
            read += 1;
            payload_bytes += record.payload.len() as u64;
        }
    }
    let elapsed = start.elapsed();
    ensure!(read == records && payload_bytes == records * 64, "read back every record");
    Ok(JournalOutcome {
        records,
        elapsed,
        bytes_per_record: record_size_padded(64) as u64,
        latency: None,
        roll_worst_ns: None,
    })
}

/// Appends 64-byte records in batches of 64 through `rolls` rolls of 1 MiB segments (the
/// smallest), timing every append; returns the latency of the appends, whose maximum is the
/// worst append across a roll. Between segments the loop pauses (untimed) so the background
/// thread has the spare ready, as it has at any sustainable rate.
pub fn roll(root: &Path, rolls: u64) -> Result<JournalOutcome> {
    let scratch = Scratch::new(root, "roll")?;
    let options = JournalOptions::new().segment_size(1 << 20);
    let mut writer = JournalWriter::open(&scratch.0, options)?;
    // More records than a segment holds (their batches' headers take room too), so that the
    // loop goes through at least `rolls` rolls.
    let per_segment = ((1 << 20) - 4096) / record_size_padded(64) as u64;
    let records = per_segment * rolls;
    let bytes = [0x5Au8; 64];
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut worst_roll_ns = 0;
    let mut elapsed = Duration::ZERO;
    for sequence in 1..=records {
        if sequence % per_segment == per_segment / 2 {
            wait_for_next_segment(&mut writer);
        }
        let start = Instant::now();
        writer.append(sequence, 1, 1, &bytes)?;
        if sequence % 64 == 0 {
            writer.commit()?;
        }
        let took = start.elapsed();
        elapsed += took;
        histogram.record(took.as_nanos() as u64)?;
        if (sequence - 1) % per_segment == 0 && sequence > 1 {
            worst_roll_ns = worst_roll_ns.max(took.as_nanos() as u64);
        }
    }
    writer.commit()?;
    // Dropping the writer waits for the background thread's last rename.
    drop(writer);
    let segments = std::fs::read_dir(scratch.0.join("journal"))?
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|entry| entry.path().extension().is_some_and(|e| e == "segment"))
        })
        .count() as u64;
    ensure!(segments >= rolls, "{segments} segments for {rolls} rolls");
    Ok(JournalOutcome {
        records,
        elapsed,
        bytes_per_record: record_size_padded(64) as u64,
        latency: Some(Latency::from_histogram(&histogram)),
        roll_worst_ns: Some(worst_roll_ns),
    })
}

/// The machine's memcpy bandwidth: copying a 256 MiB buffer into a pre-faulted one, counted
/// in 96-byte "records" (a 64-byte payload's record) so it reads against the append figures.
pub fn memcpy_ceiling() -> JournalOutcome {
    let size = 256 << 20;
    let source = vec![0x5Au8; size];
    let mut target = vec![0u8; size];
    target.fill(1);
    let start = Instant::now();
    let rounds = 4;
    for round in 0..rounds {
        target.copy_from_slice(&source);
        std::hint::black_box(&mut target[round]);
    }
    let elapsed = start.elapsed();
    JournalOutcome {
        records: (size * rounds / 96) as u64,
        elapsed,
        bytes_per_record: 96,
        latency: None,
        roll_worst_ns: None,
    }
}

/// The raw rate of `pwrite` + `fdatasync` of batches of `batch` 96-byte records into a
/// pre-allocated file, without any framing: the ceiling of the `Fsync` tier.
pub fn pwrite_fdatasync_ceiling(root: &Path, batch: u64, records: u64) -> Result<JournalOutcome> {
    let scratch = Scratch::new(root, "pwrite")?;
    let path = scratch.0.join("raw");
    let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    let total = records * 96;
    let zeros = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < total {
        let length = (total - offset).min(zeros.len() as u64);
        file.write_all_at(&zeros[..length as usize], offset)?;
        offset += length;
    }
    file.sync_all()?;
    let buffer = vec![0x5Au8; (batch * 96) as usize];
    let start = Instant::now();
    let mut written = 0;
    while written < records {
        let count = batch.min(records - written);
        file.write_all_at(&buffer[..(count * 96) as usize], written * 96)?;
        file.sync_data()?;
        written += count;
    }
    Ok(JournalOutcome {
        records,
        elapsed: start.elapsed(),
        bytes_per_record: 96,
        latency: None,
        roll_worst_ns: None,
    })
}

/// The ceiling of verifying checksums: CRC32C (the `crc32c` crate) over 4 M records of 96
/// bytes in memory, one checksum per record or one per batch of 4096 records, with nothing
/// else done. It is why the format checksums batches (`docs/journal-format.md`, section 3).
pub fn checksum_ceiling(per_record: bool) -> JournalOutcome {
    const RECORD: usize = 96;
    const BATCH: usize = 4096;
    let records = 4 << 20;
    let bytes: Vec<u8> = (0..records * RECORD).map(|index| (index * 31) as u8).collect();
    let start = Instant::now();
    let mut folded = 0u32;
    if per_record {
        for record in bytes.chunks_exact(RECORD) {
            folded ^= crc32c::crc32c(record);
        }
    } else {
        for batch in bytes.chunks(RECORD * BATCH) {
            folded ^= crc32c::crc32c(batch);
        }
    }
    let elapsed = start.elapsed();
    std::hint::black_box(folded);
    JournalOutcome {
        records: records as u64,
        elapsed,
        bytes_per_record: RECORD as u64,
        latency: None,
        roll_worst_ns: None,
    }
}
