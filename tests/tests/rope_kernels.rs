//! RoPE fused with the QKV split (kernels-cu `rope.cu`) on the emulator (and a GPU when one is
//! present) against the engine's CPU path in f32: `reshape`/`narrow`/`permute` of the fused
//! projection as `model-falcon` `split_qkv` does, then `ops::rope` (same f32 inv_freq and angles);
//! the backward against the engine's autograd through the same graph.
//!
//! Tolerance (u = 2⁻²⁴, M = max |input|): each output is x0·cos − x1·sin (or the mirror); the
//! GPU's cosf/sinf and the host's f32 cos/sin are each within 2 ulp of the exact value of the
//! same f32 angle, and the products/sum add ≤ 2 roundings: |Δ| ≤ 16·u·M. v is copied exactly
//! (asserted within the same bound, which for a copy means equal up to it). bf16 outputs add
//! one rounding: 2⁻⁸·|ref|.

use engine::ops;
use engine::rng;
use engine::testing::F32_UNIT_ROUNDOFF as U;
use engine::{Tensor, Var};
use half::bf16;
use integration_tests::devices;
use kernels_cu::ops::rope::{self, QkvLayout};
use kernels_cu::{DType, Device};
use proptest::prelude::*;

/// The engine's split (as model-falcon's split_qkv) and rope, on f32 Vars.
fn engine_split_rope(qkv: &Var, l: &QkvLayout, pos: &Tensor, base: f64) -> (Var, Var, Var) {
    let (b, t, hd) = (l.batch, l.seq, l.head_dim);
    let to_heads = |x: Var, heads: usize| -> Var {
        ops::permute(&ops::reshape(&x, [b, t, heads, hd]).unwrap(), &[0, 2, 1, 3]).unwrap()
    };
    let (q, k, v) = if l.grouped {
        let r = l.heads / l.kv_heads;
        let x = ops::reshape(qkv, [b, t, l.kv_heads, r + 2, hd]).unwrap();
        (
            to_heads(ops::narrow(&x, 3, 0, r).unwrap(), l.heads),
            to_heads(ops::narrow(&x, 3, r, 1).unwrap(), l.kv_heads),
            to_heads(ops::narrow(&x, 3, r + 1, 1).unwrap(), l.kv_heads),
        )
    } else {
        let x = ops::reshape(qkv, [b, t, l.heads + 2, hd]).unwrap();
        (
            to_heads(ops::narrow(&x, 2, 0, l.heads).unwrap(), l.heads),
            to_heads(ops::narrow(&x, 2, l.heads, 1).unwrap(), 1),
            to_heads(ops::narrow(&x, 2, l.heads + 1, 1).unwrap(), 1),
        )
    };
    (
        ops::rope(&q, pos, base).unwrap(),
        ops::rope(&k, pos, base).unwrap(),
        v,
    )
}

fn round(v: f32, bf: bool) -> f32 {
    if bf {
        bf16::from_f32(v).to_f32()
    } else {
        v
    }
}

fn upload(dev: &Device, v: &[f32], bf: bool) -> kernels_cu::Buffer {
    if bf {
        dev.htod(&v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>())
    } else {
        dev.htod(v)
    }
    .unwrap()
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

fn close(what: &str, got: &[f64], want: &[f32], m: f64, bf: bool) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for i in 0..got.len() {
        let w = want[i] as f64;
        let tol = 16.0 * U * m + if bf { w.abs() / 256.0 } else { 0.0 };
        assert!(
            (got[i] - w).abs() <= tol,
            "{what}[{i}]: got {} want {w} (tol {tol:e})",
            got[i]
        );
    }
}

fn run(l: QkvLayout, base: f64, seed: u64, bf: bool, dev: &Device) {
    let dt = if bf { DType::BF16 } else { DType::F32 };
    let x: Vec<f32> = (0..l.qkv_len())
        .map(|i| round(rng::normal_f64(seed, i as u64) as f32, bf))
        .collect();
    let pos: Vec<u32> = (0..l.batch * l.seq)
        .map(|i| (rng::bits(seed ^ 4, i as u64) % 2048) as u32)
        .collect();
    let gq: Vec<f32> = (0..l.q_len())
        .map(|i| round(rng::normal_f64(seed ^ 1, i as u64) as f32, bf))
        .collect();
    let gk: Vec<f32> = (0..l.kv_len())
        .map(|i| round(rng::normal_f64(seed ^ 2, i as u64) as f32, bf))
        .collect();
    let gv: Vec<f32> = (0..l.kv_len())
        .map(|i| round(rng::normal_f64(seed ^ 3, i as u64) as f32, bf))
        .collect();

    // Engine reference (f32).
    let w = (l.heads + 2 * l.kv_heads) * l.head_dim;
    let qkv = Var::leaf(
        Tensor::from_vec(x.clone(), [l.batch, l.seq, w]).unwrap(),
        true,
    );
    let pos_t = Tensor::from_vec(pos.clone(), [l.batch, l.seq]).unwrap();
    let (q, k, v) = engine_split_rope(&qkv, &l, &pos_t, base);
    let c = |g: &[f32], like: &Var| {
        Var::constant(Tensor::from_vec(g.to_vec(), like.value().shape().clone()).unwrap())
    };
    let loss = ops::add(
        &ops::add(
            &ops::sum_all(&ops::mul(&q, &c(&gq, &q)).unwrap()).unwrap(),
            &ops::sum_all(&ops::mul(&k, &c(&gk, &k)).unwrap()).unwrap(),
        )
        .unwrap(),
        &ops::sum_all(&ops::mul(&v, &c(&gv, &v)).unwrap()).unwrap(),
    )
    .unwrap();
    let grads = loss.backward().unwrap();
    let dqkv_ref = grads.get(&qkv).unwrap().to_vec::<f32>().unwrap();

    // Kernels.
    let inv = dev.htod(&rope::inv_freq(l.head_dim, base)).unwrap();
    let posb = dev.htod(&pos).unwrap();
    let tab = rope::table(dev, &posb, &inv, l.head_dim).unwrap();
    let xb = upload(dev, &x, bf);
    let mut qd = dev.alloc(dt, l.q_len()).unwrap();
    let mut kd = dev.alloc(dt, l.kv_len()).unwrap();
    let mut vd = dev.alloc(dt, l.kv_len()).unwrap();
    rope::forward(dev, &mut qd, &mut kd, &mut vd, &xb, &tab, &l).unwrap();
    let mx = x.iter().fold(0.0f64, |a, &v| a.max(v.abs() as f64));
    close(
        "q",
        &download(dev, &qd),
        &q.value().to_vec::<f32>().unwrap(),
        mx,
        bf,
    );
    close(
        "k",
        &download(dev, &kd),
        &k.value().to_vec::<f32>().unwrap(),
        mx,
        bf,
    );
    close(
        "v",
        &download(dev, &vd),
        &v.value().to_vec::<f32>().unwrap(),
        mx,
        bf,
    );

    let mut dqkv = dev.alloc(dt, l.qkv_len()).unwrap();
    rope::backward(
        dev,
        &mut dqkv,
        &upload(dev, &gq, bf),
        &upload(dev, &gk, bf),
        &upload(dev, &gv, bf),
        &tab,
        &l,
    )
    .unwrap();
    let mg = gq
        .iter()
        .chain(&gk)
        .chain(&gv)
        .fold(0.0f64, |a, &v| a.max(v.abs() as f64));
    close("dqkv", &download(dev, &dqkv), &dqkv_ref, mg, bf);
}

fn layout() -> impl Strategy<Value = QkvLayout> {
    (
        1usize..3,
        1usize..6,
        prop_oneof![
            Just(64usize),
            Just(2),
            Just(5),
            Just(17),
            Just(128),
            1usize..40
        ],
        any::<bool>(),
        1usize..4,
        1usize..4,
    )
        .prop_map(|(batch, seq, head_dim, grouped, kv, r)| {
            let (heads, kv_heads) = if grouped {
                (kv * r, kv)
            } else {
                (kv * r + 1, 1)
            };
            QkvLayout {
                batch,
                seq,
                heads,
                kv_heads,
                head_dim,
                grouped,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn rope_qkv_matches_engine(l in layout(), bf: bool, seed: u64) {
        for dev in devices() {
            run(l, 10_000.0, seed, bf, &dev);
        }
    }
}

/// Falcon-7B's head geometry (71 query heads sharing one kv head, head_dim 64) on a short
/// sequence.
#[test]
fn rope_qkv_falcon7b_heads() {
    let l = QkvLayout {
        batch: 1,
        seq: 3,
        heads: 71,
        kv_heads: 1,
        head_dim: 64,
        grouped: false,
    };
    for dev in devices() {
        run(l, 10_000.0, 7, true, &dev);
    }
}

#[test]
fn rope_qkv_rejects_bad_layouts() {
    let dev = Device::emulator().unwrap();
    let l = QkvLayout {
        batch: 1,
        seq: 2,
        heads: 3,
        kv_heads: 2,
        head_dim: 4,
        grouped: true,
    };
    let qkv = dev.alloc(DType::F32, l.qkv_len()).unwrap();
    let mut q = dev.alloc(DType::F32, l.q_len()).unwrap();
    let mut k = dev.alloc(DType::F32, l.kv_len()).unwrap();
    let mut v = dev.alloc(DType::F32, l.kv_len()).unwrap();
    let pos = dev.htod(&[0u32, 1]).unwrap();
    let inv = dev.htod(&rope::inv_freq(4, 10_000.0)).unwrap();
    let tab = rope::table(&dev, &pos, &inv, 4).unwrap();
    assert!(rope::forward(&dev, &mut q, &mut k, &mut v, &qkv, &tab, &l).is_err());
    // A table for another head_dim is a length error.
    let tab8 = rope::table(&dev, &pos, &dev.htod(&rope::inv_freq(8, 1e4)).unwrap(), 8).unwrap();
    let l4 = QkvLayout { kv_heads: 1, ..l };
    assert!(rope::forward(&dev, &mut q, &mut k, &mut v, &qkv, &tab8, &l4).is_err());
    let l2 = QkvLayout { heads: 4, ..l };
    assert!(rope::forward(&dev, &mut q, &mut k, &mut v, &qkv, &tab, &l2).is_err());
}
