//! A seeded exchange workload in the shape of exchange-core's and LMAX's test traffic: mostly
//! limit orders a few ticks from the touch, many cancels, some amends, immediate-or-cancel and
//! fill-or-kill orders that cross, and a few market orders. Prices random-walk around a mid
//! per symbol. The same seed gives the same commands on every machine and build.

use super::{Command, OrderKind, Side};
use crate::rng::SplitMix64;

/// The quote asset every symbol is priced in.
pub const QUOTE_ASSET: u32 = 1;

/// The first symbol's base asset; symbol `s` (from 1) trades asset `BASE_ASSET + s`.
pub const BASE_ASSET: u32 = 100;

/// The first account's id.
pub const FIRST_ACCOUNT: u64 = 1;

/// Each account's deposit of the quote asset, and of each base asset.
pub const QUOTE_DEPOSIT: u64 = 1_000_000_000_000;
/// Each account's deposit of each base asset.
pub const BASE_DEPOSIT: u64 = 1_000_000_000;

/// Where prices start, in ticks.
const START_PRICE: u64 = 10_000;

/// How the traffic is made up, in commands per thousand (the rest are good-till-cancelled
/// limit orders).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Cancels of a recent order (some already filled: rejected as unknown).
    pub cancel: u64,
    /// Amends of a recent order: a new price near the touch, or a new size.
    pub amend: u64,
    /// Immediate-or-cancel orders priced to cross.
    pub immediate: u64,
    /// Fill-or-kill orders priced to cross.
    pub fill_or_kill: u64,
    /// Market orders.
    pub market: u64,
}

impl Mix {
    /// exchange-core's shape: half the traffic new resting orders, a quarter cancels.
    pub const REALISTIC: Mix =
        Mix { cancel: 250, amend: 100, immediate: 100, fill_or_kill: 20, market: 30 };
}

/// Recent orders kept for cancels and amends.
const RECENT: usize = 1024;

/// The workload's generator.
#[derive(Clone, Debug)]
pub struct Workload {
    rng: SplitMix64,
    accounts: u64,
    symbols: u32,
    mix: Mix,
    next_order_id: u64,
    /// Each symbol's mid price, in ticks.
    mids: Vec<u64>,
    /// Recent orders: (id, account, symbol, side); id 0 while empty.
    recent: Vec<(u64, u64, u32, Side)>,
    placed: u64,
}

impl Workload {
    /// A workload over `accounts` accounts trading `symbols` symbols, whose order ids start
    /// at `first_order_id`.
    pub fn new(seed: u64, accounts: u64, symbols: u32, mix: Mix, first_order_id: u64) -> Self {
        assert!(accounts > 0 && symbols > 0, "at least one account and one symbol");
        Self {
            rng: SplitMix64::new(seed),
            accounts,
            symbols,
            mix,
            next_order_id: first_order_id.max(1),
            mids: vec![START_PRICE; symbols as usize],
            recent: vec![(0, 0, 0, Side::Buy); RECENT],
            placed: 0,
        }
    }

    /// The next order id the traffic will use.
    pub fn next_order_id(&self) -> u64 {
        self.next_order_id
    }

    /// The base asset of symbol `symbol`.
    pub fn base_asset(symbol: u32) -> u32 {
        BASE_ASSET + symbol
    }

    /// The setup: the symbols, and a deposit of the quote asset and every base asset into
    /// each account.
    pub fn setup(&self) -> Vec<Command> {
        let mut commands = Vec::new();
        for symbol in 1..=self.symbols {
            commands.push(Command::AddSymbol {
                symbol,
                base: Self::base_asset(symbol),
                quote: QUOTE_ASSET,
            });
        }
        for account in FIRST_ACCOUNT..FIRST_ACCOUNT + self.accounts {
            commands.push(Command::Deposit { account, asset: QUOTE_ASSET, amount: QUOTE_DEPOSIT });
            for symbol in 1..=self.symbols {
                commands.push(Command::Deposit {
                    account,
                    asset: Self::base_asset(symbol),
                    amount: BASE_DEPOSIT,
                });
            }
        }
        commands
    }

    fn side(&mut self) -> Side {
        if self.rng.chance(500) {
            Side::Buy
        } else {
            Side::Sell
        }
    }

    /// A price `ticks` away from the mid, on the passive side for `side` when `passive`.
    fn price(&self, symbol: u32, side: Side, ticks: u64, passive: bool) -> u64 {
        let mid = self.mids[symbol as usize - 1];
        match (side, passive) {
            (Side::Buy, true) | (Side::Sell, false) => mid - ticks,
            (Side::Buy, false) | (Side::Sell, true) => mid + ticks,
        }
    }

    fn quantity(&mut self) -> u64 {
        1 + self.rng.below(100)
    }

    /// The next command of the traffic.
    pub fn next_command(&mut self) -> Command {
        // The mid drifts a tick now and then, so that old orders end up deep in the book or
        // are crossed by new ones.
        if self.rng.chance(16) {
            let symbol = self.rng.below(u64::from(self.symbols)) as usize;
            let mid = &mut self.mids[symbol];
            *mid = if self.rng.chance(500) { *mid + 1 } else { (*mid - 1).max(1_000) };
        }
        let roll = self.rng.below(1000);
        let mix = self.mix;
        let cancel = mix.cancel;
        let amend = cancel + mix.amend;
        let immediate = amend + mix.immediate;
        let fill_or_kill = immediate + mix.fill_or_kill;
        let market = fill_or_kill + mix.market;
        if roll < cancel {
            if let Some((order_id, account, _, _)) = self.recent_order(true) {
                return Command::Cancel { order_id, account };
            }
        } else if roll < amend {
            if let Some((order_id, account, symbol, side)) = self.recent_order(false) {
                let ticks = self.rng.below(8);
                let price = self.price(symbol, side, ticks, true);
                let quantity = self.quantity();
                return Command::Amend { order_id, account, price, quantity };
            }
        }
        let account = FIRST_ACCOUNT + self.rng.below(self.accounts);
        let symbol = 1 + self.rng.below(u64::from(self.symbols)) as u32;
        let side = self.side();
        let quantity = self.quantity();
        let crossing = self.rng.below(4);
        let (kind, price) = if roll < immediate {
            (OrderKind::ImmediateOrCancel, self.price(symbol, side, crossing, false))
        } else if roll < fill_or_kill {
            (OrderKind::FillOrKill, self.price(symbol, side, crossing, false))
        } else if roll < market {
            (OrderKind::Market, 0)
        } else if self.rng.chance(100) {
            // An aggressive resting order: it trades, and its remainder rests.
            (OrderKind::GoodTillCancelled, self.price(symbol, side, crossing, false))
        } else {
            let ticks = 1 + self.rng.below(10);
            (OrderKind::GoodTillCancelled, self.price(symbol, side, ticks, true))
        };
        let order_id = self.next_order_id;
        self.next_order_id += 1;
        if kind == OrderKind::GoodTillCancelled {
            self.recent[(self.placed % RECENT as u64) as usize] = (order_id, account, symbol, side);
            self.placed += 1;
        }
        Command::Place { order_id, account, symbol, side, kind, price, quantity }
    }

    /// A recent resting order (it may have filled or been cancelled since), forgotten when
    /// `take` (a cancel: the workload does not cancel an order twice); `None` when the slot
    /// drawn is empty, and the command becomes a new order instead.
    fn recent_order(&mut self, take: bool) -> Option<(u64, u64, u32, Side)> {
        let index = self.rng.below(RECENT as u64) as usize;
        let found = self.recent[index];
        if take {
            self.recent[index].0 = 0;
        }
        (found.0 != 0).then_some(found)
    }
}

/// What [`apply_directly`] did.
#[derive(Debug)]
pub struct Applied {
    /// The time the traffic took (the setup and the making of the commands not included).
    pub elapsed: std::time::Duration,
    /// The events the traffic emitted.
    pub events: u64,
    /// The exchange after it.
    pub exchange: super::Exchange,
}

/// Applies the setup and then `commands` commands of `workload` straight to an `Exchange` with
/// room for `accounts` accounts, on this thread, numbered from 1 as the engine numbers them: no
/// engine, no journal, no rings. The commands are made before the clock starts. The state
/// machine's own rate, for `keel-bench`'s `exchange machine` case and for profilers and cache
/// simulators. With `hash_every` above 0, the state hash is asked for every that many
/// commands, as checkpoints ask for it.
pub fn apply_directly(
    mut workload: Workload,
    accounts: usize,
    commands: u64,
    hash_every: u64,
) -> Applied {
    let setup = workload.setup();
    let traffic: Vec<Command> = (0..commands).map(|_| workload.next_command()).collect();
    let mut exchange = super::Exchange::with_capacity(accounts, 1 << 20);
    let (elapsed, events) =
        crate::direct::apply_in_order(&mut exchange, &setup, &traffic, hash_every);
    Applied { elapsed, events, exchange }
}
