//! Inverted dropout with counter-based masks.
//!
//! Element i is kept when `uniform_f32(seed, offset + i) >= p` and then scaled by 1/(1-p). The
//! mask is never stored: backward recomputes it from `(seed, offset)`, and activation
//! checkpointing reproduces it by restoring the RNG state (see [`crate::rng`]).
//!
//! The mask is two SplitMix64 rounds per element (four 64-bit multiplies), which as scalar code
//! cost about as much as the LoRA products it feeds. The loop below is written so that LLVM
//! vectorizes it; on x86-64 CPUs with AVX-512 (F, DQ, VL: 64-bit lane multiplies and
//! conversions) or AVX2 it is compiled for them, detected at run time. Integer arithmetic and
//! one exact comparison per element: every path gives the same mask.

use super::with_float;
use crate::autograd::record;
use crate::element::Float;
use crate::{rng, Element, Error, Result, Tensor, Var};
use rayon::prelude::*;

/// Elements per parallel task.
const TASK: usize = 1 << 14;

/// `x·mask/(1−p)` with the mask of `(st, i)` for element `i` (also the fused LoRA op's dropout).
pub(crate) fn apply<T: Float>(x: &[T], p: f32, st: rng::RngState) -> Vec<T> {
    let keep_scale = T::from_f64(1.0 / (1.0 - p as f64));
    let mut out = vec![T::ZERO; x.len()];
    out.par_chunks_mut(TASK)
        .zip(x.par_chunks(TASK))
        .enumerate()
        .for_each(|(c, (o, xs))| {
            let first = st.offset.wrapping_add((c * TASK) as u64);
            mask_slice(xs, o, p, keep_scale, st.seed, first);
        });
    out
}

/// `out[i] = xs[i]·keep` where `uniform_f32(seed, first + i) >= p`, else 0.
fn mask_slice<T: Float>(xs: &[T], out: &mut [T], p: f32, keep: T, seed: u64, first: u64) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512dq") && has!("avx512vl") {
            // SAFETY: the CPU supports AVX-512 F, DQ and VL (checked at run time just above).
            unsafe { mask_avx512(xs, out, p, keep, seed, first) };
            return;
        }
        if has!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked at run time just above).
            unsafe { mask_avx2(xs, out, p, keep, seed, first) };
            return;
        }
    }
    mask_lanes(xs, out, p, keep, seed, first);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
fn mask_avx512<T: Float>(xs: &[T], out: &mut [T], p: f32, keep: T, seed: u64, first: u64) {
    mask_lanes(xs, out, p, keep, seed, first);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn mask_avx2<T: Float>(xs: &[T], out: &mut [T], p: f32, keep: T, seed: u64, first: u64) {
    mask_lanes(xs, out, p, keep, seed, first);
}

#[inline(always)]
fn mask_lanes<T: Float>(xs: &[T], out: &mut [T], p: f32, keep: T, seed: u64, first: u64) {
    for (i, (o, &v)) in out.iter_mut().zip(xs).enumerate() {
        *o = if rng::uniform_f32(seed, first.wrapping_add(i as u64)) >= p {
            v * keep
        } else {
            T::ZERO
        };
    }
}

/// `y = x·mask/(1-p)` when `train` and `p > 0`; the identity otherwise (no RNG consumed).
pub fn dropout(x: &Var, p: f32, train: bool) -> Result<Var> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::invalid(
            "dropout",
            format!("probability {p} is not in [0, 1)"),
        ));
    }
    if !train || p == 0.0 {
        return Ok(x.clone());
    }
    let xv = x.value();
    let st = rng::reserve(xv.elem_count() as u64);
    with_float!(xv.dtype(), "dropout", |T| {
        let y = apply(xv.as_slice::<T>()?, p, st);
        let shape = xv.shape().clone();
        let out = Tensor::from_storage(T::wrap(y), shape.clone());
        Ok(record("dropout", out, &[x], move |g, _, _| {
            Ok(vec![Some(Tensor::from_storage(
                T::wrap(apply(g.as_slice::<T>()?, p, st)),
                shape.clone(),
            ))])
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-element definition of the module doc, one scalar draw at a time.
    fn reference<T: Float>(x: &[T], p: f32, st: rng::RngState) -> Vec<T> {
        let keep = T::from_f64(1.0 / (1.0 - p as f64));
        let mut out = Vec::with_capacity(x.len());
        for (i, &v) in x.iter().enumerate() {
            let u = rng::uniform_f32(st.seed, st.offset.wrapping_add(i as u64));
            out.push(if u >= p { v * keep } else { T::ZERO });
        }
        out
    }

    #[test]
    fn vector_mask_is_the_per_element_definition() {
        // Lengths around the task size and vector widths; an offset that wraps the counter.
        for (n, offset) in [
            (1, 0),
            (17, 5),
            (TASK + 13, 1 << 40),
            (3 * TASK - 1, u64::MAX - 1000),
        ] {
            let st = rng::RngState {
                seed: 0x5eed ^ n as u64,
                offset,
            };
            let x: Vec<f64> = (0..n).map(|i| rng::normal_f64(9, i as u64)).collect();
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            for p in [0.05f32, 0.5, 0.999] {
                let (want, got) = (reference(&x, p, st), apply(&x, p, st));
                assert!(want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits()));
                let (want, got) = (reference(&x32, p, st), apply(&x32, p, st));
                assert!(want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits()));
                assert_eq!(got.len(), n);
            }
        }
    }
}
