//! Hashing that is the same on every machine and every run: the account index's hasher and
//! the state digest. `std`'s `RandomState` is seeded per process, which is harmless for
//! lookups but would make anything that iterates a map differ between a primary and its
//! replay; keel's examples use neither its seed nor its iteration order.

use std::cell::RefCell;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

/// A multiply-fold hasher for integer keys: one 64×64→128-bit multiply, the halves folded,
/// so that both the low bits (the bucket) and the high bits (the table's tag) depend on every
/// bit of the key. Keys are ids chosen by clients; a client that picks ids to collide slows
/// its own lookups, it cannot change an outcome (`docs/ARCHITECTURE.md`).
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// One 64×64→128-bit multiply by [`MULTIPLIER`], the halves folded together.
#[inline]
pub(crate) fn fold(value: u64) -> u64 {
    let product = u128::from(value) * u128::from(MULTIPLIER);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.0 = fold(self.0 ^ value);
    }

    #[inline]
    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`IdHasher`]s: the `S` of a deterministic `HashMap`.
pub type IdHash = BuildHasherDefault<IdHasher>;

/// A `HashMap` keyed by integer ids, hashed the same way everywhere.
pub type IdMap<K, V> = std::collections::HashMap<K, V, IdHash>;

/// The bytes a `HashMap`'s table holds, from its capacity: a power of two of buckets, at most
/// 7/8 full, each an entry and a control byte (hashbrown's layout).
pub fn table_bytes<K, V, S>(map: &std::collections::HashMap<K, V, S>) -> usize {
    let buckets = match map.capacity() {
        0 => 0,
        capacity => (capacity * 8 / 7).next_power_of_two(),
    };
    buckets * (std::mem::size_of::<(K, V)>() + 1)
}

/// An id → slot index for ids that are mostly small: accounts numbered from 1, as most systems
/// number them. An id below [`DENSE_IDS`] is found by position in a vector, one load from a
/// table of four bytes an id; any other id, in an [`IdMap`]. With 100 000 accounts the vector
/// is 400 KB where the map's table was 2.2 MB, and a lookup reads one line of it, not a control
/// group and then a bucket: the difference between the index staying in the core's cache or
/// not, on a path that looks up two accounts a transfer.
///
/// The vector grows to the highest dense id seen (doubling, at most [`DENSE_IDS`] entries,
/// 16 MiB): a client that opens one account with a large dense id costs that memory, bounded.
#[derive(Clone, Debug, Default)]
pub struct IdIndex {
    /// Slot by id, [`ABSENT`] where there is none.
    dense: Vec<u32>,
    sparse: IdMap<u64, u32>,
    len: usize,
}

/// Ids below this are indexed by position.
pub const DENSE_IDS: u64 = 1 << 22;

/// "No slot" in the dense vector.
const ABSENT: u32 = u32::MAX;

impl IdIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for ids 1 to `ids` without growing (and pausing the engine for the copy): the
    /// dense part is sized for them, as for accounts numbered from 1.
    pub fn reserve(&mut self, ids: usize) {
        let wanted = (ids as u64 + 1).min(DENSE_IDS) as usize;
        if wanted > self.dense.len() {
            self.dense.resize(wanted, ABSENT);
        }
    }

    /// The slot of `id`.
    #[inline]
    pub fn get(&self, id: u64) -> Option<u32> {
        if id < DENSE_IDS {
            match self.dense.get(id as usize) {
                Some(&slot) if slot != ABSENT => Some(slot),
                _ => None,
            }
        } else {
            self.sparse.get(&id).copied()
        }
    }

    /// Asks for the line that holds `id`'s entry, if it is a dense id inside the vector (a
    /// sparse id's place in the map is not known without reading the map).
    #[inline]
    pub fn prefetch(&self, id: u64) {
        if id < DENSE_IDS {
            if let Some(entry) = self.dense.get(id as usize) {
                keel_engine::prefetch(entry);
            }
        }
    }

    /// Indexes `id` at `slot` (below `u32::MAX`), replacing any slot it had.
    pub fn insert(&mut self, id: u64, slot: u32) {
        assert_ne!(slot, ABSENT, "slot {ABSENT} is reserved");
        let previous = if id < DENSE_IDS {
            let position = id as usize;
            if position >= self.dense.len() {
                let grown = (position + 1).max(self.dense.len() * 2).min(DENSE_IDS as usize);
                self.dense.resize(grown, ABSENT);
            }
            std::mem::replace(&mut self.dense[position], slot) != ABSENT
        } else {
            self.sparse.insert(id, slot).is_some()
        };
        if !previous {
            self.len += 1;
        }
    }

    /// How many ids are indexed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no id is indexed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes its tables hold, from their capacities.
    pub fn bytes(&self) -> usize {
        self.dense.capacity() * std::mem::size_of::<u32>() + table_bytes(&self.sparse)
    }
}

/// A running 64-bit digest of a sequence of words, for state hashes. Order matters: feeding
/// the same words in another order gives another digest. Not cryptographic: it detects
/// divergence, it does not resist an adversary.
#[derive(Clone, Copy, Debug)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Self::new()
    }
}

impl Digest {
    /// An empty digest.
    pub const fn new() -> Self {
        Self(0x6a09_e667_f3bc_c908)
    }

    /// Mixes in one word.
    #[inline]
    pub fn word(&mut self, value: u64) {
        self.0 = fold(self.0 ^ value).rotate_left(23) ^ value;
    }

    /// Mixes in several words.
    #[inline]
    pub fn words(&mut self, values: &[u64]) {
        for &value in values {
            self.word(value);
        }
    }

    /// The digest so far, finalized (another word may still be mixed in after).
    pub fn finish(&self) -> u64 {
        avalanche(self.0)
    }
}

/// Spreads every bit of `value` over the whole word (MurmurHash3's finalizer).
#[inline]
fn avalanche(mut value: u64) -> u64 {
    value ^= value >> 33;
    value = value.wrapping_mul(0xff51_afd7_ed55_8ccd);
    value ^= value >> 33;
    value = value.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    value ^ (value >> 33)
}

/// A key per word position of [`hash_words`], so that the same words in other positions hash
/// differently.
const POSITION_KEYS: [u64; 8] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
    0xbe54_66cf_34e9_0c6c,
    0xc0ac_29b7_c97c_50dd,
    0x3f84_d5b5_b547_0917,
];

/// A hash of a record of a few words, as one value: for a state that keeps a digest of a
/// collection as a wrapping sum of its items' hashes, which an item's change adjusts by
/// subtracting its old hash and adding its new one, and which does not depend on the order the
/// items are summed in. Each word's multiply is independent of the others', so the processor
/// runs them side by side; a [`Digest`] chains them. Not cryptographic, as `Digest` is not.
#[inline]
pub fn hash_words(words: &[u64]) -> u64 {
    let mut sum = 0u64;
    for (position, &word) in words.iter().enumerate() {
        sum = sum.wrapping_add(fold(word ^ POSITION_KEYS[position % POSITION_KEYS.len()]));
    }
    avalanche(sum ^ words.len() as u64)
}

/// A digest of a slab (items found by position, in a `Vec` that only grows), kept as the
/// wrapping sum of one hash per slot and brought up to date only when asked for: the owner
/// marks a slot when it changes the item there, and [`SlotHashes::sum`] hashes again the marked
/// slots and the slots added since the last sum, subtracting what each one counted before. A
/// state hash then costs the changes since the previous one, not a walk of the state, and a
/// state machine that is never asked for a hash pays a comparison per mark.
///
/// The slot's position must be among the words its hash is made of, so that two items trading
/// places change the sum. Marks are not deduplicated (a slot changed twice is hashed twice, the
/// second time to no effect). When more marks pile up than half the slab's slots, they are
/// dropped and the next sum hashes every slot, which costs no more than the marks would (a
/// marked slot is a scattered read, and often a repeat; a walk reads the slab in order): the
/// list, and its memory, stays bounded by the slab's size. A new value is in that state (as is
/// one after [`SlotHashes::forget`]), so a copy or a decoded state that starts from it hashes
/// everything once.
#[derive(Clone, Debug, Default)]
pub struct SlotHashes {
    /// Each slot's hash, as counted in `sum`.
    hashes: Vec<u64>,
    sum: u64,
    /// The slots changed since the last sum.
    marked: Vec<u32>,
    /// How many marks may pile up before hashing every slot is cheaper; 0 while the next sum
    /// must hash every slot anyway.
    room: usize,
}

/// How many marks ahead a sum asks for a marked slot's memory.
const MARKS_AHEAD: usize = 8;

/// The marks that may pile up, per slot of the slab, as a fraction: half a slot's. Measured on
/// the ledger with 1 000 accounts and a hash every 1 000 transfers (2 000 marks): re-hashing the
/// marks took a quarter more instructions than a walk.
const MARK_ROOM_DIVISOR: usize = 2;

impl SlotHashes {
    /// Whether marks are kept: not before the first sum (nor after a `forget`), so that a
    /// state never asked for a hash pays this one test per change, not a slot's computation.
    #[inline(always)]
    pub fn keeping(&self) -> bool {
        self.room != 0
    }

    /// Notes that the item in `slot` changed (or appeared, or went). Past four billion slots a
    /// slot does not fit a mark, and the next sum walks instead.
    #[inline(always)]
    pub fn mark(&mut self, slot: u64) {
        if self.keeping() {
            match u32::try_from(slot) {
                Ok(slot) if self.marked.len() < self.room => self.marked.push(slot),
                _ => self.forget(),
            }
        }
    }

    /// Makes the next sum hash every slot: for a change that moves every slot's hash, or marks
    /// too many to keep.
    #[cold]
    pub fn forget(&mut self) {
        self.room = 0;
        self.marked.clear();
    }

    /// The bytes it holds, from its capacities.
    pub fn bytes(&self) -> usize {
        self.hashes.capacity() * std::mem::size_of::<u64>()
            + self.marked.capacity() * std::mem::size_of::<u32>()
    }

    /// The sum of `hash(slot)` over the `len` slots, hashing only the slots marked or added
    /// since the last sum (all of them the first time). Every slot that changed since must
    /// have been marked, or the sum counts its old hash. `hint(slot)` is called a few marks
    /// before `hash(slot)`, to ask for the memory the hash will read.
    pub fn sum(
        &mut self,
        len: usize,
        mut hash: impl FnMut(usize) -> u64,
        mut hint: impl FnMut(usize),
    ) -> u64 {
        if self.room == 0 || len < self.hashes.len() {
            self.hashes.clear();
            self.hashes.extend((0..len).map(&mut hash));
            self.sum = self.hashes.iter().fold(0, |sum, &hash| sum.wrapping_add(hash));
        } else {
            for slot in self.hashes.len()..len {
                let hash = hash(slot);
                self.hashes.push(hash);
                self.sum = self.sum.wrapping_add(hash);
            }
            // The marked slots are scattered over the slab and its hashes: each is asked for
            // a few marks before it is read, so that their misses overlap.
            for (index, &slot) in self.marked.iter().enumerate() {
                if let Some(&ahead) = self.marked.get(index + MARKS_AHEAD) {
                    let ahead = ahead as usize;
                    hint(ahead);
                    if let Some(kept) = self.hashes.get(ahead) {
                        keel_engine::prefetch(kept);
                    }
                }
                let slot = slot as usize;
                let hash = hash(slot);
                self.sum = self.sum.wrapping_sub(self.hashes[slot]).wrapping_add(hash);
                self.hashes[slot] = hash;
            }
        }
        self.marked.clear();
        // The list's whole room is taken now, so that marking allocates nothing.
        self.room = len / MARK_ROOM_DIVISOR;
        self.marked.reserve(self.room);
        self.sum
    }
}

/// A `Vec` that keeps a [`SlotHashes`] over its items, and marks an item's slot whenever it is
/// handed out to be changed (`IndexMut`, [`MarkedVec::get_mut`]): the items of a state whose
/// hash sums theirs, changed in place at random (the ledger's accounts, the exchange's order
/// slots). There is no other way to change an item but [`MarkedVec::unmarked_mut`], for what
/// the hash leaves out, so a change cannot escape the hash by a forgotten mark. Encoded as the
/// bare list; a copy made by `clone_from` (a snapshot's) and a decoded one hash every item once.
#[derive(Debug)]
pub struct MarkedVec<T> {
    items: Vec<T>,
    /// Behind a `RefCell` because a state hash (which takes `&self`) brings them up to date.
    hashes: RefCell<SlotHashes>,
}

impl<T> Default for MarkedVec<T> {
    fn default() -> Self {
        Self::from(Vec::new())
    }
}

impl<T> From<Vec<T>> for MarkedVec<T> {
    fn from(items: Vec<T>) -> Self {
        Self { items, hashes: RefCell::default() }
    }
}

impl<T: Clone> Clone for MarkedVec<T> {
    fn clone(&self) -> Self {
        Self { items: self.items.clone(), hashes: self.hashes.clone() }
    }

    /// Copies the items into the existing allocation, not the kept hashes: a snapshot's copy
    /// (the user of `clone_from`) is encoded, and hashed at most once, which walks it.
    fn clone_from(&mut self, source: &Self) {
        self.items.clone_from(&source.items);
        self.hashes.get_mut().forget();
    }
}

impl<T: Serialize> Serialize for MarkedVec<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.items.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MarkedVec<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::deserialize(deserializer).map(Self::from)
    }
}

impl<T> std::ops::Deref for MarkedVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.items
    }
}

impl<T> std::ops::Index<usize> for MarkedVec<T> {
    type Output = T;

    #[inline]
    fn index(&self, slot: usize) -> &T {
        &self.items[slot]
    }
}

impl<T> std::ops::IndexMut<usize> for MarkedVec<T> {
    /// The item, to change: its slot is marked.
    #[inline]
    fn index_mut(&mut self, slot: usize) -> &mut T {
        self.get_mut(slot)
    }
}

impl<T> MarkedVec<T> {
    /// An empty vector with room for `capacity` items.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::from(Vec::with_capacity(capacity))
    }

    /// The item in `slot`, to change: its slot is marked.
    #[inline]
    pub fn get_mut(&mut self, slot: usize) -> &mut T {
        self.hashes.get_mut().mark(slot as u64);
        &mut self.items[slot]
    }

    /// The item in `slot`, to change without a mark: only for a part of it that the hash
    /// leaves out (the caller answers for that), on a path where the mark would be wasted.
    #[inline]
    pub fn unmarked_mut(&mut self, slot: usize) -> &mut T {
        &mut self.items[slot]
    }

    /// Appends an item. Its slot is past the last sum's end, so the next sum hashes it unmarked.
    pub fn push(&mut self, item: T) {
        self.items.push(item);
    }

    /// Makes room for `additional` more items.
    pub fn reserve(&mut self, additional: usize) {
        self.items.reserve(additional);
    }

    /// The items the allocation has room for.
    pub fn capacity(&self) -> usize {
        self.items.capacity()
    }

    /// The sum of `hash(slot, item)` over the items, hashing only those changed or added since
    /// the last sum (every one the first time). `hash` must have the slot among its words.
    pub fn sum(&self, hash: impl Fn(usize, &T) -> u64) -> u64 {
        let items = &self.items;
        self.hashes.borrow_mut().sum(
            items.len(),
            |slot| hash(slot, &items[slot]),
            |slot| keel_engine::prefetch(&items[slot]),
        )
    }

    /// The bytes the kept hashes hold.
    pub fn hash_bytes(&self) -> usize {
        self.hashes.borrow().bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn a_record_hash_sees_every_word_its_position_and_the_record_length() {
        let record = [1u64, 2, 3, 4, 5, 6];
        let hash = hash_words(&record);
        let mut seen = std::collections::BTreeSet::from([hash]);
        for position in 0..record.len() {
            for bit in [0, 17, 63] {
                let mut changed = record;
                changed[position] ^= 1 << bit;
                assert!(seen.insert(hash_words(&changed)), "word {position}, bit {bit}");
            }
        }
        assert_ne!(hash_words(&[1, 2]), hash_words(&[2, 1]), "positions count");
        assert_ne!(hash_words(&[0]), hash_words(&[0, 0]), "so does the length");
        // Equal records, equal hashes: a sum of them is a multiset's digest.
        assert_eq!(hash_words(&record), hash);
    }

    #[test]
    fn the_id_hasher_spreads_sequential_keys_over_buckets_and_tags() {
        let build = IdHash::default();
        let mut low = std::collections::BTreeSet::new();
        let mut high = std::collections::BTreeSet::new();
        for key in 0..1024u64 {
            let hash = build.hash_one(key);
            low.insert(hash & 1023);
            high.insert(hash >> 57);
        }
        // A perfect spread would fill all 1024 buckets; a poor hasher on sequential keys
        // piles them into a few. Random placement fills about 63%.
        assert!(low.len() > 550, "{} of 1024 buckets used", low.len());
        assert_eq!(high.len(), 128, "every 7-bit tag occurs");
    }

    #[test]
    fn the_id_index_finds_dense_and_sparse_ids_and_counts_each_once() {
        let mut index = IdIndex::new();
        assert_eq!((index.len(), index.get(0), index.get(7)), (0, None, None));
        assert_eq!(index.get(u64::MAX), None);
        let ids = [1, 2, 1_000, DENSE_IDS - 1, DENSE_IDS, DENSE_IDS + 1, u64::MAX, 0];
        for (slot, &id) in ids.iter().enumerate() {
            index.insert(id, slot as u32);
        }
        for (slot, &id) in ids.iter().enumerate() {
            assert_eq!(index.get(id), Some(slot as u32), "id {id}");
        }
        assert_eq!(index.len(), ids.len());
        // Neighbours of indexed ids are not indexed, on both sides of the boundary.
        for id in [3, 999, 1_001, DENSE_IDS - 2, DENSE_IDS + 2, u64::MAX - 1] {
            assert_eq!(index.get(id), None, "id {id}");
        }
        // A hint for any id, indexed or not, inside the dense vector or past it, or sparse,
        // reads nothing the index answers with.
        let before: Vec<_> = ids.iter().map(|&id| index.get(id)).collect();
        for id in [0, 3, 1_000, DENSE_IDS - 1, DENSE_IDS, u64::MAX, index.dense.len() as u64] {
            index.prefetch(id);
        }
        assert_eq!(ids.iter().map(|&id| index.get(id)).collect::<Vec<_>>(), before);
        assert_eq!(index.len(), ids.len());
        // Replacing a slot does not count the id twice.
        index.insert(1_000, 99);
        index.insert(DENSE_IDS, 98);
        assert_eq!((index.get(1_000), index.get(DENSE_IDS), index.len()), (Some(99), Some(98), 8));
        // The dense part never exceeds its bound, whatever the ids.
        assert!(index.dense.len() <= DENSE_IDS as usize);
        assert!(index.bytes() >= DENSE_IDS as usize * 4);
        let mut reserved = IdIndex::new();
        reserved.reserve(100_000);
        assert_eq!(
            (reserved.dense.len(), reserved.len(), reserved.get(100_000)),
            (100_001, 0, None)
        );
    }

    #[test]
    fn the_digest_depends_on_order_and_on_every_word() {
        let digest = |words: &[u64]| {
            let mut digest = Digest::new();
            digest.words(words);
            digest.finish()
        };
        assert_ne!(digest(&[1, 2]), digest(&[2, 1]));
        assert_ne!(digest(&[1, 2]), digest(&[1, 3]));
        assert_ne!(digest(&[0]), digest(&[0, 0]));
        assert_eq!(digest(&[7, 8, 9]), digest(&[7, 8, 9]));
        // A pinned value: the digest is part of the on-disk contract (snapshot metadata and
        // replicas compare it), so a change to it must be deliberate.
        assert_eq!(digest(&[1, 2, 3]), 0x1bf6_efc2_1c48_5022);
    }

    #[test]
    fn slot_hashes_sum_what_a_fresh_walk_sums_after_marks_growth_and_overflow() {
        // A slab of (value) items; slot hash: the slot and the value.
        let hash_of = |items: &[u64], slot: usize| hash_words(&[slot as u64, items[slot]]);
        let walk = |items: &[u64]| {
            (0..items.len()).fold(0u64, |sum, slot| sum.wrapping_add(hash_of(items, slot)))
        };
        let mut items: Vec<u64> = (0..100).collect();
        let mut kept = SlotHashes::default();
        assert_eq!(kept.sum(items.len(), |slot| hash_of(&items, slot), |_| ()), walk(&items));
        // Marked changes are counted; an unmarked one is not (the owner's contract), which is
        // what makes this test able to fail.
        items[7] = 1_000;
        kept.mark(7);
        items[7] = 1_001;
        kept.mark(7);
        items[90] = 5;
        kept.mark(90);
        assert_eq!(kept.sum(items.len(), |slot| hash_of(&items, slot), |_| ()), walk(&items));
        items[3] = 77;
        assert_ne!(kept.sum(items.len(), |slot| hash_of(&items, slot), |_| ()), walk(&items));
        kept.mark(3);
        assert_eq!(kept.sum(items.len(), |slot| hash_of(&items, slot), |_| ()), walk(&items));
        // Slots added since the last sum are hashed without marks.
        items.extend([9, 8, 7]);
        assert_eq!(kept.sum(items.len(), |slot| hash_of(&items, slot), |_| ()), walk(&items));
        // Swapping two items changes the sum: the slot is in the hash.
        let before = walk(&items);
        items.swap(1, 2);
        kept.mark(1);
        kept.mark(2);
        let swapped = kept.sum(items.len(), |slot| hash_of(&items, slot), |_| ());
        assert_eq!(swapped, walk(&items));
        assert_ne!(swapped, before);
        // More marks than there is room for: the list is dropped, not grown, and the next sum
        // walks every slot, unmarked changes included.
        let room = items.len() / MARK_ROOM_DIVISOR;
        assert_eq!(kept.room, room);
        for round in 0..room as u64 + 10 {
            items[0] = round;
            kept.mark(0);
        }
        assert_eq!((kept.room, kept.marked.len()), (0, 0));
        items[50] = 123;
        assert_eq!(kept.sum(items.len(), |slot| hash_of(&items, slot), |_| ()), walk(&items));
        assert_eq!(kept.room, items.len() / MARK_ROOM_DIVISOR);
        // `forget` (a change that moves every slot's hash) walks again too.
        items[60] = 321;
        kept.forget();
        kept.mark(5);
        assert_eq!(kept.sum(items.len(), |slot| hash_of(&items, slot), |_| ()), walk(&items));
        // A slab that shrank (a value replaced by a smaller one) is walked, not indexed.
        items.truncate(10);
        assert_eq!(kept.sum(items.len(), |slot| hash_of(&items, slot), |_| ()), walk(&items));
    }

    #[test]
    fn a_marked_vec_counts_every_change_made_through_it_and_encodes_as_a_vec() {
        let hash = |slot: usize, item: &u64| hash_words(&[slot as u64, *item]);
        let walk = |items: &[u64]| {
            items
                .iter()
                .enumerate()
                .fold(0u64, |sum, (slot, item)| sum.wrapping_add(hash(slot, item)))
        };
        let mut items = MarkedVec::from(vec![5u64, 6, 7]);
        assert_eq!(items.sum(hash), walk(&items));
        // Changes through indexing and `get_mut`, and an append, all reach the sum.
        items[1] += 10;
        *items.get_mut(2) = 70;
        items.push(8);
        assert_eq!(items.sum(hash), walk(&items));
        assert_eq!(items.hashes.borrow().marked.len(), 0, "the sum took the marks");
        items[0] = 50;
        assert_eq!(items.hashes.borrow().marked, [0]);
        assert_eq!(items.sum(hash), walk(&items));
        // A copy by `clone_from` keeps no hashes and walks; a clone keeps them and agrees.
        let mut copy = MarkedVec::from(vec![1u64]);
        copy.clone_from(&items);
        assert_eq!(copy.hashes.borrow().room, 0);
        assert_eq!(copy.sum(hash), walk(&items));
        let mut clone = items.clone();
        clone[3] = 80;
        assert_eq!(clone.sum(hash), walk(&clone));
        assert_ne!(clone.sum(hash), items.sum(hash));
        // The encoding is the bare list's: a snapshot's format does not see the hashes.
        let config = bincode::config::standard();
        assert_eq!(
            bincode::serde::encode_to_vec(&items, config).expect("encodes"),
            bincode::serde::encode_to_vec(items.to_vec(), config).expect("encodes"),
        );
    }
}
