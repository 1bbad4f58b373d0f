//! [`CowVec`]: a vector that a state machine can copy for a snapshot in microseconds, whatever
//! its length. Its elements live in chunks of about 32 KiB, each behind an [`Arc`]; a clone
//! shares every chunk, and a write to a shared chunk copies that chunk first. So the engine
//! thread's pause for a snapshot is a copy of one pointer per chunk, and the rest of the copy is
//! paid by the first write to each chunk afterwards, a few microseconds each, spread over the
//! commands that make them (ARCHITECTURE.md, "A copy-on-write vector for large states").

use std::fmt;
use std::marker::PhantomData;
use std::ops::Index;
use std::sync::Arc;

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes of elements a chunk holds at most: a chunk copied by a write after a snapshot costs a
/// few microseconds, and a million `u64`s are 245 chunks, so the snapshot's copy is 245 pointer
/// copies (each an atomic increment).
const CHUNK_BYTES: usize = 32 << 10;

/// A growable vector whose clone shares its storage, chunk by chunk, until either side writes.
///
/// Reads cost one more pointer load than a `Vec`'s. A write ([`get_mut`](Self::get_mut),
/// [`push`](Self::push)) checks that its chunk is not shared (an uncontended atomic
/// compare-and-swap on the chunk's reference count) and copies the chunk first when it is. Use
/// it for the large parts of a state whose snapshot copy would otherwise pause the engine for
/// milliseconds; with [`StateMachine::copy_for_snapshot`](crate::StateMachine::copy_for_snapshot)
/// left at its default (`clone`), the copy is then cheap.
///
/// It serializes exactly as a `Vec<T>` does (a length, then the elements), so a snapshot of a
/// state that held a `Vec` loads into one that holds a `CowVec`, and back.
///
/// ```
/// use keel_engine::CowVec;
///
/// let mut balances = CowVec::from_elem(0u64, 1_000_000);
/// *balances.get_mut(7).unwrap() += 100;
/// let snapshot = balances.clone(); // shares all 245 chunks: no element is copied
/// *balances.get_mut(7).unwrap() += 1; // copies the one chunk that holds element 7
/// assert_eq!((snapshot[7], balances[7]), (100, 101));
/// ```
pub struct CowVec<T> {
    chunks: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T> CowVec<T> {
    /// Elements per chunk: the largest power of two whose elements fit `CHUNK_BYTES` (at
    /// least one), so that an index splits into chunk and offset with a shift and a mask.
    const PER_CHUNK: usize = {
        let fit = CHUNK_BYTES / if size_of::<T>() == 0 { 1 } else { size_of::<T>() };
        if fit == 0 {
            1
        } else {
            1 << (usize::BITS - 1 - fit.leading_zeros())
        }
    };
    const SHIFT: u32 = Self::PER_CHUNK.trailing_zeros();
    const MASK: usize = Self::PER_CHUNK - 1;

    /// An empty vector.
    pub fn new() -> Self {
        Self { chunks: Vec::new(), len: 0 }
    }

    /// How many elements it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The element at `index`, if there is one.
    #[inline]
    pub fn get(&self, index: usize) -> Option<&T> {
        if index >= self.len {
            return None;
        }
        Some(&self.chunks[index >> Self::SHIFT][index & Self::MASK])
    }

    /// The elements in order.
    pub fn iter(&self) -> CowVecIter<'_, T> {
        CowVecIter { chunks: self.chunks.iter(), current: [].iter(), remaining: self.len }
    }

    /// How many of its chunks it shares with a clone (or a clone's clone): the chunks the next
    /// writes to them will copy. For tests and for sizing the cost of a snapshot.
    pub fn shared_chunks(&self) -> usize {
        self.chunks.iter().filter(|chunk| Arc::strong_count(chunk) > 1).count()
    }
}

impl<T: Clone> CowVec<T> {
    /// `len` copies of `value`.
    pub fn from_elem(value: T, len: usize) -> Self {
        let mut chunks = Vec::with_capacity(len.div_ceil(Self::PER_CHUNK));
        let mut left = len;
        while left > 0 {
            let size = left.min(Self::PER_CHUNK);
            chunks.push(Arc::new(vec![value.clone(); size]));
            left -= size;
        }
        Self { chunks, len }
    }

    /// The element at `index` to change, if there is one: its chunk is copied first if a clone
    /// shares it.
    #[inline]
    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        if index >= self.len {
            return None;
        }
        let chunk = Arc::make_mut(&mut self.chunks[index >> Self::SHIFT]);
        Some(&mut chunk[index & Self::MASK])
    }

    /// Appends `value`.
    pub fn push(&mut self, value: T) {
        if self.len & Self::MASK == 0 {
            let mut chunk = Vec::with_capacity(Self::PER_CHUNK);
            chunk.push(value);
            self.chunks.push(Arc::new(chunk));
        } else {
            let last = self.chunks.last_mut().expect("a vector with elements has a chunk");
            Arc::make_mut(last).push(value);
        }
        self.len += 1;
    }
}

impl<T> Default for CowVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Shares every chunk: no element is copied.
impl<T> Clone for CowVec<T> {
    fn clone(&self) -> Self {
        Self { chunks: self.chunks.clone(), len: self.len }
    }
}

impl<T> Index<usize> for CowVec<T> {
    type Output = T;

    #[inline]
    fn index(&self, index: usize) -> &T {
        match self.get(index) {
            Some(element) => element,
            None => panic!("index {index} out of bounds for a CowVec of length {}", self.len),
        }
    }
}

impl<T: Clone> From<Vec<T>> for CowVec<T> {
    fn from(elements: Vec<T>) -> Self {
        elements.into_iter().collect()
    }
}

impl<T: Clone> FromIterator<T> for CowVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(elements: I) -> Self {
        let mut vector = Self::new();
        for element in elements {
            vector.push(element);
        }
        vector
    }
}

impl<T: PartialEq> PartialEq for CowVec<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<T: Eq> Eq for CowVec<T> {}

impl<T: fmt::Debug> fmt::Debug for CowVec<T> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_list().entries(self.iter()).finish()
    }
}

/// As a `Vec<T>`: the length, then the elements.
impl<T: Serialize> Serialize for CowVec<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut sequence = serializer.serialize_seq(Some(self.len))?;
        for element in self.iter() {
            sequence.serialize_element(element)?;
        }
        sequence.end()
    }
}

impl<'de, T: Deserialize<'de> + Clone> Deserialize<'de> for CowVec<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Elements<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de> + Clone> Visitor<'de> for Elements<T> {
            type Value = CowVec<T>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a sequence")
            }

            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut elements: A,
            ) -> Result<Self::Value, A::Error> {
                let mut vector = CowVec::new();
                while let Some(element) = elements.next_element()? {
                    vector.push(element);
                }
                Ok(vector)
            }
        }

        deserializer.deserialize_seq(Elements(PhantomData))
    }
}

/// The elements of a [`CowVec`], chunk after chunk.
#[derive(Debug)]
pub struct CowVecIter<'a, T> {
    chunks: std::slice::Iter<'a, Arc<Vec<T>>>,
    current: std::slice::Iter<'a, T>,
    remaining: usize,
}

impl<'a, T> Iterator for CowVecIter<'a, T> {
    type Item = &'a T;

    #[inline]
    fn next(&mut self) -> Option<&'a T> {
        loop {
            if let Some(element) = self.current.next() {
                self.remaining -= 1;
                return Some(element);
            }
            self.current = self.chunks.next()?.iter();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<T> ExactSizeIterator for CowVecIter<'_, T> {}

impl<'a, T> IntoIterator for &'a CowVec<T> {
    type Item = &'a T;
    type IntoIter = CowVecIter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn chunks_split_on_powers_of_two_within_32_kib() {
        assert_eq!(CowVec::<u64>::PER_CHUNK, 4096);
        assert_eq!(CowVec::<u8>::PER_CHUNK, 32768);
        assert_eq!(CowVec::<[u8; 24]>::PER_CHUNK, 1024);
        assert_eq!(CowVec::<[u8; 40 << 10]>::PER_CHUNK, 1);
        assert_eq!(CowVec::<()>::PER_CHUNK, 32768);
    }

    #[test]
    fn a_clone_shares_every_chunk_and_a_write_copies_only_its_own() {
        let mut vector = CowVec::from_elem(1u64, 1_000_000);
        assert_eq!(vector.shared_chunks(), 0);
        let snapshot = vector.clone();
        assert_eq!(vector.shared_chunks(), 245);
        *vector.get_mut(5_000).unwrap() = 9;
        assert_eq!(vector.shared_chunks(), 244, "the write copied one chunk");
        assert_eq!((vector[5_000], snapshot[5_000]), (9, 1));
        *vector.get_mut(5_001).unwrap() = 10;
        assert_eq!(vector.shared_chunks(), 244, "the copy is the vector's own now");
        drop(snapshot);
        assert_eq!(vector.shared_chunks(), 0);
        assert_eq!(vector.iter().map(|&value| value as usize).sum::<usize>(), 999_998 + 19);
    }

    #[test]
    fn it_serializes_as_a_vec_does() {
        let elements: Vec<u32> = (0..10_000).collect();
        let vector = CowVec::from(elements.clone());
        let config = bincode::config::standard();
        let encoded = bincode::serde::encode_to_vec(&vector, config).unwrap();
        assert_eq!(encoded, bincode::serde::encode_to_vec(&elements, config).unwrap());
        let (decoded, _): (CowVec<u32>, usize) =
            bincode::serde::decode_from_slice(&encoded, config).unwrap();
        assert_eq!(decoded, vector);
        assert_eq!(decoded.len(), 10_000);
    }

    #[test]
    fn out_of_bounds_is_none_and_indexing_there_panics() {
        let mut vector: CowVec<u8> = (0..10).collect();
        assert!(vector.get(10).is_none() && vector.get_mut(10).is_none());
        assert!(std::panic::catch_unwind(|| vector[10]).is_err());
        assert!(CowVec::<u8>::new().is_empty());
    }

    /// What a test does to a vector: write, push, or take a snapshot (a clone kept aside).
    #[derive(Clone, Debug)]
    enum Step {
        Set(usize, u16),
        Push(u16),
        Snapshot,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (any::<usize>(), any::<u16>()).prop_map(|(index, value)| Step::Set(index, value)),
            4 => any::<u16>().prop_map(Step::Push),
            1 => Just(Step::Snapshot),
        ]
    }

    proptest! {
        /// Against a `Vec`: every write and push lands, and every snapshot keeps exactly what
        /// the vector held when it was taken, whatever was written after.
        #[test]
        fn it_behaves_as_a_vec_and_snapshots_never_change(
            start in 0usize..40_000,
            steps in proptest::collection::vec(step(), 0..200),
        ) {
            let mut model: Vec<u16> = (0..start).map(|index| index as u16).collect();
            let mut vector: CowVec<u16> = model.iter().copied().collect();
            let mut snapshots = Vec::new();
            for step in steps {
                match step {
                    Step::Set(index, value) if !model.is_empty() => {
                        let index = index % model.len();
                        model[index] = value;
                        *vector.get_mut(index).unwrap() = value;
                    }
                    Step::Set(..) => {}
                    Step::Push(value) => {
                        model.push(value);
                        vector.push(value);
                    }
                    Step::Snapshot => snapshots.push((model.clone(), vector.clone())),
                }
                prop_assert_eq!(vector.len(), model.len());
            }
            prop_assert!(vector.iter().eq(model.iter()));
            prop_assert_eq!(vector.iter().len(), model.len());
            for (taken, snapshot) in &snapshots {
                prop_assert!(snapshot.iter().eq(taken.iter()));
            }
        }
    }
}
