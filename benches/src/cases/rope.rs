//! RoPE fused with the QKV split (kernels-cu `rope.cu`, bf16) against the engine's CPU path in
//! f32, as `tests/tests/rope_kernels.rs` does: `reshape`/`narrow`/`permute` of the fused
//! projection as model-falcon's `split_qkv`, then `engine::ops::rope` (same f32 inv_freq and
//! angles); the backward against the engine's autograd through the same graph.
//!
//! Tolerance (u = 2⁻²⁴, M = max |input|): each output is x0·cos − x1·sin (or the mirror), the
//! GPU's and the host's f32 cos/sin each within 2 ulp of the same f32 angle, plus two
//! roundings: 16·u·M, plus 2⁻⁸·|ref| for the bf16 output. Every element is checked.

use engine::ops;
use engine::{Tensor, Var};
use half::bf16;
use kernels_cu::ops::rope::{self, QkvLayout};
use kernels_cu::{Buffer, DType, Device};

use crate::cases::pointwise::normal_bf16;
use crate::check::{download_f64, poisoned, BF16_ROUNDING, F32_UNIT_ROUNDOFF as U};

/// The engine's split (as model-falcon's `split_qkv`) and rope, on f32 Vars.
fn engine_split_rope(qkv: &Var, l: &QkvLayout, pos: &Tensor, base: f64) -> (Var, Var, Var) {
    let (b, t, hd) = (l.batch, l.seq, l.head_dim);
    let to_heads = |x: Var, heads: usize| -> Var {
        ops::permute(
            &ops::reshape(&x, [b, t, heads, hd]).expect("reshape"),
            &[0, 2, 1, 3],
        )
        .expect("permute")
    };
    let narrow = |x: &Var, dim: usize, start: usize, len: usize| {
        ops::narrow(x, dim, start, len).expect("narrow")
    };
    let (q, k, v) = if l.grouped {
        let r = l.heads / l.kv_heads;
        let x = ops::reshape(qkv, [b, t, l.kv_heads, r + 2, hd]).expect("reshape");
        (
            to_heads(narrow(&x, 3, 0, r), l.heads),
            to_heads(narrow(&x, 3, r, 1), l.kv_heads),
            to_heads(narrow(&x, 3, r + 1, 1), l.kv_heads),
        )
    } else {
        let x = ops::reshape(qkv, [b, t, l.heads + 2, hd]).expect("reshape");
        (
            to_heads(narrow(&x, 2, 0, l.heads), l.heads),
            to_heads(narrow(&x, 2, l.heads, 1), 1),
            to_heads(narrow(&x, 2, l.heads + 1, 1), 1),
        )
    };
    (
        ops::rope(&q, pos, base).expect("rope"),
        ops::rope(&k, pos, base).expect("rope"),
        v,
    )
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn upload(dev: &Device, v: &[f64]) -> Buffer {
    dev.htod(&v.iter().map(|&x| bf16::from_f64(x)).collect::<Vec<_>>())
        .expect("upload")
}

/// Fused projections, positions, the rotation table and upstream gradients of one layout.
pub struct RopeCase {
    pub layout: QkvLayout,
    base: f64,
    x: Vec<f64>,
    pos: Vec<u32>,
    grads: [Vec<f64>; 3],
    pub qkv_dev: Buffer,
    pub table_dev: Buffer,
    pub grads_dev: [Buffer; 3],
}

impl RopeCase {
    /// Positions `i % seq` per batch row (as a training batch without a KV cache).
    pub fn new(dev: &Device, layout: QkvLayout, base: f64, seed: u64) -> Self {
        let l = &layout;
        let x = normal_bf16(l.qkv_len(), seed, 1.0);
        let pos: Vec<u32> = (0..l.batch * l.seq).map(|i| (i % l.seq) as u32).collect();
        let grads = [
            normal_bf16(l.q_len(), seed ^ 1, 1.0),
            normal_bf16(l.kv_len(), seed ^ 2, 1.0),
            normal_bf16(l.kv_len(), seed ^ 3, 1.0),
        ];
        let inv = dev.htod(&rope::inv_freq(l.head_dim, base)).expect("upload");
        let pos_dev = dev.htod(&pos).expect("upload");
        let table_dev = rope::table(dev, &pos_dev, &inv, l.head_dim).expect("rope table");
        RopeCase {
            qkv_dev: upload(dev, &x),
            grads_dev: [
                upload(dev, &grads[0]),
                upload(dev, &grads[1]),
                upload(dev, &grads[2]),
            ],
            table_dev,
            layout,
            base,
            x,
            pos,
            grads,
        }
    }

    pub fn check(&self, dev: &Device) {
        let l = &self.layout;
        let shape = format!(
            "{}x{} heads {}+{} d{}",
            l.batch, l.seq, l.heads, l.kv_heads, l.head_dim
        );
        let close = |what: &str, got: &[f64], want: &[f32], m: f64| {
            let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
            let tol: Vec<f64> = want
                .iter()
                .map(|w| 16.0 * U * m + BF16_ROUNDING * w.abs())
                .collect();
            crate::check::assert_close(&format!("rope {what} bf16 {shape}"), got, &want, &tol);
        };
        let w = (l.heads + 2 * l.kv_heads) * l.head_dim;
        let qkv = Var::leaf(
            Tensor::from_vec(to_f32(&self.x), [l.batch, l.seq, w]).expect("shape"),
            true,
        );
        let pos = Tensor::from_vec(self.pos.clone(), [l.batch, l.seq]).expect("shape");
        let (q, k, v) = engine_split_rope(&qkv, l, &pos, self.base);
        let mut out = [
            poisoned(dev, DType::BF16, l.q_len()),
            poisoned(dev, DType::BF16, l.kv_len()),
            poisoned(dev, DType::BF16, l.kv_len()),
        ];
        let [qd, kd, vd] = &mut out;
        rope::forward(dev, qd, kd, vd, &self.qkv_dev, &self.table_dev, l).expect("rope forward");
        let mx = self.x.iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for (name, var, got) in [("q", &q, &*qd), ("k", &k, &*kd), ("v", &v, &*vd)] {
            close(
                name,
                &download_f64(dev, got),
                &var.value().to_vec::<f32>().expect("f32"),
                mx,
            );
        }

        let c = |g: &[f64], like: &Var| {
            Var::constant(Tensor::from_vec(to_f32(g), like.value().shape().clone()).expect("shape"))
        };
        let dot =
            |a: &Var, g: &[f64]| ops::sum_all(&ops::mul(a, &c(g, a)).expect("mul")).expect("sum");
        let loss = ops::add(
            &ops::add(&dot(&q, &self.grads[0]), &dot(&k, &self.grads[1])).expect("add"),
            &dot(&v, &self.grads[2]),
        )
        .expect("add");
        let dqkv_ref = loss
            .backward()
            .expect("backward")
            .get(&qkv)
            .expect("grad")
            .to_vec::<f32>()
            .expect("f32");
        let mut dqkv = poisoned(dev, DType::BF16, l.qkv_len());
        let [gq, gk, gv] = &self.grads_dev;
        rope::backward(dev, &mut dqkv, gq, gk, gv, &self.table_dev, l).expect("rope backward");
        let mg = self
            .grads
            .iter()
            .flatten()
            .fold(0.0f64, |a, v| a.max(v.abs()));
        close("dqkv", &download_f64(dev, &dqkv), &dqkv_ref, mg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(grouped: bool) -> QkvLayout {
        QkvLayout {
            batch: 2,
            seq: 9,
            heads: 4,
            kv_heads: if grouped { 2 } else { 1 },
            head_dim: 64,
            grouped,
        }
    }

    #[test]
    fn check_passes_on_the_emulator() {
        let dev = Device::emulator().expect("emulator");
        RopeCase::new(&dev, layout(false), 10_000.0, 1).check(&dev);
        RopeCase::new(&dev, layout(true), 10_000.0, 2).check(&dev);
    }

    #[test]
    #[should_panic(expected = "rope q bf16")]
    fn check_fails_on_wrong_positions() {
        let dev = Device::emulator().expect("emulator");
        let mut case = RopeCase::new(&dev, layout(false), 10_000.0, 3);
        case.pos[4] += 1;
        case.check(&dev);
    }
}
