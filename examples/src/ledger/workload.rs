//! A seeded ledger workload: the accounts and their funding, then a stream of transfers in the
//! mix a payment service sees. The same seed gives the same commands on every machine and
//! every build ([`crate::rng`]).

use super::{flags, Command};
use crate::rng::SplitMix64;

/// The first customer account's id; ids `1..=codes` are the issuers'.
pub const FIRST_CUSTOMER: u64 = 1_000;

/// What each customer account is funded with.
pub const FUNDING: u64 = 1_000_000;

/// How the traffic is made up, in commands per thousand. The rest are plain transfers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// Pending transfers (half with a timeout of 1 to 100 ms, half without).
    pub pending: u64,
    /// Posts of a recent pending transfer (some already resolved: rejected).
    pub post: u64,
    /// Voids of a recent pending transfer.
    pub void: u64,
    /// Exact retries of a recent command (answered from the record).
    pub retry: u64,
    /// Commands a client gets wrong: an unknown account, a zero amount, another code's
    /// account, a reused id with other fields.
    pub invalid: u64,
}

impl Mix {
    /// Mostly transfers between customers; some two-phase, some retries, a few mistakes.
    pub const PAYMENTS: Mix = Mix { pending: 40, post: 30, void: 10, retry: 20, invalid: 20 };
    /// Plain transfers only.
    pub const TRANSFERS: Mix = Mix { pending: 0, post: 0, void: 0, retry: 0, invalid: 0 };
}

/// Recent commands kept for retries and recent pending ids for posts and voids.
const RECENT: usize = 64;

/// The workload's generator.
#[derive(Clone, Debug)]
pub struct Workload {
    rng: SplitMix64,
    customers: u64,
    codes: u32,
    /// `customers % codes` without a division: the three 64-bit divisions a pair took were
    /// a tenth of the generator's time, on the core the gateway shares.
    code_of: Remainder,
    /// Customers per code: `customers / codes`, and one more for the first
    /// `customers % codes` codes.
    per_code: u64,
    per_code_extra: u64,
    mix: Mix,
    next_id: u64,
    recent: [Option<Command>; RECENT],
    recent_pending: [u64; RECENT],
    commands: u64,
}

impl Workload {
    /// A workload over `customers` customer accounts spread over `codes` currencies, whose
    /// transfer ids start at `first_transfer_id` and ascend (retries reuse earlier ones).
    pub fn new(seed: u64, customers: u64, codes: u32, mix: Mix, first_transfer_id: u64) -> Self {
        assert!(customers >= u64::from(codes) && codes > 0, "at least one customer per code");
        Self {
            rng: SplitMix64::new(seed),
            customers,
            codes,
            code_of: Remainder::new(codes),
            per_code: customers / u64::from(codes),
            per_code_extra: customers % u64::from(codes),
            mix,
            next_id: first_transfer_id.max(1),
            recent: [None; RECENT],
            recent_pending: [0; RECENT],
            commands: 0,
        }
    }

    /// The id of customer `index` (from 0).
    pub fn customer(index: u64) -> u64 {
        FIRST_CUSTOMER + index
    }

    /// The code of customer `index` with `codes` codes.
    pub fn customer_code(index: u64, codes: u32) -> u32 {
        (index % u64::from(codes)) as u32 + 1
    }

    /// The next transfer id the traffic will use.
    pub fn next_transfer_id(&self) -> u64 {
        self.next_id
    }

    /// The setup: an issuer account per code (no limits: its balance goes negative as it
    /// issues money), every customer account (debits may not exceed credits), and a funding
    /// transfer from its issuer to each customer. Uses transfer ids from the workload's first.
    pub fn setup(&mut self) -> Vec<Command> {
        let codes = self.codes;
        let mut commands = Vec::with_capacity((2 * self.customers + u64::from(codes)) as usize);
        for code in 1..=codes {
            commands.push(Command::CreateAccount { id: u64::from(code), code, flags: 0 });
        }
        for index in 0..self.customers {
            commands.push(Command::CreateAccount {
                id: Self::customer(index),
                code: Self::customer_code(index, codes),
                flags: flags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            });
        }
        for index in 0..self.customers {
            let code = Self::customer_code(index, codes);
            commands.push(Command::Transfer {
                id: self.take_id(),
                debit: u64::from(code),
                credit: Self::customer(index),
                amount: FUNDING,
                code,
            });
        }
        commands
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// A random customer and another of the same code (possibly the same one: a mistake
    /// the ledger rejects). Inlined: returned through memory, its two ids were read back as
    /// one 16-byte load that no store could forward, a stall that was a third of the
    /// generator's time.
    #[inline(always)]
    fn pair(&mut self) -> (u64, u64, u32) {
        let from = self.rng.below(self.customers);
        let code_index = self.code_of.of(from);
        // The customers of this code are the indices `code_index + k * codes` below
        // `customers`: `(customers - code_index).div_ceil(codes)` of them.
        let per_code = self.per_code + u64::from(u64::from(code_index) < self.per_code_extra);
        let to = self.rng.below(per_code) * u64::from(self.codes) + u64::from(code_index);
        (Self::customer(from), Self::customer(to), code_index + 1)
    }

    fn amount(&mut self) -> u64 {
        1 + self.rng.below(2_000)
    }

    /// The next command of the traffic.
    pub fn next_command(&mut self) -> Command {
        let roll = self.rng.below(1000);
        let mix = self.mix;
        let pending = mix.pending;
        let post = pending + mix.post;
        let void = post + mix.void;
        let retry = void + mix.retry;
        let invalid = retry + mix.invalid;
        let command = if roll < pending {
            let (debit, credit, code) = self.pair();
            let timeout_ns =
                if self.rng.chance(500) { 0 } else { (1 + self.rng.below(100)) * 1_000_000 };
            let id = self.take_id();
            self.recent_pending[self.rng.below(RECENT as u64) as usize] = id;
            Command::Pending { id, debit, credit, amount: self.amount(), code, timeout_ns }
        } else if roll < post {
            let pending_id = self.recent_pending[self.rng.below(RECENT as u64) as usize];
            let amount = if self.rng.chance(500) { 0 } else { self.amount() };
            Command::Post { id: self.take_id(), pending_id, amount }
        } else if roll < void {
            let pending_id = self.recent_pending[self.rng.below(RECENT as u64) as usize];
            Command::Void { id: self.take_id(), pending_id }
        } else if roll < retry {
            match self.recent[self.rng.below(RECENT as u64) as usize] {
                Some(command) => command,
                None => self.transfer(),
            }
        } else if roll < invalid {
            self.mistake()
        } else {
            self.transfer()
        };
        // Only retries and mistakes read the recent commands; a mix without them skips the
        // copy, which reads back the command just written, field by field, as wider loads.
        if mix.retry + mix.invalid > 0 {
            self.recent[(self.commands % RECENT as u64) as usize] = Some(command);
        }
        self.commands += 1;
        command
    }

    fn transfer(&mut self) -> Command {
        let (debit, credit, code) = self.pair();
        Command::Transfer { id: self.take_id(), debit, credit, amount: self.amount(), code }
    }

    fn mistake(&mut self) -> Command {
        let (debit, credit, code) = self.pair();
        let amount = self.amount();
        match self.rng.below(4) {
            0 => Command::Transfer {
                id: self.take_id(),
                debit,
                credit: Self::customer(self.customers + self.rng.below(1000)),
                amount,
                code,
            },
            1 => Command::Transfer { id: self.take_id(), debit, credit, amount: 0, code },
            2 => Command::Transfer {
                id: self.take_id(),
                debit,
                credit,
                amount,
                code: code % self.codes + 1,
            },
            _ => match self.recent[self.rng.below(RECENT as u64) as usize] {
                Some(Command::Transfer { id, debit, credit, amount, code }) => {
                    Command::Transfer { id, debit, credit, amount: amount + 1, code }
                }
                _ => self.transfer(),
            },
        }
    }
}

/// `value % divisor` by Lemire, Kaser and Kurz's multiplications ("Faster remainder by direct
/// computation", 2019), exact for every value and divisor below 2³²; larger values take the
/// division.
#[derive(Clone, Copy, Debug)]
struct Remainder {
    divisor: u32,
    /// ⌈2⁶⁴ / divisor⌉, which wraps to 0 for a divisor of 1 (every remainder is then 0).
    magic: u64,
}

impl Remainder {
    fn new(divisor: u32) -> Self {
        assert!(divisor > 0, "a remainder by zero");
        Self { divisor, magic: (u64::MAX / u64::from(divisor)).wrapping_add(1) }
    }

    #[inline]
    fn of(self, value: u64) -> u32 {
        match u32::try_from(value) {
            Ok(value) => {
                let fraction = self.magic.wrapping_mul(u64::from(value));
                ((u128::from(fraction) * u128::from(self.divisor)) >> 64) as u32
            }
            Err(_) => (value % u64::from(self.divisor)) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_commands_and_pairs_keep_to_one_code() {
        let mut first = Workload::new(42, 1_001, 3, Mix::PAYMENTS, 1);
        let mut second = Workload::new(42, 1_001, 3, Mix::PAYMENTS, 1);
        assert_eq!(first.setup(), second.setup());
        for _ in 0..10_000 {
            assert_eq!(first.next_command(), second.next_command());
        }
        for _ in 0..10_000 {
            let (debit, credit, code) = first.pair();
            let index = |id: u64| id - FIRST_CUSTOMER;
            assert!(index(debit) < 1_001 && index(credit) < 1_001);
            assert_eq!(Workload::customer_code(index(debit), 3), code);
            assert_eq!(Workload::customer_code(index(credit), 3), code);
        }
    }

    #[test]
    fn remainders_by_multiplication_equal_those_of_the_operator() {
        let mut rng = SplitMix64::new(7);
        let divisors = [1, 2, 3, 4, 7, 10, 1_000, 65_537, (1 << 31) + 11, u32::MAX - 1, u32::MAX];
        let drawn: Vec<u32> = (0..200).map(|_| rng.next_u64() as u32 | 1).collect();
        for divisor in divisors.into_iter().chain(drawn) {
            let remainder = Remainder::new(divisor);
            let edges = [0, 1, u64::from(divisor) - 1, u64::from(divisor), u64::from(u32::MAX)];
            let above = [1 << 32, u64::MAX, u64::MAX - u64::from(divisor)];
            let random: Vec<u64> =
                (0..500).map(|_| rng.next_u64() >> (rng.next_u64() % 64)).collect();
            for value in edges.into_iter().chain(above).chain(random) {
                let expected = (value % u64::from(divisor)) as u32;
                assert_eq!(remainder.of(value), expected, "{value} % {divisor}");
            }
        }
    }

    #[test]
    fn pairs_keep_the_workload_every_earlier_build_generated() {
        // The generator's pairs as they were computed before the divisions were taken out:
        // a seed must give the same commands with every build.
        for (customers, codes) in [(1_000, 4), (1_001, 3), (7, 7), (100_003, 16), (5, 1)] {
            let mut workload = Workload::new(3, customers, codes, Mix::TRANSFERS, 1);
            let mut reference = SplitMix64::new(3);
            for _ in 0..20_000 {
                let codes = u64::from(codes);
                let from = reference.below(customers);
                let code_index = from % codes;
                let per_code = (customers - code_index).div_ceil(codes);
                let to = reference.below(per_code) * codes + code_index;
                let expected = (
                    Workload::customer(from),
                    Workload::customer(to),
                    Workload::customer_code(from, codes as u32),
                );
                assert_eq!(workload.pair(), expected);
            }
        }
    }
}
