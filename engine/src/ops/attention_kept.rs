//! Attention that keeps its probabilities: the CPU kernels [`super::attention`] runs when the
//! whole probability matrix `P` fits [`KEEP_BYTES`] (a training batch of a small model), on the
//! token-major layout of [`super::attention_tiled`].
//!
//! Forward, per (batch, block of query tokens), for each KV head: `S = scale·Q·Kᵀ` over the
//! keys the block's last token can see, written straight into that head's `P` matrix; hidden
//! keys (causally invisible or padding) are −∞; each row becomes `exp(S − max) / sum`; then
//! `O = P·V`. Nothing else is saved: backward reads `P` instead of recomputing it from `lse`,
//! so the score GEMM and the exponentials are not repeated, and `D = rowsum(P∘dP)` replaces
//! `rowsum(dO∘O)`, so backward does not read `O` at all. A layer re-run for its backward whose
//! attention output feeds only frozen products can therefore skip `O = P·V` ([`forward`] with
//! `want_out` false).
//!
//! Backward, in two passes that each own their outputs (results do not depend on the thread
//! count): pass A per (batch, block of query tokens): `dP = dO·Vᵀ`, `D = rowsum(P∘dP)`,
//! `dS = scale·P∘(dP − D)` kept in `P`'s layout, and `dQ = dS·K`; pass B per (batch, KV head,
//! block of [`KeptTiles::k_block`] keys): `dV = Pᵀ·dO` and `dK = dSᵀ·Q` over the query rows that
//! see the block.
//!
//! A row that sees no key has `P = 0`: it outputs zeros and passes no gradient. A NaN score
//! makes its row's maximum, and so its whole row of `P`, NaN.

use super::attention::AttnDims;
use super::attention_tiled::{
    first_query, group_rows, key_end, row_max, scatter_group_rows, scatter_kv_block, visible,
    Layout, MAX_TOKENS, MIN_TOKENS, TILE_ROWS,
};
use super::matmul::{gemm_strided, gemm_strided_uninit};
use super::{dot_lanes, sum_lanes};
use crate::element::Float;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Largest probability matrix, in bytes, the kept kernels hold: 4 MiB for a batch of 2 x 256
/// tokens with 8 heads; Falcon-7B's 71 heads at 2 x 512 (150 MB) run the tiled kernels.
pub const KEEP_BYTES: usize = 64 << 20;

/// Keys per dK/dV task of backward (pass B).
pub const KEY_BLOCK: usize = 32;

/// Block sizes; the kernels take them as arguments so tests can exercise many on small shapes.
#[derive(Clone, Copy, Debug)]
pub struct KeptTiles {
    /// Query tokens per forward and pass-A task; all heads of a KV group are processed
    /// together, so a task's product has `q_tokens · group` rows.
    pub q_tokens: usize,
    /// Keys per pass-B task ([`KEY_BLOCK`]).
    pub k_block: usize,
}

impl KeptTiles {
    /// About [`TILE_ROWS`] rows per product for `group` query heads per KV head.
    pub fn for_group(group: usize) -> KeptTiles {
        KeptTiles {
            q_tokens: (TILE_ROWS / group.max(1)).clamp(MIN_TOKENS, MAX_TOKENS),
            k_block: KEY_BLOCK,
        }
    }
}

/// The probabilities a forward keeps for backward: per (batch, KV head) one row-major
/// `[t·group, tk]` matrix, row `i·group + r` for query token `i` and the group's head `r`,
/// zero where the row sees no key.
pub struct KeptProbs<T> {
    p: Vec<T>,
}

/// Whether [`forward`] and [`backward`] handle `dims` with elements of `elem_bytes`: the
/// probability matrix fits [`KEEP_BYTES`] (and there are features to attend over).
pub fn fits(dims: &AttnDims, elem_bytes: usize) -> bool {
    let elems = [dims.batch, dims.q_heads, dims.q_len, dims.kv_len]
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n));
    dims.head_dim > 0
        && elems
            .and_then(|n| n.checked_mul(elem_bytes))
            .is_some_and(|bytes| bytes <= KEEP_BYTES)
}

/// Splits the per-(batch, KV head) matrices of `buf` (each `[t·group, tk]`) into the row
/// blocks of query-token blocks of `bq` tokens: entry `b·blocks + qb` holds, for each KV head
/// in order, the rows of tokens `qb·bq..` of its matrix.
fn row_blocks<'a, T>(buf: &'a mut [T], l: &Layout, bq: usize) -> Vec<Vec<&'a mut [T]>> {
    let blocks = l.t.div_ceil(bq);
    let matrix = l.t * l.group * l.tk;
    let batch = buf.len() / (matrix * l.hkv);
    let mut out: Vec<Vec<&mut [T]>> = (0..batch * blocks)
        .map(|_| Vec::with_capacity(l.hkv))
        .collect();
    for (bg, m) in buf.chunks_mut(matrix).enumerate() {
        let b = bg / l.hkv;
        for (qb, rows) in m.chunks_mut(bq * l.group * l.tk).enumerate() {
            out[b * blocks + qb].push(rows);
        }
    }
    out
}

/// Forward on the token-major layout (`q [b, t, hq, d]`, `k, v [b, tk, hkv, d]`). Returns
/// `O [b, t, hq, d]` when `want_out`, and the probabilities for [`backward`]. Requires
/// [`fits`].
pub fn forward<T: Float>(
    dims: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    key_mask: Option<&[u8]>,
    want_out: bool,
    tiles: KeptTiles,
) -> (Option<Vec<T>>, KeptProbs<T>) {
    assert!(
        fits(dims, std::mem::size_of::<T>()),
        "attention: P too large to keep"
    );
    let l = Layout::of(dims);
    let (t, tk, d, hq) = (l.t, l.tk, l.d, l.hq);
    let bq = tiles.q_tokens.max(1);
    let n = dims.batch * hq * t * tk;
    // P without a zero fill first: each row is written by its product and its hidden tail.
    let mut p: Vec<T> = Vec::with_capacity(n);
    let mut out = want_out.then(|| vec![T::ZERO; q.len()]);
    if n == 0 {
        return (out, KeptProbs { p });
    }
    let blocks = t.div_ceil(bq);
    let p_blocks = row_blocks(&mut p.spare_capacity_mut()[..n], &l, bq);
    let o_blocks: Vec<Option<&mut [T]>> = match out.as_mut() {
        Some(o) => batch_blocks(o, t * hq * d, bq * hq * d)
            .into_iter()
            .map(Some)
            .collect(),
        None => p_blocks.iter().map(|_| None).collect(),
    };
    let tasks: Vec<_> = p_blocks.into_iter().zip(o_blocks).enumerate().collect();
    tasks
        .into_par_iter()
        .for_each(|(task, (mut p_rows, mut o_blk))| {
            let (b, qb) = (task / blocks, task % blocks);
            let i0 = qb * bq;
            let i1 = (i0 + bq).min(t);
            let rows = (i1 - i0) * l.group;
            let end = key_end(dims, i1);
            let mask = key_mask.map(|m| &m[b * tk..(b + 1) * tk]);
            let (mut qbuf, mut acc) = (Vec::new(), Vec::new());
            for (g, p_blk) in p_rows.iter_mut().enumerate() {
                let qs = group_rows(q, &l, b, g, i0, i1, &mut qbuf);
                gemm_strided_uninit(
                    rows,
                    end,
                    d,
                    (qs, d, 1),
                    (&k[l.kv_row(b, 0, g)..], 1, l.kv_stride()),
                    (p_blk, tk),
                    T::from_f64(dims.scale),
                );
                for (ri, row) in p_blk.chunks_exact_mut(tk).enumerate() {
                    // SAFETY: the product wrote the row's first `end` elements.
                    let row = unsafe { zero_tail(row, end) };
                    let vis = visible(dims, i0 + ri / l.group, 0, end);
                    softmax_visible(row, vis, mask);
                }
                // SAFETY: every row was written just above.
                let p_blk: &[T] = unsafe { assume_init(p_blk) };
                let Some(o_blk) = o_blk.as_deref_mut() else {
                    continue;
                };
                // O = P·V over the keys the block sees.
                product_into_group_rows(&l, (b, g), (p_blk, rows, end), v, o_blk, &mut acc);
            }
        });
    // SAFETY: the tasks covered every row block of every matrix and wrote each row whole.
    unsafe { p.set_len(n) };
    (out, KeptProbs { p })
}

/// Sets the elements of `row` from `init` on to zero and returns the row as initialized.
///
/// # Safety
/// The first `init` elements of `row` must be initialized.
unsafe fn zero_tail<T: Float>(row: &mut [MaybeUninit<T>], init: usize) -> &mut [T] {
    for x in &mut row[init..] {
        x.write(T::ZERO);
    }
    // SAFETY: the caller initialized `..init`, the loop the rest.
    unsafe { assume_init(row) }
}

/// `buf` as initialized elements.
///
/// # Safety
/// Every element of `buf` must be initialized.
unsafe fn assume_init<T>(buf: &mut [MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: `MaybeUninit<T>` has the layout of `T`, and the caller vouches for the values.
    unsafe { &mut *(buf as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// `buf` as blocks of `blk` elements within each batch of `per_batch` elements (the last
/// block of a batch may be short).
fn batch_blocks<T>(buf: &mut [T], per_batch: usize, blk: usize) -> Vec<&mut [T]> {
    buf.chunks_mut(per_batch)
        .flat_map(|ob| ob.chunks_mut(blk))
        .collect()
}

/// Turns one row of scores into probabilities: keys `vis..` (causally hidden) and padding keys
/// get 0, the visible ones `exp(s − max) / sum`; a row with nothing visible is all zeros.
fn softmax_visible<T: Float>(row: &mut [T], vis: usize, mask: Option<&[u8]>) {
    let (shown, hidden) = row.split_at_mut(vis);
    hidden.fill(T::ZERO);
    if let Some(m) = mask {
        for (x, &keep) in shown.iter_mut().zip(m) {
            if keep == 0 {
                *x = T::NEG_INFINITY;
            }
        }
    }
    let m = row_max(T::NEG_INFINITY, shown);
    if m == T::NEG_INFINITY {
        shown.fill(T::ZERO);
        return;
    }
    T::exp_shifted_slice(shown, m);
    let inv = T::ONE / sum_lanes(shown);
    shown.iter_mut().for_each(|x| *x *= inv);
}

/// Backward on the token-major layout of [`forward`], from its probabilities. Returns
/// `(dQ, dK, dV)` in the layouts of `q`, `k`, `v`; deterministic for any thread count.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Float>(
    dims: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    kept: &KeptProbs<T>,
    dout: &[T],
    tiles: KeptTiles,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let l = Layout::of(dims);
    let (t, tk, d, hq, group) = (l.t, l.tk, l.d, l.hq, l.group);
    let bq = tiles.q_tokens.max(1);
    let kblock = tiles.k_block.max(1);
    let mut dq = vec![T::ZERO; q.len()];
    let mut dk = vec![T::ZERO; k.len()];
    let mut dv = vec![T::ZERO; v.len()];
    let p = &kept.p;
    assert_eq!(p.len(), dims.batch * hq * t * tk, "attention: kept P shape");
    if p.is_empty() {
        return (dq, dk, dv);
    }
    let scale = T::from_f64(dims.scale);
    let matrix = t * group * tk;

    // Pass A: dS and dQ per (batch, block of query tokens), every head of its tokens.
    let blocks = t.div_ceil(bq);
    // dS without a zero fill first, as P in forward.
    let mut ds: Vec<T> = Vec::with_capacity(p.len());
    let ds_blocks = row_blocks(&mut ds.spare_capacity_mut()[..p.len()], &l, bq);
    let dq_blocks = batch_blocks(&mut dq, t * hq * d, bq * hq * d);
    let tasks: Vec<_> = ds_blocks.into_iter().zip(dq_blocks).enumerate().collect();
    tasks
        .into_par_iter()
        .for_each(|(task, (mut ds_rows, dq_blk))| {
            let (b, qb) = (task / blocks, task % blocks);
            let i0 = qb * bq;
            let i1 = (i0 + bq).min(t);
            let rows = (i1 - i0) * group;
            let end = key_end(dims, i1);
            let (mut dobuf, mut local) = (Vec::new(), Vec::new());
            for (g, ds_blk) in ds_rows.iter_mut().enumerate() {
                let dos = group_rows(dout, &l, b, g, i0, i1, &mut dobuf);
                let at = (b * l.hkv + g) * matrix + i0 * group * tk;
                let p_blk = &p[at..at + rows * tk];
                // dP = dO·Vᵀ, then dS = scale·P∘(dP − D) in place.
                gemm_strided_uninit(
                    rows,
                    end,
                    d,
                    (dos, d, 1),
                    (&v[l.kv_row(b, 0, g)..], 1, l.kv_stride()),
                    (ds_blk, tk),
                    T::ONE,
                );
                for (ri, (ds_row, p_row)) in ds_blk
                    .chunks_exact_mut(tk)
                    .zip(p_blk.chunks_exact(tk))
                    .enumerate()
                {
                    // SAFETY: the product wrote the row's first `end` elements.
                    let ds_row = unsafe { zero_tail(ds_row, end) };
                    let vis = visible(dims, i0 + ri / group, 0, end);
                    let (shown, hidden) = ds_row.split_at_mut(vis);
                    hidden.fill(T::ZERO);
                    let di = dot_lanes(&p_row[..vis], shown);
                    for (x, &pv) in shown.iter_mut().zip(p_row) {
                        *x = pv * (*x - di) * scale;
                    }
                }
                // SAFETY: every row was written just above.
                let ds_blk: &[T] = unsafe { assume_init(ds_blk) };
                // dQ = dS·K.
                product_into_group_rows(&l, (b, g), (ds_blk, rows, end), k, dq_blk, &mut local);
            }
        });
    // SAFETY: the tasks covered every row block of every matrix and wrote each row whole.
    unsafe { ds.set_len(p.len()) };

    // Pass B: dV = Pᵀ·dO and dK = dSᵀ·Q per (batch, KV head, block of keys), over the query
    // rows from the first token that sees the block.
    let kblocks = tk.div_ceil(kblock);
    let tasks: Vec<(usize, usize, usize)> = (0..dims.batch)
        .flat_map(|b| (0..l.hkv).flat_map(move |g| (0..kblocks).map(move |kb| (b, g, kb))))
        .collect();
    let kv_grads: Vec<(Vec<T>, Vec<T>)> = tasks
        .par_iter()
        .map(|&(b, g, kb)| {
            let j0 = kb * kblock;
            let bk = kblock.min(tk - j0);
            let first = first_query(dims, j0);
            let mut dk_blk = vec![T::ZERO; bk * d];
            let mut dv_blk = vec![T::ZERO; bk * d];
            if first < t {
                let n = (t - first) * group;
                let at = (b * l.hkv + g) * matrix + first * group * tk + j0;
                let (mut qbuf, mut dobuf) = (Vec::new(), Vec::new());
                let dos = group_rows(dout, &l, b, g, first, t, &mut dobuf);
                let qs = group_rows(q, &l, b, g, first, t, &mut qbuf);
                gemm_strided(
                    bk,
                    d,
                    n,
                    (&p[at..], 1, tk),
                    (dos, d, 1),
                    (&mut dv_blk, d),
                    false,
                    T::ONE,
                );
                gemm_strided(
                    bk,
                    d,
                    n,
                    (&ds[at..], 1, tk),
                    (qs, d, 1),
                    (&mut dk_blk, d),
                    false,
                    T::ONE,
                );
            }
            (dk_blk, dv_blk)
        })
        .collect();
    for (&(b, g, kb), (dk_blk, dv_blk)) in tasks.iter().zip(&kv_grads) {
        scatter_kv_block(&l, (b, g, kb * kblock), (dk_blk, dv_blk), &mut dk, &mut dv);
    }
    (dq, dk, dv)
}

/// The rows of KV group `g` in a block of `out` (token-major, every head of its tokens) set to
/// `lhs · kv[b, 0..end, g]`, where `lhs` holds `rows` rows of stride `tk` (`P` or `dS`) and `kv`
/// is `V` or `K`. With one KV head the group's rows are the block's own rows and the product
/// writes them in place; otherwise it goes through `scratch` and is scattered.
fn product_into_group_rows<T: Float>(
    l: &Layout,
    (b, g): (usize, usize),
    (lhs, rows, end): (&[T], usize, usize),
    kv: &[T],
    out: &mut [T],
    scratch: &mut Vec<T>,
) {
    let d = l.d;
    let dst: &mut [T] = if l.hkv == 1 {
        out
    } else {
        scratch.resize(rows * d, T::ZERO);
        scratch
    };
    gemm_strided(
        rows,
        d,
        end,
        (lhs, l.tk, 1),
        (&kv[l.kv_row(b, 0, g)..], l.kv_stride(), 1),
        (dst, d),
        false,
        T::ONE,
    );
    if l.hkv > 1 {
        scatter_group_rows(scratch, l, g, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention::{heads_to_tokens, tokens_to_heads};
    use crate::ops::attention_tiled::tests::{assert_close, cases, dims, randv, reference};

    /// The kernels on head-major tensors (the reference's layout): forward with and without
    /// `O`, then backward. Returns `O` and `(dQ, dK, dV)`, head-major; asserts that skipping `O`
    /// changes neither `P` nor the gradients, bit for bit.
    #[allow(clippy::type_complexity)]
    fn run_heads(
        dm: &AttnDims,
        (q, k, v): (&[f64], &[f64], &[f64]),
        mask: Option<&[u8]>,
        dout: &[f64],
        tiles: KeptTiles,
    ) -> (Vec<f64>, (Vec<f64>, Vec<f64>, Vec<f64>)) {
        let (b, hq, hkv, t, tk, d) = (
            dm.batch,
            dm.q_heads,
            dm.kv_heads,
            dm.q_len,
            dm.kv_len,
            dm.head_dim,
        );
        let (qt, kt, vt) = (
            heads_to_tokens(q, b, hq, t, d),
            heads_to_tokens(k, b, hkv, tk, d),
            heads_to_tokens(v, b, hkv, tk, d),
        );
        let dot = heads_to_tokens(dout, b, hq, t, d);
        // P and dS are not zero-filled before the kernels write them: a NaN-filled buffer of
        // their size is freed just before each call, so the allocator most likely hands its
        // memory back and an element left unwritten would show.
        let poison = || drop(std::hint::black_box(vec![f64::NAN; b * hq * t * tk]));
        poison();
        let (o, kept) = forward(dm, &qt, &kt, &vt, mask, true, tiles);
        poison();
        let (none, kept_unread) = forward(dm, &qt, &kt, &vt, mask, false, tiles);
        assert!(none.is_none());
        assert!(kept
            .p
            .iter()
            .zip(&kept_unread.p)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        poison();
        let (dq, dk, dv) = backward(dm, &qt, &kt, &vt, &kept, &dot, tiles);
        poison();
        let again = backward(dm, &qt, &kt, &vt, &kept_unread, &dot, tiles);
        assert_eq!(
            bits(&[&dq, &dk, &dv]),
            bits(&[&again.0, &again.1, &again.2])
        );
        (
            tokens_to_heads(&o.expect("O was asked for"), b, t, hq, d),
            (
                tokens_to_heads(&dq, b, t, hq, d),
                tokens_to_heads(&dk, b, tk, hkv, d),
                tokens_to_heads(&dv, b, tk, hkv, d),
            ),
        )
    }

    fn bits<T: Float>(xs: &[&Vec<T>]) -> Vec<u64> {
        xs.iter()
            .flat_map(|x| x.iter().map(|v| v.to_f64().to_bits()))
            .collect()
    }

    #[test]
    fn kept_matches_reference_forward_and_backward_f64() {
        for (ci, c) in cases().iter().enumerate() {
            let dm = &c.dims;
            let r = reference(c, 11 + ci as u64);
            let mask = c.mask.as_deref();
            for (q_tokens, k_block) in [(1, 1), (3, 5), (5, 2), (32, KEY_BLOCK), (64, 7)] {
                let tiles = KeptTiles { q_tokens, k_block };
                let what = format!("case {ci} {dm:?} mask {} {tiles:?}", mask.is_some());
                let (o, (dq, dk, dv)) = run_heads(dm, (&r.q, &r.k, &r.v), mask, &r.dout, tiles);
                assert_close(&o, &r.o, 1e-12, &format!("O {what}"));
                assert_close(&dq, &r.dq, 1e-11, &format!("dQ {what}"));
                assert_close(&dk, &r.dk, 1e-11, &format!("dK {what}"));
                assert_close(&dv, &r.dv, 1e-11, &format!("dV {what}"));
            }
        }
    }

    #[test]
    fn rows_without_visible_keys_output_zero_and_pass_no_gradient() {
        // The first three keys are padding: causal rows 0..3 see nothing.
        let dm = dims(1, 2, 1, 6, 6, 4, true);
        let mask = vec![0u8, 0, 0, 1, 1, 1];
        let (q, k, v, dout) = (randv(48, 1), randv(24, 2), randv(24, 3), randv(48, 4));
        let tiles = KeptTiles {
            q_tokens: 2,
            k_block: 4,
        };
        let (o, (dq, dk, dv)) = run_heads(&dm, (&q, &k, &v), Some(&mask), &dout, tiles);
        for h in 0..2 {
            let row = |x: &[f64], i: usize| x[(h * 6 + i) * 4..(h * 6 + i + 1) * 4].to_vec();
            for i in 0..3 {
                assert!(row(&o, i).iter().all(|&x| x == 0.0), "O head {h} row {i}");
                assert!(row(&dq, i).iter().all(|&x| x == 0.0), "dQ head {h} row {i}");
            }
            // Row 3 sees key 3 alone (P = 1, so dS = 0); row 4 sees two keys.
            assert!(row(&dq, 4).iter().any(|&x| x != 0.0));
        }
        // Padding keys receive no gradient.
        assert!(dk[..12].iter().chain(&dv[..12]).all(|&x| x == 0.0));
    }

    #[test]
    fn nan_propagates_through_attention() {
        let dm = dims(1, 2, 1, 8, 8, 4, true);
        let (mut q, k, v, dout) = (randv(64, 5), randv(32, 6), randv(32, 7), randv(64, 8));
        // A NaN in query row 3 of head 1: that row's output is NaN, other rows stay finite.
        q[(8 + 3) * 4 + 1] = f64::NAN;
        let tiles = KeptTiles {
            q_tokens: 3,
            k_block: 3,
        };
        let (o, (dq, dk, _)) = run_heads(&dm, (&q, &k, &v), None, &dout, tiles);
        for row in 0..16 {
            let r = &o[row * 4..(row + 1) * 4];
            let nan_row = row == 8 + 3;
            assert_eq!(r.iter().all(|x| x.is_nan()), nan_row, "O row {row}");
            assert_eq!(r.iter().all(|x| x.is_finite()), !nan_row, "O row {row}");
        }
        assert!(dq[(8 + 3) * 4..(8 + 4) * 4].iter().all(|x| x.is_nan()));
        // Keys 0..=3 are seen by the NaN row: their gradients are NaN too.
        assert!(dk[..4].iter().any(|x| x.is_nan()));
    }

    #[test]
    fn f32_results_do_not_depend_on_the_thread_count() {
        // Grouped (two KV heads) and multi-query, with padding and blocks that do not divide
        // the lengths.
        for hkv in [1, 2] {
            let dm = dims(2, 4, hkv, 70, 90, 16, true);
            let f =
                |n: usize, s: u64| -> Vec<f32> { randv(n, s).iter().map(|&x| x as f32).collect() };
            let (nq, nk) = (2 * 4 * 70 * 16, 2 * hkv * 90 * 16);
            let (q, k, v, dout) = (f(nq, 1), f(nk, 2), f(nk, 3), f(nq, 4));
            let mask: Vec<u8> = (0..180).map(|i| u8::from(i % 7 != 3)).collect();
            let tiles = KeptTiles {
                q_tokens: 16,
                k_block: 24,
            };
            let run = |threads: usize| {
                crate::testing::with_threads(threads, || {
                    let (o, kept) = forward(&dm, &q, &k, &v, Some(&mask), true, tiles);
                    let (dq, dk, dv) = backward(&dm, &q, &k, &v, &kept, &dout, tiles);
                    bits(&[&o.unwrap(), &kept.p, &dq, &dk, &dv])
                })
            };
            let one = run(1);
            for threads in [2, 3] {
                assert!(one == run(threads), "hkv {hkv}, {threads} threads");
            }
        }
    }

    #[test]
    fn fits_bounds_the_kept_probabilities() {
        let mut dm = dims(2, 8, 1, 256, 256, 64, true);
        assert!(fits(&dm, 4));
        dm.q_len = 4096;
        dm.kv_len = 4096;
        assert!(!fits(&dm, 4));
        dm.batch = usize::MAX;
        assert!(!fits(&dm, 4), "overflowing sizes do not fit");
        let no_features = dims(1, 1, 1, 4, 4, 0, true);
        assert!(!fits(&no_features, 4));
    }
}
