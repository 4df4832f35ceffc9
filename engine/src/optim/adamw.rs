//! AdamW with PyTorch's semantics (`torch.optim.AdamW`, `amsgrad=False`, `maximize=False`).
//!
//! For step t = 1, 2, ... and each parameter p with gradient g:
//!   p ← p·(1 − lr·λ)                         (decoupled weight decay)
//!   m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²
//!   p ← p − (lr/(1−β1ᵗ))·m / (√v/√(1−β2ᵗ) + ε)   (ε after bias-correcting √v)
//! State is f32 for f32 parameters (f64 for f64 ones). Parameters without a gradient this step
//! are left untouched, as torch does.

use crate::element::Float;
use crate::ops::with_float;
use crate::{Element, Error, GradStore, Result, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// HF Trainer's defaults (weight decay 0, not torch's 0.01).
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Moments of one parameter.
#[derive(Clone, Debug)]
pub struct AdamWState {
    pub step: u64,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
}

pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Var>,
    state: Vec<Option<AdamWState>>,
}

impl AdamW {
    pub fn new(params: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        if let Some(p) = params.iter().find(|p| !p.requires_grad() || !p.is_leaf()) {
            return Err(Error::invalid(
                "AdamW",
                format!("{p:?} is not a trainable leaf"),
            ));
        }
        let n = params.len();
        Ok(AdamW {
            config,
            params,
            state: vec![None; n],
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    pub fn params(&self) -> &[Var] {
        &self.params
    }

    /// Per-parameter state, in parameter order (`None` before a parameter's first step).
    pub fn state(&self) -> &[Option<AdamWState>] {
        &self.state
    }

    /// Replaces the state (resume). Shapes must match the parameters.
    pub fn set_state(&mut self, state: Vec<Option<AdamWState>>) -> Result<()> {
        if state.len() != self.params.len() {
            return Err(Error::invalid(
                "AdamW",
                format!(
                    "state for {} parameters, optimizer has {}",
                    state.len(),
                    self.params.len()
                ),
            ));
        }
        for (p, s) in self.params.iter().zip(&state) {
            if let Some(s) = s {
                let v = p.value();
                if s.exp_avg.shape() != v.shape() || s.exp_avg_sq.shape() != v.shape() {
                    return Err(Error::shapes(
                        "AdamW::set_state",
                        s.exp_avg.shape(),
                        v.shape(),
                    ));
                }
            }
        }
        self.state = state;
        Ok(())
    }

    /// One update with learning rate `lr`, using the gradients in `grads`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let c = self.config;
        for (p, st) in self.params.iter().zip(self.state.iter_mut()) {
            let Some(g) = grads.get(p) else { continue };
            let pv = p.value();
            if g.shape() != pv.shape() || g.dtype() != pv.dtype() {
                return Err(Error::shapes("AdamW::step", g.shape(), pv.shape()));
            }
            let s = st.get_or_insert_with(|| AdamWState {
                step: 0,
                exp_avg: Tensor::zeros(pv.shape().clone(), pv.dtype()),
                exp_avg_sq: Tensor::zeros(pv.shape().clone(), pv.dtype()),
            });
            s.step += 1;
            let (np, nm, nv) = with_float!(pv.dtype(), "AdamW::step", |T| {
                let mut np = pv.as_slice::<T>()?.to_vec();
                let mut nm = s.exp_avg.as_slice::<T>()?.to_vec();
                let mut nv = s.exp_avg_sq.as_slice::<T>()?.to_vec();
                adamw_update(
                    &mut np,
                    &mut nm,
                    &mut nv,
                    g.as_slice::<T>()?,
                    lr,
                    &c,
                    s.step,
                );
                let sh = pv.shape().clone();
                (
                    Tensor::from_storage(T::wrap(np), sh.clone()),
                    Tensor::from_storage(T::wrap(nm), sh.clone()),
                    Tensor::from_storage(T::wrap(nv), sh),
                )
            });
            p.set_value(np)?;
            s.exp_avg = nm;
            s.exp_avg_sq = nv;
        }
        Ok(())
    }
}

/// The element-wise AdamW update (CPU reference of the multi-tensor kernel).
pub fn adamw_update<T: Float>(
    p: &mut [T],
    m: &mut [T],
    v: &mut [T],
    g: &[T],
    lr: f64,
    c: &AdamWConfig,
    step: u64,
) {
    let bc1 = 1.0 - c.beta1.powi(step as i32);
    let bc2 = 1.0 - c.beta2.powi(step as i32);
    let step_size = T::from_f64(lr / bc1);
    let bc2_sqrt = T::from_f64(bc2.sqrt());
    let decay = T::from_f64(1.0 - lr * c.weight_decay);
    let (b1, b2) = (T::from_f64(c.beta1), T::from_f64(c.beta2));
    let (ob1, ob2) = (T::from_f64(1.0 - c.beta1), T::from_f64(1.0 - c.beta2));
    let eps = T::from_f64(c.eps);
    p.par_iter_mut()
        .zip(m.par_iter_mut().zip(v.par_iter_mut()))
        .zip(g.par_iter())
        .for_each(|((p, (m, v)), &g)| {
            *p *= decay;
            *m = b1 * *m + ob1 * g;
            *v = b2 * *v + ob2 * g * g;
            let denom = v.sqrt() / bc2_sqrt + eps;
            *p -= step_size * (*m / denom);
        });
}
