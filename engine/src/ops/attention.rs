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
//! The op runs the tiled kernels of [`super::attention_tiled`]; [`reference_forward`] and
//! [`reference_backward`] here compute whole score matrices per head and define the result.

use super::attention_tiled::{self, max_nan, Tiles};
use super::matmul::gemm;
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

/// CPU forward (tiled). Returns `O [b, hq, t, d]` and `lse [b, hq, t]`.
pub fn attention_forward<T: Float>(
    dims: &AttnDims,
    q: &[T],
    k: &[T],
    v: &[T],
    key_mask: Option<&[u8]>,
) -> (Vec<T>, Vec<T>) {
    if dims.head_dim == 0 {
        return reference_forward(dims, q, k, v, key_mask);
    }
    attention_tiled::forward(dims, q, k, v, key_mask, Tiles::default())
}

/// CPU backward (tiled). Returns `(dQ, dK, dV)`; deterministic for any thread count.
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
    if dims.head_dim == 0 {
        return reference_backward(dims, q, k, v, key_mask, out, lse, dout);
    }
    attention_tiled::backward(dims, q, k, v, key_mask, out, lse, dout, Tiles::default())
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
    let (qv, kv, vv) = (q.value(), k.value(), v.value());
    let dt = same_dtype("attention", &[&qv, &kv, &vv])?;
    let (qd, kd) = (qv.dims(), kv.dims());
    if qd.len() != 4 || kd.len() != 4 || kv.dims() != vv.dims() {
        return Err(Error::shape(
            "attention",
            format!("q {} k {} v {}", qv.shape(), kv.shape(), vv.shape()),
        ));
    }
    let dims = AttnDims {
        batch: qd[0],
        q_heads: qd[1],
        kv_heads: kd[1],
        q_len: qd[2],
        kv_len: kd[2],
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
        let (o, lse) = attention_forward(
            &dims,
            qv.as_slice::<T>()?,
            kv.as_slice::<T>()?,
            vv.as_slice::<T>()?,
            mask.as_deref(),
        );
        let out = Tensor::from_storage(T::wrap(o), qv.shape().clone());
        let saved_out = out.clone();
        Ok(record("attention", out, &[q, k, v], move |g, _, _| {
            let (dq, dk, dv) = attention_backward(
                &dims,
                qv.as_slice::<T>()?,
                kv.as_slice::<T>()?,
                vv.as_slice::<T>()?,
                mask.as_deref(),
                saved_out.as_slice::<T>()?,
                &lse,
                g.as_slice::<T>()?,
            );
            Ok(vec![
                Some(Tensor::from_storage(T::wrap(dq), qv.shape().clone())),
                Some(Tensor::from_storage(T::wrap(dk), kv.shape().clone())),
                Some(Tensor::from_storage(T::wrap(dv), vv.shape().clone())),
            ])
        }))
    })
}
