//! LayerNorm forward and backward (kernels-cu `layernorm.cu`, bf16) against
//! `engine::ops::layernorm::{layer_norm_forward, layer_norm_backward}` in f64 on the same
//! bf16 inputs, with the tolerances of `tests/tests/layernorm_kernels.rs` (u = 2⁻²⁴, `mag`
//! the f64 sum of the absolute values of the terms making the reference value):
//! - y, dx: 4·(d + 16)·u·mag (the kernel's f32 sums over d in another order, plus a few
//!   roundings), plus 2⁻⁸·|ref| for the bf16 output;
//! - mean, rstd: the same factor times their magnitudes;
//! - dγ, dβ (f32, summed over rows): 4·(d + rows + 16)·u·mag.
//!
//! The whole output is checked: at Falcon-7B's 1024 x 4544 the f64 reference takes well under
//! a second.

use engine::ops::layernorm::{layer_norm_backward, layer_norm_forward};
use engine::rng;
use half::bf16;
use kernels_cu::ops::layernorm::{self, LayerNormStats};
use kernels_cu::{Buffer, DType, Device};

use crate::check::{assert_close, download_f64, poisoned, BF16_ROUNDING, F32_UNIT_ROUNDOFF as U};

/// LayerNorm's epsilon as the model passes it.
pub const EPS: f32 = 1e-5;

/// `rows x d` bf16 inputs on the host (f64, exactly the bf16 values) and on the device.
pub struct LayerNormCase {
    pub rows: usize,
    pub d: usize,
    x: Vec<f64>,
    gamma: Vec<f64>,
    beta: Vec<f64>,
    dy: Vec<f64>,
    pub x_dev: Buffer,
    pub gamma_dev: Buffer,
    pub beta_dev: Buffer,
    pub dy_dev: Buffer,
}

fn bf(v: f64) -> f64 {
    bf16::from_f64(v).to_f64()
}

fn upload(dev: &Device, v: &[f64]) -> Buffer {
    dev.htod(&v.iter().map(|&x| bf16::from_f64(x)).collect::<Vec<_>>())
        .expect("upload")
}

impl LayerNormCase {
    /// Fresh normal inputs; each row gets its own offset so the mean is not ~0 (the
    /// two-pass variance matters).
    pub fn new(dev: &Device, rows: usize, d: usize, seed: u64) -> Self {
        let x: Vec<f64> = (0..rows * d)
            .map(|i| bf(rng::normal_f64(seed, i as u64) * 1.5 + ((i / d) % 11) as f64 * 0.37 - 2.0))
            .collect();
        let gamma: Vec<f64> = (0..d)
            .map(|i| bf(1.0 + 0.5 * rng::normal_f64(seed ^ 1, i as u64)))
            .collect();
        let beta: Vec<f64> = (0..d)
            .map(|i| bf(0.3 * rng::normal_f64(seed ^ 2, i as u64)))
            .collect();
        let dy: Vec<f64> = (0..rows * d)
            .map(|i| bf(rng::normal_f64(seed ^ 3, i as u64)))
            .collect();
        LayerNormCase {
            rows,
            d,
            x_dev: upload(dev, &x),
            gamma_dev: upload(dev, &gamma),
            beta_dev: upload(dev, &beta),
            dy_dev: upload(dev, &dy),
            x,
            gamma,
            beta,
            dy,
        }
    }

    /// Runs forward and backward once into poisoned outputs and checks everything they
    /// produce; returns the statistics for the timed backward.
    pub fn check(&self, dev: &Device) -> LayerNormStats {
        let (rows, d) = (self.rows, self.d);
        let what = |t: &str| format!("layernorm {t} bf16 {rows}x{d}");
        let mut y = poisoned(dev, DType::BF16, rows * d);
        let stats = layernorm::forward(
            dev,
            &mut y,
            &self.x_dev,
            &self.gamma_dev,
            &self.beta_dev,
            d,
            EPS,
        )
        .expect("layernorm forward");
        let eps64 = EPS as f64;
        let (y_ref, mean_ref, rstd_ref) =
            layer_norm_forward(&self.x, &self.gamma, &self.beta, d, eps64);
        let (x, gamma, beta) = (&self.x, &self.gamma, &self.beta);
        let k = 4.0 * (d as f64 + 16.0) * U;
        let mut tol_y = vec![0.0; rows * d];
        for r in 0..rows {
            for i in 0..d {
                let xh = (x[r * d + i] - mean_ref[r]) * rstd_ref[r];
                let mag = (xh.abs() + x[r * d + i].abs() * rstd_ref[r] + 1.0) * gamma[i].abs()
                    + beta[i].abs();
                tol_y[r * d + i] = k * mag + BF16_ROUNDING * y_ref[r * d + i].abs();
            }
        }
        assert_close(&what("y"), &download_f64(dev, &y), &y_ref, &tol_y);
        let row_abs =
            |r: usize| x[r * d..(r + 1) * d].iter().map(|v| v.abs()).sum::<f64>() / d as f64;
        let tol_mean: Vec<f64> = (0..rows).map(|r| k * row_abs(r)).collect();
        assert_close(
            &what("mean"),
            &download_f64(dev, &stats.mean),
            &mean_ref,
            &tol_mean,
        );
        let tol_rstd: Vec<f64> = (0..rows)
            .map(|r| {
                let (s, ax) = (rstd_ref[r], row_abs(r));
                k * s * (1.0 + ax * s) * (1.0 + ax * s)
            })
            .collect();
        assert_close(
            &what("rstd"),
            &download_f64(dev, &stats.rstd),
            &rstd_ref,
            &tol_rstd,
        );

        let mut dx = poisoned(dev, DType::BF16, rows * d);
        let (dg, db) = layernorm::backward(
            dev,
            &mut dx,
            &self.x_dev,
            &self.gamma_dev,
            &stats,
            &self.dy_dev,
            d,
        )
        .expect("layernorm backward");
        let dy = &self.dy;
        let (dx_ref, dg_ref, db_ref) = layer_norm_backward(x, gamma, &mean_ref, &rstd_ref, dy, d);
        let mut tol_dx = vec![0.0; rows * d];
        let mut mag_dg = vec![0.0; d];
        let mut mag_db = vec![0.0; d];
        for r in 0..rows {
            let rs = rstd_ref[r];
            let (mut ag, mut agx, mut ax) = (0.0, 0.0, 0.0);
            for i in 0..d {
                let xh = (x[r * d + i] - mean_ref[r]) * rs;
                let gh = dy[r * d + i] * gamma[i];
                ag += gh.abs();
                agx += (gh * xh).abs();
                ax += x[r * d + i].abs() * rs;
                mag_dg[i] +=
                    (dy[r * d + i] * xh).abs() + dy[r * d + i].abs() * x[r * d + i].abs() * rs;
                mag_db[i] += dy[r * d + i].abs();
            }
            let (ag, agx, ax) = (ag / d as f64, agx / d as f64, ax / d as f64);
            for i in 0..d {
                let xh = (x[r * d + i] - mean_ref[r]) * rs;
                let gh = dy[r * d + i] * gamma[i];
                let mag = rs * (gh.abs() + ag + (xh.abs() + 1.0) * agx) * (1.0 + ax).powi(2);
                tol_dx[r * d + i] = k * mag + BF16_ROUNDING * dx_ref[r * d + i].abs();
            }
        }
        assert_close(&what("dx"), &download_f64(dev, &dx), &dx_ref, &tol_dx);
        let kr = 4.0 * (d as f64 + rows as f64 + 16.0) * U;
        let ax_all = 1.0 + rstd_ref.iter().cloned().fold(0.0, f64::max);
        let tol_dg: Vec<f64> = mag_dg.iter().map(|m| kr * m * ax_all * ax_all).collect();
        let tol_db: Vec<f64> = mag_db.iter().map(|m| kr * m).collect();
        assert_close(&what("dgamma"), &download_f64(dev, &dg), &dg_ref, &tol_dg);
        assert_close(&what("dbeta"), &download_f64(dev, &db), &db_ref, &tol_db);
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check passes on the emulator's (correct) kernels, including rows spread over
    /// several backward blocks.
    #[test]
    fn check_passes_on_the_emulator() {
        let dev = Device::emulator().expect("emulator");
        LayerNormCase::new(&dev, layernorm::MAX_BWD_BLOCKS + 5, 72, 7).check(&dev);
    }

    /// A case whose device input differs from its host copy must fail the check.
    #[test]
    #[should_panic(expected = "layernorm y bf16")]
    fn check_fails_on_a_wrong_result() {
        let dev = Device::emulator().expect("emulator");
        let mut case = LayerNormCase::new(&dev, 4, 40, 8);
        case.x[3] += 0.5;
        case.check(&dev);
    }
}
