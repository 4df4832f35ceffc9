//! The skinny product (kernels-cu `skinny.cu`, the LoRA down-projections) on the emulator (and
//! a GPU when one is present) against a float64 reference: `C = α·A·Bᵀ + β·C` for random
//! bf16 A `[m, k]` (few rows: a block per row; many: a warp per row), B `[n, k]`, n from 1 to
//! 32, ragged k (vector and scalar paths), aligned buffers and unaligned views, C in f32 and
//! bf16, β = 0 on a NaN-poisoned C and β ≠ 0.
//!
//! Tolerance: the inputs are exactly representable (bf16), so the only error is the f32
//! accumulation of k products in a fixed order: |err| ≤ k·2⁻²⁴·Σ|a·b| (first-order bound),
//! plus, for a bf16 C, one rounding of the result (2⁻⁹ relative) and of β·C's input.

use engine::testing::Rng;
use half::bf16;
use integration_tests::devices;
use kernels_cu::ops::skinny;
use kernels_cu::{Buffer, DType, Device, Error};
use proptest::prelude::*;

/// The draws these tests need beyond the shared generator's.
trait Draws {
    /// Uniform in [-1, 1), rounded to bf16.
    fn bf(&mut self) -> bf16;
}

impl Draws for Rng {
    fn bf(&mut self) -> bf16 {
        bf16::from_f32(((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0)
    }
}

/// Runs one case; `pad` elements before A and B in their allocations make the operands views
/// at an offset (pad % 8 != 0 takes the scalar path).
#[allow(clippy::too_many_arguments)]
fn run(
    dev: &Device,
    m: usize,
    n: usize,
    k: usize,
    c_dtype: DType,
    beta: f32,
    pad: usize,
    seed: u64,
) {
    let mut rng = Rng::from_state(seed);
    let a: Vec<bf16> = (0..m * k).map(|_| rng.bf()).collect();
    let b: Vec<bf16> = (0..n * k).map(|_| rng.bf()).collect();
    let c0: Vec<f32> = (0..m * n).map(|_| rng.bf().to_f32()).collect();
    let alpha = 0.75f32;
    let with_pad = |v: &[bf16]| -> Buffer {
        let mut h = vec![bf16::from_f32(7.0); pad];
        h.extend_from_slice(v);
        dev.htod(&h).unwrap()
    };
    let (a_all, b_all) = (with_pad(&a), with_pad(&b));
    let av = a_all.view(pad, m * k).unwrap();
    let bv = b_all.view(pad, n * k).unwrap();
    let mut c = match (c_dtype, beta == 0.0) {
        // β = 0 must not read C: start from NaN.
        (DType::F32, true) => dev.htod(&vec![f32::NAN; m * n]).unwrap(),
        (DType::F32, false) => dev.htod(&c0).unwrap(),
        (_, true) => dev.htod(&vec![bf16::NAN; m * n]).unwrap(),
        (_, false) => dev
            .htod(&c0.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())
            .unwrap(),
    };
    skinny::nt(dev, &av, &bv, &mut c, m, n, k, alpha, beta).unwrap();
    let got: Vec<f32> = match c_dtype {
        DType::F32 => dev.dtoh::<f32>(&c).unwrap(),
        _ => dev
            .dtoh::<bf16>(&c)
            .unwrap()
            .iter()
            .map(|x| x.to_f32())
            .collect(),
    };
    for i in 0..m {
        for j in 0..n {
            let (mut dot, mut abs) = (0.0f64, 0.0f64);
            for l in 0..k {
                let p = a[i * k + l].to_f64() * b[j * k + l].to_f64();
                dot += p;
                abs += p.abs();
            }
            let want = alpha as f64 * dot + beta as f64 * c0[i * n + j] as f64;
            let mut tol = (k as f64 + 2.0) * 2f64.powi(-24) * (alpha as f64 * abs + 1.0);
            if c_dtype == DType::BF16 {
                tol += 2f64.powi(-8) * (want.abs() + beta.abs() as f64);
            }
            let g = got[i * n + j] as f64;
            assert!(
                (g - want).abs() <= tol,
                "m {m} n {n} k {k} {c_dtype:?} beta {beta} pad {pad}: C[{i}][{j}] = {g}, want {want} (tol {tol:.2e})"
            );
        }
    }
}

#[test]
fn lora_shapes_on_both_paths() {
    for dev in devices() {
        // r = 8 and 16 against hidden widths; f32 and bf16 outputs; vector and scalar paths;
        // a few rows (one block per row, skinny::ROWS_MAX_M or fewer) and many (a warp per
        // row).
        run(&dev, 37, 8, 4544 / 8, DType::BF16, 0.0, 0, 1);
        run(&dev, 1, 8, 4544, DType::BF16, 0.0, 0, 6);
        run(&dev, 300, 8, 640, DType::BF16, 1.0, 0, 7);
        run(&dev, 131, 24, 643, DType::F32, 0.5, 3, 8);
        run(&dev, 37, 16, 640, DType::F32, 0.0, 0, 2);
        run(&dev, 19, 8, 640, DType::F32, 1.0, 8, 3);
        run(&dev, 19, 8, 643, DType::BF16, 0.5, 3, 4);
        run(&dev, 5, 32, 96, DType::F32, -1.0, 1, 5);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    #[test]
    fn random_shapes_match_f64(
        m in prop::sample::select(vec![1usize, 2, 7, 33, 64, 65, 97, 150]), n in 1usize..=32,
        k8 in 0usize..40,
        tail in prop::sample::select(vec![0usize, 0, 3, 7]), bf in any::<bool>(),
        beta in prop::sample::select(vec![0.0f32, 1.0, -0.5]),
        pad in prop::sample::select(vec![0usize, 0, 8, 3, 5]), seed in any::<u64>(),
    ) {
        // Half the cases take the 16-byte path (k % 8 == 0 and aligned views).
        let dev = Device::emulator().unwrap();
        let k = 8 * k8 + tail;
        run(&dev, m, n, k, if bf { DType::BF16 } else { DType::F32 }, beta, pad, seed);
    }
}

#[test]
fn bad_arguments_are_errors() {
    let dev = Device::emulator().unwrap();
    let a = dev.alloc(DType::BF16, 4 * 64).unwrap();
    let b = dev.alloc(DType::BF16, 33 * 64).unwrap();
    let mut c = dev.alloc(DType::F32, 4 * 33).unwrap();
    assert!(matches!(
        skinny::nt(&dev, &a, &b, &mut c, 4, 33, 64, 1.0, 0.0),
        Err(Error::InvalidLaunch { .. })
    ));
    let b = dev.alloc(DType::BF16, 8 * 64).unwrap();
    let mut c = dev.alloc(DType::F32, 4 * 8).unwrap();
    assert!(matches!(
        skinny::nt(&dev, &a, &b, &mut c, 4, 8, 63, 1.0, 0.0),
        Err(Error::Length { .. })
    ));
    let mut c16 = dev.alloc(DType::U8, 4 * 8).unwrap();
    assert!(matches!(
        skinny::nt(&dev, &a, &b, &mut c16, 4, 8, 64, 1.0, 0.0),
        Err(Error::DType { .. })
    ));
}
