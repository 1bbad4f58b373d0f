//! Hashing that is the same on every machine and every run: the account index's hasher and
//! the state digest. `std`'s `RandomState` is seeded per process, which is harmless for
//! lookups but would make anything that iterates a map differ between a primary and its
//! replay; keel's examples use neither its seed nor its iteration order.

use std::hash::{BuildHasherDefault, Hasher};

/// A multiply-fold hasher for integer keys: one 64×64→128-bit multiply, the halves folded,
/// so that both the low bits (the bucket) and the high bits (the table's tag) depend on every
/// bit of the key. Keys are ids chosen by clients; a client that picks ids to collide slows
/// its own lookups, it cannot change an outcome (`docs/ARCHITECTURE.md`).
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        let product = u128::from(self.0 ^ value) * u128::from(MULTIPLIER);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
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

/// A hasher for ids handed out in sequence (the exchange's order ids): ids that are close in
/// value land in buckets close together, so a table whose recent ids are its busy ones keeps
/// them in a few cache lines instead of scattering them over the whole table. The id's high
/// bits (all but the low [`BLOCK_BITS`]) go through [`IdHasher`]'s multiply-fold and choose a
/// region of `2^BLOCK_BITS` buckets; the low bits, mixed with that, choose the bucket in it.
/// The table's 7-bit tag mixes both, so ids of one region still tell apart by tag.
///
/// Ids that vary only in their high bits (a client number in the low bits, a counter above
/// it) still spread, as their regions differ.
#[derive(Clone, Copy, Debug, Default)]
pub struct SequentialIdHasher(u64);

/// How many low bits of an id choose the bucket within its region: 4 096 buckets.
const BLOCK_BITS: u32 = 12;

impl Hasher for SequentialIdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        const LOW: u64 = (1 << BLOCK_BITS) - 1;
        const TAG: u64 = 0x7f << 57;
        let product = u128::from((self.0 ^ value) >> BLOCK_BITS) * u128::from(MULTIPLIER);
        let block = (product as u64) ^ ((product >> 64) as u64);
        let tag = (block ^ (value << 57) ^ (value << 50)) & TAG;
        self.0 = (block & !LOW & !TAG) | ((block ^ value) & LOW) | tag;
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

/// Builds [`SequentialIdHasher`]s.
pub type SequentialIdHash = BuildHasherDefault<SequentialIdHasher>;

/// A `HashMap` keyed by ids handed out in sequence, hashed the same way everywhere.
pub type SequentialIdMap<K, V> = std::collections::HashMap<K, V, SequentialIdHash>;

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
        let product = u128::from(self.0 ^ value) * u128::from(MULTIPLIER);
        self.0 = ((product as u64) ^ ((product >> 64) as u64)).rotate_left(23) ^ value;
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
        let mut value = self.0;
        value ^= value >> 33;
        value = value.wrapping_mul(0xff51_afd7_ed55_8ccd);
        value ^= value >> 33;
        value = value.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        value ^ (value >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

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
    fn the_sequential_id_hasher_keeps_neighbours_together_and_still_spreads() {
        let build = SequentialIdHash::default();
        let mask = (1u64 << 20) - 1;
        // 4 096 consecutive ids, aligned: 4 096 different buckets of one region of 4 096, in a
        // table of a million buckets; every 7-bit tag occurs among them.
        let buckets: std::collections::BTreeSet<u64> =
            (40_960..45_056u64).map(|id| build.hash_one(id) & mask).collect();
        assert_eq!(buckets.len(), 4_096);
        let regions: std::collections::BTreeSet<u64> =
            buckets.iter().map(|bucket| bucket >> BLOCK_BITS).collect();
        assert_eq!(regions.len(), 1, "one region");
        let tags: std::collections::BTreeSet<u64> =
            (40_960..45_056u64).map(|id| build.hash_one(id) >> 57).collect();
        assert_eq!(tags.len(), 128, "every tag occurs");
        // The next block lands in another region.
        assert_ne!(
            build.hash_one(45_056u64) >> BLOCK_BITS & 0xff,
            regions.first().copied().unwrap()
        );
        // Ids that differ only above the low bits (a counter over a client number) spread over
        // regions as the id hasher spreads keys: random placement uses about 63% of them.
        let regions: std::collections::BTreeSet<u64> = (0..256u64)
            .map(|counter| (build.hash_one(counter << 16 | 7) & mask) >> BLOCK_BITS)
            .collect();
        assert!(regions.len() > 140, "{} of 256 regions used", regions.len());
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
}
