//! The index of resting orders by id: an open-addressing table of cache-line groups whose
//! place for an id is computed from the id alone, so that the line a lookup or a removal will
//! read can be asked for ahead ([`OrderIndex::prefetch`]).
//!
//! `std`'s `HashMap` (hashbrown) keeps its control bytes and its entries in two arrays, so a
//! lookup in a table larger than the cache misses twice, and it offers no way to ask for either
//! line ahead. Here a group is one 64-byte line holding five entries and an overflow count. An
//! id's home group is found by arithmetic: the id's block (all but its low 10 bits) goes
//! through a multiply-fold to place the block's run of groups, so ids that differ only in high
//! bits still spread, and ids handed out in sequence (the exchange's workload numbers them so,
//! as most venues do) take consecutive groups of that run, one a group. Runs of different
//! blocks overlap at random, so a group holds about as many entries as under a uniform hash
//! (at most 5/8 of its 5 on average), while a sequence of insertions walks lines in order,
//! which the processor's own prefetcher follows. Packing four ids of a sequence into a group
//! instead filled the groups where two blocks' runs met: 751 of 2 048 groups overflowed in a
//! table of 4 096 consecutive ids.
//!
//! An entry that finds its home group full goes to the next group with room (linear probing
//! over groups), and every full group it passes counts one more overflow. A lookup stops at the
//! first group that does not hold the id and has no overflow, so a removal, which takes the
//! counts back, leaves no tombstone behind. The table doubles when it is more than 5/8 full, so
//! most lookups read one line.
//!
//! Nothing here is part of the exchange's state: a decoded exchange rebuilds the index from its
//! resting orders, and the order of entries is never observed.

use crate::hash::fold;

/// Entries a group holds.
const GROUP_ENTRIES: usize = 5;

/// Low bits of an id that choose the group within its block's run.
const BLOCK_BITS: u32 = 10;

/// The id of an empty entry: no order has id 0.
const EMPTY: u64 = 0;

/// One cache line: five entries and how many entries homed before it probed past it.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Group {
    ids: [u64; GROUP_ENTRIES],
    slots: [u32; GROUP_ENTRIES],
    /// Entries whose home group is this one or an earlier one and that live in a later one.
    overflow: u32,
}

const _: () = assert!(std::mem::size_of::<Group>() == 64);

/// Resting orders' slots by order id. Ids must not be 0.
#[derive(Clone, Debug, Default)]
pub(super) struct OrderIndex {
    /// A power of two of groups, or none before the first insertion.
    groups: Vec<Group>,
    len: usize,
}

impl OrderIndex {
    /// How many orders are indexed.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Makes room for `orders` entries without growing again.
    pub(super) fn reserve(&mut self, orders: usize) {
        let needed = Self::groups_for(self.len + orders);
        if needed > self.groups.len() {
            self.resize(needed);
        }
    }

    /// The slot of `id`, if it is indexed.
    #[inline]
    pub(super) fn get(&self, id: u64) -> Option<u32> {
        let (group, entry) = self.find(id)?;
        Some(self.groups[group].slots[entry])
    }

    /// Whether `id` is indexed.
    #[inline]
    pub(super) fn contains(&self, id: u64) -> bool {
        self.find(id).is_some()
    }

    /// Asks for the line a lookup of `id` reads first.
    #[inline]
    pub(super) fn prefetch(&self, id: u64) {
        if !self.groups.is_empty() {
            keel_engine::prefetch(&self.groups[self.home(id)]);
        }
    }

    /// Indexes `id` at `slot`, replacing what it was indexed at.
    pub(super) fn insert(&mut self, id: u64, slot: u32) {
        assert!(id != EMPTY, "order id 0 cannot be indexed");
        if let Some((group, entry)) = self.find(id) {
            self.groups[group].slots[entry] = slot;
            return;
        }
        if Self::groups_for(self.len + 1) > self.groups.len() {
            self.resize(Self::groups_for(self.len + 1).max(self.groups.len() * 2));
        }
        self.place(id, slot);
        self.len += 1;
    }

    /// Takes `id` out of the index; returns the slot it was at.
    pub(super) fn remove(&mut self, id: u64) -> Option<u32> {
        let (found, entry) = self.find(id)?;
        let mask = self.groups.len() - 1;
        let mut group = self.home(id);
        while group != found {
            self.groups[group].overflow -= 1;
            group = (group + 1) & mask;
        }
        let slot = self.groups[found].slots[entry];
        self.groups[found].ids[entry] = EMPTY;
        self.len -= 1;
        Some(slot)
    }

    /// The group and entry holding `id`.
    #[inline]
    fn find(&self, id: u64) -> Option<(usize, usize)> {
        if self.groups.is_empty() || id == EMPTY {
            return None;
        }
        let mask = self.groups.len() - 1;
        let mut group = self.home(id);
        loop {
            let candidates = &self.groups[group];
            if let Some(entry) = candidates.ids.iter().position(|&held| held == id) {
                return Some((group, entry));
            }
            if candidates.overflow == 0 {
                return None;
            }
            group = (group + 1) & mask;
        }
    }

    /// Puts an id known to be absent in the first group with room from its home, counting an
    /// overflow in each full group passed. The table must have room.
    fn place(&mut self, id: u64, slot: u32) {
        let mask = self.groups.len() - 1;
        let mut group = self.home(id);
        loop {
            let candidates = &mut self.groups[group];
            if let Some(entry) = candidates.ids.iter().position(|&held| held == EMPTY) {
                candidates.ids[entry] = id;
                candidates.slots[entry] = slot;
                return;
            }
            candidates.overflow += 1;
            group = (group + 1) & mask;
        }
    }

    /// The home group of `id`: its block placed by a multiply-fold, then one id a group in
    /// sequence within the block's run of groups.
    #[inline]
    fn home(&self, id: u64) -> usize {
        let block = fold(id >> BLOCK_BITS);
        let within = id & ((1 << BLOCK_BITS) - 1);
        (block.wrapping_add(within) as usize) & (self.groups.len() - 1)
    }

    /// Groups for `entries` at most 5/8 full: a power of two, at least 16.
    fn groups_for(entries: usize) -> usize {
        (entries * 8).div_ceil(GROUP_ENTRIES * 5).next_power_of_two().max(16)
    }

    /// Moves every entry into a table of `groups` groups.
    fn resize(&mut self, groups: usize) {
        let old = std::mem::replace(&mut self.groups, vec![Group::default(); groups]);
        for group in &old {
            for (&id, &slot) in group.ids.iter().zip(&group.slots) {
                if id != EMPTY {
                    self.place(id, slot);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// Checks the index against `model`, and that every group's overflow is the number of
    /// entries that passed it.
    fn check(index: &OrderIndex, model: &BTreeMap<u64, u32>) {
        assert_eq!(index.len(), model.len());
        for (&id, &slot) in model {
            assert_eq!(index.get(id), Some(slot), "id {id}");
        }
        if index.groups.is_empty() {
            return;
        }
        let mask = index.groups.len() - 1;
        let mut passed = vec![0u32; index.groups.len()];
        for (position, group) in index.groups.iter().enumerate() {
            for &id in group.ids.iter().filter(|&&id| id != EMPTY) {
                let mut at = index.home(id);
                while at != position {
                    passed[at] += 1;
                    at = (at + 1) & mask;
                }
            }
        }
        let overflow: Vec<u32> = index.groups.iter().map(|group| group.overflow).collect();
        assert_eq!(overflow, passed, "overflow counts");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
        Get(u64),
    }

    /// Ids from a few dense runs (as a sequence hands them out) and a few far apart, so that
    /// blocks collide, groups fill and entries overflow.
    fn id() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => 1u64..3_000,
            2 => (0u64..8).prop_map(|block| (block << 40) | 7),
            1 => 1u64..u64::MAX,
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (id(), any::<u32>()).prop_map(|(id, slot)| Op::Insert(id, slot)),
            4 => id().prop_map(Op::Remove),
            1 => id().prop_map(Op::Get),
        ]
    }

    proptest! {
        #[test]
        fn behaves_as_a_map(ops in prop::collection::vec(op(), 1..3_000)) {
            let mut index = OrderIndex::default();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(id, slot) => {
                        index.insert(id, slot);
                        model.insert(id, slot);
                    }
                    Op::Remove(id) => prop_assert_eq!(index.remove(id), model.remove(&id)),
                    Op::Get(id) => {
                        prop_assert_eq!(index.get(id), model.get(&id).copied());
                        prop_assert_eq!(index.contains(id), model.contains_key(&id));
                    }
                }
            }
            check(&index, &model);
        }
    }

    #[test]
    fn colliding_blocks_overflow_and_give_their_counts_back() {
        // A small table (16 groups) and ids whose homes pile onto few groups: many overflow,
        // some past the table's end, wrapping.
        let mut index = OrderIndex::default();
        let mut model = BTreeMap::new();
        let ids: Vec<u64> = (0..40u64).map(|n| (n << 20) | (n % 3 + 1)).collect();
        for (slot, &id) in ids.iter().enumerate() {
            index.insert(id, slot as u32);
            model.insert(id, slot as u32);
            check(&index, &model);
        }
        assert!(index.groups.iter().any(|group| group.overflow > 0), "nothing overflowed");
        for &id in ids.iter().step_by(3) {
            assert_eq!(index.remove(id), model.remove(&id));
            check(&index, &model);
        }
        // An id never inserted, homed on an overflowing group, is not found.
        assert_eq!(index.get(ids[0]), None);
        assert_eq!(index.remove(ids[0]), None);
        for &id in &ids {
            index.remove(id);
            model.remove(&id);
        }
        check(&index, &model);
        assert!(index.groups.iter().all(|group| group.overflow == 0), "counts left behind");
    }

    #[test]
    fn a_sequence_of_ids_takes_consecutive_groups_and_seldom_overflows() {
        let mut index = OrderIndex::default();
        let ids = 1..=100_000u64;
        index.reserve(ids.clone().count());
        for id in ids {
            index.insert(id, id as u32);
        }
        // Consecutive ids of one block have consecutive home groups.
        let home = index.home(5 << BLOCK_BITS);
        assert_eq!(index.home((5 << BLOCK_BITS) + 1), (home + 1) & (index.groups.len() - 1));
        let overflowing = index.groups.iter().filter(|group| group.overflow > 0).count();
        assert!(overflowing * 20 < index.groups.len(), "{overflowing} groups overflow");
        assert_eq!(index.get(0), None);
        assert_eq!(index.get(100_001), None);
    }
}
