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

/// Rotates `x [b, heads, t, d]` in place of a copy; `sign` = −1 rotates backwards.
fn rotate<T: Float>(x: &[T], dims: [usize; 4], tab: &RopeTable<T>, sign: T) -> Vec<T> {
    let [_, heads, t, d] = dims;
    let h = tab.half;
    let mut y = vec![T::ZERO; x.len()];
    y.par_chunks_mut(t * d)
        .zip(x.par_chunks(t * d))
        .enumerate()
        .for_each(|(bh, (yb, xb))| {
            let b = bh / heads;
            for s in 0..t {
                let row = b * t + s;
                let (c, sn) = (
                    &tab.cos[row * h..(row + 1) * h],
                    &tab.sin[row * h..(row + 1) * h],
                );
                let (xr, yr) = (&xb[s * d..(s + 1) * d], &mut yb[s * d..(s + 1) * d]);
                for i in 0..h {
                    let si = sign * sn[i];
                    yr[i] = xr[i] * c[i] - xr[i + h] * si;
                    yr[i + h] = xr[i + h] * c[i] + xr[i] * si;
                }
                // Dimensions past 2·half (odd d) pass through unrotated.
                yr[2 * h..].copy_from_slice(&xr[2 * h..]);
            }
        });
    y
}

/// Applies RoPE to `x [b, heads, t, d]` with `positions [b, t]` (u32).
pub fn rope(x: &Var, positions: &Tensor, base: f64) -> Result<Var> {
    let xv = x.value();
    let xd = xv.dims();
    if xd.len() != 4 {
        return Err(Error::shape(
            "rope",
            format!("expected [batch, heads, seq, head_dim], got {}", xv.shape()),
        ));
    }
    let dims = [xd[0], xd[1], xd[2], xd[3]];
    if positions.dims() != [dims[0], dims[2]] {
        return Err(Error::shape(
            "rope",
            format!("positions {} for input {}", positions.shape(), xv.shape()),
        ));
    }
    let pos = positions.as_slice::<u32>()?.to_vec();
    with_float!(xv.dtype(), "rope", |T| {
        let tab = table::<T>(&pos, dims[3], base);
        let y = rotate(xv.as_slice::<T>()?, dims, &tab, T::ONE);
        let shape = xv.shape().clone();
        let out = Tensor::from_storage(T::wrap(y), shape.clone());
        Ok(record("rope", out, &[x], move |g, _, _| {
            let dx = rotate(g.as_slice::<T>()?, dims, &tab, -T::ONE);
            Ok(vec![Some(Tensor::from_storage(T::wrap(dx), shape.clone()))])
        }))
    })
}
