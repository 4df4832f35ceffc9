//! The decoding kernels (kernels-cu `decode.cu`) against f64 references, with the tolerances of
//! `tests/tests/decode_kernels.rs`:
//! - 4-bit GEMV `Y = X·Wᵀ`: the f64 product of X and the weight `dequantize_f32` produces
//!   (table value times absmax); bf16 products are exact in f32, the K-term f32 accumulation
//!   errs by at most K·u·mag, and the kernel's weights (bf16 table values, the absmax applied
//!   per 64-column block) are off by at most one bf16 rounding: tolerance
//!   ((K + 16)·u + 2⁻⁹)·mag plus 2⁻⁸·|ref| for the bf16 output.
//!   Sampled: [`SAMPLED_COLUMNS`] output columns (evenly spread, both edges), every row.
//! - Flash-decoding attention: softmax(scale·q·Kᵀ)·V in f64 for sampled (sequence, head)
//!   pairs; tolerance 2⁻⁸·|ref| + 2⁻¹²·max|v|.

use engine::nf4::{QuantConfig, QuantizedWeight};
use kernels_cu::ops::decode::{self, CacheShape};
use kernels_cu::ops::gemm::Nf4Weight;
use kernels_cu::{Buffer, DType, Device};
use rayon::prelude::*;

use crate::check::{
    assert_close_at, download_f64, poisoned, sample, uniform_bf16, uniform_f32, widen_bf16,
    BF16_ROUNDING, F32_UNIT_ROUNDOFF as U,
};

/// The 4-bit GEMV's weight error relative to |w|: one bf16 rounding of the table value.
const NF4_WEIGHT_ROUNDING: f64 = 1.0 / 512.0;

/// Output columns checked per GEMV.
pub const SAMPLED_COLUMNS: usize = 64;

/// A 4-bit weight `[n, k]` (quantized from random values: blocksize 64, double-quantized) and
/// activations `X [m, k]` with m ≤ 32 rows (sequences).
pub struct GemvCase {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `dequantize_f32` of the weight, widened.
    w: Vec<f64>,
    x: Vec<f64>,
    pub w_dev: Nf4Weight,
    pub x_dev: Buffer,
}

impl GemvCase {
    pub fn new(dev: &Device, m: usize, n: usize, k: usize, seed: u64) -> Self {
        let vals = uniform_f32(n * k, seed, -0.05, 0.05);
        let q = QuantizedWeight::quantize(&vals, n, k, QuantConfig::default())
            .expect("valid quantization");
        let parts = model_falcon::cuda::nf4_parts("benchmark weight", &q).expect("double-quant");
        let x = uniform_bf16(m * k, seed ^ 7, -1.0, 1.0);
        GemvCase {
            m,
            n,
            k,
            w: q.dequantize_f32().par_iter().map(|&v| v as f64).collect(),
            w_dev: Nf4Weight::upload(dev, &parts).expect("weight upload"),
            x_dev: dev.htod(&x).expect("upload"),
            x: widen_bf16(&x),
        }
    }

    /// Bytes the GEMV must move: the packed weight and its absmax codes, X, Y (bf16).
    pub fn bytes(&self) -> f64 {
        (self.n * self.k) as f64 * (0.5 + 1.0 / 64.0) + 2.0 * (self.m * (self.k + self.n)) as f64
    }

    /// Runs the GEMV once into a poisoned bf16 Y and checks the sampled columns.
    pub fn check(&self, dev: &Device) {
        let (m, n, k) = (self.m, self.n, self.k);
        let mut y = poisoned(dev, DType::BF16, m * n);
        decode::gemv_nf4(dev, &self.x_dev, &self.w_dev, &mut y, m, 1.0, 0.0).expect("gemv");
        let got = download_f64(dev, &y);
        let cols = sample(n, SAMPLED_COLUMNS);
        let idx: Vec<usize> = (0..m)
            .flat_map(|i| cols.iter().map(move |&j| i * n + j))
            .collect();
        let (want, tol): (Vec<f64>, Vec<f64>) = idx
            .par_iter()
            .map(|&at| {
                let (i, j) = (at / n, at % n);
                let (xr, wr) = (&self.x[i * k..(i + 1) * k], &self.w[j * k..(j + 1) * k]);
                let (mut s, mut mag) = (0.0, 0.0);
                for t in 0..k {
                    let p = xr[t] * wr[t];
                    s += p;
                    mag += p.abs();
                }
                (
                    s,
                    ((k as f64 + 16.0) * U + NF4_WEIGHT_ROUNDING) * mag
                        + BF16_ROUNDING * s.abs()
                        + 1e-30,
                )
            })
            .unzip();
        assert_close_at(
            &format!("decode gemv nf4 {m}x{n}x{k}"),
            &idx,
            &got,
            &want,
            &tol,
        );
    }
}

/// One decode step's attention: q `[b, hq, d]` and full K/V caches of `len` columns.
pub struct AttnCase {
    pub shape: CacheShape,
    pub q_heads: usize,
    pub len: usize,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    pub q_dev: Buffer,
    pub k_dev: Buffer,
    pub v_dev: Buffer,
    pub mask_dev: Buffer,
}

impl AttnCase {
    pub fn new(dev: &Device, batch: usize, q_heads: usize, kv_heads: usize, len: usize) -> Self {
        let shape = CacheShape {
            batch,
            kv_heads,
            capacity: len,
            head_dim: 64,
        };
        let q = uniform_bf16(batch * q_heads * 64, 1, -1.0, 1.0);
        let k = uniform_bf16(shape.elems(), 2, -1.0, 1.0);
        let v = uniform_bf16(shape.elems(), 3, -1.0, 1.0);
        AttnCase {
            shape,
            q_heads,
            len,
            q_dev: dev.htod(&q).expect("upload"),
            k_dev: dev.htod(&k).expect("upload"),
            v_dev: dev.htod(&v).expect("upload"),
            mask_dev: dev.htod(&vec![1u8; batch * len]).expect("upload"),
            q: widen_bf16(&q),
            k: widen_bf16(&k),
            v: widen_bf16(&v),
        }
    }

    /// Compulsory bytes: K and V once per KV head, q, the output.
    pub fn bytes(&self) -> f64 {
        let s = &self.shape;
        (4 * s.elems() + 4 * s.batch * self.q_heads * s.head_dim) as f64
    }

    pub fn run(&self, dev: &Device) -> Buffer {
        decode::attention(
            dev,
            &self.q_dev,
            &self.k_dev,
            &self.v_dev,
            &self.mask_dev,
            &self.shape,
            self.q_heads,
            self.len,
            0.125,
        )
        .expect("decode attention")
    }

    /// Runs once and checks sampled (sequence, head) rows against f64.
    pub fn check(&self, dev: &Device) {
        let got = download_f64(dev, &self.run(dev));
        let (d, hq, hkv, cap) = (64, self.q_heads, self.shape.kv_heads, self.shape.capacity);
        let rows = sample(self.shape.batch * hq, 8);
        let idx: Vec<usize> = rows
            .iter()
            .flat_map(|&r| (0..d).map(move |e| r * d + e))
            .collect();
        let mut want = Vec::with_capacity(idx.len());
        for &r in &rows {
            let (b, h) = (r / hq, r % hq);
            let kvh = h / (hq / hkv);
            let base = (b * hkv + kvh) * cap;
            let s: Vec<f64> = (0..self.len)
                .map(|j| {
                    0.125
                        * (0..d)
                            .map(|e| self.q[r * d + e] * self.k[(base + j) * d + e])
                            .sum::<f64>()
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
            for e in 0..d {
                want.push(
                    (0..self.len)
                        .map(|j| (s[j] - mx).exp() / z * self.v[(base + j) * d + e])
                        .sum::<f64>(),
                );
            }
        }
        let tol: Vec<f64> = want
            .iter()
            .map(|w| BF16_ROUNDING * w.abs() + 1.0 / 4096.0)
            .collect();
        assert_close_at(
            &format!(
                "decode attention b{} hq{hq} hkv{hkv} len{}",
                self.shape.batch, self.len
            ),
            &idx,
            &got,
            &want,
            &tol,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_pass_on_the_emulator() {
        let dev = Device::emulator().expect("emulator");
        GemvCase::new(&dev, 3, 70, 1088, 1).check(&dev);
        AttnCase::new(&dev, 2, 4, 1, 300).check(&dev);
    }

    #[test]
    #[should_panic(expected = "decode gemv nf4")]
    fn check_fails_on_a_wrong_result() {
        let dev = Device::emulator().expect("emulator");
        let mut case = GemvCase::new(&dev, 2, 9, 64, 2);
        case.w[70] += 1.0;
        case.check(&dev);
    }
}
