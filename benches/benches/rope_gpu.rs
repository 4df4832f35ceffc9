//! RoPE fused with the QKV split on a GPU at Falcon-7B's shape (batch 2 x 512, 71 query heads +
//! 1 kv head, head_dim 64, bf16), as effective memory bandwidth (the fused projection read once
//! and q/k/v written once, each way). Both directions are checked against the engine's CPU path
//! first (`benches::cases::rope`). Skipped without a GPU.

use benches::cases::rope::RopeCase;
use benches::{GpuBench, Work};
use criterion::{criterion_group, criterion_main, Criterion};
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
    b.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
