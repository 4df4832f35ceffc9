//! The QLoRA step on the CUDA device ([`CudaFalcon`]) against the host model, on the kernels-cu
//! emulator (and on a GPU too when one is present).
//!
//! Both sides get the same weights: the base is made bf16-exact first (embedding, norms, and
//! 4-bit weights quantized from bf16 values, so the host's dequantized-to-stored-dtype weights
//! equal the device's bf16 dequantization), the adapters are fresh random A and B (B ≠ 0, so
//! every gradient is non-trivial), the batch has left padding, masked prompt labels and LoRA
//! dropout on, with the same dropout stream on both sides.
//!
//! Tolerance: the device keeps activations and activation gradients in bf16 (relative
//! rounding 2⁻⁹ ≈ 2e-3 per store) and feeds the GEMMs bf16 adapter weights, through ~20
//! rounded stores per layer; the host is f32 throughout. Observed: loss within 2e-4 relative,
//! every adapter gradient within 8e-3 in relative L2 norm (‖g_dev − g_host‖ / ‖g_host‖). The
//! bounds are 2e-3 and 2e-2; a wrong index, mask, transpose or missing term moves these by O(1).

use engine::optim::{clip_grad_norm, AdamW, AdamWConfig};
use engine::{rng, GradStore, Tensor, Var};
use kernels_cu::testing::devices;
use kernels_cu::Device;
use model_falcon::peft::{LoraConfig, TargetModules};
use model_falcon::{attach_lora, random_model, BaseOptions, CudaFalcon, FalconModel};

mod common;
use common::bf16_model::*;

const LOSS_RTOL: f64 = 2e-3;
const GRAD_RTOL: f64 = 2e-2;

struct Batch {
    ids: Tensor,
    mask: Tensor,
    labels: Vec<i32>,
    count: f64,
}

/// Two rows of `t` tokens; row 1 left-padded by 5; the first 6 real tokens are prompt (-100).
fn batch(t: usize, seed: u64) -> Batch {
    let (b, pad) = (2, 5);
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    let mut labels = Vec::new();
    for row in 0..b {
        for j in 0..t {
            let id = 3 + (rng::bits(seed, (row * t + j) as u64) % 149) as u32;
            let real = row == 0 || j >= pad;
            let start = if row == 0 { 0 } else { pad };
            ids.push(if real { id } else { 0 });
            mask.push(real as u8);
            labels.push(if real && j >= start + 6 {
                id as i32
            } else {
                -100
            });
        }
    }
    let count = labels[1..t]
        .iter()
        .chain(&labels[t + 1..])
        .filter(|&&l| l != -100)
        .count() as f64;
    Batch {
        ids: Tensor::from_vec(ids, [b, t]).unwrap(),
        mask: Tensor::from_vec(mask, [b, t]).unwrap(),
        labels,
        count,
    }
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    (num / den.max(1e-300)).sqrt()
}

fn host_step(
    m: &FalconModel,
    b: &Batch,
    seed: u64,
) -> (f64, Vec<(String, Vec<f32>)>, rng::RngState) {
    rng::manual_seed(seed);
    let loss = m
        .loss(&b.ids, Some(&b.mask), &b.labels, b.count, true)
        .unwrap();
    let g = loss.backward().unwrap();
    let grads = m
        .lora_parameters()
        .into_iter()
        .map(|(n, p)| (n, g.get(&p).unwrap().to_f32_vec().unwrap()))
        .collect();
    (loss.value().to_scalar().unwrap(), grads, rng::state())
}

fn check_step_matches_host(grouped: bool, rank: usize) {
    let m = model(grouped, rank, 0.1, 11);
    let b = batch(24, 5);
    let (want_loss, want_grads, want_rng) = host_step(&m, &b, 99);
    for dev in devices() {
        let mut c = CudaFalcon::new(&m, dev.clone()).unwrap();
        rng::manual_seed(99);
        let loss = c
            .forward_backward(&b.ids, Some(&b.mask), &b.labels, b.count)
            .unwrap();
        assert_eq!(rng::state(), want_rng, "{dev}: dropout stream position");
        let rel = (loss - want_loss).abs() / want_loss.abs();
        eprintln!("loss {loss} host {want_loss} rel {rel:.2e}");
        assert!(
            rel < LOSS_RTOL,
            "{dev}: loss {loss} vs host {want_loss} (rel {rel:.2e})"
        );
        let got = c.gradients().unwrap();
        assert_eq!(got.len(), want_grads.len());
        for ((gn, g), (wn, w)) in got.iter().zip(&want_grads) {
            assert_eq!(gn, wn);
            let w_norm: f64 = w.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            assert!(w_norm > 0.0, "{wn}: the host gradient is zero");
            let e = rel_l2(&g.to_f32_vec().unwrap(), w);
            eprintln!("{dev}: {gn}: relative L2 error {e:.3e}");
            assert!(e < GRAD_RTOL, "{dev}: {gn}: relative L2 error {e:.3e}");
        }
    }
}

#[test]
fn multi_query_step_matches_the_host_model() {
    check_step_matches_host(false, 8);
}

#[test]
fn grouped_step_matches_the_host_model() {
    // Rank 40 takes the tensor-core GEMM for the rank-wide products (the skinny kernel
    // handles up to 32).
    check_step_matches_host(true, 40);
}

#[test]
fn recompute_gives_the_same_step_bit_for_bit() {
    let m = model(false, 8, 0.1, 3);
    let b = batch(20, 8);
    let dev = Device::emulator().unwrap();
    let run = |recompute: bool| {
        let mut c = CudaFalcon::new(&m, dev.clone()).unwrap();
        c.recompute = recompute;
        rng::manual_seed(4);
        let loss = c
            .forward_backward(&b.ids, Some(&b.mask), &b.labels, b.count)
            .unwrap();
        let grads: Vec<Vec<u32>> = c
            .gradients()
            .unwrap()
            .iter()
            .map(|(_, t)| {
                t.to_f32_vec()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            })
            .collect();
        (loss.to_bits(), grads)
    };
    assert_eq!(run(true), run(false));
}

#[test]
fn evaluation_loss_matches_the_host_model() {
    let m = model(true, 8, 0.1, 21);
    let b = batch(16, 2);
    let want = engine::no_grad(|| m.loss(&b.ids, Some(&b.mask), &b.labels, 1.0, false))
        .unwrap()
        .value()
        .to_scalar()
        .unwrap();
    let c = CudaFalcon::new(&m, Device::emulator().unwrap()).unwrap();
    let got = c.loss(&b.ids, Some(&b.mask), &b.labels, 1.0).unwrap();
    assert!((got - want).abs() / want < LOSS_RTOL, "{got} vs {want}");
}

#[test]
fn optimizer_step_matches_host_adamw_on_the_same_gradients() {
    let m = model(false, 8, 0.0, 31);
    let b = batch(16, 6);
    let mut c = CudaFalcon::new(&m, Device::emulator().unwrap()).unwrap();
    let cfg = AdamWConfig {
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    // Two steps, the second with clipping active (a small max norm).
    for (step, max_norm) in [(0, 1e3), (1, 1e-2)] {
        c.forward_backward(&b.ids, Some(&b.mask), &b.labels, b.count)
            .unwrap();
        let grads = c.gradients().unwrap();
        // The host optimizer, from the device's state, on the device's gradients.
        let params: Vec<Var> = m.lora_parameters().into_iter().map(|(_, p)| p).collect();
        c.store_adapters_to_host().unwrap();
        let mut opt = AdamW::new(params.clone(), cfg).unwrap();
        opt.set_state(c.optimizer_state().unwrap()).unwrap();
        let mut store = GradStore::default();
        for (p, (_, g)) in params.iter().zip(&grads) {
            store.insert(p, g.clone());
        }
        let want_norm = clip_grad_norm(&mut store, &params, max_norm).unwrap();
        opt.step(&store, 1e-3).unwrap();
        let want: Vec<Vec<f32>> = params
            .iter()
            .map(|p| p.value().to_f32_vec().unwrap())
            .collect();

        let norm = c.optimizer_step(1e-3, &cfg, max_norm).unwrap();
        assert!(
            (norm - want_norm).abs() <= 1e-5 * want_norm,
            "step {step}: norm {norm} vs {want_norm}"
        );
        c.store_adapters_to_host().unwrap();
        for (p, w) in params.iter().zip(&want) {
            let got = p.value().to_f32_vec().unwrap();
            let e = rel_l2(&got, w);
            assert!(e < 1e-6, "step {step}: parameters differ (rel {e:.2e})");
        }
        // The gradients were cleared.
        assert!(c.gradients().unwrap().iter().all(|(_, g)| g
            .to_f32_vec()
            .unwrap()
            .iter()
            .all(|&x| x == 0.0)));
    }
    // The optimizer state round-trips through its host form.
    let st = c.optimizer_state().unwrap();
    assert!(st.iter().all(|s| s.as_ref().is_some_and(|s| s.step == 2)));
    c.set_optimizer_state(&st).unwrap();
    let again = c.optimizer_state().unwrap();
    for (a, b) in st.iter().zip(&again) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(
            a.exp_avg.to_f32_vec().unwrap(),
            b.exp_avg.to_f32_vec().unwrap()
        );
        assert_eq!(
            a.exp_avg_sq.to_f32_vec().unwrap(),
            b.exp_avg_sq.to_f32_vec().unwrap()
        );
    }
}

#[test]
fn unsupported_models_and_bad_batches_are_clear_errors() {
    let dev = Device::emulator().unwrap();
    // head_dim 32 has no attention kernel.
    let mut m = random_model(config(false, 32), 1, &BaseOptions::default()).unwrap();
    let targets = TargetModules::from_flag("query_key_value");
    attach_lora(&mut m, &LoraConfig::new(4, 8.0, 0.0, targets.clone()), 1).unwrap();
    let e = CudaFalcon::new(&m, dev.clone())
        .err()
        .expect("head_dim 32 is refused");
    assert!(e.to_string().contains("head_dim"), "{e}");
    // No adapters.
    let m = random_model(config(false, 64), 1, &BaseOptions::default()).unwrap();
    let e = CudaFalcon::new(&m, dev.clone())
        .err()
        .expect("no adapters is refused");
    assert!(e.to_string().contains("LoRA"), "{e}");
    // Single (not double) quantized statistics.
    let single = BaseOptions {
        double_quant: false,
        ..BaseOptions::default()
    };
    let mut m = random_model(config(false, 64), 1, &single).unwrap();
    attach_lora(&mut m, &LoraConfig::new(4, 8.0, 0.0, targets.clone()), 1).unwrap();
    let e = CudaFalcon::new(&m, dev.clone())
        .err()
        .expect("single quant is refused");
    assert!(e.to_string().contains("double"), "{e}");
    // A token outside the vocabulary.
    let mut m = random_model(config(false, 64), 1, &BaseOptions::default()).unwrap();
    attach_lora(&mut m, &LoraConfig::new(4, 8.0, 0.0, targets), 1).unwrap();
    let mut c = CudaFalcon::new(&m, dev.clone()).unwrap();
    let ids = Tensor::from_vec(vec![5u32, 152, 7, 8], [1, 4]).unwrap();
    let e = c
        .forward_backward(&ids, None, &[5, 6, 7, 8], 3.0)
        .expect_err("id 152 is out of range");
    assert!(e.to_string().contains("152"), "{e}");
}

#[test]
fn a_non_finite_gradient_norm_applies_nothing_on_the_device() {
    let m = model(false, 8, 0.0, 37);
    let b = batch(16, 8);
    let mut c = CudaFalcon::new(&m, Device::emulator().unwrap()).unwrap();
    let cfg = AdamWConfig::default();
    // One good step first, so that there are moments that a bad step could corrupt.
    c.forward_backward(&b.ids, Some(&b.mask), &b.labels, b.count)
        .unwrap();
    c.optimizer_step(1e-3, &cfg, 1.0).unwrap();
    c.store_adapters_to_host().unwrap();
    let params: Vec<Var> = m.lora_parameters().into_iter().map(|(_, p)| p).collect();
    let before: Vec<Vec<u32>> = params
        .iter()
        .map(|p| bits(&p.value().to_f32_vec().unwrap()))
        .collect();
    let moments = |c: &CudaFalcon| -> Vec<(u64, Vec<u32>, Vec<u32>)> {
        c.optimizer_state()
            .unwrap()
            .into_iter()
            .map(|s| {
                let s = s.expect("state after one step");
                (
                    s.step,
                    bits(&s.exp_avg.to_f32_vec().unwrap()),
                    bits(&s.exp_avg_sq.to_f32_vec().unwrap()),
                )
            })
            .collect()
    };
    let state_before = moments(&c);
    // A token count so small that 1/count overflows f32 makes the gradients infinite or NaN.
    c.forward_backward(&b.ids, Some(&b.mask), &b.labels, 1e-300)
        .unwrap();
    let norm = c.optimizer_step(1e-3, &cfg, 1.0).unwrap();
    assert!(!norm.is_finite(), "the norm is {norm}");
    c.store_adapters_to_host().unwrap();
    for (p, want) in params.iter().zip(&before) {
        assert!(
            bits(&p.value().to_f32_vec().unwrap()) == *want,
            "an adapter changed"
        );
    }
    assert!(moments(&c) == state_before, "the AdamW state changed");
    assert!(c.gradients().unwrap().iter().all(|(_, g)| g
        .to_f32_vec()
        .unwrap()
        .iter()
        .all(|&x| x == 0.0)));
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
