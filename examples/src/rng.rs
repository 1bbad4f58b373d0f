//! The examples' random numbers: SplitMix64, written out here rather than taken from a crate
//! so that a seed printed today generates the same workload with every future build (a
//! crate's generator may change between versions).

/// SplitMix64 (Steele, Lea and Flood, 2014): one add and a few multiplies per number, full
/// period 2⁶⁴, good enough statistics for workloads and test cases. Not for secrets.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator from `seed`: the same seed, the same numbers.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut value = self.state;
        value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        value ^ (value >> 31)
    }

    /// A number in `0..bound` (`bound` > 0), by Lemire's multiply-shift: no division, and a
    /// bias below 2⁻³² for the bounds used here.
    #[inline]
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// True with probability `per_mille / 1000`.
    #[inline]
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// A seed for a run that was not given one: from the clock, so that runs differ; printed by
/// whoever uses it, so that a run can be repeated with `KEEL_SEED`.
pub fn seed_from_environment() -> u64 {
    match std::env::var("KEEL_SEED") {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            panic!("KEEL_SEED must be an unsigned integer, not {text:?}");
        }),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5eed, |elapsed| elapsed.as_nanos() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // The first outputs for seed 1234567 from the reference C implementation
        // (xoshiro.di.unimi.it/splitmix64.c).
        let mut generator = SplitMix64::new(1_234_567);
        assert_eq!(generator.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(generator.next_u64(), 3_203_168_211_198_807_973);
        assert_eq!(generator.next_u64(), 9_817_491_932_198_370_423);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut generator = SplitMix64::new(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let value = generator.below(10);
            assert!(value < 10);
            seen[value as usize] = true;
        }
        assert!(seen.iter().all(|&seen| seen));
    }
}
