//! The schedule of pending transfers' timeouts, by (expiry time, id), with the wrapping sum of
//! its entries' hashes kept as entries come and go. The state hash reads the sum instead of
//! walking the schedule, which holds every pending transfer with a timeout until its time comes
//! (those posted or voided before it included): with a checkpoint every 1 000 commands of the
//! payments mix, the walk was about a fifth of the ledger's instructions.

use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hash::hash_words;

/// The timeouts of pending transfers, earliest first. Changed only through its methods, so the
/// kept sum cannot miss a change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Expiries {
    entries: BTreeSet<(u64, u64)>,
    /// The wrapping sum of [`entry_hash`] over `entries`: a digest of the set that does not
    /// depend on the order the entries came in, kept in step with every insertion and removal.
    sum: u64,
}

/// One entry's part of the sum.
fn entry_hash((expires_at_ns, id): (u64, u64)) -> u64 {
    hash_words(&[expires_at_ns, id])
}

impl Expiries {
    /// Schedules transfer `id` to expire at `expires_at_ns` (nothing changes if it already is).
    pub(super) fn insert(&mut self, expires_at_ns: u64, id: u64) {
        if self.entries.insert((expires_at_ns, id)) {
            self.sum = self.sum.wrapping_add(entry_hash((expires_at_ns, id)));
        }
    }

    /// The earliest entry, as (expiry time, id).
    pub(super) fn first(&self) -> Option<(u64, u64)> {
        self.entries.first().copied()
    }

    /// Takes the earliest entry out.
    pub(super) fn pop_first(&mut self) -> Option<(u64, u64)> {
        let entry = self.entries.pop_first()?;
        self.sum = self.sum.wrapping_sub(entry_hash(entry));
        Some(entry)
    }

    /// How many entries there are.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The digest of the entries: their count and the sum of their hashes.
    pub(super) fn digest(&self) -> [u64; 2] {
        [self.entries.len() as u64, self.sum]
    }
}

/// Encoded as the set alone: the snapshot's format is the one from before the sum was kept.
impl Serialize for Expiries {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.entries.serialize(serializer)
    }
}

/// A decoded schedule sums its entries once.
impl<'de> Deserialize<'de> for Expiries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = BTreeSet::<(u64, u64)>::deserialize(deserializer)?;
        let sum = entries.iter().fold(0u64, |sum, &entry| sum.wrapping_add(entry_hash(entry)));
        Ok(Self { entries, sum })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// The sum recomputed from the entries, as a decoded schedule has it.
    fn walked(expiries: &Expiries) -> u64 {
        let bytes =
            bincode::serde::encode_to_vec(expiries, bincode::config::standard()).expect("encodes");
        let (decoded, _): (Expiries, _) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                .expect("decodes");
        assert_eq!(decoded.entries, expiries.entries, "the set round-trips");
        decoded.sum
    }

    #[test]
    fn the_kept_sum_is_the_sum_of_the_entries_through_inserts_repeats_and_pops() {
        let mut rng = SplitMix64::new(7);
        let mut expiries = Expiries::default();
        for step in 0..2_000 {
            if rng.below(3) == 0 {
                expiries.pop_first();
            } else {
                // Few distinct entries, so that an entry is often inserted twice.
                expiries.insert(rng.below(50), rng.below(20));
            }
            if step % 97 == 0 {
                assert_eq!(expiries.sum, walked(&expiries), "step {step}");
            }
        }
        assert_eq!(expiries.sum, walked(&expiries));
        while expiries.pop_first().is_some() {}
        assert_eq!((expiries.len(), expiries.sum), (0, 0), "an empty schedule sums to zero");
    }

    #[test]
    fn the_digest_sees_which_entries_not_the_order_they_came_in() {
        let mut forward = Expiries::default();
        let mut backward = Expiries::default();
        for id in 1..=10 {
            forward.insert(id * 100, id);
            backward.insert((11 - id) * 100, 11 - id);
        }
        assert_eq!(forward.digest(), backward.digest());
        let mut other = forward.clone();
        other.pop_first();
        other.insert(100, 11);
        assert_ne!(other.digest(), forward.digest(), "another id at the same time");
    }

    #[test]
    fn encodes_as_the_bare_set() {
        let mut expiries = Expiries::default();
        expiries.insert(5, 1);
        expiries.insert(3, 2);
        let config = bincode::config::standard();
        assert_eq!(
            bincode::serde::encode_to_vec(&expiries, config).unwrap(),
            bincode::serde::encode_to_vec(&expiries.entries, config).unwrap()
        );
    }
}
