//! Counter-based random numbers for dropout and initialization.
//!
//! A random value is a pure function of `(seed, index)` (SplitMix64 finalizer applied twice), so
//! a dropout mask is fully described by the seed and the index range it consumed. That makes
//! masks reproducible on recompute (activation checkpointing restores the state), identical
//! between backends (a GPU kernel computes the same hash per element), independent of thread
//! count, and makes the training RNG state two integers that a checkpoint can store.

use serde::{Deserialize, Serialize};
use std::cell::Cell;

/// The dropout stream's state: values are drawn at indices `offset, offset + 1, ...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RngState {
    pub seed: u64,
    pub offset: u64,
}

thread_local! {
    static STATE: Cell<RngState> = const { Cell::new(RngState { seed: 0, offset: 0 }) };
}

/// Restart this thread's stream from `seed`.
pub fn manual_seed(seed: u64) {
    set_state(RngState { seed, offset: 0 });
}

pub fn state() -> RngState {
    STATE.with(|s| s.get())
}

pub fn set_state(st: RngState) {
    STATE.with(|s| s.set(st));
}

/// Reserves `n` consecutive indices of the stream and returns the seed and first index.
pub fn reserve(n: u64) -> RngState {
    STATE.with(|s| {
        let st = s.get();
        s.set(RngState {
            seed: st.seed,
            offset: st.offset.wrapping_add(n),
        });
        st
    })
}

#[inline]
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64 random bits for `(seed, index)`.
#[inline]
pub fn bits(seed: u64, index: u64) -> u64 {
    splitmix64(seed ^ splitmix64(index))
}

/// A uniform draw in [0, 1) with 24 bits of resolution (exactly representable in f32, so the
/// CPU and GPU compare it against the same threshold).
#[inline]
pub fn uniform_f32(seed: u64, index: u64) -> f32 {
    (bits(seed, index) >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// A uniform draw in [0, 1) with 53 bits of resolution.
#[inline]
pub fn uniform_f64(seed: u64, index: u64) -> f64 {
    (bits(seed, index) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A standard normal draw (Box-Muller on two uniforms), for initialization and tests.
pub fn normal_f64(seed: u64, index: u64) -> f64 {
    let u1 = uniform_f64(seed, 2 * index).max(f64::MIN_POSITIVE);
    let u2 = uniform_f64(seed, 2 * index + 1);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_in_range_and_roughly_flat() {
        let n = 100_000;
        let mut buckets = [0usize; 10];
        for i in 0..n {
            let u = uniform_f32(7, i);
            assert!((0.0..1.0).contains(&u));
            buckets[(u * 10.0) as usize] += 1;
        }
        for b in buckets {
            assert!((b as f64 - 10_000.0).abs() < 500.0, "bucket count {b}");
        }
    }

    #[test]
    fn reserve_advances_and_state_round_trips() {
        manual_seed(3);
        let a = reserve(10);
        let b = reserve(5);
        assert_eq!(a, RngState { seed: 3, offset: 0 });
        assert_eq!(
            b,
            RngState {
                seed: 3,
                offset: 10
            }
        );
        set_state(a);
        assert_eq!(reserve(10), a);
    }
}
