//! A small deterministic PRNG: SplitMix64 (Steele, Lea and Flood, 2014; Vigna's reference
//! constants).
//!
//! Shuffles, splits and the synthetic generator depend on it, and their results are part of
//! saved training state (a resumed run must replay the same data order), so the generator is
//! defined here, bit for bit, instead of taken from a crate whose streams may change between
//! versions.
//!
//! State update and output, all arithmetic mod 2^64:
//! ```text
//! s   <- s + 0x9E3779B97F4A7C15
//! z    = s
//! z    = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
//! z    = (z ^ (z >> 27)) * 0x94D049BB133111EB
//! out  = z ^ (z >> 31)
//! ```

/// SplitMix64 generator. Cloning copies the position in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl SplitMix64 {
    /// A generator whose first output is `mix(seed + GOLDEN_GAMMA)`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for a sub-stream, e.g. `(seed, epoch)`: the seed and the stream number are
    /// mixed so that neighbouring streams are unrelated.
    pub fn for_stream(seed: u64, stream: u64) -> Self {
        let mut g = Self::new(seed ^ mix(stream.wrapping_add(GOLDEN_GAMMA)));
        // One discarded output so that stream 0 does not start at the raw seed's stream.
        g.next_u64();
        g
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix(self.state)
    }

    /// A uniform integer in `0..n` (`n > 0`), without modulo bias (Lemire's multiply-shift with
    /// rejection). Returns 0 for `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Reject the low products that would make some results more likely.
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// A uniform integer in `lo..=hi` (`lo <= hi`).
    pub fn range_inclusive(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        let span = (hi - lo) as u64 + 1;
        lo + self.below(span) as i64
    }

    /// A uniform float in `[0, 1)` from the top 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Fisher-Yates shuffle: for i from len-1 down to 1, swap item i with item `below(i+1)`.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// One item chosen uniformly (None for an empty slice).
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.below(items.len() as u64) as usize)
        }
    }
}

/// The SplitMix64 output function (a bijection on u64).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_stream() {
        // First outputs for seed 1234567, computed with an independent Python implementation
        // of the algorithm in the module docs.
        let mut g = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..5).map(|_| g.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423,
                4593380528125082431,
                16408922859458223821
            ]
        );
    }

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut g = SplitMix64::new(7);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            let v = g.below(6) as usize;
            counts[v] += 1;
        }
        for c in counts {
            // Expected 10000 each; 5 sigma is about 456.
            assert!((9_500..10_500).contains(&c), "counts {counts:?}");
        }
        assert_eq!(g.below(0), 0);
        assert_eq!(g.below(1), 0);
    }

    #[test]
    fn shuffle_is_a_permutation_and_seeded() {
        let mut a: Vec<usize> = (0..100).collect();
        let mut b = a.clone();
        SplitMix64::new(3).shuffle(&mut a);
        SplitMix64::new(3).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        let mut c: Vec<usize> = (0..100).collect();
        SplitMix64::new(4).shuffle(&mut c);
        assert_ne!(a, c);
    }

    #[test]
    fn streams_differ() {
        let a = SplitMix64::for_stream(1, 0).next_u64();
        let b = SplitMix64::for_stream(1, 1).next_u64();
        let c = SplitMix64::for_stream(2, 0).next_u64();
        assert_ne!(a, b);
        assert_ne!(a, c);
        let f = SplitMix64::new(9).next_f64();
        assert!((0.0..1.0).contains(&f));
    }
}
