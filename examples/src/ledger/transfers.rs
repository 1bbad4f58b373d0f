//! The ledger's transfer history: every transfer id taken, with what it asked for and what it
//! came to.
//!
//! Records whose id is above every earlier one (ascending ids, the common case) are appended
//! to a short tail of at most [`TAIL`] records, which moves into chunks of [`CHUNK`] records
//! when it is full; tail and chunks stay sorted by id and are searched by bisection: no index,
//! 48 bytes a transfer. A record whose id arrives out of order goes to a hash map.
//! The chunks are reference-counted, so a copy of the history (for a snapshot) is a copy of
//! the chunks' handles and of the tail; a chunk still shared with such a copy is copied the
//! first time it is changed (copy on write). The tail is owned outright because asking a
//! chunk whether it is shared costs two atomic operations, which on every append were a
//! fifth of the ledger's `apply` (ARCHITECTURE.md, "The transfer history is in memory").

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex, OnceLock};

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Event, Outcome, Reject};
use crate::hash::{hash_words, table_bytes, Digest, IdMap};

/// Records per chunk: 16 Ki records of 48 bytes, 768 KiB. Copying one after a snapshot
/// shared it costs tens of microseconds; a snapshot's copy of the history costs one handle
/// per chunk.
pub(crate) const CHUNK: usize = 1 << 14;

/// Records in the tail at most: 12 KiB, which stays in the first-level cache and which a
/// snapshot's copy copies (about a microsecond). `CHUNK` is a multiple of it, so a full tail
/// fills a chunk's room exactly unless a decoded snapshot left the last chunk with another
/// length.
pub(crate) const TAIL: usize = 1 << 8;

/// What a transfer command was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// [`Command::Transfer`](super::Command::Transfer).
    Single,
    /// [`Command::Pending`](super::Command::Pending).
    Pending,
    /// [`Command::Post`](super::Command::Post).
    Post,
    /// [`Command::Void`](super::Command::Void).
    Void,
}

/// What a transfer came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Done: a transfer, post or void that was applied.
    Done,
    /// A pending transfer still holding its amount.
    Pending,
    /// A pending transfer that was posted.
    Posted,
    /// A pending transfer that was voided.
    Voided,
    /// A pending transfer that expired.
    Expired,
    /// Rejected, with a reason that reserves the id.
    Rejected(Reject),
}

impl Status {
    /// What a retry is told.
    pub fn outcome(self) -> Outcome {
        match self {
            Self::Rejected(reason) => Outcome::Rejected(reason),
            _ => Outcome::Accepted,
        }
    }

    fn code(self) -> u64 {
        match self {
            Self::Done => 0,
            Self::Pending => 1,
            Self::Posted => 2,
            Self::Voided => 3,
            Self::Expired => 4,
            Self::Rejected(reason) => 16 + reason as u64,
        }
    }
}

/// A transfer id's record: the command's fields as they were asked for (so that a retry can
/// be compared field by field) and its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TransferRecord {
    /// The transfer's id.
    pub id: u64,
    /// The account debited (0 for a post or a void).
    pub debit: u64,
    /// The account credited (0 for a post or a void).
    pub credit: u64,
    /// The amount asked for (for a post, 0 means the whole pending amount).
    pub amount: u64,
    /// For a pending transfer its timeout, for a post or a void the pending transfer's id.
    pub extra: u64,
    /// The code (0 for a post or a void).
    pub code: u32,
    /// What the command was.
    pub kind: Kind,
    /// What it came to.
    pub status: Status,
}

impl TransferRecord {
    pub(super) fn request(
        kind: Kind,
        id: u64,
        debit: u64,
        credit: u64,
        amount: u64,
        code: u32,
        extra: u64,
    ) -> Self {
        Self { id, debit, credit, amount, extra, code, kind, status: Status::Done }
    }

    /// The rejection of a command that is invalid in itself, whatever the state.
    pub(super) fn invalid(&self) -> Option<Reject> {
        if self.id == 0 {
            return Some(Reject::ZeroId);
        }
        if matches!(self.kind, Kind::Post | Kind::Void) {
            return None;
        }
        if self.code == 0 {
            Some(Reject::ZeroCode)
        } else if self.debit == self.credit {
            Some(Reject::SameAccount)
        } else if self.amount == 0 {
            Some(Reject::ZeroAmount)
        } else {
            None
        }
    }

    /// The answer to `request`, which uses this record's id.
    pub(super) fn answer_retry(&self, request: &TransferRecord) -> Event {
        let same = TransferRecord { status: self.status, ..*request } == *self;
        if same {
            Event::TransferExists { id: self.id, original: self.status.outcome() }
        } else {
            Event::TransferRejected { id: self.id, reason: Reject::ExistsWithDifferentFields }
        }
    }

    /// The record's hash, whose wrapping sum over the history is the history's part of the
    /// state hash.
    fn hash(&self) -> u64 {
        hash_words(&[
            self.id,
            self.debit,
            self.credit,
            self.amount,
            self.extra,
            (u64::from(self.code) << 16) | ((self.kind as u64) << 8) | self.status.code(),
        ])
    }
}

/// The wrapping sum of `records`' hashes.
fn hash_sum<'a>(records: impl IntoIterator<Item = &'a TransferRecord>) -> u64 {
    records.into_iter().fold(0u64, |sum, record| sum.wrapping_add(record.hash()))
}

/// The history. See the module's documentation.
///
/// Its part of the state hash is the wrapping sum of every record's hash, so that a checkpoint
/// (a state hash every `N` commands) does not walk the whole history, which only grows: each
/// chunk's sum is kept as far as a state hash has counted its records (chunks only grow, at
/// the end), a status change of a counted record adjusts it, and the out-of-order records' sum
/// is kept as they come and change. A state hash walks only the records appended since the
/// last one, and the tail (ARCHITECTURE.md, "The ledger's state hash is kept, not walked").
/// Appends in order, the common case, cost nothing for it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Transfers {
    /// Sorted by id, within and across chunks; every chunk but the last is full.
    chunks: Vec<Arc<Vec<TransferRecord>>>,
    /// For the first chunks, the sum of the hashes of each one's first records and how many
    /// that is, as far as a state hash has counted them. A cache of what the chunks hold,
    /// filled behind `&self` (a state hash's), so in a cell; nothing outside this type sees it.
    chunk_sums: RefCell<Vec<(u64, usize)>>,
    /// The newest sorted records, above every id in `chunks`.
    tail: Vec<TransferRecord>,
    /// Records in `chunks` and `tail`.
    sorted: usize,
    /// Ids that were not above every earlier id when they arrived.
    unsorted: IdMap<u64, TransferRecord>,
    /// The sum of `unsorted`'s records' hashes.
    unsorted_sum: u64,
    /// Pending transfers still holding their amounts.
    pending: u64,
}

impl Transfers {
    pub(crate) fn with_capacity(records: usize) -> Self {
        Self {
            chunks: Vec::with_capacity(records / CHUNK + 1),
            tail: Vec::with_capacity(TAIL),
            ..Self::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.sorted + self.unsorted.len()
    }

    pub(crate) fn pending_count(&self) -> u64 {
        self.pending
    }

    fn max_id(&self) -> u64 {
        self.tail
            .last()
            .or_else(|| self.chunks.last().and_then(|chunk| chunk.last()))
            .map_or(0, |record| record.id)
    }

    /// The sorted records in id order.
    fn sorted_records(&self) -> impl Iterator<Item = &TransferRecord> + Clone {
        self.chunks.iter().flat_map(|chunk| chunk.iter()).chain(&self.tail)
    }

    /// Records a new id (the caller has checked that it is not taken).
    pub(crate) fn push(&mut self, record: TransferRecord) {
        if record.status == Status::Pending {
            self.pending += 1;
        }
        if record.id <= self.max_id() {
            self.unsorted_sum = self.unsorted_sum.wrapping_add(record.hash());
            self.unsorted.insert(record.id, record);
            return;
        }
        self.sorted += 1;
        if self.tail.len() == TAIL {
            self.move_tail();
        }
        self.tail.push(record);
    }

    /// Moves the tail's records to the chunks, filling the last one first.
    fn move_tail(&mut self) {
        let mut records = &self.tail[..];
        while !records.is_empty() {
            match self.chunks.last_mut() {
                Some(chunk) if chunk.len() < CHUNK => {
                    let (now, later) = records.split_at(records.len().min(CHUNK - chunk.len()));
                    unshared(chunk).extend_from_slice(now);
                    records = later;
                }
                _ => self.chunks.push(Arc::new(new_chunk())),
            }
        }
        self.tail.clear();
    }

    /// Where `id`'s sorted record is. Most lookups (posts, voids and retries) name a recent
    /// transfer, so the last chunk is tried before the chunks are bisected.
    fn locate(&self, id: u64) -> Option<Place> {
        if self.tail.first().is_some_and(|first| first.id <= id) {
            return find(&self.tail, id).map(Place::Tail);
        }
        let chunk = match self.chunks.last() {
            Some(last) if last[0].id <= id => self.chunks.len() - 1,
            _ => self.chunks.partition_point(|chunk| chunk[chunk.len() - 1].id < id),
        };
        let position = find(self.chunks.get(chunk)?, id)?;
        Some(Place::Chunk(chunk, position))
    }

    pub(crate) fn get(&self, id: u64) -> Option<&TransferRecord> {
        if id > self.max_id() {
            return None;
        }
        if let Some(record) = self.unsorted.get(&id) {
            return Some(record);
        }
        match self.locate(id)? {
            Place::Tail(position) => Some(&self.tail[position]),
            Place::Chunk(chunk, position) => Some(&self.chunks[chunk][position]),
        }
    }

    /// Changes the status of a pending transfer (which exists).
    pub(crate) fn set_status(&mut self, id: u64, status: Status) {
        // The sum the record's hash is part of, when one is kept.
        let (record, sum) = match self.unsorted.get_mut(&id) {
            Some(record) => (record, Some(&mut self.unsorted_sum)),
            None => match self.locate(id).expect("the record exists") {
                Place::Tail(position) => (&mut self.tail[position], None),
                Place::Chunk(chunk, position) => (
                    &mut unshared(&mut self.chunks[chunk])[position],
                    self.chunk_sums
                        .get_mut()
                        .get_mut(chunk)
                        .filter(|(_, counted)| position < *counted)
                        .map(|(sum, _)| sum),
                ),
            },
        };
        debug_assert_eq!(record.status, Status::Pending);
        let before = record.hash();
        record.status = status;
        if let Some(sum) = sum {
            *sum = sum.wrapping_sub(before).wrapping_add(record.hash());
        }
        self.pending -= 1;
    }

    /// Bytes held: the chunks' and the tail's capacity and the map's table.
    pub(crate) fn memory(&self) -> usize {
        let chunks = self.chunks.iter().map(|chunk| chunk.capacity()).sum::<usize>();
        (chunks + self.tail.capacity()) * std::mem::size_of::<TransferRecord>()
            + table_bytes(&self.unsorted)
            + self.chunks.capacity() * std::mem::size_of::<Arc<Vec<TransferRecord>>>()
    }

    /// The records in a deterministic order: the sorted ones, then the others by id.
    fn unsorted_by_id(&self) -> Vec<&TransferRecord> {
        let mut records: Vec<_> = self.unsorted.values().collect();
        records.sort_unstable_by_key(|record| record.id);
        records
    }

    /// The wrapping sum of every record's hash: the kept chunk sums, brought up to date with
    /// the records appended to the chunks since they were counted, the tail's and the
    /// out-of-order records'.
    fn sum_of_hashes(&self) -> u64 {
        let mut sums = self.chunk_sums.borrow_mut();
        // Only the last chunk counted may have grown since; later chunks are new.
        for (index, chunk) in self.chunks.iter().enumerate().skip(sums.len().saturating_sub(1)) {
            if index == sums.len() {
                sums.push((0, 0));
            }
            let (sum, counted) = &mut sums[index];
            *sum = sum.wrapping_add(hash_sum(&chunk[*counted..]));
            *counted = chunk.len();
        }
        sums.iter()
            .fold(self.unsorted_sum, |total, &(sum, _)| total.wrapping_add(sum))
            .wrapping_add(hash_sum(&self.tail))
    }

    /// Mixes the history into a state digest: its counts and the sum of its records' hashes,
    /// the same however the records are cut into chunks (a decoded snapshot's may be cut
    /// otherwise than the history it was taken of).
    pub(crate) fn digest(&self, digest: &mut Digest) {
        digest.words(&[
            self.sorted as u64,
            self.unsorted.len() as u64,
            self.pending,
            self.sum_of_hashes(),
        ]);
    }
}

/// Where a sorted record is: in a chunk (chunk, position), or in the tail.
enum Place {
    Chunk(usize, usize),
    Tail(usize),
}

/// The position of `id` in `records` (sorted by id, no id twice). The ids are distinct
/// integers in ascending order, so a record sits at most its id's distance from the first
/// record, and at least as far from the end as the last id's distance from it. Without gaps
/// in the ids (every id taken became a record) those two bounds are the same place, found
/// with one look; with gaps the search stays between them, nearby lines instead of a chunk's
/// 768 KiB. Under the engine a bisection of the whole chunk missed the cache at most of its 14
/// steps (the journal's writes pass through the cache between lookups): 17 % of the engine
/// thread's samples in `ledger run --mix payments` over 100 000 accounts. A bisection of the
/// range between the bounds still took 6 % of all samples there; the guess below, 3.4 %.
fn find(records: &[TransferRecord], id: u64) -> Option<usize> {
    let (first, last) = (records.first()?.id, records.last()?.id);
    if id < first || id > last {
        return None;
    }
    let end = records.len() - 1;
    let highest = end.min((id - first).try_into().unwrap_or(usize::MAX));
    let lowest = end.saturating_sub((last - id).try_into().unwrap_or(usize::MAX));
    if highest == lowest {
        return (records[highest].id == id).then_some(highest);
    }
    // The record lies as many places above `lowest` as there are gaps in the ids after it.
    // Taking the gaps as spread evenly over the records' ids gives a guess that is off by a
    // few places, a line or two away, where a bisection of the whole range would look at lines
    // up to the range's width apart (a range is as wide as the records' gaps: hundreds of places
    // in a chunk of the payments mix).
    let gaps = (highest - lowest) as u128;
    let after = u128::from(last - id) * gaps / u128::from(last - first);
    let guess = lowest + after as usize;
    let guessed = records[guess].id;
    // From the guess, steps of 1, 2, 4, … toward the record until one passes it; then a
    // bisection of the last step.
    let (below, above) = match guessed.cmp(&id) {
        Ordering::Equal => return Some(guess),
        Ordering::Less => {
            let (mut below, mut step) = (guess, 1);
            loop {
                let next = (below + step).min(highest);
                if records[next].id >= id {
                    break (below + 1, next);
                }
                if next == highest {
                    return None;
                }
                below = next;
                step *= 2;
            }
        }
        Ordering::Greater => {
            let (mut above, mut step) = (guess, 1);
            loop {
                let next = above.saturating_sub(step).max(lowest);
                if records[next].id <= id {
                    break (next, above - 1);
                }
                if next == lowest {
                    return None;
                }
                above = next;
                step *= 2;
            }
        }
    };
    let range = &records[below..=above];
    range.binary_search_by_key(&id, |record| record.id).ok().map(|position| below + position)
}

/// The chunk, copied first if a snapshot's copy still shares it, with room for a full chunk
/// (a plain `Arc::make_mut` would copy it with no room to grow).
fn unshared(chunk: &mut Arc<Vec<TransferRecord>>) -> &mut Vec<TransferRecord> {
    if Arc::get_mut(chunk).is_none() {
        let mut copy = new_chunk();
        copy.extend_from_slice(chunk);
        *chunk = Arc::new(copy);
    }
    Arc::make_mut(chunk)
}

/// Chunks the preparer has made ready, at most: two, 1.5 MiB. A chunk lasts 16 Ki transfers,
/// a few milliseconds at the rates the ledger reaches. When the other core is saturated (the
/// gateway, the journal's spare segment and this preparer share it) the preparer falls behind
/// whatever the stock, and a stock of eight measured no better: `ledger run` 1.02×, 6 of 10
/// rounds faster.
const SPARE_CHUNKS: usize = 2;

/// An empty chunk with room for [`CHUNK`] records: one the preparer made ready when there is
/// one, else a new allocation.
///
/// A new chunk's memory is fresh from the system, and the first write to each of its pages is
/// a page fault that zeroes it (on the project's VM, a fault the host serves too): about a
/// fifth to a third of the engine thread's time under `ledger run` with transfers only, where
/// the history grows by 48 bytes a transfer (BENCHMARKS.md). A thread of the process's own
/// (`ledger-chunks`, started by the first chunk asked for) writes every page of the next chunks
/// ahead of time, so that those faults are taken on the other core; the engine thread takes a
/// ready chunk without waiting, or allocates one itself when none is ready. Which one it gets
/// changes nothing but where the page faults happen: the chunk is empty with the same room
/// either way, so the state, its hash and its snapshots are the same.
fn new_chunk() -> Vec<TransferRecord> {
    let ready = spare_chunks().lock().ok().and_then(|receiver| receiver.try_recv().ok());
    ready.unwrap_or_else(|| Vec::with_capacity(CHUNK))
}

/// The ready chunks, from the preparer started on the first call. Every ledger in the process
/// shares it. If the thread cannot be started, its sender is dropped with the closure, the
/// channel is disconnected, and every chunk is allocated where it is needed, as without it.
fn spare_chunks() -> &'static Mutex<Receiver<Vec<TransferRecord>>> {
    static SPARES: OnceLock<Mutex<Receiver<Vec<TransferRecord>>>> = OnceLock::new();
    SPARES.get_or_init(|| {
        let (sender, receiver) = sync_channel(SPARE_CHUNKS);
        let _ = std::thread::Builder::new().name("ledger-chunks".into()).spawn(move || {
            // Writing every record writes every page; the records are dropped again, and the
            // chunk keeps its room and its pages.
            let filler = TransferRecord::request(Kind::Single, 0, 0, 0, 0, 0, 0);
            loop {
                let mut chunk = std::hint::black_box(vec![filler; CHUNK]);
                chunk.clear();
                if sender.send(chunk).is_err() {
                    break;
                }
            }
        });
        Mutex::new(receiver)
    })
}

/// A sequence of records of known length, serialized without collecting them.
struct Records<'a, I: Iterator<Item = &'a TransferRecord> + Clone> {
    len: usize,
    records: I,
}

impl<'a, I: Iterator<Item = &'a TransferRecord> + Clone> Serialize for Records<'a, I> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut sequence = serializer.serialize_seq(Some(self.len))?;
        for record in self.records.clone() {
            sequence.serialize_element(record)?;
        }
        sequence.end()
    }
}

impl Serialize for Transfers {
    /// Two sequences: the sorted records in id order, then the others in id order. The
    /// chunks are not part of the format.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let sorted = Records { len: self.sorted, records: self.sorted_records() };
        let others = self.unsorted_by_id();
        let unsorted = Records { len: others.len(), records: others.iter().copied() };
        (sorted, unsorted).serialize(serializer)
    }
}

/// The sorted records, read straight into chunks.
struct Chunks(Vec<Arc<Vec<TransferRecord>>>, usize);

impl<'de> Deserialize<'de> for Chunks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ChunksVisitor;

        impl<'de> Visitor<'de> for ChunksVisitor {
            type Value = Chunks;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("transfer records in ascending id order")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut records: A) -> Result<Chunks, A::Error> {
                let mut chunks: Vec<Arc<Vec<TransferRecord>>> = Vec::new();
                // The preparer's chunks, as the live history's: their pages are faulted in on
                // the other core while this one decodes.
                let mut current = new_chunk();
                let mut count = 0usize;
                let mut last_id = 0u64;
                while let Some(record) = records.next_element::<TransferRecord>()? {
                    if record.id <= last_id {
                        return Err(serde::de::Error::custom(format!(
                            "transfer {} follows transfer {last_id}: the sorted records are \
                             out of order",
                            record.id
                        )));
                    }
                    last_id = record.id;
                    if current.len() == CHUNK {
                        chunks.push(Arc::new(std::mem::replace(&mut current, new_chunk())));
                    }
                    current.push(record);
                    count += 1;
                }
                if !current.is_empty() {
                    chunks.push(Arc::new(current));
                }
                Ok(Chunks(chunks, count))
            }
        }

        deserializer.deserialize_seq(ChunksVisitor)
    }
}

impl<'de> Deserialize<'de> for Transfers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (Chunks(chunks, sorted), others): (Chunks, Vec<TransferRecord>) =
            Deserialize::deserialize(deserializer)?;
        let mut unsorted: IdMap<u64, TransferRecord> = HashMap::default();
        unsorted.reserve(others.len());
        let mut pending = 0;
        let max_id = chunks.last().and_then(|chunk| chunk.last()).map_or(0, |record| record.id);
        for record in others {
            // An id above the sorted ones would never be looked for among the others.
            if record.id >= max_id {
                return Err(serde::de::Error::custom(format!(
                    "transfer {} is kept apart from the sorted records but is not below them",
                    record.id
                )));
            }
            if unsorted.insert(record.id, record).is_some() {
                return Err(serde::de::Error::custom(format!(
                    "transfer {} appears twice",
                    record.id
                )));
            }
        }
        for record in chunks.iter().flat_map(|chunk| chunk.iter()).chain(unsorted.values()) {
            pending += u64::from(record.status == Status::Pending);
        }
        let unsorted_sum = hash_sum(unsorted.values());
        let tail = Vec::with_capacity(TAIL);
        let chunk_sums = RefCell::default();
        Ok(Self { chunks, chunk_sums, tail, sorted, unsorted, unsorted_sum, pending })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64) -> TransferRecord {
        TransferRecord::request(Kind::Single, id, 1, 2, id, 1, 0)
    }

    #[test]
    fn find_looks_between_the_bounds_the_ids_give_and_finds_what_bisection_finds() {
        let mut rng = crate::rng::SplitMix64::new(11);
        // No gaps, a few, many, and more gaps than ids: the one-look case and the bisected
        // one, with the bounds at and away from the ends.
        for gap_per_mille in [0, 10, 300, 900] {
            for length in [1, 2, 3, 17, 256, 1000] {
                let mut ids = Vec::with_capacity(length);
                let mut id = 1 + rng.below(5);
                for _ in 0..length {
                    ids.push(id);
                    id += 1;
                    while rng.chance(gap_per_mille) {
                        id += 1 + rng.below(3);
                    }
                }
                let records: Vec<_> = ids.iter().map(|&id| record(id)).collect();
                for probe in 0..=id + 1 {
                    let expected = ids.binary_search(&probe).ok();
                    assert_eq!(
                        find(&records, probe),
                        expected,
                        "id {probe} of {length} records, gaps {gap_per_mille}‰"
                    );
                }
            }
        }
        // Gaps bunched in one place, where a guess that takes them as spread evenly is far
        // off: at the start, in the middle and at the end of the records' ids.
        for length in [2, 3, 64, 1000] {
            for hole_at in [0, length / 2, length - 1] {
                for hole in [1, 7, 500] {
                    let ids: Vec<u64> = (1..=length as u64)
                        .map(|n| if n > hole_at as u64 { n + hole } else { n })
                        .collect();
                    let records: Vec<_> = ids.iter().map(|&id| record(id)).collect();
                    for probe in 0..=ids[length - 1] + 1 {
                        let expected = ids.binary_search(&probe).ok();
                        assert_eq!(find(&records, probe), expected, "id {probe} of {ids:?}");
                    }
                }
            }
        }
        assert_eq!(find(&[], 1), None);
    }

    #[test]
    fn finds_every_record_in_and_out_of_order_across_chunks() {
        let mut transfers = Transfers::default();
        // Ascending ids with gaps, then a few below the maximum.
        let ids: Vec<u64> = (1..=(3 * CHUNK as u64 + 17)).map(|n| n * 3).collect();
        for &id in &ids {
            transfers.push(record(id));
        }
        for id in [1, 2, 4, 5000] {
            transfers.push(record(id));
        }
        assert_eq!(transfers.len(), ids.len() + 4);
        // The tail moves into the chunks a full tail at a time: 48 moves fill three chunks.
        assert_eq!(transfers.chunks.len(), 3);
        assert_eq!(transfers.tail.len(), 17);
        for &id in ids.iter().chain(&[1, 2, 4, 5000]) {
            assert_eq!(transfers.get(id).map(|record| record.id), Some(id), "id {id}");
        }
        for id in [0, 7, 3 * (3 * CHUNK as u64 + 17) + 1, u64::MAX] {
            assert!(transfers.get(id).is_none(), "id {id}");
        }
    }

    #[test]
    fn a_copy_shares_chunks_until_one_changes() {
        let mut transfers = Transfers::default();
        for id in 1..=(2 * CHUNK as u64) {
            let mut pending = record(id);
            pending.kind = Kind::Pending;
            pending.status = Status::Pending;
            transfers.push(pending);
        }
        let copy = transfers.clone();
        assert!(Arc::ptr_eq(&copy.chunks[0], &transfers.chunks[0]));
        transfers.set_status(5, Status::Posted);
        assert!(!Arc::ptr_eq(&copy.chunks[0], &transfers.chunks[0]), "written chunk copied");
        assert!(Arc::ptr_eq(&copy.chunks[1], &transfers.chunks[1]), "the other still shared");
        assert_eq!(copy.get(5).map(|record| record.status), Some(Status::Pending));
        assert_eq!(transfers.get(5).map(|record| record.status), Some(Status::Posted));
        assert_eq!(transfers.pending_count(), 2 * CHUNK as u64 - 1);
        assert_eq!(copy.pending_count(), 2 * CHUNK as u64);

        // The tail is the copy's own; the moved tail copies the shared chunk it fills.
        let last = 2 * CHUNK as u64;
        assert_eq!(transfers.tail.last().map(|record| record.id), Some(last));
        transfers.set_status(last, Status::Voided);
        transfers.push(record(last + 1));
        assert!(!Arc::ptr_eq(&copy.chunks[1], &transfers.chunks[1]), "filled chunk copied");
        assert_eq!(transfers.chunks[1].len(), CHUNK);
        assert_eq!(copy.chunks[1].len(), CHUNK - TAIL);
        assert_eq!(copy.get(last).map(|record| record.status), Some(Status::Pending));
        assert_eq!(transfers.get(last).map(|record| record.status), Some(Status::Voided));
        assert_eq!(copy.get(last + 1), None);
        assert_eq!(transfers.get(last + 1).map(|record| record.id), Some(last + 1));
    }

    #[test]
    fn chunks_are_made_ready_off_the_thread_empty_and_with_a_chunks_room() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        // The first chunk asked for starts the preparer; it soon has one ready.
        let chunk = new_chunk();
        assert!(chunk.is_empty() && chunk.capacity() >= CHUNK);
        let ready = loop {
            if let Ok(chunk) = spare_chunks().lock().unwrap().try_recv() {
                break chunk;
            }
            assert!(std::time::Instant::now() < deadline, "no chunk made ready");
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert!(ready.is_empty() && ready.capacity() >= CHUNK);
        // The same room as a chunk allocated on the spot: which one a history gets changes
        // nothing it holds or reports.
        let on_the_spot = Vec::<TransferRecord>::with_capacity(CHUNK);
        assert_eq!(ready.capacity(), on_the_spot.capacity());
    }

    fn digest(transfers: &Transfers) -> u64 {
        let mut digest = Digest::new();
        transfers.digest(&mut digest);
        digest.finish()
    }

    /// The same history decoded from its encoding: its hash is computed afresh.
    fn decoded(transfers: &Transfers) -> Transfers {
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(transfers, config).expect("encodes");
        bincode::serde::decode_from_slice(&bytes, config).expect("decodes").0
    }

    #[test]
    fn the_kept_hash_sums_follow_every_change_and_equal_a_fresh_walk() {
        let mut transfers = Transfers::default();
        let pending = |id: u64| {
            let mut record = record(id);
            record.kind = Kind::Pending;
            record.status = Status::Pending;
            record
        };
        for id in 100..(3 * CHUNK as u64 + 400) {
            transfers.push(pending(id));
        }
        for id in [7, 3, 50] {
            transfers.push(pending(id));
        }
        let before = digest(&transfers);
        let counted: Vec<usize> = transfers.chunk_sums.borrow().iter().map(|&(_, n)| n).collect();
        assert_eq!(counted, [CHUNK, CHUNK, CHUNK, TAIL], "every chunk's records are counted");
        assert_eq!(before, digest(&decoded(&transfers)));

        // A status change in a kept chunk, in the last chunk, in the tail and among the
        // out-of-order records: each changes the hash, and the kept sums stay those a walk
        // gives.
        let tail_id = transfers.tail[0].id;
        let mut previous = before;
        for (id, status) in [
            (100, Status::Posted),
            (CHUNK as u64 + 150, Status::Voided),
            (3 * CHUNK as u64 + 150, Status::Expired),
            (tail_id, Status::Posted),
            (3, Status::Voided),
        ] {
            transfers.set_status(id, status);
            let now = digest(&transfers);
            assert_ne!(now, previous, "the change of {id} shows");
            assert_eq!(now, digest(&decoded(&transfers)), "after the change of {id}");
            previous = now;
        }

        // A copy keeps the sums; the same changes on both keep them equal, and apart from a
        // copy that did not change.
        let copy = transfers.clone();
        let mut changed = transfers.clone();
        changed.set_status(101, Status::Posted);
        for transfers in [&mut transfers, &mut changed] {
            for id in (3 * CHUNK as u64 + 400)..(5 * CHUNK as u64 + 10) {
                transfers.push(pending(id));
            }
            // Records appended to the last counted chunk, and to a new one, not counted yet.
            transfers.set_status(3 * CHUNK as u64 + 500, Status::Posted);
            transfers.set_status(4 * CHUNK as u64 + 500, Status::Voided);
        }
        assert_eq!(transfers.chunk_sums.borrow().len(), 4);
        assert_eq!(digest(&transfers), digest(&decoded(&transfers)));
        assert_eq!(transfers.chunk_sums.borrow().len(), 5);
        assert_eq!(digest(&changed), digest(&decoded(&changed)));
        assert_ne!(digest(&transfers), digest(&changed));
        assert_eq!(digest(&copy), previous);
    }

    #[test]
    fn survives_an_encoding_round_trip_and_rejects_disorder() {
        let mut transfers = Transfers::default();
        for id in (10..(CHUNK as u64 + 100)).chain([3, 1, 2]) {
            transfers.push(record(id));
        }
        let config = bincode::config::standard();
        let decoded = decoded(&transfers);
        assert_eq!(digest(&decoded), digest(&transfers));
        assert_eq!(decoded.len(), transfers.len());
        assert_eq!(decoded.get(2), transfers.get(2));

        // The decoded history keeps its records in chunks of another length than the
        // original's tail did; the same appends keep them equal.
        let mut decoded = decoded;
        for id in (CHUNK as u64 + 100)..(3 * CHUNK as u64) {
            transfers.push(record(id));
            decoded.push(record(id));
        }
        assert_eq!(digest(&decoded), digest(&transfers));
        assert!(decoded.chunks.iter().all(|chunk| chunk.len() <= CHUNK));
        for id in [1, 10, CHUNK as u64 + 99, CHUNK as u64 + 100, 3 * CHUNK as u64 - 1] {
            assert_eq!(decoded.get(id), transfers.get(id), "id {id}");
            assert!(decoded.get(id).is_some(), "id {id}");
        }

        let disordered: (Vec<TransferRecord>, Vec<TransferRecord>) =
            (vec![record(5), record(4)], Vec::new());
        let bytes = bincode::serde::encode_to_vec(&disordered, config).expect("encodes");
        let error = bincode::serde::decode_from_slice::<Transfers, _>(&bytes, config)
            .expect_err("out of order");
        assert!(error.to_string().contains("out of order"), "{error}");
    }
}
