//! Cross-entropy with `ignore_index` and a sum-over-a-given-count reduction.
//!
//! `loss = Σ_{rows r with label ≠ −100} (logsumexp(z_r) − z_r[label_r]) / count`.
//! `count` is supplied by the caller: HF Trainer divides by the number of target tokens in the
//! whole gradient-accumulation window, not the micro-batch. The gradient is
//! `dz_r = g·(softmax(z_r) − onehot(label_r)) / count` for kept rows and 0 for ignored ones.
//!
//! Probabilities are never stored: backward recomputes them from the saved logsumexp.
//! [`linear_cross_entropy`] also fuses the lm_head: it never holds more than one chunk of
//! `rows x vocab` logits, and it skips ignored rows entirely.

use super::attention_tiled::row_max_by;
use super::matmul::{gemm, gemm_new};
use super::{same_dtype, sum_lanes, with_float};
use crate::autograd::record;
use crate::element::Float;
use crate::{Element, Error, Result, Tensor, Var};
use rayon::prelude::*;

/// Labels with this value contribute nothing (PyTorch's default `ignore_index`).
pub const IGNORE_INDEX: i32 = -100;

fn check_labels(labels: &[i32], rows: usize, vocab: usize) -> Result<()> {
    if labels.len() != rows {
        return Err(Error::shape(
            "cross_entropy",
            format!("{} labels for {rows} rows", labels.len()),
        ));
    }
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l != IGNORE_INDEX && (l < 0 || l as usize >= vocab))
    {
        return Err(Error::invalid(
            "cross_entropy",
            format!("label {l} at row {i} is outside 0..{vocab} and is not {IGNORE_INDEX}"),
        ));
    }
    Ok(())
}

fn check_count(count: f64) -> Result<()> {
    if !(count.is_finite() && count > 0.0) {
        return Err(Error::invalid(
            "cross_entropy",
            format!("the token count must be positive, got {count}"),
        ));
    }
    Ok(())
}

/// Elements of a row exponentiated per pass (a stack buffer that stays in L1).
const EXP_SPAN: usize = 512;

/// logsumexp of one row, with the max subtracted first (the sequential `max` fold, NaN
/// elements ignored as `max` does, taken in lanes by [`row_max_by`]).
fn lse_row<T: Float>(z: &[T]) -> T {
    let m = row_max_by(T::NEG_INFINITY, z, T::max);
    let mut buf = [T::ZERO; EXP_SPAN];
    let mut s = T::ZERO;
    for span in z.chunks(EXP_SPAN) {
        let e = &mut buf[..span.len()];
        e.copy_from_slice(span);
        T::exp_shifted_slice(e, m);
        s += sum_lanes(e);
    }
    m + s.ln()
}

/// The loss term of one row, `(logsumexp(z), logsumexp(z) − z[label])`, and in place its
/// logits gradient `scale·(softmax(z) − onehot(label))`, with one exponential per logit:
/// `softmax(z) = exp(z − m) / Σ exp(z − m)` from the same exponentials that give the
/// logsumexp ([`lse_row`] then [`dlogits_row`] take two). The logsumexp is bitwise
/// [`lse_row`]'s (same spans, same sums); the gradient may differ from [`dlogits_row`]'s in
/// the last bit (a division by the sum instead of a shift by its log).
fn lse_and_dlogits_row<T: Float>(z: &mut [T], label: usize, scale: T) -> (T, T) {
    let m = row_max_by(T::NEG_INFINITY, z, T::max);
    let target = z[label];
    let mut s = T::ZERO;
    for span in z.chunks_mut(EXP_SPAN) {
        T::exp_shifted_slice(span, m);
        s += sum_lanes(span);
    }
    let lse = m + s.ln();
    let per_sum = scale / s;
    for x in z.iter_mut() {
        *x *= per_sum;
    }
    z[label] -= scale;
    (lse, lse - target)
}

/// Writes `scale·(softmax(z) − onehot(label))` into `z` in place.
fn dlogits_row<T: Float>(z: &mut [T], lse: T, label: usize, scale: T) {
    T::exp_shifted_slice(z, lse);
    for x in z.iter_mut() {
        *x *= scale;
    }
    z[label] -= scale;
}

/// Loss over materialized `logits [rows, vocab]` with `labels [rows]`.
pub fn cross_entropy(logits: &Var, labels: &[i32], count: f64) -> Result<Var> {
    let lv = logits.value();
    if lv.rank() != 2 {
        return Err(Error::shape(
            "cross_entropy",
            format!("logits must be [rows, vocab], got {}", lv.shape()),
        ));
    }
    let (rows, vocab) = (lv.dims()[0], lv.dims()[1]);
    check_labels(labels, rows, vocab)?;
    check_count(count)?;
    let labels = labels.to_vec();
    let dt = lv.dtype();
    with_float!(dt, "cross_entropy", |T| {
        let z = lv.as_slice::<T>()?;
        let lse: Vec<T> = z.par_chunks(vocab).map(lse_row).collect();
        let mut total = 0.0f64;
        for (r, &l) in labels.iter().enumerate() {
            if l != IGNORE_INDEX {
                total += (lse[r] - z[r * vocab + l as usize]).to_f64();
            }
        }
        let loss = Tensor::scalar(total / count, dt);
        Ok(record("cross_entropy", loss, &[logits], move |g, _, _| {
            let scale = T::from_f64(g.to_scalar()? / count);
            let mut dz = lv.as_slice::<T>()?.to_vec();
            dz.par_chunks_mut(vocab)
                .enumerate()
                .for_each(|(r, row)| match labels[r] {
                    IGNORE_INDEX => row.iter_mut().for_each(|x| *x = T::ZERO),
                    l => dlogits_row(row, lse[r], l as usize, scale),
                });
            Ok(vec![Some(Tensor::from_storage(
                T::wrap(dz),
                lv.shape().clone(),
            ))])
        }))
    })
}

/// Loss of `logits = hidden · Wᵀ` without materializing the logits: `hidden [rows, d]`,
/// `weight [vocab, d]` (the lm_head), `labels [rows]`. Rows are processed in chunks of
/// `chunk_rows` kept rows, so peak extra memory is `chunk_rows x vocab` elements.
///
/// When only `hidden` needs a gradient (a frozen lm_head, the LoRA case), the forward computes
/// it too while each chunk's logits are at hand: `dh = (softmax(z) − onehot)/count · W` for an
/// output gradient of 1, kept as `[rows, d]` (the size of `hidden`). Backward returns it as is
/// when the output gradient is exactly 1 (the loss is the root of backward), which saves one
/// logits GEMM and one exp per logit; for any other output gradient, and when `W` needs a
/// gradient, backward recomputes each chunk's logits from the saved logsumexps.
pub fn linear_cross_entropy(
    hidden: &Var,
    weight: &Var,
    labels: &[i32],
    count: f64,
    chunk_rows: usize,
) -> Result<Var> {
    let (hv, wv) = (hidden.value(), weight.value());
    let dt = same_dtype("linear_cross_entropy", &[&hv, &wv])?;
    if hv.rank() != 2 || wv.rank() != 2 || hv.dims()[1] != wv.dims()[1] {
        return Err(Error::shape(
            "linear_cross_entropy",
            format!("hidden {} with weight {}", hv.shape(), wv.shape()),
        ));
    }
    let (rows, d, vocab) = (hv.dims()[0], hv.dims()[1], wv.dims()[0]);
    check_labels(labels, rows, vocab)?;
    check_count(count)?;
    let chunk_rows = chunk_rows.max(1);
    // Only rows with a target matter; gather their indices once.
    let kept: Vec<(usize, usize)> = labels
        .iter()
        .enumerate()
        .filter(|(_, &l)| l != IGNORE_INDEX)
        .map(|(r, &l)| (r, l as usize))
        .collect();
    let eager_dh =
        crate::autograd::grad_enabled() && hidden.requires_grad() && !weight.requires_grad();
    with_float!(dt, "linear_cross_entropy", |T| {
        let (h, w) = (hv.as_slice::<T>()?, wv.as_slice::<T>()?);
        let mut lse = Vec::with_capacity(kept.len());
        let mut total = 0.0f64;
        let mut xs = Vec::with_capacity(chunk_rows.min(kept.len()) * d);
        let mut dh_unit = if eager_dh {
            vec![T::ZERO; rows * d]
        } else {
            Vec::new()
        };
        let unit_scale = T::from_f64(1.0 / count);
        for chunk in kept.chunks(chunk_rows) {
            gather_rows(h, d, chunk, &mut xs);
            // Logits without a zero fill first (the product writes every element).
            let mut z = gemm_new(false, true, chunk.len(), vocab, d, &xs, w, true);
            // Per-row logsumexp and loss term in parallel (with the eager gradient, each row
            // turned into its logits gradient in the same pass); summed below in row order.
            let terms: Vec<(T, T)> = if eager_dh {
                z.par_chunks_mut(vocab)
                    .zip(chunk.par_iter())
                    .map(|(row, &(_, l))| lse_and_dlogits_row(row, l, unit_scale))
                    .collect()
            } else {
                z.par_chunks(vocab)
                    .zip(chunk.par_iter())
                    .map(|(row, &(_, l))| {
                        let s = lse_row(row);
                        (s, s - row[l])
                    })
                    .collect()
            };
            for &(s, term) in &terms {
                total += term.to_f64();
                lse.push(s);
            }
            if eager_dh {
                let dxs = gemm_new(false, false, chunk.len(), d, vocab, &z, w, true);
                for (i, &(r, _)) in chunk.iter().enumerate() {
                    dh_unit[r * d..(r + 1) * d].copy_from_slice(&dxs[i * d..(i + 1) * d]);
                }
            }
        }
        let dh_unit = eager_dh.then(|| Tensor::from_storage(T::wrap(dh_unit), [rows, d]));
        let loss = Tensor::scalar(total / count, dt);
        Ok(record(
            "linear_cross_entropy",
            loss,
            &[hidden, weight],
            move |g, needs, _| {
                let gs = g.to_scalar()?;
                if let (Some(dh), true, false) = (&dh_unit, gs == 1.0, needs[1]) {
                    return Ok(vec![needs[0].then(|| dh.clone()), None]);
                }
                let (h, w) = (hv.as_slice::<T>()?, wv.as_slice::<T>()?);
                let scale = T::from_f64(gs / count);
                let mut dh = vec![T::ZERO; rows * d];
                let mut dw = if needs[1] {
                    vec![T::ZERO; vocab * d]
                } else {
                    Vec::new()
                };
                let mut xs = Vec::new();
                for (ci, chunk) in kept.chunks(chunk_rows).enumerate() {
                    let n = chunk.len();
                    gather_rows(h, d, chunk, &mut xs);
                    let mut z = gemm_new(false, true, n, vocab, d, &xs, w, true);
                    z.par_chunks_mut(vocab).enumerate().for_each(|(i, row)| {
                        dlogits_row(row, lse[ci * chunk_rows + i], chunk[i].1, scale);
                    });
                    if needs[0] {
                        let dxs = gemm_new(false, false, n, d, vocab, &z, w, true);
                        for (i, &(r, _)) in chunk.iter().enumerate() {
                            dh[r * d..(r + 1) * d].copy_from_slice(&dxs[i * d..(i + 1) * d]);
                        }
                    }
                    if needs[1] {
                        gemm(true, false, vocab, d, n, &z, &xs, &mut dw, true, true);
                    }
                }
                Ok(vec![
                    needs[0].then(|| Tensor::from_storage(T::wrap(dh), [rows, d])),
                    needs[1].then(|| Tensor::from_storage(T::wrap(dw), [vocab, d])),
                ])
            },
        ))
    })
}

fn gather_rows<T: Float>(h: &[T], d: usize, chunk: &[(usize, usize)], out: &mut Vec<T>) {
    out.clear();
    for &(r, _) in chunk {
        out.extend_from_slice(&h[r * d..(r + 1) * d]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_max_is_the_sequential_max_fold_bit_for_bit() {
        let mut rng = crate::testing::Rng::new(0x2545_f491_4f6c_dd1d);
        let mut next = || rng.next_u64();
        let specials = [f32::NAN, 0.0, -0.0, f32::NEG_INFINITY, f32::INFINITY, -3.5];
        for len in [0usize, 1, 5, 8, 9, 31, 64, 100, 8192] {
            for case in 0..40 {
                let mut z: Vec<f32> = (0..len)
                    .map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.7) * 20.0)
                    .collect();
                // Sprinkle NaN, signed zeros and infinities; some rows are all non-positive
                // so that a zero is the maximum.
                if case % 2 == 1 {
                    z.iter_mut().for_each(|x| *x = -x.abs());
                }
                for _ in 0..(case % 5) {
                    if len > 0 {
                        let at = next() as usize % len;
                        z[at] = specials[next() as usize % specials.len()];
                    }
                }
                if case == 39 {
                    z.iter_mut().for_each(|x| *x = f32::NAN);
                }
                let want = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let got = row_max_by(f32::NEG_INFINITY, &z, f32::max);
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "len {len} case {case}: {z:?}"
                );
            }
        }
    }
}
