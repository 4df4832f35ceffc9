//! RoPE fused with the QKV split on a GPU at Falcon-7B's shape (batch 2 x 512, 71 query heads +
//! 1 kv head, head_dim 64, bf16), as effective memory bandwidth (the fused projection read once
//! and q/k/v written once, each way). Both directions are checked against the engine's CPU path
//! first (`benches::cases::rope`). The backward is also timed from f32 gradients into bf16 (the
//! training step's path), fused and as the f32 rotation followed by a cast (the path it
//! replaced). Skipped without a GPU.

use benches::cases::rope::RopeCase;
use benches::{GpuBench, Work};
use criterion::{criterion_group, criterion_main, Criterion};
use kernels_cu::ops::convert;
use kernels_cu::ops::rope::{self, QkvLayout};
use kernels_cu::DType;

fn bench(c: &mut Criterion) {
    let Some(mut b) = GpuBench::open(c, "rope_gpu") else {
        return;
    };
    let dev = b.dev().clone();
    let l = QkvLayout {
        batch: 2,
        seq: 512,
        heads: 71,
        kv_heads: 1,
        head_dim: 64,
        grouped: false,
    };
    let case = RopeCase::new(&dev, l, 10_000.0, 1);
    b.check("forward and backward, Falcon-7B qkv", |d| case.check(d));
    let mut q = dev.alloc(DType::BF16, l.q_len()).expect("alloc");
    let mut k = dev.alloc(DType::BF16, l.kv_len()).expect("alloc");
    let mut v = dev.alloc(DType::BF16, l.kv_len()).expect("alloc");
    let mut dqkv = dev.alloc(DType::BF16, l.qkv_len()).expect("alloc");
    let bytes = Work::Bytes((2 * l.qkv_len() * 2) as f64);
    b.time("rope_qkv_fwd_bf16_falcon7b", bytes, || {
        rope::forward(
            &dev,
            &mut q,
            &mut k,
            &mut v,
            &case.qkv_dev,
            &case.table_dev,
            &l,
        )
        .expect("rope forward")
    });
    let [gq, gk, gv] = &case.grads_dev;
    b.time("rope_qkv_bwd_bf16_falcon7b", bytes, || {
        rope::backward(&dev, &mut dqkv, gq, gk, gv, &case.table_dev, &l).expect("rope backward")
    });
    // The backward as the training step runs it, from the attention's f32 gradients: before,
    // the f32 rotation and then a cast to bf16 (two launches, an f32 intermediate); now one
    // pass writing bf16.
    let [gq, gk, gv] = &case.grads32_dev;
    let bytes32 = Work::Bytes((l.qkv_len() * (4 + 2)) as f64);
    let mut dqkv32 = dev.alloc(DType::F32, l.qkv_len()).expect("alloc");
    b.time("rope_qkv_bwd_f32_then_cast_falcon7b", bytes32, || {
        rope::backward(&dev, &mut dqkv32, gq, gk, gv, &case.table_dev, &l).expect("rope backward");
        convert::cast(&dev, &mut dqkv, &dqkv32).expect("cast");
    });
    b.time("rope_qkv_bwd_f32_bf16_falcon7b", bytes32, || {
        rope::backward(&dev, &mut dqkv, gq, gk, gv, &case.table_dev, &l).expect("rope backward")
    });
    b.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
