//! Fused attention kernels on a GPU: forward and backward (D pre-kernel + dK/dV + dQ), causal,
//! as TFLOP/s with the FlashAttention convention: forward 4·b·hq·t·tk·d FLOP, halved when
//! causal (t = tk); backward 2.5x the forward. Shapes: Falcon-7B (b = 2, 71 query heads on one
//! KV head, t = 512, d = 64) and the FlashAttention-2 paper's sweep points (16k tokens, 2048
//! long, hidden 2048, d = 64 and 128). Each shape is checked against the CPU reference first
//! (`benches::cases::attention`, one KV group sampled). Skipped without a GPU.

use benches::cases::attention::AttnCase;
use benches::{GpuBench, Work};
use criterion::{criterion_group, criterion_main, Criterion};
use kernels_cu::ops::attention;

/// One benchmarked attention shape (causal, t = tk).
struct Shape {
    name: &'static str,
    batch: usize,
    /// (query heads, KV heads).
    heads: (usize, usize),
    t: usize,
    head_dim: usize,
}

const SHAPES: [Shape; 3] = [
    Shape {
        name: "falcon7b_b2_h71_t512_d64",
        batch: 2,
        heads: (71, 1),
        t: 512,
        head_dim: 64,
    },
    Shape {
        name: "fa2_b8_h32_t2048_d64",
        batch: 8,
        heads: (32, 32),
        t: 2048,
        head_dim: 64,
    },
    Shape {
        name: "fa2_b8_h16_t2048_d128",
        batch: 8,
        heads: (16, 16),
        t: 2048,
        head_dim: 128,
    },
];

fn bench(c: &mut Criterion) {
    let Some(mut b) = GpuBench::open(c, "attention_gpu") else {
        return;
    };
    let dev = b.dev().clone();
    for (seed, shape) in SHAPES.iter().enumerate() {
        let name = shape.name;
        let case = AttnCase::new(
            &dev,
            shape.batch,
            shape.heads,
            shape.t,
            shape.head_dim,
            seed as u64,
        );
        let mut saved = None;
        b.check(&format!("forward and backward {name}"), |dv| {
            saved = Some(case.check(dv))
        });
        let mut fwd = saved.expect("set by the check");
        let s = case.shape;
        let flop = case.forward_flop();
        b.time(&format!("fwd_{name}"), Work::Flop(flop), || {
            attention::forward(
                &dev,
                &s,
                &mut fwd.o,
                &case.q_dev,
                &case.k_dev,
                &case.v_dev,
                None,
            )
            .expect("attention forward");
        });
        b.time(&format!("bwd_{name}"), Work::Flop(2.5 * flop), || {
            attention::backward(
                &dev,
                &s,
                &case.q_dev,
                &case.k_dev,
                &case.v_dev,
                None,
                &fwd.o,
                &fwd.lse,
                &case.dout_dev,
            )
            .expect("attention backward");
        });
    }
    b.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
