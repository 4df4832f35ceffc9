//! Multi-tensor AdamW and the global gradient norm (kernels-cu `adamw.cu`) on the emulator (and
//! a GPU when one is present) against `engine::optim::adamw::adamw_update` (f32) and
//! `engine::optim::clip::clip_grad_norm` semantics.
//!
//! Tolerances: AdamW is bit-identical to the f32 CPU reference (same f32 scalars, same operation
//! sequence, IEEE round-to-nearest, no FMA contraction) — asserted exactly over several steps,
//! with and without clipping. The norm: each thread sums ≤ 8·k squares in f32 (k = grid-stride
//! rounds), the block adds 256 of those in a fixed tree, the blocks' partials are added in f64:
//! relative error ≤ (8k + 8)·u + 2⁻²⁴ (final rounding) with u = 2⁻²⁴, below 1e-6 for the sizes
//! here; we assert |Δ| ≤ 1e-5·‖g‖, and the clipping coefficient to 1e-5 relative.

use engine::optim::{adamw_update, AdamWConfig};
use engine::rng;
use integration_tests::devices;
use kernels_cu::ops::adamw::{self, AdamWHyper, AdamWScalars};
use kernels_cu::{DType, Device};
use proptest::prelude::*;

/// Packed flat buffer of several tensors of the given sizes (offsets = prefix sums).
fn packed(sizes: &[usize], seed: u64, scale: f64) -> Vec<f32> {
    let n: usize = sizes.iter().sum();
    (0..n)
        .map(|i| (rng::normal_f64(seed, i as u64) * scale) as f32)
        .collect()
}

fn run(sizes: &[usize], h: AdamWHyper, max_norm: f64, steps: u64, seed: u64, dev: &Device) {
    let n: usize = sizes.iter().sum();
    let mut p = packed(sizes, seed, 0.1);
    let mut m = vec![0.0f32; n];
    let mut v = vec![0.0f32; n];
    let mut pd = dev.htod(&p).unwrap();
    let mut md = dev.htod(&m).unwrap();
    let mut vd = dev.htod(&v).unwrap();
    let cfg = AdamWConfig {
        beta1: h.beta1,
        beta2: h.beta2,
        eps: h.eps,
        weight_decay: h.weight_decay,
    };
    for t in 1..=steps {
        let mut g = packed(sizes, seed ^ (t * 77), 2.0);
        let gd = dev.htod(&g).unwrap();
        // Reference: clip_grad_norm semantics (f64 norm in parameter order), then the update
        // tensor by tensor.
        let norm: f64 = g
            .iter()
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt();
        let out = adamw::grad_norm(dev, &gd, max_norm as f32).unwrap();
        let got = dev.dtoh::<f32>(&out).unwrap();
        assert!(
            (got[0] as f64 - norm).abs() <= 1e-5 * norm + 1e-30,
            "norm {} vs {norm}",
            got[0]
        );
        let coef = if max_norm > 0.0 {
            max_norm / (norm + 1e-6)
        } else {
            1.0
        };
        let coef_ref = coef.min(1.0);
        assert!(
            (got[1] as f64 - coef_ref).abs() <= 1e-5 * coef_ref,
            "clip coefficient {} vs {coef_ref}",
            got[1]
        );
        // The reference scales by the coefficient the device computed (f32), as scale_tensor
        // does with an f32 scalar, so the update comparison is exact.
        if coef < 1.0 {
            let c = got[1];
            for x in g.iter_mut() {
                *x *= c;
            }
        }
        let mut off = 0;
        for &len in sizes {
            let r = off..off + len;
            adamw_update(
                &mut p[r.clone()],
                &mut m[r.clone()],
                &mut v[r.clone()],
                &g[r],
                h.lr,
                &cfg,
                t,
            );
            off += len;
        }
        let s = AdamWScalars::new(&h, t);
        adamw::step(dev, &mut pd, &mut md, &mut vd, &gd, &out, 1, &s).unwrap();
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&dev.dtoh::<f32>(&pd).unwrap()),
            bits(&p),
            "params, step {t}"
        );
        assert_eq!(
            bits(&dev.dtoh::<f32>(&md).unwrap()),
            bits(&m),
            "exp_avg, step {t}"
        );
        assert_eq!(
            bits(&dev.dtoh::<f32>(&vd).unwrap()),
            bits(&v),
            "exp_avg_sq, step {t}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn adamw_multi_tensor_is_bit_identical(
        sizes in proptest::collection::vec(1usize..700, 1..6),
        lr in 1e-5f64..1e-2,
        wd in prop_oneof![Just(0.0f64), 0.0f64..0.1],
        max_norm in prop_oneof![Just(0.0f64), Just(1.0), 0.5f64..100.0],
        seed: u64,
    ) {
        let h = AdamWHyper { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: wd };
        for dev in devices() {
            run(&sizes, h, max_norm, 3, seed, &dev);
        }
    }
}

/// Many pass-1 blocks (grid-stride with several elements per thread) for the norm.
#[test]
fn grad_norm_many_blocks() {
    let n = 256 * 8 * 5 + 13;
    for dev in devices() {
        run(
            &[n],
            AdamWHyper {
                lr: 1e-3,
                beta1: 0.8,
                beta2: 0.95,
                eps: 1e-6,
                weight_decay: 0.01,
            },
            1.0,
            2,
            42,
            &dev,
        );
    }
}

#[test]
fn adamw_rejects_mismatched_buffers() {
    let dev = Device::emulator().unwrap();
    let mut p = dev.htod(&[1.0f32; 8]).unwrap();
    let mut m = dev.alloc_zeros(DType::F32, 8).unwrap();
    let mut v = dev.alloc_zeros(DType::F32, 7).unwrap();
    let g = dev.htod(&[1.0f32; 8]).unwrap();
    let one = dev.htod(&[1.0f32]).unwrap();
    let h = AdamWHyper {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let s = AdamWScalars::new(&h, 1);
    assert!(adamw::step(&dev, &mut p, &mut m, &mut v, &g, &one, 0, &s).is_err());
    let mut v8 = dev.alloc_zeros(DType::F32, 8).unwrap();
    assert!(adamw::step(&dev, &mut p, &mut m, &mut v8, &g, &one, 1, &s).is_err());
    assert!(adamw::step(&dev, &mut p, &mut m, &mut v8, &g, &one, 0, &s).is_ok());
}
