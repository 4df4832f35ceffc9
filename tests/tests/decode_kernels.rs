//! The decoding kernels (kernels-cu `decode.cu`) on the emulator (and a GPU when one is
//! present) against float64 references, on fresh random inputs with NaN-poisoned outputs.
//!
//! - GEMVs: the reference is the float64 product of the same bf16 inputs (for the 4-bit GEMV,
//!   the weight `dequantize_f32` produces: table value times absmax). Products of bf16 values
//!   are exact in fp32; the K-term fp32 accumulation (per lane, then the butterfly) errs by at
//!   most K·u·mag with mag = Σ_k |x_k·w_k| and u = 2⁻²⁴; tolerance (K + 16)·u·mag (+ u·|β·Y|
//!   for the epilogue), plus 2⁻⁸·|ref| for the rounding to a bf16 output. The 4-bit GEMV
//!   multiplies bf16(table value) by X and scales each 64-column block's fp32 sum by its
//!   absmax: each weight is off by at most one bf16 rounding of its table value, so its
//!   tolerance adds 2⁻⁹·mag. M covers 1, ragged, 32 and > 32 (two
//!   launches), K covers one and several 1024-wide lane strides with idle lanes in the last.
//! - Attention: softmax(scale·q·Kᵀ)·V in float64 over the visible keys. Cache columns of
//!   padding and past `len` hold NaN: a kernel that multiplied a masked key by zero instead of
//!   skipping it would return NaN. Tolerance: 2⁻⁸·|ref| (bf16 output) + 2⁻¹²·max|v| (the f32
//!   exponentials and sums over ≤ 600 keys).

use engine::nf4::{QuantConfig, QuantizedWeight};
use engine::testing::{Rng, F32_UNIT_ROUNDOFF as U};
use half::bf16;
use integration_tests::devices;
use kernels_cu::ops::decode::{self, CacheShape};
use kernels_cu::ops::gemm::Nf4Weight;
use kernels_cu::{DType, Device};
use model_falcon::cuda::nf4_parts;

/// The 4-bit GEMV's weight error relative to |w|: one bf16 rounding of the table value.
const NF4_REL: f64 = 1.0 / 512.0;

fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

fn bf16s(rng: &mut Rng, n: usize) -> Vec<bf16> {
    (0..n)
        .map(|i| bf16::from_f64(unit(rng) * (1.0 + (i % 7) as f64 * 0.5)))
        .collect()
}

fn quantize(rng: &mut Rng, n: usize, k: usize) -> QuantizedWeight {
    let vals: Vec<f32> = (0..n * k)
        .map(|i| (unit(rng) * 0.05 * (1.0 + (i / k) as f64 % 5.0)) as f32)
        .collect();
    QuantizedWeight::quantize(&vals, n, k, QuantConfig::default()).expect("valid quantization")
}

fn to_f64(dev: &Device, y: &kernels_cu::Buffer) -> Vec<f64> {
    match y.dtype() {
        DType::F32 => dev
            .dtoh::<f32>(y)
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect(),
        _ => dev
            .dtoh::<bf16>(y)
            .unwrap()
            .iter()
            .map(|v| v.to_f64())
            .collect(),
    }
}

/// Checks `y = α·x·wᵀ + β·y0` against float64, `w` `[n, k]` as f64.
#[allow(clippy::too_many_arguments)]
fn check_gemv(
    got: &[f64],
    x: &[bf16],
    w: &[f64],
    y0: &[f64],
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    beta: f64,
    bf16_out: bool,
    weight_rel: f64,
    what: &str,
) {
    for i in 0..m {
        for j in 0..n {
            let (mut dot, mut mag) = (0.0f64, 0.0f64);
            for l in 0..k {
                let p = x[i * k + l].to_f64() * w[j * k + l];
                dot += p;
                mag += p.abs();
            }
            let want = alpha * dot + beta * y0[i * n + j];
            let mut tol = ((k as f64 + 16.0) * U + weight_rel) * mag * alpha.abs()
                + U * (beta * y0[i * n + j]).abs()
                + 1e-30;
            if bf16_out {
                tol += want.abs() / 256.0;
            }
            let g = got[i * n + j];
            assert!(
                (g - want).abs() <= tol,
                "{what}: y[{i}][{j}] = {g}, want {want} (tol {tol}; m {m} n {n} k {k})"
            );
        }
    }
}

#[test]
fn gemv_nf4_matches_the_float64_product_of_the_dequantized_weight() {
    let mut seed = 11;
    for (m, n, k) in [
        (1, 37, 64),
        (3, 16, 1088),
        (17, 9, 2112),
        (32, 24, 256),
        (40, 13, 128),
    ] {
        seed += 1;
        let mut rng = Rng::from_state(seed);
        let q = quantize(&mut rng, n, k);
        let w: Vec<f64> = q.dequantize_f32().iter().map(|&v| v as f64).collect();
        let x = bf16s(&mut rng, m * k);
        let y0: Vec<f64> = bf16s(&mut rng, m * n).iter().map(|v| v.to_f64()).collect();
        for dev in devices() {
            let wd = Nf4Weight::upload(&dev, &nf4_parts("w", &q).unwrap()).unwrap();
            let xd = dev.htod(&x).unwrap();
            // f32 output, β = 0 on a NaN-poisoned Y.
            let mut y = dev.htod(&vec![f32::NAN; m * n]).unwrap();
            decode::gemv_nf4(&dev, &xd, &wd, &mut y, m, 1.0, 0.0).unwrap();
            let got = to_f64(&dev, &y);
            check_gemv(
                &got, &x, &w, &y0, m, n, k, 1.0, 0.0, false, NF4_REL, "nf4 f32",
            );
            // bf16 output accumulating into Y.
            let y0b: Vec<bf16> = y0.iter().map(|&v| bf16::from_f64(v)).collect();
            let mut y = dev.htod(&y0b).unwrap();
            decode::gemv_nf4(&dev, &xd, &wd, &mut y, m, 0.5, 1.0).unwrap();
            let got = to_f64(&dev, &y);
            check_gemv(
                &got,
                &x,
                &w,
                &y0,
                m,
                n,
                k,
                0.5,
                1.0,
                true,
                NF4_REL,
                "nf4 bf16 β=1",
            );
        }
    }
}

/// Split-K (several blocks per 16-row group, the last one adding their planes in order)
/// matches the float64 product for every split factor, gives the same bits when run again
/// (the counters are left zero for the next launch), and fuses its epilogue after the sum.
#[test]
fn gemv_nf4_split_k_matches_the_float64_product_and_resets_its_counters() {
    use kernels_cu::ops::decode::{Epilogue, GemvScratch};
    let mut seed = 91;
    for (m, n, k) in [(1, 40, 1536), (7, 16, 2048), (33, 24, 1536)] {
        seed += 1;
        let mut rng = Rng::from_state(seed);
        let q = quantize(&mut rng, n, k);
        let w: Vec<f64> = q.dequantize_f32().iter().map(|&v| v as f64).collect();
        let x = bf16s(&mut rng, m * k);
        let r1 = bf16s(&mut rng, m * n);
        let zeros = vec![0.0f64; m * n];
        for dev in devices() {
            let wd = Nf4Weight::upload(&dev, &nf4_parts("w", &q).unwrap()).unwrap();
            let xd = dev.htod(&x).unwrap();
            let r1d = dev.htod(&r1).unwrap();
            let mut scratch = GemvScratch::new(&dev, n).unwrap();
            for splits in 1..=3 {
                let mut first = None;
                for round in 0..2 {
                    let mut y = dev.htod(&vec![f32::NAN; m * n]).unwrap();
                    decode::gemv_nf4_split(
                        &dev,
                        &xd,
                        &wd,
                        &mut y,
                        m,
                        1.0,
                        0.0,
                        Epilogue::None,
                        splits,
                        Some(&mut scratch),
                    )
                    .unwrap();
                    let got = to_f64(&dev, &y);
                    let what = format!("split {splits} round {round}");
                    check_gemv(
                        &got, &x, &w, &zeros, m, n, k, 1.0, 0.0, false, NF4_REL, &what,
                    );
                    let bits: Vec<u64> = got.iter().map(|v| v.to_bits()).collect();
                    match &first {
                        None => first = Some(bits),
                        Some(b) => assert_eq!(b, &bits, "{dev}: {what} differs from round 0"),
                    }
                }
                // The residual epilogue after a split sum: y = r1 + r1 + bf16(product).
                let mut plain = dev.htod(&vec![bf16::NAN; m * n]).unwrap();
                let none = Epilogue::None;
                let s = Some(&mut scratch);
                decode::gemv_nf4_split(&dev, &xd, &wd, &mut plain, m, 1.0, 0.0, none, splits, s)
                    .unwrap();
                let mut fused = dev.htod(&vec![bf16::NAN; m * n]).unwrap();
                let epi = Epilogue::Residual(&r1d, &r1d);
                let s = Some(&mut scratch);
                decode::gemv_nf4_split(&dev, &xd, &wd, &mut fused, m, 1.0, 0.0, epi, splits, s)
                    .unwrap();
                let p: Vec<bf16> = dev.dtoh(&plain).unwrap();
                let f: Vec<bf16> = dev.dtoh(&fused).unwrap();
                for i in 0..m * n {
                    let want = bf16::from_f32(r1[i].to_f32() + r1[i].to_f32() + p[i].to_f32());
                    assert_eq!(
                        f[i].to_bits(),
                        want.to_bits(),
                        "{dev}: split {splits} residual {i}"
                    );
                }
            }
        }
    }
}

/// The fused epilogues of the 4-bit GEMV store bit for bit what the GEMV followed by the
/// separate kernel stores (GELU; the three-term residual), including for M > 32 (two launches)
/// and N not a multiple of the 16-row block.
#[test]
fn gemv_nf4_epilogues_equal_the_gemv_then_the_separate_kernel() {
    use kernels_cu::ops::decode::Epilogue;
    use kernels_cu::ops::pointwise;
    let mut seed = 71;
    for (m, n, k) in [(1, 37, 128), (5, 48, 1088), (40, 20, 192)] {
        seed += 1;
        let mut rng = Rng::from_state(seed);
        let q = quantize(&mut rng, n, k);
        let x = bf16s(&mut rng, m * k);
        let r1 = bf16s(&mut rng, m * n);
        let r2 = bf16s(&mut rng, m * n);
        for dev in devices() {
            let wd = Nf4Weight::upload(&dev, &nf4_parts("w", &q).unwrap()).unwrap();
            let xd = dev.htod(&x).unwrap();
            let (r1d, r2d) = (dev.htod(&r1).unwrap(), dev.htod(&r2).unwrap());
            let poisoned = || dev.htod(&vec![bf16::NAN; m * n]).unwrap();
            let mut plain = poisoned();
            decode::gemv_nf4(&dev, &xd, &wd, &mut plain, m, 1.0, 0.0).unwrap();
            let bits = |b: &kernels_cu::Buffer| -> Vec<u16> {
                dev.dtoh::<bf16>(b)
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };

            let mut want = poisoned();
            pointwise::gelu_forward(&dev, &mut want, &plain).unwrap();
            let mut got = poisoned();
            decode::gemv_nf4_then(&dev, &xd, &wd, &mut got, m, 1.0, 0.0, Epilogue::Gelu, None)
                .unwrap();
            assert_eq!(
                bits(&got),
                bits(&want),
                "{dev}: GELU epilogue m {m} n {n} k {k}"
            );

            let mut want = poisoned();
            pointwise::residual_add3(&dev, &mut want, &r1d, &r2d, &plain).unwrap();
            let mut got = poisoned();
            let epi = Epilogue::Residual(&r1d, &r2d);
            decode::gemv_nf4_then(&dev, &xd, &wd, &mut got, m, 1.0, 0.0, epi, None).unwrap();
            assert_eq!(
                bits(&got),
                bits(&want),
                "{dev}: residual epilogue m {m} n {n} k {k}"
            );
            assert!(bits(&got).iter().all(|&b| bf16::from_bits(b).is_finite()));
        }
    }
}

#[test]
fn gemv_bf16_matches_the_float64_product() {
    let mut seed = 101;
    // K past one and two rounds of the kernel's 4 loads per lane (1024 columns) on both entry
    // points (M <= 8 and M <= 32).
    for (m, n, k) in [
        (1, 33, 8),
        (5, 20, 264),
        (3, 9, 2312),
        (12, 5, 2056),
        (32, 7, 1032),
        (35, 11, 64),
    ] {
        seed += 1;
        let mut rng = Rng::from_state(seed);
        let wb = bf16s(&mut rng, n * k);
        let w: Vec<f64> = wb.iter().map(|v| v.to_f64()).collect();
        let x = bf16s(&mut rng, m * k);
        let y0: Vec<f64> = bf16s(&mut rng, m * n).iter().map(|v| v.to_f64()).collect();
        for dev in devices() {
            let (xd, wd) = (dev.htod(&x).unwrap(), dev.htod(&wb).unwrap());
            let mut y = dev.htod(&vec![f32::NAN; m * n]).unwrap();
            decode::gemv_bf16(&dev, &xd, &wd, &mut y, m, n, k, 1.0, 0.0).unwrap();
            check_gemv(
                &to_f64(&dev, &y),
                &x,
                &w,
                &y0,
                m,
                n,
                k,
                1.0,
                0.0,
                false,
                0.0,
                "bf16 f32",
            );
            let y0b: Vec<bf16> = y0.iter().map(|&v| bf16::from_f64(v)).collect();
            let mut y = dev.htod(&y0b).unwrap();
            decode::gemv_bf16(&dev, &xd, &wd, &mut y, m, n, k, -1.5, 1.0).unwrap();
            check_gemv(
                &to_f64(&dev, &y),
                &x,
                &w,
                &y0,
                m,
                n,
                k,
                -1.5,
                1.0,
                true,
                0.0,
                "bf16 bf16 β=1",
            );
        }
    }
}

#[test]
fn gemv_rejects_misaligned_and_mismatched_operands() {
    let mut rng = Rng::from_state(5);
    for dev in devices() {
        let x = dev.htod(&bf16s(&mut rng, 2 * 72)).unwrap();
        let w = dev.htod(&bf16s(&mut rng, 3 * 64)).unwrap();
        let mut y = dev.alloc(DType::F32, 6).unwrap();
        let e = decode::gemv_bf16(&dev, &x, &w, &mut y, 2, 3, 64, 1.0, 0.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("X"), "{e}");
        let xv = x.view(1, 2 * 64).unwrap();
        let e = decode::gemv_bf16(&dev, &xv, &w, &mut y, 2, 3, 64, 1.0, 0.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("aligned"), "{e}");
    }
}

struct AttnCase {
    batch: usize,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    len: usize,
    /// Left padding of each sequence (masked columns at the start).
    pads: Vec<usize>,
}

fn run_attention(c: &AttnCase, seed: u64) {
    let mut rng = Rng::from_state(seed);
    let shape = CacheShape {
        batch: c.batch,
        kv_heads: c.kv_heads,
        capacity: c.capacity,
        head_dim: c.head_dim,
    };
    let d = c.head_dim;
    let q = bf16s(&mut rng, c.batch * c.q_heads * d);
    let mut kc = bf16s(&mut rng, shape.elems());
    let mut vc = bf16s(&mut rng, shape.elems());
    let mut mask = vec![0u8; c.batch * c.capacity];
    for b in 0..c.batch {
        for j in 0..c.capacity {
            let visible = j >= c.pads[b] && j < c.len;
            mask[b * c.capacity + j] = visible as u8;
            if !visible {
                // Padding and unfilled columns hold NaN: they must never be read into a sum.
                for h in 0..c.kv_heads {
                    let at = ((b * c.kv_heads + h) * c.capacity + j) * d;
                    kc[at..at + d].fill(bf16::NAN);
                    vc[at..at + d].fill(bf16::NAN);
                }
            }
        }
    }
    let scale = 1.0 / (d as f64).sqrt();
    let group = c.q_heads / c.kv_heads;
    let mut want = vec![0.0f64; c.batch * c.q_heads * d];
    let mut vmax = 0.0f64;
    for b in 0..c.batch {
        for h in 0..c.q_heads {
            let kvh = h / group;
            let qrow = &q[(b * c.q_heads + h) * d..][..d];
            let keys: Vec<usize> = (0..c.len)
                .filter(|&j| mask[b * c.capacity + j] != 0)
                .collect();
            let s: Vec<f64> = keys
                .iter()
                .map(|&j| {
                    let krow = &kc[((b * c.kv_heads + kvh) * c.capacity + j) * d..][..d];
                    scale
                        * qrow
                            .iter()
                            .zip(krow)
                            .map(|(a, b)| a.to_f64() * b.to_f64())
                            .sum::<f64>()
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|v| (v - mx).exp()).sum();
            for (i, &j) in keys.iter().enumerate() {
                let p = (s[i] - mx).exp() / z;
                let vrow = &vc[((b * c.kv_heads + kvh) * c.capacity + j) * d..][..d];
                for e in 0..d {
                    let v = vrow[e].to_f64();
                    vmax = vmax.max(v.abs());
                    want[(b * c.q_heads + h) * d + e] += p * v;
                }
            }
        }
    }
    for dev in devices() {
        let qd = dev.htod(&q).unwrap();
        let (kd, vd) = (dev.htod(&kc).unwrap(), dev.htod(&vc).unwrap());
        let md = dev.htod(&mask).unwrap();
        let o = decode::attention(
            &dev,
            &qd,
            &kd,
            &vd,
            &md,
            &shape,
            c.q_heads,
            c.len,
            scale as f32,
        )
        .unwrap();
        let got = to_f64(&dev, &o);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let tol = w.abs() / 256.0 + vmax / 4096.0 + 1e-6;
            assert!(
                (g - w).abs() <= tol,
                "o[{i}] = {g}, want {w} (tol {tol}; hq {} hkv {} d {d} len {})",
                c.q_heads,
                c.kv_heads,
                c.len
            );
        }
        // Deterministic: a second run gives the same bits.
        let again = decode::attention(
            &dev,
            &qd,
            &kd,
            &vd,
            &md,
            &shape,
            c.q_heads,
            c.len,
            scale as f32,
        )
        .unwrap();
        assert_eq!(
            dev.dtoh::<bf16>(&o).unwrap(),
            dev.dtoh::<bf16>(&again).unwrap()
        );
    }
}

#[test]
fn decode_attention_matches_the_float64_softmax_over_visible_keys() {
    let cases = [
        // Multi-query, one chunk, left padding.
        AttnCase {
            batch: 2,
            q_heads: 4,
            kv_heads: 1,
            head_dim: 64,
            capacity: 40,
            len: 33,
            pads: vec![0, 7],
        },
        // Grouped, several chunks (len > 256), a fully padded sequence (o = 0).
        AttnCase {
            batch: 3,
            q_heads: 4,
            kv_heads: 2,
            head_dim: 128,
            capacity: 600,
            len: 530,
            pads: vec![3, 0, 600],
        },
        // Multi-head (hkv = hq), one key.
        AttnCase {
            batch: 1,
            q_heads: 2,
            kv_heads: 2,
            head_dim: 64,
            capacity: 4,
            len: 1,
            pads: vec![0],
        },
        // A chunk that is entirely padding (pad > 256) before visible keys.
        AttnCase {
            batch: 1,
            q_heads: 2,
            kv_heads: 1,
            head_dim: 64,
            capacity: 300,
            len: 300,
            pads: vec![270],
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        run_attention(c, 900 + i as u64);
    }
}

#[test]
fn kv_write_and_take_last_rows_move_the_right_rows() {
    let mut rng = Rng::from_state(77);
    let shape = CacheShape {
        batch: 2,
        kv_heads: 3,
        capacity: 10,
        head_dim: 64,
    };
    let s = 4;
    let src = bf16s(&mut rng, 2 * 3 * s * 64);
    let init = bf16s(&mut rng, shape.elems());
    for dev in devices() {
        let mut cache = dev.htod(&init).unwrap();
        let sd = dev.htod(&src).unwrap();
        decode::kv_write(&dev, &mut cache, &sd, &shape, s, 5).unwrap();
        let got = dev.dtoh::<bf16>(&cache).unwrap();
        for bh in 0..6 {
            for j in 0..10 {
                let row = &got[(bh * 10 + j) * 64..][..64];
                let want = if (5..9).contains(&j) {
                    &src[(bh * s + j - 5) * 64..][..64]
                } else {
                    &init[(bh * 10 + j) * 64..][..64]
                };
                assert_eq!(row, want, "cache row {bh}/{j}");
            }
        }
        let e = decode::kv_write(&dev, &mut cache, &sd, &shape, s, 7)
            .unwrap_err()
            .to_string();
        assert!(e.contains("capacity"), "{e}");

        let (b, t, w) = (3, 5, 24);
        let x = bf16s(&mut rng, b * t * w);
        let xd = dev.htod(&x).unwrap();
        let mut out = dev.htod(&vec![bf16::NAN; b * w]).unwrap();
        decode::take_last_rows(&dev, &mut out, &xd, b, t, w).unwrap();
        let got = dev.dtoh::<bf16>(&out).unwrap();
        for r in 0..b {
            assert_eq!(&got[r * w..][..w], &x[(r * t + t - 1) * w..][..w]);
        }
    }
}
