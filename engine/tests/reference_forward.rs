//! Forward values of the CPU ops against naive float64 definitions written independently here.

use engine::ops;
use engine::testing::{self, randn};
use engine::{DType, Tensor, Var};

fn v64(t: &Var) -> Vec<f64> {
    t.value().to_f64_vec().unwrap()
}

/// Naive attention: explicit scores, masks, softmax and weighted sum, per (batch, head).
#[allow(clippy::too_many_arguments)]
fn naive_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    b: usize,
    hq: usize,
    hkv: usize,
    t: usize,
    d: usize,
    mask: &[u8],
    causal: bool,
    scale: f64,
) -> Vec<f64> {
    let mut out = vec![0.0; b * hq * t * d];
    for bi in 0..b {
        for h in 0..hq {
            let kh = h / (hq / hkv);
            for i in 0..t {
                let mut w = vec![f64::NEG_INFINITY; t];
                for j in 0..t {
                    if (causal && j > i) || mask[bi * t + j] == 0 {
                        continue;
                    }
                    let mut s = 0.0;
                    for c in 0..d {
                        s += q[((bi * hq + h) * t + i) * d + c]
                            * k[((bi * hkv + kh) * t + j) * d + c];
                    }
                    w[j] = s * scale;
                }
                let m = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let z: f64 = w.iter().map(|x| (x - m).exp()).sum();
                for j in 0..t {
                    let p = (w[j] - m).exp() / z;
                    for c in 0..d {
                        out[((bi * hq + h) * t + i) * d + c] +=
                            p * v[((bi * hkv + kh) * t + j) * d + c];
                    }
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_naive_for_mqa_gqa_and_padding() {
    let (b, t, d) = (2, 7, 8);
    // Second sequence has 3 padding keys at the end, the first a padding key in the middle too.
    let mask: Vec<u8> = vec![1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0];
    let mt = Tensor::from_vec(mask.clone(), [b, t]).unwrap();
    for (hq, hkv) in [(6, 1), (6, 2), (6, 3), (4, 4)] {
        for causal in [true, false] {
            let q = randn([b, hq, t, d], DType::F64, 1, 1.0);
            let k = randn([b, hkv, t, d], DType::F64, 2, 1.0);
            let v = randn([b, hkv, t, d], DType::F64, 3, 1.0);
            let want = naive_attention(
                &q.to_f64_vec().unwrap(),
                &k.to_f64_vec().unwrap(),
                &v.to_f64_vec().unwrap(),
                b,
                hq,
                hkv,
                t,
                d,
                &mask,
                causal,
                0.35,
            );
            let got = ops::attention(
                &Var::constant(q.clone()),
                &Var::constant(k.clone()),
                &Var::constant(v.clone()),
                Some(&mt),
                causal,
                0.35,
            )
            .unwrap();
            assert_close(&v64(&got), &want, 1e-12, "attention f64");
            // f32 path: inputs rounded to f32, compared with the f64 truth on those inputs.
            let (q32, k32, v32) = (
                q.to_dtype(DType::F32).unwrap(),
                k.to_dtype(DType::F32).unwrap(),
                v.to_dtype(DType::F32).unwrap(),
            );
            let want32 = naive_attention(
                &q32.to_f64_vec().unwrap(),
                &k32.to_f64_vec().unwrap(),
                &v32.to_f64_vec().unwrap(),
                b,
                hq,
                hkv,
                t,
                d,
                &mask,
                causal,
                0.35,
            );
            let got32 = ops::attention(
                &Var::constant(q32),
                &Var::constant(k32),
                &Var::constant(v32),
                Some(&mt),
                causal,
                0.35,
            )
            .unwrap();
            assert_close(&v64(&got32), &want32, 2e-6, "attention f32");
        }
    }
}

#[test]
fn layer_norm_matches_definition() {
    let x = randn([3, 10], DType::F64, 4, 3.0);
    let g = randn([10], DType::F64, 5, 1.0);
    let bta = randn([10], DType::F64, 6, 1.0);
    let y = ops::layer_norm(
        &Var::constant(x.clone()),
        &Var::constant(g.clone()),
        &Var::constant(bta.clone()),
        1e-5,
    )
    .unwrap();
    let (xs, gs, bs) = (
        x.to_f64_vec().unwrap(),
        g.to_f64_vec().unwrap(),
        bta.to_f64_vec().unwrap(),
    );
    let mut want = vec![];
    for r in xs.chunks(10) {
        let mean = r.iter().sum::<f64>() / 10.0;
        let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 10.0;
        for (i, v) in r.iter().enumerate() {
            want.push((v - mean) / (var + 1e-5).sqrt() * gs[i] + bs[i]);
        }
    }
    assert_close(&v64(&y), &want, 1e-12, "layer_norm");
}

#[test]
fn gelu_known_values() {
    // Φ values from tables: gelu(x) = xΦ(x).
    let x = Tensor::from_vec(vec![-3.0f64, -1.0, 0.0, 0.5, 1.0, 2.0], [6]).unwrap();
    let want = [
        -0.004_049_694_094_890_3,
        -0.158_655_253_931_457,
        0.0,
        0.345_731_230_637_006_6,
        0.841_344_746_068_543,
        1.954_499_736_103_642,
    ];
    assert_close(
        &v64(&ops::gelu(&Var::constant(x)).unwrap()),
        &want,
        1e-11,
        "gelu",
    );
}

#[test]
fn rope_matches_rotate_half_definition() {
    let (b, h, t, d) = (1, 2, 5, 8);
    let x = randn([b, h, t, d], DType::F64, 7, 1.0);
    let pos: Vec<u32> = vec![0, 1, 2, 3, 100];
    let y = ops::rope(
        &Var::constant(x.clone()),
        &Tensor::from_vec(pos.clone(), [b, t]).unwrap(),
        10_000.0,
    )
    .unwrap();
    let xs = x.to_f64_vec().unwrap();
    let mut want = vec![0.0; xs.len()];
    for hh in 0..h {
        for s in 0..t {
            let row = &xs[(hh * t + s) * d..(hh * t + s + 1) * d];
            // cos/sin = cat(freqs, freqs); rotate_half(x) = cat(-x2, x1)
            for i in 0..d {
                let f = pos[s] as f64 / 10_000f64.powf((2 * (i % (d / 2))) as f64 / d as f64);
                let rot = if i < d / 2 {
                    -row[i + d / 2]
                } else {
                    row[i - d / 2]
                };
                want[(hh * t + s) * d + i] = row[i] * f.cos() + rot * f.sin();
            }
        }
    }
    assert_close(&v64(&y), &want, 1e-12, "rope");
}

#[test]
fn dropout_keeps_about_one_minus_p_and_rescales() {
    engine::rng::manual_seed(5);
    let x = Tensor::full(1.0, [100_000], DType::F32);
    let y = ops::dropout(&Var::constant(x), 0.25, true)
        .unwrap()
        .value()
        .to_f32_vec()
        .unwrap();
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / 1e5;
    assert!((kept - 0.75).abs() < 0.01, "kept fraction {kept}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    // Eval mode and p = 0 are the identity and consume no randomness.
    let st = engine::rng::state();
    let z = Var::constant(Tensor::full(2.0, [10], DType::F32));
    assert_eq!(
        ops::dropout(&z, 0.25, false)
            .unwrap()
            .value()
            .to_f32_vec()
            .unwrap(),
        vec![2.0; 10]
    );
    assert_eq!(engine::rng::state(), st);
}

/// `|got − want| ≤ tol·(1 + |want|)` per element.
fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    testing::assert_close(what, got, want, &testing::mixed_tolerance(want, tol, tol));
}
