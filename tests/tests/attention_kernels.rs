//! Fused attention kernels (kernels-cu `attention.cu`) on the emulator (and a GPU when one is
//! present) against the engine's CPU reference evaluated in f64 on the same bf16 inputs.
//!
//! Tolerances, with u = 2⁻²⁴, ε = 2⁻⁸ (twice the bf16 rounding bound 2⁻⁹), P the exact
//! probabilities and ε_P = 4·(d + 8)·u·(scale·Σ_x|q_ix·k_jx| + |lse_i| + 1) the relative error
//! of the kernel's fp32 P_ij (fp32 score sum, the log2(e) fold, exp2, the f32 lse):
//! - O (P rounded to bf16 for P·V, O rounded to bf16 on output):
//!   |ΔO_ic| ≤ Σ_j (ε + 2ε_P)·P_ij·|V_jc| + ε·|O_ic| + 10⁻⁶.
//! - lse: |Δlse| ≤ 10⁻⁵·(1 + |lse|).
//! - Backward, the reference given the kernel's O (so D = rowsum(dO∘O) sums the same values);
//!   a = 4·(tk·r + t + d)·u bounds the fp32 accumulation over keys, query rows and the r heads
//!   of a group:
//!   dV_jc: Σ_i (ε + 2ε_P + a)·P_ij·|dO_ic| (P rounded to bf16 for Pᵀ·dO).
//!   dS_ij = scale·P_ij·(dP_ij − D_i) is rounded to bf16 once; its error is
//!   e_ij = (ε + 2ε_P + a)·scale·P_ij·|dP_ij − D_i| + 8·(d + 2)·u·scale·P_ij·Σ_c|dO_ic|(|V_jc| +
//!   |O_ic|) (fp32 dP and D), so dQ_ic: Σ_j e_ij·|K_jc| and dK_jc: Σ_i e_ij·|Q_ic| (over the
//!   group's query heads), each + 10⁻⁶.
//! - Rows with no visible key: O = 0, lse = −∞, dQ = 0 exactly.
//! - The backward is bitwise reproducible (two runs compared).

use engine::ops::attention::{attention_backward, attention_forward, AttnDims};
use engine::rng;
use engine::testing::{assert_close, F32_UNIT_ROUNDOFF as U};
use half::bf16;
use integration_tests::devices;
use kernels_cu::ops::attention::{self, AttnShape};
use kernels_cu::{Buffer, Device};
use proptest::prelude::*;

const EPS: f64 = 1.0 / 256.0;
const ABS: f64 = 1e-6;
#[derive(Clone, Debug)]
struct Case {
    b: usize,
    hq: usize,
    hkv: usize,
    t: usize,
    tk: usize,
    d: usize,
    causal: bool,
    /// Left padding per batch row plus random holes; None = no mask.
    mask: Option<Vec<u8>>,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    dout: Vec<f64>,
}

fn bf(x: f64) -> f64 {
    bf16::from_f64(x).to_f64()
}

fn randn(n: usize, seed: u64, sd: f64) -> Vec<f64> {
    (0..n)
        .map(|i| bf(sd * rng::normal_f64(seed, i as u64)))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn case(
    b: usize,
    (hq, hkv): (usize, usize),
    t: usize,
    tk: usize,
    d: usize,
    causal: bool,
    masked: bool,
    seed: u64,
) -> Case {
    let mask = masked.then(|| {
        let mut m = vec![1u8; b * tk];
        for bi in 0..b {
            let pad = (rng::uniform_f64(seed ^ 7, bi as u64) * tk as f64 * 0.6) as usize;
            for j in 0..tk {
                let hole = rng::uniform_f64(seed ^ 9, (bi * tk + j) as u64) < 0.15;
                if j < pad || hole {
                    m[bi * tk + j] = 0;
                }
            }
        }
        m
    });
    Case {
        b,
        hq,
        hkv,
        t,
        tk,
        d,
        causal,
        mask,
        q: randn(b * hq * t * d, seed ^ 1, 1.5),
        k: randn(b * hkv * tk * d, seed ^ 2, 1.0),
        v: randn(b * hkv * tk * d, seed ^ 3, 1.0),
        dout: randn(b * hq * t * d, seed ^ 4, 1.0),
    }
}

fn up(dev: &Device, v: &[f64]) -> Buffer {
    dev.htod(&v.iter().map(|&x| bf16::from_f64(x)).collect::<Vec<_>>())
        .expect("upload")
}
fn down_bf(dev: &Device, b: &Buffer) -> Vec<f64> {
    dev.dtoh::<bf16>(b)
        .expect("download")
        .iter()
        .map(|x| x.to_f64())
        .collect()
}
fn down_f32(dev: &Device, b: &Buffer) -> Vec<f64> {
    dev.dtoh::<f32>(b)
        .expect("download")
        .iter()
        .map(|&x| x as f64)
        .collect()
}

/// Row probabilities P (f64) of query head `bh` from the reference lse, and the relative error
/// bound of the kernel's fp32 P: ε_P = 4·(d + 8)·u·(scale·Σ_x|q_ix·k_jx| + |lse_i| + 1) (fp32
/// score sum, the log2(e) fold, exp2, and the f32 lse).
fn probs(c: &Case, dims: &AttnDims, bh: usize, lse: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (t, tk, d) = (c.t, c.tk, c.d);
    let (b, h) = (bh / c.hq, bh % c.hq);
    let kvh = b * c.hkv + h / (c.hq / c.hkv);
    let mut p = vec![0.0; t * tk];
    let mut ep = vec![0.0; t * tk];
    for i in 0..t {
        let l = lse[bh * t + i];
        if l == f64::NEG_INFINITY {
            continue;
        }
        for j in 0..tk {
            let hidden =
                (c.causal && j > tk - t + i) || c.mask.as_ref().is_some_and(|m| m[b * tk + j] == 0);
            if hidden {
                continue;
            }
            let (mut s, mut sa) = (0.0, 0.0);
            for x in 0..d {
                let prod = c.q[(bh * t + i) * d + x] * c.k[(kvh * tk + j) * d + x];
                s += prod;
                sa += prod.abs();
            }
            p[i * tk + j] = (s * dims.scale - l).exp();
            ep[i * tk + j] = 4.0 * (d as f64 + 8.0) * U * (dims.scale * sa + l.abs() + 1.0);
        }
    }
    (p, ep)
}

fn run(c: &Case, dev: &Device) {
    let (t, tk, d) = (c.t, c.tk, c.d);
    let scale = 1.0 / (d as f64).sqrt();
    let scale = scale as f32 as f64;
    let shape = AttnShape {
        batch: c.b,
        q_heads: c.hq,
        kv_heads: c.hkv,
        q_len: t,
        kv_len: tk,
        head_dim: d,
        causal: c.causal,
        scale: scale as f32,
    };
    let dims = AttnDims {
        batch: c.b,
        q_heads: c.hq,
        kv_heads: c.hkv,
        q_len: t,
        kv_len: tk,
        head_dim: d,
        causal: c.causal,
        scale,
    };
    let (q, k, v, dout) = (
        up(dev, &c.q),
        up(dev, &c.k),
        up(dev, &c.v),
        up(dev, &c.dout),
    );
    let mask = c.mask.as_ref().map(|m| dev.htod(m).expect("upload mask"));
    let mut o = dev.alloc(kernels_cu::DType::BF16, c.q.len()).unwrap();
    let lse = attention::forward(dev, &shape, &mut o, &q, &k, &v, mask.as_ref()).unwrap();

    let (o_ref, lse_ref) = attention_forward(&dims, &c.q, &c.k, &c.v, c.mask.as_deref());
    let o_got = down_bf(dev, &o);
    let lse_got = down_f32(dev, &lse);
    let group = c.hq / c.hkv;
    let rows = c.b * c.hq;
    let mut tol_o = vec![0.0; o_ref.len()];
    let mut ps = Vec::with_capacity(rows);
    for bh in 0..rows {
        let (p, ep) = probs(c, &dims, bh, &lse_ref);
        let kvh = (bh / c.hq) * c.hkv + (bh % c.hq) / group;
        for i in 0..t {
            for x in 0..d {
                let mag: f64 = (0..tk)
                    .map(|j| {
                        (EPS + 2.0 * ep[i * tk + j])
                            * p[i * tk + j]
                            * c.v[(kvh * tk + j) * d + x].abs()
                    })
                    .sum();
                let idx = (bh * t + i) * d + x;
                tol_o[idx] = mag + EPS * o_ref[idx].abs() + ABS;
            }
        }
        ps.push((p, ep));
    }
    assert_close("O", &o_got, &o_ref, &tol_o);
    for (i, (&g, &w)) in lse_got.iter().zip(&lse_ref).enumerate() {
        if w == f64::NEG_INFINITY {
            assert_eq!(
                g,
                f64::NEG_INFINITY,
                "lse[{i}] of a row with no visible key"
            );
        } else {
            let err = (g - w).abs();
            assert!(err <= 1e-5 * (1.0 + w.abs()), "lse[{i}]: got {g} want {w}");
        }
    }

    // Backward, the reference given the kernel's O.
    let grads =
        attention::backward(dev, &shape, &q, &k, &v, mask.as_ref(), &o, &lse, &dout).unwrap();
    let (dq_ref, dk_ref, dv_ref) = attention_backward(
        &dims,
        &c.q,
        &c.k,
        &c.v,
        c.mask.as_deref(),
        &o_got,
        &lse_ref,
        &c.dout,
    );
    let mut tol_dq = vec![ABS; dq_ref.len()];
    let mut tol_dk = vec![ABS; dk_ref.len()];
    let mut tol_dv = vec![ABS; dv_ref.len()];
    // 1 + the relative error of fp32 sums of the products over keys, query rows and heads.
    let acc = 1.0 + 4.0 * (tk * group + t + d) as f64 * U;
    for (bh, (p, ep)) in ps.iter().enumerate() {
        let kvh = (bh / c.hq) * c.hkv + (bh % c.hq) / group;
        let qrow = |i: usize| (bh * t + i) * d;
        let krow = |j: usize| (kvh * tk + j) * d;
        for i in 0..t {
            let di: f64 = (0..d)
                .map(|x| c.dout[qrow(i) + x] * o_got[qrow(i) + x])
                .sum();
            let dio: f64 = (0..d)
                .map(|x| (c.dout[qrow(i) + x] * o_got[qrow(i) + x]).abs())
                .sum();
            for j in 0..tk {
                let pij = p[i * tk + j];
                if pij == 0.0 {
                    continue;
                }
                let (mut dp, mut dpv) = (0.0, 0.0);
                for x in 0..d {
                    dp += c.dout[qrow(i) + x] * c.v[krow(j) + x];
                    dpv += (c.dout[qrow(i) + x] * c.v[krow(j) + x]).abs();
                }
                let e = EPS + 2.0 * ep[i * tk + j];
                // Error of the kernel's dS_ij before and after its bf16 rounding.
                let err = (e + acc - 1.0) * scale * pij * (dp - di).abs()
                    + acc * scale * pij * 8.0 * (d as f64 + 2.0) * U * (dpv + dio);
                for x in 0..d {
                    tol_dv[krow(j) + x] += (e + acc - 1.0) * pij * c.dout[qrow(i) + x].abs();
                    tol_dq[qrow(i) + x] += err * c.k[krow(j) + x].abs();
                    tol_dk[krow(j) + x] += err * c.q[qrow(i) + x].abs();
                }
            }
        }
    }
    let dq_got = down_f32(dev, &grads.dq);
    assert_close("dQ", &dq_got, &dq_ref, &tol_dq);
    assert_close("dK", &down_f32(dev, &grads.dk), &dk_ref, &tol_dk);
    assert_close("dV", &down_f32(dev, &grads.dv), &dv_ref, &tol_dv);
    for (i, &l) in lse_ref.iter().enumerate() {
        if l == f64::NEG_INFINITY {
            assert!(
                o_got[i * d..(i + 1) * d].iter().all(|&x| x == 0.0),
                "O row {i}"
            );
            assert!(
                dq_got[i * d..(i + 1) * d].iter().all(|&x| x == 0.0),
                "dQ row {i}"
            );
        }
    }

    // Deterministic: the same bits again.
    let again =
        attention::backward(dev, &shape, &q, &k, &v, mask.as_ref(), &o, &lse, &dout).unwrap();
    assert_eq!(
        dev.dtoh::<f32>(&grads.dq).unwrap(),
        dev.dtoh::<f32>(&again.dq).unwrap(),
        "dQ"
    );
    assert_eq!(
        dev.dtoh::<f32>(&grads.dk).unwrap(),
        dev.dtoh::<f32>(&again.dk).unwrap(),
        "dK"
    );
    assert_eq!(
        dev.dtoh::<f32>(&grads.dv).unwrap(),
        dev.dtoh::<f32>(&again.dv).unwrap(),
        "dV"
    );
}

fn heads() -> impl Strategy<Value = (usize, usize)> {
    prop::sample::select(vec![(2usize, 1usize), (4, 2), (3, 3)])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn attention_matches_reference(
        b in 1usize..3,
        hh in heads(),
        (t, tk) in (1usize..80).prop_flat_map(|t| (Just(t), t..80)),
        d in prop::sample::select(vec![64usize, 128]),
        causal: bool,
        masked: bool,
        seed: u64,
    ) {
        for dev in devices() {
            run(&case(b, hh, t, tk, d, causal, masked, seed), &dev);
        }
    }
}

/// Falcon-7B's MQA layout in small: many query heads on one KV head, causal, left padding,
/// t = tk crossing a tile edge.
#[test]
fn mqa_many_heads_causal_padded() {
    for dev in devices() {
        run(&case(2, (9, 1), 70, 70, 64, true, true, 0x5eed), &dev);
    }
}

/// KV-cache continuation (tk > t) with head_dim 128, GQA, no mask.
#[test]
fn kv_continuation_d128() {
    for dev in devices() {
        run(&case(1, (4, 2), 17, 77, 128, true, false, 0xfeed), &dev);
    }
}

#[test]
fn rejects_bad_shapes() {
    let dev = Device::emulator().unwrap();
    let q = up(&dev, &[0.5; 2 * 8 * 32]);
    let k = up(&dev, &[0.5; 8 * 32]);
    let mut o = dev.alloc(kernels_cu::DType::BF16, 2 * 8 * 32).unwrap();
    let mut s = AttnShape {
        batch: 1,
        q_heads: 2,
        kv_heads: 1,
        q_len: 8,
        kv_len: 8,
        head_dim: 32,
        causal: true,
        scale: 0.2,
    };
    let e = attention::forward(&dev, &s, &mut o, &q, &k, &k, None).unwrap_err();
    assert!(e.to_string().contains("head_dim 32"), "{e}");
    s.head_dim = 64;
    s.q_len = 4;
    let e = attention::forward(&dev, &s, &mut o, &q, &k, &k, None).unwrap_err();
    assert!(e.to_string().contains("attention: k"), "{e}");
}
