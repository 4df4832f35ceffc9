//! Tiled (flash-style) CPU kernels for [`super::attention`]: the same math as the per-head
//! reference in `attention.rs`, computed on tiles of the score matrix (a [`BLOCK`] of query rows
//! by a [`SPAN`] of keys, or a span of query rows by a block of keys) so the working set stays
//! in cache, keys that the causal mask hides from a whole block are never touched, and the work
//! is split over (batch, head, query block) or (batch, KV head, key block).
//!
//! Forward, per query block: an online softmax over the visible key spans keeps the running
//! row maximum `m`, the running sum `l` of `exp(s − m)` and the unnormalized output
//! `acc = Σ exp(s − m)·v`; at the end `O = acc / l`, `lse = m + ln l`. A row that sees no key
//! outputs zeros with `lse = −∞`. A NaN score makes its row's maximum NaN (the maximum here
//! propagates NaN), so the row's output and lse are NaN rather than silently finite.
//!
//! Backward, in two passes that each own their outputs (no shared accumulators, so the result
//! does not depend on the thread count): pass 1 per (batch, KV head, key block) accumulates
//! `dV = Σ Pᵀ·dO` and `dK = scale·Σ dSᵀ·Q` over the group's query heads and query spans in a
//! fixed order; pass 2 per (batch, head, query block) accumulates `dQ = scale·Σ dS·K` over key
//! spans. Both recompute `P = exp(S − lse)` and `dS = P∘(dO·Vᵀ − D)` with `D = rowsum(dO∘O)`,
//! unless the `dS` tiles fit [`Tiles::keep_ds_bytes`]: then pass 1 keeps them (each task its
//! own key block's columns) and pass 2 is only `dQ = Σ dS·K` over key blocks, two GEMMs and an
//! exp per score fewer.

use super::attention::AttnDims;
use super::matmul::gemm;
use super::sum_lanes;
use crate::element::Float;
use rayon::prelude::*;

/// The fine block: query rows per forward / dQ task, and key rows per dK/dV task.
pub const BLOCK: usize = 64;
/// The span multiplied at once: keys per score tile of a query block, and query rows per
/// score tile of a key block. Large spans mean few, larger GEMMs; the causal mask still
/// trims each span to the keys (or queries) that can be visible.
pub const SPAN: usize = 256;

/// Tile sizes; the kernels take them as arguments so tests can exercise many tiles on small
/// shapes.
#[derive(Clone, Copy, Debug)]
pub struct Tiles {
    /// The fine block ([`BLOCK`]).
    pub block: usize,
    /// The span ([`SPAN`]).
    pub span: usize,
    /// Largest size in bytes of the `dS` tiles backward keeps from pass 1 for pass 2
    /// ([`KEEP_DS_BYTES`]); above it pass 2 recomputes them.
    pub keep_ds_bytes: usize,
}

/// Backward keeps pass 1's `dS` tiles for pass 2 up to this size: 4 MiB for a batch of 2 x 256
/// tokens with 8 heads, 150 MiB for Falcon-7B's 71 heads at 2 x 512, which then recomputes.
pub const KEEP_DS_BYTES: usize = 64 << 20;

impl Default for Tiles {
    fn default() -> Self {
        Tiles {
            block: BLOCK,
            span: SPAN,
            keep_ds_bytes: KEEP_DS_BYTES,
        }
    }
}

fn is_nan<T: Float>(x: T) -> bool {
    x.partial_cmp(&x).is_none()
}

/// `max` that returns NaN when either side is NaN (`f32::max` returns the other operand, which
/// would let a NaN score vanish from its row).
#[inline]
pub(crate) fn max_nan<T: Float>(a: T, b: T) -> T {
    if is_nan(a) {
        a
    } else if is_nan(b) || b > a {
        b
    } else {
        a
    }
}

/// `row.iter().fold(init, max_nan)` with the comparisons in eight independent lanes (see
/// [`row_max_by`]).
pub(crate) fn row_max<T: Float>(init: T, row: &[T]) -> T {
    row_max_by(init, row, max_nan)
}

/// `row.iter().fold(init, max)` for a maximum `max` (such as [`max_nan`] or `f32::max`), with
/// the comparisons in eight independent lanes, which LLVM vectorizes (a fold's branches on NaN
/// do not). A maximum involves no rounding, so only ties between +0 and −0, and what a NaN
/// does, could depend on the order and on `max`: a row with a NaN, or a zero or NaN result,
/// is recomputed by the fold itself, so the value is always the fold's, bit for bit.
pub(crate) fn row_max_by<T: Float>(init: T, row: &[T], max: impl Fn(T, T) -> T) -> T {
    let mut lanes = [T::NEG_INFINITY; 8];
    let mut nan = false;
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            nan |= is_nan(x);
            *l = if x > *l { x } else { *l };
        }
    }
    let m = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(init, |a, &x| max(a, x));
    if nan || is_nan(m) || m == T::ZERO {
        row.iter().fold(init, |a, &x| max(a, x))
    } else {
        m
    }
}

/// Keys `0..end` some row of the query block `[i0, i1)` may see.
fn key_end(dims: &AttnDims, i1: usize) -> usize {
    if dims.causal {
        (dims.kv_len - dims.q_len + i1).min(dims.kv_len)
    } else {
        dims.kv_len
    }
}

/// First query row that sees key `j0` under the causal mask (`q_len` when none does).
fn first_query(dims: &AttnDims, j0: usize) -> usize {
    if dims.causal {
        let off = dims.kv_len - dims.q_len;
        j0.saturating_sub(off).min(dims.q_len)
    } else {
        0
    }
}

/// Scores of the tile rows `i0..i0+bq`, keys `j0..j0+bk`: `s = scale·q·kᵀ`, −∞ where hidden.
#[allow(clippy::too_many_arguments)]
fn tile_scores<T: Float>(
    dims: &AttnDims,
    q_blk: &[T],
    k_blk: &[T],
    mask: Option<&[u8]>,
    i0: usize,
    j0: usize,
    bq: usize,
    bk: usize,
    s: &mut [T],
) {
    let d = dims.head_dim;
    gemm(false, true, bq, bk, d, q_blk, k_blk, s, false, false);
    let scale = T::from_f64(dims.scale);
    let off = dims.kv_len - dims.q_len;
    for (r, row) in s[..bq * bk].chunks_exact_mut(bk).enumerate() {
        // Keys j <= off + i0 + r are causally visible to query row i0 + r: a prefix of the row.
        let visible = if dims.causal {
            (off + i0 + r + 1).saturating_sub(j0).min(bk)
        } else {
            bk
        };
        let (shown, hidden) = row.split_at_mut(visible);
        shown.iter_mut().for_each(|x| *x *= scale);
        hidden.fill(T::NEG_INFINITY);
        if let Some(m) = mask {
            for (x, &keep) in shown.iter_mut().zip(&m[j0..j0 + visible]) {
                if keep == 0 {
                    *x = T::NEG_INFINITY;
                }
            }
        }
    }
}

/// Forward. Returns `O [b, hq, t, d]` and `lse [b, hq, t]`.
pub fn forward<T: Float>(
    dims: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    key_mask: Option<&[u8]>,
    tiles: Tiles,
) -> (Vec<T>, Vec<T>) {
    let (t, tk, d) = (dims.q_len, dims.kv_len, dims.head_dim);
    let group = dims.q_heads / dims.kv_heads;
    let bq_max = tiles.block.max(1);
    let bk_max = tiles.span.max(1);
    let mut out = vec![T::ZERO; q.len()];
    let mut lse = vec![T::ZERO; dims.batch * dims.q_heads * t];
    if t == 0 || d == 0 {
        return (out, lse);
    }
    // One task per (batch, head, query block): its rows of O and lse are disjoint slices.
    let blocks_per_head = t.div_ceil(bq_max);
    let mut tasks: Vec<(usize, &mut [T], &mut [T])> = Vec::new();
    for (bh, (o_head, l_head)) in out.chunks_mut(t * d).zip(lse.chunks_mut(t)).enumerate() {
        for (qb, (o_blk, l_blk)) in o_head
            .chunks_mut(bq_max * d)
            .zip(l_head.chunks_mut(bq_max))
            .enumerate()
        {
            tasks.push((bh * blocks_per_head + qb, o_blk, l_blk));
        }
    }
    tasks.into_par_iter().for_each(|(task, o_blk, l_blk)| {
        let (bh, qb) = (task / blocks_per_head, task % blocks_per_head);
        let (b, h) = (bh / dims.q_heads, bh % dims.q_heads);
        let kvh = b * dims.kv_heads + h / group;
        let i0 = qb * bq_max;
        let bq = l_blk.len();
        let q_blk = &q[(bh * t + i0) * d..(bh * t + i0 + bq) * d];
        let mask = key_mask.map(|m| &m[b * tk..(b + 1) * tk]);
        let mut m_run = vec![T::NEG_INFINITY; bq];
        let mut l_run = vec![T::ZERO; bq];
        let mut acc = vec![T::ZERO; bq * d];
        let mut s = vec![T::ZERO; bq * bk_max];
        let end = key_end(dims, i0 + bq);
        for j0 in (0..end).step_by(bk_max) {
            let bk = bk_max.min(end - j0);
            let kv_span = (kvh * tk + j0) * d..(kvh * tk + j0 + bk) * d;
            let s = &mut s[..bq * bk];
            tile_scores(dims, q_blk, &k[kv_span.clone()], mask, i0, j0, bq, bk, s);
            for r in 0..bq {
                let row = &mut s[r * bk..(r + 1) * bk];
                let m_new = row_max(m_run[r], row);
                if m_new == T::NEG_INFINITY {
                    // Nothing visible to this row yet: contributes nothing.
                    row.iter_mut().for_each(|x| *x = T::ZERO);
                    continue;
                }
                let alpha = (m_run[r] - m_new).exp();
                T::exp_shifted_slice(row, m_new);
                let sum = sum_lanes(row);
                l_run[r] = l_run[r] * alpha + sum;
                m_run[r] = m_new;
                acc[r * d..(r + 1) * d].iter_mut().for_each(|a| *a *= alpha);
            }
            gemm(
                false,
                false,
                bq,
                d,
                bk,
                s,
                &v[kv_span],
                &mut acc,
                true,
                false,
            );
        }
        for r in 0..bq {
            let o_row = &mut o_blk[r * d..(r + 1) * d];
            if m_run[r] == T::NEG_INFINITY {
                o_row.iter_mut().for_each(|x| *x = T::ZERO);
                l_blk[r] = T::NEG_INFINITY;
            } else {
                let inv = T::ONE / l_run[r];
                for (o, &a) in o_row.iter_mut().zip(&acc[r * d..(r + 1) * d]) {
                    *o = a * inv;
                }
                l_blk[r] = m_run[r] + l_run[r].ln();
            }
        }
    });
    (out, lse)
}

/// `P = exp(S − lse)` in place (0 for rows with no visible key, NaN for NaN rows), then
/// `dP = dO·Vᵀ` into `dp` and `dS = scale·P∘(dP − D)` in place of `dp`.
#[allow(clippy::too_many_arguments)]
fn tile_grads<T: Float>(
    dims: &AttnDims,
    p: &mut [T],
    dp: &mut [T],
    lse: &[T],
    dsum: &[T],
    do_blk: &[T],
    v_blk: &[T],
    bq: usize,
    bk: usize,
) {
    let scale = T::from_f64(dims.scale);
    for (row, &l) in p.chunks_exact_mut(bk).zip(&lse[..bq]) {
        if l == T::NEG_INFINITY {
            row.fill(T::ZERO);
        } else {
            T::exp_shifted_slice(row, l);
        }
    }
    gemm(
        false,
        true,
        bq,
        bk,
        dims.head_dim,
        do_blk,
        v_blk,
        dp,
        false,
        false,
    );
    for ((dp_row, p_row), &di) in dp.chunks_exact_mut(bk).zip(p.chunks_exact(bk)).zip(dsum) {
        for (x, &pv) in dp_row.iter_mut().zip(p_row) {
            *x = pv * (*x - di) * scale;
        }
    }
}

/// A pass-1 task of backward: its index, and its key block's dK, dV and kept dS.
type KvTask<'a, T> = (usize, &'a mut [T], &'a mut [T], &'a mut [T]);

/// Backward. Returns `(dQ, dK, dV)`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Float>(
    dims: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    key_mask: Option<&[u8]>,
    out: &[T],
    lse: &[T],
    dout: &[T],
    tiles: Tiles,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (t, tk, d) = (dims.q_len, dims.kv_len, dims.head_dim);
    let group = dims.q_heads / dims.kv_heads;
    let block = tiles.block.max(1);
    let span = tiles.span.max(1);
    let mut dq = vec![T::ZERO; q.len()];
    let mut dk = vec![T::ZERO; k.len()];
    let mut dv = vec![T::ZERO; v.len()];
    if t == 0 || tk == 0 || d == 0 {
        return (dq, dk, dv);
    }
    // D = rowsum(dO∘O), one per query row.
    let dsum: Vec<T> = dout
        .par_chunks(d)
        .zip(out.par_chunks(d))
        .map(|(a, b)| {
            let mut s = T::ZERO;
            for (x, y) in a.iter().zip(b) {
                s += *x * *y;
            }
            s
        })
        .collect();

    // Pass 1: dK and dV per (batch, KV head, key block), over query rows in spans. A kept
    // dS block holds, per query head of the group, rows `first..t` by the block's keys.
    let kblocks = tk.div_ceil(block);
    let ds_block_len = |kb: usize| {
        let (j0, first) = (kb * block, first_query(dims, kb * block));
        group * (t - first) * block.min(tk - j0)
    };
    let ds_per_head: usize = (0..kblocks).map(ds_block_len).sum();
    let ds_total = dims.batch * dims.kv_heads * ds_per_head;
    let keep_ds = ds_total.saturating_mul(std::mem::size_of::<T>()) <= tiles.keep_ds_bytes;
    let mut ds_store = if keep_ds {
        vec![T::ZERO; ds_total]
    } else {
        Vec::new()
    };
    // Start of each (KV head, key block)'s kept dS in `ds_store`.
    let mut ds_offsets = Vec::with_capacity(dims.batch * dims.kv_heads * kblocks);
    let mut ds_rest: &mut [T] = &mut ds_store;
    let mut kv_tasks: Vec<KvTask<T>> = Vec::new();
    for (g, (dk_head, dv_head)) in dk.chunks_mut(tk * d).zip(dv.chunks_mut(tk * d)).enumerate() {
        for (kb, (dk_blk, dv_blk)) in dk_head
            .chunks_mut(block * d)
            .zip(dv_head.chunks_mut(block * d))
            .enumerate()
        {
            let n = if keep_ds { ds_block_len(kb) } else { 0 };
            ds_offsets.push(ds_total - ds_rest.len());
            let (ds_blk, rest) = std::mem::take(&mut ds_rest).split_at_mut(n);
            ds_rest = rest;
            kv_tasks.push((g * kblocks + kb, dk_blk, dv_blk, ds_blk));
        }
    }
    kv_tasks
        .into_par_iter()
        .for_each(|(task, dk_blk, dv_blk, ds_blk)| {
            let (g, kb) = (task / kblocks, task % kblocks);
            let b = g / dims.kv_heads;
            let j0 = kb * block;
            let bk = dk_blk.len() / d;
            let kv_span = (g * tk + j0) * d..(g * tk + j0 + bk) * d;
            let (k_blk, v_blk) = (&k[kv_span.clone()], &v[kv_span]);
            let mask = key_mask.map(|m| &m[b * tk..(b + 1) * tk]);
            let mut p = vec![T::ZERO; span * bk];
            let mut dp = vec![T::ZERO; span * bk];
            let first = first_query(dims, j0);
            for r in 0..group {
                let bh = g * group + r;
                for i0 in (first..t).step_by(span) {
                    let bq = span.min(t - i0);
                    let rows = (bh * t + i0)..(bh * t + i0 + bq);
                    let qspan = rows.start * d..rows.end * d;
                    let (q_blk, do_blk) = (&q[qspan.clone()], &dout[qspan]);
                    let (p, dp) = (&mut p[..bq * bk], &mut dp[..bq * bk]);
                    tile_scores(dims, q_blk, k_blk, mask, i0, j0, bq, bk, p);
                    tile_grads(
                        dims,
                        p,
                        dp,
                        &lse[rows.clone()],
                        &dsum[rows],
                        do_blk,
                        v_blk,
                        bq,
                        bk,
                    );
                    gemm(true, false, bk, d, bq, p, do_blk, dv_blk, true, false);
                    gemm(true, false, bk, d, bq, dp, q_blk, dk_blk, true, false);
                    if keep_ds {
                        let at = (r * (t - first) + (i0 - first)) * bk;
                        ds_blk[at..at + bq * bk].copy_from_slice(dp);
                    }
                }
            }
        });

    // Pass 2: dQ per (batch, head, query block).
    let (bq_max, bk_max) = (block, span);
    let qblocks = t.div_ceil(bq_max);
    let q_tasks: Vec<(usize, &mut [T])> = dq
        .chunks_mut(t * d)
        .enumerate()
        .flat_map(|(bh, head)| {
            head.chunks_mut(bq_max * d)
                .enumerate()
                .map(move |(qb, blk)| (bh * qblocks + qb, blk))
        })
        .collect();
    q_tasks.into_par_iter().for_each(|(task, dq_blk)| {
        let (bh, qb) = (task / qblocks, task % qblocks);
        let (b, h) = (bh / dims.q_heads, bh % dims.q_heads);
        let g = b * dims.kv_heads + h / group;
        let i0 = qb * bq_max;
        let bq = dq_blk.len() / d;
        let end = key_end(dims, i0 + bq);
        if keep_ds {
            // dQ = Σ over key blocks of the kept dS rows · K, blocks in order.
            let r = h % group;
            for kb in 0..kblocks {
                let j0 = kb * block;
                if j0 >= end {
                    break;
                }
                let bk = block.min(tk - j0);
                let first = first_query(dims, j0);
                let lo = i0.max(first);
                if lo >= i0 + bq {
                    continue;
                }
                let n = i0 + bq - lo;
                let at = ds_offsets[g * kblocks + kb] + (r * (t - first) + (lo - first)) * bk;
                gemm(
                    false,
                    false,
                    n,
                    d,
                    bk,
                    &ds_store[at..at + n * bk],
                    &k[(g * tk + j0) * d..(g * tk + j0 + bk) * d],
                    &mut dq_blk[(lo - i0) * d..],
                    true,
                    false,
                );
            }
            return;
        }
        let rows = (bh * t + i0)..(bh * t + i0 + bq);
        let span = rows.start * d..rows.end * d;
        let (q_blk, do_blk) = (&q[span.clone()], &dout[span]);
        let mask = key_mask.map(|m| &m[b * tk..(b + 1) * tk]);
        let mut p = vec![T::ZERO; bq * bk_max];
        let mut dp = vec![T::ZERO; bq * bk_max];
        for j0 in (0..end).step_by(bk_max) {
            let bk = bk_max.min(end - j0);
            let kv_span = (g * tk + j0) * d..(g * tk + j0 + bk) * d;
            let (p, dp) = (&mut p[..bq * bk], &mut dp[..bq * bk]);
            tile_scores(dims, q_blk, &k[kv_span.clone()], mask, i0, j0, bq, bk, p);
            tile_grads(
                dims,
                p,
                dp,
                &lse[rows.clone()],
                &dsum[rows.clone()],
                do_blk,
                &v[kv_span.clone()],
                bq,
                bk,
            );
            gemm(
                false,
                false,
                bq,
                d,
                bk,
                dp,
                &k[kv_span],
                dq_blk,
                true,
                false,
            );
        }
    });
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention::{reference_backward, reference_forward};
    use crate::rng;

    fn randv(n: usize, seed: u64) -> Vec<f64> {
        (0..n as u64).map(|i| rng::normal_f64(seed, i)).collect()
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let ok = (g - w).abs() <= tol * (1.0 + w.abs())
                || (g.is_infinite() && g == w)
                || (g.is_nan() && w.is_nan());
            assert!(ok, "{what}[{i}]: {g} vs {w}");
        }
    }

    struct Case {
        dims: AttnDims,
        mask: Option<Vec<u8>>,
    }

    fn dims(
        b: usize,
        hq: usize,
        hkv: usize,
        t: usize,
        tk: usize,
        d: usize,
        causal: bool,
    ) -> AttnDims {
        AttnDims {
            batch: b,
            q_heads: hq,
            kv_heads: hkv,
            q_len: t,
            kv_len: tk,
            head_dim: d,
            causal,
            scale: 0.37,
        }
    }

    /// Odd shapes, MHA/GQA/MQA, KV-cache offsets, key padding (including rows that see no key).
    fn cases() -> Vec<Case> {
        let mut out = Vec::new();
        for &(b, hq, hkv, t, tk, d) in &[
            (1, 1, 1, 1, 1, 1),
            (2, 4, 1, 13, 13, 5),
            (1, 6, 2, 9, 17, 3),
            (2, 3, 3, 20, 20, 8),
            (1, 4, 2, 7, 30, 4),
        ] {
            for causal in [true, false] {
                out.push(Case {
                    dims: dims(b, hq, hkv, t, tk, d, causal),
                    mask: None,
                });
                // Padding: leading keys of batch 0 (early causal rows then see nothing),
                // trailing and scattered keys of batch 1.
                let mask: Vec<u8> = (0..b * tk)
                    .map(|i| {
                        let (bi, j) = (i / tk, i % tk);
                        match bi {
                            0 => u8::from(j >= tk.min(3).saturating_sub(1) || tk == 1),
                            _ => u8::from(j % 4 != 2 && j + 2 < tk),
                        }
                    })
                    .collect();
                out.push(Case {
                    dims: dims(b, hq, hkv, t, tk, d, causal),
                    mask: Some(mask),
                });
            }
        }
        out
    }

    #[test]
    fn tiled_matches_reference_forward_and_backward_f64() {
        for (ci, c) in cases().iter().enumerate() {
            let dm = &c.dims;
            let nq = dm.batch * dm.q_heads * dm.q_len * dm.head_dim;
            let nk = dm.batch * dm.kv_heads * dm.kv_len * dm.head_dim;
            let (q, k, v) = (randv(nq, 1 + ci as u64), randv(nk, 100), randv(nk, 200));
            let dout = randv(nq, 300);
            let mask = c.mask.as_deref();
            let (o_ref, l_ref) = reference_forward(dm, &q, &k, &v, mask);
            let (dq_ref, dk_ref, dv_ref) =
                reference_backward(dm, &q, &k, &v, mask, &o_ref, &l_ref, &dout);
            // Each tiling with pass 2 recomputing dS and with pass 1's dS kept.
            let tilings = [(1, 1), (4, 3), (5, 8), (BLOCK, SPAN)];
            for tiles in tilings.into_iter().flat_map(|(block, span)| {
                [0, usize::MAX].map(|keep_ds_bytes| Tiles {
                    block,
                    span,
                    keep_ds_bytes,
                })
            }) {
                let what = format!("case {ci} {dm:?} mask {} tiles {tiles:?}", mask.is_some());
                let (o, l) = forward(dm, &q, &k, &v, mask, tiles);
                assert_close(&o, &o_ref, 1e-12, &format!("O {what}"));
                assert_close(&l, &l_ref, 1e-12, &format!("lse {what}"));
                let (dq, dk, dv) = backward(dm, &q, &k, &v, mask, &o_ref, &l_ref, &dout, tiles);
                assert_close(&dq, &dq_ref, 1e-11, &format!("dQ {what}"));
                assert_close(&dk, &dk_ref, 1e-11, &format!("dK {what}"));
                assert_close(&dv, &dv_ref, 1e-11, &format!("dV {what}"));
            }
        }
    }

    #[test]
    fn lane_row_max_is_the_sequential_fold_bit_for_bit() {
        let special = [
            0.0f32,
            -0.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        for len in [0usize, 1, 7, 8, 9, 31, 64, 257] {
            for trial in 0..40u64 {
                let row: Vec<f32> = (0..len as u64)
                    .map(|i| {
                        let u = rng::bits(trial, i);
                        if u.is_multiple_of(5) {
                            special[(u >> 8) as usize % special.len()]
                        } else {
                            rng::normal_f64(trial, i) as f32
                        }
                    })
                    .collect();
                for init in [f32::NEG_INFINITY, -0.0, 0.0, 1.5, f32::NAN] {
                    let want = row.iter().fold(init, |a, &x| max_nan(a, x));
                    assert_eq!(
                        row_max(init, &row).to_bits(),
                        want.to_bits(),
                        "{row:?} {init}"
                    );
                }
            }
        }
    }

    #[test]
    fn rows_without_visible_keys_output_zero_and_pass_no_gradient() {
        // Batch 0's first three keys are padding: causal rows 0..3 see nothing.
        let dm = dims(1, 2, 1, 6, 6, 4, true);
        let mask = vec![0u8, 0, 0, 1, 1, 1];
        let (q, k, v) = (randv(48, 1), randv(24, 2), randv(24, 3));
        let (o, l) = forward(
            &dm,
            &q,
            &k,
            &v,
            Some(&mask),
            Tiles {
                block: 2,
                span: 3,
                keep_ds_bytes: 0,
            },
        );
        for h in 0..2 {
            for i in 0..3 {
                assert_eq!(l[h * 6 + i], f64::NEG_INFINITY);
                assert!(o[(h * 6 + i) * 4..(h * 6 + i + 1) * 4]
                    .iter()
                    .all(|&x| x == 0.0));
            }
            assert!(l[h * 6 + 3].is_finite());
        }
        let dout = randv(48, 4);
        for keep_ds_bytes in [0, usize::MAX] {
            let tiles = Tiles {
                block: 2,
                span: 3,
                keep_ds_bytes,
            };
            let (dq, _, _) = backward(&dm, &q, &k, &v, Some(&mask), &o, &l, &dout, tiles);
            assert!(dq[..12].iter().all(|&x| x == 0.0));
            assert!(dq[12..24].iter().any(|&x| x != 0.0));
        }
    }

    #[test]
    fn nan_propagates_through_attention() {
        let dm = dims(1, 2, 1, 8, 8, 4, true);
        let (mut q, k, v) = (randv(64, 5), randv(32, 6), randv(32, 7));
        // A NaN in query row 3 of head 1: that row's output is NaN, other rows stay finite.
        q[(8 + 3) * 4 + 1] = f64::NAN;
        for tiles in [
            Tiles {
                block: 3,
                span: 2,
                keep_ds_bytes: 0,
            },
            Tiles::default(),
        ] {
            let (o, l) = forward(&dm, &q, &k, &v, None, tiles);
            let (o_ref, l_ref) = reference_forward(&dm, &q, &k, &v, None);
            for (what, o, l) in [("tiled", &o, &l), ("reference", &o_ref, &l_ref)] {
                for row in 0..16 {
                    let nan_row = row == 8 + 3;
                    let r = &o[row * 4..(row + 1) * 4];
                    assert_eq!(r.iter().all(|x| x.is_nan()), nan_row, "{what} O row {row}");
                    assert_eq!(
                        r.iter().all(|x| x.is_finite()),
                        !nan_row,
                        "{what} O row {row}"
                    );
                    assert_eq!(l[row].is_nan(), nan_row, "{what} lse row {row}");
                }
            }
            let dout = randv(64, 8);
            let (dq, dk, _) = backward(&dm, &q, &k, &v, None, &o, &l, &dout, tiles);
            assert!(dq[(8 + 3) * 4..(8 + 4) * 4].iter().all(|x| x.is_nan()));
            // Keys 0..=3 are seen by the NaN row: their gradients are NaN too.
            assert!(dk[..4].iter().any(|x| x.is_nan()));
        }
    }

    #[test]
    fn f32_results_do_not_depend_on_the_thread_count() {
        let dm = dims(2, 4, 1, 70, 90, 16, true);
        let f = |n: usize, s: u64| -> Vec<f32> { randv(n, s).iter().map(|&x| x as f32).collect() };
        let (q, k, v, dout) = (
            f(2 * 4 * 70 * 16, 1),
            f(2 * 90 * 16, 2),
            f(2 * 90 * 16, 3),
            f(2 * 4 * 70 * 16, 4),
        );
        let mask: Vec<u8> = (0..180).map(|i| u8::from(i % 7 != 3)).collect();
        let run = |threads: usize, keep_ds_bytes: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let tiles = Tiles {
                    block: 16,
                    span: 32,
                    keep_ds_bytes,
                };
                let (o, l) = forward(&dm, &q, &k, &v, Some(&mask), tiles);
                let g = backward(&dm, &q, &k, &v, Some(&mask), &o, &l, &dout, tiles);
                (o, l, g)
            })
        };
        for keep in [0, usize::MAX] {
            let one = run(1, keep);
            for threads in [2, 3] {
                let other = run(threads, keep);
                assert!(one
                    .0
                    .iter()
                    .zip(&other.0)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
                assert!(one
                    .1
                    .iter()
                    .zip(&other.1)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
                for (x, y) in [
                    (&one.2 .0, &other.2 .0),
                    (&one.2 .1, &other.2 .1),
                    (&one.2 .2, &other.2 .2),
                ] {
                    assert!(x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits()));
                }
            }
        }
    }
}
