//! Cross-entropy fused with the lm_head (kernels-cu `cross_entropy.cu` + the tensor-core GEMM)
//! on the emulator (and a GPU when one is present) against `engine::ops::linear_cross_entropy`
//! in f64 on the same bf16-rounded hidden states and weights: loss, dhidden and dW.
//!
//! Tolerances (u = 2⁻²⁴; every f32 operation, including a tensor-core accumulation step, is
//! charged 2u so that truncating accumulators are covered too).
//! - A logit is an f32 sum of d exact bf16 products: |Δz_rv| ≤ 2(d + 16)·u·A_r with
//!   A_r = max_v Σ_k |h_rk||w_vk|. logsumexp adds exp/log roundings and the online fold over V
//!   terms (at most one rescale per term): E_r = (2d + 2V + 64)·u·(A_r + |lse_r| + 1) bounds
//!   both |Δlse_r| and |Δz_r[label_r]|.
//! - loss: Σ_kept 2·E_r / count + (2·rows + 8)·u·loss (the f32 sum of the kept rows).
//! - dZ_rv = bf16(p̂_rv − δ_rv), with p̂ = exp(ẑ − lsê): |p̂ − p| ≤ 1.01·(2E_r + 4u)·p while
//!   2E_r + 4u ≤ 0.01 (asserted), and the one bf16 rounding adds ≤ 2⁻⁸ relative (bf16 keeps 8
//!   significant bits), so with
//!   B_rv = p_rv + δ_rv ≥ |p − δ|: |dZ − (p − δ)| ≤ 1.01·(2⁻⁸ + 2E_r + 6u)·B_rv.
//! - dhidden = scale·Σ_v dZ·W: the GEMM's f32 sums over each chunk plus the in-order β = 1
//!   accumulation of n_c chunks add ≤ (2(V + n_c) + 40)·u relative to Σ|dZ||W|:
//!   |Δdh_rj| ≤ scale·Σ_v 1.02·(2⁻⁸ + 2E_r + (2(V + n_c) + 40)·u)·B_rv·|W_vj|; exactly 0 on
//!   ignored rows.
//! - dW_vj = scale·Σ_r dZ·h (one GEMM over K = rows per chunk):
//!   |Δ| ≤ scale·Σ_kept r 1.02·(2⁻⁸ + 2E_r + (2·rows + 40)·u)·B_rv·|h_rj|.
//!
//! Strictness: the bounds are about 2⁻⁷ of the gradient's own scale Σ_v B_rv·|W_vj| at these
//! shapes, while a wrong label column, a wrong row, a missing or
//! doubled chunk or a wrong scale all move an entry by O(1) of that scale.
//! Determinism: a second forward and backward must give bit-identical results.

use engine::ops::{linear_cross_entropy, IGNORE_INDEX};
use engine::rng;
use engine::testing::F32_UNIT_ROUNDOFF as U;
use engine::{Tensor, Var};
use half::bf16;
use integration_tests::devices;
use kernels_cu::ops::cross_entropy::{self, LceShape};
use kernels_cu::{DType, Device};
use proptest::prelude::*;

fn bf(v: f64) -> f64 {
    bf16::from_f64(v).to_f64()
}

fn run(s: LceShape, seed: u64, want_dw: bool, dev: &Device) {
    let (rows, d, vocab) = (s.rows, s.d, s.vocab);
    let h: Vec<f64> = (0..rows * d)
        .map(|i| bf(rng::normal_f64(seed, i as u64)))
        .collect();
    let w: Vec<f64> = (0..vocab * d)
        .map(|i| bf(rng::normal_f64(seed ^ 1, i as u64) * 0.5))
        .collect();
    let labels: Vec<i32> = (0..rows)
        .map(|i| {
            let b = rng::bits(seed ^ 2, i as u64);
            if b.is_multiple_of(4) {
                IGNORE_INDEX
            } else {
                ((b >> 8) % vocab as u64) as i32
            }
        })
        .collect();
    let kept = labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
    let count = (kept + 3) as f64;

    // Engine reference (f64).
    let hv = Var::leaf(Tensor::from_vec(h.clone(), [rows, d]).unwrap(), true);
    let wv = Var::leaf(Tensor::from_vec(w.clone(), [vocab, d]).unwrap(), true);
    let loss = linear_cross_entropy(&hv, &wv, &labels, count, 5).unwrap();
    let loss_ref = loss.value().to_f64_vec().unwrap()[0];
    let grads = loss.backward().unwrap();
    let dh_ref = grads.get(&hv).unwrap().to_f64_vec().unwrap();
    let dw_ref = grads.get(&wv).unwrap().to_f64_vec().unwrap();

    // Magnitudes for the tolerances.
    let mut p = vec![0.0f64; rows * vocab];
    let mut e = vec![0.0f64; rows];
    for r in 0..rows {
        let mut z = vec![0.0; vocab];
        let mut a: f64 = 0.0;
        for v in 0..vocab {
            let (mut acc, mut mag) = (0.0, 0.0);
            for k in 0..d {
                acc += h[r * d + k] * w[v * d + k];
                mag += (h[r * d + k] * w[v * d + k]).abs();
            }
            z[v] = acc;
            a = a.max(mag);
        }
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        for v in 0..vocab {
            p[r * vocab + v] = (z[v] - lse).exp() + if labels[r] == v as i32 { 1.0 } else { 0.0 };
        }
        e[r] = (2 * d + 2 * vocab + 64) as f64 * U * (a + lse.abs() + 1.0);
        assert!(
            2.0 * e[r] + 4.0 * U <= 0.01,
            "the first-order bound needs a small logit error, E_r = {} for {s:?}",
            e[r]
        );
    }
    let scale = 1.0 / count;
    let n_c = vocab.div_ceil(s.bwd_chunk);
    // 2⁻⁸: the unit roundoff of bf16 (8 significant bits), dZ's one rounding.
    let q = 1.0 / 256.0;

    // Kernels.
    let hb = dev
        .htod(&h.iter().map(|&x| bf16::from_f64(x)).collect::<Vec<_>>())
        .unwrap();
    let wb = dev
        .htod(&w.iter().map(|&x| bf16::from_f64(x)).collect::<Vec<_>>())
        .unwrap();
    let lb = dev.htod(&labels).unwrap();
    let fwd = cross_entropy::forward(dev, &hb, &wb, &lb, &s, count).unwrap();
    let got = dev.dtoh::<f32>(&fwd.loss).unwrap()[0] as f64;
    let tol: f64 = (0..rows)
        .filter(|&r| labels[r] != IGNORE_INDEX)
        .map(|r| 2.0 * e[r])
        .sum::<f64>()
        / count
        + (2 * rows + 8) as f64 * U * loss_ref.abs();
    assert!(
        (got - loss_ref).abs() <= tol,
        "loss {got} vs {loss_ref} (tol {tol:e}) for {s:?}"
    );

    let (dh, dw) =
        cross_entropy::backward(dev, &hb, &wb, &lb, &fwd.lse, &s, count, 1.0, want_dw).unwrap();

    // Determinism: the same call again gives the same bits.
    let again = cross_entropy::forward(dev, &hb, &wb, &lb, &s, count).unwrap();
    let (dh2, dw2) =
        cross_entropy::backward(dev, &hb, &wb, &lb, &again.lse, &s, count, 1.0, want_dw).unwrap();
    let bits = |b: &kernels_cu::Buffer| -> Vec<u32> {
        dev.dtoh::<f32>(b)
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    };
    assert_eq!(bits(&fwd.loss), bits(&again.loss), "loss repeat for {s:?}");
    assert_eq!(bits(&fwd.lse), bits(&again.lse), "lse repeat for {s:?}");
    assert_eq!(bits(&dh), bits(&dh2), "dhidden repeat for {s:?}");
    if let (Some(a), Some(b)) = (&dw, &dw2) {
        assert_eq!(bits(a), bits(b), "dW repeat for {s:?}");
    }

    let dh = dev.dtoh::<f32>(&dh).unwrap();
    for r in 0..rows {
        let kept_r = labels[r] != IGNORE_INDEX;
        for j in 0..d {
            let t: f64 = if kept_r {
                (0..vocab)
                    .map(|v| {
                        1.02 * (q + 2.0 * e[r] + (2 * (vocab + n_c) + 40) as f64 * U)
                            * p[r * vocab + v]
                            * w[v * d + j].abs()
                    })
                    .sum::<f64>()
                    * scale
            } else {
                0.0
            };
            let (g, want) = (dh[r * d + j] as f64, dh_ref[r * d + j]);
            assert!(
                (g - want).abs() <= t,
                "dhidden[{r},{j}] {g} vs {want} (tol {t:e}) for {s:?}"
            );
        }
    }
    match (want_dw, dw) {
        (true, Some(dw)) => {
            let dw = dev.dtoh::<f32>(&dw).unwrap();
            for v in 0..vocab {
                for j in 0..d {
                    let t: f64 = (0..rows)
                        .filter(|&r| labels[r] != IGNORE_INDEX)
                        .map(|r| {
                            1.02 * (q + 2.0 * e[r] + (2 * rows + 40) as f64 * U)
                                * p[r * vocab + v]
                                * h[r * d + j].abs()
                        })
                        .sum::<f64>()
                        * scale;
                    let (g, want) = (dw[v * d + j] as f64, dw_ref[v * d + j]);
                    assert!(
                        (g - want).abs() <= t,
                        "dW[{v},{j}] {g} vs {want} (tol {t:e}) for {s:?}"
                    );
                }
            }
        }
        (false, None) => {}
        _ => panic!("dW returned iff requested"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn linear_cross_entropy_matches_engine(
        rows in 1usize..40,
        d in prop_oneof![Just(1usize), Just(16), Just(33), 1usize..70],
        vocab in prop_oneof![Just(1usize), Just(17), 2usize..300],
        fwd_chunk in prop_oneof![Just(16usize), Just(48), Just(128), Just(8192)],
        bwd_chunk in prop_oneof![Just(16usize), Just(80), Just(8192)],
        want_dw: bool,
        seed: u64,
    ) {
        let s = LceShape { rows, d, vocab, fwd_chunk, bwd_chunk };
        for dev in devices() {
            run(s, seed, want_dw, &dev);
        }
    }
}

#[test]
fn linear_cross_entropy_rejects_bad_input() {
    let dev = Device::emulator().unwrap();
    let h = dev.alloc(DType::BF16, 6).unwrap();
    let w = dev.alloc(DType::BF16, 9).unwrap();
    let l = dev.htod(&[0i32, 1]).unwrap();
    let s = LceShape::new(2, 3, 3);
    assert!(cross_entropy::forward(&dev, &h, &w, &l, &s, 0.0).is_err());
    let bad = LceShape { fwd_chunk: 10, ..s };
    assert!(cross_entropy::forward(&dev, &h, &w, &l, &bad, 2.0).is_err());
    let lse = dev.alloc(DType::F32, 2).unwrap();
    let bad = LceShape { bwd_chunk: 24, ..s };
    assert!(cross_entropy::backward(&dev, &h, &w, &l, &lse, &bad, 2.0, 1.0, false).is_err());
    let l3 = dev.htod(&[0i32, 1, 2]).unwrap();
    assert!(cross_entropy::forward(&dev, &h, &w, &l3, &s, 2.0).is_err());
}
