//! LayerNorm over the last dimension, with affine weight and bias.
//!
//! Forward, per row x of length d:
//!   mean = Σx/d, var = Σ(x-mean)²/d (biased, as torch), rstd = 1/√(var+eps),
//!   x̂ = (x-mean)·rstd, y = x̂·γ + β.
//! Backward, with ĝ = dy·γ:
//!   dx = rstd·(ĝ - mean(ĝ) - x̂·mean(ĝ·x̂)), dγ = Σ_rows dy·x̂, dβ = Σ_rows dy.

use super::{same_dtype, with_float};
use crate::autograd::record;
use crate::element::Float;
use crate::{Element, Error, Result, Tensor, Var};
use rayon::prelude::*;

/// Rows per parallel task. Fixed, so the order of the dγ/dβ reductions never depends on the
/// thread count.
const ROWS_PER_TASK: usize = 16;

/// CPU reference forward: returns y and the per-row (mean, rstd).
pub fn layer_norm_forward<T: Float>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    d: usize,
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let rows = x.len() / d;
    let mut y = vec![T::ZERO; x.len()];
    let mut mean = vec![T::ZERO; rows];
    let mut rstd = vec![T::ZERO; rows];
    let eps = T::from_f64(eps);
    let n = T::from_f64(d as f64);
    y.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(
            mean.par_chunks_mut(ROWS_PER_TASK)
                .zip(rstd.par_chunks_mut(ROWS_PER_TASK)),
        )
        .enumerate()
        .for_each(|(task, (yc, (mc, rc)))| {
            for (j, yr) in yc.chunks_exact_mut(d).enumerate() {
                let r = task * ROWS_PER_TASK + j;
                let xr = &x[r * d..(r + 1) * d];
                let mut s = T::ZERO;
                for &v in xr {
                    s += v;
                }
                let mu = s / n;
                let mut s2 = T::ZERO;
                for &v in xr {
                    let c = v - mu;
                    s2 += c * c;
                }
                let rs = T::ONE / (s2 / n + eps).sqrt();
                for ((o, &v), (&g, &b)) in yr.iter_mut().zip(xr).zip(gamma.iter().zip(beta)) {
                    *o = (v - mu) * rs * g + b;
                }
                mc[j] = mu;
                rc[j] = rs;
            }
        });
    (y, mean, rstd)
}

/// CPU reference backward: returns (dx, dγ, dβ).
pub fn layer_norm_backward<T: Float>(
    x: &[T],
    gamma: &[T],
    mean: &[T],
    rstd: &[T],
    dy: &[T],
    d: usize,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut dx = vec![T::ZERO; x.len()];
    let n = T::from_f64(d as f64);
    let partials: Vec<(Vec<T>, Vec<T>)> = dx
        .par_chunks_mut(d * ROWS_PER_TASK)
        .enumerate()
        .map(|(task, dxc)| {
            let mut dg = vec![T::ZERO; d];
            let mut db = vec![T::ZERO; d];
            for (j, dxr) in dxc.chunks_exact_mut(d).enumerate() {
                let r = task * ROWS_PER_TASK + j;
                let (xr, dyr) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
                let (mu, rs) = (mean[r], rstd[r]);
                let mut sum_g = T::ZERO;
                let mut sum_gx = T::ZERO;
                for i in 0..d {
                    let xh = (xr[i] - mu) * rs;
                    let gh = dyr[i] * gamma[i];
                    sum_g += gh;
                    sum_gx += gh * xh;
                    dg[i] += dyr[i] * xh;
                    db[i] += dyr[i];
                }
                let (mg, mgx) = (sum_g / n, sum_gx / n);
                for i in 0..d {
                    let xh = (xr[i] - mu) * rs;
                    dxr[i] = rs * (dyr[i] * gamma[i] - mg - xh * mgx);
                }
            }
            (dg, db)
        })
        .collect();
    let mut dg = vec![T::ZERO; d];
    let mut db = vec![T::ZERO; d];
    for (pg, pb) in partials {
        for i in 0..d {
            dg[i] += pg[i];
            db[i] += pb[i];
        }
    }
    (dx, dg, db)
}

/// `y = LayerNorm(x; γ, β, eps)` over the last dimension of `x`.
pub fn layer_norm(x: &Var, gamma: &Var, beta: &Var, eps: f64) -> Result<Var> {
    let (xv, gv, bv) = (x.value(), gamma.value(), beta.value());
    let dt = same_dtype("layer_norm", &[&xv, &gv, &bv])?;
    let d = xv.shape().last();
    if gv.dims() != [d] || bv.dims() != [d] {
        return Err(Error::shape(
            "layer_norm",
            format!(
                "input {} with weight {} and bias {}",
                xv.shape(),
                gv.shape(),
                bv.shape()
            ),
        ));
    }
    with_float!(dt, "layer_norm", |T| {
        let (y, mean, rstd) = layer_norm_forward(
            xv.as_slice::<T>()?,
            gv.as_slice::<T>()?,
            bv.as_slice::<T>()?,
            d,
            eps,
        );
        let out = Tensor::from_storage(T::wrap(y), xv.shape().clone());
        Ok(record(
            "layer_norm",
            out,
            &[x, gamma, beta],
            move |g, _, _| {
                let (dx, dg, db) = layer_norm_backward(
                    xv.as_slice::<T>()?,
                    gv.as_slice::<T>()?,
                    &mean,
                    &rstd,
                    g.as_slice::<T>()?,
                    d,
                );
                Ok(vec![
                    Some(Tensor::from_storage(T::wrap(dx), xv.shape().clone())),
                    Some(Tensor::from_storage(T::wrap(dg), [d])),
                    Some(Tensor::from_storage(T::wrap(db), [d])),
                ])
            },
        ))
    })
}
