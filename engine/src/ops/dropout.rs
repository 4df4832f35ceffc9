//! Inverted dropout with counter-based masks.
//!
//! Element i is kept when `uniform_f32(seed, offset + i) >= p` and then scaled by 1/(1-p). The
//! mask is never stored: backward recomputes it from `(seed, offset)`, and activation
//! checkpointing reproduces it by restoring the RNG state (see [`crate::rng`]).

use super::with_float;
use crate::autograd::record;
use crate::element::Float;
use crate::{rng, Element, Error, Result, Tensor, Var};
use rayon::prelude::*;

/// `x·mask/(1−p)` with the mask of `(st, i)` for element `i` (also the fused LoRA op's dropout).
pub(crate) fn apply<T: Float>(x: &[T], p: f32, st: rng::RngState) -> Vec<T> {
    let keep_scale = T::from_f64(1.0 / (1.0 - p as f64));
    x.par_iter()
        .enumerate()
        .map(|(i, &v)| {
            if rng::uniform_f32(st.seed, st.offset.wrapping_add(i as u64)) >= p {
                v * keep_scale
            } else {
                T::ZERO
            }
        })
        .collect()
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
