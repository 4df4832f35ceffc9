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

/// Rows whose sums run interleaved. Each row's sum is still the sequential fold of its
/// elements in order (the same bits as summing one row at a time), but the folds of eight
/// rows advance together, so the adds are not one dependency chain per row.
const ROW_GROUP: usize = 8;

/// Splits `rows` consecutive rows of length `d` from `x` into groups of [`ROW_GROUP`] rows and
/// single leftover rows, calling `group(first_row, rows)` for each (`rows.len()` is the group
/// size, 8 or 1).
fn for_row_groups<T>(x: &[T], d: usize, mut group: impl FnMut(usize, &[&[T]])) {
    let rows = x.len() / d;
    let mut r = 0;
    while r + ROW_GROUP <= rows {
        let g: [&[T]; ROW_GROUP] = std::array::from_fn(|j| &x[(r + j) * d..(r + j + 1) * d]);
        group(r, &g);
        r += ROW_GROUP;
    }
    while r < rows {
        group(r, &[&x[r * d..(r + 1) * d]]);
        r += 1;
    }
}

/// Per row of the group, `Σ_i f(row, i)` folded sequentially over `i` (the rows' folds
/// interleaved). `R` is the group size.
#[inline(always)]
fn fold_rows<T: Float, const R: usize>(d: usize, f: impl Fn(usize, usize) -> T) -> [T; R] {
    let mut s = [T::ZERO; R];
    for i in 0..d {
        for (j, sj) in s.iter_mut().enumerate() {
            *sj += f(j, i);
        }
    }
    s
}

/// Mean and rstd of each row of a group (see [`layer_norm_forward`] for the formulas).
fn row_stats<T: Float, const R: usize>(rows: &[&[T]], d: usize, eps: T) -> ([T; R], [T; R]) {
    let rows: &[&[T]; R] = rows.try_into().expect("group of R rows");
    let rows = rows.map(|r| &r[..d]);
    let n = T::from_f64(d as f64);
    let sums = fold_rows::<T, R>(d, |j, i| rows[j][i]);
    let mean = sums.map(|s| s / n);
    let sq = fold_rows::<T, R>(d, |j, i| {
        let c = rows[j][i] - mean[j];
        c * c
    });
    (mean, sq.map(|s2| T::ONE / (s2 / n + eps).sqrt()))
}

/// CPU reference forward: returns y and the per-row (mean, rstd).
///
/// Per row, mean and variance are sequential folds over the row in order (rows interleaved,
/// see [`ROW_GROUP`]), in the element type.
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
    y.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(
            mean.par_chunks_mut(ROWS_PER_TASK)
                .zip(rstd.par_chunks_mut(ROWS_PER_TASK)),
        )
        .enumerate()
        .for_each(|(task, (yc, (mc, rc)))| {
            let r0 = task * ROWS_PER_TASK;
            let xc = &x[r0 * d..r0 * d + yc.len()];
            for_row_groups(xc, d, |r, g| {
                let (mu, rs) = if g.len() == ROW_GROUP {
                    row_stats::<T, ROW_GROUP>(g, d, eps)
                } else {
                    widen(row_stats::<T, 1>(g, d, eps))
                };
                mc[r..r + g.len()].copy_from_slice(&mu[..g.len()]);
                rc[r..r + g.len()].copy_from_slice(&rs[..g.len()]);
            });
            for (j, (yr, xr)) in yc.chunks_exact_mut(d).zip(xc.chunks_exact(d)).enumerate() {
                let (mu, rs) = (mc[j], rc[j]);
                for ((o, &v), (&g, &b)) in yr.iter_mut().zip(xr).zip(gamma.iter().zip(beta)) {
                    *o = (v - mu) * rs * g + b;
                }
            }
        });
    (y, mean, rstd)
}

/// A single row's pair of sums in the shape of a group's (the other lanes zero).
fn widen<T: Float>((a, b): ([T; 1], [T; 1])) -> ([T; ROW_GROUP], [T; ROW_GROUP]) {
    let (mut wa, mut wb) = ([T::ZERO; ROW_GROUP], [T::ZERO; ROW_GROUP]);
    (wa[0], wb[0]) = (a[0], b[0]);
    (wa, wb)
}

/// Per row of a group, `(Σ ĝ, Σ ĝ·x̂)` with `ĝ = dy·γ`, `x̂ = (x − mean)·rstd`, each folded
/// sequentially over the row.
fn grad_row_sums<T: Float, const R: usize>(
    xs: &[&[T]],
    dys: &[&[T]],
    gamma: &[T],
    mean: &[T],
    rstd: &[T],
    d: usize,
) -> ([T; R], [T; R]) {
    let xs: &[&[T]; R] = xs.try_into().expect("group of R rows");
    let dys: &[&[T]; R] = dys.try_into().expect("group of R rows");
    let (xs, dys, gamma) = (xs.map(|r| &r[..d]), dys.map(|r| &r[..d]), &gamma[..d]);
    let mean: [T; R] = mean[..R].try_into().expect("R means");
    let rstd: [T; R] = rstd[..R].try_into().expect("R rstds");
    let mut sg = [T::ZERO; R];
    let mut sgx = [T::ZERO; R];
    for i in 0..d {
        for j in 0..R {
            let xh = (xs[j][i] - mean[j]) * rstd[j];
            let gh = dys[j][i] * gamma[i];
            sg[j] += gh;
            sgx[j] += gh * xh;
        }
    }
    (sg, sgx)
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
    let (dx, dg, db) = layer_norm_backward_parts(x, gamma, mean, rstd, dy, d, true, true);
    (dx.expect("dx"), dg.expect("dγ"), db.expect("dβ"))
}

/// `(dx, dγ, dβ)`, each present when it was asked for.
pub type LayerNormGrads<T> = (Option<Vec<T>>, Option<Vec<T>>, Option<Vec<T>>);

/// [`layer_norm_backward`] computing only the gradients asked for: `dx` when `want_dx`, `dγ`
/// and `dβ` when `want_affine` (frozen LayerNorm parameters, the LoRA case, need neither).
/// Each gradient it returns has the bits the full backward gives.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward_parts<T: Float>(
    x: &[T],
    gamma: &[T],
    mean: &[T],
    rstd: &[T],
    dy: &[T],
    d: usize,
    want_dx: bool,
    want_affine: bool,
) -> LayerNormGrads<T> {
    let rows = x.len() / d;
    let n = T::from_f64(d as f64);
    let mut dx = if want_dx {
        vec![T::ZERO; x.len()]
    } else {
        Vec::new()
    };
    // Tasks of ROWS_PER_TASK rows: each writes its rows of dx and returns its partial dγ, dβ.
    let task_rows = |task: usize, dxc: &mut [T]| -> Option<(Vec<T>, Vec<T>)> {
        let r0 = task * ROWS_PER_TASK;
        let nr = ROWS_PER_TASK.min(rows - r0);
        let (xc, dyc) = (&x[r0 * d..(r0 + nr) * d], &dy[r0 * d..(r0 + nr) * d]);
        let partial = want_affine.then(|| {
            let mut dg = vec![T::ZERO; d];
            let mut db = vec![T::ZERO; d];
            for (j, (xr, dyr)) in xc.chunks_exact(d).zip(dyc.chunks_exact(d)).enumerate() {
                let (mu, rs) = (mean[r0 + j], rstd[r0 + j]);
                for (((g, b), &xv), &dyv) in dg.iter_mut().zip(db.iter_mut()).zip(xr).zip(dyr) {
                    *g += dyv * ((xv - mu) * rs);
                    *b += dyv;
                }
            }
            (dg, db)
        });
        if want_dx {
            for_row_groups(xc, d, |r, g| {
                let dys: [&[T]; ROW_GROUP] =
                    std::array::from_fn(|j| dyc.get((r + j) * d..(r + j + 1) * d).unwrap_or(&[]));
                let dys = &dys[..g.len()];
                let (ms, rs) = (&mean[r0 + r..], &rstd[r0 + r..]);
                let (sg, sgx) = if g.len() == ROW_GROUP {
                    grad_row_sums::<T, ROW_GROUP>(g, dys, gamma, ms, rs, d)
                } else {
                    widen(grad_row_sums::<T, 1>(g, dys, gamma, ms, rs, d))
                };
                for (j, xr) in g.iter().enumerate() {
                    let (mu, rstd_r) = (ms[j], rs[j]);
                    let (mg, mgx) = (sg[j] / n, sgx[j] / n);
                    let dyr = dys[j];
                    let dxr = &mut dxc[(r + j) * d..(r + j + 1) * d];
                    for (((o, &xv), &dyv), &gv) in dxr.iter_mut().zip(*xr).zip(dyr).zip(gamma) {
                        let xh = (xv - mu) * rstd_r;
                        *o = rstd_r * (dyv * gv - mg - xh * mgx);
                    }
                }
            });
        }
        partial
    };
    let tasks = rows.div_ceil(ROWS_PER_TASK);
    let partials: Vec<Option<(Vec<T>, Vec<T>)>> = if want_dx {
        dx.par_chunks_mut(d * ROWS_PER_TASK)
            .enumerate()
            .map(|(task, dxc)| task_rows(task, dxc))
            .collect()
    } else {
        (0..tasks)
            .into_par_iter()
            .map(|task| task_rows(task, &mut []))
            .collect()
    };
    let (dg, db) = if want_affine {
        let mut dg = vec![T::ZERO; d];
        let mut db = vec![T::ZERO; d];
        for (pg, pb) in partials.into_iter().flatten() {
            for i in 0..d {
                dg[i] += pg[i];
                db[i] += pb[i];
            }
        }
        (Some(dg), Some(db))
    } else {
        (None, None)
    };
    (want_dx.then_some(dx), dg, db)
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
            move |g, needs, _| {
                let (dx, dg, db) = layer_norm_backward_parts(
                    xv.as_slice::<T>()?,
                    gv.as_slice::<T>()?,
                    &mean,
                    &rstd,
                    g.as_slice::<T>()?,
                    d,
                    needs[0],
                    needs[1] || needs[2],
                );
                Ok(vec![
                    dx.map(|dx| Tensor::from_storage(T::wrap(dx), xv.shape().clone())),
                    dg.filter(|_| needs[1])
                        .map(|dg| Tensor::from_storage(T::wrap(dg), [d])),
                    db.filter(|_| needs[2])
                        .map(|db| Tensor::from_storage(T::wrap(db), [d])),
                ])
            },
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row at a time, every sum a single sequential fold: the definition the interleaved
    /// kernels must reproduce bit for bit.
    fn sequential<T: Float>(
        x: &[T],
        gamma: &[T],
        beta: &[T],
        dy: &[T],
        d: usize,
        eps: f64,
    ) -> [Vec<T>; 6] {
        let n = T::from_f64(d as f64);
        let (mut y, mut mean, mut rstd) = (vec![], vec![], vec![]);
        for xr in x.chunks_exact(d) {
            let mut s = T::ZERO;
            xr.iter().for_each(|&v| s += v);
            let mu = s / n;
            let mut s2 = T::ZERO;
            xr.iter().for_each(|&v| s2 += (v - mu) * (v - mu));
            let rs = T::ONE / (s2 / n + T::from_f64(eps)).sqrt();
            for i in 0..d {
                y.push((xr[i] - mu) * rs * gamma[i] + beta[i]);
            }
            mean.push(mu);
            rstd.push(rs);
        }
        let (mut dx, mut dg, mut db) = (vec![], vec![T::ZERO; d], vec![T::ZERO; d]);
        let mut task_g = vec![T::ZERO; d];
        let mut task_b = vec![T::ZERO; d];
        for (r, (xr, dyr)) in x.chunks_exact(d).zip(dy.chunks_exact(d)).enumerate() {
            let (mu, rs) = (mean[r], rstd[r]);
            let (mut sg, mut sgx) = (T::ZERO, T::ZERO);
            for i in 0..d {
                let xh = (xr[i] - mu) * rs;
                let gh = dyr[i] * gamma[i];
                sg += gh;
                sgx += gh * xh;
                task_g[i] += dyr[i] * xh;
                task_b[i] += dyr[i];
            }
            for i in 0..d {
                let xh = (xr[i] - mu) * rs;
                dx.push(rs * (dyr[i] * gamma[i] - sg / n - xh * (sgx / n)));
            }
            if (r + 1) % ROWS_PER_TASK == 0 || r + 1 == x.len() / d {
                for i in 0..d {
                    dg[i] += task_g[i];
                    db[i] += task_b[i];
                }
                task_g.fill(T::ZERO);
                task_b.fill(T::ZERO);
            }
        }
        [y, mean, rstd, dx, dg, db]
    }

    fn fresh(n: usize, seed: u64, shift: f32) -> Vec<f32> {
        crate::testing::Rng::new(seed).vec_f32(n, shift - 1.5, shift + 1.5)
    }

    #[test]
    fn interleaved_rows_give_the_bits_of_one_row_at_a_time() {
        // Row counts that leave partial groups and partial tasks; an offset mean.
        for (rows, d) in [(1, 7), (8, 5), (13, 33), (16, 64), (41, 96), (53, 128)] {
            let x = fresh(rows * d, rows as u64 * 31 + d as u64, 2.5);
            let gamma = fresh(d, 7 + d as u64, 1.0);
            let beta = fresh(d, 11 + d as u64, 0.0);
            let dy = fresh(rows * d, 13 * rows as u64, 0.0);
            let want = sequential(&x, &gamma, &beta, &dy, d, 1e-5);
            let (y, mean, rstd) = layer_norm_forward(&x, &gamma, &beta, d, 1e-5);
            let (dx, dg, db) = layer_norm_backward(&x, &gamma, &mean, &rstd, &dy, d);
            let got = [y, mean.clone(), rstd.clone(), dx, dg, db];
            for (name, (g, w)) in ["y", "mean", "rstd", "dx", "dγ", "dβ"]
                .iter()
                .zip(got.iter().zip(&want))
            {
                assert_eq!(g.len(), w.len(), "{name} length, {rows}x{d}");
                for (i, (a, b)) in g.iter().zip(w).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{name}[{i}], {rows}x{d}");
                }
            }
            // Partial backward: the same bits, and nothing that was not asked for.
            let (dx_only, g0, b0) =
                layer_norm_backward_parts(&x, &gamma, &mean, &rstd, &dy, d, true, false);
            assert!(g0.is_none() && b0.is_none());
            assert_eq!(dx_only.as_deref(), Some(&got[3][..]));
            let (none, dg_only, db_only) =
                layer_norm_backward_parts(&x, &gamma, &mean, &rstd, &dy, d, false, true);
            assert!(none.is_none());
            assert_eq!(dg_only.as_deref(), Some(&got[4][..]));
            assert_eq!(db_only.as_deref(), Some(&got[5][..]));
        }
    }
}
