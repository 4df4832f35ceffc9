//! Pointwise kernels (kernels-cu `pointwise.cu`): exact GELU forward/backward, the three-term
//! residual add, the embedding gather and its scatter-add backward, on the emulator (and a GPU
//! when one is present) against the engine's CPU reference in f64 on the same inputs.
//!
//! Tolerances (u = 2⁻²⁴):
//! - GELU f32: |Δ| ≤ 8·u·(|x| + 1) (forward) and 8·u·(|x| + 1)·|dy| (backward): erff/expf are
//!   within 2 ulp on the GPU and the host; the few f32 products and sums add a few more ulp of
//!   terms bounded by |x| (½x·(1+erf) has |terms| ≤ |x|; Φ + xφ has |terms| ≤ 1 + |x|·0.4).
//! - GELU bf16: the f32 bound plus one rounding of the output, 2⁻⁸·|ref|.
//! - residual add: f32 |Δ| ≤ 2·u·(|x|+|a|+|b|); bf16 one rounding more.
//! - embedding forward: bit-exact copies; backward (f32 sums in token order, the reference's
//!   order): |Δ| ≤ count·u·Σ|dy| per element, and bitwise identical across runs.

use engine::ops::gelu::{gelu_grad_scalar, gelu_scalar};
use engine::rng;
use engine::testing::F32_UNIT_ROUNDOFF as U;
use half::bf16;
use integration_tests::devices;
use kernels_cu::ops::pointwise;
use kernels_cu::{DType, Device};
use proptest::prelude::*;

fn round(v: f64, bf: bool) -> f64 {
    if bf {
        bf16::from_f64(v).to_f64()
    } else {
        v as f32 as f64
    }
}

fn upload(dev: &Device, v: &[f64], bf: bool) -> kernels_cu::Buffer {
    if bf {
        dev.htod(&v.iter().map(|&x| bf16::from_f64(x)).collect::<Vec<_>>())
    } else {
        dev.htod(&v.iter().map(|&x| x as f32).collect::<Vec<_>>())
    }
    .expect("upload")
}

fn download(dev: &Device, b: &kernels_cu::Buffer) -> Vec<f64> {
    match b.dtype() {
        DType::BF16 => dev
            .dtoh::<bf16>(b)
            .unwrap()
            .iter()
            .map(|x| x.to_f64())
            .collect(),
        _ => dev
            .dtoh::<f32>(b)
            .unwrap()
            .iter()
            .map(|&x| x as f64)
            .collect(),
    }
}

fn check(what: &str, got: &[f64], want: &[f64], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for i in 0..got.len() {
        let err = (got[i] - want[i]).abs();
        assert!(
            err <= tol(i),
            "{what}[{i}]: got {} want {} (|Δ| {err:e} > {:e})",
            got[i],
            want[i],
            tol(i)
        );
    }
}

fn gelu_case(n: usize, seed: u64, bf: bool, dev: &Device) {
    // Wide range: tails (erf → ±1), the origin, and moderate values.
    let x: Vec<f64> = (0..n)
        .map(|i| round(rng::normal_f64(seed, i as u64) * 3.0, bf))
        .collect();
    let dy: Vec<f64> = (0..n)
        .map(|i| round(rng::normal_f64(seed ^ 9, i as u64), bf))
        .collect();
    let dt = if bf { DType::BF16 } else { DType::F32 };
    let (xb, dyb) = (upload(dev, &x, bf), upload(dev, &dy, bf));
    let mut y = dev.alloc(dt, n).unwrap();
    pointwise::gelu_forward(dev, &mut y, &xb).unwrap();
    let y_ref: Vec<f64> = x.iter().map(|&v| gelu_scalar(v)).collect();
    let bft = |r: f64| if bf { r.abs() / 256.0 } else { 0.0 };
    check("gelu", &download(dev, &y), &y_ref, |i| {
        8.0 * U * (x[i].abs() + 1.0) + bft(y_ref[i])
    });
    let mut dx = dev.alloc(dt, n).unwrap();
    pointwise::gelu_backward(dev, &mut dx, &xb, &dyb).unwrap();
    let dx_ref: Vec<f64> = x
        .iter()
        .zip(&dy)
        .map(|(&v, &g)| g * gelu_grad_scalar(v))
        .collect();
    check("gelu_backward", &download(dev, &dx), &dx_ref, |i| {
        8.0 * U * (x[i].abs() + 1.0) * dy[i].abs() + bft(dx_ref[i])
    });
}

fn add3_case(n: usize, seed: u64, bf: bool, dev: &Device) {
    let gen = |s: u64| -> Vec<f64> {
        (0..n)
            .map(|i| round(rng::normal_f64(seed ^ s, i as u64) * 4.0, bf))
            .collect()
    };
    let (x, a, b) = (gen(1), gen(2), gen(3));
    let dt = if bf { DType::BF16 } else { DType::F32 };
    let mut out = dev.alloc(dt, n).unwrap();
    pointwise::residual_add3(
        dev,
        &mut out,
        &upload(dev, &x, bf),
        &upload(dev, &a, bf),
        &upload(dev, &b, bf),
    )
    .unwrap();
    let want: Vec<f64> = (0..n).map(|i| x[i] + a[i] + b[i]).collect();
    check("residual_add3", &download(dev, &out), &want, |i| {
        2.0 * U * (x[i].abs() + a[i].abs() + b[i].abs())
            + if bf { want[i].abs() / 256.0 } else { 0.0 }
    });
}

fn embedding_case(n: usize, vocab: usize, d: usize, seed: u64, bf: bool, dev: &Device) {
    // Few distinct ids so repeats (the scatter-add case) are common.
    let ids: Vec<u32> = (0..n)
        .map(|i| (rng::bits(seed, i as u64) % vocab as u64) as u32)
        .collect();
    let table: Vec<f64> = (0..vocab * d)
        .map(|i| round(rng::normal_f64(seed ^ 5, i as u64), bf))
        .collect();
    let dy: Vec<f64> = (0..n * d)
        .map(|i| round(rng::normal_f64(seed ^ 6, i as u64), bf))
        .collect();
    let dt = if bf { DType::BF16 } else { DType::F32 };
    let idb = dev.htod(&ids).unwrap();
    let mut out = dev.alloc(dt, n * d).unwrap();
    let bad = pointwise::embedding_forward(dev, &mut out, &idb, &upload(dev, &table, bf), vocab, d)
        .unwrap();
    assert_eq!(dev.dtoh::<i32>(&bad).unwrap(), vec![i32::MAX]);
    let mut want = Vec::with_capacity(n * d);
    for &id in &ids {
        want.extend_from_slice(&table[id as usize * d..(id as usize + 1) * d]);
    }
    assert_eq!(
        download(dev, &out),
        want,
        "embedding forward is a bit-exact gather"
    );

    let dyb = upload(dev, &dy, bf);
    let mut dtab = dev.alloc(DType::F32, vocab * d).unwrap();
    pointwise::embedding_backward(dev, &mut dtab, &idb, &dyb, vocab, d).unwrap();
    let mut gt = vec![0.0f64; vocab * d];
    let mut mag = vec![0.0f64; vocab * d];
    let mut count = vec![0usize; vocab];
    for (r, &id) in ids.iter().enumerate() {
        count[id as usize] += 1;
        for j in 0..d {
            gt[id as usize * d + j] += dy[r * d + j];
            mag[id as usize * d + j] += dy[r * d + j].abs();
        }
    }
    let got = dev.dtoh::<f32>(&dtab).unwrap();
    check(
        "embedding_backward",
        &got.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        &gt,
        |i| count[i / d] as f64 * U * mag[i],
    );
    let mut dtab2 = dev.alloc(DType::F32, vocab * d).unwrap();
    pointwise::embedding_backward(dev, &mut dtab2, &idb, &dyb, vocab, d).unwrap();
    assert_eq!(got, dev.dtoh::<f32>(&dtab2).unwrap(), "reproducible");
}

fn lens() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(1usize),
        Just(7),
        Just(8),
        Just(9),
        Just(4099),
        1usize..3000
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn gelu_matches_reference(n in lens(), bf: bool, seed: u64) {
        for dev in devices() {
            gelu_case(n, seed, bf, &dev);
        }
    }

    #[test]
    fn residual_add3_matches_reference(n in lens(), bf: bool, seed: u64) {
        for dev in devices() {
            add3_case(n, seed, bf, &dev);
        }
    }

    #[test]
    fn embedding_matches_reference(n in 1usize..40, vocab in 1usize..23, d in 1usize..150, bf: bool, seed: u64) {
        for dev in devices() {
            embedding_case(n, vocab, d, seed, bf, &dev);
        }
    }
}

#[test]
fn embedding_out_of_range_id_is_reported() {
    let dev = Device::emulator().unwrap();
    let ids = dev.htod(&[0u32, 5, 1, 9]).unwrap();
    let table = dev.htod(&[1.0f32; 5 * 3]).unwrap();
    let mut out = dev.alloc(DType::F32, 4 * 3).unwrap();
    let bad = pointwise::embedding_forward(&dev, &mut out, &ids, &table, 5, 3).unwrap();
    assert_eq!(dev.dtoh::<i32>(&bad).unwrap(), vec![1]);
    let o = dev.dtoh::<f32>(&out).unwrap();
    assert!(o[3..6].iter().all(|v| v.is_nan()) && o[0..3] == [1.0; 3]);
    // Shape errors are errors, not panics.
    assert!(pointwise::embedding_forward(&dev, &mut out, &ids, &table, 4, 3).is_err());
    let mut y = dev.alloc(DType::F32, 3).unwrap();
    assert!(pointwise::gelu_forward(&dev, &mut y, &table).is_err());
}
