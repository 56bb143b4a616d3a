//! numpy's legacy `np.random.RandomState(seed)`: the MT19937 generator with numpy's integer
//! seeding, and `permutation(n)` with the legacy Fisher-Yates shuffle and bounded integers by
//! rejection on a bit mask. torch-fidelity shuffles the IS logits with `RandomState(2020)`, so this
//! is needed to reproduce its splits.

const STATE_LEN: usize = 624;
const SHIFT: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// Mersenne Twister MT19937 seeded like `RandomState(seed)` for an integer seed.
#[derive(Clone, Debug)]
pub struct Mt19937 {
    state: [u32; STATE_LEN],
    index: usize,
}

impl Mt19937 {
    /// Knuth's linear-congruential initialisation of the state from a 32-bit seed.
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; STATE_LEN];
        state[0] = seed;
        for i in 1..STATE_LEN {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        Self { state, index: STATE_LEN }
    }

    fn regenerate(&mut self) {
        for i in 0..STATE_LEN {
            let y = (self.state[i] & UPPER_MASK) | (self.state[(i + 1) % STATE_LEN] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.state[i] = self.state[(i + SHIFT) % STATE_LEN] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// Next tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= STATE_LEN {
            self.regenerate();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Two outputs as one 64-bit value (high word first), as numpy's MT19937 `next_uint64`.
    pub fn next_u64(&mut self) -> u64 {
        let high = self.next_u32() as u64;
        (high << 32) | self.next_u32() as u64
    }

    /// Uniform integer in `[0, max]` by masking to the smallest covering power of two and
    /// rejecting values above `max`.
    pub fn random_interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mask = u64::MAX >> max.leading_zeros();
        loop {
            let value = if max <= u32::MAX as u64 { (self.next_u32() as u64) & mask } else { self.next_u64() & mask };
            if value <= max {
                return value;
            }
        }
    }

    /// `RandomState.permutation(n)`: shuffle of `0..n`, swapping from the last position down.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut out: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.random_interval(i as u64) as usize;
            out.swap(i, j);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_mt19937_outputs() {
        // First outputs of the reference MT19937 for init_genrand(5489), the generator's
        // published default seed (also std::mt19937's default).
        let mut rng = Mt19937::new(5489);
        let first: Vec<u32> = (0..3).map(|_| rng.next_u32()).collect();
        assert_eq!(first, vec![3_499_211_612, 581_869_302, 3_890_346_734]);
        // The 10000th output of std::mt19937 (C++11 requirement [rand.predef]).
        let mut rng = Mt19937::new(5489);
        let ten_thousandth = (0..10_000).map(|_| rng.next_u32()).last().unwrap();
        assert_eq!(ten_thousandth, 4_123_659_995);
    }

    #[test]
    fn interval_stays_in_range_and_permutation_is_bijective() {
        let mut rng = Mt19937::new(1);
        for max in [1u64, 2, 5, 1000, u32::MAX as u64 + 7] {
            assert!((0..200).all(|_| rng.random_interval(max) <= max));
        }
        let mut p = Mt19937::new(2020).permutation(1000);
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }
}
