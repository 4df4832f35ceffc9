//! The pointwise kernels (kernels-cu `pointwise.cu`, bf16): exact GELU forward and backward,
//! the three-term residual add and the embedding gather, against the engine's CPU reference in
//! f64 on the same bf16 inputs, with the tolerances of `tests/tests/pointwise_kernels.rs`
//! (u = 2⁻²⁴):
//! - GELU: 8·u·(|x| + 1) forward, 8·u·(|x| + 1)·|dy| backward (erff/expf within 2 ulp, a few
//!   more roundings of terms bounded by |x|), plus 2⁻⁸·|ref| for the bf16 output;
//! - residual add: 2·u·(|x| + |a| + |b|) plus 2⁻⁸·|ref|;
//! - embedding forward: a bit-exact copy of the table rows.
//!
//! Every output element is checked (memory-bound kernels: the references are cheap).

use engine::ops::gelu::{gelu_grad_scalar, gelu_scalar};
use engine::rng;
use half::bf16;
use kernels_cu::ops::pointwise;
use kernels_cu::{Buffer, DType, Device};
use rayon::prelude::*;

use crate::check::{
    assert_bits_eq, assert_close, download_f64, poisoned, uniform_bf16, BF16_ROUNDING,
    F32_UNIT_ROUNDOFF as U,
};

/// `n` bf16 normals times `scale` (element i a function of `(seed, i)`), as f64.
pub fn normal_bf16(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    (0..n)
        .into_par_iter()
        .map(|i| bf16::from_f64(rng::normal_f64(seed, i as u64) * scale).to_f64())
        .collect()
}

fn upload(dev: &Device, v: &[f64]) -> Buffer {
    dev.htod(&v.par_iter().map(|&x| bf16::from_f64(x)).collect::<Vec<_>>())
        .expect("upload")
}

/// GELU on `n` bf16 elements: x spans the tails (erf → ±1), the origin and moderate values.
pub struct GeluCase {
    x: Vec<f64>,
    dy: Vec<f64>,
    pub x_dev: Buffer,
    pub dy_dev: Buffer,
}

impl GeluCase {
    pub fn new(dev: &Device, n: usize, seed: u64) -> Self {
        let x = normal_bf16(n, seed, 3.0);
        let dy = normal_bf16(n, seed ^ 9, 1.0);
        GeluCase {
            x_dev: upload(dev, &x),
            dy_dev: upload(dev, &dy),
            x,
            dy,
        }
    }

    pub fn check(&self, dev: &Device) {
        let n = self.x.len();
        let (x, dy) = (&self.x, &self.dy);
        let mut y = poisoned(dev, DType::BF16, n);
        pointwise::gelu_forward(dev, &mut y, &self.x_dev).expect("gelu forward");
        let y_ref: Vec<f64> = x.par_iter().map(|&v| gelu_scalar(v)).collect();
        let tol: Vec<f64> = (0..n)
            .map(|i| 8.0 * U * (x[i].abs() + 1.0) + BF16_ROUNDING * y_ref[i].abs())
            .collect();
        assert_close(
            &format!("gelu forward bf16 n{n}"),
            &download_f64(dev, &y),
            &y_ref,
            &tol,
        );
        let mut dx = poisoned(dev, DType::BF16, n);
        pointwise::gelu_backward(dev, &mut dx, &self.x_dev, &self.dy_dev).expect("gelu backward");
        let dx_ref: Vec<f64> = (0..n)
            .into_par_iter()
            .map(|i| dy[i] * gelu_grad_scalar(x[i]))
            .collect();
        let tol: Vec<f64> = (0..n)
            .map(|i| 8.0 * U * (x[i].abs() + 1.0) * dy[i].abs() + BF16_ROUNDING * dx_ref[i].abs())
            .collect();
        assert_close(
            &format!("gelu backward bf16 n{n}"),
            &download_f64(dev, &dx),
            &dx_ref,
            &tol,
        );
    }
}

/// `out = x + a + b` on `n` bf16 elements.
pub struct ResidualCase {
    terms: [Vec<f64>; 3],
    pub x_dev: Buffer,
    pub a_dev: Buffer,
    pub b_dev: Buffer,
}

impl ResidualCase {
    pub fn new(dev: &Device, n: usize, seed: u64) -> Self {
        let terms = [1u64, 2, 3].map(|s| normal_bf16(n, seed ^ s, 4.0));
        ResidualCase {
            x_dev: upload(dev, &terms[0]),
            a_dev: upload(dev, &terms[1]),
            b_dev: upload(dev, &terms[2]),
            terms,
        }
    }

    pub fn check(&self, dev: &Device) {
        let [x, a, b] = &self.terms;
        let n = x.len();
        let mut out = poisoned(dev, DType::BF16, n);
        pointwise::residual_add3(dev, &mut out, &self.x_dev, &self.a_dev, &self.b_dev)
            .expect("residual_add3");
        let want: Vec<f64> = (0..n).map(|i| x[i] + a[i] + b[i]).collect();
        let tol: Vec<f64> = (0..n)
            .map(|i| {
                2.0 * U * (x[i].abs() + a[i].abs() + b[i].abs()) + BF16_ROUNDING * want[i].abs()
            })
            .collect();
        assert_close(
            &format!("residual_add3 bf16 n{n}"),
            &download_f64(dev, &out),
            &want,
            &tol,
        );
    }
}

/// The embedding gather of `rows` token ids from a `vocab x d` bf16 table.
pub struct EmbeddingCase {
    pub vocab: usize,
    pub d: usize,
    ids: Vec<u32>,
    table: Vec<bf16>,
    pub ids_dev: Buffer,
    pub table_dev: Buffer,
}

impl EmbeddingCase {
    pub fn new(dev: &Device, rows: usize, vocab: usize, d: usize, seed: u64) -> Self {
        let ids: Vec<u32> = (0..rows)
            .map(|i| (rng::bits(seed, i as u64) % vocab as u64) as u32)
            .collect();
        let table = uniform_bf16(vocab * d, seed ^ 5, -1.0, 1.0);
        EmbeddingCase {
            vocab,
            d,
            ids_dev: dev.htod(&ids).expect("upload ids"),
            table_dev: dev.htod(&table).expect("upload table"),
            ids,
            table,
        }
    }

    pub fn check(&self, dev: &Device) {
        let (rows, d) = (self.ids.len(), self.d);
        let mut out = poisoned(dev, DType::BF16, rows * d);
        let bad = pointwise::embedding_forward(
            dev,
            &mut out,
            &self.ids_dev,
            &self.table_dev,
            self.vocab,
            d,
        )
        .expect("embedding forward");
        assert_eq!(
            dev.dtoh::<i32>(&bad).expect("download")[0],
            i32::MAX,
            "embedding forward reported an out-of-range id, but every id is below {}",
            self.vocab
        );
        let mut want = Vec::with_capacity(rows * d);
        for &id in &self.ids {
            want.extend(
                self.table[id as usize * d..(id as usize + 1) * d]
                    .iter()
                    .map(|v| v.to_bits()),
            );
        }
        let got: Vec<u16> = dev
            .dtoh::<bf16>(&out)
            .expect("download")
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_bits_eq(
            &format!("embedding forward bf16 {rows}x{d} of {}", self.vocab),
            &got,
            &want,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_pass_on_the_emulator() {
        let dev = Device::emulator().expect("emulator");
        GeluCase::new(&dev, 4099, 1).check(&dev);
        ResidualCase::new(&dev, 4099, 2).check(&dev);
        EmbeddingCase::new(&dev, 37, 50, 72, 3).check(&dev);
    }

    #[test]
    #[should_panic(expected = "gelu forward bf16")]
    fn gelu_check_fails_on_a_wrong_result() {
        let dev = Device::emulator().expect("emulator");
        let mut case = GeluCase::new(&dev, 100, 4);
        case.x[17] = -case.x[17] + 0.25;
        case.check(&dev);
    }

    #[test]
    #[should_panic(expected = "embedding forward bf16")]
    fn embedding_check_fails_on_a_wrong_row() {
        let dev = Device::emulator().expect("emulator");
        let mut case = EmbeddingCase::new(&dev, 8, 20, 16, 5);
        case.ids[3] = (case.ids[3] + 1) % 20;
        case.check(&dev);
    }
}
