//! Rotary position embedding in the NeoX "rotate-half" layout (as HF Falcon/Llama).
//!
//! For head vectors of size d (h = d/2) at position p, with θ_i = p · base^(-2i/d):
//!   y[i]   = x[i]·cos θ_i − x[i+h]·sin θ_i
//!   y[i+h] = x[i+h]·cos θ_i + x[i]·sin θ_i          (i < h)
//! i.e. `y = x·cos + rotate_half(x)·sin` with `rotate_half(x) = cat(−x[h..], x[..h])`.
//! The map is a rotation, so backward applies the same formula with −θ.

use super::with_float;
use crate::autograd::record;
use crate::element::Float;
use crate::{Element, Error, Result, Tensor, Var};
use rayon::prelude::*;
use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::rc::Rc;

/// cos/sin of θ for every (batch, position) row: `[rows, d/2]` each.
pub struct RopeTable<T> {
    pub cos: Vec<T>,
    pub sin: Vec<T>,
    pub half: usize,
}

impl<T: Float> RopeTable<T> {
    /// Angles computed as HF does, in the compute type: `inv_freq = 1 / base^(2i/d)`, then
    /// `θ = p · inv_freq` (one rounding in f32 for the f32 path).
    pub fn new(positions: &[u32], d: usize, base: f64) -> Self {
        let half = d / 2;
        let inv: Vec<T> = (0..half)
            .map(|i| {
                T::ONE / T::from_f64(base).powf(T::from_f64((2 * i) as f64) / T::from_f64(d as f64))
            })
            .collect();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &inv {
                let th = T::from_f64(p as f64) * f;
                cos.push(th.cos());
                sin.push(th.sin());
            }
        }
        RopeTable { cos, sin, half }
    }
}

/// A table built for (positions, head dim, base bits, float type).
type KeyedTable = (Vec<u32>, usize, u64, TypeId, Rc<dyn Any>);

thread_local! {
    /// The last table built on this thread, keyed by (positions, head dim, base bits, float
    /// type): a decoder layer rotates q and k with the same table, and every layer (and its
    /// recompute) of a step uses the same positions.
    static LAST_TABLE: RefCell<Option<KeyedTable>> = const { RefCell::new(None) };
}

/// [`RopeTable::new`], reusing the previous call's table when the arguments are the same.
fn table<T: Float>(positions: &[u32], d: usize, base: f64) -> Rc<RopeTable<T>> {
    let key = (d, base.to_bits(), TypeId::of::<T>());
    LAST_TABLE.with(|cell| {
        if let Some((p, kd, kb, kt, tab)) = &*cell.borrow() {
            if (*kd, *kb, *kt) == key && p == positions {
                if let Ok(tab) = tab.clone().downcast::<RopeTable<T>>() {
                    return tab;
                }
            }
        }
        let tab = Rc::new(RopeTable::<T>::new(positions, d, base));
        *cell.borrow_mut() = Some((positions.to_vec(), key.0, key.1, key.2, tab.clone()));
        tab
    })
}

/// Rotates one head vector `x` into `y` with the angles' `cos` and `sin`; `sign` = −1 rotates
/// backwards. Dimensions past `2·half` (odd d) pass through unrotated.
#[inline]
fn rotate_head<T: Float>(x: &[T], y: &mut [T], cos: &[T], sin: &[T], sign: T) {
    let h = cos.len();
    let (x1, x2) = x[..2 * h].split_at(h);
    let (y1, y2) = y[..2 * h].split_at_mut(h);
    for i in 0..h {
        let si = sign * sin[i];
        y1[i] = x1[i] * cos[i] - x2[i] * si;
        y2[i] = x2[i] * cos[i] + x1[i] * si;
    }
    y[2 * h..].copy_from_slice(&x[2 * h..]);
}

/// Where the heads sit in the tensor RoPE rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `[b, heads, t, d]`.
    HeadMajor,
    /// `[b, t, heads, d]`.
    TokenMajor,
}

/// Rotates `x` (4-d, `dims` in its own order) into a new buffer; `sign` = −1 rotates backwards.
fn rotate<T: Float>(
    x: &[T],
    dims: [usize; 4],
    layout: Layout,
    tab: &RopeTable<T>,
    sign: T,
) -> Vec<T> {
    let d = dims[3];
    let h = tab.half;
    let angles = |row: usize| {
        (
            &tab.cos[row * h..(row + 1) * h],
            &tab.sin[row * h..(row + 1) * h],
        )
    };
    let mut y = vec![T::ZERO; x.len()];
    match layout {
        Layout::HeadMajor => {
            let [_, heads, t, _] = dims;
            y.par_chunks_mut(t * d)
                .zip(x.par_chunks(t * d))
                .enumerate()
                .for_each(|(bh, (yb, xb))| {
                    let b = bh / heads;
                    for (s, (yr, xr)) in yb.chunks_exact_mut(d).zip(xb.chunks_exact(d)).enumerate()
                    {
                        let (c, sn) = angles(b * t + s);
                        rotate_head(xr, yr, c, sn, sign);
                    }
                });
        }
        Layout::TokenMajor => {
            // Each token's heads share its angles; tokens go to threads in runs of 64.
            let heads = dims[2];
            const TOKENS: usize = 64;
            y.par_chunks_mut(TOKENS * heads * d)
                .zip(x.par_chunks(TOKENS * heads * d))
                .enumerate()
                .for_each(|(blk, (yb, xb))| {
                    let rows = yb
                        .chunks_exact_mut(heads * d)
                        .zip(xb.chunks_exact(heads * d));
                    for (s, (yt, xt)) in rows.enumerate() {
                        let (c, sn) = angles(blk * TOKENS + s);
                        for (yr, xr) in yt.chunks_exact_mut(d).zip(xt.chunks_exact(d)) {
                            rotate_head(xr, yr, c, sn, sign);
                        }
                    }
                });
        }
    }
    y
}

/// Applies RoPE to `x [b, heads, t, d]` with `positions [b, t]` (u32).
pub fn rope(x: &Var, positions: &Tensor, base: f64) -> Result<Var> {
    rope_op(x, positions, base, Layout::HeadMajor)
}

/// Applies RoPE to token-major `x [b, t, heads, d]` with `positions [b, t]` (u32): the layout
/// the fused QKV projection produces and [`super::attention_tokens`] takes.
pub fn rope_tokens(x: &Var, positions: &Tensor, base: f64) -> Result<Var> {
    rope_op(x, positions, base, Layout::TokenMajor)
}

fn rope_op(x: &Var, positions: &Tensor, base: f64, layout: Layout) -> Result<Var> {
    let xv = x.value();
    let xd = xv.dims();
    if xd.len() != 4 {
        let expected = match layout {
            Layout::HeadMajor => "[batch, heads, seq, head_dim]",
            Layout::TokenMajor => "[batch, seq, heads, head_dim]",
        };
        return Err(Error::shape(
            "rope",
            format!("expected {expected}, got {}", xv.shape()),
        ));
    }
    let dims = [xd[0], xd[1], xd[2], xd[3]];
    let seq = match layout {
        Layout::HeadMajor => dims[2],
        Layout::TokenMajor => dims[1],
    };
    if positions.dims() != [dims[0], seq] {
        return Err(Error::shape(
            "rope",
            format!("positions {} for input {}", positions.shape(), xv.shape()),
        ));
    }
    let pos = positions.as_slice::<u32>()?.to_vec();
    with_float!(xv.dtype(), "rope", |T| {
        let tab = table::<T>(&pos, dims[3], base);
        let y = rotate(xv.as_slice::<T>()?, dims, layout, &tab, T::ONE);
        let shape = xv.shape().clone();
        let out = Tensor::from_storage(T::wrap(y), shape.clone());
        Ok(record("rope", out, &[x], move |g, _, _| {
            let dx = rotate(g.as_slice::<T>()?, dims, layout, &tab, -T::ONE);
            Ok(vec![Some(Tensor::from_storage(T::wrap(dx), shape.clone()))])
        }))
    })
}
