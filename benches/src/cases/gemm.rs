//! The NF4 GEMMs, the bf16 tensor-core GEMM and NF4 dequantization (kernels-cu `gemm.cu`)
//! against the engine's NF4 implementation and f64 products, as `tests/tests/gemm_kernels.rs`:
//! - dequantize: bit-identical to `QuantizedWeight::dequantize_bf16`, every element;
//! - GEMMs: the f64 product of the same bf16 operands (for the NF4 GEMMs, the weight
//!   `dequantize_bf16` produces); bf16 products are exact in f32 and the K-term f32
//!   accumulation errs by at most K·u·mag (mag = Σ_k |a_k·b_k|): tolerance (K + 16)·u·mag plus
//!   2⁻⁸·|ref| for the bf16 output.
//!
//! Sampled, not complete: the f64 reference of a whole Falcon-7B product (up to
//! 2·1024·18176·4544 = 170 GFLOP) would take minutes, so [`GemmCase`] checks [`SAMPLED`] whole
//! rows and [`SAMPLED`] whole columns of each output (evenly spread, both edges included,
//! `check::sample`): every output tile row and column of the kernel's grid is crossed by a
//! checked line, and each checked element is a full K-term dot product.

use engine::nf4::{
    Absmax, DoubleQuantState, QuantType, QuantizedWeight, DYNAMIC_MAP, NESTED_BLOCKSIZE,
};
use engine::DType as HostDType;
use half::bf16;
use kernels_cu::ops::gemm::{self, Layout, Nf4Weight};
use kernels_cu::{Buffer, DType, Device};
use rayon::prelude::*;

use crate::check::{
    assert_bits_eq, assert_close_at, download_f64, poisoned, sample, uniform_bf16, BF16_ROUNDING,
    F32_UNIT_ROUNDOFF as U,
};

/// Output rows and columns checked per product.
pub const SAMPLED: usize = 4;

/// The blocksize of the NF4 GEMM's weights.
pub const BLOCKSIZE: usize = 64;

/// Deterministic bytes (an LCG's top byte), so every 4-bit code and absmax code occurs.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

/// An NF4 weight `[n, k]` (blocksize 64, double-quantized absmax) made of random codes, and
/// random bf16 activations: X `[m, k]` for the forward and dY `[m, n]` for the input backward.
pub struct GemmCase {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    q: QuantizedWeight,
    /// `q.dequantize_bf16()`: the weight every reference multiplies by.
    w: Vec<bf16>,
    x: Vec<bf16>,
    dy: Vec<bf16>,
    pub w_dev: Nf4Weight,
    pub x_dev: Buffer,
    pub dy_dev: Buffer,
}

impl GemmCase {
    pub fn new(dev: &Device, m: usize, n: usize, k: usize, seed: u64) -> Self {
        let blocks = (n * k).div_ceil(BLOCKSIZE);
        let nested: Vec<f32> = (0..blocks.div_ceil(NESTED_BLOCKSIZE))
            .map(|i| 0.01 + (i % 7) as f32 * 1e-3)
            .collect();
        let absmax = Absmax::Double(DoubleQuantState {
            codes: bytes(blocks, seed ^ 2),
            nested_absmax: nested,
            offset: 0.02,
            code: DYNAMIC_MAP.to_vec(),
            nested_blocksize: NESTED_BLOCKSIZE,
        });
        let q = QuantizedWeight::from_parts(
            bytes((n * k).div_ceil(2), seed ^ 1),
            n,
            k,
            QuantType::Nf4,
            BLOCKSIZE,
            absmax,
            HostDType::BF16,
        )
        .expect("consistent weight parts");
        let parts =
            model_falcon::cuda::nf4_parts("benchmark weight", &q).expect("double-quantized");
        let w_dev = Nf4Weight::upload(dev, &parts).expect("weight upload");
        let x = uniform_bf16(m * k, seed ^ 3, -1.0, 1.0);
        let dy = uniform_bf16(m * n, seed ^ 4, -1.0, 1.0);
        GemmCase {
            m,
            n,
            k,
            w: q.dequantize_bf16(),
            q,
            x_dev: dev.htod(&x).expect("upload"),
            dy_dev: dev.htod(&dy).expect("upload"),
            x,
            dy,
            w_dev,
        }
    }

    fn shape(&self) -> String {
        format!("{}x{}x{}", self.m, self.n, self.k)
    }

    /// GPU dequantization to bf16, bit for bit; returns it (the bf16 GEMM's B operand).
    pub fn check_dequantize(&self, dev: &Device) -> Buffer {
        let out = gemm::dequantize(dev, &self.w_dev, DType::BF16).expect("dequantize");
        let got: Vec<u16> = dev
            .dtoh::<bf16>(&out)
            .expect("download")
            .par_iter()
            .map(|v| v.to_bits())
            .collect();
        let want: Vec<u16> = self.w.par_iter().map(|v| v.to_bits()).collect();
        assert_bits_eq(
            &format!("nf4 dequantize bf16 {}x{}", self.n, self.k),
            &got,
            &want,
        );
        out
    }

    /// `Y = X·Wᵀ` by the NF4 GEMM (`w_bf16` None) or by the bf16 GEMM with the dequantized
    /// weight `w_bf16`, into a poisoned bf16 output.
    pub fn check_forward(&self, dev: &Device, w_bf16: Option<&Buffer>) {
        let (m, n, k) = (self.m, self.n, self.k);
        let mut y = poisoned(dev, DType::BF16, m * n);
        let what = match w_bf16 {
            None => {
                gemm::nf4_forward(dev, &self.x_dev, &self.w_dev, &mut y, m, 1.0, 0.0)
                    .expect("nf4 forward");
                "nf4_forward"
            }
            Some(wd) => {
                gemm::gemm(dev, Layout::Nt, &self.x_dev, wd, &mut y, m, n, k, 1.0, 0.0)
                    .expect("bf16 gemm");
                "bf16_gemm_nt"
            }
        };
        let (x, w) = (&self.x, &self.w);
        check_sampled(
            &format!("{what} Y = X·Wᵀ bf16 {}", self.shape()),
            &download_f64(dev, &y),
            (m, n, k),
            |i, r| x[i * k + r].to_f64(),
            |r, j| w[j * k + r].to_f64(),
        );
    }

    /// `dX = dY·W` by the NF4 input-backward GEMM, into a poisoned bf16 output.
    pub fn check_backward_input(&self, dev: &Device) {
        let (m, n, k) = (self.m, self.n, self.k);
        let mut dx = poisoned(dev, DType::BF16, m * k);
        gemm::nf4_backward_input(dev, &self.dy_dev, &self.w_dev, &mut dx, m, 1.0, 0.0)
            .expect("nf4 backward");
        let (dy, w) = (&self.dy, &self.w);
        check_sampled(
            &format!("nf4_backward_input dX = dY·W bf16 {}", self.shape()),
            &download_f64(dev, &dx),
            (m, k, n),
            |i, r| dy[i * n + r].to_f64(),
            |r, j| w[r * k + j].to_f64(),
        );
    }

    /// Bytes of the packed weight and its statistics (what dequantization reads).
    pub fn weight_bytes(&self) -> usize {
        self.q.storage_bytes()
    }
}

/// Checks [`SAMPLED`] whole rows and columns of `C [rows, cols] = Σ_r a(i, r)·b(r, j)` (bf16
/// output) against the f64 reference with the GEMM tolerance.
fn check_sampled(
    what: &str,
    got: &[f64],
    (rows, cols, red): (usize, usize, usize),
    a: impl Fn(usize, usize) -> f64 + Sync,
    b: impl Fn(usize, usize) -> f64 + Sync,
) {
    let mut idx: Vec<usize> = Vec::new();
    for i in sample(rows, SAMPLED) {
        idx.extend((0..cols).map(|j| i * cols + j));
    }
    for j in sample(cols, SAMPLED) {
        idx.extend((0..rows).map(|i| i * cols + j));
    }
    let (want, tol): (Vec<f64>, Vec<f64>) = idx
        .par_iter()
        .map(|&e| {
            let (i, j) = (e / cols, e % cols);
            let (mut s, mut mag) = (0.0, 0.0);
            for r in 0..red {
                let p = a(i, r) * b(r, j);
                s += p;
                mag += p.abs();
            }
            (s, (red as f64 + 16.0) * U * mag + BF16_ROUNDING * s.abs())
        })
        .unzip();
    assert_close_at(what, &idx, got, &want, &tol);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_pass_on_the_emulator() {
        let dev = Device::emulator().expect("emulator");
        // Two output tiles each way and a ragged edge.
        let case = GemmCase::new(&dev, 130, 136, 192, 1);
        let wd = case.check_dequantize(&dev);
        case.check_forward(&dev, None);
        case.check_forward(&dev, Some(&wd));
        case.check_backward_input(&dev);
    }

    #[test]
    #[should_panic(expected = "nf4_forward Y = X·Wᵀ")]
    fn check_fails_on_a_wrong_result() {
        let dev = Device::emulator().expect("emulator");
        let mut case = GemmCase::new(&dev, 20, 64, 64, 2);
        // One activation changed on the host: row 19 (a sampled row) of Y disagrees.
        case.x[19 * 64 + 5] = bf16::from_f32(case.x[19 * 64 + 5].to_f32() + 4.0);
        case.check_forward(&dev, None);
    }

    #[test]
    #[should_panic(expected = "nf4 dequantize bf16")]
    fn dequantize_check_fails_on_a_wrong_code() {
        let dev = Device::emulator().expect("emulator");
        let mut case = GemmCase::new(&dev, 4, 16, 64, 3);
        case.w[100] = bf16::from_f32(case.w[100].to_f32() + 1.0);
        case.check_dequantize(&dev);
    }
}
