//! The skinny product `C = A·Bᵀ` (kernels-cu `skinny.cu`, the LoRA down-projections) and the
//! tensor-core GEMM on the same product, against the f64 product of the same bf16 inputs, with
//! the tolerance of `tests/tests/skinny_kernels.rs`: the f32 accumulation of k exact products,
//! (k + 2)·u·(Σ|a·b| + 1), plus 2⁻⁸·|ref| for the bf16 output. The GEMM's own bound
//! (`tests/tests/gemm_kernels.rs`) is (k + 16)·u·Σ|a·b| + 2⁻⁸·|ref|; the larger of the two is
//! used for both.
//!
//! Every element is checked: m·n·k = 1024·8·18176 products is a fraction of a second.

use kernels_cu::ops::gemm::{gemm, Layout};
use kernels_cu::ops::skinny;
use kernels_cu::{Buffer, DType, Device};
use rayon::prelude::*;

use crate::check::{
    assert_close, download_f64, poisoned, uniform_bf16, widen_bf16, BF16_ROUNDING,
    F32_UNIT_ROUNDOFF as U,
};

/// A `[m, k]` and B `[n, k]`, bf16, with small n (the LoRA rank).
pub struct SkinnyCase {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    a: Vec<f64>,
    b: Vec<f64>,
    pub a_dev: Buffer,
    pub b_dev: Buffer,
}

/// Which kernel computes the product.
#[derive(Clone, Copy, Debug)]
pub enum Product {
    Skinny,
    TensorCoreGemm,
}

impl SkinnyCase {
    pub fn new(dev: &Device, m: usize, n: usize, k: usize, seed: u64) -> Self {
        let a = uniform_bf16(m * k, seed, -1.0, 1.0);
        let b = uniform_bf16(n * k, seed ^ 1, -1.0, 1.0);
        SkinnyCase {
            m,
            n,
            k,
            a_dev: dev.htod(&a).expect("upload"),
            b_dev: dev.htod(&b).expect("upload"),
            a: widen_bf16(&a),
            b: widen_bf16(&b),
        }
    }

    /// Runs `product` once into a poisoned bf16 C (α = 1, β = 0) and checks every element.
    pub fn check(&self, dev: &Device, product: Product) {
        let (m, n, k) = (self.m, self.n, self.k);
        let mut c = poisoned(dev, DType::BF16, m * n);
        match product {
            Product::Skinny => skinny::nt(dev, &self.a_dev, &self.b_dev, &mut c, m, n, k, 1.0, 0.0),
            Product::TensorCoreGemm => gemm(
                dev,
                Layout::Nt,
                &self.a_dev,
                &self.b_dev,
                &mut c,
                m,
                n,
                k,
                1.0,
                0.0,
            ),
        }
        .expect("launch");
        let (want, tol): (Vec<f64>, Vec<f64>) = (0..m * n)
            .into_par_iter()
            .map(|idx| {
                let (i, j) = (idx / n, idx % n);
                let (ar, br) = (&self.a[i * k..(i + 1) * k], &self.b[j * k..(j + 1) * k]);
                let (mut s, mut mag) = (0.0, 0.0);
                for t in 0..k {
                    let p = ar[t] * br[t];
                    s += p;
                    mag += p.abs();
                }
                (
                    s,
                    (k as f64 + 16.0) * U * (mag + 1.0) + BF16_ROUNDING * s.abs(),
                )
            })
            .unzip();
        assert_close(
            &format!("{product:?} C = A·Bᵀ bf16 {m}x{n}x{k}"),
            &download_f64(dev, &c),
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
        let case = SkinnyCase::new(&dev, 37, 8, 4544 / 8, 1);
        case.check(&dev, Product::Skinny);
        case.check(&dev, Product::TensorCoreGemm);
    }

    #[test]
    #[should_panic(expected = "Skinny C = A·Bᵀ")]
    fn check_fails_on_a_wrong_result() {
        let dev = Device::emulator().expect("emulator");
        let mut case = SkinnyCase::new(&dev, 9, 8, 64, 2);
        case.b[70] += 1.0;
        case.check(&dev, Product::Skinny);
    }
}
