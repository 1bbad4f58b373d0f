//! The order book's structures: resting orders in a slab of slots, each price level a queue of
//! slots linked through the slots themselves; the levels in a slab of their own, found by price
//! through a `BTreeMap` and by an order through the level slot it keeps. A cancel is a lookup of
//! the order's slot (by id, in the exchange's index), an unlink, and at most one level removal;
//! a fill changes its level's total without a search; matching walks the best levels from their
//! heads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Side;
use crate::hash::{hash_words, MarkedVec};

/// "No slot": the end of a queue, or of the free list.
pub(super) const NIL: u32 = u32::MAX;

/// A slot of the slab: a resting order, or a free slot (`order_id == 0`) whose `next` is the
/// next free slot.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct OrderSlot {
    pub(super) order_id: u64,
    pub(super) price: u64,
    /// Above 0 while the order rests; 0 only between its last fill and its removal.
    pub(super) remaining: u64,
    /// The account's slot.
    pub(super) account: u32,
    /// The symbol's slot.
    pub(super) symbol: u32,
    pub(super) side: Side,
    /// The neighbours in the level's queue (toward the head, toward the tail).
    pub(super) prev: u32,
    pub(super) next: u32,
    /// The level's slot in its book. Not in a snapshot: a book finds its orders' levels again
    /// when loaded ([`Book::relink`]), so the snapshot's format is the one before levels had
    /// slots.
    #[serde(skip)]
    pub(super) level: u32,
}

/// The slab of order slots. Freed slots are reused, most recently freed first, so the slab's
/// size is the most orders that ever rested at once. The slots are a [`MarkedVec`]: every
/// change of a slot marks it for the kept hashes, so no change escapes the state hash; the one
/// exception is [`Orders::set_next`], whose link the hash leaves out.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Orders {
    slots: MarkedVec<OrderSlot>,
    free: u32,
}

impl Clone for Orders {
    fn clone(&self) -> Self {
        Self { slots: self.slots.clone(), free: self.free }
    }

    /// Copies into the existing allocation: the slots are `Copy`, so this is one `memcpy` when
    /// the capacity suffices (the kept hashes are not copied: see [`MarkedVec`]).
    fn clone_from(&mut self, source: &Self) {
        self.slots.clone_from(&source.slots);
        self.free = source.free;
    }
}

impl Default for Orders {
    fn default() -> Self {
        Self { slots: MarkedVec::default(), free: NIL }
    }
}

impl Orders {
    pub(super) fn reserve(&mut self, orders: usize) {
        self.slots.reserve(orders);
    }

    pub(super) fn get(&self, slot: u32) -> &OrderSlot {
        &self.slots[slot as usize]
    }

    /// The slot, to change: marked for the kept hashes, whatever the change.
    pub(super) fn get_mut(&mut self, slot: u32) -> &mut OrderSlot {
        self.slots.get_mut(slot as usize)
    }

    /// Points a resting order's link toward the tail of its queue at `next`. The hash leaves
    /// that link out (the links toward the head say the same), so this does not mark the slot:
    /// a push and an unlink each change one such link besides the slots they mark anyway.
    pub(super) fn set_next(&mut self, slot: u32, next: u32) {
        self.slots.unmarked_mut(slot as usize).next = next;
    }

    pub(super) fn allocate(
        &mut self,
        order_id: u64,
        account: u32,
        symbol: u32,
        side: Side,
        price: u64,
        remaining: u64,
    ) -> u32 {
        debug_assert!(order_id != 0 && remaining > 0);
        let order = OrderSlot {
            order_id,
            price,
            remaining,
            account,
            symbol,
            side,
            prev: NIL,
            next: NIL,
            level: NIL,
        };
        if self.free == NIL {
            self.slots.push(order);
            return (self.slots.len() - 1) as u32;
        }
        let slot = self.free;
        self.free = self.slots[slot as usize].next;
        *self.get_mut(slot) = order;
        slot
    }

    pub(super) fn free(&mut self, slot: u32) {
        let next_free = self.free;
        let order = self.get_mut(slot);
        order.order_id = 0;
        order.next = next_free;
        self.free = slot;
    }

    /// The sum of every slot's hash, hashing only the slots changed since the last sum. A
    /// resting order's hash is of its slot, its fields and the slot before it in its level's
    /// queue: the levels' queues follow from those, so the sum is of the books' priority order
    /// as well as of the orders. A free slot counts 0. The slot numbers are part of the state
    /// (a snapshot holds the slab as it is, free slots included, and allocation is
    /// deterministic); the level slots are not (a decoded book numbers its levels afresh), so
    /// they are left out.
    pub(super) fn digest(&self) -> u64 {
        self.slots.sum(|slot, order| {
            if order.order_id == 0 {
                return 0;
            }
            hash_words(&[
                ((slot as u64) << 1) | order.side as u64,
                order.order_id,
                order.price,
                order.remaining,
                (u64::from(order.account) << 32) | u64::from(order.symbol),
                u64::from(order.prev),
            ])
        })
    }

    /// The slots of resting orders.
    pub(super) fn live(&self) -> impl Iterator<Item = (u32, &OrderSlot)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, order)| order.order_id != 0)
            .map(|(slot, order)| (slot as u32, order))
    }
}

/// A price level: a queue of order slots, oldest at the head. A free level slot keeps the next
/// free one in `head`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct Level {
    pub(super) head: u32,
    pub(super) tail: u32,
    /// The sum of the orders' remaining quantities.
    pub(super) quantity: u64,
    pub(super) orders: u32,
}

/// One fill of a planned match: the maker's slot, its price, the quantity.
#[derive(Clone, Copy, Debug)]
pub(super) struct Fill {
    pub(super) slot: u32,
    pub(super) price: u64,
    pub(super) quantity: u64,
}

/// A symbol's book: each side's levels by price (the level's slot), and the levels' slab.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "BookData", into = "BookData")]
pub(super) struct Book {
    bids: BTreeMap<u64, u32>,
    asks: BTreeMap<u64, u32>,
    levels: Vec<Level>,
    free_level: u32,
}

impl Default for Book {
    fn default() -> Self {
        Self { bids: BTreeMap::new(), asks: BTreeMap::new(), levels: Vec::new(), free_level: NIL }
    }
}

/// A book as a snapshot holds it: each side's levels by price, as before levels had slots.
#[derive(Serialize, Deserialize)]
pub(super) struct BookData {
    bids: BTreeMap<u64, Level>,
    asks: BTreeMap<u64, Level>,
}

impl From<Book> for BookData {
    fn from(book: Book) -> Self {
        let side = |prices: &BTreeMap<u64, u32>| {
            prices.iter().map(|(&price, &slot)| (price, book.levels[slot as usize])).collect()
        };
        Self { bids: side(&book.bids), asks: side(&book.asks) }
    }
}

impl From<BookData> for Book {
    /// The levels get slots in price order; the orders learn theirs in [`Book::relink`].
    fn from(data: BookData) -> Self {
        let mut book = Book::default();
        for (side, levels) in [(Side::Buy, data.bids), (Side::Sell, data.asks)] {
            for (price, level) in levels {
                let slot = book.levels.len() as u32;
                book.levels.push(level);
                book.prices_mut(side).insert(price, slot);
            }
        }
        book
    }
}

impl Book {
    fn prices_mut(&mut self, side: Side) -> &mut BTreeMap<u64, u32> {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }

    /// A side's levels by ascending price.
    pub(super) fn levels(
        &self,
        side: Side,
    ) -> impl DoubleEndedIterator<Item = (u64, u32, &Level)> + '_ {
        let prices = match side {
            Side::Buy => &self.bids,
            Side::Sell => &self.asks,
        };
        prices.iter().map(|(&price, &slot)| (price, slot, &self.levels[slot as usize]))
    }

    /// Points every resting order at its level's slot: after loading a snapshot, which does
    /// not hold them.
    pub(super) fn relink(&self, orders: &mut Orders) {
        for &slot in self.bids.values().chain(self.asks.values()) {
            let mut order = self.levels[slot as usize].head;
            while order != NIL {
                let resting = orders.get_mut(order);
                resting.level = slot;
                order = resting.next;
            }
        }
    }

    /// The best price of a side: the highest bid, the lowest ask.
    pub(super) fn best(&self, side: Side) -> Option<u64> {
        match side {
            Side::Buy => self.bids.last_key_value().map(|(&price, _)| price),
            Side::Sell => self.asks.first_key_value().map(|(&price, _)| price),
        }
    }

    /// The total of the level in slot `level`. A level freed when it emptied reads 0 (its
    /// total was 0, and freeing it changes only its queue's head) until the slot is reused.
    pub(super) fn quantity_at(&self, level: u32) -> u64 {
        self.levels[level as usize].quantity
    }

    /// Appends a slot to the back of its level's queue, opening the level if it is new.
    pub(super) fn push(&mut self, orders: &mut Orders, slot: u32) {
        let order = *orders.get(slot);
        let Book { bids, asks, levels, free_level } = self;
        let prices = match order.side {
            Side::Buy => bids,
            Side::Sell => asks,
        };
        let level_slot = *prices.entry(order.price).or_insert_with(|| {
            let level = Level { head: NIL, tail: NIL, quantity: 0, orders: 0 };
            if *free_level == NIL {
                levels.push(level);
                (levels.len() - 1) as u32
            } else {
                let reused = *free_level;
                *free_level = levels[reused as usize].head;
                levels[reused as usize] = level;
                reused
            }
        });
        let level = &mut levels[level_slot as usize];
        let tail = level.tail;
        level.tail = slot;
        if tail == NIL {
            level.head = slot;
        } else {
            orders.set_next(tail, slot);
        }
        level.quantity += order.remaining;
        level.orders += 1;
        let order = orders.get_mut(slot);
        order.prev = tail;
        order.next = NIL;
        order.level = level_slot;
    }

    /// Takes `quantity` off the total of the level at `level` (its order's remaining changes
    /// with it).
    pub(super) fn reduce(&mut self, level: u32, quantity: u64) {
        self.levels[level as usize].quantity -= quantity;
    }

    /// Unlinks a slot from its level's queue; removes the level when it empties. The order's
    /// quantity must already be off the level's total.
    pub(super) fn unlink(&mut self, orders: &mut Orders, slot: u32) {
        let order = *orders.get(slot);
        let level = &mut self.levels[order.level as usize];
        if order.prev == NIL {
            level.head = order.next;
        } else {
            orders.set_next(order.prev, order.next);
        }
        if order.next == NIL {
            level.tail = order.prev;
        } else {
            orders.get_mut(order.next).prev = order.prev;
        }
        level.orders -= 1;
        if level.orders == 0 {
            debug_assert_eq!(level.quantity, 0, "an empty level holds nothing");
            level.head = self.free_level;
            self.free_level = order.level;
            self.prices_mut(order.side).remove(&order.price);
        }
    }

    /// Plans the fills of an incoming order of `side` for `quantity`, without changing
    /// anything: the opposite side's levels in priority order while they cross `limit` (any
    /// price when `None`), each level's orders oldest first. With a `budget` (a market buy's
    /// available quote) it fills only what the budget pays for. Returns whether the budget
    /// stopped it.
    pub(super) fn plan(
        &self,
        orders: &Orders,
        side: Side,
        limit: Option<u64>,
        quantity: u64,
        budget: Option<u64>,
        fills: &mut Vec<Fill>,
    ) -> bool {
        debug_assert!(fills.is_empty());
        let level = |(&price, &slot): (&u64, &u32)| (price, &self.levels[slot as usize]);
        match side {
            Side::Buy => plan_levels(
                self.asks.iter().map(level),
                orders,
                side,
                limit,
                quantity,
                budget,
                fills,
            ),
            Side::Sell => plan_levels(
                self.bids.iter().rev().map(level),
                orders,
                side,
                limit,
                quantity,
                budget,
                fills,
            ),
        }
    }
}

/// [`Book::plan`] over the opposite side's levels, given in priority order.
fn plan_levels<'a>(
    levels: impl Iterator<Item = (u64, &'a Level)>,
    orders: &Orders,
    side: Side,
    limit: Option<u64>,
    quantity: u64,
    mut budget: Option<u64>,
    fills: &mut Vec<Fill>,
) -> bool {
    let mut left = quantity;
    for (price, level) in levels {
        let crosses = match (side, limit) {
            (_, None) => true,
            (Side::Buy, Some(limit)) => price <= limit,
            (Side::Sell, Some(limit)) => price >= limit,
        };
        if !crosses {
            return false;
        }
        let mut slot = level.head;
        while slot != NIL {
            let order = orders.get(slot);
            let mut take = order.remaining.min(left);
            if let Some(budget) = budget.as_mut() {
                let affordable = *budget / price;
                if affordable < take {
                    take = affordable;
                    if take > 0 {
                        fills.push(Fill { slot, price, quantity: take });
                    }
                    return true;
                }
                *budget -= take * price;
            }
            fills.push(Fill { slot, price, quantity: take });
            left -= take;
            if left == 0 {
                return false;
            }
            slot = order.next;
        }
    }
    false
}

// A slot is 48 bytes: the snapshot's copy of the slab is a `memcpy` of that many per order.
const _: () = assert!(std::mem::size_of::<OrderSlot>() == 48);
