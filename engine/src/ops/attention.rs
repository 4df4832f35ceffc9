//! Causal scaled-dot-product attention with grouped KV heads (MHA, GQA, MQA) and a key
//! padding mask. CPU reference of the fused flash-attention kernels.
//!
//! Shapes: `q [b, hq, t, d]`, `k, v [b, hkv, tk, d]` with `hq % hkv == 0`; query head `h`
//! reads KV head `h / (hq/hkv)` (HF Falcon's grouping). Query row i sits at absolute position
//! `tk - t + i` (so `tk > t` continues a KV cache) and, when causal, sees keys `j <= tk - t + i`.
//! `key_mask [b, tk]` (u8): 0 marks padding keys no query may see.
//!
//! Forward per head: `S = scale·Q·Kᵀ` (masked entries −∞), `lse = logsumexp_rows(S)`,
//! `P = exp(S − lse)`, `O = P·V`. Only `O` and `lse` are saved.
//! Backward recomputes P from lse: `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `D = rowsum(dO∘O)`,
//! `dS = P∘(dP − D)`, `dQ = scale·dS·K`, `dK = scale·dSᵀ·Q`. A row with no visible key
//! outputs zeros and passes no gradient; a row with a NaN score outputs NaN.
//!
//! [`attention_tokens`] takes the same tensors token-major (`q [b, t, hq, d]`,
//! `k, v [b, tk, hkv, d]`), the order the model's QKV projection produces.
//!
//! The token-major op runs the kernels of [`super::attention_kept`] when the probability matrix
//! fits their budget (backward then reads the kept `P` instead of recomputing it), and the tiled
//! kernels of [`super::attention_tiled`] otherwise, as the head-major op always does;
//! [`reference_forward`] and [`reference_backward`] here compute whole score matrices per head
//! and define the result.

use super::attention_kept::{self, KeptTiles};
use super::attention_tiled::{self, max_nan, Tiles};
use super::matmul::{gemm, poison};
use super::{same_dtype, with_float};
use crate::autograd::record;
use crate::element::Float;
use crate::{Element, Error, Result, Tensor, Var};
use rayon::prelude::*;

/// Problem geometry shared by forward and backward.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub batch: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub scale: f64,
}

impl AttnDims {
    fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }
}

/// Fills `s [t, tk]` with masked, scaled scores for one head and converts it to probabilities,
/// given the row logsumexp when known (backward) or computing it (forward).
fn scores<T: Float>(dims: &AttnDims, q: &[T], k: &[T], mask: Option<&[u8]>, s: &mut [T]) {
    let (t, tk, d) = (dims.q_len, dims.kv_len, dims.head_dim);
    gemm(false, true, t, tk, d, q, k, s, false, false);
    let scale = T::from_f64(dims.scale);
    let off = tk - t;
    for i in 0..t {
        let row = &mut s[i * tk..(i + 1) * tk];
        for (j, x) in row.iter_mut().enumerate() {
            let hidden = (dims.causal && j > off + i) || mask.is_some_and(|m| m[j] == 0);
            *x = if hidden { T::NEG_INFINITY } else { *x * scale };
        }
    }
}

/// Row-wise softmax in place; returns the row logsumexps (−∞ for rows with no visible key).
fn softmax_rows<T: Float>(s: &mut [T], tk: usize) -> Vec<T> {
    s.chunks_exact_mut(tk)
        .map(|row| {
            let m = row.iter().fold(T::NEG_INFINITY, |a, &b| max_nan(a, b));
            if m == T::NEG_INFINITY {
                row.iter_mut().for_each(|x| *x = T::ZERO);
                return T::NEG_INFINITY;
            }
            let mut l = T::ZERO;
            for x in row.iter_mut() {
                *x = (*x - m).exp();
                l += *x;
            }
            for x in row.iter_mut() {
                *x = *x / l;
            }
            m + l.ln()
        })
        .collect()
}

/// `x [b, m, n, d]` as `[b, n, m, d]`: the middle two axes swapped.
fn swap_middle_axes<T: Copy>(x: &[T], b: usize, m: usize, n: usize, d: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(x.len());
    for bi in 0..b {
        for j in 0..n {
            for i in 0..m {
                let at = ((bi * m + i) * n + j) * d;
                out.extend_from_slice(&x[at..at + d]);
            }
        }
    }
    out
}

/// `x [b, h, t, d]` (head-major) as `[b, t, h, d]` (token-major); with `d = 1` it turns
/// `lse [b, h, t]` into `[b, t, h]`.
pub fn heads_to_tokens<T: Copy>(x: &[T], b: usize, h: usize, t: usize, d: usize) -> Vec<T> {
    swap_middle_axes(x, b, h, t, d)
}

/// `x [b, t, h, d]` (token-major) as `[b, h, t, d]` (head-major): the inverse of
/// [`heads_to_tokens`].
pub fn tokens_to_heads<T: Copy>(x: &[T], b: usize, t: usize, h: usize, d: usize) -> Vec<T> {
    swap_middle_axes(x, b, t, h, d)
}

/// CPU forward (tiled) on the head-major layout: `q [b, hq, t, d]`, `k, v [b, hkv, tk, d]`.
/// Returns `O [b, hq, t, d]` and `lse [b, hq, t]`. The kernels run token-major
/// ([`attention_tokens_forward`]); this converts on the way in and out.
pub fn attention_forward<T: Float>(
    dims: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    key_mask: Option<&[u8]>,
) -> (Vec<T>, Vec<T>) {
    attention_forward_tiles(dims, q, k, v, key_mask, Tiles::for_group(dims.group()))
}

/// [`attention_forward`] with the given tiles.
pub(crate) fn attention_forward_tiles<T: Float>(
    dims: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    key_mask: Option<&[u8]>,
    tiles: Tiles,
) -> (Vec<T>, Vec<T>) {
    let (b, hq, hkv, t, tk, d) = shape6(dims);
    let (o, lse) = attention_tokens_forward_tiles(
        dims,
        &heads_to_tokens(q, b, hq, t, d),
        &heads_to_tokens(k, b, hkv, tk, d),
        &heads_to_tokens(v, b, hkv, tk, d),
        key_mask,
        tiles,
    );
    (
        tokens_to_heads(&o, b, t, hq, d),
        tokens_to_heads(&lse, b, t, hq, 1),
    )
}

/// CPU backward (tiled) on the head-major layout of [`attention_forward`]. Returns
/// `(dQ, dK, dV)`; deterministic for any thread count.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Float>(
    dims: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    key_mask: Option<&[u8]>,
    out: &[T],
    lse: &[T],
    dout: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let tiles = Tiles::for_group(dims.group());
    attention_backward_tiles(dims, q, k, v, key_mask, out, lse, dout, tiles)
}

/// [`attention_backward`] with the given tiles.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward_tiles<T: Float>(
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
    let (b, hq, hkv, t, tk, d) = shape6(dims);
    let (dq, dk, dv) = attention_tiled::backward(
        dims,
        &heads_to_tokens(q, b, hq, t, d),
        &heads_to_tokens(k, b, hkv, tk, d),
        &heads_to_tokens(v, b, hkv, tk, d),
        key_mask,
        &heads_to_tokens(out, b, hq, t, d),
        &heads_to_tokens(lse, b, hq, t, 1),
        &heads_to_tokens(dout, b, hq, t, d),
        tiles,
    );
    (
        tokens_to_heads(&dq, b, t, hq, d),
        tokens_to_heads(&dk, b, tk, hkv, d),
        tokens_to_heads(&dv, b, tk, hkv, d),
    )
}

fn shape6(dims: &AttnDims) -> (usize, usize, usize, usize, usize, usize) {
    (
        dims.batch,
        dims.q_heads,
        dims.kv_heads,
        dims.q_len,
        dims.kv_len,
        dims.head_dim,
    )
}

/// CPU forward (tiled) on the token-major layout: `q [b, t, hq, d]`, `k, v [b, tk, hkv, d]`.
/// Returns `O [b, t, hq, d]` and `lse [b, t, hq]`.
pub fn attention_tokens_forward<T: Float>(
    dims: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    key_mask: Option<&[u8]>,
) -> (Vec<T>, Vec<T>) {
    attention_tokens_forward_tiles(dims, q, k, v, key_mask, Tiles::for_group(dims.group()))
}

/// [`attention_tokens_forward`] with the given tiles.
fn attention_tokens_forward_tiles<T: Float>(
    dims: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    key_mask: Option<&[u8]>,
    tiles: Tiles,
) -> (Vec<T>, Vec<T>) {
    if dims.head_dim == 0 {
        // No features: every visible key scores 0. The reference handles this degenerate case.
        let (b, hq, hkv, t, tk, d) = shape6(dims);
        let (o, lse) = reference_forward(
            dims,
            &tokens_to_heads(q, b, t, hq, d),
            &tokens_to_heads(k, b, tk, hkv, d),
            &tokens_to_heads(v, b, tk, hkv, d),
            key_mask,
        );
        return (o, heads_to_tokens(&lse, b, hq, t, 1));
    }
    attention_tiled::forward(dims, q, k, v, key_mask, tiles)
}

/// CPU backward (tiled) on the token-major layout of [`attention_tokens_forward`]. Returns
/// `(dQ, dK, dV)` in the layouts of `q`, `k`, `v`; deterministic for any thread count.
#[allow(clippy::too_many_arguments)]
pub fn attention_tokens_backward<T: Float>(
    dims: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    key_mask: Option<&[u8]>,
    out: &[T],
    lse: &[T],
    dout: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let tiles = Tiles::for_group(dims.group());
    attention_tiled::backward(dims, q, k, v, key_mask, out, lse, dout, tiles)
}

/// Reference forward: the whole `[t, tk]` score matrix per head. Returns `O` and `lse`.
pub fn reference_forward<T: Float>(
    dims: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    key_mask: Option<&[u8]>,
) -> (Vec<T>, Vec<T>) {
    let (t, tk, d) = (dims.q_len, dims.kv_len, dims.head_dim);
    let mut out = vec![T::ZERO; q.len()];
    let mut lse = vec![T::ZERO; dims.batch * dims.q_heads * t];
    out.par_chunks_mut(t * d)
        .zip(lse.par_chunks_mut(t))
        .enumerate()
        .for_each(|(bh, (o, l))| {
            let (b, h) = (bh / dims.q_heads, bh % dims.q_heads);
            let kvh = b * dims.kv_heads + h / dims.group();
            let (kh, vh) = (
                &k[kvh * tk * d..(kvh + 1) * tk * d],
                &v[kvh * tk * d..(kvh + 1) * tk * d],
            );
            let mask = key_mask.map(|m| &m[b * tk..(b + 1) * tk]);
            let mut s = vec![T::ZERO; t * tk];
            scores(dims, &q[bh * t * d..(bh + 1) * t * d], kh, mask, &mut s);
            l.copy_from_slice(&softmax_rows(&mut s, tk));
            gemm(false, false, t, d, tk, &s, vh, o, false, false);
        });
    (out, lse)
}

/// Reference backward. Returns `(dQ, dK, dV)`. Each task owns one (batch, KV head) group and
/// sums its query heads in a fixed order, so the result does not depend on the thread count.
#[allow(clippy::too_many_arguments)]
pub fn reference_backward<T: Float>(
    dims: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    key_mask: Option<&[u8]>,
    out: &[T],
    lse: &[T],
    dout: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (t, tk, d, r) = (dims.q_len, dims.kv_len, dims.head_dim, dims.group());
    let scale = T::from_f64(dims.scale);
    let mut dq = vec![T::ZERO; q.len()];
    let mut dk = vec![T::ZERO; k.len()];
    let mut dv = vec![T::ZERO; v.len()];
    dq.par_chunks_mut(r * t * d)
        .zip(dk.par_chunks_mut(tk * d).zip(dv.par_chunks_mut(tk * d)))
        .enumerate()
        .for_each(|(g, (dqg, (dkg, dvg)))| {
            let b = g / dims.kv_heads;
            let (kh, vh) = (
                &k[g * tk * d..(g + 1) * tk * d],
                &v[g * tk * d..(g + 1) * tk * d],
            );
            let mask = key_mask.map(|m| &m[b * tk..(b + 1) * tk]);
            let mut p = vec![T::ZERO; t * tk];
            let mut dp = vec![T::ZERO; t * tk];
            for j in 0..r {
                let bh = g * r + j; // == b * hq + h with h = kvh * r + j
                let span = bh * t * d..(bh + 1) * t * d;
                let (qh, oh, doh) = (&q[span.clone()], &out[span.clone()], &dout[span]);
                scores(dims, qh, kh, mask, &mut p);
                for i in 0..t {
                    let l = lse[bh * t + i];
                    for x in &mut p[i * tk..(i + 1) * tk] {
                        *x = if l == T::NEG_INFINITY {
                            T::ZERO
                        } else {
                            (*x - l).exp()
                        };
                    }
                }
                gemm(true, false, tk, d, t, &p, doh, dvg, true, false);
                gemm(false, true, t, tk, d, doh, vh, &mut dp, false, false);
                for i in 0..t {
                    let mut di = T::ZERO;
                    for c in 0..d {
                        di += doh[i * d + c] * oh[i * d + c];
                    }
                    for c in 0..tk {
                        let idx = i * tk + c;
                        dp[idx] = p[idx] * (dp[idx] - di) * scale;
                    }
                }
                gemm(
                    false,
                    false,
                    t,
                    d,
                    tk,
                    &dp,
                    kh,
                    &mut dqg[j * t * d..(j + 1) * t * d],
                    false,
                    false,
                );
                gemm(true, false, tk, d, t, &dp, qh, dkg, true, false);
            }
        });
    (dq, dk, dv)
}

/// Where the heads sit in the tensors an attention op takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `q [b, hq, t, d]`, `k, v [b, hkv, tk, d]`.
    HeadMajor,
    /// `q [b, t, hq, d]`, `k, v [b, tk, hkv, d]`: the fused QKV projection's own order.
    TokenMajor,
}

/// Attention over `q [b, hq, t, d]`, `k, v [b, hkv, tk, d]` with an optional `key_mask [b, tk]`
/// (u8, 0 = padding). `scale` is usually `1/√d`.
pub fn attention(
    q: &Var,
    k: &Var,
    v: &Var,
    key_mask: Option<&Tensor>,
    causal: bool,
    scale: f64,
) -> Result<Var> {
    attention_op(q, k, v, key_mask, causal, scale, Layout::HeadMajor, false)
}

/// [`attention`] on the token-major layout: `q [b, t, hq, d]`, `k, v [b, tk, hkv, d]`, output
/// `[b, t, hq, d]`. The model's QKV projection produces this order, so no permute is needed on
/// either side.
pub fn attention_tokens(
    q: &Var,
    k: &Var,
    v: &Var,
    key_mask: Option<&Tensor>,
    causal: bool,
    scale: f64,
) -> Result<Var> {
    attention_op(q, k, v, key_mask, causal, scale, Layout::TokenMajor, false)
}

/// [`attention_tokens`] whose output value will never be read, only differentiated (a layer
/// re-run for its backward, [`crate::recomputing`], whose attention output feeds a frozen
/// projection): when the kept-probability kernels run, `O = P·V` is skipped and the value is
/// NaN, so a read would show; the gradients are those of [`attention_tokens`], bit for bit.
pub fn attention_tokens_unread(
    q: &Var,
    k: &Var,
    v: &Var,
    key_mask: Option<&Tensor>,
    causal: bool,
    scale: f64,
) -> Result<Var> {
    attention_op(q, k, v, key_mask, causal, scale, Layout::TokenMajor, true)
}

#[allow(clippy::too_many_arguments)]
fn attention_op(
    q: &Var,
    k: &Var,
    v: &Var,
    key_mask: Option<&Tensor>,
    causal: bool,
    scale: f64,
    layout: Layout,
    unread: bool,
) -> Result<Var> {
    let (qv, kv, vv) = (q.value(), k.value(), v.value());
    let dt = same_dtype("attention", &[&qv, &kv, &vv])?;
    let (qd, kd) = (qv.dims(), kv.dims());
    if qd.len() != 4 || kd.len() != 4 || kv.dims() != vv.dims() {
        return Err(Error::shape(
            "attention",
            format!("q {} k {} v {}", qv.shape(), kv.shape(), vv.shape()),
        ));
    }
    // (heads, tokens) axes of a 4-d attention tensor.
    let (h_ax, t_ax) = match layout {
        Layout::HeadMajor => (1, 2),
        Layout::TokenMajor => (2, 1),
    };
    let dims = AttnDims {
        batch: qd[0],
        q_heads: qd[h_ax],
        kv_heads: kd[h_ax],
        q_len: qd[t_ax],
        kv_len: kd[t_ax],
        head_dim: qd[3],
        causal,
        scale,
    };
    if kd[0] != qd[0]
        || kd[3] != qd[3]
        || dims.kv_heads == 0
        || !dims.q_heads.is_multiple_of(dims.kv_heads)
        || dims.kv_len < dims.q_len
    {
        return Err(Error::shape(
            "attention",
            format!("q {} is incompatible with k/v {}", qv.shape(), kv.shape()),
        ));
    }
    let mask: Option<Vec<u8>> = match key_mask {
        Some(m) => {
            if m.dims() != [dims.batch, dims.kv_len] {
                return Err(Error::shape(
                    "attention",
                    format!("key mask {} for keys {}", m.shape(), kv.shape()),
                ));
            }
            Some(m.as_slice::<u8>()?.to_vec())
        }
        None => None,
    };
    with_float!(dt, "attention", |T| {
        let (qs, ks, vs) = (
            qv.as_slice::<T>()?,
            kv.as_slice::<T>()?,
            vv.as_slice::<T>()?,
        );
        // The kept-probability kernels whenever P fits, recorded or not: the choice depends on
        // the shapes alone, so a layer's no-grad forward and its recorded re-run agree bit for
        // bit (activation checkpointing relies on it).
        if layout == Layout::TokenMajor && attention_kept::fits(&dims, std::mem::size_of::<T>()) {
            let tiles = KeptTiles::for_group(dims.group());
            let mask = mask.as_deref();
            let (o, kept) = attention_kept::forward(&dims, qs, ks, vs, mask, !unread, tiles);
            let out = match o {
                Some(o) => Tensor::from_storage(T::wrap(o), qv.shape().clone()),
                None => poison(qv.shape().clone(), dt)?,
            };
            return Ok(record("attention", out, &[q, k, v], move |g, _, _| {
                let (dq, dk, dv) = attention_kept::backward(
                    &dims,
                    qv.as_slice::<T>()?,
                    kv.as_slice::<T>()?,
                    vv.as_slice::<T>()?,
                    &kept,
                    g.as_slice::<T>()?,
                    tiles,
                );
                grads_of(&[&qv, &kv, &vv], [dq, dk, dv])
            }));
        }
        let (o, lse) = match layout {
            Layout::HeadMajor => attention_forward(&dims, qs, ks, vs, mask.as_deref()),
            Layout::TokenMajor => attention_tokens_forward(&dims, qs, ks, vs, mask.as_deref()),
        };
        let out = Tensor::from_storage(T::wrap(o), qv.shape().clone());
        let saved_out = out.clone();
        Ok(record("attention", out, &[q, k, v], move |g, _, _| {
            let backward = match layout {
                Layout::HeadMajor => attention_backward::<T>,
                Layout::TokenMajor => attention_tokens_backward::<T>,
            };
            let (dq, dk, dv) = backward(
                &dims,
                qv.as_slice::<T>()?,
                kv.as_slice::<T>()?,
                vv.as_slice::<T>()?,
                mask.as_deref(),
                saved_out.as_slice::<T>()?,
                &lse,
                g.as_slice::<T>()?,
            );
            grads_of(&[&qv, &kv, &vv], [dq, dk, dv])
        }))
    })
}

/// `(dQ, dK, dV)` as gradient tensors shaped like `q`, `k`, `v`.
fn grads_of<T: Float>(inputs: &[&Tensor; 3], grads: [Vec<T>; 3]) -> Result<Vec<Option<Tensor>>> {
    Ok(inputs
        .iter()
        .zip(grads)
        .map(|(x, g)| Some(Tensor::from_storage(T::wrap(g), x.shape().clone())))
        .collect())
}
