//! Multi-tensor AdamW and the global gradient norm (kernels-cu `adamw.cu`) against
//! `engine::optim::adamw_update` and `clip_grad_norm` semantics, as
//! `tests/tests/adamw_kernels.rs`:
//! - the norm within 10⁻⁵·‖g‖ (f32 partial sums of ≤ 8k squares per thread, a fixed tree, f64
//!   across blocks: relative error ≤ (8k + 8)·u + u, below 10⁻⁶), the clipping coefficient
//!   within 10⁻⁵ relative;
//! - the update bit-identical to the f32 reference (same f32 scalars, same operation sequence,
//!   no FMA contraction), on gradients scaled by the coefficient the device computed.
//!
//! Every parameter is checked.

use engine::optim::{adamw_update, AdamWConfig};
use kernels_cu::ops::adamw::{self, AdamWHyper, AdamWScalars};
use kernels_cu::{Buffer, Device};
use rayon::prelude::*;

use crate::check::{assert_bits_eq, uniform_f32};

/// Parameters, moments and gradients of `n` f32 parameters on the host and the device.
pub struct AdamWCase {
    pub hyper: AdamWHyper,
    /// 1-based step the scalars are for.
    pub step: u64,
    pub max_norm: f32,
    p: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
    pub p_dev: Buffer,
    pub m_dev: Buffer,
    pub v_dev: Buffer,
    pub g_dev: Buffer,
}

impl AdamWCase {
    /// Fresh parameters, moments from earlier steps (v ≥ 0) and gradients.
    pub fn new(
        dev: &Device,
        n: usize,
        hyper: AdamWHyper,
        step: u64,
        max_norm: f32,
        seed: u64,
    ) -> Self {
        let p = uniform_f32(n, seed, -0.2, 0.2);
        let m = uniform_f32(n, seed ^ 1, -0.02, 0.02);
        let v: Vec<f32> = uniform_f32(n, seed ^ 2, -2e-4, 2e-4)
            .into_par_iter()
            .map(|x| x * x)
            .collect();
        let g = uniform_f32(n, seed ^ 3, -0.04, 0.04);
        let up = |x: &[f32]| dev.htod(x).expect("upload");
        AdamWCase {
            hyper,
            step,
            max_norm,
            p_dev: up(&p),
            m_dev: up(&m),
            v_dev: up(&v),
            g_dev: up(&g),
            p,
            m,
            v,
            g,
        }
    }

    pub fn scalars(&self) -> AdamWScalars {
        AdamWScalars::new(&self.hyper, self.step)
    }

    /// The norm and clipping coefficient, then one step on copies of the state (the case's own
    /// buffers stay as they were). Returns the `[norm, coefficient]` buffer for the timed step.
    pub fn check(&self, dev: &Device) -> Buffer {
        let n = self.g.len();
        let norm: f64 = self
            .g
            .par_iter()
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt();
        let out = adamw::grad_norm(dev, &self.g_dev, self.max_norm).expect("grad_norm");
        let got = dev.dtoh::<f32>(&out).expect("download");
        assert!(
            (got[0] as f64 - norm).abs() <= 1e-5 * norm + 1e-30,
            "grad_norm n{n}: got {} want {norm}",
            got[0]
        );
        let max = self.max_norm as f64;
        let coef = if max > 0.0 {
            (max / (norm + 1e-6)).min(1.0)
        } else {
            1.0
        };
        assert!(
            (got[1] as f64 - coef).abs() <= 1e-5 * coef,
            "grad_norm n{n}: clip coefficient {} want {coef}",
            got[1]
        );

        let (mut p, mut m, mut v) = (self.p.clone(), self.m.clone(), self.v.clone());
        let c = got[1];
        let g: Vec<f32> = if coef < 1.0 {
            self.g.par_iter().map(|&x| x * c).collect()
        } else {
            self.g.clone()
        };
        let h = &self.hyper;
        let cfg = AdamWConfig {
            beta1: h.beta1,
            beta2: h.beta2,
            eps: h.eps,
            weight_decay: h.weight_decay,
        };
        adamw_update(&mut p, &mut m, &mut v, &g, h.lr, &cfg, self.step);
        let (mut pd, mut md, mut vd) = (
            dev.htod(&self.p).expect("upload"),
            dev.htod(&self.m).expect("upload"),
            dev.htod(&self.v).expect("upload"),
        );
        adamw::step(
            dev,
            &mut pd,
            &mut md,
            &mut vd,
            &self.g_dev,
            &out,
            1,
            &self.scalars(),
        )
        .expect("adamw step");
        let bits = |x: &[f32]| x.par_iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let down = |b: &Buffer| bits(&dev.dtoh::<f32>(b).expect("download"));
        assert_bits_eq(&format!("adamw params n{n}"), &down(&pd), &bits(&p));
        assert_bits_eq(&format!("adamw exp_avg n{n}"), &down(&md), &bits(&m));
        assert_bits_eq(&format!("adamw exp_avg_sq n{n}"), &down(&vd), &bits(&v));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hyper() -> AdamWHyper {
        AdamWHyper {
            lr: 2e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }

    #[test]
    fn check_passes_on_the_emulator() {
        let dev = Device::emulator().expect("emulator");
        // Clipped (‖g‖ ≈ 0.023·√n > 0.1) and not clipped; many norm blocks.
        AdamWCase::new(&dev, 256 * 8 * 5 + 13, hyper(), 10, 0.1, 1).check(&dev);
        AdamWCase::new(&dev, 999, hyper(), 1, 0.0, 2).check(&dev);
    }

    #[test]
    #[should_panic(expected = "adamw params")]
    fn check_fails_on_a_wrong_result() {
        let dev = Device::emulator().expect("emulator");
        let mut case = AdamWCase::new(&dev, 300, hyper(), 3, 0.0, 3);
        // The host gradient negated at one element: same norm, a different update there.
        case.g[100] = -case.g[100];
        case.check(&dev);
    }
}
