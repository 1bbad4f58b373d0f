//! The exchange against a naive order book: every resting order in one `Vec`, the best
//! counter-order found by scanning all of them, balances in a `BTreeMap`, every rule spelled
//! out again from the documentation. On random command sequences the two must emit the same
//! events, event for event, and hold the same balances and books after every command; the
//! exchange's own invariants (no crossed book, assets conserved, holds and level totals
//! consistent) are checked after every command too.
//!
//! The sequences are built to hit every rule: a few symbols (one unknown), a few accounts (one
//! never funded), order ids from a small range (so they collide and go stale), prices in a
//! narrow band (so orders cross), small and near-overflow quantities and deposits. The seed is
//! printed; `KEEL_SEED=N` runs one case, `KEEL_CASES=N` more cases.

use std::collections::{BTreeMap, BTreeSet};

use keel_engine::{Context, Output, StateMachine};
use keel_examples::exchange::workload::{Mix, Workload};
use keel_examples::exchange::{
    CancelReason, Command, Event, Exchange, OrderKind, Reject, RestingOrder, Side,
};
use keel_examples::rng::SplitMix64;

mod kept_hash;

#[derive(Clone, Copy, Debug)]
struct Order {
    arrival: u64,
    id: u64,
    account: u64,
    symbol: u32,
    side: Side,
    price: u64,
    remaining: u64,
}

#[derive(Default)]
struct Model {
    symbols: BTreeMap<u32, (u32, u32)>,
    accounts: BTreeSet<u64>,
    /// (account, asset) → (available, held).
    balances: BTreeMap<(u64, u32), (u64, u64)>,
    totals: BTreeMap<u32, u64>,
    orders: Vec<Order>,
    arrivals: u64,
    touched: BTreeSet<(Side, u64)>,
}

fn hold(side: Side, price: u64, quantity: u64) -> Option<u64> {
    match side {
        Side::Buy => price.checked_mul(quantity),
        Side::Sell => Some(quantity),
    }
}

impl Model {
    fn balance(&mut self, account: u64, asset: u32) -> &mut (u64, u64) {
        self.balances.entry((account, asset)).or_default()
    }

    fn held_asset(&self, symbol: u32, side: Side) -> u32 {
        let (base, quote) = self.symbols[&symbol];
        if side == Side::Buy {
            quote
        } else {
            base
        }
    }

    fn apply(&mut self, command: Command) -> Vec<Event> {
        let mut events = Vec::new();
        self.touched.clear();
        match command {
            Command::AddSymbol { symbol, base, quote } => {
                let reason = if symbol == 0 || base == 0 || quote == 0 {
                    Some(Reject::ZeroId)
                } else if base == quote {
                    Some(Reject::SameAsset)
                } else if self.symbols.contains_key(&symbol) {
                    Some(Reject::SymbolExists)
                } else {
                    None
                };
                match reason {
                    Some(reason) => events.push(Event::Rejected { id: symbol.into(), reason }),
                    None => {
                        self.symbols.insert(symbol, (base, quote));
                        events.push(Event::SymbolAdded { symbol });
                    }
                }
            }
            Command::Deposit { account, asset, amount } => {
                let total = self.totals.get(&asset).copied().unwrap_or(0);
                let reason = if account == 0 || asset == 0 {
                    Some(Reject::ZeroId)
                } else if amount == 0 {
                    Some(Reject::ZeroQuantity)
                } else if total.checked_add(amount).is_none() {
                    Some(Reject::Overflow)
                } else {
                    None
                };
                match reason {
                    Some(reason) => events.push(Event::Rejected { id: account, reason }),
                    None => {
                        self.totals.insert(asset, total + amount);
                        self.accounts.insert(account);
                        self.balance(account, asset).0 += amount;
                        events.push(Event::Deposited { account, asset, amount });
                    }
                }
            }
            Command::Withdraw { account, asset, amount } => {
                let available = self.balances.get(&(account, asset)).map_or(0, |b| b.0);
                let reason = if account == 0 || asset == 0 {
                    Some(Reject::ZeroId)
                } else if amount == 0 {
                    Some(Reject::ZeroQuantity)
                } else if !self.accounts.contains(&account) {
                    Some(Reject::UnknownAccount)
                } else if available < amount {
                    Some(Reject::InsufficientFunds)
                } else {
                    None
                };
                match reason {
                    Some(reason) => events.push(Event::Rejected { id: account, reason }),
                    None => {
                        self.balance(account, asset).0 -= amount;
                        *self.totals.get_mut(&asset).unwrap() -= amount;
                        events.push(Event::Withdrawn { account, asset, amount });
                    }
                }
            }
            Command::Place { order_id, account, symbol, side, kind, price, quantity } => {
                let reason = self.validate(order_id, account, symbol, side, kind, price, quantity);
                if let Some(reason) = reason {
                    return vec![Event::Rejected { id: order_id, reason }];
                }
                events.push(Event::Accepted {
                    order_id,
                    account,
                    symbol,
                    side,
                    kind,
                    price,
                    quantity,
                });
                self.execute(order_id, account, symbol, side, kind, price, quantity, &mut events);
                self.levels(symbol, &mut events);
            }
            Command::Cancel { order_id, account } => match self.owned(order_id, account) {
                Err(reason) => events.push(Event::Rejected { id: order_id, reason }),
                Ok(index) => {
                    let order = self.remove(index);
                    events.push(Event::Cancelled {
                        order_id,
                        remaining: order.remaining,
                        reason: CancelReason::Requested,
                    });
                    self.levels(order.symbol, &mut events);
                }
            },
            Command::Amend { order_id, account, price, quantity } => {
                let index = match self.owned(order_id, account) {
                    Err(reason) => return vec![Event::Rejected { id: order_id, reason }],
                    Ok(index) => index,
                };
                let order = self.orders[index];
                let reason = if quantity == 0 {
                    Some(Reject::ZeroQuantity)
                } else if price == 0 {
                    Some(Reject::InvalidPrice)
                } else {
                    match hold(order.side, price, quantity) {
                        None => Some(Reject::Overflow),
                        Some(needed) => {
                            let asset = self.held_asset(order.symbol, order.side);
                            let available = self.balance(account, asset).0;
                            let held = hold(order.side, order.price, order.remaining).unwrap();
                            (u128::from(available) + u128::from(held) < u128::from(needed))
                                .then_some(Reject::InsufficientFunds)
                        }
                    }
                };
                if let Some(reason) = reason {
                    return vec![Event::Rejected { id: order_id, reason }];
                }
                events.push(Event::Amended { order_id, price, quantity });
                if price == order.price && quantity <= order.remaining {
                    let asset = self.held_asset(order.symbol, order.side);
                    let released = hold(order.side, price, order.remaining - quantity).unwrap();
                    let balance = self.balance(account, asset);
                    balance.1 -= released;
                    balance.0 += released;
                    self.orders[index].remaining = quantity;
                    self.touched.insert((order.side, price));
                } else {
                    self.remove(index);
                    let kind = OrderKind::GoodTillCancelled;
                    let (symbol, side) = (order.symbol, order.side);
                    self.execute(
                        order_id,
                        account,
                        symbol,
                        side,
                        kind,
                        price,
                        quantity,
                        &mut events,
                    );
                }
                self.levels(order.symbol, &mut events);
            }
        }
        events
    }

    #[allow(clippy::too_many_arguments)]
    fn validate(
        &self,
        order_id: u64,
        account: u64,
        symbol: u32,
        side: Side,
        kind: OrderKind,
        price: u64,
        quantity: u64,
    ) -> Option<Reject> {
        if order_id == 0 || account == 0 || symbol == 0 {
            return Some(Reject::ZeroId);
        }
        if !self.symbols.contains_key(&symbol) {
            return Some(Reject::UnknownSymbol);
        }
        if quantity == 0 {
            return Some(Reject::ZeroQuantity);
        }
        if (kind == OrderKind::Market) != (price == 0) {
            return Some(Reject::InvalidPrice);
        }
        if !self.accounts.contains(&account) {
            return Some(Reject::UnknownAccount);
        }
        if self.orders.iter().any(|order| order.id == order_id) {
            return Some(Reject::OrderIdInUse);
        }
        if kind == OrderKind::Market && side == Side::Buy {
            return None;
        }
        let Some(needed) = hold(side, price, quantity) else { return Some(Reject::Overflow) };
        let asset = self.held_asset(symbol, side);
        let available = self.balances.get(&(account, asset)).map_or(0, |b| b.0);
        (available < needed).then_some(Reject::InsufficientFunds)
    }

    fn owned(&self, order_id: u64, account: u64) -> Result<usize, Reject> {
        if order_id == 0 || account == 0 {
            return Err(Reject::ZeroId);
        }
        if !self.accounts.contains(&account) {
            return Err(Reject::UnknownAccount);
        }
        let index = self
            .orders
            .iter()
            .position(|order| order.id == order_id)
            .ok_or(Reject::UnknownOrder)?;
        if self.orders[index].account != account {
            return Err(Reject::NotOwner);
        }
        Ok(index)
    }

    fn remove(&mut self, index: usize) -> Order {
        let order = self.orders.remove(index);
        let asset = self.held_asset(order.symbol, order.side);
        let held = hold(order.side, order.price, order.remaining).unwrap();
        let balance = self.balance(order.account, asset);
        balance.1 -= held;
        balance.0 += held;
        self.touched.insert((order.side, order.price));
        order
    }

    /// The best resting order against an incoming `side` at `limit`, by scanning them all.
    fn best_counter(&self, symbol: u32, side: Side, limit: Option<u64>) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (index, order) in self.orders.iter().enumerate() {
            if order.symbol != symbol || order.side == side {
                continue;
            }
            let crosses = match (side, limit) {
                (_, None) => true,
                (Side::Buy, Some(limit)) => order.price <= limit,
                (Side::Sell, Some(limit)) => order.price >= limit,
            };
            if !crosses {
                continue;
            }
            let better = match best.map(|best| self.orders[best]) {
                None => true,
                Some(current) => {
                    let price_better = match side {
                        Side::Buy => order.price < current.price,
                        Side::Sell => order.price > current.price,
                    };
                    price_better
                        || (order.price == current.price && order.arrival < current.arrival)
                }
            };
            if better {
                best = Some(index);
            }
        }
        best
    }

    #[allow(clippy::too_many_arguments)]
    fn execute(
        &mut self,
        order_id: u64,
        account: u64,
        symbol: u32,
        side: Side,
        kind: OrderKind,
        price: u64,
        quantity: u64,
        events: &mut Vec<Event>,
    ) {
        let (base, quote) = self.symbols[&symbol];
        let limit = (kind != OrderKind::Market).then_some(price);
        // First, what would fill, on a copy: a fill-or-kill order must fill completely or not
        // at all.
        let saved_orders = self.orders.clone();
        let saved_balances = self.balances.clone();
        let mut budget = (kind == OrderKind::Market && side == Side::Buy)
            .then(|| self.balance(account, quote).0);
        let mut left = quantity;
        let mut stopped_by_funds = false;
        let mut trades = Vec::new();
        while left > 0 {
            let Some(index) = self.best_counter(symbol, side, limit) else { break };
            let maker = self.orders[index];
            let mut take = maker.remaining.min(left);
            if let Some(budget) = budget.as_mut() {
                let affordable = *budget / maker.price;
                if affordable < take {
                    take = affordable;
                    stopped_by_funds = true;
                }
                *budget -= take * maker.price;
            }
            if take == 0 {
                break;
            }
            let cost = take * maker.price;
            match side {
                Side::Buy => {
                    self.balance(account, quote).0 -= cost;
                    self.balance(account, base).0 += take;
                    self.balance(maker.account, base).1 -= take;
                    self.balance(maker.account, quote).0 += cost;
                }
                Side::Sell => {
                    self.balance(account, base).0 -= take;
                    self.balance(account, quote).0 += cost;
                    self.balance(maker.account, quote).1 -= cost;
                    self.balance(maker.account, base).0 += take;
                }
            }
            self.orders[index].remaining -= take;
            if self.orders[index].remaining == 0 {
                self.orders.remove(index);
            }
            trades.push((maker, take));
            left -= take;
            if stopped_by_funds {
                break;
            }
        }
        if kind == OrderKind::FillOrKill && left > 0 {
            self.orders = saved_orders;
            self.balances = saved_balances;
            events.push(Event::Cancelled {
                order_id,
                remaining: quantity,
                reason: CancelReason::FillOrKill,
            });
            return;
        }
        for (maker, take) in trades {
            events.push(Event::Traded {
                symbol,
                price: maker.price,
                quantity: take,
                maker_order_id: maker.id,
                taker_order_id: order_id,
                maker_account: maker.account,
                taker_account: account,
                taker_side: side,
            });
            self.touched.insert((maker.side, maker.price));
        }
        if left == 0 {
            return;
        }
        if kind == OrderKind::GoodTillCancelled {
            let asset = self.held_asset(symbol, side);
            let needed = hold(side, price, left).unwrap();
            let balance = self.balance(account, asset);
            balance.0 -= needed;
            balance.1 += needed;
            self.arrivals += 1;
            self.orders.push(Order {
                arrival: self.arrivals,
                id: order_id,
                account,
                symbol,
                side,
                price,
                remaining: left,
            });
            self.touched.insert((side, price));
            events.push(Event::Rested { order_id, symbol, side, price, remaining: left });
        } else {
            let reason = if stopped_by_funds {
                CancelReason::InsufficientFunds
            } else {
                CancelReason::Unfilled
            };
            events.push(Event::Cancelled { order_id, remaining: left, reason });
        }
    }

    fn levels(&self, symbol: u32, events: &mut Vec<Event>) {
        for &(side, price) in &self.touched {
            let quantity = self
                .orders
                .iter()
                .filter(|o| o.symbol == symbol && o.side == side && o.price == price)
                .map(|o| o.remaining)
                .sum();
            events.push(Event::BookLevel { symbol, side, price, quantity });
        }
    }

    /// A symbol's orders in priority order: bids best first, then asks best first.
    fn book(&self, symbol: u32) -> Vec<RestingOrder> {
        let mut orders: Vec<Order> =
            self.orders.iter().copied().filter(|order| order.symbol == symbol).collect();
        orders.sort_by_key(|order| match order.side {
            Side::Buy => (0, u64::MAX - order.price, order.arrival),
            Side::Sell => (1, order.price, order.arrival),
        });
        orders
            .into_iter()
            .map(|order| RestingOrder {
                order_id: order.id,
                account: order.account,
                side: order.side,
                price: order.price,
                remaining: order.remaining,
            })
            .collect()
    }
}

fn random_command(rng: &mut SplitMix64) -> Command {
    let account = rng.below(6); // 0 is invalid, 5 is never funded.
    let symbol = rng.below(4) as u32; // 0 invalid, 3 never listed (mostly).
    let order_id = rng.below(40);
    let side = if rng.chance(500) { Side::Buy } else { Side::Sell };
    let price = match rng.below(100) {
        0 => 0,
        1 => u64::MAX / 2,
        _ => 95 + rng.below(11),
    };
    let quantity = match rng.below(50) {
        0 => 0,
        1 => u64::MAX / 3,
        _ => 1 + rng.below(12),
    };
    match rng.below(100) {
        0..=2 => Command::AddSymbol {
            symbol: rng.below(4) as u32,
            base: rng.below(4) as u32 + 10,
            quote: rng.below(3) as u32 + 11,
        },
        3..=9 => Command::Deposit {
            account: account.min(4),
            asset: [0, 10, 11, 12, 13][rng.below(5) as usize],
            amount: match rng.below(40) {
                0 => 0,
                1 => u64::MAX - rng.below(10),
                _ => rng.below(3_000),
            },
        },
        10..=12 => Command::Withdraw {
            account,
            asset: [0, 10, 11, 12, 13][rng.below(5) as usize],
            amount: rng.below(500),
        },
        13..=59 => {
            let kind = match rng.below(10) {
                0..=4 => OrderKind::GoodTillCancelled,
                5 | 6 => OrderKind::ImmediateOrCancel,
                7 => OrderKind::FillOrKill,
                _ => OrderKind::Market,
            };
            let price = match (kind, rng.chance(950)) {
                (OrderKind::Market, true) => 0,
                (OrderKind::Market, false) => price.max(1),
                (_, _) => price,
            };
            Command::Place { order_id, account, symbol, side, kind, price, quantity }
        }
        60..=79 => Command::Cancel { order_id, account },
        _ => Command::Amend { order_id, account, price, quantity },
    }
}

/// Runs the commands through the exchange and the model side by side, checking everything after
/// each; every so often the exchange is replaced by its snapshot's decoding. Returns the
/// rejections and cancel reasons seen.
fn check_case(
    seed: u64,
    commands: impl IntoIterator<Item = Command>,
) -> (BTreeSet<Reject>, BTreeSet<String>) {
    let mut reasons = BTreeSet::new();
    let mut outcomes = BTreeSet::new();
    let mut exchange = Exchange::new();
    let mut model = Model::default();
    let mut output = Output::new();
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    for (sequence, command) in (1..).zip(commands) {
        output.clear();
        exchange.apply(&Context { sequence, timestamp_ns: sequence }, &command, &mut output);
        let expected = model.apply(command);
        assert_eq!(
            output.events(),
            &expected[..],
            "seed {seed}: the events of command {sequence} ({command:?}) differ"
        );
        for event in &expected {
            match event {
                Event::Rejected { reason, .. } => {
                    reasons.insert(*reason);
                }
                Event::Cancelled { reason, .. } => {
                    outcomes.insert(format!("{reason:?}"));
                }
                Event::Traded { .. } => {
                    outcomes.insert("traded".into());
                }
                _ => {}
            }
        }
        exchange.check_invariants().unwrap_or_else(|error| panic!("seed {seed}: {error}"));
        for &symbol in model.symbols.keys() {
            assert_eq!(
                exchange.book_orders(symbol).expect("listed"),
                model.book(symbol),
                "seed {seed}: book {symbol} after command {sequence} ({command:?})"
            );
        }
        for account in exchange.accounts() {
            for (asset, balance) in exchange.balances(account) {
                let expected = model.balances.get(&(account.id, asset)).copied().unwrap_or((0, 0));
                assert_eq!(
                    (balance.available, balance.held),
                    expected,
                    "seed {seed}: account {} asset {asset} after command {sequence}",
                    account.id
                );
            }
        }
        assert_eq!(exchange.asset_totals(), &model.totals, "seed {seed}");
        kept_hash::check_kept_hash(&mut exchange, &mut rng, || {
            format!("seed {seed}, after command {sequence} ({command:?})")
        });
    }
    (reasons, outcomes)
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("KEEL_SEED") {
        return vec![seed.parse().expect("KEEL_SEED is a number")];
    }
    let cases: u64 = std::env::var("KEEL_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(150);
    let base = keel_examples::rng::seed_from_environment();
    println!("seeds {base} + 0..{cases} (KEEL_SEED=N repeats one)");
    (0..cases).map(|case| base.wrapping_add(case)).collect()
}

#[test]
fn the_exchange_matches_the_naive_book_on_random_commands() {
    let mut reasons_seen = BTreeSet::new();
    let mut outcomes_seen = BTreeSet::new();
    for seed in seeds() {
        let mut rng = SplitMix64::new(seed);
        // Two symbols listed and every account funded first, so that most commands trade.
        let mut commands = vec![
            Command::AddSymbol { symbol: 1, base: 10, quote: 11 },
            Command::AddSymbol { symbol: 2, base: 12, quote: 11 },
        ];
        for account in 1..=4 {
            for asset in [10, 11, 12] {
                commands.push(Command::Deposit { account, asset, amount: 2_000 });
            }
        }
        commands.extend(std::iter::repeat_with(|| random_command(&mut rng)).take(1_500));
        let (reasons, outcomes) = check_case(seed, commands);
        reasons_seen.extend(reasons);
        outcomes_seen.extend(outcomes);
    }
    if std::env::var("KEEL_SEED").is_err() {
        let missing: Vec<_> =
            Reject::ALL.iter().filter(|reason| !reasons_seen.contains(reason)).collect();
        assert!(missing.is_empty(), "the random cases never produced {missing:?}");
        for outcome in ["traded", "Requested", "Unfilled", "FillOrKill", "InsufficientFunds"] {
            assert!(outcomes_seen.contains(outcome), "never saw {outcome}: {outcomes_seen:?}");
        }
    }
}

#[test]
fn the_exchange_matches_the_naive_book_on_the_realistic_workload() {
    for seed in seeds().into_iter().take(3) {
        let mut workload = Workload::new(seed, 50, 2, Mix::REALISTIC, 1);
        let commands: Vec<Command> = workload
            .setup()
            .into_iter()
            .chain(std::iter::repeat_with(|| workload.next_command()).take(20_000))
            .collect();
        let (_, outcomes) = check_case(seed, commands);
        assert!(outcomes.contains("traded"), "the workload trades");
    }
}

/// The state hash sees the books' priority order, not only which orders rest: two exchanges
/// whose books hold the same orders in the same slots, one queue in the other order, hash
/// differently.
#[test]
fn the_state_hash_sees_time_priority() {
    let run = |amended: u64| {
        let mut exchange = Exchange::new();
        let mut output = Output::new();
        let bid = |order_id| Command::Place {
            order_id,
            account: 1,
            symbol: 1,
            side: Side::Buy,
            kind: OrderKind::GoodTillCancelled,
            price: 50,
            quantity: 5,
        };
        let commands = [
            Command::AddSymbol { symbol: 1, base: 10, quote: 11 },
            Command::Deposit { account: 1, asset: 10, amount: 100 },
            Command::Deposit { account: 1, asset: 11, amount: 10_000 },
            bid(1),
            bid(2),
            // A larger quantity sends the order to the back of its level (into the slot it
            // left, the most recently freed); the smaller one after keeps that place.
            Command::Amend { order_id: amended, account: 1, price: 50, quantity: 6 },
            Command::Amend { order_id: amended, account: 1, price: 50, quantity: 5 },
        ];
        for (sequence, command) in (1..).zip(commands) {
            exchange.apply(&Context { sequence, timestamp_ns: sequence }, &command, &mut output);
        }
        exchange.check_invariants().expect("consistent");
        let priority: Vec<u64> =
            exchange.book_orders(1).expect("listed").iter().map(|order| order.order_id).collect();
        (exchange.state_hash(), priority)
    };
    let (first_moved, priority) = run(1);
    assert_eq!(priority, [2, 1]);
    let (second_moved, priority) = run(2);
    assert_eq!(priority, [1, 2]);
    assert_ne!(first_moved, second_moved);
}
