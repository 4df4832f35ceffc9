//! Tiled (flash-style) CPU kernels for [`super::attention`]: the same math as the per-head
//! reference in `attention.rs`, on the token-major layout the model's fused QKV projection
//! produces: `q, O [b, t, hq, d]`, `k, v [b, tk, hkv, d]`, `lse [b, t, hq]`.
//!
//! The query heads that share a KV head are one matrix: rows `(i, r)` for query token `i` and
//! the group's head `r`, token-major. Under multi-query attention (one KV head) these rows are
//! a plain sub-slice of `q`, so each score tile is one GEMM over all heads (`rows x keys x d`)
//! that reads the shared keys once, and a block of query tokens is a contiguous run of rows,
//! which lets the causal mask trim each tile to the keys its last token can see. Grouped and
//! multi-head layouts gather the group's rows into a buffer first; keys and values are read
//! in place through strides.
//!
//! Forward, per (batch, block of [`Tiles::q_tokens`] query tokens, KV group): an online softmax
//! over key spans of [`Tiles::span`] keys keeps the running row maximum `m`, the running sum `l`
//! of `exp(s − m)` and the unnormalized output `acc = Σ exp(s − m)·v`; at the end `O = acc / l`,
//! `lse = m + ln l`. A row that sees no key outputs zeros with `lse = −∞`. A NaN score makes
//! its row's maximum NaN (the maximum here propagates NaN), so the row's output and lse are NaN
//! rather than silently finite. Exponentials are taken only over each row's visible keys.
//!
//! Backward, in two passes that each own their outputs (no shared accumulators, so the result
//! does not depend on the thread count): pass 1 per (batch, KV head, block of
//! [`Tiles::k_block`] keys) accumulates `dV = Σ Pᵀ·dO` and `dK = Σ dSᵀ·Q` over the group's query
//! rows in spans of [`Tiles::q_tokens`] tokens, in a fixed order; pass 2 per (batch, block of
//! query tokens) accumulates `dQ = Σ dS·K` over key blocks. Both form `P = exp(S − lse)` and
//! `dS = scale·P∘(dO·Vᵀ − D)` with `D = rowsum(dO∘O)`, unless the `dS` tiles fit
//! [`Tiles::keep_ds_bytes`]: then pass 1 keeps them and pass 2 is one GEMM per key block.

use super::attention::AttnDims;
use super::matmul::gemm_strided;
use super::sum_lanes;
use crate::element::Float;
use rayon::prelude::*;

/// Rows (query tokens x heads of a KV group) a score tile aims for: large enough for the GEMM
/// kernel to run near its peak, small enough for the tile to stay in L2.
pub const TILE_ROWS: usize = 256;
/// Query tokens per block at most (multi-head attention, one head per group).
pub const MAX_TOKENS: usize = 64;
/// Query tokens per block at least (large groups, such as Falcon-7B's 71 heads on one KV head).
pub const MIN_TOKENS: usize = 8;
/// Keys per forward score tile. Large spans mean few, larger GEMMs; the causal mask still
/// trims each span to the keys the block's last token can see.
pub const SPAN: usize = 256;
/// Keys per dK/dV task of backward.
pub const KEY_BLOCK: usize = 64;

/// Tile sizes; the kernels take them as arguments so tests can exercise many tiles on small
/// shapes.
#[derive(Clone, Copy, Debug)]
pub struct Tiles {
    /// Query tokens per forward and dQ task, and per span of query rows in pass 1; all heads
    /// of a KV group are processed together, so a tile has `q_tokens · group` rows.
    pub q_tokens: usize,
    /// Keys per forward score tile ([`SPAN`]).
    pub span: usize,
    /// Keys per dK/dV task ([`KEY_BLOCK`]).
    pub k_block: usize,
    /// Largest size in bytes of the `dS` tiles backward keeps from pass 1 for pass 2
    /// ([`KEEP_DS_BYTES`]); above it pass 2 recomputes them.
    pub keep_ds_bytes: usize,
}

/// Backward keeps pass 1's `dS` tiles for pass 2 up to this size: 4 MiB for a batch of 2 x 256
/// tokens with 8 heads, 150 MiB for Falcon-7B's 71 heads at 2 x 512, which then recomputes.
pub const KEEP_DS_BYTES: usize = 64 << 20;

impl Tiles {
    /// The default tiles for `group` query heads per KV head: about [`TILE_ROWS`] rows per tile.
    pub fn for_group(group: usize) -> Tiles {
        Tiles {
            q_tokens: (TILE_ROWS / group.max(1)).clamp(MIN_TOKENS, MAX_TOKENS),
            span: SPAN,
            k_block: KEY_BLOCK,
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

/// Keys `0..end` some query token below `i1` may see.
pub(crate) fn key_end(dims: &AttnDims, i1: usize) -> usize {
    if dims.causal {
        (dims.kv_len - dims.q_len + i1).min(dims.kv_len)
    } else {
        dims.kv_len
    }
}

/// First query token that sees key `j0` under the causal mask (`q_len` when none does).
pub(crate) fn first_query(dims: &AttnDims, j0: usize) -> usize {
    if dims.causal {
        let off = dims.kv_len - dims.q_len;
        j0.saturating_sub(off).min(dims.q_len)
    } else {
        0
    }
}

/// How many of the keys `j0..j0+bk` query token `i` sees under the causal mask: a prefix.
pub(crate) fn visible(dims: &AttnDims, i: usize, j0: usize, bk: usize) -> usize {
    if dims.causal {
        (dims.kv_len - dims.q_len + i + 1)
            .saturating_sub(j0)
            .min(bk)
    } else {
        bk
    }
}

/// Element offsets in the token-major tensors.
#[derive(Clone, Copy)]
pub(crate) struct Layout {
    pub t: usize,
    pub tk: usize,
    pub hq: usize,
    pub hkv: usize,
    pub group: usize,
    pub d: usize,
}

impl Layout {
    pub(crate) fn of(dims: &AttnDims) -> Layout {
        Layout {
            t: dims.q_len,
            tk: dims.kv_len,
            hq: dims.q_heads,
            hkv: dims.kv_heads,
            group: dims.q_heads / dims.kv_heads,
            d: dims.head_dim,
        }
    }

    /// Start of query row (batch `b`, token `i`, head `h`) in `q`, `O`, `dO`, `dQ`.
    pub(crate) fn q_row(&self, b: usize, i: usize, h: usize) -> usize {
        ((b * self.t + i) * self.hq + h) * self.d
    }

    /// Start of key row (batch `b`, key `j`, KV head `g`) in `k`, `v`, `dK`, `dV`.
    pub(crate) fn kv_row(&self, b: usize, j: usize, g: usize) -> usize {
        ((b * self.tk + j) * self.hkv + g) * self.d
    }

    /// Row stride of one KV head's keys.
    pub(crate) fn kv_stride(&self) -> usize {
        self.hkv * self.d
    }

    /// Index into `lse` and `D` of query row (batch `b`, token `i`, head `h`).
    pub(crate) fn stat(&self, b: usize, i: usize, h: usize) -> usize {
        (b * self.t + i) * self.hq + h
    }
}

/// The rows `(i, r)` of KV group `g` for query tokens `i0..i1`, token-major, as one row-major
/// `[(i1 − i0)·group, d]` matrix: a sub-slice of `x [b, t, hq, d]` when the group is every head
/// (one KV head), else gathered into `buf`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn group_rows<'a, T: Copy>(
    x: &'a [T],
    l: &Layout,
    b: usize,
    g: usize,
    i0: usize,
    i1: usize,
    buf: &'a mut Vec<T>,
) -> &'a [T] {
    if l.hkv == 1 {
        return &x[l.q_row(b, i0, 0)..l.q_row(b, i1, 0)];
    }
    buf.clear();
    for i in i0..i1 {
        let s = l.q_row(b, i, g * l.group);
        buf.extend_from_slice(&x[s..s + l.group * l.d]);
    }
    buf
}

/// Adds rows `(i, r)` of group `g` (from [`group_rows`]' order) into the block of `dst` that
/// holds every head of tokens `i0..`: `dst[(i − i0, g·group + r)] += src[(i − i0)·group + r]`.
pub(crate) fn scatter_group_rows<T: Float>(src: &[T], l: &Layout, g: usize, dst: &mut [T]) {
    let width = l.group * l.d;
    for (ti, s) in src.chunks_exact(width).enumerate() {
        let at = (ti * l.hq + g * l.group) * l.d;
        dst[at..at + width].copy_from_slice(s);
    }
}

/// Copies a key block's `dK` and `dV` rows (keys from `j0` of KV group `g` in batch `b`,
/// `[keys, d]` each) into the full gradients.
pub(crate) fn scatter_kv_block<T: Float>(
    l: &Layout,
    (b, g, j0): (usize, usize, usize),
    (dk_blk, dv_blk): (&[T], &[T]),
    dk: &mut [T],
    dv: &mut [T],
) {
    let d = l.d;
    for (jj, (dkr, dvr)) in dk_blk
        .chunks_exact(d)
        .zip(dv_blk.chunks_exact(d))
        .enumerate()
    {
        let at = l.kv_row(b, j0 + jj, g);
        dk[at..at + d].copy_from_slice(dkr);
        dv[at..at + d].copy_from_slice(dvr);
    }
}

/// Scores `s = scale·q·kᵀ` of `rows` query rows (tokens from `i0`, `group` rows per token)
/// against keys `j0..j0+bk` of KV group `g`, with each row's hidden keys (causally invisible or
/// padding) at −∞. Returns nothing; the visible prefix of row `ri` is `visible(i0 + ri/group)`.
#[allow(clippy::too_many_arguments)]
fn tile_scores<T: Float>(
    dims: &AttnDims,
    l: &Layout,
    qs: &[T],
    k: &[T],
    mask: Option<&[u8]>,
    (b, g, i0, j0): (usize, usize, usize, usize),
    bk: usize,
    s: &mut [T],
) {
    let rows = qs.len() / l.d;
    let k_at = l.kv_row(b, j0, g);
    gemm_strided(
        rows,
        bk,
        l.d,
        (qs, l.d, 1),
        (&k[k_at..], 1, l.kv_stride()),
        (&mut s[..rows * bk], bk),
        false,
        T::from_f64(dims.scale),
    );
    for (ri, row) in s[..rows * bk].chunks_exact_mut(bk).enumerate() {
        let vis = visible(dims, i0 + ri / l.group, j0, bk);
        let (shown, hidden) = row.split_at_mut(vis);
        hidden.fill(T::NEG_INFINITY);
        if let Some(m) = mask {
            for (x, &keep) in shown.iter_mut().zip(&m[j0..j0 + vis]) {
                if keep == 0 {
                    *x = T::NEG_INFINITY;
                }
            }
        }
    }
}

/// Forward on the token-major layout. Returns `O [b, t, hq, d]` and `lse [b, t, hq]`.
pub fn forward<T: Float>(
    dims: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    key_mask: Option<&[u8]>,
    tiles: Tiles,
) -> (Vec<T>, Vec<T>) {
    let l = Layout::of(dims);
    let (t, tk, d, hq) = (l.t, l.tk, l.d, l.hq);
    let bq = tiles.q_tokens.max(1);
    let span = tiles.span.max(1);
    let mut out = vec![T::ZERO; q.len()];
    let mut lse = vec![T::ZERO; dims.batch * hq * t];
    if t == 0 || d == 0 {
        return (out, lse);
    }
    // One task per (batch, block of query tokens): every head of its tokens, disjoint slices.
    let blocks = t.div_ceil(bq);
    let mut tasks: Vec<(usize, &mut [T], &mut [T])> = Vec::new();
    for (b, (o_b, l_b)) in out
        .chunks_mut(t * hq * d)
        .zip(lse.chunks_mut(t * hq))
        .enumerate()
    {
        for (qb, (o_blk, l_blk)) in o_b
            .chunks_mut(bq * hq * d)
            .zip(l_b.chunks_mut(bq * hq))
            .enumerate()
        {
            tasks.push((b * blocks + qb, o_blk, l_blk));
        }
    }
    tasks.into_par_iter().for_each(|(task, o_blk, l_blk)| {
        let (b, qb) = (task / blocks, task % blocks);
        let i0 = qb * bq;
        let i1 = (i0 + bq).min(t);
        let rows = (i1 - i0) * l.group;
        let mask = key_mask.map(|m| &m[b * tk..(b + 1) * tk]);
        let end = key_end(dims, i1);
        let mut qbuf = Vec::new();
        let mut s = vec![T::ZERO; rows * span.min(end.max(1))];
        let mut acc = vec![T::ZERO; rows * d];
        for g in 0..l.hkv {
            let qs = group_rows(q, &l, b, g, i0, i1, &mut qbuf);
            let mut m_run = vec![T::NEG_INFINITY; rows];
            let mut l_run = vec![T::ZERO; rows];
            acc.fill(T::ZERO);
            for j0 in (0..end).step_by(span) {
                let bk = span.min(end - j0);
                let s = &mut s[..rows * bk];
                tile_scores(dims, &l, qs, k, mask, (b, g, i0, j0), bk, s);
                for (ri, row) in s.chunks_exact_mut(bk).enumerate() {
                    let vis = visible(dims, i0 + ri / l.group, j0, bk);
                    let (shown, hidden) = row.split_at_mut(vis);
                    hidden.fill(T::ZERO);
                    let m_new = row_max(m_run[ri], shown);
                    if m_new == T::NEG_INFINITY {
                        // Nothing visible to this row yet: contributes nothing.
                        shown.fill(T::ZERO);
                        continue;
                    }
                    T::exp_shifted_slice(shown, m_new);
                    let sum = sum_lanes(shown);
                    if m_run[ri] == T::NEG_INFINITY {
                        // First visible span of the row: `acc` and `l` are still zero.
                        l_run[ri] = sum;
                    } else {
                        let alpha = (m_run[ri] - m_new).exp();
                        l_run[ri] = l_run[ri] * alpha + sum;
                        acc[ri * d..(ri + 1) * d]
                            .iter_mut()
                            .for_each(|a| *a *= alpha);
                    }
                    m_run[ri] = m_new;
                }
                gemm_strided(
                    rows,
                    d,
                    bk,
                    (s, bk, 1),
                    (&v[l.kv_row(b, j0, g)..], l.kv_stride(), 1),
                    (&mut acc, d),
                    true,
                    T::ONE,
                );
            }
            for (ri, (&m, &lr)) in m_run.iter().zip(&l_run).enumerate() {
                let (ti, r) = (ri / l.group, ri % l.group);
                let h = g * l.group + r;
                let o_row = &mut o_blk[(ti * hq + h) * d..(ti * hq + h + 1) * d];
                if m == T::NEG_INFINITY {
                    o_row.fill(T::ZERO);
                    l_blk[ti * hq + h] = T::NEG_INFINITY;
                } else {
                    let inv = T::ONE / lr;
                    for (o, &a) in o_row.iter_mut().zip(&acc[ri * d..(ri + 1) * d]) {
                        *o = a * inv;
                    }
                    l_blk[ti * hq + h] = m + lr.ln();
                }
            }
        }
    });
    (out, lse)
}

/// Turns the scores `p` of query rows (tokens from `i0`) into `P = exp(S − lse)` (0 where
/// hidden, 0 for rows with no visible key, NaN for NaN rows), computes `dP = dO·Vᵀ` into `dp`
/// and then `dS = scale·P∘(dP − D)` in place of `dp`.
#[allow(clippy::too_many_arguments)]
fn tile_grads<T: Float>(
    dims: &AttnDims,
    l: &Layout,
    p: &mut [T],
    dp: &mut [T],
    (lse, dsum): (&[T], &[T]),
    dos: &[T],
    v: &[T],
    (b, g, i0, j0): (usize, usize, usize, usize),
    bk: usize,
) {
    let rows = dos.len() / l.d;
    for (ri, row) in p[..rows * bk].chunks_exact_mut(bk).enumerate() {
        let (i, h) = (i0 + ri / l.group, g * l.group + ri % l.group);
        let lv = lse[l.stat(b, i, h)];
        let vis = visible(dims, i, j0, bk);
        let (shown, hidden) = row.split_at_mut(vis);
        hidden.fill(T::ZERO);
        if lv == T::NEG_INFINITY {
            shown.fill(T::ZERO);
        } else {
            T::exp_shifted_slice(shown, lv);
        }
    }
    gemm_strided(
        rows,
        bk,
        l.d,
        (dos, l.d, 1),
        (&v[l.kv_row(b, j0, g)..], 1, l.kv_stride()),
        (&mut dp[..rows * bk], bk),
        false,
        T::ONE,
    );
    let scale = T::from_f64(dims.scale);
    for (ri, (dp_row, p_row)) in dp[..rows * bk]
        .chunks_exact_mut(bk)
        .zip(p[..rows * bk].chunks_exact(bk))
        .enumerate()
    {
        let (i, h) = (i0 + ri / l.group, g * l.group + ri % l.group);
        let di = dsum[l.stat(b, i, h)];
        for (x, &pv) in dp_row.iter_mut().zip(p_row) {
            *x = pv * (*x - di) * scale;
        }
    }
}

/// A pass-1 task of backward: (batch, KV head, key block) and its key block's kept dS.
type KvTask<'a, T> = ((usize, usize, usize), &'a mut [T]);

/// Backward on the token-major layout. Returns `(dQ, dK, dV)` in the layouts of `q`, `k`, `v`.
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
    let l = Layout::of(dims);
    let (t, tk, d, hq, group) = (l.t, l.tk, l.d, l.hq, l.group);
    let qt = tiles.q_tokens.max(1);
    let kblock = tiles.k_block.max(1);
    let span = tiles.span.max(1);
    let mut dq = vec![T::ZERO; q.len()];
    let mut dk = vec![T::ZERO; k.len()];
    let mut dv = vec![T::ZERO; v.len()];
    if t == 0 || tk == 0 || d == 0 {
        return (dq, dk, dv);
    }
    // D = rowsum(dO∘O), one per query row, in the order of `lse`.
    const D_ROWS: usize = 512;
    let dsum: Vec<T> = dout
        .par_chunks(D_ROWS * d)
        .zip(out.par_chunks(D_ROWS * d))
        .flat_map_iter(|(a, o)| {
            a.chunks_exact(d).zip(o.chunks_exact(d)).map(|(x, y)| {
                let mut s = T::ZERO;
                for (&p, &r) in x.iter().zip(y) {
                    s += p * r;
                }
                s
            })
        })
        .collect();

    // Pass 1: dK and dV per (batch, KV head, key block), over query rows in spans. A kept dS
    // block holds rows `(i, r)` for tokens `first..t` by the block's keys, `bk` wide.
    let kblocks = tk.div_ceil(kblock);
    let block_keys = |kb: usize| kblock.min(tk - kb * kblock);
    let ds_block_len = |kb: usize| (t - first_query(dims, kb * kblock)) * group * block_keys(kb);
    let ds_per_head: usize = (0..kblocks).map(ds_block_len).sum();
    let ds_total = dims.batch * l.hkv * ds_per_head;
    let keep_ds = ds_total.saturating_mul(std::mem::size_of::<T>()) <= tiles.keep_ds_bytes;
    let mut ds_store = if keep_ds {
        vec![T::ZERO; ds_total]
    } else {
        Vec::new()
    };
    // Start of each (batch, KV head, key block)'s kept dS in `ds_store`.
    let mut ds_offsets = Vec::with_capacity(dims.batch * l.hkv * kblocks);
    let mut ds_rest: &mut [T] = &mut ds_store;
    let mut kv_tasks: Vec<KvTask<T>> = Vec::new();
    for b in 0..dims.batch {
        for g in 0..l.hkv {
            for kb in 0..kblocks {
                let n = if keep_ds { ds_block_len(kb) } else { 0 };
                ds_offsets.push(ds_total - ds_rest.len());
                let (ds_blk, rest) = std::mem::take(&mut ds_rest).split_at_mut(n);
                ds_rest = rest;
                kv_tasks.push(((b, g, kb), ds_blk));
            }
        }
    }
    let kv_grads: Vec<(Vec<T>, Vec<T>)> = kv_tasks
        .into_par_iter()
        .map(|((b, g, kb), ds_blk)| {
            let j0 = kb * kblock;
            let bk = block_keys(kb);
            let mask = key_mask.map(|m| &m[b * tk..(b + 1) * tk]);
            let mut dk_blk = vec![T::ZERO; bk * d];
            let mut dv_blk = vec![T::ZERO; bk * d];
            let (mut qbuf, mut dobuf) = (Vec::new(), Vec::new());
            let mut p = vec![T::ZERO; qt * group * bk];
            let mut dp = vec![T::ZERO; qt * group * bk];
            let first = first_query(dims, j0);
            for i0 in (first..t).step_by(qt) {
                let i1 = (i0 + qt).min(t);
                let rows = (i1 - i0) * group;
                // Keys of the block that the span's last token sees (all of them past the
                // diagonal); the rest of the block is hidden from every row of the span.
                let bk_eff = visible(dims, i1 - 1, j0, bk);
                let qs = group_rows(q, &l, b, g, i0, i1, &mut qbuf);
                let dos = group_rows(dout, &l, b, g, i0, i1, &mut dobuf);
                let (p, dp) = (&mut p[..rows * bk_eff], &mut dp[..rows * bk_eff]);
                tile_scores(dims, &l, qs, k, mask, (b, g, i0, j0), bk_eff, p);
                tile_grads(
                    dims,
                    &l,
                    p,
                    dp,
                    (lse, &dsum),
                    dos,
                    v,
                    (b, g, i0, j0),
                    bk_eff,
                );
                gemm_strided(
                    bk_eff,
                    d,
                    rows,
                    (p, 1, bk_eff),
                    (dos, d, 1),
                    (&mut dv_blk, d),
                    true,
                    T::ONE,
                );
                gemm_strided(
                    bk_eff,
                    d,
                    rows,
                    (dp, 1, bk_eff),
                    (qs, d, 1),
                    (&mut dk_blk, d),
                    true,
                    T::ONE,
                );
                if keep_ds {
                    let at = (i0 - first) * group * bk;
                    for (dst, src) in ds_blk[at..at + rows * bk]
                        .chunks_exact_mut(bk)
                        .zip(dp.chunks_exact(bk_eff))
                    {
                        dst[..bk_eff].copy_from_slice(src);
                        dst[bk_eff..].fill(T::ZERO);
                    }
                }
            }
            (dk_blk, dv_blk)
        })
        .collect();
    let mut blocks = kv_grads.iter();
    for b in 0..dims.batch {
        for g in 0..l.hkv {
            for kb in 0..kblocks {
                let (dk_blk, dv_blk) = blocks.next().expect("one result per task");
                scatter_kv_block(&l, (b, g, kb * kblock), (dk_blk, dv_blk), &mut dk, &mut dv);
            }
        }
    }

    // Pass 2: dQ per (batch, block of query tokens), every head of its tokens.
    let qblocks = t.div_ceil(qt);
    let q_tasks: Vec<(usize, &mut [T])> = dq
        .chunks_mut(t * hq * d)
        .enumerate()
        .flat_map(|(b, dq_b)| {
            dq_b.chunks_mut(qt * hq * d)
                .enumerate()
                .map(move |(qb, blk)| (b * qblocks + qb, blk))
        })
        .collect();
    q_tasks.into_par_iter().for_each(|(task, dq_blk)| {
        let (b, qb) = (task / qblocks, task % qblocks);
        let i0 = qb * qt;
        let i1 = (i0 + qt).min(t);
        let rows = (i1 - i0) * group;
        let end = key_end(dims, i1);
        let mask = key_mask.map(|m| &m[b * tk..(b + 1) * tk]);
        let (mut qbuf, mut dobuf) = (Vec::new(), Vec::new());
        let mut local = Vec::new();
        let (mut p, mut dp) = (Vec::new(), Vec::new());
        for g in 0..l.hkv {
            // With one KV head the group's rows are the task's own rows of dQ.
            let target: &mut [T] = if l.hkv == 1 {
                &mut dq_blk[..]
            } else {
                local.clear();
                local.resize(rows * d, T::ZERO);
                &mut local[..]
            };
            if keep_ds {
                // dQ = Σ over key blocks of the kept dS rows · K, blocks in order.
                for kb in 0..kblocks {
                    let j0 = kb * kblock;
                    if j0 >= end {
                        break;
                    }
                    let bk = block_keys(kb);
                    let first = first_query(dims, j0);
                    let lo = i0.max(first);
                    if lo >= i1 {
                        continue;
                    }
                    let bk_eff = visible(dims, i1 - 1, j0, bk);
                    let n = (i1 - lo) * group;
                    let at = ds_offsets[(b * l.hkv + g) * kblocks + kb] + (lo - first) * group * bk;
                    gemm_strided(
                        n,
                        d,
                        bk_eff,
                        (&ds_store[at..], bk, 1),
                        (&k[l.kv_row(b, j0, g)..], l.kv_stride(), 1),
                        (&mut target[(lo - i0) * group * d..], d),
                        true,
                        T::ONE,
                    );
                }
            } else {
                let qs = group_rows(q, &l, b, g, i0, i1, &mut qbuf);
                let dos = group_rows(dout, &l, b, g, i0, i1, &mut dobuf);
                for j0 in (0..end).step_by(span) {
                    let bk = span.min(end - j0);
                    p.resize(rows * bk, T::ZERO);
                    dp.resize(rows * bk, T::ZERO);
                    tile_scores(dims, &l, qs, k, mask, (b, g, i0, j0), bk, &mut p);
                    tile_grads(
                        dims,
                        &l,
                        &mut p,
                        &mut dp,
                        (lse, &dsum),
                        dos,
                        v,
                        (b, g, i0, j0),
                        bk,
                    );
                    gemm_strided(
                        rows,
                        d,
                        bk,
                        (&dp[..rows * bk], bk, 1),
                        (&k[l.kv_row(b, j0, g)..], l.kv_stride(), 1),
                        (&mut target[..], d),
                        true,
                        T::ONE,
                    );
                }
            }
            if l.hkv > 1 {
                scatter_group_rows(&local, &l, g, dq_blk);
            }
        }
    });
    (dq, dk, dv)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ops::attention::{reference_backward, reference_forward};
    use crate::rng;

    // The tests keep their tensors head-major, the layout of the per-head reference, and run
    // the token-major kernels through the head-major wrappers, which convert.
    use crate::ops::attention::{
        attention_backward_tiles as bwd_heads, attention_forward_tiles as fwd_heads,
    };

    pub(crate) fn randv(n: usize, seed: u64) -> Vec<f64> {
        (0..n as u64).map(|i| rng::normal_f64(seed, i)).collect()
    }

    pub(crate) fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let ok = (g - w).abs() <= tol * (1.0 + w.abs())
                || (g.is_infinite() && g == w)
                || (g.is_nan() && w.is_nan());
            assert!(ok, "{what}[{i}]: {g} vs {w}");
        }
    }

    pub(crate) struct Case {
        pub dims: AttnDims,
        pub mask: Option<Vec<u8>>,
    }

    pub(crate) fn dims(
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
    pub(crate) fn cases() -> Vec<Case> {
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

    /// Random head-major inputs for `case` (seeded by `seed`) with the float64 reference's
    /// output, log-sum-exp and gradients.
    pub(crate) struct Reference {
        pub q: Vec<f64>,
        pub k: Vec<f64>,
        pub v: Vec<f64>,
        pub dout: Vec<f64>,
        pub o: Vec<f64>,
        pub lse: Vec<f64>,
        pub dq: Vec<f64>,
        pub dk: Vec<f64>,
        pub dv: Vec<f64>,
    }

    pub(crate) fn reference(case: &Case, seed: u64) -> Reference {
        let dm = &case.dims;
        let nq = dm.batch * dm.q_heads * dm.q_len * dm.head_dim;
        let nk = dm.batch * dm.kv_heads * dm.kv_len * dm.head_dim;
        let (q, k, v) = (
            randv(nq, seed),
            randv(nk, seed + 1000),
            randv(nk, seed + 2000),
        );
        let dout = randv(nq, seed + 3000);
        let mask = case.mask.as_deref();
        let (o, lse) = reference_forward(dm, &q, &k, &v, mask);
        let (dq, dk, dv) = reference_backward(dm, &q, &k, &v, mask, &o, &lse, &dout);
        Reference {
            q,
            k,
            v,
            dout,
            o,
            lse,
            dq,
            dk,
            dv,
        }
    }

    #[test]
    fn tiled_matches_reference_forward_and_backward_f64() {
        for (ci, c) in cases().iter().enumerate() {
            let dm = &c.dims;
            let r = reference(c, 1 + ci as u64);
            let mask = c.mask.as_deref();
            // Each tiling with pass 2 recomputing dS and with pass 1's dS kept.
            let tilings = [
                (1, 1, 1),
                (4, 3, 5),
                (5, 8, 3),
                (MIN_TOKENS, 7, 2),
                (MAX_TOKENS, SPAN, KEY_BLOCK),
            ];
            for tiles in tilings.into_iter().flat_map(|(q_tokens, span, k_block)| {
                [0, usize::MAX].map(|keep_ds_bytes| Tiles {
                    q_tokens,
                    span,
                    k_block,
                    keep_ds_bytes,
                })
            }) {
                let what = format!("case {ci} {dm:?} mask {} tiles {tiles:?}", mask.is_some());
                let (o, l) = fwd_heads(dm, &r.q, &r.k, &r.v, mask, tiles);
                assert_close(&o, &r.o, 1e-12, &format!("O {what}"));
                assert_close(&l, &r.lse, 1e-12, &format!("lse {what}"));
                let (dq, dk, dv) =
                    bwd_heads(dm, &r.q, &r.k, &r.v, mask, &r.o, &r.lse, &r.dout, tiles);
                assert_close(&dq, &r.dq, 1e-11, &format!("dQ {what}"));
                assert_close(&dk, &r.dk, 1e-11, &format!("dK {what}"));
                assert_close(&dv, &r.dv, 1e-11, &format!("dV {what}"));
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
        let (o, l) = fwd_heads(
            &dm,
            &q,
            &k,
            &v,
            Some(&mask),
            Tiles {
                q_tokens: 2,
                span: 3,
                k_block: 2,
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
                q_tokens: 2,
                span: 3,
                k_block: 4,
                keep_ds_bytes,
            };
            let (dq, _, _) = bwd_heads(&dm, &q, &k, &v, Some(&mask), &o, &l, &dout, tiles);
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
                q_tokens: 3,
                span: 2,
                k_block: 3,
                keep_ds_bytes: 0,
            },
            Tiles::for_group(2),
        ] {
            let (o, l) = fwd_heads(&dm, &q, &k, &v, None, tiles);
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
            let (dq, dk, _) = bwd_heads(&dm, &q, &k, &v, None, &o, &l, &dout, tiles);
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
            crate::testing::with_threads(threads, || {
                let tiles = Tiles {
                    q_tokens: 16,
                    span: 32,
                    k_block: 24,
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
