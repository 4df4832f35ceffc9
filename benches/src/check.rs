//! What the benchmarks' correctness checks share: fresh inputs, poisoned outputs, downloads to
//! f64, deterministic row samples, and comparisons that name the first wrong element.
//!
//! Tolerances themselves are the kernel tests' (`tests/tests/*_kernels.rs`), derived in units
//! of [`F32_UNIT_ROUNDOFF`] and of the bf16 rounding [`BF16_ROUNDING`]; each case module
//! restates the bound it uses.

use half::bf16;
use kernels_cu::{Buffer, DType, Device};
use rayon::prelude::*;

pub use engine::testing::{assert_close, mixed_tolerance, F32_UNIT_ROUNDOFF};

/// 2⁻⁸: the relative error bound the kernel tests charge for one rounding to bf16 (twice
/// bf16's unit roundoff 2⁻⁹, so ties and double roundings are covered).
pub const BF16_ROUNDING: f64 = 1.0 / 256.0;

/// `n` values uniform in `[lo, hi)`, element `i` a function of `(seed, i)` only (SplitMix64),
/// generated in parallel: the weights of the larger shapes have hundreds of millions.
pub fn uniform_f32(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .into_par_iter()
        .map(|i| {
            let bits = engine::rng::splitmix64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64);
            let u = (bits >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * u
        })
        .collect()
}

/// [`uniform_f32`] rounded to bf16.
pub fn uniform_bf16(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<bf16> {
    uniform_f32(n, seed, lo, hi)
        .into_par_iter()
        .map(bf16::from_f32)
        .collect()
}

/// bf16 values widened to f64 (exactly).
pub fn widen_bf16(v: &[bf16]) -> Vec<f64> {
    v.par_iter().map(|x| x.to_f64()).collect()
}

/// A device buffer of `len` NaNs (f32 or bf16), so that an element a kernel fails to write
/// cannot pass a check by holding a stale or zero value.
pub fn poisoned(dev: &Device, dtype: DType, len: usize) -> Buffer {
    match dtype {
        DType::F32 => dev.htod(&vec![f32::NAN; len]),
        DType::BF16 => dev.htod(&vec![bf16::NAN; len]),
        other => panic!("poisoned: only f32 and bf16 outputs are checked, not {other:?}"),
    }
    .expect("upload poisoned output")
}

/// A device buffer (f32 or bf16) as f64.
pub fn download_f64(dev: &Device, b: &Buffer) -> Vec<f64> {
    match b.dtype() {
        DType::F32 => dev
            .dtoh::<f32>(b)
            .expect("download")
            .into_par_iter()
            .map(f64::from)
            .collect(),
        DType::BF16 => dev
            .dtoh::<bf16>(b)
            .expect("download")
            .into_par_iter()
            .map(|x| x.to_f64())
            .collect(),
        other => panic!("download_f64: f32 or bf16 expected, got {other:?}"),
    }
}

/// Up to `count` distinct indices in `0..n`, evenly spread and including the first and the
/// last: the rows (or columns) a check samples when the full reference is too slow. The
/// spacing is not a multiple of the kernels' power-of-two tiles, so the samples fall at
/// different positions inside tiles.
pub fn sample(n: usize, count: usize) -> Vec<usize> {
    if n == 0 || count == 0 {
        return Vec::new();
    }
    if count >= n {
        return (0..n).collect();
    }
    if count == 1 {
        return vec![n - 1];
    }
    let mut v: Vec<usize> = (0..count).map(|k| k * (n - 1) / (count - 1)).collect();
    v.dedup();
    v
}

/// Asserts that two sequences of bit patterns are identical, naming the first difference
/// (never printing whole vectors: the outputs here have millions of elements).
pub fn assert_bits_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        let n = (0..got.len()).filter(|&j| got[j] != want[j]).count();
        panic!(
            "{what}[{i}]: got {:?}, want {:?} bit for bit ({n} of {} elements differ)",
            got[i],
            want[i],
            got.len()
        );
    }
}

/// [`assert_close`] on a subset: `got[idx[k]]` against `want[k]` with tolerance `tol[k]`,
/// naming the full index of the first failure.
pub fn assert_close_at(what: &str, idx: &[usize], got: &[f64], want: &[f64], tol: &[f64]) {
    assert_eq!(idx.len(), want.len(), "{what}: sample length");
    assert_eq!(idx.len(), tol.len(), "{what}: tolerance length");
    for (k, &i) in idx.iter().enumerate() {
        let err = (got[i] - want[k]).abs();
        assert!(
            err <= tol[k] && got[i].is_finite(),
            "{what}[{i}]: got {} want {} (|Δ| {err:e} > tol {:e})",
            got[i],
            want[k],
            tol[k]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_cover_both_ends_without_repeats() {
        assert_eq!(sample(1024, 5), vec![0, 255, 511, 767, 1023]);
        assert_eq!(sample(3, 8), vec![0, 1, 2]);
        assert_eq!(sample(10, 1), vec![9]);
        assert!(sample(0, 4).is_empty());
        let s = sample(65024, 7);
        assert_eq!((s[0], *s.last().unwrap(), s.len()), (0, 65023, 7));
    }

    #[test]
    fn uniform_values_are_fresh_and_in_range() {
        let v = uniform_f32(10_000, 3, -0.5, 0.5);
        assert!(v.iter().all(|x| (-0.5..0.5).contains(x)));
        let distinct: std::collections::BTreeSet<u32> = v.iter().map(|x| x.to_bits()).collect();
        assert!(distinct.len() > 9_900, "{}", distinct.len());
        assert_ne!(
            v,
            uniform_f32(10_000, 4, -0.5, 0.5),
            "seeds give different streams"
        );
        assert_eq!(v, uniform_f32(10_000, 3, -0.5, 0.5), "deterministic");
    }

    #[test]
    #[should_panic(expected = "y[2]: got 3.5 want 3")]
    fn a_wrong_element_fails_the_check() {
        let want = [1.0, 2.0, 3.0];
        let tol = mixed_tolerance(&want, 0.0, 8.0 * F32_UNIT_ROUNDOFF);
        assert_close("y", &[1.0, 2.0, 3.5], &want, &tol);
    }

    #[test]
    #[should_panic(expected = "out[7]: got 2 want 1")]
    fn a_wrong_sampled_element_fails_the_check() {
        let got: Vec<f64> = (0..10).map(|i| if i == 7 { 2.0 } else { 1.0 }).collect();
        assert_close_at("out", &[0, 7, 9], &got, &[1.0, 1.0, 1.0], &[1e-6; 3]);
    }

    #[test]
    #[should_panic(expected = "(1 of 4 elements differ)")]
    fn a_flipped_bit_fails_the_exact_check() {
        assert_bits_eq("codes", &[1u16, 2, 3, 4], &[1u16, 2, 7, 4]);
    }

    #[test]
    fn poisoned_outputs_read_back_as_nan() {
        let dev = Device::emulator().expect("emulator");
        for dt in [DType::F32, DType::BF16] {
            let b = poisoned(&dev, dt, 5);
            assert!(download_f64(&dev, &b).iter().all(|x| x.is_nan()), "{dt:?}");
        }
    }
}
