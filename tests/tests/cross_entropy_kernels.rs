//! Cross-entropy fused with the lm_head (kernels-cu `cross_entropy.cu`) on the emulator (and a
//! GPU when one is present) against `engine::ops::linear_cross_entropy` in f64 on the same
//! bf16-rounded hidden states and weights: loss, dhidden and dW.
//!
//! Tolerances (u = 2⁻²⁴). A logit is an f32 sum of d products: |Δz_rv| ≤ d·u·A_r with
//! A_r = max_v Σ_k |h_rk||w_vk|. logsumexp adds exp/log roundings and an f32 sum over V terms
//! (tile sums folded in chunk order): E_r = (d + V + 32)·u·(A_r + |lse_r| + 1) bounds both.
//! - loss: Σ_kept 2·E_r / count.
//! - dz_rv = scale·(p_rv − δ): |Δ| ≤ scale·(2E_r·p_rv + 8u·(p_rv + δ)); dhidden = Σ_v dz·W adds an
//!   f32 sum over V terms: |Δdh_rj| ≤ scale·Σ_v (2E_r + (V + 16)·u)·(p_rv + δ_rv)·|W_vj|.
//! - dW_vj = Σ_r dz_rv·h_rj: |Δ| ≤ scale·Σ_r (2E_r + (rows + 16)·u)·(p_rv + δ_rv)·|h_rj|.

use engine::ops::{linear_cross_entropy, IGNORE_INDEX};
use engine::rng;
use engine::{Tensor, Var};
use half::bf16;
use kernels_cu::ops::cross_entropy::{self, LceShape};
use kernels_cu::{DType, Device};
use proptest::prelude::*;

const U: f64 = 1.0 / 16_777_216.0;

fn devices() -> Vec<Device> {
    let mut v = vec![Device::emulator().expect("the emulator is built into the tests")];
    match Device::cuda(0) {
        Ok(d) => v.push(d),
        Err(e) if std::env::var_os("KERNELS_CU_REQUIRE_GPU").is_some() => {
            panic!("KERNELS_CU_REQUIRE_GPU is set but no GPU: {e}")
        }
        Err(_) => {}
    }
    v
}

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
        e[r] = (d + vocab + 32) as f64 * U * (a + lse.abs() + 1.0);
    }
    let scale = 1.0 / count;

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
        + 4.0 * U * loss_ref.abs();
    assert!(
        (got - loss_ref).abs() <= tol,
        "loss {got} vs {loss_ref} (tol {tol:e}) for {s:?}"
    );

    let (dh, dw) =
        cross_entropy::backward(dev, &hb, &wb, &lb, &fwd.lse, &s, count, 1.0, want_dw).unwrap();
    let dh = dev.dtoh::<f32>(&dh).unwrap();
    for r in 0..rows {
        let kept_r = labels[r] != IGNORE_INDEX;
        for j in 0..d {
            let t: f64 = if kept_r {
                (0..vocab)
                    .map(|v| {
                        (2.0 * e[r] + (vocab + 16) as f64 * U)
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
                            (2.0 * e[r] + (rows + 16) as f64 * U)
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
        fwd_chunk in prop_oneof![Just(16usize), Just(32), Just(64), Just(4096)],
        bwd_chunk in prop_oneof![Just(7usize), Just(50), Just(8192)],
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
    let l3 = dev.htod(&[0i32, 1, 2]).unwrap();
    assert!(cross_entropy::forward(&dev, &h, &w, &l3, &s, 2.0).is_err());
}
